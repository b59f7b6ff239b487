/*
 * Control messages between the two ends of a handoff, on the same
 * connection as the stream, in the other direction too. Sealed like the
 * stream's frames (AEAD under a key derived from the operator key and the
 * stream's salt, AAD = the stream's header hash), with a direction byte and
 * a sequence number in the nonce, so a peer without the key can neither
 * forge "resume" nor "failed", and a message cannot be replayed or turned
 * around.
 *
 * The end of a live handoff is a two-phase commit, so that the VM runs on
 * exactly one site whatever fails:
 *   receiver: READY    (every object verified, QEMU loaded, not resumed)
 *   sender:   COMMIT   (the source VM will never resume)
 *   receiver: RESUMED  (the VM runs at the destination; payload: QMP time)
 * or FAILED with a one-line reason from either side at any point.
 *
 * While the receiver works between two of these (syncing the disk and
 * loading QEMU before READY, resuming it before RESUMED: seconds, or minutes
 * for a large VM) it sends ALIVE every ENG_CONTROL_ALIVE_S, so the sender
 * waits on silence, not on a total: a receiver that died behind a proxy
 * that keeps the connection open is noticed in ENG_CONTROL_SILENCE_S.
 */
#ifndef HANDOFF_CONTROL_H
#define HANDOFF_CONTROL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stream.h"
#include "conn.h"

enum eng_msg_type {
	ENG_MSG_READY = 1, ENG_MSG_COMMIT = 2, ENG_MSG_RESUMED = 3, ENG_MSG_FAILED = 4, ENG_MSG_ALIVE = 5,
};
#define ENG_MSG_TEXT_MAX 240
#define ENG_CONTROL_MSG_MAX (2 + 1 + ENG_MSG_TEXT_MAX + CDC_TAG_LEN) /* one message on the wire */
#define ENG_CONTROL_ALIVE_S 1.0
#define ENG_CONTROL_SILENCE_S 15.0

struct eng_control {
	struct eng_conn *conn;
	struct cdc_sealer *sealer;
	uint8_t aad[CDC_DIGEST_LEN];
	uint8_t my_dir;
	uint64_t send_seq, recv_seq;
};

/* sender = 1 on the source, 0 on the destination. key NULL = unkeyed stream. */
int eng_control_init(struct eng_control *c, struct eng_conn *t, const struct eng_stream *s,
		     const uint8_t *key, int sender);
void eng_control_free(struct eng_control *c);
int eng_control_send(struct eng_control *c, enum eng_msg_type type, const char *text);
/*
 * The bytes the peer's next message would be on the wire if it is `type`
 * with no text (AEAD is deterministic for a given nonce): their length, or 0.
 * receive hands COMMIT's to its guard, which can then recognise the
 * source's commit on the connection after receive died (guard.h).
 */
size_t eng_control_expect(const struct eng_control *c, enum eng_msg_type type, uint8_t *out, size_t outlen);
/* Wait for one message: type and its text (NUL-terminated). -ETIMEDOUT, -EBADMSG, -errno. */
int eng_control_recv(struct eng_control *c, double timeout_s, enum eng_msg_type *type, char *text,
		     size_t textlen);
/*
 * Wait for one message other than ALIVE, at most total_s, and at most
 * silence_s without any message. -ETIMEDOUT (total), -ENOTCONN (silence: the
 * peer is gone), or as eng_control_recv.
 */
int eng_control_wait(struct eng_control *c, double silence_s, double total_s, enum eng_msg_type *type,
		     char *text, size_t textlen);
const char *eng_msg_name(enum eng_msg_type t);

/* ALIVE every ENG_CONTROL_ALIVE_S from a thread of its own, until stopped; nothing else may send meanwhile. */
struct eng_control_alive {
	struct eng_control *c;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	bool running, stop;
};
void eng_control_alive_start(struct eng_control_alive *a, struct eng_control *c);
void eng_control_alive_stop(struct eng_control_alive *a);

#endif

/*
 * Freshness for a stream that crosses a link. Before anything else the
 * receiving end offers a random value for this connection:
 *
 *   offer = magic "HOFFSESS" | version:u16 = 1 | zero:u16 | value[32]
 *
 * and the sender mixes it with its own random salt into every key of the
 * stream (stream.h: segments, key check, control messages). Both ends thus
 * make each session's keys fresh: bytes recorded from one connection fail
 * the key check on any other, before a frame is applied, and a sender cannot
 * reuse its salt to make them match. Files have no session (the value is
 * zero): a file is meant to be read again.
 */
#ifndef HANDOFF_SESSION_H
#define HANDOFF_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "stream.h"

#define ENG_SESSION_OFFER_LEN (12 + ENG_SESSION_LEN)
#define ENG_SESSION_WAIT_S 10.0 /* the receiver offers as it accepts: this is generous */

/* Receiver: a fresh value, sent at once. 0, or -errno and a one-line reason. */
int eng_session_offer(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], char *err, size_t errlen);
/* Sender: the receiver's offer, within timeout_s. 0, or -errno and a one-line reason. */
int eng_session_take(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], double timeout_s, char *err,
		     size_t errlen);

/*
 * Resuming a handoff after its link was cut: the sender connects again, takes
 * a fresh offer and asks; the receiver says where it stands.
 *
 *   ask   = magic "HOFFRSME" | version:u16 = 1 | zero:u16 | handoff[32] | nonce[16] | tag[16]
 *   reply = magic "HOFFRSMD" | version:u16 = 1 | state:u8 | zero:u8 | applied:u64 | tag[16]
 *
 * handoff names the handoff: the salt of its first stream, which only the two
 * ends saw under the key; nonce is the sender's, random per ask. Each tag is
 * an AEAD tag (no plaintext) under HKDF(key, value | handoff, "handoff v4
 * resume"), AEAD nonce 1 for the ask and 2 for the reply, over the message
 * (the reply's also over the ask's nonce): only a key holder can ask or
 * answer; an ask cannot be replayed into another connection (the receiver's
 * value is fresh) nor a reply to another ask (the sender's nonce is).
 */
enum eng_resume_state {
	ENG_RESUME_RECEIVING = 0, /* send a stream that goes on from `applied` data segments */
	ENG_RESUME_VERIFIED = 1,  /* every object verified, QEMU loaded: waiting for COMMIT */
	ENG_RESUME_RESUMED = 2,   /* committed: the VM runs at the destination */
};
#define ENG_RESUME_NONCE_LEN 16
#define ENG_RESUME_ASK_LEN (12 + 32 + ENG_RESUME_NONCE_LEN + 16)
#define ENG_RESUME_REPLY_LEN (12 + 8 + 16)

/* Sender, after eng_session_take on the new connection. */
int eng_session_resume_ask(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
			   enum cdc_aead aead, const uint8_t handoff[32], double timeout_s,
			   enum eng_resume_state *state, uint64_t *applied, char *err, size_t errlen);
/* Receiver, after eng_session_offer: the ask's nonce into nonce. -EPROTO (not
 * an ask), -EACCES (bad tag: no key), -ESTALE (another handoff), -errno (the connection). */
int eng_session_resume_take(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
			    enum cdc_aead aead, const uint8_t handoff[32], double timeout_s,
			    uint8_t nonce[ENG_RESUME_NONCE_LEN], char *err, size_t errlen);
int eng_session_resume_reply(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
			     enum cdc_aead aead, const uint8_t handoff[32], const uint8_t nonce[ENG_RESUME_NONCE_LEN],
			     enum eng_resume_state state, uint64_t applied);

#endif

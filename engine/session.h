/*
 * Freshness for a stream that crosses a link. Before anything else the
 * receiving end offers a random value for this connection:
 *
 *   offer = magic "HOFFSESS" | version:u16 = 1 | cache_chunk:u16 | value[32]
 *
 * cache_chunk is zero unless the receiver holds no base of its own but an
 * edge chunk cache (receive --cache): then it is the cache's chunk size in
 * 4 KiB units, and the sender answers with a base plan (below).
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
#include "qemu_bridge/migstream.h"
#include "stream.h"

#define ENG_SESSION_OFFER_LEN (12 + ENG_SESSION_LEN)
#define ENG_SESSION_WAIT_S 10.0 /* the receiver offers as it accepts: this is generous */

/* Receiver: a fresh value, sent at once; cache_chunk 0 (a whole base) or the
 * cache's chunk size in bytes. 0, or -errno and a one-line reason. */
int eng_session_offer(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], uint32_t cache_chunk, char *err,
		      size_t errlen);
/* Sender: the receiver's offer, within timeout_s; *cache_chunk (may be NULL:
 * then a cache receiver is refused) its chunk size in bytes or 0. */
int eng_session_take(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], uint32_t *cache_chunk,
		     double timeout_s, char *err, size_t errlen);

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

/*
 * A destination that holds only part of the base (its edge cache) learns
 * the base's chunk recipe from the source and says which chunks it holds,
 * before the stream:
 *
 *   plan = magic "HOFFPLAN" | version:u16 = 3 | nobj:u8 | aead:u8 | chunk_size:u32 |
 *          body_len:u64 | nonce[16] | sealed body | tag[16]
 *     body = per object: base size:u64 | base image digest[32] | chunks:u64 | digest[32] * chunks,
 *            then the base VM's RAM blocks: count:u16 | per block: id_len:u8 | id | length:u64 |
 *            image_off:u64 (where each lies in the memory object; count 0 for a base that is no VM)
 *   have = magic "HOFFHAVE" | version:u16 = 3 | zero:u16 | zero:u32 | body_len:u64 | nonce[16] |
 *          sealed body | tag[16]
 *     body = per object, one bit per chunk of the plan (bit c of byte c / 8), rounded up to bytes
 *
 * nonce is the sender's, random per plan; the have repeats it. Both are
 * sealed (the stream's AEAD, named in the plan) under HKDF(key, value |
 * nonce, "handoff v5 base"), so both ends' fresh values key them: AEAD
 * nonce 3 for the plan, 4 for the have, whose AAD also holds the plan's
 * SHA-256. An answer fits only the plan it answers, in this connection
 * only: a have recorded in another session names another plan nonce, and a
 * plan or have replayed into another connection meets another value.
 * The RAM blocks let a receiver whose cache lacks the base's device state
 * still fill its QEMU's shared RAM in place before the stream.
 */
#define ENG_PLAN_MAX_CHUNKS (1ull << 24) /* per object: 1 TiB in 64 KiB chunks, 512 MiB of digests */
#define ENG_PLAN_NONCE_LEN 16

struct eng_base_plan {
	enum cdc_aead aead; /* seals the plan and its answer: the sender's choice */
	unsigned nobj;
	uint32_t chunk_size;
	struct eng_plan_object {
		uint64_t size, chunks;
		uint8_t id[CDC_DIGEST_LEN];
		uint8_t *digests; /* chunks * CDC_DIGEST_LEN */
	} obj[ENG_MAX_OBJECTS];
	struct qb_layout ram; /* the base's RAM blocks (nblocks 0: none said); a receiver checks them */
	uint8_t hash[CDC_DIGEST_LEN]; /* of the plan as sent: the have answers it */
	uint8_t nonce[ENG_PLAN_NONCE_LEN]; /* the sender's, fresh per plan (set by eng_base_plan_send) */
};

int eng_base_plan_send(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
		       struct eng_base_plan *p, char *err, size_t errlen);
/* Fills p (digests malloc'd: eng_base_plan_free). -EPROTO / -EACCES / -errno with a reason. */
int eng_base_plan_recv(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
		       double timeout_s, struct eng_base_plan *p, char *err, size_t errlen);
void eng_base_plan_free(struct eng_base_plan *p);
/* Every object's chunk digests in one list (malloc'd), object after object; NULL: out of memory. */
uint8_t *eng_base_plan_digests(const struct eng_base_plan *p, uint64_t *n);
/* have[o]: the chunk bitmap of object o, (chunks + 7) / 8 bytes. */
int eng_base_have_send(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
		       const struct eng_base_plan *p, uint8_t *const *have, char *err, size_t errlen);
int eng_base_have_recv(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
		       double timeout_s, const struct eng_base_plan *p, uint8_t *const *have, char *err,
		       size_t errlen);

#endif

#include "session.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "codecs/varint.h"
#include "errbuf.h"

static const char magic[8] = "HOFFSESS";
#define SESSION_VERSION 1

int eng_session_offer(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], uint32_t cache_chunk, char *err,
		      size_t errlen)
{
	uint8_t offer[ENG_SESSION_OFFER_LEN] = { 0 };
	int r;

	if (cdc_random(value, ENG_SESSION_LEN)) {
		eng_set_err(err, errlen, "no randomness available for the session");
		return -EIO;
	}
	memcpy(offer, magic, sizeof(magic));
	cdc_put_le(offer + 8, SESSION_VERSION, 2);
	cdc_put_le(offer + 10, cache_chunk / CDC_BLOCK_SIZE, 2);
	memcpy(offer + 12, value, ENG_SESSION_LEN);
	if ((r = eng_conn_send(c, offer, sizeof(offer)))) {
		eng_set_err(err, errlen, "cannot offer a session to %s: %s", eng_conn_peer(c), eng_conn_error(c));
		return r;
	}
	return 0;
}

int eng_session_take(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], uint32_t *cache_chunk,
		     double timeout_s, char *err, size_t errlen)
{
	uint8_t offer[ENG_SESSION_OFFER_LEN];
	int r = eng_conn_recv_all(c, offer, sizeof(offer), timeout_s);

	if (r == -ETIMEDOUT) {
		eng_set_err(err, errlen, "%s offered no session within %.0f s (a handoff-engine older than "
			    "stream version %d?)", eng_conn_peer(c), timeout_s, ENG_STREAM_VERSION);
		return r;
	}
	if (r) {
		const char *why = eng_conn_error(c);
		eng_set_err(err, errlen, "no session offer from %s: %s", eng_conn_peer(c),
			    r == -EPIPE ? "it closed the connection" : why && *why ? why : strerror(-r));
		return r;
	}
	if (memcmp(offer, magic, sizeof(magic)) || cdc_get_le(offer + 8, 2) != SESSION_VERSION) {
		eng_set_err(err, errlen, "%s sent no valid session offer (not a handoff-engine of stream version %d)",
			    eng_conn_peer(c), ENG_STREAM_VERSION);
		return -EPROTO;
	}
	uint32_t chunk = (uint32_t)cdc_get_le(offer + 10, 2) * CDC_BLOCK_SIZE;
	if (chunk && !cache_chunk) {
		eng_set_err(err, errlen, "%s holds an edge cache, not the base: only a live handoff (send) can fill it",
			    eng_conn_peer(c));
		return -EPROTO;
	}
	if (cache_chunk)
		*cache_chunk = chunk;
	memcpy(value, offer + 12, ENG_SESSION_LEN);
	return 0;
}

/* ---- resuming after a cut ------------------------------------------------------ */

static const char ask_magic[8] = "HOFFRSME", reply_magic[8] = "HOFFRSMD";
#define RESUME_VERSION 1

static struct cdc_sealer *resume_sealer(const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
					enum cdc_aead aead, const uint8_t handoff[32])
{
	static const uint8_t unkeyed[CDC_KEY_LEN];
	uint8_t salt[ENG_SESSION_LEN + 32], k[CDC_KEY_LEN];
	struct cdc_sealer *s = NULL;

	memcpy(salt, value, ENG_SESSION_LEN);
	memcpy(salt + ENG_SESSION_LEN, handoff, 32);
	if (!cdc_derive_key(key ? key : unkeyed, salt, sizeof(salt), "handoff v4 resume", k, sizeof(k)))
		s = cdc_sealer_new(aead, k);
	explicit_bzero(k, sizeof(k));
	return s;
}

/* The tag over aad (no plaintext) into tag; open: check tag instead. */
static int resume_tag(const uint8_t value[ENG_SESSION_LEN], const uint8_t *key, enum cdc_aead aead,
		      const uint8_t handoff[32], uint64_t nonce, const uint8_t *aad, size_t len, uint8_t *tag,
		      bool open)
{
	struct cdc_sealer *s = resume_sealer(value, key, aead, handoff);
	uint8_t none[1];
	int r;

	if (!s)
		return -ENOMEM;
	r = open ? cdc_open(s, nonce, aad, len, none, 0, tag) : cdc_seal(s, nonce, aad, len, none, 0, tag);
	cdc_sealer_free(s);
	return r;
}

#define ASK_SIGNED (12 + 32 + ENG_RESUME_NONCE_LEN)
#define REPLY_SIGNED 20

/* What the reply's tag covers: the reply and the ask's nonce. */
static void reply_aad(const uint8_t *reply, const uint8_t nonce[ENG_RESUME_NONCE_LEN],
		      uint8_t out[REPLY_SIGNED + ENG_RESUME_NONCE_LEN])
{
	memcpy(out, reply, REPLY_SIGNED);
	memcpy(out + REPLY_SIGNED, nonce, ENG_RESUME_NONCE_LEN);
}

int eng_session_resume_ask(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
			   enum cdc_aead aead, const uint8_t handoff[32], double timeout_s,
			   enum eng_resume_state *state, uint64_t *applied, char *err, size_t errlen)
{
	uint8_t ask[ENG_RESUME_ASK_LEN] = { 0 }, reply[ENG_RESUME_REPLY_LEN];
	uint8_t aad[REPLY_SIGNED + ENG_RESUME_NONCE_LEN];
	int r;

	memcpy(ask, ask_magic, 8);
	cdc_put_le(ask + 8, RESUME_VERSION, 2);
	memcpy(ask + 12, handoff, 32);
	if (cdc_random(ask + 44, ENG_RESUME_NONCE_LEN)) {
		eng_set_err(err, errlen, "no randomness available for the resume");
		return -EIO;
	}
	if ((r = resume_tag(value, key, aead, handoff, 1, ask, ASK_SIGNED, ask + ASK_SIGNED, false)) ||
	    (r = eng_conn_send(c, ask, sizeof(ask)))) {
		eng_set_err(err, errlen, "cannot ask %s to resume: %s", eng_conn_peer(c),
			    r == -ENOMEM ? "out of memory" : eng_conn_error(c));
		return r;
	}
	if ((r = eng_conn_recv_all(c, reply, sizeof(reply), timeout_s))) {
		eng_set_err(err, errlen, "%s did not answer the resume: %s", eng_conn_peer(c),
			    r == -EPIPE ? "it closed the connection (it gave up on this handoff?)"
			    : r == -ETIMEDOUT ? "no reply" : eng_conn_error(c));
		return r;
	}
	reply_aad(reply, ask + 44, aad);
	if (memcmp(reply, reply_magic, 8) || cdc_get_le(reply + 8, 2) != RESUME_VERSION || reply[11] ||
	    reply[10] > ENG_RESUME_RESUMED ||
	    resume_tag(value, key, aead, handoff, 2, aad, sizeof(aad), reply + REPLY_SIGNED, true)) {
		eng_set_err(err, errlen, "%s sent no valid resume reply (forged, or not this handoff's receiver)",
			    eng_conn_peer(c));
		return -EPROTO;
	}
	*state = (enum eng_resume_state)reply[10];
	*applied = cdc_get_le(reply + 12, 8);
	return 0;
}

int eng_session_resume_take(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
			    enum cdc_aead aead, const uint8_t handoff[32], double timeout_s,
			    uint8_t nonce[ENG_RESUME_NONCE_LEN], char *err, size_t errlen)
{
	uint8_t ask[ENG_RESUME_ASK_LEN];
	int r = eng_conn_recv_all(c, ask, sizeof(ask), timeout_s);

	if (r) {
		eng_set_err(err, errlen, "%s asked nothing: %s", eng_conn_peer(c),
			    r == -EPIPE ? "it closed the connection" : r == -ETIMEDOUT ? "timed out" : eng_conn_error(c));
		return r;
	}
	if (memcmp(ask, ask_magic, 8) || cdc_get_le(ask + 8, 2) != RESUME_VERSION || ask[10] || ask[11]) {
		eng_set_err(err, errlen, "%s did not ask to resume this handoff (another handoff's start?)",
			    eng_conn_peer(c));
		return -EPROTO;
	}
	/* the tag is made with the handoff named inside: another handoff's ask fails it */
	if (resume_tag(value, key, aead, handoff, 1, ask, ASK_SIGNED, ask + ASK_SIGNED, true)) {
		bool ours = !memcmp(ask + 12, handoff, 32);
		eng_set_err(err, errlen, "%s: %s", eng_conn_peer(c),
			    ours ? "resume request failed authentication (wrong key, or replayed)"
				 : "resume request for another handoff");
		return ours ? -EACCES : -ESTALE;
	}
	memcpy(nonce, ask + 44, ENG_RESUME_NONCE_LEN);
	return 0;
}

int eng_session_resume_reply(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
			     enum cdc_aead aead, const uint8_t handoff[32], const uint8_t nonce[ENG_RESUME_NONCE_LEN],
			     enum eng_resume_state state, uint64_t applied)
{
	uint8_t reply[ENG_RESUME_REPLY_LEN] = { 0 }, aad[REPLY_SIGNED + ENG_RESUME_NONCE_LEN];
	int r;

	memcpy(reply, reply_magic, 8);
	cdc_put_le(reply + 8, RESUME_VERSION, 2);
	reply[10] = (uint8_t)state;
	cdc_put_le(reply + 12, applied, 8);
	reply_aad(reply, nonce, aad);
	if ((r = resume_tag(value, key, aead, handoff, 2, aad, sizeof(aad), reply + REPLY_SIGNED, false)))
		return r;
	return eng_conn_send(c, reply, sizeof(reply));
}

/* ---- a base the destination holds in part -------------------------------------- */

static const char plan_magic[8] = "HOFFPLAN", have_magic[8] = "HOFFHAVE";
#define BASE_VERSION 3
#define BASE_NONCE 24 /* where the header holds the plan's nonce */
#define BASE_HDR (BASE_NONCE + ENG_PLAN_NONCE_LEN)

/* Both ends' fresh values: the receiver's offer and the sender's plan nonce. */
static struct cdc_sealer *base_sealer(const uint8_t value[ENG_SESSION_LEN], const uint8_t *plan_nonce,
				      const uint8_t *key, enum cdc_aead aead)
{
	static const uint8_t unkeyed[CDC_KEY_LEN];
	uint8_t k[CDC_KEY_LEN], salt[ENG_SESSION_LEN + ENG_PLAN_NONCE_LEN];
	struct cdc_sealer *s = NULL;

	memcpy(salt, value, ENG_SESSION_LEN);
	memcpy(salt + ENG_SESSION_LEN, plan_nonce, ENG_PLAN_NONCE_LEN);
	if (!cdc_derive_key(key ? key : unkeyed, salt, sizeof(salt), "handoff v5 base", k, sizeof(k)))
		s = cdc_sealer_new(aead, k);
	explicit_bzero(k, sizeof(k));
	return s;
}

/* hdr[BASE_HDR] (its nonce keys it) | body sealed in place | tag: one message, one send. aad_extra: the plan's hash for a have. */
static int send_sealed(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
		       enum cdc_aead aead, uint8_t *msg, size_t body_len, uint64_t nonce, const uint8_t *aad_extra,
		       uint8_t *hash_out)
{
	struct cdc_sealer *s = base_sealer(value, msg + BASE_NONCE, key, aead);
	uint8_t aad[BASE_HDR + CDC_DIGEST_LEN];
	int r;

	if (!s)
		return -ENOMEM;
	memcpy(aad, msg, BASE_HDR);
	if (aad_extra)
		memcpy(aad + BASE_HDR, aad_extra, CDC_DIGEST_LEN);
	r = cdc_seal(s, nonce, aad, BASE_HDR + (aad_extra ? CDC_DIGEST_LEN : 0), msg + BASE_HDR, body_len,
		     msg + BASE_HDR + body_len);
	cdc_sealer_free(s);
	if (r)
		return -EIO;
	if (hash_out)
		cdc_sha256(msg, BASE_HDR + body_len + CDC_TAG_LEN, hash_out);
	return eng_conn_send(c, msg, BASE_HDR + body_len + CDC_TAG_LEN);
}

/* Reads one message of this magic; *msg (malloc'd) holds it opened, body at
 * BASE_HDR. aead 0: the one the header names (the plan's byte 11).
 * plan_nonce NULL: the one the header carries (a plan); else the one it must carry. */
static int recv_sealed(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *plan_nonce,
		       const uint8_t *key, enum cdc_aead aead, double timeout_s, const char magic[8], uint64_t max_body,
		       uint64_t nonce, const uint8_t *aad_extra, uint8_t **msg, uint64_t *body_len, uint8_t *hash_out,
		       char *err, size_t errlen)
{
	uint8_t hdr[BASE_HDR], aad[BASE_HDR + CDC_DIGEST_LEN];
	int r = eng_conn_recv_all(c, hdr, sizeof(hdr), timeout_s);

	*msg = NULL;
	if (r) {
		eng_set_err(err, errlen, "%s sent no %.8s: %s", eng_conn_peer(c), magic,
			    r == -EPIPE ? "it closed the connection" : r == -ETIMEDOUT ? "timed out" : eng_conn_error(c));
		return r;
	}
	uint64_t len = cdc_get_le(hdr + 16, 8);
	if (!aead)
		aead = (enum cdc_aead)hdr[11];
	if (memcmp(hdr, magic, 8) || cdc_get_le(hdr + 8, 2) != BASE_VERSION || len > max_body ||
	    (aead != CDC_AEAD_AES256GCM && aead != CDC_AEAD_CHACHA20POLY1305)) {
		eng_set_err(err, errlen, "%s sent no valid %.8s (another version, or not a handoff-engine)",
			    eng_conn_peer(c), magic);
		return -EPROTO;
	}
	/* the length is not authenticated yet: memory grows only as the bytes arrive */
	size_t total = BASE_HDR + len + CDC_TAG_LEN, cap = total < (1u << 20) ? total : (1u << 20), got = BASE_HDR;
	uint8_t *m = malloc(cap);
	if (m)
		memcpy(m, hdr, BASE_HDR);
	while (m && got < total) {
		if (got == cap) {
			size_t ncap = cap * 2 < total ? cap * 2 : total;
			uint8_t *n = realloc(m, ncap);
			if (!n) {
				free(m);
				m = NULL;
				break;
			}
			m = n;
			cap = ncap;
		}
		if ((r = eng_conn_recv_all(c, m + got, cap - got, timeout_s > 5 ? timeout_s : 5))) {
			free(m);
			eng_set_err(err, errlen, "%s's %.8s ended early: %s", eng_conn_peer(c), magic, eng_conn_error(c));
			return r;
		}
		got = cap;
	}
	if (!m) {
		eng_set_err(err, errlen, "out of memory for the %.8s", magic);
		return -ENOMEM;
	}
	if (hash_out)
		cdc_sha256(m, BASE_HDR + len + CDC_TAG_LEN, hash_out);
	/* an answer carries the nonce of the plan it answers: one recorded in another session does not */
	struct cdc_sealer *s = !plan_nonce || !CRYPTO_memcmp(plan_nonce, hdr + BASE_NONCE, ENG_PLAN_NONCE_LEN)
				       ? base_sealer(value, hdr + BASE_NONCE, key, aead)
				       : NULL;
	memcpy(aad, hdr, BASE_HDR);
	if (aad_extra)
		memcpy(aad + BASE_HDR, aad_extra, CDC_DIGEST_LEN);
	r = s ? cdc_open(s, nonce, aad, BASE_HDR + (aad_extra ? CDC_DIGEST_LEN : 0), m + BASE_HDR, len,
			 m + BASE_HDR + len)
	      : -EACCES;
	cdc_sealer_free(s);
	if (r) {
		free(m);
		eng_set_err(err, errlen, "%s's %.8s failed authentication (wrong key, or not for this plan)",
			    eng_conn_peer(c), magic);
		return -EACCES;
	}
	*msg = m;
	*body_len = len;
	return 0;
}

int eng_base_plan_send(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
		       struct eng_base_plan *p, char *err, size_t errlen)
{
	uint64_t body = 0;

	for (unsigned o = 0; o < p->nobj; o++)
		body += 8 + CDC_DIGEST_LEN + 8 + p->obj[o].chunks * CDC_DIGEST_LEN;
	body += 2;
	for (unsigned b = 0; b < p->ram.nblocks; b++)
		body += 1 + strnlen(p->ram.blocks[b].id, 255) + 16;
	uint8_t *m = calloc(1, BASE_HDR + body + CDC_TAG_LEN), *q;
	if (!m) {
		eng_set_err(err, errlen, "out of memory for the base plan");
		return -ENOMEM;
	}
	memcpy(m, plan_magic, 8);
	cdc_put_le(m + 8, BASE_VERSION, 2);
	m[10] = (uint8_t)p->nobj;
	m[11] = (uint8_t)p->aead;
	cdc_put_le(m + 12, p->chunk_size, 4);
	cdc_put_le(m + 16, body, 8);
	if (cdc_random(p->nonce, sizeof(p->nonce))) {
		free(m);
		eng_set_err(err, errlen, "no random bytes for the base plan");
		return -EIO;
	}
	memcpy(m + BASE_NONCE, p->nonce, sizeof(p->nonce));
	q = m + BASE_HDR;
	for (unsigned o = 0; o < p->nobj; o++) {
		cdc_put_le(q, p->obj[o].size, 8);
		memcpy(q + 8, p->obj[o].id, CDC_DIGEST_LEN);
		cdc_put_le(q + 8 + CDC_DIGEST_LEN, p->obj[o].chunks, 8);
		q += 16 + CDC_DIGEST_LEN;
		memcpy(q, p->obj[o].digests, p->obj[o].chunks * CDC_DIGEST_LEN);
		q += p->obj[o].chunks * CDC_DIGEST_LEN;
	}
	cdc_put_le(q, p->ram.nblocks, 2);
	q += 2;
	for (unsigned b = 0; b < p->ram.nblocks; b++) {
		const struct qb_ram_block *rb = &p->ram.blocks[b];
		size_t l = strnlen(rb->id, 255);
		*q++ = (uint8_t)l;
		memcpy(q, rb->id, l);
		cdc_put_le(q + l, rb->length, 8);
		cdc_put_le(q + l + 8, rb->image_off, 8);
		q += l + 16;
	}
	int r = send_sealed(c, value, key, p->aead, m, body, 3, NULL, p->hash);
	free(m);
	if (r)
		eng_set_err(err, errlen, "cannot send the base plan to %s: %s", eng_conn_peer(c),
			    r == -ENOMEM ? "out of memory" : eng_conn_error(c));
	return r;
}

void eng_base_plan_free(struct eng_base_plan *p)
{
	for (unsigned o = 0; o < ENG_MAX_OBJECTS; o++) {
		free(p->obj[o].digests);
		p->obj[o].digests = NULL;
	}
}

uint8_t *eng_base_plan_digests(const struct eng_base_plan *p, uint64_t *n)
{
	uint64_t total = 0;

	for (unsigned o = 0; o < p->nobj; o++)
		total += p->obj[o].chunks;
	uint8_t *all = malloc(total ? total * CDC_DIGEST_LEN : 1), *q = all;
	for (unsigned o = 0; all && o < p->nobj; o++) {
		memcpy(q, p->obj[o].digests, p->obj[o].chunks * CDC_DIGEST_LEN);
		q += p->obj[o].chunks * CDC_DIGEST_LEN;
	}
	*n = total;
	return all;
}

int eng_base_plan_recv(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
		       double timeout_s, struct eng_base_plan *p, char *err, size_t errlen)
{
	uint8_t *m;
	uint64_t len;
	int r = recv_sealed(c, value, NULL, key, 0, timeout_s, plan_magic,
			    ENG_MAX_OBJECTS * (48 + ENG_PLAN_MAX_CHUNKS * CDC_DIGEST_LEN), 3, NULL, &m, &len, p->hash,
			    err, errlen);

	memset(p->obj, 0, sizeof(p->obj));
	memset(&p->ram, 0, sizeof(p->ram));
	if (r)
		return r;
	p->nobj = m[10];
	p->aead = (enum cdc_aead)m[11];
	memcpy(p->nonce, m + BASE_NONCE, sizeof(p->nonce));
	p->chunk_size = (uint32_t)cdc_get_le(m + 12, 4);
	const uint8_t *q = m + BASE_HDR, *end = q + len;
	bool ok = p->nobj >= 1 && p->nobj <= ENG_MAX_OBJECTS && p->chunk_size >= CDC_BLOCK_SIZE &&
		  p->chunk_size % CDC_BLOCK_SIZE == 0 && p->chunk_size <= (4u << 20);
	for (unsigned o = 0; ok && o < p->nobj; o++) {
		struct eng_plan_object *po = &p->obj[o];
		if ((uint64_t)(end - q) < 16 + CDC_DIGEST_LEN) {
			ok = false;
			break;
		}
		po->size = cdc_get_le(q, 8);
		memcpy(po->id, q + 8, CDC_DIGEST_LEN);
		po->chunks = cdc_get_le(q + 8 + CDC_DIGEST_LEN, 8);
		q += 16 + CDC_DIGEST_LEN;
		ok = po->chunks <= ENG_PLAN_MAX_CHUNKS && po->chunks == (po->size + p->chunk_size - 1) / p->chunk_size &&
		     (uint64_t)(end - q) >= po->chunks * CDC_DIGEST_LEN &&
		     (po->digests = malloc(po->chunks ? po->chunks * CDC_DIGEST_LEN : 1));
		if (ok) {
			memcpy(po->digests, q, po->chunks * CDC_DIGEST_LEN);
			q += po->chunks * CDC_DIGEST_LEN;
		}
	}
	if (ok && (ok = end - q >= 2 && (p->ram.nblocks = (unsigned)cdc_get_le(q, 2)) <= QB_MAX_BLOCKS))
		q += 2;
	for (unsigned b = 0; ok && b < p->ram.nblocks; b++) {
		struct qb_ram_block *rb = &p->ram.blocks[b];
		size_t l = end - q >= 1 ? *q : 0;
		/* within the memory object (an object count below that means no VM, and no blocks) */
		if (!(ok = l && (size_t)(end - q) >= 1 + l + 16 && p->nobj > ENG_VM_MEMORY))
			break;
		memcpy(rb->id, q + 1, l);
		rb->id[l] = 0;
		rb->length = cdc_get_le(q + 1 + l, 8);
		rb->image_off = cdc_get_le(q + 1 + l + 8, 8);
		ok = !memchr(rb->id, 0, l) && rb->length && !(rb->length % CDC_BLOCK_SIZE) &&
		     !(rb->image_off % CDC_BLOCK_SIZE) && rb->image_off <= p->obj[ENG_VM_MEMORY].size &&
		     rb->length <= p->obj[ENG_VM_MEMORY].size - rb->image_off;
		q += 1 + l + 16;
	}
	free(m);
	if (!ok || q != end) {
		eng_base_plan_free(p);
		eng_set_err(err, errlen, "%s sent a malformed base plan", eng_conn_peer(c));
		return -EPROTO;
	}
	return 0;
}

static uint64_t have_len(const struct eng_base_plan *p)
{
	uint64_t n = 0;

	for (unsigned o = 0; o < p->nobj; o++)
		n += (p->obj[o].chunks + 7) / 8;
	return n;
}

int eng_base_have_send(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
		       const struct eng_base_plan *p, uint8_t *const *have, char *err, size_t errlen)
{
	uint64_t body = have_len(p);
	uint8_t *m = calloc(1, BASE_HDR + body + CDC_TAG_LEN), *q;

	if (!m) {
		eng_set_err(err, errlen, "out of memory for the chunk map");
		return -ENOMEM;
	}
	memcpy(m, have_magic, 8);
	cdc_put_le(m + 8, BASE_VERSION, 2);
	cdc_put_le(m + 16, body, 8);
	memcpy(m + BASE_NONCE, p->nonce, sizeof(p->nonce));
	q = m + BASE_HDR;
	for (unsigned o = 0; o < p->nobj; o++) {
		memcpy(q, have[o], (p->obj[o].chunks + 7) / 8);
		q += (p->obj[o].chunks + 7) / 8;
	}
	int r = send_sealed(c, value, key, p->aead, m, body, 4, p->hash, NULL);
	free(m);
	if (r)
		eng_set_err(err, errlen, "cannot send the chunk map to %s: %s", eng_conn_peer(c),
			    r == -ENOMEM ? "out of memory" : eng_conn_error(c));
	return r;
}

int eng_base_have_recv(struct eng_conn *c, const uint8_t value[ENG_SESSION_LEN], const uint8_t *key,
		       double timeout_s, const struct eng_base_plan *p, uint8_t *const *have, char *err,
		       size_t errlen)
{
	uint8_t *m;
	uint64_t len;
	int r = recv_sealed(c, value, p->nonce, key, p->aead, timeout_s, have_magic, have_len(p), 4, p->hash, &m, &len,
			    NULL, err, errlen);

	if (r)
		return r;
	if (len != have_len(p)) {
		free(m);
		eng_set_err(err, errlen, "%s sent a chunk map of another size than the plan's", eng_conn_peer(c));
		return -EPROTO;
	}
	const uint8_t *q = m + BASE_HDR;
	for (unsigned o = 0; o < p->nobj; o++) {
		memcpy(have[o], q, (p->obj[o].chunks + 7) / 8);
		q += (p->obj[o].chunks + 7) / 8;
	}
	free(m);
	return 0;
}

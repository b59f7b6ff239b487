#include "session.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "codecs/varint.h"
#include "errbuf.h"

static const char magic[8] = "HOFFSESS";
#define SESSION_VERSION 1

int eng_session_offer(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], char *err, size_t errlen)
{
	uint8_t offer[ENG_SESSION_OFFER_LEN] = { 0 };
	int r;

	if (cdc_random(value, ENG_SESSION_LEN)) {
		eng_set_err(err, errlen, "no randomness available for the session");
		return -EIO;
	}
	memcpy(offer, magic, sizeof(magic));
	cdc_put_le(offer + 8, SESSION_VERSION, 2);
	memcpy(offer + 12, value, ENG_SESSION_LEN);
	if ((r = eng_conn_send(c, offer, sizeof(offer)))) {
		eng_set_err(err, errlen, "cannot offer a session to %s: %s", eng_conn_peer(c), eng_conn_error(c));
		return r;
	}
	return 0;
}

int eng_session_take(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], double timeout_s, char *err,
		     size_t errlen)
{
	static const uint8_t zero[2];
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
	if (memcmp(offer, magic, sizeof(magic)) || cdc_get_le(offer + 8, 2) != SESSION_VERSION ||
	    memcmp(offer + 10, zero, sizeof(zero))) {
		eng_set_err(err, errlen, "%s sent no valid session offer (not a handoff-engine of stream version %d)",
			    eng_conn_peer(c), ENG_STREAM_VERSION);
		return -EPROTO;
	}
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

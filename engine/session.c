#include "session.h"

#include <errno.h>
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

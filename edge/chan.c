/*
 * Sealed channel (see chan.h). Handshake, both values 32 random bytes:
 *   client -> server  "HOCH" version cn n, then n early frames
 *   server -> client  "HOCH" version sn HMAC(k_auth, "server" cn sn n)
 * k_auth, k_c2s and k_s2c are HKDF(key, cn || sn, "ho-chunk auth" / "c2s" /
 * "s2c"). The early frames are sealed with HKDF(key, cn || 0^32, "ho-chunk
 * early"): they prove the client holds the key, but the server's value is
 * not in them, so they can be replayed; what they ask for is then sent
 * sealed with keys of the fresh session, which the replayer lacks, and the
 * replayer's next frame fails. So only requests that read (the chunk
 * service's are all reads) go early; the client's first session frame proves
 * the session is live.
 */
#include "chan.h"
#include "codecs/codecs.h"
#include "engine/clock.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC "HOCH"
#define VERSION 3 /* 3: early frames with the hello, chunks pushed behind a share; 2: recipes in shares, have queries by prefix (edge/xfer.c) */
#define NONCE_LEN 32
#define MAC_LEN 32
#define HELLO_LEN (5 + NONCE_LEN + 1)
#define FRAME_OVERHEAD (4 + 1 + CDC_TAG_LEN)

struct edg_chan {
	struct eng_conn *c;
	struct cdc_sealer *tx, *rx;
	uint64_t tx_seq, rx_seq;
	double timeout_s;
	uint8_t *tx_frame, *rx_frame; /* one each: a thread may send while another receives */
	/* client before edg_chan_client_finish: the hello, then the early frames, sent as one */
	uint8_t *out;
	size_t out_len;
	/* server: the early frames' messages (type, length, payload), handed out before the rest */
	uint8_t *early;
	size_t early_len, early_at;
};

static int derive(const uint8_t key[32], const uint8_t *cn, const uint8_t *sn, const char *info, uint8_t out[32])
{
	static const uint8_t none[NONCE_LEN];
	uint8_t salt[2 * NONCE_LEN];

	memcpy(salt, cn, NONCE_LEN);
	memcpy(salt + NONCE_LEN, sn ? sn : none, NONCE_LEN);
	return cdc_derive_key(key, salt, sizeof(salt), info, out, 32);
}

/* n: the early frames the server took: one cut from the client's flight fails the client's check */
static void server_mac(const uint8_t k_auth[32], const uint8_t *cn, const uint8_t *sn, uint8_t n,
		       uint8_t out[MAC_LEN])
{
	uint8_t msg[6 + 2 * NONCE_LEN + 1];
	unsigned len = MAC_LEN;

	memcpy(msg, "server", 6);
	memcpy(msg + 6, cn, NONCE_LEN);
	memcpy(msg + 6 + NONCE_LEN, sn, NONCE_LEN);
	msg[6 + 2 * NONCE_LEN] = n;
	HMAC(EVP_sha256(), k_auth, 32, msg, sizeof(msg), out, &len);
}

static struct edg_chan *chan_new(struct eng_conn *c, double timeout_s)
{
	struct edg_chan *ch = calloc(1, sizeof(*ch));

	if (!ch || !(ch->tx_frame = malloc(4 + 1 + EDG_CHAN_MAX_PAYLOAD + CDC_TAG_LEN)) ||
	    !(ch->rx_frame = malloc(1 + EDG_CHAN_MAX_PAYLOAD))) {
		edg_chan_free(ch);
		return NULL;
	}
	ch->c = c;
	ch->timeout_s = timeout_s;
	return ch;
}

/* A sealer with the key HKDF gives for (cn, sn or zeros, info); NULL on failure. */
static struct cdc_sealer *sealer(const uint8_t key[32], const uint8_t *cn, const uint8_t *sn, const char *info)
{
	uint8_t k[32];
	struct cdc_sealer *x = derive(key, cn, sn, info, k) ? NULL : cdc_sealer_new(CDC_AEAD_AES256GCM, k);

	OPENSSL_cleanse(k, sizeof(k));
	return x;
}

/* The session's two directions, from here on (frame counters from 0). 0, or -1 with err. */
static int session_keys(struct edg_chan *ch, const uint8_t key[32], const uint8_t *cn, const uint8_t *sn,
			bool client, char *err, size_t errlen)
{
	cdc_sealer_free(ch->tx);
	cdc_sealer_free(ch->rx);
	ch->tx = sealer(key, cn, sn, client ? "ho-chunk c2s" : "ho-chunk s2c");
	ch->rx = sealer(key, cn, sn, client ? "ho-chunk s2c" : "ho-chunk c2s");
	ch->tx_seq = ch->rx_seq = 0;
	if (!ch->tx || !ch->rx) {
		snprintf(err, errlen, "cannot set up the session ciphers");
		return -1;
	}
	return 0;
}

static void conn_err(struct eng_conn *c, int r, const char *what, char *err, size_t errlen)
{
	const char *why = eng_conn_error(c);
	snprintf(err, errlen, "%s: %s", what,
		 r == -EPIPE ? "the peer closed the connection" : why && why[0] ? why : strerror(-r));
}

struct edg_chan *edg_chan_client_start(struct eng_conn *c, const uint8_t key[32], char *err, size_t errlen)
{
	struct edg_chan *ch = chan_new(c, 0);

	if (!ch || !(ch->out = malloc(HELLO_LEN + EDG_CHAN_EARLY_MAX + EDG_CHAN_EARLY_FRAMES * FRAME_OVERHEAD))) {
		snprintf(err, errlen, "out of memory");
		edg_chan_free(ch);
		return NULL;
	}
	memcpy(ch->out, MAGIC, 4);
	ch->out[4] = VERSION;
	ch->out[5 + NONCE_LEN] = 0; /* early frames, counted as they are sealed */
	ch->out_len = HELLO_LEN;
	if (cdc_random(ch->out + 5, NONCE_LEN) || !(ch->tx = sealer(key, ch->out + 5, NULL, "ho-chunk early"))) {
		snprintf(err, errlen, "no randomness or cipher for the session");
		edg_chan_free(ch);
		return NULL;
	}
	return ch;
}

int edg_chan_client_finish(struct edg_chan *ch, const uint8_t key[32], double timeout_s, char *err, size_t errlen)
{
	uint8_t reply[5 + NONCE_LEN + MAC_LEN], k_auth[32], mac[MAC_LEN], cn[NONCE_LEN];
	uint8_t n = ch->out[5 + NONCE_LEN];
	int r;

	memcpy(cn, ch->out + 5, NONCE_LEN);
	r = eng_conn_send(ch->c, ch->out, ch->out_len);
	free(ch->out);
	ch->out = NULL;
	if (r || (r = eng_conn_recv_all(ch->c, reply, sizeof(reply), timeout_s))) {
		conn_err(ch->c, r, "handshake", err, errlen);
		return -1;
	}
	if (memcmp(reply, MAGIC, 4) || reply[4] != VERSION) {
		snprintf(err, errlen, "handshake: the peer is not a handoff chunk service of this version (%u, want %u)",
			 reply[4], VERSION);
		return -1;
	}
	const uint8_t *sn = reply + 5;
	if (derive(key, cn, sn, "ho-chunk auth", k_auth)) {
		snprintf(err, errlen, "cannot derive the session keys");
		return -1;
	}
	server_mac(k_auth, cn, sn, n, mac);
	OPENSSL_cleanse(k_auth, sizeof(k_auth));
	if (CRYPTO_memcmp(mac, reply + 5 + NONCE_LEN, MAC_LEN)) {
		snprintf(err, errlen, "handshake: the server does not hold our key (wrong --key?)");
		return -1;
	}
	ch->timeout_s = timeout_s;
	return session_keys(ch, key, cn, sn, true, err, errlen);
}

struct edg_chan *edg_chan_client(struct eng_conn *c, const uint8_t key[32], double timeout_s, char *err,
				 size_t errlen)
{
	struct edg_chan *ch = edg_chan_client_start(c, key, err, errlen);

	if (ch && edg_chan_client_finish(ch, key, timeout_s, err, errlen)) {
		edg_chan_free(ch);
		return NULL;
	}
	return ch;
}

/* What is left of the handshake's one deadline (a slow peer gets it once, not per read). */
static double left(double until)
{
	double l = until - eng_mono_s();
	return l > 0.001 ? l : 0.001;
}

/* The n early frames after the hello, opened and queued; 0, or -1 with err (a failed one: not our key). */
static int read_early(struct edg_chan *ch, const uint8_t key[32], const uint8_t *cn, unsigned n, double until,
		      char *err, size_t errlen)
{
	struct cdc_sealer *x = n ? sealer(key, cn, NULL, "ho-chunk early") : NULL;
	int r = 0;

	if (n && (!x || !(ch->early = malloc(EDG_CHAN_EARLY_MAX + 5 * EDG_CHAN_EARLY_FRAMES)))) {
		snprintf(err, errlen, "out of memory");
		cdc_sealer_free(x);
		return -1;
	}
	for (unsigned k = 0; k < n && !r; k++) {
		uint8_t hdr[4], tag[CDC_TAG_LEN], *b = ch->rx_frame;
		if ((r = eng_conn_recv_all(ch->c, hdr, 4, left(until)))) {
			conn_err(ch->c, r, "handshake", err, errlen);
			break;
		}
		uint32_t body = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
		if (body < 1 || ch->early_len + 5 + body - 1 > EDG_CHAN_EARLY_MAX + 5 * k + 5) {
			snprintf(err, errlen, "handshake: early frames beyond %u bytes", EDG_CHAN_EARLY_MAX);
			r = -EMSGSIZE;
			break;
		}
		if ((r = eng_conn_recv_all(ch->c, b, body, left(until))) ||
		    (r = eng_conn_recv_all(ch->c, tag, sizeof(tag), left(until)))) {
			conn_err(ch->c, r, "handshake", err, errlen);
			break;
		}
		if (cdc_open(x, k, hdr, 4, b, body, tag)) {
			snprintf(err, errlen, "handshake: the client does not hold our key");
			r = -EBADMSG;
			break;
		}
		uint8_t *q = ch->early + ch->early_len;
		uint32_t len = body - 1;
		q[0] = b[0];
		memcpy(q + 1, &len, 4);
		memcpy(q + 5, b + 1, len);
		ch->early_len += 5 + len;
	}
	cdc_sealer_free(x);
	return r ? -1 : 0;
}

struct edg_chan *edg_chan_server(struct eng_conn *c, const uint8_t key[32], double timeout_s, char *err,
				 size_t errlen)
{
	uint8_t hello[HELLO_LEN], reply[5 + NONCE_LEN + MAC_LEN], k_auth[32];
	struct edg_chan *ch = chan_new(c, timeout_s);
	double until = eng_mono_s() + timeout_s;
	int r;

	if (!ch) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if ((r = eng_conn_recv_all(c, hello, sizeof(hello), timeout_s))) {
		conn_err(c, r, "handshake", err, errlen);
		goto fail;
	}
	if (memcmp(hello, MAGIC, 4) || hello[4] != VERSION) {
		snprintf(err, errlen, "handshake: the client is not a handoff chunk client of this version");
		goto fail;
	}
	if (hello[5 + NONCE_LEN] > EDG_CHAN_EARLY_FRAMES) {
		snprintf(err, errlen, "handshake: more than %d early frames", EDG_CHAN_EARLY_FRAMES);
		goto fail;
	}
	if (read_early(ch, key, hello + 5, hello[5 + NONCE_LEN], until, err, errlen))
		goto fail;
	memcpy(reply, MAGIC, 4);
	reply[4] = VERSION;
	if (cdc_random(reply + 5, NONCE_LEN) || derive(key, hello + 5, reply + 5, "ho-chunk auth", k_auth)) {
		snprintf(err, errlen, "cannot set up the session");
		goto fail;
	}
	server_mac(k_auth, hello + 5, reply + 5, hello[5 + NONCE_LEN], reply + 5 + NONCE_LEN);
	OPENSSL_cleanse(k_auth, sizeof(k_auth));
	if (session_keys(ch, key, hello + 5, reply + 5, false, err, errlen))
		goto fail;
	if ((r = eng_conn_send(c, reply, sizeof(reply)))) {
		conn_err(c, r, "handshake", err, errlen);
		goto fail;
	}
	return ch;
fail:
	edg_chan_free(ch);
	return NULL;
}

int edg_chan_send(struct edg_chan *ch, uint8_t type, const void *payload, uint32_t len)
{
	bool early = ch->out != NULL;
	uint8_t *f = early ? ch->out + ch->out_len : ch->tx_frame;
	uint32_t body = 1 + len;

	if (len > EDG_CHAN_MAX_PAYLOAD)
		return -EMSGSIZE;
	if (early && (ch->out[5 + NONCE_LEN] == EDG_CHAN_EARLY_FRAMES ||
		      ch->out_len - HELLO_LEN + len > EDG_CHAN_EARLY_MAX + ch->out[5 + NONCE_LEN] * FRAME_OVERHEAD))
		return -EMSGSIZE;
	f[0] = (uint8_t)body;
	f[1] = (uint8_t)(body >> 8);
	f[2] = (uint8_t)(body >> 16);
	f[3] = (uint8_t)(body >> 24);
	f[4] = type;
	if (len)
		memcpy(f + 5, payload, len);
	if (cdc_seal(ch->tx, ch->tx_seq++, f, 4, f + 4, body, f + 4 + body))
		return -EIO;
	if (early) { /* sent with the hello */
		ch->out[5 + NONCE_LEN]++;
		ch->out_len += 4 + body + CDC_TAG_LEN;
		return 0;
	}
	return eng_conn_send(ch->c, f, 4 + body + CDC_TAG_LEN);
}

int edg_chan_recv_view(struct edg_chan *ch, uint8_t *type, const uint8_t **payload, uint32_t max, uint32_t *len,
		       double timeout_s)
{
	uint8_t hdr[4], tag[CDC_TAG_LEN];
	int r;

	if (ch->early_at < ch->early_len) { /* what came with the hello first */
		const uint8_t *q = ch->early + ch->early_at;
		uint32_t n;
		memcpy(&n, q + 1, 4);
		if (n > max)
			return -EMSGSIZE;
		*type = q[0];
		*len = n;
		*payload = q + 5;
		ch->early_at += 5 + n;
		return 0;
	}
	if ((r = eng_conn_recv_all(ch->c, hdr, 4, timeout_s)))
		return r;
	uint32_t body = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
	if (body < 1 || body > 1 + EDG_CHAN_MAX_PAYLOAD)
		return -EBADMSG;
	if (body - 1 > max)
		return -EMSGSIZE;
	uint8_t *b = ch->rx_frame; /* nobody sees a byte before it authenticated */
	if ((r = eng_conn_recv_all(ch->c, b, body, timeout_s)) || (r = eng_conn_recv_all(ch->c, tag, sizeof(tag), timeout_s)))
		return r;
	if (cdc_open(ch->rx, ch->rx_seq++, hdr, 4, b, body, tag))
		return -EBADMSG;
	*type = b[0];
	*len = body - 1;
	*payload = b + 1;
	return 0;
}

int edg_chan_recv(struct edg_chan *ch, uint8_t *type, void *buf, uint32_t cap, uint32_t *len, double timeout_s)
{
	const uint8_t *p;
	int r = edg_chan_recv_view(ch, type, &p, cap, len, timeout_s);

	if (!r && *len)
		memcpy(buf, p, *len);
	return r;
}

bool edg_chan_in_session(const struct edg_chan *ch)
{
	return ch->rx_seq > 0;
}

void edg_chan_free(struct edg_chan *ch)
{
	if (!ch)
		return;
	cdc_sealer_free(ch->tx); /* the sealers wipe their keys */
	cdc_sealer_free(ch->rx);
	free(ch->tx_frame);
	free(ch->rx_frame);
	free(ch->out);
	if (ch->early)
		OPENSSL_cleanse(ch->early, ch->early_len);
	free(ch->early);
	free(ch);
}

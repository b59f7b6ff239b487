/*
 * Sealed channel (see chan.h). Handshake, both values 32 random bytes:
 *   client -> server  "HOCH" version cn
 *   server -> client  "HOCH" version sn HMAC(k_auth, "server" cn sn)
 * k_auth, k_c2s and k_s2c are HKDF(key, cn || sn, "ho-chunk auth" / "c2s" /
 * "s2c"). The client's first sealed frame proves the client holds the key.
 */
#include "chan.h"
#include "codecs/codecs.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC "HOCH"
#define VERSION 2 /* 2: recipes in shares with their hash, have queries by prefix (edge/xfer.c) */
#define NONCE_LEN 32
#define MAC_LEN 32

struct edg_chan {
	struct eng_conn *c;
	struct cdc_sealer *tx, *rx;
	uint64_t tx_seq, rx_seq;
	double timeout_s;
	uint8_t *tx_frame, *rx_frame; /* one each: a thread may send while another receives */
};

static int derive(const uint8_t key[32], const uint8_t *cn, const uint8_t *sn, const char *info, uint8_t out[32])
{
	uint8_t salt[2 * NONCE_LEN];

	memcpy(salt, cn, NONCE_LEN);
	memcpy(salt + NONCE_LEN, sn, NONCE_LEN);
	return cdc_derive_key(key, salt, sizeof(salt), info, out, 32);
}

static void server_mac(const uint8_t k_auth[32], const uint8_t *cn, const uint8_t *sn, uint8_t out[MAC_LEN])
{
	uint8_t msg[6 + 2 * NONCE_LEN];
	unsigned len = MAC_LEN;

	memcpy(msg, "server", 6);
	memcpy(msg + 6, cn, NONCE_LEN);
	memcpy(msg + 6 + NONCE_LEN, sn, NONCE_LEN);
	HMAC(EVP_sha256(), k_auth, 32, msg, sizeof(msg), out, &len);
}

static struct edg_chan *make(struct eng_conn *c, const uint8_t key[32], const uint8_t *cn, const uint8_t *sn,
			     bool client, double timeout_s, char *err, size_t errlen)
{
	uint8_t k_c2s[32], k_s2c[32];
	struct edg_chan *ch = calloc(1, sizeof(*ch));

	if (!ch || !(ch->tx_frame = malloc(4 + 1 + EDG_CHAN_MAX_PAYLOAD + CDC_TAG_LEN)) ||
	    !(ch->rx_frame = malloc(1 + EDG_CHAN_MAX_PAYLOAD)) ||
	    derive(key, cn, sn, "ho-chunk c2s", k_c2s) || derive(key, cn, sn, "ho-chunk s2c", k_s2c)) {
		snprintf(err, errlen, "cannot set up the session");
		goto fail;
	}
	ch->c = c;
	ch->timeout_s = timeout_s;
	ch->tx = cdc_sealer_new(CDC_AEAD_AES256GCM, client ? k_c2s : k_s2c);
	ch->rx = cdc_sealer_new(CDC_AEAD_AES256GCM, client ? k_s2c : k_c2s);
	OPENSSL_cleanse(k_c2s, sizeof(k_c2s));
	OPENSSL_cleanse(k_s2c, sizeof(k_s2c));
	if (!ch->tx || !ch->rx) {
		snprintf(err, errlen, "cannot set up the session ciphers");
		goto fail;
	}
	return ch;
fail:
	OPENSSL_cleanse(k_c2s, sizeof(k_c2s));
	OPENSSL_cleanse(k_s2c, sizeof(k_s2c));
	edg_chan_free(ch);
	return NULL;
}

static void conn_err(struct eng_conn *c, int r, const char *what, char *err, size_t errlen)
{
	const char *why = eng_conn_error(c);
	snprintf(err, errlen, "%s: %s", what,
		 r == -EPIPE ? "the peer closed the connection" : why && why[0] ? why : strerror(-r));
}

struct edg_chan *edg_chan_client(struct eng_conn *c, const uint8_t key[32], double timeout_s, char *err,
				 size_t errlen)
{
	uint8_t hello[5 + NONCE_LEN], reply[5 + NONCE_LEN + MAC_LEN], k_auth[32], mac[MAC_LEN];
	int r;

	memcpy(hello, MAGIC, 4);
	hello[4] = VERSION;
	if (cdc_random(hello + 5, NONCE_LEN)) {
		snprintf(err, errlen, "no randomness available");
		return NULL;
	}
	if ((r = eng_conn_send(c, hello, sizeof(hello))) || (r = eng_conn_recv_all(c, reply, sizeof(reply), timeout_s))) {
		conn_err(c, r, "handshake", err, errlen);
		return NULL;
	}
	if (memcmp(reply, MAGIC, 4) || reply[4] != VERSION) {
		snprintf(err, errlen, "handshake: the peer is not a handoff chunk service (version %u)", reply[4]);
		return NULL;
	}
	const uint8_t *sn = reply + 5;
	if (derive(key, hello + 5, sn, "ho-chunk auth", k_auth)) {
		snprintf(err, errlen, "cannot derive the session keys");
		return NULL;
	}
	server_mac(k_auth, hello + 5, sn, mac);
	OPENSSL_cleanse(k_auth, sizeof(k_auth));
	if (CRYPTO_memcmp(mac, reply + 5 + NONCE_LEN, MAC_LEN)) {
		snprintf(err, errlen, "handshake: the server does not hold our key (wrong --key?)");
		return NULL;
	}
	return make(c, key, hello + 5, sn, true, timeout_s, err, errlen);
}

struct edg_chan *edg_chan_server(struct eng_conn *c, const uint8_t key[32], double timeout_s, char *err,
				 size_t errlen)
{
	uint8_t hello[5 + NONCE_LEN], reply[5 + NONCE_LEN + MAC_LEN], k_auth[32];
	int r;

	if ((r = eng_conn_recv_all(c, hello, sizeof(hello), timeout_s))) {
		conn_err(c, r, "handshake", err, errlen);
		return NULL;
	}
	if (memcmp(hello, MAGIC, 4) || hello[4] != VERSION) {
		snprintf(err, errlen, "handshake: the client is not a handoff chunk client");
		return NULL;
	}
	memcpy(reply, MAGIC, 4);
	reply[4] = VERSION;
	if (cdc_random(reply + 5, NONCE_LEN) || derive(key, hello + 5, reply + 5, "ho-chunk auth", k_auth)) {
		snprintf(err, errlen, "cannot set up the session");
		return NULL;
	}
	server_mac(k_auth, hello + 5, reply + 5, reply + 5 + NONCE_LEN);
	OPENSSL_cleanse(k_auth, sizeof(k_auth));
	if ((r = eng_conn_send(c, reply, sizeof(reply)))) {
		conn_err(c, r, "handshake", err, errlen);
		return NULL;
	}
	return make(c, key, hello + 5, reply + 5, false, timeout_s, err, errlen);
}

int edg_chan_send(struct edg_chan *ch, uint8_t type, const void *payload, uint32_t len)
{
	uint8_t *f = ch->tx_frame;
	uint32_t body = 1 + len;

	if (len > EDG_CHAN_MAX_PAYLOAD)
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
	return eng_conn_send(ch->c, f, 4 + body + CDC_TAG_LEN);
}

int edg_chan_recv_view(struct edg_chan *ch, uint8_t *type, const uint8_t **payload, uint32_t max, uint32_t *len,
		       double timeout_s)
{
	uint8_t hdr[4], tag[CDC_TAG_LEN];
	int r;

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

void edg_chan_free(struct edg_chan *ch)
{
	if (!ch)
		return;
	cdc_sealer_free(ch->tx); /* the sealers wipe their keys */
	cdc_sealer_free(ch->rx);
	free(ch->tx_frame);
	free(ch->rx_frame);
	free(ch);
}

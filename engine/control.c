/*
 * Sealed control messages (design in control.h).
 *   message = len:u16 | sealed(type:u8 text[len-1]) | tag[16]
 */
#include "control.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "clock.h"

int eng_control_init(struct eng_control *c, struct eng_conn *t, const struct eng_stream *s,
		     const uint8_t *key, int sender)
{
	uint8_t k[CDC_KEY_LEN];

	memset(c, 0, sizeof(*c));
	c->conn = t;
	c->my_dir = sender ? 1 : 2;
	memcpy(c->aad, s->header_hash, CDC_DIGEST_LEN);
	if (eng_stream_derive(s, key, "handoff v4 control", k, sizeof(k)))
		return -EIO;
	c->sealer = cdc_sealer_new((enum cdc_aead)s->aead, k);
	explicit_bzero(k, sizeof(k));
	return c->sealer ? 0 : -ENOMEM;
}

void eng_control_free(struct eng_control *c)
{
	cdc_sealer_free(c->sealer);
	c->sealer = NULL;
}

/* Nonces: direction in the top byte, so the two ends never share one. */
static uint64_t nonce(uint8_t dir, uint64_t seq)
{
	return (uint64_t)dir << 56 | seq;
}

/* message = len:u16 | sealed(type text) | tag into buf (2 + 1 + ENG_MSG_TEXT_MAX + CDC_TAG_LEN bytes): its length, or 0. */
static size_t seal_message(const struct eng_control *c, uint8_t dir, uint64_t seq, enum eng_msg_type type,
			   const char *text, uint8_t *buf)
{
	size_t tl = text ? strnlen(text, ENG_MSG_TEXT_MAX) : 0;
	size_t len = 1 + tl;

	buf[0] = (uint8_t)(len & 0xff);
	buf[1] = (uint8_t)(len >> 8);
	buf[2] = (uint8_t)type;
	if (tl)
		memcpy(buf + 3, text, tl);
	if (cdc_seal(c->sealer, nonce(dir, seq), c->aad, sizeof(c->aad), buf + 2, len, buf + 2 + len))
		return 0;
	return 2 + len + CDC_TAG_LEN;
}

int eng_control_send(struct eng_control *c, enum eng_msg_type type, const char *text)
{
	uint8_t buf[ENG_CONTROL_MSG_MAX];
	size_t n = seal_message(c, c->my_dir, c->send_seq++, type, text, buf);

	return n ? eng_conn_send(c->conn, buf, n) : -EIO;
}

size_t eng_control_expect(const struct eng_control *c, enum eng_msg_type type, uint8_t *out, size_t outlen)
{
	uint8_t buf[ENG_CONTROL_MSG_MAX];
	size_t n = seal_message(c, c->my_dir == 1 ? 2 : 1, c->recv_seq, type, NULL, buf);

	if (!n || n > outlen)
		return 0;
	memcpy(out, buf, n);
	return n;
}

int eng_control_recv(struct eng_control *c, double timeout_s, enum eng_msg_type *type, char *text,
		     size_t textlen)
{
	uint8_t buf[ENG_CONTROL_MSG_MAX];
	double rest_s = timeout_s > 5 ? timeout_s : 5;
	/* once a first byte came, the rest follows at once: a short poll must not cut a message in two */
	int ret = eng_conn_recv_all(c->conn, buf, 1, timeout_s);

	if (ret || (ret = eng_conn_recv_all(c->conn, buf + 1, 1, rest_s)))
		return ret;
	size_t len = (size_t)buf[0] | (size_t)buf[1] << 8;
	if (len < 1 || len > 1 + ENG_MSG_TEXT_MAX)
		return -EBADMSG;
	if ((ret = eng_conn_recv_all(c->conn, buf + 2, len + CDC_TAG_LEN, rest_s)))
		return ret;
	uint8_t peer = c->my_dir == 1 ? 2 : 1;
	if (cdc_open(c->sealer, nonce(peer, c->recv_seq++), c->aad, sizeof(c->aad), buf + 2, len,
		     buf + 2 + len))
		return -EBADMSG;
	if (buf[2] < ENG_MSG_READY || buf[2] > ENG_MSG_ALIVE)
		return -EBADMSG;
	*type = (enum eng_msg_type)buf[2];
	size_t tl = len - 1 < textlen - 1 ? len - 1 : textlen - 1;
	memcpy(text, buf + 3, tl);
	text[tl] = 0;
	return 0;
}

int eng_control_wait(struct eng_control *c, double silence_s, double total_s, enum eng_msg_type *type,
		     char *text, size_t textlen)
{
	double end = eng_mono_s() + total_s;

	for (;;) {
		double left = end - eng_mono_s();
		if (left <= 0)
			return -ETIMEDOUT;
		int ret = eng_control_recv(c, left < silence_s ? left : silence_s, type, text, textlen);
		if (ret == -ETIMEDOUT)
			return eng_mono_s() >= end ? -ETIMEDOUT : -ENOTCONN;
		if (ret || *type != ENG_MSG_ALIVE)
			return ret;
	}
}

const char *eng_msg_name(enum eng_msg_type t)
{
	static const char *const names[] = { "?", "READY", "COMMIT", "RESUMED", "FAILED", "ALIVE" };

	return (unsigned)t <= ENG_MSG_ALIVE ? names[t] : "?";
}

static void *alive_main(void *arg)
{
	struct eng_control_alive *a = arg;
	struct timespec until;

	pthread_mutex_lock(&a->lock);
	while (!a->stop) {
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += (time_t)ENG_CONTROL_ALIVE_S;
		until.tv_nsec += (long)((ENG_CONTROL_ALIVE_S - (double)(time_t)ENG_CONTROL_ALIVE_S) * 1e9);
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		while (!a->stop && pthread_cond_timedwait(&a->cv, &a->lock, &until) != ETIMEDOUT)
			;
		if (!a->stop && eng_control_send(a->c, ENG_MSG_ALIVE, NULL))
			break; /* the connection failed: whoever sends next hears so */
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

void eng_control_alive_start(struct eng_control_alive *a, struct eng_control *c)
{
	pthread_condattr_t ca;

	memset(a, 0, sizeof(*a));
	a->c = c;
	pthread_mutex_init(&a->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->cv, &ca);
	pthread_condattr_destroy(&ca);
	/* without the thread the peer waits on its silence limit: the handoff still works */
	a->running = pthread_create(&a->thread, NULL, alive_main, a) == 0;
}

void eng_control_alive_stop(struct eng_control_alive *a)
{
	if (!a->c)
		return;
	pthread_mutex_lock(&a->lock);
	a->stop = true;
	pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->lock);
	if (a->running)
		pthread_join(a->thread, NULL);
	pthread_cond_destroy(&a->cv);
	pthread_mutex_destroy(&a->lock);
	a->c = NULL;
}

/*
 * Sessions over real loopback connections (engine/session.h): the resume ask
 * and reply that take a cut handoff up again. The right key and handoff get
 * the receiver's state and count across; a wrong key, an ask for another
 * handoff, or a reply meant for another ask are refused.
 */
#include "engine/conn.h"
#include "engine/session.h"
#include "testlib.h"

#include <errno.h>
#include <pthread.h>

struct receiver {
	char loc[64];
	uint8_t key[CDC_KEY_LEN], handoff[32];
	int take_ret;
	uint8_t nonce[ENG_RESUME_NONCE_LEN];
	bool answer_other_nonce; /* reply as if to another ask */
};

static void *receive_one(void *arg)
{
	struct receiver *r = arg;
	struct eng_conn_bind b = { .key = r->key };
	uint8_t value[ENG_SESSION_LEN];
	char err[256];
	struct eng_conn *c = eng_conn_accept(r->loc, &b, 20, err, sizeof(err));

	r->take_ret = -ENOTCONN;
	if (!c)
		return NULL;
	if (eng_session_offer(c, value, err, sizeof(err)) == 0) {
		r->take_ret = eng_session_resume_take(c, value, r->key, CDC_AEAD_AES256GCM, r->handoff, 10, r->nonce,
						      err, sizeof(err));
		if (r->take_ret == 0) {
			if (r->answer_other_nonce)
				r->nonce[0] ^= 1;
			eng_session_resume_reply(c, value, r->key, CDC_AEAD_AES256GCM, r->handoff, r->nonce,
						 ENG_RESUME_VERIFIED, 4242);
		}
	}
	eng_conn_close(c);
	return NULL;
}

static unsigned next_port;

/* Ask a fresh receiver (rkey, rhandoff) with (key, handoff): the ask's result. */
static int ask(struct receiver *r, const uint8_t *key, const uint8_t *handoff, enum eng_resume_state *state,
	       uint64_t *applied)
{
	struct eng_conn_bind b = { .key = key };
	uint8_t value[ENG_SESSION_LEN];
	char err[256];
	pthread_t t;
	int ret;

	snprintf(r->loc, sizeof(r->loc), "tcp:127.0.0.1:%u", next_port++);
	assert_int_equal(pthread_create(&t, NULL, receive_one, r), 0);
	struct eng_conn *c = eng_conn_connect(r->loc, &b, 20, err, sizeof(err));
	assert_non_null(c);
	ret = eng_session_take(c, value, 10, err, sizeof(err));
	if (!ret)
		ret = eng_session_resume_ask(c, value, key, CDC_AEAD_AES256GCM, handoff, 10, state, applied, err,
					     sizeof(err));
	eng_conn_close(c);
	pthread_join(t, NULL);
	return ret;
}

static void test_resume_ask(void **state)
{
	struct receiver r = { 0 };
	uint8_t other[CDC_KEY_LEN], other_handoff[32];
	enum eng_resume_state st = ENG_RESUME_RECEIVING;
	uint64_t applied = 0;

	(void)state;
	test_fill_random(r.key, sizeof(r.key));
	test_fill_random(r.handoff, sizeof(r.handoff));
	test_fill_random(other, sizeof(other));
	test_fill_random(other_handoff, sizeof(other_handoff));
	next_port = 20000 + (unsigned)(test_rand() % 20000);

	assert_int_equal(ask(&r, r.key, r.handoff, &st, &applied), 0);
	assert_int_equal(r.take_ret, 0);
	assert_int_equal(st, ENG_RESUME_VERIFIED);
	assert_int_equal(applied, 4242);

	assert_int_not_equal(ask(&r, other, r.handoff, &st, &applied), 0);
	assert_int_equal(r.take_ret, -EACCES); /* no key: no resume */

	assert_int_not_equal(ask(&r, r.key, other_handoff, &st, &applied), 0);
	assert_int_equal(r.take_ret, -ESTALE); /* another handoff's ask */

	r.answer_other_nonce = true; /* a reply that answers another ask */
	assert_int_equal(ask(&r, r.key, r.handoff, &st, &applied), -EPROTO);
	assert_int_equal(r.take_ret, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_resume_ask),
	};
	test_seed();
	return cmocka_run_group_tests_name("session", tests, NULL, NULL);
}

/*
 * Sessions over real loopback connections (engine/session.h): the resume ask
 * and reply that take a cut handoff up again (the right key and handoff get
 * the receiver's state and count across; a wrong key, an ask for another
 * handoff, or a reply meant for another ask are refused), and the base plan
 * and chunk map of a destination that holds part of the base (whole across;
 * a plan under another key, or a map answering another plan or another
 * session's plan, refused); and the receiver's rejoin thread
 * (engine/rejoin.h): an ask before the handoff is named, or without the key,
 * is turned away; a good one retires the old connection and is answered.
 */
#include "engine/conn.h"
#include "engine/rejoin.h"
#include "engine/session.h"
#include "testlib.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

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
	if (eng_session_offer(c, value, 0, err, sizeof(err)) == 0) {
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
	ret = eng_session_take(c, value, NULL, 10, err, sizeof(err));
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
	next_port = 20000 + (unsigned)(test_rand() % 12000); /* below the ephemeral ports (32768-) */

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

/* A source coming back: connect, take the offer, ask; the result in ret/state/applied. */
struct asker {
	const char *loc;
	const uint8_t *key, *handoff;
	int ret;
	enum eng_resume_state state;
	uint64_t applied;
};

static void *ask_once(void *arg)
{
	struct asker *k = arg;
	struct eng_conn_bind b = { .key = k->key };
	uint8_t value[ENG_SESSION_LEN];
	char err[256];
	struct eng_conn *c = eng_conn_connect(k->loc, &b, 20, err, sizeof(err));

	k->ret = -ENOTCONN;
	if (!c)
		return NULL;
	k->ret = eng_session_take(c, value, NULL, 10, err, sizeof(err));
	if (!k->ret)
		k->ret = eng_session_resume_ask(c, value, k->key, CDC_AEAD_AES256GCM, k->handoff, 10, &k->state,
						&k->applied, err, sizeof(err));
	eng_conn_close(c);
	return NULL;
}

static bool count_retire(void *ctx)
{
	atomic_fetch_add((atomic_int *)ctx, 1);
	return true;
}

static void test_rejoin(void **state)
{
	uint8_t key[CDC_KEY_LEN], other[CDC_KEY_LEN], handoff[32], value[ENG_SESSION_LEN], nonce[ENG_RESUME_NONCE_LEN];
	char loc[64], err[256];
	atomic_int retired = 0;
	struct eng_rejoin *r;
	pthread_t t;

	(void)state;
	test_fill_random(key, sizeof(key));
	test_fill_random(other, sizeof(other));
	test_fill_random(handoff, sizeof(handoff));
	snprintf(loc, sizeof(loc), "tcp:127.0.0.1:%u", 20000 + (unsigned)(test_rand() % 12000));
	struct eng_conn_listener *l = eng_conn_listen(loc, NULL, err, sizeof(err));
	assert_non_null(l);
	struct eng_rejoin_args ra = { .key = key, .retire = count_retire, .ctx = &retired };
	assert_int_equal(eng_rejoin_start(&r, l, &ra, err, sizeof(err)), 0);

	/* nothing named yet: nothing to resume */
	struct asker early = { .loc = loc, .key = key, .handoff = handoff };
	ask_once(&early);
	assert_int_not_equal(early.ret, 0);
	assert_null(eng_rejoin_take(r, 0.3, value, nonce));

	eng_rejoin_name(r, handoff, CDC_AEAD_AES256GCM);
	struct asker nokey = { .loc = loc, .key = other, .handoff = handoff };
	ask_once(&nokey);
	assert_int_not_equal(nokey.ret, 0);
	assert_null(eng_rejoin_take(r, 0.3, value, nonce));
	assert_int_equal(atomic_load(&retired), 0);

	/* the key holder: the old connection is retired, the ask answered on the new one */
	struct asker good = { .loc = loc, .key = key, .handoff = handoff };
	assert_int_equal(pthread_create(&t, NULL, ask_once, &good), 0);
	struct eng_conn *c = eng_rejoin_take(r, 10, value, nonce);
	assert_non_null(c);
	assert_int_equal(atomic_load(&retired), 1);
	assert_int_equal(eng_session_resume_reply(c, value, key, CDC_AEAD_AES256GCM, handoff, nonce,
						  ENG_RESUME_VERIFIED, 77), 0);
	pthread_join(t, NULL);
	eng_conn_close(c);
	assert_int_equal(good.ret, 0);
	assert_int_equal(good.state, ENG_RESUME_VERIFIED);
	assert_int_equal(good.applied, 77);
	eng_rejoin_stop(r);
}

/* The destination's side of a base plan: take the plan, answer which chunks it holds. */
struct planner {
	char loc[64];
	uint8_t key[CDC_KEY_LEN];
	struct eng_base_plan plan;
	int plan_ret;
	bool answer_other_plan, answer_other_nonce;
};

static void *plan_receiver(void *arg)
{
	struct planner *r = arg;
	struct eng_conn_bind b = { .key = r->key };
	uint8_t value[ENG_SESSION_LEN], *have[ENG_MAX_OBJECTS] = { 0 };
	char err[256];
	struct eng_conn *c = eng_conn_accept(r->loc, &b, 20, err, sizeof(err));

	r->plan_ret = -ENOTCONN;
	if (!c)
		return NULL;
	if (eng_session_offer(c, value, 65536, err, sizeof(err)) == 0 &&
	    (r->plan_ret = eng_base_plan_recv(c, value, r->key, 10, &r->plan, err, sizeof(err))) == 0) {
		for (unsigned o = 0; o < r->plan.nobj; o++) { /* holds the chunks at even places */
			have[o] = calloc(1, r->plan.obj[o].chunks / 8 + 1);
			for (uint64_t k = 0; k < r->plan.obj[o].chunks; k += 2)
				have[o][k / 8] |= (uint8_t)(1u << (k % 8));
		}
		if (r->answer_other_plan)
			r->plan.hash[0] ^= 1;
		if (r->answer_other_nonce) /* the same plan's have, recorded in another session */
			r->plan.nonce[0] ^= 1;
		eng_base_have_send(c, value, r->key, &r->plan, have, err, sizeof(err));
		for (unsigned o = 0; o < r->plan.nobj; o++)
			free(have[o]);
	}
	eng_conn_close(c);
	return NULL;
}

static void test_base_plan(void **state)
{
	(void)state;
	uint8_t digests[3][5 * CDC_DIGEST_LEN], other[CDC_KEY_LEN];
	struct eng_base_plan plan = { .aead = CDC_AEAD_CHACHA20POLY1305, .nobj = 3, .chunk_size = 65536 };
	uint64_t sizes[3] = { 5 * 65536, 3 * 65536 - 100, 4096 };

	test_fill_random(other, sizeof(other));
	if (!next_port)
		next_port = 20000 + (unsigned)(test_rand() % 12000); /* below the ephemeral ports (32768-) */
	for (unsigned o = 0; o < 3; o++) {
		test_fill_random(digests[o], sizeof(digests[o]));
		plan.obj[o] = (struct eng_plan_object){ .size = sizes[o], .chunks = (sizes[o] + 65535) / 65536,
							.digests = digests[o] };
		test_fill_random(plan.obj[o].id, CDC_DIGEST_LEN);
	}
	/* the base VM's RAM blocks ride along (within the memory object) */
	plan.ram.nblocks = 2;
	plan.ram.blocks[0] = (struct qb_ram_block){ .id = "ram0", .length = 2 * 65536, .image_off = 0 };
	plan.ram.blocks[1] = (struct qb_ram_block){ .id = "0000:00:01.0/vga.vram", .length = 4096,
						    .image_off = 2 * 65536 };
	for (int run = 0; run < 6; run++) {
		struct planner r = { .answer_other_plan = run == 2, .answer_other_nonce = run == 4 };
		plan.ram.blocks[1].length = run == 5 ? 65536 : 4096; /* run 5: a block past the memory object */
		struct eng_conn_bind b = { .key = run == 1 ? other : r.key }; /* run 1: the source has another key */
		uint8_t value[ENG_SESSION_LEN], *have[3];
		char err[256];
		pthread_t t;

		test_fill_random(r.key, sizeof(r.key));
		snprintf(r.loc, sizeof(r.loc), "tcp:127.0.0.1:%u", next_port++);
		assert_int_equal(pthread_create(&t, NULL, plan_receiver, &r), 0);
		struct eng_conn *c = eng_conn_connect(r.loc, &b, 20, err, sizeof(err));
		assert_non_null(c);
		uint32_t chunk = 0;
		if (run == 3) { /* a sender that can only send to a whole base (diff) refuses a cache */
			assert_int_equal(eng_session_take(c, value, NULL, 10, err, sizeof(err)), -EPROTO);
			assert_non_null(strstr(err, "edge cache"));
			eng_conn_close(c);
			pthread_join(t, NULL);
			assert_int_not_equal(r.plan_ret, 0);
			continue;
		}
		assert_int_equal(eng_session_take(c, value, &chunk, 10, err, sizeof(err)), 0);
		assert_int_equal(chunk, 65536); /* the receiver said it holds a cache of 64 KiB chunks */
		assert_int_equal(eng_base_plan_send(c, value, b.key, &plan, err, sizeof(err)), 0);
		for (unsigned o = 0; o < 3; o++)
			have[o] = calloc(1, 8);
		int hr = eng_base_have_recv(c, value, b.key, 10, &plan, have, err, sizeof(err));
		eng_conn_close(c);
		pthread_join(t, NULL);
		if (run == 0) { /* the plan arrives whole, the answer fits it */
			assert_int_equal(r.plan_ret, 0);
			assert_int_equal(hr, 0);
			assert_int_equal(r.plan.aead, CDC_AEAD_CHACHA20POLY1305); /* the sender's choice, carried */
			for (unsigned o = 0; o < 3; o++) {
				assert_int_equal(r.plan.obj[o].chunks, plan.obj[o].chunks);
				assert_int_equal(r.plan.obj[o].size, sizes[o]);
				assert_memory_equal(r.plan.obj[o].id, plan.obj[o].id, CDC_DIGEST_LEN);
				assert_memory_equal(r.plan.obj[o].digests, digests[o], plan.obj[o].chunks * CDC_DIGEST_LEN);
				assert_int_equal(have[o][0], 0x55 & ((1u << plan.obj[o].chunks) - 1));
			}
			assert_int_equal(r.plan.ram.nblocks, 2);
			for (unsigned b = 0; b < 2; b++) {
				assert_string_equal(r.plan.ram.blocks[b].id, plan.ram.blocks[b].id);
				assert_int_equal(r.plan.ram.blocks[b].length, plan.ram.blocks[b].length);
				assert_int_equal(r.plan.ram.blocks[b].image_off, plan.ram.blocks[b].image_off);
			}
		} else if (run == 5) {
			assert_int_equal(r.plan_ret, -EPROTO);
			assert_int_not_equal(hr, 0);
		} else if (run == 1) { /* a source without the key: the plan is refused */
			assert_int_equal(r.plan_ret, -EACCES);
			assert_int_not_equal(hr, 0);
		} else { /* an answer to another plan, or to this plan in another session, is refused */
			assert_int_equal(r.plan_ret, 0);
			assert_int_equal(hr, -EACCES);
		}
		eng_base_plan_free(&r.plan);
		for (unsigned o = 0; o < 3; o++)
			free(have[o]);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_resume_ask),
		cmocka_unit_test(test_base_plan),
		cmocka_unit_test(test_rejoin),
	};
	test_seed();
	return cmocka_run_group_tests_name("session", tests, NULL, NULL);
}

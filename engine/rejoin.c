/*
 * receive --retry-for over tcp: a source that comes back on a new connection
 * while the old one still looks open here (rejoin.h).
 */
#include "rejoin.h"
#include "engine/clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ACCEPT_SLICE_S 0.25 /* how soon the thread notices it is to stop */
#define ASK_WAIT_S 2.0      /* a source that connects asks at once */

struct eng_rejoin {
	struct eng_rejoin_args a;
	struct eng_conn_listener *l;
	pthread_t thread;
	atomic_bool stop;
	pthread_mutex_t lock;
	pthread_cond_t came; /* an ask is waiting, under lock */
	/* under lock */
	bool named;
	uint8_t handoff[32];
	enum cdc_aead aead;
	struct eng_conn *waiting; /* authenticated, not yet taken */
	double waiting_since;     /* eng_mono_s() */
	uint8_t value[ENG_SESSION_LEN], nonce[ENG_RESUME_NONCE_LEN];
};

static void say(const struct eng_rejoin *r, const char *what, const char *why)
{
	fprintf(stderr, "%sreceive: %s%s%s\n", r->a.progress ? "\r\033[K" : "", what, why ? ": " : "", why ? why : "");
}

/* One connection: offer, take its ask, and keep it if it authenticates. */
static void take_one(struct eng_rejoin *r, struct eng_conn *c)
{
	uint8_t value[ENG_SESSION_LEN], nonce[ENG_RESUME_NONCE_LEN], handoff[32];
	enum cdc_aead aead;
	char err[256];
	bool named;

	pthread_mutex_lock(&r->lock);
	named = r->named;
	memcpy(handoff, r->handoff, sizeof(handoff));
	aead = r->aead;
	pthread_mutex_unlock(&r->lock);
	if (!named) {
		say(r, "turned a connection away", "no stream has started yet: nothing to resume");
		eng_conn_close(c);
		return;
	}
	if (eng_session_offer(c, value, r->a.cache_chunk, err, sizeof(err)) ||
	    eng_session_resume_take(c, value, r->a.key, aead, handoff, ASK_WAIT_S, nonce, err, sizeof(err))) {
		say(r, "turned a connection away", err);
		eng_conn_close(c);
		return;
	}
	/* the old connection goes before the new one can be taken: never the other way round */
	pthread_mutex_lock(&r->lock);
	bool retired = r->a.retire(r->a.ctx);
	if (r->waiting) /* an earlier try the receiving path has not taken yet: the source left it */
		eng_conn_close(r->waiting);
	r->waiting = c;
	r->waiting_since = eng_mono_s();
	memcpy(r->value, value, sizeof(value));
	memcpy(r->nonce, nonce, sizeof(nonce));
	pthread_cond_broadcast(&r->came);
	pthread_mutex_unlock(&r->lock);
	if (retired)
		say(r, "the source came back on a new connection; leaving the old one", NULL);
}

static void *rejoin_main(void *arg)
{
	struct eng_rejoin *r = arg;
	char err[256], said[256] = "";

	while (!atomic_load(&r->stop)) {
		bool timed_out;
		struct eng_conn *c = eng_conn_listener_accept(r->l, ACCEPT_SLICE_S, &timed_out, err, sizeof(err));
		if (c) {
			take_one(r, c);
		} else if (!timed_out) {
			if (strcmp(err, said)) /* once per reason */
				say(r, "cannot take a connection", err);
			snprintf(said, sizeof(said), "%s", err);
			struct timespec pause = { 0, 200000000 };
			nanosleep(&pause, NULL);
		}
	}
	return NULL;
}

int eng_rejoin_start(struct eng_rejoin **out, struct eng_conn_listener *l, const struct eng_rejoin_args *a,
		     char *err, size_t errlen)
{
	struct eng_rejoin *r = calloc(1, sizeof(*r));
	pthread_condattr_t ca;
	int ret;

	*out = NULL;
	if (!r) {
		eng_conn_listener_close(l);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r->a = *a;
	r->l = l;
	pthread_mutex_init(&r->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->came, &ca);
	pthread_condattr_destroy(&ca);
	if ((ret = pthread_create(&r->thread, NULL, rejoin_main, r))) {
		snprintf(err, errlen, "cannot start the thread that waits for a returning source: %s", strerror(ret));
		pthread_cond_destroy(&r->came);
		pthread_mutex_destroy(&r->lock);
		eng_conn_listener_close(l);
		free(r);
		return -ret;
	}
	*out = r;
	return 0;
}

void eng_rejoin_name(struct eng_rejoin *r, const uint8_t handoff[32], enum cdc_aead aead)
{
	pthread_mutex_lock(&r->lock);
	memcpy(r->handoff, handoff, sizeof(r->handoff));
	r->aead = aead;
	r->named = true;
	pthread_mutex_unlock(&r->lock);
}

struct eng_conn *eng_rejoin_take(struct eng_rejoin *r, double timeout_s, uint8_t value[ENG_SESSION_LEN],
				 uint8_t nonce[ENG_RESUME_NONCE_LEN])
{
	struct timespec until;
	struct eng_conn *c;

	clock_gettime(CLOCK_MONOTONIC, &until);
	double t = (double)until.tv_sec + (double)until.tv_nsec / 1e9 + (timeout_s > 0 ? timeout_s : 0);
	until.tv_sec = (time_t)t;
	until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
	pthread_mutex_lock(&r->lock);
	for (;;) {
		if (r->waiting && eng_mono_s() - r->waiting_since > ENG_REJOIN_FRESH_S) {
			eng_conn_close(r->waiting); /* its source gave up on the answer */
			r->waiting = NULL;
		}
		if (r->waiting || pthread_cond_timedwait(&r->came, &r->lock, &until) == ETIMEDOUT)
			break;
	}
	if ((c = r->waiting)) {
		memcpy(value, r->value, ENG_SESSION_LEN);
		memcpy(nonce, r->nonce, ENG_RESUME_NONCE_LEN);
		r->waiting = NULL;
	}
	pthread_mutex_unlock(&r->lock);
	return c;
}

void eng_rejoin_stop(struct eng_rejoin *r)
{
	if (!r)
		return;
	atomic_store(&r->stop, true);
	pthread_join(r->thread, NULL);
	if (r->waiting)
		eng_conn_close(r->waiting);
	eng_conn_listener_close(r->l);
	pthread_cond_destroy(&r->came);
	pthread_mutex_destroy(&r->lock);
	explicit_bzero(r->value, sizeof(r->value));
	free(r);
}

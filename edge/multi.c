/*
 * Multi-source chunk fetch (see multi.h). One worker thread per service:
 * connect and handshake (or take over the channel opened while the recipes
 * came), ask which wanted chunks it holds (not the recipes' service: it holds
 * them all), wait for every
 * service's answer (so scarcity is known), then keep a window of requests
 * out and check what comes back. The chunk table is shared under one lock;
 * the bytes are decompressed and hashed outside it.
 */
#include "multi.h"
#include "coord.h"
#include "codecs/codecs.h"
#include "engine/errbuf.h"
#include "engine/tcp.h"
#include "dpdk_io/dio.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HAVE_S 30.0
#define JOIN_WAIT_S 1.0      /* after the first answer, for the others' (a late one joins as it comes) */
#define WINDOW_START 8       /* chunks in flight before the path is measured */
#define WINDOW_MIN 2
#define RATE_INTERVAL_S 0.25 /* goodput samples; the window uses the best of the last RATE_SAMPLES */
#define RATE_SAMPLES 8
#define PIN_S 3600
#define PUSHED_DROP (1ull << 63) /* a fifo entry: the k-th chunk sent unasked, to read and drop */

static int drain_pushed(struct edg_peer *p, struct edg_chan *ch, uint32_t cs, double timeout_s, uint64_t *wire,
			uint64_t *raw_bytes, uint64_t *chunks, char *err, size_t errlen);

enum chunk_state { PENDING, FLYING, DONE, LOST };

struct job {
	struct edg_store *s;
	uint32_t cs;
	const uint8_t *key;
	double timeout_s;
	const uint8_t *w;         /* wanted digests, distinct */
	uint64_t nw;
	uint8_t *state;           /* enum chunk_state */
	uint32_t *asking;         /* services it is asked of now (a bit each) */
	double *asked_t;          /* when it was first handed out */
	uint32_t *mask;           /* services that said they hold it */
	uint8_t *others;          /* of those, how many are not the origin */
	uint64_t pending, done, lost;
	uint32_t alive;           /* services still working */
	unsigned npeers, answered;
	double first_answer;      /* when the first service said what it holds */
	uint64_t requeued;        /* bumped when a chunk goes back to PENDING */
	/* the endgame's candidates: the chunks in flight once nothing was left to hand
	 * out (as of tail_requeued), the last handed out first */
	struct tail_entry { double t; uint64_t i; } *tail;
	uint64_t ntail, tail_requeued;
	bool tail_built;
	double t0, last_arrival, stall;
	uint64_t dup_bytes;
	int fatal;
	bool stop;                /* the deadline passed: hand out nothing more */
	atomic_bool ended;        /* every chunk in: a dpdk: connect under way gives up */
	char *err;
	size_t errlen;
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

struct worker {
	struct job *j;
	struct edg_peer *p;
	unsigned id;
	pthread_t th;
	uint64_t *order, norder, head, seen_requeued;
	/* chunks asked for and not yet answered, in the order asked */
	uint64_t *fifo;
	double *asked_at;
	uint64_t fh, fn, fcap;
	bool fetching; /* in the request loop (under the job's lock, like fn) */
	/* the path */
	double rate_sample[RATE_SAMPLES], interval_t, interval_bytes;
	unsigned nsample;
	double active_s, active_since;
	double store_pause_s;     /* the longest this worker took to store a batch (it reads nothing meanwhile) */
	/* arrived chunks, stored together */
	uint8_t *msg, *batch, batch_digest[EDG_REQ_MAX * EDG_DIGEST_LEN];
	const uint8_t *batch_ptr[EDG_REQ_MAX];
	uint32_t batch_len[EDG_REQ_MAX];
	unsigned nbatch;
	struct cdc_comp_ctx *cz;
	struct eng_conn *c;
	struct edg_chan *ch;
};

static double mono(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Waits on the job's condition for at most ms (under j->lock). */
static void wait_ms(struct job *j, long ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ms * 1000 * 1000;
	if (ts.tv_nsec >= 1000000000L)
		ts.tv_sec++, ts.tv_nsec -= 1000000000L;
	pthread_cond_timedwait(&j->cond, &j->lock, &ts);
}

/* ---- the chunk table (under j->lock) ------------------------------------------- */

/* Once every service answered: what no live one holds is lost (pending chunks only). */
static void settle_unheld(struct job *j)
{
	if (j->answered < j->npeers)
		return; /* one still connecting may hold it */
	for (uint64_t i = 0; i < j->nw; i++)
		if (j->state[i] == PENDING && !(j->mask[i] & j->alive)) {
			j->state[i] = LOST;
			j->pending--;
			j->lost++;
		}
}

/* Chunk i is nobody's now: back to the pool, or lost when no live service holds it. */
static void release(struct job *j, uint64_t i)
{
	if (j->state[i] != FLYING || j->asking[i])
		return;
	if ((j->mask[i] & j->alive) || j->answered < j->npeers) {
		j->state[i] = PENDING;
		j->pending++;
		j->requeued++;
	} else {
		j->state[i] = LOST;
		j->lost++;
	}
}

static void peer_failed(struct worker *wk, const char *why)
{
	struct job *j = wk->j;

	wk->p->failed = true;
	snprintf(wk->p->error, sizeof(wk->p->error), "%s", why);
	j->alive &= ~(1u << wk->id);
	for (uint64_t k = 0; k < wk->fn; k++) {
		uint64_t i = wk->fifo[(wk->fh + k) % wk->fcap];
		if (i & PUSHED_DROP)
			continue;
		j->asking[i] &= ~(1u << wk->id);
		release(j, i);
	}
	wk->fn = 0;
	settle_unheld(j); /* what only it held, and nobody is fetching, is lost now */
	pthread_cond_broadcast(&j->cond);
}

static int tail_cmp(const void *a, const void *b)
{
	const struct tail_entry *x = a, *y = b;

	return x->t != y->t ? (x->t > y->t ? -1 : 1) : (x->i > y->i) - (x->i < y->i);
}

/*
 * The endgame's candidates, listed once when nothing is left to hand out (and
 * again after chunks came back): the few in flight then, not a search of every
 * chunk on each take. false when there is no room for the list.
 */
static bool endgame_tail(struct job *j)
{
	if (j->tail_built && j->tail_requeued == j->requeued)
		return true;
	if (!j->tail && !(j->tail = malloc((j->nw ? j->nw : 1) * sizeof(*j->tail))))
		return false;
	j->ntail = 0;
	for (uint64_t i = 0; i < j->nw; i++)
		if (j->state[i] == FLYING)
			j->tail[j->ntail++] = (struct tail_entry){ j->asked_t[i], i };
	qsort(j->tail, j->ntail, sizeof(*j->tail), tail_cmp);
	j->tail_requeued = j->requeued;
	j->tail_built = true;
	return true;
}

/*
 * The next chunk for this service: its own order first; then, with copy set
 * (endgame: nothing left to hand out), one asked of a single other service,
 * the one asked last (it would arrive last).
 */
static bool take(struct worker *wk, uint64_t *out, bool copy)
{
	struct job *j = wk->j;
	uint32_t bit = 1u << wk->id;

	if (j->stop)
		return false;
	if (wk->seen_requeued != j->requeued) { /* chunks came back: look again from the start */
		wk->seen_requeued = j->requeued;
		wk->head = 0;
	}
	while (wk->head < wk->norder) {
		uint64_t i = wk->order[wk->head++];
		if (j->state[i] == PENDING && (j->mask[i] & bit)) {
			j->state[i] = FLYING;
			j->asking[i] = bit;
			j->asked_t[i] = mono();
			j->pending--;
			*out = i;
			return true;
		}
	}
	if (j->pending || !copy || !endgame_tail(j))
		return false;
	for (uint64_t k = 0; k < j->ntail; k++) {
		uint64_t i = j->tail[k].i;
		uint32_t a = j->asking[i];
		if (j->state[i] == FLYING && a && !(a & (a - 1)) && !(a & bit) && (j->mask[i] & bit)) {
			j->asking[i] |= bit;
			*out = i;
			return true;
		}
	}
	return false;
}

/* ---- one service ---------------------------------------------------------------- */

/* The path's best measured goodput (raw bytes/s), 0 until measured. */
static double best_rate(const struct worker *wk)
{
	double best = 0;

	for (unsigned k = 0; k < wk->nsample && k < RATE_SAMPLES; k++)
		if (wk->rate_sample[k] > best)
			best = wk->rate_sample[k];
	return wk->p->min_rtt_s > 0 ? best : 0;
}

static double window_bytes(const struct worker *wk)
{
	double best = best_rate(wk), cs = wk->j->cs;

	if (best <= 0)
		return WINDOW_START * cs;
	/* twice what the path carries in a round trip and in this worker's longest pause to
	 * store a batch, plus two chunks of slack: it grows with every round trip while the
	 * window limits, and the server still has chunks to send when the worker returns */
	double w = 2 * best * (wk->p->min_rtt_s + wk->store_pause_s) + 2 * cs;
	return w < WINDOW_MIN * cs ? WINDOW_MIN * cs : w;
}

/*
 * Endgame copies go out once what this path has in flight is less than a round
 * trip's worth (plus a chunk): they then arrive as the path would fall idle,
 * not a round trip after, and they do not queue behind a deep window.
 */
static bool copy_room(const struct worker *wk)
{
	double cs = wk->j->cs;

	return (double)(wk->fn + 1) * cs <= best_rate(wk) * wk->p->min_rtt_s + cs || !wk->fn;
}

static void sample_rate(struct worker *wk, double now, uint32_t raw)
{
	wk->interval_bytes += raw;
	if (now - wk->interval_t < RATE_INTERVAL_S)
		return;
	wk->rate_sample[wk->nsample++ % RATE_SAMPLES] = wk->interval_bytes / (now - wk->interval_t);
	wk->interval_t = now;
	wk->interval_bytes = 0;
}

/*
 * The batch into the store. A store that fails fails the fetch (its chunks
 * were counted done): j->fatal with the store's reason, not the source's.
 */
static int flush_batch(struct worker *wk, char *err, size_t errlen)
{
	struct job *j = wk->j;
	uint64_t added;
	double t = mono();
	int r = wk->nbatch ? edg_store_put_many(j->s, wk->nbatch, wk->batch_digest, wk->batch_ptr, wk->batch_len,
					       &added, err, errlen)
			   : 0;

	if (mono() - t > wk->store_pause_s)
		wk->store_pause_s = mono() - t;
	wk->nbatch = 0;
	if (r) {
		pthread_mutex_lock(&j->lock);
		if (!j->fatal) {
			j->fatal = r;
			eng_set_err(j->err, j->errlen, "cannot store the chunks: %s", err);
		}
		pthread_cond_broadcast(&j->cond);
		pthread_mutex_unlock(&j->lock);
	}
	return r;
}

/* Fill the window: take chunks under the lock, ask for them in requests of up to EDG_REQ_MAX. */
static int ask_more(struct worker *wk, double now)
{
	struct job *j = wk->j;
	uint8_t req[EDG_REQ_MAX * EDG_DIGEST_LEN];
	double win = window_bytes(wk);
	uint32_t per_req = (uint32_t)(win / j->cs / 2);

	per_req = per_req < 1 ? 1 : per_req > EDG_REQ_MAX ? EDG_REQ_MAX : per_req;
	wk->p->window_bytes = win;
	for (;;) {
		uint32_t k = 0;
		pthread_mutex_lock(&j->lock);
		while (k < per_req && (double)(wk->fn + 1) * j->cs <= win && wk->fn < wk->fcap) {
			uint64_t i;
			if (!take(wk, &i, copy_room(wk)))
				break;
			wk->fifo[(wk->fh + wk->fn) % wk->fcap] = i;
			wk->asked_at[(wk->fh + wk->fn) % wk->fcap] = now;
			wk->fn++;
			memcpy(req + (size_t)k++ * EDG_DIGEST_LEN, j->w + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
		}
		pthread_mutex_unlock(&j->lock);
		if (!k)
			return 0;
		if (wk->fn == k) { /* the path was idle: a new busy stretch */
			wk->active_since = now;
			wk->interval_t = now;
			wk->interval_bytes = 0;
		}
		int r = edg_request_chunks(wk->ch, req, k);
		if (r)
			return r;
		wk->p->wire_bytes += 4 + 1 + 4 + (uint64_t)k * EDG_DIGEST_LEN + CDC_TAG_LEN;
	}
}

static bool all_in(struct job *j)
{
	pthread_mutex_lock(&j->lock);
	bool in = j->done + j->lost == j->nw || j->fatal;
	pthread_mutex_unlock(&j->lock);
	return in;
}

/* The answer for the oldest chunk asked. */
static int take_answer(struct worker *wk, char *err, size_t errlen)
{
	struct job *j = wk->j;
	uint64_t i = wk->fifo[wk->fh];
	bool drop = i & PUSHED_DROP; /* sent unasked, and held here or on its way elsewhere */
	bool unasked = wk->asked_at[wk->fh] < 0; /* waited in the channel: no round trip, no rate */
	const uint8_t *want = drop ? wk->p->pushed + (i & ~PUSHED_DROP) * EDG_DIGEST_LEN : j->w + i * EDG_DIGEST_LEN;
	uint8_t *dst = wk->batch + (size_t)wk->nbatch * j->cs;
	uint32_t raw = 0;
	int r = edg_recv_chunk(wk->ch, want, wk->msg, wk->cz, dst, j->cs, &raw, j->timeout_s, &wk->p->wire_bytes, err,
			       errlen);
	double now = mono();

	if (r < 0)
		return r;
	/* the least ever seen: a chunk asked for when its path was idle, so no queue of
	 * ours is in it (later ones wait behind the window, and would grow it); one sent
	 * unasked was not asked at all */
	double rtt = now - wk->asked_at[wk->fh];
	if (!unasked && (wk->p->min_rtt_s <= 0 || rtt < wk->p->min_rtt_s))
		wk->p->min_rtt_s = rtt;
	pthread_mutex_lock(&j->lock); /* fn under the lock: the fetch's end reads it */
	wk->fh = (wk->fh + 1) % wk->fcap;
	wk->fn--;
	if (!wk->fn)
		wk->active_s += now - wk->active_since;
	if (drop) {
		if (!r) {
			wk->p->duplicate_chunks++;
			j->dup_bytes += raw;
		}
		pthread_mutex_unlock(&j->lock);
		return 0;
	}
	j->asking[i] &= ~(1u << wk->id);
	if (r == 1) { /* it said it held the chunk; not any more */
		wk->p->lacked++;
		j->mask[i] &= ~(1u << wk->id);
		release(j, i);
		pthread_cond_broadcast(&j->cond);
		pthread_mutex_unlock(&j->lock);
		return 0;
	}
	bool first = j->state[i] != DONE;
	if (first) {
		if (j->state[i] == PENDING) /* it had come back to the pool while we raced */
			j->pending--;
		j->state[i] = DONE;
		j->done++;
		/* stalls: gaps between arrivals, from the first on (connecting is not one) */
		if (j->last_arrival > 0 && now - j->last_arrival > j->stall)
			j->stall = now - j->last_arrival;
		j->last_arrival = now;
		if (!wk->p->chunks)
			wk->p->first_chunk_s = now - j->t0;
		wk->p->last_chunk_s = now - j->t0;
		wk->p->chunks++;
		wk->p->raw_bytes += raw;
	} else {
		wk->p->duplicate_chunks++;
		j->dup_bytes += raw;
	}
	/* nothing left to hand out and this path drained: store now, while others still fetch */
	bool ending = !j->pending && !wk->fn;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	if (!unasked)
		sample_rate(wk, now, raw);
	if (!first)
		return 0;
	memcpy(wk->batch_digest + wk->nbatch * EDG_DIGEST_LEN, j->w + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
	wk->batch_ptr[wk->nbatch] = dst;
	wk->batch_len[wk->nbatch++] = raw;
	return wk->nbatch == EDG_REQ_MAX || ending ? flush_batch(wk, err, errlen) : 0;
}

/*
 * Order of this service's chunks: scarcest first; the origin takes its own
 * first, then the others' last ones. Sorted on a copy of the scarcity taken
 * under the lock (a source that answers late changes it meanwhile).
 */
struct order_key {
	uint64_t i;
	int key;
};

static int order_cmp(const void *a, const void *b)
{
	const struct order_key *x = a, *y = b;

	return x->key != y->key ? (x->key < y->key ? -1 : 1) : x->i < y->i ? -1 : x->i > y->i;
}

static int build_order(struct worker *wk)
{
	struct job *j = wk->j;
	uint32_t bit = 1u << wk->id;
	uint64_t n = 0;

	pthread_mutex_lock(&j->lock);
	for (uint64_t i = 0; i < j->nw; i++)
		n += (j->mask[i] & bit) != 0;
	struct order_key *k = malloc((n ? n : 1) * sizeof(*k));
	wk->order = malloc((n ? n : 1) * sizeof(*wk->order));
	if (!k || !wk->order) {
		pthread_mutex_unlock(&j->lock);
		free(k);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < j->nw; i++)
		if (j->mask[i] & bit) {
			int o = j->others[i];
			/* origin: only-mine first (key < 0), then the most widely held; others: the fewest holders first */
			k[wk->norder++] = (struct order_key){ i, wk->p->origin ? (o ? 256 - o : -1) : o };
		}
	pthread_mutex_unlock(&j->lock);
	qsort(k, wk->norder, sizeof(*k), order_cmp);
	for (uint64_t x = 0; x < wk->norder; x++)
		wk->order[x] = k[x].i;
	free(k);
	return 0;
}

/*
 * The chunks this service sent unasked behind its shares are on their way: each is taken as
 * if asked (it heads the fifo), or, when the cache holds it or another path has it, read and
 * dropped when it comes. Under nothing: before the request loop.
 */
static void take_pushed(struct worker *wk, double now)
{
	struct job *j = wk->j;
	uint32_t bit = 1u << wk->id;

	pthread_mutex_lock(&j->lock);
	for (uint32_t k = 0; k < wk->p->npushed && wk->fn < wk->fcap; k++) {
		const uint8_t *d = wk->p->pushed + (size_t)k * EDG_DIGEST_LEN;
		const uint8_t *hit = j->nw ? bsearch(d, j->w, j->nw, EDG_DIGEST_LEN, edg_digest_cmp) : NULL;
		uint64_t i = hit ? (uint64_t)(hit - j->w) / EDG_DIGEST_LEN : 0, slot = (wk->fh + wk->fn) % wk->fcap;
		if (hit && j->state[i] == PENDING) {
			j->state[i] = FLYING;
			j->asking[i] = bit;
			j->asked_t[i] = now;
			j->pending--;
			wk->fifo[slot] = i;
			wk->p->unasked++;
		} else {
			wk->fifo[slot] = PUSHED_DROP | k;
		}
		wk->asked_at[slot] = -1;
		if (!wk->fn++)
			wk->active_since = wk->interval_t = now;
	}
	pthread_mutex_unlock(&j->lock);
}

static void *worker_main(void *arg)
{
	struct worker *wk = arg;
	struct job *j = wk->j;
	char err[256] = "";
	bool *held = NULL;
	int r = -ENOMEM;

	bool holds_all = wk->p->holds_all && wk->p->chan;

	if (wk->p->chan) { /* opened while the recipes came: no second connection */
		pthread_mutex_lock(&j->lock);
		wk->c = wk->p->conn;
		wk->ch = wk->p->chan;
		pthread_mutex_unlock(&j->lock);
		wk->p->conn = NULL;
		wk->p->chan = NULL;
	} else {
		struct eng_conn_bind bind = { .key = j->key, .cancel = &j->ended };
		struct eng_conn *c = eng_conn_connect(wk->p->loc, &bind, EDG_CONNECT_S, err, sizeof(err));
		pthread_mutex_lock(&j->lock); /* the fetch's end shuts it (under the lock) to wake a wait */
		wk->c = c;
		pthread_mutex_unlock(&j->lock);
		wk->ch = wk->c ? edg_chan_client(wk->c, j->key, EDG_CONNECT_S, err, sizeof(err)) : NULL;
		free(wk->p->pushed); /* a new channel: nothing waits in it */
		wk->p->pushed = NULL;
		wk->p->npushed = 0;
	}
	if (wk->ch && (held = calloc(j->nw ? j->nw : 1, sizeof(*held)))) {
		if (holds_all) { /* it sent the recipes, so it holds the images: a chunk it lacks after all is a NOCHUNK */
			memset(held, 1, j->nw * sizeof(*held));
			r = 0;
		} else {
			/* what it sent unasked comes first: read and dropped (duplicates), then what it holds */
			uint64_t n = 0, raw = 0;
			r = drain_pushed(wk->p, wk->ch, j->cs, HAVE_S, &wk->p->wire_bytes, &raw, &n, err, sizeof(err));
			pthread_mutex_lock(&j->lock);
			wk->p->duplicate_chunks += n;
			j->dup_bytes += raw;
			pthread_mutex_unlock(&j->lock);
			if (!r)
				r = edg_ask_have(wk->ch, j->w, j->nw, held, HAVE_S, &wk->p->wire_bytes, err, sizeof(err));
		}
	} else if (wk->ch) {
		snprintf(err, sizeof(err), "out of memory");
	}
	/* every service's answer before any request: scarcity decides the order */
	pthread_mutex_lock(&j->lock);
	if (!r) {
		for (uint64_t i = 0; i < j->nw; i++)
			if (held[i]) {
				j->mask[i] |= 1u << wk->id;
				j->others[i] += !wk->p->origin;
				wk->p->held++;
			}
	} else {
		wk->p->failed = true;
		snprintf(wk->p->error, sizeof(wk->p->error), "%s", err);
		j->alive &= ~(1u << wk->id);
	}
	j->answered++;
	wk->p->answer_s = mono() - j->t0;
	if (!j->first_answer && !holds_all) /* the clock starts with a service that had to be asked */
		j->first_answer = mono();
	settle_unheld(j);
	pthread_cond_broadcast(&j->cond);
	/* every service's answer before any request, so scarcity decides the order; but a
	 * service slow to connect does not hold the others up: it joins when it answers */
	while (j->answered < j->npeers &&
	       mono() - (j->first_answer ? j->first_answer : j->t0 + EDG_CONNECT_S) < JOIN_WAIT_S)
		wait_ms(j, 50);
	pthread_mutex_unlock(&j->lock);
	free(held);
	if (r)
		goto out;
	if ((r = build_order(wk))) {
		snprintf(err, sizeof(err), "out of memory");
		goto fail;
	}
	wk->fcap = EDG_CHAN_MAX_PAYLOAD / EDG_DIGEST_LEN; /* more than any window */
	wk->fifo = malloc(wk->fcap * sizeof(*wk->fifo));
	wk->asked_at = malloc(wk->fcap * sizeof(*wk->asked_at));
	wk->msg = malloc(edg_chunk_msg_max(j->cs));
	wk->batch = malloc((size_t)EDG_REQ_MAX * j->cs);
	wk->cz = cdc_comp_new();
	if (!wk->fifo || !wk->asked_at || !wk->msg || !wk->batch || !wk->cz) {
		snprintf(err, sizeof(err), "out of memory");
		r = -ENOMEM;
		goto fail;
	}
	pthread_mutex_lock(&j->lock);
	wk->fetching = true;
	pthread_mutex_unlock(&j->lock);
	take_pushed(wk, mono());
	for (;;) {
		if ((r = ask_more(wk, mono()))) {
			snprintf(err, sizeof(err), "cannot reach the service: %s", strerror(-r));
			goto fail;
		}
		if (wk->fn) {
			if (all_in(j)) /* what is in flight is only copies now */
				break;
			if ((r = take_answer(wk, err, sizeof(err))) && all_in(j))
				break; /* woken by the fetch's end (its connection shut), not failed */
			if (r)
				goto fail;
			continue;
		}
		/* nothing to ask for now: wait until chunks come back or the job ends */
		pthread_mutex_lock(&j->lock);
		bool over = j->done + j->lost == j->nw || j->fatal || j->stop;
		if (!over)
			wait_ms(j, 100);
		pthread_mutex_unlock(&j->lock);
		if (over)
			break;
	}
	flush_batch(wk, err, sizeof(err));
	edg_fetch_done(wk->ch);
	goto out;
fail:
	if (wk->nbatch) { /* what arrived and checked out stays */
		char ferr[64];
		flush_batch(wk, ferr, sizeof(ferr));
	}
	pthread_mutex_lock(&j->lock);
	peer_failed(wk, err);
	pthread_mutex_unlock(&j->lock);
out:
	if (wk->fn) /* never left with chunks in flight */
		wk->active_s += mono() - wk->active_since;
	wk->p->rate_bps = wk->active_s > 0 ? (double)wk->p->raw_bytes * 8 / wk->active_s : 0;
	edg_chan_free(wk->ch);
	free(wk->p->pushed); /* what was taken came; the rest went with the channel */
	wk->p->pushed = NULL;
	wk->p->npushed = 0;
	pthread_mutex_lock(&j->lock);
	struct eng_conn *c = wk->c;
	wk->c = NULL;
	pthread_mutex_unlock(&j->lock);
	if (c)
		eng_conn_close(c);
	wk->ch = NULL;
	return NULL;
}

/* ---- the fetch ------------------------------------------------------------------ */

int edg_fetch_set(struct edg_store *s, struct edg_peer *peers, unsigned npeers, const uint8_t key[32],
		  const uint8_t *digests, uint64_t n, double timeout_s, double deadline_s, struct edg_multi_report *rep,
		  edg_multi_progress_fn progress, void *ctx, char *err, size_t errlen)
{
	struct job j = { .s = s, .cs = edg_store_chunk_size(s), .key = key, .timeout_s = timeout_s, .npeers = npeers,
			 .err = err, .errlen = errlen };
	struct worker *wk = NULL;
	bool *missing = NULL;
	uint8_t *w = NULL;
	unsigned started = 0;
	int r = -ENOMEM;

	memset(rep, 0, sizeof(*rep));
	rep->chunks = n;
	rep->timeout_s = timeout_s;
	j.t0 = mono();
	if (!npeers || npeers > EDG_PEERS_MAX) {
		eng_set_err(err, errlen, "between 1 and %d chunk services, not %u", EDG_PEERS_MAX, npeers);
		return -EINVAL;
	}
	pthread_mutex_init(&j.lock, NULL);
	pthread_cond_init(&j.cond, NULL);
	if (!(missing = malloc(n ? n : 1)))
		goto oom;
	uint64_t nm;
	if ((r = edg_store_missing(s, digests, n, missing, &nm))) {
		eng_set_err(err, errlen, "cannot read the cache");
		goto out;
	}
	r = -ENOMEM;
	if (!(w = edg_wanted(digests, missing, n, &j.nw)))
		goto oom;
	uint64_t u = j.nw;
	rep->missing = u;
	if (!u) { /* nothing lacking: no source need be asked */
		r = 0;
		goto out;
	}
	j.w = w;
	j.pending = u;
	j.state = calloc(u ? u : 1, 1);
	j.asking = calloc(u ? u : 1, sizeof(*j.asking));
	j.asked_t = calloc(u ? u : 1, sizeof(*j.asked_t));
	j.mask = calloc(u ? u : 1, sizeof(*j.mask));
	j.others = calloc(u ? u : 1, 1);
	wk = calloc(npeers, sizeof(*wk));
	if (!j.state || !j.asking || !j.asked_t || !j.mask || !j.others || !wk)
		goto oom;
	j.alive = (1u << npeers) - 1;
	for (unsigned k = 0; k < npeers; k++) {
		/* the figures only: loc .. holds_all, which come before held, are the caller's */
		memset(&peers[k].held, 0, sizeof(peers[k]) - offsetof(struct edg_peer, held));
		wk[k] = (struct worker){ .j = &j, .p = &peers[k], .id = k };
	}
	for (; started < npeers; started++)
		if (pthread_create(&wk[started].th, NULL, worker_main, &wk[started])) {
			/* the ones not started count as answered-and-failed */
			pthread_mutex_lock(&j.lock);
			for (unsigned k = started; k < npeers; k++) {
				peers[k].failed = true;
				snprintf(peers[k].error, sizeof(peers[k].error), "no thread for it");
				j.alive &= ~(1u << k);
				j.answered++;
			}
			pthread_cond_broadcast(&j.cond);
			pthread_mutex_unlock(&j.lock);
			break;
		}
	/* progress from here while the workers run */
	double shown = 0;
	for (;;) {
		pthread_mutex_lock(&j.lock);
		if (deadline_s > 0 && mono() - j.t0 > deadline_s && !j.stop) {
			j.stop = true; /* what is still pending is left to the caller (lost) */
			pthread_cond_broadcast(&j.cond);
		}
		bool over = j.done + j.lost == j.nw || j.fatal || (j.answered == npeers && !j.alive) || j.stop;
		if (!over)
			wait_ms(&j, 500);
		double now = mono();
		if (progress && (over || now - shown >= 0.5)) { /* arrivals wake us far more often */
			progress(ctx, peers, npeers, j.done, j.nw, now - j.t0);
			shown = now;
		}
		pthread_mutex_unlock(&j.lock);
		if (over)
			break;
	}
	/* every chunk in: a worker still waiting for a copy or an answer is woken, not waited
	 * for; one in the request loop with nothing in flight ends by itself, saying goodbye
	 * (shutting it would cut that off: dpdk: aborts at once, the goodbye unread) */
	pthread_mutex_lock(&j.lock);
	if (j.done + j.lost == j.nw || j.fatal)
		atomic_store(&j.ended, true);
	for (unsigned k = 0; k < started && (j.done + j.lost == j.nw || j.fatal); k++)
		if (wk[k].c && (wk[k].fn || !wk[k].fetching || j.fatal))
			eng_conn_shutdown(wk[k].c, SHUT_RDWR);
	pthread_mutex_unlock(&j.lock);
	for (unsigned k = 0; k < started; k++)
		pthread_join(wk[k].th, NULL);
	/* a chunk nobody left holds is lost (every service failed, or none held it) */
	for (uint64_t i = 0; i < j.nw; i++)
		if (j.state[i] == PENDING || j.state[i] == FLYING)
			j.state[i] = LOST, j.lost++;
	rep->seconds = mono() - j.t0;
	rep->stall_s = j.stall;
	rep->lost = j.lost;
	rep->duplicate_bytes = j.dup_bytes;
	for (unsigned k = 0; k < npeers; k++) {
		rep->fetched_chunks += peers[k].chunks;
		rep->fetched_raw_bytes += peers[k].raw_bytes;
		rep->wire_bytes += peers[k].wire_bytes;
	}
	r = j.fatal;
	goto out;
oom:
	eng_set_err(err, errlen, "out of memory");
out:
	for (unsigned k = 0; wk && k < npeers; k++) {
		free(wk[k].order);
		free(wk[k].fifo);
		free(wk[k].asked_at);
		free(wk[k].msg);
		free(wk[k].batch);
		cdc_comp_free(wk[k].cz);
	}
	free(wk);
	free(j.state);
	free(j.asking);
	free(j.asked_t);
	free(j.tail);
	free(j.mask);
	free(j.others);
	free(w);
	free(missing);
	pthread_cond_destroy(&j.cond);
	pthread_mutex_destroy(&j.lock);
	return r;
}

int edg_fetch_multi(struct edg_store *s, struct edg_peer *peers, unsigned npeers, const uint8_t key[32],
		    const struct edg_recipe *rc, const char *const *as, unsigned nimg, double timeout_s,
		    struct edg_multi_report *rep, edg_multi_progress_fn progress, void *ctx, char *err, size_t errlen)
{
	char pin[EDG_NAME_MAX + 1];
	uint64_t n = 0, size = 0;
	uint8_t *all = NULL;
	int r;

	memset(rep, 0, sizeof(*rep));
	for (unsigned i = 0; i < nimg; i++) {
		if (rc[i].chunk_size != edg_store_chunk_size(s)) {
			eng_set_err(err, errlen, "the service cuts %u-byte chunks, this cache %u-byte ones", rc[i].chunk_size,
				    edg_store_chunk_size(s));
			return -EINVAL;
		}
		n += rc[i].n;
		size += rc[i].size;
	}
	/* the images' chunks together: one fetch, each source asked once */
	if (!(all = malloc(n ? n * EDG_DIGEST_LEN : 1))) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (unsigned i = 0, at = 0; i < nimg; at += (unsigned)rc[i].n, i++)
		memcpy(all + (size_t)at * EDG_DIGEST_LEN, rc[i].digests, rc[i].n * EDG_DIGEST_LEN);
	/* pinned while they arrive: a collection meanwhile must not take what is not registered yet */
	snprintf(pin, sizeof(pin), "fetch:%d:%.200s", (int)getpid(), as[0]);
	if ((r = edg_store_pin(s, pin, all, n, (uint64_t)time(NULL) + PIN_S, err, errlen))) {
		free(all);
		return r;
	}
	r = edg_fetch_set(s, peers, npeers, key, all, n, timeout_s, 0, rep, progress, ctx, err, errlen);
	rep->size = size;
	if (!r && rep->lost) {
		char who[300] = "";
		for (unsigned k = 0; k < npeers; k++)
			if (peers[k].failed && !who[0])
				snprintf(who, sizeof(who), " (%.40s: %.240s)", peers[k].name, peers[k].error);
		eng_set_err(err, errlen, "%llu chunks are held by no service left%s", (unsigned long long)rep->lost, who);
		r = -ENOENT;
	}
	for (unsigned i = 0; !r && i < nimg; i++)
		r = edg_store_register(s, as[i], rc[i].size, rc[i].digests, rc[i].n, err, errlen);
	edg_store_unpin(s, pin, NULL, 0);
	free(all);
	return r;
}

/* ---- sources -------------------------------------------------------------------- */

/*
 * Which part of each recipe peer k sends, of *parts: the origin's link is the one to spare, so
 * with other peers it sends the header alone (part == parts). Dealt over every peer named,
 * reachable or not: a share that does not come is asked of the peer that names the recipe.
 */
static uint32_t dealt_share(const struct edg_peer *p, unsigned n, unsigned k, uint32_t *parts)
{
	uint32_t others = 0, at = 0;

	for (unsigned q = 0; q < n; q++)
		others += !p[q].origin;
	if (!others) { /* origins alone: every one sends a part */
		*parts = n;
		return k;
	}
	*parts = others;
	if (p[k].origin)
		return others;
	for (unsigned q = 0; q < k; q++)
		at += !p[q].origin;
	return at;
}

struct connector {
	struct edg_peer *p;
	const uint8_t *key;
	double timeout_s;
	const char *const *names;
	unsigned nimg;
	uint32_t share, parts, push;
	pthread_t th;
	bool started;
};

static void *connect_main(void *arg)
{
	struct connector *cn = arg;
	uint32_t push = cn->nimg ? cn->push : 0;
	char err[256];
	struct eng_conn_bind bind = { .key = cn->key }; /* dpdk: keys its own handshake with it too */
	struct edg_chan *ch = NULL;

	cn->p->conn = eng_conn_connect(cn->p->loc, &bind, cn->timeout_s, err, sizeof(err));
	if (cn->p->conn)
		ch = edg_chan_client_start(cn->p->conn, cn->key, err, sizeof(err));
	bool asked = true;
	/* sent with the hello; the pushed chunks behind the last share only, so that every share
	 * comes before them */
	for (unsigned i = 0; i < cn->nimg && ch && asked; i++)
		asked = !edg_ask_recipe_part(ch, cn->names[i], cn->share, cn->parts, i + 1 == cn->nimg ? push : 0, err,
					     sizeof(err));
	if (ch && (!asked || edg_chan_client_finish(ch, cn->key, cn->timeout_s, err, sizeof(err)))) {
		edg_chan_free(ch);
		ch = NULL;
	}
	cn->p->chan = ch;
	cn->p->recipes_asked = ch && cn->nimg;
	cn->p->push_asked = ch && push;
	if (cn->p->conn && !cn->p->chan) {
		eng_conn_close(cn->p->conn);
		cn->p->conn = NULL;
	}
	if (!cn->p->chan)
		snprintf(cn->p->error, sizeof(cn->p->error), "%s", err);
	return NULL;
}

void edg_sources_connect(struct edg_peer *p, unsigned n, const uint8_t key[32], double timeout_s,
			 const char *const *names, unsigned nimg, uint32_t push)
{
	struct connector cn[EDG_PEERS_MAX];
	bool origin = false;

	for (unsigned k = 0; k < n; k++)
		origin |= p[k].origin;

	for (unsigned k = 0; k < n && k < EDG_PEERS_MAX; k++) {
		/* the source that names the recipes (the origin, else the first) gets the whole wait */
		bool first = origin ? p[k].origin : k == 0;
		cn[k] = (struct connector){ .p = &p[k], .key = key, .names = names, .nimg = nimg, .push = push,
					    .timeout_s = first || timeout_s < EDG_CONNECT_S ? timeout_s : EDG_CONNECT_S };
		cn[k].share = dealt_share(p, n, k, &cn[k].parts);
		if (p[k].chan)
			continue;
		cn[k].started = !pthread_create(&cn[k].th, NULL, connect_main, &cn[k]);
		if (!cn[k].started) /* no thread: this one connects in turn */
			connect_main(&cn[k]);
	}
	for (unsigned k = 0; k < n && k < EDG_PEERS_MAX; k++)
		if (cn[k].started)
			pthread_join(cn[k].th, NULL);
}

/*
 * A chunk source's location, checked before anything connects: tcp:HOST:PORT,
 * or dpdk:PORT[,...] on a port no other source uses (one connection owns a
 * port; the same port named twice would have two I/O threads on one queue).
 */
static int location_check(const struct edg_sources *src, const char *loc, char *err, size_t errlen)
{
	char host[256], port[32], e[256];
	struct dio_loc dl;

	if (!strncmp(loc, "tcp:", 4)) {
		if (eng_tcp_parse(loc, host, sizeof(host), port, sizeof(port), e, sizeof(e))) {
			eng_set_err(err, errlen, "chunk source '%s': %s", loc, e);
			return -1;
		}
		return 0;
	}
	if (strncmp(loc, "dpdk:", 5)) {
		eng_set_err(err, errlen, "a chunk source is tcp:HOST:PORT or dpdk:PORT[,...], not '%s'", loc);
		return -1;
	}
	if (dio_parse(loc, &dl, e, sizeof(e))) {
		eng_set_err(err, errlen, "chunk source '%s': %s", loc, e);
		return -1;
	}
	int k = edg_sources_port_user(src, loc);
	if (k >= 0) {
		eng_set_err(err, errlen, "chunk sources '%s' and '%s' share DPDK port %s: each needs a port of its own",
			    src->loc[k], loc, dl.port);
		return -1;
	}
	return 0;
}

int edg_sources_port_user(const struct edg_sources *src, const char *loc)
{
	struct dio_loc dl, other;
	char e[256];

	if (strncmp(loc, "dpdk:", 5) || dio_parse(loc, &dl, e, sizeof(e)))
		return -1;
	for (unsigned k = 0; k < src->n; k++)
		if (!strncmp(src->loc[k], "dpdk:", 5) && !dio_parse(src->loc[k], &other, e, sizeof(e)) &&
		    !strcmp(other.port, dl.port))
			return (int)k;
	return -1;
}

static int add_one(struct edg_sources *src, const char *loc, size_t len, const char *name, bool origin, char *err,
		   size_t errlen)
{
	for (unsigned k = 0; k < src->n; k++)
		if (strlen(src->loc[k]) == len && !strncmp(src->loc[k], loc, len)) {
			src->p[k].origin |= origin;
			return 0;
		}
	if (src->n == EDG_PEERS_MAX) {
		eng_set_err(err, errlen, "more than %d chunk sources", EDG_PEERS_MAX);
		return -1;
	}
	snprintf(src->loc[src->n], sizeof(src->loc[0]), "%.*s", (int)len, loc);
	if (location_check(src, src->loc[src->n], err, errlen))
		return -1;
	bool dpdk = !strncmp(src->loc[src->n], "dpdk:", 5);
	snprintf(src->name[src->n], sizeof(src->name[0]), "%s", name ? name : src->loc[src->n] + (dpdk ? 0 : 4));
	src->p[src->n] = (struct edg_peer){ .loc = src->loc[src->n], .name = src->name[src->n], .origin = origin };
	src->n++;
	return 0;
}

static void first_reason(char *err, size_t errlen, const struct edg_peer *p, const char *e)
{
	if (!err[0])
		snprintf(err, errlen, "%.80s: %.400s", p->name, e);
}

static void drop_channel(struct edg_peer *p)
{
	edg_chan_free(p->chan);
	eng_conn_close(p->conn);
	p->chan = NULL;
	p->conn = NULL;
	free(p->pushed);
	p->pushed = NULL;
	p->npushed = 0;
}

void edg_peer_drop(struct edg_peer *p)
{
	if (p->chan)
		edg_fetch_done(p->chan);
	drop_channel(p);
}

/*
 * Reads and drops the chunks a peer sent unasked behind its shares: an answer to a
 * request of ours waits behind them (a share it lacked, the whole recipe). 0, or -errno.
 */
static int drain_pushed(struct edg_peer *p, struct edg_chan *ch, uint32_t cs, double timeout_s, uint64_t *wire,
			uint64_t *raw_bytes, uint64_t *chunks, char *err, size_t errlen)
{
	uint8_t *msg = p->npushed ? malloc(edg_chunk_msg_max(cs)) : NULL, *dst = p->npushed ? malloc(cs) : NULL;
	struct cdc_comp_ctx *cz = p->npushed ? cdc_comp_new() : NULL;
	int r = !p->npushed || (msg && dst && cz) ? 0 : -ENOMEM;

	*raw_bytes = *chunks = 0;
	for (uint32_t k = 0; k < p->npushed && r >= 0; k++) {
		uint32_t raw = 0;
		r = edg_recv_chunk(ch, p->pushed + (size_t)k * EDG_DIGEST_LEN, msg, cz, dst, cs, &raw, timeout_s, wire,
				   err, errlen);
		*raw_bytes += r == 0 ? raw : 0;
		*chunks += r == 0; /* a NOCHUNK carried no bytes */
	}
	cdc_comp_free(cz);
	free(msg);
	free(dst);
	free(p->pushed);
	p->pushed = NULL;
	p->npushed = 0;
	return r < 0 ? r : 0;
}

/* Pushed chunks ahead of answers to come on p's channel: dropped, or the channel with them. */
static void drain_before_answers(struct edg_peer *p, uint32_t cs, double timeout_s, uint64_t *wire, char *err,
				 size_t errlen)
{
	char e[512];
	uint64_t raw, n;

	if (p->chan && p->npushed && drain_pushed(p, p->chan, cs, timeout_s, wire, &raw, &n, e, sizeof(e))) {
		first_reason(err, errlen, p, e);
		drop_channel(p);
	}
}

/* The digests of what the peer sent unasked behind a share just read, added to its list. */
static int read_pushed(struct edg_peer *p, double timeout_s, uint64_t *wire, char *err, size_t errlen)
{
	uint8_t *d, *all;
	uint32_t k;
	int r = edg_read_pushed(p->chan, &d, &k, timeout_s, wire, err, errlen);

	if (r || !k)
		return r;
	if (!(all = realloc(p->pushed, (size_t)(p->npushed + k) * EDG_DIGEST_LEN))) {
		free(d);
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	memcpy(all + (size_t)p->npushed * EDG_DIGEST_LEN, d, (size_t)k * EDG_DIGEST_LEN);
	p->pushed = all;
	p->npushed += k;
	free(d);
	return 0;
}

/* Part q of m of image i from peer p into rc: 0, or the read's -errno (the channel dropped if out of step). */
static int recipe_share(struct edg_peer *p, struct edg_recipe *rc, uint32_t q, uint32_t m, bool early,
			double timeout_s, uint64_t *wire, char *err, size_t errlen)
{
	char e[512];
	int r = edg_read_recipe_part(p->chan, rc, q, m, timeout_s, wire, e, sizeof(e));

	/* the service sent the last share asked with the hello (this version or another): what
	 * it pushed behind it comes next */
	if ((!r || r == -ESTALE) && early && p->push_asked) {
		int rp = read_pushed(p, timeout_s, wire, e, sizeof(e));
		r = rp ? rp : r;
	}
	if (r)
		first_reason(err, errlen, p, e);
	if (r && r != -ENOENT && r != -ESTALE)
		drop_channel(p);
	return r;
}

unsigned edg_sources_recipes(struct edg_peer *p, unsigned n, const char *const *names, unsigned nimg,
			     struct edg_recipe *rc, double timeout_s, uint64_t *wire, char *err, size_t errlen)
{
	unsigned live[EDG_PEERS_MAX], m = 0, got = 0;
	uint32_t share[EDG_PEERS_MAX], parts = 0; /* of live peer q: its part, or parts for the header alone */
	int ref[nimg ? nimg : 1];       /* the peer whose header names image i's recipe */
	bool have[nimg ? nimg : 1][EDG_PEERS_MAX]; /* image i's part arrived */
	char e[512];

	for (unsigned k = 0; k < n && k < EDG_PEERS_MAX; k++) {
		if (p[k].chan)
			live[m++] = k;
		else if (p[k].error[0])
			first_reason(err, errlen, &p[k], p[k].error);
	}
	for (unsigned q = 0; q < m; q++)
		share[q] = dealt_share(p, n, live[q], &parts);
	memset(have, 0, sizeof(have));
	/* every request first (unless asked with the hello): one round trip for all the shares */
	for (unsigned q = 0; q < m; q++)
		for (unsigned i = 0; i < nimg && p[live[q]].chan && !p[live[q]].recipes_asked; i++)
			if (edg_ask_recipe_part(p[live[q]].chan, names[i], share[q], parts, 0, e, sizeof(e))) {
				first_reason(err, errlen, &p[live[q]], e);
				drop_channel(&p[live[q]]);
			}
	for (unsigned i = 0; i < nimg; i++)
		ref[i] = -1;
	for (unsigned q = 0; q < m; q++) {
		struct edg_peer *pk = &p[live[q]];
		bool all = pk->chan != NULL;
		for (unsigned i = 0; i < nimg && pk->chan; i++) {
			bool first = !rc[i].digests;
			int r = recipe_share(pk, &rc[i], share[q], parts, pk->recipes_asked && i + 1 == nimg, timeout_s, wire,
					     err, errlen);
			if (!r && share[q] < parts)
				have[i][share[q]] = true;
			if (!r && first)
				ref[i] = (int)live[q];
			all &= !r;
		}
		pk->holds_all = all && pk->chan;
	}
	for (unsigned i = 0; i < nimg; i++) {
		if (ref[i] < 0)
			continue;
		struct edg_peer *pr = &p[ref[i]];
		/* the parts that did not come, from the peer that names the recipe: asked at once, then read */
		bool asked[EDG_PEERS_MAX] = { false }, any = false;
		for (unsigned x = 0; x < parts && pr->chan; x++) {
			if (have[i][x])
				continue;
			if (edg_ask_recipe_part(pr->chan, names[i], x, parts, 0, e, sizeof(e))) {
				first_reason(err, errlen, pr, e);
				drop_channel(pr);
				break;
			}
			asked[x] = any = true;
		}
		if (any) /* its pushed chunks are ahead of the answers: only then are they lost */
			drain_before_answers(pr, rc[i].chunk_size, timeout_s, wire, err, errlen);
		for (unsigned x = 0; x < parts && pr->chan; x++)
			if (asked[x])
				have[i][x] = !recipe_share(pr, &rc[i], x, parts, false, timeout_s, wire, err, errlen);
		bool whole = true;
		for (unsigned x = 0; x < parts; x++)
			whole &= have[i][x];
		if (whole && !edg_recipe_intact(&rc[i])) { /* a part was not what its header said: all from one */
			struct edg_recipe one = { 0 };
			bool asked_whole = pr->chan && !edg_ask_recipe_part(pr->chan, names[i], 0, 1, 0, e, sizeof(e));
			if (pr->chan && !asked_whole) {
				first_reason(err, errlen, pr, e);
				drop_channel(pr);
			}
			drain_before_answers(pr, rc[i].chunk_size, timeout_s, wire, err, errlen);
			whole = asked_whole && pr->chan && !recipe_share(pr, &one, 0, 1, false, timeout_s, wire, err, errlen) &&
				edg_recipe_intact(&one);
			for (unsigned q = 0; q < m; q++) /* nobody is trusted with holding it unasked */
				p[live[q]].holds_all = false;
			free(rc[i].digests);
			rc[i] = one;
			if (!whole)
				first_reason(err, errlen, pr, "its recipe does not match its hash");
		}
		if (!whole) {
			free(rc[i].digests);
			rc[i].digests = NULL;
			continue;
		}
		got++;
	}
	for (unsigned q = 0; q < m; q++)
		p[live[q]].holds_all &= got == nimg && p[live[q]].chan != NULL;
	return got;
}

/* The length of the location at p: up to its first comma, but a dpdk: location
 * keeps the options that follow it (",peer=MAC,mtu=N,drop=F"). */
static size_t location_len(const char *p)
{
	size_t l = strcspn(p, ",");

	if (strncmp(p, "dpdk:", 5))
		return l;
	while (p[l] == ',' && (!strncmp(p + l + 1, "peer=", 5) || !strncmp(p + l + 1, "mtu=", 4) ||
			       !strncmp(p + l + 1, "drop=", 5)))
		l += 1 + strcspn(p + l + 1, ",");
	return l;
}

int edg_sources_add(struct edg_sources *src, const char *list, bool origin, char *err, size_t errlen)
{
	for (const char *p = list; *p;) {
		size_t l = location_len(p);
		if (l && add_one(src, p, l, NULL, origin, err, errlen))
			return -1;
		p += l + (p[l] == ',');
	}
	return 0;
}

bool edg_sources_need_eal(const char *list)
{
	for (const char *p = list; p && *p;) {
		size_t l = location_len(p);
		if (!strncmp(p, "dpdk:", 5))
			return true;
		p += l + (p[l] == ',');
	}
	return false;
}

int edg_sources_ask_coordinator(struct edg_sources *src, struct edg_coord *c, const uint8_t *digests, uint64_t n,
				FILE *log, char *err, size_t errlen)
{
	struct edg_holder_names h;
	char loc[300], e[512];

	if (edg_coord_holder_names(c, digests, n, &h, err, errlen))
		return -1;
	for (unsigned k = 0; k < h.n; k++) {
		if (edg_coord_edge_addr(c, h.edge[k], loc, sizeof(loc), e, sizeof(e))) {
			if (log)
				fprintf(log, "edge %s holds %llu of the chunks, but: %s\n", h.edge[k],
					(unsigned long long)h.chunks[k], e);
			continue;
		}
		if (strncmp(loc, "tcp:", 4)) { /* a dpdk: port means nothing on another host */
			if (log)
				fprintf(log, "edge %s holds %llu of the chunks, but serves at '%s', not tcp:\n", h.edge[k],
					(unsigned long long)h.chunks[k], loc);
			continue;
		}
		if (add_one(src, loc, strlen(loc), h.edge[k], false, err, errlen))
			return -1;
	}
	return 0;
}

#include "adapt.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codecs/codecs.h"

#define MIN_WINDOW_BLOCKS 64
#define MIN_STAGE_BLOCKS 16
#define R_WEIGHT_BLOCKS 1024.0 /* a window of this many sealed blocks moves the R scale half way */
/* a fresh mode learns its correction from this many sealed blocks; what it
 * had counts as up to CORR_PRIOR_BLOCKS of them, less as they come in */
#define CORR_FRESH_BLOCKS 1024.0
#define CORR_PRIOR_BLOCKS 256.0
#define SCALE_MIN 0.05
#define SCALE_MAX 20.0
#define CORR_MIN 0.1
#define CORR_MAX 10.0
/* The transport's queue counts as empty under a frame or so in passage, or
 * 20 ms of link time: the link then waits for us. */
#define IDLE_QUEUE_BYTES 65536
#define IDLE_QUEUE_S 0.02

#define EVENT_LEN 48

static double clampd(double v, double lo, double hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

static bool same_mode(const struct eng_mode *a, const struct eng_mode *b)
{
	return a->delta == b->delta && a->comp == b->comp && a->level == b->level;
}

/* Stages whose cost is the same whatever the mode: they feed it. */
static bool feed_stage(int sid)
{
	return sid == ENG_STAGE_INGEST || sid == ENG_STAGE_HASH || sid == ENG_STAGE_DEDUP;
}

static uint64_t busy_ns(const struct eng_adapt_sample *s)
{
	uint64_t ns = 0;

	for (int i = 0; i < ENG_STAGE_SINK; i++) /* the sink waits on the link: not processing */
		ns += s->stage[i].busy_ns;
	return ns;
}

/* printf onto the end of a string, truncating */
static void __attribute__((format(printf, 3, 4))) append(char *buf, size_t size, const char *fmt, ...)
{
	size_t n = strlen(buf);
	va_list ap;

	if (n + 1 >= size)
		return;
	va_start(ap, fmt);
	vsnprintf(buf + n, size - n, fmt, ap);
	va_end(ap);
}

/* What a decision did, for the trace: "link-grew", then "probe" etc. */
static void note(char *event, const char *what)
{
	append(event, EVENT_LEN, "%s%s", *event ? "," : "", what);
}

static bool queue_idle(const struct eng_adapt_sample *s)
{
	double idle = s->link_bps / 8 * IDLE_QUEUE_S;

	return (double)s->unsent <= (idle > IDLE_QUEUE_BYTES ? idle : IDLE_QUEUE_BYTES);
}

void eng_adapt_init(struct eng_adapt *a, const struct eng_mode_profile *table, unsigned n,
		    const struct eng_mode *start, FILE *trace)
{
	memset(a, 0, sizeof(*a));
	a->table = table;
	a->n = n < ENG_ADAPT_MAX_MODES ? n : ENG_ADAPT_MAX_MODES;
	a->scale_p = a->scale_r = 1;
	a->trace = trace;
	for (unsigned i = 0; i < a->n; i++) {
		a->corr_p[i] = a->corr_r[i] = 1;
		if (start && same_mode(&table[i].mode, start))
			a->cur = i;
	}
	a->best = a->probe_from = a->cur;
	a->mopen = true;
	a->want = -1;
	a->moved_t = -1e9;
}

static int mode_index(const struct eng_adapt *a, const struct eng_mode *m)
{
	for (unsigned i = 0; i < a->n; i++)
		if (same_mode(&a->table[i].mode, m))
			return (int)i;
	return -1;
}

static bool trial_stands(const struct eng_adapt *a, unsigned i, double t)
{
	return a->tried[i] && t - a->tried_t[i] < ENG_ADAPT_TRIAL_AGE_S;
}

/* A trial of i stands and is from after the link last moved (explore). */
static bool trial_current(const struct eng_adapt *a, unsigned i, double t)
{
	return trial_stands(a, i, t) && a->tried_t[i] >= a->moved_t;
}

/*
 * A trial's candidates: i; the best predicted mode with trial figures (the
 * one to beat); then the next best, one per delta and codec pair (two levels
 * of one pair differ least). The table is off most across delta kinds: on a
 * guest writing text over a base, a trial read best:zstd:9 at 0.46x
 * xor:zstd:1's bytes and wdiff:zstd:9 at 0.96x, where the table has them
 * within 1%. And figures from trials seconds apart are on other pages: by
 * them none:zstd:1 sent 0.37x and none:zstd:9 0.98x what xor:zstd:1 did, and
 * auto stayed in none:zstd:1 through a 5 Mbit/s phase. So the modes a switch
 * weighs are tried together, on the same blocks.
 */
static bool pair_taken(const struct eng_adapt *a, unsigned j)
{
	for (unsigned k = 0; k < a->want_n; k++) {
		const struct eng_mode *m = &a->table[a->want_set[k]].mode;
		if (a->table[j].mode.delta == m->delta && a->table[j].mode.comp == m->comp)
			return true;
	}
	return false;
}

static int next_candidate(const struct eng_adapt *a, bool anchor)
{
	int c = -1;

	for (unsigned j = 0; j < a->n; j++) {
		bool taken = false;
		for (unsigned k = 0; k < a->want_n; k++)
			taken |= a->want_set[k] == j;
		if (taken || j == a->cur || a->pred[j] <= a->pred[a->cur] || (anchor ? !a->trial_figures[j] : pair_taken(a, j)))
			continue;
		if (c < 0 || a->pred[j] > a->pred[c])
			c = (int)j;
	}
	return c;
}

static void pick_candidates(struct eng_adapt *a, unsigned i)
{
	a->want = (int)i;
	a->want_set[0] = i;
	a->want_n = 1;
	for (bool anchor = true; a->want_n < ENG_TRIAL_MAX; anchor = false) {
		int c = next_candidate(a, anchor);
		if (c >= 0)
			a->want_set[a->want_n++] = (unsigned)c;
		else if (!anchor)
			break;
	}
}

/*
 * The mode a switch waited on, given up on: the model decides for it. The
 * others in the trial keep what they had (an anchor its trial figures).
 */
static void give_up_trial(struct eng_adapt *a, double t)
{
	/* an explore trial stands in for nobody's: a switch still needs one of its own */
	if (!a->exploring) {
		a->tried[a->want] = true;
		a->tried_t[a->want] = t;
		a->trial_figures[a->want] = false;
	}
	a->asked = a->exploring = false;
	a->want = -1;
}

/* A trial asked for and not done within ENG_ADAPT_TRIAL_WAIT_S lapses, whatever the model prefers by then. */
static bool trial_lapsed(struct eng_adapt *a, double t, char *event)
{
	if (!a->asked || t - a->asked_t < ENG_ADAPT_TRIAL_WAIT_S)
		return false;
	give_up_trial(a, t);
	note(event, "trial-lapsed");
	return true;
}

/*
 * Whether mode i may be switched to now on its figures: a trial of it
 * stands. Otherwise one is asked for (unless another is under way) and the
 * switch waits for it, unless it lapsed: with no data flowing to try it on,
 * the model decides.
 */
static bool tried_lately(struct eng_adapt *a, unsigned i, double t, char *event)
{
	if (trial_stands(a, i, t))
		return true;
	if (trial_lapsed(a, t, event))
		return trial_stands(a, i, t);
	if (a->want < 0) {
		pick_candidates(a, i);
		note(event, "trial");
	}
	return false;
}

static bool measured(const struct eng_adapt *a);

/* No trial a switch waits on, no probe, no mode predicted better by the margin. */
static bool standing(const struct eng_adapt *a)
{
	return (a->want < 0 || (a->exploring && !a->reasked)) && !a->probing &&
	       a->pred[a->best] <= a->pred[a->cur] * (1 + ENG_ADAPT_MARGIN);
}

bool eng_adapt_settled(const struct eng_adapt *a)
{
	/*
	 * The start mode is the lightest, chosen for a fast link: until its
	 * figures are measured it is not encoded far ahead (measuring: 1 s of
	 * link time, not 5), or on a slow link seconds of it would cross in
	 * its looser bytes. Held to the commit instead, auto sent 5-8 MB less
	 * than the same mode static in fast-drop's 1.5 s at 300 Mbit/s, and
	 * took 89-95 s to its 77.5. A trial asked (early_trial) unsettles it.
	 * So does a switch until the new mode's first window, unless a trial
	 * backed it: held to the commit, its feed waited for the old mode's
	 * lead to drain, and without new blocks no window opened (on `steps`
	 * the feed stood 4-5 s after each switch, and the rise to 50 Mbit/s
	 * found 1 MB queued where the same mode static had 6). An explore
	 * trial of a mode the model puts within the margin leaves the lead
	 * alone, unless it asks again what a trial from before the link moved
	 * told: then a switch is likely, and the lead would go in the old mode.
	 */
	return (measured(a) || a->backed) && standing(a);
}

bool eng_adapt_measuring(const struct eng_adapt *a)
{
	return !measured(a) && !a->backed && standing(a);
}

unsigned eng_adapt_trial_wanted(struct eng_adapt *a, struct eng_mode *m)
{
	if (a->want < 0 || a->asked)
		return 0;
	for (unsigned k = 0; k < a->want_n; k++)
		m[k] = a->table[a->want_set[k]].mode;
	a->asked = true;
	a->asked_t = a->now;
	return a->want_n;
}

/*
 * A candidate's R and P are the reference mode's (the one running when the
 * trial began) times what the trial measured: scale and correction stay
 * consistent, as the running mode's figures move the shared scale, or, while
 * it learns its own correction, the candidate's with it (anchored). A trial
 * that told nothing about a candidate leaves it as it was (eng_adapt_trial
 * gives up on the mode the switch waited on).
 */
static void take_trial(struct eng_adapt *a, const struct eng_trial *t, int ref, int cand, unsigned k, double now)
{
	if (cand < 0 || ref < 0 || cand == ref || !t->blocks || !t->cur_bytes || !t->cur_ns || !t->cand_ns[k])
		return;
	a->tried[cand] = true;
	a->tried_t[cand] = now;
	const struct eng_mode_profile *r = &a->table[ref], *c = &a->table[cand];
	double tr = (double)t->cand_bytes[k] / (double)t->cur_bytes;
	double tp = (double)t->cand_ns[k] / (double)t->cur_ns;
	/*
	 * A trial compresses each batch alone: it cannot see the earlier
	 * segments a running zstd mode takes as its history, so against one it
	 * overrates a candidate without that window (igzip, lzma). There the
	 * candidate's bytes are the worse of the trial's and the table's
	 * (profiled whole, history and all): a trial read wdiff:igzip:3 at 1.01x
	 * xor:zstd:1, and it sent 1.24x the bytes.
	 */
	double rr = tr;
	if (cdc_history_window(r->mode.comp, r->mode.level) && !cdc_history_window(c->mode.comp, c->mode.level) &&
	    r->r > 1e-6 && c->r / r->r > rr)
		rr = c->r / r->r;
	if (c->r > 1e-6)
		a->corr_r[cand] = clampd(a->corr_r[ref] * r->r / c->r * rr, CORR_MIN, CORR_MAX);
	if (c->p_ns > 0)
		a->corr_p[cand] = clampd(a->corr_p[ref] * r->p_ns / c->p_ns * tp, CORR_MIN, CORR_MAX);
	a->trial_figures[cand] = true;
	if (a->fresh && ref == (int)a->cur)
		a->anchored[cand] = true;
	if (cand == (int)a->cur) /* a trial from before the switch: cur has figures to stand on */
		a->fresh = false;
	if (a->trial_new_n < ENG_TRIAL_MAX) {
		a->trial_r[a->trial_new_n] = tr;
		a->trial_p[a->trial_new_n] = tp;
		a->trial_new[a->trial_new_n++] = (unsigned)cand;
	}
}

void eng_adapt_trial(struct eng_adapt *a, const struct eng_trial *t, double now)
{
	int ref = mode_index(a, &t->cur);
	unsigned had = a->trial_new_n;
	bool answered = false;

	for (unsigned k = 0; k < t->ncand && k < ENG_TRIAL_MAX; k++) {
		int cand = mode_index(a, &t->cand[k]);
		answered |= a->want >= 0 && cand == a->want;
		take_trial(a, t, ref, cand, k, now);
	}
	if (answered && !trial_stands(a, (unsigned)a->want, now)) {
		give_up_trial(a, now); /* it told nothing about it: the model decides */
	} else if (answered) {
		a->asked = a->exploring = false;
		a->want = -1;
	}
	if (a->trial_new_n > had)
		a->trials++;
}

static double mode_r(const struct eng_adapt *a, unsigned i)
{
	return a->table[i].r * a->scale_r * a->corr_r[i];
}

/*
 * A fresh mode's correction (corr is corr_p or corr_r): the blocks-weighted
 * mean, in log terms, of its windows' figures x and of what it had (weighing
 * prior_w blocks). Modes a trial measured against it keep their ratio to it.
 */
static void learn(struct eng_adapt *a, double *corr, struct eng_adapt_mean *m, double x, uint64_t blocks,
		  double prior_w)
{
	m->sum += (double)blocks * log(x);
	m->n += (double)blocks;
	double c = clampd(exp((prior_w * m->prior + m->sum) / (prior_w + m->n)), CORR_MIN, CORR_MAX);
	for (unsigned i = 0; i < a->n; i++)
		if (a->anchored[i])
			corr[i] = clampd(corr[i] * c / corr[a->cur], CORR_MIN, CORR_MAX);
	corr[a->cur] = c;
}

/*
 * Live figures of the running mode over a window: each stage's ns per block
 * it handled, R at the seal stage (bytes out of the blocks sealed there).
 * The first windows after a switch without a standing trial compare the new
 * mode with the scale the old one left: they set the new mode's correction
 * (learn); later windows move the scale.
 */
static void measure(struct eng_adapt *a, const struct eng_adapt_sample *s)
{
	const struct eng_mode_profile *m = &a->table[a->cur];

	if (!a->mopen) {
		/*
		 * The blocks fed before the switch are still in the pipeline,
		 * encoded the old way: all packed once the segment stage passed
		 * them, all compressed once compression took in what was packed
		 * by then plus the segment that was still open.
		 */
		if (!a->packed) {
			if (s->stage[ENG_STAGE_SEGMENT].blocks < a->fed_at_switch)
				return;
			a->packed = true;
			a->packed_mark = s->stage[ENG_STAGE_SEGMENT].bytes_out + ENG_SEG_RAW_MAX;
		}
		if (s->stage[ENG_STAGE_COMPRESS].bytes_in < a->packed_mark)
			return;
		a->mopen = true;
		a->mprev = *s;
		return;
	}
	uint64_t sealed = s->stage[ENG_STAGE_SEAL].blocks - a->mprev.stage[ENG_STAGE_SEAL].blocks;
	if (s->t - a->mprev.t < ENG_ADAPT_WINDOW_S || sealed < MIN_WINDOW_BLOCKS)
		return;
	double feed = 0, work = 0;
	for (int i = 0; i < ENG_STAGE_SINK; i++) {
		uint64_t b = s->stage[i].blocks - a->mprev.stage[i].blocks;
		/* a stage that saw few blocks (the feed was held) keeps its last figure */
		if (b >= MIN_STAGE_BLOCKS)
			a->stage_p[i] = (double)(s->stage[i].busy_ns - a->mprev.stage[i].busy_ns) / (double)b;
		if (feed_stage(i))
			feed += a->stage_p[i];
		else
			work += a->stage_p[i];
	}
	double r = (double)(s->stage[ENG_STAGE_SEAL].bytes_out - a->mprev.stage[ENG_STAGE_SEAL].bytes_out) /
		   ((double)sealed * CDC_BLOCK_SIZE);
	a->feed_ns = feed;
	a->ingest_ns = a->stage_p[ENG_STAGE_INGEST];
	a->live_p = feed + work;
	a->live_r = r;
	double sp = m->p_ns > 0 && work > 0 ? work / m->p_ns : 0;
	double sr = m->r > 1e-6 && r > 0 ? r / m->r : 0;
	if (a->fresh) {
		/*
		 * The correction is the mean (in log terms, weighted by sealed
		 * blocks) of the mode's first windows and of what it had before,
		 * which weighs less as blocks come in and nothing once
		 * CORR_FRESH_BLOCKS were sealed (then the scale moves again,
		 * with no leftover of the prior to push into it). A probe's first window after
		 * a fall, the feed held, sealed 64 mostly-zero blocks: taken
		 * alone they made the probed light mode best at 5 Mbit/s, and
		 * auto stayed in it (fast-drop, 135.9 MB against 109.6).
		 */
		a->fresh_blocks += sealed;
		double prior_w = CORR_PRIOR_BLOCKS * (1 - fmin(1, (double)a->fresh_blocks / CORR_FRESH_BLOCKS));
		if (sp > 0)
			learn(a, a->corr_p, &a->fresh_p, sp / a->scale_p, sealed, prior_w);
		if (sr > 0)
			learn(a, a->corr_r, &a->fresh_r, sr / a->scale_r, sealed, prior_w);
		a->fresh = a->fresh_blocks < CORR_FRESH_BLOCKS;
	} else {
		if (sp > 0)
			a->scale_p = clampd(sp / a->corr_p[a->cur], SCALE_MIN, SCALE_MAX);
		/*
		 * R as far as the window's blocks tell: with the feed held, 64
		 * blocks of a window were mostly zeros and read R 0.01 (0.59 the
		 * window before), the link looked idle to every mode, and auto
		 * went to a light one through a 5 Mbit/s phase. The first window
		 * has nothing to weigh against.
		 */
		double w = a->windows || a->switches ? (double)sealed / ((double)sealed + R_WEIGHT_BLOCKS) : 1;
		if (sr > 0)
			a->scale_r = clampd(exp(w * log(sr / a->corr_r[a->cur]) + (1 - w) * log(a->scale_r)), SCALE_MIN,
					    SCALE_MAX);
	}
	a->windows++;
	a->mprev = *s;
}

/*
 * The running mode has figures of its own: one window after a switch, two
 * at the start (the first carries one-off costs: contexts, first-touch
 * memory), unless data waited for the link over the first: then the
 * lcores' cost hardly counts, and each second more in the light start
 * mode sends its looser bytes on a link that is the bottleneck.
 */
static bool measured(const struct eng_adapt *a)
{
	return a->windows >= (a->switches || a->link_bound ? 1u : 2u);
}

/*
 * A link figure to trust (measured with data waiting, or grown past the
 * ceiling) moved by ENG_ADAPT_LINK_MOVE from the last one: the link fell or
 * grew, not noise. Windows without a figure (a reconnect) and app-limited
 * ones (our own rate) do not count; a fall the transport showed always does.
 */
static void note_move(struct eng_adapt *a, const struct eng_adapt_sample *s, double l)
{
	if (a->trusted > 0 && (l > a->trusted * ENG_ADAPT_LINK_MOVE || l * ENG_ADAPT_LINK_MOVE < a->trusted))
		a->moved_t = s->t;
	a->trusted = l;
}

/*
 * The link the predictions use. While data waited for it, the transport's
 * figure is the link (and becomes the ceiling). While its queue was empty we
 * sent all we made: the figure is a lower bound, and the ceiling stands in,
 * unless the link has grown past it.
 */
static void update_link(struct eng_adapt *a, const struct eng_adapt_sample *s, char *event)
{
	double l = s->link_bps;

	if (l <= 0 || !a->link_ticks) {
		a->link_est = l > 0 ? l : 0;
		return;
	}
	if (s->link_fell) {
		/* the link fell: an idle window (the feed held while the queue drains) must not
		 * keep the fast link's ceiling. The transport saw it halve: a move by itself */
		a->moved_t = s->t;
		a->trusted = l;
		a->link_est = a->ceiling = l;
		a->ceiling_t = s->t;
		return;
	}
	if (!a->app_limited) {
		/* the figure of the window's last tick with data waiting: a window
		 * that went idle at its end ends with what we made, not the link */
		l = a->wait_link;
		note_move(a, s, l);
		a->link_est = a->ceiling = l;
		a->ceiling_t = s->t;
		return;
	}
	if (a->ceiling > 0 && l > a->ceiling * (1 + ENG_ADAPT_MARGIN)) {
		if (l > a->ceiling * ENG_ADAPT_LINK_MOVE)
			note_move(a, s, l);
		a->ceiling = 0; /* unknown again: worth a probe now */
		a->next_probe_t = s->t;
		a->probe_fails = 0;
		note(event, "link-grew");
	}
	a->link_est = l > a->ceiling ? l : a->ceiling;
}

/* A mode's processing B/s from the cost model alone. */
static double model_proc(const struct eng_adapt *a, unsigned i, double feed_max)
{
	double lc = a->free_lcores > 0.1 ? a->free_lcores : 0.1;
	double p = a->feed_ns + a->table[i].p_ns * a->scale_p * a->corr_p[i];
	double proc = lc * CDC_BLOCK_SIZE * 1e9 / (p > 1 ? p : 1);

	return proc < feed_max ? proc : feed_max;
}

/* Every mode's predicted input B/s with the current figures. */
static void predict(struct eng_adapt *a)
{
	/* ingest runs on one lcore: it bounds every mode alike */
	double feed_max = a->ingest_ns > 0 ? CDC_BLOCK_SIZE * 1e9 / a->ingest_ns : INFINITY;
	/*
	 * The running mode was just seen moving seen_Bps: it processes at least
	 * that. Busy ns count time the lcore was preempted (the guest shares the
	 * cores), so the model can put it below what it did; then every mode's
	 * processing figure is off by the same factor. Without this anchor a
	 * link-bound fast phase read as CPU-bound, and a lighter mode with a
	 * worse R won on paper and lost on the wire.
	 */
	double cur = model_proc(a, a->cur, feed_max), anchor = 1;
	if (a->seen_Bps > cur && cur > 0) {
		anchor = a->seen_Bps / cur;
		feed_max *= anchor;
	}

	a->best = a->cur;
	for (unsigned i = 0; i < a->n; i++) {
		double r = mode_r(a, i);
		double net = a->link_est > 0 ? a->link_est / 8 / (r > 1e-6 ? r : 1e-6) : INFINITY;
		a->proc[i] = model_proc(a, i, INFINITY) * anchor;
		if (a->proc[i] > feed_max)
			a->proc[i] = feed_max;
		a->pred[i] = a->proc[i] < net ? a->proc[i] : net;
		if (a->pred[i] > a->pred[a->best])
			a->best = i;
	}
}

static bool switch_to(struct eng_adapt *a, const struct eng_adapt_sample *s, unsigned to)
{
	a->since = s->t;
	if (to == a->cur)
		return false;
	a->cur = to;
	a->switches++;
	/* the next window measures the new mode alone (see measure()) */
	a->fed_at_switch = s->stage[ENG_STAGE_INGEST].blocks;
	a->mopen = a->packed = false;
	a->windows = 0;
	/* a mode tried lately keeps the trial's correction: its windows move the scale */
	a->fresh = !(a->trial_figures[to] && trial_stands(a, to, s->t));
	a->fresh_blocks = 0;
	a->fresh_p = (struct eng_adapt_mean){ .prior = log(a->corr_p[to]) };
	a->fresh_r = (struct eng_adapt_mean){ .prior = log(a->corr_r[to]) };
	memset(a->anchored, 0, sizeof(a->anchored));
	a->backed = !a->probing && a->trial_figures[to] && trial_current(a, to, s->t);
	return true;
}

/* End of a probe: keep it, go back, or take what its figures show is best. */
static bool end_probe(struct eng_adapt *a, const struct eng_adapt_sample *s, char *event)
{
	unsigned from = a->probe_from, to = a->cur;

	/*
	 * The link fell while the probe ran: it found no room, and what it
	 * measured (the feed held, on the pages left after the fall) says
	 * nothing of the probed mode against the others. On `steps` the probed
	 * none:zstd:-5 read R 0.23 on the pages after the fall to 5 Mbit/s
	 * (none:zstd:9 had read 0.36 on the 50 Mbit/s phase's): kept on that,
	 * through the 5 Mbit/s phase, the handoff took 48.6 s (27-30 s
	 * before). The model goes back to what it was, and so does the mode;
	 * no trial can have measured another mode against the probed one (none
	 * starts during a probe, or while one is wanted).
	 * The fall is a link measured during the probe under half the rate we
	 * sent as it began: an older ceiling may be stale.
	 */
	bool fell = a->ceiling > 0 && a->ceiling_t >= a->probe_t && a->ceiling * ENG_ADAPT_LINK_MOVE < a->probe_link;
	if (fell) {
		a->corr_p[to] = a->probe_corr_p;
		a->corr_r[to] = a->probe_corr_r;
		a->scale_p = a->probe_scale_p;
		a->scale_r = a->probe_scale_r;
		predict(a);
		note(event, "probe-void");
		to = from;
	} else {
		if (a->pred[from] >= a->pred[to])
			to = from;
		if (a->pred[a->best] > a->pred[to] * (1 + ENG_ADAPT_MARGIN))
			to = a->best;
	}
	a->probing = false;
	a->chosen = true;
	/* no room found: wait twice as long before the next probe */
	if (to == from && a->probe_fails < 3)
		a->probe_fails++;
	else if (to != from)
		a->probe_fails = 0;
	a->next_probe_t = s->t + ENG_ADAPT_PROBE_WAIT_S * (double)(1u << a->probe_fails);
	note(event, to == a->cur ? "probe-keep" : to == from ? "probe-back" : "probe-switch");
	return switch_to(a, s, to);
}

/*
 * CPU-bound with the transport's queue empty: the link figure is only what
 * we made. Would the mode that is fastest on the lcores gain by the margin
 * if the link had room the figure cannot show? Then try it (probe).
 */
static bool start_probe(struct eng_adapt *a, const struct eng_adapt_sample *s, char *event)
{
	if (!a->app_limited || a->util < ENG_ADAPT_BUSY || s->t < a->next_probe_t || a->want >= 0 ||
	    s->t - a->since < ENG_ADAPT_PROBE_S ||
	    (a->ceiling > 0 && s->t - a->ceiling_t < ENG_ADAPT_PROBE_WAIT_S))
		return false;
	unsigned c = a->cur;
	for (unsigned i = 0; i < a->n; i++)
		if (a->proc[i] > a->proc[c])
			c = i;
	if (c == a->cur || a->proc[c] <= a->pred[a->cur] * (1 + ENG_ADAPT_MARGIN) ||
	    a->proc[c] * mode_r(a, c) * 8 <= a->link_est)
		return false; /* no faster mode, or the link figure already allows it */
	a->probing = true;
	a->probe_from = a->cur;
	a->probe_t = s->t;
	a->probe_link = s->link_bps;
	a->probe_corr_p = a->corr_p[c];
	a->probe_corr_r = a->corr_r[c];
	a->probe_scale_p = a->scale_p;
	a->probe_scale_r = a->scale_r;
	a->probes++;
	note(event, "probe");
	return switch_to(a, s, c);
}

/* The mode other than the running one with a standing trial predicted fastest (-1: none). */
static int best_tried(const struct eng_adapt *a, double t)
{
	int b = -1;

	for (unsigned j = 0; j < a->n; j++)
		if (j != a->cur && trial_stands(a, j, t) && a->trial_figures[j] && (b < 0 || a->pred[j] > a->pred[b]))
			b = (int)j;
	return b;
}

/*
 * Switch to the predicted best if it wins by the margin, the hold allows
 * and a trial of it stands: 1 switched, 0 nothing to do, -1 waiting for a
 * trial.
 */
static int maybe_switch(struct eng_adapt *a, const struct eng_adapt_sample *s, char *event)
{
	/*
	 * The hold stops flapping on noise. A win this large just after the
	 * link moved (fell or grew) is no noise; at any other time it is the
	 * model's word alone, and it waits for the hold and a trial like any
	 * other: on a link that had fallen to 5 Mbit/s long before, untried
	 * modes won on paper by 5x one after the other, and the controller went
	 * through 20 of them.
	 */
	bool urgent = a->pred[a->best] > a->pred[a->cur] * (1 + ENG_ADAPT_URGENT) && s->t - a->moved_t < ENG_ADAPT_HOLD_S;
	bool held = a->chosen && s->t - a->since < ENG_ADAPT_HOLD_S && !urgent;
	if (held || a->best == a->cur || a->pred[a->best] <= a->pred[a->cur] * (1 + ENG_ADAPT_MARGIN))
		return 0;
	/* the link fell: a trial waits for a feed the link holds back */
	int to = (int)a->best;
	if (!urgent && !tried_lately(a, a->best, s->t, event)) {
		/*
		 * Leaving the blind start, the best mode a trial measured goes now
		 * if it wins by the margin; the model's pick waits for its own trial.
		 * Each trial moved the model's best to another untried mode on
		 * `hog` (20 Mbit/s): four trials in a row kept the start mode 0.9 s
		 * and 10.6 MB.
		 */
		to = a->switches || a->chosen ? -1 : best_tried(a, s->t);
		if (to < 0 || a->pred[to] <= a->pred[a->cur] * (1 + ENG_ADAPT_MARGIN))
			return -1;
	}
	a->chosen = true;
	note(event, "switch");
	return switch_to(a, s, (unsigned)to) ? 1 : 0;
}

/*
 * The start mode waits for two windows of its own figures before any
 * decision, but by the first the model may already prefer others: their
 * trial runs meanwhile, and the first decision can switch at once. Tried
 * only once the first decision came, a 10 Mbit/s handoff spent 4-6 s in
 * its start mode (then xor:zstd:1, whose xor deltas sent up to 1.8x the
 * bytes of the other kinds on the pages tried).
 */
static void early_trial(struct eng_adapt *a, char *event)
{
	if (a->switches || a->trials || a->want >= 0 || a->link_est <= 0 ||
	    a->pred[a->best] <= a->pred[a->cur] * (1 + ENG_ADAPT_MARGIN))
		return;
	pick_candidates(a, a->best);
	note(event, "trial");
}

/*
 * Link-bound with lcores to spare, a trial costs no throughput: the modes
 * the model puts ahead by less than the margin are tried anyway. The table
 * was profiled on another workload; on `steps` it put best:zstd:9 3% ahead
 * of none:zstd:1, too little to ever ask a trial, and on what was left for
 * the 5 Mbit/s phase best:zstd:9 sent 10% less (6.3 MB to 7.0, 1.2 s of
 * link time). A switch still needs the trial's figures to win by the margin.
 * A trial from before the link last moved does not keep explore from
 * asking again: what is left to send then is other pages (on `steps`, the
 * pages dirtied again by the 5 Mbit/s phase, where wdiff:zstd:9 sent 0.56x
 * none:zstd:1's bytes against 0.98x on the first pages).
 */
static void explore(struct eng_adapt *a, const struct eng_adapt_sample *s, char *event)
{
	if (!a->link_bound || a->util >= ENG_ADAPT_BUSY || a->want >= 0 || a->probing || a->best == a->cur ||
	    trial_current(a, a->best, s->t) || (a->explored_t > 0 && s->t - a->explored_t < ENG_ADAPT_EXPLORE_S))
		return;
	a->reasked = trial_stands(a, a->best, s->t);
	a->explored_t = s->t;
	pick_candidates(a, a->best);
	a->exploring = true;
	note(event, "explore");
}

bool eng_adapt_cpu_bound(const struct eng_adapt *a)
{
	return a->app_limited && a->util >= ENG_ADAPT_BUSY;
}

/* Once a window: classify it, update the link, predict, act. */
static bool decide(struct eng_adapt *a, const struct eng_adapt_sample *s, char *event)
{
	double dt = s->t - a->dprev.t;

	a->free_lcores = a->free_sum / a->ticks;
	a->util = (double)(busy_ns(s) - busy_ns(&a->dprev)) / (dt * 1e9 * (a->free_lcores > 0.1 ? a->free_lcores : 0.1));
	a->app_limited = a->link_ticks && a->idle_ticks * 2 > a->link_ticks;
	a->link_bound = a->link_ticks && !a->app_limited;
	a->seen_Bps = a->mopen && a->windows ? (double)(s->stage[ENG_STAGE_SEAL].blocks - a->dprev.stage[ENG_STAGE_SEAL].blocks) *
							CDC_BLOCK_SIZE / dt : 0;
	update_link(a, s, event);
	trial_lapsed(a, s->t, event);
	a->ticks = a->link_ticks = a->idle_ticks = 0;
	a->free_sum = a->wait_link = 0;
	a->dprev = *s;
	predict(a);
	if (a->probing) {
		bool done = measured(a) ? s->t - a->since >= ENG_ADAPT_PROBE_S : s->t - a->since >= ENG_ADAPT_PROBE_MAX_S;
		return done && end_probe(a, s, event);
	}
	if (!measured(a)) {
		early_trial(a, event);
		return false;
	}
	int sw = maybe_switch(a, s, event);
	if (sw)
		return sw > 0;
	if (start_probe(a, s, event))
		return true;
	explore(a, s, event);
	return false;
}

static void trace(const struct eng_adapt *a, const struct eng_adapt_sample *s, unsigned from, const char *event)
{
	char tried[ENG_TRIAL_MAX * 24] = "", tr[ENG_TRIAL_MAX * 12] = "", tp[ENG_TRIAL_MAX * 12] = "";

	if (!a->trace)
		return;
	for (unsigned k = 0; k < a->trial_new_n; k++) { /* the trials that came in now */
		append(tried, sizeof(tried), "%s%s", k ? "+" : "", a->table[a->trial_new[k]].name);
		append(tr, sizeof(tr), "%s%.4g", k ? "," : "", a->trial_r[k]);
		append(tp, sizeof(tp), "%s%.4g", k ? "," : "", a->trial_p[k]);
	}
	fprintf(a->trace,
		"{\"t\":%.3f,\"mode\":\"%s\",\"next\":\"%s\",\"P_ns\":%.1f,\"feed_ns\":%.1f,\"R\":%.4f,"
		"\"scale_p\":%.3f,\"scale_r\":%.3f,\"corr_p\":%.3f,\"corr_r\":%.3f,"
		"\"link_mbit\":%.3f,\"link_est_mbit\":%.3f,\"ceiling_mbit\":%.3f,\"queue\":%llu,\"unsent\":%llu,"
		"\"app_limited\":%s,\"free_lcores\":%.2f,\"util\":%.2f,\"pred_mbit\":%.3f,\"best\":\"%s\","
		"\"best_pred_mbit\":%.3f,\"seen_mbit\":%.3f,\"fed_mb\":%.3f,\"sealed_mb\":%.3f,\"probe\":%s,\"event\":\"%s\",\"switch\":%s,\"throttle\":%.2f,"
		"\"tried\":\"%s\",\"trial_r\":[%s],\"trial_p\":[%s],\"trials\":%u}\n",
		s->t, a->table[from].name, a->table[a->cur].name, a->live_p, a->feed_ns, a->live_r, a->scale_p,
		a->scale_r, a->corr_p[a->cur], a->corr_r[a->cur], s->link_bps / 1e6, a->link_est / 1e6,
		a->ceiling / 1e6, (unsigned long long)s->queued, (unsigned long long)s->unsent,
		a->app_limited ? "true" : "false", s->free_lcores, a->util, a->pred[from] * 8 / 1e6,
		a->table[a->best].name, a->pred[a->best] * 8 / 1e6, a->seen_Bps * 8 / 1e6,
		(double)s->stage[ENG_STAGE_INGEST].bytes_in / 1e6, (double)s->stage[ENG_STAGE_SEAL].bytes_out / 1e6, a->probing ? "true" : "false", event,
		from != a->cur ? "true" : "false", s->guest_throttle,
		tried, tr, tp, a->trials);
	fflush(a->trace);
}

bool eng_adapt_tick(struct eng_adapt *a, const struct eng_adapt_sample *s, struct eng_mode *next)
{
	unsigned from = a->cur;
	char event[EVENT_LEN] = "";
	bool change = false;

	a->now = s->t;
	if (!a->started && s->stage[ENG_STAGE_INGEST].blocks) {
		/* windows start with the first block: start-up is nobody's cost */
		a->started = true;
		a->mprev = a->dprev = *s;
		a->since = a->next_probe_t = s->t;
	} else if (a->restarted) {
		/* windows start again with the new pipeline's first block, all of it cur's */
		if (s->stage[ENG_STAGE_INGEST].blocks) {
			a->restarted = false;
			a->mprev = a->dprev = *s;
			a->mopen = a->packed = true;
		}
	} else if (a->started) {
		a->ticks++;
		a->free_sum += s->free_lcores;
		if (s->link_bps > 0) { /* ticks without a link figure do not vote */
			a->link_ticks++;
			if (queue_idle(s))
				a->idle_ticks++;
			else
				a->wait_link = s->link_bps;
		}
		measure(a, s);
		if (s->t - a->dprev.t >= ENG_ADAPT_WINDOW_S) {
			change = decide(a, s, event);
		} else if (a->trial_new_n && !a->probing && measured(a)) {
			/* a trial came in: act on it now, with the last window's figures */
			note(event, "tried");
			predict(a);
			change = maybe_switch(a, s, event) > 0;
		}
	}
	trace(a, s, from, event);
	a->trial_new_n = 0;
	if (change)
		*next = a->table[a->cur].mode;
	return change;
}

void eng_adapt_restart(struct eng_adapt *a)
{
	a->restarted = a->started;
}

void eng_adapt_fill(struct eng_adapt_sample *s, double t, const struct eng_diff_report *rep,
		    const struct eng_link *link, double free_lcores)
{
	memset(s, 0, sizeof(*s));
	s->t = t;
	memcpy(s->stage, rep->stages, sizeof(s->stage));
	if (link) {
		s->link_bps = link->rate_smooth_bps > link->delivery_bps ? link->rate_smooth_bps : link->delivery_bps;
		s->queued = link->queued;
		s->unsent = link->unsent;
	}
	s->free_lcores = free_lcores;
}

double eng_cpu_free(struct eng_cpu_meter *m)
{
	unsigned long long v[10] = { 0 }, total = 0, ut = 0, st = 0;
	char buf[1024];
	FILE *f;

	if (!m->ncpu)
		m->ncpu = (double)sysconf(_SC_NPROCESSORS_ONLN);
	if (!(f = fopen("/proc/stat", "r")))
		return m->ncpu;
	int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
		       &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
	fclose(f);
	if (n < 4)
		return m->ncpu;
	for (int i = 0; i < 8; i++) /* guest time is already in user */
		total += v[i];
	uint64_t idle = v[3] + v[4];
	if ((f = fopen("/proc/self/stat", "r"))) {
		if (fgets(buf, sizeof(buf), f)) {
			char *p = strrchr(buf, ')');
			if (p)
				sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st);
		}
		fclose(f);
	}
	uint64_t self = ut + st;
	double free_cores = m->ncpu;
	if (m->primed && total > m->total) {
		double dt = (double)(total - m->total);
		double others = (dt - (double)(idle - m->idle) - (double)(self - m->self)) / dt * m->ncpu;
		free_cores = clampd(m->ncpu - others, 0, m->ncpu);
	}
	m->total = total;
	m->idle = idle;
	m->self = self;
	m->primed = true;
	return free_cores;
}

double eng_cpu_share(double free, double ncpu, unsigned lcores)
{
	double others = ncpu - free > 0 ? ncpu - free : 0;
	double fair = lcores ? ncpu * lcores / (lcores + others) : 0;
	double f = free > fair ? free : fair;

	return f < lcores ? f : lcores;
}

#include "adapt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codecs/codecs.h"

#define MIN_WINDOW_BLOCKS 64
#define SCALE_MIN 0.05
#define SCALE_MAX 20.0

static double clampd(double v, double lo, double hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

static bool same_mode(const struct eng_mode *a, const struct eng_mode *b)
{
	return a->delta == b->delta && a->comp == b->comp && a->level == b->level;
}

void eng_adapt_init(struct eng_adapt *a, const struct eng_mode_profile *table, unsigned n,
		    const struct eng_mode *start, FILE *trace)
{
	memset(a, 0, sizeof(*a));
	a->table = table;
	a->n = n < 64 ? n : 64;
	a->scale_p = a->scale_r = 1;
	a->trace = trace;
	for (unsigned i = 0; i < a->n; i++)
		if (start && same_mode(&table[i].mode, start))
			a->cur = i;
}

/* Predicted input bytes/s of mode i with the current scales. */
static double predict(const struct eng_adapt *a, unsigned i, const struct eng_adapt_sample *s)
{
	double p = a->table[i].p_ns * a->scale_p, r = a->table[i].r * a->scale_r;
	double lcores = s->free_lcores > 0.1 ? s->free_lcores : 0.1;
	double proc = lcores * CDC_BLOCK_SIZE / (p > 1 ? p : 1) * 1e9;
	double net = s->link_bps > 0 ? s->link_bps / 8 / (r > 1e-6 ? r : 1e-6) : INFINITY;
	return proc < net ? proc : net;
}

bool eng_adapt_tick(struct eng_adapt *a, const struct eng_adapt_sample *s, struct eng_mode *next)
{
	const struct eng_mode_profile *cur = &a->table[a->cur];
	double live_p = 0, live_r = 0;

	if (!a->have_prev) {
		a->prev = *s;
		a->have_prev = true;
		a->since = s->t;
	}
	/* live P and R of the running mode over the window: rescale the table */
	uint64_t blocks = s->fed_blocks - a->prev.fed_blocks;
	if (s->t - a->prev.t >= ENG_ADAPT_WINDOW_S && blocks >= MIN_WINDOW_BLOCKS) {
		live_p = (double)(s->busy_ns - a->prev.busy_ns) / (double)blocks;
		uint64_t in = s->in_bytes - a->prev.in_bytes;
		live_r = in ? (double)(s->wire_bytes - a->prev.wire_bytes) / (double)in : 0;
		if (cur->p_ns > 0 && live_p > 0)
			a->scale_p = clampd(live_p / cur->p_ns, SCALE_MIN, SCALE_MAX);
		if (cur->r > 1e-6 && live_r > 0)
			a->scale_r = clampd(live_r / cur->r, SCALE_MIN, SCALE_MAX);
		a->prev = *s;
	}
	unsigned best = a->cur;
	for (unsigned i = 0; i < a->n; i++) {
		a->pred[i] = predict(a, i, s);
		if (a->pred[i] > a->pred[best])
			best = i;
	}
	bool change = best != a->cur && s->t - a->since >= ENG_ADAPT_HOLD_S &&
		      a->pred[best] > a->pred[a->cur] * (1 + ENG_ADAPT_MARGIN);
	if (a->trace) {
		fprintf(a->trace,
			"{\"t\":%.3f,\"mode\":\"%s\",\"P_ns\":%.1f,\"R\":%.4f,\"scale_p\":%.3f,\"scale_r\":%.3f,"
			"\"link_mbit\":%.3f,\"queue\":%llu,\"free_lcores\":%.2f,\"pred_mbit\":%.3f,"
			"\"best\":\"%s\",\"best_pred_mbit\":%.3f,\"switch\":%s}\n",
			s->t, cur->name, live_p, live_r, a->scale_p, a->scale_r, s->link_bps / 1e6,
			(unsigned long long)s->queued, s->free_lcores, a->pred[a->cur] * 8 / 1e6, a->table[best].name,
			a->pred[best] * 8 / 1e6, change ? "true" : "false");
		fflush(a->trace);
	}
	if (!change)
		return false;
	a->cur = best;
	a->since = s->t;
	a->prev = *s; /* the next window measures the new mode alone */
	a->switches++;
	*next = a->table[best].mode;
	return true;
}

void eng_adapt_fill(struct eng_adapt_sample *s, double t, const struct eng_diff_report *rep,
		    const struct eng_link *link, double free_lcores)
{
	memset(s, 0, sizeof(*s));
	s->t = t;
	s->fed_blocks = rep->stages[ENG_STAGE_INGEST].blocks;
	for (int i = 0; i < ENG_STAGE_COUNT; i++)
		if (i != ENG_STAGE_SINK) /* the sink waits on the link: not processing */
			s->busy_ns += rep->stages[i].busy_ns;
	s->in_bytes = rep->stages[ENG_STAGE_INGEST].bytes_in;
	s->wire_bytes = rep->stages[ENG_STAGE_SEAL].bytes_out;
	if (link) {
		s->link_bps = link->rate_smooth_bps > link->delivery_bps ? link->rate_smooth_bps : link->delivery_bps;
		s->queued = link->queued;
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

/*
 * The adaptation controller (seed 004, 6.1-6.2): about once a second it
 * predicts each operating mode's system throughput and switches the
 * pipeline to the best.
 *
 *   input bytes/s of mode m = min(processing, network)
 *   processing = free_lcores * 4096 B / P_m        (P: ns of lcore time per fed block)
 *                (and at most what the single ingest lcore can feed)
 *   network    = link B/s / R_m                    (R: wire bytes per fed byte)
 *
 * P_m = the feed's live cost per block (ingest, hash, dedup: the same for
 * every mode) + the mode's own work (delta .. seal). The mode's work and R_m
 * come from a profile table built offline on a reference workload
 * (perf/profile -> engine/mode_table.c), scaled by what the running mode
 * measures now (the data at hand compresses better or worse than the
 * reference, the lcores are faster or slower), times a correction per mode
 * learned the last time that mode ran (how far the table was off for it
 * relative to the others; 1 until it has run).
 *
 * The link figure is only trusted when data waited for the link: when the
 * transport's queue is empty (app-limited) the engine sent all it made, and
 * the acknowledged rate is a lower bound. Then the last rate measured while
 * the link was the bottleneck (the "ceiling") stands in for the link, and
 * when there is none, or it is old, or the link has grown past it, and the
 * lcores are busy, the controller probes: it runs the mode that would be
 * fastest with an unlimited link for a short while. Either the queue stays
 * empty (the lighter mode pays) or the link fills and is measured; then it
 * chooses with that knowledge. A probe that found no room doubles the wait
 * before the next one.
 *
 * Before it switches to a mode it has no recent trial of, the controller
 * has the pipeline try that mode beside the running one on the same blocks
 * (eng_pipeline_trial), with the best mode tried before and a runner-up:
 * each candidate's R and P become the running mode's times the ratios the
 * trial measured. Figures a mode measured while it ran
 * were taken on other data than the running mode's; on a live VM, whose
 * pages compress anywhere from 0.05 to 0.6 from one second to the next,
 * comparing those switched on noise. A trial's verdict stands
 * ENG_ADAPT_TRIAL_AGE_S; one not done within ENG_ADAPT_TRIAL_WAIT_S (no data
 * flowing: a live feed held back by the link comes in bursts seconds apart)
 * leaves the decision to the model. Link-bound with lcores to spare, a
 * trial costs no throughput: one is asked for a mode the model puts ahead
 * by less than the margin too (explore), since the table was profiled on
 * other data; a switch still needs the trial's figures to win by it.
 *
 * A new mode must win by ENG_ADAPT_MARGIN and the running one must have held
 * ENG_ADAPT_HOLD_S, unless the new one wins by ENG_ADAPT_URGENT within
 * ENG_ADAPT_HOLD_S of the link moving: a fall the transport showed, or a
 * figure measured with data waiting (or grown past the ceiling)
 * ENG_ADAPT_LINK_MOVE off the last such figure. Waiting out the hold, or a
 * trial, then sends seconds the wrong way. The starting
 * mode is not a choice: the first decision comes with the first measured
 * window (and the trial it needs may run before it). Every decision needs a measured
 * window of the running mode, opened once the blocks fed before the switch
 * were compressed (the pipeline holds several MB encoded the old way).
 *
 * Free lcores: the host's cores minus what everything else used over the
 * tick (from /proc/stat and our own /proc/self/stat), at most the engine's
 * worker lcores: guests share the host.
 *
 * Called from the pipeline's tick on the main lcore only.
 */
#ifndef HANDOFF_ADAPT_H
#define HANDOFF_ADAPT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "link.h"
#include "pipeline.h"

#define ENG_ADAPT_HOLD_S 5.0
#define ENG_ADAPT_MARGIN 0.05
#define ENG_ADAPT_URGENT 0.25       /* a win this large, the link just moved: no hold, no trial */
#define ENG_ADAPT_LINK_MOVE 2.0     /* the link moved: a figure to trust this factor off the last one */
#define ENG_ADAPT_WINDOW_S 1.0      /* decisions, and live P and R, over about this long */
#define ENG_ADAPT_BUSY 0.5          /* lcores busy this share of the window: CPU-bound */
#define ENG_ADAPT_PROBE_S 1.5       /* a probe runs at least this long */
#define ENG_ADAPT_PROBE_MAX_S 5.0   /* and ends after this even unmeasured */
#define ENG_ADAPT_PROBE_WAIT_S 10.0 /* before the next probe; doubles per probe that found no room */
#define ENG_ADAPT_TRIAL_AGE_S 20.0 /* a trial's figures stand this long */
#define ENG_ADAPT_TRIAL_WAIT_S 10.0 /* a trial not done by then is given up */
#define ENG_ADAPT_EXPLORE_S 5.0    /* between trials asked with no switch waiting (explore) */
#define ENG_ADAPT_MAX_MODES 64

struct eng_mode_profile {
	const char *name;     /* "wdiff:zstd:3" */
	struct eng_mode mode;
	double p_ns;          /* lcore ns per fed block, all stages */
	double r;             /* wire bytes per fed byte */
};

/* The table perf/profile built (engine/mode_table.c). */
extern const struct eng_mode_profile eng_mode_table[];
extern const unsigned eng_mode_table_len;
extern const char eng_mode_table_command[];

struct eng_adapt_sample {
	double t;             /* seconds since start */
	/* the pipeline's figures per stage so far (busy lcore ns, blocks and bytes
	 * through it): each stage's cost per block is its own busy / its own
	 * blocks, so the several MB in flight between stages do not skew it */
	struct eng_stage_report stage[ENG_STAGE_COUNT];
	double link_bps;      /* the transport's estimate (0: unknown) */
	double free_lcores;   /* lcores the engine can use now */
	uint64_t queued;      /* bytes handed to the transport and not yet acknowledged */
	uint64_t unsent;      /* of those, not yet on the wire (plus our send queue's) */
	double guest_throttle; /* fraction of the guest's CPU the engine takes away (0: none) */
	bool link_fell;        /* link_bps is a fall the transport just showed (engine/link.h) */
};

/* A correction being learned: log of what the mode had, and its windows' log figures times their blocks. */
struct eng_adapt_mean {
	double prior, sum, n;
};

struct eng_adapt {
	const struct eng_mode_profile *table;
	unsigned n, cur;
	unsigned switches;     /* every change of mode, probes included */
	unsigned probes;
	FILE *trace;
	bool started;          /* blocks flow */
	double since;          /* when cur was chosen */
	bool chosen;           /* a decision was made (the start mode is not one) */
	/* measurement: live figures of cur over windows of >= ENG_ADAPT_WINDOW_S */
	struct eng_adapt_sample mprev; /* start of the open window */
	bool mopen;            /* after a switch: opens once the old mode's blocks are out */
	uint64_t fed_at_switch, packed_mark;
	bool packed;
	unsigned windows;      /* completed windows of cur */
	bool fresh;            /* cur's first windows teach its correction, not the scale */
	uint64_t fresh_blocks; /* sealed blocks those windows measured so far */
	struct eng_adapt_mean fresh_p, fresh_r;
	bool anchored[ENG_ADAPT_MAX_MODES]; /* tried against cur while fresh: keeps its ratio to cur */
	bool restarted;        /* a new pipeline (after a cut): its counters start again */
	bool backed;           /* cur was switched to on a standing trial's figures */
	double stage_p[ENG_STAGE_COUNT]; /* ns per block, last window */
	double live_p, live_r, feed_ns, ingest_ns;
	double scale_p, scale_r;
	double corr_p[ENG_ADAPT_MAX_MODES], corr_r[ENG_ADAPT_MAX_MODES];
	/* decision window */
	struct eng_adapt_sample dprev;
	unsigned ticks, link_ticks, idle_ticks; /* ticks; with a link figure; with its queue empty */
	double free_sum;
	double wait_link;      /* the link figure at the window's last tick with data waiting */
	double free_lcores, util; /* over the last window */
	double seen_Bps;       /* input B/s the running mode moved through the seal stage then */
	bool app_limited;      /* the last window: the transport's queue was mostly empty */
	bool link_bound;       /* the last window: data waited for the link (it had a figure, the queue held data) */
	/* link */
	double link_est;       /* what the predictions use */
	double ceiling, ceiling_t; /* last rate measured while data waited for the link (0: none) */
	double trusted;        /* the last link figure taken as the link (note_move) */
	double moved_t;        /* when it last moved by ENG_ADAPT_LINK_MOVE */
	/* probing */
	bool probing;
	unsigned probe_from, probe_fails;
	double probe_t, probe_link; /* when it began, and the rate we sent then (at most the link) */
	double probe_corr_p, probe_corr_r, probe_scale_p, probe_scale_r; /* the model then */
	double next_probe_t;
	/* trials: when each mode was last tried beside the running one (or given up on) */
	bool tried[ENG_ADAPT_MAX_MODES];
	bool trial_figures[ENG_ADAPT_MAX_MODES]; /* its correction came from the trial */
	double tried_t[ENG_ADAPT_MAX_MODES];
	int want;              /* the mode a switch waits on a trial of (-1: none) */
	unsigned want_n;       /* the trial's candidates: want, then others (pick_candidates) */
	unsigned want_set[ENG_TRIAL_MAX];
	bool asked;            /* the caller took them: their trial is under way */
	double asked_t, now;
	unsigned trials;       /* trials done */
	double explored_t;     /* when a trial was last asked with no switch waiting (explore) */
	bool exploring;        /* the trial asked is that one: no switch waits on it */
	bool reasked;          /* ... and it asks again about a mode tried before the link moved */
	unsigned trial_new_n;  /* modes whose trial came in since the last trace line */
	unsigned trial_new[ENG_TRIAL_MAX];
	double trial_r[ENG_TRIAL_MAX], trial_p[ENG_TRIAL_MAX]; /* theirs: candidate over reference, bytes and ns */
	/* last predictions, input B/s per mode: min(processing, network), and processing alone */
	double pred[ENG_ADAPT_MAX_MODES], proc[ENG_ADAPT_MAX_MODES];
	unsigned best;
};

/* start = the mode running now (the table's first entry when it is not there); trace may be NULL. */
void eng_adapt_init(struct eng_adapt *a, const struct eng_mode_profile *table, unsigned n,
		    const struct eng_mode *start, FILE *trace);
/* One tick. Returns true and sets *next when the pipeline should switch. */
bool eng_adapt_tick(struct eng_adapt *a, const struct eng_adapt_sample *s, struct eng_mode *next);
/* The pipeline was built again (a reconnect): the next samples count from 0, all in cur. */
void eng_adapt_restart(struct eng_adapt *a);
/*
 * Whether the controller stands by the running mode: measured (or
 * switched to on a standing trial's figures after the link last moved),
 * no probe or trial a switch waits
 * on (or an explore trial asking again after a move) under way, none
 * predicted better by the margin (in the last window's predictions: after
 * a switch, those that chose it).
 */
bool eng_adapt_settled(const struct eng_adapt *a);
/*
 * It would stand by the running mode, but has yet to measure it: the start
 * mode before its first decision, or a switch no trial backed waiting for
 * the new mode's first window (the feed keeps a short lead in it, so that
 * the window comes and the link is not left dry).
 */
bool eng_adapt_measuring(const struct eng_adapt *a);
/* The lcores were the bottleneck over the last window: the transport's queue mostly empty, the lcores busy. */
bool eng_adapt_cpu_bound(const struct eng_adapt *a);
/* The modes a trial should run now (m holds ENG_TRIAL_MAX), once (the caller asks the pipeline); 0: none. */
unsigned eng_adapt_trial_wanted(struct eng_adapt *a, struct eng_mode *m);
/* A trial's figures (eng_pipeline_trial_done), at time now. */
void eng_adapt_trial(struct eng_adapt *a, const struct eng_trial *t, double now);
/* The sample's figures from a pipeline report and a link sample. */
void eng_adapt_fill(struct eng_adapt_sample *s, double t, const struct eng_diff_report *rep,
		    const struct eng_link *link, double free_lcores);

/* Host CPU not used by others over the last call's interval, in cores. */
struct eng_cpu_meter {
	uint64_t total, idle, self;
	double ncpu;
	bool primed;
};
double eng_cpu_free(struct eng_cpu_meter *m);
/*
 * The lcores the engine can count on when `free` cores of ncpu were left by
 * the others: at least its fair share of the host (the scheduler gives each
 * busy thread its part, and the others' use counts as that many busy threads),
 * at most its own lcores. A busy guest leaves almost nothing free, yet lcores
 * that start working still get their share.
 */
double eng_cpu_share(double free, double ncpu, unsigned lcores);

#endif

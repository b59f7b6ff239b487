/*
 * The adaptation controller (seed 004, 6.1-6.2): every tick it predicts each
 * operating mode's system throughput and switches the pipeline to the best.
 *
 *   input bytes/s of mode m = min(processing, network)
 *   processing = free_lcores * 4096 B / P_m        (P: ns of lcore time per fed block)
 *   network    = link B/s / R_m                    (R: wire bytes per fed byte)
 *
 * P_m and R_m come from a profile table built offline on a reference
 * workload (perf/profile -> engine/mode_table.h), scaled by what the running
 * mode measures now: live P / profiled P of the running mode scales every
 * mode's P, and likewise for R (the data at hand compresses better or worse
 * than the reference, the lcores are faster or slower). A new mode must win by
 * ENG_ADAPT_MARGIN and the running one must have held ENG_ADAPT_HOLD_S.
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
#define ENG_ADAPT_WINDOW_S 1.0 /* live P and R over about this long */

struct eng_mode_profile {
	const char *name;     /* "wdiff:zstd:3" */
	struct eng_mode mode;
	double p_ns;          /* lcore ns per fed block, all stages */
	double r;             /* wire bytes per fed byte */
};

/* The table perf/profile built (engine/mode_table.h). */
extern const struct eng_mode_profile eng_mode_table[];
extern const unsigned eng_mode_table_len;
extern const char eng_mode_table_command[];

struct eng_adapt_sample {
	double t;             /* seconds since start */
	uint64_t fed_blocks;  /* blocks into the pipeline so far */
	uint64_t busy_ns;     /* lcore time of all stages so far */
	uint64_t in_bytes, wire_bytes; /* so far */
	double link_bps;      /* the transport's estimate (0: unknown) */
	double free_lcores;   /* lcores the engine can use now */
	uint64_t queued;      /* bytes waiting in the transport */
	double guest_throttle; /* fraction of the guest's CPU the engine takes away (0: none) */
};

struct eng_adapt {
	const struct eng_mode_profile *table;
	unsigned n, cur;
	double since;          /* when cur was chosen */
	struct eng_adapt_sample prev; /* start of the current window */
	bool have_prev;
	double scale_p, scale_r;
	double pred[64];       /* last predictions, input B/s per mode */
	unsigned switches;
	FILE *trace;
};

/* start = the mode running now (its index in table, or the nearest); trace may be NULL. */
void eng_adapt_init(struct eng_adapt *a, const struct eng_mode_profile *table, unsigned n,
		    const struct eng_mode *start, FILE *trace);
/* One tick. Returns true and sets *next when the pipeline should switch. */
bool eng_adapt_tick(struct eng_adapt *a, const struct eng_adapt_sample *s, struct eng_mode *next);
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

#endif

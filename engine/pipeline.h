/*
 * The diff pipeline: a stage graph on DPDK lcores that turns a target image
 * into a sealed stream against a base.
 *
 *   ingest -> hash[N] -> dedup -> delta[N] -> segment -> compress[N] -> seal[N] -> sink
 *
 * Stages are joined by rte_rings sized to hold every buffer of their pool,
 * so an enqueue never fails and back-pressure comes only from the pools
 * (rte_mempool): ingest stops when no batch is free, the segment stage when
 * no segment is free. Parallel stages ([N]) run one instance per lcore and
 * share their input ring; the single stages after them (dedup, segment, sink)
 * restore order by sequence number, so the output is deterministic.
 *
 * eng_diff_run() is called on the main lcore; it launches the workers and
 * runs its own share of the stages plus a 100 ms control tick.
 */
#ifndef HANDOFF_PIPELINE_H
#define HANDOFF_PIPELINE_H

#include <stdbool.h>
#include <stdint.h>

#include "codecs/codecs.h"
#include "ledger.h"
#include "stream.h"
#include "tracker/tracker.h"

/* An operating mode: how new blocks are delta-encoded and segments compressed. */
struct eng_mode {
	enum cdc_delta delta;
	enum cdc_comp comp;
	int level;
};

/* Parse "DELTA:COMP:LEVEL" (e.g. "wdiff:zstd:3"); -EINVAL with a reason. */
int eng_mode_parse(const char *text, struct eng_mode *m, char *err, size_t errlen);
void eng_mode_format(const struct eng_mode *m, char *buf, size_t len);

/* Byte sink for the stream writer: 0, -EAGAIN (not now: the sink stage
 * retries later, so a slow link never blocks an lcore) or -errno. */
struct eng_sink {
	int (*write)(void *ctx, const void *buf, size_t len);
	void *ctx;
};

enum eng_stage_id {
	ENG_STAGE_INGEST,
	ENG_STAGE_HASH,
	ENG_STAGE_DEDUP,
	ENG_STAGE_DELTA,
	ENG_STAGE_SEGMENT,
	ENG_STAGE_COMPRESS,
	ENG_STAGE_SEAL,
	ENG_STAGE_SINK,
	ENG_STAGE_COUNT
};

/* Per-stage figures summed over instances: P = busy_ns / blocks, R = out / in. */
struct eng_stage_report {
	const char *name;
	unsigned instances;
	uint64_t blocks, bytes_in, bytes_out, busy_ns;
};

/* What dedup decided for each block. */
enum eng_verdict {
	ENG_SAME,   /* equal to the base block at the same offset: not sent */
	ENG_ZERO,
	ENG_BASE,   /* equal to some other base block */
	ENG_DUP,    /* equal to an earlier target block */
	ENG_NEW,    /* sent raw or as a delta */
	ENG_VERDICT_COUNT
};

struct eng_diff_report {
	uint64_t target_size, blocks, wire_bytes, segments;
	uint64_t blocks_in_flight; /* taken from the feed, not yet on the sink */
	double started_s;          /* eng_mono_s() when the pipeline was set up (tables, pools, keys) */
	double first_data_s;       /* eng_mono_s() when the first data segment went to the sink; 0: none yet */
	uint64_t verdicts[ENG_VERDICT_COUNT];
	uint64_t deltas[CDC_DELTA_COUNT]; /* NEW blocks by encoding (NONE = raw) */
	uint64_t current_deltas;          /* of those, delta-encoded against a sent copy (ENG_OP_CUR) */
	double seconds;
	unsigned lcores;
	struct eng_stage_report stages[ENG_STAGE_COUNT];
};

struct eng_pipeline;

/* One object the pipeline sends (an image; a VM's disk, memory, device state). */
struct eng_diff_object {
	const char *name;
	const struct trk_index *base; /* digests of the base both ends hold */
	const uint8_t *base_map;      /* the base mapped read-only (deltas read it) */
	uint64_t capacity;            /* the result never grows past this many bytes */
	/* The base blocks the receiver holds, bit b of byte b / 8 (NULL: all): the
	 * others start unknown (sent whatever they hold), are never copied from
	 * and never delta-encoded against. The feed must hand each of them over. */
	const uint8_t *have;
};

#define ENG_FEED_END (-1000000)
#define ENG_FEED_HELD (-1000001)

/*
 * Where blocks come from. next() fills up to max blocks: refs[i] =
 * ENG_REF(object, block) and CDC_BLOCK_SIZE bytes at data + i * CDC_BLOCK_SIZE
 * (zero-padded). Instead of copying, it may point *view at the blocks where
 * they already are (a mapped file): they must stay unchanged until the run
 * ends. It returns how many it filled, 0 when none are ready yet (a
 * live source: the pipeline flushes what it holds and asks again later),
 * ENG_FEED_END when there will be no more, ENG_FEED_HELD when there are
 * blocks but the source holds them back for now and what the pipeline has
 * open (a partial segment) may wait for more rather than go out alone, or
 * -errno with a reason in err.
 * A block may come again later with new content; the receiver ends with the
 * last version. size() gives each object's final size, once, after the end.
 */
struct eng_feed {
	int (*next)(void *ctx, uint64_t *refs, uint8_t *data, const uint8_t **view, unsigned max,
		    char *err, size_t errlen);
	uint64_t (*size)(void *ctx, unsigned obj);
	void *ctx;
};

#define ENG_TICK_MIN_GAP_MS 2

/* A tick at at_s (eng_mono_s(); 0: at once) at the latest: the earliest request stands. */
static inline void eng_tick_due(uint64_t *due, double at_s)
{
	uint64_t t = at_s > 0 ? (uint64_t)(at_s * 1e6) : 1, old = __atomic_load_n(due, __ATOMIC_RELAXED);

	while ((!old || t < old) &&
	       !__atomic_compare_exchange_n(due, &old, t, true, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
		;
}

struct eng_diff_args {
	enum eng_stream_kind kind;
	unsigned nobj;
	const struct eng_diff_object *obj;
	const struct eng_feed *feed;
	const struct eng_sink *sink;
	const uint8_t *key; /* NULL: unkeyed, integrity only */
	const uint8_t *session; /* the reader's value for this connection (session.h); NULL: a file */
	enum cdc_aead aead;
	struct eng_mode mode;
	int socket; /* NUMA node for pools and tables */
	/* Called on the main lcore every tick_ms (default 100 ms): progress, mode changes. */
	void (*tick)(void *ctx, struct eng_pipeline *p);
	unsigned tick_ms;
	bool tick_every_loop; /* tests: tick on every main-lcore loop, between any two batches */
	/*
	 * If set: a tick is due at *tick_due (eng_tick_due, from any thread),
	 * ENG_TICK_MIN_GAP_MS after the last tick at the earliest: a pass that
	 * ended or a queue that drains is acted on then, not up to tick_ms later
	 * (on a fast link, most of a handoff). The main lcore clears it just
	 * before the tick, so what was asked before is seen by that tick.
	 */
	uint64_t *tick_due;
	void *tick_ctx;
	struct eng_stream *stream_out; /* if set: the header, salt and session, for control messages (segment key wiped) */
	/*
	 * A stream that may be cut and resumed (ledger.h): the run takes the
	 * block digests from it, leaves them there and notes which data segment
	 * carried each block. NULL: the run keeps its own.
	 */
	struct eng_ledger *ledger;
	/*
	 * A live feed that sends blocks again: keep copies of up to this many
	 * blocks of each object the receiver has no base for, so that a block
	 * sent again goes as a delta against what the receiver holds
	 * (sent_copies.h). All 0: none.
	 */
	uint32_t sent_copies[ENG_MAX_OBJECTS];
	/*
	 * The caller stops EAL and exits right after: the dedup tables are left
	 * to rte_eal_cleanup. DPDK zeroes every byte of an element it frees,
	 * faulting in the table pages a run never touched; for a 256 MiB image
	 * that costs more than all of the run's lookups.
	 */
	bool exit_after;
};

/* A feed that reads one image file front to back (diff). */
struct eng_file_feed {
	int fd;
	const uint8_t *map; /* optional: the file mapped read-only (no copies) */
	uint64_t size, next_block;
};
struct eng_feed eng_file_feed(struct eng_file_feed *f);

int eng_diff_run(const struct eng_diff_args *a, struct eng_diff_report *rep, char *err,
		 size_t errlen);

/* From the tick: takes effect at the next batch / segment boundary. */
void eng_pipeline_set_mode(struct eng_pipeline *p, const struct eng_mode *m);
/*
 * A trial: up to ENG_TRIAL_MAX candidate modes encoded beside the running
 * one on the same blocks (batches the claiming delta instance takes next,
 * until they held ENG_TRIAL_BLOCKS new blocks; a worker's instance, not the
 * main lcore's, when there is one), each batch compressed on its own every
 * way, so the controller compares the modes on the same data rather than on
 * whatever each happened to meet while it ran. Every candidate at once: one
 * at a time, auto's start on a 10 Mbit/s link went through three trials in a
 * row, 1-2 s each, in its start mode. All halves are done by the trial (the
 * stage's own encoding is not reused), and their lcore time is not in the
 * stage figures.
 */
#define ENG_TRIAL_BLOCKS 256
#define ENG_TRIAL_MAX 3
struct eng_trial {
	struct eng_mode cur;       /* the running mode when the trial began */
	unsigned ncand;
	struct eng_mode cand[ENG_TRIAL_MAX];
	uint64_t blocks;           /* new blocks (what the modes encode differently); 0: it told nothing */
	uint64_t cur_bytes, cand_bytes[ENG_TRIAL_MAX]; /* compressed, each batch alone */
	uint64_t cur_ns, cand_ns[ENG_TRIAL_MAX];       /* thread CPU ns of delta encoding and compression */
};
/* From the tick: ask for a trial of the n modes m; false while another is under way. */
bool eng_pipeline_trial(struct eng_pipeline *p, const struct eng_mode *m, unsigned n);
/* From the tick: true once, when the trial asked for is done, with its figures. */
bool eng_pipeline_trial_done(struct eng_pipeline *p, struct eng_trial *t);
/* From the tick: end the run now, as failed (no trailer goes out). */
void eng_pipeline_abort(struct eng_pipeline *p, const char *why);
/* From the tick: live figures so far. */
void eng_pipeline_report(const struct eng_pipeline *p, struct eng_diff_report *rep);

const char *eng_verdict_name(enum eng_verdict v);

#endif

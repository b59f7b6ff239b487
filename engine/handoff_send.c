/*
 * Source side of the VM handoff (design in handoff.h).
 *
 * Threads: the pipeline's lcores (the feed and the 100 ms tick run on the
 * main lcore), the bridge thread parsing QEMU's migration stream, and the
 * send queue's writer. They share the mirror of guest RAM and one pending
 * bitmap over the block space [disk | memory | devices]: the bridge (and
 * the tick, for disk and devices) set bits after writing content, the feed
 * clears a bit before it copies, so a block changed during the copy is
 * marked again and sent again with its newer content.
 */
#include "handoff.h"
#include "cli.h"
#include "clock.h"
#include "control.h"
#include "guard.h"
#include "io.h"
#include "sendq.h"
#include "sent_copies.h"
#include "session.h"
#include "throttle.h"
#include "adapt.h"
#include "conn.h"
#include "edge/store.h"
#include "qemu_bridge/qmp.h"
#include "tracker/dirtyfs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <rte_cycles.h>

enum phase { PH_PRECOPY, PH_STOPPING, PH_FINAL };

struct pass_report {
	unsigned pass;
	double start_s, end_s;
	uint64_t blocks, pending_at_start, wire_at_start, wire_at_end;
	uint64_t resent;        /* of blocks, how many were fed in an earlier pass */
	uint64_t resent_disk;   /* of those, disk blocks */
	uint64_t resent_lacking; /* of those, blocks whose base the destination's cache lacked */
	struct pass_report *next;
};

/*
 * Guest RAM read in chunks with pread: the kernel copies through its own
 * mapping of the page cache, while touching our mapping of it costs a fault
 * and a TLB miss per 4 KiB page (on this nested host 256 MiB read 0.02 s by
 * pread, 0.11 s through the mapping once its pages were mapped, and the
 * first sweep faulted them in at several us each).
 */
#define LIVE_CHUNK_BLOCKS 256u
#define REFRESH_SHARE 0.2 /* of the time between passes that scans may take */
#define SCAN_SLICE_S 0.02 /* of a scan between passes, per tick */
#define FULL_TICK_S 0.09  /* the controller's tick (tick_ms 100); early ticks in between */
#define THROTTLE_STEP_MIN_S 1.0 /* between the guest throttle's steps */

struct live_chunk {
	uint8_t *buf;    /* LIVE_CHUNK_BLOCKS blocks */
	uint64_t first;  /* first block of the shared RAM held */
	unsigned n;      /* blocks held (0: none) */
};

struct src {
	const struct eng_send_args *a;
	/* adaptation (--mode auto) */
	struct eng_adapt adapt;
	struct eng_cpu_meter cpu;
	FILE *trace;
	struct eng_outfile trace_out; /* the trace is renamed into place at the end */
	uint8_t session[ENG_SESSION_LEN]; /* the destination's value for this connection */
	struct eng_mode mode_now;
	struct eng_mode modes_used[32]; /* the start mode and every mode switched to, once each */
	unsigned nmodes_used;
	struct eng_vmbase base;
	struct qb_qmp *qmp;
	bool was_running, qemu_migrating, committed;
	/* block space [disk | memory | devices] and what in it changed */
	uint64_t first[ENG_VM_OBJECTS], count[ENG_VM_OBJECTS], total;
	uint64_t *pending;
	uint64_t pending_count;
	uint8_t *mirror;
	size_t mirror_len;
	/* guest RAM on a shared memory backend, read directly during pre-copy */
	const uint8_t *shared;
	size_t shared_len;
	uint64_t shared_off; /* where the backend's RAM block sits in the RAM image */
	int shared_fd;       /* the backend file, read in chunks by the sweep and the scans */
	int base_ram_fd;     /* the base's mem.img: what the mirror holds of a page never written */
	uint64_t *mirror_written; /* per mirror block: written since it came from mem.img */
	struct live_chunk sweep_live, sweep_base, scan_live, scan_base;
	/* the first pass's pages not yet compared with the mirror (begin_unscanned_pass) */
	uint64_t *unchecked, unchecked_first, unchecked_n, unchecked_pos;
	int disk_fd;
	int read_fd;            /* where disk blocks are read: the image behind the tracker, or disk_fd */
	uint64_t disk_size;
	uint8_t *dev;
	size_t dev_len;
	/* passes: a permutation of the block space, walked by the feed once per heat
	 * bucket, coldest first (--order dirty), or once (random, and the final pass) */
	uint64_t perm_mul, perm_add, cursor;
	unsigned sweeps;        /* heat buckets this pass walks: the hotter ones wait for the stop */
	uint64_t withheld;      /* blocks in the buckets this pass leaves out */
	double est_ratio;       /* wire bytes per byte fed, as the monitor last estimated it */
	uint8_t *heat;          /* per block: times seen written (disk: the tracker's count; RAM: our scans) */
	uint8_t *pass_bucket;   /* heat buckets as the pass began: a block written again meanwhile keeps
				 * its sweep (else it would go again in a hotter sweep of the same pass) */
	uint64_t *sent;         /* blocks fed at least once */
	uint64_t resent_blocks;
	bool pass_active, final_pass, ended, hold;
	/*
	 * Blocks the feed may hand over before a tick looks again (pre-copy
	 * over a link): the room left in the commit, at the ratio the wire
	 * shows. Without it one tick of feeding at lcore speed went out in one
	 * go (10 MB of input at 10 Mbit/s: seconds of link time in the mode of
	 * that moment, and the controller's trial waited for the next burst).
	 * The ingest lcore takes from it, the tick sets it.
	 */
	int64_t feed_budget;
	/*
	 * Little left for the link (tick): a feed held back returns 0, so the
	 * pipeline sends the segment it holds open; otherwise ENG_FEED_HELD, and
	 * the segment waits to be filled. Flushing at every spent share cut
	 * segments 5-10x short, and each cost zstd:9 its 8 MB history again:
	 * the send process used 15-22 s of CPU for what took 11.
	 */
	bool link_dry;
	bool final_fed;         /* the final pass went through the whole block space */
	unsigned passes;
	struct pass_report *reports, *cur_report;
	uint64_t fed_blocks;
	uint64_t trial_fed_from; /* fed_blocks when the controller's trial was asked (trial_share) */
	/* bridge */
	pthread_t bridge;
	bool bridge_started;
	int mig_fd;
	int bridge_done; /* 1 ok, -1 failed; atomic */
	char bridge_err[256];
	struct qb_layout layout;
	struct qb_devstate devstate;
	uint64_t qemu_pages, qemu_sections;
	/* control */
	enum phase phase;
	uint64_t t0;
	double stop_requested_s, last_refresh_s, qemu_done_s, trailer_s;
	uint64_t tick_due;      /* when the pipeline's main lcore ticks next at the latest (eng_tick_due) */
	double full_tick_s, last_tick_s;
	double thr_step_s;      /* the guest throttle's last step */
	double stop_decided_s;  /* the rest fit: QEMU asked to finish (stop_requested_s once it took that) */
	double final_scan_s;    /* the scan of RAM after the VM stopped (part of the pause) */
	double held_s;          /* pre-copy's feed held back: more than its lead (ahead_bytes) waited */
	double refresh_cost_s; /* what the last scan of RAM and the disk's map took */
	bool scanning;          /* a scan of shared RAM between passes is under way, at scan_at */
	size_t scan_at;
	double scan_spent_s;    /* what its slices took so far */
	double stop_ts, resume_ts; /* QMP event times (host realtime clock) */
	double best_est;      /* smallest estimated time of a pass so far */
	/* wire bytes per raw byte fed, over the last whole pass: late passes
	 * carry the hottest pages, which compress worse than the average */
	uint64_t cur_raw, cur_wire, pass_raw0, pass_wire0;
	double pass_ratio;
	unsigned est_pass, stalled;
	bool over_budget;     /* stopped although the rest did not fit the budget */
	/* guest throttle (throttle.h): opened on first need */
	struct eng_throttle thr;
	struct eng_guard guard; /* puts the VM back if this process dies before the commit */
	bool thr_tried;
	char thr_note[300];   /* why it is unavailable */
	unsigned thr_steps;
	double thr_max, thr_since, thr_seconds;
	struct eng_conn *conn;
	struct eng_control ctl; /* ready once the stream's keys exist */
	bool have_ctl;
	struct eng_stream stream;
	struct eng_sendq *sq;
	struct eng_outfile out;
	struct eng_fd out_fd;
	struct eng_link link;
	struct eng_link_fall link_fall;
	const struct eng_conn *link_fall_conn;
	/* the last time the destination acknowledged a byte, or had nothing to (per connection) */
	const struct eng_conn *acked_conn;
	uint64_t acked_seen;
	double acked_at;
	double rate_Bps;
	int unsent_limit;       /* the socket's TCP_NOTSENT_LOWAT now (0: not set) */
	uint64_t wire_bytes;
	/* link cuts (send --retry-for): each connection carries a stream of its
	 * own; the ledger says what the destination may still lack after one */
	struct eng_ledger ledger;
	bool link_lost;         /* the failure in fail[] is the connection's: resumable */
	bool resumed_remote;    /* a reconnect found the VM already running there */
	uint8_t handoff_id[32]; /* the first stream's salt: names the handoff on a resume */
	bool have_id;
	unsigned resumes;
	uint64_t owed_blocks;   /* sent again after cuts */
	double cut_s;           /* link down, summed over cuts */
	uint64_t wire_prev, raw_prev, sealed_prev; /* earlier streams' counters */
	/* a destination that holds an edge cache, not the base: the blocks of the
	 * base it has (bit per block; NULL: a whole base); the rest is sent */
	uint8_t *base_have[ENG_VM_OBJECTS];
	uint64_t lacking[ENG_VM_OBJECTS]; /* blocks, per object */
	uint64_t current_deltas; /* blocks sent again as deltas against what the destination held (all streams) */
	/*
	 * The first pass sends them last, as they are then (bit per global
	 * block; NULL once that pass is over): the VM overwrites some of them
	 * (bench-edge: the base's own memory is where the VM writes), and each
	 * one sent early and written after goes twice.
	 */
	uint64_t *lacking_late;
	double plan_s;
	bool planned;           /* the plan and map went through */
	/* start-up, eng_mono_s(): from main() (or the call) to the first state on the wire */
	double t_begin, t_setup, t_connected, t_guarded, t_pipeline, t_first_pass, t_first_fed, t_first_state;
	int socket; /* the pipeline's NUMA node */
	char fail[512];
};

static int qemu_migrate(struct src *s, uint64_t downtime_ms, char *err, size_t errlen);

static double now_s(const struct src *s)
{
	return (double)(rte_rdtsc() - s->t0) / (double)rte_get_tsc_hz();
}

static void src_fail(struct src *s, const char *fmt, ...)
{
	va_list ap;

	if (s->fail[0])
		return;
	va_start(ap, fmt);
	vsnprintf(s->fail, sizeof(s->fail), fmt, ap);
	va_end(ap);
}

/* ---- pending bitmap ----------------------------------------------------------- */

static void mark(struct src *s, uint64_t g)
{
	uint64_t bit = 1ull << (g & 63);

	if (!(__atomic_fetch_or(&s->pending[g >> 6], bit, __ATOMIC_ACQ_REL) & bit))
		__atomic_fetch_add(&s->pending_count, 1, __ATOMIC_RELAXED);
}

static bool take(struct src *s, uint64_t g)
{
	uint64_t bit = 1ull << (g & 63);

	if (!(__atomic_load_n(&s->pending[g >> 6], __ATOMIC_RELAXED) & bit))
		return false;
	if (!(__atomic_fetch_and(&s->pending[g >> 6], ~bit, __ATOMIC_ACQ_REL) & bit))
		return false;
	__atomic_fetch_sub(&s->pending_count, 1, __ATOMIC_RELAXED);
	return true;
}

/* Disk blocks written since the last fetch (the first fetch: since the VM started). */
static int mark_dirty_disk(struct src *s)
{
	struct trk_dirty_map m;
	char err[200];

	if (trk_dirty_fetch(s->a->disk_path, &m, err, sizeof(err))) {
		src_fail(s, "disk tracker: %s", err);
		return -EIO;
	}
	uint64_t n = m.nblocks < s->count[ENG_VM_DISK] ? m.nblocks : s->count[ENG_VM_DISK], k = 0;
	for (uint64_t b = 0; b < n; b++)
		if (trk_dirty_test(&m, b)) {
			uint16_t w = m.writes ? m.writes[k++] : 1;
			s->heat[s->first[ENG_VM_DISK] + b] = (uint8_t)(w > 255 ? 255 : w);
			mark(s, s->first[ENG_VM_DISK] + b);
		}
	trk_dirty_map_free(&m);
	return 0;
}

/*
 * Pre-copy reads guest RAM straight from QEMU's shared memory backend: a
 * page that differs from the mirror changed since it was last taken. QEMU's
 * own pre-copy cannot be held open (7.2 converges, stopping the VM, as soon
 * as one bitmap sync finds little dirty), so QEMU migrates only at the stop.
 */
static void start_pass(struct src *s);

/*
 * The first pass does not wait for a scan of all RAM (half a second here of
 * reading 256 MiB twice and faulting in the copy-on-write mirror, before the
 * first byte could go): every page of the shared block starts pending and
 * unchecked, and the feed sweeps them in address order first (in order, the
 * kernel maps pages around each fault: about 4x cheaper than at random),
 * comparing each with the mirror and skipping those still equal to the
 * base, then goes on in the pass's random order. Later passes scan as usual.
 */
static int begin_unscanned_pass(struct src *s)
{
	uint64_t first = s->first[ENG_VM_MEMORY] + s->shared_off / CDC_BLOCK_SIZE, n = s->shared_len / CDC_BLOCK_SIZE;

	if (!(s->unchecked = calloc((n + 63) / 64, sizeof(uint64_t))))
		return -ENOMEM;
	s->unchecked_first = first;
	s->unchecked_n = n;
	const uint8_t *have = s->base_have[ENG_VM_MEMORY];
	for (uint64_t b = 0; b < n; b++) {
		uint64_t mb = s->shared_off / CDC_BLOCK_SIZE + b; /* in the memory object */
		if (have && !(have[mb / 8] >> (mb % 8) & 1))
			continue; /* the destination lacks its base: pending already, and sent whatever it holds */
		s->unchecked[b / 64] |= 1ull << (b % 64);
		mark(s, first + b);
	}
	s->last_refresh_s = now_s(s);
	start_pass(s);
	return 0;
}

/*
 * Block b of the shared RAM from fd, whose block 0 sits at byte at: from c,
 * read by the chunk that holds it (the sweep and the scans go in address
 * order), or NULL if the read fails (the caller reads its mapping instead).
 */
static const uint8_t *chunk_page(struct src *s, struct live_chunk *c, int fd, uint64_t at, uint64_t b)
{
	if (c->n && b >= c->first && b - c->first < c->n)
		return c->buf + (b - c->first) * CDC_BLOCK_SIZE;
	uint64_t nblocks = s->shared_len / CDC_BLOCK_SIZE, n = nblocks - b < LIVE_CHUNK_BLOCKS ? nblocks - b
												: LIVE_CHUNK_BLOCKS;
	c->n = 0;
	if (fd < 0 || (!c->buf && !(c->buf = aligned_alloc(CDC_BLOCK_SIZE, LIVE_CHUNK_BLOCKS * CDC_BLOCK_SIZE))))
		return NULL;
	ssize_t got = pread(fd, c->buf, n * CDC_BLOCK_SIZE, (off_t)(at + b * CDC_BLOCK_SIZE));
	if (got < CDC_BLOCK_SIZE)
		return NULL;
	c->first = b;
	c->n = (unsigned)(got / CDC_BLOCK_SIZE);
	return c->buf;
}

/* Block b of the shared RAM as it is now. */
static const uint8_t *live_page(struct src *s, struct live_chunk *c, uint64_t b)
{
	const uint8_t *p = chunk_page(s, c, s->shared_fd, 0, b);

	return p ? p : s->shared + b * CDC_BLOCK_SIZE;
}

/*
 * What the mirror holds of block b of the shared RAM. A page never written
 * since the mirror was mapped from mem.img is read from mem.img like the
 * live one: its page of the copy-on-write mirror would cost a fault.
 */
static const uint8_t *mirror_page(struct src *s, struct live_chunk *c, uint64_t b)
{
	uint64_t mb = s->shared_off / CDC_BLOCK_SIZE + b;
	const uint8_t *p = NULL;

	if (!(s->mirror_written[mb / 64] >> (mb % 64) & 1))
		p = chunk_page(s, c, s->base_ram_fd, s->shared_off, b);
	return p ? p : s->mirror + mb * CDC_BLOCK_SIZE;
}

/* The mirror's block mb takes data. */
static void mirror_write(struct src *s, uint64_t mb, const uint8_t *data)
{
	memcpy(s->mirror + mb * CDC_BLOCK_SIZE, data, CDC_BLOCK_SIZE);
	__atomic_fetch_or(&s->mirror_written[mb / 64], 1ull << (mb % 64), __ATOMIC_RELAXED); /* the bridge's too */
}

/* An unchecked page the feed took: false when it still equals the mirror (nothing to send). */
static bool changed_since_mirror(struct src *s, uint64_t g)
{
	uint64_t b = g - s->unchecked_first;

	if (!s->unchecked || g < s->unchecked_first || b >= s->unchecked_n ||
	    !(s->unchecked[b / 64] >> (b % 64) & 1))
		return true;
	s->unchecked[b / 64] &= ~(1ull << (b % 64));
	const uint8_t *live = live_page(s, &s->sweep_live, b);
	if (!memcmp(mirror_page(s, &s->sweep_base, b), live, CDC_BLOCK_SIZE))
		return false;
	mirror_write(s, s->shared_off / CDC_BLOCK_SIZE + b, live);
	return true;
}

/*
 * A lacking page of the shared RAM goes as it is now: the mirror (the base,
 * until a scan) takes the live page first. Sent as the mirror had it, every
 * page the VM changed since the base went twice: once as the base had it,
 * once more after the next scan found it different.
 */
static void mirror_take_live(struct src *s, uint64_t g)
{
	uint64_t first = s->first[ENG_VM_MEMORY] + s->shared_off / CDC_BLOCK_SIZE;

	if (s->shared && g >= first && g - first < s->shared_len / CDC_BLOCK_SIZE)
		mirror_write(s, s->shared_off / CDC_BLOCK_SIZE + (g - first), s->shared + (g - first) * CDC_BLOCK_SIZE);
}

/* A RAM page found written again (the disk's count comes from the tracker). */
static void heat_up(struct src *s, uint64_t g)
{
	if (s->heat[g] < 255)
		s->heat[g]++;
}

/*
 * Compares shared RAM with the mirror from s->scan_at on, for about budget_s
 * (0: to the end); true once the end is reached. Between passes the scan
 * goes in slices, one per tick: whole, 256 MiB took 60-150 ms of the main
 * lcore, and the controller's ticks and the feed waited for it.
 */
static bool scan_shared_ram(struct src *s, double budget_s)
{
	uint64_t first = s->first[ENG_VM_MEMORY] + s->shared_off / CDC_BLOCK_SIZE;
	double until = eng_mono_s() + budget_s;

	s->scan_live.n = s->scan_base.n = 0; /* what they held is stale */
	for (size_t off = s->scan_at; off < s->shared_len; off += CDC_BLOCK_SIZE) {
		if (budget_s > 0 && off > s->scan_at && !(off / CDC_BLOCK_SIZE % LIVE_CHUNK_BLOCKS) &&
		    eng_mono_s() >= until) {
			s->scan_at = off;
			return false;
		}
		const uint8_t *live = live_page(s, &s->scan_live, off / CDC_BLOCK_SIZE);
		if (!memcmp(mirror_page(s, &s->scan_base, off / CDC_BLOCK_SIZE), live, CDC_BLOCK_SIZE))
			continue;
		mirror_write(s, (s->shared_off + off) / CDC_BLOCK_SIZE, live);
		heat_up(s, first + off / CDC_BLOCK_SIZE);
		mark(s, first + off / CDC_BLOCK_SIZE);
	}
	s->scan_at = 0;
	return true;
}

/* ---- passes --------------------------------------------------------------------- */

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;
		a = b;
		b = t;
	}
	return a;
}

/* Heat buckets: never seen written again, once, 2-3, 4-7, 8 times or more. */
#define HEAT_BUCKETS 5
static unsigned heat_bucket(uint8_t h)
{
	return h == 0 ? 0 : h == 1 ? 1 : h < 4 ? 2 : h < 8 ? 3 : 4;
}

/* What the pass starts with, per heat bucket, in the trace: the order is visible there. */
static void trace_order(struct src *s)
{
	uint64_t n[HEAT_BUCKETS] = { 0 };

	for (uint64_t w = 0; w < (s->total + 63) / 64; w++)
		for (uint64_t m = __atomic_load_n(&s->pending[w], __ATOMIC_RELAXED); m; m &= m - 1)
			n[heat_bucket(s->heat[w * 64 + (uint64_t)__builtin_ctzll(m)])]++;
	fprintf(s->trace, "{\"t\":%.3f,\"event\":\"order\",\"pass\":%u,\"order\":\"%s\",\"buckets\":[%llu,%llu,%llu,%llu,%llu],"
			  "\"walked_buckets\":%u,\"withheld_blocks\":%llu}\n",
		now_s(s), s->passes, s->sweeps > 1 ? "dirty" : "random", (unsigned long long)n[0],
		(unsigned long long)n[1], (unsigned long long)n[2], (unsigned long long)n[3], (unsigned long long)n[4],
		s->sweeps, (unsigned long long)s->withheld);
	fflush(s->trace);
}

/*
 * How many heat buckets a pre-copy pass with --order dirty walks. The
 * hottest blocks are written again before the stop whatever a pass does;
 * sending them in every pass costs link time for nothing, so they are left
 * pending for the final pass, as long as all of them (dirty or not: they may
 * all be by then) fit in half of what the stop may send. From the second
 * pass, when a first one has shown the rate and the ratio.
 */
static unsigned dirty_sweeps(struct src *s)
{
	uint64_t n[HEAT_BUCKETS] = { 0 }, held = 0;
	unsigned sweeps = HEAT_BUCKETS;

	for (uint64_t g = 0; g < s->total; g++)
		n[s->pass_bucket[g]]++;
	double stop_bytes = s->a->stop_budget_s * s->rate_Bps;
	if (stop_bytes > ENG_STOP_BYTES)
		stop_bytes = ENG_STOP_BYTES;
	double ratio = s->est_ratio > 0.01 ? s->est_ratio : 1;
	/* written 8 times or more, then 4 or more, 2 or more: never the blocks written once */
	for (unsigned b = HEAT_BUCKETS - 1; s->passes >= 1 && s->rate_Bps > 0 && b >= 2; b--) {
		if ((double)(held + n[b]) * CDC_BLOCK_SIZE * ratio > stop_bytes / 2)
			break;
		held += n[b];
		sweeps = b;
	}
	s->withheld = held;
	return sweeps;
}

/* Of pending, the blocks a pass would walk: not those the last pass left for the stop. */
static uint64_t walkable_blocks(struct src *s, uint64_t pending)
{
	uint64_t n = 0;

	if (s->sweeps <= 1 || s->sweeps >= HEAT_BUCKETS)
		return pending;
	for (uint64_t w = 0; w < (s->total + 63) / 64; w++)
		for (uint64_t m = __atomic_load_n(&s->pending[w], __ATOMIC_RELAXED); m; m &= m - 1)
			n += heat_bucket(s->heat[w * 64 + (uint64_t)__builtin_ctzll(m)]) >= s->sweeps;
	return n < pending ? pending - n : 0; /* the bitmap moves on while pending is a snapshot */
}

/*
 * A fresh permutation i -> (mul * i + add) mod total for each pass (workload
 * leveling), mul near total times a badly approximable ratio (the golden
 * ratio's or a kin's, by chance): any run of consecutive steps then lands
 * evenly over all blocks (the three-distance theorem), so what one window
 * of the controller or one trial sees samples the whole VM. A random mul
 * often lies near a fraction of small denominator q, and a run then walks
 * q narrow stretches: over 196,620 blocks, 100 steps touched a median 75
 * of 100 equal stretches with a random mul (a tenth of draws 36 or fewer),
 * 75 to 87 with these. With --order dirty the pass walks it once per heat bucket,
 * coldest first: blocks written once go before blocks written again and
 * again, which would likely be written once more before the stop and go
 * twice; the hottest wait for the stop (dirty_sweeps). The final pass (the
 * VM stopped) walks it once.
 */
static void start_pass(struct src *s)
{
	uint64_t r[2];

	/* continued fractions [0; 1, 1, ...], [0; 2, 2, ...], [0; 1, 2, 1, 2, ...], [0; 4, 4, ...] */
	static const double spread[] = { 0.6180339887498949, 0.4142135623730950, 0.7320508075688772,
					 0.2360679774997897 };

	cdc_random(r, sizeof(r));
	s->perm_mul = (uint64_t)((double)s->total * spread[r[0] % 4]);
	while (gcd(s->perm_mul, s->total) != 1) /* gcd(0, n) = n: 0 moves on too */
		s->perm_mul++;
	s->perm_add = r[1] % s->total;
	s->cursor = 0;
	s->sweeps = 1;
	s->withheld = 0;
	if (!s->a->order_random && !s->final_pass) {
		for (uint64_t g = 0; g < s->total; g++)
			s->pass_bucket[g] = (uint8_t)heat_bucket(s->heat[g]);
		s->sweeps = dirty_sweeps(s);
	}
	if (s->passes && s->cur_raw > s->pass_raw0 + (1u << 20))
		s->pass_ratio = (double)(s->cur_wire - s->pass_wire0) / (double)(s->cur_raw - s->pass_raw0);
	s->pass_raw0 = s->cur_raw;
	s->pass_wire0 = s->cur_wire;
	s->passes++;
	if (!s->t_first_pass)
		s->t_first_pass = eng_mono_s();
	struct pass_report *p = calloc(1, sizeof(*p));
	if (p) {
		p->pass = s->passes;
		p->start_s = now_s(s);
		p->pending_at_start = __atomic_load_n(&s->pending_count, __ATOMIC_RELAXED);
		p->wire_at_start = s->wire_bytes;
		if (s->cur_report)
			s->cur_report->next = p;
		else
			s->reports = p;
		s->cur_report = p;
	}
	if (s->trace)
		trace_order(s);
	__atomic_store_n(&s->pass_active, true, __ATOMIC_RELEASE);
}

/* The object a feed position is in, and the block within it. */
static unsigned object_of(const struct src *s, uint64_t g, uint64_t *b)
{
	unsigned o = g >= s->first[ENG_VM_DEVICES] ? ENG_VM_DEVICES
		     : g >= s->first[ENG_VM_MEMORY] ? ENG_VM_MEMORY
						     : ENG_VM_DISK;
	*b = g - s->first[o];
	return o;
}

/* A resent block, counted by what it is (the summary's passes). */
static void count_resent(struct src *s, uint64_t g)
{
	uint64_t b;
	unsigned o = object_of(s, g, &b);

	s->resent_blocks++;
	if (!s->cur_report)
		return;
	s->cur_report->resent++;
	if (o == ENG_VM_DISK)
		s->cur_report->resent_disk++;
	if (s->base_have[o] && !(s->base_have[o][b / 8] >> (b % 8) & 1))
		s->cur_report->resent_lacking++;
}

static int fill_block(struct src *s, uint64_t g, uint64_t *ref, uint8_t *out, char *err,
		      size_t errlen)
{
	uint64_t b;
	unsigned o = object_of(s, g, &b);

	*ref = ENG_REF(o, b);
	if (o == ENG_VM_MEMORY) {
		memcpy(out, s->mirror + b * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE);
		return 0;
	}
	if (o == ENG_VM_DEVICES) {
		size_t off = (size_t)b * CDC_BLOCK_SIZE, n = s->dev_len - off;
		if (n > CDC_BLOCK_SIZE)
			n = CDC_BLOCK_SIZE;
		memcpy(out, s->dev + off, n);
		memset(out + n, 0, CDC_BLOCK_SIZE - n);
		return 0;
	}
	ssize_t n = pread(s->read_fd, out, CDC_BLOCK_SIZE, (off_t)(b * CDC_BLOCK_SIZE));
	if (n < 0) {
		snprintf(err, errlen, "cannot read tracked disk %s: %s", s->a->disk_path, strerror(errno));
		return -errno;
	}
	memset(out + n, 0, CDC_BLOCK_SIZE - (size_t)n);
	return 0;
}

static int feed_next(void *ctx, uint64_t *refs, uint8_t *data, const uint8_t **view, unsigned max,
		     char *err, size_t errlen)
{
	(void)view; /* guest RAM changes under us: always copied */
	struct src *s = ctx;
	unsigned n = 0, steps = 0;

	if (s->ended)
		return ENG_FEED_END;
	if (!__atomic_load_n(&s->pass_active, __ATOMIC_ACQUIRE))
		return 0;
	/* no share while held (backlog_bytes past the commit): the tick sets both */
	int64_t budget = __atomic_load_n(&s->feed_budget, __ATOMIC_ACQUIRE);
	if (budget <= 0) /* the tick it asked for sets the next share */
		return __atomic_load_n(&s->link_dry, __ATOMIC_ACQUIRE) ? 0 : ENG_FEED_HELD;
	if ((int64_t)max > budget)
		max = (unsigned)budget;
	/* the first pass ends with a sweep of the blocks the destination's cache lacks */
	uint64_t walk = s->total * s->sweeps, end = walk + (s->lacking_late ? s->total : 0);
	while (n < max && s->cursor < end && steps++ < 16384u * s->sweeps) { /* the same share of a pass per call */
		uint64_t g;
		bool late = false;
		if (s->unchecked && s->unchecked_pos < s->unchecked_n) {
			g = s->unchecked_first + s->unchecked_pos++; /* the first pass's sweep */
			/*
			 * A page the destination lacks is pending but not unchecked:
			 * taken here it went as the mirror had it (the base), and
			 * again once a scan found the VM had changed it (3,902 pages
			 * of bench-edge's cache case). The sweep at the end takes it.
			 */
			if (s->lacking_late && s->lacking_late[g >> 6] >> (g & 63) & 1)
				continue;
		} else if (s->cursor >= walk) {
			g = s->cursor++ - walk;
			late = true;
			if (!(s->lacking_late[g >> 6] >> (g & 63) & 1))
				continue;
		} else {
			uint64_t i = s->cursor++;
			g = (uint64_t)(((unsigned __int128)s->perm_mul * (i % s->total) + s->perm_add) % s->total);
			if (s->sweeps > 1 && s->pass_bucket[g] != i / s->total)
				continue; /* its bucket's sweep takes it */
			if (s->lacking_late && s->lacking_late[g >> 6] >> (g & 63) & 1)
				continue; /* the sweep at the end takes it */
		}
		if (!take(s, g) || !changed_since_mirror(s, g))
			continue;
		if (late)
			mirror_take_live(s, g);
		if (__atomic_fetch_or(&s->sent[g >> 6], 1ull << (g & 63), __ATOMIC_RELAXED) & (1ull << (g & 63)))
			count_resent(s, g);
		int ret = fill_block(s, g, &refs[n], data + (size_t)n * CDC_BLOCK_SIZE, err, errlen);
		if (ret)
			return ret;
		n++;
	}
	s->fed_blocks += n;
	if (n && __atomic_sub_fetch(&s->feed_budget, (int64_t)n, __ATOMIC_ACQ_REL) <= 0)
		eng_tick_due(&s->tick_due, 0); /* its share is fed: how much more may go */
	if (n && !s->t_first_fed)
		s->t_first_fed = eng_mono_s();
	if (s->cur_report)
		s->cur_report->blocks += n;
	if (s->cursor >= end) {
		free(s->unchecked); /* every page was visited: later scans take over */
		s->unchecked = NULL;
		free(s->lacking_late);
		s->lacking_late = NULL;
		if (s->cur_report)
			s->cur_report->end_s = now_s(s);
		__atomic_store_n(&s->pass_active, false, __ATOMIC_RELEASE);
		if (s->final_pass)
			s->ended = s->final_fed = true;
		eng_tick_due(&s->tick_due, 0); /* what next: a scan, a pass, the stop */
	}
	return (int)n;
}

static uint64_t feed_size(void *ctx, unsigned obj)
{
	struct src *s = ctx;

	return obj == ENG_VM_DISK ? s->disk_size : obj == ENG_VM_MEMORY ? s->layout.image_size : s->dev_len;
}

/* ---- bridge thread: QEMU's migration stream -> mirror + pending ------------------ */

static int on_layout(void *ctx, const struct qb_layout *l)
{
	struct src *s = ctx;

	return eng_vmbase_check_layout(&s->base, l, s->bridge_err, sizeof(s->bridge_err)) ? -1 : 0;
}

static int on_page(void *ctx, uint64_t off, const uint8_t *data)
{
	struct src *s = ctx;
	uint8_t *page = s->mirror + off;

	if (off + CDC_BLOCK_SIZE > s->mirror_len) {
		snprintf(s->bridge_err, sizeof(s->bridge_err), "QEMU sent a page past guest RAM");
		return -1;
	}
	s->qemu_pages++;
	/* only what differs from what we hold needs sending */
	if (data) {
		if (!memcmp(page, data, CDC_BLOCK_SIZE))
			return 0;
		memcpy(page, data, CDC_BLOCK_SIZE);
	} else {
		if (cdc_is_zero(page, CDC_BLOCK_SIZE))
			return 0;
		memset(page, 0, CDC_BLOCK_SIZE);
	}
	__atomic_fetch_or(&s->mirror_written[off / CDC_BLOCK_SIZE / 64], 1ull << (off / CDC_BLOCK_SIZE % 64),
			  __ATOMIC_RELAXED);
	heat_up(s, s->first[ENG_VM_MEMORY] + off / CDC_BLOCK_SIZE);
	mark(s, s->first[ENG_VM_MEMORY] + off / CDC_BLOCK_SIZE);
	return 0;
}

static int on_section_end(void *ctx, unsigned type)
{
	(void)type;
	__atomic_fetch_add(&((struct src *)ctx)->qemu_sections, 1, __ATOMIC_RELAXED);
	return 0;
}

static void *bridge_main(void *arg)
{
	struct src *s = arg;
	struct qb_parse_cb cb = { on_layout, on_page, on_section_end, s };
	char err[200];
	int ok = -1;

	if (qb_parse_stream(s->mig_fd, &cb, &s->layout, &s->devstate, err, sizeof(err))) {
		if (!s->bridge_err[0])
			snprintf(s->bridge_err, sizeof(s->bridge_err), "QEMU migration stream: %s", err);
	} else {
		s->dev_len = qb_devstate_encode(&s->devstate, &s->dev);
		if (!s->dev_len)
			snprintf(s->bridge_err, sizeof(s->bridge_err), "out of memory for device state");
		else if (s->dev_len > ENG_DEVICES_CAPACITY)
			snprintf(s->bridge_err, sizeof(s->bridge_err),
				 "device state of %zu bytes is larger than the %llu the stream allows",
				 s->dev_len, (unsigned long long)ENG_DEVICES_CAPACITY);
		else
			ok = 1;
	}
	__atomic_store_n(&s->bridge_done, ok, __ATOMIC_RELEASE);
	eng_tick_due(&s->tick_due, 0); /* the final pass can start */
	return NULL;
}

/* ---- control tick --------------------------------------------------------------- */

static void progress_line(struct src *s, const struct eng_diff_report *rep, uint64_t pending)
{
	char mode[48];
	static const char *const phase_names[] = { "pre-copy", "stopping", "final" };

	if (!s->a->progress)
		return;
	eng_mode_format(&s->mode_now, mode, sizeof(mode));
	fprintf(stderr, "\r\033[Ksend: %5.1fs pass %u (%s) pending %.1f MB in-flight %.1f MB sent %.1f MB link %.1f Mbit/s mode %s",
		now_s(s), s->passes, phase_names[s->phase], (double)pending * CDC_BLOCK_SIZE / 1e6,
		(double)rep->blocks_in_flight * CDC_BLOCK_SIZE / 1e6, (double)s->wire_bytes / 1e6,
		s->rate_Bps * 8 / 1e6, mode);
	if (s->thr.active && s->thr.fraction > 0)
		fprintf(stderr, " guest throttled %.0f%%", s->thr.fraction * 100);
}

/* ---- guest throttle -------------------------------------------------------------- */

static void throttle_release(struct src *s)
{
	if (s->thr.active && s->thr.fraction > 0)
		s->thr_seconds += now_s(s) - s->thr_since;
	eng_throttle_close(&s->thr);
	eng_guard_throttle(&s->guard, &s->thr);
}

/*
 * The rest did not shrink over a pass: the guest dirties faster than the
 * link drains. Take more of the vCPUs' time: at least 30%, then +20% a step
 * (as QEMU's auto-converge steps its own), or at once what the guest's
 * unslowed dirty rate (the pending bytes gathered since the last pass began)
 * says it needs to dirty at most half of what the link drains; at most 99%.
 * False when it cannot go further (off, unavailable, or at the maximum).
 */
static bool throttle_step(struct src *s, double est, double rate, double ratio, uint64_t pending)
{
	char err[300];

	if (!s->a->throttle || s->phase != PH_PRECOPY)
		return false;
	if (!s->thr_tried) {
		pid_t pid, tids[ENG_THROTTLE_MAX_THREADS];
		unsigned n;
		s->thr_tried = true;
		int opened = qb_vcpu_threads(s->qmp, &pid, tids, ENG_THROTTLE_MAX_THREADS, &n, err, sizeof(err)) ? -1
			     : eng_throttle_open(&s->thr, pid, tids, n, err, sizeof(err));
		eng_guard_throttle(&s->guard, &s->thr); /* the threads may have moved already */
		if (opened) {
			snprintf(s->thr_note, sizeof(s->thr_note), "%s", err);
			fprintf(stderr, "%ssend: warning: the guest dirties faster than the link drains and cannot be slowed (%s)\n",
				s->a->progress ? "\r\033[K" : "", err);
			return false;
		}
	}
	if (!s->thr.active || s->thr.fraction >= 0.99)
		return false;
	/* passes can be a fraction of a second apart: the last step gets a second to show */
	if (s->thr.fraction > 0 && now_s(s) - s->thr_step_s < THROTTLE_STEP_MIN_S)
		return true;
	double next = s->thr.fraction == 0 ? 0.3 : s->thr.fraction + 0.2;
	double span = s->cur_report ? now_s(s) - s->cur_report->start_s : 0;
	double dirty = span > 0.5 ? (double)pending * CDC_BLOCK_SIZE / span / (1 - s->thr.fraction) : 0;
	double drain = rate > 0 && ratio > 0 ? rate / ratio : 0;
	if (dirty > 0 && drain > 0 && 1 - 0.5 * drain / dirty > next)
		next = 1 - 0.5 * drain / dirty;
	if (next > 0.99)
		next = 0.99;
	if (eng_throttle_set(&s->thr, next, err, sizeof(err))) {
		snprintf(s->thr_note, sizeof(s->thr_note), "%s", err);
		throttle_release(s);
		return false;
	}
	eng_guard_throttle(&s->guard, &s->thr);
	s->thr_step_s = now_s(s);
	if (s->thr_steps++ == 0)
		s->thr_since = now_s(s);
	if (next > s->thr_max)
		s->thr_max = next;
	if (s->trace) {
		fprintf(s->trace,
			"{\"t\":%.3f,\"event\":\"throttle\",\"throttle\":%.2f,\"pass\":%u,\"est_s\":%.3f,\"budget_s\":%.3f,"
			"\"dirty_mb_s\":%.3f,\"drain_mb_s\":%.3f}\n",
			now_s(s), next, s->passes, est, s->a->stop_budget_s, dirty / 1e6, drain / 1e6);
		fflush(s->trace);
	}
	return true;
}

/*
 * How much encoded state may wait for the link, in link time: enough to ride
 * out the pipeline's bursts, little enough that a link that drops to a
 * fraction of its rate is not left carrying seconds of it (at 300 -> 5 Mbit/s
 * one second committed costs a minute). Floors keep slow links busy. The
 * commit also counts bytes in flight, so it grows by the path's round trip
 * (its minimum: the smoothed one grows with the queue we fill), or a long
 * path would cap the rate at commit / RTT, and the lower rate the commit.
 */
#define COMMIT_S 0.1         /* pipeline, send queue and socket, beyond one round trip */
#define COMMIT_MIN 1e6
#define COMMIT_AHEAD_S 5.0   /* in a settled mode (mode_settled) */
#define MEASURE_AHEAD_S 1.0  /* in a mode the controller has yet to measure (eng_adapt_measuring) */
#define DRY_S 0.1             /* link time left to send under which the link runs dry */
#define SHARE_MIN (64 << 10)  /* the least room the feed is given a share of (wire bytes) */
#define FLOW_RATIO_MIN 0.1    /* the least wire per fed byte a share and the backlog are priced at */
#define SENDQ_S 0.05         /* our send queue */
#define SENDQ_MIN (256u << 10)
#define SOCKET_UNSENT_S 0.02 /* not yet on the wire in the socket */
#define SOCKET_UNSENT_MIN (128 << 10)

/*
 * Whether the mode is one to encode ahead in: a static mode, or the
 * controller's settled choice (eng_adapt_settled). While it is still
 * deciding (no measured window yet of the start mode or after a switch no
 * trial backed, a trial a switch waits on or a probe under way, a better
 * mode predicted) what is
 * encoded ahead goes in a mode about to be dropped, and a trial waits for it
 * to drain: at 10 Mbit/s, 10 MB went in auto's start mode while the trial of
 * the better one waited 6 s for blocks to try.
 */
static bool mode_settled(const struct src *s)
{
	/*
	 * With the lcores the bottleneck (the transport's queue mostly empty
	 * and the lcores busy over the controller's last window: a queue the
	 * held feed emptied itself is no sign) little waits to be sent, and a
	 * lead only keeps them busy: held to the commit (4 MB at 300 Mbit/s,
	 * with 7 MB in flight in the pipeline), a CPU-bound fast phase left
	 * them idle, and auto sent 5-12 MB less than its own start mode static
	 * before a fall to 5 Mbit/s.
	 */
	return !s->a->adapt || eng_adapt_settled(&s->adapt) || eng_adapt_cpu_bound(&s->adapt);
}

static double commit_bytes(const struct src *s)
{
	double c = s->rate_Bps * (COMMIT_S + s->link.min_rtt_ms / 1e3);

	return c > COMMIT_MIN ? c : COMMIT_MIN;
}

/*
 * What the feed may commit: the commit, or COMMIT_AHEAD_S of link time in a
 * settled mode, MEASURE_AHEAD_S in one the controller has yet to measure
 * (auto's start mode, or one switched to without a trial: eng_adapt_measuring).
 * Held to the commit after such a switch, the feed stood
 * while the old mode's lead drained, and the new mode's window could not
 * come: on `steps`, a switch as the link rose to 50 Mbit/s left the feed
 * standing 2 s and the link idle, and auto took 46.2 s (27.0 and 27.4 in
 * its other runs, the same bytes). Only the feed's hold and share use it:
 * whether the link would idle (a new pass) and whether the rest fits the
 * stop look at the commit alone, or a settled mode started a pass whenever
 * less than 5 s was committed, and sent pages again that would have been
 * merged pending.
 */
static double ahead_bytes(const struct src *s)
{
	double c = commit_bytes(s);
	double lead_s = mode_settled(s) ? COMMIT_AHEAD_S
			: s->a->adapt && eng_adapt_measuring(&s->adapt) ? MEASURE_AHEAD_S
									 : 0;

	return c < s->rate_Bps * lead_s ? s->rate_Bps * lead_s : c;
}

static void limit_queues(struct src *s)
{
	if (s->sq) {
		double cap = s->rate_Bps * SENDQ_S;
		eng_sendq_set_cap(s->sq, cap > SENDQ_MIN ? (size_t)cap : SENDQ_MIN);
	}
	double unsent = s->rate_Bps * SOCKET_UNSENT_S;
	int lim = unsent > SOCKET_UNSENT_MIN ? (int)(unsent < (1 << 30) ? unsent : (1 << 30)) : SOCKET_UNSENT_MIN;
	/* only on a real change: one setsockopt per step of ~25% */
	if (!s->unsent_limit || lim > s->unsent_limit * 1.25 || lim < s->unsent_limit * 0.75) {
		eng_conn_set_unsent_limit(s->conn, lim);
		s->unsent_limit = lim;
	}
}

/*
 * Wire bytes per fed byte of the blocks the pipeline finished, for what is
 * in flight and what may be fed: early in a pass the wire lags what was fed
 * (the monitor's ratio then reads near 0, and a share computed with it let
 * 25 MB in at once), so until enough blocks are through, at least `fallback`
 * or one half.
 */
static double flow_ratio(const struct eng_diff_report *rep, double fallback)
{
	const struct eng_stage_report *seal = &rep->stages[ENG_STAGE_SEAL];

	if (seal->blocks >= 256) { /* a start rich in zeros and duplicates must not price the rest at nothing */
		double r = (double)seal->bytes_out / ((double)seal->blocks * CDC_BLOCK_SIZE);
		return r > FLOW_RATIO_MIN ? r : FLOW_RATIO_MIN;
	}
	return fallback > 0.5 ? fallback : 0.5;
}

/* Bytes that will reach the wire before anything the feed hands over now. */
static double backlog_bytes(struct src *s, const struct eng_diff_report *rep, double ratio)
{
	double b = (double)rep->blocks_in_flight * CDC_BLOCK_SIZE * ratio;

	if (s->sq)
		b += (double)eng_sendq_queued(s->sq);
	if (s->conn)
		b += (double)s->link.queued;
	return b;
}


/*
 * The feed's share until the next tick: room bytes of wire at ratio
 * (pre-copy over a link), or all. Less room than SHARE_MIN is no share: a
 * block at a time, each asking for the next tick, made one-block segments
 * and a tick every 2 ms; the tick comes back once that much has drained.
 */
static void set_feed_budget(struct src *s, double room, double ratio)
{
	int64_t blocks = INT64_MAX;

	if (s->conn && s->phase == PH_PRECOPY) {
		blocks = room >= SHARE_MIN ? (int64_t)(room / ratio / CDC_BLOCK_SIZE) + 1 : 0;
		if (!blocks && s->rate_Bps > 0)
			eng_tick_due(&s->tick_due, eng_mono_s() + (SHARE_MIN - (room > 0 ? room : 0)) / s->rate_Bps);
	}
	__atomic_store_n(&s->feed_budget, blocks, __ATOMIC_RELEASE);
}

/*
 * A trial under way needs new blocks, and a held feed gives it none: at
 * 10 Mbit/s the controller's first trial waited 2 s for the backlog to
 * drain, in the start mode. It gets a share of its own, up to four times
 * what it needs (fed blocks that match the base or repeat others are no
 * use to it: 2x ran out before a trial's 256 new blocks came).
 */
#define TRIAL_FEED_MAX (4 * ENG_TRIAL_BLOCKS)
static void trial_share(struct src *s)
{
	if (!s->a->adapt || !s->adapt.asked || s->phase != PH_PRECOPY ||
	    s->fed_blocks - s->trial_fed_from >= TRIAL_FEED_MAX)
		return;
	if (__atomic_load_n(&s->feed_budget, __ATOMIC_ACQUIRE) < ENG_TRIAL_BLOCKS / 4)
		__atomic_store_n(&s->feed_budget, (int64_t)ENG_TRIAL_BLOCKS / 4, __ATOMIC_RELEASE);
}

static void begin_final(struct src *s)
{
	s->qemu_done_s = now_s(s);
	throttle_release(s); /* the VM is stopped: nothing left to slow */
	s->scanning = false; /* a scan between passes may have been under way: all of it, now */
	s->scan_at = 0;
	/* QEMU stopped the VM: RAM is frozen (QEMU sent none of the shared block) */
	if (s->shared && s->conn) {
		scan_shared_ram(s, 0);
		s->final_scan_s = now_s(s) - s->qemu_done_s;
	}
	/* QEMU flushed the disk when it stopped the VM: this map is the last */
	if (mark_dirty_disk(s))
		return;
	for (uint64_t b = 0; b < (s->dev_len + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE; b++)
		mark(s, s->first[ENG_VM_DEVICES] + b);
	s->final_pass = true;
	s->phase = PH_FINAL;
	set_feed_budget(s, 0, 0); /* the VM is stopped: all of it, now */
	start_pass(s);
}

static void note_mode_used(struct src *s)
{
	for (unsigned i = 0; i < s->nmodes_used; i++)
		if (!memcmp(&s->modes_used[i], &s->mode_now, sizeof(s->mode_now)))
			return;
	if (s->nmodes_used < sizeof(s->modes_used) / sizeof(s->modes_used[0]))
		s->modes_used[s->nmodes_used++] = s->mode_now;
}

static void tick(void *ctx, struct eng_pipeline *p)
{
	struct src *s = ctx;
	struct eng_diff_report rep;
	char err[200];
	/* a tick asked early (eng_tick_due) acts on passes and queues; the controller and
	 * the progress line keep their windows of about tick_ms */
	double t = now_s(s);
	bool full = t - s->full_tick_s >= FULL_TICK_S;

	if (full)
		s->full_tick_s = t;
	/* a gap longer than a tick is no hold (the pipeline stopped: a cut, a new stream) */
	if (s->hold && s->phase == PH_PRECOPY && t - s->last_tick_s < 0.2)
		s->held_s += t - s->last_tick_s;
	s->last_tick_s = t;
	double link_now = 0;

	eng_pipeline_report(p, &rep);
	s->wire_bytes = s->wire_prev + rep.wire_bytes;
	if (!s->t_first_state)
		s->t_first_state = rep.first_data_s;
	if (!s->t_pipeline)
		s->t_pipeline = rep.started_s;
	if (s->conn) {
		eng_conn_sample(s->conn, &s->link);
		if (s->acked_conn != s->conn || !s->link.queued || s->link.acked != s->acked_seen) {
			s->acked_conn = s->conn;
			s->acked_seen = s->link.acked;
			s->acked_at = now_s(s);
		}
		if (s->link_fall_conn != s->conn) { /* a new connection: its own figures */
			s->link_fall_conn = s->conn;
			memset(&s->link_fall, 0, sizeof(s->link_fall));
		}
		struct eng_link waiting = s->link; /* what waits in our send queue waits for the link too */
		if (s->sq)
			waiting.unsent += eng_sendq_queued(s->sq);
		link_now = eng_link_rate_bps(&s->link_fall, &waiting, now_s(s));
		if (link_now > 0)
			s->rate_Bps = link_now / 8;
	}
	if (s->a->adapt && full) {
		struct eng_adapt_sample smp;
		struct eng_mode next, cand[ENG_TRIAL_MAX];
		struct eng_trial trial;
		double free_lc = eng_cpu_free(&s->cpu);
		free_lc = eng_cpu_share(free_lc, s->cpu.ncpu, rep.lcores);
		eng_adapt_fill(&smp, now_s(s), &rep, s->conn ? &s->link : NULL, free_lc);
		if (link_now > 0) { /* with a fall taken at once (eng_link_rate_bps) */
			smp.link_bps = link_now;
			smp.link_fell = s->link_fall.fallen;
		}
		smp.guest_throttle = s->thr.active ? s->thr.fraction : 0;
		if (s->sq) /* what waits in our send queue waits for the link too */
			smp.unsent += eng_sendq_queued(s->sq);
		if (eng_pipeline_trial_done(p, &trial))
			eng_adapt_trial(&s->adapt, &trial, now_s(s));
		if (eng_adapt_tick(&s->adapt, &smp, &next)) {
			eng_pipeline_set_mode(p, &next);
			s->mode_now = next;
			note_mode_used(s);
		}
		unsigned ncand = eng_adapt_trial_wanted(&s->adapt, cand);
		if (ncand)
			s->trial_fed_from = s->fed_blocks;
		if (ncand && !eng_pipeline_trial(p, cand, ncand)) {
			/* an earlier, lapsed trial still runs: this one tells nothing */
			struct eng_trial none = { .cur = s->mode_now, .ncand = ncand };
			memcpy(none.cand, cand, sizeof(cand));
			eng_adapt_trial(&s->adapt, &none, now_s(s));
		}
	}
	/* what the wire carries per byte fed: dedup and compression together */
	s->cur_raw = s->raw_prev + rep.stages[ENG_STAGE_INGEST].bytes_in;
	s->cur_wire = s->sealed_prev + rep.stages[ENG_STAGE_SEAL].bytes_out;
	double ratio = s->fed_blocks > 1000
			       ? (double)s->wire_bytes / ((double)s->fed_blocks * CDC_BLOCK_SIZE)
			       : 0.5;
	if (s->pass_ratio > ratio)
		ratio = s->pass_ratio;
	s->est_ratio = ratio;
	uint64_t pending = __atomic_load_n(&s->pending_count, __ATOMIC_RELAXED);
	double flow = flow_ratio(&rep, ratio);
	double backlog = backlog_bytes(s, &rep, flow);
	/* keep little link time committed: the rest stays pending, where a page
	 * dirtied again replaces its older version for free, and what is
	 * committed when the link slows down must cross at the new rate */
	double commit = commit_bytes(s), ahead = ahead_bytes(s);
	if (s->conn && s->rate_Bps > 0) {
		s->hold = s->phase == PH_PRECOPY && backlog > ahead;
		limit_queues(s);
		if (s->hold) { /* looked at again once the excess should have drained (fast link: ms) */
			double wait = (backlog - ahead) / s->rate_Bps;
			eng_tick_due(&s->tick_due, eng_mono_s() + (wait < 0.1 ? wait : 0.1));
		}
	}
	set_feed_budget(s, ahead - backlog, flow);
	trial_share(s);
	if (s->conn) {
		double to_go = (double)s->link.unsent + (s->sq ? (double)eng_sendq_queued(s->sq) : 0);
		__atomic_store_n(&s->link_dry, to_go <= s->rate_Bps * DRY_S, __ATOMIC_RELEASE);
	}
	/* the destination only speaks before the trailer to say it failed */
	if (s->conn && !s->fail[0]) {
		enum eng_msg_type type;
		char text[ENG_MSG_TEXT_MAX + 1];
		if (!s->have_ctl && s->stream.header_len)
			s->have_ctl = eng_control_init(&s->ctl, s->conn, &s->stream, s->a->key, 1) == 0;
		int r = s->have_ctl ? eng_control_recv(&s->ctl, full ? 0.001 : 0, &type, text, sizeof(text)) : -ETIMEDOUT;
		if (r == 0 && type != ENG_MSG_ALIVE) /* ALIVE: it read the trailer and is loading */
			src_fail(s, "destination %s: %s", type == ENG_MSG_FAILED ? "failed" : "spoke out of turn",
				 type == ENG_MSG_FAILED ? text : eng_msg_name(type));
		else if (r != -ETIMEDOUT || eng_conn_error(s->conn)) {
			/* a transport that gave up on a silent peer answers -ETIMEDOUT too: with nothing
			 * queued to send (pre-copy holding back), this is where a stalled link shows */
			const char *why = r == -EBADMSG ? NULL : eng_conn_error(s->conn);
			if (why) /* the transport's own words name the link */
				src_fail(s, "%s", why);
			else
				src_fail(s, "connection to the destination lost: %s",
					 r == -EPIPE ? "closed by the destination (wrong key?)" : strerror(-r));
			s->link_lost = r != -EBADMSG;
		} else if (s->link.queued && now_s(s) - s->acked_at > ENG_CONTROL_SILENCE_S) {
			/* its kernel may still answer (a hung receiver, a relay that lost its other
			 * side), but nothing is acknowledged while bytes wait; with pre-copy holding
			 * back, no send is in progress for the transport's own idle limit to see */
			src_fail(s, "connection to the destination lost: nothing acknowledged for %.0f s with %llu bytes "
				    "waiting (the destination stopped reading)",
				 ENG_CONTROL_SILENCE_S, (unsigned long long)s->link.queued);
			s->link_lost = true;
		}
		if (s->fail[0])
			s->ended = true;
	}
	int qerr = s->sq ? eng_sendq_error(s->sq) : 0;
	if (qerr) {
		if (!s->fail[0]) /* not a FAILED from the destination, which stays fatal */
			s->link_lost = true;
		src_fail(s, "connection to the destination lost: %s", strerror(-qerr));
		s->ended = true;
	}
	/* no trailer after a cut: the destination must not verify a stream cut short */
	if (s->link_lost)
		eng_pipeline_abort(p, s->fail);
	int bridge = __atomic_load_n(&s->bridge_done, __ATOMIC_ACQUIRE);
	if (bridge < 0) {
		src_fail(s, "%s", s->bridge_err);
		s->ended = true;
	}
	if (full)
		progress_line(s, &rep, pending);
	if (s->fail[0] || __atomic_load_n(&s->pass_active, __ATOMIC_ACQUIRE))
		return;
	switch (s->phase) {
	case PH_PRECOPY:
		if (bridge > 0) { /* QEMU finished on its own (a suspended VM) */
			begin_final(s);
			break;
		}
		/* between passes: what changed since; a scan reads all RAM, so scans take at most
		 * REFRESH_SHARE of the time (once a second at most, before: on a fast link the
		 * rest waited 0.4 s after a 0.6 s first pass for a 0.05 s scan) */
		double refresh_at = s->last_refresh_s + s->refresh_cost_s / REFRESH_SHARE;
		if (s->scanning || now_s(s) >= refresh_at || s->passes == 0) {
			double t0 = now_s(s);
			if (!s->scanning)
				s->scan_spent_s = 0;
			s->scanning = s->shared && !scan_shared_ram(s, SCAN_SLICE_S);
			s->scan_spent_s += now_s(s) - t0;
			if (s->scanning) { /* the rest in the next ticks, the stages polled in between */
				eng_tick_due(&s->tick_due, eng_mono_s());
				return;
			}
			t0 = now_s(s);
			if (mark_dirty_disk(s)) {
				s->ended = true;
				return;
			}
			s->refresh_cost_s = s->scan_spent_s + (now_s(s) - t0);
			/* as if it had run in one go: the next one REFRESH_SHARE of the time later */
			s->last_refresh_s = now_s(s) - s->refresh_cost_s;
			pending = __atomic_load_n(&s->pending_count, __ATOMIC_RELAXED);
		} else if (s->passes) {
			eng_tick_due(&s->tick_due, eng_mono_s() + (refresh_at - now_s(s)));
			return;
		}
		/* before the link has carried enough to measure, assume a slow one */
		double rate = s->conn ? (s->rate_Bps > 125000 ? s->rate_Bps : 125000) : 0;
		double est = rate > 0 ? ((double)pending * CDC_BLOCK_SIZE * ratio + backlog) / rate : 0;
		/* a workload that dirties faster than the link drains never gets
		 * there: stop when three passes in a row did not shrink the rest */
		bool stuck = false;
		if (s->passes > s->est_pass) {
			s->est_pass = s->passes;
			s->stalled = est >= 0.9 * s->best_est && s->passes > 1 ? s->stalled + 1 : 0;
			if (est < s->best_est || s->passes == 1)
				s->best_est = est;
			stuck = s->stalled >= 3;
			/* slow the guest before giving up on the budget */
			if (s->stalled >= 1 && est > s->a->stop_budget_s && throttle_step(s, est, rate, ratio, pending)) {
				s->stalled = 0;
				stuck = false;
			}
		}
		/* bytes already on the wire arrive whatever the link does next */
		double on_wire = s->link.queued > s->link.unsent ? (double)(s->link.queued - s->link.unsent) : 0;
		bool fits = s->conn && rate > 0 && est <= s->a->stop_budget_s &&
			    (est * rate - on_wire <= ENG_STOP_BYTES || s->stalled >= 1);
		if (s->passes >= 1 && (!s->conn || fits || stuck)) {
			s->over_budget = s->conn && !fits;
			if (s->over_budget)
				fprintf(stderr, "%ssend: warning: the rest does not shrink (about %.1f s of link time, budget %.1f s%s): stopping the VM anyway\n",
					s->a->progress ? "\r\033[K" : "", est, s->a->stop_budget_s,
					s->thr.active ? ", guest throttled to the maximum" : "");
			/*
			 * QEMU stops the VM as its migration completes (so the VM's run
			 * state says "running" and the destination starts it) and sends
			 * the devices; RAM is read from the shared backend after that.
			 */
			s->stop_decided_s = now_s(s);
			if (s->shared ? qemu_migrate(s, 300000, err, sizeof(err))
				      : qb_migrate_set_downtime(s->qmp, 300000, err, sizeof(err))) {
				src_fail(s, "cannot let QEMU finish: %s", err);
				s->ended = true;
				return;
			}
			s->stop_requested_s = now_s(s);
			s->phase = PH_STOPPING;
			set_feed_budget(s, 0, 0); /* the stop is decided: the rest goes at once */
		} else if (s->passes == 0 || walkable_blocks(s, pending) * CDC_BLOCK_SIZE >= ENG_ITERATE_BYTES || fits ||
			   /* the link would idle: send what changed rather than wait for 10 MB that a
			    * quiet (or slowed) guest may never write. With only withheld blocks
			    * pending the pass is short, and it counts towards "stuck": a rest
			    * that does not fit still ends in a stop. */
			   (pending && backlog < commit)) {
			start_pass(s);
		}
		break;
	case PH_STOPPING:
		if (bridge > 0)
			begin_final(s);
		else if (now_s(s) - s->stop_requested_s > 120) {
			src_fail(s, "QEMU did not finish the migration within 120 s of being let stop");
			s->ended = true;
		}
		break;
	case PH_FINAL:
		break;
	}
	if (s->fail[0])
		s->ended = true;
}

/* ---- set-up and the end --------------------------------------------------------- */

/*
 * The destination reads what it gets at once (its writes are asynchronous):
 * a send that moves no byte for 15 s (not the transport's 60) means it is
 * gone, even behind something that keeps the connection open. Before the
 * stop that is a cut the handoff survives; after it, downtime.
 */
static void impatient(struct eng_conn *c)
{
	if (eng_conn_set_idle_limit(c, ENG_CONTROL_SILENCE_S))
		fprintf(stderr, "send: warning: cannot shorten the link's idle limit\n");
}

static int conn_send_cb(void *ctx, const void *buf, size_t len)
{
	return eng_conn_send(ctx, buf, len);
}

/*
 * The destination holds an edge cache of cache_chunk-byte chunks: tell it the
 * base's chunk recipe and learn which chunks it holds (session.h). Every
 * block it lacks is sent, whether or not the VM changed it.
 */
static int plan_for_cache(struct src *s, uint32_t cache_chunk, char *err, size_t errlen)
{
	/* the RAM blocks too: the receiver fills its QEMU's shared RAM in place by them */
	struct eng_base_plan plan = { .aead = s->a->aead, .nobj = ENG_VM_OBJECTS, .chunk_size = cache_chunk,
				      .ram = s->base.layout };
	uint8_t *chunk_have[ENG_VM_OBJECTS] = { 0 };
	double t0 = eng_mono_s();
	int ret = -ENOMEM;

	if (cache_chunk < EDG_CHUNK_MIN || cache_chunk > EDG_CHUNK_MAX || cache_chunk % CDC_BLOCK_SIZE) {
		snprintf(err, errlen, "the destination's cache has %u-byte chunks: not a size this engine cuts",
			 cache_chunk);
		return -EPROTO;
	}
	if (!s->lacking_late && !(s->lacking_late = calloc(s->total / 64 + 1, sizeof(uint64_t))))
		goto nomem;
	for (int o = 0; o < ENG_VM_OBJECTS; o++) {
		struct eng_plan_object *po = &plan.obj[o];
		po->size = trk_index_size(s->base.index[o]);
		po->chunks = (po->size + cache_chunk - 1) / cache_chunk;
		if (po->chunks > ENG_PLAN_MAX_CHUNKS) {
			snprintf(err, errlen, "the base's %s has %llu chunks of %u bytes, more than a plan carries (%llu): "
				 "give the destination's cache larger chunks", eng_vm_object_names[o],
				 (unsigned long long)po->chunks, cache_chunk, (unsigned long long)ENG_PLAN_MAX_CHUNKS);
			ret = -EFBIG;
			goto out;
		}
		memcpy(po->id, trk_index_id(s->base.index[o]), CDC_DIGEST_LEN);
		if (!(po->digests = malloc(po->chunks ? po->chunks * CDC_DIGEST_LEN : 1)) ||
		    !(chunk_have[o] = calloc(1, po->chunks / 8 + 1)) ||
		    !(s->base_have[o] = calloc(1, s->count[o] / 8 + 1)))
			goto nomem;
		eng_vmbase_chunk_digests(&s->base, (unsigned)o, cache_chunk, po->digests, po->chunks);
	}
	/* the destination fills what it holds before it answers: give it time in proportion */
	double wait_s = 300 + (double)(plan.obj[0].size + plan.obj[1].size + plan.obj[2].size) / 20e6;
	if ((ret = eng_base_plan_send(s->conn, s->session, s->a->key, &plan, err, errlen)) ||
	    (ret = eng_base_have_recv(s->conn, s->session, s->a->key, wait_s, &plan, chunk_have, err, errlen)))
		goto out;
	/* the blocks it lacks go in the first pass (device state: in the final one, with the rest of it) */
	for (int o = 0; o < ENG_VM_OBJECTS; o++)
		for (uint64_t b = 0; b < s->count[o]; b++) {
			uint64_t c = b * CDC_BLOCK_SIZE / cache_chunk;
			if (c < plan.obj[o].chunks && chunk_have[o][c / 8] >> (c % 8) & 1) {
				s->base_have[o][b / 8] |= (uint8_t)(1u << (b % 8));
				continue;
			}
			if (b * CDC_BLOCK_SIZE < plan.obj[o].size)
				s->lacking[o]++;
			if (o != ENG_VM_DEVICES) {
				mark(s, s->first[o] + b);
				s->lacking_late[(s->first[o] + b) >> 6] |= 1ull << ((s->first[o] + b) & 63);
			}
		}
	s->plan_s = eng_mono_s() - t0;
	s->planned = true;
	ret = 0;
	goto out;
nomem:
	snprintf(err, errlen, "out of memory for the base plan");
out:
	for (int o = 0; o < ENG_VM_OBJECTS; o++)
		free(chunk_have[o]);
	eng_base_plan_free(&plan);
	return ret;
}

static int open_transport(struct src *s, char *err, size_t errlen)
{
	const char *path;

	if (eng_conn_is_remote(s->a->to)) {
		struct eng_conn_bind b = { .key = s->a->key };
		eng_vmbase_id(&s->base, b.base_id);
		s->conn = eng_conn_connect(s->a->to, &b, s->a->connect_timeout_s, err, errlen);
		if (!s->conn)
			return -ECONNREFUSED;
		uint32_t cache_chunk = 0;
		impatient(s->conn);
		int r = eng_session_take(s->conn, s->session, &cache_chunk, ENG_SESSION_WAIT_S, err, errlen);
		if (!r && cache_chunk)
			r = plan_for_cache(s, cache_chunk, err, errlen);
		if (r)
			return r;
		s->sq = eng_sendq_new(1 << 20, conn_send_cb, s->conn);
		return s->sq ? 0 : -ENOMEM;
	}
	if (eng_parse_location(s->a->to, &path, err, errlen))
		return -EINVAL;
	if (eng_outfile_create(&s->out, path, 0644, err, errlen))
		return -EIO;
	s->out_fd.fd = s->out.fd;
	return 0;
}

/* Source VM back to how it was: the handoff failed before the commit. */
static void restore_source(struct src *s)
{
	char err[200], status[64];

	if (!s->qmp)
		return;
	if (s->qemu_migrating) {
		char mstatus[64];
		if (qb_migrate_status(s->qmp, mstatus, sizeof(mstatus), err, sizeof(err)) == 0 &&
		    strcmp(mstatus, "completed"))
			qb_qmp_run(s->qmp, "migrate_cancel", NULL, 10, err, sizeof(err));
	}
	if (s->was_running && qb_qmp_running(s->qmp, status, sizeof(status), err, sizeof(err)) == 0) {
		if (qb_qmp_run(s->qmp, "cont", NULL, 10, err, sizeof(err)))
			fprintf(stderr, "send: warning: could not resume the source VM: %s\n", err);
	}
}

static int check_source(struct src *s, char *err, size_t errlen)
{
	char status[64];
	int run = qb_qmp_running(s->qmp, status, sizeof(status), err, errlen);

	if (run < 0)
		return -EIO;
	if (strcmp(status, "running") && strcmp(status, "paused")) {
		snprintf(err, errlen, "the source VM is in state '%s'; it must be running or paused", status);
		return -EINVAL;
	}
	s->was_running = run == 1;
	return 0;
}

/* QEMU migrates into a socketpair read by the bridge thread. */
static int qemu_migrate(struct src *s, uint64_t downtime_ms, char *err, size_t errlen)
{
	int sv[2];

	if (qb_migrate_prepare(s->qmp, downtime_ms, err, errlen))
		return -EIO;
	/* live with shared RAM: the engine already holds the stopped VM's RAM,
	 * QEMU need only send the devices (and small ROM blocks) */
	if (s->shared && s->conn && qb_migrate_ignore_shared(s->qmp, err, errlen))
		return -EIO;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
		snprintf(err, errlen, "socketpair: %s", strerror(errno));
		return -errno;
	}
	s->mig_fd = sv[0];
	int ret = qb_migrate_to_fd(s->qmp, sv[1], "handoff", err, errlen);
	close(sv[1]);
	if (ret)
		return -EIO;
	s->qemu_migrating = true;
	if (pthread_create(&s->bridge, NULL, bridge_main, s)) {
		snprintf(err, errlen, "cannot start the bridge thread");
		return -ENOMEM;
	}
	s->bridge_started = true;
	return 0;
}

/* The RAM block on a shared memory backend (memory-backend-file,share=on), if any. */
static int map_shared_ram(struct src *s, char *err, size_t errlen)
{
	char id[256], path[4096];
	int ret = qb_find_shared_ram(s->qmp, id, sizeof(id), path, sizeof(path), err, errlen);

	if (ret == -ENOENT)
		return 0;
	if (ret)
		return ret;
	const struct qb_ram_block *blk = NULL;
	for (unsigned b = 0; b < s->base.layout.nblocks; b++)
		if (!strcmp(s->base.layout.blocks[b].id, id))
			blk = &s->base.layout.blocks[b];
	if (!blk)
		return 0; /* not a RAM block of the base: no use */
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open the VM's RAM %.300s: %s", path, strerror(errno));
		return -errno;
	}
	void *m = mmap(NULL, blk->length, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		snprintf(err, errlen, "cannot map the VM's RAM %.300s: %s", path, strerror(errno));
		close(fd);
		return -ENOMEM;
	}
	s->shared_fd = fd;
	s->shared = m;
	s->shared_len = blk->length;
	s->shared_off = blk->image_off;
	return 0;
}

static int setup(struct src *s, char *err, size_t errlen)
{
	struct stat st;

	if (eng_vmbase_open(&s->base, s->a->base_dir, err, errlen))
		return -EIO;
	s->mode_now = s->a->mode;
	note_mode_used(s);
	if (s->a->trace_path) {
		if (eng_outfile_create(&s->trace_out, s->a->trace_path, 0644, err, errlen))
			return -EIO;
		/* the FILE writes through a descriptor of its own: the end closes it, then commits */
		int fd = dup(s->trace_out.fd);
		if (fd < 0 || !(s->trace = fdopen(fd, "w"))) {
			snprintf(err, errlen, "cannot create trace %s: %s", s->a->trace_path, strerror(errno));
			if (fd >= 0)
				close(fd);
			eng_outfile_abort(&s->trace_out);
			return -EIO;
		}
	}
	if (s->a->adapt)
		eng_adapt_init(&s->adapt, eng_mode_table, eng_mode_table_len, &s->a->mode, s->trace);
	s->disk_fd = open(s->a->disk_path, O_RDONLY | O_CLOEXEC);
	if (s->disk_fd < 0 || fstat(s->disk_fd, &st)) {
		snprintf(err, errlen, "cannot open tracked disk %s: %s", s->a->disk_path, strerror(errno));
		return -errno;
	}
	s->disk_size = (uint64_t)st.st_size;
	/* the image behind the tracker, read directly: a trip through FUSE per block cost ~10 us */
	char ierr[256];
	int ifd = trk_image_open(s->a->disk_path, ierr, sizeof(ierr));
	s->read_fd = ifd >= 0 ? ifd : s->disk_fd;
	if (ifd < 0)
		fprintf(stderr, "send: note: reading the disk through the tracker mount (%s)\n", ierr);
	if (s->disk_size != trk_index_size(s->base.index[ENG_VM_DISK])) {
		snprintf(err, errlen, "disk %s is %llu bytes, its base %s is %llu: not a disk of this base",
			 s->a->disk_path, (unsigned long long)s->disk_size, s->base.path[ENG_VM_DISK],
			 (unsigned long long)trk_index_size(s->base.index[ENG_VM_DISK]));
		return -EINVAL;
	}
	/* the source checks what it can before touching the VM */
	struct trk_dirty_map probe;
	if (trk_dirty_fetch(s->a->disk_path, &probe, err, errlen))
		return -EINVAL;
	/* put back what the probe took: those blocks still need sending */
	s->count[ENG_VM_DISK] = (s->disk_size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
	s->count[ENG_VM_MEMORY] = trk_index_blocks(s->base.index[ENG_VM_MEMORY]);
	s->count[ENG_VM_DEVICES] = ENG_DEVICES_CAPACITY / CDC_BLOCK_SIZE;
	s->first[ENG_VM_MEMORY] = s->count[ENG_VM_DISK];
	s->first[ENG_VM_DEVICES] = s->first[ENG_VM_MEMORY] + s->count[ENG_VM_MEMORY];
	s->total = s->first[ENG_VM_DEVICES] + s->count[ENG_VM_DEVICES];
	s->pending = calloc((s->total + 63) / 64, sizeof(uint64_t));
	s->sent = calloc((s->total + 63) / 64, sizeof(uint64_t));
	s->heat = calloc(s->total ? s->total : 1, 1);
	s->pass_bucket = calloc(s->total ? s->total : 1, 1);
	if (!s->pending || !s->sent || !s->heat || !s->pass_bucket) {
		trk_dirty_map_free(&probe);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (uint64_t b = 0, k = 0; b < probe.nblocks && b < s->count[ENG_VM_DISK]; b++)
		if (trk_dirty_test(&probe, b)) {
			uint16_t w = probe.writes ? probe.writes[k++] : 1;
			s->heat[b] = (uint8_t)(w > 255 ? 255 : w);
			mark(s, b);
		}
	trk_dirty_map_free(&probe);
	/* the mirror starts as the base RAM: the VM was started from it */
	s->mirror_len = (size_t)s->count[ENG_VM_MEMORY] * CDC_BLOCK_SIZE;
	s->mirror = mmap(NULL, s->mirror_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	s->mirror_written = calloc((s->count[ENG_VM_MEMORY] + 63) / 64 + 1, sizeof(uint64_t));
	if (s->mirror == MAP_FAILED || !s->mirror_written) {
		if (s->mirror != MAP_FAILED)
			munmap(s->mirror, s->mirror_len);
		s->mirror = NULL;
		snprintf(err, errlen, "cannot allocate the RAM mirror: %s", strerror(errno));
		return -ENOMEM;
	}
	/* the base RAM copy-on-write from mem.img: copying 256 MiB (and faulting
	 * in every page) was most of the set-up; only pages that change get copied */
	uint64_t mem_size = trk_index_size(s->base.index[ENG_VM_MEMORY]);
	size_t page = (size_t)sysconf(_SC_PAGESIZE), span = ((size_t)mem_size + page - 1) / page * page;
	int mfd = open(s->base.path[ENG_VM_MEMORY], O_RDONLY | O_CLOEXEC);
	bool cow = mfd >= 0 && span <= s->mirror_len;
	if (!cow || mmap(s->mirror, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, mfd, 0) == MAP_FAILED) {
		/* a failed MAP_FIXED may have unmapped the range already: fresh pages, then the copy */
		if (cow && mmap(s->mirror, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
				0) == MAP_FAILED) {
			snprintf(err, errlen, "cannot allocate the RAM mirror: %s", strerror(errno));
			if (mfd >= 0)
				close(mfd);
			return -ENOMEM;
		}
		memcpy(s->mirror, s->base.map[ENG_VM_MEMORY], mem_size);
	}
	s->base_ram_fd = mfd; /* the mirror's pages as they started, for the first sweep */
	s->qmp = qb_qmp_connect(s->a->qmp_path, 10, err, errlen);
	if (!s->qmp || check_source(s, err, errlen))
		return -EIO;
	return map_shared_ram(s, err, errlen);
}

static json_object *summary_json(struct src *s, const struct eng_diff_report *rep, double total_s,
				 double downtime_s)
{
	json_object *o = json_object_new_object(), *its = json_object_new_array();
	char mode[48];

	eng_mode_format(&s->mode_now, mode, sizeof(mode));
	json_object_object_add(o, "command", json_object_new_string("send"));
	json_object_object_add(o, "to", json_object_new_string(s->a->to));
	json_object_object_add(o, "ok", json_object_new_boolean(!s->fail[0]));
	if (s->fail[0])
		json_object_object_add(o, "error", json_object_new_string(s->fail));
	json_object_object_add(o, "total_s", json_object_new_double(total_s));
	json_object_object_add(o, "downtime_s", json_object_new_double(downtime_s));
	json_object_object_add(o, "wire_bytes", json_object_new_int64((int64_t)s->wire_bytes));
	json_object_object_add(o, "state_bytes", json_object_new_int64((int64_t)rep->target_size));
	json_object_object_add(o, "disk_reads", json_object_new_string(s->read_fd != s->disk_fd ? "image" : "mount"));
	json_object_object_add(o, "blocks_fed", json_object_new_int64((int64_t)s->fed_blocks));
	json_object_object_add(o, "qemu_pages", json_object_new_int64((int64_t)s->qemu_pages));
	json_object_object_add(o, "mode", json_object_new_string(mode)); /* the last one */
	json_object_object_add(o, "adaptive", json_object_new_boolean(s->a->adapt));
	json_object_object_add(o, "mode_switches", json_object_new_int((int)s->adapt.switches));
	json_object_object_add(o, "mode_trials", json_object_new_int((int)s->adapt.trials));
	json_object *used = json_object_new_array();
	for (unsigned i = 0; i < s->nmodes_used; i++) {
		char m[48];
		eng_mode_format(&s->modes_used[i], m, sizeof(m));
		json_object_array_add(used, json_object_new_string(m));
	}
	json_object_object_add(o, "modes_used", used);
	json_object_object_add(o, "lcores", json_object_new_int((int)rep->lcores));
	json_object_object_add(o, "link_mbit", json_object_new_double(s->rate_Bps * 8 / 1e6));
	json_object_object_add(o, "stop_budget_s", json_object_new_double(s->a->stop_budget_s));
	json_object_object_add(o, "stopped_over_budget", json_object_new_boolean(s->over_budget));
	json_object_object_add(o, "feed_held_s", json_object_new_double(s->held_s));
	json_object *th = json_object_new_object();
	json_object_object_add(th, "enabled", json_object_new_boolean(s->a->throttle));
	json_object_object_add(th, "used", json_object_new_boolean(s->thr_steps > 0));
	json_object_object_add(th, "cgroup", s->thr_tried && !s->thr_note[0]
						     ? json_object_new_int(s->thr.version) : NULL);
	json_object_object_add(th, "steps", json_object_new_int((int)s->thr_steps));
	json_object_object_add(th, "max_fraction", json_object_new_double(s->thr_max));
	json_object_object_add(th, "throttled_s", json_object_new_double(s->thr_seconds));
	if (s->thr_note[0])
		json_object_object_add(th, "unavailable", json_object_new_string(s->thr_note));
	json_object_object_add(o, "guest_throttle", th);
	if (s->conn) {
		json_object *l = eng_conn_stats_json(s->conn);
		json_object_object_add(o, "transport", json_object_new_string(eng_conn_transport(s->conn)));
		if (l)
			json_object_object_add(o, "link", l);
	}
	for (struct pass_report *p = s->reports; p; p = p->next) {
		json_object *it = json_object_new_object();
		json_object_object_add(it, "pass", json_object_new_int((int)p->pass));
		json_object_object_add(it, "start_s", json_object_new_double(p->start_s));
		json_object_object_add(it, "end_s", json_object_new_double(p->end_s));
		json_object_object_add(it, "pending_blocks", json_object_new_int64((int64_t)p->pending_at_start));
		json_object_object_add(it, "blocks", json_object_new_int64((int64_t)p->blocks));
		json_object_object_add(it, "resent_blocks", json_object_new_int64((int64_t)p->resent));
		json_object_object_add(it, "resent_disk_blocks", json_object_new_int64((int64_t)p->resent_disk));
		if (s->planned)
			json_object_object_add(it, "resent_lacking_blocks", json_object_new_int64((int64_t)p->resent_lacking));
		json_object_array_add(its, it);
	}
	json_object_object_add(o, "iterations", its);
	json_object_object_add(o, "order", json_object_new_string(s->a->order_random ? "random" : "dirty"));
	json_object_object_add(o, "resent_bytes", json_object_new_int64((int64_t)(s->resent_blocks * CDC_BLOCK_SIZE)));
	json_object *cut = json_object_new_object();
	json_object_object_add(cut, "retry_for_s", json_object_new_double(s->a->retry_for_s));
	json_object_object_add(cut, "resumes", json_object_new_int((int)s->resumes));
	json_object_object_add(cut, "down_s", json_object_new_double(s->cut_s));
	json_object_object_add(cut, "owed_blocks", json_object_new_int64((int64_t)s->owed_blocks));
	json_object_object_add(o, "link_cuts", cut);
	if (s->planned) { /* the destination held an edge cache */
		json_object *c = json_object_new_object();
		json_object_object_add(c, "lacking_blocks", json_object_new_int64((int64_t)(s->lacking[ENG_VM_DISK] +
													s->lacking[ENG_VM_MEMORY] +
													s->lacking[ENG_VM_DEVICES])));
		json_object_object_add(c, "plan_s", json_object_new_double(s->plan_s));
		json_object_object_add(c, "resent_as_deltas", json_object_new_int64((int64_t)s->current_deltas));
		json_object_object_add(o, "destination_cache", c);
	}
	json_object *t = json_object_new_object();
	json_object_object_add(t, "stop_decided_s", json_object_new_double(s->stop_decided_s));
	json_object_object_add(t, "scan_s", json_object_new_double(s->refresh_cost_s));
	json_object_object_add(t, "final_scan_s", json_object_new_double(s->final_scan_s));
	json_object_object_add(t, "stop_s", json_object_new_double(s->stop_requested_s));
	json_object_object_add(t, "stop_qmp_time", json_object_new_double(s->stop_ts));
	json_object_object_add(t, "resume_qmp_time", json_object_new_double(s->resume_ts));
	json_object_object_add(t, "qemu_done_s", json_object_new_double(s->qemu_done_s));
	json_object_object_add(t, "trailer_queued_s", json_object_new_double(s->trailer_s));
	json_object_object_add(o, "timeline", t);
	/* seconds from the start of the process: EAL up, base, mirror and QMP ready,
	 * connected (session taken), the guard up, the pipeline set up, the first
	 * pass begun, its first blocks fed, the first data segment handed to the link */
	json_object *su = json_object_new_object();
	json_object_object_add(su, "eal_s", json_object_new_double(cli_eal_up_s && cli_main_s ? cli_eal_up_s - cli_main_s : 0));
#define SINCE(t) json_object_new_double((t) ? (t) - s->t_begin : 0)
	json_object_object_add(su, "setup_s", SINCE(s->t_setup));
	json_object_object_add(su, "connected_s", SINCE(s->t_connected));
	json_object_object_add(su, "guard_s", SINCE(s->t_guarded));
	json_object_object_add(su, "pipeline_s", SINCE(s->t_pipeline));
	json_object_object_add(su, "first_pass_s", SINCE(s->t_first_pass));
	json_object_object_add(su, "first_fed_s", SINCE(s->t_first_fed));
	json_object_object_add(su, "first_state_s", SINCE(s->t_first_state));
#undef SINCE
	json_object_object_add(o, "startup", su);
	json_object *v = json_object_new_object();
	for (int i = 0; i < ENG_VERDICT_COUNT; i++)
		json_object_object_add(v, eng_verdict_name(i), json_object_new_int64((int64_t)rep->verdicts[i]));
	json_object_object_add(o, "blocks", v);
	if (rep->lcores) /* the pipeline ran */
		json_object_object_add(o, "stages", cli_stage_json(rep));
	json_object_object_add(o, "placement", cli_placement_json());
	return o;
}

/* After the trailer: the two-phase commit with the destination. */
static int finish_remote(struct src *s, double *resume_ts, char *err, size_t errlen)
{
	struct eng_control *c = &s->ctl;
	enum eng_msg_type type;
	char text[ENG_MSG_TEXT_MAX + 1];
	int ret = eng_sendq_drain(s->sq, 600);

	if (ret) {
		snprintf(err, errlen, "connection to the destination lost: %s", strerror(-ret));
		s->link_lost = true;
		return ret;
	}
	if (!s->have_ctl && !(s->have_ctl = eng_control_init(c, s->conn, &s->stream, s->a->key, 1) == 0)) {
		snprintf(err, errlen, "cannot set up control messages");
		return -EIO;
	}
	/* the destination syncs its disk and loads its QEMU, saying ALIVE meanwhile */
	ret = eng_control_wait(c, ENG_CONTROL_SILENCE_S, 1800, &type, text, sizeof(text));
	if (ret || type != ENG_MSG_READY) {
		s->link_lost = ret && ret != -EBADMSG && ret != -ETIMEDOUT;
		if (ret)
			snprintf(err, errlen, "destination did not confirm: %s",
				 ret == -EBADMSG ? "forged or corrupt reply"
				 : ret == -ENOTCONN ? "it went silent" : strerror(-ret));
		else
			snprintf(err, errlen, "destination failed: %s", text);
		return ret ? ret : -EIO;
	}
	/* from here on the source VM never runs again: not without a guard */
	if (eng_guard_committed(&s->guard, true)) {
		snprintf(err, errlen, "the source VM's guard is gone: not committing (the source VM runs on)");
		return -EIO;
	}
	s->committed = true;
	ret = eng_control_send(c, ENG_MSG_COMMIT, NULL);
	if (!ret)
		ret = eng_control_wait(c, ENG_CONTROL_SILENCE_S, 300, &type, text, sizeof(text));
	if (ret || type != ENG_MSG_RESUMED) {
		s->link_lost = ret && ret != -EBADMSG && ret != -ETIMEDOUT;
		snprintf(err, errlen,
			 "committed, but the destination did not confirm the resume (%s); the source VM stays paused",
			 ret == -ENOTCONN ? "it went silent" : ret ? strerror(-ret) : text);
		return ret ? ret : -EIO;
	}
	*resume_ts = strtod(text, NULL);
	return 0;
}

static void owe_block(void *ctx, unsigned obj, uint64_t block)
{
	struct src *s = ctx;

	mark(s, s->first[obj] + block);
}

static void close_transport(struct src *s)
{
	if (s->conn)
		eng_conn_shutdown(s->conn, SHUT_RDWR); /* wakes a writer stuck on a dead peer */
	eng_sendq_free(s->sq);
	s->sq = NULL;
	if (s->have_ctl)
		eng_control_free(&s->ctl);
	s->have_ctl = false;
	eng_conn_close(s->conn);
	s->conn = NULL;
}

/* A trace line per resume, whatever the destination said it holds (state). */
static void trace_resume(struct src *s, double down, uint64_t applied, uint64_t owed, const char *state)
{
	if (s->trace)
		fprintf(s->trace, "{\"t\":%.3f,\"event\":\"resume\",\"down_s\":%.3f,\"applied_segments\":%llu,"
			"\"owed_blocks\":%llu,\"state\":\"%s\"}\n", now_s(s), down, (unsigned long long)applied,
			(unsigned long long)owed, state);
}

/*
 * The link was cut (send --retry-for): connect again, ask the destination
 * where it stands and go on from there. Everything the destination did not
 * apply is owed again (ledger.h); a final pass restarts so that it takes
 * those too. The VM keeps running meanwhile (or stays stopped, after the stop).
 */
static int resume_link(struct src *s, char *err, size_t errlen)
{
	char why[512], rerr[256] = "no answer";
	double t_cut = now_s(s), deadline = t_cut + s->a->retry_for_s;
	enum eng_resume_state state = ENG_RESUME_RECEIVING;
	uint64_t applied = 0;

	snprintf(why, sizeof(why), "%s", err);
	/* a destination that failed says so before it closes: that is no cut */
	if (s->have_ctl) {
		enum eng_msg_type type;
		char text[ENG_MSG_TEXT_MAX + 1];
		if (eng_control_wait(&s->ctl, 0.2, 0.5, &type, text, sizeof(text)) == 0 && type == ENG_MSG_FAILED) {
			snprintf(err, errlen, "destination failed: %s", text);
			return -EIO;
		}
	}
	fprintf(stderr, "%ssend: %s; reconnecting for up to %.0f s\n", s->a->progress ? "\r\033[K" : "", why,
		s->a->retry_for_s);
	close_transport(s);
	while (now_s(s) < deadline) {
		struct eng_conn_bind b = { .key = s->a->key };
		eng_vmbase_id(&s->base, b.base_id);
		/* connect retries by itself while nobody listens; a refused handshake (dpdk:) is tried again */
		if (!(s->conn = eng_conn_connect(s->a->to, &b, deadline - now_s(s), rerr, sizeof(rerr)))) {
			if (now_s(s) + 0.5 >= deadline)
				break;
			usleep(200000);
			continue;
		}
		impatient(s->conn);
		uint32_t cache_chunk; /* the plan was settled on the first connection */
		if (!eng_session_take(s->conn, s->session, &cache_chunk, ENG_SESSION_WAIT_S, rerr, sizeof(rerr)) &&
		    !eng_session_resume_ask(s->conn, s->session, s->a->key, s->a->aead, s->handoff_id,
					    ENG_SESSION_WAIT_S, &state, &applied, rerr, sizeof(rerr)))
			break;
		eng_conn_close(s->conn);
		s->conn = NULL;
		usleep(200000);
	}
	double down = now_s(s) - t_cut;
	s->cut_s += down;
	if (!s->conn) {
		snprintf(err, errlen, "%s, and the handoff could not be taken up again within %.0f s (%s)", why,
			 s->a->retry_for_s, rerr);
		return -ETIMEDOUT;
	}
	s->resumes++;
	s->fail[0] = 0;
	/* a scan cut short by the cut starts again: pages before its cursor may have changed since */
	s->scanning = false;
	s->scan_at = 0;
	s->link_lost = false;
	if (state == ENG_RESUME_RESUMED) { /* COMMIT arrived; only its answer was lost */
		s->resumed_remote = true;
		fprintf(stderr, "send: reconnected after %.1f s: the VM already runs at the destination\n", down);
		trace_resume(s, down, applied, 0, "resumed");
		return 0;
	}
	/* a COMMIT sent on the old connection never arrived (the receiver stopped
	 * reading it before it answered): the VM is still the source's */
	s->committed = false;
	eng_guard_committed(&s->guard, false);
	if (!(s->sq = eng_sendq_new(1 << 20, conn_send_cb, s->conn))) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	s->unsent_limit = 0;
	/* the new connection's first tick sets the share; until then, one commit */
	__atomic_store_n(&s->link_dry, true, __ATOMIC_RELEASE);
	set_feed_budget(s, COMMIT_MIN, 0.5);
	memset(&s->stream, 0, sizeof(s->stream));
	uint64_t owed = eng_ledger_rewind(&s->ledger, applied, owe_block, s);
	s->owed_blocks += owed;
	if (state == ENG_RESUME_VERIFIED && (!s->final_fed || owed)) {
		snprintf(err, errlen, "%s; on reconnecting the destination says it verified a stream this source "
			 "did not finish", why);
		return -EPROTO;
	}
	s->ended = false;
	if (s->phase == PH_FINAL) { /* the owed blocks lie behind its cursor */
		s->final_fed = false;
		start_pass(s);
	}
	fprintf(stderr, "send: resumed after %.1f s: the destination holds %llu segments, %llu blocks go again\n",
		down, (unsigned long long)applied, (unsigned long long)owed);
	trace_resume(s, down, applied, owed, state == ENG_RESUME_VERIFIED ? "verified" : "receiving");
	return 0;
}

/* What needs no EAL: the base, the disk, QMP, and (not over dpdk:) the connection. */
struct prep {
	struct src *s;
	bool transport;
	int ret;
	char err[512];
};

static void *prep_main(void *arg)
{
	struct prep *p = arg;

	if ((p->ret = setup(p->s, p->err, sizeof(p->err))))
		return NULL;
	p->s->t_setup = eng_mono_s();
	if (p->transport && !(p->ret = open_transport(p->s, p->err, sizeof(p->err))))
		p->s->t_connected = eng_mono_s();
	return NULL;
}

/* EAL on this thread, the rest on another meanwhile; 0, or -errno with err. */
static int prepare(struct src *s, char *err, size_t errlen)
{
	const struct eng_send_args *a = s->a;
	struct prep p = { .s = s, .transport = strncmp(a->to, "dpdk:", 5) != 0 }; /* dio needs EAL up */
	char eal_err[512] = "";
	int eal = 0;
	pthread_t th;

	s->socket = a->socket;
	if (a->start_eal) {
		bool threaded = !pthread_create(&th, NULL, prep_main, &p);
		eal = a->start_eal(&s->socket, eal_err, sizeof(eal_err));
		if (threaded)
			pthread_join(th, NULL);
		else if (!eal)
			prep_main(&p);
	} else {
		prep_main(&p);
	}
	if (eal) {
		snprintf(err, errlen, "%s", eal_err);
		return -ENODEV;
	}
	if (p.ret) {
		snprintf(err, errlen, "%s", p.err);
		return p.ret;
	}
	if (!p.transport) {
		int r = open_transport(s, err, errlen);
		if (r)
			return r;
		s->t_connected = eng_mono_s();
	}
	return 0;
}

int eng_handoff_send(const struct eng_send_args *a, json_object **summary, char *err, size_t errlen)
{
	struct src *s = calloc(1, sizeof(*s));
	struct eng_diff_report rep = { 0 };
	double resume_ts = 0, stop_ts = 0;
	int ret = -EIO;

	if (summary)
		*summary = NULL;
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	s->a = a;
	s->disk_fd = s->read_fd = s->mig_fd = s->shared_fd = s->base_ram_fd = -1;
	s->out.fd = s->trace_out.fd = -1;
	s->t0 = rte_rdtsc();
	s->guard.fd = -1;
	s->t_begin = cli_main_s ? cli_main_s : eng_mono_s();
	if ((ret = prepare(s, err, errlen)))
		goto out;
	if (s->conn && eng_guard_start(&s->guard, a->qmp_path, s->was_running, err, errlen)) {
		ret = -EIO;
		goto out;
	}
	s->t_guarded = eng_mono_s();
	/*
	 * An overlay is the VM suspended by QEMU's own migration: one pass,
	 * then QEMU stops it (its run state stays "running", so the VM starts
	 * again wherever the overlay is applied, unless that QEMU has -S). A live
	 * handoff reads RAM from the shared backend and lets QEMU migrate only
	 * at the stop; without one, QEMU's own pre-copy feeds the mirror (it
	 * stops the VM as soon as it converges).
	 */
	if (!s->conn)
		ret = qemu_migrate(s, 300000, err, errlen);
	else if (!s->shared) {
		fprintf(stderr, "send: warning: guest RAM is not on a shared memory backend; QEMU's own pre-copy will stop the VM early\n");
		ret = qemu_migrate(s, 0, err, errlen);
	}
	if (ret)
		goto out;

	struct eng_diff_object obj[ENG_VM_OBJECTS];
	const struct trk_index *bases[ENG_VM_OBJECTS];
	uint64_t capacity[ENG_VM_OBJECTS];
	for (int o = 0; o < ENG_VM_OBJECTS; o++) {
		obj[o] = (struct eng_diff_object){ eng_vm_object_names[o], s->base.index[o], s->base.map[o],
						   trk_index_size(s->base.index[o]), s->base_have[o] };
		bases[o] = s->base.index[o];
		capacity[o] = obj[o].capacity;
	}
	obj[ENG_VM_DEVICES].capacity = capacity[ENG_VM_DEVICES] = ENG_DEVICES_CAPACITY;
	bool resumable = s->conn && a->retry_for_s > 0;
	if (resumable && eng_ledger_init(&s->ledger, ENG_VM_OBJECTS, bases, capacity,
					 s->base_have[0] ? (const uint8_t *const *)s->base_have : NULL)) {
		snprintf(err, errlen, "out of memory for the block ledger");
		ret = -ENOMEM;
		goto out;
	}
	if (s->conn && s->shared && begin_unscanned_pass(s)) {
		snprintf(err, errlen, "out of memory");
		ret = -ENOMEM;
		goto out;
	}
	/* before the first tick: a commit's worth at the starting ratio (no link figure yet) */
	s->link_dry = true;
	set_feed_budget(s, COMMIT_MIN, 0.5);
	struct eng_feed feed = { feed_next, feed_size, s };
	struct eng_diff_args da = {
		.kind = ENG_KIND_VM, .nobj = ENG_VM_OBJECTS, .obj = obj, .feed = &feed,
		.key = a->key, .session = s->conn ? s->session : NULL, .aead = a->aead, .mode = a->mode,
		.socket = s->socket, .ledger = resumable ? &s->ledger : NULL,
		.tick = tick, .tick_ctx = s, .tick_ms = 100, .tick_due = &s->tick_due, .stream_out = &s->stream,
	};
	/*
	 * A lacking block the guest writes again goes as a delta against its
	 * sent copy: copies of memory first (the guest writes its pages again
	 * and again), then device state, then disk.
	 */
	uint64_t room = ENG_SENT_COPIES_MAX;
	for (unsigned i = 0; i < ENG_VM_OBJECTS; i++) {
		unsigned o = i == 0 ? ENG_VM_MEMORY : i == 1 ? ENG_VM_DEVICES : ENG_VM_DISK;
		da.sent_copies[o] = (uint32_t)(s->lacking[o] < room ? s->lacking[o] : room);
		room -= da.sent_copies[o];
	}
	/* one stream per connection: more than one only after a cut (--retry-for) */
	for (unsigned streams = 0;; streams++) {
		struct eng_sink sink = s->sq ? eng_sendq_sink(s->sq) : eng_fd_sink(&s->out_fd);
		if (streams && s->a->adapt)
			eng_adapt_restart(&s->adapt);
		da.sink = &sink;
		da.mode = s->mode_now;
		memset(&rep, 0, sizeof(rep));
		ret = eng_diff_run(&da, &rep, err, errlen);
		if (!s->t_first_state)
			s->t_first_state = rep.first_data_s;
		/* the sink failed on the connection (not after a failure of its own) */
		if (ret && !s->fail[0] && s->sq && eng_sendq_error(s->sq))
			s->link_lost = true;
		s->wire_prev += rep.wire_bytes;
		s->raw_prev += rep.stages[ENG_STAGE_INGEST].bytes_in;
		s->sealed_prev += rep.stages[ENG_STAGE_SEAL].bytes_out;
		s->current_deltas += rep.current_deltas;
		s->wire_bytes = s->wire_prev;
		if (!s->have_id && s->stream.header_len) {
			memcpy(s->handoff_id, s->stream.salt, sizeof(s->handoff_id));
			s->have_id = true;
		}
		s->trailer_s = now_s(s);
		if (a->progress)
			fputs("\r\033[K", stderr);
		if (!ret && !s->fail[0]) {
			if (!stop_ts && qb_qmp_wait_event(s->qmp, "STOP", 0.5, NULL, &stop_ts, err, errlen))
				stop_ts = 0;
			if (!s->conn) {
				ret = eng_outfile_commit(&s->out, err, errlen) ? -EIO : 0;
				break;
			}
			if (!(ret = finish_remote(s, &resume_ts, err, errlen)))
				break;
		} else if (s->fail[0]) {
			snprintf(err, errlen, "%s", s->fail);
		}
		ret = ret ? ret : -EIO;
		if (!s->link_lost || a->retry_for_s <= 0 || !s->have_id || (ret = resume_link(s, err, errlen)))
			goto out;
		if (s->resumed_remote)
			break;
	}
out:
	if (ret) /* the summary's error: the last word */
		snprintf(s->fail, sizeof(s->fail), "%s", err);
	if (s->sq && ret)
		eng_conn_shutdown(s->conn, SHUT_RDWR); /* wakes a writer stuck on a dead peer */
	eng_sendq_free(s->sq);
	s->sq = NULL;
	if (ret && s->out.fd >= 0)
		eng_outfile_abort(&s->out);
	if (s->mig_fd >= 0)
		shutdown(s->mig_fd, SHUT_RDWR);
	throttle_release(s);
	if (ret && !s->committed)
		restore_source(s);
	eng_guard_release(&s->guard); /* the VM is where it should be */
	if (s->bridge_started)
		pthread_join(s->bridge, NULL);
	double total = now_s(s);
	s->stop_ts = stop_ts;
	s->resume_ts = resume_ts;
	if (summary)
		*summary = summary_json(s, &rep, total, resume_ts > 0 && stop_ts > 0 ? resume_ts - stop_ts : -1);
	if (s->have_ctl)
		eng_control_free(&s->ctl);
	if (s->conn)
		eng_conn_close(s->conn);
	qb_qmp_close(s->qmp);
	if (s->mig_fd >= 0)
		close(s->mig_fd);
	if (s->read_fd >= 0 && s->read_fd != s->disk_fd)
		close(s->read_fd);
	if (s->disk_fd >= 0)
		close(s->disk_fd);
	if (s->mirror)
		munmap(s->mirror, s->mirror_len);
	if (s->shared_fd >= 0)
		close(s->shared_fd);
	free(s->sweep_live.buf);
	free(s->sweep_base.buf);
	free(s->scan_live.buf);
	free(s->scan_base.buf);
	free(s->mirror_written);
	if (s->base_ram_fd >= 0)
		close(s->base_ram_fd);
	for (struct pass_report *p = s->reports, *n; p; p = n) {
		n = p->next;
		free(p);
	}
	qb_devstate_free(&s->devstate);
	eng_ledger_free(&s->ledger);
	free(s->dev);
	free(s->pending);
	free(s->sent);
	free(s->heat);
	free(s->pass_bucket);
	free(s->lacking_late);
	free(s->unchecked);
	for (int o = 0; o < ENG_VM_OBJECTS; o++)
		free(s->base_have[o]);
	eng_vmbase_close(&s->base);
	if (s->trace) { /* kept whether or not the handoff worked: it says what happened */
		char terr[256];
		if (fclose(s->trace))
			fprintf(stderr, "send: warning: trace %s may be incomplete: %s\n", s->a->trace_path,
				strerror(errno));
		if (eng_outfile_commit(&s->trace_out, terr, sizeof(terr)))
			fprintf(stderr, "send: warning: trace not kept: %s\n", terr);
	}
	if (s->trace_out.fd >= 0)
		eng_outfile_abort(&s->trace_out);
	free(s);
	return ret;
}

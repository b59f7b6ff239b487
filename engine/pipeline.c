/*
 * The diff pipeline on DPDK lcores (design in pipeline.h).
 *
 * Threads: every lcore runs a poll loop over its share of stage instances
 * (SPDK-reactor style). A poll handles at most one object, returns whether it
 * did work, and the loop backs off (pause, then sleep) after a run of idle
 * polls, because on edge hosts the cores are shared with QEMU.
 *
 * Ownership: an object belongs to whoever dequeued or got it from its pool;
 * enqueueing hands it on. Statistics are written only by the instance's own
 * lcore and read racily by the tick (figures for humans and the controller).
 */
#include "pipeline.h"
#include "clock.h"
#include "sent_copies.h"
#include "codecs/varint.h"
#include "stream.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/mempolicy.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include <rte_pause.h>
#include <rte_ring.h>

#define BATCH_BLOCKS 256
#define NBATCHES 8
#define NSEGMENTS 8
#define RING_SIZE 64 /* > NBATCHES, NSEGMENTS: enqueues never fail */
#define REORDER 64   /* reorder window: >= objects in flight */
#define MAX_LCORES 64
#define BATCH_ENC_MAX (1 + BATCH_BLOCKS * (CDC_DELTA_MAX + 24))

/* EOS: the feed ended; FLUSH: the feed is idle, send what is held. */
enum batch_flags { BATCH_EOS = 1, BATCH_FLUSH = 2 };

struct batch {
	uint64_t seq;
	uint32_t nblocks, flags;
	enum cdc_delta delta; /* mode captured in order by dedup */
	uint32_t enc_len;
	uint8_t zero[BATCH_BLOCKS];
	uint8_t verdict[BATCH_BLOCKS];
	uint64_t block[BATCH_BLOCKS]; /* ENG_REF(object, block) */
	uint64_t ref[BATCH_BLOCKS];   /* what a BASE or DUP verdict copies */
	uint8_t digest[BATCH_BLOCKS][CDC_DIGEST_LEN];
	uint8_t current[BATCH_BLOCKS]; /* a NEW block the receiver holds a sent copy of: in prev */
	const uint8_t *blocks; /* the batch's blocks: data, or where the feed holds them */
	uint8_t data[BATCH_BLOCKS * CDC_BLOCK_SIZE] __attribute__((aligned(64)));
	/* the receiver's content of the current blocks (dedup copies it: the store moves on) */
	uint8_t prev[BATCH_BLOCKS * CDC_BLOCK_SIZE] __attribute__((aligned(64)));
	uint8_t enc[BATCH_ENC_MAX] __attribute__((aligned(64)));
};

struct segment {
	uint64_t seq;
	enum eng_frame_type type;
	enum cdc_comp comp;
	int level;
	uint32_t raw_len, payload_len, frame_len;
	uint8_t history_mib; /* window of earlier segments the payload refers to */
	uint64_t history_pos; /* data segments: where raw starts in the stream's history */
	uint64_t history_held; /* how much of the history before it the ring holds */
	uint64_t blocks;      /* input blocks covered, for P */
	uint8_t raw[ENG_SEG_RAW_MAX] __attribute__((aligned(64)));
	uint8_t frame[ENG_FRAME_MAX] __attribute__((aligned(64)));
};

struct stage_stats {
	uint64_t items, blocks, bytes_in, bytes_out, busy_tsc;
} __attribute__((aligned(64)));

struct stage {
	enum eng_stage_id id;
	unsigned instance;
	struct eng_pipeline *p;
	struct stage_stats st;
	uint64_t deltas[CDC_DELTA_COUNT]; /* delta stage: new blocks by encoding */
	uint64_t current_deltas;          /* of those, against a sent copy (ENG_OP_CUR) */
	/* per-instance codec contexts, as the stage needs */
	struct cdc_hasher *hasher;
	struct cdc_delta_ctx *delta;
	struct cdc_comp_ctx *comp;
	struct cdc_sealer *sealer;
	/* delta stage: the trial this instance runs (eng_pipeline_trial) */
	bool trial_on;
	struct eng_trial trial;
	uint8_t *trial_enc, *trial_out;
	/* single stages: reorder window */
	void *slot[REORDER];
	uint64_t next_seq;
};

struct lcore_plan {
	struct stage *stages[ENG_STAGE_COUNT];
	unsigned n;
};

struct eng_pipeline {
	const struct eng_diff_args *a;
	struct eng_stream stream;
	struct rte_mempool *batches, *segments;
	struct rte_ring *ring[ENG_STAGE_COUNT]; /* ring[s]: input of stage s */
	struct trk_table *base_table, *sent_table;
	struct eng_sent_copies copies; /* dedup's: blocks without a base, as sent */
	/* dedup: per object, the digest of every block as the receiver holds it */
	uint8_t (*held[ENG_MAX_OBJECTS])[CDC_DIGEST_LEN];
	uint64_t base_blocks[ENG_MAX_OBJECTS], capacity_blocks[ENG_MAX_OBJECTS];
	uint64_t sizes[ENG_MAX_OBJECTS];
	uint8_t digests[ENG_MAX_OBJECTS][CDC_DIGEST_LEN]; /* at the end */
	unsigned nlcores;
	unsigned lcore_ids[MAX_LCORES];
	struct lcore_plan plan[MAX_LCORES];
	struct stage *instances[ENG_STAGE_COUNT][MAX_LCORES];
	unsigned ninstances[ENG_STAGE_COUNT];
	volatile uint64_t mode_word;
	/* trial: asked by the tick, claimed by one delta instance, handed back */
	int trial_state;
	unsigned trial_n;
	uint64_t trial_words[ENG_TRIAL_MAX];
	struct eng_trial trial_result;
	/* ingest */
	uint64_t ingest_seq, ingest_blocks;
	bool ingest_done, ingest_idle;
	/* segment builder */
	struct segment *open_seg;
	bool batch_packed; /* the in-order batch is in open_seg, awaiting a trailer segment */
	uint64_t seg_seq, data_segments;
	/* the raw bytes of every data segment so far, in order (codecs.h) */
	struct cdc_history *history;
	uint64_t history_end, history_held;
	bool trailer_sent;
	uint64_t verdicts[ENG_VERDICT_COUNT];
	/* sink */
	uint64_t wire_bytes;
	double started_s; /* eng_mono_s() once set up, the header on its way */
	double first_data_s;
	volatile int done;
	volatile int failed;
	char err[256];
	uint64_t start_tsc;
};

static const char *const stage_names[ENG_STAGE_COUNT] = {
	"ingest", "hash", "dedup", "delta", "segment", "compress", "seal", "sink",
};

static const char *const verdict_names[ENG_VERDICT_COUNT] = {
	"same", "zero", "base", "dup", "new",
};

const char *eng_verdict_name(enum eng_verdict v)
{
	return (unsigned)v < ENG_VERDICT_COUNT ? verdict_names[v] : "?";
}

/* ---- modes ------------------------------------------------------------------ */

int eng_mode_parse(const char *text, struct eng_mode *m, char *err, size_t errlen)
{
	char d[16], c[16];
	int level, n = 0;

	if (sscanf(text, "%15[a-z]:%15[a-z]:%d%n", d, c, &level, &n) != 3 || text[n]) {
		snprintf(err, errlen, "bad mode '%s': expected DELTA:COMP:LEVEL, e.g. wdiff:zstd:3", text);
		return -EINVAL;
	}
	if (cdc_delta_parse(d, &m->delta)) {
		snprintf(err, errlen, "bad mode '%s': delta must be none, xor, wdiff, zref or best", text);
		return -EINVAL;
	}
	if (cdc_comp_parse(c, &m->comp) || !cdc_comp_level_ok(m->comp, level)) {
		snprintf(err, errlen,
			 "bad mode '%s': compressor must be none:0, igzip:0..3, zstd:-7..19 (not 0) or lzma:0..9",
			 text);
		return -EINVAL;
	}
	m->level = level;
	return 0;
}

void eng_mode_format(const struct eng_mode *m, char *buf, size_t len)
{
	snprintf(buf, len, "%s:%s:%d", cdc_delta_name(m->delta), cdc_comp_name(m->comp), m->level);
}

static uint64_t mode_pack(const struct eng_mode *m)
{
	return (uint64_t)m->delta | (uint64_t)m->comp << 8 | (uint64_t)(uint8_t)(int8_t)m->level << 16;
}

static struct eng_mode mode_unpack(uint64_t w)
{
	struct eng_mode m = {
		.delta = (enum cdc_delta)(w & 0xff),
		.comp = (enum cdc_comp)((w >> 8) & 0xff),
		.level = (int8_t)((w >> 16) & 0xff),
	};
	return m;
}

void eng_pipeline_set_mode(struct eng_pipeline *p, const struct eng_mode *m)
{
	__atomic_store_n(&p->mode_word, mode_pack(m), __ATOMIC_RELEASE);
}

static struct eng_mode current_mode(const struct eng_pipeline *p)
{
	return mode_unpack(__atomic_load_n(&p->mode_word, __ATOMIC_ACQUIRE));
}

enum { TRIAL_IDLE, TRIAL_ASKED, TRIAL_RUNNING, TRIAL_DONE };

bool eng_pipeline_trial(struct eng_pipeline *p, const struct eng_mode *m, unsigned n)
{
	if (__atomic_load_n(&p->trial_state, __ATOMIC_ACQUIRE) != TRIAL_IDLE)
		return false;
	p->trial_n = n < ENG_TRIAL_MAX ? n : ENG_TRIAL_MAX;
	for (unsigned i = 0; i < p->trial_n; i++)
		p->trial_words[i] = mode_pack(&m[i]);
	__atomic_store_n(&p->trial_state, TRIAL_ASKED, __ATOMIC_RELEASE);
	return true;
}

bool eng_pipeline_trial_done(struct eng_pipeline *p, struct eng_trial *t)
{
	if (__atomic_load_n(&p->trial_state, __ATOMIC_ACQUIRE) != TRIAL_DONE)
		return false;
	*t = p->trial_result;
	__atomic_store_n(&p->trial_state, TRIAL_IDLE, __ATOMIC_RELEASE);
	return true;
}

static void fail(struct eng_pipeline *p, const char *fmt, ...)
{
	int expected = 0;
	va_list ap;

	if (!__atomic_compare_exchange_n(&p->failed, &expected, 1, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return;
	va_start(ap, fmt);
	vsnprintf(p->err, sizeof(p->err), fmt, ap);
	va_end(ap);
}

void eng_pipeline_abort(struct eng_pipeline *p, const char *why)
{
	fail(p, "%s", why);
}

/* Enqueue cannot fail: every ring holds all objects of its pool. */
static void hand_on(struct eng_pipeline *p, enum eng_stage_id next, void *obj)
{
	if (rte_ring_enqueue(p->ring[next], obj))
		fail(p, "internal error: ring to %s full", stage_names[next]);
}

/* ---- stages ----------------------------------------------------------------- */

static int read_at(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += (size_t)r;
	}
	return 0;
}

static int file_feed_next(void *ctx, uint64_t *refs, uint8_t *data, const uint8_t **view,
			  unsigned max, char *err, size_t errlen)
{
	struct eng_file_feed *f = ctx;
	uint64_t blocks = (f->size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
	uint64_t left = blocks - f->next_block;
	unsigned n = left < max ? (unsigned)left : max;

	if (n == 0)
		return ENG_FEED_END;
	uint64_t off = f->next_block * CDC_BLOCK_SIZE, len = (uint64_t)n * CDC_BLOCK_SIZE;
	for (unsigned i = 0; i < n; i++)
		refs[i] = ENG_REF(0, f->next_block + i);
	f->next_block += n;
	if (f->map && off + len <= f->size) { /* whole blocks: read them in place */
		*view = f->map + off;
		return (int)n;
	}
	if (off + len > f->size)
		len = f->size - off;
	int ret = read_at(f->fd, data, len, off);
	if (ret) {
		snprintf(err, errlen, "cannot read target at offset %llu: %s", (unsigned long long)off,
			 strerror(-ret));
		return ret;
	}
	/* zero-pad the last block: both ends hash padded blocks */
	memset(data + len, 0, (size_t)n * CDC_BLOCK_SIZE - len);
	return (int)n;
}

static uint64_t file_feed_size(void *ctx, unsigned obj)
{
	(void)obj;
	return ((struct eng_file_feed *)ctx)->size;
}

struct eng_feed eng_file_feed(struct eng_file_feed *f)
{
	return (struct eng_feed){ .next = file_feed_next, .size = file_feed_size, .ctx = f };
}

/* Hand on an empty batch that only carries flags (end, or flush while idle). */
static int ingest_marker(struct stage *s, struct batch *b, uint32_t flags)
{
	b->flags = flags;
	b->nblocks = 0;
	s->st.items++;
	hand_on(s->p, ENG_STAGE_HASH, b);
	return 1;
}

static int poll_ingest(struct stage *s)
{
	struct eng_pipeline *p = s->p;
	const struct eng_feed *feed = p->a->feed;
	struct batch *b;
	char err[200];

	if (p->ingest_done || rte_mempool_get(p->batches, (void **)&b))
		return 0;
	uint64_t t0 = rte_rdtsc();
	b->seq = p->ingest_seq;
	b->flags = 0;
	b->enc_len = 0;
	err[0] = 0;
	b->blocks = b->data;
	int n = feed->next(feed->ctx, b->block, b->data, &b->blocks, BATCH_BLOCKS, err, sizeof(err));
	if (n == ENG_FEED_HELD) {
		/* no flush: every segment cut short costs its compressor a new
		 * history window (zstd:9 over an 8 MB prefix) */
		rte_mempool_put(p->batches, b);
		return 0;
	}
	if (n == 0 || n < 0) {
		if (n == ENG_FEED_END || (n == 0 && !p->ingest_idle)) {
			p->ingest_seq++;
			p->ingest_done = n == ENG_FEED_END;
			p->ingest_idle = true;
			return ingest_marker(s, b, n ? BATCH_EOS : BATCH_FLUSH);
		}
		if (n < 0)
			fail(p, "%s", err[0] ? err : strerror(-n));
		rte_mempool_put(p->batches, b);
		return 0;
	}
	for (int i = 0; i < n; i++) {
		unsigned obj = ENG_REF_OBJ(b->block[i]);
		if (obj >= p->a->nobj || ENG_REF_BLK(b->block[i]) >= p->capacity_blocks[obj]) {
			fail(p, "internal error: feed named block %llu of object %u beyond its capacity",
			     (unsigned long long)ENG_REF_BLK(b->block[i]), obj);
			rte_mempool_put(p->batches, b);
			return 0;
		}
	}
	if (p->a->ledger)
		for (int i = 0; i < n; i++)
			eng_ledger_fed(p->a->ledger, b->block[i]);
	p->ingest_seq++;
	p->ingest_idle = false;
	b->nblocks = (uint32_t)n;
	p->ingest_blocks += (uint64_t)n;
	s->st.bytes_in += (uint64_t)n * CDC_BLOCK_SIZE;
	s->st.bytes_out += (uint64_t)n * CDC_BLOCK_SIZE;
	s->st.items++;
	s->st.blocks += b->nblocks;
	s->st.busy_tsc += rte_rdtsc() - t0;
	hand_on(p, ENG_STAGE_HASH, b);
	return 1;
}

/*
 * Most blocks of a target equal the base at the same offset: comparing the
 * bytes is several times cheaper than hashing them, and the base index
 * already holds their digest. Returns that digest, or NULL. Only whole base
 * blocks qualify (the mapping ends at the base's last byte). A base block
 * the index knows to be zero is never read: most of a VM's memory is zero,
 * and every base page read is a page mapped (and unmapped) in the kernel.
 */
static const uint8_t *base_block_if_equal(const struct eng_pipeline *p, uint64_t ref,
					  const uint8_t *blk)
{
	unsigned obj = ENG_REF_OBJ(ref);
	uint64_t n = ENG_REF_BLK(ref);
	const struct eng_diff_object *o = &p->a->obj[obj];

	if (!o->base_map || n >= trk_index_size(o->base) / CDC_BLOCK_SIZE)
		return NULL;
	const uint8_t *digest = trk_index_digest(o->base, n);
	if (!memcmp(digest, cdc_zero_digest(), CDC_DIGEST_LEN) ||
	    memcmp(blk, o->base_map + n * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE))
		return NULL;
	return digest;
}

/* Zero blocks first (they need no base read), then same-as-base, then hashed. */
static int poll_hash(struct stage *s)
{
	struct batch *b;

	if (rte_ring_dequeue(s->p->ring[ENG_STAGE_HASH], (void **)&b))
		return 0;
	uint64_t t0 = rte_rdtsc();
	/* the blocks left are hashed together: several at a time where the CPU can */
	const uint8_t *todo[BATCH_BLOCKS];
	uint8_t *todo_digest[BATCH_BLOCKS];
	unsigned n = 0;
	for (uint32_t i = 0; i < b->nblocks; i++) {
		const uint8_t *blk = b->blocks + (size_t)i * CDC_BLOCK_SIZE;
		const uint8_t *same;

		b->zero[i] = cdc_is_zero(blk, CDC_BLOCK_SIZE);
		if (b->zero[i])
			memcpy(b->digest[i], cdc_zero_digest(), CDC_DIGEST_LEN);
		else if ((same = base_block_if_equal(s->p, b->block[i], blk)))
			memcpy(b->digest[i], same, CDC_DIGEST_LEN);
		else {
			todo_digest[n] = b->digest[i];
			todo[n++] = blk;
		}
	}
	cdc_hash_blocks(s->hasher, todo, n, todo_digest);
	s->st.items++;
	s->st.blocks += b->nblocks;
	s->st.bytes_in += (uint64_t)b->nblocks * CDC_BLOCK_SIZE;
	s->st.bytes_out += (uint64_t)b->nblocks * CDC_BLOCK_SIZE;
	s->st.busy_tsc += rte_rdtsc() - t0;
	hand_on(s->p, ENG_STAGE_DEDUP, b);
	return 1;
}

/*
 * Single-consumer stages take objects in sequence order: whatever arrives
 * early waits in the window. Returns the next in-order object or NULL.
 */
static void *next_in_order(struct stage *s, struct rte_ring *in, uint64_t (*seq_of)(void *))
{
	void *obj;

	while (rte_ring_dequeue(in, &obj) == 0)
		s->slot[seq_of(obj) % REORDER] = obj;
	obj = s->slot[s->next_seq % REORDER];
	if (!obj || seq_of(obj) != s->next_seq)
		return NULL;
	return obj;
}

static void consume_in_order(struct stage *s)
{
	s->slot[s->next_seq % REORDER] = NULL;
	s->next_seq++;
}

static uint64_t batch_seq(void *o) { return ((struct batch *)o)->seq; }
static uint64_t segment_seq(void *o) { return ((struct segment *)o)->seq; }

/* The receiver holds base block b of object o (eng_diff_object's have). */
static bool has_base(const struct eng_pipeline *p, unsigned o, uint64_t b)
{
	const uint8_t *have = p->a->obj[o].have;

	return b < p->base_blocks[o] && (!have || (have[b >> 3] >> (b & 7) & 1));
}

static uint8_t *held_digest(struct eng_pipeline *p, uint64_t ref)
{
	return p->held[ENG_REF_OBJ(ref)][ENG_REF_BLK(ref)];
}

/* At the end: each object's image digest over the blocks the receiver holds. */
static void final_digests(struct eng_pipeline *p)
{
	for (unsigned o = 0; o < p->a->nobj; o++) {
		struct cdc_image_digest *d = cdc_image_digest_new();
		p->sizes[o] = p->a->feed->size(p->a->feed->ctx, o);
		uint64_t n = (p->sizes[o] + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
		if (!d || n > p->capacity_blocks[o]) {
			fail(p, d ? "internal error: %s grew past its capacity" : "out of memory",
			     p->a->obj[o].name);
			cdc_image_digest_free(d);
			return;
		}
		uint64_t tail = p->sizes[o] % CDC_BLOCK_SIZE;
		const uint8_t *base_map = p->a->obj[o].base_map;
		/* an unchanged base block that the final size cuts short */
		if (tail && n <= p->base_blocks[o] && p->sizes[o] < trk_index_size(p->a->obj[o].base) &&
		    !memcmp(p->held[o][n - 1], trk_index_digest(p->a->obj[o].base, n - 1), CDC_DIGEST_LEN)) {
			uint8_t blk[CDC_BLOCK_SIZE];
			memcpy(blk, base_map + (n - 1) * CDC_BLOCK_SIZE, tail);
			memset(blk + tail, 0, CDC_BLOCK_SIZE - tail);
			cdc_sha256(blk, CDC_BLOCK_SIZE, p->held[o][n - 1]);
		}
		for (uint64_t b = 0; b < n; b++)
			cdc_image_digest_add(d, p->held[o][b]);
		cdc_image_digest_final(d, p->sizes[o], p->digests[o]);
		cdc_image_digest_free(d);
	}
}

/*
 * Decides, in stream order, what each block needs: nothing if the receiver
 * already holds it, else a zero, base or duplicate reference, else new bytes.
 * A block may come again (live handoff), so "already sent" means "some
 * result block holds this now": an overwritten holder leaves the table.
 */
static int poll_dedup(struct stage *s)
{
	struct eng_pipeline *p = s->p;
	struct batch *b = next_in_order(s, p->ring[ENG_STAGE_DEDUP], batch_seq);
	uint64_t out = 0;

	if (!b)
		return 0;
	consume_in_order(s);
	uint64_t t0 = rte_rdtsc();
	b->delta = current_mode(p).delta;
	for (uint32_t i = 0; i < b->nblocks; i++) {
		const uint8_t *d = b->digest[i];
		uint8_t *held = held_digest(p, b->block[i]);
		uint64_t ref, holder;
		enum eng_verdict v;

		if (!memcmp(d, held, CDC_DIGEST_LEN)) {
			b->verdict[i] = ENG_SAME;
			p->verdicts[ENG_SAME]++;
			if (p->a->ledger)
				eng_ledger_same(p->a->ledger, b->block[i]);
			continue;
		}
		if (trk_table_lookup(p->sent_table, held, &holder) == 0 && holder == b->block[i])
			trk_table_del(p->sent_table, held);
		b->current[i] = 0;
		unsigned o = ENG_REF_OBJ(b->block[i]);
		uint64_t blk = ENG_REF_BLK(b->block[i]);
		bool keep = p->copies.cap && !has_base(p, o, blk);
		/* what the receiver holds now: taken before the put below overwrites it */
		const uint8_t *copy = keep ? eng_sent_copies_get(&p->copies, o, blk, held) : NULL;
		if (b->zero[i])
			v = ENG_ZERO;
		else if (trk_table_lookup(p->base_table, d, &ref) == 0)
			v = ENG_BASE;
		else if (trk_table_lookup(p->sent_table, d, &ref) == 0)
			v = ENG_DUP;
		else {
			v = ENG_NEW;
			/* a full table only costs missed duplicates later */
			trk_table_add(p->sent_table, d, b->block[i]);
			out += CDC_BLOCK_SIZE;
			/* a delta against zeros is the block itself (encode_batch) */
			if (copy && memcmp(held, cdc_zero_digest(), CDC_DIGEST_LEN)) {
				memcpy(b->prev + (size_t)i * CDC_BLOCK_SIZE, copy, CDC_BLOCK_SIZE);
				b->current[i] = 1;
			}
		}
		if (keep)
			eng_sent_copies_put(&p->copies, o, blk, b->blocks + (size_t)i * CDC_BLOCK_SIZE, d);
		memcpy(held, d, CDC_DIGEST_LEN);
		b->verdict[i] = (uint8_t)v;
		b->ref[i] = ref;
		p->verdicts[v]++;
	}
	if (b->flags & BATCH_EOS)
		final_digests(p);
	s->st.items++;
	s->st.blocks += b->nblocks;
	s->st.bytes_in += (uint64_t)b->nblocks * CDC_BLOCK_SIZE;
	s->st.bytes_out += out;
	s->st.busy_tsc += rte_rdtsc() - t0;
	hand_on(p, ENG_STAGE_DELTA, b);
	return 1;
}

static const uint8_t delta_op[CDC_DELTA_COUNT] = {
	[CDC_DELTA_NONE] = ENG_OP_RAW, [CDC_DELTA_XOR] = ENG_OP_XOR,
	[CDC_DELTA_WDIFF] = ENG_OP_WDIFF, [CDC_DELTA_ZREF] = ENG_OP_ZREF,
};

static size_t put_block_ref(uint8_t *q, uint8_t op, uint64_t blk, int64_t *prev)
{
	int64_t d = (int64_t)blk - (*prev + 1);
	size_t n = 0;

	q[n++] = op;
	n += cdc_put_varint(q + n, ((uint64_t)d << 1) ^ (uint64_t)(d >> 63));
	*prev = (int64_t)blk;
	return n;
}

/*
 * A batch's encoding with new blocks delta-encoded `delta`'s way (against
 * the same-offset base block if there is one with content: against zeros a
 * delta is the block itself; against the receiver's current content where
 * dedup found a sent copy of it). counts: new blocks by encoding, or NULL.
 */
static uint32_t encode_batch(struct stage *s, const struct batch *b, enum cdc_delta delta, uint8_t *out,
			     uint64_t *counts)
{
	const struct eng_pipeline *p = s->p;
	unsigned cur = 0;
	int64_t prev = -1;
	uint8_t *q = out;

	*q++ = ENG_OP_RESET; /* batches are encoded apart: restart at object 0 */
	for (uint32_t i = 0; i < b->nblocks; i++) {
		unsigned obj = ENG_REF_OBJ(b->block[i]);
		uint64_t blk = ENG_REF_BLK(b->block[i]);
		const uint8_t *data = b->blocks + (size_t)i * CDC_BLOCK_SIZE;

		if (b->verdict[i] == ENG_SAME)
			continue;
		if (obj != cur) {
			*q++ = ENG_OP_OBJECT;
			*q++ = (uint8_t)obj;
			cur = obj;
			prev = -1;
		}
		switch (b->verdict[i]) {
		case ENG_ZERO:
			q += put_block_ref(q, ENG_OP_ZERO, blk, &prev);
			continue;
		case ENG_BASE:
		case ENG_DUP:
			q += put_block_ref(q, b->verdict[i] == ENG_BASE ? ENG_OP_BASE : ENG_OP_DUP, blk,
					   &prev);
			*q++ = (uint8_t)ENG_REF_OBJ(b->ref[i]);
			q += cdc_put_varint(q, ENG_REF_BLK(b->ref[i]));
			continue;
		}
		const struct trk_index *base = p->a->obj[obj].base;
		const uint8_t *against = NULL;
		if (b->current[i])
			against = b->prev + (size_t)i * CDC_BLOCK_SIZE;
		else if (has_base(p, obj, blk) &&
			 memcmp(trk_index_digest(base, blk), cdc_zero_digest(), CDC_DIGEST_LEN))
			against = p->a->obj[obj].base_map + blk * CDC_BLOCK_SIZE;
		enum cdc_delta kind = against ? delta : CDC_DELTA_NONE;
		uint8_t tmp[CDC_DELTA_MAX];
		ssize_t n = 0;
		if (kind != CDC_DELTA_NONE)
			n = cdc_delta_encode(s->delta, &kind, data, against, tmp, sizeof(tmp));
		if (n <= 0)
			kind = CDC_DELTA_NONE;
		bool current = kind != CDC_DELTA_NONE && b->current[i];
		q += put_block_ref(q, current ? ENG_OP_CUR : delta_op[kind], blk, &prev);
		if (current)
			*q++ = delta_op[kind]; /* how it is encoded, as its op against a base */
		if (kind == CDC_DELTA_NONE) {
			memcpy(q, data, CDC_BLOCK_SIZE);
			q += CDC_BLOCK_SIZE;
		} else {
			if (kind != CDC_DELTA_XOR)
				q += cdc_put_varint(q, (uint64_t)n);
			memcpy(q, tmp, (size_t)n);
			q += n;
		}
		if (counts) {
			counts[kind]++;
			s->current_deltas += current;
		}
	}
	return (uint32_t)(q - out);
}

#define TRIAL_OUT_MAX (BATCH_ENC_MAX + (64u << 10))

/*
 * This thread's CPU time: a trial's two halves are compared by it, not by
 * the clock, since the lcores share the host's cores with the guest and a
 * preemption in one half would be charged to that mode (a trial of a mode
 * against itself read 11x on bench-edge by the TSC).
 */
static uint64_t thread_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One mode's half of a trial on a batch: its encoding and that compressed on its own (stored when smaller). */
static void trial_half(struct stage *s, const struct batch *b, const struct eng_mode *m, uint64_t *bytes,
		       uint64_t *ns)
{
	uint64_t t0 = thread_ns();
	uint32_t len = encode_batch(s, b, m->delta, s->trial_enc, NULL);
	ssize_t n = cdc_compress(s->comp, m->comp, m->level, s->trial_enc, len, s->trial_out, TRIAL_OUT_MAX);
	*ns += thread_ns() - t0;
	*bytes += n < 0 || (uint64_t)n >= len ? len : (uint64_t)n;
}

/*
 * The trial on this batch, when this instance runs one or claims the one
 * asked for: the batch encoded and compressed both ways, apart from the
 * stage's own figures.
 */
static void trial_batch(struct stage *s, const struct batch *b)
{
	struct eng_pipeline *p = s->p;
	int asked = TRIAL_ASKED;
	uint32_t fresh = 0;

	if (!s->trial_on && __atomic_load_n(&p->trial_state, __ATOMIC_RELAXED) != TRIAL_ASKED)
		return; /* the common case, every batch: no trial wanted */
	for (uint32_t i = 0; i < b->nblocks; i++)
		fresh += b->verdict[i] == ENG_NEW;
	if (!fresh)
		return; /* references and zeros encode alike in every mode: nothing to compare */
	if (!s->trial_on) {
		/* the main lcore's instance also runs ingest, the sink and the tick: not there, if others exist */
		if ((s->instance == 0 && p->ninstances[ENG_STAGE_DELTA] > 1) ||
		    __atomic_load_n(&p->trial_state, __ATOMIC_ACQUIRE) != TRIAL_ASKED ||
		    !__atomic_compare_exchange_n(&p->trial_state, &asked, TRIAL_RUNNING, false,
						 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			return;
		memset(&s->trial, 0, sizeof(s->trial));
		s->trial.cur = current_mode(p);
		bool other = false;
		for (unsigned i = 0; i < p->trial_n; i++) {
			s->trial.cand[s->trial.ncand++] = mode_unpack(p->trial_words[i]);
			other |= p->trial_words[i] != mode_pack(&s->trial.cur);
		}
		if (!other)
			goto give_up; /* the controller switched to it meanwhile: nothing to compare */
		if (!s->comp && !(s->comp = cdc_comp_new()))
			goto give_up;
		if (!s->trial_enc && !(s->trial_enc = malloc(BATCH_ENC_MAX)))
			goto give_up;
		if (!s->trial_out && !(s->trial_out = malloc(TRIAL_OUT_MAX)))
			goto give_up;
		s->trial_on = true;
	}
	struct eng_trial *t = &s->trial;
	trial_half(s, b, &t->cur, &t->cur_bytes, &t->cur_ns);
	for (unsigned i = 0; i < t->ncand; i++) /* the running mode itself: no figures, it tells nothing */
		if (mode_pack(&t->cand[i]) != mode_pack(&t->cur))
			trial_half(s, b, &t->cand[i], &t->cand_bytes[i], &t->cand_ns[i]);
	t->blocks += fresh;
	if (t->blocks < ENG_TRIAL_BLOCKS)
		return;
	p->trial_result = *t;
	s->trial_on = false;
	__atomic_store_n(&p->trial_state, TRIAL_DONE, __ATOMIC_RELEASE);
	return;
give_up: /* a result without blocks: the trial told nothing about the modes it names */
	p->trial_result = s->trial;
	p->trial_result.blocks = 0;
	__atomic_store_n(&p->trial_state, TRIAL_DONE, __ATOMIC_RELEASE);
}

static int poll_delta(struct stage *s)
{
	struct eng_pipeline *p = s->p;
	struct batch *b;

	if (rte_ring_dequeue(p->ring[ENG_STAGE_DELTA], (void **)&b))
		return 0;
	uint64_t t0 = rte_rdtsc();
	b->enc_len = encode_batch(s, b, b->delta, b->enc, s->deltas);
	s->st.items++;
	s->st.blocks += b->nblocks;
	s->st.bytes_in += (uint64_t)b->nblocks * CDC_BLOCK_SIZE;
	s->st.bytes_out += b->enc_len;
	s->st.busy_tsc += rte_rdtsc() - t0;
	if (b->nblocks)
		trial_batch(s, b);
	hand_on(p, ENG_STAGE_SEGMENT, b);
	return 1;
}

static struct segment *open_segment(struct eng_pipeline *p)
{
	struct segment *g;

	if (rte_mempool_get(p->segments, (void **)&g))
		return NULL;
	struct eng_mode m = current_mode(p);
	g->seq = p->seg_seq++;
	g->type = ENG_FRAME_DATA;
	g->comp = m.comp;
	g->level = m.level;
	g->raw_len = 0;
	g->history_mib = 0;
	g->blocks = 0;
	return g;
}

static void flush_segment(struct stage *s)
{
	struct eng_pipeline *p = s->p;
	struct segment *g = p->open_seg;

	/*
	 * In stream order: the receiver's history grows the same way. The copy
	 * is only made while the mode uses a window (the fast modes skip it); a
	 * window is only used once the ring holds all of it.
	 */
	g->history_pos = p->history_end;
	g->history_held = p->history_held;
	if (cdc_history_window(g->comp, g->level)) {
		memcpy(cdc_history_at(p->history, p->history_end), g->raw, g->raw_len);
		p->history_held += g->raw_len;
	} else {
		p->history_held = 0;
	}
	p->history_end += g->raw_len;
	s->st.items++;
	s->st.bytes_out += p->open_seg->raw_len;
	p->data_segments++;
	hand_on(p, ENG_STAGE_COMPRESS, p->open_seg);
	p->open_seg = NULL;
}

/*
 * The size a data segment aims for: ENG_SEG_FIRST for the first, doubling up
 * to ENG_SEG_TARGET, so the first bytes reach the link once 64 KiB are encoded
 * rather than 1 MiB (a quarter of a second into a live first pass here).
 */
static uint32_t segment_target(const struct eng_pipeline *p)
{
	uint64_t t = (uint64_t)ENG_SEG_FIRST << (p->data_segments < 5 ? p->data_segments : 5);
	return t < ENG_SEG_TARGET ? (uint32_t)t : ENG_SEG_TARGET;
}

/*
 * Packs whole batches into ~1 MiB segments. A batch that does not fit starts
 * a new segment; segments hold whole batches so a segment decodes alone.
 */
static int poll_segment(struct stage *s)
{
	struct eng_pipeline *p = s->p;
	struct batch *b = next_in_order(s, p->ring[ENG_STAGE_SEGMENT], batch_seq);

	if (!b)
		return 0;
	uint64_t t0 = rte_rdtsc();
	/* An empty batch encodes to the lone RESET byte: nothing to carry. */
	if (!p->batch_packed && b->enc_len > 1) {
		if (p->open_seg && p->open_seg->raw_len + b->enc_len > segment_target(p))
			flush_segment(s);
		if (!p->open_seg && !(p->open_seg = open_segment(p)))
			return 0; /* no free segment: retry the batch later */
		memcpy(p->open_seg->raw + p->open_seg->raw_len, b->enc, b->enc_len);
		p->open_seg->raw_len += b->enc_len;
		p->open_seg->blocks += b->nblocks;
		if (p->a->ledger)
			for (uint32_t i = 0; i < b->nblocks; i++)
				if (b->verdict[i] != ENG_SAME)
					eng_ledger_carried(p->a->ledger, b->block[i], p->open_seg->seq);
	}
	p->batch_packed = true;
	if ((b->flags & BATCH_FLUSH) && p->open_seg)
		flush_segment(s);
	if (b->flags & BATCH_EOS) {
		if (p->open_seg)
			flush_segment(s);
		struct segment *t = open_segment(p);
		if (!t)
			return 0; /* retry: the batch is packed already */
		t->type = ENG_FRAME_TRAILER;
		t->comp = CDC_COMP_NONE;
		t->level = 0;
		cdc_put_le(t->raw, p->data_segments, 8);
		for (unsigned o = 0; o < p->a->nobj; o++) {
			uint8_t *q = t->raw + 8 + o * (8 + CDC_DIGEST_LEN);
			cdc_put_le(q, p->sizes[o], 8);
			memcpy(q + 8, p->digests[o], CDC_DIGEST_LEN);
		}
		t->raw_len = ENG_TRAILER_LEN(p->a->nobj);
		hand_on(p, ENG_STAGE_COMPRESS, t);
	}
	p->batch_packed = false;
	consume_in_order(s);
	s->st.blocks += b->nblocks;
	s->st.bytes_in += b->enc_len;
	s->st.busy_tsc += rte_rdtsc() - t0;
	rte_mempool_put(p->batches, b);
	return 1;
}

static int poll_compress(struct stage *s)
{
	struct eng_pipeline *p = s->p;
	struct segment *g;

	if (rte_ring_dequeue(p->ring[ENG_STAGE_COMPRESS], (void **)&g))
		return 0;
	uint64_t t0 = rte_rdtsc();
	uint8_t *payload = g->frame + ENG_FRAME_HDR;
	size_t cap = ENG_FRAME_MAX - ENG_FRAME_HDR - CDC_TAG_LEN;
	size_t window = g->type == ENG_FRAME_DATA ? cdc_history_window(g->comp, g->level) : 0;
	size_t plen = g->history_pos < window ? (size_t)g->history_pos : window;
	ssize_t n;
	if (plen && g->history_held >= plen) {
		/* the history copy: prefix and segment are one span there */
		const uint8_t *span = cdc_history_at(p->history, g->history_pos - plen);
		n = cdc_compress_prefixed(s->comp, g->level, span, plen, span + plen, g->raw_len,
					  payload, cap);
		g->history_mib = (uint8_t)(window >> 20);
	} else {
		n = cdc_compress(s->comp, g->comp, g->level, g->raw, g->raw_len, payload, cap);
	}
	/* Incompressible (or failed): store it; the frame says which. */
	if (n < 0 || (size_t)n >= g->raw_len) {
		memcpy(payload, g->raw, g->raw_len);
		n = g->raw_len;
		g->comp = CDC_COMP_NONE;
		g->level = 0;
		g->history_mib = 0;
	}
	g->payload_len = (uint32_t)n;
	s->st.items++;
	s->st.blocks += g->blocks;
	s->st.bytes_in += g->raw_len;
	s->st.bytes_out += (uint64_t)n;
	s->st.busy_tsc += rte_rdtsc() - t0;
	hand_on(p, ENG_STAGE_SEAL, g);
	return 1;
}

static int poll_seal(struct stage *s)
{
	struct eng_pipeline *p = s->p;
	struct segment *g;

	if (rte_ring_dequeue(p->ring[ENG_STAGE_SEAL], (void **)&g))
		return 0;
	uint64_t t0 = rte_rdtsc();
	g->frame_len = (uint32_t)eng_frame_seal(&p->stream, s->sealer, g->seq, g->type, g->comp,
						g->level, g->history_mib, g->raw_len, g->frame,
						g->payload_len);
	if (!g->frame_len)
		fail(p, "sealing segment %llu failed", (unsigned long long)g->seq);
	s->st.items++;
	s->st.blocks += g->blocks;
	s->st.bytes_in += g->payload_len;
	s->st.bytes_out += g->frame_len;
	s->st.busy_tsc += rte_rdtsc() - t0;
	hand_on(p, ENG_STAGE_SINK, g);
	return 1;
}

static int poll_sink(struct stage *s)
{
	struct eng_pipeline *p = s->p;
	struct segment *g = next_in_order(s, p->ring[ENG_STAGE_SINK], segment_seq);

	if (!g)
		return 0;
	uint64_t t0 = rte_rdtsc();
	int ret = p->a->sink->write(p->a->sink->ctx, g->frame, g->frame_len);
	if (ret == -EAGAIN)
		return 0; /* the sink is full (slow link): keep the segment, retry */
	consume_in_order(s);
	if (ret)
		fail(p, "cannot write output: %s", strerror(-ret));
	if (!p->first_data_s && g->type == ENG_FRAME_DATA)
		p->first_data_s = eng_mono_s();
	p->wire_bytes += g->frame_len;
	s->st.items++;
	s->st.blocks += g->blocks;
	s->st.bytes_in += g->frame_len;
	s->st.bytes_out += g->frame_len;
	s->st.busy_tsc += rte_rdtsc() - t0;
	if (g->type == ENG_FRAME_TRAILER)
		__atomic_store_n(&p->done, 1, __ATOMIC_RELEASE);
	rte_mempool_put(p->segments, g);
	return 1;
}

typedef int (*poll_fn)(struct stage *s);

static const poll_fn stage_poll[ENG_STAGE_COUNT] = {
	poll_ingest, poll_hash, poll_dedup, poll_delta, poll_segment, poll_compress, poll_seal,
	poll_sink,
};

static bool stage_is_parallel(enum eng_stage_id id)
{
	return id == ENG_STAGE_HASH || id == ENG_STAGE_DELTA || id == ENG_STAGE_COMPRESS ||
	       id == ENG_STAGE_SEAL;
}

/* ---- lcore loop ------------------------------------------------------------- */

static bool finished(const struct eng_pipeline *p)
{
	return __atomic_load_n(&p->done, __ATOMIC_ACQUIRE) ||
	       __atomic_load_n(&p->failed, __ATOMIC_ACQUIRE);
}

/* Idle back-off: spin briefly (latency), then sleep longer and longer. */
static void back_off(unsigned idle)
{
	if (idle < 64)
		rte_pause();
	else
		usleep(idle < 512 ? 20 : idle < 2048 ? 100 : 500);
}

struct tick_clock {
	uint64_t period, min_gap, last, next;
};

/*
 * The controller's tick, on the main lcore, when its period or a requested
 * time came. A requested (early) tick leaves the period alone: restarted
 * by each, the period's ticks came up to 190 ms apart, and the controller's
 * own ticks (at least 90 ms apart) with them.
 */
static void tick_if_due(struct eng_pipeline *p, struct tick_clock *c)
{
	uint64_t now = rte_rdtsc(), due = 0;
	/* an early tick within the minimum gap of the period's stands in for it */
	bool periodic = now + c->min_gap >= c->next;

	if (p->a->tick_due && now - c->last >= c->min_gap)
		due = __atomic_load_n(p->a->tick_due, __ATOMIC_ACQUIRE);
	if (p->a->tick_every_loop || periodic || (due && eng_mono_s() * 1e6 >= (double)due)) {
		if (p->a->tick_due)
			__atomic_store_n(p->a->tick_due, 0, __ATOMIC_SEQ_CST);
		p->a->tick(p->a->tick_ctx, p);
		c->last = rte_rdtsc();
		if (periodic)
			c->next = c->last + c->period;
	}
}

static void run_plan(struct eng_pipeline *p, struct lcore_plan *plan, bool main_lcore)
{
	struct tick_clock clock = {
		.period = rte_get_tsc_hz() / 1000 * (p->a->tick_ms ? p->a->tick_ms : 100),
		.min_gap = rte_get_tsc_hz() / 1000 * ENG_TICK_MIN_GAP_MS,
		.last = rte_rdtsc(),
	};
	bool ticks = main_lcore && p->a->tick;
	unsigned idle = 0;

	clock.next = clock.last + clock.period;
	while (!finished(p)) {
		int work = 0;
		/*
		 * The tick is looked at after every stage, not once a pass: with
		 * the feed running ahead, one pass of a single lcore's plan took
		 * 150 ms, and the controller's windows stretched with it.
		 */
		for (unsigned i = 0; i < plan->n; i++) {
			work += stage_poll[plan->stages[i]->id](plan->stages[i]);
			if (ticks && !p->a->tick_every_loop) {
				tick_if_due(p, &clock);
				if (finished(p)) /* the tick may abort the run: nothing more goes to the sink */
					break;
			}
		}
		if (ticks && p->a->tick_every_loop)
			tick_if_due(p, &clock);
		if (work)
			idle = 0;
		else
			back_off(idle++);
	}
}

static int worker_main(void *arg)
{
	struct eng_pipeline *p = arg;
	unsigned me = rte_lcore_id();

	for (unsigned i = 1; i < p->nlcores; i++)
		if (p->lcore_ids[i] == me)
			run_plan(p, &p->plan[i], false);
	return 0;
}

/* ---- set-up ------------------------------------------------------------------- */

static struct stage *stage_new(struct eng_pipeline *p, enum eng_stage_id id, unsigned instance)
{
	struct stage *s = aligned_alloc(64, sizeof(*s));

	if (!s)
		return NULL;
	memset(s, 0, sizeof(*s));
	s->id = id;
	s->instance = instance;
	s->p = p;
	bool ok = true;
	switch (id) {
	case ENG_STAGE_HASH:
		ok = (s->hasher = cdc_hasher_new()) != NULL;
		break;
	case ENG_STAGE_DELTA:
		ok = (s->delta = cdc_delta_new()) != NULL;
		break;
	case ENG_STAGE_COMPRESS:
		ok = (s->comp = cdc_comp_new()) != NULL;
		break;
	case ENG_STAGE_SEAL:
		ok = (s->sealer = cdc_sealer_new((enum cdc_aead)p->stream.aead, p->stream.subkey)) != NULL;
		break;
	default:
		break;
	}
	if (!ok) {
		free(s);
		return NULL;
	}
	p->instances[id][p->ninstances[id]++] = s;
	return s;
}

static void stage_free(struct stage *s)
{
	cdc_hasher_free(s->hasher);
	cdc_delta_free(s->delta);
	cdc_comp_free(s->comp);
	cdc_sealer_free(s->sealer);
	free(s->trial_enc);
	free(s->trial_out);
	free(s);
}

/*
 * Stage placement: every lcore runs one instance of each parallel stage;
 * the main lcore also owns ingest and sink (I/O and the tick), the first
 * worker dedup and segment (or the main lcore when it is alone).
 */
static int plan_lcores(struct eng_pipeline *p)
{
	unsigned id, n = 0;

	p->lcore_ids[n++] = rte_get_main_lcore();
	RTE_LCORE_FOREACH_WORKER(id)
	{
		if (n < MAX_LCORES)
			p->lcore_ids[n++] = id;
	}
	p->nlcores = n;
	for (unsigned l = 0; l < n; l++) {
		struct lcore_plan *pl = &p->plan[l];
		for (int sid = 0; sid < ENG_STAGE_COUNT; sid++) {
			bool mine;
			if (stage_is_parallel(sid))
				mine = true;
			else if (sid == ENG_STAGE_INGEST || sid == ENG_STAGE_SINK)
				mine = l == 0;
			else
				mine = l == (n > 1 ? 1u : 0u);
			if (!mine)
				continue;
			struct stage *s = stage_new(p, sid, p->ninstances[sid]);
			if (!s)
				return -ENOMEM;
			pl->stages[pl->n++] = s;
		}
	}
	return 0;
}

static void pipeline_free(struct eng_pipeline *p)
{
	for (int sid = 0; sid < ENG_STAGE_COUNT; sid++) {
		for (unsigned i = 0; i < p->ninstances[sid]; i++)
			stage_free(p->instances[sid][i]);
		rte_ring_free(p->ring[sid]);
	}
	cdc_history_free(p->history);
	rte_mempool_free(p->batches);
	rte_mempool_free(p->segments);
	if (!p->a->exit_after) {
		trk_table_free(p->base_table);
		trk_table_free(p->sent_table);
	}
	for (unsigned o = 0; o < ENG_MAX_OBJECTS && !p->a->ledger; o++)
		free(p->held[o]);
	eng_sent_copies_free(&p->copies);
	explicit_bzero(p->stream.subkey, sizeof(p->stream.subkey));
	free(p);
}

/* DPDK object names are global in the process: make them unique per run. */
static void unique_name(char *buf, size_t len, const char *what)
{
	static unsigned counter;

	snprintf(buf, len, "ho_%s_%u", what, __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
}

static void unmap_chunk(struct rte_mempool_memhdr *hdr, void *len)
{
	munmap(hdr->addr, (size_t)(uintptr_t)len);
}

/*
 * Batches and segments never meet a NIC, so they live in plain anonymous
 * memory rather than the EAL heap: without hugepages that heap is a memfd,
 * whose pages fault in slower, and it zeroes every element it frees (tens of
 * MiB at each run's end). Pages fault in as the pool cycles (no mlock, unlike
 * rte_mempool_populate_anon) and are preferred on the pipeline's node.
 */
static struct rte_mempool *buffer_pool_create(const char *name, unsigned n, size_t size,
					      int socket)
{
	struct rte_mempool *mp =
		rte_mempool_create_empty(name, n, size, 0, 0, socket, RTE_MEMPOOL_F_NO_IOVA_CONTIG);

	if (!mp)
		return NULL;
	size_t len = (size_t)n * (mp->header_size + mp->elt_size + mp->trailer_size);
	void *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		rte_mempool_free(mp);
		return NULL;
	}
	if (socket >= 0 && socket < (int)(sizeof(unsigned long) * 8)) {
		unsigned long mask = 1ul << socket;
		/* a preference: where it fails (no NUMA) nothing changes */
		syscall(SYS_mbind, mem, len, MPOL_PREFERRED, &mask, sizeof(mask) * 8, 0);
	}
	if (rte_mempool_set_ops_byname(mp, "ring_mp_mc", NULL) ||
	    rte_mempool_populate_virt(mp, mem, len, getpagesize(), unmap_chunk,
				      (void *)(uintptr_t)len) != (int)n) {
		rte_mempool_free(mp); /* unmaps mem once populated */
		return NULL;
	}
	return mp;
}

/* Before anything is sent the receiver holds the base, and zeros past it
 * (or, resuming, what the ledger says). */
static int held_init(struct eng_pipeline *p)
{
	for (unsigned o = 0; o < p->a->nobj; o++) {
		const struct trk_index *base = p->a->obj[o].base;
		p->base_blocks[o] = trk_index_blocks(base);
		p->capacity_blocks[o] = (p->a->obj[o].capacity + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
		if (p->a->ledger) { /* what earlier streams of this handoff left (and what the receiver lacks) */
			if (p->a->ledger->nobj != p->a->nobj || p->a->ledger->blocks[o] != p->capacity_blocks[o])
				return -EINVAL;
			p->held[o] = p->a->ledger->held[o];
			continue;
		}
		p->held[o] = malloc((p->capacity_blocks[o] ? p->capacity_blocks[o] : 1) * CDC_DIGEST_LEN);
		if (!p->held[o])
			return -ENOMEM;
		for (uint64_t b = 0; b < p->capacity_blocks[o]; b++)
			memcpy(p->held[o][b],
			       b >= p->base_blocks[o]	     ? cdc_zero_digest()
			       : has_base(p, o, b) ? trk_index_digest(base, b)
						   : eng_unknown_digest,
			       CDC_DIGEST_LEN);
	}
	return 0;
}

static int pipeline_setup(struct eng_pipeline *p, char *err, size_t errlen)
{
	const struct eng_diff_args *a = p->a;
	struct eng_object_desc desc[ENG_MAX_OBJECTS];
	char name[RTE_RING_NAMESIZE];
	uint64_t base_nonzero = 0, capacity_total = 0;

	if (a->nobj == 0 || a->nobj > ENG_MAX_OBJECTS) {
		snprintf(err, errlen, "internal error: %u objects", a->nobj);
		return -EINVAL;
	}
	for (unsigned o = 0; o < a->nobj; o++) {
		desc[o].base_size = trk_index_size(a->obj[o].base);
		desc[o].capacity = a->obj[o].capacity;
		memcpy(desc[o].base_id, trk_index_id(a->obj[o].base), CDC_DIGEST_LEN);
		base_nonzero += trk_index_nonzero_blocks(a->obj[o].base);
		capacity_total += (a->obj[o].capacity + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
	}
	eng_pipeline_set_mode(p, &a->mode);
	if (eng_stream_init(&p->stream, a->key, a->session, a->aead, a->kind, a->nobj, desc)) {
		snprintf(err, errlen, "cannot initialise the stream keys");
		return -EIO;
	}
	int hr = held_init(p);
	if (hr) {
		snprintf(err, errlen, hr == -EINVAL ? "internal error: the ledger does not fit these objects"
						    : "out of memory for the block digest tables");
		return hr;
	}
	unique_name(name, sizeof(name), "batch");
	p->batches = buffer_pool_create(name, NBATCHES, sizeof(struct batch), a->socket);
	unique_name(name, sizeof(name), "seg");
	p->segments = buffer_pool_create(name, NSEGMENTS, sizeof(struct segment), a->socket);
	/*
	 * A segment reads its window while later ones are written after it: at
	 * most every other segment in flight, each at most ENG_SEG_RAW_MAX.
	 */
	p->history = cdc_history_new(CDC_HISTORY_MAX + (size_t)NSEGMENTS * ENG_SEG_RAW_MAX);
	if (!p->batches || !p->segments || !p->history) {
		snprintf(err, errlen,
			 "cannot allocate pipeline buffers (%u MiB) from DPDK memory: raise EAL -m",
			 (unsigned)((NBATCHES * sizeof(struct batch) + NSEGMENTS * sizeof(struct segment)) >> 20));
		return -ENOMEM;
	}
	for (int sid = ENG_STAGE_HASH; sid < ENG_STAGE_COUNT; sid++) {
		unique_name(name, sizeof(name), stage_names[sid]);
		p->ring[sid] = rte_ring_create(name, RING_SIZE, a->socket, 0);
		if (!p->ring[sid]) {
			snprintf(err, errlen, "cannot create ring: %s", rte_strerror(rte_errno));
			return -ENOMEM;
		}
	}
	uint64_t sent_cap = capacity_total < (4u << 20) ? capacity_total : (4u << 20);
	/* zero blocks never go in: the zero test finds them first */
	uint64_t base_cap = base_nonzero < UINT32_MAX / 2 ? base_nonzero : UINT32_MAX / 2;
	unique_name(name, sizeof(name), "base");
	p->base_table = trk_table_new(name, (uint32_t)base_cap, a->socket);
	unique_name(name, sizeof(name), "sent");
	p->sent_table = trk_table_new(name, (uint32_t)sent_cap, a->socket);
	if (!p->base_table || !p->sent_table) {
		snprintf(err, errlen, "cannot allocate dedup tables from DPDK memory: raise EAL -m");
		return -ENOMEM;
	}
	for (unsigned o = 0; o < a->nobj; o++) /* only what the receiver can copy from */
		trk_table_add_index_masked(p->base_table, a->obj[o].base, ENG_REF(o, 0), a->obj[o].have);
	if (eng_sent_copies_init(&p->copies, a->nobj, p->capacity_blocks, a->sent_copies)) {
		snprintf(err, errlen, "out of memory for copies of the blocks the receiver has no base for");
		return -ENOMEM;
	}
	return plan_lcores(p) ? (snprintf(err, errlen, "out of memory"), -ENOMEM) : 0;
}

void eng_pipeline_report(const struct eng_pipeline *p, struct eng_diff_report *rep)
{
	double ns_per_tsc = 1e9 / (double)rte_get_tsc_hz();

	memset(rep, 0, sizeof(*rep));
	for (unsigned o = 0; o < p->a->nobj; o++)
		rep->target_size += p->sizes[o];
	rep->blocks = p->ingest_blocks;
	rep->wire_bytes = p->wire_bytes + p->stream.header_len;
	rep->segments = p->data_segments;
	rep->lcores = p->nlcores;
	rep->seconds = (double)(rte_rdtsc() - p->start_tsc) / (double)rte_get_tsc_hz();
	memcpy(rep->verdicts, p->verdicts, sizeof(rep->verdicts));
	for (unsigned i = 0; i < p->ninstances[ENG_STAGE_DELTA]; i++) {
		for (int k = 0; k < CDC_DELTA_COUNT; k++)
			rep->deltas[k] += p->instances[ENG_STAGE_DELTA][i]->deltas[k];
		rep->current_deltas += p->instances[ENG_STAGE_DELTA][i]->current_deltas;
	}
	for (int sid = 0; sid < ENG_STAGE_COUNT; sid++) {
		struct eng_stage_report *r = &rep->stages[sid];
		r->name = stage_names[sid];
		r->instances = p->ninstances[sid];
		for (unsigned i = 0; i < p->ninstances[sid]; i++) {
			const struct stage_stats *st = &p->instances[sid][i]->st;
			r->blocks += st->blocks;
			r->bytes_in += st->bytes_in;
			r->bytes_out += st->bytes_out;
			r->busy_ns += (uint64_t)((double)st->busy_tsc * ns_per_tsc);
		}
	}
	rep->blocks_in_flight = rep->blocks - rep->stages[ENG_STAGE_SINK].blocks;
	rep->first_data_s = p->first_data_s;
	rep->started_s = p->started_s;
}

int eng_diff_run(const struct eng_diff_args *a, struct eng_diff_report *rep, char *err,
		 size_t errlen)
{
	struct eng_pipeline *p = calloc(1, sizeof(*p));
	int ret;

	if (!p) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	p->a = a;
	ret = pipeline_setup(p, err, errlen);
	if (ret)
		goto out;
	p->start_tsc = rte_rdtsc();
	p->started_s = eng_mono_s();
	if (a->stream_out) { /* control messages derive their own key: the segments' stays here */
		*a->stream_out = p->stream;
		explicit_bzero(a->stream_out->subkey, sizeof(a->stream_out->subkey));
	}
	while ((ret = a->sink->write(a->sink->ctx, p->stream.header, p->stream.header_len)) == -EAGAIN)
		usleep(1000);
	if (ret) {
		snprintf(err, errlen, "cannot write output: %s", strerror(-ret));
		goto out;
	}
	for (unsigned i = 1; i < p->nlcores; i++)
		rte_eal_remote_launch(worker_main, p, p->lcore_ids[i]);
	run_plan(p, &p->plan[0], true);
	for (unsigned i = 1; i < p->nlcores; i++)
		rte_eal_wait_lcore(p->lcore_ids[i]);
	if (rep) /* a failed run too: what it sent counts */
		eng_pipeline_report(p, rep);
	if (p->failed) {
		snprintf(err, errlen, "%s", p->err);
		ret = -EIO;
	}
out:
	pipeline_free(p);
	return ret;
}

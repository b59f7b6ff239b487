/*
 * engine: the diff pipeline on real DPDK lcores (EAL without hugepages) and
 * the stream reader, end to end in memory: round trips for every mode and
 * odd sizes, dedup verdicts, mode switches while running, rejection of
 * every kind of damaged or foreign stream, and live streams cut and resumed.
 */
#define TEST_WITH_EAL
#include "engine/io.h"
#include "engine/pipeline.h"
#include "engine/stream.h"
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>

struct fixture {
	char *dir;
	char base_path[256], target_path[256];
	uint8_t *base, *target;
	size_t base_len, target_len;
	struct trk_index *idx;
};

static struct fixture fx;
/* The base blocks the receiving end holds (NULL: all), for diff_to and patch_from. */
static const uint8_t *fx_have;

static void load_fixture(const uint8_t *base, size_t base_len, const uint8_t *target,
			 size_t target_len)
{
	char err[256];

	if (!fx.dir)
		fx.dir = test_tmpdir();
	snprintf(fx.base_path, sizeof(fx.base_path), "%s/base", fx.dir);
	snprintf(fx.target_path, sizeof(fx.target_path), "%s/target", fx.dir);
	test_write_file(fx.base_path, base, base_len);
	test_write_file(fx.target_path, target, target_len);
	free(fx.base);
	free(fx.target);
	fx.base = malloc(base_len + 1);
	fx.target = malloc(target_len + 1);
	memcpy(fx.base, base, base_len);
	memcpy(fx.target, target, target_len);
	fx.base_len = base_len;
	fx.target_len = target_len;
	trk_index_free(fx.idx);
	fx.idx = trk_index_open(fx.base_path, err, sizeof(err));
	assert_non_null(fx.idx);
}

static const struct eng_mode cycle[] = {
	{ CDC_DELTA_XOR, CDC_COMP_IGZIP, 1 },
	{ CDC_DELTA_WDIFF, CDC_COMP_ZSTD, 3 },
	{ CDC_DELTA_NONE, CDC_COMP_LZMA, 1 },
	{ CDC_DELTA_ZREF, CDC_COMP_NONE, 0 },
};

/*
 * The next mode of the cycle each time a segment opened, so every segment
 * opens under another mode than the one before, however often the main
 * lcore loops (a random mode per tick saw only one or two modes when the
 * loop ran rarely, as under ASan on two shared cores).
 */
static uint64_t seen_segments, next_mode;

static void switch_modes(void *ctx, struct eng_pipeline *p)
{
	struct eng_diff_report rep;

	(void)ctx;
	eng_pipeline_report(p, &rep);
	if (rep.segments == seen_segments)
		return;
	seen_segments = rep.segments;
	eng_pipeline_set_mode(p, &cycle[next_mode++ % 4]);
}

/* A tick other than the mode cycle, for one run (NULL: none). */
static void (*other_tick)(void *ctx, struct eng_pipeline *p);

/*
 * For one run: the target's feed hands over 8 blocks at a time, each time
 * after a call that returns pause_code (0: nothing ready, or ENG_FEED_HELD)
 * as a live source held back by its link does.
 */
static bool pausing;
static int pause_code;
static struct eng_feed paused_feed;

static int pausing_next(void *ctx, uint64_t *refs, uint8_t *data, const uint8_t **view, unsigned max, char *err,
			size_t errlen)
{
	static bool paused;

	(void)ctx;
	paused = !paused;
	if (paused)
		return pause_code;
	return paused_feed.next(paused_feed.ctx, refs, data, view, max < 8 ? max : 8, err, errlen);
}

static uint64_t pausing_size(void *ctx, unsigned obj)
{
	(void)ctx;
	return paused_feed.size(paused_feed.ctx, obj);
}

static int diff_to(struct eng_mem *stream, const struct eng_mode *mode, const uint8_t *key,
		   struct eng_diff_report *rep, bool switching)
{
	char err[256];
	int fd = open(fx.target_path, O_RDONLY);
	struct eng_sink sink = eng_mem_sink(stream);

	seen_segments = next_mode = 0;
	struct eng_file_feed target = { .fd = fd, .size = fx.target_len };
	struct eng_feed feed = eng_file_feed(&target);
	if (pausing) {
		paused_feed = feed;
		feed = (struct eng_feed){ pausing_next, pausing_size, NULL };
	}
	struct eng_diff_object obj = {
		.name = "image", .base = fx.idx, .capacity = fx.target_len, .have = fx_have,
	};
	struct eng_diff_args a = {
		.kind = ENG_KIND_IMAGE,
		.nobj = 1,
		.obj = &obj,
		.feed = &feed,
		.sink = &sink,
		.key = key,
		.aead = CDC_AEAD_AES256GCM,
		.mode = *mode,
		.socket = 0,
		.tick = switching ? switch_modes : other_tick,
		.tick_every_loop = true,
	};
	/* the delta stage reads base blocks up to a whole block past the end */
	uint8_t *padded = calloc(1, fx.base_len + CDC_BLOCK_SIZE);
	memcpy(padded, fx.base, fx.base_len);
	obj.base_map = padded;
	int ret = eng_diff_run(&a, rep, err, sizeof(err));
	if (ret)
		fprintf(stderr, "diff: %s\n", err);
	free(padded);
	close(fd);
	return ret;
}

static int patch_from(struct eng_mem *stream, const uint8_t *key, struct eng_mem *result,
		      char *err, size_t errlen)
{
	/* what this end holds of the base: the blocks it lacks are garbage here */
	uint8_t *held = malloc(fx.base_len + 1);
	memcpy(held, fx.base, fx.base_len);
	for (size_t b = 0; fx_have && b * CDC_BLOCK_SIZE < fx.base_len; b++)
		if (!(fx_have[b >> 3] >> (b & 7) & 1)) {
			size_t n = fx.base_len - b * CDC_BLOCK_SIZE;
			memset(held + b * CDC_BLOCK_SIZE, 0xee, n < CDC_BLOCK_SIZE ? n : CDC_BLOCK_SIZE);
		}
	struct eng_mem base = { .data = held, .len = fx.base_len, .cap = fx.base_len };
	struct eng_source src = eng_mem_source(stream);
	struct eng_store bs = eng_mem_store(&base), os = eng_mem_store(result);
	struct eng_patch_stats st;

	stream->pos = 0;
	/* the result starts as a copy of (what this end holds of) the base, as patch does it */
	memset(result, 0, sizeof(*result));
	result->max = 1u << 30;
	if (fx.base_len) {
		result->data = malloc(fx.base_len);
		memcpy(result->data, held, fx.base_len);
		result->len = result->cap = fx.base_len;
	}
	struct eng_patch_object obj = {
		.name = "image", .base = &bs, .out = &os, .base_digests = trk_index_digest(fx.idx, 0),
		.base_size = trk_index_size(fx.idx), .base_id = trk_index_id(fx.idx), .have = fx_have,
	};
	struct eng_patch_args a = {
		.src = &src, .kind = ENG_KIND_IMAGE, .nobj = 1, .obj = &obj, .key = key,
	};
	int ret = eng_patch_stream(&a, &st, err, errlen);
	free(held);
	return ret;
}

static void assert_round_trip(const struct eng_mode *mode, const uint8_t *key, bool switching)
{
	struct eng_mem stream = { 0 }, result;
	struct eng_diff_report rep;
	char err[256];

	assert_int_equal(diff_to(&stream, mode, key, &rep, switching), 0);
	int r = patch_from(&stream, key, &result, err, sizeof(err));
	if (r)
		fail_msg("patch: %s", err);
	assert_int_equal(result.len, fx.target_len);
	assert_memory_equal(result.data, fx.target, fx.target_len);
	eng_mem_free(&result);
	eng_mem_free(&stream);
}

/* A base and a target that differs the way a used VM's image does. */
static void make_vm_like(size_t base_len, size_t target_len)
{
	uint8_t *base = malloc(base_len + 1), *t = calloc(1, target_len + 1);
	size_t nb = base_len / CDC_BLOCK_SIZE;

	test_fill_text(base, base_len);
	for (size_t b = 0; b + 1 < nb; b += 7) /* some random (incompressible) blocks */
		test_fill_random(base + b * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE);
	for (size_t b = 3; b < nb; b += 11) /* some zero blocks */
		memset(base + b * CDC_BLOCK_SIZE, 0, CDC_BLOCK_SIZE);
	memcpy(t, base, base_len < target_len ? base_len : target_len);
	if (target_len > base_len)
		test_fill_text(t + base_len, target_len - base_len);
	size_t tb = target_len / CDC_BLOCK_SIZE;
	for (size_t b = 0; b < tb; b++) {
		uint8_t *blk = t + b * CDC_BLOCK_SIZE;
		switch (test_rand() % 10) {
		case 0: /* in-place edits */
			for (int i = 0; i < 4; i++)
				blk[test_rand() % CDC_BLOCK_SIZE] = (uint8_t)test_rand();
			break;
		case 1: /* zeroed */
			memset(blk, 0, CDC_BLOCK_SIZE);
			break;
		case 2: /* moved from elsewhere in the base */
			if (nb)
				memcpy(blk, base + (test_rand() % nb) * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE);
			break;
		case 3: /* new data, sometimes twice */
			test_fill_random(blk, CDC_BLOCK_SIZE);
			if (b + 5 < tb && test_rand() % 2)
				memcpy(blk + 5 * CDC_BLOCK_SIZE, blk, CDC_BLOCK_SIZE);
			break;
		case 4: /* shifted content */
			memmove(blk + 13, blk, CDC_BLOCK_SIZE - 13);
			break;
		default:
			break;
		}
	}
	load_fixture(base, base_len, t, target_len);
	free(base);
	free(t);
}

static void test_round_trip_every_mode(void **state)
{
	(void)state;
	static const char *modes[] = { "none:none:0", "xor:igzip:0", "xor:igzip:3", "wdiff:zstd:1",
				       "zref:zstd:-3", "best:zstd:19", "best:lzma:1", "wdiff:lzma:6" };
	uint8_t key[CDC_KEY_LEN];
	char err[128];

	test_fill_random(key, sizeof(key));
	make_vm_like(3 << 20, (3 << 20) + 5000);
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		struct eng_mode m;
		assert_int_equal(eng_mode_parse(modes[i], &m, err, sizeof(err)), 0);
		assert_round_trip(&m, i % 2 ? key : NULL, false);
	}
}

/*
 * A receiver that holds only part of the base (an edge cache): every mode
 * round-trips when the sender is told what it lacks, and a stream made for
 * the whole base is refused, never applied wrongly.
 */
static void test_partial_base_round_trip(void **state)
{
	(void)state;
	static const char *modes[] = { "none:none:0", "xor:igzip:1", "wdiff:zstd:3", "zref:zstd:-3", "best:zstd:9" };
	char err[256];

	make_vm_like(2 << 20, (2 << 20) + 777);
	size_t nb = (fx.base_len + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
	uint8_t *have = calloc(1, nb / 8 + 1);
	for (size_t b = 0; b < nb; b++)
		if (test_rand() % 10 >= 3) /* 30% lacking */
			have[b >> 3] |= (uint8_t)(1u << (b & 7));
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		struct eng_mode m;
		assert_int_equal(eng_mode_parse(modes[i], &m, err, sizeof(err)), 0);
		fx_have = have;
		assert_round_trip(&m, NULL, false);
	}
	/* made for a receiver with the whole base: SAME, BASE and delta records build on what it lacks */
	struct eng_mem stream = { 0 }, result;
	struct eng_diff_report rep;
	struct eng_mode m = { CDC_DELTA_WDIFF, CDC_COMP_ZSTD, 3 };
	fx_have = NULL;
	assert_int_equal(diff_to(&stream, &m, NULL, &rep, false), 0);
	fx_have = have;
	assert_int_not_equal(patch_from(&stream, NULL, &result, err, sizeof(err)), 0);
	assert_true(strstr(err, "lacks") != NULL);
	eng_mem_free(&result);
	eng_mem_free(&stream);
	fx_have = NULL;
	free(have);
}

static void test_round_trip_odd_sizes(void **state)
{
	(void)state;
	static const size_t sizes[][2] = {
		{ 1 << 20, (1 << 20) - 1234 }, /* smaller, unaligned */
		{ 1 << 20, (3 << 20) + 77 },   /* larger, unaligned */
		{ 5000, 1 },                   /* tiny */
		{ 1 << 20, 0 },                /* empty target */
		{ 0, 100000 },                 /* empty base */
		{ 12345, 12345 },              /* equal, unaligned */
		{ 2 << 20, 2 << 20 },          /* more than one batch */
	};
	struct eng_mode m = { CDC_DELTA_BEST, CDC_COMP_ZSTD, 3 };

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		make_vm_like(sizes[i][0], sizes[i][1]);
		assert_round_trip(&m, NULL, false);
	}
}

/*
 * Content that repeats megabytes apart, not block-aligned (so block dedup
 * cannot see it): zstd segments find it in the history window, and the
 * receiver rebuilds the same window, also while modes switch per segment.
 */
static void test_history_window(void **state)
{
	(void)state;
	size_t base_len = 1 << 20, half = 3 << 20, target_len = base_len + 2 * half;
	uint8_t *t = malloc(target_len);
	struct eng_mem stream = { 0 };
	struct eng_diff_report rep;
	struct eng_mode m = { CDC_DELTA_NONE, CDC_COMP_ZSTD, 3 };

	test_fill_random(t, base_len + half);
	memcpy(t + base_len + half, t + base_len + 100, half - 100);
	test_fill_random(t + target_len - 100, 100);
	load_fixture(t, base_len, t, target_len);
	assert_int_equal(diff_to(&stream, &m, NULL, &rep, false), 0);
	/* the repeat costs little: well under the 6 MiB of new data */
	assert_true(rep.wire_bytes < half + (half / 4));
	eng_mem_free(&stream);
	assert_round_trip(&m, NULL, false);
	assert_round_trip(&m, NULL, true);
	free(t);
}

static void test_dedup_verdicts(void **state)
{
	(void)state;
	size_t nb = 600, len = nb * CDC_BLOCK_SIZE;
	uint8_t *base = malloc(len), *t = malloc(len);
	struct eng_mem stream = { 0 };
	struct eng_diff_report rep;
	struct eng_mode m = { CDC_DELTA_NONE, CDC_COMP_ZSTD, 1 };

	test_fill_random(base, len);
	memcpy(t, base, len);
	/* 100 zero, 100 moved base blocks, 100 new + 50 repeats of them */
	memset(t, 0, 100 * CDC_BLOCK_SIZE);
	for (size_t b = 100; b < 200; b++)
		memcpy(t + b * CDC_BLOCK_SIZE, base + (b + 300) * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE);
	test_fill_random(t + 200 * CDC_BLOCK_SIZE, 100 * CDC_BLOCK_SIZE);
	memcpy(t + 350 * CDC_BLOCK_SIZE, t + 200 * CDC_BLOCK_SIZE, 50 * CDC_BLOCK_SIZE);
	load_fixture(base, len, t, len);
	assert_int_equal(diff_to(&stream, &m, NULL, &rep, false), 0);
	assert_int_equal(rep.verdicts[ENG_ZERO], 100);
	assert_int_equal(rep.verdicts[ENG_BASE], 100);
	assert_int_equal(rep.verdicts[ENG_NEW], 100);
	assert_int_equal(rep.verdicts[ENG_DUP], 50);
	assert_int_equal(rep.verdicts[ENG_SAME], 250);
	/* random new blocks cost about their size, the rest almost nothing */
	assert_true(stream.len < 100 * CDC_BLOCK_SIZE + 64 * 1024);
	assert_true(stream.len > 100 * CDC_BLOCK_SIZE);
	eng_mem_free(&stream);
	free(base);
	free(t);
	/* and it decodes */
	assert_round_trip(&m, NULL, false);
}

/*
 * A source that holds blocks back (ENG_FEED_HELD) lets the open segment
 * wait to be filled; one with nothing ready (0) has it sent at once. Both
 * patch back byte for byte. (Flushing at every held share cut live
 * segments short, and each cost zstd:9 its history window again.)
 */
static void test_a_held_feed_keeps_the_segment_open(void **state)
{
	struct eng_mem stream = { 0 }, result;
	struct eng_diff_report rep;
	const struct eng_mode mode = { CDC_DELTA_NONE, CDC_COMP_ZSTD, 3 };
	uint64_t segments[2];
	char err[256];

	(void)state;
	size_t len = 512 * CDC_BLOCK_SIZE;
	uint8_t *base = malloc(len), *target = malloc(len);
	test_fill_random(base, len);
	test_fill_text(target, len);
	load_fixture(base, len, target, len);
	pausing = true;
	for (int held = 0; held < 2; held++) {
		pause_code = held ? ENG_FEED_HELD : 0;
		assert_int_equal(diff_to(&stream, &mode, NULL, &rep, false), 0);
		segments[held] = rep.segments;
		if (patch_from(&stream, NULL, &result, err, sizeof(err)))
			fail_msg("patch: %s", err);
		assert_int_equal(result.len, len);
		assert_memory_equal(result.data, target, len);
		eng_mem_free(&result);
		eng_mem_free(&stream);
	}
	pausing = false;
	assert_true(segments[0] >= 32);  /* 64 pauses: about one segment each */
	assert_true(segments[1] <= 10);  /* 64 KiB doubling up to 1 MiB */
	free(base);
	free(target);
}

static void test_mode_switch_while_running(void **state)
{
	(void)state;
	struct eng_mem stream = { 0 };
	struct eng_diff_report rep;
	struct eng_mode m = { CDC_DELTA_NONE, CDC_COMP_ZSTD, 1 };
	bool seen[CDC_COMP_COUNT] = { 0 };
	int kinds = 0;

	/* new, compressible data: many segments, each opened under the mode of the moment */
	size_t len = 24 << 20;
	uint8_t *b = calloc(1, len), *t = malloc(len);
	test_fill_text(t, len);
	load_fixture(b, len, t, len);
	free(b);
	free(t);
	assert_int_equal(diff_to(&stream, &m, NULL, &rep, true), 0);
	assert_true(rep.segments >= 8);
	/* frame headers are authenticated but not encrypted: count compressors used */
	for (size_t off = ENG_HEADER_LEN + ENG_OBJECT_DESC_LEN; off + ENG_FRAME_HDR <= stream.len;) {
		uint32_t len = (uint32_t)(stream.data[off] | stream.data[off + 1] << 8 |
					  stream.data[off + 2] << 16 | (uint32_t)stream.data[off + 3] << 24);
		if (stream.data[off + 8] == ENG_FRAME_DATA && !seen[stream.data[off + 9] % CDC_COMP_COUNT]) {
			seen[stream.data[off + 9] % CDC_COMP_COUNT] = true;
			kinds++;
		}
		off += ENG_FRAME_HDR + len + CDC_TAG_LEN;
	}
	assert_true(kinds >= 3);
	eng_mem_free(&stream);
	assert_round_trip(&m, NULL, true);
}

static struct eng_trial trial;
static int trials_done;
static unsigned trial_modes = 1;

/*
 * Asks for a trial of the stored, uncompressed mode (and with trial_modes 2,
 * of none:zstd:1 too) once the run is under way; keeps what comes back.
 */
static void ask_trial(void *ctx, struct eng_pipeline *p)
{
	static const struct eng_mode modes[] = { { CDC_DELTA_NONE, CDC_COMP_NONE, 0 },
						  { CDC_DELTA_NONE, CDC_COMP_ZSTD, 1 } };
	struct eng_diff_report rep;

	(void)ctx;
	if (eng_pipeline_trial_done(p, &trial))
		trials_done++;
	eng_pipeline_report(p, &rep);
	if (!trials_done && rep.blocks)
		eng_pipeline_trial(p, modes, trial_modes);
}

/*
 * A trial encodes a candidate mode beside the running one on the same
 * blocks: storing raw blocks costs many times the running mode's deltas;
 * the stream itself is what the running mode makes, and round-trips.
 */
static void test_trial_on_the_same_blocks(void **state)
{
	(void)state;
	struct eng_mem stream = { 0 }, result;
	struct eng_diff_report rep;
	struct eng_mode m = { CDC_DELTA_WDIFF, CDC_COMP_ZSTD, 3 };
	char err[256];
	size_t len = 8 << 20;
	uint8_t *b = malloc(len), *t = malloc(len);

	test_fill_text(b, len);
	memcpy(t, b, len);
	for (size_t i = 0; i < len; i += 997) /* every block changed a little: deltas */
		t[i] ^= 0x5a;
	load_fixture(b, len, t, len);
	free(b);
	free(t);
	trials_done = 0;
	other_tick = ask_trial;
	assert_int_equal(diff_to(&stream, &m, NULL, &rep, false), 0);
	other_tick = NULL;
	assert_int_equal(trials_done, 1);
	assert_true(trial.blocks >= ENG_TRIAL_BLOCKS);
	assert_memory_equal(&trial.cur, &m, sizeof(m));
	assert_int_equal(trial.ncand, 1);
	assert_int_equal(trial.cand[0].comp, CDC_COMP_NONE);
	/* stored raw blocks against zstd'd deltas of a few changed bytes */
	assert_true(trial.cand_bytes[0] > 20 * trial.cur_bytes);
	assert_true(trial.cur_ns > 0 && trial.cand_ns[0] > 0);
	assert_int_equal(patch_from(&stream, NULL, &result, err, sizeof(err)), 0);
	assert_int_equal(result.len, len);
	assert_memory_equal(result.data, fx.target, len);
	eng_mem_free(&result);
	eng_mem_free(&stream);

	/* a trial of the mode already running tells nothing: an empty result */
	struct eng_mode stored = { CDC_DELTA_NONE, CDC_COMP_NONE, 0 };
	trials_done = 0;
	other_tick = ask_trial;
	assert_int_equal(diff_to(&stream, &stored, NULL, &rep, false), 0);
	other_tick = NULL;
	assert_int_equal(trials_done, 1);
	assert_int_equal(trial.blocks, 0);
	assert_int_equal(trial.ncand, 1); /* it names what it was asked to try */
	assert_memory_equal(&trial.cand[0], &stored, sizeof(stored));
	eng_mem_free(&stream);

	/* two candidates on the same blocks, one of them the running mode: figures for the other alone */
	trials_done = 0;
	trial_modes = 2;
	other_tick = ask_trial;
	assert_int_equal(diff_to(&stream, &stored, NULL, &rep, false), 0);
	other_tick = NULL;
	trial_modes = 1;
	assert_int_equal(trials_done, 1);
	assert_true(trial.blocks >= ENG_TRIAL_BLOCKS);
	assert_int_equal(trial.ncand, 2);
	assert_int_equal(trial.cand[1].comp, CDC_COMP_ZSTD);
	assert_true(trial.cand_ns[0] == 0 && trial.cand_bytes[0] == 0);
	assert_true(trial.cand_ns[1] > 0);
	/* zstd on text against the same blocks stored */
	assert_true(trial.cand_bytes[1] * 2 < trial.cur_bytes);
	eng_mem_free(&stream);
}

static void expect_patch_error(struct eng_mem *stream, const uint8_t *key, const char *needle)
{
	struct eng_mem result;
	char err[256] = "";

	int r = patch_from(stream, key, &result, err, sizeof(err));
	eng_mem_free(&result);
	if (r == 0)
		fail_msg("damaged stream was accepted (expected '%s')", needle);
	assert_null(strchr(err, '\n'));
	if (needle && !strstr(err, needle))
		fail_msg("error '%s' does not mention '%s'", err, needle);
}

static void test_rejects_damage(void **state)
{
	(void)state;
	uint8_t key[CDC_KEY_LEN];
	struct eng_mem stream = { 0 };
	struct eng_diff_report rep;
	struct eng_mode m = { CDC_DELTA_BEST, CDC_COMP_ZSTD, 3 };

	test_fill_random(key, sizeof(key));
	make_vm_like(3 << 20, 3 << 20);
	assert_int_equal(diff_to(&stream, &m, key, &rep, false), 0);
	size_t len = stream.len;
	/* flipped bytes anywhere: header, frame headers, payloads, tags, trailer */
	for (int i = 0; i < 300; i++) {
		size_t pos = i < 150 ? (size_t)i : test_rand() % len;
		if (i >= 140 && i < 150)
			pos = len - 1 - (size_t)(i - 140); /* the trailer's tag */
		uint8_t bit = (uint8_t)(1u << (test_rand() % 8));
		stream.data[pos] ^= bit;
		expect_patch_error(&stream, key, NULL);
		stream.data[pos] ^= bit;
	}
	/* truncated anywhere, including at frame boundaries */
	for (int i = 0; i < 100; i++) {
		stream.len = i == 0 ? 0 : i == 1 ? ENG_HEADER_LEN : test_rand() % len;
		expect_patch_error(&stream, key, "truncated");
	}
	stream.len = len;
	/* trailing garbage */
	uint8_t extra = 0;
	struct eng_sink sink = eng_mem_sink(&stream);
	sink.write(sink.ctx, &extra, 1);
	expect_patch_error(&stream, key, "after the end");
	stream.len = len;
	/* keys: wrong, missing, and a key for an unkeyed stream */
	uint8_t wrong[CDC_KEY_LEN];
	memcpy(wrong, key, sizeof(wrong));
	wrong[0] ^= 1;
	expect_patch_error(&stream, wrong, "wrong key");
	expect_patch_error(&stream, NULL, "encrypted");
	eng_mem_free(&stream);
	assert_int_equal(diff_to(&stream, &m, NULL, &rep, false), 0);
	expect_patch_error(&stream, key, "not encrypted");
	/* the right stream against another base */
	struct eng_mem s2 = stream;
	uint8_t *other = malloc(fx.target_len);
	memcpy(other, fx.target, fx.target_len);
	uint8_t *b2 = malloc(fx.base_len);
	memcpy(b2, fx.base, fx.base_len);
	b2[12345] ^= 1;
	load_fixture(b2, fx.base_len, other, fx.target_len);
	expect_patch_error(&s2, NULL, "wrong base");
	eng_mem_free(&s2);
	free(other);
	free(b2);
}


/*
 * A live source: blocks of three objects come again and again with new
 * contents drawn from a small pool (zeros, base blocks of any object, a few
 * random blocks), in random order and in bursts with idle gaps, so the
 * stream is full of DUP references to blocks that are later overwritten,
 * blocks that go back to their base content, and cross-object copies. The
 * receiver must end with exactly the last version of every block.
 */
#define LIVE_OBJ 3
#define LIVE_POOL 24

struct live_feed {
	uint8_t *base[LIVE_OBJ], *want[LIVE_OBJ];
	uint64_t blocks[LIVE_OBJ], size[LIVE_OBJ];
	uint8_t pool[LIVE_POOL][CDC_BLOCK_SIZE];
	uint8_t lacking[LIVE_OBJ][256]; /* blocks the receiver lacks the base of, not sent yet */
	unsigned rounds, round;
	bool idle_next;
};

static void live_pick(struct live_feed *f, uint8_t *out)
{
	uint64_t r = test_rand() % 10;

	if (r == 0)
		memset(out, 0, CDC_BLOCK_SIZE);
	else if (r == 9) /* an edit in place of what the block holds now */
		memcpy(out + test_rand() % (CDC_BLOCK_SIZE - 8), "edited!!", 8);
	else if (r < 4) {
		unsigned o = (unsigned)(test_rand() % LIVE_OBJ);
		memcpy(out, f->base[o] + (test_rand() % f->blocks[o]) * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE);
	} else
		memcpy(out, f->pool[test_rand() % LIVE_POOL], CDC_BLOCK_SIZE);
}

static int live_next(void *ctx, uint64_t *refs, uint8_t *data, const uint8_t **view, unsigned max,
		     char *err, size_t errlen)
{
	struct live_feed *f = ctx;

	(void)view; /* blocks change between rounds, so they are copied */
	(void)err;
	(void)errlen;
	if (f->round >= f->rounds)
		return ENG_FEED_END;
	f->round++;
	unsigned k = 0; /* first what the receiver lacks, as it is now */
	for (unsigned o = 0; o < LIVE_OBJ && k < max; o++)
		for (uint64_t b = 0; b < f->blocks[o] && k < max; b++)
			if (f->lacking[o][b]) {
				f->lacking[o][b] = 0;
				refs[k] = ENG_REF(o, b);
				memcpy(data + (size_t)k++ * CDC_BLOCK_SIZE, f->want[o] + b * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE);
			}
	if (k)
		return (int)k;
	if (f->idle_next || test_rand() % 5 == 0) {
		f->idle_next = false;
		return 0; /* nothing ready: the pipeline flushes and asks again */
	}
	unsigned n = 1 + (unsigned)(test_rand() % max);
	for (unsigned i = 0; i < n; i++) {
		unsigned o = (unsigned)(test_rand() % LIVE_OBJ);
		uint64_t b = test_rand() % f->blocks[o];
		uint8_t *dst = f->want[o] + b * CDC_BLOCK_SIZE;
		live_pick(f, dst);
		/* the last block of a short object stays zero past its size */
		if ((b + 1) * CDC_BLOCK_SIZE > f->size[o])
			memset(dst + f->size[o] % CDC_BLOCK_SIZE, 0,
			       CDC_BLOCK_SIZE - f->size[o] % CDC_BLOCK_SIZE);
		refs[i] = ENG_REF(o, b);
		memcpy(data + (size_t)i * CDC_BLOCK_SIZE, dst, CDC_BLOCK_SIZE);
	}
	return (int)n;
}

static uint64_t live_size(void *ctx, unsigned obj)
{
	return ((struct live_feed *)ctx)->size[obj];
}

static void test_live_feed_last_version_wins(void **state)
{
	static const char *names[LIVE_OBJ] = { "disk", "memory", "devices" };
	struct live_feed *f = calloc(1, sizeof(*f));
	struct trk_index *idx[LIVE_OBJ];
	struct eng_diff_object obj[LIVE_OBJ];
	struct eng_patch_object pobj[LIVE_OBJ];
	struct eng_mem base_mem[LIVE_OBJ], out_mem[LIVE_OBJ], stream = { 0 };
	struct eng_store base_st[LIVE_OBJ], out_st[LIVE_OBJ];
	struct eng_diff_report rep;
	struct eng_patch_stats st;
	char path[300], err[256];
	/* the third run: the receiver lacks a third of the base, and the sender keeps copies of some of those blocks */
	const struct eng_mode modes[] = { { CDC_DELTA_BEST, CDC_COMP_ZSTD, 3 },
					  { CDC_DELTA_XOR, CDC_COMP_IGZIP, 1 },
					  { CDC_DELTA_WDIFF, CDC_COMP_ZSTD, 1 } };
	uint8_t *have[LIVE_OBJ] = { 0 };

	(void)state;
	if (!fx.dir)
		fx.dir = test_tmpdir();
	/* disk and memory of fixed size; device state smaller than its base */
	uint64_t base_size[LIVE_OBJ] = { 96 * CDC_BLOCK_SIZE, 128 * CDC_BLOCK_SIZE, 5 * CDC_BLOCK_SIZE + 100 };
	f->size[0] = base_size[0];
	f->size[1] = base_size[1];
	f->size[2] = 3 * CDC_BLOCK_SIZE + 77;
	for (int i = 0; i < LIVE_POOL; i++)
		(i % 2 ? test_fill_text : test_fill_random)(f->pool[i], CDC_BLOCK_SIZE);
	for (int o = 0; o < LIVE_OBJ; o++) {
		uint64_t cap = base_size[o] > f->size[o] ? base_size[o] : f->size[o];
		f->blocks[o] = (f->size[o] + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
		size_t padded = (size_t)((cap + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE) * CDC_BLOCK_SIZE;
		f->base[o] = calloc(1, padded);
		test_fill_text(f->base[o], base_size[o]);
		f->want[o] = calloc(1, padded);
		memcpy(f->want[o], f->base[o], base_size[o]);
		snprintf(path, sizeof(path), "%s/live-base-%d", fx.dir, o);
		test_write_file(path, f->base[o], base_size[o]);
		idx[o] = trk_index_open(path, err, sizeof(err));
		assert_non_null(idx[o]);
		obj[o] = (struct eng_diff_object){ names[o], idx[o], f->base[o], cap };
	}
	for (unsigned m = 0; m < 3; m++) {
		bool partial = m == 2;
		f->rounds = partial ? 400 : 120;
		f->round = 0;
		for (int o = 0; o < LIVE_OBJ && partial; o++) {
			have[o] = calloc(1, f->blocks[o] / 8 + 2);
			for (uint64_t b = 0; b < f->blocks[o]; b++)
				if (test_rand() % 3) {
					have[o][b >> 3] |= (uint8_t)(1u << (b & 7));
				} else { /* the feed must send every block the receiver lacks */
					f->lacking[o][b] = 1;
				}
			obj[o].have = have[o];
		}
		struct eng_feed feed = { live_next, live_size, f };
		struct eng_sink sink = eng_mem_sink(&stream);
		struct eng_diff_args a = {
			.kind = ENG_KIND_VM, .nobj = LIVE_OBJ, .obj = obj, .feed = &feed,
			.sink = &sink, .aead = CDC_AEAD_CHACHA20POLY1305, .mode = modes[m], .socket = 0,
			.sent_copies = { partial ? 16 : 0, partial ? 48 : 0, partial ? 16 : 0 },
		};
		memset(&stream, 0, sizeof(stream));
		assert_int_equal(eng_diff_run(&a, &rep, err, sizeof(err)), 0);
		for (int o = 0; o < LIVE_OBJ; o++) {
			base_mem[o] = (struct eng_mem){ .data = f->base[o], .len = base_size[o], .cap = base_size[o] };
			out_mem[o] = (struct eng_mem){ .data = malloc(base_size[o]), .len = base_size[o],
						       .cap = base_size[o], .max = 1u << 24 };
			memcpy(out_mem[o].data, f->base[o], base_size[o]);
			for (uint64_t b = 0; have[o] && b * CDC_BLOCK_SIZE < base_size[o]; b++)
				if (!(have[o][b >> 3] >> (b & 7) & 1)) /* not held here: garbage */
					memset(out_mem[o].data + b * CDC_BLOCK_SIZE, 0xee,
					       base_size[o] - b * CDC_BLOCK_SIZE < CDC_BLOCK_SIZE ? base_size[o] - b * CDC_BLOCK_SIZE
												  : CDC_BLOCK_SIZE);
			base_st[o] = eng_mem_store(&base_mem[o]);
			out_st[o] = eng_mem_store(&out_mem[o]);
			pobj[o] = (struct eng_patch_object){ names[o], &base_st[o], &out_st[o],
							     trk_index_digest(idx[o], 0), base_size[o],
							     trk_index_id(idx[o]), .have = have[o] };
		}
		struct eng_source src = eng_mem_source(&stream);
		struct eng_patch_args pa = { .src = &src, .kind = ENG_KIND_VM, .nobj = LIVE_OBJ, .obj = pobj };
		int ret = eng_patch_stream(&pa, &st, err, sizeof(err));
		if (ret)
			fprintf(stderr, "patch: %s\n", err);
		assert_int_equal(ret, 0);
		for (int o = 0; o < LIVE_OBJ; o++) {
			assert_int_equal(out_mem[o].len, f->size[o]);
			assert_memory_equal(out_mem[o].data, f->want[o], f->size[o]);
			eng_mem_free(&out_mem[o]);
		}
		/* the next run starts again from the base */
		for (int o = 0; o < LIVE_OBJ; o++) {
			memset(f->want[o], 0, (size_t)f->blocks[o] * CDC_BLOCK_SIZE);
			memcpy(f->want[o], f->base[o], base_size[o] < f->size[o] ? base_size[o] : f->size[o]);
		}
		assert_true(rep.verdicts[ENG_DUP] > 0 && rep.verdicts[ENG_BASE] > 0);
		/* lacking blocks written again went as deltas against what the receiver held */
		assert_true(partial ? rep.current_deltas > 0 : rep.current_deltas == 0);
		eng_mem_free(&stream);
	}
	for (int o = 0; o < LIVE_OBJ; o++)
		free(have[o]);
	for (int o = 0; o < LIVE_OBJ; o++) {
		trk_index_free(idx[o]);
		free(f->base[o]);
		free(f->want[o]);
	}
	free(f);
}

/*
 * A live stream cut and resumed: each stream but the last is cut at a random
 * byte (the receiver applied only the segments before it; the run ends
 * early, with blocks still in its stages, or, every other time, the cut
 * comes after the run finished), the sender's ledger turns what the receiver
 * lacks into blocks owed, and the next stream, with new live changes too,
 * goes on from there into the same results. The receiver must still end with
 * exactly the last version of every block.
 */
struct resume_feed {
	struct live_feed *live;
	uint8_t *owed[LIVE_OBJ]; /* one byte per block */
	bool owing;
};

static void owe_live_block(void *ctx, unsigned obj, uint64_t block)
{
	((struct resume_feed *)ctx)->owed[obj][block] = 1;
}

static int resume_next(void *ctx, uint64_t *refs, uint8_t *data, const uint8_t **view, unsigned max,
		       char *err, size_t errlen)
{
	struct resume_feed *r = ctx;
	struct live_feed *f = r->live;
	unsigned n = 0;

	if (r->owing) { /* first what the cut lost, with its current content */
		for (unsigned o = 0; o < LIVE_OBJ && n < max; o++)
			for (uint64_t b = 0; b < f->blocks[o] && n < max; b++)
				if (r->owed[o][b]) {
					r->owed[o][b] = 0;
					refs[n] = ENG_REF(o, b);
					memcpy(data + (size_t)n++ * CDC_BLOCK_SIZE, f->want[o] + b * CDC_BLOCK_SIZE,
					       CDC_BLOCK_SIZE);
				}
		if (n)
			return (int)n;
		r->owing = false;
	}
	return live_next(f, refs, data, view, max, err, errlen);
}

static uint64_t resume_size(void *ctx, unsigned obj)
{
	return live_size(((struct resume_feed *)ctx)->live, obj);
}

/* A link that breaks after `limit` bytes: what came before arrives. */
struct cut_sink {
	struct eng_mem *m;
	struct eng_sink inner;
	size_t limit;
};

static int cut_write(void *ctx, const void *buf, size_t len)
{
	struct cut_sink *c = ctx;

	if (c->m->len + len <= c->limit)
		return c->inner.write(c->inner.ctx, buf, len);
	if (c->m->len < c->limit)
		c->inner.write(c->inner.ctx, buf, c->limit - c->m->len);
	return -ECONNRESET;
}

static void test_live_stream_resumes_after_cuts(void **state)
{
	static const char *names[LIVE_OBJ] = { "disk", "memory", "devices" };
	struct live_feed *f = calloc(1, sizeof(*f));
	struct resume_feed rf = { .live = f };
	struct trk_index *idx[LIVE_OBJ];
	struct eng_diff_object obj[LIVE_OBJ];
	struct eng_patch_object pobj[LIVE_OBJ];
	struct eng_mem base_mem[LIVE_OBJ], out_mem[LIVE_OBJ];
	struct eng_store base_st[LIVE_OBJ], out_st[LIVE_OBJ];
	const struct trk_index *bases[LIVE_OBJ];
	uint64_t cap[LIVE_OBJ];
	struct eng_ledger ledger;
	struct eng_patcher *pt;
	struct eng_patch_stats st;
	char path[300], err[256];
	uint64_t owed_total = 0, current_deltas = 0;
	uint8_t *have[LIVE_OBJ];

	(void)state;
	if (!fx.dir)
		fx.dir = test_tmpdir();
	uint64_t base_size[LIVE_OBJ] = { 96 * CDC_BLOCK_SIZE, 128 * CDC_BLOCK_SIZE, 5 * CDC_BLOCK_SIZE };
	for (int i = 0; i < LIVE_POOL; i++)
		(i % 2 ? test_fill_text : test_fill_random)(f->pool[i], CDC_BLOCK_SIZE);
	for (int o = 0; o < LIVE_OBJ; o++) {
		f->size[o] = cap[o] = base_size[o];
		f->blocks[o] = base_size[o] / CDC_BLOCK_SIZE;
		f->base[o] = calloc(1, base_size[o]);
		test_fill_text(f->base[o], base_size[o]);
		f->want[o] = malloc(base_size[o]);
		memcpy(f->want[o], f->base[o], base_size[o]);
		rf.owed[o] = calloc(1, f->blocks[o]);
		/* the receiver lacks a third of the base: sent first, then as deltas against their copies */
		have[o] = calloc(1, f->blocks[o] / 8 + 1);
		for (uint64_t b = 0; b < f->blocks[o]; b++)
			if (test_rand() % 3)
				have[o][b >> 3] |= (uint8_t)(1u << (b & 7));
			else
				f->lacking[o][b] = 1;
		snprintf(path, sizeof(path), "%s/resume-base-%d", fx.dir, o);
		test_write_file(path, f->base[o], base_size[o]);
		idx[o] = trk_index_open(path, err, sizeof(err));
		bases[o] = idx[o];
		assert_non_null(idx[o]);
		obj[o] = (struct eng_diff_object){ names[o], idx[o], f->base[o], cap[o], have[o] };
		base_mem[o] = (struct eng_mem){ .data = f->base[o], .len = base_size[o], .cap = base_size[o] };
		out_mem[o] = (struct eng_mem){ .data = malloc(base_size[o]), .len = base_size[o], .cap = base_size[o],
					       .max = base_size[o] };
		memcpy(out_mem[o].data, f->base[o], base_size[o]);
		for (uint64_t b = 0; b < f->blocks[o]; b++)
			if (f->lacking[o][b]) /* not held here: garbage */
				memset(out_mem[o].data + b * CDC_BLOCK_SIZE, 0xee, CDC_BLOCK_SIZE);
		base_st[o] = eng_mem_store(&base_mem[o]);
		out_st[o] = eng_mem_store(&out_mem[o]);
		pobj[o] = (struct eng_patch_object){ names[o], &base_st[o], &out_st[o], trk_index_digest(idx[o], 0),
						     base_size[o], trk_index_id(idx[o]), .have = have[o] };
	}
	assert_int_equal(eng_ledger_init(&ledger, LIVE_OBJ, bases, cap, (const uint8_t *const *)have), 0);
	struct eng_patch_args pa = { .kind = ENG_KIND_VM, .nobj = LIVE_OBJ, .obj = pobj };
	assert_int_equal(eng_patcher_new(&pt, &pa, &st, err, sizeof(err)), 0);
	const unsigned streams = 4;
	for (unsigned i = 0; i < streams; i++) {
		struct eng_mem stream = { 0 };
		struct eng_diff_report rep;
		struct eng_feed feed = { resume_next, resume_size, &rf };
		bool last = i + 1 == streams, in_run = i % 2 == 0;
		struct cut_sink cs = { &stream, eng_mem_sink(&stream), in_run ? 2000 + test_rand() % 60000 : SIZE_MAX };
		struct eng_sink sink = { cut_write, &cs };
		struct eng_diff_args a = {
			.kind = ENG_KIND_VM, .nobj = LIVE_OBJ, .obj = obj, .feed = &feed, .sink = &sink,
			.aead = CDC_AEAD_AES256GCM, .mode = { CDC_DELTA_WDIFF, CDC_COMP_ZSTD, 3 }, .socket = 0,
			.ledger = &ledger, .sent_copies = { 8, 24, 2 },
		};
		f->rounds = last ? 0 : 60; /* the last stream carries only what the cuts lost */
		f->round = 0;
		int dr = eng_diff_run(&a, &rep, err, sizeof(err));
		current_deltas += rep.current_deltas;
		if (last || !in_run)
			assert_int_equal(dr, 0);
		if (!last && !in_run) /* the link goes after the run, somewhere before the trailer */
			stream.len = 200 + test_rand() % (stream.len - 200 - 300);
		struct eng_source src = eng_mem_source(&stream);
		bool cut = false;
		int ret = eng_patcher_read(pt, &src, NULL, NULL, &cut, err, sizeof(err));
		if (last) {
			if (ret)
				fail_msg("resumed stream %u: %s", i, err);
		} else {
			assert_int_not_equal(ret, 0);
			assert_true(cut);
			rf.owing = true;
			owed_total += eng_ledger_rewind(&ledger, eng_patcher_applied(pt), owe_live_block, &rf);
		}
		eng_mem_free(&stream);
	}
	assert_true(owed_total > 0); /* the cuts cost something, so the test saw a rewind */
	assert_true(current_deltas > 0);
	for (int o = 0; o < LIVE_OBJ; o++) {
		assert_memory_equal(out_mem[o].data, f->want[o], base_size[o]);
		eng_mem_free(&out_mem[o]);
		trk_index_free(idx[o]);
		free(f->base[o]);
		free(f->want[o]);
		free(rf.owed[o]);
		free(have[o]);
	}
	eng_patcher_free(pt);
	eng_ledger_free(&ledger);
	free(f);
}

static void test_mode_parse(void **state)
{
	(void)state;
	struct eng_mode m;
	char err[200], back[48];

	assert_int_equal(eng_mode_parse("wdiff:zstd:-5", &m, err, sizeof(err)), 0);
	eng_mode_format(&m, back, sizeof(back));
	assert_string_equal(back, "wdiff:zstd:-5");
	assert_int_equal(eng_mode_parse("xor:igzip:4", &m, err, sizeof(err)), -EINVAL);
	assert_int_equal(eng_mode_parse("foo:zstd:1", &m, err, sizeof(err)), -EINVAL);
	assert_int_equal(eng_mode_parse("xor:zstd", &m, err, sizeof(err)), -EINVAL);
	assert_int_equal(eng_mode_parse("xor:zstd:1x", &m, err, sizeof(err)), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mode_parse),
		cmocka_unit_test(test_round_trip_every_mode),
		cmocka_unit_test(test_round_trip_odd_sizes),
		cmocka_unit_test(test_partial_base_round_trip),
		cmocka_unit_test(test_history_window),
		cmocka_unit_test(test_dedup_verdicts),
		cmocka_unit_test(test_a_held_feed_keeps_the_segment_open),
		cmocka_unit_test(test_mode_switch_while_running),
		cmocka_unit_test(test_trial_on_the_same_blocks),
		cmocka_unit_test(test_rejects_damage),
		cmocka_unit_test(test_live_feed_last_version_wins),
		cmocka_unit_test(test_live_stream_resumes_after_cuts),
	};
	test_seed();
	return cmocka_run_group_tests_name("engine", tests, test_eal_setup, test_eal_teardown);
}

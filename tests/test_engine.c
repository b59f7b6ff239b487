/*
 * engine: the diff pipeline on real DPDK lcores (EAL without hugepages) and
 * the stream reader, end to end in memory: round trips for every mode and
 * odd sizes, dedup verdicts, mode switches while running, and rejection of
 * every kind of damaged or foreign stream.
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

struct switcher {
	unsigned calls;
};

static const struct eng_mode cycle[] = {
	{ CDC_DELTA_XOR, CDC_COMP_IGZIP, 1 },
	{ CDC_DELTA_WDIFF, CDC_COMP_ZSTD, 3 },
	{ CDC_DELTA_NONE, CDC_COMP_LZMA, 1 },
	{ CDC_DELTA_ZREF, CDC_COMP_NONE, 0 },
};

static void switch_modes(void *ctx, struct eng_pipeline *p)
{
	struct switcher *s = ctx;

	eng_pipeline_set_mode(p, &cycle[s->calls++ % 4]);
}

static int diff_to(struct eng_mem *stream, const struct eng_mode *mode, const uint8_t *key,
		   struct eng_diff_report *rep, bool switching)
{
	char err[256];
	int fd = open(fx.target_path, O_RDONLY);
	struct eng_sink sink = eng_mem_sink(stream);
	struct switcher sw = { 0 };
	struct eng_diff_args a = {
		.target_fd = fd,
		.target_size = fx.target_len,
		.base = fx.idx,
		.base_map = fx.base,
		.sink = &sink,
		.key = key,
		.aead = CDC_AEAD_AES256GCM,
		.mode = *mode,
		.socket = 0,
		.tick = switching ? switch_modes : NULL,
		.tick_ctx = &sw,
		.tick_every_loop = true,
	};
	/* the delta stage reads base blocks up to a whole block past the end */
	uint8_t *padded = calloc(1, fx.base_len + CDC_BLOCK_SIZE);
	memcpy(padded, fx.base, fx.base_len);
	a.base_map = padded;
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
	struct eng_mem base = { .data = fx.base, .len = fx.base_len, .cap = fx.base_len };
	struct eng_source src = eng_mem_source(stream);
	struct eng_store bs = eng_mem_store(&base), os = eng_mem_store(result);
	struct eng_patch_stats st;

	stream->pos = 0;
	/* the result starts as a copy of the base, as patch does it */
	memset(result, 0, sizeof(*result));
	result->max = 1u << 30;
	if (fx.base_len) {
		result->data = malloc(fx.base_len);
		memcpy(result->data, fx.base, fx.base_len);
		result->len = result->cap = fx.base_len;
	}
	struct eng_patch_args a = {
		.src = &src, .base = &bs, .base_id = trk_index_id(fx.idx),
		.base_size = trk_index_size(fx.idx), .out = &os, .key = key,
	};
	return eng_patch_stream(&a, &st, err, errlen);
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
	for (size_t off = ENG_HEADER_LEN; off + ENG_FRAME_HDR <= stream.len;) {
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
		cmocka_unit_test(test_dedup_verdicts),
		cmocka_unit_test(test_mode_switch_while_running),
		cmocka_unit_test(test_rejects_damage),
	};
	test_seed();
	return cmocka_run_group_tests_name("engine", tests, test_eal_setup, test_eal_teardown);
}

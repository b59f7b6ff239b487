/* codecs: known answers, round trips and clean rejection of corrupt input. */
#include "codecs/codecs.h"
#include "testlib.h"

#include <errno.h>

static uint8_t base_blk[CDC_BLOCK_SIZE] __attribute__((aligned(64)));
static uint8_t blk[CDC_BLOCK_SIZE] __attribute__((aligned(64)));
static uint8_t out[CDC_BLOCK_SIZE] __attribute__((aligned(64)));

static void test_sha256_known_answer(void **state)
{
	(void)state;
	static const uint8_t zero_block[CDC_BLOCK_SIZE];
	/* sha256 of 4096 zero bytes */
	static const uint8_t want[32] = {
		0xad, 0x7f, 0xac, 0xb2, 0x58, 0x6f, 0xc6, 0xe9, 0x66, 0xc0, 0x04, 0xd7, 0xd1, 0xd1, 0x6b, 0x02,
		0x4f, 0x58, 0x05, 0xff, 0x7c, 0xb4, 0x7c, 0x7a, 0x85, 0xda, 0xbd, 0x8b, 0x48, 0x89, 0x2c, 0xa7,
	};
	struct cdc_hasher *h = cdc_hasher_new();
	uint8_t d[32];

	cdc_hash_block(h, zero_block, d);
	assert_memory_equal(d, want, 32);
	assert_memory_equal(cdc_zero_digest(), want, 32);
	test_fill_random(blk, sizeof(blk));
	uint8_t d2[32];
	cdc_hash_block(h, blk, d);
	cdc_sha256(blk, sizeof(blk), d2);
	assert_memory_equal(d, d2, 32);
	cdc_hasher_free(h);
}

/* Runs of blocks, any count, hash as one by one, whichever code runs them
 * (HANDOFF_HASH); the four-lane path on its own too. */
static void test_sha256_blocks(void **state)
{
	(void)state;
	enum { N = 37 }; /* more than one pass of 16 lanes, and some left over */
	uint8_t *data = malloc(N * CDC_BLOCK_SIZE + 1), got[N][32], want[N][32];
	const uint8_t *blocks[N];
	uint8_t *out[N];
	static const char *const runs[] = { "ipsec-mb", "sha-ni", "openssl" };

	/* unaligned, one zero block, two equal ones */
	test_fill_random(data, N * CDC_BLOCK_SIZE + 1);
	for (int i = 0; i < N; i++)
		blocks[i] = data + 1 + (size_t)i * CDC_BLOCK_SIZE;
	memset((uint8_t *)blocks[3], 0, CDC_BLOCK_SIZE);
	memcpy((uint8_t *)blocks[7], blocks[5], CDC_BLOCK_SIZE);
	for (int i = 0; i < N; i++) {
		cdc_sha256(blocks[i], CDC_BLOCK_SIZE, want[i]);
		out[i] = got[i];
	}
	for (unsigned r = 0; r < 3; r++) {
		setenv("HANDOFF_HASH", runs[r], 1);
		struct cdc_hasher *h = cdc_hasher_new();
		assert_non_null(h);
		/* the code asked for runs them (this machine has AVX-512 and SHA-NI: see DESIGN.md) */
		assert_string_equal(cdc_hasher_runs(h), runs[r]);
		for (unsigned n = 0; n <= N; n++) {
			memset(got, 0xa5, sizeof(got));
			cdc_hash_blocks(h, blocks, n, out);
			assert_memory_equal(got, want, n * 32);
			if (n < N)
				assert_int_equal(got[n][0], 0xa5); /* nothing past n */
		}
		cdc_hasher_free(h);
	}
	unsetenv("HANDOFF_HASH");
	if (cdc_sha256_x4_available()) {
		cdc_sha256_block_x4(blocks + 2, out);
		assert_memory_equal(got, want + 2, 4 * 32);
		assert_memory_equal(got[1], cdc_zero_digest(), 32);
	} else {
		print_message("no SHA-NI here: the four-lane path was not run\n");
	}
	free(data);
}

static void test_zero_detect(void **state)
{
	(void)state;
	memset(blk, 0, sizeof(blk));
	assert_true(cdc_is_zero(blk, sizeof(blk)));
	for (int i = 0; i < 64; i++) {
		size_t pos = test_rand() % sizeof(blk);
		blk[pos] = (uint8_t)(1 + test_rand() % 255);
		assert_false(cdc_is_zero(blk, sizeof(blk)));
		blk[pos] = 0;
	}
	blk[CDC_BLOCK_SIZE - 1] = 1;
	assert_false(cdc_is_zero(blk, sizeof(blk)));
}

/* Edits of the kinds a VM makes: a few words, a shifted run, a rewrite. */
static void make_edit(int kind)
{
	memcpy(blk, base_blk, sizeof(blk));
	switch (kind) {
	case 0: /* in place */
		for (int i = 0; i < 5; i++)
			blk[test_rand() % CDC_BLOCK_SIZE] ^= (uint8_t)(1 + test_rand() % 255);
		break;
	case 1: /* 7 bytes inserted at 1000 */
		memmove(blk + 1007, base_blk + 1000, CDC_BLOCK_SIZE - 1007);
		test_fill_random(blk + 1000, 7);
		break;
	case 2: /* unrelated */
		test_fill_random(blk, sizeof(blk));
		break;
	case 3: /* identical */
		break;
	}
}

static void test_delta_round_trip(void **state)
{
	(void)state;
	struct cdc_delta_ctx *c = cdc_delta_new();
	uint8_t enc[CDC_DELTA_MAX];

	for (int round = 0; round < 50; round++) {
		test_fill_text(base_blk, sizeof(base_blk));
		for (int edit = 0; edit < 4; edit++) {
			make_edit(edit);
			for (int k = CDC_DELTA_XOR; k <= CDC_DELTA_BEST; k++) {
				enum cdc_delta kind = (enum cdc_delta)k;
				ssize_t n = cdc_delta_encode(c, &kind, blk, base_blk, enc, sizeof(enc));
				assert_true(n >= 0);
				if (n == 0)
					continue; /* raw is better: fine */
				assert_true(kind != CDC_DELTA_BEST && kind != CDC_DELTA_NONE);
				if (kind != CDC_DELTA_XOR)
					assert_true(n < CDC_BLOCK_SIZE);
				memset(out, 0xaa, sizeof(out));
				assert_int_equal(cdc_delta_decode(c, kind, enc, (size_t)n, base_blk, out), 0);
				assert_memory_equal(out, blk, CDC_BLOCK_SIZE);
			}
		}
	}
	/* the delta kinds earn their place on the edits they are for */
	test_fill_text(base_blk, sizeof(base_blk));
	make_edit(0);
	enum cdc_delta kind = CDC_DELTA_WDIFF;
	assert_true(cdc_delta_encode(c, &kind, blk, base_blk, enc, sizeof(enc)) < 100);
	make_edit(1);
	kind = CDC_DELTA_ZREF;
	ssize_t z = cdc_delta_encode(c, &kind, blk, base_blk, enc, sizeof(enc));
	if (!(z > 0 && z < CDC_BLOCK_SIZE / 10))
		fail_msg("zref of a 7-byte insertion: %zd bytes", z);
	cdc_delta_free(c);
}

static void test_delta_rejects_corrupt(void **state)
{
	(void)state;
	struct cdc_delta_ctx *c = cdc_delta_new();
	uint8_t enc[CDC_DELTA_MAX];

	test_fill_text(base_blk, sizeof(base_blk));
	for (int kindi = CDC_DELTA_WDIFF; kindi <= CDC_DELTA_ZREF; kindi++) {
		make_edit(kindi == CDC_DELTA_WDIFF ? 0 : 1);
		enum cdc_delta kind = (enum cdc_delta)kindi;
		ssize_t n = cdc_delta_encode(c, &kind, blk, base_blk, enc, sizeof(enc));
		assert_true(n > 0);
		/* every truncation is rejected or decodes to something: never crashes */
		for (ssize_t cut = 0; cut < n; cut++)
			(void)cdc_delta_decode(c, kind, enc, (size_t)cut, base_blk, out);
		/* garbage */
		for (int i = 0; i < 200; i++) {
			size_t len = test_rand() % sizeof(enc);
			test_fill_random(enc, len);
			(void)cdc_delta_decode(c, kind, enc, len, base_blk, out);
		}
	}
	/* structural errors are reported */
	uint8_t bad[] = { 0, 0x80, 0x80 }; /* gap 0, unterminated count */
	assert_int_equal(cdc_delta_decode(c, CDC_DELTA_WDIFF, bad, sizeof(bad), base_blk, out), -EBADMSG);
	uint8_t over[] = { 0x81, 0x04, 2 }; /* gap 513 words: past the block */
	assert_int_equal(cdc_delta_decode(c, CDC_DELTA_WDIFF, over, sizeof(over), base_blk, out), -EBADMSG);
	assert_int_equal(cdc_delta_decode(c, CDC_DELTA_XOR, enc, 100, base_blk, out), -EBADMSG);
	assert_int_equal(cdc_delta_decode(c, CDC_DELTA_ZREF, bad, sizeof(bad), base_blk, out), -EBADMSG);
	cdc_delta_free(c);
}

static void test_compress_round_trip(void **state)
{
	(void)state;
	static const struct { enum cdc_comp c; int lo, hi; } codecs[] = {
		{ CDC_COMP_NONE, 0, 0 }, { CDC_COMP_IGZIP, 0, 3 }, { CDC_COMP_ZSTD, -7, 19 },
		{ CDC_COMP_LZMA, 0, 9 },
	};
	struct cdc_comp_ctx *c = cdc_comp_new();
	size_t len = 300000;
	uint8_t *src = malloc(len), *dst = malloc(len * 2), *back = malloc(len);

	test_fill_text(src, len / 2);
	test_fill_random(src + len / 2, len / 4);
	memset(src + 3 * len / 4, 0, len / 4);
	for (size_t i = 0; i < sizeof(codecs) / sizeof(codecs[0]); i++) {
		for (int level = codecs[i].lo; level <= codecs[i].hi; level++) {
			if (!cdc_comp_level_ok(codecs[i].c, level))
				continue;
			/* the slow lzma presets are exercised at both ends only */
			if (codecs[i].c == CDC_COMP_LZMA && level > 1 && level < 9)
				continue;
			ssize_t n = cdc_compress(c, codecs[i].c, level, src, len, dst,
						 cdc_comp_bound(codecs[i].c, len));
			assert_true(n > 0);
			if (codecs[i].c != CDC_COMP_NONE)
				assert_true((size_t)n < len);
			memset(back, 0x55, len);
			assert_int_equal(cdc_decompress(c, codecs[i].c, dst, (size_t)n, back, len), 0);
			assert_memory_equal(back, src, len);
			/* wrong length, truncation and a flipped byte are rejected */
			assert_int_equal(cdc_decompress(c, codecs[i].c, dst, (size_t)n, back, len - 1), -EBADMSG);
			if (codecs[i].c != CDC_COMP_NONE) {
				assert_int_equal(cdc_decompress(c, codecs[i].c, dst, (size_t)n / 2, back, len), -EBADMSG);
				dst[n / 3] ^= 0x40;
				int r = cdc_decompress(c, codecs[i].c, dst, (size_t)n, back, len);
				/* a flip may still decode; then the bytes differ (the AEAD catches it upstream) */
				assert_true(r == -EBADMSG || memcmp(back, src, len) != 0);
			}
		}
	}
	assert_int_equal(cdc_compress(c, CDC_COMP_IGZIP, 4, src, len, dst, len * 2), -EINVAL);
	assert_int_equal(cdc_compress(c, CDC_COMP_ZSTD, 3, src, len, dst, 100), -ENOSPC);
	free(src);
	free(dst);
	free(back);
	cdc_comp_free(c);
}

/*
 * The history ring: spans wrap contiguously, and a zstd segment whose content
 * repeats what the window holds costs a fraction of one that cannot see it.
 */
static void test_history_prefix(void **state)
{
	(void)state;
	struct cdc_history *h = cdc_history_new(3 * 100000);
	struct cdc_comp_ctx *c = cdc_comp_new();
	size_t seg = 100000, cap = cdc_comp_bound(CDC_COMP_ZSTD, seg);
	uint8_t *dst = malloc(cap), *back = malloc(seg);

	assert_non_null(h);
	assert_true(h->cap >= 300000 && h->cap % 4096 == 0);
	/* 4 segments, the 4th repeating the 2nd; the 4th crosses the ring's end */
	for (int i = 0; i < 3; i++)
		test_fill_random(cdc_history_at(h, (uint64_t)i * seg), seg);
	uint64_t pos = 3 * seg;
	memcpy(cdc_history_at(h, pos), cdc_history_at(h, seg), seg);
	size_t plen = 2 * seg; /* its window: segments 2 and 3 */
	/* a span is addressed by its start and runs on across the wrap */
	const uint8_t *prefix = cdc_history_at(h, pos - plen), *src = prefix + plen;
	assert_true((pos - plen) % h->cap + plen + seg > h->cap);
	assert_memory_equal(src, cdc_history_at(h, seg), seg);
	ssize_t alone = cdc_compress(c, CDC_COMP_ZSTD, 3, src, seg, dst, cap);
	ssize_t n = cdc_compress_prefixed(c, 3, prefix, plen, src, seg, dst, cap);
	assert_true(alone > (ssize_t)seg * 9 / 10 && n > 0 && n < (ssize_t)seg / 20);
	assert_int_equal(cdc_decompress_prefixed(c, prefix, plen, dst, (size_t)n, back, seg), 0);
	assert_memory_equal(back, src, seg);
	/* without its window (or a different one) the payload does not rebuild the segment */
	assert_int_not_equal(cdc_decompress(c, CDC_COMP_ZSTD, dst, (size_t)n, back, seg), 0);
	int r = cdc_decompress_prefixed(c, prefix + seg, plen - seg, dst, (size_t)n, back, seg);
	assert_true(r == -EBADMSG || memcmp(back, src, seg) != 0);
	/* and a plain frame still decodes after a prefixed one */
	alone = cdc_compress(c, CDC_COMP_ZSTD, 3, src, seg, dst, cap);
	assert_int_equal(cdc_decompress(c, CDC_COMP_ZSTD, dst, (size_t)alone, back, seg), 0);
	assert_memory_equal(back, src, seg);
	assert_int_equal(cdc_history_window(CDC_COMP_ZSTD, -5), 0);
	assert_int_equal(cdc_history_window(CDC_COMP_LZMA, 6), 0);
	assert_true(cdc_history_window(CDC_COMP_ZSTD, 9) <= CDC_HISTORY_MAX);
	free(dst);
	free(back);
	cdc_comp_free(c);
	cdc_history_free(h);
}

static void test_seal_round_trip(void **state)
{
	(void)state;
	uint8_t key[CDC_KEY_LEN], key2[CDC_KEY_LEN], tag[CDC_TAG_LEN], aad[40];
	size_t len = 10000;
	uint8_t *msg = malloc(len), *buf = malloc(len + 16);

	for (int alg = CDC_AEAD_AES256GCM; alg <= CDC_AEAD_CHACHA20POLY1305; alg++) {
		test_fill_random(key, sizeof(key));
		test_fill_random(aad, sizeof(aad));
		test_fill_text(msg, len);
		struct cdc_sealer *s = cdc_sealer_new(alg, key);
		memcpy(buf, msg, len);
		assert_int_equal(cdc_seal(s, 7, aad, sizeof(aad), buf, len, tag), 0);
		assert_memory_not_equal(buf, msg, 64);
		uint8_t *sealed = malloc(len);
		memcpy(sealed, buf, len);
		assert_int_equal(cdc_open(s, 7, aad, sizeof(aad), buf, len, tag), 0);
		assert_memory_equal(buf, msg, len);
		/* wrong nonce, aad, tag, ciphertext or key: all rejected */
		memcpy(buf, sealed, len);
		assert_int_equal(cdc_open(s, 8, aad, sizeof(aad), buf, len, tag), -EBADMSG);
		memcpy(buf, sealed, len);
		aad[3] ^= 1;
		assert_int_equal(cdc_open(s, 7, aad, sizeof(aad), buf, len, tag), -EBADMSG);
		aad[3] ^= 1;
		memcpy(buf, sealed, len);
		buf[test_rand() % len] ^= 0x10;
		assert_int_equal(cdc_open(s, 7, aad, sizeof(aad), buf, len, tag), -EBADMSG);
		memcpy(buf, sealed, len);
		tag[0] ^= 1;
		assert_int_equal(cdc_open(s, 7, aad, sizeof(aad), buf, len, tag), -EBADMSG);
		tag[0] ^= 1;
		memcpy(key2, key, sizeof(key));
		key2[31] ^= 1;
		struct cdc_sealer *s2 = cdc_sealer_new(alg, key2);
		memcpy(buf, sealed, len);
		assert_int_equal(cdc_open(s2, 7, aad, sizeof(aad), buf, len, tag), -EBADMSG);
		cdc_sealer_free(s2);
		cdc_sealer_free(s);
		free(sealed);
	}
	/* HKDF separates keys by salt and label */
	uint8_t a[32], b[32], c[32];
	assert_int_equal(cdc_derive_key(key, "salt1", 5, "x", a, 32), 0);
	assert_int_equal(cdc_derive_key(key, "salt2", 5, "x", b, 32), 0);
	assert_int_equal(cdc_derive_key(key, "salt1", 5, "y", c, 32), 0);
	assert_memory_not_equal(a, b, 32);
	assert_memory_not_equal(a, c, 32);
	free(msg);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sha256_known_answer),
		cmocka_unit_test(test_sha256_blocks),
		cmocka_unit_test(test_zero_detect),
		cmocka_unit_test(test_delta_round_trip),
		cmocka_unit_test(test_delta_rejects_corrupt),
		cmocka_unit_test(test_compress_round_trip),
		cmocka_unit_test(test_history_prefix),
		cmocka_unit_test(test_seal_round_trip),
	};
	test_seed();
	return cmocka_run_group_tests_name("codecs", tests, NULL, NULL);
}

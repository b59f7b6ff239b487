/*
 * Block deltas against the base block at the same offset.
 *
 * xor: fixed size, relies on the compressor to squeeze the zero runs.
 * wdiff: runs of changed 8-byte words, (gap varint, count varint, words);
 *        cheap and tight for in-place edits, which dominate in VM memory.
 * zref: zstd with the base block as a prefix, for content that moved within
 *        the block (inserted bytes) where word comparison sees everything
 *        changed.
 */
#include "codecs.h"
#include "varint.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define WORDS (CDC_BLOCK_SIZE / 8)
/* A wdiff above this is unlikely to beat zref, so BEST tries both. */
#define WDIFF_GOOD_ENOUGH (CDC_BLOCK_SIZE / 8)
#define ZREF_LEVEL 3

/*
 * The build targets the baseline ISA DPDK needs (SSE4.2), so the binary runs
 * on any x86-64 host DPDK runs on; the hot loops also get an AVX2 clone that
 * the loader picks (ifunc) where the CPU has it, as ISA-L and zstd dispatch
 * their own. (clang builds, the fuzzers, keep one version.)
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HOT_LOOP __attribute__((target_clones("avx2", "default")))
#else
#define HOT_LOOP
#endif

struct cdc_delta_ctx {
	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	uint8_t scratch[CDC_DELTA_MAX];
	uint8_t alone[CDC_DELTA_MAX + 128];
};

struct cdc_delta_ctx *cdc_delta_new(void)
{
	struct cdc_delta_ctx *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->cctx = ZSTD_createCCtx();
	c->dctx = ZSTD_createDCtx();
	if (!c->cctx || !c->dctx) {
		cdc_delta_free(c);
		return NULL;
	}
	return c;
}

void cdc_delta_free(struct cdc_delta_ctx *c)
{
	if (!c)
		return;
	ZSTD_freeCCtx(c->cctx);
	ZSTD_freeDCtx(c->dctx);
	free(c);
}

HOT_LOOP static void xor_block(const uint8_t *a, const uint8_t *b, uint8_t *out)
{
	for (size_t i = 0; i < CDC_BLOCK_SIZE; i++)
		out[i] = a[i] ^ b[i];
}

HOT_LOOP static size_t wdiff_encode(const uint8_t *block, const uint8_t *base, uint8_t *out, size_t cap)
{
	const uint64_t *a = (const uint64_t *)block;
	const uint64_t *b = (const uint64_t *)base;
	size_t n = 0, prev_end = 0;

	for (size_t i = 0; i < WORDS;) {
		if (a[i] == b[i]) {
			i++;
			continue;
		}
		size_t start = i;
		/* Absorb single equal words between changes: a 2-byte run header
		 * costs more than carrying one word along. */
		while (i < WORDS && (a[i] != b[i] || (i + 1 < WORDS && a[i + 1] != b[i + 1])))
			i++;
		size_t count = i - start;
		if (n + 20 + count * 8 > cap)
			return 0;
		n += cdc_put_varint(out + n, start - prev_end);
		n += cdc_put_varint(out + n, count);
		memcpy(out + n, a + start, count * 8);
		n += count * 8;
		prev_end = i;
	}
	return n;
}

static int wdiff_decode(const uint8_t *in, size_t len, const uint8_t *base, uint8_t *block)
{
	const uint8_t *p = in, *end = in + len;
	uint64_t pos = 0;

	memcpy(block, base, CDC_BLOCK_SIZE);
	while (p < end) {
		uint64_t gap, count;

		if (cdc_get_varint(&p, end, &gap) || cdc_get_varint(&p, end, &count))
			return -EBADMSG;
		if (count == 0 || gap > WORDS || count > WORDS || pos + gap + count > WORDS)
			return -EBADMSG;
		pos += gap;
		if ((size_t)(end - p) < count * 8)
			return -EBADMSG;
		memcpy(block + pos * 8, p, count * 8);
		p += count * 8;
		pos += count;
	}
	return 0;
}

static size_t zref_encode(struct cdc_delta_ctx *c, const uint8_t *block, const uint8_t *base,
			  uint8_t *out, size_t cap)
{
	ZSTD_CCtx_reset(c->cctx, ZSTD_reset_session_only);
	ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel, ZREF_LEVEL);
	ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_contentSizeFlag, 0);
	ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_checksumFlag, 0);
	/* zstd shrinks the window to the 4 KiB input; it must span the prefix too */
	ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_windowLog, CDC_BLOCK_SHIFT + 1);
	ZSTD_CCtx_refPrefix(c->cctx, base, CDC_BLOCK_SIZE);
	size_t r = ZSTD_compress2(c->cctx, out, cap, block, CDC_BLOCK_SIZE);
	return ZSTD_isError(r) ? 0 : r;
}

static int zref_decode(struct cdc_delta_ctx *c, const uint8_t *in, size_t len, const uint8_t *base,
		       uint8_t *block)
{
	ZSTD_DCtx_reset(c->dctx, ZSTD_reset_session_only);
	ZSTD_DCtx_refPrefix(c->dctx, base, CDC_BLOCK_SIZE);
	size_t r = ZSTD_decompressDCtx(c->dctx, block, CDC_BLOCK_SIZE, in, len);
	return (ZSTD_isError(r) || r != CDC_BLOCK_SIZE) ? -EBADMSG : 0;
}

static size_t zstd_alone(struct cdc_delta_ctx *c, const uint8_t *block)
{
	size_t r = ZSTD_compressCCtx(c->cctx, c->alone, sizeof(c->alone), block, CDC_BLOCK_SIZE, 1);
	return ZSTD_isError(r) ? CDC_BLOCK_SIZE : r;
}

ssize_t cdc_delta_encode(struct cdc_delta_ctx *c, enum cdc_delta *kind, const uint8_t *block,
			 const uint8_t *base, uint8_t *out, size_t cap)
{
	/* Anything not smaller than the raw block is not worth a delta. */
	size_t limit = cap < CDC_BLOCK_SIZE ? cap : CDC_BLOCK_SIZE - 1;
	size_t n;

	switch (*kind) {
	case CDC_DELTA_NONE:
		return 0;
	case CDC_DELTA_XOR:
		if (cap < CDC_BLOCK_SIZE)
			return -ENOSPC;
		xor_block(block, base, out);
		return CDC_BLOCK_SIZE;
	case CDC_DELTA_WDIFF:
		return (ssize_t)wdiff_encode(block, base, out, limit);
	case CDC_DELTA_ZREF:
		return (ssize_t)zref_encode(c, block, base, out, limit);
	case CDC_DELTA_BEST:
		n = wdiff_encode(block, base, out, limit);
		if (n && n <= WDIFF_GOOD_ENOUGH) {
			*kind = CDC_DELTA_WDIFF;
			return (ssize_t)n;
		}
		size_t z = zref_encode(c, block, base, c->scratch,
				       n ? n - 1 : limit);
		/* A zref that barely beats the block compressed on its own means
		 * the base block is unrelated: the raw block compresses better in
		 * its segment, next to its neighbours. */
		if (z && z * 10 > zstd_alone(c, block) * 7)
			z = 0;
		if (z) {
			memcpy(out, c->scratch, z);
			*kind = CDC_DELTA_ZREF;
			return (ssize_t)z;
		}
		if (n) {
			*kind = CDC_DELTA_WDIFF;
			return (ssize_t)n;
		}
		*kind = CDC_DELTA_NONE;
		return 0;
	default:
		return -EINVAL;
	}
}

int cdc_delta_decode(struct cdc_delta_ctx *c, enum cdc_delta kind, const uint8_t *in, size_t len,
		     const uint8_t *base, uint8_t *block)
{
	switch (kind) {
	case CDC_DELTA_XOR:
		if (len != CDC_BLOCK_SIZE)
			return -EBADMSG;
		xor_block(in, base, block);
		return 0;
	case CDC_DELTA_WDIFF:
		return wdiff_decode(in, len, base, block);
	case CDC_DELTA_ZREF:
		return zref_decode(c, in, len, base, block);
	default:
		return -EBADMSG;
	}
}

static const char *const delta_names[CDC_DELTA_COUNT] = {
	[CDC_DELTA_NONE] = "none", [CDC_DELTA_XOR] = "xor", [CDC_DELTA_WDIFF] = "wdiff",
	[CDC_DELTA_ZREF] = "zref", [CDC_DELTA_BEST] = "best",
};

const char *cdc_delta_name(enum cdc_delta kind)
{
	return (unsigned)kind < CDC_DELTA_COUNT ? delta_names[kind] : "?";
}

int cdc_delta_parse(const char *name, enum cdc_delta *kind)
{
	for (int i = 0; i < CDC_DELTA_COUNT; i++)
		if (!strcmp(name, delta_names[i])) {
			*kind = (enum cdc_delta)i;
			return 0;
		}
	return -EINVAL;
}

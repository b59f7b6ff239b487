/*
 * Segment compressors behind one interface. Each context keeps the state
 * every codec needs (zstd contexts, ISA-L level buffers) so compressing a
 * ~1 MiB segment allocates nothing, except liblzma whose buffer API builds
 * its encoder per call; its cost is small next to LZMA's own work.
 */
#include "codecs.h"

#include <errno.h>
#include <isa-l/igzip_lib.h>
#include <lzma.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

/* LZMA's dictionary never needs to exceed a segment; this keeps the
 * decoder's memory bounded whatever level the encoder used. */
#define LZMA_DICT (2u << 20)

static const uint32_t igzip_level_buf_size[ISAL_DEF_MAX_LEVEL + 1] = {
	ISAL_DEF_LVL0_DEFAULT, ISAL_DEF_LVL1_DEFAULT, ISAL_DEF_LVL2_DEFAULT, ISAL_DEF_LVL3_DEFAULT,
};

struct cdc_comp_ctx {
	ZSTD_CCtx *zc;
	ZSTD_DCtx *zd;
	uint8_t *igzip_level_buf;
	struct isal_zstream igzip;
	struct inflate_state inflate;
};

struct cdc_comp_ctx *cdc_comp_new(void)
{
	struct cdc_comp_ctx *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	/* the encoders' state comes with the first compression: a reader never needs it */
	c->zd = ZSTD_createDCtx();
	if (!c->zd) {
		cdc_comp_free(c);
		return NULL;
	}
	return c;
}

void cdc_comp_free(struct cdc_comp_ctx *c)
{
	if (!c)
		return;
	ZSTD_freeCCtx(c->zc);
	ZSTD_freeDCtx(c->zd);
	free(c->igzip_level_buf);
	free(c);
}

bool cdc_comp_level_ok(enum cdc_comp comp, int level)
{
	switch (comp) {
	case CDC_COMP_NONE:
		return level == 0;
	case CDC_COMP_IGZIP:
		return level >= 0 && level <= ISAL_DEF_MAX_LEVEL;
	case CDC_COMP_ZSTD:
		return level >= -7 && level <= 19 && level != 0;
	case CDC_COMP_LZMA:
		return level >= 0 && level <= 9;
	default:
		return false;
	}
}

size_t cdc_comp_bound(enum cdc_comp comp, size_t len)
{
	switch (comp) {
	case CDC_COMP_IGZIP:
		return len + len / 16 + 1024;
	case CDC_COMP_ZSTD:
		return ZSTD_compressBound(len);
	case CDC_COMP_LZMA:
		return len + len / 16 + 1024;
	default:
		return len;
	}
}

static ssize_t igzip_compress(struct cdc_comp_ctx *c, int level, const void *src, size_t len,
			      void *dst, size_t cap)
{
	struct isal_zstream *s = &c->igzip;

	if (!c->igzip_level_buf && !(c->igzip_level_buf = malloc(ISAL_DEF_LVL3_DEFAULT)))
		return -ENOMEM;
	isal_deflate_stateless_init(s);
	s->level = (uint32_t)level;
	s->level_buf = c->igzip_level_buf;
	s->level_buf_size = igzip_level_buf_size[level];
	s->next_in = (uint8_t *)src;
	s->avail_in = (uint32_t)len;
	s->next_out = dst;
	s->avail_out = (uint32_t)cap;
	s->end_of_stream = 1;
	s->flush = NO_FLUSH;
	int r = isal_deflate_stateless(s);
	if (r == STATELESS_OVERFLOW)
		return -ENOSPC;
	if (r != COMP_OK)
		return -EIO;
	return (ssize_t)s->total_out;
}

static int igzip_decompress(struct cdc_comp_ctx *c, const void *src, size_t len, void *dst,
			    size_t raw_len)
{
	struct inflate_state *s = &c->inflate;

	isal_inflate_init(s);
	s->next_in = (uint8_t *)src;
	s->avail_in = (uint32_t)len;
	s->next_out = dst;
	s->avail_out = (uint32_t)raw_len;
	s->crc_flag = ISAL_DEFLATE;
	int r = isal_inflate_stateless(s);
	if (r != ISAL_DECOMP_OK || s->total_out != raw_len || s->avail_in != 0)
		return -EBADMSG;
	return 0;
}

static void lzma_filters(lzma_options_lzma *opt, lzma_filter f[2], int level)
{
	lzma_lzma_preset(opt, (uint32_t)level);
	if (opt->dict_size > LZMA_DICT)
		opt->dict_size = LZMA_DICT;
	f[0].id = LZMA_FILTER_LZMA2;
	f[0].options = opt;
	f[1].id = LZMA_VLI_UNKNOWN;
	f[1].options = NULL;
}

static ssize_t lzma_compress(int level, const void *src, size_t len, void *dst, size_t cap)
{
	lzma_options_lzma opt;
	lzma_filter f[2];
	size_t pos = 0;

	lzma_filters(&opt, f, level);
	lzma_ret r = lzma_raw_buffer_encode(f, NULL, src, len, dst, &pos, cap);
	if (r == LZMA_BUF_ERROR)
		return -ENOSPC;
	return r == LZMA_OK ? (ssize_t)pos : -EIO;
}

static int lzma_decompress(const void *src, size_t len, void *dst, size_t raw_len)
{
	lzma_options_lzma opt;
	lzma_filter f[2];
	size_t in_pos = 0, out_pos = 0;

	/* The decoder only reads dict_size from the options. */
	lzma_filters(&opt, f, 0);
	opt.dict_size = LZMA_DICT;
	lzma_ret r = lzma_raw_buffer_decode(f, NULL, src, &in_pos, len, dst, &out_pos, raw_len);
	if (r != LZMA_OK && r != LZMA_STREAM_END)
		return -EBADMSG;
	return (in_pos == len && out_pos == raw_len) ? 0 : -EBADMSG;
}

ssize_t cdc_compress(struct cdc_comp_ctx *c, enum cdc_comp comp, int level, const void *src,
		     size_t len, void *dst, size_t cap)
{
	size_t r;

	if (!cdc_comp_level_ok(comp, level))
		return -EINVAL;
	switch (comp) {
	case CDC_COMP_NONE:
		if (len > cap)
			return -ENOSPC;
		memcpy(dst, src, len);
		return (ssize_t)len;
	case CDC_COMP_IGZIP:
		return igzip_compress(c, level, src, len, dst, cap);
	case CDC_COMP_ZSTD:
		if (!c->zc && !(c->zc = ZSTD_createCCtx()))
			return -ENOMEM;
		r = ZSTD_compressCCtx(c->zc, dst, cap, src, len, level);
		if (ZSTD_isError(r))
			return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EIO;
		return (ssize_t)r;
	case CDC_COMP_LZMA:
		return lzma_compress(level, src, len, dst, cap);
	default:
		return -EINVAL;
	}
}

int cdc_decompress(struct cdc_comp_ctx *c, enum cdc_comp comp, const void *src, size_t len,
		   void *dst, size_t raw_len)
{
	size_t r;

	switch (comp) {
	case CDC_COMP_NONE:
		if (len != raw_len)
			return -EBADMSG;
		memcpy(dst, src, len);
		return 0;
	case CDC_COMP_IGZIP:
		return igzip_decompress(c, src, len, dst, raw_len);
	case CDC_COMP_ZSTD:
		/* no prefix left over from a failed prefixed call */
		ZSTD_DCtx_reset(c->zd, ZSTD_reset_session_and_parameters);
		r = ZSTD_decompressDCtx(c->zd, dst, raw_len, src, len);
		return (ZSTD_isError(r) || r != raw_len) ? -EBADMSG : 0;
	case CDC_COMP_LZMA:
		return lzma_decompress(src, len, dst, raw_len);
	default:
		return -EBADMSG;
	}
}

ssize_t cdc_compress_prefixed(struct cdc_comp_ctx *c, int level, const void *prefix, size_t plen,
			      const void *src, size_t len, void *dst, size_t cap)
{
	if (!cdc_comp_level_ok(CDC_COMP_ZSTD, level))
		return -EINVAL;
	if (!c->zc && !(c->zc = ZSTD_createCCtx()))
		return -ENOMEM;
	ZSTD_CCtx *z = c->zc;
	ZSTD_CCtx_reset(z, ZSTD_reset_session_and_parameters);
	size_t r = ZSTD_CCtx_setParameter(z, ZSTD_c_compressionLevel, level);
	if (!ZSTD_isError(r) && plen) {
		/* a window reaching the whole prefix; long-distance matching finds
		 * far repeats cheaply, except where the optimal parser is slow anyway */
		unsigned wlog = 10;
		while (wlog < 27 && ((size_t)1 << wlog) < plen + len)
			wlog++;
		r = ZSTD_CCtx_setParameter(z, ZSTD_c_windowLog, (int)wlog);
		if (!ZSTD_isError(r) && level <= 12)
			r = ZSTD_CCtx_setParameter(z, ZSTD_c_enableLongDistanceMatching, 1);
		if (!ZSTD_isError(r))
			r = ZSTD_CCtx_refPrefix(z, prefix, plen);
	}
	if (!ZSTD_isError(r))
		r = ZSTD_compress2(z, dst, cap, src, len);
	if (ZSTD_isError(r))
		return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EIO;
	return (ssize_t)r;
}

int cdc_decompress_prefixed(struct cdc_comp_ctx *c, const void *prefix, size_t plen,
			    const void *src, size_t len, void *dst, size_t raw_len)
{
	ZSTD_DCtx *z = c->zd;

	ZSTD_DCtx_reset(z, ZSTD_reset_session_and_parameters);
	size_t r = plen ? ZSTD_DCtx_refPrefix(z, prefix, plen) : 0;
	if (!ZSTD_isError(r))
		r = ZSTD_decompressDCtx(z, dst, raw_len, src, len);
	return (ZSTD_isError(r) || r != raw_len) ? -EBADMSG : 0;
}

static const char *const comp_names[CDC_COMP_COUNT] = {
	[CDC_COMP_NONE] = "none", [CDC_COMP_IGZIP] = "igzip", [CDC_COMP_ZSTD] = "zstd",
	[CDC_COMP_LZMA] = "lzma",
};

const char *cdc_comp_name(enum cdc_comp comp)
{
	return (unsigned)comp < CDC_COMP_COUNT ? comp_names[comp] : "?";
}

int cdc_comp_parse(const char *name, enum cdc_comp *comp)
{
	for (int i = 0; i < CDC_COMP_COUNT; i++)
		if (!strcmp(name, comp_names[i])) {
			*comp = (enum cdc_comp)i;
			return 0;
		}
	return -EINVAL;
}

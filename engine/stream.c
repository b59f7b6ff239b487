/*
 * Stream format v1: header, frame sealing and the one-pass reader that
 * applies a stream to a block store. The reader runs on one thread and uses
 * only codecs (no DPDK), so the fuzzer drives it directly.
 */
#include "stream.h"
#include "codecs/varint.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char magic[8] = { 'H', 'O', 'F', 'F', 'S', 'T', 'R', 'M' };

/* Highest block number a record may name: 2^40 blocks = 4 PiB. */
#define MAX_BLOCK (1ull << 40)

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

void eng_hex(const uint8_t *bytes, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 15];
	}
	out[2 * n] = 0;
}

static int derive(struct eng_stream *s, const uint8_t *key)
{
	static const uint8_t unkeyed[CDC_KEY_LEN];
	const uint8_t *k = key ? key : unkeyed;

	if (cdc_derive_key(k, s->salt, sizeof(s->salt), "handoff v1 key check", s->key_check,
			   sizeof(s->key_check)) ||
	    cdc_derive_key(k, s->salt, sizeof(s->salt), "handoff v1 segments", s->subkey,
			   sizeof(s->subkey)))
		return -EIO;
	return 0;
}

static void encode_header(struct eng_stream *s)
{
	uint8_t *h = s->header;

	memset(h, 0, ENG_HEADER_LEN);
	memcpy(h, magic, 8);
	cdc_put_le(h + 8, ENG_STREAM_VERSION, 2);
	cdc_put_le(h + 10, s->flags, 2);
	h[12] = s->aead;
	h[13] = CDC_BLOCK_SHIFT;
	cdc_put_le(h + 16, s->base_size, 8);
	memcpy(h + 24, s->salt, 32);
	memcpy(h + 56, s->base_id, 32);
	memcpy(h + 88, s->key_check, 16);
	cdc_sha256(h, ENG_HEADER_LEN, s->header_hash);
}

int eng_stream_init(struct eng_stream *s, const uint8_t *key, enum cdc_aead aead,
		    const uint8_t base_id[CDC_DIGEST_LEN], uint64_t base_size)
{
	memset(s, 0, sizeof(*s));
	s->flags = key ? ENG_STREAM_KEYED : 0;
	s->aead = (uint8_t)aead;
	s->base_size = base_size;
	memcpy(s->base_id, base_id, CDC_DIGEST_LEN);
	if (cdc_random(s->salt, sizeof(s->salt)) || derive(s, key))
		return -EIO;
	encode_header(s);
	return 0;
}

int eng_stream_parse(struct eng_stream *s, const uint8_t header[ENG_HEADER_LEN],
		     const uint8_t *key, char *err, size_t errlen)
{
	static const uint8_t zeros[24];
	uint8_t check[16];
	unsigned version;

	memset(s, 0, sizeof(*s));
	if (memcmp(header, magic, 8)) {
		set_err(err, errlen, "not a handoff stream (bad magic)");
		return -EBADMSG;
	}
	version = (unsigned)cdc_get_le(header + 8, 2);
	if (version != ENG_STREAM_VERSION) {
		set_err(err, errlen, "unsupported stream version %u (this engine reads version %d)",
			version, ENG_STREAM_VERSION);
		return -EPROTO;
	}
	s->flags = (uint16_t)cdc_get_le(header + 10, 2);
	s->aead = header[12];
	if ((s->flags & ~ENG_STREAM_KEYED) || header[13] != CDC_BLOCK_SHIFT ||
	    (s->aead != CDC_AEAD_AES256GCM && s->aead != CDC_AEAD_CHACHA20POLY1305) ||
	    header[14] || header[15] || memcmp(header + 104, zeros, sizeof(zeros))) {
		set_err(err, errlen, "corrupt stream header");
		return -EBADMSG;
	}
	if ((s->flags & ENG_STREAM_KEYED) && !key) {
		set_err(err, errlen, "stream is encrypted: pass the key with --key FILE");
		return -EACCES;
	}
	/* Refusing unkeyed streams when a key is expected stops a downgrade. */
	if (!(s->flags & ENG_STREAM_KEYED) && key) {
		set_err(err, errlen, "stream is not encrypted but --key was given; refusing it");
		return -EACCES;
	}
	s->base_size = cdc_get_le(header + 16, 8);
	memcpy(s->salt, header + 24, 32);
	memcpy(s->base_id, header + 56, 32);
	memcpy(check, header + 88, 16);
	if (derive(s, key))
		return -EIO;
	if (memcmp(check, s->key_check, sizeof(check))) {
		set_err(err, errlen, key ? "wrong key: the stream was sealed with another key"
					 : "corrupt stream header (key check failed)");
		return -EACCES;
	}
	memcpy(s->header, header, ENG_HEADER_LEN);
	cdc_sha256(s->header, ENG_HEADER_LEN, s->header_hash);
	return 0;
}

static void frame_aad(const struct eng_stream *s, uint64_t seq, const uint8_t *frame,
		      uint8_t aad[CDC_DIGEST_LEN + 8 + ENG_FRAME_HDR])
{
	memcpy(aad, s->header_hash, CDC_DIGEST_LEN);
	cdc_put_le(aad + CDC_DIGEST_LEN, seq, 8);
	memcpy(aad + CDC_DIGEST_LEN + 8, frame, ENG_FRAME_HDR);
}

size_t eng_frame_seal(const struct eng_stream *s, struct cdc_sealer *sealer, uint64_t seq,
		      enum eng_frame_type type, enum cdc_comp comp, int level, uint32_t raw_len,
		      uint8_t *frame, uint32_t payload_len)
{
	uint8_t aad[CDC_DIGEST_LEN + 8 + ENG_FRAME_HDR];

	cdc_put_le(frame, payload_len, 4);
	cdc_put_le(frame + 4, raw_len, 4);
	frame[8] = (uint8_t)type;
	frame[9] = (uint8_t)comp;
	frame[10] = (uint8_t)(int8_t)level;
	frame[11] = 0;
	frame_aad(s, seq, frame, aad);
	if (cdc_seal(sealer, seq, aad, sizeof(aad), frame + ENG_FRAME_HDR, payload_len,
		     frame + ENG_FRAME_HDR + payload_len))
		return 0;
	return ENG_FRAME_HDR + payload_len + CDC_TAG_LEN;
}

/* ---- reader ---------------------------------------------------------------- */

struct reader {
	const struct eng_patch_args *a;
	struct eng_stream s;
	struct cdc_sealer *sealer;
	struct cdc_comp_ctx *comp;
	struct cdc_delta_ctx *delta;
	uint8_t *frame, *raw;
	uint8_t block[CDC_BLOCK_SIZE] __attribute__((aligned(64)));
	uint8_t base_block[CDC_BLOCK_SIZE] __attribute__((aligned(64)));
	struct eng_patch_stats *st;
	uint64_t max_block_plus1; /* blocks written so far bound DUP references */
	char *err;
	size_t errlen;
};

/* 1: got len bytes, 0: clean end before any byte, <0: error / truncation. */
static int read_exact(struct reader *r, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = r->a->src->read(r->a->src->ctx, (uint8_t *)buf + done, len - done);
		if (n < 0) {
			set_err(r->err, r->errlen, "read error: %s", strerror((int)-n));
			return (int)n;
		}
		if (n == 0)
			return done ? -EPIPE : 0;
		done += (size_t)n;
	}
	r->st->wire_bytes += len;
	return 1;
}

static int apply_record(struct reader *r, const uint8_t **pp, const uint8_t *end,
			int64_t *prev)
{
	const uint8_t *p = *pp;
	uint64_t gap, ref, len;
	uint8_t op = *p++;
	int ret;

	if (op == ENG_OP_RESET) {
		*prev = -1;
		*pp = p;
		return 0;
	}
	if (cdc_get_varint(&p, end, &gap))
		return -EBADMSG;
	/* zigzag: records may go backwards once page order is randomized */
	int64_t delta = (int64_t)(gap >> 1) ^ -(int64_t)(gap & 1);
	int64_t blk = *prev + 1 + delta;
	if (blk < 0 || (uint64_t)blk >= MAX_BLOCK)
		return -EBADMSG;
	uint64_t block = (uint64_t)blk;
	*prev = blk;

	switch (op) {
	case ENG_OP_ZERO:
		memset(r->block, 0, CDC_BLOCK_SIZE);
		break;
	case ENG_OP_BASE:
		if (p >= end || *p++ != 0 || cdc_get_varint(&p, end, &ref) ||
		    ref >= (r->a->base_size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE)
			return -EBADMSG;
		if ((ret = r->a->base->read(r->a->base->ctx, ref, r->block)))
			return ret;
		break;
	case ENG_OP_DUP:
		if (cdc_get_varint(&p, end, &ref) || ref >= r->max_block_plus1 || ref == block)
			return -EBADMSG;
		if ((ret = r->a->out->read(r->a->out->ctx, ref, r->block)))
			return ret;
		break;
	case ENG_OP_RAW:
		if ((size_t)(end - p) < CDC_BLOCK_SIZE)
			return -EBADMSG;
		memcpy(r->block, p, CDC_BLOCK_SIZE);
		p += CDC_BLOCK_SIZE;
		break;
	case ENG_OP_XOR:
	case ENG_OP_WDIFF:
	case ENG_OP_ZREF:
		if (op == ENG_OP_XOR)
			len = CDC_BLOCK_SIZE;
		else if (cdc_get_varint(&p, end, &len))
			return -EBADMSG;
		if (len > (uint64_t)(end - p) || len > CDC_DELTA_MAX ||
		    block * CDC_BLOCK_SIZE >= r->a->base_size)
			return -EBADMSG;
		if ((ret = r->a->base->read(r->a->base->ctx, block, r->base_block)))
			return ret;
		enum cdc_delta kind = op == ENG_OP_XOR     ? CDC_DELTA_XOR
				      : op == ENG_OP_WDIFF ? CDC_DELTA_WDIFF
							   : CDC_DELTA_ZREF;
		if (cdc_delta_decode(r->delta, kind, p, len, r->base_block, r->block))
			return -EBADMSG;
		p += len;
		break;
	default:
		return -EBADMSG;
	}
	if ((ret = r->a->out->write(r->a->out->ctx, block, r->block)))
		return ret;
	if (block + 1 > r->max_block_plus1)
		r->max_block_plus1 = block + 1;
	r->st->records++;
	*pp = p;
	return 0;
}

static int apply_segment(struct reader *r, const uint8_t *raw, size_t len, uint64_t seq)
{
	const uint8_t *p = raw, *end = raw + len;
	int64_t prev = -1;

	while (p < end) {
		int ret = apply_record(r, &p, end, &prev);
		if (ret == -EBADMSG) {
			set_err(r->err, r->errlen, "segment %llu: malformed record",
				(unsigned long long)seq);
			return ret;
		}
		if (ret) {
			set_err(r->err, r->errlen, "segment %llu: cannot apply record: %s",
				(unsigned long long)seq, strerror(-ret));
			return ret;
		}
	}
	return 0;
}

static int verify_result(struct reader *r, const uint8_t *trailer)
{
	uint64_t size = cdc_get_le(trailer, 8), nblocks = cdc_get_le(trailer + 8, 8);
	uint64_t segments = cdc_get_le(trailer + 16, 8);
	struct cdc_hasher *h = cdc_hasher_new();
	struct cdc_image_digest *d = cdc_image_digest_new();
	uint8_t digest[CDC_DIGEST_LEN];
	int ret = -ENOMEM;

	if (!h || !d)
		goto out;
	ret = -EBADMSG;
	if (nblocks != (size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE || nblocks > MAX_BLOCK ||
	    r->max_block_plus1 > nblocks) {
		set_err(r->err, r->errlen, "corrupt trailer: sizes do not match the records");
		goto out;
	}
	if (segments != r->st->segments) {
		set_err(r->err, r->errlen, "stream lost segments: trailer counts %llu, read %llu",
			(unsigned long long)segments, (unsigned long long)r->st->segments);
		goto out;
	}
	ret = r->a->out->resize(r->a->out->ctx, size);
	if (ret) {
		set_err(r->err, r->errlen, "cannot size result to %llu bytes: %s",
			(unsigned long long)size, strerror(-ret));
		goto out;
	}
	for (uint64_t b = 0; b < nblocks; b++) {
		ret = r->a->out->read(r->a->out->ctx, b, r->block);
		if (ret) {
			set_err(r->err, r->errlen, "cannot read back result: %s", strerror(-ret));
			goto out;
		}
		if (cdc_is_zero(r->block, CDC_BLOCK_SIZE))
			cdc_image_digest_add(d, cdc_zero_digest());
		else {
			cdc_hash_block(h, r->block, digest);
			cdc_image_digest_add(d, digest);
		}
	}
	cdc_image_digest_final(d, size, digest);
	if (memcmp(digest, trailer + 24, CDC_DIGEST_LEN)) {
		set_err(r->err, r->errlen, "result digest does not match the stream's: base or result corrupted");
		ret = -EBADMSG;
		goto out;
	}
	r->st->target_size = size;
	r->st->nblocks = nblocks;
	ret = 0;
out:
	cdc_image_digest_free(d);
	cdc_hasher_free(h);
	return ret;
}

static int read_frames(struct reader *r)
{
	uint8_t aad[CDC_DIGEST_LEN + 8 + ENG_FRAME_HDR];

	for (uint64_t seq = 0;; seq++) {
		int got = read_exact(r, r->frame, ENG_FRAME_HDR);
		if (got <= 0) {
			if (got == 0 || got == -EPIPE)
				set_err(r->err, r->errlen, "truncated stream: no end-of-stream trailer after %llu segments",
					(unsigned long long)seq);
			return got ? got : -EPIPE;
		}
		uint32_t len = (uint32_t)cdc_get_le(r->frame, 4);
		uint32_t raw_len = (uint32_t)cdc_get_le(r->frame + 4, 4);
		uint8_t type = r->frame[8], comp = r->frame[9];
		if (len > ENG_FRAME_MAX - ENG_FRAME_HDR - CDC_TAG_LEN || raw_len > ENG_SEG_RAW_MAX) {
			set_err(r->err, r->errlen, "segment %llu: corrupt frame header", (unsigned long long)seq);
			return -EBADMSG;
		}
		got = read_exact(r, r->frame + ENG_FRAME_HDR, (size_t)len + CDC_TAG_LEN);
		if (got <= 0) {
			if (got == 0 || got == -EPIPE)
				set_err(r->err, r->errlen, "truncated stream: ended inside segment %llu",
					(unsigned long long)seq);
			return got ? got : -EPIPE;
		}
		frame_aad(&r->s, seq, r->frame, aad);
		if (cdc_open(r->sealer, seq, aad, sizeof(aad), r->frame + ENG_FRAME_HDR, len,
			     r->frame + ENG_FRAME_HDR + len)) {
			set_err(r->err, r->errlen, "segment %llu failed authentication: stream corrupted or tampered with",
				(unsigned long long)seq);
			return -EBADMSG;
		}
		if (r->frame[11] || comp >= CDC_COMP_COUNT ||
		    cdc_decompress(r->comp, (enum cdc_comp)comp, r->frame + ENG_FRAME_HDR, len, r->raw,
				   raw_len)) {
			set_err(r->err, r->errlen, "segment %llu: corrupt compressed data", (unsigned long long)seq);
			return -EBADMSG;
		}
		if (type == ENG_FRAME_TRAILER) {
			if (raw_len != ENG_TRAILER_LEN) {
				set_err(r->err, r->errlen, "corrupt trailer");
				return -EBADMSG;
			}
			uint8_t extra;
			if (r->a->src->read(r->a->src->ctx, &extra, 1) != 0) {
				set_err(r->err, r->errlen, "unexpected data after the end of the stream");
				return -EBADMSG;
			}
			return verify_result(r, r->raw);
		}
		if (type != ENG_FRAME_DATA) {
			set_err(r->err, r->errlen, "segment %llu: unknown frame type %u", (unsigned long long)seq, type);
			return -EBADMSG;
		}
		int ret = apply_segment(r, r->raw, raw_len, seq);
		if (ret)
			return ret;
		r->st->segments++;
		if (r->a->progress)
			r->a->progress(r->a->progress_ctx, r->st);
	}
}

int eng_patch_stream(const struct eng_patch_args *a, struct eng_patch_stats *st, char *err,
		     size_t errlen)
{
	struct reader *r = aligned_alloc(64, sizeof(*r));
	uint8_t header[ENG_HEADER_LEN];
	char want[17], have[17];
	int ret = -ENOMEM;

	memset(st, 0, sizeof(*st));
	if (!r) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	memset(r, 0, sizeof(*r));
	r->a = a;
	r->st = st;
	r->err = err;
	r->errlen = errlen;
	r->frame = malloc(ENG_FRAME_MAX);
	r->raw = malloc(ENG_SEG_RAW_MAX);
	r->comp = cdc_comp_new();
	r->delta = cdc_delta_new();
	if (!r->frame || !r->raw || !r->comp || !r->delta) {
		set_err(err, errlen, "out of memory");
		goto out;
	}
	ret = read_exact(r, header, sizeof(header));
	if (ret <= 0) {
		if (ret == 0 || ret == -EPIPE)
			set_err(err, errlen, "truncated stream: header incomplete");
		ret = ret ? ret : -EPIPE;
		goto out;
	}
	ret = eng_stream_parse(&r->s, header, a->key, err, errlen);
	if (ret)
		goto out;
	if (memcmp(r->s.base_id, a->base_id, CDC_DIGEST_LEN) || r->s.base_size != a->base_size) {
		eng_hex(r->s.base_id, 8, want);
		eng_hex(a->base_id, 8, have);
		set_err(err, errlen, "wrong base: the stream was made against base %s…, this base is %s…",
			want, have);
		ret = -EINVAL;
		goto out;
	}
	r->sealer = cdc_sealer_new((enum cdc_aead)r->s.aead, r->s.subkey);
	if (!r->sealer) {
		set_err(err, errlen, "cannot set up decryption");
		ret = -EIO;
		goto out;
	}
	ret = read_frames(r);
out:
	cdc_sealer_free(r->sealer);
	cdc_delta_free(r->delta);
	cdc_comp_free(r->comp);
	free(r->raw);
	free(r->frame);
	free(r);
	return ret;
}

/*
 * Stream format v2: header, frame sealing and the one-pass reader that
 * applies a stream to a block store. The reader runs on one thread and uses
 * only codecs (no DPDK), so the fuzzer drives it directly.
 */
#include "stream.h"
#include "codecs/varint.h"
#include "engine/errbuf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static const char magic[8] = { 'H', 'O', 'F', 'F', 'S', 'T', 'R', 'M' };

void eng_hex(const uint8_t *bytes, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 15];
	}
	out[2 * n] = 0;
}

int eng_stream_derive(const struct eng_stream *s, const uint8_t *key, const char *label, uint8_t *out,
		      size_t outlen)
{
	static const uint8_t unkeyed[CDC_KEY_LEN];
	uint8_t salt[sizeof(s->salt) + sizeof(s->session)];

	/* the writer's salt and the reader's session value: both ends make every key fresh */
	memcpy(salt, s->salt, sizeof(s->salt));
	memcpy(salt + sizeof(s->salt), s->session, sizeof(s->session));
	return cdc_derive_key(key ? key : unkeyed, salt, sizeof(salt), label, out, outlen) ? -EIO : 0;
}

static int derive(struct eng_stream *s, const uint8_t *key)
{
	if (eng_stream_derive(s, key, "handoff v4 key check", s->key_check, sizeof(s->key_check)) ||
	    eng_stream_derive(s, key, "handoff v4 segments", s->subkey, sizeof(s->subkey)))
		return -EIO;
	return 0;
}

static void put_object_table(const struct eng_stream *s, uint8_t *q)
{
	for (unsigned i = 0; i < s->nobj; i++, q += ENG_OBJECT_DESC_LEN) {
		cdc_put_le(q, s->obj[i].base_size, 8);
		cdc_put_le(q + 8, s->obj[i].capacity, 8);
		memcpy(q + 16, s->obj[i].base_id, CDC_DIGEST_LEN);
	}
}

/* One identity for all bases: SHA-256 over each object's base size and digest. */
static void combined_base_id(const struct eng_stream *s, uint8_t out[CDC_DIGEST_LEN])
{
	uint8_t buf[ENG_MAX_OBJECTS * (8 + CDC_DIGEST_LEN)];
	size_t n = 0;

	for (unsigned i = 0; i < s->nobj; i++) {
		cdc_put_le(buf + n, s->obj[i].base_size, 8);
		memcpy(buf + n + 8, s->obj[i].base_id, CDC_DIGEST_LEN);
		n += 8 + CDC_DIGEST_LEN;
	}
	cdc_sha256(buf, n, out);
}

static void encode_header(struct eng_stream *s)
{
	uint8_t *h = s->header;

	memset(h, 0, ENG_HEADER_MAX);
	memcpy(h, magic, 8);
	cdc_put_le(h + 8, ENG_STREAM_VERSION, 2);
	cdc_put_le(h + 10, s->flags, 2);
	h[12] = s->aead;
	h[13] = CDC_BLOCK_SHIFT;
	h[14] = (uint8_t)s->nobj;
	h[15] = s->kind;
	memcpy(h + 24, s->salt, 32);
	memcpy(h + 56, s->base_id, 32);
	memcpy(h + 88, s->key_check, 16);
	put_object_table(s, h + ENG_HEADER_LEN);
	s->header_len = ENG_HEADER_LEN + (size_t)s->nobj * ENG_OBJECT_DESC_LEN;
	cdc_sha256(h, s->header_len, s->header_hash);
}

int eng_stream_init(struct eng_stream *s, const uint8_t *key, const uint8_t *session, enum cdc_aead aead,
		    enum eng_stream_kind kind, unsigned nobj, const struct eng_object_desc *obj)
{
	memset(s, 0, sizeof(*s));
	if (nobj == 0 || nobj > ENG_MAX_OBJECTS)
		return -EINVAL;
	if (session)
		memcpy(s->session, session, sizeof(s->session));
	s->flags = key ? ENG_STREAM_KEYED : 0;
	s->aead = (uint8_t)aead;
	s->kind = (uint8_t)kind;
	s->nobj = nobj;
	memcpy(s->obj, obj, nobj * sizeof(*obj));
	combined_base_id(s, s->base_id);
	if (cdc_random(s->salt, sizeof(s->salt)) || derive(s, key))
		return -EIO;
	encode_header(s);
	return 0;
}

ssize_t eng_stream_header_len(const uint8_t fixed[ENG_HEADER_LEN], char *err, size_t errlen)
{
	unsigned version;

	if (memcmp(fixed, magic, 8)) {
		eng_set_err(err, errlen, "not a handoff stream (bad magic)");
		return -EBADMSG;
	}
	version = (unsigned)cdc_get_le(fixed + 8, 2);
	if (version != ENG_STREAM_VERSION) {
		eng_set_err(err, errlen, "unsupported stream version %u (this engine reads version %d)",
			version, ENG_STREAM_VERSION);
		return -EPROTO;
	}
	if (fixed[14] == 0 || fixed[14] > ENG_MAX_OBJECTS) {
		eng_set_err(err, errlen, "corrupt stream header");
		return -EBADMSG;
	}
	return ENG_HEADER_LEN + (ssize_t)fixed[14] * ENG_OBJECT_DESC_LEN;
}

int eng_stream_parse(struct eng_stream *s, const uint8_t *header, size_t len, const uint8_t *key,
		     const uint8_t *session, char *err, size_t errlen)
{
	static const uint8_t zeros[24];
	uint8_t check[16], id[CDC_DIGEST_LEN];
	ssize_t want;

	memset(s, 0, sizeof(*s));
	if (session)
		memcpy(s->session, session, sizeof(s->session));
	if (len < ENG_HEADER_LEN || (want = eng_stream_header_len(header, err, errlen)) < 0)
		return len < ENG_HEADER_LEN ? (eng_set_err(err, errlen, "truncated stream header"), -EBADMSG)
					    : (int)want;
	if ((size_t)want != len) {
		eng_set_err(err, errlen, "truncated stream header");
		return -EBADMSG;
	}
	s->flags = (uint16_t)cdc_get_le(header + 10, 2);
	s->aead = header[12];
	s->nobj = header[14];
	s->kind = header[15];
	if ((s->flags & ~ENG_STREAM_KEYED) || header[13] != CDC_BLOCK_SHIFT ||
	    (s->aead != CDC_AEAD_AES256GCM && s->aead != CDC_AEAD_CHACHA20POLY1305) ||
	    (s->kind != ENG_KIND_IMAGE && s->kind != ENG_KIND_VM) ||
	    memcmp(header + 16, zeros, 8) || memcmp(header + 104, zeros, sizeof(zeros))) {
		eng_set_err(err, errlen, "corrupt stream header");
		return -EBADMSG;
	}
	if ((s->flags & ENG_STREAM_KEYED) && !key) {
		eng_set_err(err, errlen, "stream is encrypted: pass the key with --key FILE");
		return -EACCES;
	}
	/* Refusing unkeyed streams when a key is expected stops a downgrade. */
	if (!(s->flags & ENG_STREAM_KEYED) && key) {
		eng_set_err(err, errlen, "stream is not encrypted but --key was given; refusing it");
		return -EACCES;
	}
	for (unsigned i = 0; i < s->nobj; i++) {
		const uint8_t *q = header + ENG_HEADER_LEN + i * ENG_OBJECT_DESC_LEN;
		s->obj[i].base_size = cdc_get_le(q, 8);
		s->obj[i].capacity = cdc_get_le(q + 8, 8);
		memcpy(s->obj[i].base_id, q + 16, CDC_DIGEST_LEN);
		if (s->obj[i].capacity > ENG_MAX_BLOCK * CDC_BLOCK_SIZE) {
			eng_set_err(err, errlen, "corrupt stream header");
			return -EBADMSG;
		}
	}
	memcpy(s->salt, header + 24, 32);
	memcpy(s->base_id, header + 56, 32);
	memcpy(check, header + 88, 16);
	combined_base_id(s, id);
	if (memcmp(id, s->base_id, CDC_DIGEST_LEN)) {
		eng_set_err(err, errlen, "corrupt stream header");
		return -EBADMSG;
	}
	if (derive(s, key))
		return -EIO;
	if (memcmp(check, s->key_check, sizeof(check))) {
		if (session) /* the live case: a recorded stream was sealed for another session */
			eng_set_err(err, errlen, key ? "key check failed: the sender has another key, or replays a "
						       "stream recorded from another session"
						     : "corrupt or replayed stream (key check failed)");
		else
			eng_set_err(err, errlen, key ? "wrong key: the stream was sealed with another key"
						     : "corrupt stream header (key check failed)");
		return -EACCES;
	}
	memcpy(s->header, header, len);
	s->header_len = len;
	cdc_sha256(s->header, len, s->header_hash);
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
		      enum eng_frame_type type, enum cdc_comp comp, int level, unsigned history_mib,
		      uint32_t raw_len, uint8_t *frame, uint32_t payload_len)
{
	uint8_t aad[CDC_DIGEST_LEN + 8 + ENG_FRAME_HDR];

	cdc_put_le(frame, payload_len, 4);
	cdc_put_le(frame + 4, raw_len, 4);
	frame[8] = (uint8_t)type;
	frame[9] = (uint8_t)comp;
	frame[10] = (uint8_t)(int8_t)level;
	frame[11] = (uint8_t)history_mib;
	frame_aad(s, seq, frame, aad);
	if (cdc_seal(sealer, seq, aad, sizeof(aad), frame + ENG_FRAME_HDR, payload_len,
		     frame + ENG_FRAME_HDR + payload_len))
		return 0;
	return ENG_FRAME_HDR + payload_len + CDC_TAG_LEN;
}

/* ---- reader ---------------------------------------------------------------- */

/* Per object: the digest of every result block as records are applied. */
struct obj_state {
	const struct eng_patch_object *o;
	uint64_t capacity_blocks, base_blocks;
	uint64_t written_end; /* one past the highest block written */
	/* all-zero entry = never written: the base block's digest (or zero past the base) */
	uint8_t (*digest)[CDC_DIGEST_LEN];
	size_t map_len;
};

struct eng_patcher {
	const struct eng_patch_args *a;
	/* the stream being read: its source, session value and keys */
	const struct eng_source *src;
	const uint8_t *session;
	bool cut; /* the source failed or ended early: a link cut, not bad data */
	uint64_t stream_segments;
	bool objects_mapped;
	uint64_t obj_capacity[ENG_MAX_OBJECTS];
	struct eng_stream s;
	struct cdc_sealer *sealer;
	struct cdc_comp_ctx *comp;
	struct cdc_delta_ctx *delta;
	struct cdc_hasher *hasher;
	struct obj_state obj[ENG_MAX_OBJECTS];
	/* grown to the largest frame / non-data segment seen (most streams never need the maximum) */
	uint8_t *frame, *raw;
	size_t frame_cap, raw_cap;
	struct cdc_history *history; /* data segments decode into it, in order */
	uint64_t history_end;
	uint8_t block[CDC_BLOCK_SIZE] __attribute__((aligned(64)));
	uint8_t base_block[CDC_BLOCK_SIZE] __attribute__((aligned(64)));
	struct eng_patch_stats *st;
	char *err;
	size_t errlen;
};

static const uint8_t unset_digest[CDC_DIGEST_LEN];

static bool has_base(const struct obj_state *o, uint64_t blk)
{
	return blk < o->base_blocks && (!o->o->have || (o->o->have[blk >> 3] >> (blk & 7) & 1));
}

/* A result block's digest; NULL for a base block this end lacks that no record wrote. */
static const uint8_t *block_digest(const struct obj_state *o, uint64_t blk)
{
	if (memcmp(o->digest[blk], unset_digest, CDC_DIGEST_LEN))
		return o->digest[blk];
	if (blk >= o->base_blocks)
		return cdc_zero_digest();
	return has_base(o, blk) ? o->o->base_digests + blk * CDC_DIGEST_LEN : NULL;
}

/* 1: got len bytes, 0: clean end before any byte, <0: error / truncation. */
static int read_exact(struct eng_patcher *r, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = r->src->read(r->src->ctx, (uint8_t *)buf + done, len - done);
		if (n < 0) {
			eng_set_err(r->err, r->errlen, "read error: %s", strerror((int)-n));
			r->cut = true;
			return (int)n;
		}
		if (n == 0) {
			r->cut = true;
			return done ? -EPIPE : 0;
		}
		done += (size_t)n;
	}
	r->st->wire_bytes += len;
	return 1;
}

/*
 * Decode one record into r->block; *digest gets the block's digest when it is
 * known without hashing (NULL: hash the block).
 */
static int decode_record(struct eng_patcher *r, uint8_t op, const uint8_t **pp, const uint8_t *end,
			 struct obj_state *o, uint64_t block, const uint8_t **digest)
{
	const uint8_t *p = *pp;
	uint64_t ref, len;
	int ret;

	*digest = NULL;
	switch (op) {
	case ENG_OP_ZERO:
		memset(r->block, 0, CDC_BLOCK_SIZE);
		*digest = cdc_zero_digest();
		break;
	case ENG_OP_BASE: {
		if (p >= end || *p >= r->s.nobj)
			return -EBADMSG;
		struct obj_state *src = &r->obj[*p++];
		if (cdc_get_varint(&p, end, &ref) || ref >= src->base_blocks)
			return -EBADMSG;
		if (!has_base(src, ref))
			return -ENODATA;
		if ((ret = src->o->base->read(src->o->base->ctx, ref, r->block)))
			return ret;
		*digest = src->o->base_digests + ref * CDC_DIGEST_LEN;
		break;
	}
	case ENG_OP_DUP: {
		if (p >= end || *p >= r->s.nobj)
			return -EBADMSG;
		struct obj_state *src = &r->obj[*p++];
		if (cdc_get_varint(&p, end, &ref) || ref >= src->capacity_blocks ||
		    (src == o && ref == block))
			return -EBADMSG;
		if (!(*digest = block_digest(src, ref)))
			return -ENODATA;
		if ((ret = src->o->out->read(src->o->out->ctx, ref, r->block)))
			return ret;
		break;
	}
	case ENG_OP_RAW:
		if ((size_t)(end - p) < CDC_BLOCK_SIZE)
			return -EBADMSG;
		memcpy(r->block, p, CDC_BLOCK_SIZE);
		p += CDC_BLOCK_SIZE;
		break;
	case ENG_OP_XOR:
	case ENG_OP_WDIFF:
	case ENG_OP_ZREF:
	case ENG_OP_CUR: {
		bool current = op == ENG_OP_CUR;
		if (current) { /* the delta's own op follows */
			if (p >= end || (*p != ENG_OP_XOR && *p != ENG_OP_WDIFF && *p != ENG_OP_ZREF))
				return -EBADMSG;
			op = *p++;
		}
		if (op == ENG_OP_XOR)
			len = CDC_BLOCK_SIZE;
		else if (cdc_get_varint(&p, end, &len))
			return -EBADMSG;
		if (len > (uint64_t)(end - p) || len > CDC_DELTA_MAX || (!current && block >= o->base_blocks))
			return -EBADMSG;
		/* CUR: against what a record (or the base) left in this block */
		const struct eng_store *from = current ? o->o->out : o->o->base;
		if (current ? !block_digest(o, block) : !has_base(o, block))
			return -ENODATA;
		if ((ret = from->read(from->ctx, block, r->base_block)))
			return ret;
		enum cdc_delta kind = op == ENG_OP_XOR     ? CDC_DELTA_XOR
				      : op == ENG_OP_WDIFF ? CDC_DELTA_WDIFF
							   : CDC_DELTA_ZREF;
		if (cdc_delta_decode(r->delta, kind, p, len, r->base_block, r->block))
			return -EBADMSG;
		p += len;
		break;
	}
	default:
		return -EBADMSG;
	}
	*pp = p;
	return 0;
}

static int apply_record(struct eng_patcher *r, const uint8_t **pp, const uint8_t *end, unsigned *cur,
			int64_t *prev)
{
	const uint8_t *p = *pp, *digest;
	uint8_t computed[CDC_DIGEST_LEN];
	uint64_t gap;
	uint8_t op = *p++;
	int ret;

	if (op == ENG_OP_RESET || op == ENG_OP_OBJECT) {
		if (op == ENG_OP_OBJECT && (p >= end || *p >= r->s.nobj))
			return -EBADMSG;
		*cur = op == ENG_OP_OBJECT ? *p++ : 0;
		*prev = -1;
		*pp = p;
		return 0;
	}
	struct obj_state *o = &r->obj[*cur];
	if (cdc_get_varint(&p, end, &gap))
		return -EBADMSG;
	/* zigzag: records may go backwards once page order is randomized */
	int64_t delta = (int64_t)(gap >> 1) ^ -(int64_t)(gap & 1);
	int64_t blk = *prev + 1 + delta;
	if (blk < 0 || (uint64_t)blk >= o->capacity_blocks)
		return -EBADMSG;
	uint64_t block = (uint64_t)blk;
	*prev = blk;
	if ((ret = decode_record(r, op, &p, end, o, block, &digest)))
		return ret;
	if (!digest) {
		cdc_hash_block(r->hasher, r->block, computed);
		digest = computed;
	}
	if ((ret = o->o->out->write(o->o->out->ctx, block, r->block)))
		return ret;
	memmove(o->digest[block], digest, CDC_DIGEST_LEN);
	if (block + 1 > o->written_end)
		o->written_end = block + 1;
	r->st->records++;
	*pp = p;
	return 0;
}

static int apply_segment(struct eng_patcher *r, const uint8_t *raw, size_t len, uint64_t seq)
{
	const uint8_t *p = raw, *end = raw + len;
	unsigned cur = 0;
	int64_t prev = -1;

	while (p < end) {
		int ret = apply_record(r, &p, end, &cur, &prev);
		if (ret == -EBADMSG) {
			eng_set_err(r->err, r->errlen, "segment %llu: malformed record",
				(unsigned long long)seq);
			return ret;
		}
		if (ret == -ENODATA) {
			eng_set_err(r->err, r->errlen, "segment %llu: a record builds on a base block this end lacks",
				(unsigned long long)seq);
			return -EBADMSG;
		}
		if (ret) {
			eng_set_err(r->err, r->errlen, "segment %llu: cannot apply record: %s",
				(unsigned long long)seq, strerror(-ret));
			return ret;
		}
	}
	return 0;
}

static int verify_result(struct eng_patcher *r, const uint8_t *trailer)
{
	uint64_t segments = cdc_get_le(trailer, 8);

	if (segments != r->stream_segments) {
		eng_set_err(r->err, r->errlen, "stream lost segments: trailer counts %llu, read %llu",
			(unsigned long long)segments, (unsigned long long)r->stream_segments);
		return -EBADMSG;
	}
	for (unsigned i = 0; i < r->s.nobj; i++) {
		const uint8_t *t = trailer + 8 + i * (8 + CDC_DIGEST_LEN);
		struct obj_state *o = &r->obj[i];
		uint64_t size = cdc_get_le(t, 8), nblocks = (size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
		if (nblocks > o->capacity_blocks || o->written_end > nblocks) {
			eng_set_err(r->err, r->errlen, "corrupt trailer: %s size does not match the records",
				o->o->name);
			return -EBADMSG;
		}
		int ret = o->o->out->resize(o->o->out->ctx, size);
		if (ret) {
			eng_set_err(r->err, r->errlen, "cannot size %s to %llu bytes: %s", o->o->name,
				(unsigned long long)size, strerror(-ret));
			return ret;
		}
		struct cdc_image_digest *d = cdc_image_digest_new();
		if (!d) {
			eng_set_err(r->err, r->errlen, "out of memory");
			return -ENOMEM;
		}
		/* A base block cut by a smaller result no longer has the base's digest. */
		for (uint64_t b = 0; b < nblocks; b++) {
			if (!block_digest(o, b)) {
				cdc_image_digest_free(d);
				eng_set_err(r->err, r->errlen, "%s block %llu never came, and this end lacks its base",
					o->o->name, (unsigned long long)b);
				return -EBADMSG;
			}
			if (b + 1 == nblocks && size % CDC_BLOCK_SIZE && b < o->base_blocks &&
			    !memcmp(o->digest[b], unset_digest, CDC_DIGEST_LEN) &&
			    size < o->o->base_size) {
				if ((ret = o->o->out->read(o->o->out->ctx, b, r->block))) {
					cdc_image_digest_free(d);
					eng_set_err(r->err, r->errlen, "cannot read back %s: %s", o->o->name,
						strerror(-ret));
					return ret;
				}
				cdc_hash_block(r->hasher, r->block, o->digest[b]);
			}
			cdc_image_digest_add(d, block_digest(o, b));
		}
		cdc_image_digest_final(d, size, r->st->digest[i]);
		cdc_image_digest_free(d);
		r->st->size[i] = size;
		if (memcmp(r->st->digest[i], t + 8, CDC_DIGEST_LEN)) {
			eng_set_err(r->err, r->errlen,
				"%s digest does not match the stream's: base or result corrupted",
				o->o->name);
			return -EBADMSG;
		}
	}
	return 0;
}

/* A zstd frame may refer to the window of history its header names (format.md). */
static int decompress_frame(struct eng_patcher *r, uint8_t comp, uint8_t history_mib, uint8_t *raw,
			    uint32_t len, uint32_t raw_len)
{
	const uint8_t *payload = r->frame + ENG_FRAME_HDR;

	if (comp >= CDC_COMP_COUNT)
		return -EBADMSG;
	if (!history_mib)
		return cdc_decompress(r->comp, (enum cdc_comp)comp, payload, len, raw, raw_len);
	size_t window = (size_t)history_mib << 20;
	if (comp != CDC_COMP_ZSTD || window > CDC_HISTORY_MAX || raw == r->raw)
		return -EBADMSG;
	size_t plen = r->history_end < window ? (size_t)r->history_end : window;
	return cdc_decompress_prefixed(r->comp, raw - plen, plen, payload, len, raw, raw_len);
}

/* *buf holds at least need bytes (need <= max); 0 or -ENOMEM. */
static int grow(uint8_t **buf, size_t *cap, size_t need, size_t max)
{
	if (need <= *cap)
		return 0;
	size_t to = *cap * 2 > need ? *cap * 2 : need;
	uint8_t *b = realloc(*buf, to < max ? to : max);
	if (!b)
		return -ENOMEM;
	*buf = b;
	*cap = to < max ? to : max;
	return 0;
}

static int read_frames(struct eng_patcher *r)
{
	uint8_t aad[CDC_DIGEST_LEN + 8 + ENG_FRAME_HDR];

	for (uint64_t seq = 0;; seq++) {
		int got = read_exact(r, r->frame, ENG_FRAME_HDR);
		if (got <= 0) {
			if (got == 0 || got == -EPIPE)
				eng_set_err(r->err, r->errlen, "truncated stream: no end-of-stream trailer after %llu segments",
					(unsigned long long)seq);
			return got ? got : -EPIPE;
		}
		uint32_t len = (uint32_t)cdc_get_le(r->frame, 4);
		uint32_t raw_len = (uint32_t)cdc_get_le(r->frame + 4, 4);
		uint8_t type = r->frame[8], comp = r->frame[9];
		if (len > ENG_FRAME_MAX - ENG_FRAME_HDR - CDC_TAG_LEN || raw_len > ENG_SEG_RAW_MAX) {
			eng_set_err(r->err, r->errlen, "segment %llu: corrupt frame header", (unsigned long long)seq);
			return -EBADMSG;
		}
		if (grow(&r->frame, &r->frame_cap, ENG_FRAME_HDR + (size_t)len + CDC_TAG_LEN, ENG_FRAME_MAX) ||
		    (r->frame[8] != ENG_FRAME_DATA && grow(&r->raw, &r->raw_cap, raw_len, ENG_SEG_RAW_MAX))) {
			eng_set_err(r->err, r->errlen, "out of memory for segment %llu", (unsigned long long)seq);
			return -ENOMEM;
		}
		got = read_exact(r, r->frame + ENG_FRAME_HDR, (size_t)len + CDC_TAG_LEN);
		if (got <= 0) {
			if (got == 0 || got == -EPIPE)
				eng_set_err(r->err, r->errlen, "truncated stream: ended inside segment %llu",
					(unsigned long long)seq);
			return got ? got : -EPIPE;
		}
		frame_aad(&r->s, seq, r->frame, aad);
		if (cdc_open(r->sealer, seq, aad, sizeof(aad), r->frame + ENG_FRAME_HDR, len,
			     r->frame + ENG_FRAME_HDR + len)) {
			eng_set_err(r->err, r->errlen, "segment %llu failed authentication: stream corrupted or tampered with",
				(unsigned long long)seq);
			return -EBADMSG;
		}
		/* data decodes into the history, in one span with the largest window */
		size_t back = r->history_end < CDC_HISTORY_MAX ? (size_t)r->history_end : CDC_HISTORY_MAX;
		uint8_t *raw = type == ENG_FRAME_DATA
			? cdc_history_at(r->history, r->history_end - back) + back
			: r->raw;
		if (decompress_frame(r, comp, r->frame[11], raw, len, raw_len)) {
			eng_set_err(r->err, r->errlen, "segment %llu: corrupt compressed data", (unsigned long long)seq);
			return -EBADMSG;
		}
		if (type == ENG_FRAME_TRAILER) {
			if (raw_len != ENG_TRAILER_LEN(r->s.nobj)) {
				eng_set_err(r->err, r->errlen, "corrupt trailer");
				return -EBADMSG;
			}
			uint8_t extra;
			if (!r->a->control_follows && r->src->read(r->src->ctx, &extra, 1) != 0) {
				eng_set_err(r->err, r->errlen, "unexpected data after the end of the stream");
				return -EBADMSG;
			}
			return verify_result(r, r->raw);
		}
		if (type != ENG_FRAME_DATA) {
			eng_set_err(r->err, r->errlen, "segment %llu: unknown frame type %u", (unsigned long long)seq, type);
			return -EBADMSG;
		}
		r->history_end += raw_len;
		int ret = apply_segment(r, raw, raw_len, seq);
		if (ret)
			return ret;
		r->st->segments++;
		r->stream_segments++;
		if (r->a->progress)
			r->a->progress(r->a->progress_ctx, r->st);
	}
}

/* Check the header's objects against ours and map the digest tables. */
static int setup_objects(struct eng_patcher *r)
{
	char want[17], have[17];

	if (r->s.kind != r->a->kind || r->s.nobj != r->a->nobj) {
		eng_set_err(r->err, r->errlen, "stream carries %s, expected %s",
			r->s.kind == ENG_KIND_VM ? "a VM" : "an image",
			r->a->kind == ENG_KIND_VM ? "a VM" : "an image");
		return -EINVAL;
	}
	for (unsigned i = 0; i < r->s.nobj; i++) {
		const struct eng_patch_object *po = &r->a->obj[i];
		struct obj_state *o = &r->obj[i];
		if (memcmp(r->s.obj[i].base_id, po->base_id, CDC_DIGEST_LEN) ||
		    r->s.obj[i].base_size != po->base_size) {
			eng_hex(r->s.obj[i].base_id, 8, want);
			eng_hex(po->base_id, 8, have);
			eng_set_err(r->err, r->errlen,
				"wrong base: the stream's %s was made against base %s…, this base is %s…",
				po->name, want, have);
			return -EINVAL;
		}
		if (r->objects_mapped) { /* a later stream of the same handoff */
			if (r->s.obj[i].capacity != r->obj_capacity[i]) {
				eng_set_err(r->err, r->errlen, "stream resumed with another %s capacity", po->name);
				return -EINVAL;
			}
			continue;
		}
		r->obj_capacity[i] = r->s.obj[i].capacity;
		o->o = po;
		o->base_blocks = (po->base_size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
		o->capacity_blocks = (r->s.obj[i].capacity + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
		/* Sparse and lazily backed: a capacity of terabytes costs only what is written. */
		o->map_len = (size_t)(o->capacity_blocks ? o->capacity_blocks : 1) * CDC_DIGEST_LEN;
		o->digest = mmap(NULL, o->map_len, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (o->digest == MAP_FAILED) {
			o->digest = NULL;
			eng_set_err(r->err, r->errlen, "cannot map the %s digest table: %s", po->name,
				strerror(errno));
			return -ENOMEM;
		}
	}
	r->objects_mapped = true;
	return 0;
}

/* The fixed part tells how long the object table is. */
static int read_header(struct eng_patcher *r, uint8_t header[ENG_HEADER_MAX])
{
	ssize_t len;
	int got = read_exact(r, header, ENG_HEADER_LEN);

	if (got > 0) {
		if ((len = eng_stream_header_len(header, r->err, r->errlen)) < 0)
			return (int)len;
		got = read_exact(r, header + ENG_HEADER_LEN, (size_t)len - ENG_HEADER_LEN);
	}
	if (got <= 0) {
		if (got == 0 || got == -EPIPE)
			eng_set_err(r->err, r->errlen, "truncated stream: header incomplete");
		return got ? got : -EPIPE;
	}
	return eng_stream_parse(&r->s, header, (size_t)len, r->a->key, r->session, r->err, r->errlen);
}

int eng_patcher_new(struct eng_patcher **out, const struct eng_patch_args *a, struct eng_patch_stats *st,
		    char *err, size_t errlen)
{
	struct eng_patcher *r = aligned_alloc(64, sizeof(*r));

	*out = NULL;
	memset(st, 0, sizeof(*st));
	if (!r) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	memset(r, 0, sizeof(*r));
	r->a = a;
	r->st = st;
	r->frame_cap = r->raw_cap = 64 << 10;
	r->frame = malloc(r->frame_cap);
	r->raw = malloc(r->raw_cap);
	r->history = cdc_history_new(CDC_HISTORY_MAX + ENG_SEG_RAW_MAX);
	r->comp = cdc_comp_new();
	r->delta = cdc_delta_new();
	r->hasher = cdc_hasher_new();
	if (!r->frame || !r->raw || !r->history || !r->comp || !r->delta || !r->hasher) {
		eng_set_err(err, errlen, "out of memory");
		eng_patcher_free(r);
		return -ENOMEM;
	}
	*out = r;
	return 0;
}

int eng_patcher_read(struct eng_patcher *r, const struct eng_source *src, const uint8_t *session,
		     struct eng_stream *stream_out, bool *cut, char *err, size_t errlen)
{
	uint8_t header[ENG_HEADER_MAX];
	int ret;

	r->src = src;
	r->session = session;
	r->err = err;
	r->errlen = errlen;
	r->cut = false;
	/* each stream is compressed on its own: no history from an earlier one */
	r->history_end = 0;
	r->stream_segments = 0;
	cdc_sealer_free(r->sealer);
	r->sealer = NULL;
	ret = read_header(r, header);
	if (ret)
		goto out;
	if (r->a->header)
		r->a->header(r->a->progress_ctx, r->s.salt, r->s.aead);
	if (stream_out) { /* control messages derive their own key: the segments' stays here */
		*stream_out = r->s;
		explicit_bzero(stream_out->subkey, sizeof(stream_out->subkey));
	}
	if ((ret = setup_objects(r)))
		goto out;
	r->sealer = cdc_sealer_new((enum cdc_aead)r->s.aead, r->s.subkey);
	if (!r->sealer) {
		eng_set_err(err, errlen, "cannot set up decryption");
		ret = -EIO;
		goto out;
	}
	ret = read_frames(r);
out:
	explicit_bzero(r->s.subkey, sizeof(r->s.subkey));
	if (cut)
		*cut = ret && r->cut;
	return ret;
}

uint64_t eng_patcher_applied(const struct eng_patcher *r)
{
	return r->st->segments;
}

void eng_patcher_free(struct eng_patcher *r)
{
	if (!r)
		return;
	for (unsigned i = 0; i < ENG_MAX_OBJECTS; i++)
		if (r->obj[i].digest)
			munmap(r->obj[i].digest, r->obj[i].map_len);
	cdc_sealer_free(r->sealer);
	cdc_hasher_free(r->hasher);
	cdc_delta_free(r->delta);
	cdc_comp_free(r->comp);
	free(r->raw);
	cdc_history_free(r->history);
	free(r->frame);
	explicit_bzero(r->s.subkey, sizeof(r->s.subkey));
	free(r);
}

int eng_patch_stream(const struct eng_patch_args *a, struct eng_patch_stats *st, char *err,
		     size_t errlen)
{
	struct eng_patcher *r;
	int ret = eng_patcher_new(&r, a, st, err, errlen);

	if (ret)
		return ret;
	ret = eng_patcher_read(r, a->src, a->session, a->stream_out, NULL, err, errlen);
	eng_patcher_free(r);
	return ret;
}

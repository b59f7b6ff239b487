/*
 * Stream format v2 (docs/format.md): the bytes that carry a target image, or
 * a VM's disk, memory and device state, against a base both ends hold. Written in one pass and
 * read in one pass, so the same bytes go to a file, a TCP socket or a DPDK
 * port.
 *
 *   header (128 B + 48 B per object) | frame* | trailer frame
 *   frame = len u32 | raw_len u32 | type u8 | comp u8 | level i8 | 0 u8 |
 *           payload[len] | tag[16]
 *
 * Every frame is AEAD-sealed under a per-stream key derived from the
 * operator's key and the header's random salt; the AAD binds the header,
 * the frame's sequence number and its 12-byte frame header, so frames cannot
 * be altered, reordered, dropped or moved to another stream.
 */
#ifndef HANDOFF_STREAM_H
#define HANDOFF_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codecs/codecs.h"

#define ENG_STREAM_VERSION 5
#define ENG_HEADER_LEN 128 /* fixed part; an object table follows */
#define ENG_SESSION_LEN 32 /* the reader's value per connection (session.h) */
#define ENG_OBJECT_DESC_LEN 48
#define ENG_MAX_OBJECTS 4
#define ENG_HEADER_MAX (ENG_HEADER_LEN + ENG_MAX_OBJECTS * ENG_OBJECT_DESC_LEN)
#define ENG_FRAME_HDR 12
/* Segments aim for this many raw bytes (the first ones less, so the link starts sooner)... */
#define ENG_SEG_TARGET (1u << 20)
#define ENG_SEG_FIRST (64u << 10)
/* ...and never exceed this: readers reject anything larger. */
#define ENG_SEG_RAW_MAX (ENG_SEG_TARGET + 256 * (CDC_DELTA_MAX + 24))
#define ENG_FRAME_MAX (ENG_FRAME_HDR + ENG_SEG_RAW_MAX + 4096 + CDC_TAG_LEN)
#define ENG_TRAILER_LEN(nobj) (8 + (nobj) * (8 + CDC_DIGEST_LEN))
/* Highest block number a record may name: 2^40 blocks = 4 PiB. */
#define ENG_MAX_BLOCK (1ull << 40)
/* A block reference in tables: object in the top byte, block below. */
#define ENG_REF(obj, blk) ((uint64_t)(obj) << 56 | (blk))
#define ENG_REF_OBJ(ref) ((unsigned)((ref) >> 56))
#define ENG_REF_BLK(ref) ((ref) & ((1ull << 56) - 1))

enum eng_frame_type { ENG_FRAME_DATA = 1, ENG_FRAME_TRAILER = 2 };

/* What a stream carries: one image, or a VM (disk, memory, device state). */
enum eng_stream_kind { ENG_KIND_IMAGE = 1, ENG_KIND_VM = 2 };
enum eng_vm_object { ENG_VM_DISK = 0, ENG_VM_MEMORY = 1, ENG_VM_DEVICES = 2, ENG_VM_OBJECTS = 3 };

/* Record opcodes inside a decompressed data segment. */
enum eng_op {
	ENG_OP_ZERO = 1,   /* block is all zero */
	ENG_OP_BASE = 2,   /* copy of a base block (object u8, block varint) */
	ENG_OP_DUP = 3,    /* copy of the current content of a result block (object u8, block varint) */
	ENG_OP_RAW = 4,    /* 4096 literal bytes */
	ENG_OP_XOR = 5,    /* 4096 bytes xor the base block at the same offset */
	ENG_OP_WDIFF = 6,  /* len varint + changed words vs the same-offset base block */
	ENG_OP_ZREF = 7,   /* len varint + zstd with the same-offset base block as prefix */
	ENG_OP_RESET = 8,  /* no block: object 0, the next record's block is relative to -1 */
	ENG_OP_OBJECT = 9, /* no block: object u8; the next block is relative to -1 */
	ENG_OP_CUR = 10,   /* op u8 (XOR, WDIFF or ZREF) and its body, against the block's current content */
};

/* One object of a stream as the header describes it. */
struct eng_object_desc {
	uint64_t base_size; /* size of the base image of this object */
	uint64_t capacity;  /* the result never exceeds this many bytes */
	uint8_t base_id[CDC_DIGEST_LEN]; /* image digest of the base */
};

struct eng_stream {
	uint16_t flags;
	uint8_t aead, kind;
	unsigned nobj;
	struct eng_object_desc obj[ENG_MAX_OBJECTS];
	uint8_t salt[32];     /* the writer's, random per stream */
	uint8_t session[ENG_SESSION_LEN]; /* the reader's, random per connection (zero: a file) */
	uint8_t base_id[CDC_DIGEST_LEN]; /* over every object's base */
	uint8_t key_check[16];
	uint8_t header[ENG_HEADER_MAX];
	size_t header_len;
	uint8_t header_hash[CDC_DIGEST_LEN];
	uint8_t subkey[CDC_KEY_LEN];
};

#define ENG_STREAM_KEYED 0x1

/*
 * Writer side: fresh salt, derived keys, encoded header. key NULL = unkeyed.
 * session: the value the reader offered for this connection (session.h), or
 * NULL for a file. Every key of the stream comes from the key, the salt and
 * the session value, so a stream recorded from one connection fails the key
 * check on any other.
 */
int eng_stream_init(struct eng_stream *s, const uint8_t *key, const uint8_t *session, enum cdc_aead aead,
		    enum eng_stream_kind kind, unsigned nobj, const struct eng_object_desc *obj);
/* Reader side, step 1: check the fixed header part; returns the whole header's length. */
ssize_t eng_stream_header_len(const uint8_t fixed[ENG_HEADER_LEN], char *err, size_t errlen);
/* Step 2: parse and check the whole header; one-line reason in err on failure.
 * session: the value this reader offered (NULL for a file). */
int eng_stream_parse(struct eng_stream *s, const uint8_t *header, size_t len, const uint8_t *key,
		     const uint8_t *session, char *err, size_t errlen);
/* A key for one use (label) from the stream's key, salt and session value. */
int eng_stream_derive(const struct eng_stream *s, const uint8_t *key, const char *label, uint8_t *out,
		      size_t outlen);

/*
 * Seal the frame whose payload (payload_len bytes) already sits at
 * frame + ENG_FRAME_HDR; returns the frame's total length.
 */
size_t eng_frame_seal(const struct eng_stream *s, struct cdc_sealer *sealer, uint64_t seq,
		      enum eng_frame_type type, enum cdc_comp comp, int level, unsigned history_mib,
		      uint32_t raw_len, uint8_t *frame, uint32_t payload_len);

/* Byte source for the reader: returns bytes read, 0 at end, -errno on error. */
struct eng_source {
	ssize_t (*read)(void *ctx, void *buf, size_t len);
	void *ctx;
};

/* Block store the reader resolves references against and writes into. */
struct eng_store {
	/* Block `block`, zero-padded past the end of the store. */
	int (*read)(void *ctx, uint64_t block, uint8_t *buf);
	int (*write)(void *ctx, uint64_t block, const uint8_t *buf);
	/* Final size of the result (truncate or extend). */
	int (*resize)(void *ctx, uint64_t size);
	void *ctx;
};

/* One object as the reader sees it. */
struct eng_patch_object {
	const char *name;             /* for messages: "image", "disk", "memory", ... */
	const struct eng_store *base; /* the pristine base: BASE records and deltas read it */
	const struct eng_store *out;  /* the result: holds a copy of the base when the stream starts */
	const uint8_t *base_digests;  /* SHA-256 of each (zero-padded) base block */
	uint64_t base_size;
	const uint8_t *base_id;       /* image digest of the base */
	/* The base blocks this end holds, bit b of byte b / 8 (NULL: all of them):
	 * a stream may not build on the others, and must send each before the end. */
	const uint8_t *have;
};

struct eng_patch_stats {
	uint64_t segments, wire_bytes, records;
	uint64_t size[ENG_MAX_OBJECTS];
	uint8_t digest[ENG_MAX_OBJECTS][CDC_DIGEST_LEN];
};

struct eng_patch_args {
	const struct eng_source *src;
	enum eng_stream_kind kind;
	unsigned nobj;
	const struct eng_patch_object *obj;
	const uint8_t *key; /* NULL: the stream must be unkeyed */
	const uint8_t *session; /* the value offered on this connection (session.h); NULL: a file */
	void (*progress)(void *ctx, const struct eng_patch_stats *st);
	void *progress_ctx;
	/* once a stream's header is verified, before its frames: its salt and AEAD (ctx: progress_ctx); may be NULL */
	void (*header)(void *ctx, const uint8_t salt[32], uint8_t aead);
	struct eng_stream *stream_out; /* if set: the parsed header, salt and session, for control messages (segment key wiped) */
	bool control_follows; /* the connection carries control messages after the trailer */
};

/*
 * Read a whole stream, apply it to the objects' results and check every
 * result's digest against the trailer. The digests are kept per block as
 * records are applied (each result starts as a copy of its base), so the
 * check costs no second pass. 0 on success; otherwise -errno and a one-line
 * reason.
 */
int eng_patch_stream(const struct eng_patch_args *a, struct eng_patch_stats *st, char *err,
		     size_t errlen);

/*
 * The same, for a live handoff whose link may be cut: the results and their
 * per-block digests live in a patcher, and each connection carries a stream
 * of its own (new keys, history and segment numbers) that goes on from what
 * the patcher already applied. a->src, a->session and a->stream_out are
 * given per stream instead.
 */
struct eng_patcher;
int eng_patcher_new(struct eng_patcher **out, const struct eng_patch_args *a, struct eng_patch_stats *st,
		    char *err, size_t errlen);
/* One stream from src: 0 once its trailer verified every object. On failure
 * *cut says whether the source failed or ended early (a cut link, after
 * which another stream may follow) rather than sent bad data. */
int eng_patcher_read(struct eng_patcher *p, const struct eng_source *src, const uint8_t *session,
		     struct eng_stream *stream_out, bool *cut, char *err, size_t errlen);
/* Data segments applied so far, over every stream. */
uint64_t eng_patcher_applied(const struct eng_patcher *p);
void eng_patcher_free(struct eng_patcher *p);

void eng_hex(const uint8_t *bytes, size_t n, char *out);

#endif

/*
 * Stream format v1 (docs/format.md): the bytes that carry a target image (or,
 * later, a VM's state) against a base both ends hold. Written in one pass and
 * read in one pass, so the same bytes go to a file, a TCP socket or a DPDK
 * port.
 *
 *   header (128 B) | frame* | trailer frame
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

#define ENG_STREAM_VERSION 1
#define ENG_HEADER_LEN 128
#define ENG_FRAME_HDR 12
/* Segments aim for this many raw bytes... */
#define ENG_SEG_TARGET (1u << 20)
/* ...and never exceed this: readers reject anything larger. */
#define ENG_SEG_RAW_MAX (ENG_SEG_TARGET + 256 * (CDC_DELTA_MAX + 24))
#define ENG_FRAME_MAX (ENG_FRAME_HDR + ENG_SEG_RAW_MAX + 4096 + CDC_TAG_LEN)
#define ENG_TRAILER_LEN 56

enum eng_frame_type { ENG_FRAME_DATA = 1, ENG_FRAME_TRAILER = 2 };

/* Record opcodes inside a decompressed data segment. */
enum eng_op {
	ENG_OP_ZERO = 1,  /* block is all zero */
	ENG_OP_BASE = 2,  /* copy of base block (source u8, block varint) */
	ENG_OP_DUP = 3,   /* copy of an earlier target block (block varint) */
	ENG_OP_RAW = 4,   /* 4096 literal bytes */
	ENG_OP_XOR = 5,   /* 4096 bytes xor the base block at the same offset */
	ENG_OP_WDIFF = 6, /* len varint + changed words vs the same-offset base block */
	ENG_OP_ZREF = 7,  /* len varint + zstd with the same-offset base block as prefix */
	ENG_OP_RESET = 8, /* no block: the next record's block is relative to -1 again */
};

struct eng_stream {
	uint16_t flags;
	uint8_t aead;
	uint64_t base_size;
	uint8_t salt[32];
	uint8_t base_id[CDC_DIGEST_LEN];
	uint8_t key_check[16];
	uint8_t header[ENG_HEADER_LEN];
	uint8_t header_hash[CDC_DIGEST_LEN];
	uint8_t subkey[CDC_KEY_LEN];
};

#define ENG_STREAM_KEYED 0x1

/* Writer side: fresh salt, derived keys, encoded header. key NULL = unkeyed. */
int eng_stream_init(struct eng_stream *s, const uint8_t *key, enum cdc_aead aead,
		    const uint8_t base_id[CDC_DIGEST_LEN], uint64_t base_size);
/* Reader side: parse and check a header; one-line reason in err on failure. */
int eng_stream_parse(struct eng_stream *s, const uint8_t header[ENG_HEADER_LEN],
		     const uint8_t *key, char *err, size_t errlen);

/*
 * Seal the frame whose payload (payload_len bytes) already sits at
 * frame + ENG_FRAME_HDR; returns the frame's total length.
 */
size_t eng_frame_seal(const struct eng_stream *s, struct cdc_sealer *sealer, uint64_t seq,
		      enum eng_frame_type type, enum cdc_comp comp, int level, uint32_t raw_len,
		      uint8_t *frame, uint32_t payload_len);

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

struct eng_patch_stats {
	uint64_t target_size, nblocks, segments, wire_bytes, records;
};

struct eng_patch_args {
	const struct eng_source *src;
	const struct eng_store *base;
	const uint8_t *base_id; /* identity the stream must name */
	uint64_t base_size;
	const struct eng_store *out;
	const uint8_t *key; /* NULL: the stream must be unkeyed */
	void (*progress)(void *ctx, const struct eng_patch_stats *st);
	void *progress_ctx;
};

/*
 * Read a whole stream, apply it to out, verify the result's digest against
 * the trailer. 0 on success; otherwise -errno and a one-line reason.
 */
int eng_patch_stream(const struct eng_patch_args *a, struct eng_patch_stats *st, char *err,
		     size_t errlen);

void eng_hex(const uint8_t *bytes, size_t n, char *out);

#endif

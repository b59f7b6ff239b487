/*
 * codecs: the per-block and per-segment transforms of the handoff pipeline.
 *
 * Owns hashing (SHA-256 with SHA-NI through OpenSSL), zero-block detection
 * (ISA-L), block deltas against a base block, segment compression (ISA-L
 * igzip, zstd, liblzma) and AEAD sealing (OpenSSL). Every context here is
 * single-threaded: each pipeline worker owns its own and reuses it, so the
 * hot path never allocates. Nothing here needs DPDK, so the stream reader and
 * the fuzzers link it alone.
 *
 * Errors: functions return >= 0 on success and -errno on failure (-EBADMSG
 * for corrupt input, -ENOSPC when an output buffer is too small).
 */
#ifndef HANDOFF_CODECS_H
#define HANDOFF_CODECS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CDC_BLOCK_SHIFT 12
#define CDC_BLOCK_SIZE (1u << CDC_BLOCK_SHIFT)
#define CDC_DIGEST_LEN 32

/* ---- hashing and zero detection ---------------------------------------- */

struct cdc_hasher;

struct cdc_hasher *cdc_hasher_new(void);
void cdc_hasher_free(struct cdc_hasher *h);
/* What hashes runs of blocks here: "ipsec-mb", "sha-ni" or "openssl". */
const char *cdc_hasher_runs(const struct cdc_hasher *h);
/* SHA-256 of one CDC_BLOCK_SIZE block. */
void cdc_hash_block(struct cdc_hasher *h, const void *block, uint8_t out[CDC_DIGEST_LEN]);
/*
 * The same for n blocks, block i's digest into out[i]: four at a time with
 * SHA-NI where the CPU has it (faster), else one by one.
 */
void cdc_hash_blocks(struct cdc_hasher *h, const uint8_t *const *blocks, unsigned n,
		     uint8_t *const *out);
/* The four-lane SHA-NI path itself (codecs/sha_ni.c), for tests and benchmarks. */
bool cdc_sha256_x4_available(void);
void cdc_sha256_block_x4(const uint8_t *const block[4], uint8_t *const out[4]);
/* SHA-256 of an arbitrary buffer (slow path: headers, keys). */
void cdc_sha256(const void *buf, size_t len, uint8_t out[CDC_DIGEST_LEN]);
bool cdc_is_zero(const void *buf, size_t len);
/* Digest of an all-zero block, computed once. */
const uint8_t *cdc_zero_digest(void);

/*
 * Image digest: SHA-256 over (digest of block 0, 1, ..., then the size as
 * LE64), the last block zero-padded. Binds every byte of an image while letting the
 * per-block digests, already computed by the hash stage, be reused.
 */
struct cdc_image_digest;
struct cdc_image_digest *cdc_image_digest_new(void);
void cdc_image_digest_add(struct cdc_image_digest *d, const uint8_t digest[CDC_DIGEST_LEN]);
void cdc_image_digest_final(struct cdc_image_digest *d, uint64_t size, uint8_t out[CDC_DIGEST_LEN]);
void cdc_image_digest_free(struct cdc_image_digest *d);

/* ---- block delta -------------------------------------------------------- */

enum cdc_delta {
	CDC_DELTA_NONE = 0, /* send the block as it is */
	CDC_DELTA_XOR = 1,  /* block ^ base: in-place edits become zero runs */
	CDC_DELTA_WDIFF = 2, /* changed 8-byte words only: sparse in-place edits */
	CDC_DELTA_ZREF = 3, /* zstd with the base block as prefix: shifted content */
	CDC_DELTA_BEST = 4, /* encoder only: the smallest of wdiff and zref */
	CDC_DELTA_COUNT
};

/* Worst-case encoded size of one block delta. */
#define CDC_DELTA_MAX (CDC_BLOCK_SIZE + 64)

struct cdc_delta_ctx;
struct cdc_delta_ctx *cdc_delta_new(void);
void cdc_delta_free(struct cdc_delta_ctx *c);
/*
 * Encode block against base (both CDC_BLOCK_SIZE). *kind is the requested
 * kind on entry and the kind used on return. Returns the encoded length, or
 * 0 when no delta beats sending the raw block (the caller sends it raw).
 */
ssize_t cdc_delta_encode(struct cdc_delta_ctx *c, enum cdc_delta *kind, const uint8_t *block,
			 const uint8_t *base, uint8_t *out, size_t cap);
/* Rebuild a block from its delta; -EBADMSG on malformed input. */
int cdc_delta_decode(struct cdc_delta_ctx *c, enum cdc_delta kind, const uint8_t *in, size_t len,
		     const uint8_t *base, uint8_t *block);
const char *cdc_delta_name(enum cdc_delta kind);
int cdc_delta_parse(const char *name, enum cdc_delta *kind);

/* ---- segment compression ----------------------------------------------- */

enum cdc_comp {
	CDC_COMP_NONE = 0,
	CDC_COMP_IGZIP = 1, /* ISA-L raw deflate, levels 0..3 */
	CDC_COMP_ZSTD = 2,  /* levels -7..19 */
	CDC_COMP_LZMA = 3,  /* raw LZMA2, presets 0..9 */
	CDC_COMP_COUNT
};

struct cdc_comp_ctx;
struct cdc_comp_ctx *cdc_comp_new(void);
void cdc_comp_free(struct cdc_comp_ctx *c);
bool cdc_comp_level_ok(enum cdc_comp comp, int level);
size_t cdc_comp_bound(enum cdc_comp comp, size_t len);
/* Returns the compressed length, -ENOSPC if it does not fit in cap. */
ssize_t cdc_compress(struct cdc_comp_ctx *c, enum cdc_comp comp, int level, const void *src,
		     size_t len, void *dst, size_t cap);
/* Decompresses exactly raw_len bytes; anything else is -EBADMSG. */
int cdc_decompress(struct cdc_comp_ctx *c, enum cdc_comp comp, const void *src, size_t len,
		   void *dst, size_t raw_len);
/*
 * zstd only, with a prefix: the plen bytes the stream carried just before
 * src (the receiver holds them too). Matches may reach back into it.
 */
ssize_t cdc_compress_prefixed(struct cdc_comp_ctx *c, int level, const void *prefix, size_t plen,
			      const void *src, size_t len, void *dst, size_t cap);
int cdc_decompress_prefixed(struct cdc_comp_ctx *c, const void *prefix, size_t plen,
			    const void *src, size_t len, void *dst, size_t raw_len);
const char *cdc_comp_name(enum cdc_comp comp);
int cdc_comp_parse(const char *name, enum cdc_comp *comp);

/* ---- history window ----------------------------------------------------- */

/*
 * A ring of the last bytes a stream carried, mapped twice back to back:
 * map[pos % cap .. + n) is contiguous for any n <= cap. Absolute stream
 * positions go in, cdc_history_at() finds them.
 */
struct cdc_history {
	uint8_t *map;
	size_t cap;
};

#define CDC_HISTORY_MAX (8u << 20) /* the largest window any level uses */

struct cdc_history *cdc_history_new(size_t min_capacity);
void cdc_history_free(struct cdc_history *h);
static inline uint8_t *cdc_history_at(const struct cdc_history *h, uint64_t pos)
{
	return h->map + pos % h->cap;
}
/* Bytes of history a segment compressed this way is given as prefix (0: none). */
size_t cdc_history_window(enum cdc_comp comp, int level);

/* ---- AEAD sealing ------------------------------------------------------- */

#define CDC_KEY_LEN 32
#define CDC_TAG_LEN 16

enum cdc_aead {
	CDC_AEAD_AES256GCM = 1,
	CDC_AEAD_CHACHA20POLY1305 = 2,
};

struct cdc_sealer;
struct cdc_sealer *cdc_sealer_new(enum cdc_aead alg, const uint8_t key[CDC_KEY_LEN]);
void cdc_sealer_free(struct cdc_sealer *s);
/* Encrypt buf in place and write its tag; nonce is the 64-bit counter. */
int cdc_seal(struct cdc_sealer *s, uint64_t nonce, const void *aad, size_t aad_len, void *buf,
	     size_t len, uint8_t tag[CDC_TAG_LEN]);
/* Verify and decrypt in place; -EBADMSG when the tag does not match. */
int cdc_open(struct cdc_sealer *s, uint64_t nonce, const void *aad, size_t aad_len, void *buf,
	     size_t len, const uint8_t tag[CDC_TAG_LEN]);
/* HKDF-SHA256(key, salt, info) into out. */
int cdc_derive_key(const uint8_t key[CDC_KEY_LEN], const void *salt, size_t salt_len,
		   const char *info, uint8_t *out, size_t out_len);
int cdc_random(void *buf, size_t len);

#endif

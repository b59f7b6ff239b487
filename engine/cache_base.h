/*
 * The base a destination's edge cache supplies (receive --cache). The source's
 * plan (session.h) names every chunk of the base's disk, memory and device
 * state; the cache holds some of them. This end pins them all (gc must not take
 * one mid-handoff), writes each chunk it holds into the result, hashes the
 * blocks it wrote (the reader's base digests), and reads the pristine base
 * back from the cache wherever a delta builds on it; at the close the chunks
 * it read count as used (the keep policy's recency). The chunk map it then
 * answers with is what it actually wrote: a chunk that turned out corrupt or
 * gone is lacking, and the source sends its blocks.
 */
#ifndef HANDOFF_CACHE_BASE_H
#define HANDOFF_CACHE_BASE_H

#include <stdbool.h>
#include <stdint.h>

#include "edge/store.h"
#include "session.h"
#include "stream.h"

#define ENG_CACHE_SLOTS 16 /* chunks kept for base reads: deltas come in runs */
#define ENG_CACHE_PIN_S (6 * 3600.0) /* a receiver's pin lives this long; it renews it hourly */

struct eng_cache_base;

/* One object's base as the reader sees it. */
struct eng_cache_object {
	struct eng_cache_base *cb;
	unsigned obj;
};

struct eng_cache_base {
	struct edg_store *store;
	const struct eng_base_plan *plan;
	uint8_t *chunk_have[ENG_MAX_OBJECTS]; /* bit per plan chunk: the chunk map */
	uint8_t *block_have[ENG_MAX_OBJECTS]; /* bit per 4 KiB block: eng_patch_object.have */
	uint8_t *digests[ENG_MAX_OBJECTS];    /* per block; zero where lacking */
	uint64_t blocks[ENG_MAX_OBJECTS];
	uint8_t zero_digest[ENG_MAX_OBJECTS][2][CDC_DIGEST_LEN]; /* a whole and the last chunk, all zero */
	uint64_t held_chunks, held_bytes, lacking_chunks, lacking_bytes, dropped_chunks;
	char pin_id[64];
	bool pinned, filled;
	struct eng_cache_object ctx[ENG_MAX_OBJECTS];
	struct eng_store base[ENG_MAX_OBJECTS]; /* the pristine base, read from the cache */
	struct {
		uint64_t key; /* object << 56 | chunk + 1; 0 = empty */
		uint8_t *data;
	} slot[ENG_CACHE_SLOTS];
};

/* Where each object's chunks go: memory (mem, fresh: it reads as zero) or a file (fd, mem NULL). */
struct eng_cache_target {
	uint8_t *mem;
	int fd;
};

/*
 * Pin every chunk of the plan in the store (until pin_s from now, or
 * eng_cache_base_close) and see which it holds. 0, or -errno and one line
 * (then nothing stays pinned).
 */
int eng_cache_base_open(struct eng_cache_base *cb, struct edg_store *store, const struct eng_base_plan *plan,
			double pin_s, char *err, size_t errlen);
/*
 * Write every held chunk of every object into its target and hash its
 * blocks; a chunk that cannot be read back intact becomes lacking. Zero chunks
 * are held without a lookup (a hole punched in a file; memory is fresh). 0, or
 * -errno and one line.
 */
int eng_cache_base_fill(struct eng_cache_base *cb, const struct eng_cache_target *targets, char *err,
			size_t errlen);
/* The digests of the plan's chunks the cache lacks, one per lacking chunk (*digests malloc'd). 0 or -ENOMEM. */
int eng_cache_base_lacking(const struct eng_cache_base *cb, uint8_t **digests, uint64_t *n);
/* Before the fill: chunks that reached the store since the open (fetched from other edges) count as
 * held (they are pinned: the open pinned the whole plan). Returns how many. */
uint64_t eng_cache_base_recheck(struct eng_cache_base *cb);
/* The pin again, until pin_s from now (a handoff that outlives it: link cuts). */
int eng_cache_base_renew(struct eng_cache_base *cb, double pin_s, char *err, size_t errlen);
void eng_cache_base_close(struct eng_cache_base *cb);

#endif

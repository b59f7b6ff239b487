/*
 * tracker: what both sites already hold.
 *
 * A base index is the SHA-256 of every 4 KiB block of a base image (the last
 * block zero-padded) plus the image digest that identifies the base in a
 * stream header. It is built once and cached beside the image as
 * IMAGE.hidx; the cache is reused only while the image's identity stamp
 * (device, inode, size, mtime, ctime) is unchanged and its own checksum
 * holds, and is rebuilt otherwise, never trusted.
 *
 * A digest table maps digests to block numbers through DPDK's rte_hash; the
 * dedup stage uses one for "any block of the base" and one for "already
 * sent". Tables need the EAL; indexes do not.
 */
#ifndef HANDOFF_TRACKER_H
#define HANDOFF_TRACKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codecs/codecs.h"

struct trk_index;

/* Load IMAGE's cached index or build (and cache) it. NULL + message on error. */
struct trk_index *trk_index_open(const char *image, char *err, size_t errlen);
void trk_index_free(struct trk_index *idx);
uint64_t trk_index_size(const struct trk_index *idx);
uint64_t trk_index_blocks(const struct trk_index *idx);
/* Blocks that are not zero: at most this many distinct digests go in a table. */
uint64_t trk_index_nonzero_blocks(const struct trk_index *idx);
const uint8_t *trk_index_digest(const struct trk_index *idx, uint64_t block);
/* The image digest (cdc_image_digest over all blocks): the base's identity. */
const uint8_t *trk_index_id(const struct trk_index *idx);
bool trk_index_was_cached(const struct trk_index *idx);
/* Path of the cache file for IMAGE (caller frees). */
char *trk_index_cache_path(const char *image);

struct trk_table;

/* A digest -> value table for up to `entries` digests on NUMA `socket`. */
struct trk_table *trk_table_new(const char *name, uint32_t entries, int socket);
/* The tables' hash of a digest: keyed per process (table.c says why). */
uint32_t trk_digest_hash(const uint8_t digest[CDC_DIGEST_LEN]);
void trk_table_free(struct trk_table *t);
/* Adds digest unless present; -ENOSPC when full (the caller may ignore it). */
int trk_table_add(struct trk_table *t, const uint8_t digest[CDC_DIGEST_LEN], uint64_t value);
/* 0 and *value when found, -ENOENT otherwise. */
int trk_table_lookup(const struct trk_table *t, const uint8_t digest[CDC_DIGEST_LEN],
		     uint64_t *value);
/* Remove digest; -ENOENT when absent. */
int trk_table_del(struct trk_table *t, const uint8_t digest[CDC_DIGEST_LEN]);
/* Add the first occurrence of every non-zero block of idx, as tag | block. */
void trk_table_add_index(struct trk_table *t, const struct trk_index *idx, uint64_t tag);
/* The same for the blocks whose bit is set in have (bit b of byte b / 8; NULL: all). */
void trk_table_add_index_masked(struct trk_table *t, const struct trk_index *idx, uint64_t tag,
				const uint8_t *have);

#endif

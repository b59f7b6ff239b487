/*
 * An edge's chunk cache: images and memory snapshots cut into fixed-size
 * chunks named by their SHA-256, kept in one embedded LMDB environment on the
 * edge's disk (DIR/data.mdb). No server: every process that opens DIR shares
 * it through LMDB's own locking, and every change is one transaction, so a
 * crash or a full disk leaves the store as it was before the change.
 *
 * Sub-databases: "chunk" (digest -> bytes), "meta" (digest -> size,
 * references, pins, first and last use, uses), "recipe" (image name -> its
 * size, chunk size and digest list), "pin" (pin id -> expiry and digest
 * list: the chunks of a handoff in flight) and "info" (format, chunk size).
 * A chunk's reference count is the number of registered images that contain
 * it (an image listing a chunk twice counts once), so adding the same image
 * again changes nothing.
 */
#ifndef HANDOFF_EDGE_STORE_H
#define HANDOFF_EDGE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EDG_DIGEST_LEN 32
#define EDG_CHUNK_DEFAULT (64u << 10) /* see docs/edge.md for the measurement behind it */
#define EDG_CHUNK_MIN (4u << 10)
#define EDG_CHUNK_MAX (4u << 20)
#define EDG_NAME_MAX 255

struct edg_store;

struct edg_chunk_meta {
	uint32_t size;
	uint32_t refs;      /* registered images that contain the chunk */
	uint32_t pins;      /* live pins (handoffs in flight) that hold it */
	uint64_t added_s;   /* wall-clock seconds */
	uint64_t last_use_s;
	uint64_t uses;      /* times it was stored or used (edg_store_touch); a plain read does not count */
};

struct edg_stat {
	uint32_t chunk_size;
	uint64_t chunks, bytes;            /* stored chunks and their payload bytes */
	uint64_t referenced_chunks, referenced_bytes;
	uint64_t pinned_chunks, pinned_bytes;
	uint64_t images, image_bytes;      /* registered images and their logical size */
	uint64_t pins;                     /* pin records, live or expired */
	uint64_t referenced_missing;       /* chunks an image references whose bytes are gone */
	uint64_t file_bytes;               /* data.mdb on disk (freed pages are reused, not returned) */
};

/* What adding one image did. */
struct edg_add_report {
	uint64_t size, chunks, new_chunks, new_bytes;
	double seconds;
};

/* What gc did. */
struct edg_gc_report {
	uint64_t before_bytes, after_bytes, deleted_chunks, deleted_bytes;
	uint64_t kept_referenced_bytes, kept_pinned_bytes, kept_young_bytes;
	uint64_t kept_by_filter_bytes; /* candidates the filter (the coordinator) kept */
	uint64_t kept_in_use_bytes;    /* chosen, but referenced, pinned or used while the filter was asked */
	bool filter_failed;            /* the filter stopped answering: the rest was kept */
	bool ranked, rank_failed;      /* the keep policy ordered the candidates / could not */
};

/*
 * What gc asks and tells beyond the store (the coordinator). rank: the keep
 * policy, what each candidate is worth keeping (worth[i], from age_s[i], the
 * seconds since this edge last used it): the least worth goes first; non-zero
 * when it cannot answer (then the least recently used goes first). filter: a
 * second opinion on candidates for deletion (an image registered or a
 * handoff leased elsewhere), ok[i] for each, non-zero when it cannot answer
 * (then nothing more is deleted). deleted: the chunks that went, once the
 * deletion is committed.
 */
struct edg_gc_hooks {
	int (*rank)(void *ctx, const uint8_t *digests, uint64_t n, const uint64_t *age_s, double *worth);
	int (*filter)(void *ctx, const uint8_t *digests, uint64_t n, bool *ok);
	void (*deleted)(void *ctx, const uint8_t *digests, uint64_t n);
	void *ctx;
};

/*
 * Open (create when asked) the store in dir. chunk_size 0 takes the store's
 * own (or EDG_CHUNK_DEFAULT for a new one); another size than the store's is
 * an error. map_bytes bounds the database (0: 1 TiB of address space; the
 * file grows only as it is used). NULL after a one-line message in err.
 */
struct edg_store *edg_store_open(const char *dir, bool create, uint32_t chunk_size, uint64_t map_bytes,
				 char *err, size_t errlen);
void edg_store_close(struct edg_store *s);
uint32_t edg_store_chunk_size(const struct edg_store *s);

/* Progress while adding: bytes of the image read so far. */
typedef void (*edg_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/*
 * Cut the file at path into chunks, store the new ones and register it as
 * image name (replacing an earlier image of that name). Chunks go in batches
 * of their own transactions; the recipe and the reference counts last, in
 * one: an interrupted add leaves complete, unreferenced chunks (gc's to take)
 * and the old recipe. 0, or -errno after a message in err.
 */
int edg_store_add_file(struct edg_store *s, const char *name, const char *path, struct edg_add_report *rep,
		       edg_progress_fn progress, void *ctx, char *err, size_t errlen);
/* Unregister an image: its chunks lose one reference each (gc may then take them). */
int edg_store_remove_image(struct edg_store *s, const char *name, char *err, size_t errlen);

/* Store one chunk (idempotent: an existing one only counts a use). *added: it was new. */
int edg_store_put(struct edg_store *s, const uint8_t digest[EDG_DIGEST_LEN], const void *data, uint32_t len,
		  bool *added, char *err, size_t errlen);
bool edg_store_has(struct edg_store *s, const uint8_t digest[EDG_DIGEST_LEN]);
/*
 * Which of n digest prefixes (plen bytes each, EDG_PREFIX_MIN..EDG_DIGEST_LEN)
 * name a chunk whose bytes are here: bit i of bits (n/8 rounded up bytes).
 * A prefix may name another chunk than the asker meant: the chunk itself is
 * asked for by its whole digest. 0, or -errno.
 */
#define EDG_PREFIX_MIN 8
int edg_store_has_prefixes(struct edg_store *s, const uint8_t *prefixes, uint32_t n, unsigned plen, uint8_t *bits);
int edg_store_meta(struct edg_store *s, const uint8_t digest[EDG_DIGEST_LEN], struct edg_chunk_meta *m);
/*
 * Copy a chunk into buf (cap bytes) and check it against its digest. A chunk
 * whose bytes no longer match is dropped from the store and -EBADMSG
 * returned, so the caller fetches it again; -ENOENT when absent. *len: its size.
 */
int edg_store_get(struct edg_store *s, const uint8_t digest[EDG_DIGEST_LEN], void *buf, uint32_t cap,
		  uint32_t *len);

/* Store many chunks in one transaction (one fsync); *added (may be NULL): how many were new. */
int edg_store_put_many(struct edg_store *s, uint64_t n, const uint8_t *digests, const uint8_t *const *data,
		       const uint32_t *lens, uint64_t *added, char *err, size_t errlen);
/*
 * These chunks were used (read for a handoff): their last use is now and their
 * uses grow by one, in one write transaction (reads alone do not count: a
 * write per read would cost more than the read). Absent ones are skipped.
 */
int edg_store_touch(struct edg_store *s, const uint8_t *digests, uint64_t n, char *err, size_t errlen);
/* missing[i]: the cache lacks chunk i (one read transaction for the whole list). */
int edg_store_missing(struct edg_store *s, const uint8_t *digests, uint64_t n, bool *missing, uint64_t *n_missing);
/*
 * Register image name from its recipe (size, digests) when the cache holds
 * every chunk of it; -EAGAIN (err names how many) when some are missing.
 */
int edg_store_register(struct edg_store *s, const char *name, uint64_t size, const uint8_t *digests, uint64_t n,
		       char *err, size_t errlen);
/*
 * Write image name to path: each chunk read back and checked, into a new
 * file beside path (created exclusively, never through a symlink) renamed
 * over path only when complete. -EBADMSG / -ENOENT when a chunk is corrupt or
 * missing (err says which), nothing written.
 */
int edg_store_export(struct edg_store *s, const char *name, const char *path, char *err, size_t errlen);

/* An image's recipe: size and digests (malloc'd, n * EDG_DIGEST_LEN bytes). -ENOENT if unknown. */
int edg_store_recipe(struct edg_store *s, const char *name, uint64_t *size, uint8_t **digests, uint64_t *n);

/*
 * Pin chunks for a handoff in flight: gc never deletes them while the pin
 * lives (until expires_s, wall clock). Pinning the same id again replaces
 * its list and expiry. Chunks not in the store are pinned all the same (the
 * handoff may be about to add them).
 */
int edg_store_pin(struct edg_store *s, const char *id, const uint8_t *digests, uint64_t n, uint64_t expires_s,
		  char *err, size_t errlen);
int edg_store_unpin(struct edg_store *s, const char *id, char *err, size_t errlen);

int edg_store_stat(struct edg_store *s, struct edg_stat *st, char *err, size_t errlen);

/*
 * Re-hash every chunk; drop the corrupt ones (their images then lack them:
 * on_bad is told each digest). *checked, *bad: counts.
 */
int edg_store_verify(struct edg_store *s, uint64_t *checked, uint64_t *bad,
		     void (*on_bad)(void *ctx, const uint8_t digest[EDG_DIGEST_LEN]), void *ctx, char *err,
		     size_t errlen);

/*
 * Delete chunks no image references and no live pin holds, least recently
 * used first (or least worth, hooks->rank), until the payload is at most keep_bytes. Chunks added or used
 * within grace_s are kept (a handoff may be about to reference them); expired
 * pins are dropped first. With a filter, only candidates it agrees to go.
 * Returns 0 when the quota was reached, -ENOSPC when what is referenced,
 * pinned, young or kept by the filter exceeds it (rep says how much).
 */
int edg_store_gc(struct edg_store *s, uint64_t keep_bytes, uint64_t grace_s, const struct edg_gc_hooks *hooks,
		 struct edg_gc_report *rep, char *err, size_t errlen);

/* The digests of a that b lacks, each once (malloc'd; *n of them). NULL when out of memory. */
uint8_t *edg_digests_minus(const uint8_t *a, uint64_t na, const uint8_t *b, uint64_t nb, uint64_t *n);

/*
 * An image's chunk digests as add would store them: len bytes cut into
 * chunk_size pieces (the last may be shorter), each named by its SHA-256;
 * (len + chunk_size - 1) / chunk_size of them into out. A sender names a base
 * this way without a cache of its own (the chunk recipe it offers).
 */
void edg_chunk_digests(const uint8_t *data, uint64_t len, uint32_t chunk_size, uint8_t *out);

/* Digest as 64 hex digits (out: 65 bytes). */
void edg_digest_hex(const uint8_t digest[EDG_DIGEST_LEN], char *out);

#endif

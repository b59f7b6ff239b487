/*
 * The chunk service's exchange, over a sealed channel (chan.h): a client asks
 * for an image's recipe, works out which chunks its own cache lacks, and
 * fetches only those, several requests in flight; each chunk travels
 * zstd-compressed when that is smaller and is checked against its digest on
 * arrival. The server reads every chunk back through the store, which
 * re-hashes it, so a corrupt copy is never served (the client hears it is
 * missing).
 */
#ifndef HANDOFF_EDGE_XFER_H
#define HANDOFF_EDGE_XFER_H

#include "chan.h"
#include "store.h"

struct edg_serve_stats {
	uint64_t recipes, chunks_sent, chunks_missing, bytes_raw, bytes_sent;
};

/* Serve one client until it says goodbye or the connection ends. 0, or -errno with err. */
int edg_serve_session(struct edg_store *s, struct edg_chan *ch, struct edg_serve_stats *st, char *err,
		      size_t errlen);

/* An image's recipe as the service sent it. */
struct edg_recipe {
	uint64_t size, n;
	uint32_t chunk_size;
	uint8_t hash[EDG_DIGEST_LEN]; /* SHA-256 of the n digests, as the service said */
	uint8_t *digests; /* n of them, malloc'd */
};

struct edg_fetch_report {
	uint64_t size, chunks, missing;  /* the image, and the chunks the cache lacked */
	uint64_t fetched_chunks, fetched_raw_bytes, fetched_wire_bytes;
	double seconds;
};

/* Ask the service for image name's recipe (r->digests to free). 0, or -errno with err. */
int edg_fetch_recipe(struct edg_chan *ch, const char *name, struct edg_recipe *r, uint64_t *wire_bytes, char *err,
		     size_t errlen);
/*
 * Ask for the recipes of names[i] whose r[i].digests is NULL all at once (one
 * round trip) and read the answers in turn; *wire_bytes grows by what crossed.
 * Returns how many arrived; err (when empty) takes the first failure's reason.
 * After a failure other than the service's refusal ("no image") the channel
 * may be out of step: -EPROTO, and the caller must close it (the recipes
 * that did arrive stay in r).
 */
int edg_fetch_recipes(struct edg_chan *ch, const char *const *names, unsigned n, struct edg_recipe *r,
		      uint64_t *wire_bytes, char *err, size_t errlen);

/*
 * A recipe in shares from several services (edge/multi.c). Ask for part of
 * parts of image name's recipe (part = parts: its header alone; 0 or -errno
 * with err). Read the oldest answer
 * into r: with r->digests NULL the header is taken and the digests allocated
 * (only the part filled); else a header naming the same recipe (size, chunk
 * size, count, hash) fills its part in place, and another version's is read
 * and dropped: -ESTALE (the channel is in step, as after -ENOENT, the
 * service's clean refusal). Any other error, a silence of timeout_s among
 * them, leaves the channel out of step.
 * edg_recipe_intact: the digests put together match the hash.
 */
int edg_ask_recipe_part(struct edg_chan *ch, const char *name, uint32_t part, uint32_t parts, uint32_t push_bytes,
			char *err, size_t errlen);
/*
 * push_bytes asks the service to send, right behind a share it sends, the
 * share's first distinct chunks unasked, about that many bytes of them (at
 * least one chunk, at most EDG_PUSH_MAX): after a share read
 * with 0 or -ESTALE comes edg_read_pushed (their digests, *k of them, in
 * *digests, malloc'd), then each chunk as edg_recv_chunk reads it. 0, or
 * -errno (the channel out of step).
 */
#define EDG_PUSH_MAX 64
int edg_read_pushed(struct edg_chan *ch, uint8_t **digests, uint32_t *k, double timeout_s, uint64_t *wire_bytes,
		    char *err, size_t errlen);
int edg_read_recipe_part(struct edg_chan *ch, struct edg_recipe *r, uint32_t part, uint32_t parts, double timeout_s,
			 uint64_t *wire_bytes, char *err, size_t errlen);
bool edg_recipe_intact(const struct edg_recipe *r);

/*
 * Fetch what s lacks of recipe r (s must cut chunks of r's size) and
 * register it as `as`. The recipe's chunks are pinned meanwhile, so a
 * collection cannot take what arrived before it is registered. 0, or -errno with err (nothing is registered; chunks
 * that arrived stay, complete and unreferenced). One session may fetch
 * several images; edg_fetch_done says goodbye.
 */
int edg_fetch_chunks(struct edg_store *s, struct edg_chan *ch, const struct edg_recipe *r, const char *as,
		     struct edg_fetch_report *rep, edg_progress_fn progress, void *ctx, char *err, size_t errlen);
void edg_fetch_done(struct edg_chan *ch);

/* The pieces a client that talks to several services at once builds on (edge/multi.h). */
#define EDG_REQ_MAX 64 /* chunks per request */
struct cdc_comp_ctx;
/* Ask for k <= EDG_REQ_MAX chunks; the service answers each, in order. 0 or -errno. */
int edg_request_chunks(struct edg_chan *ch, const uint8_t *digests, uint32_t k);
/* The largest answer to a chunk request of a cache cutting chunk_size-byte chunks. */
uint32_t edg_chunk_msg_max(uint32_t chunk_size);
/*
 * The next answer, due for chunk `want`: 0 with its checked bytes in dst
 * (*raw_len of them, at most cap), 1 if the service lacks it, or -errno with
 * err (-ETIMEDOUT after timeout_s; after any error close the channel). msg: a
 * buffer of edg_chunk_msg_max(cap) bytes; *wire grows by the frame's bytes.
 */
int edg_recv_chunk(struct edg_chan *ch, const uint8_t *want, uint8_t *msg, struct cdc_comp_ctx *cz, uint8_t *dst,
		   uint32_t cap, uint32_t *raw_len, double timeout_s, uint64_t *wire, char *err, size_t errlen);
/* Each digest of d[0..n) marked missing, once (an image repeats some, zeros above all), sorted; malloc'd. */
int edg_digest_cmp(const void *a, const void *b); /* that order: qsort and bsearch over digests */
uint8_t *edg_wanted(const uint8_t *d, const bool *missing, uint64_t n, uint64_t *nw);
/* Which of n digests the service holds (held[i]). 0, or -errno with err. */
int edg_ask_have(struct edg_chan *ch, const uint8_t *digests, uint64_t n, bool *held, double timeout_s,
		 uint64_t *wire, char *err, size_t errlen);

#endif

/*
 * libFuzzer target for the chunk service's exchange (edge/xfer.c), both
 * ends, behind the sealed channel: what a holder of the key (an edge that
 * went bad, a buggy build) could send. The channel is this harness's own:
 * edg_chan_recv(_view) hands out the input's messages in order, edg_chan_send
 * drops what it is given. Chunks are 4 KiB; the service's cache holds one
 * image "img" of three chunks (the second twice), in /dev/shm.
 *
 *   message = type:u8 | len:u16 little-endian | len bytes (cut at the input's end)
 *
 * Input byte 0 picks the end:
 *   0: the service: the messages are a client's (edg_serve_session);
 *   1: a client fetching "img" into an empty cache: the messages are the
 *      service's replies (edg_fetch_recipe, then edg_fetch_chunks; a fetched
 *      image is removed and the cache collected to nothing, so that every
 *      input starts alike);
 *   2: a client asking which of the image's chunks a service holds (edg_ask_have);
 *   3: a client waiting for the image's first chunk (edg_recv_chunk);
 *   4: a client asking for two recipes at once (edg_fetch_recipes): the
 *      replies to both, in turn; a reply that is not a clean refusal must
 *      leave no recipe after it taken;
 *   5: a client reading share 1 of 2 of "img"'s recipe into the recipe it
 *      holds the header and share 0 of (edg_read_recipe_part): whatever
 *      comes, share 0's places keep their digests;
 *   6: a client reading the list of chunks a service sends unasked behind a
 *      share (edg_read_pushed): at most EDG_PUSH_MAX, a list iff any.
 *
 * With FUZZ_XFER_SEEDS=DIR the harness writes a well-formed input for each
 * end to DIR and exits (tests/fuzz/corpus/xfer).
 */
#include "edge/xfer.h"
#include "codecs/codecs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK 4096
#define NCHUNK 3

struct edg_chan {
	const uint8_t *in;
	size_t len, pos;
};

int edg_chan_send(struct edg_chan *ch, uint8_t type, const void *payload, uint32_t len)
{
	(void)ch, (void)type, (void)payload;
	return len > EDG_CHAN_MAX_PAYLOAD ? -EMSGSIZE : 0;
}

int edg_chan_recv_view(struct edg_chan *ch, uint8_t *type, const uint8_t **payload, uint32_t max, uint32_t *len,
		       double timeout_s)
{
	(void)timeout_s;
	if (ch->len - ch->pos < 3) {
		ch->pos = ch->len;
		return -EPIPE;
	}
	const uint8_t *p = ch->in + ch->pos;
	uint32_t n = (uint32_t)p[1] | (uint32_t)p[2] << 8;
	if (n > ch->len - ch->pos - 3)
		n = (uint32_t)(ch->len - ch->pos - 3);
	ch->pos += 3 + n;
	if (n > max)
		return -EMSGSIZE;
	*type = p[0];
	*payload = p + 3;
	*len = n;
	return 0;
}

bool edg_chan_in_session(const struct edg_chan *ch)
{
	(void)ch;
	return true;
}

int edg_chan_recv(struct edg_chan *ch, uint8_t *type, void *buf, uint32_t cap, uint32_t *len, double timeout_s)
{
	const uint8_t *p;
	int r = edg_chan_recv_view(ch, type, &p, cap, len, timeout_s);

	if (!r)
		memcpy(buf, p, *len);
	return r;
}

static char served_dir[64], fetch_dir[64];
static struct edg_store *served, *fetched;
static uint8_t image[NCHUNK * CHUNK], digests[NCHUNK][EDG_DIGEST_LEN];

static void remove_dir(const char *dir)
{
	char path[96];

	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/lock.mdb", dir);
	unlink(path);
	rmdir(dir);
}

static void cleanup(void)
{
	edg_store_close(served);
	edg_store_close(fetched);
	remove_dir(served_dir);
	remove_dir(fetch_dir);
}

static void write_seeds(const char *dir);

static void init(void)
{
	char err[256], path[96];

	if (served)
		return;
	for (size_t i = 0; i < sizeof(image); i++)
		image[i] = (uint8_t)(i * 13 + (i >> 12));
	memcpy(image + 2 * CHUNK, image, CHUNK); /* the first chunk again: one digest, two places */
	for (int c = 0; c < NCHUNK; c++)
		cdc_sha256(image + c * CHUNK, CHUNK, digests[c]);
	snprintf(served_dir, sizeof(served_dir), "/dev/shm/fuzz-xfer-%d-s", (int)getpid());
	snprintf(fetch_dir, sizeof(fetch_dir), "/dev/shm/fuzz-xfer-%d-f", (int)getpid());
	snprintf(path, sizeof(path), "%s.img", served_dir);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(image, 1, sizeof(image), f) != sizeof(image) || fclose(f))
		abort();
	struct edg_add_report rep;
	served = edg_store_open(served_dir, true, CHUNK, 16 << 20, err, sizeof(err));
	fetched = edg_store_open(fetch_dir, true, CHUNK, 16 << 20, err, sizeof(err));
	if (!served || !fetched || edg_store_add_file(served, "img", path, &rep, NULL, NULL, err, sizeof(err))) {
		fprintf(stderr, "fuzz_xfer: %s\n", err);
		abort();
	}
	unlink(path);
	atexit(cleanup);
	if (getenv("FUZZ_XFER_SEEDS")) {
		write_seeds(getenv("FUZZ_XFER_SEEDS"));
		exit(0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct edg_chan ch = { data + 1, size ? size - 1 : 0, 0 };
	char err[512] = "ok";
	uint64_t wire = 0;

	init();
	if (!size)
		return 0;
	switch (data[0] % 7) {
	case 0: {
		struct edg_serve_stats st;
		edg_serve_session(served, &ch, &st, err, sizeof(err));
		break;
	}
	case 1: {
		struct edg_recipe rc;
		struct edg_fetch_report rep = { 0 };
		if (edg_fetch_recipe(&ch, "img", &rc, &wire, err, sizeof(err)))
			break;
		if (!edg_fetch_chunks(fetched, &ch, &rc, "got", &rep, NULL, NULL, err, sizeof(err)) &&
		    edg_store_remove_image(fetched, "got", err, sizeof(err)))
			abort();
		free(rc.digests);
		/* every input starts from an empty cache: what arrived goes again */
		struct edg_gc_report gr;
		if (edg_store_gc(fetched, 0, 0, NULL, &gr, err, sizeof(err)))
			abort();
		break;
	}
	case 2: {
		bool held[NCHUNK];
		edg_ask_have(&ch, &digests[0][0], NCHUNK, held, 1, &wire, err, sizeof(err));
		break;
	}
	case 4: {
		const char *names[2] = { "img", "img" };
		struct edg_recipe rc[2] = { { 0 } };
		int got = edg_fetch_recipes(&ch, names, 2, rc, &wire, err, sizeof(err));
		if (got > 2 || (got >= 0 && (rc[0].digests != NULL) + (rc[1].digests != NULL) != got))
			abort();
		free(rc[0].digests);
		free(rc[1].digests);
		break;
	}
	case 5: {
		uint8_t d[NCHUNK][EDG_DIGEST_LEN];
		struct edg_recipe rc = { .size = sizeof(image), .n = NCHUNK, .chunk_size = CHUNK, .digests = &d[0][0] };
		memcpy(d, digests, sizeof(d));
		memset(d[1], 0, EDG_DIGEST_LEN); /* share 1 of 2: the second digest, still to come */
		cdc_sha256(digests, sizeof(digests), rc.hash);
		int r = edg_read_recipe_part(&ch, &rc, 1, 2, 1, &wire, err, sizeof(err));
		if (memcmp(d[0], digests[0], EDG_DIGEST_LEN) || memcmp(d[2], digests[2], EDG_DIGEST_LEN) ||
		    (r == 0 && rc.digests != &d[0][0]))
			abort();
		break;
	}
	case 6: {
		uint8_t *d = NULL;
		uint32_t k = 0;
		int r = edg_read_pushed(&ch, &d, &k, 1, &wire, err, sizeof(err));
		if (k > EDG_PUSH_MAX || (!d) != (k == 0) || (r && (d || k)))
			abort();
		free(d);
		break;
	}
	default: {
		static uint8_t msg[EDG_CHAN_MAX_PAYLOAD], dst[CHUNK];
		struct cdc_comp_ctx *cz = cdc_comp_new();
		uint32_t raw = 0;
		if (!cz)
			abort();
		/* a chunk that checks out is the one asked for, byte for byte */
		if (edg_recv_chunk(&ch, digests[0], msg, cz, dst, CHUNK, &raw, 1, &wire, err, sizeof(err)) == 0 &&
		    (raw != CHUNK || memcmp(dst, image, CHUNK)))
			abort();
		cdc_comp_free(cz);
	}
	}
	return 0;
}

/* ---- seeds ------------------------------------------------------------------------ */

static void put_msg(FILE *f, uint8_t type, const void *body, uint16_t len)
{
	uint8_t h[3] = { type, (uint8_t)len, (uint8_t)(len >> 8) };
	if (fwrite(h, 1, 3, f) != 3 || (len && fwrite(body, 1, len, f) != len))
		abort();
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* the message types of edge/xfer.c */
enum { RECIPE_REQ = 1, RECIPE_HDR, RECIPE_PART, CHUNKS_REQ, CHUNK_MSG, NOCHUNK, ERROR_MSG, BYE, HAVE_REQ, HAVE, PUSHED };

static FILE *seed(const char *dir, const char *name, uint8_t end)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fputc(end, f) == EOF)
		abort();
	return f;
}

static void put_chunk(FILE *f, int c, bool packed)
{
	static uint8_t body[EDG_DIGEST_LEN + 5 + CHUNK + 64];
	size_t n = CHUNK;

	memcpy(body, digests[c], EDG_DIGEST_LEN);
	put_le(body + EDG_DIGEST_LEN, CHUNK, 4);
	body[EDG_DIGEST_LEN + 4] = packed ? CDC_COMP_ZSTD : CDC_COMP_NONE;
	if (packed) {
		struct cdc_comp_ctx *cz = cdc_comp_new();
		ssize_t z = cz ? cdc_compress(cz, CDC_COMP_ZSTD, 3, image + c * CHUNK, CHUNK, body + EDG_DIGEST_LEN + 5,
					      CHUNK + 64)
			       : -1;
		cdc_comp_free(cz);
		if (z <= 0)
			abort();
		n = (size_t)z;
	} else {
		memcpy(body + EDG_DIGEST_LEN + 5, image + c * CHUNK, CHUNK);
	}
	put_msg(f, CHUNK_MSG, body, (uint16_t)(EDG_DIGEST_LEN + 5 + n));
}

/* A recipe part of k digests from d, as they are or zstd-packed. */
static void put_part(FILE *f, const uint8_t *d, uint32_t k, bool packed)
{
	uint8_t b[5 + NCHUNK * EDG_DIGEST_LEN + 64];
	size_t n = (size_t)k * EDG_DIGEST_LEN;

	put_le(b, k, 4);
	b[4] = packed ? CDC_COMP_ZSTD : CDC_COMP_NONE;
	if (packed) {
		struct cdc_comp_ctx *cz = cdc_comp_new();
		ssize_t z = cz ? cdc_compress(cz, CDC_COMP_ZSTD, 3, d, n, b + 5, sizeof(b) - 5) : -1;
		cdc_comp_free(cz);
		if (z <= 0)
			abort();
		n = (size_t)z;
	} else {
		memcpy(b + 5, d, n);
	}
	put_msg(f, RECIPE_PART, b, (uint16_t)(5 + n));
}

static void write_seeds(const char *dir)
{
	uint8_t b[5 + NCHUNK * EDG_DIGEST_LEN];
	FILE *f;

	/* the service: a recipe, share 1 of 2 of it with two chunks pushed behind it, its header
	 * alone, a have query (8-byte prefixes), the chunks and one it lacks, goodbye */
	f = seed(dir, "serve", 0);
	for (int k = 0; k < 3; k++) {
		uint8_t req[15];
		put_le(req, k == 0 ? 0 : k == 1 ? 1 : 2, 4);
		put_le(req + 4, k == 0 ? 1 : 2, 4);
		put_le(req + 8, k == 1 ? 2 * CHUNK : 0, 4);
		memcpy(req + 12, "img", 3);
		put_msg(f, RECIPE_REQ, req, sizeof(req));
	}
	put_le(b, NCHUNK, 4);
	b[4] = 8;
	for (int c = 0; c < NCHUNK; c++)
		memcpy(b + 5 + c * 8, digests[c], 8);
	put_msg(f, HAVE_REQ, b, 5 + NCHUNK * 8);
	put_le(b, NCHUNK, 4);
	memcpy(b + 4, digests, sizeof(digests));
	put_msg(f, CHUNKS_REQ, b, 4 + sizeof(digests));
	b[4] ^= 1;
	put_le(b, 1, 4);
	put_msg(f, CHUNKS_REQ, b, 4 + EDG_DIGEST_LEN);
	put_msg(f, BYE, NULL, 0);
	fclose(f);
	/* a client's fetch: the recipe in two parts, then the two distinct chunks (one packed) */
	f = seed(dir, "fetch", 1);
	uint8_t hdr[20 + EDG_DIGEST_LEN];
	put_le(hdr, sizeof(image), 8);
	put_le(hdr + 8, CHUNK, 4);
	put_le(hdr + 12, NCHUNK, 8);
	cdc_sha256(digests, sizeof(digests), hdr + 20);
	put_msg(f, RECIPE_HDR, hdr, sizeof(hdr));
	put_part(f, &digests[0][0], 2, false);
	put_part(f, digests[2], 1, false);
	/* asked in digest order */
	int first = memcmp(digests[0], digests[1], EDG_DIGEST_LEN) < 0 ? 0 : 1;
	put_chunk(f, first, true);
	put_chunk(f, 1 - first, false);
	fclose(f);
	/* have: the first and third held */
	f = seed(dir, "have", 2);
	put_le(b, NCHUNK, 4);
	b[4] = 5;
	put_msg(f, HAVE, b, 5);
	fclose(f);
	/* one chunk, packed */
	f = seed(dir, "chunk", 3);
	put_chunk(f, 0, true);
	fclose(f);
	f = seed(dir, "nochunk", 3);
	put_msg(f, NOCHUNK, digests[0], EDG_DIGEST_LEN);
	fclose(f);
	/* two recipes asked at once: a refusal, then the recipe in one part */
	f = seed(dir, "recipes", 4);
	put_msg(f, ERROR_MSG, "no image 'img' here", 19);
	put_msg(f, RECIPE_HDR, hdr, sizeof(hdr));
	put_part(f, &digests[0][0], NCHUNK, true);
	fclose(f);
	/* a header that asks for 2^37 digests: refused before they are allocated */
	f = seed(dir, "huge-recipe", 1);
	uint8_t huge[sizeof(hdr)];
	memcpy(huge, hdr, sizeof(hdr));
	put_le(huge, 1ull << 49, 8);
	put_le(huge + 12, (1ull << 49) / CHUNK, 8);
	put_msg(f, RECIPE_HDR, huge, sizeof(huge));
	fclose(f);
	/* share 1 of 2: the header, then the second digest */
	f = seed(dir, "share", 5);
	put_msg(f, RECIPE_HDR, hdr, sizeof(hdr));
	put_part(f, digests[1], 1, false);
	fclose(f);
	/* the list of two chunks sent unasked */
	f = seed(dir, "pushed", 6);
	put_le(b, 2, 4);
	memcpy(b + 4, digests, 2 * EDG_DIGEST_LEN);
	put_msg(f, PUSHED, b, 4 + 2 * EDG_DIGEST_LEN);
	fclose(f);
}

/*
 * Chunk exchange (see xfer.h). Messages, little-endian:
 *   RECIPE_REQ   u32 part, u32 parts, name    (the digests at part, part +
 *                parts, part + 2 parts, ...: several services can each send
 *                a share of one recipe, alike in size where an image's data
 *                and its zeros lie apart; part = parts: the header alone)
 *   RECIPE_HDR   u64 size, u32 chunk size, u64 chunks, the SHA-256 of all the
 *                digests (which checks the shares put together)   (or ERROR)
 *   RECIPE_PART  u32 count, u8 coding, count digests        (until the part came;
 *                coding 0: as they are, 2: zstd, which takes an image's
 *                repeated digests, the zero chunk's above all, down to a few bytes)
 *   CHUNKS_REQ   u32 count (<= REQ_MAX), count digests
 *   CHUNK        digest, u32 raw length, u8 compression, bytes   (one per
 *   NOCHUNK      digest                                           request)
 *   ERROR        text
 *   BYE
 *   HAVE_REQ     u32 count (<= HAVE_MAX), u8 prefix length, count digest
 *                prefixes (a quarter of the bytes: the start of a fetch waits on them)
 *   HAVE         u32 count, a bit per digest asked (1: held here)
 */
#include "xfer.h"
#include "codecs/codecs.h"
#include "engine/errbuf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum {
	MSG_RECIPE_REQ = 1,
	MSG_RECIPE_HDR,
	MSG_RECIPE_PART,
	MSG_CHUNKS_REQ,
	MSG_CHUNK,
	MSG_NOCHUNK,
	MSG_ERROR,
	MSG_BYE,
	MSG_HAVE_REQ,
	MSG_HAVE,
	MSG_PUSHED, /* the digests of the chunks that follow a share unasked (RECIPE_REQ's push) */
};

#define REQ_MAX EDG_REQ_MAX
#define WINDOW 8            /* requests in flight */
#define PART_MAX 65536      /* digests per recipe part (2 MiB) */
#define HAVE_MAX 65536      /* digests per have query (2 MiB) */
#define RECIPE_MAX_CHUNKS (1ull << 24) /* 512 MiB of digests: 1 TiB in 64 KiB chunks */
#define ZSTD_LEVEL 3
#define IDLE_S 300.0        /* a client silent this long is gone */
#define FIRST_S 10.0        /* the wait for a session's first (key-proving) frame */
#define EARLY_S 30.0        /* after early requests (replayable), the wait for the first session frame */
#define CHUNK_HDR (EDG_DIGEST_LEN + 5)
#define PIN_S 3600          /* a fetch that dies without unpinning frees its pin after this */
/* the largest message each end reads: HAVE_REQ of a client, RECIPE_PART of a service */
#define HAVE_PREFIX 8       /* bytes of each digest a have query names: a false "held" costs one NOCHUNK */
#define REQ_BYTES_MAX (5 + (size_t)HAVE_MAX * EDG_DIGEST_LEN)
#define PART_BYTES_MAX (5 + (size_t)PART_MAX * EDG_DIGEST_LEN)
#define TEXT_MAX 512        /* an ERROR's text that a reader takes in */
#define RECIPE_HDR_LEN (20 + EDG_DIGEST_LEN)

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static double mono(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int send_error(struct edg_chan *ch, const char *text)
{
	return edg_chan_send(ch, MSG_ERROR, text, (uint32_t)strlen(text));
}

static const char *recv_error(int r)
{
	return r == -EBADMSG ? "a frame failed authentication (forged, replayed or corrupt)"
	       : r == -EPIPE ? "the peer closed the connection"
	       : r == -ETIMEDOUT ? "the peer went silent"
	       : r == -EMSGSIZE ? "a message too large"
			 : strerror(-r);
}

/* ---- server --------------------------------------------------------------------- */

/* A reply, grown to what the session's replies need (most never need the largest). */
struct reply {
	uint8_t *b;
	size_t cap, max;
};

/* What serving chunks takes: the store, a chunk's room and a compressor. */
struct serving {
	struct edg_store *s;
	struct edg_chan *ch;
	struct reply o;
	uint8_t *raw;
	struct cdc_comp_ctx *cz;
	uint32_t cs;
	size_t cap;
	struct edg_serve_stats *st;
};

static uint8_t *reply_room(struct reply *o, size_t need)
{
	if (need > o->max)
		return NULL;
	if (need > o->cap) {
		size_t to = o->cap * 2 > need ? o->cap * 2 : need;
		uint8_t *b = realloc(o->b, to < o->max ? to : o->max);
		if (!b)
			return NULL;
		o->b = b;
		o->cap = to < o->max ? to : o->max;
	}
	return o->b;
}

/* How many of an n-digest recipe's digests part of parts stands for (every parts-th from part). */
static uint64_t share_count(uint64_t n, uint32_t part, uint32_t parts)
{
	return part < parts && part < n ? (n - part + parts - 1) / parts : 0;
}

/* Each chunk of digests[0..k) as a CHUNK (compressed when smaller) or a NOCHUNK. */
static int serve_chunks(struct serving *v, const uint8_t *digests, uint32_t k)
{
	uint8_t *out = reply_room(&v->o, CHUNK_HDR + (v->cap > v->cs ? v->cap : v->cs));
	int r = out ? 0 : -ENOMEM;

	for (uint32_t i = 0; i < k && !r; i++) {
		const uint8_t *d = digests + (size_t)i * EDG_DIGEST_LEN;
		uint32_t got;
		if (edg_store_get(v->s, d, v->raw, v->cs, &got)) {
			v->st->chunks_missing++;
			r = edg_chan_send(v->ch, MSG_NOCHUNK, d, EDG_DIGEST_LEN);
			continue;
		}
		ssize_t z = cdc_compress(v->cz, CDC_COMP_ZSTD, ZSTD_LEVEL, v->raw, got, out + CHUNK_HDR, v->cap);
		bool packed = z > 0 && (size_t)z < got;
		memcpy(out, d, EDG_DIGEST_LEN);
		put32(out + EDG_DIGEST_LEN, got);
		out[EDG_DIGEST_LEN + 4] = packed ? CDC_COMP_ZSTD : CDC_COMP_NONE;
		if (!packed)
			memcpy(out + CHUNK_HDR, v->raw, got);
		uint32_t body = packed ? (uint32_t)z : got;
		r = edg_chan_send(v->ch, MSG_CHUNK, out, CHUNK_HDR + body);
		v->st->chunks_sent++;
		v->st->bytes_raw += got;
		v->st->bytes_sent += CHUNK_HDR + body;
	}
	return r;
}

/*
 * The first distinct chunks of the share (at the front of d), up to push, unasked: their
 * digests in a PUSHED, then each as CHUNKS_REQ would answer it. A destination with an empty
 * cache asks for this, so its path carries data while it assembles the recipe and asks.
 */
static int push_share(struct serving *v, const uint8_t *d, uint64_t count, uint32_t push)
{
	uint8_t *list = malloc(4 + (size_t)push * EDG_DIGEST_LEN);
	uint32_t k = 0;
	int r;

	if (!list)
		return -ENOMEM;
	for (uint64_t j = 0; j < count && k < push; j++) {
		const uint8_t *x = d + j * EDG_DIGEST_LEN;
		bool seen = false;
		for (uint32_t q = 0; q < k && !seen; q++)
			seen = !memcmp(list + 4 + (size_t)q * EDG_DIGEST_LEN, x, EDG_DIGEST_LEN);
		if (!seen)
			memcpy(list + 4 + (size_t)k++ * EDG_DIGEST_LEN, x, EDG_DIGEST_LEN);
	}
	put32(list, k);
	r = edg_chan_send(v->ch, MSG_PUSHED, list, 4 + k * EDG_DIGEST_LEN);
	if (!r)
		r = serve_chunks(v, list + 4, k);
	free(list);
	return r;
}

/* RECIPE_REQ: u32 part, u32 parts, u32 push (bytes of chunks to send unasked after the share), name. */
static int serve_recipe(struct serving *v, const uint8_t *in, uint32_t len)
{
	struct edg_store *s = v->s;
	struct edg_chan *ch = v->ch;
	struct reply *o = &v->o;
	char nm[EDG_NAME_MAX + 1];
	uint8_t *d, *out;
	uint64_t size, n;
	int r;

	if (len < 12 || get32(in + 4) == 0 || get32(in) > get32(in + 4))
		return send_error(ch, "bad recipe part");
	uint32_t part = get32(in), parts = get32(in + 4), push_bytes = get32(in + 8);
	/* at least one chunk when asked, at most EDG_PUSH_MAX */
	uint32_t push = !push_bytes ? 0 : push_bytes / v->cs < 1 ? 1 : push_bytes / v->cs > EDG_PUSH_MAX ? EDG_PUSH_MAX : push_bytes / v->cs;
	if (len == 12 || len - 12 > EDG_NAME_MAX)
		return send_error(ch, "bad image name");
	memcpy(nm, in + 12, len - 12);
	nm[len - 12] = 0;
	if (edg_store_recipe(s, nm, &size, &d, &n)) {
		char msg[EDG_NAME_MAX + 40];
		snprintf(msg, sizeof(msg), "no image '%s' here", nm);
		return send_error(ch, msg);
	}
	uint64_t count = share_count(n, part, parts);
	uint32_t first = (uint32_t)(count < PART_MAX ? count : PART_MAX);
	if (!(out = reply_room(o, RECIPE_HDR_LEN > 5 + (size_t)first * EDG_DIGEST_LEN
					  ? RECIPE_HDR_LEN
					  : 5 + (size_t)first * EDG_DIGEST_LEN))) {
		free(d);
		return -ENOMEM;
	}
	put64(out, size);
	put32(out + 8, edg_store_chunk_size(s));
	put64(out + 12, n);
	cdc_sha256(d, n * EDG_DIGEST_LEN, out + 20);
	/* the share to the front, in place (each digest moves down, never over one still to move) */
	for (uint64_t j = 0; j < count && parts > 1; j++)
		memmove(d + j * EDG_DIGEST_LEN, d + (part + j * parts) * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
	r = edg_chan_send(ch, MSG_RECIPE_HDR, out, RECIPE_HDR_LEN);
	for (uint64_t at = 0; !r && at < count; at += PART_MAX) {
		uint32_t k = (uint32_t)(count - at < PART_MAX ? count - at : PART_MAX);
		size_t raw = (size_t)k * EDG_DIGEST_LEN;
		ssize_t z = cdc_compress(v->cz, CDC_COMP_ZSTD, ZSTD_LEVEL, d + at * EDG_DIGEST_LEN, raw, out + 5, raw);
		bool packed = z > 0 && (size_t)z < raw;
		put32(out, k);
		out[4] = packed ? CDC_COMP_ZSTD : CDC_COMP_NONE;
		if (!packed)
			memcpy(out + 5, d + at * EDG_DIGEST_LEN, raw);
		r = edg_chan_send(ch, MSG_RECIPE_PART, out, (uint32_t)(5 + (packed ? (size_t)z : raw)));
	}
	if (!r && push)
		r = push_share(v, d, count, push);
	free(d);
	v->st->recipes++;
	return r;
}

/* Which of the prefixes asked about are held here: a bit each, no re-hash (a corrupt copy is NOCHUNK later). */
static int serve_have(struct edg_store *s, struct edg_chan *ch, const uint8_t *in, uint32_t k, unsigned plen,
		      struct reply *o)
{
	uint8_t *out = reply_room(o, 4 + ((size_t)k + 7) / 8);
	int r;

	if (!out)
		return -ENOMEM;
	put32(out, k);
	if ((r = edg_store_has_prefixes(s, in + 5, k, plen, out + 4)))
		return send_error(ch, "cannot read the cache");
	return edg_chan_send(ch, MSG_HAVE, out, 4 + (k + 7) / 8);
}

int edg_serve_session(struct edg_store *s, struct edg_chan *ch, struct edg_serve_stats *st, char *err,
		      size_t errlen)
{
	uint32_t cs = edg_store_chunk_size(s), len;
	size_t out_max = edg_chunk_msg_max(cs);
	if (out_max < PART_BYTES_MAX)
		out_max = PART_BYTES_MAX;
	/* requests are read where the channel keeps them (at most REQ_BYTES_MAX: a larger one ends
	 * the session); replies grow up to the largest */
	const uint8_t *in;
	struct serving v = { .s = s, .ch = ch, .o = { .cap = 64 << 10, .max = out_max }, .cs = cs,
			     .cap = cdc_comp_bound(CDC_COMP_ZSTD, cs), .st = st };
	v.o.b = malloc(v.o.cap);
	v.raw = malloc(cs);
	v.cz = cdc_comp_new();
	uint8_t type;
	int r = 0;

	/* the first frame proves the client holds the key: until then it gets a short wait, so a
	 * client without the key cannot hold the service for long */
	double wait = FIRST_S;

	memset(st, 0, sizeof(*st));
	if (!v.o.b || !v.raw || !v.cz || out_max > EDG_CHAN_MAX_PAYLOAD) {
		eng_set_err(err, errlen, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	for (;;) {
		if ((r = edg_chan_recv_view(ch, &type, &in, REQ_BYTES_MAX, &len, wait))) {
			if (r == -EPIPE) /* the client left without a goodbye: its loss, not ours */
				r = 0;
			else
				eng_set_err(err, errlen, "client: %s", recv_error(r));
			break;
		}
		wait = edg_chan_in_session(ch) ? IDLE_S : EARLY_S;
		if (type == MSG_BYE)
			break;
		if (type == MSG_RECIPE_REQ) {
			r = serve_recipe(&v, in, len);
		} else if (type == MSG_HAVE_REQ && len >= 5 && get32(in) <= HAVE_MAX && in[4] >= EDG_PREFIX_MIN &&
			   in[4] <= EDG_DIGEST_LEN && len == 5 + (uint64_t)get32(in) * in[4]) {
			r = serve_have(s, ch, in, get32(in), in[4], &v.o);
		} else if (type == MSG_CHUNKS_REQ && len >= 4 && get32(in) <= REQ_MAX &&
			   len == 4 + get32(in) * EDG_DIGEST_LEN) {
			r = serve_chunks(&v, in + 4, get32(in));
		} else {
			send_error(ch, "malformed request");
			eng_set_err(err, errlen, "client sent a malformed request (type %u, %u bytes)", type, len);
			r = -EPROTO;
			break;
		}
		if (r) {
			eng_set_err(err, errlen, "client: %s", recv_error(r));
			break;
		}
	}
out:
	cdc_comp_free(v.cz);
	free(v.o.b);
	free(v.raw);
	return r;
}

/* ---- client --------------------------------------------------------------------- */

struct fetch {
	struct edg_store *s;
	struct edg_chan *ch;
	struct edg_fetch_report *rep;
	uint8_t *msg;           /* one received message */
	uint32_t msg_cap;
	uint8_t *batch;         /* arrived chunks, REQ_MAX of chunk size, stored together */
	const uint8_t *batch_ptr[REQ_MAX];
	uint32_t batch_len[REQ_MAX];
	uint8_t batch_digest[REQ_MAX * EDG_DIGEST_LEN];
	unsigned nbatch;
	struct cdc_comp_ctx *cz;
	uint64_t lacking;
	double wait_s;          /* the longest silence taken (0: IDLE_S) */
	char *err;
	size_t errlen;
};

/* The service's error text, or a protocol complaint. */
static int unexpected(struct fetch *f, uint8_t type, uint32_t len, const char *wanted)
{
	if (type == MSG_ERROR) {
		eng_set_err(f->err, f->errlen, "service: %.*s", (int)(len < 300 ? len : 300), (const char *)f->msg);
		return -ENOENT;
	}
	eng_set_err(f->err, f->errlen, "service sent message %u where %s was due", type, wanted);
	return -EPROTO;
}

static int recv_msg(struct fetch *f, uint8_t *type, uint32_t *len)
{
	int r = edg_chan_recv(f->ch, type, f->msg, f->msg_cap, len, f->wait_s > 0 ? f->wait_s : IDLE_S);
	if (r)
		eng_set_err(f->err, f->errlen, "service: %s", recv_error(r));
	else
		f->rep->fetched_wire_bytes += 4 + 1 + *len + CDC_TAG_LEN;
	return r;
}

static int flush_batch(struct fetch *f)
{
	uint64_t added;
	int r = f->nbatch ? edg_store_put_many(f->s, f->nbatch, f->batch_digest, f->batch_ptr, f->batch_len, &added,
					      f->err, f->errlen)
			  : 0;
	f->nbatch = 0;
	return r;
}

uint32_t edg_chunk_msg_max(uint32_t chunk_size)
{
	size_t n = CHUNK_HDR + cdc_comp_bound(CDC_COMP_ZSTD, chunk_size);

	n = n > CHUNK_HDR + chunk_size ? n : CHUNK_HDR + chunk_size;
	return (uint32_t)(n > TEXT_MAX ? n : TEXT_MAX);
}

int edg_recv_chunk(struct edg_chan *ch, const uint8_t *want, uint8_t *msg, struct cdc_comp_ctx *cz, uint8_t *dst,
		   uint32_t cap, uint32_t *raw_len, double timeout_s, uint64_t *wire, char *err, size_t errlen)
{
	uint32_t len;
	uint8_t type, got[EDG_DIGEST_LEN];
	int r = edg_chan_recv(ch, &type, msg, edg_chunk_msg_max(cap), &len, timeout_s);

	if (r) {
		eng_set_err(err, errlen, "service: %s", recv_error(r));
		return r;
	}
	*wire += 4 + 1 + len + CDC_TAG_LEN;
	if (type == MSG_NOCHUNK && len == EDG_DIGEST_LEN && !memcmp(msg, want, EDG_DIGEST_LEN))
		return 1;
	if (type == MSG_ERROR) {
		eng_set_err(err, errlen, "service: %.*s", (int)(len < 300 ? len : 300), (const char *)msg);
		return -ENOENT;
	}
	if (type != MSG_CHUNK || len < CHUNK_HDR || memcmp(msg, want, EDG_DIGEST_LEN)) {
		eng_set_err(err, errlen, "service sent message %u where the chunk asked for was due", type);
		return -EPROTO;
	}
	uint32_t raw = get32(msg + EDG_DIGEST_LEN);
	uint8_t comp = msg[EDG_DIGEST_LEN + 4];
	if (raw > cap || (comp == CDC_COMP_NONE && len - CHUNK_HDR != raw) ||
	    (comp == CDC_COMP_ZSTD && cdc_decompress(cz, CDC_COMP_ZSTD, msg + CHUNK_HDR, len - CHUNK_HDR, dst, raw)) ||
	    (comp != CDC_COMP_NONE && comp != CDC_COMP_ZSTD)) {
		eng_set_err(err, errlen, "service sent a malformed chunk");
		return -EPROTO;
	}
	if (comp == CDC_COMP_NONE)
		memcpy(dst, msg + CHUNK_HDR, raw);
	cdc_sha256(dst, raw, got);
	if (memcmp(got, want, EDG_DIGEST_LEN)) {
		eng_set_err(err, errlen, "service sent a chunk whose bytes do not match its name");
		return -EBADMSG;
	}
	*raw_len = raw;
	return 0;
}

/* One reply: the chunk asked for as `want`, checked and queued for the store. */
static int take_chunk(struct fetch *f, const uint8_t *want)
{
	uint32_t cs = edg_store_chunk_size(f->s), raw;
	uint8_t *dst = f->batch + (size_t)f->nbatch * cs;
	int r = edg_recv_chunk(f->ch, want, f->msg, f->cz, dst, cs, &raw, IDLE_S, &f->rep->fetched_wire_bytes, f->err,
			       f->errlen);

	if (r < 0)
		return r;
	if (r == 1) {
		f->lacking++;
		return 0;
	}
	memcpy(f->batch_digest + f->nbatch * EDG_DIGEST_LEN, want, EDG_DIGEST_LEN);
	f->batch_ptr[f->nbatch] = dst;
	f->batch_len[f->nbatch++] = raw;
	f->rep->fetched_chunks++;
	f->rep->fetched_raw_bytes += raw;
	return f->nbatch == REQ_MAX ? flush_batch(f) : 0;
}

int edg_request_chunks(struct edg_chan *ch, const uint8_t *digests, uint32_t k)
{
	uint8_t req[4 + EDG_REQ_MAX * EDG_DIGEST_LEN];

	if (k > EDG_REQ_MAX)
		return -EINVAL;
	put32(req, k);
	memcpy(req + 4, digests, (size_t)k * EDG_DIGEST_LEN);
	return edg_chan_send(ch, MSG_CHUNKS_REQ, req, 4 + k * EDG_DIGEST_LEN);
}

static int send_request(struct fetch *f, const uint8_t *digests, uint32_t k)
{
	int r = edg_request_chunks(f->ch, digests, k);
	if (r)
		eng_set_err(f->err, f->errlen, "cannot reach the service: %s", strerror(-r));
	return r;
}

int edg_ask_have(struct edg_chan *ch, const uint8_t *digests, uint64_t n, bool *held, double timeout_s,
		 uint64_t *wire, char *err, size_t errlen)
{
	/* a query of up to HAVE_MAX prefixes, and its answer (a bit each) or an error */
	size_t cap = 5 + (n < HAVE_MAX ? n : HAVE_MAX) * HAVE_PREFIX;
	if (cap < TEXT_MAX)
		cap = TEXT_MAX;
	uint8_t *msg = malloc(cap);
	int r = 0;

	if (!msg) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (uint64_t at = 0; !r && at < n; at += HAVE_MAX) {
		uint32_t k = (uint32_t)(n - at < HAVE_MAX ? n - at : HAVE_MAX), len;
		uint8_t type;
		put32(msg, k);
		msg[4] = HAVE_PREFIX;
		for (uint32_t i = 0; i < k; i++)
			memcpy(msg + 5 + (size_t)i * HAVE_PREFIX, digests + (at + i) * EDG_DIGEST_LEN, HAVE_PREFIX);
		if ((r = edg_chan_send(ch, MSG_HAVE_REQ, msg, 5 + k * HAVE_PREFIX))) {
			eng_set_err(err, errlen, "cannot reach the service: %s", strerror(-r));
			break;
		}
		*wire += 4 + 1 + 5 + (uint64_t)k * HAVE_PREFIX + CDC_TAG_LEN;
		if ((r = edg_chan_recv(ch, &type, msg, (uint32_t)cap, &len, timeout_s))) {
			eng_set_err(err, errlen, "service: %s", recv_error(r));
			break;
		}
		*wire += 4 + 1 + len + CDC_TAG_LEN;
		if (type == MSG_ERROR) {
			eng_set_err(err, errlen, "service: %.*s", (int)(len < 300 ? len : 300), (const char *)msg);
			r = -ENOENT;
		} else if (type != MSG_HAVE || len != 4 + (k + 7) / 8 || get32(msg) != k) {
			eng_set_err(err, errlen, "service sent message %u where the answer to a have query was due", type);
			r = -EPROTO;
		} else {
			for (uint32_t i = 0; i < k; i++)
				held[at + i] = msg[4 + i / 8] >> (i % 8) & 1;
		}
	}
	free(msg);
	return r;
}

int edg_digest_cmp(const void *a, const void *b)
{
	return memcmp(a, b, EDG_DIGEST_LEN);
}

uint8_t *edg_wanted(const uint8_t *d, const bool *missing, uint64_t n, uint64_t *nw)
{
	uint8_t *w = malloc(n ? n * EDG_DIGEST_LEN : 1);
	uint64_t k = 0, out = 0;

	if (!w)
		return NULL;
	for (uint64_t i = 0; i < n; i++)
		if (missing[i])
			memcpy(w + k++ * EDG_DIGEST_LEN, d + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
	qsort(w, k, EDG_DIGEST_LEN, edg_digest_cmp);
	for (uint64_t i = 0; i < k; i++)
		if (!out || memcmp(w + (out - 1) * EDG_DIGEST_LEN, w + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN))
			memmove(w + out++ * EDG_DIGEST_LEN, w + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
	*nw = out;
	return w;
}

int edg_ask_recipe_part(struct edg_chan *ch, const char *name, uint32_t part, uint32_t parts, uint32_t push_bytes,
			char *err, size_t errlen)
{
	uint8_t req[12 + EDG_NAME_MAX];
	size_t len = strlen(name);
	int r;

	if (!parts || part > parts || len > EDG_NAME_MAX) {
		eng_set_err(err, errlen, "bad recipe request");
		return -EINVAL;
	}
	put32(req, part);
	put32(req + 4, parts);
	put32(req + 8, push_bytes);
	memcpy(req + 12, name, len);
	if ((r = edg_chan_send(ch, MSG_RECIPE_REQ, req, (uint32_t)(12 + len))))
		eng_set_err(err, errlen, "cannot reach the service: %s", strerror(-r));
	return r;
}

static bool same_recipe(const struct edg_recipe *a, const struct edg_recipe *b)
{
	return a->size == b->size && a->chunk_size == b->chunk_size && a->n == b->n &&
	       !memcmp(a->hash, b->hash, EDG_DIGEST_LEN);
}

int edg_read_recipe_part(struct edg_chan *ch, struct edg_recipe *rc, uint32_t part, uint32_t parts, double timeout_s,
			 uint64_t *wire_bytes, char *err, size_t errlen)
{
	struct edg_fetch_report rep = { 0 };
	struct fetch f = { .ch = ch, .rep = &rep, .wait_s = timeout_s, .err = err, .errlen = errlen };
	struct edg_recipe h = { 0 };
	uint8_t *own = NULL, *part_buf = NULL;
	uint32_t len;
	uint8_t type;
	int r;

	f.msg_cap = PART_BYTES_MAX;
	if (!(f.msg = malloc(f.msg_cap)) || !(f.cz = cdc_comp_new()) ||
	    !(part_buf = malloc((size_t)PART_MAX * EDG_DIGEST_LEN))) {
		eng_set_err(err, errlen, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	if ((r = recv_msg(&f, &type, &len)))
		goto out;
	if (type != MSG_RECIPE_HDR || len != RECIPE_HDR_LEN) {
		r = unexpected(&f, type, len, "a recipe");
		goto out;
	}
	h.size = get64(f.msg);
	h.chunk_size = get32(f.msg + 8);
	h.n = get64(f.msg + 12);
	memcpy(h.hash, f.msg + 20, EDG_DIGEST_LEN);
	if (h.chunk_size < EDG_CHUNK_MIN || h.chunk_size > EDG_CHUNK_MAX || h.size > INT64_MAX ||
	    h.n != h.size / h.chunk_size + (h.size % h.chunk_size != 0)) {
		eng_set_err(err, errlen, "service sent an inconsistent recipe");
		r = -EPROTO;
		goto out;
	}
	/* the digests are allocated before they arrive: a header must not ask for terabytes
	 * (fuzz_xfer found a service that did) */
	if (h.n > RECIPE_MAX_CHUNKS) {
		eng_set_err(err, errlen, "service sent a recipe of %llu chunks (at most %llu)", (unsigned long long)h.n,
			    (unsigned long long)RECIPE_MAX_CHUNKS);
		r = -EPROTO;
		goto out;
	}
	uint64_t count = share_count(h.n, part, parts);
	bool mine = !rc->digests, same = mine || same_recipe(&h, rc);
	/* the first answer's header is the recipe's; another version's part is read (the channel
	 * stays in step) and dropped */
	if (mine && !(own = malloc(h.n ? h.n * EDG_DIGEST_LEN : 1))) {
		eng_set_err(err, errlen, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	uint8_t *into = mine ? own : rc->digests;
	for (uint64_t at = 0; at < count;) {
		if ((r = recv_msg(&f, &type, &len)))
			goto out;
		uint32_t k = len >= 5 ? get32(f.msg) : 0;
		if (type != MSG_RECIPE_PART || !k || k > PART_MAX || at + k > count) {
			r = unexpected(&f, type, len, "a recipe part");
			goto out;
		}
		/* exactly k digests out, whatever the coding (cdc_decompress refuses any other length) */
		uint8_t coding = f.msg[4];
		if ((coding != CDC_COMP_NONE && coding != CDC_COMP_ZSTD) ||
		    cdc_decompress(f.cz, coding, f.msg + 5, len - 5, part_buf, (size_t)k * EDG_DIGEST_LEN)) {
			eng_set_err(err, errlen, "service sent a malformed recipe part");
			r = -EPROTO;
			goto out;
		}
		for (uint32_t x = 0; x < k && same; x++) /* each to its place: every parts-th from part */
			memcpy(into + (part + (at + x) * parts) * EDG_DIGEST_LEN, part_buf + (size_t)x * EDG_DIGEST_LEN,
			       EDG_DIGEST_LEN);
		at += k;
	}
	if (!same) {
		eng_set_err(err, errlen, "service holds another version of the image");
		r = -ESTALE;
		goto out;
	}
	if (mine) {
		*rc = h;
		rc->digests = own;
		own = NULL;
	}
out:
	free(own);
	free(part_buf);
	if (wire_bytes)
		*wire_bytes += rep.fetched_wire_bytes;
	cdc_comp_free(f.cz);
	free(f.msg);
	return r;
}

int edg_read_pushed(struct edg_chan *ch, uint8_t **digests, uint32_t *k, double timeout_s, uint64_t *wire_bytes,
		    char *err, size_t errlen)
{
	struct edg_fetch_report rep = { 0 };
	struct fetch f = { .ch = ch, .rep = &rep, .wait_s = timeout_s, .err = err, .errlen = errlen,
			   .msg_cap = 4 + EDG_PUSH_MAX * EDG_DIGEST_LEN };
	uint8_t type;
	uint32_t len;
	int r;

	*digests = NULL;
	*k = 0;
	if (!(f.msg = malloc(f.msg_cap))) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (!(r = recv_msg(&f, &type, &len))) {
		uint32_t n = len >= 4 ? get32(f.msg) : UINT32_MAX;
		if (type != MSG_PUSHED || n > EDG_PUSH_MAX || len != 4 + n * EDG_DIGEST_LEN) {
			r = unexpected(&f, type, len, "the list of chunks sent unasked");
			r = r == -ENOENT ? -EPROTO : r; /* an ERROR here is out of step too */
		} else if (n && !(*digests = malloc((size_t)n * EDG_DIGEST_LEN))) {
			eng_set_err(err, errlen, "out of memory");
			r = -ENOMEM;
		} else {
			if (n) /* an empty list has no array to fill */
				memcpy(*digests, f.msg + 4, (size_t)n * EDG_DIGEST_LEN);
			*k = n;
		}
	}
	if (wire_bytes)
		*wire_bytes += rep.fetched_wire_bytes;
	free(f.msg);
	return r;
}

bool edg_recipe_intact(const struct edg_recipe *rc)
{
	uint8_t h[EDG_DIGEST_LEN];

	if (!rc->digests)
		return false;
	cdc_sha256(rc->digests, rc->n * EDG_DIGEST_LEN, h);
	return !memcmp(h, rc->hash, EDG_DIGEST_LEN);
}

/* The answer to the oldest whole recipe asked for, checked against its hash. */
static int read_recipe(struct edg_chan *ch, struct edg_recipe *rc, uint64_t *wire_bytes, char *err, size_t errlen)
{
	int r;

	memset(rc, 0, sizeof(*rc));
	if (!(r = edg_read_recipe_part(ch, rc, 0, 1, IDLE_S, wire_bytes, err, errlen)) && !edg_recipe_intact(rc)) {
		eng_set_err(err, errlen, "service sent a recipe that does not match its hash");
		r = -EPROTO;
	}
	if (r) {
		free(rc->digests);
		rc->digests = NULL;
	}
	return r;
}

int edg_fetch_recipe(struct edg_chan *ch, const char *name, struct edg_recipe *rc, uint64_t *wire_bytes, char *err,
		     size_t errlen)
{
	int r = edg_ask_recipe_part(ch, name, 0, 1, 0, err, errlen);

	if (wire_bytes)
		*wire_bytes = 0;
	if (r) {
		memset(rc, 0, sizeof(*rc));
		return r;
	}
	return read_recipe(ch, rc, wire_bytes, err, errlen);
}

int edg_fetch_recipes(struct edg_chan *ch, const char *const *names, unsigned n, struct edg_recipe *rc,
		      uint64_t *wire_bytes, char *err, size_t errlen)
{
	bool asked[n ? n : 1];
	unsigned got = 0;
	char e[512];
	int r = 0;

	for (unsigned i = 0; i < n; i++) /* every request first: one round trip for them all */
		asked[i] = !rc[i].digests && !r && !(r = edg_ask_recipe_part(ch, names[i], 0, 1, 0, e, sizeof(e)));
	if (r && !err[0])
		snprintf(err, errlen, "%s", e);
	for (unsigned i = 0; i < n; i++) {
		if (!asked[i])
			continue;
		if (!(r = read_recipe(ch, &rc[i], wire_bytes, e, sizeof(e)))) {
			got++;
			continue;
		}
		if (!err[0])
			snprintf(err, errlen, "%s", e);
		if (r != -ENOENT) /* not a clean refusal: what follows may be out of step */
			return -EPROTO;
	}
	return (int)got;
}

int edg_fetch_chunks(struct edg_store *s, struct edg_chan *ch, const struct edg_recipe *rc, const char *as,
		     struct edg_fetch_report *rep, edg_progress_fn progress, void *ctx, char *err, size_t errlen)
{
	uint32_t cs = edg_store_chunk_size(s);
	struct fetch f = { .s = s, .ch = ch, .rep = rep, .err = err, .errlen = errlen };
	uint8_t *w = NULL;
	bool *missing = NULL;
	double t0 = mono();
	uint64_t nw = 0, wire = rep->fetched_wire_bytes;
	char pin[EDG_NAME_MAX + 1];
	bool pinned = false;
	double pinned_at = 0;
	int r;

	memset(rep, 0, sizeof(*rep));
	rep->fetched_wire_bytes = wire; /* the recipe's, when the caller counted it there */
	rep->size = rc->size;
	rep->chunks = rc->n;
	f.msg_cap = edg_chunk_msg_max(cs);
	f.msg = malloc(f.msg_cap);
	f.batch = malloc((size_t)REQ_MAX * cs);
	f.cz = cdc_comp_new();
	missing = malloc(rc->n ? rc->n : 1);
	if (!f.msg || !f.batch || !f.cz || !missing) {
		eng_set_err(err, errlen, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	if (rc->chunk_size != cs) {
		eng_set_err(err, errlen, "the service cuts %u-byte chunks, this cache %u-byte ones", rc->chunk_size, cs);
		r = -EINVAL;
		goto out;
	}
	/* pinned while it arrives: a collection meanwhile must not take what is not registered yet */
	snprintf(pin, sizeof(pin), "fetch:%d:%.200s", (int)getpid(), as);
	if ((r = edg_store_pin(s, pin, rc->digests, rc->n, (uint64_t)time(NULL) + PIN_S, err, errlen)))
		goto out;
	pinned = true;
	pinned_at = mono();
	if ((r = edg_store_missing(s, rc->digests, rc->n, missing, &rep->missing))) {
		eng_set_err(err, errlen, "cannot read the cache");
		goto out;
	}
	if (!(w = edg_wanted(rc->digests, missing, rc->n, &nw))) {
		eng_set_err(err, errlen, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	/* WINDOW requests in flight: the link stays busy while replies are checked */
	uint64_t sent = 0, done = 0;
	while (done < nw) {
		while (sent < nw && sent - done < (uint64_t)WINDOW * REQ_MAX) {
			uint32_t k = (uint32_t)(nw - sent < REQ_MAX ? nw - sent : REQ_MAX);
			if ((r = send_request(&f, w + sent * EDG_DIGEST_LEN, k)))
				goto out;
			sent += k;
		}
		if ((r = take_chunk(&f, w + done * EDG_DIGEST_LEN)))
			goto out;
		if (++done % 256 == 0 && progress)
			progress(ctx, done * cs, nw * cs);
		/* a fetch slower than the pin's life renews it */
		if (mono() - pinned_at > PIN_S / 2) {
			if ((r = edg_store_pin(s, pin, rc->digests, rc->n, (uint64_t)time(NULL) + PIN_S, err, errlen)))
				goto out;
			pinned_at = mono();
		}
	}
	if ((r = flush_batch(&f)))
		goto out;
	if (f.lacking) {
		eng_set_err(err, errlen, "the service lacks %llu chunks of the image", (unsigned long long)f.lacking);
		r = -ENOENT;
		goto out;
	}
	r = edg_store_register(s, as, rc->size, rc->digests, rc->n, err, errlen);
out:
	if (r && f.nbatch) { /* what arrived and checked out stays, as the header promises */
		char keep_err[8];
		f.err = keep_err, f.errlen = sizeof(keep_err);
		flush_batch(&f);
	}
	if (pinned)
		edg_store_unpin(s, pin, NULL, 0);
	rep->seconds = mono() - t0;
	cdc_comp_free(f.cz);
	free(f.msg);
	free(f.batch);
	free(w);
	free(missing);
	return r;
}

void edg_fetch_done(struct edg_chan *ch)
{
	edg_chan_send(ch, MSG_BYE, NULL, 0);
}

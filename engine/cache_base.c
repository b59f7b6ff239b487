#include "cache_base.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>

#include "errbuf.h"
#include "vmbase.h"

static bool bit(const uint8_t *map, uint64_t i)
{
	return map[i / 8] >> (i % 8) & 1;
}

static void set_bit(uint8_t *map, uint64_t i, bool on)
{
	if (on)
		map[i / 8] |= (uint8_t)(1u << (i % 8));
	else
		map[i / 8] &= (uint8_t)~(1u << (i % 8));
}

static uint32_t chunk_len(const struct eng_cache_base *cb, unsigned o, uint64_t c)
{
	uint64_t off = c * cb->plan->chunk_size, size = cb->plan->obj[o].size;

	return size - off < cb->plan->chunk_size ? (uint32_t)(size - off) : cb->plan->chunk_size;
}

/* An all-zero chunk: held without a lookup, whether or not the cache stores it. */
static bool is_zero_chunk(const struct eng_cache_base *cb, unsigned o, uint64_t c)
{
	const uint8_t *d = cb->plan->obj[o].digests + c * CDC_DIGEST_LEN;
	bool last = c + 1 == cb->plan->obj[o].chunks;

	return !memcmp(d, cb->zero_digest[o][last], CDC_DIGEST_LEN);
}

/* The pristine base block, through a few chunk slots (a delta run reads one chunk many times). */
static int base_read(void *ctx, uint64_t block, uint8_t *buf)
{
	const struct eng_cache_object *co = ctx;
	struct eng_cache_base *cb = co->cb;
	unsigned o = co->obj;
	uint32_t cs = cb->plan->chunk_size;

	memset(buf, 0, CDC_BLOCK_SIZE);
	if (block >= cb->blocks[o])
		return 0; /* zero-padded past the end */
	if (!bit(cb->block_have[o], block))
		return -ENODATA; /* the reader never builds on a lacking block */
	uint64_t c = block * CDC_BLOCK_SIZE / cs, key = (uint64_t)o << 56 | (c + 1);
	unsigned s = (unsigned)((c * 0x9E3779B97F4A7C15ull + o) >> 60) % ENG_CACHE_SLOTS;
	if (cb->slot[s].key != key) {
		uint32_t len = chunk_len(cb, o, c), got = 0;
		if (!cb->slot[s].data && !(cb->slot[s].data = malloc(cs)))
			return -ENOMEM;
		cb->slot[s].key = 0;
		if (is_zero_chunk(cb, o, c))
			memset(cb->slot[s].data, 0, len);
		else if (edg_store_get(cb->store, cb->plan->obj[o].digests + c * CDC_DIGEST_LEN, cb->slot[s].data, cs,
				       &got) || got != len)
			return -EIO; /* pinned and read intact when filled: the cache broke under us */
		cb->slot[s].key = key;
	}
	uint64_t off = block * CDC_BLOCK_SIZE - c * cs, len = chunk_len(cb, o, c) - off;
	memcpy(buf, cb->slot[s].data + off, len < CDC_BLOCK_SIZE ? len : CDC_BLOCK_SIZE);
	return 0;
}

int eng_cache_base_open(struct eng_cache_base *cb, struct edg_store *store, const struct eng_base_plan *plan,
			double pin_s, char *err, size_t errlen)
{
	const struct eng_base_plan *p = plan;
	uint64_t total = 0;
	uint8_t *all = NULL, *zeros = NULL;
	bool *missing = NULL;
	int ret = -ENOMEM;

	memset(cb, 0, sizeof(*cb));
	cb->store = store;
	cb->plan = plan;
	if (p->chunk_size != edg_store_chunk_size(store)) {
		eng_set_err(err, errlen, "the source's plan cuts the base into %u-byte chunks, the cache holds %u-byte ones",
			    p->chunk_size, edg_store_chunk_size(store));
		return -EPROTO;
	}
	if (!(all = eng_base_plan_digests(p, &total)) || !(zeros = calloc(1, p->chunk_size)) ||
	    !(missing = malloc(total ? total * sizeof(bool) : 1)))
		goto nomem;
	snprintf(cb->pin_id, sizeof(cb->pin_id), "receive-%ld-%lld", (long)getpid(), (long long)time(NULL));
	cb->pinned = true; /* pinned before it is looked at: gc cannot take what the map will promise */
	if ((ret = eng_cache_base_renew(cb, pin_s, err, errlen))) {
		cb->pinned = false;
		goto out;
	}
	uint64_t n_missing;
	if ((ret = edg_store_missing(store, all, total, missing, &n_missing))) {
		eng_set_err(err, errlen, "cannot read the edge cache: %s", strerror(-ret));
		goto out;
	}
	const bool *m = missing;
	for (unsigned o = 0; o < p->nobj; o++) {
		const struct eng_plan_object *po = &p->obj[o];
		uint64_t last = po->size - (po->chunks ? (po->chunks - 1) * p->chunk_size : 0);
		cdc_sha256(zeros, p->chunk_size, cb->zero_digest[o][0]);
		cdc_sha256(zeros, (size_t)last, cb->zero_digest[o][1]);
		cb->blocks[o] = (po->size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
		if (!(cb->chunk_have[o] = calloc(1, (po->chunks + 7) / 8 + 1)) ||
		    !(cb->block_have[o] = calloc(1, (cb->blocks[o] + 7) / 8 + 1)) ||
		    !(cb->digests[o] = calloc(cb->blocks[o] + 1, CDC_DIGEST_LEN)))
			goto nomem;
		for (uint64_t c = 0; c < po->chunks; c++)
			set_bit(cb->chunk_have[o], c, !m[c] || is_zero_chunk(cb, o, c));
		m += po->chunks;
		cb->ctx[o] = (struct eng_cache_object){ cb, o };
		cb->base[o] = (struct eng_store){ .read = base_read, .ctx = &cb->ctx[o] };
	}
	ret = 0;
	goto out;
nomem:
	eng_set_err(err, errlen, "out of memory for the base plan's %llu chunks", (unsigned long long)total);
	ret = -ENOMEM;
out:
	if (ret)
		eng_cache_base_close(cb); /* unpins: a failed handoff holds nothing for hours */
	free(all);
	free(zeros);
	free(missing);
	return ret;
}

int eng_cache_base_renew(struct eng_cache_base *cb, double pin_s, char *err, size_t errlen)
{
	const struct eng_base_plan *p = cb->plan;
	uint64_t total = 0;

	if (!cb->pinned)
		return 0;
	for (unsigned o = 0; o < p->nobj; o++)
		total += p->obj[o].chunks;
	uint8_t *all = malloc(total ? total * CDC_DIGEST_LEN : 1), *q = all;
	if (!all) {
		eng_set_err(err, errlen, "out of memory renewing the pin");
		return -ENOMEM;
	}
	for (unsigned o = 0; o < p->nobj; o++) {
		memcpy(q, p->obj[o].digests, p->obj[o].chunks * CDC_DIGEST_LEN);
		q += p->obj[o].chunks * CDC_DIGEST_LEN;
	}
	int ret = edg_store_pin(cb->store, cb->pin_id, all, total, (uint64_t)time(NULL) + (uint64_t)pin_s, err, errlen);
	free(all);
	return ret;
}

static int pwrite_all(int fd, const uint8_t *data, uint32_t len, uint64_t off)
{
	for (uint32_t done = 0; done < len;) {
		ssize_t n = pwrite(fd, data + done, len - done, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += (uint32_t)n;
	}
	return 0;
}

/* Chunk c of object o to its target: bytes, or a hole for a zero chunk in a file. */
static int put_chunk(const struct eng_cache_target *t, uint64_t off, const uint8_t *data, uint32_t len)
{
	if (t->mem) {
		if (data)
			memcpy(t->mem + off, data, len);
		return 0;
	}
	if (!data) {
		if (!fallocate(t->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, len))
			return 0;
		static const uint8_t zero[1 << 16];
		for (uint32_t done = 0; done < len; done += sizeof(zero)) {
			uint32_t n = len - done < sizeof(zero) ? len - done : (uint32_t)sizeof(zero);
			int r = pwrite_all(t->fd, zero, n, off + done);
			if (r)
				return r;
		}
		return 0;
	}
	return pwrite_all(t->fd, data, len, off);
}

int eng_cache_base_fill(struct eng_cache_base *cb, const struct eng_cache_target *targets, char *err,
			size_t errlen)
{
	const struct eng_base_plan *p = cb->plan;
	uint32_t cs = p->chunk_size, per = cs / CDC_BLOCK_SIZE;
	uint8_t *buf = malloc(cs + CDC_BLOCK_SIZE);
	const uint8_t **blocks = malloc(per * sizeof(*blocks));
	uint8_t **outs = malloc(per * sizeof(*outs));
	struct cdc_hasher *h = cdc_hasher_new();
	int ret = 0;

	if (!buf || !blocks || !outs || !h) {
		eng_set_err(err, errlen, "out of memory filling the base from the edge cache");
		ret = -ENOMEM;
		goto out;
	}
	for (unsigned o = 0; o < p->nobj && !ret; o++) {
		const struct eng_plan_object *po = &p->obj[o];
		for (uint64_t c = 0; c < po->chunks; c++) {
			uint32_t len = chunk_len(cb, o, c), got = 0;
			uint64_t first = c * per, nblk = (len + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
			if (!bit(cb->chunk_have[o], c)) {
				cb->lacking_chunks++;
				cb->lacking_bytes += len;
				continue;
			}
			bool zero = is_zero_chunk(cb, o, c);
			if (!zero && (edg_store_get(cb->store, po->digests + c * CDC_DIGEST_LEN, buf, cs, &got) ||
				      got != len)) {
				set_bit(cb->chunk_have[o], c, false); /* corrupt (dropped) or gone: the source sends it */
				cb->dropped_chunks++;
				cb->lacking_chunks++;
				cb->lacking_bytes += len;
				continue;
			}
			if ((ret = put_chunk(&targets[o], c * cs, zero ? NULL : buf, len))) {
				eng_set_err(err, errlen, "cannot write the %s base from the edge cache: %s",
					    eng_vm_object_names[o], strerror(-ret));
				break;
			}
			if (zero) {
				for (uint64_t b = 0; b < nblk; b++)
					memcpy(cb->digests[o] + (first + b) * CDC_DIGEST_LEN, cdc_zero_digest(), CDC_DIGEST_LEN);
			} else {
				memset(buf + len, 0, (size_t)nblk * CDC_BLOCK_SIZE - len); /* the last block, zero-padded */
				for (uint64_t b = 0; b < nblk; b++) {
					blocks[b] = buf + b * CDC_BLOCK_SIZE;
					outs[b] = cb->digests[o] + (first + b) * CDC_DIGEST_LEN;
				}
				cdc_hash_blocks(h, blocks, (unsigned)nblk, outs);
			}
			for (uint64_t b = 0; b < nblk; b++)
				set_bit(cb->block_have[o], first + b, true);
			cb->held_chunks++;
			cb->held_bytes += len;
		}
	}
out:
	cb->filled = !ret;
	cdc_hasher_free(h);
	free(buf);
	free(blocks);
	free(outs);
	return ret;
}

/* The chunks the fill read count as used (the keep policy's recency), in one transaction. */
static void touch_held(struct eng_cache_base *cb)
{
	const struct eng_base_plan *p = cb->plan;
	uint8_t *d = malloc(cb->held_chunks ? cb->held_chunks * CDC_DIGEST_LEN : 1);
	uint64_t n = 0;
	char err[200];

	for (unsigned o = 0; d && o < p->nobj; o++)
		for (uint64_t c = 0; c < p->obj[o].chunks && n < cb->held_chunks; c++)
			if (bit(cb->chunk_have[o], c) && !is_zero_chunk(cb, o, c))
				memcpy(d + n++ * CDC_DIGEST_LEN, p->obj[o].digests + c * CDC_DIGEST_LEN, CDC_DIGEST_LEN);
	if (n && edg_store_touch(cb->store, d, n, err, sizeof(err)))
		fprintf(stderr, "receive: warning: %s (the cache's recency of %llu chunks stays as it was)\n", err,
			(unsigned long long)n);
	free(d);
}

void eng_cache_base_close(struct eng_cache_base *cb)
{
	char err[200];

	if (cb->filled)
		touch_held(cb);
	cb->filled = false;

	if (cb->pinned && edg_store_unpin(cb->store, cb->pin_id, err, sizeof(err)))
		fprintf(stderr, "receive: warning: %s (the pin expires by itself)\n", err);
	cb->pinned = false;
	for (unsigned o = 0; o < ENG_MAX_OBJECTS; o++) {
		free(cb->chunk_have[o]);
		free(cb->block_have[o]);
		free(cb->digests[o]);
		cb->chunk_have[o] = cb->block_have[o] = cb->digests[o] = NULL;
	}
	for (unsigned s = 0; s < ENG_CACHE_SLOTS; s++) {
		free(cb->slot[s].data);
		cb->slot[s].data = NULL;
		cb->slot[s].key = 0;
	}
}

int eng_cache_base_lacking(const struct eng_cache_base *cb, uint8_t **digests, uint64_t *n)
{
	const struct eng_base_plan *p = cb->plan;
	uint64_t total = 0, k = 0;

	for (unsigned o = 0; o < p->nobj; o++)
		total += p->obj[o].chunks;
	uint8_t *d = malloc(total ? total * CDC_DIGEST_LEN : 1);
	if (!d)
		return -ENOMEM;
	for (unsigned o = 0; o < p->nobj; o++)
		for (uint64_t c = 0; c < p->obj[o].chunks; c++)
			if (!bit(cb->chunk_have[o], c))
				memcpy(d + k++ * CDC_DIGEST_LEN, p->obj[o].digests + c * CDC_DIGEST_LEN, CDC_DIGEST_LEN);
	*digests = d;
	*n = k;
	return 0;
}

uint64_t eng_cache_base_recheck(struct eng_cache_base *cb)
{
	const struct eng_base_plan *p = cb->plan;
	uint64_t now_held = 0;

	for (unsigned o = 0; o < p->nobj; o++)
		for (uint64_t c = 0; c < p->obj[o].chunks; c++)
			if (!bit(cb->chunk_have[o], c) && edg_store_has(cb->store, p->obj[o].digests + c * CDC_DIGEST_LEN)) {
				set_bit(cb->chunk_have[o], c, true);
				now_held++;
			}
	return now_held;
}

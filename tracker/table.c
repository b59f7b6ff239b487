/*
 * Digest tables on rte_hash. Keys are SHA-256 digests: uniform, but a guest
 * chooses the content behind them and can search for digests whose first
 * bits agree (for a 20-bit bucket index a million tries), piling its blocks
 * into one bucket. So the bucket comes from the digest's first 8 bytes by a
 * multiply-add-shift with a random multiplier and addend per process (a
 * strongly universal family): without them, no content can be aimed at a
 * bucket. Owned by one thread (the dedup stage or the main thread while
 * preparing it): no locking.
 */
#include "tracker.h"

#include <errno.h>
#include <pthread.h>
#include <rte_hash.h>
#include <rte_random.h>
#include <stdio.h>
#include <string.h>

struct trk_table {
	struct rte_hash *h;
};

static uint64_t seed_mul, seed_add;
static pthread_once_t seeded = PTHREAD_ONCE_INIT;

static void seed(void)
{
	uint64_t s[2];

	if (cdc_random(s, sizeof(s))) /* no OpenSSL randomness: DPDK's, seeded from the TSC */
		s[0] = rte_rand(), s[1] = rte_rand();
	seed_mul = s[0] | 1;
	seed_add = s[1];
}

static inline uint32_t keyed_hash(const uint8_t *digest)
{
	uint64_t v;

	memcpy(&v, digest, sizeof(v));
	return (uint32_t)((v * seed_mul + seed_add) >> 32);
}

uint32_t trk_digest_hash(const uint8_t digest[CDC_DIGEST_LEN])
{
	pthread_once(&seeded, seed);
	return keyed_hash(digest);
}

/* rte_hash's callback, once per lookup: the key was seeded when the table was made */
static uint32_t digest_hash(const void *key, uint32_t len, uint32_t init)
{
	(void)len;
	(void)init;
	return keyed_hash(key);
}

struct trk_table *trk_table_new(const char *name, uint32_t entries, int socket)
{
	struct trk_table *t = calloc(1, sizeof(*t));
	struct rte_hash_parameters p = {
		.name = name,
		.entries = entries < 64 ? 64 : entries,
		.key_len = CDC_DIGEST_LEN,
		.hash_func = digest_hash,
		.socket_id = socket,
		/* overflow buckets: the table holds `entries` keys, whatever their spread */
		.extra_flag = RTE_HASH_EXTRA_FLAGS_EXT_TABLE,
	};

	if (!t)
		return NULL;
	pthread_once(&seeded, seed);
	t->h = rte_hash_create(&p);
	if (!t->h) {
		free(t);
		return NULL;
	}
	return t;
}

void trk_table_free(struct trk_table *t)
{
	if (!t)
		return;
	rte_hash_free(t->h);
	free(t);
}

int trk_table_add(struct trk_table *t, const uint8_t digest[CDC_DIGEST_LEN], uint64_t value)
{
	void *old;

	if (rte_hash_lookup_data(t->h, digest, &old) >= 0)
		return 0;
	return rte_hash_add_key_data(t->h, digest, (void *)(uintptr_t)value);
}

int trk_table_lookup(const struct trk_table *t, const uint8_t digest[CDC_DIGEST_LEN],
		     uint64_t *value)
{
	void *v;

	if (rte_hash_lookup_data(t->h, digest, &v) < 0)
		return -ENOENT;
	*value = (uint64_t)(uintptr_t)v;
	return 0;
}

int trk_table_del(struct trk_table *t, const uint8_t digest[CDC_DIGEST_LEN])
{
	int ret = rte_hash_del_key(t->h, digest);

	return ret < 0 ? ret : 0;
}

void trk_table_add_index_masked(struct trk_table *t, const struct trk_index *idx, uint64_t tag,
				const uint8_t *have)
{
	uint64_t n = trk_index_blocks(idx);

	for (uint64_t b = 0; b < n; b++) {
		const uint8_t *d = trk_index_digest(idx, b);
		if (have && !(have[b >> 3] >> (b & 7) & 1))
			continue;
		if (memcmp(d, cdc_zero_digest(), CDC_DIGEST_LEN) && trk_table_add(t, d, tag | b) == -ENOSPC)
			break;
	}
}

void trk_table_add_index(struct trk_table *t, const struct trk_index *idx, uint64_t tag)
{
	trk_table_add_index_masked(t, idx, tag, NULL);
}

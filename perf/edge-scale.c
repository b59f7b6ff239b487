/*
 * edge-scale: the edge cache's scale figures on this machine, one JSON row each.
 *
 *   missing-set   the chunks a cache lacks of a 20 GiB image's recipe (64 KiB
 *                 chunks: 327,680 digests), against a cache that holds half of
 *                 them, on one core (edg_store_missing, one read transaction)
 *   coordinator   chunk-holding updates per second through edge/coord.c
 *                 (pipelined HSETs, 1,024 per round trip) and the Redis memory
 *                 the state takes per cached GiB; needs a running coordinator
 *
 * The cache's chunks carry 8 bytes each, not 64 KiB: the missing set looks
 * at the index, never at chunk bytes, and the figure is the index's.
 *
 * usage: edge-scale --dir DIR [--gib G] [--coordinator URL --coordinator-auth FILE
 *                   --coordinator-dir RDIR] [--updates N]
 */
#include "edge/coord.h"
#include "edge/store.h"

#include <getopt.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double mono(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu(void)
{
	struct timespec t;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Digest i: distinct, spread like SHA-256 output (splitmix64 words). */
static void digest(uint64_t i, uint8_t *d)
{
	uint64_t x = i * 0x9e3779b97f4a7c15ull;
	for (int w = 0; w < 4; w++) {
		uint64_t z = (x += 0x9e3779b97f4a7c15ull);
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		memcpy(d + 8 * w, &z, 8);
	}
}

static long used_memory(const char *rdir)
{
	char cmd[600], line[256];
	long v = -1;
	snprintf(cmd, sizeof(cmd), "scripts/coordinator status --dir %s", rdir);
	FILE *p = popen(cmd, "r");
	if (p && fgets(line, sizeof(line), p)) {
		char *u = strstr(line, "\"used_memory\":");
		if (u)
			v = atol(u + 14);
	}
	if (p)
		pclose(p);
	return v;
}

int main(int argc, char **argv)
{
	const char *dir = NULL, *url = NULL, *auth = NULL, *rdir = NULL;
	double gib = 20;
	long updates = 200000;
	char err[512];
	static const struct option lo[] = { { "dir", 1, 0, 'd' }, { "gib", 1, 0, 'g' }, { "coordinator", 1, 0, 'c' },
					    { "coordinator-auth", 1, 0, 'a' }, { "coordinator-dir", 1, 0, 'r' },
					    { "updates", 1, 0, 'u' }, { 0 } };
	for (int o; (o = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
		switch (o) {
		case 'd': dir = optarg; break;
		case 'g': gib = atof(optarg); break;
		case 'c': url = optarg; break;
		case 'a': auth = optarg; break;
		case 'r': rdir = optarg; break;
		case 'u': updates = atol(optarg); break;
		default:
			fprintf(stderr, "usage: edge-scale --dir DIR [--gib G] [--coordinator URL --coordinator-auth FILE "
					"--coordinator-dir RDIR] [--updates N]\n");
			return 2;
		}
	}
	if (!dir || gib <= 0 || (url && (!auth || !rdir)) || updates <= 0) {
		fprintf(stderr, "edge-scale: --dir is required (and --coordinator wants --coordinator-auth and "
				"--coordinator-dir)\n");
		return 2;
	}
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(sched_getcpu(), &one);
	sched_setaffinity(0, sizeof(one), &one); /* one core, as the target says */

	const uint32_t cs = 64u << 10;
	uint64_t n = (uint64_t)(gib * (double)(1ull << 30) / cs);
	uint8_t *d = malloc(n * EDG_DIGEST_LEN);
	bool *missing = malloc(n);
	for (uint64_t i = 0; i < n; i++)
		digest(i, d + i * EDG_DIGEST_LEN);
	struct edg_store *s = edg_store_open(dir, true, cs, 0, err, sizeof(err));
	if (!s || !d || !missing) {
		fprintf(stderr, "edge-scale: %s\n", s ? "out of memory" : err);
		return 1;
	}
	/* the cache holds every other chunk */
	enum { BATCH = 4096 };
	static const uint8_t *ptr[BATCH];
	static uint32_t len[BATCH];
	static uint8_t dd[BATCH * EDG_DIGEST_LEN];
	uint64_t k = 0;
	for (uint64_t i = 0; i < n; i += 2) {
		memcpy(dd + k * EDG_DIGEST_LEN, d + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
		ptr[k] = d + i * EDG_DIGEST_LEN;
		len[k++] = 8;
		if (k == BATCH || i + 2 >= n) {
			if (edg_store_put_many(s, k, dd, ptr, len, NULL, err, sizeof(err))) {
				fprintf(stderr, "edge-scale: %s\n", err);
				return 1;
			}
			k = 0;
		}
	}
	uint64_t nm = 0;
	edg_store_missing(s, d, n, missing, &nm); /* warm: the index in the page cache, as on a live edge */
	double t0 = mono(), c0 = cpu();
	edg_store_missing(s, d, n, missing, &nm);
	double t1 = mono(), c1 = cpu();
	printf("{\"case\":\"missing-set\",\"chunks\":%llu,\"image_gib\":%g,\"chunk_size\":%u,\"missing\":%llu,"
	       "\"seconds\":%.4f,\"cpu_s\":%.4f,\"cores\":1,\"note\":\"cache holds every other chunk; index warm\"}\n",
	       (unsigned long long)n, gib, cs, (unsigned long long)nm, t1 - t0, c1 - c0);
	edg_store_close(s);

	if (url) {
		struct edg_coord *c = edg_coord_connect(url, auth, "edge-scale", 10, err, sizeof(err));
		if (!c) {
			fprintf(stderr, "edge-scale: %s\n", err);
			return 1;
		}
		uint64_t u = (uint64_t)updates < n ? (uint64_t)updates : n;
		long m0 = used_memory(rdir);
		t0 = mono();
		if (edg_coord_report(c, d, u, err, sizeof(err))) {
			fprintf(stderr, "edge-scale: %s\n", err);
			return 1;
		}
		t1 = mono();
		double t2 = mono();
		if (edg_coord_register_image(c, "scale-image", d, u, err, sizeof(err))) {
			fprintf(stderr, "edge-scale: %s\n", err);
			return 1;
		}
		double t3 = mono();
		long m1 = used_memory(rdir);
		double per_gib = (double)(m1 - m0) / ((double)u * cs / (double)(1ull << 30));
		printf("{\"case\":\"coordinator\",\"updates\":%llu,\"updates_per_s\":%.0f,\"register_per_s\":%.0f,"
		       "\"state_bytes_per_gib\":%.0f,\"chunk_size\":%u,\"batch\":1024,\"cores\":2,"
		       "\"note\":\"one edge holding and registering each chunk: one hash per chunk with two fields, and the registration's chunk list (32 bytes a chunk)\"}\n",
		       (unsigned long long)u, (double)u / (t1 - t0), (double)u / (t3 - t2), per_gib, cs);
		edg_coord_close(c);
	}
	free(d);
	free(missing);
	return 0;
}

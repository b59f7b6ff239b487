/*
 * hash-bench: SHA-256 of 4 KiB blocks, the pipeline's hash stage, by every
 * implementation at hand, on one core: OpenSSL one block at a time, the
 * engine's own four-lane SHA-NI code (codecs/sha_ni.c), and Intel's
 * multi-buffer library (libipsec-mb, Debian libipsec-mb-dev): its one-shot
 * SHA-256, its job API and its hash burst API; and what the engine's hash
 * stage calls (cdc_hash_blocks in batches of 256: HANDOFF_HASH picks the
 * code). Every digest is checked against OpenSSL's.
 *
 *   hash-bench [--blocks N] [--rounds R] [--run K]
 *
 * N blocks of random data (default 65536: 256 MiB), hashed R times (default
 * 5) by each; prints one JSON object per implementation: the median of the
 * rounds' thread CPU time per block (ns) and GB/s of input per core, or why
 * it could not run. --run K hands the blocks over K at a time, each run
 * finished before the next (the engine's call and the job API flush their
 * lanes, the four-lane code does the blocks left over one by one), as the
 * hash stage meets short runs at the end of a pass; default: the engine in
 * batches of 256, the job API flushed once at the end.
 */
#include "codecs/codecs.h"

#include <intel-ipsec-mb.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BLOCK CDC_BLOCK_SIZE
#define BURST 32

static uint8_t *data, (*want)[CDC_DIGEST_LEN], (*got)[CDC_DIGEST_LEN];
static unsigned nblocks, run_len;
static IMB_MGR *mgr;

static double cpu_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static const uint8_t *blk(unsigned i)
{
	return data + (size_t)i * BLOCK;
}

static int by_openssl(void)
{
	for (unsigned i = 0; i < nblocks; i++)
		cdc_sha256(blk(i), BLOCK, got[i]);
	return 0;
}

static int by_sha_ni_x4(void)
{
	if (!cdc_sha256_x4_available())
		return -1;
	unsigned run = run_len ? run_len : nblocks;
	for (unsigned r = 0; r < nblocks; r += run) {
		unsigned i = r;
		for (; i + 4 <= r + run; i += 4) {
			const uint8_t *in[4] = { blk(i), blk(i + 1), blk(i + 2), blk(i + 3) };
			uint8_t *out[4] = { got[i], got[i + 1], got[i + 2], got[i + 3] };
			cdc_sha256_block_x4(in, out);
		}
		for (; i < r + run; i++)
			cdc_sha256(blk(i), BLOCK, got[i]);
	}
	return 0;
}

static int by_imb_oneshot(void)
{
	for (unsigned i = 0; i < nblocks; i++)
		IMB_SHA256(mgr, blk(i), BLOCK, got[i]);
	return imb_get_errno(mgr) ? -1 : 0;
}

static void fill_job(IMB_JOB *j, unsigned i)
{
	memset(j, 0, sizeof(*j));
	j->src = blk(i);
	j->dst = (uint8_t *)blk(i); /* the null cipher wants one, and writes nothing */
	j->hash_start_src_offset_in_bytes = 0;
	j->msg_len_to_hash_in_bytes = BLOCK;
	j->auth_tag_output = got[i];
	j->auth_tag_output_len_in_bytes = CDC_DIGEST_LEN;
	j->hash_alg = IMB_AUTH_SHA_256;
	j->cipher_mode = IMB_CIPHER_NULL;
	j->cipher_direction = IMB_DIR_ENCRYPT; /* the (null) cipher, then the hash */
	j->chain_order = IMB_ORDER_CIPHER_HASH;
}

static int job_done(const IMB_JOB *j)
{
	if (j->status == IMB_STATUS_COMPLETED)
		return 0;
	fprintf(stderr, "hash-bench: ipsec-mb job status %d\n", (int)j->status);
	return -1;
}

static int by_imb_jobs(void)
{
	IMB_JOB *j;

	for (unsigned i = 0; i < nblocks; i++) {
		fill_job(IMB_GET_NEXT_JOB(mgr), i);
		/* a multi-buffer manager returns jobs once their lanes ran */
		for (j = IMB_SUBMIT_JOB(mgr); j; j = IMB_GET_COMPLETED_JOB(mgr))
			if (job_done(j))
				return -1;
		if (run_len && (i + 1) % run_len == 0)
			while ((j = IMB_FLUSH_JOB(mgr)) != NULL)
				if (job_done(j))
					return -1;
	}
	while ((j = IMB_FLUSH_JOB(mgr)) != NULL)
		if (job_done(j))
			return -1;
	return 0;
}

static int by_imb_burst(void)
{
	static IMB_JOB jobs[BURST];

	for (unsigned i = 0; i < nblocks; i += BURST) {
		unsigned n = nblocks - i < BURST ? nblocks - i : BURST;
		for (unsigned k = 0; k < n; k++)
			fill_job(&jobs[k], i + k);
		if (IMB_SUBMIT_HASH_BURST(mgr, jobs, n, IMB_AUTH_SHA_256) != n)
			return -1;
	}
	return 0;
}

/* What the hash stage calls: batches of 256, whichever code the hasher picked. */
static int by_engine(void)
{
	struct cdc_hasher *h = cdc_hasher_new();
	const uint8_t *in[256];
	uint8_t *out[256];
	unsigned batch = run_len ? run_len : 256;

	if (!h)
		return -1;
	for (unsigned i = 0; i < nblocks; i += batch) {
		unsigned n = nblocks - i < batch ? nblocks - i : batch;
		for (unsigned k = 0; k < n; k++) {
			in[k] = blk(i + k);
			out[k] = got[i + k];
		}
		cdc_hash_blocks(h, in, n, out);
	}
	cdc_hasher_free(h);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void run(const char *name, int (*fn)(void), unsigned rounds)
{
	double t[64];

	for (unsigned r = 0; r < rounds; r++) {
		memset(got, 0, (size_t)nblocks * CDC_DIGEST_LEN);
		double t0 = cpu_s();
		int ret = fn();
		t[r] = cpu_s() - t0;
		if (ret || memcmp(got, want, (size_t)nblocks * CDC_DIGEST_LEN)) {
			int e = mgr ? imb_get_errno(mgr) : 0;
			printf("{\"impl\":\"%s\",\"error\":\"%s\"}\n", name,
			       !ret ? "digests differ from OpenSSL's" : e ? imb_get_strerror(e) : "not available here");
			return;
		}
	}
	qsort(t, rounds, sizeof(t[0]), cmp_double);
	double med = t[rounds / 2];
	printf("{\"impl\":\"%s\",\"blocks\":%u,\"run\":%u,\"rounds\":%u,\"ns_per_block\":%.1f,"
	       "\"gb_per_s_per_core\":%.3f}\n",
	       name, nblocks, run_len, rounds, med / nblocks * 1e9, (double)nblocks * BLOCK / med / 1e9);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "blocks", required_argument, NULL, 'b' }, { "rounds", required_argument, NULL, 'r' },
		{ "run", required_argument, NULL, 'k' }, { 0 },
	};
	unsigned rounds = 5;
	int c;

	nblocks = 65536;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		if (c == 'b')
			nblocks = (unsigned)strtoul(optarg, NULL, 0);
		else if (c == 'r')
			rounds = (unsigned)strtoul(optarg, NULL, 0);
		else if (c == 'k')
			run_len = (unsigned)strtoul(optarg, NULL, 0);
		else {
			fprintf(stderr, "usage: hash-bench [--blocks N] [--rounds R] [--run K]\n");
			return 2;
		}
	}
	if (!nblocks || nblocks % 4 || !rounds || rounds > 64 || run_len > 256 || (run_len && nblocks % run_len)) {
		fprintf(stderr, "hash-bench: error: --blocks must be a positive multiple of 4 (and of --run, 1..256), "
			"--rounds 1..64\n");
		return 2;
	}
	data = malloc((size_t)nblocks * BLOCK);
	want = malloc((size_t)nblocks * CDC_DIGEST_LEN);
	got = malloc((size_t)nblocks * CDC_DIGEST_LEN);
	if (!data || !want || !got || cdc_random(data, (size_t)nblocks * BLOCK)) {
		fprintf(stderr, "hash-bench: error: out of memory\n");
		return 1;
	}
	for (unsigned i = 0; i < nblocks; i++)
		cdc_sha256(blk(i), BLOCK, want[i]);
	if ((mgr = alloc_mb_mgr(0)))
		init_mb_mgr_auto(mgr, NULL);
	run("engine", by_engine, rounds);
	run("openssl", by_openssl, rounds);
	run("sha-ni-x4", by_sha_ni_x4, rounds);
	if (!mgr) {
		printf("{\"impl\":\"ipsec-mb\",\"error\":\"cannot allocate a multi-buffer manager\"}\n");
		return 0;
	}
	run("ipsec-mb-oneshot", by_imb_oneshot, rounds);
	run("ipsec-mb-jobs", by_imb_jobs, rounds);
	run("ipsec-mb-burst", by_imb_burst, rounds);
	free_mb_mgr(mgr);
	return 0;
}

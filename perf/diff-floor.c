/*
 * diff-floor: the CPU of one diff's work measured part by part, on the same
 * codecs the engine uses, in one thread with no pipeline, rings, pools or
 * stream format around them:
 *
 *   eal       DPDK EAL start and stop (the engine's own defaults)
 *   index     the base's cached index, and its non-zero digests in a table
 *   scan      map the target, zero-test every block, compare a block with the
 *             base block at its offset where the index says that is not zero
 *   hash      SHA-256 of every block left (any-base and already-sent dedup
 *             and the trailer digest need it)
 *   dedup     look those digests up, copy each new block into a 1 MiB
 *             segment buffer (one, reused)
 *   compress  each segment, with the mode's compressor
 *   seal      AES-256-GCM over each compressed segment
 *   write     each sealed segment to the output file, then fsync
 *
 * Whole blocks only: a target's partial last block is left out.
 *
 * The sum is the reference the pipeline's own overhead is measured against
 * (perf/bench-diff prints the engine's CPU over it). It is not a strict
 * bound: the engine on one lcore has come in below it (it reads the target
 * with read-ahead hints and overlaps nothing it does not have to).
 *
 *   diff-floor --base BASE --target TARGET [--mode none:COMP:LEVEL] [-o OUT]
 *
 * Prints one JSON object: each part's CPU seconds, the sum, block counts and
 * the floor's MB/s per core (input MB / CPU s).
 *
 *   diff-floor --index-only --base BASE
 *
 * Opens BASE's index exactly as diff does (trk_index_open: loads BASE.hidx
 * when it is valid, otherwise hashes every block and writes BASE.hidx) and
 * nothing else: no EAL, no target. Prints one JSON object: wall and CPU
 * seconds of that call and whether the index came from the cache.
 * perf/bench-diff runs it on a symlink to the base with no .hidx beside it to
 * time the one-time index build.
 */
#include "codecs/codecs.h"
#include "engine/cli.h"
#include "engine/clock.h"
#include "tracker/tracker.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEG (1u << 20)

enum part { P_EAL, P_INDEX, P_SCAN, P_HASH, P_DEDUP, P_COMPRESS, P_SEAL, P_WRITE, P_COUNT };
static const char *const part_names[P_COUNT] = { "eal",	 "index",    "scan", "hash",
						 "dedup", "compress", "seal", "write" };
static double spent[P_COUNT];
static double mark;

static void charge(enum part p)
{
	double now = eng_cpu_s();

	spent[p] += now - mark;
	mark = now;
}

static void die(const char *what)
{
	fprintf(stderr, "diff-floor: %s\n", what);
	exit(1);
}

static const uint8_t *map_file(const char *path, size_t *len)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &st))
		die(strerror(errno));
	*len = (size_t)st.st_size;
	void *m = *len ? mmap(NULL, *len, PROT_READ, MAP_SHARED, fd, 0) : NULL;
	close(fd);
	if (m == MAP_FAILED)
		die(strerror(errno));
	return m;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "base", required_argument, NULL, 'b' }, { "target", required_argument, NULL, 't' },
		{ "mode", required_argument, NULL, 'm' }, { "output", required_argument, NULL, 'o' },
		{ "index-only", no_argument, NULL, 'i' }, { "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *base_path = NULL, *target_path = NULL, *out_path = "/dev/null";
	char mode[64] = "none:igzip:1", *comp_name, *level_s;
	enum cdc_comp comp;
	int c, level, socket;
	bool index_only = false;

	while ((c = getopt_long(argc, argv, "b:t:m:o:ih", opts, NULL)) != -1) {
		switch (c) {
		case 'b': base_path = optarg; break;
		case 'i': index_only = true; break;
		case 't': target_path = optarg; break;
		case 'm': snprintf(mode, sizeof(mode), "%s", optarg); break;
		case 'o': out_path = optarg; break;
		case 'h':
			printf("usage: diff-floor --base BASE --target TARGET [--mode none:COMP:LEVEL] [-o OUT]\n"
			       "       diff-floor --index-only --base BASE\n");
			return 0;
		default: return 2;
		}
	}
	if (index_only) {
		if (!base_path) {
			fprintf(stderr, "usage: diff-floor --index-only --base BASE\n");
			return 2;
		}
		char err[256];
		double w0 = eng_mono_s(), c0 = eng_cpu_s();
		struct trk_index *idx = trk_index_open(base_path, err, sizeof(err));
		double w1 = eng_mono_s(), c1 = eng_cpu_s();
		if (!idx)
			die(err);
		printf("{\"base_bytes\": %llu, \"blocks\": %llu, \"nonzero_blocks\": %llu, \"cached\": %s, "
		       "\"wall_s\": %.4f, \"cpu_s\": %.4f}\n",
		       (unsigned long long)trk_index_size(idx), (unsigned long long)trk_index_blocks(idx),
		       (unsigned long long)trk_index_nonzero_blocks(idx),
		       trk_index_was_cached(idx) ? "true" : "false", w1 - w0, c1 - c0);
		trk_index_free(idx);
		return 0;
	}
	if (!base_path || !target_path || strncmp(mode, "none:", 5) ||
	    !(comp_name = strtok(mode + 5, ":")) || !(level_s = strtok(NULL, ":")) ||
	    cdc_comp_parse(comp_name, &comp) || !cdc_comp_level_ok(comp, level = atoi(level_s))) {
		fprintf(stderr, "usage: diff-floor --base BASE --target TARGET [--mode none:COMP:LEVEL] [-o OUT]\n");
		return 2;
	}

	struct stat bst, tst;
	if (stat(base_path, &bst) || stat(target_path, &tst))
		die(strerror(errno));
	mark = eng_cpu_s();
	if (cli_eal_start(cli_diff_mem_mb((uint64_t)bst.st_size, (uint64_t)tst.st_size), &socket))
		return 1;
	charge(P_EAL);

	char err[256];
	struct trk_index *idx = trk_index_open(base_path, err, sizeof(err));
	if (!idx)
		die(err);
	uint64_t base_blocks = trk_index_blocks(idx);
	struct trk_table *table =
		trk_table_new("floor", (uint32_t)(trk_index_nonzero_blocks(idx) + 64), socket);
	if (!table)
		die("no table");
	trk_table_add_index(table, idx, 0);
	charge(P_INDEX);

	/* scan: the blocks left are listed; the index stands in for the base where it says zero */
	size_t blen, tlen;
	const uint8_t *base = map_file(base_path, &blen), *target = map_file(target_path, &tlen);
	uint64_t nblocks = tlen / CDC_BLOCK_SIZE, nleft = 0, nzero = 0, nsame = 0;
	uint32_t *left = malloc((nblocks + 1) * sizeof(*left));
	for (uint64_t b = 0; b < nblocks; b++) {
		const uint8_t *blk = target + b * CDC_BLOCK_SIZE;
		if (cdc_is_zero(blk, CDC_BLOCK_SIZE))
			nzero++;
		else if (b < base_blocks &&
			 memcmp(trk_index_digest(idx, b), cdc_zero_digest(), CDC_DIGEST_LEN) &&
			 !memcmp(blk, base + b * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE))
			nsame++;
		else
			left[nleft++] = (uint32_t)b;
	}
	munmap((void *)base, blen);
	charge(P_SCAN);

	struct cdc_hasher *h = cdc_hasher_new();
	uint8_t(*digest)[CDC_DIGEST_LEN] = malloc((nleft + 1) * CDC_DIGEST_LEN);
	const uint8_t *todo[256];
	uint8_t *todo_digest[256];
	for (uint64_t i = 0; i < nleft; i += 256) {
		unsigned n = nleft - i < 256 ? (unsigned)(nleft - i) : 256;
		for (unsigned j = 0; j < n; j++) {
			todo[j] = target + (uint64_t)left[i + j] * CDC_BLOCK_SIZE;
			todo_digest[j] = digest[i + j];
		}
		cdc_hash_blocks(h, todo, n, todo_digest);
	}
	charge(P_HASH);

	/*
	 * Dedup against any base block and the blocks already taken; new blocks
	 * fill one 1 MiB segment buffer, reused like the engine's pools, which is
	 * compressed, sealed and written as it fills.
	 */
	struct trk_table *sent = trk_table_new("floor_sent", (uint32_t)(nleft + 64), socket);
	size_t cap = cdc_comp_bound(comp, SEG);
	uint8_t *seg = malloc(SEG), *out = malloc(cap + CDC_TAG_LEN);
	struct cdc_comp_ctx *cc = cdc_comp_new();
	static const uint8_t key[CDC_KEY_LEN];
	struct cdc_sealer *sealer = cdc_sealer_new(CDC_AEAD_AES256GCM, key);
	int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (!sent || !seg || !out || !cc || !sealer || fd < 0)
		die("cannot set up the segment stages");
	uint64_t nnew = 0, wire = 0, nseg = 0, v;
	size_t fill = 0;
	charge(P_DEDUP); /* its table, like the engine's set-up of its own */
	for (uint64_t i = 0; i <= nleft; i++) {
		if (i < nleft) {
			if (!trk_table_lookup(table, digest[i], &v) || !trk_table_lookup(sent, digest[i], &v))
				continue;
			trk_table_add(sent, digest[i], i);
			memcpy(seg + fill, target + (uint64_t)left[i] * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE);
			fill += CDC_BLOCK_SIZE;
			nnew++;
		}
		if (fill < SEG && (i < nleft || !fill))
			continue;
		charge(P_DEDUP);
		ssize_t n = cdc_compress(cc, comp, level, seg, fill, out, cap);
		if (n < 0)
			die("compress failed");
		charge(P_COMPRESS);
		if (cdc_seal(sealer, nseg++, NULL, 0, out, (size_t)n, out + n))
			die("seal failed");
		charge(P_SEAL);
		if (write(fd, out, (size_t)n + CDC_TAG_LEN) != n + CDC_TAG_LEN)
			die(strerror(errno));
		wire += (uint64_t)n + CDC_TAG_LEN;
		fill = 0;
		charge(P_WRITE);
	}
	fsync(fd);
	close(fd);
	charge(P_WRITE);

	munmap((void *)target, tlen);
	cdc_sealer_free(sealer);
	cdc_comp_free(cc);
	cdc_hasher_free(h);
	trk_table_free(sent);
	trk_table_free(table);
	trk_index_free(idx);
	free(seg);
	free(out);
	free(digest);
	free(left);
	cli_eal_stop();
	charge(P_EAL);

	double total = 0;
	printf("{\"mode\": \"none:%s:%d\", \"input_bytes\": %zu, \"wire_bytes\": %llu, ", comp_name, level,
	       tlen, (unsigned long long)wire);
	printf("\"blocks\": {\"zero\": %llu, \"same\": %llu, \"hashed\": %llu, \"new\": %llu}, \"cpu_s\": {",
	       (unsigned long long)nzero, (unsigned long long)nsame, (unsigned long long)nleft,
	       (unsigned long long)nnew);
	for (int p = 0; p < P_COUNT; p++) {
		printf("%s\"%s\": %.4f", p ? ", " : "", part_names[p], spent[p]);
		total += spent[p];
	}
	printf("}, \"total_cpu_s\": %.4f, \"mb_s_per_core\": %.1f}\n", total, total > 0 ? tlen / 1e6 / total : 0);
	return 0;
}

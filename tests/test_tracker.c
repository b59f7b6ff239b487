/*
 * tracker: base indexes are built, cached beside the image, reused while the
 * image is unchanged and rebuilt when it changed or the cache is damaged;
 * digest tables find what was added.
 */
#define TEST_WITH_EAL
#include "tracker/tracker.h"
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

static void test_index_cache_lifecycle(void **state)
{
	(void)state;
	char *dir = test_tmpdir(), img[256], err[256];
	size_t len = (1 << 20) + 777;
	uint8_t *data = malloc(len);

	snprintf(img, sizeof(img), "%s/base.img", dir);
	test_fill_random(data, len);
	memset(data + 10 * CDC_BLOCK_SIZE, 0, 10 * CDC_BLOCK_SIZE); /* ten zero blocks */
	test_write_file(img, data, len);

	struct trk_index *a = trk_index_open(img, err, sizeof(err));
	assert_non_null(a);
	assert_false(trk_index_was_cached(a));
	assert_int_equal(trk_index_size(a), len);
	assert_int_equal(trk_index_blocks(a), 257);
	assert_int_equal(trk_index_nonzero_blocks(a), 247);
	/* per-block digests are SHA-256 of the (zero-padded) block */
	uint8_t d[CDC_DIGEST_LEN], last[CDC_BLOCK_SIZE] = { 0 };
	cdc_sha256(data + 5 * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE, d);
	assert_memory_equal(trk_index_digest(a, 5), d, CDC_DIGEST_LEN);
	memcpy(last, data + 256 * CDC_BLOCK_SIZE, 777);
	cdc_sha256(last, CDC_BLOCK_SIZE, d);
	assert_memory_equal(trk_index_digest(a, 256), d, CDC_DIGEST_LEN);

	/* second open: from the cache, same identity */
	struct trk_index *b = trk_index_open(img, err, sizeof(err));
	assert_non_null(b);
	assert_true(trk_index_was_cached(b));
	assert_memory_equal(trk_index_id(a), trk_index_id(b), CDC_DIGEST_LEN);
	assert_int_equal(trk_index_nonzero_blocks(b), 247);
	trk_index_free(b);

	/* the image changes (same size, mtime restored): ctime still tells */
	struct stat st;
	assert_int_equal(stat(img, &st), 0);
	data[100] ^= 1;
	test_write_file(img, data, len);
	struct timespec times[2] = { st.st_atim, st.st_mtim };
	assert_int_equal(utimensat(AT_FDCWD, img, times, 0), 0);
	b = trk_index_open(img, err, sizeof(err));
	assert_false(trk_index_was_cached(b));
	assert_memory_not_equal(trk_index_id(a), trk_index_id(b), CDC_DIGEST_LEN);
	trk_index_free(b);

	/* a damaged cache is rebuilt, not trusted */
	char *cache = trk_index_cache_path(img);
	size_t clen = 0;
	uint8_t *c = test_read_file(cache, &clen);
	assert_non_null(c);
	c[clen / 2] ^= 0xff;
	test_write_file(cache, c, clen);
	b = trk_index_open(img, err, sizeof(err));
	assert_false(trk_index_was_cached(b));
	trk_index_free(b);
	b = trk_index_open(img, err, sizeof(err));
	assert_true(trk_index_was_cached(b));
	trk_index_free(b);

	/* a missing image is a clear error */
	char missing[300];
	snprintf(missing, sizeof(missing), "%s/nope.img", dir);
	assert_null(trk_index_open(missing, err, sizeof(err)));
	assert_non_null(strstr(err, "nope.img"));

	free(c);
	free(cache);
	trk_index_free(a);
	free(data);
}

static void test_digest_table(void **state)
{
	(void)state;
	struct trk_table *t = trk_table_new("test_tbl", 1000, 0);
	uint8_t d[CDC_DIGEST_LEN];
	uint64_t v;

	assert_non_null(t);
	for (uint64_t i = 0; i < 1000; i++) {
		cdc_sha256(&i, sizeof(i), d);
		assert_int_equal(trk_table_add(t, d, i * 3), 0);
	}
	for (uint64_t i = 0; i < 1000; i++) {
		cdc_sha256(&i, sizeof(i), d);
		assert_int_equal(trk_table_lookup(t, d, &v), 0);
		assert_int_equal(v, i * 3);
	}
	/* first occurrence wins */
	uint64_t zero = 0;
	cdc_sha256(&zero, sizeof(zero), d);
	assert_int_equal(trk_table_add(t, d, 99999), 0);
	assert_int_equal(trk_table_lookup(t, d, &v), 0);
	assert_int_equal(v, 0);
	d[31] = 1;
	assert_int_equal(trk_table_lookup(t, d, &v), -ENOENT);
	trk_table_free(t);
}

/*
 * A guest picks the content, so it can search for digests that agree in
 * their first bytes: those must still spread over the buckets, and the
 * bucket of a digest must differ from one process to the next.
 */
static void probe_digest(uint8_t d[CDC_DIGEST_LEN])
{
	memset(d, 0x5c, CDC_DIGEST_LEN);
}

static void test_digest_hash_is_keyed(void **state)
{
	uint8_t d[CDC_DIGEST_LEN];
	static uint8_t seen[1 << 12];
	unsigned distinct = 0;

	(void)state;
	for (unsigned i = 0; i < 4096; i++) {
		memset(d, 0xab, sizeof(d));
		/* the first 4 bytes (all the old hash looked at) equal; the next ones vary */
		d[4] = (uint8_t)i;
		d[5] = (uint8_t)(i >> 8);
		unsigned b = trk_digest_hash(d) & 0xfff;
		distinct += !seen[b];
		seen[b] = 1;
	}
	assert_true(distinct > 2400); /* 4096 balls in 4096 bins: ~2589 on average */
	int fds[2];
	probe_digest(d);
	uint32_t mine = trk_digest_hash(d), theirs = 0;
	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* a fresh process: a fresh key (exec, so the seed is not inherited) */
		char fd[16];
		snprintf(fd, sizeof(fd), "%d", fds[1]);
		execl("/proc/self/exe", "test_tracker", "--hash-child", fd, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	assert_int_equal(read(fds[0], &theirs, sizeof(theirs)), (ssize_t)sizeof(theirs));
	close(fds[0]);
	int st;
	waitpid(pid, &st, 0);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_not_equal(mine, theirs);
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "--hash-child")) { /* test_digest_hash_is_keyed's other process */
		uint8_t d[CDC_DIGEST_LEN];
		probe_digest(d);
		uint32_t h = trk_digest_hash(d);
		return write(atoi(argv[2]), &h, sizeof(h)) == (ssize_t)sizeof(h) ? 0 : 1;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_index_cache_lifecycle),
		cmocka_unit_test(test_digest_table),
		cmocka_unit_test(test_digest_hash_is_keyed),
	};
	test_seed();
	return cmocka_run_group_tests_name("tracker", tests, test_eal_setup, test_eal_teardown);
}

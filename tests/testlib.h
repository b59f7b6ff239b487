/*
 * Helpers shared by the cmocka tests: seeded random data (the seed is
 * printed so a failure can be replayed with HANDOFF_TEST_SEED), temporary
 * directories, and an EAL set-up that needs no hugepages.
 */
#ifndef HANDOFF_TESTLIB_H
#define HANDOFF_TESTLIB_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static uint64_t test_rng_state;

static inline void test_seed(void)
{
	const char *env = getenv("HANDOFF_TEST_SEED");

	test_rng_state = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	fprintf(stderr, "[ SEED     ] HANDOFF_TEST_SEED=%llu\n", (unsigned long long)test_rng_state);
}

static inline uint64_t test_rand(void)
{
	/* splitmix64 */
	uint64_t z = (test_rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline void test_fill_random(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)test_rand();
}

/* Text-like bytes: compressible, like most of a VM's memory and disk. */
static inline void test_fill_text(uint8_t *p, size_t n)
{
	static const char *words[] = { "kernel ", "page ", "handoff ", "edge ", "0x7f3a ",
				       "\n", "cloudlet ", "migrate ", "\0\0\0\0", "vm " };
	size_t i = 0;
	while (i < n) {
		const char *w = words[test_rand() % 10];
		size_t l = strlen(w) ? strlen(w) : 4;
		for (size_t k = 0; k < l && i < n; k++)
			p[i++] = (uint8_t)w[k];
	}
}

static int test_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return (flag == FTW_DP ? rmdir(path) : unlink(path)) && 0;
}

/* Temporary directories go when the process that made them exits (not a forked child). */
static char *test_dirs[64];
static unsigned test_ndirs;
static pid_t test_dirs_owner;

static void test_rm_dirs(void)
{
	if (getpid() != test_dirs_owner)
		return;
	for (unsigned i = 0; i < test_ndirs; i++)
		nftw(test_dirs[i], test_rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

static inline char *test_tmpdir(void)
{
	char *d = mkdtemp(strdup("/tmp/handoff-test-XXXXXX"));

	if (d && test_ndirs < sizeof(test_dirs) / sizeof(test_dirs[0])) {
		if (!test_ndirs) {
			test_dirs_owner = getpid();
			atexit(test_rm_dirs);
		}
		test_dirs[test_ndirs++] = strdup(d); /* the caller may free d */
	}
	return d;
}

static inline void test_write_file(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(buf, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static inline uint8_t *test_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	*len = 0;
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	*len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *buf = malloc(*len ? *len : 1);
	assert_int_equal(fread(buf, 1, *len, f), *len);
	fclose(f);
	return buf;
}

#endif

#ifdef TEST_WITH_EAL
#include <rte_eal.h>
#include <rte_log.h>

/* A real EAL without hugepages or devices, private to this process. */
static inline int test_eal_setup(void **state)
{
	char prefix[64];
	(void)state;
	snprintf(prefix, sizeof(prefix), "--file-prefix=hotest-%d", (int)getpid());
	char *argv[] = { "test", "-l", "0-1", "--no-huge", "-m", "512", "--no-pci", "--no-shconf",
			 "--log-level=error", prefix, NULL };
	return rte_eal_init(10, argv) < 0 ? -1 : 0;
}

static inline int test_eal_teardown(void **state)
{
	(void)state;
	rte_eal_cleanup();
	return 0;
}
#endif

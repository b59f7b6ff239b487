/*
 * The destination's disk store (engine/uring_store.h) on a real file through
 * a real io_uring: what is written reads back, whether its write is still in
 * flight or long done; more writes than there are buffers; a read between
 * writes of other blocks; the file as a whole after a sync; and a write the
 * kernel refuses is the store's error, not a silent loss.
 */
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "engine/uring_store.h"

#define BLOCKS 1000 /* many times the store's 64 buffers */

struct fixture {
	char *dir, *path;
	int fd, ro; /* the file, and the same file read-only: the kernel refuses writes to it */
	uint8_t *want; /* BLOCKS blocks as they should end up */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->dir = test_tmpdir();
	assert_true(asprintf(&f->path, "%s/disk.img", f->dir) > 0);
	f->fd = open(f->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(f->fd >= 0);
	assert_int_equal(ftruncate(f->fd, (off_t)BLOCKS * CDC_BLOCK_SIZE), 0);
	f->ro = open(f->path, O_RDONLY);
	assert_true(f->ro >= 0);
	f->want = calloc(BLOCKS, CDC_BLOCK_SIZE);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	close(f->fd); /* the directory goes at exit (test_tmpdir) */
	close(f->ro);
	free(f->path);
	free(f->dir);
	free(f->want);
	free(f);
	return 0;
}

static struct eng_uring_file *new_store(int fd)
{
	char err[200];
	struct eng_uring_file *u = eng_uring_file_new(fd, (uint64_t)BLOCKS * CDC_BLOCK_SIZE, err, sizeof(err));
	assert_non_null(u);
	return u;
}

static void write_block(struct eng_store *st, struct fixture *f, uint64_t b)
{
	uint8_t *blk = f->want + b * CDC_BLOCK_SIZE;
	test_fill_random(blk, CDC_BLOCK_SIZE);
	assert_int_equal(st->write(st->ctx, b, blk), 0);
}

static void assert_reads(struct eng_store *st, struct fixture *f, uint64_t b)
{
	uint8_t got[CDC_BLOCK_SIZE];
	assert_int_equal(st->read(st->ctx, b, got), 0);
	assert_memory_equal(got, f->want + b * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE);
}

static void test_reads_see_writes_in_flight_and_done(void **state)
{
	struct fixture *f = *state;
	struct eng_uring_file *u = new_store(f->fd);
	struct eng_store st = eng_uring_store(u);

	for (uint64_t i = 0; i < BLOCKS; i++) {
		uint64_t b = (i * 389) % BLOCKS; /* out of order, like a stream's blocks */
		write_block(&st, f, b);
		if (i % 7 == 3)
			assert_reads(&st, f, b); /* its write is most likely still queued */
		if (i % 11 == 5)
			assert_reads(&st, f, (i * 389 + 123) % BLOCKS); /* another block: done, or never written */
	}
	write_block(&st, f, 17); /* rewritten: the newer bytes win */
	assert_reads(&st, f, 17);
	assert_int_equal(eng_uring_file_writes(u), BLOCKS + 1);
	assert_int_equal(eng_uring_file_sync(u), 0);
	size_t len;
	uint8_t *file = test_read_file(f->path, &len);
	assert_int_equal(len, (size_t)BLOCKS * CDC_BLOCK_SIZE);
	assert_memory_equal(file, f->want, len);
	free(file);
	printf("  buffers registered with the ring: %s\n", eng_uring_file_fixed(u) ? "yes" : "no");
	eng_uring_file_free(u);
}

static void test_a_refused_write_is_the_stores_error(void **state)
{
	struct fixture *f = *state;
	struct eng_uring_file *u = new_store(f->ro);
	struct eng_store st = eng_uring_store(u);
	int ret = 0;
	uint8_t blk[CDC_BLOCK_SIZE] = { 1 };
	for (uint64_t b = 0; b < 200 && !ret; b++) /* the error surfaces once a completion is reaped */
		ret = st.write(st.ctx, b, blk);
	if (!ret)
		ret = eng_uring_file_sync(u);
	assert_int_equal(ret, -EBADF);
	eng_uring_file_free(u);
}

/* A read behind writes that fail: the store's error, and the caller's buffer is never written later. */
static void test_a_read_behind_failing_writes(void **state)
{
	struct fixture *f = *state;
	struct eng_uring_file *u = new_store(f->ro);
	struct eng_store st = eng_uring_store(u);
	uint8_t blk[CDC_BLOCK_SIZE] = { 2 };
	for (uint64_t b = 0; b < 10; b++) /* queued, not yet submitted: they fail once they run */
		assert_int_equal(st.write(st.ctx, b, blk), 0);
	uint8_t *out = malloc(CDC_BLOCK_SIZE);
	int ret = st.read(st.ctx, 500, out);
	assert_true(ret == 0 || ret == -EBADF);
	free(out); /* under ASan, a late write into it would be caught below */
	assert_int_equal(eng_uring_file_sync(u), -EBADF);
	eng_uring_file_free(u);
}

int main(void)
{
	test_seed();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_reads_see_writes_in_flight_and_done, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_refused_write_is_the_stores_error, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_read_behind_failing_writes, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

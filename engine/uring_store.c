/* io_uring block store (design in uring_store.h). */
#include "uring_store.h"

#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEPTH 64

struct eng_uring_file {
	struct io_uring ring;
	int fd;
	uint64_t size, writes;
	unsigned inflight, queued; /* submitted and not reaped; prepared and not submitted */
	int error;
	int free_slots[DEPTH];
	unsigned nfree;
	uint8_t (*buf)[CDC_BLOCK_SIZE];
};

static void reap(struct eng_uring_file *u, unsigned want)
{
	struct io_uring_cqe *cqe;

	if (u->queued) {
		int r = io_uring_submit(&u->ring);
		if (r < 0 && !u->error)
			u->error = r;
		u->inflight += u->queued;
		u->queued = 0;
	}
	while (u->inflight && want) {
		int r = io_uring_wait_cqe(&u->ring, &cqe);
		if (r == -EINTR)
			continue;
		if (r < 0) {
			if (!u->error)
				u->error = r;
			return;
		}
		if (cqe->res != CDC_BLOCK_SIZE && !u->error)
			u->error = cqe->res < 0 ? cqe->res : -EIO;
		u->free_slots[u->nfree++] = (int)(uintptr_t)io_uring_cqe_get_data(cqe);
		io_uring_cqe_seen(&u->ring, cqe);
		u->inflight--;
		want--;
	}
}

static int drain(struct eng_uring_file *u)
{
	reap(u, DEPTH * 2);
	return u->error;
}

static int ur_write(void *ctx, uint64_t block, const uint8_t *data)
{
	struct eng_uring_file *u = ctx;

	if (u->error)
		return u->error;
	if (!u->nfree)
		reap(u, 1);
	if (!u->nfree)
		return u->error ? u->error : -EIO;
	int slot = u->free_slots[--u->nfree];
	memcpy(u->buf[slot], data, CDC_BLOCK_SIZE);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	if (!sqe) {
		reap(u, 0);
		sqe = io_uring_get_sqe(&u->ring);
		if (!sqe)
			return -EBUSY;
	}
	io_uring_prep_write(sqe, u->fd, u->buf[slot], CDC_BLOCK_SIZE, block * CDC_BLOCK_SIZE);
	io_uring_sqe_set_data(sqe, (void *)(uintptr_t)slot);
	u->queued++;
	u->writes++;
	if (u->queued >= 16)
		reap(u, 0);
	return 0;
}

static int ur_read(void *ctx, uint64_t block, uint8_t *out)
{
	struct eng_uring_file *u = ctx;
	int ret = drain(u);

	if (ret)
		return ret;
	ssize_t n = pread(u->fd, out, CDC_BLOCK_SIZE, (off_t)(block * CDC_BLOCK_SIZE));
	if (n < 0)
		return -errno;
	memset(out + n, 0, CDC_BLOCK_SIZE - (size_t)n);
	return 0;
}

static int ur_resize(void *ctx, uint64_t size)
{
	struct eng_uring_file *u = ctx;
	int ret = drain(u);

	if (ret)
		return ret;
	if (size != u->size && ftruncate(u->fd, (off_t)size))
		return -errno;
	u->size = size;
	return 0;
}

struct eng_uring_file *eng_uring_file_new(int fd, uint64_t size, char *err, size_t errlen)
{
	struct eng_uring_file *u = calloc(1, sizeof(*u));
	int r;

	if (!u || !(u->buf = aligned_alloc(4096, (size_t)DEPTH * CDC_BLOCK_SIZE))) {
		free(u);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if ((r = io_uring_queue_init(DEPTH * 2, &u->ring, 0))) {
		snprintf(err, errlen, "io_uring unavailable: %s", strerror(-r));
		free(u->buf);
		free(u);
		return NULL;
	}
	u->fd = fd;
	u->size = size;
	for (int i = 0; i < DEPTH; i++)
		u->free_slots[u->nfree++] = i;
	return u;
}

struct eng_store eng_uring_store(struct eng_uring_file *u)
{
	return (struct eng_store){ .read = ur_read, .write = ur_write, .resize = ur_resize, .ctx = u };
}

int eng_uring_file_sync(struct eng_uring_file *u)
{
	int ret = drain(u);

	if (!ret && fdatasync(u->fd))
		ret = -errno;
	return ret;
}

uint64_t eng_uring_file_writes(const struct eng_uring_file *u)
{
	return u->writes;
}

void eng_uring_file_free(struct eng_uring_file *u)
{
	if (!u)
		return;
	drain(u);
	io_uring_queue_exit(&u->ring);
	free(u->buf);
	free(u);
}

/* io_uring block store (design in uring_store.h). */
#include "uring_store.h"

#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEPTH 64        /* block buffers, each a write in flight at most */
#define SUBMIT_BATCH 16 /* writes prepared before one submission */
#define READ_SLOT DEPTH /* one more buffer, the read's: the kernel never writes into a caller's memory */
#define READ_TAG ((uint64_t)READ_SLOT)
#define NO_BLOCK UINT64_MAX

struct eng_uring_file {
	struct io_uring ring;
	int fd;
	uint64_t size, writes, reads;
	unsigned inflight, queued; /* submitted and not reaped; prepared and not submitted */
	int error;
	int free_slots[DEPTH];
	unsigned nfree;
	uint64_t slot_block[DEPTH]; /* the block each slot's write carries, NO_BLOCK when free */
	uint8_t (*buf)[CDC_BLOCK_SIZE];
	bool fixed;                 /* buf is registered with the ring: writes need no page pinning each */
	bool read_done;
	int read_res;
};

static void submit(struct eng_uring_file *u)
{
	if (!u->queued)
		return;
	int r = io_uring_submit(&u->ring);
	if (r < 0) {
		if (!u->error)
			u->error = r;
		return;
	}
	/* what the kernel did not take stays in the submission queue for the next call */
	unsigned took = (unsigned)r < u->queued ? (unsigned)r : u->queued;
	if (!took && !u->error)
		u->error = -EBUSY; /* a kernel that takes nothing and says nothing: do not spin */
	u->inflight += took;
	u->queued -= took;
}

/* One completion: a write's slot comes free, or the read waited for is done. */
static void complete(struct eng_uring_file *u, struct io_uring_cqe *cqe)
{
	uint64_t tag = (uint64_t)(uintptr_t)io_uring_cqe_get_data(cqe);

	if (tag == READ_TAG) {
		u->read_res = cqe->res;
		u->read_done = true;
	} else {
		if (cqe->res != CDC_BLOCK_SIZE && !u->error)
			u->error = cqe->res < 0 ? cqe->res : -EIO;
		u->slot_block[tag] = NO_BLOCK;
		u->free_slots[u->nfree++] = (int)tag;
	}
	io_uring_cqe_seen(&u->ring, cqe);
	u->inflight--;
}

/* Submits what is prepared, then reaps up to want completions (waiting for them). */
static void reap(struct eng_uring_file *u, unsigned want)
{
	struct io_uring_cqe *cqe;

	submit(u);
	while (u->inflight && want) {
		int r = io_uring_wait_cqe(&u->ring, &cqe);
		if (r == -EINTR)
			continue;
		if (r < 0) {
			if (!u->error)
				u->error = r;
			return;
		}
		complete(u, cqe);
		want--;
	}
}

static int drain(struct eng_uring_file *u)
{
	while (u->queued && !u->error)
		reap(u, 0);
	reap(u, DEPTH * 2);
	return u->error;
}

static struct io_uring_sqe *get_sqe(struct eng_uring_file *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

	if (!sqe) {
		reap(u, 0);
		sqe = io_uring_get_sqe(&u->ring);
	}
	return sqe;
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
	struct io_uring_sqe *sqe = get_sqe(u);
	if (!sqe)
		return -EBUSY;
	int slot = u->free_slots[--u->nfree];
	memcpy(u->buf[slot], data, CDC_BLOCK_SIZE);
	if (u->fixed)
		io_uring_prep_write_fixed(sqe, u->fd, u->buf[slot], CDC_BLOCK_SIZE, block * CDC_BLOCK_SIZE, 0);
	else
		io_uring_prep_write(sqe, u->fd, u->buf[slot], CDC_BLOCK_SIZE, block * CDC_BLOCK_SIZE);
	io_uring_sqe_set_data(sqe, (void *)(uintptr_t)slot);
	u->slot_block[slot] = block;
	u->queued++;
	u->writes++;
	if (u->queued >= SUBMIT_BATCH)
		submit(u);
	return 0;
}

/*
 * A read (a DUP reference to a block of the same file) goes through the ring
 * too, behind the writes already queued; only a block with a write of its
 * own still in flight waits for every write first (the kernel orders
 * nothing between requests in flight).
 */
static int ur_read(void *ctx, uint64_t block, uint8_t *out)
{
	struct eng_uring_file *u = ctx;
	int ret;

	for (int i = 0; i < DEPTH; i++)
		if (u->slot_block[i] == block) {
			if ((ret = drain(u)))
				return ret;
			break;
		}
	if (u->error)
		return u->error;
	struct io_uring_sqe *sqe = get_sqe(u);
	if (!sqe)
		return -EBUSY;
	uint8_t *rbuf = u->buf[READ_SLOT];
	if (u->fixed)
		io_uring_prep_read_fixed(sqe, u->fd, rbuf, CDC_BLOCK_SIZE, block * CDC_BLOCK_SIZE, 0);
	else
		io_uring_prep_read(sqe, u->fd, rbuf, CDC_BLOCK_SIZE, block * CDC_BLOCK_SIZE);
	io_uring_sqe_set_data(sqe, (void *)(uintptr_t)READ_TAG);
	u->queued++;
	u->read_done = false;
	/* its own completion, whatever a write's says meanwhile: only then is the buffer free again */
	while (!u->read_done) {
		unsigned before = u->inflight + u->queued;
		reap(u, 1);
		if (!u->read_done && u->inflight + u->queued == before && u->error)
			return u->error; /* nothing moves any more (the ring failed): the read never ran */
	}
	u->reads++;
	if (u->error)
		return u->error;
	if (u->read_res < 0)
		return u->read_res;
	memcpy(out, rbuf, (size_t)u->read_res);
	memset(out + u->read_res, 0, CDC_BLOCK_SIZE - (size_t)u->read_res);
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

	if (!u || !(u->buf = aligned_alloc(4096, (size_t)(DEPTH + 1) * CDC_BLOCK_SIZE))) {
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
	/* registered once: writes then skip pinning their buffer's page each time (RLIMIT_MEMLOCK may refuse) */
	struct iovec iov = { .iov_base = u->buf, .iov_len = (size_t)(DEPTH + 1) * CDC_BLOCK_SIZE };
	u->fixed = io_uring_register_buffers(&u->ring, &iov, 1) == 0;
	u->fd = fd;
	u->size = size;
	for (int i = 0; i < DEPTH; i++) {
		u->free_slots[u->nfree++] = i;
		u->slot_block[i] = NO_BLOCK;
	}
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

bool eng_uring_file_fixed(const struct eng_uring_file *u)
{
	return u->fixed;
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

/*
 * File and memory implementations of the source, sink and store tables.
 * Used from one thread at a time: the sink stage, or the patch reader.
 */
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int eng_parse_location(const char *loc, const char **path, char *err, size_t errlen)
{
	if (!strncmp(loc, "file:", 5)) {
		*path = loc + 5;
	} else if (!strncmp(loc, "tcp:", 4) || !strncmp(loc, "dpdk:", 5)) {
		snprintf(err, errlen, "%s is a network location; a file is needed here", loc);
		return -EINVAL;
	} else {
		*path = loc;
	}
	if (!**path) {
		snprintf(err, errlen, "empty path in '%s'", loc);
		return -EINVAL;
	}
	return 0;
}

/* ---- fd --------------------------------------------------------------------- */

static int fd_write(void *ctx, const void *buf, size_t len)
{
	struct eng_fd *f = ctx;
	size_t done = 0;

	while (done < len) {
		ssize_t r = write(f->fd, (const char *)buf + done, len - done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		done += (size_t)r;
	}
	f->size += len;
	return 0;
}

static ssize_t fd_read(void *ctx, void *buf, size_t len)
{
	struct eng_fd *f = ctx;

	for (;;) {
		ssize_t r = read(f->fd, buf, len);
		if (r < 0 && errno == EINTR)
			continue;
		return r < 0 ? -errno : r;
	}
}

static int fd_read_block(void *ctx, uint64_t block, uint8_t *buf)
{
	struct eng_fd *f = ctx;
	uint64_t off = block * CDC_BLOCK_SIZE;
	size_t want = off >= f->size ? 0
		      : f->size - off < CDC_BLOCK_SIZE ? (size_t)(f->size - off)
						       : CDC_BLOCK_SIZE;
	size_t done = 0;

	while (done < want) {
		ssize_t r = pread(f->fd, buf + done, want - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		done += (size_t)r;
	}
	memset(buf + want, 0, CDC_BLOCK_SIZE - want);
	return 0;
}

static int fd_write_block(void *ctx, uint64_t block, const uint8_t *buf)
{
	struct eng_fd *f = ctx;
	uint64_t off = block * CDC_BLOCK_SIZE;
	size_t done = 0;

	while (done < CDC_BLOCK_SIZE) {
		ssize_t r = pwrite(f->fd, buf + done, CDC_BLOCK_SIZE - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		done += (size_t)r;
	}
	if (off + CDC_BLOCK_SIZE > f->size)
		f->size = off + CDC_BLOCK_SIZE;
	return 0;
}

static int fd_resize(void *ctx, uint64_t size)
{
	struct eng_fd *f = ctx;

	if (ftruncate(f->fd, (off_t)size))
		return -errno;
	f->size = size;
	return 0;
}

struct eng_sink eng_fd_sink(struct eng_fd *f)
{
	return (struct eng_sink){ .write = fd_write, .ctx = f };
}

struct eng_source eng_fd_source(struct eng_fd *f)
{
	return (struct eng_source){ .read = fd_read, .ctx = f };
}

struct eng_store eng_fd_store(struct eng_fd *f)
{
	return (struct eng_store){
		.read = fd_read_block, .write = fd_write_block, .resize = fd_resize, .ctx = f
	};
}

/* ---- memory ------------------------------------------------------------------ */

static int mem_reserve(struct eng_mem *m, size_t len)
{
	if (len <= m->cap)
		return 0;
	if (m->max && len > m->max)
		return -EFBIG;
	size_t cap = m->cap ? m->cap : 4096;
	while (cap < len)
		cap *= 2;
	if (m->max && cap > m->max)
		cap = m->max;
	uint8_t *d = realloc(m->data, cap);
	if (!d)
		return -ENOMEM;
	memset(d + m->cap, 0, cap - m->cap);
	m->data = d;
	m->cap = cap;
	return 0;
}

static int mem_write(void *ctx, const void *buf, size_t len)
{
	struct eng_mem *m = ctx;
	int ret = mem_reserve(m, m->len + len);

	if (ret)
		return ret;
	memcpy(m->data + m->len, buf, len);
	m->len += len;
	return 0;
}

static ssize_t mem_read(void *ctx, void *buf, size_t len)
{
	struct eng_mem *m = ctx;
	size_t n = m->len - m->pos < len ? m->len - m->pos : len;

	memcpy(buf, m->data + m->pos, n);
	m->pos += n;
	return (ssize_t)n;
}

static int mem_read_block(void *ctx, uint64_t block, uint8_t *buf)
{
	struct eng_mem *m = ctx;
	uint64_t off = block * CDC_BLOCK_SIZE;
	size_t n = off >= m->len ? 0 : m->len - off < CDC_BLOCK_SIZE ? m->len - off : CDC_BLOCK_SIZE;

	if (n)
		memcpy(buf, m->data + off, n);
	memset(buf + n, 0, CDC_BLOCK_SIZE - n);
	return 0;
}

static int mem_write_block(void *ctx, uint64_t block, const uint8_t *buf)
{
	struct eng_mem *m = ctx;
	uint64_t end = (block + 1) * CDC_BLOCK_SIZE;
	int ret = end > SIZE_MAX ? -EFBIG : mem_reserve(m, (size_t)end);

	if (ret)
		return ret;
	memcpy(m->data + block * CDC_BLOCK_SIZE, buf, CDC_BLOCK_SIZE);
	if (end > m->len)
		m->len = (size_t)end;
	return 0;
}

static int mem_resize(void *ctx, uint64_t size)
{
	struct eng_mem *m = ctx;
	int ret = size > SIZE_MAX ? -EFBIG : mem_reserve(m, (size_t)size);

	if (ret)
		return ret;
	if (size < m->len)
		memset(m->data + size, 0, m->len - size);
	m->len = (size_t)size;
	return 0;
}

struct eng_sink eng_mem_sink(struct eng_mem *m)
{
	return (struct eng_sink){ .write = mem_write, .ctx = m };
}

struct eng_source eng_mem_source(struct eng_mem *m)
{
	return (struct eng_source){ .read = mem_read, .ctx = m };
}

struct eng_store eng_mem_store(struct eng_mem *m)
{
	return (struct eng_store){
		.read = mem_read_block, .write = mem_write_block, .resize = mem_resize, .ctx = m
	};
}

void eng_mem_free(struct eng_mem *m)
{
	free(m->data);
	memset(m, 0, sizeof(*m));
}

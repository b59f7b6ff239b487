/*
 * Base-image index: build, cache, validate. Called once per base by the
 * main thread before the pipeline starts; the result is read-only after.
 */
#include "tracker.h"
#include "engine/errbuf.h"
#include "engine/safefile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define INDEX_MAGIC "HOFFIDX1"
#define READ_CHUNK (1u << 20)

struct index_stamp {
	uint64_t dev, ino, size;
	int64_t mtime_sec, mtime_nsec, ctime_sec, ctime_nsec;
};

struct index_header {
	char magic[8];
	struct index_stamp stamp;
	uint64_t nblocks;
	uint8_t id[CDC_DIGEST_LEN];
};

struct trk_index {
	uint64_t size, nblocks, nonzero;
	uint8_t (*digest)[CDC_DIGEST_LEN];
	uint8_t id[CDC_DIGEST_LEN];
	bool cached;
};

static void stamp_of(const struct stat *st, struct index_stamp *s)
{
	memset(s, 0, sizeof(*s));
	s->dev = st->st_dev;
	s->ino = st->st_ino;
	s->size = (uint64_t)st->st_size;
	s->mtime_sec = st->st_mtim.tv_sec;
	s->mtime_nsec = st->st_mtim.tv_nsec;
	s->ctime_sec = st->st_ctim.tv_sec;
	s->ctime_nsec = st->st_ctim.tv_nsec;
}

char *trk_index_cache_path(const char *image)
{
	char *p = malloc(strlen(image) + 6);

	if (p)
		sprintf(p, "%s.hidx", image);
	return p;
}

static int read_full(int fd, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = read(fd, (char *)buf + done, len - done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EBADMSG;
		done += (size_t)r;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = write(fd, (const char *)buf + done, len - done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		done += (size_t)r;
	}
	return 0;
}

/* The cache file ends with a SHA-256 of everything before it. */
static bool load_cache(struct trk_index *idx, const char *image, const struct index_stamp *stamp)
{
	char *path = trk_index_cache_path(image);
	int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	struct index_header h;
	uint8_t sum[CDC_DIGEST_LEN], want[CDC_DIGEST_LEN];
	bool ok = false;

	free(path);
	if (fd < 0)
		return false;
	if (read_full(fd, &h, sizeof(h)) || memcmp(h.magic, INDEX_MAGIC, 8) ||
	    memcmp(&h.stamp, stamp, sizeof(*stamp)) ||
	    h.nblocks != (stamp->size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE)
		goto out;
	size_t dlen = h.nblocks * CDC_DIGEST_LEN;
	uint8_t *buf = malloc(sizeof(h) + dlen);
	if (!buf)
		goto out;
	memcpy(buf, &h, sizeof(h));
	if (read_full(fd, buf + sizeof(h), dlen) || read_full(fd, want, sizeof(want))) {
		free(buf);
		goto out;
	}
	cdc_sha256(buf, sizeof(h) + dlen, sum);
	if (memcmp(sum, want, sizeof(sum))) {
		free(buf);
		goto out;
	}
	idx->nblocks = h.nblocks;
	idx->size = stamp->size;
	memcpy(idx->id, h.id, sizeof(idx->id));
	idx->digest = malloc(dlen ? dlen : 1);
	if (idx->digest) {
		memcpy(idx->digest, buf + sizeof(h), dlen);
		ok = true;
	}
	free(buf);
out:
	close(fd);
	return ok;
}

/* Best effort: a base in a read-only directory is simply indexed each time. */
static void save_cache(const struct trk_index *idx, const char *image,
		       const struct index_stamp *stamp)
{
	char *path = trk_index_cache_path(image), ferr[200];
	struct index_header h = { .stamp = *stamp, .nblocks = idx->nblocks };
	size_t dlen = idx->nblocks * CDC_DIGEST_LEN;
	uint8_t *buf = NULL, sum[CDC_DIGEST_LEN];
	struct eng_outfile out = { .fd = -1 };

	if (!path)
		goto out;
	memcpy(h.magic, INDEX_MAGIC, 8);
	memcpy(h.id, idx->id, sizeof(h.id));
	buf = malloc(sizeof(h) + dlen);
	if (!buf)
		goto out;
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), idx->digest, dlen);
	cdc_sha256(buf, sizeof(h) + dlen, sum);
	/* a cache: when it cannot be written, the next open builds the index again */
	if (eng_outfile_create(&out, path, 0644, ferr, sizeof(ferr)))
		goto out;
	if (write_full(out.fd, buf, sizeof(h) + dlen) || write_full(out.fd, sum, sizeof(sum)))
		eng_outfile_abort(&out);
	else
		eng_outfile_commit(&out, ferr, sizeof(ferr));
out:
	free(buf);
	free(path);
}

static int build(struct trk_index *idx, int fd, uint64_t size)
{
	struct cdc_hasher *h = cdc_hasher_new();
	struct cdc_image_digest *id = cdc_image_digest_new();
	/* a small image needs no 1 MiB buffer */
	size_t buf_len = size < READ_CHUNK ? (size_t)((size + CDC_BLOCK_SIZE - 1) & ~(uint64_t)(CDC_BLOCK_SIZE - 1)) : READ_CHUNK;
	uint8_t *buf = aligned_alloc(64, buf_len ? buf_len : CDC_BLOCK_SIZE);
	int ret = -ENOMEM;

	idx->size = size;
	idx->nblocks = (size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE;
	idx->digest = malloc(idx->nblocks ? idx->nblocks * CDC_DIGEST_LEN : 1);
	if (!h || !id || !buf || !idx->digest)
		goto out;
	uint64_t block = 0;
	for (uint64_t off = 0; off < size; off += READ_CHUNK) {
		size_t want = size - off < READ_CHUNK ? (size_t)(size - off) : READ_CHUNK;
		ret = read_full(fd, buf, want);
		if (ret)
			goto out;
		/* Zero-pad the tail so the last block hashes like the sender's. */
		size_t padded = (want + CDC_BLOCK_SIZE - 1) & ~(size_t)(CDC_BLOCK_SIZE - 1);
		memset(buf + want, 0, padded - want);
		/* non-zero blocks are hashed together, several at a time where the CPU can */
		const uint8_t *todo[READ_CHUNK / CDC_BLOCK_SIZE];
		uint8_t *todo_digest[READ_CHUNK / CDC_BLOCK_SIZE];
		uint64_t first = block;
		unsigned n = 0;
		for (size_t o = 0; o < padded; o += CDC_BLOCK_SIZE, block++) {
			if (cdc_is_zero(buf + o, CDC_BLOCK_SIZE)) {
				memcpy(idx->digest[block], cdc_zero_digest(), CDC_DIGEST_LEN);
			} else {
				todo_digest[n] = idx->digest[block];
				todo[n++] = buf + o;
			}
		}
		cdc_hash_blocks(h, todo, n, todo_digest);
		idx->nonzero += n;
		for (uint64_t b = first; b < block; b++)
			cdc_image_digest_add(id, idx->digest[b]);
	}
	cdc_image_digest_final(id, size, idx->id);
	ret = 0;
out:
	free(buf);
	cdc_image_digest_free(id);
	cdc_hasher_free(h);
	return ret;
}

/* A cached index does not store the count: build() counts as it hashes. */
static void count_nonzero(struct trk_index *idx)
{
	for (uint64_t b = 0; b < idx->nblocks; b++)
		idx->nonzero += !!memcmp(idx->digest[b], cdc_zero_digest(), CDC_DIGEST_LEN);
}

struct trk_index *trk_index_open(const char *image, char *err, size_t errlen)
{
	struct trk_index *idx = calloc(1, sizeof(*idx));
	struct index_stamp stamp;
	struct stat st;
	int fd = -1, ret;

	if (!idx) {
		eng_set_err(err, errlen, "out of memory");
		return NULL;
	}
	fd = open(image, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		eng_set_err(err, errlen, "cannot open base %s: %s", image, strerror(errno));
		goto err;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		eng_set_err(err, errlen, "base %s is not a file or block device", image);
		goto err;
	}
	stamp_of(&st, &stamp);
	if (load_cache(idx, image, &stamp)) {
		idx->cached = true;
		count_nonzero(idx);
		close(fd);
		return idx;
	}
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	ret = build(idx, fd, stamp.size);
	if (ret) {
		eng_set_err(err, errlen, "cannot index base %s: %s", image, strerror(-ret));
		goto err;
	}
	/* Re-stat: an image modified while we read it must not be cached. */
	struct stat after;
	struct index_stamp stamp2;
	if (!fstat(fd, &after)) {
		stamp_of(&after, &stamp2);
		if (!memcmp(&stamp, &stamp2, sizeof(stamp)))
			save_cache(idx, image, &stamp);
	}
	close(fd);
	return idx;
err:
	if (fd >= 0)
		close(fd);
	trk_index_free(idx);
	return NULL;
}

void trk_index_free(struct trk_index *idx)
{
	if (!idx)
		return;
	free(idx->digest);
	free(idx);
}

uint64_t trk_index_size(const struct trk_index *idx) { return idx->size; }
uint64_t trk_index_blocks(const struct trk_index *idx) { return idx->nblocks; }
uint64_t trk_index_nonzero_blocks(const struct trk_index *idx) { return idx->nonzero; }
const uint8_t *trk_index_id(const struct trk_index *idx) { return idx->id; }
bool trk_index_was_cached(const struct trk_index *idx) { return idx->cached; }

const uint8_t *trk_index_digest(const struct trk_index *idx, uint64_t block)
{
	return block < idx->nblocks ? idx->digest[block] : NULL;
}

/*
 * libFuzzer target for the base index cache (tracker/index.c, BASE.hidx):
 * a file beside the base that anyone with write access to that directory
 * could have changed. The harness keeps one 64 KiB base and the cache the
 * engine wrote for it; each input is laid over that cache (XOR from the
 * start; the input's length, if shorter than the cache plus 64, cuts it
 * there), and trk_index_open must then either use the cache or build the
 * index again, and in both cases hand out the base's true block digests.
 */
#include "codecs/codecs.h"
#include "tracker/tracker.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BASE_LEN (64 * 1024)

static char image[64], *cache;
static uint8_t *good;
static size_t good_len;
static uint8_t truth[BASE_LEN / CDC_BLOCK_SIZE][CDC_DIGEST_LEN];

static void write_all(const char *path, const uint8_t *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, buf, len) != (ssize_t)len)
		abort();
	close(fd);
}

static void cleanup(void)
{
	unlink(cache);
	unlink(image);
}

static void init(void)
{
	static uint8_t base[BASE_LEN];
	char err[256];

	/* tmpfs: the cache is written and synced on every input */
	snprintf(image, sizeof(image), "/dev/shm/fuzz-index-%d.img", (int)getpid());
	for (size_t i = 0; i < BASE_LEN; i++)
		base[i] = (uint8_t)(i * 13 + (i >> 10));
	for (size_t b = 0; b < BASE_LEN / CDC_BLOCK_SIZE; b++)
		cdc_sha256(base + b * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE, truth[b]);
	write_all(image, base, BASE_LEN);
	struct trk_index *idx = trk_index_open(image, err, sizeof(err)); /* writes the cache */
	if (!idx)
		abort();
	trk_index_free(idx);
	cache = trk_index_cache_path(image);
	atexit(cleanup);
	FILE *f = fopen(cache, "rb");
	if (!f)
		abort();
	good = malloc(1 << 20);
	good_len = fread(good, 1, 1 << 20, f);
	fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];

	if (!good)
		init();
	size_t len = size < good_len + 64 ? size : good_len;
	uint8_t *buf = calloc(1, len > good_len ? len : good_len);
	memcpy(buf, good, good_len);
	for (size_t i = 0; i < size && i < len; i++)
		buf[i] ^= data[i];
	write_all(cache, buf, len);
	free(buf);
	struct trk_index *idx = trk_index_open(image, err, sizeof(err));
	if (!idx)
		abort(); /* the base is intact: a bad cache must never fail the open */
	if (trk_index_size(idx) != BASE_LEN || trk_index_blocks(idx) != BASE_LEN / CDC_BLOCK_SIZE)
		abort();
	for (uint64_t b = 0; b < BASE_LEN / CDC_BLOCK_SIZE; b++)
		if (memcmp(trk_index_digest(idx, b), truth[b], CDC_DIGEST_LEN))
			abort(); /* a changed cache was believed */
	trk_index_free(idx);
	return 0;
}

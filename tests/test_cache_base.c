/*
 * engine/cache_base: the base a destination's edge cache supplies, on a real
 * LMDB store. Every chunk the cache holds intact lands in its target (a file
 * full of junk, fresh memory), zero chunks without a lookup (a hole in the
 * file); a corrupt chunk becomes lacking; the block digests and map say
 * exactly what was written; the pristine base reads back from the cache and
 * refuses lacking blocks; the plan's chunks stay pinned until the close,
 * which counts the chunks read as used. The source's chunk digests kept
 * beside a base image are used only while they fit the image and their
 * checksum.
 */
#include "engine/cache_base.h"
#include "engine/vmbase.h"
#include "codecs/codecs.h"
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CS (16u << 10)

struct object {
	uint8_t *data;
	uint64_t size;
};

/* Random chunks, every fifth all zero. */
static void make_object(struct object *ob, uint64_t size)
{
	ob->size = size;
	ob->data = calloc(1, size);
	for (uint64_t off = 0, c = 0; off < size; off += CS, c++)
		if (c % 5 != 2)
			test_fill_random(ob->data + off, size - off < CS ? size - off : CS);
}

static bool held_by_store(unsigned o, uint64_t c)
{
	return o == 2 || c % 3 != 0;
}

static void test_fill_and_read_back(void **state)
{
	(void)state;
	char *dir = test_tmpdir(), path[300], err[256];
	struct edg_store *st = edg_store_open(dir, true, CS, 0, err, sizeof(err));
	struct object ob[3];
	struct eng_base_plan plan = { .aead = CDC_AEAD_AES256GCM, .nobj = 3, .chunk_size = CS };
	uint64_t sizes[3] = { 37 * CS + 5000, 20 * CS, 9000 };
	uint64_t corrupt_chunk = 4; /* of the disk: held, then found corrupt */

	assert_non_null(st);
	for (unsigned o = 0; o < 3; o++) {
		make_object(&ob[o], sizes[o]);
		struct eng_plan_object *po = &plan.obj[o];
		po->size = sizes[o];
		po->chunks = (sizes[o] + CS - 1) / CS;
		po->digests = malloc(po->chunks * CDC_DIGEST_LEN);
		edg_chunk_digests(ob[o].data, po->size, CS, po->digests);
		for (uint64_t c = 0; c < po->chunks; c++) {
			uint32_t len = (uint32_t)(po->size - c * CS < CS ? po->size - c * CS : CS);
			if (!held_by_store(o, c) || cdc_is_zero(ob[o].data + c * CS, len))
				continue; /* zero chunks are never stored: the receiver knows them by digest */
			uint8_t *bytes = malloc(len);
			memcpy(bytes, ob[o].data + c * CS, len);
			if (o == 0 && c == corrupt_chunk)
				bytes[len / 2] ^= 0x10; /* stored under its digest, with a bit flipped */
			assert_int_equal(edg_store_put(st, po->digests + c * CDC_DIGEST_LEN, bytes, len, NULL, err,
						       sizeof(err)), 0);
			free(bytes);
		}
	}

	/* targets: the disk a file full of junk, memory and devices fresh */
	snprintf(path, sizeof(path), "%s/disk-out", dir);
	uint8_t *junk = malloc(sizes[0]);
	memset(junk, 0xA5, sizes[0]);
	test_write_file(path, junk, sizes[0]);
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint8_t *mem = calloc(1, sizes[1]), *dev = calloc(1, sizes[2]);
	struct eng_cache_target t[3] = { { .fd = fd }, { .mem = mem }, { .mem = dev } };

	struct eng_cache_base cb;
	assert_int_equal(eng_cache_base_open(&cb, st, &plan, 3600, err, sizeof(err)), 0);
	assert_int_equal(eng_cache_base_fill(&cb, t, err, sizeof(err)), 0);
	assert_int_equal(cb.dropped_chunks, 1);
	assert_int_equal(cb.held_bytes + cb.lacking_bytes, sizes[0] + sizes[1] + sizes[2]);

	uint8_t *disk = malloc(sizes[0]);
	assert_int_equal(pread(fd, disk, sizes[0], 0), (ssize_t)sizes[0]);
	const uint8_t *got[3] = { disk, mem, dev };
	for (unsigned o = 0; o < 3; o++) {
		for (uint64_t c = 0; c < plan.obj[o].chunks; c++) {
			uint32_t len = (uint32_t)(sizes[o] - c * CS < CS ? sizes[o] - c * CS : CS);
			bool zero = cdc_is_zero(ob[o].data + c * CS, len);
			bool held = zero || (held_by_store(o, c) && !(o == 0 && c == corrupt_chunk));
			assert_int_equal(cb.chunk_have[o][c / 8] >> (c % 8) & 1, held);
			if (held) /* zero chunks over the junk too: a hole */
				assert_memory_equal(got[o] + c * CS, ob[o].data + c * CS, len);
			else if (o == 0)
				assert_int_equal(got[o][c * CS], 0xA5); /* lacking: left for the stream */
		}
		for (uint64_t b = 0; b < cb.blocks[o]; b++) {
			uint64_t c = b * CDC_BLOCK_SIZE / CS;
			bool held = cb.chunk_have[o][c / 8] >> (c % 8) & 1;
			uint8_t want[CDC_BLOCK_SIZE] = { 0 }, digest[CDC_DIGEST_LEN], blk[CDC_BLOCK_SIZE];
			uint64_t n = sizes[o] - b * CDC_BLOCK_SIZE;
			memcpy(want, ob[o].data + b * CDC_BLOCK_SIZE, n < CDC_BLOCK_SIZE ? n : CDC_BLOCK_SIZE);
			assert_int_equal(cb.block_have[o][b / 8] >> (b % 8) & 1, held);
			int r = cb.base[o].read(cb.base[o].ctx, b, blk);
			if (!held) {
				assert_int_equal(r, -ENODATA); /* nothing may build on it */
				continue;
			}
			assert_int_equal(r, 0);
			assert_memory_equal(blk, want, CDC_BLOCK_SIZE);
			cdc_sha256(want, CDC_BLOCK_SIZE, digest);
			assert_memory_equal(cb.digests[o] + b * CDC_DIGEST_LEN, digest, CDC_DIGEST_LEN);
		}
		uint8_t past[CDC_BLOCK_SIZE];
		assert_int_equal(cb.base[o].read(cb.base[o].ctx, cb.blocks[o] + 3, past), 0);
		assert_true(cdc_is_zero(past, CDC_BLOCK_SIZE));
	}

	/* pinned while open: a gc to nothing keeps the plan's chunks; after the close they go */
	struct edg_gc_report rep;
	const uint8_t *held_digest = plan.obj[1].digests + 1 * CDC_DIGEST_LEN; /* memory chunk 1: stored */
	edg_store_gc(st, 0, 0, NULL, &rep, err, sizeof(err));
	assert_true(edg_store_has(st, held_digest));
	struct edg_chunk_meta before, after;
	assert_int_equal(edg_store_meta(st, held_digest, &before), 0);
	eng_cache_base_close(&cb);
	assert_int_equal(edg_store_meta(st, held_digest, &after), 0);
	assert_int_equal(after.uses, before.uses + 1); /* read for the handoff: a use, noted at the close */
	assert_int_equal(edg_store_gc(st, 0, 0, NULL, &rep, err, sizeof(err)), 0);
	assert_false(edg_store_has(st, held_digest));

	/* a plan cut in another chunk size than the cache's is refused */
	plan.chunk_size = 2 * CS;
	assert_int_equal(eng_cache_base_open(&cb, st, &plan, 3600, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "chunks"));
	eng_cache_base_close(&cb);

	close(fd);
	edg_store_close(st);
	for (unsigned o = 0; o < 3; o++) {
		free(ob[o].data);
		free(plan.obj[o].digests);
	}
	free(junk);
	free(disk);
	free(mem);
	free(dev);
	free(dir);
}

/* Object o of a base whose image is path: what eng_vmbase_chunk_digests reads. */
static void open_image(struct eng_vmbase *b, const char *path)
{
	char err[256];
	int fd = open(path, O_RDONLY);
	struct stat st;

	assert_true(fd >= 0 && !fstat(fd, &st));
	memset(b, 0, sizeof(*b));
	b->path[ENG_VM_DISK] = (char *)path;
	assert_non_null(b->index[ENG_VM_DISK] = trk_index_open(path, err, sizeof(err)));
	b->map_len[ENG_VM_DISK] = (size_t)st.st_size;
	b->map[ENG_VM_DISK] = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	assert_true(b->map[ENG_VM_DISK] != MAP_FAILED);
	close(fd);
}

static void close_image(struct eng_vmbase *b)
{
	munmap((void *)b->map[ENG_VM_DISK], b->map_len[ENG_VM_DISK]);
	trk_index_free(b->index[ENG_VM_DISK]);
}

static void test_chunk_digests_kept(void **state)
{
	(void)state;
	char *dir = test_tmpdir(), path[512], kept[600];
	struct object ob;
	enum { SIZE = 10 * CS + 1000, N = 11 };
	uint8_t want[N * CDC_DIGEST_LEN], got[N * CDC_DIGEST_LEN];
	struct eng_vmbase b;

	make_object(&ob, SIZE);
	snprintf(path, sizeof(path), "%s/disk.img", dir);
	snprintf(kept, sizeof(kept), "%s.chunks-%u", path, CS);
	test_write_file(path, ob.data, SIZE);
	edg_chunk_digests(ob.data, SIZE, CS, want);
	ino_t ino = 0;
	for (int round = 0; round < 4; round++) {
		if (round == 2) { /* a flipped digest in the kept list: its checksum refuses it */
			int fd = open(kept, O_RDWR);
			uint8_t x;
			assert_int_equal(pread(fd, &x, 1, 200), 1);
			x ^= 1;
			assert_int_equal(pwrite(fd, &x, 1, 200), 1);
			close(fd);
		}
		if (round == 3) { /* the image changed: a list of the old one does not fit */
			ob.data[5] ^= 0xff;
			test_write_file(path, ob.data, SIZE);
			edg_chunk_digests(ob.data, SIZE, CS, want);
		}
		open_image(&b, path);
		memset(got, 0, sizeof(got));
		eng_vmbase_chunk_digests(&b, ENG_VM_DISK, CS, got, N);
		assert_memory_equal(got, want, sizeof(want));
		struct stat st;
		assert_int_equal(stat(kept, &st), 0); /* kept for the next handoff */
		if (round == 1)
			assert_true(st.st_ino == ino); /* read, not made again */
		if (round >= 2)
			assert_true(st.st_ino != ino); /* made again (a new file renamed over it) */
		ino = st.st_ino;
		close_image(&b);
	}
	free(ob.data);
	snprintf(path, sizeof(path), "rm -rf %s", dir);
	assert_int_equal(system(path), 0);
	free(dir);
}

int main(void)
{
	test_seed();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fill_and_read_back),
		cmocka_unit_test(test_chunk_digests_kept),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

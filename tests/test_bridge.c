/*
 * qemu_bridge: the migration-stream parser and writer on hand-built streams
 * (every record kind, every rejection the parser promises, truncation at
 * many points), the device-state blob, a 256 MiB write/parse round trip
 * with its throughput, and a real live migration: a TCG guest running a
 * memory workload migrates through the parser (QMP, getfd, several PART
 * sections under a tiny downtime limit), the rebuilt stream is fed to a
 * second QEMU (-incoming defer -S), guest memory is compared byte for byte
 * with pmemsave on both sides, and the guest's heartbeat goes on after cont.
 *
 * Needs qemu-system-x86_64 (skipped, with a message, only when it is
 * missing) and the test guest (HANDOFF_GUEST_DIR, default
 * /var/tmp/handoff-guest, built with scripts/build-guest if absent).
 */
#include "qemu_bridge/migstream.h"
#include "qemu_bridge/qmp.h"
#include "testlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#define GUEST_RAM "262152K"		/* never a multiple of 256 KiB (QEMU 7.2 TCG bug) */
#define PMEM_SIZE (256ull << 20)	/* guest-physical bytes compared */
#define VGA_HOLE_LO 0xa0000ull		/* legacy VGA/BIOS window: pmemsave does not read pc.ram here */
#define VGA_HOLE_HI 0x100000ull

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- hand-built streams ------------------------------------------------------ */

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void b_put(struct buf *b, const void *src, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->len, src, n);
	b->len += n;
}

static void b_u8(struct buf *b, uint8_t v)
{
	b_put(b, &v, 1);
}

static void b_be32(struct buf *b, uint32_t v)
{
	uint8_t x[4] = { v >> 24, v >> 16, v >> 8, v };
	b_put(b, x, 4);
}

static void b_be64(struct buf *b, uint64_t v)
{
	b_be32(b, v >> 32);
	b_be32(b, (uint32_t)v);
}

static void b_name(struct buf *b, const char *s)
{
	b_u8(b, (uint8_t)strlen(s));
	b_put(b, s, strlen(s));
}

/* What to break in the hand-built stream. */
enum defect {
	OK, BAD_MAGIC, BAD_VERSION, UNKNOWN_FLAG, XBZRLE, COMPRESS, OFF_OUTSIDE, UNKNOWN_BLOCK,
	MEMSIZE_SHORT, MEMSIZE_LONG, CONT_FIRST, COMMAND, OTHER_ITER, FOOTER_ID, NO_VMDESC,
	IGNORE_SHARED, DEVICE_EARLY, UNALIGNED_BLOCK, DEFECT_COUNT
};

static const char *defect_words[DEFECT_COUNT] = {
	[BAD_MAGIC] = "magic", [BAD_VERSION] = "version", [UNKNOWN_FLAG] = "unknown RAM record flags 0x220",
	[XBZRLE] = "XBZRLE", [COMPRESS] = "compress", [OFF_OUTSIDE] = "outside RAM block",
	[UNKNOWN_BLOCK] = "unknown RAM block", [MEMSIZE_SHORT] = "MEM_SIZE total", [MEMSIZE_LONG] = "RAM block",
	[CONT_FIRST] = "CONTINUE", [COMMAND] = "command", [OTHER_ITER] = "dirty-bitmap",
	[FOOTER_ID] = "footer", [NO_VMDESC] = "VMDESC", [IGNORE_SHARED] = "x-ignore-shared",
	[DEVICE_EARLY] = "device state", [UNALIGNED_BLOCK] = "multiple of 4096",
};

#define S_RAM_PAGES 16
#define S_ROM_PAGES 2
#define S_IMAGE ((S_RAM_PAGES + S_ROM_PAGES) * QB_PAGE)

static void s_page(struct buf *b, uint64_t off, unsigned flags, const char *block, uint8_t *img,
		   uint64_t img_off, uint8_t fill)
{
	b_be64(b, off | flags);
	if (!(flags & QB_RAM_CONTINUE))
		b_name(b, block);
	if (flags & QB_RAM_ZERO) {
		b_u8(b, fill);
		memset(img + img_off + off, fill, QB_PAGE);
	} else {
		uint8_t page[QB_PAGE];
		test_fill_random(page, sizeof(page));
		b_put(b, page, sizeof(page));
		memcpy(img + img_off + off, page, QB_PAGE);
	}
}

/*
 * A small stream shaped like QEMU 7.2's: CONFIG, RAM START (blocks "pc.ram"
 * 16 pages and "rom" 2 pages), two PART sections (PAGE, ZERO, CONTINUE,
 * a page sent twice, CONTINUE across sections), END (ZERO with a non-zero
 * fill byte), a device section, EOF and VMDESC. img gets the expected image.
 * *tail_at is where the device tail starts, *pre_len the prefix length.
 */
static struct buf make_stream(enum defect d, uint8_t *img, size_t *pre_len, size_t *tail_at)
{
	struct buf b = { 0 };
	const uint32_t id = 2;
	const uint64_t rom_off = S_RAM_PAGES * QB_PAGE;

	memset(img, 0, S_IMAGE);
	b_be32(&b, d == BAD_MAGIC ? 0x5145564e : 0x5145564d);
	b_be32(&b, d == BAD_VERSION ? 2 : 3);
	b_u8(&b, QB_SEC_CONFIG);
	b_be32(&b, 10);
	b_put(&b, "pc-q35-7.2", 10);
	if (d == IGNORE_SHARED) {
		b_u8(&b, QB_SEC_SUBSECTION);
		b_name(&b, "configuration/capabilities");
		b_be32(&b, 1);
		b_be32(&b, 1);
		b_name(&b, "x-ignore-shared");
	}
	if (d == COMMAND) {
		b_u8(&b, QB_SEC_COMMAND);
		b_put(&b, "\0\1\0\0", 4);
	}
	if (d == DEVICE_EARLY) {
		b_u8(&b, QB_SEC_FULL);
		b_be32(&b, 9);
	}
	b_u8(&b, QB_SEC_START);
	b_be32(&b, id);
	b_name(&b, "ram");
	b_be32(&b, 0);
	b_be32(&b, 4);
	uint64_t total = S_IMAGE + (d == MEMSIZE_LONG ? QB_PAGE : 0) - (d == MEMSIZE_SHORT ? QB_PAGE : 0);
	b_be64(&b, total | QB_RAM_MEM_SIZE);
	b_name(&b, "pc.ram");
	b_be64(&b, S_RAM_PAGES * QB_PAGE + (d == UNALIGNED_BLOCK ? 512 : 0));
	if (d == IGNORE_SHARED) /* with x-ignore-shared every entry carries its address */
		b_be64(&b, 0);
	b_name(&b, "rom");
	b_be64(&b, S_ROM_PAGES * QB_PAGE);
	if (d == IGNORE_SHARED)
		b_be64(&b, 0xfffc0000);
	b_be64(&b, QB_RAM_EOS);
	b_u8(&b, QB_SEC_FOOTER);
	b_be32(&b, id);
	*pre_len = b.len;
	if (d == OTHER_ITER) {
		b_u8(&b, QB_SEC_START);
		b_be32(&b, 3);
		b_name(&b, "dirty-bitmap");
		b_be32(&b, 0);
		b_be32(&b, 1);
	}

	b_u8(&b, QB_SEC_PART);
	b_be32(&b, id);
	s_page(&b, 0, d == CONT_FIRST ? QB_RAM_PAGE | QB_RAM_CONTINUE : QB_RAM_PAGE, "pc.ram", img, 0, 0);
	s_page(&b, 3 * QB_PAGE, QB_RAM_PAGE | QB_RAM_CONTINUE, "pc.ram", img, 0, 0);
	s_page(&b, 5 * QB_PAGE, QB_RAM_ZERO | QB_RAM_CONTINUE, "pc.ram", img, 0, 0);
	s_page(&b, 1 * QB_PAGE, QB_RAM_PAGE, d == UNKNOWN_BLOCK ? "pc.rom" : "rom", img, rom_off, 0);
	s_page(&b, 15 * QB_PAGE, QB_RAM_PAGE, "pc.ram", img, 0, 0);
	if (d == UNKNOWN_FLAG || d == XBZRLE || d == COMPRESS) {
		unsigned f = d == UNKNOWN_FLAG ? 0x200 : d == XBZRLE ? QB_RAM_XBZRLE : QB_RAM_COMPRESS;
		b_be64(&b, 7 * QB_PAGE | f | QB_RAM_CONTINUE);
	}
	b_be64(&b, QB_RAM_EOS);
	b_u8(&b, QB_SEC_FOOTER);
	b_be32(&b, d == FOOTER_ID ? id + 1 : id);

	b_u8(&b, QB_SEC_PART);
	b_be32(&b, id);
	/* CONTINUE across sections: the previous block was pc.ram */
	s_page(&b, 3 * QB_PAGE, QB_RAM_PAGE | QB_RAM_CONTINUE, "pc.ram", img, 0, 0);
	s_page(&b, (d == OFF_OUTSIDE ? 16 : 9) * QB_PAGE, QB_RAM_PAGE | QB_RAM_CONTINUE, "pc.ram", img, 0, 0);
	b_be64(&b, QB_RAM_EOS);
	b_u8(&b, QB_SEC_FOOTER);
	b_be32(&b, id);

	b_u8(&b, QB_SEC_END);
	b_be32(&b, id);
	s_page(&b, 0, QB_RAM_ZERO, "rom", img, rom_off, 0x5a);
	s_page(&b, 12 * QB_PAGE, QB_RAM_PAGE, "pc.ram", img, 0, 0);
	b_be64(&b, QB_RAM_EOS);
	b_u8(&b, QB_SEC_FOOTER);
	b_be32(&b, id);

	*tail_at = b.len;
	b_u8(&b, QB_SEC_FULL);
	b_be32(&b, 3);
	b_name(&b, "timer");
	b_be32(&b, 0);
	b_be32(&b, 2);
	b_put(&b, "\0\0\0\0\0\0\0\0\x12\x34\0\0\0\0\0\0", 16);
	b_u8(&b, QB_SEC_FOOTER);
	b_be32(&b, 3);
	b_u8(&b, QB_SEC_EOF);
	if (d != NO_VMDESC) {
		const char *js = "{\"page_size\": 4096, \"devices\": [{\"name\": \"timer\"}]}";
		b_u8(&b, QB_SEC_VMDESC);
		b_be32(&b, (uint32_t)strlen(js));
		b_put(&b, js, strlen(js));
	}
	return b;
}

/* Parse results gathered by the callbacks. */
struct collect {
	uint8_t *img;
	size_t img_size;
	struct qb_layout layout;
	int layouts;
	atomic_long pages, zeros;
	atomic_int sections[4];
	long abort_after; /* page callbacks before returning an error, 0 = never */
};

static int c_layout(void *ctx, const struct qb_layout *l)
{
	struct collect *c = ctx;

	c->layout = *l;
	c->layouts++;
	if (!c->img) {
		c->img = calloc(1, l->image_size);
		c->img_size = l->image_size;
	}
	return c->img && c->img_size == l->image_size ? 0 : -ENOMEM;
}

static int c_page(void *ctx, uint64_t off, const uint8_t *data)
{
	struct collect *c = ctx;

	if (!c->img || off % QB_PAGE || off + QB_PAGE > c->img_size)
		return -ERANGE;
	if (data) {
		memcpy(c->img + off, data, QB_PAGE);
		atomic_fetch_add(&c->pages, 1);
	} else {
		memset(c->img + off, 0, QB_PAGE);
		atomic_fetch_add(&c->zeros, 1);
	}
	if (c->abort_after && atomic_load(&c->pages) + atomic_load(&c->zeros) >= c->abort_after)
		return -ECANCELED;
	return 0;
}

static int c_section(void *ctx, unsigned type)
{
	struct collect *c = ctx;

	if (type >= 1 && type <= 3)
		atomic_fetch_add(&c->sections[type], 1);
	return 0;
}

static void collect_reset(struct collect *c)
{
	free(c->img);
	memset(c, 0, sizeof(*c));
}

static void test_parse_synthetic(void **state)
{
	(void)state;
	uint8_t *want = malloc(S_IMAGE);
	size_t pre, tail_at;
	struct buf s = make_stream(OK, want, &pre, &tail_at);
	struct collect c = { 0 };
	struct qb_parse_cb cb = { c_layout, c_page, c_section, &c };
	struct qb_layout l;
	struct qb_devstate d;
	char err[256] = "";

	int ret = qb_parse_mem(s.p, s.len, &cb, &l, &d, err, sizeof(err));
	if (ret)
		fail_msg("valid stream rejected: %s", err);
	assert_int_equal(l.nblocks, 2);
	assert_string_equal(l.blocks[0].id, "pc.ram");
	assert_string_equal(l.blocks[1].id, "rom");
	assert_int_equal(l.blocks[1].image_off, S_RAM_PAGES * QB_PAGE);
	assert_int_equal(l.image_size, S_IMAGE);
	assert_int_equal(c.layouts, 1);
	assert_int_equal(c.pages, 8);
	assert_int_equal(c.zeros, 1); /* the 0x5a-filled ZERO record arrives as data */
	assert_int_equal(c.sections[1], 1);
	assert_int_equal(c.sections[2], 2);
	assert_int_equal(c.sections[3], 1);
	assert_memory_equal(c.img, want, S_IMAGE);
	assert_int_equal(d.ram_section_id, 2);
	assert_int_equal(d.prefix_len, pre);
	assert_memory_equal(d.prefix, s.p, pre);
	assert_int_equal(d.tail_len, s.len - tail_at);
	assert_memory_equal(d.tail, s.p + tail_at, d.tail_len);

	/* the same through a file descriptor */
	char *dir = test_tmpdir(), path[300];
	snprintf(path, sizeof(path), "%s/s.bin", dir);
	test_write_file(path, s.p, s.len);
	int fd = open(path, O_RDONLY);
	struct qb_devstate d2;
	struct collect c2 = { 0 };
	struct qb_parse_cb cb2 = { c_layout, c_page, c_section, &c2 };
	assert_int_equal(qb_parse_stream(fd, &cb2, NULL, &d2, err, sizeof(err)), 0);
	close(fd);
	assert_memory_equal(c2.img, want, S_IMAGE);
	assert_int_equal(d2.tail_len, d.tail_len);

	/* the layout is recoverable from the devstate alone */
	struct qb_layout l2;
	assert_int_equal(qb_devstate_layout(&d, &l2, err, sizeof(err)), 0);
	assert_memory_equal(&l2, &l, sizeof(l));

	/* a callback's error stops the parse */
	struct collect c3 = { .abort_after = 3 };
	struct qb_parse_cb cb3 = { c_layout, c_page, NULL, &c3 };
	assert_int_equal(qb_parse_mem(s.p, s.len, &cb3, NULL, NULL, err, sizeof(err)), -ECANCELED);
	assert_non_null(strstr(err, "page callback"));

	unlink(path);
	rmdir(dir);
	free(dir);
	collect_reset(&c);
	collect_reset(&c2);
	collect_reset(&c3);
	qb_devstate_free(&d);
	qb_devstate_free(&d2);
	free(s.p);
	free(want);
}

static void test_parse_rejects(void **state)
{
	(void)state;
	uint8_t *img = malloc(S_IMAGE);
	char err[256];
	size_t pre, tail_at;

	for (int d = OK + 1; d < DEFECT_COUNT; d++) {
		struct buf s = make_stream(d, img, &pre, &tail_at);
		struct collect c = { 0 };
		struct qb_parse_cb cb = { c_layout, c_page, c_section, &c };
		struct qb_devstate dev = { .prefix = (uint8_t *)1 };

		err[0] = 0;
		struct qb_layout lay;
		int ret = qb_parse_mem(s.p, s.len, &cb, &lay, &dev, err, sizeof(err));
		if (d == IGNORE_SHARED) { /* not a defect: a stream made with x-ignore-shared */
			if (ret)
				fail_msg("x-ignore-shared stream: ret %d, err '%s'", ret, err);
			assert_true(lay.ignore_shared);
			assert_int_equal(lay.nblocks, 2);
			qb_devstate_free(&dev);
			collect_reset(&c);
			free(s.p);
			continue;
		}
		if (ret != -EBADMSG || !strcasestr(err, defect_words[d]))
			fail_msg("defect %d: ret %d, err '%s' (expected -EBADMSG mentioning '%s')", d, ret, err,
				 defect_words[d]);
		assert_null(dev.prefix); /* nothing to free on failure */
		assert_null(strchr(err, '\n'));
		collect_reset(&c);
		free(s.p);
	}

	/* truncation anywhere fails, with "truncated" in the message */
	struct buf s = make_stream(OK, img, &pre, &tail_at);
	int tested = 0;
	for (size_t n = 0; n < s.len; n++) {
		if (!(n < 400 || n % 61 == 0 || n + 400 > s.len || (n > tail_at - 20 && n < tail_at + 20)))
			continue;
		struct collect c = { 0 };
		struct qb_parse_cb cb = { c_layout, c_page, NULL, &c };
		uint8_t *cut = malloc(n ? n : 1); /* exact-size copy: ASan sees any overread */
		memcpy(cut, s.p, n);
		err[0] = 0;
		int ret = qb_parse_mem(cut, n, &cb, NULL, NULL, err, sizeof(err));
		if (ret != -EBADMSG || !strstr(err, "truncated"))
			fail_msg("stream cut at %zu of %zu: ret %d, err '%s'", n, s.len, ret, err);
		free(cut);
		collect_reset(&c);
		tested++;
	}
	assert_true(tested > 500);

	/* random single-byte corruption never crashes (the result may be ok) */
	for (int i = 0; i < 2000; i++) {
		uint8_t *m = malloc(s.len);
		memcpy(m, s.p, s.len);
		m[test_rand() % s.len] ^= (uint8_t)(1 + test_rand() % 255);
		struct qb_devstate dev;
		if (!qb_parse_mem(m, s.len, NULL, NULL, &dev, err, sizeof(err)))
			qb_devstate_free(&dev);
		free(m);
	}
	free(s.p);
	free(img);
}

/* Write a stream to a memfd; returns the fd (positioned at 0) and its size. */
static int write_to_memfd(const struct qb_layout *l, const uint8_t *img, const struct qb_devstate *d,
			  unsigned flags, size_t *len)
{
	char err[256];
	int fd = memfd_create("qb-stream", MFD_CLOEXEC);

	assert_true(fd >= 0);
	int ret = qb_write_stream_ex(fd, l, img, d, flags, err, sizeof(err));
	if (ret)
		fail_msg("qb_write_stream: %s", err);
	*len = (size_t)lseek(fd, 0, SEEK_CUR);
	lseek(fd, 0, SEEK_SET);
	return fd;
}

static void test_write_roundtrip(void **state)
{
	(void)state;
	uint8_t *img = malloc(S_IMAGE);
	size_t pre, tail_at, len;
	struct buf s = make_stream(OK, img, &pre, &tail_at);
	struct qb_layout l;
	struct qb_devstate d;
	char err[256];

	assert_int_equal(qb_parse_mem(s.p, s.len, NULL, &l, &d, err, sizeof(err)), 0);
	for (int skip = 0; skip < 2; skip++) {
		int fd = write_to_memfd(&l, img, &d, skip ? QB_WRITE_SKIP_ZERO : 0, &len);
		struct collect c = { 0 };
		struct qb_parse_cb cb = { c_layout, c_page, c_section, &c };
		struct qb_devstate d2;
		struct qb_layout l2;

		assert_int_equal(qb_parse_stream(fd, &cb, &l2, &d2, err, sizeof(err)), 0);
		close(fd);
		assert_memory_equal(c.img, img, S_IMAGE);
		assert_memory_equal(&l2, &l, sizeof(l));
		/* 18 pages: 7 non-zero (one 0x5a-filled), the rest zero */
		assert_int_equal(c.pages, 7);
		assert_int_equal(c.zeros, skip ? 0 : 11);
		assert_int_equal(c.sections[2], 1);
		assert_int_equal(c.sections[3], 1);
		assert_int_equal(d2.prefix_len, d.prefix_len);
		assert_memory_equal(d2.prefix, d.prefix, d.prefix_len);
		assert_int_equal(d2.tail_len, d.tail_len);
		assert_memory_equal(d2.tail, d.tail, d.tail_len);
		qb_devstate_free(&d2);
		collect_reset(&c);
	}

	/* a layout that does not match the prefix is refused */
	struct qb_layout bad = l;
	bad.blocks[1].length += QB_PAGE;
	bad.image_size += QB_PAGE;
	assert_int_equal(qb_write_stream(1, &bad, img, &d, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "layout"));

	/* writing into a closed socket is an error, not SIGPIPE */
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	assert_true(qb_write_stream(sv[0], &l, img, &d, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "failed"));
	close(sv[0]);

	/* devstate blob */
	uint8_t *blob;
	size_t bl = qb_devstate_encode(&d, &blob);
	struct qb_devstate d3;
	assert_true(bl > d.prefix_len + d.tail_len);
	assert_int_equal(qb_devstate_decode(blob, bl, &d3, err, sizeof(err)), 0);
	assert_int_equal(d3.ram_section_id, d.ram_section_id);
	assert_memory_equal(d3.prefix, d.prefix, d.prefix_len);
	assert_memory_equal(d3.tail, d.tail, d.tail_len);
	qb_devstate_free(&d3);
	assert_int_equal(qb_devstate_decode(blob, bl - 1, &d3, err, sizeof(err)), -EBADMSG);
	assert_null(d3.prefix);
	blob[0] ^= 1;
	assert_int_equal(qb_devstate_decode(blob, bl, &d3, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "magic"));
	blob[0] ^= 1;
	blob[32] ^= 1; /* first byte of the prefix: the QEVM magic */
	assert_int_equal(qb_devstate_decode(blob, bl, &d3, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "magic"));
	blob[32] ^= 1;
	blob[bl - 2] = '#'; /* VMDESC JSON broken */
	assert_int_equal(qb_devstate_decode(blob, bl, &d3, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "VMDESC"));
	free(blob);

	qb_devstate_free(&d);
	free(s.p);
	free(img);
}

/* 256 MiB + 8 KiB of non-zero pages (the worst case): write, then parse back
 * from the fd; prints the parse throughput. */
static void test_throughput_256m(void **state)
{
	(void)state;
	uint8_t *img0 = malloc(S_IMAGE);
	size_t pre, tail_at, len;
	struct buf s = make_stream(OK, img0, &pre, &tail_at);
	struct qb_layout sl;
	struct qb_devstate sd;
	char err[256];

	assert_int_equal(qb_parse_mem(s.p, s.len, NULL, &sl, &sd, err, sizeof(err)), 0);
	/* re-make the prefix with one big block: same stream shape, 256 MiB + 8 KiB */
	struct buf p = { 0 };
	const uint64_t big = (256ull << 20) + 8192;
	b_put(&p, sd.prefix, 4 + 4 + 1 + 4 + 10);
	b_u8(&p, QB_SEC_START);
	b_be32(&p, 2);
	b_name(&p, "ram");
	b_be32(&p, 0);
	b_be32(&p, 4);
	b_be64(&p, big | QB_RAM_MEM_SIZE);
	b_name(&p, "pc.ram");
	b_be64(&p, big);
	b_be64(&p, QB_RAM_EOS);
	b_u8(&p, QB_SEC_FOOTER);
	b_be32(&p, 2);
	struct qb_devstate d = { .prefix = p.p, .prefix_len = p.len, .tail = sd.tail, .tail_len = sd.tail_len,
				 .ram_section_id = 2 };
	struct qb_layout l;
	assert_int_equal(qb_devstate_layout(&d, &l, err, sizeof(err)), 0);
	assert_int_equal(l.image_size, big);
	uint8_t *img = malloc(big);
	for (uint64_t o = 0; o < big; o += 8)
		*(uint64_t *)(img + o) = o * 0x9e3779b97f4a7c15ull + 1;

	int fd = write_to_memfd(&l, img, &d, 0, &len);
	assert_true(len > big);
	struct collect c = { 0 };
	c.img = malloc(big);
	memset(c.img, 0, big); /* resident, as the engine's image would be: time the parser, not page faults */
	c.img_size = big;
	struct qb_parse_cb cb = { c_layout, c_page, NULL, &c };
	double t = 1e9, t2 = 1e9; /* best of 3: the machine is shared */
	for (int i = 0; i < 3; i++) {
		lseek(fd, 0, SEEK_SET);
		atomic_store(&c.pages, 0);
		double t0 = mono();
		int ret = qb_parse_stream(fd, &cb, NULL, NULL, err, sizeof(err));
		double dt = mono() - t0;
		t = dt < t ? dt : t;
		if (ret)
			fail_msg("parse: %s", err);
		assert_int_equal(c.pages, big / QB_PAGE);
	}
	assert_memory_equal(c.img, img, big);
	/* the parser alone, no copy into an image */
	for (int i = 0; i < 3; i++) {
		lseek(fd, 0, SEEK_SET);
		double t0 = mono();
		assert_int_equal(qb_parse_stream(fd, NULL, NULL, NULL, err, sizeof(err)), 0);
		double dt = mono() - t0;
		t2 = dt < t2 ? dt : t2;
	}
	close(fd);
	fprintf(stderr, "[ PERF     ] parse %zu-byte stream: %.0f MB/s applying pages to an image (%.3f s), "
		"%.0f MB/s parse only (%.3f s)\n", len, len / t / 1e6, t, len / t2 / 1e6, t2);

	collect_reset(&c);
	free(img);
	free(p.p);
	qb_devstate_free(&sd);
	free(s.p);
	free(img0);
}

/* ---- QMP without QEMU ---------------------------------------------------------- */

static void test_qmp_errors(void **state)
{
	(void)state;
	char err[256];
	double t0 = mono();

	assert_null(qb_qmp_connect("/nonexistent/qmp.sock", 0.3, err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent/qmp.sock"));
	assert_true(mono() - t0 < 5);

	/* a peer that accepts but never greets: bounded by the timeout */
	char *dir = test_tmpdir(), path[300];
	snprintf(path, sizeof(path), "%s/q.sock", dir);
	int ls = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	assert_true(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(ls, 1), 0);
	t0 = mono();
	assert_null(qb_qmp_connect(path, 0.5, err, sizeof(err)));
	assert_true(mono() - t0 < 3);
	assert_non_null(strstr(err, "timed out"));
	close(ls);
	unlink(path);
	rmdir(dir);
	free(dir);
}

/* ---- real QEMU ------------------------------------------------------------------- */

struct vm {
	pid_t pid;
	struct qb_qmp *q;
	char qmp[300], serial[300], log[300];
};

struct mig {
	int fd;
	struct collect c;
	struct qb_layout layout;
	struct qb_devstate dev;
	int ret;
	char err[256];
	atomic_bool done;
};

struct qfix {
	char *dir;
	char kernel[300], initrd[300], rootfs[300];
	struct vm src, dst;
	int fds[4];
	pthread_t th;
	bool th_started;
	struct mig mig;
};

static void *parse_thread(void *arg)
{
	struct mig *m = arg;
	struct qb_parse_cb cb = { c_layout, c_page, c_section, &m->c };

	m->ret = qb_parse_stream(m->fd, &cb, &m->layout, &m->dev, m->err, sizeof(m->err));
	atomic_store(&m->done, true);
	return NULL;
}

static bool have_qemu(void)
{
	return system("command -v qemu-system-x86_64 >/dev/null 2>&1") == 0;
}

static int qfix_setup(void **state)
{
	struct qfix *f = calloc(1, sizeof(*f));
	const char *g = getenv("HANDOFF_GUEST_DIR");

	if (!f)
		return -1;
	g = g ? g : "/var/tmp/handoff-guest";
	for (int i = 0; i < 4; i++)
		f->fds[i] = -1;
	f->mig.fd = -1;
	f->dir = test_tmpdir();
	snprintf(f->kernel, sizeof(f->kernel), "%s/vmlinuz", g);
	snprintf(f->initrd, sizeof(f->initrd), "%s/initramfs.cpio.gz", g);
	snprintf(f->rootfs, sizeof(f->rootfs), "%s/rootfs.img", g);
	if (have_qemu() && (access(f->kernel, R_OK) || access(f->initrd, R_OK))) {
		char cmd[400];
		fprintf(stderr, "[ INFO     ] building the test guest: scripts/build-guest %s\n", g);
		snprintf(cmd, sizeof(cmd), "scripts/build-guest '%s' >&2", g);
		if (system(cmd))
			fprintf(stderr, "[ INFO     ] scripts/build-guest failed (run it from the repository root)\n");
	}
	*state = f;
	return 0;
}

static void vm_kill(struct vm *v)
{
	qb_qmp_close(v->q);
	v->q = NULL;
	if (v->pid > 0) {
		kill(v->pid, SIGKILL);
		waitpid(v->pid, NULL, 0);
		v->pid = 0;
	}
}

static void rm_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[600];

	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	rmdir(dir);
}

static int qfix_teardown(void **state)
{
	struct qfix *f = *state;

	for (int i = 0; i < 4; i++)
		if (f->fds[i] >= 0)
			shutdown(f->fds[i], SHUT_RDWR); /* wakes the parser thread */
	vm_kill(&f->src);
	vm_kill(&f->dst);
	if (f->th_started)
		pthread_join(f->th, NULL);
	for (int i = 0; i < 4; i++)
		if (f->fds[i] >= 0)
			close(f->fds[i]);
	collect_reset(&f->mig.c);
	qb_devstate_free(&f->mig.dev);
	rm_dir(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

static void vm_start(struct qfix *f, struct vm *v, const char *name, bool incoming)
{
	char append[200];
	bool disk = access(f->rootfs, R_OK) == 0;
	char drive[400];

	snprintf(v->qmp, sizeof(v->qmp), "%s/%s.qmp", f->dir, name);
	snprintf(v->serial, sizeof(v->serial), "%s/%s.serial", f->dir, name);
	snprintf(v->log, sizeof(v->log), "%s/%s.log", f->dir, name);
	snprintf(append, sizeof(append), "console=ttyS0 panic=-1 workload=2:16%s", disk ? " root=/dev/vda" : "");
	snprintf(drive, sizeof(drive), "if=none,id=disk0,file=%s,format=raw,snapshot=on", f->rootfs);
	char serial[320], qmp[340];
	snprintf(serial, sizeof(serial), "file:%s", v->serial);
	snprintf(qmp, sizeof(qmp), "unix:%s,server=on,wait=off", v->qmp);
	const char *argv[40] = { "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max",
				 "-m", GUEST_RAM, "-smp", "1", "-kernel", f->kernel, "-initrd", f->initrd,
				 "-append", append, "-display", "none", "-nodefaults", "-no-reboot",
				 "-serial", serial, "-qmp", qmp };
	int n = 23;
	if (disk) {
		argv[n++] = "-drive";
		argv[n++] = drive;
		argv[n++] = "-device";
		argv[n++] = "virtio-blk-pci,drive=disk0";
	}
	if (incoming) {
		argv[n++] = "-incoming";
		argv[n++] = "defer";
		argv[n++] = "-S";
	}
	argv[n] = NULL;

	pid_t ppid = getpid();
	v->pid = fork();
	assert_true(v->pid >= 0);
	if (v->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
		if (getppid() != ppid)
			_exit(127);
		int fd = open(v->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execvp(argv[0], (char **)argv);
		_exit(127);
	}
	char err[256];
	double end = mono() + 20;
	/* short attempts, so a QEMU that died at start-up fails the test at once */
	pid_t gone = 0;
	while (!(v->q = qb_qmp_connect(v->qmp, 0.5, err, sizeof(err))) && mono() < end &&
	       (gone = waitpid(v->pid, NULL, WNOHANG)) == 0)
		;
	if (gone == v->pid)
		v->pid = 0; /* reaped: nothing left to kill */
	if (!v->q) {
		size_t ll;
		uint8_t *log = test_read_file(v->log, &ll);
		fail_msg("%s QEMU: %s; its log: %.*s", name, err, (int)ll, log ? (char *)log : "");
	}
}

/* Wait until the serial log contains needle; fails on timeout or QEMU exit. */
static void wait_serial(struct vm *v, const char *needle, double timeout)
{
	double end = mono() + timeout;

	while (mono() < end) {
		size_t len;
		uint8_t *s = test_read_file(v->serial, &len);
		bool found = s && memmem(s, len, needle, strlen(needle));

		free(s);
		if (found)
			return;
		if (waitpid(v->pid, NULL, WNOHANG) == v->pid) {
			v->pid = 0;
			fail_msg("QEMU exited while waiting for '%s' in %s", needle, v->serial);
		}
		usleep(50000);
	}
	fail_msg("no '%s' in %s within %.0f s", needle, v->serial, timeout);
}

/* Highest heartbeat number in a serial log, -1 if none. */
static long last_hb(const char *path)
{
	size_t len;
	uint8_t *s = test_read_file(path, &len);
	long best = -1;

	for (size_t i = 0; s && i + 3 < len; i++) {
		if ((i == 0 || s[i - 1] == '\n') && !memcmp(s + i, "HB ", 3)) {
			long n = strtol((char *)s + i + 3, NULL, 10);
			best = n > best ? n : best;
		}
	}
	free(s);
	return best;
}

static void pmemsave(struct vm *v, const char *path)
{
	char err[256];
	json_object *a = json_object_new_object();

	json_object_object_add(a, "val", json_object_new_int64(0));
	json_object_object_add(a, "size", json_object_new_int64((int64_t)PMEM_SIZE));
	json_object_object_add(a, "filename", json_object_new_string(path));
	if (qb_qmp_run(v->q, "pmemsave", a, 60, err, sizeof(err)))
		fail_msg("pmemsave: %s", err);
}

static const uint8_t *map_file(const char *path, size_t want)
{
	int fd = open(path, O_RDONLY);
	struct stat st;

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal((size_t)st.st_size, want);
	void *p = mmap(NULL, want, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	assert_true(p != MAP_FAILED);
	return p;
}

static size_t first_diff(const uint8_t *a, const uint8_t *b, size_t lo, size_t hi)
{
	for (size_t o = lo; o < hi; o += QB_PAGE)
		if (memcmp(a + o, b + o, QB_PAGE))
			return o;
	return SIZE_MAX;
}

/* Wait for the migration on v to reach a final state; returns it. */
static void wait_migration(struct vm *v, const char *want, double timeout)
{
	char st[64] = "", err[256];
	double end = mono() + timeout;

	while (mono() < end) {
		if (qb_migrate_status(v->q, st, sizeof(st), err, sizeof(err)))
			fail_msg("query-migrate: %s", err);
		if (!strcmp(st, want))
			return;
		if (!strcmp(st, "failed") || !strcmp(st, "cancelled"))
			break;
		usleep(50000);
	}
	size_t ll;
	uint8_t *log = test_read_file(v->log, &ll);
	fail_msg("migration status '%s', expected '%s'; QEMU log: %.*s", st, want, (int)ll, log ? (char *)log : "");
}

static void test_qemu_migration(void **state)
{
	struct qfix *f = *state;
	char err[256], st[64], p_src[400], p_dst[400];
	struct mig *m = &f->mig;
	double t_start = mono();

	if (!have_qemu()) {
		fprintf(stderr, "[ SKIP     ] qemu-system-x86_64 is not installed: real-QEMU migration test skipped\n");
		skip();
	}
	if (access(f->kernel, R_OK) || access(f->initrd, R_OK))
		fail_msg("test guest missing (%s, %s): run scripts/build-guest", f->kernel, f->initrd);

	/* 1. source guest up, memory workload running */
	vm_start(f, &f->src, "src", false);
	wait_serial(&f->src, "READY", 45);
	wait_serial(&f->src, "WORKLOAD START", 10);
	fprintf(stderr, "[ INFO     ] source guest up after %.1f s\n", mono() - t_start);

	/* 2. migrate into the parser. QEMU is held iterating by a 1 ms downtime
	 * limit plus 16 MB/s max-bandwidth: the first pass (~85 MB of non-zero
	 * pages) cannot finish in the ~1.5 s we watch, so QEMU cannot converge. */
	if (qb_migrate_prepare(f->src.q, 1, err, sizeof(err)))
		fail_msg("qb_migrate_prepare: %s", err);
	assert_int_equal(qb_migrate_set_downtime(f->src.q, 3000000, err, sizeof(err)), -EINVAL);
	assert_int_equal(qb_migrate_set_bandwidth(f->src.q, 0, err, sizeof(err)), -EINVAL);
	if (qb_migrate_set_bandwidth(f->src.q, 16 << 20, err, sizeof(err)))
		fail_msg("max-bandwidth: %s", err);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, f->fds), 0);
	m->fd = f->fds[1];
	assert_int_equal(pthread_create(&f->th, NULL, parse_thread, m), 0);
	f->th_started = true;
	double t_mig = mono();
	if (qb_migrate_to_fd(f->src.q, f->fds[0], "qbmig", err, sizeof(err)))
		fail_msg("migrate: %s", err);
	close(f->fds[0]);
	f->fds[0] = -1;
	/* bad commands: QEMU's own error text comes back */
	assert_null(qb_qmp_exec(f->src.q, "no-such-command", NULL, 5, err, sizeof(err)));
	assert_non_null(strstr(err, "no-such-command"));

	double end = mono() + 20;
	while ((atomic_load(&m->c.sections[2]) < 6 || mono() - t_mig < 1.5) && !atomic_load(&m->done) &&
	       mono() < end)
		usleep(20000);
	if (atomic_load(&m->done))
		fail_msg("stream ended before the downtime limit was raised (%d PART sections): %s",
			 atomic_load(&m->c.sections[2]), m->ret ? m->err : "QEMU converged");
	assert_true(atomic_load(&m->c.sections[2]) >= 6);
	assert_int_equal(qb_migrate_status(f->src.q, st, sizeof(st), err, sizeof(err)), 0);
	assert_string_equal(st, "active");
	assert_int_equal(qb_qmp_running(f->src.q, st, sizeof(st), err, sizeof(err)), 1);
	int parts_live = atomic_load(&m->c.sections[2]);

	/* let QEMU stop the VM and finish */
	if (qb_migrate_set_downtime(f->src.q, 30000, err, sizeof(err)) ||
	    qb_migrate_set_bandwidth(f->src.q, 1ull << 40, err, sizeof(err)))
		fail_msg("raise downtime and bandwidth: %s", err);
	end = mono() + 30;
	while (!atomic_load(&m->done) && mono() < end)
		usleep(20000);
	if (!atomic_load(&m->done))
		fail_msg("migration did not finish within 30 s");
	pthread_join(f->th, NULL);
	f->th_started = false;
	close(f->fds[1]);
	f->fds[1] = -1;
	if (m->ret)
		fail_msg("parsing QEMU's stream: %s", m->err);
	double t_done = mono() - t_mig;
	wait_migration(&f->src, "completed", 10);
	double ts = 0;
	json_object *data = NULL;
	if (qb_qmp_wait_event(f->src.q, "STOP", 5, &data, &ts, err, sizeof(err)))
		fail_msg("source STOP event: %s", err);
	json_object_put(data);
	assert_true(ts > 1e9);
	assert_int_equal(qb_qmp_running(f->src.q, st, sizeof(st), err, sizeof(err)), 0);
	assert_string_equal(st, "postmigrate");
	assert_int_equal(m->c.sections[1], 1);
	assert_int_equal(m->c.sections[3], 1);
	assert_true(m->layout.nblocks >= 1);
	assert_string_equal(m->layout.blocks[0].id, "pc.ram");
	assert_int_equal(m->layout.blocks[0].length, 262152ull * 1024);
	fprintf(stderr, "[ INFO     ] migration parsed in %.2f s: %ld pages, %ld zero records, %d PART sections "
		"(%d while running), %u RAM blocks, image %llu bytes, prefix %zu, device tail %zu bytes\n",
		t_done, (long)m->c.pages, (long)m->c.zeros, m->c.sections[2], parts_live, m->layout.nblocks,
		(unsigned long long)m->layout.image_size, m->dev.prefix_len, m->dev.tail_len);

	/* the parsed image is the source's memory (outside the legacy VGA/BIOS window) */
	snprintf(p_src, sizeof(p_src), "%s/src.pmem", f->dir);
	pmemsave(&f->src, p_src);
	const uint8_t *src_mem = map_file(p_src, PMEM_SIZE);
	size_t o = first_diff(src_mem, m->c.img, 0, VGA_HOLE_LO);
	if (o == SIZE_MAX)
		o = first_diff(src_mem, m->c.img, VGA_HOLE_HI, PMEM_SIZE);
	if (o != SIZE_MAX)
		fail_msg("parsed image differs from the source's memory at guest address 0x%zx", o);

	/* the real stream, rebuilt, parsed again; then broken in the ways the brief names
	 * (the source is paused and no destination runs yet: the timing is the parser's) */
	size_t len;
	int fd = write_to_memfd(&m->layout, m->c.img, &m->dev, 0, &len);
	const uint8_t *rs = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	assert_true(rs != MAP_FAILED);
	struct collect c = { .img = malloc(m->layout.image_size), .img_size = m->layout.image_size };
	struct qb_parse_cb cb = { c_layout, c_page, NULL, &c };
	memset(c.img, 0, c.img_size); /* resident: time the parser, not page faults */
	double t = 1e9;
	for (int i = 0; i < 3; i++) { /* best of 3: the machine is shared */
		lseek(fd, 0, SEEK_SET);
		atomic_store(&c.pages, 0);
		atomic_store(&c.zeros, 0);
		double t0 = mono();
		assert_int_equal(qb_parse_stream(fd, &cb, NULL, NULL, err, sizeof(err)), 0);
		double dt = mono() - t0;
		t = dt < t ? dt : t;
	}
	fprintf(stderr, "[ PERF     ] rebuilt real stream (%zu bytes, %.0f%% zero pages): parsed at %.0f MB/s\n",
		len, 100.0 * c.zeros / (c.pages + c.zeros), len / t / 1e6);
	assert_memory_equal(c.img, m->c.img, m->layout.image_size);
	collect_reset(&c);
	size_t cuts[] = { 3, 8, m->dev.prefix_len - 1, m->dev.prefix_len + 5, len / 2, len - m->dev.tail_len,
			  len - m->dev.tail_len + 77, len - 100, len - 1 };
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		err[0] = 0;
		if (qb_parse_mem(rs, cuts[i], NULL, NULL, NULL, err, sizeof(err)) != -EBADMSG ||
		    !strstr(err, "truncated"))
			fail_msg("real stream cut at %zu of %zu: '%s'", cuts[i], len, err);
	}
	uint8_t *mod = malloc(len);
	memcpy(mod, rs, len);
	mod[0] = 'X';
	assert_int_equal(qb_parse_mem(mod, len, NULL, NULL, NULL, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "bad magic"));
	mod[0] = rs[0];
	/* first record of the PART section: flags 0x200 */
	mod[m->dev.prefix_len + 5 + 6] |= 0x02;
	assert_int_equal(qb_parse_mem(mod, len, NULL, NULL, NULL, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "unknown RAM record flags"));
	free(mod);
	munmap((void *)rs, len);
	close(fd);

	/* 3. destination: rebuilt stream through migrate-incoming fd: */
	long hb_src = last_hb(f->src.serial);
	assert_true(hb_src > 0);
	vm_start(f, &f->dst, "dst", true);
	/* the devstate survives its blob form */
	uint8_t *blob;
	size_t bl = qb_devstate_encode(&m->dev, &blob);
	struct qb_devstate dev;
	struct qb_layout lay;
	assert_true(bl > 0);
	if (qb_devstate_decode(blob, bl, &dev, err, sizeof(err)))
		fail_msg("devstate blob: %s", err);
	free(blob);
	assert_int_equal(qb_devstate_layout(&dev, &lay, err, sizeof(err)), 0);
	assert_memory_equal(&lay, &m->layout, sizeof(lay));

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, f->fds + 2), 0);
	if (qb_migrate_incoming_fd(f->dst.q, f->fds[2], "qbin", err, sizeof(err)))
		fail_msg("migrate-incoming: %s", err);
	close(f->fds[2]);
	f->fds[2] = -1;
	double t_w = mono();
	if (qb_write_stream(f->fds[3], &lay, m->c.img, &dev, err, sizeof(err)))
		fail_msg("feeding the destination: %s", err);
	close(f->fds[3]);
	f->fds[3] = -1;
	qb_devstate_free(&dev);
	wait_migration(&f->dst, "completed", 30);
	fprintf(stderr, "[ INFO     ] destination loaded the rebuilt stream in %.2f s\n", mono() - t_w);
	assert_int_equal(qb_qmp_running(f->dst.q, st, sizeof(st), err, sizeof(err)), 0);
	assert_string_equal(st, "paused");

	/* guest memory: byte-exact, source vs destination */
	snprintf(p_dst, sizeof(p_dst), "%s/dst.pmem", f->dir);
	pmemsave(&f->dst, p_dst);
	const uint8_t *dst_mem = map_file(p_dst, PMEM_SIZE);
	o = first_diff(src_mem, dst_mem, 0, PMEM_SIZE);
	if (o != SIZE_MAX)
		fail_msg("destination memory differs from the source at guest address 0x%zx", o);
	munmap((void *)dst_mem, PMEM_SIZE);
	munmap((void *)src_mem, PMEM_SIZE);
	unlink(p_src);
	unlink(p_dst);

	/* the guest runs on: RESUME (queued while "cont" was answered), new heartbeats */
	if (qb_qmp_run(f->dst.q, "cont", NULL, 10, err, sizeof(err)))
		fail_msg("cont: %s", err);
	if (qb_qmp_wait_event(f->dst.q, "RESUME", 10, NULL, NULL, err, sizeof(err)))
		fail_msg("destination RESUME: %s", err);
	assert_int_equal(qb_qmp_running(f->dst.q, st, sizeof(st), err, sizeof(err)), 1);
	char want[32];
	snprintf(want, sizeof(want), "HB %ld", hb_src + 5);
	wait_serial(&f->dst, want, 20);
	assert_true(last_hb(f->dst.serial) > hb_src);
	assert_null(qb_qmp_exec(f->src.q, "pmemsave", NULL, 5, err, sizeof(err))); /* missing arguments */
	assert_true(strlen(err) > 0);

	fprintf(stderr, "[ INFO     ] real-QEMU test took %.1f s\n", mono() - t_start);
}

/* tests/fuzz/make-corpus: the well-formed stream and its device state, as fuzz seeds. */
static int write_seeds(const char *dir)
{
	uint8_t img[S_IMAGE];
	size_t pre, tail;
	struct buf b = make_stream(OK, img, &pre, &tail);
	struct qb_devstate d = { 0 };
	char path[512], err[256];
	uint8_t *enc = NULL;
	size_t n = 0;

	if (!qb_parse_mem(b.p, b.len, NULL, NULL, &d, err, sizeof(err)))
		n = qb_devstate_encode(&d, &enc);
	snprintf(path, sizeof(path), "%s/stream-ok", dir);
	FILE *f = fopen(path, "wb");
	int ok = f && fputc(0, f) == 0 && fwrite(b.p, 1, b.len, f) == b.len;
	ok = f && !fclose(f) && ok;
	snprintf(path, sizeof(path), "%s/devstate-ok", dir);
	f = n ? fopen(path, "wb") : NULL;
	ok = ok && f && fputc(1, f) == 1 && fwrite(enc, 1, n, f) == n;
	ok = f && !fclose(f) && ok;
	free(enc);
	free(b.p);
	qb_devstate_free(&d);
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "--write-fuzz-seeds"))
		return write_seeds(argv[2]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_synthetic),
		cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_write_roundtrip),
		cmocka_unit_test(test_throughput_256m),
		cmocka_unit_test(test_qmp_errors),
		cmocka_unit_test_setup_teardown(test_qemu_migration, qfix_setup, qfix_teardown),
	};

	test_seed();
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * QEMU 7.2 migration stream parser and rebuilder (format in migstream.h).
 *
 * The parser walks the stream once through a 1 MiB read buffer and hands
 * page payloads to the caller in place, so it runs at memory speed; only the
 * small prefix (header, CONFIG, RAM START) and the device tail are copied.
 * The writer emits the prefix, one PART section holding every page, an empty
 * END section and the tail, through a 1 MiB write buffer.
 */
#include "migstream.h"

#include "codecs/codecs.h"

#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define QEVM_MAGIC 0x5145564du
#define QEVM_VERSION 3u
#define RD_BUF (1u << 20)
#define PREFIX_MAX (1u << 20)	/* header + CONFIG + RAM START: ~200 B in practice */
#define TAIL_MAX (256u << 20)	/* device state + VMDESC: ~100 KiB in practice */
#define DS_MAGIC "QBDS"
#define DS_VERSION 1u
#define DS_HDR 32
#define STR_(x) #x
#define TOSTR(x) STR_(x)
#define JSON_DEPTH 1024	/* VMDESC nests a level per struct and subsection */

/* ---- byte helpers -------------------------------------------------------- */

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_be64(const uint8_t *p)
{
	return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, v >> 32);
	put_be32(p + 4, (uint32_t)v);
}

/* Growable byte buffer for the prefix and the tail. */
struct bytes {
	uint8_t *p;
	size_t len, cap, max;
};

static int bytes_add(struct bytes *b, const void *src, size_t n)
{
	if (n > b->max - b->len)
		return -E2BIG;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, src, n);
	b->len += n;
	return 0;
}

/* ---- reader ---------------------------------------------------------------- */

struct rd {
	int fd;			/* -1: the whole stream is in buf already */
	uint8_t *buf;
	size_t cap, pos, end;	/* unread bytes are buf[pos, end) */
	uint64_t off;		/* stream offset of buf[pos] */
	bool eof;
	struct bytes *capture;	/* when set, consumed bytes are appended here */
	char *err;
	size_t errlen;
};

static int rd_fail(struct rd *r, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int rd_fail(struct rd *r, int ret, const char *fmt, ...)
{
	char msg[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(r->err, r->errlen, "migration stream at byte %llu: %s", (unsigned long long)r->off, msg);
	return ret;
}

/* Wait until fd is ready for events, at most QB_STALL_TIMEOUT_S. */
static int wait_ready(int fd, short events)
{
	struct pollfd p = { .fd = fd, .events = events };
	int n;

	while ((n = poll(&p, 1, QB_STALL_TIMEOUT_S * 1000)) < 0 && errno == EINTR)
		;
	return n > 0 ? 0 : n == 0 ? -ETIMEDOUT : -errno;
}

/* Make n bytes readable at buf + pos; what names what we were reading. */
static int rd_need(struct rd *r, size_t n, const char *what)
{
	while (r->end - r->pos < n) {
		if (r->eof || r->fd < 0)
			return rd_fail(r, -EBADMSG, "truncated stream (EOF while reading %s)", what);
		if (r->cap - r->pos < n) {
			memmove(r->buf, r->buf + r->pos, r->end - r->pos);
			r->end -= r->pos;
			r->pos = 0;
		}
		int ret = wait_ready(r->fd, POLLIN);
		if (ret)
			return rd_fail(r, ret, "%s", ret == -ETIMEDOUT ? "no data from QEMU for " TOSTR(QB_STALL_TIMEOUT_S) " s"
								   : strerror(-ret));
		ssize_t got = read(r->fd, r->buf + r->end, r->cap - r->end);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return rd_fail(r, -EIO, "read failed: %s", strerror(errno));
		if (got == 0)
			r->eof = true;
		r->end += (size_t)got;
	}
	return 0;
}

/* Consume n bytes; *p points at them until the next reader call. */
static int rd_take(struct rd *r, size_t n, const char *what, const uint8_t **p)
{
	int ret = rd_need(r, n, what);

	if (ret)
		return ret;
	*p = r->buf + r->pos;
	if (r->capture && (ret = bytes_add(r->capture, *p, n)))
		return rd_fail(r, ret, "stream prefix larger than %u bytes", PREFIX_MAX);
	r->pos += n;
	r->off += n;
	return 0;
}

static int rd_u8(struct rd *r, const char *what, uint8_t *v)
{
	const uint8_t *p;
	int ret = rd_take(r, 1, what, &p);

	if (!ret)
		*v = p[0];
	return ret;
}

static int rd_be32(struct rd *r, const char *what, uint32_t *v)
{
	const uint8_t *p;
	int ret = rd_take(r, 4, what, &p);

	if (!ret)
		*v = get_be32(p);
	return ret;
}

static int rd_be64(struct rd *r, const char *what, uint64_t *v)
{
	const uint8_t *p;
	int ret = rd_take(r, 8, what, &p);

	if (!ret)
		*v = get_be64(p);
	return ret;
}

/* u8 length + bytes, NUL-terminated into out[256]. */
static int rd_name(struct rd *r, const char *what, char out[256])
{
	const uint8_t *p;
	uint8_t len;
	int ret = rd_u8(r, what, &len);

	if (ret || (ret = rd_take(r, len, what, &p)))
		return ret;
	memcpy(out, p, len);
	out[len] = 0;
	if (strlen(out) != len)
		return rd_fail(r, -EBADMSG, "NUL byte inside %s", what);
	return 0;
}

/* ---- parser ---------------------------------------------------------------- */

struct parser {
	struct rd rd;
	const struct qb_parse_cb *cb;
	struct qb_layout layout;
	bool have_layout;
	bool ignore_shared;	/* x-ignore-shared: MEM_SIZE carries addresses, shared blocks send no pages */
	int last_block;		/* block of the previous record, -1 none (kept across sections) */
	uint32_t ram_id;
	uint8_t fill[QB_PAGE];	/* ZERO records with a non-zero fill byte */
	int fill_byte;
};

static int call_failed(struct parser *ps, const char *which, int ret)
{
	return rd_fail(&ps->rd, ret < 0 ? ret : -ECANCELED, "%s callback aborted the parse (%d)", which, ret);
}

/* CONFIG section (vmstate "configuration"): be32 len, machine name, then the
 * subsections QEMU 7.2 may add. x-ignore-shared changes the RAM format: each
 * MEM_SIZE entry gains the block's address, shared blocks send no pages. */
static int parse_config(struct parser *ps)
{
	struct rd *r = &ps->rd;
	const uint8_t *p;
	uint32_t len, ver, n;
	uint8_t t;
	char name[256];
	int ret;

	if ((ret = rd_be32(r, "CONFIG length", &len)))
		return ret;
	if (len == 0 || len > 255)
		return rd_fail(r, -EBADMSG, "implausible machine name length %u in CONFIG", len);
	if ((ret = rd_take(r, len, "CONFIG machine name", &p)))
		return ret;
	for (;;) {
		if ((ret = rd_need(r, 1, "section type")))
			return ret;
		if (r->buf[r->pos] != QB_SEC_SUBSECTION)
			return 0;
		if ((ret = rd_u8(r, "subsection", &t)) || (ret = rd_name(r, "subsection name", name)) ||
		    (ret = rd_be32(r, "subsection version", &ver)))
			return ret;
		if (!strcmp(name, "configuration/target-page-bits")) {
			if ((ret = rd_be32(r, "target page bits", &n)))
				return ret;
			if (n != 12)
				return rd_fail(r, -EBADMSG, "target page bits %u (only 4 KiB pages are supported)", n);
		} else if (!strcmp(name, "configuration/capabilities")) {
			if ((ret = rd_be32(r, "capability count", &n)))
				return ret;
			if (n > 64)
				return rd_fail(r, -EBADMSG, "implausible capability count %u", n);
			for (uint32_t i = 0; i < n; i++) {
				if ((ret = rd_name(r, "capability name", name)))
					return ret;
				if (!strcmp(name, "x-ignore-shared"))
					ps->ignore_shared = true;
			}
		} else if (!strcmp(name, "configuration/uuid")) {
			if ((ret = rd_take(r, 16, "uuid", &p)))
				return ret;
		} else {
			return rd_fail(r, -EBADMSG, "unknown CONFIG subsection '%s'", name);
		}
	}
}

/* START/FULL section header after the type byte. */
static int parse_section_header(struct parser *ps, uint32_t *id, char name[256])
{
	uint32_t inst, ver;
	int ret;

	if ((ret = rd_be32(&ps->rd, "section id", id)) || (ret = rd_name(&ps->rd, "section name", name)) ||
	    (ret = rd_be32(&ps->rd, "instance id", &inst)) || (ret = rd_be32(&ps->rd, "version id", &ver)))
		return ret;
	return 0;
}

static int parse_footer(struct parser *ps, uint32_t id)
{
	uint8_t t;
	uint32_t fid;
	int ret;

	if ((ret = rd_u8(&ps->rd, "section footer", &t)))
		return ret;
	if (t != QB_SEC_FOOTER)
		return rd_fail(&ps->rd, -EBADMSG, "expected section footer 0x7e, got 0x%02x", t);
	if ((ret = rd_be32(&ps->rd, "section footer id", &fid)))
		return ret;
	if (fid != id)
		return rd_fail(&ps->rd, -EBADMSG, "footer names section %u, expected %u", fid, id);
	return 0;
}

/* MEM_SIZE record body: the block list whose lengths must add up to total. */
static int parse_mem_size(struct parser *ps, uint64_t total)
{
	struct rd *r = &ps->rd;
	struct qb_layout *l = &ps->layout;
	uint64_t left = total;
	int ret;

	if (ps->have_layout)
		return rd_fail(r, -EBADMSG, "second MEM_SIZE record");
	memset(l, 0, sizeof(*l));
	while (left) {
		struct qb_ram_block *b = &l->blocks[l->nblocks];

		if (l->nblocks == QB_MAX_BLOCKS)
			return rd_fail(r, -EBADMSG, "more than %d RAM blocks", QB_MAX_BLOCKS);
		if ((ret = rd_name(r, "RAM block id", b->id)) || (ret = rd_be64(r, "RAM block length", &b->length)))
			return ret;
		uint64_t addr;
		if (ps->ignore_shared && (ret = rd_be64(r, "RAM block address", &addr)))
			return ret;
		if (!b->id[0])
			return rd_fail(r, -EBADMSG, "empty RAM block id");
		for (unsigned i = 0; i < l->nblocks; i++)
			if (!strcmp(l->blocks[i].id, b->id))
				return rd_fail(r, -EBADMSG, "RAM block '%s' listed twice", b->id);
		if (!b->length || b->length % QB_PAGE)
			return rd_fail(r, -EBADMSG, "RAM block '%s' length %llu is not a positive multiple of 4096",
				       b->id, (unsigned long long)b->length);
		if (b->length > left)
			return rd_fail(r, -EBADMSG, "MEM_SIZE total %llu does not match the RAM blocks (block '%s' overruns it)",
				       (unsigned long long)total, b->id);
		b->image_off = l->image_size;
		l->image_size += b->length;
		left -= b->length;
		l->nblocks++;
	}
	if (!l->nblocks)
		return rd_fail(r, -EBADMSG, "MEM_SIZE record lists no RAM");
	l->ignore_shared = ps->ignore_shared;
	ps->have_layout = true;
	if (ps->cb && ps->cb->layout && (ret = ps->cb->layout(ps->cb->ctx, l)))
		return call_failed(ps, "layout", ret);
	return 0;
}

static int find_block(const struct qb_layout *l, const char *id)
{
	for (unsigned i = 0; i < l->nblocks; i++)
		if (!strcmp(l->blocks[i].id, id))
			return (int)i;
	return -1;
}

static const char *flag_name(unsigned f)
{
	if (f & QB_RAM_XBZRLE)
		return "XBZRLE page (switch off the xbzrle capability)";
	if (f & QB_RAM_COMPRESS)
		return "compressed page (switch off the compress capability)";
	if (f & QB_RAM_HOOK)
		return "RDMA hook (RDMA migration is not supported)";
	return NULL;
}

/* One page record (ZERO or PAGE) whose header was already read. */
static int parse_page(struct parser *ps, uint64_t hdr)
{
	struct rd *r = &ps->rd;
	unsigned flags = hdr & (QB_PAGE - 1);
	uint64_t addr = hdr & ~(uint64_t)(QB_PAGE - 1);
	const uint8_t *data;
	char id[256];
	int ret;

	if (!(flags & QB_RAM_CONTINUE)) {
		if ((ret = rd_name(r, "RAM block id", id)))
			return ret;
		if ((ps->last_block = find_block(&ps->layout, id)) < 0)
			return rd_fail(r, -EBADMSG, "page for unknown RAM block '%s'", id);
	} else if (ps->last_block < 0) {
		return rd_fail(r, -EBADMSG, "CONTINUE record without a previous block");
	}
	const struct qb_ram_block *b = &ps->layout.blocks[ps->last_block];
	if (addr >= b->length)
		return rd_fail(r, -EBADMSG, "page offset 0x%llx outside RAM block '%s' (length 0x%llx)",
			       (unsigned long long)addr, b->id, (unsigned long long)b->length);
	if (flags & QB_RAM_PAGE) {
		if ((ret = rd_take(r, QB_PAGE, "page data", &data)))
			return ret;
	} else {
		uint8_t fill;
		if ((ret = rd_u8(r, "zero page fill byte", &fill)))
			return ret;
		data = NULL;
		if (fill) {
			if (ps->fill_byte != fill)
				memset(ps->fill, fill, QB_PAGE);
			ps->fill_byte = fill;
			data = ps->fill;
		}
	}
	if (ps->cb && ps->cb->page && (ret = ps->cb->page(ps->cb->ctx, b->image_off + addr, data)))
		return call_failed(ps, "page", ret);
	return 0;
}

/* Records of one RAM section up to and including EOS. */
static int parse_ram_records(struct parser *ps, bool start)
{
	struct rd *r = &ps->rd;
	uint64_t hdr;
	int ret;

	for (;;) {
		if ((ret = rd_be64(r, "RAM record header", &hdr)))
			return ret;
		unsigned flags = hdr & (QB_PAGE - 1);
		unsigned kind = flags & ~QB_RAM_CONTINUE;
		const char *bad = flag_name(flags);

		if (bad)
			return rd_fail(r, -EBADMSG, "unsupported RAM record: %s", bad);
		if (kind == QB_RAM_EOS)
			return 0;
		if (kind == QB_RAM_MEM_SIZE && start) {
			if ((ret = parse_mem_size(ps, hdr & ~(uint64_t)(QB_PAGE - 1))))
				return ret;
			start = false;
			continue;
		}
		if (!ps->have_layout)
			return rd_fail(r, -EBADMSG, "RAM record flags 0x%x before the MEM_SIZE record", flags);
		if (kind == QB_RAM_MEM_SIZE)
			return rd_fail(r, -EBADMSG, "MEM_SIZE record outside the RAM START section");
		if (kind != QB_RAM_ZERO && kind != QB_RAM_PAGE)
			return rd_fail(r, -EBADMSG, "unknown RAM record flags 0x%x", flags);
		if ((ret = parse_page(ps, hdr)))
			return ret;
	}
}

static int section_done(struct parser *ps, unsigned type)
{
	int ret;

	if ((ret = parse_footer(ps, ps->ram_id)))
		return ret;
	if (ps->cb && ps->cb->section_end && (ret = ps->cb->section_end(ps->cb->ctx, type)))
		return call_failed(ps, "section_end", ret);
	return 0;
}

static int reject_section(struct parser *ps, uint8_t t, const char *when)
{
	if (t == QB_SEC_COMMAND)
		return rd_fail(&ps->rd, -EBADMSG, "QEMU command record %s (postcopy/return path are not supported)", when);
	if (t == QB_SEC_FULL || t == QB_SEC_EOF)
		return rd_fail(&ps->rd, -EBADMSG, "device state %s (not a precopy RAM stream)", when);
	return rd_fail(&ps->rd, -EBADMSG, "unexpected section type 0x%02x %s", t, when);
}

/* Header, CONFIG, any leading sections, RAM START through its footer. */
static int parse_prefix(struct parser *ps)
{
	struct rd *r = &ps->rd;
	uint32_t magic, ver, id;
	uint8_t t;
	char name[256];
	int ret;

	if ((ret = rd_be32(r, "file magic", &magic)))
		return ret;
	if (magic != QEVM_MAGIC)
		return rd_fail(r, -EBADMSG, "bad magic 0x%08x (not a QEMU migration stream)", magic);
	if ((ret = rd_be32(r, "file version", &ver)))
		return ret;
	if (ver != QEVM_VERSION)
		return rd_fail(r, -EBADMSG, "unsupported stream version %u (need 3)", ver);
	if ((ret = rd_u8(r, "section type", &t)))
		return ret;
	if (t == QB_SEC_CONFIG) {
		if ((ret = parse_config(ps)) || (ret = rd_u8(r, "section type", &t)))
			return ret;
	}
	if (t != QB_SEC_START)
		return reject_section(ps, t, "before the RAM START section");
	if ((ret = parse_section_header(ps, &id, name)))
		return ret;
	if (strcmp(name, "ram"))
		return rd_fail(r, -EBADMSG, "iterative section '%s' is not supported (only \"ram\")", name);
	ps->ram_id = id;
	if ((ret = parse_ram_records(ps, true)))
		return ret;
	if (!ps->have_layout)
		return rd_fail(r, -EBADMSG, "RAM START section without a MEM_SIZE record");
	return section_done(ps, QB_SEC_START);
}

/* PART sections up to and including the END section. */
static int parse_iterations(struct parser *ps)
{
	struct rd *r = &ps->rd;
	uint32_t id;
	uint8_t t;
	char name[256];
	int ret;

	for (;;) {
		if ((ret = rd_u8(r, "section type", &t)))
			return ret;
		if (t == QB_SEC_START) {
			if ((ret = parse_section_header(ps, &id, name)))
				return ret;
			return rd_fail(r, -EBADMSG, "iterative section '%s' is not supported (only \"ram\")", name);
		}
		if (t != QB_SEC_PART && t != QB_SEC_END)
			return reject_section(ps, t, "before the RAM END section");
		if ((ret = rd_be32(r, "section id", &id)))
			return ret;
		if (id != ps->ram_id)
			return rd_fail(r, -EBADMSG, "section %u is not RAM's (%u): other iterative sections are not supported",
				       id, ps->ram_id);
		if ((ret = parse_ram_records(ps, false)) || (ret = section_done(ps, t)))
			return ret;
		if (t == QB_SEC_END)
			return 0;
	}
}

/* The tail must start with a device section or EOF and end with EOF + a
 * complete VMDESC: that is how truncation inside opaque device state shows. */
static bool vmdesc_at(const uint8_t *t, size_t len, size_t p)
{
	size_t jlen = len - p - 6;

	if (t[p] != QB_SEC_EOF || t[p + 1] != QB_SEC_VMDESC || get_be32(t + p + 2) != jlen)
		return false;
	json_tokener *tok = json_tokener_new_ex(JSON_DEPTH);
	json_object *o = tok ? json_tokener_parse_ex(tok, (const char *)t + p + 6, (int)jlen) : NULL;
	bool ok = o && json_object_is_type(o, json_type_object) && json_tokener_get_parse_end(tok) == jlen;

	json_object_put(o);
	json_tokener_free(tok);
	return ok;
}

/* The tail must start with a device section or EOF and end with EOF + a
 * complete VMDESC: that is how truncation inside opaque device state shows. */
static int check_tail(const uint8_t *t, size_t len, char *err, size_t errlen)
{
	if (!len || (t[0] != QB_SEC_FULL && t[0] != QB_SEC_EOF)) {
		snprintf(err, errlen, "device state after RAM END %s",
			 len ? "starts with an unknown section type" : "is missing (truncated stream?)");
		return -EBADMSG;
	}
	for (size_t p = len; p-- > 0;)
		if (len - p >= 6 && vmdesc_at(t, len, p))
			return 0;
	snprintf(err, errlen, "device state does not end with EOF and a complete VMDESC (truncated stream?)");
	return -EBADMSG;
}

static int read_tail(struct parser *ps, struct bytes *tail)
{
	struct rd *r = &ps->rd;
	int ret;

	for (;;) {
		if (r->end > r->pos) {
			if ((ret = bytes_add(tail, r->buf + r->pos, r->end - r->pos)))
				return rd_fail(r, ret, "device state larger than %u MiB", TAIL_MAX >> 20);
			r->off += r->end - r->pos;
			r->pos = r->end;
		}
		if (r->eof || r->fd < 0)
			break;
		r->pos = r->end = 0;
		if ((ret = wait_ready(r->fd, POLLIN)))
			return rd_fail(r, ret, "%s", ret == -ETIMEDOUT ? "no data from QEMU for " TOSTR(QB_STALL_TIMEOUT_S) " s"
								   : strerror(-ret));
		ssize_t got = read(r->fd, r->buf, r->cap);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return rd_fail(r, -EIO, "read failed: %s", strerror(errno));
		r->eof = got == 0;
		r->end = (size_t)got;
	}
	if ((ret = check_tail(tail->p, tail->len, r->err, r->errlen)))
		return ret;
	return 0;
}

static int parse_all(struct parser *ps, struct qb_layout *layout, struct qb_devstate *dev)
{
	struct bytes prefix = { .max = PREFIX_MAX }, tail = { .max = TAIL_MAX };
	int ret;

	ps->last_block = -1;
	ps->rd.capture = &prefix;
	ret = parse_prefix(ps);
	ps->rd.capture = NULL;
	if (!ret)
		ret = parse_iterations(ps);
	if (!ret)
		ret = read_tail(ps, &tail);
	if (ret) {
		free(prefix.p);
		free(tail.p);
		return ret;
	}
	if (layout)
		*layout = ps->layout;
	if (dev) {
		dev->prefix = prefix.p;
		dev->prefix_len = prefix.len;
		dev->tail = tail.p;
		dev->tail_len = tail.len;
		dev->ram_section_id = ps->ram_id;
	} else {
		free(prefix.p);
		free(tail.p);
	}
	return 0;
}

static struct parser *parser_new(const struct qb_parse_cb *cb, char *err, size_t errlen)
{
	struct parser *ps = calloc(1, sizeof(*ps));

	if (!ps) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ps->cb = cb;
	ps->rd.err = err;
	ps->rd.errlen = errlen;
	ps->rd.fd = -1;
	return ps;
}

int qb_parse_stream(int fd, const struct qb_parse_cb *cb, struct qb_layout *layout,
		    struct qb_devstate *dev, char *err, size_t errlen)
{
	struct parser *ps = parser_new(cb, err, errlen);
	int ret;

	if (dev)
		memset(dev, 0, sizeof(*dev));
	if (!ps)
		return -ENOMEM;
	ps->rd.fd = fd;
	ps->rd.cap = RD_BUF;
	ps->rd.buf = malloc(RD_BUF);
	if (!ps->rd.buf) {
		free(ps);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ret = parse_all(ps, layout, dev);
	free(ps->rd.buf);
	free(ps);
	return ret;
}

int qb_parse_mem(const uint8_t *buf, size_t len, const struct qb_parse_cb *cb,
		 struct qb_layout *layout, struct qb_devstate *dev, char *err, size_t errlen)
{
	struct parser *ps = parser_new(cb, err, errlen);
	int ret;

	if (dev)
		memset(dev, 0, sizeof(*dev));
	if (!ps)
		return -ENOMEM;
	ps->rd.buf = (uint8_t *)buf;	/* never written: fd < 0 means no refills */
	ps->rd.cap = ps->rd.end = len;
	ps->rd.eof = true;
	ret = parse_all(ps, layout, dev);
	free(ps);
	return ret;
}

int qb_devstate_layout(const struct qb_devstate *d, struct qb_layout *layout, char *err, size_t errlen)
{
	struct parser *ps = parser_new(NULL, err, errlen);
	int ret;

	if (!ps)
		return -ENOMEM;
	ps->last_block = -1;
	ps->rd.buf = d->prefix;
	ps->rd.cap = ps->rd.end = d->prefix_len;
	ps->rd.eof = true;
	ret = parse_prefix(ps);
	if (!ret && ps->rd.pos != d->prefix_len)
		ret = rd_fail(&ps->rd, -EBADMSG, "%zu stray bytes after the RAM START section", d->prefix_len - ps->rd.pos);
	if (!ret && ps->ram_id != d->ram_section_id)
		ret = rd_fail(&ps->rd, -EBADMSG, "RAM section id %u, devstate says %u", ps->ram_id, d->ram_section_id);
	if (!ret && layout)
		*layout = ps->layout;
	free(ps);
	return ret;
}

void qb_devstate_free(struct qb_devstate *d)
{
	if (!d)
		return;
	free(d->prefix);
	free(d->tail);
	memset(d, 0, sizeof(*d));
}

/* ---- writer ---------------------------------------------------------------- */

struct wr {
	int fd;
	bool not_socket;
	uint8_t *buf;
	size_t len, cap;
	char *err;
	size_t errlen;
};

static int wr_flush(struct wr *w)
{
	size_t done = 0;

	while (done < w->len) {
		ssize_t n = -1;

		if (!w->not_socket) {
			n = send(w->fd, w->buf + done, w->len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n < 0 && errno == ENOTSOCK) {
				w->not_socket = true;
				continue;
			}
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
				int ret = wait_ready(w->fd, POLLOUT);
				if (ret == -ETIMEDOUT)
					snprintf(w->err, w->errlen, "QEMU read nothing of the stream for %d s", QB_STALL_TIMEOUT_S);
				else if (ret)
					snprintf(w->err, w->errlen, "poll: %s", strerror(-ret));
				if (ret)
					return ret;
				continue;
			}
		} else {
			n = write(w->fd, w->buf + done, w->len - done);
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			snprintf(w->err, w->errlen, "writing the migration stream failed: %s", strerror(e));
			return -e;
		}
		done += (size_t)n;
	}
	w->len = 0;
	return 0;
}

static int wr_put(struct wr *w, const void *p, size_t n)
{
	const uint8_t *s = p;
	int ret;

	while (n) {
		size_t k = w->cap - w->len < n ? w->cap - w->len : n;

		memcpy(w->buf + w->len, s, k);
		w->len += k;
		s += k;
		n -= k;
		if (w->len == w->cap && (ret = wr_flush(w)))
			return ret;
	}
	return 0;
}

static int wr_section(struct wr *w, uint8_t type, uint32_t id)
{
	uint8_t h[5] = { type };

	put_be32(h + 1, id);
	return wr_put(w, h, sizeof(h));
}

static int wr_eos_footer(struct wr *w, uint32_t id)
{
	uint8_t h[13];

	put_be64(h, QB_RAM_EOS);
	h[8] = QB_SEC_FOOTER;
	put_be32(h + 9, id);
	return wr_put(w, h, sizeof(h));
}

/* One record; the block id goes out on the first record of a block. */
static int wr_page(struct wr *w, const struct qb_ram_block *b, uint64_t addr, const uint8_t *page, bool first)
{
	uint8_t h[8 + 1 + 255 + 1];
	size_t n = 8, idlen = strlen(b->id);
	unsigned flags = (page ? QB_RAM_PAGE : QB_RAM_ZERO) | (first ? 0 : QB_RAM_CONTINUE);
	int ret;

	put_be64(h, addr | flags);
	if (first) {
		h[n++] = (uint8_t)idlen;
		memcpy(h + n, b->id, idlen);
		n += idlen;
	}
	if (!page)
		h[n++] = 0;
	if ((ret = wr_put(w, h, n)))
		return ret;
	return page ? wr_put(w, page, QB_PAGE) : 0;
}

static bool same_layout(const struct qb_layout *a, const struct qb_layout *b)
{
	if (a->nblocks != b->nblocks || a->image_size != b->image_size)
		return false;
	for (unsigned i = 0; i < a->nblocks; i++)
		if (strcmp(a->blocks[i].id, b->blocks[i].id) || a->blocks[i].length != b->blocks[i].length ||
		    a->blocks[i].image_off != b->blocks[i].image_off)
			return false;
	return true;
}

static int wr_pages(struct wr *w, const struct qb_layout *l, const uint8_t *image, unsigned flags)
{
	int ret;

	for (unsigned i = 0; i < l->nblocks; i++) {
		const struct qb_ram_block *b = &l->blocks[i];
		bool first = true;

		if (b->shared) /* x-ignore-shared: the destination's RAM file holds it */
			continue;
		for (uint64_t a = 0; a < b->length; a += QB_PAGE) {
			const uint8_t *page = image + b->image_off + a;
			bool zero = cdc_is_zero(page, QB_PAGE);

			if (zero && (flags & QB_WRITE_SKIP_ZERO))
				continue;
			if ((ret = wr_page(w, b, a, zero ? NULL : page, first)))
				return ret;
			first = false;
		}
	}
	return 0;
}

int qb_write_stream_ex(int fd, const struct qb_layout *layout, const uint8_t *image,
		       const struct qb_devstate *dev, unsigned flags, char *err, size_t errlen)
{
	struct qb_layout pl;
	struct wr w = { .fd = fd, .cap = RD_BUF, .err = err, .errlen = errlen };
	uint32_t id = dev ? dev->ram_section_id : 0;
	int ret;

	if (!layout || !image || !dev || !dev->prefix || !dev->tail) {
		snprintf(err, errlen, "qb_write_stream: missing layout, image or device state");
		return -EINVAL;
	}
	if ((ret = qb_devstate_layout(dev, &pl, err, errlen)))
		return ret;
	if (!same_layout(&pl, layout)) {
		snprintf(err, errlen, "RAM layout does not match the device state's MEM_SIZE list (%u blocks, %llu bytes)",
			 pl.nblocks, (unsigned long long)pl.image_size);
		return -EINVAL;
	}
	if ((ret = check_tail(dev->tail, dev->tail_len, err, errlen)))
		return ret;
	if (!(w.buf = malloc(w.cap))) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (!(ret = wr_put(&w, dev->prefix, dev->prefix_len)) && !(ret = wr_section(&w, QB_SEC_PART, id)) &&
	    !(ret = wr_pages(&w, layout, image, flags)) && !(ret = wr_eos_footer(&w, id)) &&
	    !(ret = wr_section(&w, QB_SEC_END, id)) && !(ret = wr_eos_footer(&w, id)) &&
	    !(ret = (flags & QB_WRITE_NO_TAIL) ? 0 : wr_put(&w, dev->tail, dev->tail_len)))
		ret = wr_flush(&w);
	free(w.buf);
	return ret;
}

int qb_write_stream(int fd, const struct qb_layout *layout, const uint8_t *image,
		    const struct qb_devstate *dev, char *err, size_t errlen)
{
	return qb_write_stream_ex(fd, layout, image, dev, 0, err, errlen);
}

/* ---- devstate blob ---------------------------------------------------------- */

size_t qb_devstate_encode(const struct qb_devstate *d, uint8_t **out)
{
	size_t len;
	uint8_t *p;

	*out = NULL;
	if (!d || !d->prefix_len || !d->tail_len)
		return 0;
	len = DS_HDR + d->prefix_len + d->tail_len;
	if (!(p = malloc(len)))
		return 0;
	memcpy(p, DS_MAGIC, 4);
	put_be32(p + 4, DS_VERSION);
	put_be32(p + 8, d->ram_section_id);
	put_be32(p + 12, 0);
	put_be64(p + 16, d->prefix_len);
	put_be64(p + 24, d->tail_len);
	memcpy(p + DS_HDR, d->prefix, d->prefix_len);
	memcpy(p + DS_HDR + d->prefix_len, d->tail, d->tail_len);
	*out = p;
	return len;
}

int qb_devstate_decode(const uint8_t *buf, size_t len, struct qb_devstate *d, char *err, size_t errlen)
{
	uint64_t plen, tlen;
	int ret;

	memset(d, 0, sizeof(*d));
	if (len < DS_HDR || memcmp(buf, DS_MAGIC, 4)) {
		snprintf(err, errlen, "not a device-state blob (bad magic or %zu bytes)", len);
		return -EBADMSG;
	}
	if (get_be32(buf + 4) != DS_VERSION) {
		snprintf(err, errlen, "device-state blob version %u, this build reads %u", get_be32(buf + 4), DS_VERSION);
		return -EBADMSG;
	}
	plen = get_be64(buf + 16);
	tlen = get_be64(buf + 24);
	if (!plen || !tlen || plen > PREFIX_MAX || tlen > TAIL_MAX || DS_HDR + plen + tlen != len) {
		snprintf(err, errlen, "device-state blob lengths (%llu + %llu) do not match its size %zu",
			 (unsigned long long)plen, (unsigned long long)tlen, len);
		return -EBADMSG;
	}
	d->ram_section_id = get_be32(buf + 8);
	d->prefix_len = plen;
	d->tail_len = tlen;
	d->prefix = malloc(plen);
	d->tail = malloc(tlen);
	if (!d->prefix || !d->tail) {
		qb_devstate_free(d);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	memcpy(d->prefix, buf + DS_HDR, plen);
	memcpy(d->tail, buf + DS_HDR + plen, tlen);
	if ((ret = qb_devstate_layout(d, NULL, err, errlen)) || (ret = check_tail(d->tail, d->tail_len, err, errlen))) {
		qb_devstate_free(d);
		return ret;
	}
	return 0;
}

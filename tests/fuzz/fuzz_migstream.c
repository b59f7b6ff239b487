/*
 * libFuzzer target for what the engine reads of QEMU's migration format
 * (qemu_bridge/migstream.c). Byte 0 picks the entry point:
 *   even: the rest is a migration stream as QEMU writes it into the bridge
 *         (qb_parse_mem: header, sections, RAM records, device state); pages
 *         land in a 16 MiB image, and a parsed device state is encoded and
 *         decoded again;
 *   odd:  the rest is a device-state blob as it crosses the link inside the
 *         handoff stream (qb_devstate_decode, then its layout).
 */
#include "qemu_bridge/migstream.h"

#include <stdlib.h>
#include <string.h>

#define IMAGE_MAX (16u << 20)

struct sink {
	uint8_t *image;
	uint64_t size;
};

static int on_layout(void *ctx, const struct qb_layout *l)
{
	struct sink *s = ctx;

	if (l->image_size > IMAGE_MAX)
		return -1; /* the engine maps the image: the harness caps it */
	s->size = l->image_size;
	s->image = calloc(1, s->size ? s->size : 1);
	return s->image ? 0 : -1;
}

static int on_page(void *ctx, uint64_t off, const uint8_t *data)
{
	struct sink *s = ctx;

	if (!s->image || off + QB_PAGE > s->size)
		return -1;
	if (data)
		memcpy(s->image + off, data, QB_PAGE);
	else
		memset(s->image + off, 0, QB_PAGE);
	return 0;
}

static void decode(const uint8_t *buf, size_t len)
{
	struct qb_devstate d = { 0 };
	struct qb_layout l;
	char err[256];

	if (qb_devstate_decode(buf, len, &d, err, sizeof(err)))
		return;
	(void)qb_devstate_layout(&d, &l, err, sizeof(err));
	qb_devstate_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1) {
		decode(data + 1, size - 1);
		return 0;
	}
	struct sink s = { 0 };
	struct qb_parse_cb cb = { .layout = on_layout, .page = on_page, .ctx = &s };
	struct qb_layout l;
	struct qb_devstate d = { 0 };
	char err[256];
	if (!qb_parse_mem(data + 1, size - 1, &cb, &l, &d, err, sizeof(err))) {
		uint8_t *enc = NULL;
		size_t n = qb_devstate_encode(&d, &enc);
		if (n)
			decode(enc, n);
		free(enc);
		qb_devstate_free(&d);
	}
	free(s.image);
	return 0;
}

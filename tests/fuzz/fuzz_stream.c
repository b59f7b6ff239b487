/*
 * libFuzzer target for the stream reader (engine/stream.c) against a fixed
 * 64 KiB base, with memory stores capped at 16 MiB.
 *
 * Input byte 0 picks how the rest is used:
 *   even: the rest is a whole stream, as read from a file or a socket
 *         (header, frame and authentication paths);
 *   odd:  byte 1 picks a compressor and the rest is one segment's
 *         compressed payload, which the harness seals properly under the
 *         unkeyed key so the fuzzer reaches the decompressors, the record
 *         parser and the delta decoders behind the AEAD.
 */
#include "engine/io.h"
#include "engine/stream.h"
#include "codecs/varint.h"

#include <stdlib.h>
#include <string.h>

#define BASE_LEN (64 * 1024)

static uint8_t base_data[BASE_LEN];
static uint8_t base_id[CDC_DIGEST_LEN];

static void init_base(void)
{
	static int done;
	struct cdc_image_digest *d;
	uint8_t digest[CDC_DIGEST_LEN];

	if (done)
		return;
	done = 1;
	for (size_t i = 0; i < BASE_LEN; i++)
		base_data[i] = (uint8_t)(i * 7 + (i >> 9));
	d = cdc_image_digest_new();
	for (size_t b = 0; b < BASE_LEN / CDC_BLOCK_SIZE; b++) {
		cdc_sha256(base_data + b * CDC_BLOCK_SIZE, CDC_BLOCK_SIZE, digest);
		cdc_image_digest_add(d, digest);
	}
	cdc_image_digest_final(d, BASE_LEN, base_id);
	cdc_image_digest_free(d);
}

static void run_reader(const uint8_t *data, size_t len)
{
	struct eng_mem src_mem = { .data = (uint8_t *)data, .len = len, .cap = len };
	struct eng_mem base = { .data = base_data, .len = BASE_LEN, .cap = BASE_LEN };
	struct eng_mem out = { .max = 16u << 20 };
	struct eng_source src = eng_mem_source(&src_mem);
	struct eng_store bs = eng_mem_store(&base), os = eng_mem_store(&out);
	struct eng_patch_args a = {
		.src = &src, .base = &bs, .base_id = base_id, .base_size = BASE_LEN, .out = &os,
	};
	struct eng_patch_stats st;
	char err[256];

	(void)eng_patch_stream(&a, &st, err, sizeof(err));
	eng_mem_free(&out);
}

/* Wrap a payload into a valid unkeyed stream: header, one data frame, trailer. */
static void run_sealed_segment(uint8_t comp, const uint8_t *payload, size_t len)
{
	struct eng_stream s;
	struct cdc_sealer *sealer;
	size_t raw_len = len;

	if (len > ENG_SEG_RAW_MAX)
		return;
	if (comp % CDC_COMP_COUNT != CDC_COMP_NONE) {
		/* compressed payloads declare their raw size in the first 3 bytes */
		if (len < 3)
			return;
		raw_len = cdc_get_le(payload, 3) % (ENG_SEG_RAW_MAX + 1);
		payload += 3;
		len -= 3;
	}
	if (eng_stream_init(&s, NULL, CDC_AEAD_AES256GCM, base_id, BASE_LEN))
		return;
	sealer = cdc_sealer_new(CDC_AEAD_AES256GCM, s.subkey);
	size_t total = ENG_HEADER_LEN + 2 * (ENG_FRAME_HDR + CDC_TAG_LEN) + len + ENG_TRAILER_LEN;
	uint8_t *buf = malloc(total), *p = buf;
	memcpy(p, s.header, ENG_HEADER_LEN);
	p += ENG_HEADER_LEN;
	memcpy(p + ENG_FRAME_HDR, payload, len);
	p += eng_frame_seal(&s, sealer, 0, ENG_FRAME_DATA, (enum cdc_comp)(comp % CDC_COMP_COUNT), 0,
			    (uint32_t)raw_len, p, (uint32_t)len);
	uint8_t *t = p + ENG_FRAME_HDR;
	memset(t, 0, ENG_TRAILER_LEN);
	cdc_put_le(t, BASE_LEN, 8);
	cdc_put_le(t + 8, BASE_LEN / CDC_BLOCK_SIZE, 8);
	cdc_put_le(t + 16, 1, 8);
	p += eng_frame_seal(&s, sealer, 1, ENG_FRAME_TRAILER, CDC_COMP_NONE, 0, ENG_TRAILER_LEN, p,
			    ENG_TRAILER_LEN);
	run_reader(buf, (size_t)(p - buf));
	free(buf);
	cdc_sealer_free(sealer);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	init_base();
	if (size < 1)
		return 0;
	if (data[0] & 1) {
		if (size >= 2)
			run_sealed_segment(data[1], data + 2, size - 2);
	} else {
		run_reader(data + 1, size - 1);
	}
	return 0;
}

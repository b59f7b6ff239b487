/*
 * libFuzzer target for the stream reader (engine/stream.c): an image
 * stream (one object) or a VM stream (two objects), every object against
 * the same fixed 64 KiB base, with memory stores capped at 16 MiB.
 *
 * Input byte 0 picks how the rest is used:
 *   even: the rest is a whole stream, as read from a file or a socket
 *         (header, frame and authentication paths); bit 1 set = a VM
 *         stream, clear = an image stream (what diff writes);
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

#define NOBJ 2

static uint8_t base_data[BASE_LEN];
static uint8_t base_digests[BASE_LEN / CDC_BLOCK_SIZE][CDC_DIGEST_LEN];
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
		memcpy(base_digests[b], digest, CDC_DIGEST_LEN);
		cdc_image_digest_add(d, digest);
	}
	cdc_image_digest_final(d, BASE_LEN, base_id);
	cdc_image_digest_free(d);
}

static void run_reader(const uint8_t *data, size_t len, int nobj)
{
	struct eng_mem src_mem = { .data = (uint8_t *)data, .len = len, .cap = len };
	struct eng_mem base = { .data = base_data, .len = BASE_LEN, .cap = BASE_LEN };
	struct eng_mem out[NOBJ];
	struct eng_store bs = eng_mem_store(&base), os[NOBJ];
	struct eng_patch_object obj[NOBJ];
	struct eng_source src = eng_mem_source(&src_mem);
	struct eng_patch_stats st;
	char err[256];

	for (int i = 0; i < nobj; i++) {
		/* each result starts as a copy of the base, as the engine's do */
		out[i] = (struct eng_mem){ .data = malloc(BASE_LEN), .len = BASE_LEN, .cap = BASE_LEN,
					   .max = 16u << 20 };
		memcpy(out[i].data, base_data, BASE_LEN);
		os[i] = eng_mem_store(&out[i]);
		obj[i] = (struct eng_patch_object){
			.name = i ? "memory" : "disk", .base = &bs, .out = &os[i],
			.base_digests = base_digests[0], .base_size = BASE_LEN, .base_id = base_id,
		};
	}
	struct eng_patch_args a = {
		.src = &src, .kind = nobj > 1 ? ENG_KIND_VM : ENG_KIND_IMAGE, .nobj = (unsigned)nobj,
		.obj = obj,
	};
	(void)eng_patch_stream(&a, &st, err, sizeof(err));
	for (int i = 0; i < nobj; i++)
		eng_mem_free(&out[i]);
}

/*
 * Wrap a payload into a valid unkeyed stream: header, one data frame, trailer.
 * The selector picks the compressor and the history window (0..9 MiB, 9 is invalid).
 */
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
	struct eng_object_desc desc[NOBJ];
	for (int i = 0; i < NOBJ; i++) {
		desc[i] = (struct eng_object_desc){ .base_size = BASE_LEN, .capacity = 1u << 20 };
		memcpy(desc[i].base_id, base_id, CDC_DIGEST_LEN);
	}
	if (eng_stream_init(&s, NULL, NULL, CDC_AEAD_AES256GCM, ENG_KIND_VM, NOBJ, desc))
		return;
	sealer = cdc_sealer_new(CDC_AEAD_AES256GCM, s.subkey);
	size_t total = s.header_len + 2 * (ENG_FRAME_HDR + CDC_TAG_LEN) + len + ENG_TRAILER_LEN(NOBJ);
	uint8_t *buf = malloc(total), *p = buf;
	memcpy(p, s.header, s.header_len);
	p += s.header_len;
	memcpy(p + ENG_FRAME_HDR, payload, len);
	p += eng_frame_seal(&s, sealer, 0, ENG_FRAME_DATA, (enum cdc_comp)(comp % CDC_COMP_COUNT), 0,
			    comp / CDC_COMP_COUNT % 10, (uint32_t)raw_len, p, (uint32_t)len);
	uint8_t *t = p + ENG_FRAME_HDR;
	memset(t, 0, ENG_TRAILER_LEN(NOBJ));
	cdc_put_le(t, 1, 8);
	for (int i = 0; i < NOBJ; i++)
		cdc_put_le(t + 8 + i * (8 + CDC_DIGEST_LEN), BASE_LEN, 8);
	p += eng_frame_seal(&s, sealer, 1, ENG_FRAME_TRAILER, CDC_COMP_NONE, 0, 0, ENG_TRAILER_LEN(NOBJ),
			    p, ENG_TRAILER_LEN(NOBJ));
	run_reader(buf, (size_t)(p - buf), NOBJ);
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
		run_reader(data + 1, size - 1, data[0] & 2 ? NOBJ : 1);
	}
	return 0;
}

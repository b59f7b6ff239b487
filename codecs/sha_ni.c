/*
 * SHA-256 of four 4 KiB blocks at once with the SHA-NI instructions.
 *
 * One message keeps SHA-NI waiting on its own results: each pair of rounds
 * needs the state the previous pair produced. Four independent messages,
 * their rounds interleaved, fill those gaps. On this project's reference host
 * (AMD EPYC) perf/diff-floor's hash part for the memory benchmark's 13,299
 * blocks took 31-38 ms this way, against 44-46 ms through OpenSSL one block at
 * a time (HANDOFF_NO_SHA_X4=1).
 * The block size is fixed, so the padding block is a constant.
 *
 * Written from the SHA-256 definition (FIPS 180-4) and the instructions'
 * documented semantics: the state lives as two vectors, ABEF and CDGH, and
 * sha256rnds2 does two rounds with the message words plus constants in the
 * low half of its third operand.
 */
#include "codecs.h"

#include <cpuid.h>
#include <immintrin.h>
#include <stdbool.h>

#define SHA_NI __attribute__((target("sha,ssse3,sse4.1")))

static const uint32_t round_k[64] __attribute__((aligned(16))) = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t initial_h[8] = {
	0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

_Static_assert(CDC_BLOCK_SIZE == 4096, "the padding block below is for 4096-byte messages");

/* The last block of every 4096-byte message: 0x80, zeros, the length in bits (32768), big-endian. */
static const uint8_t pad_block[64] = { 0x80, [62] = 0x80 };

struct lanes {
	__m128i abef[4], cdgh[4];
};

/* Four rounds on every lane; w[l][g & 3] holds lane l's message words of group g. */
#define ROUNDS(g)                                                                          \
	do {                                                                               \
		__m128i k = _mm_load_si128((const __m128i *)(round_k + 4 * (g)));          \
		LANE_ROUNDS(0, g, k);                                                      \
		LANE_ROUNDS(1, g, k);                                                      \
		LANE_ROUNDS(2, g, k);                                                      \
		LANE_ROUNDS(3, g, k);                                                      \
	} while (0)
#define LANE_ROUNDS(l, g, k)                                                               \
	do {                                                                               \
		__m128i m = _mm_add_epi32(w[l][(g) & 3], k);                               \
		s->cdgh[l] = _mm_sha256rnds2_epu32(s->cdgh[l], s->abef[l], m);             \
		s->abef[l] = _mm_sha256rnds2_epu32(s->abef[l], s->cdgh[l],                 \
						   _mm_shuffle_epi32(m, 0x0E));            \
	} while (0)
/* The schedule: words of group g from the four groups before it (kept in w[l][0..3]). */
#define SCHEDULE(g)                                                                        \
	do {                                                                               \
		LANE_SCHEDULE(0, g);                                                       \
		LANE_SCHEDULE(1, g);                                                       \
		LANE_SCHEDULE(2, g);                                                       \
		LANE_SCHEDULE(3, g);                                                       \
	} while (0)
#define LANE_SCHEDULE(l, g)                                                                \
	w[l][(g) & 3] = _mm_sha256msg2_epu32(                                              \
		_mm_add_epi32(_mm_sha256msg1_epu32(w[l][(g) & 3], w[l][((g) + 1) & 3]),    \
			      _mm_alignr_epi8(w[l][((g) + 3) & 3], w[l][((g) + 2) & 3], 4)), \
		w[l][((g) + 3) & 3])

/* One 64-byte block of each lane; stride 0 repeats the same block (padding). */
SHA_NI static void compress4(struct lanes *s, const uint8_t *const p[4], size_t nblocks, size_t stride)
{
	const __m128i be = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);

	for (size_t b = 0; b < nblocks; b++) {
		struct lanes saved = *s;
		__m128i w[4][4];
		for (int l = 0; l < 4; l++)
			for (int j = 0; j < 4; j++)
				w[l][j] = _mm_shuffle_epi8(
					_mm_loadu_si128((const __m128i *)(p[l] + b * stride + 16 * j)), be);
		ROUNDS(0); ROUNDS(1); ROUNDS(2); ROUNDS(3);
		SCHEDULE(4); ROUNDS(4); SCHEDULE(5); ROUNDS(5);
		SCHEDULE(6); ROUNDS(6); SCHEDULE(7); ROUNDS(7);
		SCHEDULE(8); ROUNDS(8); SCHEDULE(9); ROUNDS(9);
		SCHEDULE(10); ROUNDS(10); SCHEDULE(11); ROUNDS(11);
		SCHEDULE(12); ROUNDS(12); SCHEDULE(13); ROUNDS(13);
		SCHEDULE(14); ROUNDS(14); SCHEDULE(15); ROUNDS(15);
		for (int l = 0; l < 4; l++) {
			s->abef[l] = _mm_add_epi32(s->abef[l], saved.abef[l]);
			s->cdgh[l] = _mm_add_epi32(s->cdgh[l], saved.cdgh[l]);
		}
	}
}

SHA_NI void cdc_sha256_block_x4(const uint8_t *const block[4], uint8_t *const out[4])
{
	const __m128i be = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	const uint8_t *const pad[4] = { pad_block, pad_block, pad_block, pad_block };
	struct lanes s;

	/* H0..H7 as A B C D / E F G H into the ABEF and CDGH order the rounds use */
	__m128i badc = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)initial_h), 0xB1);
	__m128i hgfe = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(initial_h + 4)), 0x1B);
	for (int l = 0; l < 4; l++) {
		s.abef[l] = _mm_alignr_epi8(badc, hgfe, 8);
		s.cdgh[l] = _mm_blend_epi16(hgfe, badc, 0xF0);
	}
	compress4(&s, block, CDC_BLOCK_SIZE / 64, 64);
	compress4(&s, pad, 1, 0);
	for (int l = 0; l < 4; l++) {
		__m128i feba = _mm_shuffle_epi32(s.abef[l], 0x1B);
		__m128i dchg = _mm_shuffle_epi32(s.cdgh[l], 0xB1);
		_mm_storeu_si128((__m128i *)out[l], _mm_shuffle_epi8(_mm_blend_epi16(feba, dchg, 0xF0), be));
		_mm_storeu_si128((__m128i *)(out[l] + 16), _mm_shuffle_epi8(_mm_alignr_epi8(dchg, feba, 8), be));
	}
}

/* CPUID directly: clang 14's __builtin_cpu_supports does not know "sha". */
bool cdc_sha256_x4_available(void)
{
	unsigned a, b, c, d;

	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSSE3) || !(c & bit_SSE4_1))
		return false;
	return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA);
}

/*
 * Block hashing and zero detection. One block's SHA-256 goes through
 * OpenSSL's EVP, which uses the SHA-NI instructions when the CPU has them;
 * the digest context is fetched once per hasher so a 4 KiB block costs one
 * init/update/final and no lookups. Runs of blocks (the pipeline's hash
 * stage) go through Intel's multi-buffer library (libipsec-mb's job API,
 * which hashes many independent messages at once in SIMD lanes: AVX-512,
 * AVX2 or SSE, whichever the CPU has), else four at a time through
 * codecs/sha_ni.c where the CPU has SHA-NI, else one by one. HANDOFF_HASH
 * (ipsec-mb, sha-ni or openssl) picks one, for comparisons (perf/hash-bench).
 * Zero detection is ISA-L's vectorized scan, run before hashing so zero
 * blocks (common in VM images) skip SHA-256.
 */
#include "codecs.h"

#include <intel-ipsec-mb.h>
#include <isa-l/mem_routines.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Below this many blocks a flush with lanes half empty costs more than the four-lane code. */
#define MB_MIN_RUN 16

struct cdc_hasher {
	EVP_MD *md;
	EVP_MD_CTX *ctx;
	bool use_mb; /* runs of blocks through libipsec-mb (this thread's manager, thread_mb) */
	bool x4;     /* else four blocks at a time on SHA-NI (codecs/sha_ni.c) */
};

/* A manager for this CPU, or NULL if the library cannot drive it. */
static IMB_MGR *new_mb(void)
{
	IMB_ARCH arch = IMB_ARCH_NONE;
	IMB_MGR *mb = alloc_mb_mgr(0);

	if (mb)
		init_mb_mgr_auto(mb, &arch);
	/* a CPU the library cannot drive leaves its calls unset */
	if (mb && (arch == IMB_ARCH_NONE || imb_get_errno(mb))) {
		free_mb_mgr(mb);
		mb = NULL;
	}
	return mb;
}

static pthread_once_t mb_once = PTHREAD_ONCE_INIT;
static pthread_key_t mb_key; /* each thread's manager, freed when the thread ends */
static bool mb_usable;

static void free_thread_mb(void *mb)
{
	free_mb_mgr(mb);
}

static void probe_mb(void)
{
	IMB_MGR *mb = new_mb();

	mb_usable = mb != NULL && !pthread_key_create(&mb_key, free_thread_mb);
	if (mb)
		free_mb_mgr(mb);
}

/*
 * A manager is a large allocation with lanes of state: one per thread, made
 * at the thread's first run and shared by its hashers (a run flushes every
 * lane before it returns), not one per hasher.
 */
static IMB_MGR *thread_mb(void)
{
	IMB_MGR *mb = pthread_getspecific(mb_key);

	if (!mb && (mb = new_mb()) && pthread_setspecific(mb_key, mb)) {
		free_mb_mgr(mb);
		mb = NULL;
	}
	return mb;
}

struct cdc_hasher *cdc_hasher_new(void)
{
	struct cdc_hasher *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	const char *pick = getenv("HANDOFF_HASH");
	h->md = EVP_MD_fetch(NULL, "SHA256", NULL);
	h->ctx = EVP_MD_CTX_new();
	if (!pick || !strcmp(pick, "ipsec-mb")) {
		pthread_once(&mb_once, probe_mb);
		h->use_mb = mb_usable;
	}
	/* runs too short to fill the lanes go four at a time */
	h->x4 = cdc_sha256_x4_available() && (!pick || !strcmp(pick, "sha-ni") || !strcmp(pick, "ipsec-mb"));
	if (!h->md || !h->ctx) {
		cdc_hasher_free(h);
		return NULL;
	}
	return h;
}

void cdc_hasher_free(struct cdc_hasher *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	EVP_MD_free(h->md);
	free(h);
}

const char *cdc_hasher_runs(const struct cdc_hasher *h)
{
	return h->use_mb ? "ipsec-mb" : h->x4 ? "sha-ni" : "openssl";
}

void cdc_hash_block(struct cdc_hasher *h, const void *block, uint8_t out[CDC_DIGEST_LEN])
{
	unsigned int len = CDC_DIGEST_LEN;

	EVP_DigestInit_ex2(h->ctx, h->md, NULL);
	EVP_DigestUpdate(h->ctx, block, CDC_BLOCK_SIZE);
	EVP_DigestFinal_ex(h->ctx, out, &len);
}

/* Every block a job; the manager hands jobs back once their lanes ran. */
static bool hash_blocks_mb(IMB_MGR *mb, const uint8_t *const *blocks, unsigned n, uint8_t *const *out)
{
	IMB_JOB *j;
	unsigned done = 0;

	for (unsigned i = 0; i < n; i++) {
		j = IMB_GET_NEXT_JOB(mb);
		memset(j, 0, sizeof(*j));
		j->src = blocks[i];
		j->dst = (uint8_t *)blocks[i]; /* the null cipher wants one, and writes nothing */
		j->msg_len_to_hash_in_bytes = CDC_BLOCK_SIZE;
		j->auth_tag_output = out[i];
		j->auth_tag_output_len_in_bytes = CDC_DIGEST_LEN;
		j->hash_alg = IMB_AUTH_SHA_256;
		j->cipher_mode = IMB_CIPHER_NULL;
		j->cipher_direction = IMB_DIR_ENCRYPT;
		j->chain_order = IMB_ORDER_CIPHER_HASH;
		for (j = IMB_SUBMIT_JOB(mb); j; j = IMB_GET_COMPLETED_JOB(mb))
			done += j->status == IMB_STATUS_COMPLETED;
	}
	while ((j = IMB_FLUSH_JOB(mb)) != NULL)
		done += j->status == IMB_STATUS_COMPLETED;
	return done == n;
}

void cdc_hash_blocks(struct cdc_hasher *h, const uint8_t *const *blocks, unsigned n,
		     uint8_t *const *out)
{
	unsigned i = 0;

	if (h->use_mb && n >= MB_MIN_RUN) {
		IMB_MGR *mb = thread_mb(); /* NULL (out of memory): the other ways still work */
		if (mb && hash_blocks_mb(mb, blocks, n, out))
			return;
	}
	if (h->x4)
		for (; i + 4 <= n; i += 4)
			cdc_sha256_block_x4(blocks + i, out + i);
	for (; i < n; i++)
		cdc_hash_block(h, blocks[i], out[i]);
}

void cdc_sha256(const void *buf, size_t len, uint8_t out[CDC_DIGEST_LEN])
{
	unsigned int olen = CDC_DIGEST_LEN;

	EVP_Digest(buf, len, out, &olen, EVP_sha256(), NULL);
}

bool cdc_is_zero(const void *buf, size_t len)
{
	return isal_zero_detect((void *)buf, len) == 0;
}

static uint8_t zero_digest[CDC_DIGEST_LEN];
static pthread_once_t zero_digest_once = PTHREAD_ONCE_INIT;

static void zero_digest_init(void)
{
	static const uint8_t zero_block[CDC_BLOCK_SIZE];

	cdc_sha256(zero_block, sizeof(zero_block), zero_digest);
}

const uint8_t *cdc_zero_digest(void)
{
	pthread_once(&zero_digest_once, zero_digest_init);
	return zero_digest;
}

struct cdc_image_digest {
	EVP_MD_CTX *ctx;
};

struct cdc_image_digest *cdc_image_digest_new(void)
{
	struct cdc_image_digest *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	d->ctx = EVP_MD_CTX_new();
	if (!d->ctx || !EVP_DigestInit_ex2(d->ctx, EVP_sha256(), NULL)) {
		cdc_image_digest_free(d);
		return NULL;
	}
	return d;
}

void cdc_image_digest_add(struct cdc_image_digest *d, const uint8_t digest[CDC_DIGEST_LEN])
{
	EVP_DigestUpdate(d->ctx, digest, CDC_DIGEST_LEN);
}

/*
 * The size goes last, not first, so the digest can be accumulated while the
 * image streams by and its length is only known at the end.
 */
void cdc_image_digest_final(struct cdc_image_digest *d, uint64_t size, uint8_t out[CDC_DIGEST_LEN])
{
	uint8_t le[8];
	unsigned int len = CDC_DIGEST_LEN;

	for (int i = 0; i < 8; i++)
		le[i] = (uint8_t)(size >> (8 * i));
	EVP_DigestUpdate(d->ctx, le, sizeof(le));
	EVP_DigestFinal_ex(d->ctx, out, &len);
}

void cdc_image_digest_free(struct cdc_image_digest *d)
{
	if (!d)
		return;
	EVP_MD_CTX_free(d->ctx);
	free(d);
}

/*
 * AEAD sealing of stream segments (OpenSSL: AES-256-GCM uses AES-NI/VAES,
 * ChaCha20-Poly1305 for CPUs without them) and HKDF key derivation. The
 * 96-bit nonce is 32 zero bits followed by the caller's 64-bit counter; the
 * stream derives a fresh key per stream, so counters never repeat under one
 * key.
 */
#include "codecs.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

struct cdc_sealer {
	EVP_CIPHER_CTX *enc;
	EVP_CIPHER_CTX *dec;
};

static void make_nonce(uint64_t ctr, uint8_t iv[12])
{
	memset(iv, 0, 4);
	for (int i = 0; i < 8; i++)
		iv[4 + i] = (uint8_t)(ctr >> (56 - 8 * i));
}

struct cdc_sealer *cdc_sealer_new(enum cdc_aead alg, const uint8_t key[CDC_KEY_LEN])
{
	const EVP_CIPHER *cipher = alg == CDC_AEAD_CHACHA20POLY1305 ? EVP_chacha20_poly1305()
								     : EVP_aes_256_gcm();
	struct cdc_sealer *s;

	if (alg != CDC_AEAD_AES256GCM && alg != CDC_AEAD_CHACHA20POLY1305)
		return NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->enc = EVP_CIPHER_CTX_new();
	s->dec = EVP_CIPHER_CTX_new();
	if (!s->enc || !s->dec || !EVP_EncryptInit_ex2(s->enc, cipher, key, NULL, NULL) ||
	    !EVP_DecryptInit_ex2(s->dec, cipher, key, NULL, NULL)) {
		cdc_sealer_free(s);
		return NULL;
	}
	return s;
}

void cdc_sealer_free(struct cdc_sealer *s)
{
	if (!s)
		return;
	EVP_CIPHER_CTX_free(s->enc);
	EVP_CIPHER_CTX_free(s->dec);
	free(s);
}

int cdc_seal(struct cdc_sealer *s, uint64_t nonce, const void *aad, size_t aad_len, void *buf,
	     size_t len, uint8_t tag[CDC_TAG_LEN])
{
	uint8_t iv[12];
	int n;

	make_nonce(nonce, iv);
	if (!EVP_EncryptInit_ex2(s->enc, NULL, NULL, iv, NULL) ||
	    !EVP_EncryptUpdate(s->enc, NULL, &n, aad, (int)aad_len) ||
	    (len && !EVP_EncryptUpdate(s->enc, buf, &n, buf, (int)len)) ||
	    !EVP_EncryptFinal_ex(s->enc, (uint8_t *)buf + len, &n) ||
	    !EVP_CIPHER_CTX_ctrl(s->enc, EVP_CTRL_AEAD_GET_TAG, CDC_TAG_LEN, tag))
		return -EIO;
	return 0;
}

int cdc_open(struct cdc_sealer *s, uint64_t nonce, const void *aad, size_t aad_len, void *buf,
	     size_t len, const uint8_t tag[CDC_TAG_LEN])
{
	uint8_t iv[12];
	int n;

	make_nonce(nonce, iv);
	if (!EVP_DecryptInit_ex2(s->dec, NULL, NULL, iv, NULL) ||
	    !EVP_DecryptUpdate(s->dec, NULL, &n, aad, (int)aad_len) ||
	    (len && !EVP_DecryptUpdate(s->dec, buf, &n, buf, (int)len)) ||
	    !EVP_CIPHER_CTX_ctrl(s->dec, EVP_CTRL_AEAD_SET_TAG, CDC_TAG_LEN, (void *)tag))
		return -EIO;
	return EVP_DecryptFinal_ex(s->dec, (uint8_t *)buf + len, &n) == 1 ? 0 : -EBADMSG;
}

int cdc_derive_key(const uint8_t key[CDC_KEY_LEN], const void *salt, size_t salt_len,
		   const char *info, uint8_t *out, size_t out_len)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[5];
	int ok;

	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, CDC_KEY_LEN);
	params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
	params[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info,
						      strlen(info));
	params[4] = OSSL_PARAM_construct_end();
	ok = ctx && EVP_KDF_derive(ctx, out, out_len, params) == 1;
	EVP_KDF_CTX_free(ctx);
	EVP_KDF_free(kdf);
	return ok ? 0 : -EIO;
}

int cdc_random(void *buf, size_t len)
{
	return RAND_bytes(buf, (int)len) == 1 ? 0 : -EIO;
}

/*
 * libFuzzer target for the edge chunk cache's records (edge/store.c): a
 * cache whose LMDB database a crash, a bad disk or a hostile user left with
 * any bytes in its records. The input is a list of records written straight
 * into the database's sub-databases, then the store is opened and used:
 * stat, verify, every recipe read and exported, a missing-set query, pins,
 * gc to zero, an image removed.
 *
 *   record = db:u8 (chunk, meta, recipe, pin, info) | klen:u8 | vlen:u16 | key | value
 *
 * The cache lives on /dev/shm and is emptied before each input. With
 * FUZZ_CACHE_SEED=FILE set, the harness writes the records of a real cache
 * (an image of three chunks, one of them twice, added and pinned) to FILE in
 * this form and exits: the corpus seed tests/fuzz/corpus/cache/real.
 */
#include "edge/store.h"

#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], out_path[96];
static uint8_t info_val[64]; /* the store's own info record: every input starts from it */
static size_t info_len;

static void remove_cache(void)
{
	char path[96];

	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/lock.mdb", dir);
	unlink(path);
	rmdir(dir);
	unlink(out_path);
}

static void write_seed(const char *file);

static void init(void)
{
	char err[256];

	if (dir[0])
		return;
	snprintf(dir, sizeof(dir), "/dev/shm/fuzz-cache-%d", (int)getpid());
	snprintf(out_path, sizeof(out_path), "%s-export", dir);
	struct edg_store *s = edg_store_open(dir, true, 4096, 64 << 20, err, sizeof(err));
	if (!s) {
		fprintf(stderr, "fuzz_cache: %s\n", err);
		abort();
	}
	edg_store_close(s);
	atexit(remove_cache);
	/* keep the info record a fresh store writes */
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = { 4, "info" }, v;
	char path[96];
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 8) || mdb_env_open(env, path, MDB_NOSUBDIR | MDB_RDONLY, 0600) ||
	    mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) || mdb_dbi_open(txn, "info", 0, &dbi) ||
	    mdb_get(txn, dbi, &k, &v) || v.mv_size > sizeof(info_val))
		abort();
	memcpy(info_val, v.mv_data, v.mv_size);
	info_len = v.mv_size;
	mdb_txn_abort(txn);
	mdb_env_close(env);
	if (getenv("FUZZ_CACHE_SEED")) {
		write_seed(getenv("FUZZ_CACHE_SEED"));
		exit(0);
	}
}

static void write_seed(const char *file)
{
	static const char *const dbs[] = { "chunk", "meta", "recipe", "pin", "info" };
	char img[128], err[256], path[96];
	uint8_t block[4096];
	FILE *f = NULL, *out = fopen(file, "wb");
	MDB_env *env = NULL;
	MDB_txn *txn;

	snprintf(img, sizeof(img), "%s-img", dir);
	if (out && (f = fopen(img, "wb"))) {
		for (int i = 0; i < 4; i++) {
			memset(block, i == 3 ? 1 : i + 1, sizeof(block)); /* the 4th chunk repeats the 1st */
			fwrite(block, 1, sizeof(block), f);
		}
		fclose(f);
	}
	struct edg_store *s = edg_store_open(dir, false, 0, 64 << 20, err, sizeof(err));
	struct edg_add_report rep;
	if (!out || !s || edg_store_add_file(s, "img", img, &rep, NULL, NULL, err, sizeof(err)))
		abort();
	uint64_t size, n;
	uint8_t *d;
	if (edg_store_recipe(s, "img", &size, &d, &n) || edg_store_pin(s, "p1", d, n, 4000000000u, err, sizeof(err)))
		abort();
	free(d);
	edg_store_close(s);
	unlink(img);
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 8) || mdb_env_open(env, path, MDB_NOSUBDIR | MDB_RDONLY, 0600) ||
	    mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
		abort();
	for (unsigned i = 0; i < 5; i++) {
		MDB_dbi dbi;
		MDB_cursor *c;
		MDB_val k, v;
		if (mdb_dbi_open(txn, dbs[i], 0, &dbi) || mdb_cursor_open(txn, dbi, &c))
			abort();
		for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
			uint8_t hdr[4] = { (uint8_t)i, (uint8_t)k.mv_size, (uint8_t)v.mv_size, (uint8_t)(v.mv_size >> 8) };
			if (k.mv_size > 255 || v.mv_size > 65535)
				continue;
			fwrite(hdr, 1, 4, out);
			fwrite(k.mv_data, 1, k.mv_size, out);
			fwrite(v.mv_data, 1, v.mv_size, out);
		}
		mdb_cursor_close(c);
	}
	mdb_txn_abort(txn);
	mdb_env_close(env);
	fclose(out);
}

/* The records, straight into LMDB under the store's back (the sub-databases emptied first). */
static void write_records(const uint8_t *data, size_t size)
{
	static const char *const dbs[] = { "chunk", "meta", "recipe", "pin", "info" };
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi[5];
	char path[96];

	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	if (mdb_env_create(&env))
		return;
	mdb_env_set_maxdbs(env, 8);
	mdb_env_set_mapsize(env, 64 << 20);
	/* no sync: the store reopens it at once, and /dev/shm keeps it anyway */
	if (mdb_env_open(env, path, MDB_NOSUBDIR | MDB_NOSYNC, 0600) || mdb_txn_begin(env, NULL, 0, &txn)) {
		mdb_env_close(env);
		return;
	}
	/* each input on its own: every sub-database emptied, the store's info record back */
	MDB_val ik = { 4, "info" }, iv = { info_len, info_val };
	for (int i = 0; i < 5; i++)
		if (mdb_dbi_open(txn, dbs[i], MDB_CREATE, &dbi[i]) || mdb_drop(txn, dbi[i], 0))
			goto abort;
	if (mdb_put(txn, dbi[4], &ik, &iv, 0))
		goto abort;
	for (size_t p = 0; p + 4 <= size;) {
		unsigned db = data[p] % 5, klen = data[p + 1], vlen = data[p + 2] | data[p + 3] << 8;
		p += 4;
		if (!klen || p + klen + vlen > size)
			break;
		MDB_val k = { klen, (void *)(data + p) }, v = { vlen, (void *)(data + p + klen) };
		p += klen + vlen;
		if (mdb_put(txn, dbi[db], &k, &v, 0))
			goto abort;
	}
	mdb_txn_commit(txn);
	mdb_env_close(env);
	return;
abort:
	mdb_txn_abort(txn);
	mdb_env_close(env);
}

static void on_bad(void *ctx, const uint8_t digest[EDG_DIGEST_LEN])
{
	(void)ctx;
	(void)digest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256], name[256] = "";
	struct edg_stat st;
	struct edg_gc_report gr;
	uint64_t checked, bad, isize, n;
	uint8_t *digests;

	if (size > 1 << 16)
		return 0;
	init();
	write_records(data, size);
	struct edg_store *s = edg_store_open(dir, false, 0, 64 << 20, err, sizeof(err));
	if (!s)
		return 0;
	edg_store_stat(s, &st, err, sizeof(err));
	edg_store_verify(s, &checked, &bad, on_bad, NULL, err, sizeof(err));
	/* every recipe key the input wrote, read and exported */
	for (size_t p = 0; p + 4 <= size;) {
		unsigned db = data[p] % 5, klen = data[p + 1], vlen = data[p + 2] | data[p + 3] << 8;
		p += 4;
		if (!klen || p + klen + vlen > size)
			break;
		if (db == 2 && klen < sizeof(name)) {
			memcpy(name, data + p, klen);
			name[klen] = 0;
			if (edg_store_recipe(s, name, &isize, &digests, &n) == 0) {
				bool *missing = calloc(n ? n : 1, sizeof(bool));
				uint64_t nm;
				if (missing)
					edg_store_missing(s, digests, n, missing, &nm);
				free(missing);
				edg_store_pin(s, "fuzz", digests, n, 1, err, sizeof(err));
				free(digests);
			}
			edg_store_export(s, name, out_path, err, sizeof(err));
			unlink(out_path);
		}
		p += klen + vlen;
	}
	edg_store_unpin(s, "fuzz", err, sizeof(err));
	if (name[0]) /* the last recipe named */
		edg_store_remove_image(s, name, err, sizeof(err));
	edg_store_gc(s, 0, 0, NULL, &gr, err, sizeof(err));
	edg_store_close(s);
	return 0;
}

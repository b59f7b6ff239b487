/*
 * libFuzzer target for the edge chunk cache's records (edge/store.c): a
 * cache whose LMDB database a crash, a bad disk or a hostile user left with
 * any bytes in its records. The input is a list of records written straight
 * into the database's sub-databases (over a fresh info record for 4 KiB
 * chunks), the store's open-time check of its info record runs, and the
 * store is used: stat, verify, every recipe read and exported, a
 * missing-set query, pins, gc to zero, an image removed.
 *
 *   record = db:u8 (chunk, meta, recipe, pin, info) | klen:u8 | vlen:u16 | key | value
 *
 * The cache lives on /dev/shm, opened once per process (a long-running
 * chunk server keeps one open too): this file includes edge/store.c, so
 * each input is written through the store's own LMDB environment, after
 * every sub-database is emptied, and the store's info check (info_load, as
 * edg_store_open runs it) runs on what the input left. Opening an
 * environment per input cost ~6 ms under ASan (LMDB allocates 3 MB of page
 * lists each time), which put 10^6 inputs hours away. With
 * FUZZ_CACHE_SEED=FILE set, the harness writes the records of a real cache
 * (an image of three chunks, one of them twice, added and pinned) to FILE in
 * this form and exits: the corpus seed tests/fuzz/corpus/cache/real.
 */
#include "edge/store.c"

static char dir[64], out_path[96];
static struct edg_store *store;

/* The cache's files, gone from the namespace (the open store keeps them): nothing left behind however the run ends. */
static void remove_cache(void)
{
	char path[96];

	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/lock.mdb", dir);
	unlink(path);
	rmdir(dir);
}

static void write_seed(const char *file);

static void init(void)
{
	char err[256];

	if (store)
		return;
	snprintf(dir, sizeof(dir), "/dev/shm/fuzz-cache-%d", (int)getpid());
	snprintf(out_path, sizeof(out_path), "%s-export", dir);
	if (getenv("FUZZ_CACHE_SEED")) {
		write_seed(getenv("FUZZ_CACHE_SEED"));
		exit(0);
	}
	store = edg_store_open(dir, true, 4096, 64 << 20, err, sizeof(err));
	if (!store) {
		fprintf(stderr, "fuzz_cache: %s\n", err);
		abort();
	}
	remove_cache();
}

static void write_seed(const char *file)
{
	char img[128], err[256];
	uint8_t block[4096];
	FILE *f = NULL, *out = fopen(file, "wb");
	MDB_txn *txn;

	snprintf(img, sizeof(img), "%s-img", dir);
	if (out && (f = fopen(img, "wb"))) {
		for (int i = 0; i < 4; i++) {
			memset(block, i == 3 ? 1 : i + 1, sizeof(block)); /* the 4th chunk repeats the 1st */
			fwrite(block, 1, sizeof(block), f);
		}
		fclose(f);
	}
	struct edg_store *s = edg_store_open(dir, true, 4096, 64 << 20, err, sizeof(err));
	struct edg_add_report rep;
	if (!out || !s || edg_store_add_file(s, "img", img, &rep, NULL, NULL, err, sizeof(err)))
		abort();
	uint64_t size, n;
	uint8_t *d;
	if (edg_store_recipe(s, "img", &size, &d, &n) || edg_store_pin(s, "p1", d, n, 4000000000u, err, sizeof(err)))
		abort();
	free(d);
	unlink(img);
	const MDB_dbi dbi[5] = { s->chunk, s->meta, s->recipe, s->pin, s->info };
	if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))
		abort();
	for (unsigned i = 0; i < 5; i++) {
		MDB_cursor *c;
		MDB_val k, v;
		if (mdb_cursor_open(txn, dbi[i], &c))
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
	edg_store_close(s);
	remove_cache();
	fclose(out);
}

/*
 * The records, straight into LMDB under the store's API: every sub-database
 * emptied, the input's records put, then the store's own check of its info
 * record (a fresh info record when the input has none). false: the store
 * would refuse to open what the input left (nothing to use).
 */
static bool write_records(const uint8_t *data, size_t size)
{
	const MDB_dbi dbi[5] = { store->chunk, store->meta, store->recipe, store->pin, store->info };
	char err[256];
	MDB_txn *txn;

	if (mdb_txn_begin(store->env, NULL, 0, &txn))
		return false;
	struct info_rec fresh = { FORMAT, 4096 };
	MDB_val ik = { 4, "info" }, iv = { sizeof(fresh), &fresh };
	for (int i = 0; i < 5; i++)
		if (mdb_drop(txn, dbi[i], 0))
			goto abort;
	if (mdb_put(txn, store->info, &ik, &iv, 0))
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
	if (info_load(store, txn, dir, 0, err, sizeof(err)))
		goto abort;
	return mdb_txn_commit(txn) == 0;
abort:
	mdb_txn_abort(txn);
	return false;
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
	if (!write_records(data, size))
		return 0;
	struct edg_store *s = store;
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
	return 0;
}

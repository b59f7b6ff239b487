/*
 * edge/store: an edge's chunk cache on a real LMDB database. Images are cut
 * into chunks stored once; reference counts follow registrations; a corrupt
 * chunk is caught by its digest; gc never takes a referenced or pinned chunk,
 * also when several processes add, pin and collect at once; a full map
 * fails cleanly and leaves the store as it was.
 */
#include "edge/store.h"
#include "codecs/codecs.h"
#include "testlib.h"

#include <errno.h>
#include <lmdb.h>
#include <sys/wait.h>
#include <unistd.h>

#define CS (16u << 10) /* small chunks keep the images small */

/* An image of n chunks drawn from a pool of `pool` distinct chunk contents. */
static void write_image(const char *path, unsigned n, unsigned pool, unsigned tail)
{
	size_t len = (size_t)n * CS + tail;
	uint8_t *buf = malloc(len);

	for (unsigned i = 0; i < n; i++) {
		uint64_t pick = test_rand() % pool;
		memset(buf + (size_t)i * CS, 0, CS);
		memcpy(buf + (size_t)i * CS, &pick, sizeof(pick));
		buf[(size_t)i * CS + CS - 1] = (uint8_t)(pick * 7 + 1);
	}
	test_fill_random(buf + (size_t)n * CS, tail);
	test_write_file(path, buf, len);
	free(buf);
}

static struct edg_store *open_new(char **dir)
{
	char err[256];

	*dir = test_tmpdir();
	struct edg_store *s = edg_store_open(*dir, true, CS, 0, err, sizeof(err));
	assert_non_null(s);
	return s;
}

/* The store's database opened behind its back, in a write transaction. */
static MDB_env *open_raw(const char *dir, MDB_txn **txn)
{
	MDB_env *env;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_set_mapsize(env, 1ull << 40), 0);
	assert_int_equal(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, txn), 0);
	return env;
}

static void put_raw(MDB_env *env, MDB_txn *txn, const char *db, MDB_val *k, MDB_val *v)
{
	MDB_dbi dbi;

	assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
	assert_int_equal(mdb_put(txn, dbi, k, v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

/* Overwrite a chunk's bytes behind the store's back (a disk that lost bits). */
static void corrupt_chunk(const char *dir, const uint8_t *digest)
{
	MDB_txn *txn;
	MDB_env *env = open_raw(dir, &txn);
	MDB_dbi dbi;
	MDB_val k = { EDG_DIGEST_LEN, (void *)digest }, v;

	assert_int_equal(mdb_dbi_open(txn, "chunk", 0, &dbi), 0);
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	uint8_t *copy = malloc(v.mv_size);
	memcpy(copy, v.mv_data, v.mv_size);
	copy[v.mv_size / 2] ^= 0x40;
	MDB_val nv = { v.mv_size, copy };
	put_raw(env, txn, "chunk", &k, &nv);
	free(copy);
}

static void test_add_dedup_and_refs(void **state)
{
	(void)state;
	char *dir, a[300], b[300], err[256];
	struct edg_store *s = open_new(&dir);
	struct edg_add_report rep;
	struct edg_stat st;

	snprintf(a, sizeof(a), "%s/a.img", dir);
	snprintf(b, sizeof(b), "%s/b.img", dir);
	write_image(a, 64, 16, 1000); /* 64 chunks of 16 contents + a short random tail */
	assert_int_equal(edg_store_add_file(s, "a", a, &rep, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(rep.chunks, 65);
	assert_true(rep.new_chunks <= 17 && rep.new_chunks >= 2);
	uint64_t first_new = rep.new_chunks;

	/* the same image again: nothing new, counts unchanged */
	assert_int_equal(edg_store_add_file(s, "a", a, &rep, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(rep.new_chunks, 0);
	assert_int_equal(edg_store_stat(s, &st, err, sizeof(err)), 0);
	assert_int_equal(st.chunks, first_new);
	assert_int_equal(st.images, 1);
	assert_int_equal(st.referenced_chunks, first_new);

	/* the recipe lists every chunk in order; the short tail has its own size */
	uint64_t size, n;
	uint8_t *d;
	size_t len;
	uint8_t *img = test_read_file(a, &len);
	assert_int_equal(edg_store_recipe(s, "a", &size, &d, &n), 0);
	assert_int_equal(size, len);
	assert_int_equal(n, 65);
	uint8_t buf[CS];
	uint32_t got;
	for (uint64_t i = 0; i < n; i++) {
		assert_int_equal(edg_store_get(s, d + i * EDG_DIGEST_LEN, buf, sizeof(buf), &got), 0);
		assert_int_equal(got, i < 64 ? CS : 1000);
		assert_memory_equal(buf, img + i * CS, got);
	}
	/* a sender names the image the same way without a cache (its chunk recipe) */
	uint8_t *mine = malloc(n * EDG_DIGEST_LEN);
	edg_chunk_digests(img, len, CS, mine);
	assert_memory_equal(mine, d, n * EDG_DIGEST_LEN);
	free(mine);
	free(img);

	/* a second image sharing contents: refs 2 on shared chunks, 1 on the rest */
	write_image(b, 32, 16, 0);
	assert_int_equal(edg_store_add_file(s, "b", b, &rep, NULL, NULL, err, sizeof(err)), 0);
	struct edg_chunk_meta m;
	uint8_t *db;
	uint64_t nb;
	assert_int_equal(edg_store_recipe(s, "b", &size, &db, &nb), 0);
	for (uint64_t i = 0; i < nb; i++) {
		assert_int_equal(edg_store_meta(s, db + i * EDG_DIGEST_LEN, &m), 0);
		bool in_a = false;
		for (uint64_t j = 0; j < n; j++)
			in_a |= !memcmp(d + j * EDG_DIGEST_LEN, db + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
		assert_int_equal(m.refs, in_a ? 2 : 1);
	}
	/* removing a: b's chunks keep one reference, a's own ones none */
	assert_int_equal(edg_store_remove_image(s, "a", err, sizeof(err)), 0);
	assert_int_equal(edg_store_meta(s, db, &m), 0);
	assert_int_equal(m.refs, 1);
	assert_int_equal(edg_store_meta(s, d + 64 * EDG_DIGEST_LEN, &m), 0); /* a's random tail */
	assert_int_equal(m.refs, 0);
	assert_int_equal(edg_store_remove_image(s, "a", err, sizeof(err)), -ENOENT);
	free(d);
	free(db);
	edg_store_close(s);
}

static void test_corrupt_chunk_caught(void **state)
{
	(void)state;
	char *dir, a[300], err[256];
	struct edg_store *s = open_new(&dir);
	struct edg_add_report rep;
	uint8_t *d, buf[CS];
	uint64_t size, n, checked, bad;
	uint32_t got;

	snprintf(a, sizeof(a), "%s/a.img", dir);
	write_image(a, 8, 1000000, 0);
	assert_int_equal(edg_store_add_file(s, "a", a, &rep, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(edg_store_recipe(s, "a", &size, &d, &n), 0);
	edg_store_close(s);
	corrupt_chunk(dir, d + 3 * EDG_DIGEST_LEN);
	corrupt_chunk(dir, d + 5 * EDG_DIGEST_LEN);
	s = edg_store_open(dir, false, 0, 0, err, sizeof(err));
	assert_non_null(s);

	/* a read catches it, drops the bytes and keeps the reference */
	assert_int_equal(edg_store_get(s, d + 3 * EDG_DIGEST_LEN, buf, sizeof(buf), &got), -EBADMSG);
	assert_false(edg_store_has(s, d + 3 * EDG_DIGEST_LEN));
	assert_int_equal(edg_store_get(s, d + 3 * EDG_DIGEST_LEN, buf, sizeof(buf), &got), -ENOENT);
	/* verify finds the other one; the rest is fine */
	assert_int_equal(edg_store_verify(s, &checked, &bad, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(checked, 7);
	assert_int_equal(bad, 1);
	assert_false(edg_store_has(s, d + 5 * EDG_DIGEST_LEN));
	/* fetched again: back, with its reference */
	size_t len;
	uint8_t *img = test_read_file(a, &len);
	bool added;
	assert_int_equal(edg_store_put(s, d + 3 * EDG_DIGEST_LEN, img + 3 * CS, CS, &added, err, sizeof(err)), 0);
	assert_true(added);
	struct edg_chunk_meta m;
	assert_int_equal(edg_store_meta(s, d + 3 * EDG_DIGEST_LEN, &m), 0);
	assert_int_equal(m.refs, 1);
	assert_int_equal(edg_store_get(s, d + 3 * EDG_DIGEST_LEN, buf, sizeof(buf), &got), 0);
	assert_memory_equal(buf, img + 3 * CS, CS);
	/* a have query by prefix: held, dropped (5), fetched again (3), unknown; 8 and 32 bytes */
	uint8_t pre[4 * EDG_DIGEST_LEN], bits[1];
	for (unsigned plen = EDG_PREFIX_MIN; plen <= EDG_DIGEST_LEN; plen += EDG_DIGEST_LEN - EDG_PREFIX_MIN) {
		memcpy(pre, d + 2 * EDG_DIGEST_LEN, plen);
		memcpy(pre + plen, d + 5 * EDG_DIGEST_LEN, plen);
		memcpy(pre + 2 * plen, d + 3 * EDG_DIGEST_LEN, plen);
		for (unsigned k = 0; k < plen; k++)
			pre[3 * plen + k] = d[k] ^ 0xa5;
		assert_int_equal(edg_store_has_prefixes(s, pre, 4, plen, bits), 0);
		assert_int_equal(bits[0], 0x5);
	}
	assert_int_equal(edg_store_has_prefixes(s, pre, 4, EDG_PREFIX_MIN - 1, bits), -EINVAL);
	free(img);
	free(d);
	edg_store_close(s);
}

static void test_gc_quota_pins_grace(void **state)
{
	(void)state;
	char *dir, a[300], err[256];
	struct edg_store *s = open_new(&dir);
	struct edg_add_report rep;
	struct edg_gc_report g;
	uint8_t *d;
	uint64_t size, n;

	snprintf(a, sizeof(a), "%s/a.img", dir);
	write_image(a, 20, 1000000, 0); /* 20 distinct chunks */
	assert_int_equal(edg_store_add_file(s, "a", a, &rep, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(edg_store_recipe(s, "a", &size, &d, &n), 0);

	/* referenced: nothing to collect, and the quota cannot be met */
	assert_int_equal(edg_store_gc(s, 5 * CS, 0, NULL, &g, err, sizeof(err)), -ENOSPC);
	assert_int_equal(g.deleted_chunks, 0);
	assert_int_equal(g.kept_referenced_bytes, 20 * CS);
	assert_non_null(strstr(err, "referenced"));

	/* unregistered, chunks 0-4 pinned by a handoff in flight, 5-9 by an expired one */
	assert_int_equal(edg_store_pin(s, "handoff-1", d, 5, (uint64_t)time(NULL) + 3600, err, sizeof(err)), 0);
	assert_int_equal(edg_store_pin(s, "handoff-0", d + 5 * EDG_DIGEST_LEN, 5, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_store_remove_image(s, "a", err, sizeof(err)), 0);
	/* within the grace period nothing unreferenced goes */
	assert_int_equal(edg_store_gc(s, 0, 3600, NULL, &g, err, sizeof(err)), -ENOSPC);
	assert_int_equal(g.deleted_chunks, 0);
	/* no grace: down to the quota, never a pinned chunk; the expired pin is gone */
	assert_int_equal(edg_store_gc(s, 8 * CS, 0, NULL, &g, err, sizeof(err)), 0);
	assert_int_equal(g.deleted_chunks, 12);
	assert_int_equal(g.after_bytes, 8 * CS);
	for (int i = 0; i < 5; i++)
		assert_true(edg_store_has(s, d + i * EDG_DIGEST_LEN));
	struct edg_stat st;
	assert_int_equal(edg_store_stat(s, &st, err, sizeof(err)), 0);
	assert_int_equal(st.pins, 1);
	assert_int_equal(st.pinned_chunks, 5);
	/* unpinned: all may go */
	assert_int_equal(edg_store_unpin(s, "handoff-1", err, sizeof(err)), 0);
	assert_int_equal(edg_store_unpin(s, "handoff-1", err, sizeof(err)), -ENOENT);
	assert_int_equal(edg_store_gc(s, 0, 0, NULL, &g, err, sizeof(err)), 0);
	assert_int_equal(edg_store_stat(s, &st, err, sizeof(err)), 0);
	assert_int_equal(st.chunks, 0);
	assert_int_equal(st.bytes, 0);
	free(d);
	edg_store_close(s);
}

/*
 * The coordinator is asked with no write lock held (a slow Redis would
 * stall every add and handoff on the edge): here the filter itself pins a
 * chunk, as a handoff starting meanwhile would, which would deadlock on
 * LMDB's writer lock if gc still held it; the chunk pinned meanwhile stays.
 */
struct pin_while_asked {
	struct edg_store *s;
	const uint8_t *digest;
	int calls;
};

static int pin_while_asked(void *ctx, const uint8_t *digests, uint64_t n, bool *ok)
{
	struct pin_while_asked *p = ctx;
	char err[256];

	(void)digests;
	if (p->calls++ == 0 && edg_store_pin(p->s, "late-handoff", p->digest, 1, (uint64_t)time(NULL) + 3600, err,
					   sizeof(err)))
		return -1;
	for (uint64_t i = 0; i < n; i++)
		ok[i] = true;
	return 0;
}

static void test_gc_asks_without_the_lock(void **state)
{
	(void)state;
	char *dir, a[300], err[256];
	struct edg_store *s = open_new(&dir);
	struct edg_add_report rep;
	struct edg_gc_report g;
	uint8_t *d;
	uint64_t size, n;

	snprintf(a, sizeof(a), "%s/a.img", dir);
	write_image(a, 10, 2000000, 0);
	assert_int_equal(edg_store_add_file(s, "a", a, &rep, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(edg_store_recipe(s, "a", &size, &d, &n), 0);
	assert_int_equal(edg_store_remove_image(s, "a", err, sizeof(err)), 0);
	struct pin_while_asked p = { .s = s, .digest = d + 3 * EDG_DIGEST_LEN };
	struct edg_gc_hooks h = { .filter = pin_while_asked, .ctx = &p };
	assert_int_equal(edg_store_gc(s, 0, 0, &h, &g, err, sizeof(err)), -ENOSPC);
	assert_int_equal(p.calls, 1);
	assert_int_equal(g.deleted_chunks, 9);
	assert_int_equal(g.kept_in_use_bytes, CS);
	assert_true(edg_store_has(s, d + 3 * EDG_DIGEST_LEN));
	assert_non_null(strstr(err, "taken while collecting"));
	free(d);
	edg_store_close(s);
}

/*
 * The keep policy orders what goes: the least worth first, whatever the
 * recency; a policy that cannot answer leaves least recently used first.
 */
struct worth_of {
	const uint8_t *digests; /* the image's chunks: chunk i is worth i */
	bool fail;
	uint64_t asked;
};

static int worth_by_position(void *ctx, const uint8_t *digests, uint64_t n, const uint64_t *age_s, double *worth)
{
	struct worth_of *w = ctx;

	(void)age_s;
	if (w->fail)
		return -1;
	w->asked += n;
	for (uint64_t i = 0; i < n; i++)
		for (unsigned k = 0; k < 10; k++)
			if (!memcmp(digests + i * EDG_DIGEST_LEN, w->digests + k * EDG_DIGEST_LEN, EDG_DIGEST_LEN))
				worth[i] = k;
	return 0;
}

static void test_gc_keep_policy_order(void **state)
{
	(void)state;
	char *dir, a[300], err[256];
	struct edg_store *s = open_new(&dir);
	struct edg_add_report rep;
	struct edg_gc_report g;
	uint8_t *d, buf[CS];
	uint64_t size, n;
	uint32_t len;

	snprintf(a, sizeof(a), "%s/a.img", dir);
	write_image(a, 10, 3000000, 0);
	assert_int_equal(edg_store_add_file(s, "a", a, &rep, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(edg_store_recipe(s, "a", &size, &d, &n), 0);
	assert_int_equal(n, 10);
	assert_int_equal(edg_store_remove_image(s, "a", err, sizeof(err)), 0);
	/* chunks 0-4 used later than 5-9 (times are whole seconds, and the add may end in the
	 * next one: two seconds apart): least recently used would take 5-9 first */
	sleep(2);
	for (int i = 0; i < 5; i++) { /* stored again: a use (a read alone does not count one) */
		assert_int_equal(edg_store_get(s, d + i * EDG_DIGEST_LEN, buf, sizeof(buf), &len), 0);
		assert_int_equal(edg_store_put(s, d + i * EDG_DIGEST_LEN, buf, len, NULL, err, sizeof(err)), 0);
	}
	struct worth_of w = { .digests = d };
	struct edg_gc_hooks h = { .rank = worth_by_position, .ctx = &w };
	assert_int_equal(edg_store_gc(s, 6 * CS, 0, &h, &g, err, sizeof(err)), 0);
	assert_true(g.ranked);
	assert_int_equal(w.asked, 10);
	assert_int_equal(g.deleted_chunks, 4);
	for (int i = 0; i < 10; i++)
		assert_int_equal(edg_store_has(s, d + i * EDG_DIGEST_LEN), i >= 4); /* the least worth went */
	/* no answer: least recently used first (5-9 before 4) */
	w.fail = true;
	assert_int_equal(edg_store_gc(s, 4 * CS, 0, &h, &g, err, sizeof(err)), 0);
	assert_true(g.rank_failed && !g.ranked);
	assert_int_equal(g.deleted_chunks, 2);
	assert_true(edg_store_has(s, d + 4 * EDG_DIGEST_LEN)); /* the one used later stays */
	int left = 0;
	for (int i = 5; i < 10; i++)
		left += edg_store_has(s, d + i * EDG_DIGEST_LEN);
	assert_int_equal(left, 3);
	free(d);
	edg_store_close(s);
}

/*
 * Several processes at once, each a random sequence of registrations,
 * removals, pins (a handoff in flight: its chunks must stay readable until it
 * unpins) and collections with no grace and a tight quota. Each pinned or
 * registered chunk it relies on is checked while it relies on it; at the end
 * every registered image is complete.
 */
static void test_random_interleavings(void **state)
{
	(void)state;
	char *dir, err[256];
	struct edg_store *s = open_new(&dir);
	enum { WORKERS = 3, STEPS = 60, IMAGES = 6 };
	char paths[IMAGES][300];

	for (int i = 0; i < IMAGES; i++) {
		snprintf(paths[i], sizeof(paths[i]), "%s/img%d", dir, i);
		write_image(paths[i], 24, 40, i % 2 ? 5000 : 0); /* variants sharing most contents */
	}
	edg_store_close(s);
	pid_t pids[WORKERS];
	for (int w = 0; w < WORKERS; w++) {
		if ((pids[w] = fork()) == 0) {
			srand((unsigned)test_rand() + (unsigned)w);
			struct edg_store *ws = edg_store_open(dir, false, 0, 0, err, sizeof(err));
			int failures = !ws;
			char pin_id[32];
			snprintf(pin_id, sizeof(pin_id), "handoff-%d", w);
			for (int step = 0; step < STEPS && ws; step++) {
				int op = rand() % 4, img = rand() % IMAGES;
				char name[16];
				snprintf(name, sizeof(name), "img%d", img);
				struct edg_add_report rep;
				struct edg_gc_report g;
				if (op == 0) {
					int r = edg_store_add_file(ws, name, paths[img], &rep, NULL, NULL, err, sizeof(err));
					failures += r != 0 && r != -EAGAIN;
				} else if (op == 1) {
					edg_store_remove_image(ws, name, err, sizeof(err));
				} else if (op == 2) {
					/* a handoff: pin what the image needs, check it all stays, collect meanwhile */
					uint8_t *d;
					uint64_t size, n;
					if (edg_store_recipe(ws, name, &size, &d, &n))
						continue;
					failures += edg_store_pin(ws, pin_id, d, n, (uint64_t)time(NULL) + 600, err,
								  sizeof(err)) != 0;
					/* what is there once pinned (another worker may have removed the image
					 * and collected before the pin) must stay, whatever gc does */
					bool *there = calloc(n, sizeof(*there));
					for (uint64_t i = 0; i < n; i++)
						there[i] = edg_store_has(ws, d + i * EDG_DIGEST_LEN);
					/* often the image is unregistered meanwhile: then the pin alone holds them */
					if (rand() % 2)
						edg_store_remove_image(ws, name, err, sizeof(err));
					edg_store_gc(ws, 0, 0, NULL, &g, err, sizeof(err));
					uint8_t buf[CS];
					uint32_t got;
					for (uint64_t i = 0; i < n; i++)
						if (there[i])
							failures += edg_store_get(ws, d + i * EDG_DIGEST_LEN, buf, sizeof(buf),
										  &got) != 0;
					free(there);
					failures += edg_store_unpin(ws, pin_id, err, sizeof(err)) != 0;
					free(d);
				} else {
					edg_store_gc(ws, (uint64_t)(rand() % 10) * CS, 0, NULL, &g, err, sizeof(err));
				}
			}
			edg_store_close(ws);
			_exit(failures ? 1 : 0);
		}
	}
	for (int w = 0; w < WORKERS; w++) {
		int st;
		assert_int_equal(waitpid(pids[w], &st, 0), pids[w]);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 0);
	}
	/* whatever is registered is whole, after one more collection with no grace */
	s = edg_store_open(dir, false, 0, 0, err, sizeof(err));
	assert_non_null(s);
	struct edg_gc_report g;
	edg_store_gc(s, 0, 0, NULL, &g, err, sizeof(err));
	for (int i = 0; i < IMAGES; i++) {
		char name[16];
		uint8_t *d, buf[CS];
		uint64_t size, n;
		uint32_t got;
		snprintf(name, sizeof(name), "img%d", i);
		if (edg_store_recipe(s, name, &size, &d, &n))
			continue;
		for (uint64_t j = 0; j < n; j++)
			assert_int_equal(edg_store_get(s, d + j * EDG_DIGEST_LEN, buf, sizeof(buf), &got), 0);
		free(d);
	}
	edg_store_close(s);
}

static void test_full_map_and_bad_input(void **state)
{
	(void)state;
	char *dir = test_tmpdir(), a[300], b[300], err[256];
	struct edg_add_report rep;

	/* a database bounded to 1 MiB: a 4 MiB image does not fit, the old state stays */
	struct edg_store *s = edg_store_open(dir, true, CS, 1u << 20, err, sizeof(err));
	assert_non_null(s);
	snprintf(a, sizeof(a), "%s/small.img", dir);
	snprintf(b, sizeof(b), "%s/big.img", dir);
	write_image(a, 4, 1000000, 0);
	write_image(b, 256, 1000000, 0);
	assert_int_equal(edg_store_add_file(s, "small", a, &rep, NULL, NULL, err, sizeof(err)), 0);
	assert_int_equal(edg_store_add_file(s, "small", b, &rep, NULL, NULL, err, sizeof(err)), -ENOSPC);
	assert_non_null(strstr(err, "MDB_MAP_FULL"));
	uint64_t size, n;
	uint8_t *d;
	assert_int_equal(edg_store_recipe(s, "small", &size, &d, &n), 0);
	assert_int_equal(n, 4); /* still the small image's recipe */
	free(d);
	edg_store_close(s);

	/* another chunk size than the store's; a missing cache; a bad name; a missing file */
	assert_null(edg_store_open(dir, false, 64u << 10, 0, err, sizeof(err)));
	assert_non_null(strstr(err, "16384-byte chunks"));
	char missing[320];
	snprintf(missing, sizeof(missing), "%s/nothing-here", dir);
	assert_null(edg_store_open(missing, false, 0, 0, err, sizeof(err)));
	assert_null(edg_store_open(dir, true, 5000, 0, err, sizeof(err)));
	s = edg_store_open(dir, false, 0, 0, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(edg_store_add_file(s, "", a, &rep, NULL, NULL, err, sizeof(err)), -EINVAL);
	assert_int_equal(edg_store_add_file(s, "x", missing, &rep, NULL, NULL, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "nothing-here"));
	edg_store_close(s);

	/* a damaged info record naming chunks of 0 bytes (every size divides by it): refused */
	MDB_txn *txn;
	MDB_env *env = open_raw(dir, &txn);
	uint32_t info[2] = { 1, 0 }; /* format 1, chunk size 0 */
	MDB_val k = { 4, "info" }, v = { sizeof(info), info };
	put_raw(env, txn, "info", &k, &v);
	assert_null(edg_store_open(dir, false, 0, 0, err, sizeof(err)));
	assert_non_null(strstr(err, "damaged index (chunk size 0)"));
}

int main(void)
{
	test_seed();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_dedup_and_refs),
		cmocka_unit_test(test_corrupt_chunk_caught),
		cmocka_unit_test(test_gc_quota_pins_grace),
		cmocka_unit_test(test_gc_asks_without_the_lock),
		cmocka_unit_test(test_gc_keep_policy_order),
		cmocka_unit_test(test_random_interleavings),
		cmocka_unit_test(test_full_map_and_bad_input),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Edge chunk store on LMDB (see store.h). Values are fixed host-order
 * records (an LMDB file is not portable across architectures anyway); the
 * "info" record names the format, so a future layout can refuse an old one.
 */
#include "store.h"
#include "codecs/codecs.h"
#include "engine/errbuf.h"
#include "engine/safefile.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define FORMAT 1
#define BATCH_BYTES (64u << 20) /* new chunk bytes per transaction while adding */
#define F_MISSING 1u            /* meta kept (refs, pins) but the bytes are gone */

struct meta_rec {
	uint32_t size, refs, pins, flags;
	uint64_t added_s, last_use_s, uses;
};

struct info_rec {
	uint32_t format, chunk_size;
};

struct recipe_hdr {
	uint64_t size, n;
	uint32_t chunk_size, pad;
};

struct pin_hdr {
	uint64_t expires_s, n;
};

struct edg_store {
	MDB_env *env;
	MDB_dbi chunk, meta, recipe, pin, info;
	uint32_t chunk_size;
	char path[4096];
};

/*
 * LMDB's codes as -errno for callers; the message keeps LMDB's words. A
 * write that found the filesystem full reaches us as EIO (LMDB calls a short
 * write that) or ENOSPC: when the cache's filesystem has next to nothing
 * left, say so.
 */
static int lmdb_fail(const struct edg_store *s, int rc, char *err, size_t errlen, const char *what)
{
	struct statvfs fs;

	if ((rc == EIO || rc == ENOSPC) && s && s->path[0] && !statvfs(s->path, &fs) &&
	    (uint64_t)fs.f_bavail * fs.f_frsize < (4u << 20)) {
		eng_set_err(err, errlen, "%s: no space left on the cache's filesystem (%llu KiB free)", what,
			    (unsigned long long)fs.f_bavail * fs.f_frsize >> 10);
		return -ENOSPC;
	}
	eng_set_err(err, errlen, "%s: %s", what, mdb_strerror(rc));
	if (rc == MDB_MAP_FULL)
		return -ENOSPC;
	return rc > 0 ? -rc : -EIO;
}

static uint64_t now_s(void)
{
	return (uint64_t)time(NULL);
}

void edg_digest_hex(const uint8_t d[EDG_DIGEST_LEN], char *out)
{
	for (int i = 0; i < EDG_DIGEST_LEN; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

static MDB_val val_of(const void *p, size_t len)
{
	return (MDB_val){ .mv_size = len, .mv_data = (void *)p };
}

static int digest_cmp(const void *a, const void *b)
{
	return memcmp(a, b, EDG_DIGEST_LEN);
}

/* Sorted copy of a digest list without repeats: reference counts count an image once. */
static uint8_t *unique_digests(const uint8_t *d, uint64_t n, uint64_t *out_n)
{
	uint8_t *u = malloc(n ? n * EDG_DIGEST_LEN : 1);
	uint64_t k = 0;

	if (!u)
		return NULL;
	if (n) {
		memcpy(u, d, n * EDG_DIGEST_LEN);
		qsort(u, n, EDG_DIGEST_LEN, digest_cmp);
	}
	for (uint64_t i = 0; i < n; i++)
		if (!k || memcmp(u + (k - 1) * EDG_DIGEST_LEN, u + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN))
			memmove(u + k++ * EDG_DIGEST_LEN, u + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
	*out_n = k;
	return u;
}

static bool sorted_has(const uint8_t *u, uint64_t n, const uint8_t *d)
{
	return n && bsearch(d, u, n, EDG_DIGEST_LEN, digest_cmp) != NULL;
}

uint8_t *edg_digests_minus(const uint8_t *a, uint64_t na, const uint8_t *b, uint64_t nb, uint64_t *n)
{
	uint64_t ua, ub, k = 0;
	uint8_t *sa = unique_digests(a, na, &ua), *sb = unique_digests(b, nb, &ub);

	if (!sa || !sb) {
		free(sa);
		free(sb);
		return NULL;
	}
	for (uint64_t i = 0; i < ua; i++)
		if (!sorted_has(sb, ub, sa + i * EDG_DIGEST_LEN))
			memmove(sa + k++ * EDG_DIGEST_LEN, sa + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
	free(sb);
	*n = k;
	return sa;
}

/* ---- open and close ----------------------------------------------------------- */

static bool chunk_size_ok(uint32_t size)
{
	return size >= EDG_CHUNK_MIN && size <= EDG_CHUNK_MAX && size % 4096 == 0;
}

/*
 * The info record: a new cache gets one (chunk_size, else the default); an
 * existing one must name this format and, if chunk_size is given, that size.
 * Sets s->chunk_size. 0, or -1 and err.
 */
static int info_load(struct edg_store *s, MDB_txn *txn, const char *dir, uint32_t chunk_size, char *err,
		     size_t errlen)
{
	MDB_val k = val_of("info", 4), v;
	struct info_rec in;
	int rc = mdb_get(txn, s->info, &k, &v);

	if (rc == MDB_NOTFOUND) {
		in = (struct info_rec){ FORMAT, chunk_size ? chunk_size : EDG_CHUNK_DEFAULT };
		v = val_of(&in, sizeof(in));
		if ((rc = mdb_put(txn, s->info, &k, &v, 0))) {
			lmdb_fail(s, rc, err, errlen, "cannot initialise the cache");
			return -1;
		}
	} else if (rc) {
		lmdb_fail(s, rc, err, errlen, "cannot read the cache's format");
		return -1;
	} else {
		if (v.mv_size != sizeof(in)) {
			eng_set_err(err, errlen, "cache %s: unknown index format", dir);
			return -1;
		}
		memcpy(&in, v.mv_data, sizeof(in));
		if (in.format != FORMAT) {
			eng_set_err(err, errlen, "cache %s: index format %u, this engine reads %u", dir, in.format, FORMAT);
			return -1;
		}
		if (!chunk_size_ok(in.chunk_size)) { /* a damaged record: every size below divides by it */
			eng_set_err(err, errlen, "cache %s: damaged index (chunk size %u)", dir, in.chunk_size);
			return -1;
		}
		if (chunk_size && chunk_size != in.chunk_size) {
			eng_set_err(err, errlen, "cache %s holds %u-byte chunks, not %u", dir, in.chunk_size, chunk_size);
			return -1;
		}
	}
	s->chunk_size = in.chunk_size;
	return 0;
}

struct edg_store *edg_store_open(const char *dir, bool create, uint32_t chunk_size, uint64_t map_bytes,
				 char *err, size_t errlen)
{
	struct edg_store *s = calloc(1, sizeof(*s));
	MDB_txn *txn = NULL;
	struct stat st;
	int rc;

	if (!s) {
		eng_set_err(err, errlen, "out of memory");
		return NULL;
	}
	if (chunk_size && !chunk_size_ok(chunk_size)) {
		eng_set_err(err, errlen, "chunk size %u: a multiple of 4 KiB from 4 KiB to 4 MiB", chunk_size);
		goto fail;
	}
	if (stat(dir, &st)) {
		if (errno != ENOENT || !create || mkdir(dir, 0700)) {
			eng_set_err(err, errlen, "cache %s: %s", dir,
				errno == ENOENT && !create ? "no such cache (cache add creates one)" : strerror(errno));
			goto fail;
		}
	} else if (!S_ISDIR(st.st_mode)) {
		eng_set_err(err, errlen, "cache %s: not a directory", dir);
		goto fail;
	}
	snprintf(s->path, sizeof(s->path), "%s/data.mdb", dir);
	if (!create && access(s->path, F_OK)) {
		eng_set_err(err, errlen, "cache %s: no data.mdb (cache add creates one)", dir);
		goto fail;
	}
	if ((rc = mdb_env_create(&s->env)) || (rc = mdb_env_set_maxdbs(s->env, 8)) ||
	    (rc = mdb_env_set_mapsize(s->env, map_bytes ? map_bytes : (1ull << 40)))) {
		lmdb_fail(s, rc, err, errlen, "cannot set up LMDB");
		goto fail;
	}
	if ((rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0600))) {
		lmdb_fail(s, rc, err, errlen, "cannot open the cache index");
		goto fail;
	}
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) ||
	    (rc = mdb_dbi_open(txn, "chunk", MDB_CREATE, &s->chunk)) ||
	    (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta)) ||
	    (rc = mdb_dbi_open(txn, "recipe", MDB_CREATE, &s->recipe)) ||
	    (rc = mdb_dbi_open(txn, "pin", MDB_CREATE, &s->pin)) ||
	    (rc = mdb_dbi_open(txn, "info", MDB_CREATE, &s->info))) {
		lmdb_fail(s, rc, err, errlen, "cannot open the cache index");
		goto fail;
	}
	if (info_load(s, txn, dir, chunk_size, err, errlen))
		goto fail;
	if ((rc = mdb_txn_commit(txn))) {
		txn = NULL;
		lmdb_fail(s, rc, err, errlen, "cannot initialise the cache");
		goto fail;
	}
	return s;
fail:
	if (txn)
		mdb_txn_abort(txn);
	if (s->env)
		mdb_env_close(s->env);
	free(s);
	return NULL;
}

void edg_store_close(struct edg_store *s)
{
	if (!s)
		return;
	mdb_env_close(s->env);
	free(s);
}

uint32_t edg_store_chunk_size(const struct edg_store *s)
{
	return s->chunk_size;
}

/* ---- chunks --------------------------------------------------------------------- */

/* A meta record as stored: a digest key and a record of exactly its size, or not trusted. */
static bool meta_of(const MDB_val *k, const MDB_val *v, struct meta_rec *m)
{
	if (k->mv_size != EDG_DIGEST_LEN || v->mv_size != sizeof(*m))
		return false;
	memcpy(m, v->mv_data, sizeof(*m));
	return true;
}

static int meta_read(MDB_txn *txn, struct edg_store *s, const uint8_t *d, struct meta_rec *m)
{
	MDB_val k = val_of(d, EDG_DIGEST_LEN), v;
	int rc = mdb_get(txn, s->meta, &k, &v);

	if (rc)
		return rc;
	return meta_of(&k, &v, m) ? 0 : MDB_CORRUPTED;
}

static int meta_write(MDB_txn *txn, struct edg_store *s, const uint8_t *d, const struct meta_rec *m)
{
	MDB_val k = val_of(d, EDG_DIGEST_LEN), v = val_of(m, sizeof(*m));

	return mdb_put(txn, s->meta, &k, &v, 0);
}

/* Put inside a write transaction; *added when the bytes were not there before. */
static int put_in(MDB_txn *txn, struct edg_store *s, const uint8_t *d, const void *data, uint32_t len,
		  bool *added)
{
	struct meta_rec m;
	uint64_t t = now_s();
	int rc = meta_read(txn, s, d, &m);

	*added = false;
	if (rc == MDB_NOTFOUND)
		m = (struct meta_rec){ .flags = F_MISSING, .added_s = t };
	else if (rc)
		return rc;
	if (m.flags & F_MISSING) {
		MDB_val k = val_of(d, EDG_DIGEST_LEN), v = { .mv_size = len };
		if ((rc = mdb_put(txn, s->chunk, &k, &v, MDB_RESERVE)))
			return rc;
		memcpy(v.mv_data, data, len);
		m.flags &= ~F_MISSING;
		m.size = len;
		m.added_s = t;
		*added = true;
	}
	m.last_use_s = t;
	m.uses++;
	return meta_write(txn, s, d, &m);
}

int edg_store_put(struct edg_store *s, const uint8_t d[EDG_DIGEST_LEN], const void *data, uint32_t len,
		  bool *added, char *err, size_t errlen)
{
	MDB_txn *txn;
	bool dummy;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot store a chunk");
	if ((rc = put_in(txn, s, d, data, len, added ? added : &dummy))) {
		mdb_txn_abort(txn);
		return lmdb_fail(s, rc, err, errlen, "cannot store a chunk");
	}
	if ((rc = mdb_txn_commit(txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot store a chunk");
	return 0;
}

int edg_store_meta(struct edg_store *s, const uint8_t d[EDG_DIGEST_LEN], struct edg_chunk_meta *out)
{
	MDB_txn *txn;
	struct meta_rec m;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
		return rc > 0 ? -rc : -EIO;
	rc = meta_read(txn, s, d, &m);
	mdb_txn_abort(txn);
	if (rc)
		return rc == MDB_NOTFOUND ? -ENOENT : -EIO;
	*out = (struct edg_chunk_meta){ .size = (m.flags & F_MISSING) ? 0 : m.size, .refs = m.refs,
					.pins = m.pins, .added_s = m.added_s, .last_use_s = m.last_use_s,
					.uses = m.uses };
	return (m.flags & F_MISSING) ? -ENOENT : 0;
}

bool edg_store_has(struct edg_store *s, const uint8_t d[EDG_DIGEST_LEN])
{
	struct edg_chunk_meta m;

	return edg_store_meta(s, d, &m) == 0;
}

int edg_store_has_prefixes(struct edg_store *s, const uint8_t *prefixes, uint32_t n, unsigned plen, uint8_t *bits)
{
	MDB_txn *txn;
	MDB_cursor *c;
	int rc;

	if (plen < EDG_PREFIX_MIN || plen > EDG_DIGEST_LEN)
		return -EINVAL;
	memset(bits, 0, ((size_t)n + 7) / 8);
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
		return rc > 0 ? -rc : -EIO;
	if ((rc = mdb_cursor_open(txn, s->meta, &c))) {
		mdb_txn_abort(txn);
		return rc > 0 ? -rc : -EIO;
	}
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *p = prefixes + (size_t)i * plen;
		/* the first digest at or after the prefix (a shorter key sorts first), and on
		 * while digests share it: any of them whose bytes are here answers */
		MDB_val k = val_of(p, plen), v;
		for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); !rc && k.mv_size >= plen && !memcmp(k.mv_data, p, plen);
		     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
			struct meta_rec m;
			if (meta_of(&k, &v, &m) && !(m.flags & F_MISSING)) {
				bits[i / 8] |= (uint8_t)(1u << (i % 8));
				break;
			}
		}
		if (rc && rc != MDB_NOTFOUND)
			break;
		rc = 0;
	}
	mdb_cursor_close(c);
	mdb_txn_abort(txn);
	return rc ? -EIO : 0;
}

/* The bytes are gone or wrong: drop them, keep what refers to them. */
static int drop_bytes(MDB_txn *txn, struct edg_store *s, const uint8_t *d)
{
	MDB_val k = val_of(d, EDG_DIGEST_LEN);
	struct meta_rec m;
	int rc = mdb_del(txn, s->chunk, &k, NULL);

	if (rc && rc != MDB_NOTFOUND)
		return rc;
	if ((rc = meta_read(txn, s, d, &m)))
		return rc == MDB_NOTFOUND ? 0 : rc;
	m.flags |= F_MISSING;
	return meta_write(txn, s, d, &m);
}

static int drop_corrupt(struct edg_store *s, const uint8_t *d)
{
	MDB_txn *txn;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		return rc;
	if ((rc = drop_bytes(txn, s, d))) {
		mdb_txn_abort(txn);
		return rc;
	}
	return mdb_txn_commit(txn);
}

int edg_store_get(struct edg_store *s, const uint8_t d[EDG_DIGEST_LEN], void *buf, uint32_t cap,
		  uint32_t *len)
{
	MDB_txn *txn;
	MDB_val k = val_of(d, EDG_DIGEST_LEN), v;
	uint8_t got[EDG_DIGEST_LEN];
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
		return rc > 0 ? -rc : -EIO;
	rc = mdb_get(txn, s->chunk, &k, &v);
	if (rc || v.mv_size > cap) {
		mdb_txn_abort(txn);
		return rc == MDB_NOTFOUND ? -ENOENT : rc ? -EIO : -EMSGSIZE;
	}
	memcpy(buf, v.mv_data, v.mv_size);
	*len = (uint32_t)v.mv_size;
	mdb_txn_abort(txn);
	cdc_sha256(buf, *len, got);
	if (memcmp(got, d, EDG_DIGEST_LEN)) {
		drop_corrupt(s, d);
		return -EBADMSG;
	}
	return 0;
}

/* ---- images --------------------------------------------------------------------- */

/* refs += delta for each digest of a sorted unique list that is not in `except`. */
static int adjust_refs(MDB_txn *txn, struct edg_store *s, const uint8_t *u, uint64_t n, const uint8_t *except,
		       uint64_t n_except, int delta, bool must_exist)
{
	for (uint64_t i = 0; i < n; i++) {
		const uint8_t *d = u + i * EDG_DIGEST_LEN;
		struct meta_rec m;
		int rc;

		if (sorted_has(except, n_except, d))
			continue;
		if ((rc = meta_read(txn, s, d, &m))) {
			if (rc == MDB_NOTFOUND && !must_exist)
				continue;
			return rc;
		}
		if (must_exist && (m.flags & F_MISSING))
			return MDB_NOTFOUND;
		m.refs = delta < 0 ? (m.refs ? m.refs - 1 : 0) : m.refs + 1;
		if ((rc = meta_write(txn, s, d, &m)))
			return rc;
	}
	return 0;
}

/* A recipe record: its header, then exactly the digests it counts (a damaged file is not trusted). */
static bool record_ok(const MDB_val *v, size_t hdr_len, struct recipe_hdr *h)
{
	if (v->mv_size < hdr_len)
		return false;
	memcpy(h, v->mv_data, hdr_len);
	return h->n <= (v->mv_size - hdr_len) / EDG_DIGEST_LEN && v->mv_size == hdr_len + h->n * EDG_DIGEST_LEN;
}

static bool pin_ok(const MDB_val *v, struct pin_hdr *h)
{
	if (v->mv_size < sizeof(*h))
		return false;
	memcpy(h, v->mv_data, sizeof(*h));
	return h->n <= (v->mv_size - sizeof(*h)) / EDG_DIGEST_LEN && v->mv_size == sizeof(*h) + h->n * EDG_DIGEST_LEN;
}

/* The unique digest list of the recipe stored under name, or NULL/0 if none. */
static int recipe_unique(MDB_txn *txn, struct edg_store *s, const char *name, uint8_t **u, uint64_t *n)
{
	MDB_val k = val_of(name, strlen(name)), v;
	struct recipe_hdr h;
	int rc = mdb_get(txn, s->recipe, &k, &v);

	*u = NULL;
	*n = 0;
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return rc;
	if (!record_ok(&v, sizeof(h), &h))
		return MDB_CORRUPTED;
	*u = unique_digests((const uint8_t *)v.mv_data + sizeof(h), h.n, n);
	return *u ? 0 : ENOMEM;
}

static bool name_ok(const char *name, char *err, size_t errlen)
{
	size_t l = strlen(name);

	if (!l || l > EDG_NAME_MAX) {
		eng_set_err(err, errlen, "image name '%s': 1 to %d bytes", name, EDG_NAME_MAX);
		return false;
	}
	return true;
}

/* Store one batch of chunks in one transaction. */
static int put_batch(struct edg_store *s, const uint8_t *data, const uint32_t *lens, const uint8_t *digests,
		     unsigned n, struct edg_add_report *rep)
{
	MDB_txn *txn;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		return rc;
	for (unsigned i = 0; i < n; i++) {
		bool added;
		if ((rc = put_in(txn, s, digests + i * EDG_DIGEST_LEN, data + (size_t)i * s->chunk_size, lens[i],
				 &added))) {
			mdb_txn_abort(txn);
			return rc;
		}
		if (added) {
			rep->new_chunks++;
			rep->new_bytes += lens[i];
		}
	}
	return mdb_txn_commit(txn);
}

/* The recipe and the reference counts, in one transaction. */
static int register_image(struct edg_store *s, const char *name, uint64_t size, const uint8_t *digests,
			  uint64_t n, char *err, size_t errlen)
{
	uint64_t nu = 0, nold = 0;
	uint8_t *u = unique_digests(digests, n, &nu), *old = NULL;
	MDB_txn *txn = NULL;
	int rc;

	if (!u) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) || (rc = recipe_unique(txn, s, name, &old, &nold)))
		goto fail;
	/* new references first: a chunk gc took meanwhile fails the add, nothing changes */
	if ((rc = adjust_refs(txn, s, u, nu, old, nold, +1, true))) {
		if (rc == MDB_NOTFOUND) {
			mdb_txn_abort(txn);
			free(u);
			free(old);
			eng_set_err(err, errlen, "a chunk of %s vanished while it was added (gc with no grace?): add it again",
				name);
			return -EAGAIN;
		}
		goto fail;
	}
	if ((rc = adjust_refs(txn, s, old, nold, u, nu, -1, false)))
		goto fail;
	MDB_val k = val_of(name, strlen(name)), v = { .mv_size = sizeof(struct recipe_hdr) + n * EDG_DIGEST_LEN };
	if ((rc = mdb_put(txn, s->recipe, &k, &v, MDB_RESERVE)))
		goto fail;
	struct recipe_hdr h = { .size = size, .n = n, .chunk_size = s->chunk_size };
	memcpy(v.mv_data, &h, sizeof(h));
	memcpy((uint8_t *)v.mv_data + sizeof(h), digests, n * EDG_DIGEST_LEN);
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc)
		goto fail;
	free(u);
	free(old);
	return 0;
fail:
	if (txn)
		mdb_txn_abort(txn);
	free(u);
	free(old);
	return lmdb_fail(s, rc, err, errlen, "cannot register the image");
}

void edg_chunk_digests(const uint8_t *data, uint64_t len, uint32_t chunk_size, uint8_t *out)
{
	for (uint64_t at = 0; at < len; at += chunk_size, out += EDG_DIGEST_LEN)
		cdc_sha256(data + at, len - at < chunk_size ? (size_t)(len - at) : chunk_size, out);
}

int edg_store_add_file(struct edg_store *s, const char *name, const char *path, struct edg_add_report *rep,
		       edg_progress_fn progress, void *ctx, char *err, size_t errlen)
{
	const unsigned per_read = (unsigned)(BATCH_BYTES / s->chunk_size);
	uint8_t *buf = NULL, *digests = NULL;
	uint32_t *lens = NULL;
	struct timespec t0, t1;
	struct stat st;
	uint64_t n, off = 0, i = 0;
	int fd, ret = 0, rc;

	memset(rep, 0, sizeof(*rep));
	if (!name_ok(name, err, errlen))
		return -EINVAL;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st)) {
		ret = -errno;
		eng_set_err(err, errlen, "cannot read %s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		eng_set_err(err, errlen, "%s: not a file", path);
		ret = -EINVAL;
		goto out;
	}
	/* a block device's stat size is 0: its end is its size */
	off_t end = S_ISBLK(st.st_mode) ? lseek(fd, 0, SEEK_END) : st.st_size;
	if (end < 0) {
		ret = -errno;
		eng_set_err(err, errlen, "cannot size %s: %s", path, strerror(errno));
		goto out;
	}
	rep->size = (uint64_t)end;
	n = (rep->size + s->chunk_size - 1) / s->chunk_size;
	buf = malloc((size_t)per_read * s->chunk_size);
	lens = malloc(per_read * sizeof(*lens));
	digests = malloc(n ? n * EDG_DIGEST_LEN : 1);
	if (!buf || !lens || !digests) {
		eng_set_err(err, errlen, "out of memory for %s (%llu chunks)", path, (unsigned long long)n);
		ret = -ENOMEM;
		goto out;
	}
	while (i < n) {
		size_t want = (size_t)(rep->size - off < (uint64_t)per_read * s->chunk_size
					       ? rep->size - off
					       : (uint64_t)per_read * s->chunk_size);
		size_t got = 0;
		while (got < want) {
			ssize_t r = pread(fd, buf + got, want - got, (off_t)(off + got));
			if (r <= 0) {
				ret = r ? -errno : -EIO;
				eng_set_err(err, errlen, "cannot read %s: %s", path, r ? strerror(errno) : "file shrank");
				goto out;
			}
			got += (size_t)r;
		}
		unsigned k = 0;
		edg_chunk_digests(buf, got, s->chunk_size, digests + i * EDG_DIGEST_LEN);
		for (size_t at = 0; at < got; at += s->chunk_size, k++, i++)
			lens[k] = (uint32_t)(got - at < s->chunk_size ? got - at : s->chunk_size);
		if ((rc = put_batch(s, buf, lens, digests + (i - k) * EDG_DIGEST_LEN, k, rep))) {
			ret = lmdb_fail(s, rc, err, errlen, "cannot store chunks");
			goto out;
		}
		off += got;
		if (progress)
			progress(ctx, off, rep->size);
	}
	rep->chunks = n;
	ret = register_image(s, name, rep->size, digests, n, err, errlen);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	free(lens);
	free(digests);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	rep->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	return ret;
}

int edg_store_put_many(struct edg_store *s, uint64_t n, const uint8_t *digests, const uint8_t *const *data,
		       const uint32_t *lens, uint64_t *added, char *err, size_t errlen)
{
	MDB_txn *txn;
	uint64_t k = 0;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot store chunks");
	for (uint64_t i = 0; i < n; i++) {
		bool a;
		if ((rc = put_in(txn, s, digests + i * EDG_DIGEST_LEN, data[i], lens[i], &a))) {
			mdb_txn_abort(txn);
			return lmdb_fail(s, rc, err, errlen, "cannot store chunks");
		}
		k += a;
	}
	if ((rc = mdb_txn_commit(txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot store chunks");
	if (added)
		*added = k;
	return 0;
}

int edg_store_touch(struct edg_store *s, const uint8_t *digests, uint64_t n, char *err, size_t errlen)
{
	uint64_t t = now_s();
	MDB_txn *txn;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot note chunk uses");
	for (uint64_t i = 0; i < n; i++) {
		struct meta_rec m;
		const uint8_t *d = digests + i * EDG_DIGEST_LEN;
		if ((rc = meta_read(txn, s, d, &m)) == MDB_NOTFOUND || (!rc && (m.flags & F_MISSING)))
			continue; /* gone meanwhile: nothing to note */
		if (rc)
			break;
		m.last_use_s = t;
		m.uses++;
		if ((rc = meta_write(txn, s, d, &m)))
			break;
	}
	if (rc && rc != MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		return lmdb_fail(s, rc, err, errlen, "cannot note chunk uses");
	}
	if ((rc = mdb_txn_commit(txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot note chunk uses");
	return 0;
}

int edg_store_missing(struct edg_store *s, const uint8_t *digests, uint64_t n, bool *missing, uint64_t *n_missing)
{
	MDB_txn *txn;
	int rc;

	*n_missing = 0;
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
		return rc > 0 ? -rc : -EIO;
	for (uint64_t i = 0; i < n; i++) {
		struct meta_rec m;
		rc = meta_read(txn, s, digests + i * EDG_DIGEST_LEN, &m);
		if (rc && rc != MDB_NOTFOUND) {
			mdb_txn_abort(txn);
			return -EIO;
		}
		missing[i] = rc == MDB_NOTFOUND || (m.flags & F_MISSING);
		*n_missing += missing[i];
	}
	mdb_txn_abort(txn);
	return 0;
}

int edg_store_register(struct edg_store *s, const char *name, uint64_t size, const uint8_t *digests, uint64_t n,
		       char *err, size_t errlen)
{
	if (!name_ok(name, err, errlen))
		return -EINVAL;
	if (n != (size + s->chunk_size - 1) / s->chunk_size) {
		eng_set_err(err, errlen, "recipe of %s: %llu chunks for %llu bytes of %u-byte chunks", name,
			    (unsigned long long)n, (unsigned long long)size, s->chunk_size);
		return -EINVAL;
	}
	return register_image(s, name, size, digests, n, err, errlen);
}

int edg_store_export(struct edg_store *s, const char *name, const char *path, char *err, size_t errlen)
{
	uint8_t *d = NULL, *buf = malloc(s->chunk_size);
	struct eng_outfile out = { .fd = -1 };
	uint64_t size, n;
	int r;

	if (!buf) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if ((r = edg_store_recipe(s, name, &size, &d, &n))) {
		eng_set_err(err, errlen, "no image '%s' in the cache", name);
		free(buf);
		return r;
	}
	if ((r = eng_outfile_create(&out, path, 0644, err, errlen)))
		goto out;
	for (uint64_t i = 0; i < n; i++) {
		uint32_t len;
		if ((r = edg_store_get(s, d + i * EDG_DIGEST_LEN, buf, s->chunk_size, &len))) {
			char hex[2 * EDG_DIGEST_LEN + 1];
			edg_digest_hex(d + i * EDG_DIGEST_LEN, hex);
			eng_set_err(err, errlen, "%s: chunk %llu (%.16s...) is %s", name, (unsigned long long)i, hex,
				    r == -EBADMSG ? "corrupt (dropped: fetch it again)" : "missing");
			goto out;
		}
		uint64_t want = i + 1 < n ? s->chunk_size : size - i * s->chunk_size;
		if (len != want) {
			eng_set_err(err, errlen, "%s: chunk %llu has %u bytes, the recipe says %llu", name,
				    (unsigned long long)i, len, (unsigned long long)want);
			r = -EBADMSG;
			goto out;
		}
		ssize_t w = pwrite(out.fd, buf, len, (off_t)(i * s->chunk_size));
		if (w != (ssize_t)len) {
			r = w < 0 ? -errno : -ENOSPC; /* a short write: the disk is full */
			eng_set_err(err, errlen, "cannot write %s: %s", out.tmp, strerror(-r));
			goto out;
		}
	}
	if (ftruncate(out.fd, (off_t)size)) {
		r = -errno;
		eng_set_err(err, errlen, "cannot write %s: %s", out.tmp, strerror(errno));
		goto out;
	}
	r = eng_outfile_commit(&out, err, errlen);
out:
	if (out.fd >= 0)
		eng_outfile_abort(&out);
	free(buf);
	free(d);
	return r;
}

int edg_store_remove_image(struct edg_store *s, const char *name, char *err, size_t errlen)
{
	MDB_val k = val_of(name, strlen(name));
	uint8_t *old = NULL;
	uint64_t nold = 0;
	MDB_txn *txn;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot remove the image");
	if ((rc = recipe_unique(txn, s, name, &old, &nold)))
		goto fail;
	if (!old) {
		mdb_txn_abort(txn);
		eng_set_err(err, errlen, "no image '%s' in the cache", name);
		return -ENOENT;
	}
	if ((rc = adjust_refs(txn, s, old, nold, NULL, 0, -1, false)) || (rc = mdb_del(txn, s->recipe, &k, NULL)))
		goto fail;
	free(old);
	if ((rc = mdb_txn_commit(txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot remove the image");
	return 0;
fail:
	free(old);
	mdb_txn_abort(txn);
	return lmdb_fail(s, rc, err, errlen, "cannot remove the image");
}

int edg_store_recipe(struct edg_store *s, const char *name, uint64_t *size, uint8_t **digests, uint64_t *n)
{
	MDB_val k = val_of(name, strlen(name)), v;
	struct recipe_hdr h;
	MDB_txn *txn;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
		return rc > 0 ? -rc : -EIO;
	if ((rc = mdb_get(txn, s->recipe, &k, &v)) || !record_ok(&v, sizeof(h), &h)) {
		mdb_txn_abort(txn);
		return rc == MDB_NOTFOUND ? -ENOENT : -EIO;
	}
	*digests = malloc(h.n ? h.n * EDG_DIGEST_LEN : 1);
	if (*digests)
		memcpy(*digests, (uint8_t *)v.mv_data + sizeof(h), h.n * EDG_DIGEST_LEN);
	mdb_txn_abort(txn);
	if (!*digests)
		return -ENOMEM;
	*size = h.size;
	*n = h.n;
	return 0;
}

/* ---- pins ----------------------------------------------------------------------- */

/* pins += delta on each digest of a sorted unique list; a pin on an absent chunk keeps a placeholder. */
static int adjust_pins(MDB_txn *txn, struct edg_store *s, const uint8_t *u, uint64_t n, int delta)
{
	for (uint64_t i = 0; i < n; i++) {
		const uint8_t *d = u + i * EDG_DIGEST_LEN;
		struct meta_rec m;
		int rc = meta_read(txn, s, d, &m);

		if (rc == MDB_NOTFOUND) {
			if (delta < 0)
				continue;
			m = (struct meta_rec){ .flags = F_MISSING, .added_s = now_s() };
		} else if (rc) {
			return rc;
		}
		m.pins = delta < 0 ? (m.pins ? m.pins - 1 : 0) : m.pins + 1;
		if ((rc = meta_write(txn, s, d, &m)))
			return rc;
	}
	return 0;
}

/* Remove pin id (if any) inside txn, releasing its chunks. */
static int unpin_in(MDB_txn *txn, struct edg_store *s, const char *id, bool *found)
{
	MDB_val k = val_of(id, strlen(id)), v;
	struct pin_hdr h;
	uint64_t nu;
	int rc = mdb_get(txn, s->pin, &k, &v);

	*found = false;
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return rc;
	if (!pin_ok(&v, &h))
		return MDB_CORRUPTED;
	uint8_t *u = unique_digests((const uint8_t *)v.mv_data + sizeof(h), h.n, &nu);
	if (!u)
		return ENOMEM;
	rc = adjust_pins(txn, s, u, nu, -1);
	free(u);
	if (!rc)
		rc = mdb_del(txn, s->pin, &k, NULL);
	*found = true;
	return rc;
}

int edg_store_pin(struct edg_store *s, const char *id, const uint8_t *digests, uint64_t n, uint64_t expires_s,
		  char *err, size_t errlen)
{
	uint64_t nu;
	uint8_t *u;
	MDB_txn *txn;
	bool found;
	int rc;

	if (!name_ok(id, err, errlen))
		return -EINVAL;
	if (!(u = unique_digests(digests, n, &nu))) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		goto out;
	MDB_val k = val_of(id, strlen(id)), v = { .mv_size = sizeof(struct pin_hdr) + nu * EDG_DIGEST_LEN };
	if ((rc = unpin_in(txn, s, id, &found)) || (rc = adjust_pins(txn, s, u, nu, +1)) ||
	    (rc = mdb_put(txn, s->pin, &k, &v, MDB_RESERVE))) {
		mdb_txn_abort(txn);
		goto out;
	}
	struct pin_hdr h = { .expires_s = expires_s, .n = nu };
	memcpy(v.mv_data, &h, sizeof(h));
	memcpy((uint8_t *)v.mv_data + sizeof(h), u, nu * EDG_DIGEST_LEN);
	rc = mdb_txn_commit(txn);
out:
	free(u);
	return rc ? lmdb_fail(s, rc, err, errlen, "cannot pin chunks") : 0;
}

int edg_store_unpin(struct edg_store *s, const char *id, char *err, size_t errlen)
{
	MDB_txn *txn;
	bool found;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot unpin");
	if ((rc = unpin_in(txn, s, id, &found))) {
		mdb_txn_abort(txn);
		return lmdb_fail(s, rc, err, errlen, "cannot unpin");
	}
	if (!found) {
		mdb_txn_abort(txn);
		eng_set_err(err, errlen, "no pin '%s'", id);
		return -ENOENT;
	}
	if ((rc = mdb_txn_commit(txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot unpin");
	return 0;
}

/* Drop every pin whose time is up (a handoff that died without unpinning). */
static int expire_pins(MDB_txn *txn, struct edg_store *s, uint64_t now)
{
	for (;;) {
		MDB_cursor *c;
		MDB_val k, v;
		char id[EDG_NAME_MAX + 1] = "";
		size_t id_len = 0;
		int rc;

		if ((rc = mdb_cursor_open(txn, s->pin, &c)))
			return rc;
		for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
			struct pin_hdr h;
			/* a damaged record counts as expired: unpin_in then reports it */
			if ((!pin_ok(&v, &h) || h.expires_s <= now) && k.mv_size && k.mv_size <= EDG_NAME_MAX) {
				memcpy(id, k.mv_data, k.mv_size);
				id[k.mv_size] = 0;
				id_len = k.mv_size;
				break;
			}
		}
		mdb_cursor_close(c);
		if (rc && rc != MDB_NOTFOUND)
			return rc;
		if (!id_len)
			return 0;
		bool found = false;
		if (strlen(id) == id_len && (rc = unpin_in(txn, s, id, &found)))
			return rc;
		/* a key no pin id can name (a NUL inside, from a damaged store): drop it as it is,
		 * or this loop would find it again forever */
		MDB_val raw = val_of(id, id_len);
		if (!found && (rc = mdb_del(txn, s->pin, &raw, NULL)))
			return rc;
	}
}

/* ---- stat, verify, gc --------------------------------------------------------------- */

int edg_store_stat(struct edg_store *s, struct edg_stat *st, char *err, size_t errlen)
{
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val k, v;
	struct stat fs;
	MDB_stat ms;
	int rc;

	memset(st, 0, sizeof(*st));
	st->chunk_size = s->chunk_size;
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot read the cache");
	if ((rc = mdb_cursor_open(txn, s->meta, &c)))
		goto fail;
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		struct meta_rec m;
		if (!meta_of(&k, &v, &m))
			continue; /* damaged: never trusted, never collected */
		if (m.flags & F_MISSING) {
			st->referenced_missing += m.refs > 0;
			continue;
		}
		st->chunks++;
		st->bytes += m.size;
		if (m.refs) {
			st->referenced_chunks++;
			st->referenced_bytes += m.size;
		}
		if (m.pins) {
			st->pinned_chunks++;
			st->pinned_bytes += m.size;
		}
	}
	mdb_cursor_close(c);
	if ((rc = mdb_cursor_open(txn, s->recipe, &c)))
		goto fail;
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		struct recipe_hdr h;
		if (!record_ok(&v, sizeof(h), &h))
			continue;
		st->images++;
		st->image_bytes += h.size;
	}
	mdb_cursor_close(c);
	if ((rc = mdb_stat(txn, s->pin, &ms)))
		goto fail;
	st->pins = ms.ms_entries;
	mdb_txn_abort(txn);
	if (!stat(s->path, &fs))
		st->file_bytes = (uint64_t)fs.st_size;
	return 0;
fail:
	mdb_txn_abort(txn);
	return lmdb_fail(s, rc, err, errlen, "cannot read the cache");
}

int edg_store_verify(struct edg_store *s, uint64_t *checked, uint64_t *bad,
		     void (*on_bad)(void *ctx, const uint8_t digest[EDG_DIGEST_LEN]), void *ctx, char *err,
		     size_t errlen)
{
	uint8_t *bads = NULL, got[EDG_DIGEST_LEN];
	uint64_t nbad = 0, cap = 0;
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val k, v;
	int rc;

	*checked = *bad = 0;
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot read the cache");
	if ((rc = mdb_cursor_open(txn, s->chunk, &c))) {
		mdb_txn_abort(txn);
		return lmdb_fail(s, rc, err, errlen, "cannot read the cache");
	}
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		(*checked)++;
		if (k.mv_size != EDG_DIGEST_LEN)
			continue; /* not a chunk key (no writer makes one) */
		cdc_sha256(v.mv_data, v.mv_size, got);
		if (!memcmp(got, k.mv_data, EDG_DIGEST_LEN))
			continue;
		if (nbad == cap) {
			uint8_t *nb = realloc(bads, (cap = cap ? 2 * cap : 64) * EDG_DIGEST_LEN);
			if (!nb) {
				rc = ENOMEM;
				break;
			}
			bads = nb;
		}
		memcpy(bads + nbad++ * EDG_DIGEST_LEN, k.mv_data, EDG_DIGEST_LEN);
	}
	mdb_cursor_close(c);
	mdb_txn_abort(txn);
	if (rc && rc != MDB_NOTFOUND) {
		free(bads);
		return lmdb_fail(s, rc, err, errlen, "cannot read the cache");
	}
	if (nbad) {
		if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
			goto fail;
		for (uint64_t i = 0; i < nbad && !rc; i++)
			rc = drop_bytes(txn, s, bads + i * EDG_DIGEST_LEN);
		if (rc) {
			mdb_txn_abort(txn);
			goto fail;
		}
		if ((rc = mdb_txn_commit(txn)))
			goto fail;
		for (uint64_t i = 0; i < nbad && on_bad; i++)
			on_bad(ctx, bads + i * EDG_DIGEST_LEN);
	}
	*bad = nbad;
	free(bads);
	return 0;
fail:
	free(bads);
	return lmdb_fail(s, rc, err, errlen, "cannot drop corrupt chunks");
}

struct candidate {
	uint8_t digest[EDG_DIGEST_LEN];
	uint64_t last_use_s, uses; /* as listed: a use since shows in either */
	uint32_t size;             /* 0: a placeholder of dropped bytes */
	double worth;              /* the keep policy's (hooks->rank); 0 without one */
};

/* The least worth first; among equals, the least recently used. */
static int candidate_cmp(const void *a, const void *b)
{
	const struct candidate *x = a, *y = b;

	if (x->worth != y->worth)
		return x->worth < y->worth ? -1 : 1;
	return x->last_use_s < y->last_use_s ? -1 : x->last_use_s > y->last_use_s;
}

/* The keep policy's worth of each candidate; false when it could not answer (then LRU). */
static bool rank_candidates(const struct edg_gc_hooks *hooks, struct candidate *cand, uint64_t n, uint64_t now)
{
	uint8_t *d = malloc(n * EDG_DIGEST_LEN);
	uint64_t *age = malloc(n * sizeof(*age));
	double *worth = malloc(n * sizeof(*worth));
	bool ok = d && age && worth;

	for (uint64_t i = 0; ok && i < n; i++) {
		memcpy(d + i * EDG_DIGEST_LEN, cand[i].digest, EDG_DIGEST_LEN);
		age[i] = now > cand[i].last_use_s ? now - cand[i].last_use_s : 0;
	}
	ok = ok && !hooks->rank(hooks->ctx, d, n, age, worth);
	for (uint64_t i = 0; ok && i < n; i++)
		cand[i].worth = worth[i];
	free(d);
	free(age);
	free(worth);
	return ok;
}

/* Ask the filter about candidates in order, a batch at a time, until enough may go. */
#define FILTER_BATCH 4096

/* Still collectable under the write lock: nothing referenced, pinned or used it since the scan. */
static bool still_candidate(MDB_txn *txn, struct edg_store *s, const struct candidate *cd)
{
	MDB_val k = val_of(cd->digest, EDG_DIGEST_LEN), v;
	struct meta_rec m;

	if (mdb_get(txn, s->meta, &k, &v) || !meta_of(&k, &v, &m))
		return false;
	uint64_t last = m.last_use_s > m.added_s ? m.last_use_s : m.added_s;
	uint32_t size = (m.flags & F_MISSING) ? 0 : m.size;
	/* times have whole seconds: the count of uses and a refilled placeholder tell the rest */
	return !m.refs && !m.pins && last == cd->last_use_s && m.uses == cd->uses && size == cd->size;
}

/*
 * Three steps, so that no write lock is held while the coordinator is asked
 * (a slow or unreachable Redis would stall every add, fetch and handoff on
 * this edge): (1) expire pins and list what could go, (2) choose, asking the
 * filter with no transaction open, (3) delete what was chosen and is still
 * unreferenced, unpinned and unused since (1), in one write transaction.
 */
int edg_store_gc(struct edg_store *s, uint64_t keep_bytes, uint64_t grace_s, const struct edg_gc_hooks *hooks,
		 struct edg_gc_report *rep, char *err, size_t errlen)
{
	int (*filter)(void *, const uint8_t *, uint64_t, bool *) = hooks ? hooks->filter : NULL;
	void *filter_ctx = hooks ? hooks->ctx : NULL;
	uint8_t *gone = NULL; /* the deleted chunks' digests, for hooks->deleted */
	uint64_t ngone = 0;
	struct candidate *cand = NULL;
	uint64_t ncand = 0, cap = 0, now = now_s(), used = 0, goal;
	uint8_t *ask = NULL;
	bool *ok = NULL, *chosen = NULL;
	MDB_txn *txn = NULL;
	MDB_cursor *c;
	MDB_val k, v;
	int rc;

	memset(rep, 0, sizeof(*rep));
	/* (1) */
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		return lmdb_fail(s, rc, err, errlen, "cannot collect");
	if ((rc = expire_pins(txn, s, now)) || (rc = mdb_cursor_open(txn, s->meta, &c)))
		goto fail;
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		struct meta_rec m;
		if (!meta_of(&k, &v, &m))
			continue; /* damaged: never trusted, never collected */
		uint32_t size = (m.flags & F_MISSING) ? 0 : m.size;
		uint64_t last = m.last_use_s > m.added_s ? m.last_use_s : m.added_s;
		used += size;
		if (m.refs)
			rep->kept_referenced_bytes += size;
		else if (m.pins)
			rep->kept_pinned_bytes += size;
		else if (last > now || now - last < grace_s) /* no overflow with a huge grace */
			rep->kept_young_bytes += size;
		else {
			if (ncand == cap) {
				struct candidate *nc = realloc(cand, (cap = cap ? 2 * cap : 1024) * sizeof(*cand));
				if (!nc) {
					rc = ENOMEM;
					break;
				}
				cand = nc;
			}
			memcpy(cand[ncand].digest, k.mv_data, EDG_DIGEST_LEN);
			cand[ncand].last_use_s = last;
			cand[ncand].uses = m.uses;
			cand[ncand].worth = 0; /* least recently used first unless the keep policy answers */
			cand[ncand++].size = size;
		}
	}
	mdb_cursor_close(c);
	if (rc != MDB_NOTFOUND)
		goto fail;
	if ((rc = mdb_txn_commit(txn))) {
		txn = NULL;
		goto fail;
	}
	txn = NULL;
	rep->before_bytes = used;
	/* (2) */
	if (ncand && hooks && hooks->rank) {
		rep->ranked = rank_candidates(hooks, cand, ncand, now);
		rep->rank_failed = !rep->ranked;
	}
	if (ncand)
		qsort(cand, ncand, sizeof(*cand), candidate_cmp);
	if (!(chosen = calloc(ncand ? ncand : 1, sizeof(*chosen)))) {
		rc = ENOMEM;
		goto fail;
	}
	if (filter) {
		ok = malloc(FILTER_BATCH * sizeof(*ok));
		ask = malloc(FILTER_BATCH * EDG_DIGEST_LEN);
	}
	uint64_t asked_from = 0, asked_n = 0; /* the window of candidates ok[] answers */
	if (filter && (!ok || !ask))
		rep->filter_failed = true; /* nothing unapproved goes */
	goal = used;
	for (uint64_t i = 0; i < ncand; i++) {
		/* placeholders of dropped bytes go whatever the quota: nothing refers to them */
		if (goal <= keep_bytes && cand[i].size)
			continue;
		if (filter && cand[i].size) {
			if (i >= asked_from + asked_n && !rep->filter_failed) {
				asked_from = i;
				asked_n = ncand - i < FILTER_BATCH ? ncand - i : FILTER_BATCH;
				for (uint64_t x = 0; x < asked_n; x++)
					memcpy(ask + x * EDG_DIGEST_LEN, cand[i + x].digest, EDG_DIGEST_LEN);
				if (filter(filter_ctx, ask, asked_n, ok))
					rep->filter_failed = true;
			}
			if (rep->filter_failed || !ok[i - asked_from]) {
				rep->kept_by_filter_bytes += cand[i].size;
				continue;
			}
		}
		chosen[i] = true;
		goal -= cand[i].size;
	}
	/* (3) */
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		goto fail;
	for (uint64_t i = 0; i < ncand; i++) {
		if (!chosen[i])
			continue;
		if (!still_candidate(txn, s, &cand[i])) {
			rep->kept_in_use_bytes += cand[i].size; /* a handoff or an add took it meanwhile */
			continue;
		}
		MDB_val key = val_of(cand[i].digest, EDG_DIGEST_LEN);
		if ((rc = mdb_del(txn, s->meta, &key, NULL)) ||
		    ((rc = mdb_del(txn, s->chunk, &key, NULL)) && rc != MDB_NOTFOUND))
			goto fail;
		rc = 0;
		if (cand[i].size) {
			used -= cand[i].size;
			rep->deleted_chunks++;
			rep->deleted_bytes += cand[i].size;
			if (hooks && hooks->deleted) {
				if (!gone && !(gone = malloc(ncand * EDG_DIGEST_LEN))) {
					rc = ENOMEM;
					goto fail;
				}
				memcpy(gone + ngone++ * EDG_DIGEST_LEN, cand[i].digest, EDG_DIGEST_LEN);
			}
		}
	}
	free(cand);
	free(ok);
	free(ask);
	free(chosen);
	if ((rc = mdb_txn_commit(txn))) {
		free(gone);
		return lmdb_fail(s, rc, err, errlen, "cannot collect");
	}
	if (ngone)
		hooks->deleted(hooks->ctx, gone, ngone);
	free(gone);
	rep->after_bytes = used;
	if (used > keep_bytes) {
		eng_set_err(err, errlen,
			    "cannot reach %llu bytes: %llu referenced, %llu pinned, %llu younger than the grace period, "
			    "%llu kept by the coordinator, %llu taken while collecting",
			    (unsigned long long)keep_bytes, (unsigned long long)rep->kept_referenced_bytes,
			    (unsigned long long)rep->kept_pinned_bytes, (unsigned long long)rep->kept_young_bytes,
			    (unsigned long long)rep->kept_by_filter_bytes, (unsigned long long)rep->kept_in_use_bytes);
		return -ENOSPC;
	}
	return 0;
fail:
	free(cand);
	free(ok);
	free(ask);
	free(chosen);
	free(gone);
	if (txn)
		mdb_txn_abort(txn);
	return lmdb_fail(s, rc, err, errlen, "cannot collect");
}

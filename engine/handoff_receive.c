/*
 * Destination side of the VM handoff (design in handoff.h): apply the
 * stream to a copy of the base VM, check every object's digest, load the
 * result into QEMU (started with -incoming defer) and let it resume only
 * after the source committed. Nothing here resumes a VM on partial or
 * unverified state: QEMU gets the device state, which is what lets it run,
 * last, after the commit.
 */
#include "handoff.h"
#include "cache_base.h"
#include "cli_coord.h"
#include "edge/multi.h"
#include "cli.h"
#include "control.h"
#include "guard.h"
#include "io.h"
#include "conn.h"
#include "session.h"
#include "rejoin.h"
#include "engine/clock.h"
#include "uring_store.h"
#include "qemu_bridge/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct dst {
	const struct eng_receive_args *a;
	/* the base: a base VM directory (a->base_dir), or what an edge cache holds of the source's */
	struct eng_vmbase base;
	struct edg_store *cache;
	struct eng_base_plan plan;
	struct eng_cache_base cb;
	bool have_plan, have_cb;
	double fill_s, pinned_s; /* since t0: the cache's pin was last renewed */
	char lease_id[64];       /* the coordinator's lease on what the cache lacks, at every edge ("": none) */
	uint8_t *leased;         /* those chunks' digests (n_leased), fixed when first leased */
	uint64_t n_leased;
	const char *lease;       /* for the summary: "none", "taken", "failed" (then released or not) */
	bool coord_down;         /* a coordinator call failed: one line said so, none is tried again */
	const char *vm_registration; /* --vm-name: "not registered", "registered", "failed" */
	struct edg_sources fetch_src; /* --fetch-from and the coordinator's holders */
	struct edg_multi_report fetch;
	bool fetched;
	uint8_t bind_id[32];  /* the base's identity; zero for a cache: the plan names it */
	uint32_t cache_chunk; /* what this end offers: 0 (whole base) or the cache's chunk size */
	uint64_t base_size[ENG_VM_OBJECTS];
	const uint8_t *base_digests[ENG_VM_OBJECTS], *base_ids[ENG_VM_OBJECTS], *base_have[ENG_VM_OBJECTS];
	struct qb_qmp *qmp;
	int disk_fd, in_fd, mig_fd;
	struct eng_guard guard; /* a live handoff: feeds QEMU the device state on COMMIT, even if we die */
	struct eng_conn *conn; /* replaced under conn_lock: the rejoin thread may end it (retire) */
	pthread_mutex_t conn_lock;
	struct eng_rejoin *rejoin; /* tcp: with --retry-for, takes a source that comes back while conn looks open */
	atomic_bool retired;       /* rejoin ended conn: the source moved to a new connection */
	bool source_unheard;       /* after RESUMED the source did not close: it may ask again */
	uint8_t session[ENG_SESSION_LEN]; /* offered on conn: the stream's keys depend on it */
	struct eng_uring_file *disk;
	uint8_t *ram;
	size_t ram_len;
	char shared_id[256]; /* RAM block that ram maps straight from our QEMU's shared backend */
	uint64_t shared_off, shared_len; /* where in the RAM image (a cache receiver checks the stream's) */
	bool ram_in_place;                /* a cache receiver mapped it before its fill */
	bool base_in_shared;              /* the base's bytes of it were written into the backend file */
	struct eng_mem dev_out;
	struct timespec t0, last_progress;
	/* seconds since t0: stream verified, QEMU loaded (all but devices), commit, resumed */
	double t_verified, t_loaded, t_committed, t_resumed;
	bool loaded;
	/* link cuts (receive --retry-for) */
	enum eng_resume_state state;
	uint8_t handoff_id[32]; /* the first stream's salt: a resuming source names it */
	enum cdc_aead aead;
	bool have_id;
	unsigned resumes;
	double cut_s;
};

static double since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* disk-out must start as the base disk: unsent blocks are taken from it. */
static int check_disk_out(struct dst *d, char *err, size_t errlen)
{
	const struct trk_index *idx = d->base.index[ENG_VM_DISK];
	struct cdc_hasher *h = cdc_hasher_new();
	uint8_t *buf = malloc(1 << 20), digest[CDC_DIGEST_LEN];
	struct stat st;
	int ret = -EINVAL;

	d->disk_fd = open(d->a->disk_out, O_RDWR | O_CLOEXEC);
	if (d->disk_fd < 0 || fstat(d->disk_fd, &st)) {
		snprintf(err, errlen, "cannot open --disk-out %s: %s (make it a copy of %s first)",
			 d->a->disk_out, strerror(errno), d->base.path[ENG_VM_DISK]);
		goto out;
	}
	if ((uint64_t)st.st_size != trk_index_size(idx)) {
		snprintf(err, errlen, "--disk-out %s is not a copy of the base disk %s (size differs)",
			 d->a->disk_out, d->base.path[ENG_VM_DISK]);
		goto out;
	}
	if (!h || !buf) {
		snprintf(err, errlen, "out of memory");
		ret = -ENOMEM;
		goto out;
	}
	for (uint64_t off = 0; off < (uint64_t)st.st_size; off += 1 << 20) {
		ssize_t n = pread(d->disk_fd, buf, 1 << 20, (off_t)off);
		if (n <= 0) {
			snprintf(err, errlen, "cannot read --disk-out %s: %s", d->a->disk_out,
				 n < 0 ? strerror(errno) : "short file");
			goto out;
		}
		for (ssize_t b = 0; b < n; b += CDC_BLOCK_SIZE) {
			size_t len = (size_t)(n - b) < CDC_BLOCK_SIZE ? (size_t)(n - b) : CDC_BLOCK_SIZE;
			uint8_t blk[CDC_BLOCK_SIZE] = { 0 };
			memcpy(blk, buf + b, len);
			uint64_t bn = (off + (uint64_t)b) / CDC_BLOCK_SIZE;
			if (cdc_is_zero(blk, CDC_BLOCK_SIZE))
				memcpy(digest, cdc_zero_digest(), CDC_DIGEST_LEN);
			else
				cdc_hash_block(h, blk, digest);
			if (memcmp(digest, trk_index_digest(idx, bn), CDC_DIGEST_LEN)) {
				snprintf(err, errlen,
					 "--disk-out %s is not a copy of the base disk %s (block %llu differs)",
					 d->a->disk_out, d->base.path[ENG_VM_DISK], (unsigned long long)bn);
				goto out;
			}
		}
	}
	ret = 0;
out:
	cdc_hasher_free(h);
	free(buf);
	return ret;
}

/* --cache: the store, and disk-out as it is (its size is checked against the source's plan). */
static int open_cache(struct dst *d, char *err, size_t errlen)
{
	if (!(d->cache = edg_store_open(d->a->cache_dir, false, 0, 0, err, errlen)))
		return -EIO;
	d->cache_chunk = edg_store_chunk_size(d->cache);
	d->disk_fd = open(d->a->disk_out, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (d->disk_fd < 0) {
		snprintf(err, errlen, "cannot open --disk-out %s: %s (create it with the base disk's size first)",
			 d->a->disk_out, strerror(errno));
		return -errno;
	}
	return 0;
}

/* The source's plan of its base, and what the cache holds of it (pinned from here on). */
static int take_cache_plan(struct dst *d, char *err, size_t errlen)
{
	struct stat st;
	/* the source cuts its whole base into chunks first: as long as the wait for it */
	int ret = eng_base_plan_recv(d->conn, d->session, d->a->key, d->a->accept_timeout_s, &d->plan, err, errlen);

	if (ret)
		return ret;
	d->have_plan = true;
	const struct eng_plan_object *po = d->plan.obj;
	if (d->plan.nobj != ENG_VM_OBJECTS || po[ENG_VM_DEVICES].size > ENG_DEVICES_CAPACITY ||
	    po[ENG_VM_MEMORY].size > SIZE_MAX / 2) {
		snprintf(err, errlen, "the source's base plan is not a VM's (%u objects)", d->plan.nobj);
		return -EPROTO;
	}
	if (fstat(d->disk_fd, &st) || (uint64_t)st.st_size != po[ENG_VM_DISK].size) {
		snprintf(err, errlen, "--disk-out %s is %lld bytes, the VM's base disk %llu (make it that size first)",
			 d->a->disk_out, (long long)st.st_size, (unsigned long long)po[ENG_VM_DISK].size);
		return -EINVAL;
	}
	if ((ret = eng_cache_base_open(&d->cb, d->cache, &d->plan, ENG_CACHE_PIN_S, err, errlen)))
		return ret;
	d->have_cb = true;
	for (int o = 0; o < ENG_VM_OBJECTS; o++) {
		d->base_size[o] = po[o].size;
		d->base_ids[o] = po[o].id;
		d->base_digests[o] = d->cb.digests[o];
		d->base_have[o] = d->cb.block_have[o];
	}
	return 0;
}

static void fetch_progress(void *ctx, const struct edg_peer *p, unsigned n, uint64_t done, uint64_t total,
			   double secs)
{
	(void)ctx;
	(void)p;
	(void)n;
	cli_progress("receive: fetching from edges", done, total, 0, secs);
}

/* The coordinator failed: say so once, and go on without it for the rest of the handoff. */
static void coord_failed(struct dst *d, const char *doing, const char *why)
{
	if (d->coord_down)
		return;
	d->coord_down = true;
	fprintf(stderr, "%sreceive: warning: the coordinator failed (%s: %s); going on without it: "
		"the source sends what this cache lacks\n", d->a->progress ? "\r\033[K" : "", doing, why);
}

/*
 * What the cache lacks of the base, from the other edges that hold it, all at
 * once, before the source hears the chunk map: every chunk that arrives here
 * is one the source does not send. What no edge delivers, the source sends.
 */
static int fetch_from_edges(struct dst *d, char *err, size_t errlen)
{
	uint8_t *lack = NULL;
	uint64_t n = 0;
	char e[512];

	if (eng_cache_base_lacking(&d->cb, &lack, &n)) {
		snprintf(err, errlen, "out of memory listing what the cache lacks");
		return -ENOMEM;
	}
	if (d->a->fetch_from && edg_sources_add(&d->fetch_src, d->a->fetch_from, false, err, errlen)) {
		free(lack);
		return -EINVAL;
	}
	/* a failed ask may be one holder's bad address, not the coordinator: it stays in use */
	if (n && d->a->coord && !d->coord_down &&
	    edg_sources_ask_coordinator(&d->fetch_src, d->a->coord, lack, n, stderr, e, sizeof(e)))
		fprintf(stderr, "%sreceive: warning: asking the coordinator who holds what the cache lacks: %s "
			"(the source sends what no edge delivers)\n", d->a->progress ? "\r\033[K" : "", e);
	if (n && d->fetch_src.n) {
		/* the source waits 300 s plus a second per 20 MB of base for the map (handoff_send.c):
		 * the fetch stops asking at half a second per 20 MB, leaving the fill its share */
		double base = 0;
		for (unsigned o = 0; o < d->plan.nobj; o++)
			base += (double)d->plan.obj[o].size;
		int r = edg_fetch_set(d->cache, d->fetch_src.p, d->fetch_src.n, d->a->fetch_key ? d->a->fetch_key : d->a->key,
				      lack, n, d->a->fetch_timeout_s > 0 ? d->a->fetch_timeout_s : 2.0, 240 + base / 40e6,
				      &d->fetch, d->a->progress ? fetch_progress : NULL, NULL, e, sizeof(e));
		if (d->a->progress)
			cli_progress_end();
		if (r) { /* the store failed: the handoff can still take everything from the source */
			fprintf(stderr, "receive: warning: fetching from other edges failed: %s\n", e);
		} else {
			d->fetched = true;
			eng_cache_base_recheck(&d->cb);
			fprintf(stderr, "receive: fetched %llu of %llu lacking chunks (%.1f MB) from %u edges in %.1f s, "
					"longest stall %.2f s; the source sends the rest (%llu)\n",
				(unsigned long long)d->fetch.fetched_chunks, (unsigned long long)d->fetch.missing,
				d->fetch.fetched_raw_bytes / 1e6, d->fetch_src.n, d->fetch.seconds, d->fetch.stall_s,
				(unsigned long long)d->fetch.lost);
		}
	}
	free(lack);
	return 0;
}

static int map_shared_ram(struct dst *d, const struct qb_layout *layout, bool clear, int base_fd, char *err,
			  size_t errlen);

/*
 * What the cache holds goes into the results; then the source hears which
 * chunks that was. Our QEMU's shared RAM is mapped into the RAM image first,
 * where the source's plan says its base had it, so the fill and the stream
 * land in the VM's memory and the stop copies nothing.
 */
static int fill_from_cache(struct dst *d, char *err, size_t errlen)
{
	struct eng_cache_target t[ENG_VM_OBJECTS] = {
		[ENG_VM_DISK] = { .fd = d->disk_fd },
		[ENG_VM_MEMORY] = { .mem = d->ram },
		[ENG_VM_DEVICES] = { .mem = d->dev_out.data },
	};
	double t0 = since(&d->t0);
	int ret = fetch_from_edges(d, err, errlen);

	if (!ret && d->plan.ram.nblocks)
		ret = map_shared_ram(d, &d->plan.ram, true, -1, err, errlen);
	d->ram_in_place = d->shared_id[0] != 0;
	if (!ret)
		ret = eng_cache_base_fill(&d->cb, t, err, errlen);

	if (!ret)
		ret = eng_base_have_send(d->conn, d->session, d->a->key, &d->plan, d->cb.chunk_have, err, errlen);
	d->fill_s = since(&d->t0) - t0;
	if (!ret && d->a->progress)
		fprintf(stderr, "receive: the edge cache holds %.1f of %.1f MB of the source's base (filled in %.1f s)\n",
			(double)d->cb.held_bytes / 1e6, (double)(d->cb.held_bytes + d->cb.lacking_bytes) / 1e6, d->fill_s);
	return ret;
}

/* rejoin.h: the old connection goes, so that the receiving path sees the cut now */
static bool retire_conn(void *ctx)
{
	struct dst *d = ctx;

	pthread_mutex_lock(&d->conn_lock);
	bool had = d->conn != NULL;
	if (had) {
		atomic_store(&d->retired, true);
		eng_conn_shutdown(d->conn, SHUT_RDWR);
	}
	pthread_mutex_unlock(&d->conn_lock);
	return had;
}

static void set_conn(struct dst *d, struct eng_conn *c)
{
	pthread_mutex_lock(&d->conn_lock);
	struct eng_conn *old = d->conn;
	d->conn = c;
	pthread_mutex_unlock(&d->conn_lock);
	if (old)
		eng_conn_close(old);
}

/* tcp with --retry-for: one listener for the whole handoff (rejoin.h) */
static int open_rejoinable(struct dst *d, char *err, size_t errlen)
{
	struct eng_conn_listener *l = eng_conn_listen(d->a->from, NULL, err, errlen);
	bool timed_out;
	int ret;

	if (!l)
		return -ECONNREFUSED;
	if (!(d->conn = eng_conn_listener_accept(l, d->a->accept_timeout_s, &timed_out, err, errlen))) {
		eng_conn_listener_close(l);
		return -ECONNREFUSED;
	}
	if ((ret = eng_session_offer(d->conn, d->session, d->cache_chunk, err, errlen))) {
		eng_conn_listener_close(l);
		return ret;
	}
	struct eng_rejoin_args ra = { .key = d->a->key, .cache_chunk = d->cache_chunk, .progress = d->a->progress,
				      .retire = retire_conn, .ctx = d };
	return eng_rejoin_start(&d->rejoin, l, &ra, err, errlen);
}

static int open_source(struct dst *d, char *err, size_t errlen)
{
	const char *path;

	if (eng_conn_is_remote(d->a->from)) {
		struct eng_conn_bind b = { .key = d->a->key };
		memcpy(b.base_id, d->bind_id, sizeof(b.base_id));
		if (d->a->progress)
			fprintf(stderr, "receive: waiting for the source on %s\n", d->a->from);
		if (d->a->retry_for_s > 0 && !strncmp(d->a->from, "tcp:", 4))
			return open_rejoinable(d, err, errlen);
		d->conn = eng_conn_accept(d->a->from, &b, d->a->accept_timeout_s, err, errlen);
		if (!d->conn)
			return -ECONNREFUSED;
		return eng_session_offer(d->conn, d->session, d->cache_chunk, err, errlen);
	}
	if (eng_parse_location(d->a->from, &path, err, errlen))
		return -EINVAL;
	d->in_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (d->in_fd < 0) {
		snprintf(err, errlen, "cannot open overlay %s: %s", path, strerror(errno));
		return -errno;
	}
	return 0;
}

/*
 * With a coordinator, the handoff in flight leases the chunks this cache
 * lacks of the source's plan, so that no edge collects one this handoff may
 * still fetch; what this cache holds, its own pin keeps (a lease on the whole
 * plan cost a coordinator write per chunk on the critical path). A lease the
 * coordinator cannot take is one line, not a failure: the source sends what
 * no edge delivers. Released at the end (release true), whatever the outcome.
 */
static void coord_lease(struct dst *d, bool release)
{
	char err[256];
	int r = 0;

	if (!d->a->coord || !d->have_cb || (release && !d->lease_id[0]))
		return; /* no coordinator, or no lease ever asked for */
	/* a lease that failed may still hold its first batches, and a reply lost may hide a lease
	 * taken: the release is always tried (a dead coordinator fails it at once) */
	if (d->coord_down && !release)
		return;
	if (!d->lease_id[0]) {
		snprintf(d->lease_id, sizeof(d->lease_id), "receive-%d-%lld", (int)getpid(), (long long)time(NULL));
		if (eng_cache_base_lacking(&d->cb, &d->leased, &d->n_leased)) {
			snprintf(err, sizeof(err), "out of memory");
			r = -ENOMEM;
		}
	}
	if (!r)
		r = release ? edg_coord_release(d->a->coord, d->lease_id, d->leased, d->n_leased, err, sizeof(err))
			    : edg_coord_lease(d->a->coord, d->lease_id, d->leased, d->n_leased, ENG_CACHE_PIN_S, err,
					      sizeof(err));
	if (r)
		coord_failed(d, release ? "releasing the lease on what the cache lacks" : "leasing what the cache lacks",
			     err);
	if (!release && strcmp(d->lease, "taken")) /* a renewal that fails keeps what was taken */
		d->lease = r ? "failed" : "taken";
	else if (release)
		d->lease = r ? "not released" : "released";
}

/*
 * The VM runs here now: with --vm-name its registration at the coordinator
 * (vm:NAME, this edge) contains the chunks of the base it came against, so
 * they count as referenced by a running VM (keep policy, collection) until
 * it leaves (send --vm-name, cache vm-left). A failure is one line: the VM
 * runs all the same.
 */
static void coord_register_vm(struct dst *d)
{
	char err[256] = "coordinator unreachable earlier";
	uint64_t n = 0;
	int r = -EIO;

	if (!d->a->coord || !d->a->vm_name || !d->have_plan)
		return;
	uint8_t *all = eng_base_plan_digests(&d->plan, &n);
	if (!all)
		snprintf(err, sizeof(err), "out of memory");
	else if (!d->coord_down)
		r = edg_coord_register_vm(d->a->coord, d->a->vm_name, all, n, err, sizeof(err));
	free(all);
	d->vm_registration = r ? "failed" : "registered";
	if (r)
		fprintf(stderr, "receive: warning: the coordinator does not count VM %s as running here (%s); the VM "
				"runs all the same\n", d->a->vm_name, err);
}

/* A handoff that outlives its pin (link cuts) keeps its chunks all the same. */
static void renew_pin(struct dst *d)
{
	char err[256];

	if (!d->have_cb || since(&d->t0) - d->pinned_s < 3600)
		return;
	d->pinned_s = since(&d->t0);
	if (eng_cache_base_renew(&d->cb, ENG_CACHE_PIN_S, err, sizeof(err)))
		fprintf(stderr, "%sreceive: warning: cannot renew the edge cache's pin: %s\n",
			d->a->progress ? "\r\033[K" : "", err);
	coord_lease(d, false);
}

static void progress(void *ctx, const struct eng_patch_stats *st)
{
	struct dst *d = ctx;

	renew_pin(d);

	if (!d->a->progress || since(&d->last_progress) < 0.2)
		return;
	clock_gettime(CLOCK_MONOTONIC, &d->last_progress);
	fprintf(stderr, "\r\033[Kreceive: %5.1fs %llu segments, %.1f MB received, %llu blocks applied",
		since(&d->t0), (unsigned long long)st->segments, (double)st->wire_bytes / 1e6,
		(unsigned long long)st->records);
}

/*
 * The source sent its devices with x-ignore-shared: the RAM it left out was
 * applied straight into our QEMU's shared backend (map_shared_ram), so QEMU
 * loads only the devices and small ROM blocks.
 */
static int place_shared_ram(struct dst *d, struct qb_layout *layout, char *err, size_t errlen)
{
	for (unsigned b = 0; b < layout->nblocks; b++)
		if (d->shared_id[0] && !strcmp(layout->blocks[b].id, d->shared_id)) {
			layout->blocks[b].shared = true;
			return qb_migrate_ignore_shared(d->qmp, err, errlen) ? -EIO : 0;
		}
	snprintf(err, errlen, "the source migrated with x-ignore-shared: start the destination QEMU with the same shared memory backend (memory-backend-file,share=on)");
	return -EINVAL;
}

/* Our QEMU waits for a migration (-incoming defer): only then may its memory be written. */
static int qemu_waits(struct dst *d, char *err, size_t errlen)
{
	char status[64];

	if (qb_qmp_running(d->qmp, status, sizeof(status), err, errlen) < 0)
		return -EIO;
	if (strcmp(status, "inmigrate")) {
		snprintf(err, errlen, "destination QEMU is '%s', not waiting for a migration (start it with -incoming defer)",
			 status);
		return -EINVAL;
	}
	return 0;
}

/*
 * The block's bytes of the base RAM image (base_fd) into the backend file,
 * copied by the kernel from page cache to page cache: through the mapping,
 * each of the 65,536 pages of a 256 MiB VM cost a fault, a cleared page and
 * a copy (1.8 s here, on the critical path of a fast link); sendfile takes
 * about a tenth of that. False when the kernel cannot (the caller copies).
 */
static bool copy_base_block(int base_fd, off_t from, int fd, uint64_t len)
{
	off_t off = from;

	if (lseek(fd, 0, SEEK_SET))
		return false;
	while (len) {
		ssize_t n = sendfile(fd, base_fd, &off, len > (1u << 30) ? (1u << 30) : (size_t)len);
		if (n <= 0)
			return false;
		len -= (uint64_t)n;
	}
	return true;
}

/*
 * If our QEMU's RAM is a shared backend, the RAM image maps it in place, so
 * the stream's pages land in the VM's memory as they arrive and nothing is
 * copied after verification (QEMU, waiting with -incoming, does not touch
 * it; if the handoff fails it never runs on it). layout: the base's RAM
 * blocks. clear: the fill that follows writes only nonzero chunks, so the
 * backend starts as zeros (its pages dropped: a tmpfs or hugetlbfs file).
 * base_fd (or -1): the base RAM image, whose block is written into the
 * backend first (d->base_in_shared says whether it was).
 */
static int map_shared_ram(struct dst *d, const struct qb_layout *layout, bool clear, int base_fd, char *err,
			  size_t errlen)
{
	char id[256], path[4096];
	struct stat st;
	int ret = qb_find_shared_ram(d->qmp, id, sizeof(id), path, sizeof(path), err, errlen);

	if (ret == -ENOENT)
		return 0;
	if (ret)
		return ret;
	const struct qb_ram_block *blk = NULL;
	for (unsigned b = 0; b < layout->nblocks; b++)
		if (!strcmp(layout->blocks[b].id, id))
			blk = &layout->blocks[b];
	if (!blk || !blk->length || blk->image_off + blk->length > d->ram_len || blk->image_off % CDC_BLOCK_SIZE ||
	    blk->length % CDC_BLOCK_SIZE)
		return 0; /* not one this RAM image can map: copied at the end */
	/* a QEMU that runs a VM must keep its memory: only one waiting for this handoff is written */
	if ((ret = qemu_waits(d, err, errlen)))
		return ret;
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		snprintf(err, errlen, "cannot open the destination VM's RAM %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -EIO;
	}
	if ((uint64_t)st.st_size < blk->length) {
		close(fd);
		snprintf(err, errlen, "the destination QEMU's RAM (%s, %lld bytes) is smaller than the VM's (%llu): start it "
			 "as the VM was started", id, (long long)st.st_size, (unsigned long long)blk->length);
		return -EINVAL;
	}
	d->base_in_shared = base_fd >= 0 && copy_base_block(base_fd, (off_t)blk->image_off, fd, blk->length);
	/* a hugetlbfs backend maps only at its page size: copied at the end */
	bool aligned = st.st_blksize <= CDC_BLOCK_SIZE ||
		       ((uintptr_t)(d->ram + blk->image_off) % (uintptr_t)st.st_blksize == 0 &&
			blk->length % (uint64_t)st.st_blksize == 0);
	void *m = aligned ? mmap(d->ram + blk->image_off, blk->length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0)
			  : MAP_FAILED;
	int e = aligned ? errno : EINVAL;
	close(fd);
	if (m == MAP_FAILED) {
		/* a failed MAP_FIXED may leave the range unmapped: the RAM image gets its own pages back */
		if (aligned && mmap(d->ram + blk->image_off, blk->length, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
			snprintf(err, errlen, "out of memory for the VM's RAM image");
			return -ENOMEM;
		}
		if (clear) /* a cache receiver copies at the stop instead */
			return 0;
		snprintf(err, errlen, "cannot map the destination VM's RAM: %s", strerror(e));
		return -ENOMEM;
	}
	if (clear && madvise(m, blk->length, MADV_REMOVE))
		memset(m, 0, blk->length);
	snprintf(d->shared_id, sizeof(d->shared_id), "%s", id);
	d->shared_off = blk->image_off;
	d->shared_len = blk->length;
	return 0;
}

/*
 * A cache receiver mapped our QEMU's shared RAM where the plan said the base
 * had it: the stream's layout must put that block there too. Not mapped (a
 * plan without RAM blocks), the RAM the stream left out (x-ignore-shared)
 * goes into the shared backend now, in one write.
 */
static int copy_shared_ram(struct dst *d, const struct qb_layout *layout, char *err, size_t errlen)
{
	char id[256], path[4096];

	if (d->shared_id[0]) {
		for (unsigned b = 0; b < layout->nblocks; b++)
			if (!strcmp(layout->blocks[b].id, d->shared_id) && layout->blocks[b].image_off == d->shared_off &&
			    layout->blocks[b].length == d->shared_len)
				return 0;
		snprintf(err, errlen, "the VM's RAM block %s is not where the source's plan put it",
			 d->shared_id);
		return -EINVAL;
	}
	int ret = qb_find_shared_ram(d->qmp, id, sizeof(id), path, sizeof(path), err, errlen);

	if (ret)
		return ret == -ENOENT ? 0 : ret; /* place_shared_ram says what is wrong */
	for (unsigned b = 0; b < layout->nblocks; b++) {
		const struct qb_ram_block *blk = &layout->blocks[b];
		if (strcmp(blk->id, id))
			continue;
		if (blk->image_off + blk->length > d->ram_len) {
			snprintf(err, errlen, "the destination VM's RAM block %s lies outside the RAM image", id);
			return -EINVAL;
		}
		/* mapped, not written: one pwrite stops at 2 GiB, and hugetlbfs takes no writes */
		int fd = open(path, O_RDWR | O_CLOEXEC);
		void *m = fd < 0 ? MAP_FAILED : mmap(NULL, blk->length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		int e = errno;
		if (fd >= 0)
			close(fd);
		if (m == MAP_FAILED) {
			snprintf(err, errlen, "cannot map the destination VM's RAM %s: %s", path, strerror(e));
			return -EIO;
		}
		memcpy(m, d->ram + blk->image_off, blk->length);
		munmap(m, blk->length);
		snprintf(d->shared_id, sizeof(d->shared_id), "%s", id);
		return 0;
	}
	return 0;
}

/* Stream applied and verified: rebuild QEMU's stream, all but the device state. */
static int load_qemu(struct dst *d, const struct eng_patch_stats *st, struct qb_devstate *dev,
		     char *err, size_t errlen)
{
	struct qb_layout layout;
	char perr[200];
	int sv[2], ret;

	if (qb_devstate_decode(d->dev_out.data, st->size[ENG_VM_DEVICES], dev, perr, sizeof(perr)) ||
	    qb_devstate_layout(dev, &layout, perr, sizeof(perr))) {
		snprintf(err, errlen, "device state in the stream: %s", perr);
		return -EBADMSG;
	}
	if ((!d->cache && eng_vmbase_check_layout(&d->base, &layout, err, errlen)) ||
	    st->size[ENG_VM_MEMORY] != layout.image_size)
		return -EINVAL;
	if ((ret = qemu_waits(d, err, errlen)))
		return ret;
	if (layout.ignore_shared && ((d->cache && copy_shared_ram(d, &layout, err, errlen)) ||
				     place_shared_ram(d, &layout, err, errlen)))
		return -EINVAL;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
		snprintf(err, errlen, "socketpair: %s", strerror(errno));
		return -errno;
	}
	d->mig_fd = sv[0];
	ret = qb_migrate_incoming_fd(d->qmp, sv[1], "handoff-in", err, errlen);
	close(sv[1]);
	if (ret)
		return -EIO;
	if (d->conn && (ret = eng_guard_start_incoming(&d->guard, d->mig_fd, err, errlen)))
		return ret;
	/* the device state (tail) goes last, after the commit: without it QEMU cannot resume */
	if (qb_write_stream_ex(d->mig_fd, &layout, d->ram, dev, QB_WRITE_SKIP_ZERO | QB_WRITE_NO_TAIL,
			       perr, sizeof(perr))) {
		snprintf(err, errlen, "feeding the destination QEMU: %s", perr);
		return -EIO;
	}
	return d->conn ? eng_guard_hold_tail(&d->guard, dev->tail, dev->tail_len, err, errlen) : 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += (size_t)n;
	}
	return 0;
}

/* HANDOFF_FAULT=NAME: a failure tests/it_handoff asks for at this point. */
static bool fault_here(const char *name)
{
	const char *f = getenv("HANDOFF_FAULT");

	return f && !strcmp(f, name);
}

/* HANDOFF_FAULT=NAME: die here, as a SIGKILL would. */
static void fault_point(const char *name)
{
	if (fault_here(name))
		raise(SIGKILL);
}

/* The device state to QEMU (ours, or the guard's after a COMMIT), then wait until it runs. */
static int resume_qemu(struct dst *d, const struct qb_devstate *dev, double *resume_ts, char *err,
		       size_t errlen)
{
	int ret;

	if (d->guard.fd >= 0) {
		if ((ret = eng_guard_fed(&d->guard, err, errlen)))
			return ret;
	} else if ((ret = write_all(d->mig_fd, dev->tail, dev->tail_len))) {
		snprintf(err, errlen, "feeding the destination QEMU: %s", strerror(-ret));
		return ret;
	} else {
		shutdown(d->mig_fd, SHUT_WR);
	}
	/* RESUME, or "paused" for a QEMU started with -S (it loaded and waits for cont) */
	for (int i = 0; i < 1200; i++) {
		char status[64];
		if (qb_qmp_wait_event(d->qmp, "RESUME", 0.1, NULL, resume_ts, err, errlen) == 0)
			return 0;
		if (qb_qmp_running(d->qmp, status, sizeof(status), err, errlen) < 0)
			return -EIO;
		if (!strcmp(status, "running")) {
			/* the RESUME event may have been queued while we asked */
			qb_qmp_wait_event(d->qmp, "RESUME", 0.5, NULL, resume_ts, err, errlen);
			return 0;
		}
		if (!strcmp(status, "paused")) /* -S: loaded, left for the operator's cont */
			return 0;
		if (strcmp(status, "inmigrate")) {
			snprintf(err, errlen, "destination QEMU did not load the VM (state '%s')", status);
			return -EIO;
		}
	}
	snprintf(err, errlen, "destination QEMU did not finish loading the VM within 120 s");
	return -ETIMEDOUT;
}

/*
 * Verified and loaded: READY, then COMMIT, then the VM runs here. *cut: the
 * connection failed on the way (the source may come back and ask).
 */
static int commit_and_resume(struct dst *d, struct eng_control *ctl, const struct qb_devstate *dev,
			     double *resume_ts, bool *cut, char *err, size_t errlen)
{
	enum eng_msg_type type;
	char text[ENG_MSG_TEXT_MAX + 1];
	uint8_t byte;
	int ret;

	/* the guard watches for COMMIT too: a receive that dies before it reads it still hands the VM over */
	uint8_t commit[ENG_CONTROL_MSG_MAX];
	size_t commit_len = eng_control_expect(ctl, ENG_MSG_COMMIT, commit, sizeof(commit));
	if (commit_len && eng_conn_socket(ctl->conn) >= 0)
		eng_guard_watch_commit(&d->guard, eng_conn_socket(ctl->conn), commit, commit_len);
	if (!(ret = eng_control_send(ctl, ENG_MSG_READY, NULL)))
		fault_point("receive-dies-after-ready");
	if (ret || (ret = eng_control_recv(ctl, 60, &type, text, sizeof(text)))) {
		/* a COMMIT left unread in a connection we give up must never count later */
		eng_guard_unwatch(&d->guard);
		snprintf(err, errlen, "source did not commit: %s",
			 ret == -EBADMSG ? "forged or corrupt message" : strerror(-ret));
		/* -ETIMEDOUT: our 60 s ran out, or the transport gave up on a silent peer (a cut) */
		*cut = ret != -EBADMSG && (ret != -ETIMEDOUT || eng_conn_error(d->conn));
		return ret;
	}
	if (type != ENG_MSG_COMMIT) {
		eng_guard_unwatch(&d->guard);
		snprintf(err, errlen, "source aborted: %s", text);
		return -ECANCELED;
	}
	/* first of all: from here the VM starts here even if this process dies */
	if (eng_guard_feed(&d->guard)) {
		fprintf(stderr, "receive: warning: the destination VM's guard is gone: feeding QEMU from here\n");
		eng_guard_release(&d->guard);
	}
	fault_point("receive-dies-after-commit");
	d->t_committed = since(&d->t0);
	struct eng_control_alive alive;
	eng_control_alive_start(&alive, ctl);
	ret = resume_qemu(d, dev, resume_ts, err, errlen);
	eng_control_alive_stop(&alive);
	if (ret)
		return ret;
	d->t_resumed = since(&d->t0);
	d->state = ENG_RESUME_RESUMED;
	snprintf(text, sizeof(text), "%.6f", *resume_ts);
	if (fault_here("receive-loses-resumed")) /* the link goes just as the VM runs here */
		eng_conn_shutdown(d->conn, SHUT_RDWR);
	int sent = eng_control_send(ctl, ENG_MSG_RESUMED, text);
	if (d->a->retry_for_s <= 0)
		return 0;
	/*
	 * The source closes once it heard; a cut instead may have lost the
	 * message. A send that failed took the connection's error with it (the
	 * reset is reported once): the read after it sees only an end, which
	 * must not pass for the source's close (it_handoff chaos: the receiver
	 * left content while its RESUMED had been lost).
	 */
	ssize_t n = sent ? sent : eng_conn_recv(d->conn, &byte, 1, 10);
	bool dead = eng_conn_error(d->conn) != NULL; /* a transport that gave up on its peer: a cut */
	d->source_unheard = n == -ETIMEDOUT && !dead;
	if (n < 0 && (n != -ETIMEDOUT || dead)) {
		snprintf(err, errlen, "the VM runs here; the connection was lost before the source heard: %s",
			 strerror((int)-n));
		*cut = true;
		return (int)n;
	}
	return 0;
}

/*
 * The next source that asks to resume within left_s: its connection, the
 * value offered on it and its ask's nonce. tcp: the rejoin thread takes
 * them; dpdk: one accept here (it refuses a bad HELLO inside: one stray
 * frame must not end the wait).
 */
static struct eng_conn *next_ask(struct dst *d, double deadline, uint8_t value[ENG_SESSION_LEN],
				 uint8_t nonce[ENG_RESUME_NONCE_LEN], char said[256])
{
	struct eng_conn_bind b = { .key = d->a->key };
	char aerr[256] = "";
	struct eng_conn *c;

	if (d->rejoin)
		return eng_rejoin_take(d->rejoin, deadline - eng_mono_s(), value, nonce);
	memcpy(b.base_id, d->bind_id, sizeof(b.base_id));
	if (!(c = eng_conn_accept(d->a->from, &b, deadline - eng_mono_s(), aerr, sizeof(aerr)))) {
		if (eng_mono_s() + 0.5 < deadline) { /* not the wait's own end */
			if (strcmp(aerr, said)) /* once per reason, not every 0.2 s */
				fprintf(stderr, "receive: turned a connection away: %s\n", aerr);
			snprintf(said, 256, "%s", aerr);
			usleep(200000);
		}
		return NULL;
	}
	if (!eng_session_offer(c, value, d->cache_chunk, aerr, sizeof(aerr)) &&
	    !eng_session_resume_take(c, value, d->a->key, d->aead, d->handoff_id, 2, nonce, aerr, sizeof(aerr)))
		return c;
	fprintf(stderr, "receive: turned a connection away: %s\n", aerr);
	eng_conn_close(c);
	return NULL;
}

/* The link was cut: wait for the source to reconnect and tell it where we stand. */
static int wait_for_resume(struct dst *d, uint64_t applied, char *err, size_t errlen)
{
	char why[512], said[256] = "";
	uint8_t nonce[ENG_RESUME_NONCE_LEN], value[ENG_SESSION_LEN];
	struct timespec t_cut;
	static const char *const state_name[] = { "receiving", "verified", "resumed" };

	/*
	 * The source may notice the cut only after ENG_CONTROL_SILENCE_S without
	 * a message (it waits on our READY or RESUMED while a cut link stays
	 * open on its side), or when its kernel gives up on unacknowledged data,
	 * and then reconnects for up to --retry-for: wait for that, twice the
	 * silence limit, or it finds nobody left to resume with (seen twice in
	 * it_handoff chaos: at 4 s, then at 15 s after the cut).
	 */
	double wait = d->a->retry_for_s + 2 * ENG_CONTROL_SILENCE_S;

	clock_gettime(CLOCK_MONOTONIC, &t_cut);
	double deadline = eng_mono_s() + wait;
	snprintf(why, sizeof(why), "%s", atomic_exchange(&d->retired, false) ?
		 "the source came back on a new connection" : err);
	fprintf(stderr, "%sreceive: %s; waiting up to %.0f s for the source to resume\n",
		d->a->progress ? "\r\033[K" : "", why, wait);
	set_conn(d, NULL);
	while (since(&t_cut) < wait) {
		struct eng_conn *c = next_ask(d, deadline, value, nonce, said);
		if (!c)
			continue;
		if (!eng_session_resume_reply(c, value, d->a->key, d->aead, d->handoff_id, nonce, d->state, applied)) {
			set_conn(d, c);
			memcpy(d->session, value, sizeof(d->session));
			d->resumes++;
			d->cut_s += since(&t_cut);
			fprintf(stderr, "receive: the source resumed after %.1f s (%s, %llu segments applied)\n",
				since(&t_cut), state_name[d->state], (unsigned long long)applied);
			return 0;
		}
		fprintf(stderr, "receive: the source that asked to resume left before the answer\n");
		eng_conn_close(c);
	}
	d->cut_s += since(&t_cut);
	snprintf(err, errlen, "%s, and the source did not resume within %.0f s%s", why, wait,
		 d->state == ENG_RESUME_RESUMED ? " (the VM runs here)" : "");
	return d->state == ENG_RESUME_RESUMED ? 0 : -ETIMEDOUT;
}

/*
 * The VM runs here. A source that missed RESUMED on a stalled connection may
 * have come back meanwhile, or still come (it notices after its silence
 * limit): tell it, or it reports a handoff it cannot confirm.
 */
static void answer_late_ask(struct dst *d)
{
	uint8_t nonce[ENG_RESUME_NONCE_LEN], value[ENG_SESSION_LEN];
	double wait = d->source_unheard ? 2 * ENG_CONTROL_SILENCE_S : 0;
	struct eng_conn *c = d->rejoin ? eng_rejoin_take(d->rejoin, wait, value, nonce) : NULL;

	if (!c)
		return;
	if (!eng_session_resume_reply(c, value, d->a->key, d->aead, d->handoff_id, nonce, ENG_RESUME_RESUMED, 0))
		fprintf(stderr, "receive: told the returning source that the VM runs here\n");
	eng_conn_close(c);
}

/* The first stream's header names the handoff: a returning source must name it too. */
static void name_handoff(void *ctx, const uint8_t salt[32], uint8_t aead)
{
	struct dst *d = ctx;

	if (d->have_id)
		return;
	memcpy(d->handoff_id, salt, sizeof(d->handoff_id));
	d->aead = (enum cdc_aead)aead;
	d->have_id = true;
	if (d->rejoin)
		eng_rejoin_name(d->rejoin, d->handoff_id, d->aead);
}

static json_object *summary_json(struct dst *d, const struct eng_patch_stats *st, double secs,
				 bool ok, const char *why)
{
	json_object *o = json_object_new_object();

	json_object_object_add(o, "command", json_object_new_string("receive"));
	json_object_object_add(o, "from", json_object_new_string(d->a->from));
	json_object_object_add(o, "ok", json_object_new_boolean(ok));
	if (!ok)
		json_object_object_add(o, "error", json_object_new_string(why));
	json_object_object_add(o, "seconds", json_object_new_double(secs));
	json_object_object_add(o, "wire_bytes", json_object_new_int64((int64_t)st->wire_bytes));
	json_object_object_add(o, "segments", json_object_new_int64((int64_t)st->segments));
	json_object_object_add(o, "records", json_object_new_int64((int64_t)st->records));
	json_object *t = json_object_new_object();
	json_object_object_add(t, "verified_s", json_object_new_double(d->t_verified));
	json_object_object_add(t, "qemu_loaded_s", json_object_new_double(d->t_loaded));
	json_object_object_add(t, "committed_s", json_object_new_double(d->t_committed));
	json_object_object_add(t, "resumed_s", json_object_new_double(d->t_resumed));
	json_object_object_add(o, "timeline", t);
	json_object *cut = json_object_new_object();
	json_object_object_add(cut, "retry_for_s", json_object_new_double(d->a->retry_for_s));
	json_object_object_add(cut, "resumes", json_object_new_int((int)d->resumes));
	json_object_object_add(cut, "down_s", json_object_new_double(d->cut_s));
	json_object_object_add(o, "link_cuts", cut);
	if (d->have_cb) {
		json_object *c = json_object_new_object();
		json_object_object_add(c, "dir", json_object_new_string(d->a->cache_dir));
		json_object_object_add(c, "chunk_size", json_object_new_int64(d->plan.chunk_size));
		json_object_object_add(c, "held_bytes", json_object_new_int64((int64_t)d->cb.held_bytes));
		json_object_object_add(c, "lacking_bytes", json_object_new_int64((int64_t)d->cb.lacking_bytes));
		json_object_object_add(c, "held_chunks", json_object_new_int64((int64_t)d->cb.held_chunks));
		json_object_object_add(c, "lacking_chunks", json_object_new_int64((int64_t)d->cb.lacking_chunks));
		json_object_object_add(c, "dropped_chunks", json_object_new_int64((int64_t)d->cb.dropped_chunks));
		json_object_object_add(c, "fill_s", json_object_new_double(d->fill_s));
		/* "in place": our QEMU's RAM was filled directly, by the plan's RAM blocks */
		json_object_object_add(c, "shared_ram", json_object_new_string(!d->shared_id[0] ? "none"
									       : d->ram_in_place ? "in place"
												 : "copied at the stop"));
		json_object_object_add(c, "coordinator_lease", json_object_new_string(d->lease));
		if (d->a->vm_name)
			json_object_object_add(c, "coordinator_vm", json_object_new_string(d->vm_registration));
		if (d->fetched) { /* what other edges supplied (fill_s includes it) */
			json_object *f = json_object_new_object();
			json_object_object_add(f, "lacking_chunks", json_object_new_int64((int64_t)d->fetch.missing));
			json_object_object_add(f, "fetched_chunks", json_object_new_int64((int64_t)d->fetch.fetched_chunks));
			json_object_object_add(f, "fetched_raw_bytes", json_object_new_int64((int64_t)d->fetch.fetched_raw_bytes));
			json_object_object_add(f, "wire_bytes", json_object_new_int64((int64_t)d->fetch.wire_bytes));
			json_object_object_add(f, "duplicate_bytes", json_object_new_int64((int64_t)d->fetch.duplicate_bytes));
			json_object_object_add(f, "left_to_source_chunks", json_object_new_int64((int64_t)d->fetch.lost));
			json_object_object_add(f, "seconds", json_object_new_double(d->fetch.seconds));
			json_object_object_add(f, "stall_s", json_object_new_double(d->fetch.stall_s));
			json_object_object_add(f, "timeout_s", json_object_new_double(d->fetch.timeout_s));
			json_object_object_add(f, "sources", cli_sources_json(d->fetch_src.p, d->fetch_src.n,
									     d->fetch.fetched_chunks));
			json_object_object_add(c, "fetch", f);
		}
		json_object_object_add(o, "cache", c);
	}
	json_object *objs = json_object_new_object();
	for (int i = 0; i < ENG_VM_OBJECTS; i++) {
		char hex[2 * CDC_DIGEST_LEN + 1];
		json_object *e = json_object_new_object();
		eng_hex(st->digest[i], CDC_DIGEST_LEN, hex);
		json_object_object_add(e, "size", json_object_new_int64((int64_t)st->size[i]));
		json_object_object_add(e, "digest", json_object_new_string(ok ? hex : ""));
		json_object_object_add(objs, eng_vm_object_names[i], e);
	}
	json_object_object_add(o, "objects", objs);
	return o;
}

/*
 * The results, each starting as the base: disk-out (through the ring), a
 * private RAM image (our QEMU's shared RAM mapped into it where it can be)
 * and a buffer for devices. A cache receiver fills them from its plan.
 */
static int prepare_results(struct dst *d, char *err, size_t errlen)
{
	if (!(d->disk = eng_uring_file_new(d->disk_fd, d->base_size[ENG_VM_DISK], err, errlen)))
		return -EIO;
	d->ram_len = d->cache ? (size_t)(d->base_size[ENG_VM_MEMORY] + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE * CDC_BLOCK_SIZE
			      : d->base.map_len[ENG_VM_MEMORY];
	d->ram = mmap(NULL, d->ram_len ? d->ram_len : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	size_t dev_size = (size_t)d->base_size[ENG_VM_DEVICES];
	d->dev_out = (struct eng_mem){ .data = calloc(1, dev_size ? dev_size : 1), .len = dev_size,
				       .cap = dev_size, .max = ENG_DEVICES_CAPACITY };
	if (d->ram == MAP_FAILED || !d->dev_out.data) {
		d->ram = d->ram == MAP_FAILED ? NULL : d->ram;
		snprintf(err, errlen, "out of memory for the VM's RAM image");
		return -ENOMEM;
	}
	if (d->cache)
		return fill_from_cache(d, err, errlen);
	int base_fd = open(d->base.path[ENG_VM_MEMORY], O_RDONLY | O_CLOEXEC);
	int ret = map_shared_ram(d, &d->base.layout, false, base_fd, err, errlen);
	if (base_fd >= 0)
		close(base_fd);
	if (ret)
		return ret;
	const uint8_t *base = d->base.map[ENG_VM_MEMORY];
	uint64_t size = d->base_size[ENG_VM_MEMORY];
	if (d->base_in_shared && d->shared_off < size) { /* the rest around the block the kernel wrote */
		uint64_t end = d->shared_off + d->shared_len < size ? d->shared_off + d->shared_len : size;
		memcpy(d->ram, base, d->shared_off);
		memcpy(d->ram + end, base + end, size - end);
	} else {
		memcpy(d->ram, base, size);
	}
	memcpy(d->dev_out.data, d->base.map[ENG_VM_DEVICES], dev_size);
	return 0;
}

int eng_handoff_receive(const struct eng_receive_args *a, json_object **summary, char *err,
			size_t errlen)
{
	struct dst *d = calloc(1, sizeof(*d));
	struct eng_patch_stats st = { 0 };
	struct qb_devstate dev = { 0 };
	struct eng_control ctl = { 0 };
	struct eng_patcher *pt = NULL;
	bool have_ctl = false;
	double resume_ts = 0;
	int ret = -EIO;

	if (summary)
		*summary = NULL;
	if (errlen)
		err[0] = 0; /* a failure below always says why; this keeps a hint appended to it in bounds */
	if (!d) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	d->a = a;
	pthread_mutex_init(&d->conn_lock, NULL);
	d->disk_fd = d->in_fd = d->mig_fd = d->guard.fd = -1;
	d->lease = "none";
	d->vm_registration = "not registered";
	clock_gettime(CLOCK_MONOTONIC, &d->t0);
	if (a->cache_dir) {
		if ((ret = open_cache(d, err, errlen)))
			goto out;
	} else {
		if ((ret = eng_vmbase_open(&d->base, a->base_dir, err, errlen)) ||
		    (ret = check_disk_out(d, err, errlen)))
			goto out;
		eng_vmbase_id(&d->base, d->bind_id);
		for (int o = 0; o < ENG_VM_OBJECTS; o++) {
			d->base_size[o] = trk_index_size(d->base.index[o]);
			d->base_ids[o] = trk_index_id(d->base.index[o]);
			d->base_digests[o] = trk_index_digest(d->base.index[o], 0);
		}
	}
	if (!(d->qmp = qb_qmp_connect(a->qmp_path, 10, err, errlen))) {
		ret = -EIO;
		goto out;
	}
	/* from a base, the results are ready before the source comes: set-up off its critical path */
	if ((!d->cache && (ret = prepare_results(d, err, errlen))) || (ret = open_source(d, err, errlen)))
		goto out;
	clock_gettime(CLOCK_MONOTONIC, &d->t0);
	if (d->cache && (ret = take_cache_plan(d, err, errlen)))
		goto out;
	coord_lease(d, false); /* before the fetch: the holders must keep what it asks for */

	if (d->cache && (ret = prepare_results(d, err, errlen)))
		goto out;
	struct eng_mem base_mem[ENG_VM_OBJECTS], ram_mem = { .data = d->ram, .len = d->base_size[ENG_VM_MEMORY],
							      .cap = d->ram_len, .max = d->ram_len };
	struct eng_store base_st[ENG_VM_OBJECTS], out_st[ENG_VM_OBJECTS];
	struct eng_patch_object obj[ENG_VM_OBJECTS];
	for (int o = 0; o < ENG_VM_OBJECTS; o++) {
		base_mem[o] = (struct eng_mem){ .data = (uint8_t *)d->base.map[o], .len = d->base_size[o],
						.cap = d->base_size[o] };
		base_st[o] = d->cache ? d->cb.base[o] : eng_mem_store(&base_mem[o]);
	}
	out_st[ENG_VM_DISK] = eng_uring_store(d->disk);
	out_st[ENG_VM_MEMORY] = eng_mem_store(&ram_mem);
	out_st[ENG_VM_DEVICES] = eng_mem_store(&d->dev_out);
	for (int o = 0; o < ENG_VM_OBJECTS; o++)
		obj[o] = (struct eng_patch_object){ eng_vm_object_names[o], &base_st[o], &out_st[o], d->base_digests[o],
						    d->base_size[o], d->base_ids[o], d->base_have[o] };
	struct eng_patch_args pa = {
		.kind = ENG_KIND_VM, .nobj = ENG_VM_OBJECTS, .obj = obj, .key = a->key,
		.progress = progress, .progress_ctx = d, .header = name_handoff, .control_follows = d->conn != NULL,
	};
	if ((ret = eng_patcher_new(&pt, &pa, &st, err, errlen)))
		goto out;
	/* one stream per connection: more than one only after a cut (--retry-for) */
	for (;;) {
		struct eng_fd in = { .fd = d->in_fd };
		struct eng_source src = d->conn ? eng_conn_source(d->conn) : eng_fd_source(&in);
		struct eng_stream stream = { 0 };
		bool cut = false;
		uint64_t applied_before = eng_patcher_applied(pt);
		ret = eng_patcher_read(pt, &src, d->conn ? d->session : NULL, &stream, &cut, err, errlen);
		if (!ret && d->loaded && eng_patcher_applied(pt) != applied_before) {
			/* QEMU holds what was verified before: it must not change now */
			snprintf(err, errlen, "the source sent more state after this end had verified and loaded the VM");
			ret = -EPROTO;
		}
		if (a->progress)
			fputs("\r\033[K", stderr);
		if (have_ctl)
			eng_control_free(&ctl);
		have_ctl = d->conn && (stream.header_len || !ret) &&
			   eng_control_init(&ctl, d->conn, &stream, a->key, 0) == 0;
		/* the disk's sync and QEMU's load take a while: the source hears ALIVE meanwhile */
		struct eng_control_alive alive = { 0 };
		if (!ret && have_ctl)
			eng_control_alive_start(&alive, &ctl);
		if (!ret && (ret = eng_uring_file_sync(d->disk)))
			snprintf(err, errlen, "cannot write --disk-out %s: %s", a->disk_out, strerror(-ret));
		if (!ret && !d->loaded) {
			d->t_verified = since(&d->t0);
			if (!(ret = load_qemu(d, &st, &dev, err, errlen))) {
				d->loaded = true;
				d->t_loaded = since(&d->t0);
			}
		}
		eng_control_alive_stop(&alive);
		if (!ret && !d->conn) { /* an overlay: nobody to commit */
			d->t_committed = since(&d->t0);
			if (!(ret = resume_qemu(d, &dev, &resume_ts, err, errlen)))
				d->t_resumed = since(&d->t0);
			break;
		}
		if (!ret && have_ctl) {
			d->state = ENG_RESUME_VERIFIED;
			ret = commit_and_resume(d, &ctl, &dev, &resume_ts, &cut, err, errlen);
			if (!ret)
				break;
		}
		if (!ret)
			ret = -EIO;
		if (cut && a->retry_for_s > 0 && d->have_id && d->conn) {
			if (have_ctl) /* its connection goes */
				eng_control_free(&ctl);
			have_ctl = false;
			ret = wait_for_resume(d, eng_patcher_applied(pt), err, errlen);
			renew_pin(d);
		} else if (d->state == ENG_RESUME_RESUMED) {
			fprintf(stderr, "receive: warning: %s\n", err); /* the VM runs here all the same */
			ret = 0;
		} else if (cut && a->retry_for_s > 0 && !d->have_id) {
			size_t n = strnlen(err, errlen);
			if (n + 1 < errlen) /* --retry-for cannot help: say why */
				snprintf(err + n, errlen - n, " (before the source named the handoff: nothing to resume; "
							      "the source VM still runs there)");
		}
		if (ret)
			goto out;
		if (d->state == ENG_RESUME_RESUMED)
			break; /* the source heard, or could not be told in time */
	}
	if (!ret) {
		coord_register_vm(d); /* first: the next edge's send may end it soon */
		answer_late_ask(d);
	}
out:
	if (ret && have_ctl)
		eng_control_send(&ctl, ENG_MSG_FAILED, err);
	/* a retry would refuse it anyway (check_disk_out): say so now, and what to do */
	if (ret && d->disk && !d->cache && eng_uring_file_writes(d->disk)) {
		size_t n = strnlen(err, errlen);
		if (n + 1 < errlen)
			snprintf(err + n, errlen - n,
				 " (--disk-out %s was written to: copy the base disk to it again before another try)",
				 a->disk_out);
	}
	coord_lease(d, true);
	if (summary)
		*summary = summary_json(d, &st, since(&d->t0), ret == 0, err);
	if (have_ctl)
		eng_control_free(&ctl);
	eng_patcher_free(pt);
	/* before the commit the guard just goes; */
	eng_guard_release(&d->guard);
	/* a failed load: QEMU sees the stream end early and gives up without resuming */
	if (d->mig_fd >= 0)
		close(d->mig_fd);
	eng_uring_file_free(d->disk);
	eng_rejoin_stop(d->rejoin); /* before conn goes: it may retire it */
	if (d->conn)
		eng_conn_close(d->conn);
	pthread_mutex_destroy(&d->conn_lock);
	qb_qmp_close(d->qmp);
	qb_devstate_free(&dev);
	if (d->ram)
		munmap(d->ram, d->ram_len);
	free(d->dev_out.data);
	if (d->disk_fd >= 0)
		close(d->disk_fd);
	if (d->in_fd >= 0)
		close(d->in_fd);
	eng_vmbase_close(&d->base);
	if (d->have_cb)
		eng_cache_base_close(&d->cb);
	if (d->have_plan)
		eng_base_plan_free(&d->plan);
	free(d->leased);
	edg_store_close(d->cache);
	free(d);
	return ret;
}

/*
 * Dirty-block tracking FUSE filesystem (see dirtyfs.h). The low-level
 * libfuse API keeps it small: four fixed inodes (the root, the disk, the
 * .dirty control file, the .image link to the image behind the disk), no
 * path lookups beyond three names, and file handles
 * that are either a flag (disk: O_DIRECT or not) or a map snapshot (.dirty).
 * Requests run on libfuse's worker threads; the main thread only mounts,
 * waits in the loop and unmounts.
 */
#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)
#include "dirtyfs.h"
#include "engine/errbuf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/falloc.h>
#include <linux/stat.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

enum { INO_ROOT = FUSE_ROOT_ID, INO_DISK, INO_CTL, INO_IMAGE };

#define MAX_IO (1u << 20)       /* max_write / max_read asked of the kernel */
#define DEFAULT_THREADS 8
#define ATTR_TIMEOUT 1.0

struct trk_dirtyfs {
	struct fuse_session *se;
	int fd;              /* the image, buffered */
	int dfd;             /* the image with O_DIRECT, -1 if its filesystem has none */
	uint64_t dio_align;  /* offset and length alignment for dfd */
	uint64_t size, nblocks, nwords;
	uint64_t *live;      /* the bitmap writes mark; replaced by each fetch */
	uint32_t *writes;    /* per block: writes since the mount (how hot it is; never reset) */
	pthread_rwlock_t swap; /* read: marking; write: replacing live */
	char *name, *mountpoint, *disk_path;
	char *image_path;    /* absolute: where TRK_IMAGE_LINK points */
	unsigned max_threads;
	bool handlers, mounted;
};

/* A fetched map, serialized once at open and read back by offset. */
struct dirty_snap {
	size_t len;
	uint8_t data[];
};

static uint64_t map_bytes(uint64_t nblocks)
{
	return nblocks / 8 + (nblocks % 8 != 0);
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* ---- the bitmap ---------------------------------------------------------------- */

static void or_word(uint64_t *w, uint64_t mask)
{
	if ((__atomic_load_n(w, __ATOMIC_RELAXED) & mask) != mask)
		__atomic_fetch_or(w, mask, __ATOMIC_RELAXED);
}

/* Mark the blocks [off, off + len) touches; called after the backing call returned. */
static void mark_range(struct trk_dirtyfs *fs, uint64_t off, uint64_t len)
{
	if (!len || off >= fs->size)
		return;
	uint64_t first = off / TRK_DIRTY_BLOCK, last = (off + len - 1) / TRK_DIRTY_BLOCK;
	if (last >= fs->nblocks)
		last = fs->nblocks - 1;
	uint64_t fw = first >> 6, lw = last >> 6;
	uint64_t fm = ~0ull << (first & 63), lm = ~0ull >> (63 - (last & 63));

	pthread_rwlock_rdlock(&fs->swap);
	uint64_t *w = fs->live;
	if (fw == lw) {
		or_word(&w[fw], fm & lm);
	} else {
		or_word(&w[fw], fm);
		for (uint64_t i = fw + 1; i < lw; i++)
			or_word(&w[i], ~0ull);
		or_word(&w[lw], lm);
	}
	pthread_rwlock_unlock(&fs->swap);
	for (uint64_t b = first; b <= last; b++) /* saturating (near enough: never wraps) */
		if (__atomic_load_n(&fs->writes[b], __ATOMIC_RELAXED) < UINT32_MAX - 1024)
			__atomic_fetch_add(&fs->writes[b], 1, __ATOMIC_RELAXED);
}

/*
 * Fetch-and-clear: swap in an empty bitmap, serialize the old one, then
 * each dirty block's write count (u16, saturated) in block order: how hot
 * it has been, for a sender that sends the cold first.
 */
static struct dirty_snap *take_snapshot(struct trk_dirtyfs *fs)
{
	uint64_t nbytes = map_bytes(fs->nblocks), ndirty = 0;
	uint64_t *fresh = calloc(fs->nwords, sizeof(uint64_t));

	if (!fresh)
		return NULL;
	pthread_rwlock_wrlock(&fs->swap);
	uint64_t *old = fs->live;
	fs->live = fresh;
	pthread_rwlock_unlock(&fs->swap);

	for (uint64_t i = 0; i < fs->nwords; i++)
		ndirty += (uint64_t)__builtin_popcountll(old[i]);
	struct dirty_snap *s = malloc(sizeof(*s) + TRK_DIRTY_HDR_LEN + nbytes + 2 * ndirty);
	if (!s) {
		/* nothing lost: the old marks go back */
		pthread_rwlock_rdlock(&fs->swap);
		for (uint64_t i = 0; i < fs->nwords; i++)
			if (old[i])
				__atomic_fetch_or(&fs->live[i], old[i], __ATOMIC_RELAXED);
		pthread_rwlock_unlock(&fs->swap);
		free(old);
		return NULL;
	}
	uint8_t *bits = s->data + TRK_DIRTY_HDR_LEN, *cnt = bits + nbytes;
	for (uint64_t i = 0; i < nbytes; i++)
		bits[i] = (uint8_t)(old[i / 8] >> (8 * (i % 8)));
	for (uint64_t w = 0; w < fs->nwords; w++)
		for (uint64_t m = old[w]; m; m &= m - 1) {
			uint64_t b = w * 64 + (uint64_t)__builtin_ctzll(m);
			uint32_t n = __atomic_load_n(&fs->writes[b], __ATOMIC_RELAXED);
			n = n > 65535 ? 65535 : n;
			*cnt++ = (uint8_t)n;
			*cnt++ = (uint8_t)(n >> 8);
		}
	free(old);
	memcpy(s->data, TRK_DIRTY_MAGIC, 8);
	put_le64(s->data + 8, fs->nblocks);
	put_le64(s->data + 16, ndirty);
	s->len = TRK_DIRTY_HDR_LEN + nbytes + 2 * ndirty;
	return s;
}

/* A snapshot nobody will read (the open failed): its blocks go back into the live map. */
static void restore_snapshot(struct trk_dirtyfs *fs, const struct dirty_snap *s)
{
	const uint8_t *bits = s->data + TRK_DIRTY_HDR_LEN;
	uint64_t nbytes = map_bytes(fs->nblocks);

	pthread_rwlock_rdlock(&fs->swap);
	for (uint64_t i = 0; i < fs->nwords; i++) {
		uint64_t w = 0;
		for (uint64_t k = 0; k < 8 && i * 8 + k < nbytes; k++)
			w |= (uint64_t)bits[i * 8 + k] << (8 * k);
		if (w)
			or_word(&fs->live[i], w);
	}
	pthread_rwlock_unlock(&fs->swap);
}

/* ---- backing I/O ---------------------------------------------------------------- */

/* One page-aligned buffer per worker thread, grown on demand, freed at thread exit. */
struct tbuf {
	void *p;
	size_t cap;
};

static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;

static void tbuf_free(void *v)
{
	struct tbuf *t = v;

	free(t->p);
	free(t);
}

static void tbuf_init(void)
{
	pthread_key_create(&tbuf_key, tbuf_free);
}

static void *tbuf_get(size_t len)
{
	pthread_once(&tbuf_once, tbuf_init);
	struct tbuf *t = pthread_getspecific(tbuf_key);
	if (!t) {
		t = calloc(1, sizeof(*t));
		if (!t || pthread_setspecific(tbuf_key, t)) {
			free(t);
			return NULL;
		}
	}
	if (!t->p || t->cap < len) {
		size_t cap = len < (128u << 10) ? (128u << 10) : (len + 4095) & ~(size_t)4095;
		void *p;
		if (posix_memalign(&p, 4096, cap))
			return NULL;
		free(t->p);
		t->p = p;
		t->cap = cap;
	}
	return t->p;
}

static ssize_t pread_full(int fd, void *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return done ? (ssize_t)done : -errno;
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

static ssize_t pwrite_full(int fd, const void *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = pwrite(fd, (const char *)buf + done, len - done, off + (off_t)done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return done ? (ssize_t)done : -errno;
		if (r == 0)
			return done ? (ssize_t)done : -EIO;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

/* The O_DIRECT descriptor serves a request of an O_DIRECT open if it is aligned. */
static bool use_direct(const struct trk_dirtyfs *fs, const struct fuse_file_info *fi, uint64_t off,
		       uint64_t len)
{
	return fi && fi->fh && fs->dfd >= 0 && !(off % fs->dio_align) && !(len % fs->dio_align);
}

/* ---- attributes --------------------------------------------------------------- */

static int fill_attr(struct trk_dirtyfs *fs, fuse_ino_t ino, struct stat *st)
{
	if (fstat(fs->fd, st))
		return -errno;
	switch (ino) {
	case INO_ROOT:
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		st->st_size = 0;
		st->st_blocks = 0;
		break;
	case INO_DISK:
		st->st_nlink = 1;
		break;
	case INO_CTL:
		st->st_mode = S_IFREG | 0400;
		st->st_nlink = 1;
		/* at most: each fetch is as long as its dirty blocks' counts make it */
		st->st_size = (off_t)(TRK_DIRTY_HDR_LEN + map_bytes(fs->nblocks) + 2 * fs->nblocks);
		st->st_blocks = 0;
		break;
	case INO_IMAGE:
		st->st_mode = S_IFLNK | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)strlen(fs->image_path);
		st->st_blocks = 0;
		break;
	default:
		return -ENOENT;
	}
	st->st_ino = ino;
	return 0;
}

static void reply_attr(fuse_req_t req, fuse_ino_t ino)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);
	struct stat st;
	int r = fill_attr(fs, ino, &st);

	if (r)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, ino == INO_CTL ? 0 : ATTR_TIMEOUT);
}

/* ---- operations ---------------------------------------------------------------- */

static void dfs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = MAX_IO;
	conn->max_read = MAX_IO;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
	/* a write must reach us (and the map) when the writer's call returns */
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
}

static void dfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);
	struct fuse_entry_param e;
	fuse_ino_t ino;

	if (parent != INO_ROOT) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (!strcmp(name, fs->name))
		ino = INO_DISK;
	else if (!strcmp(name, TRK_DIRTY_CTL))
		ino = INO_CTL;
	else if (!strcmp(name, TRK_IMAGE_LINK))
		ino = INO_IMAGE;
	else {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	int r = fill_attr(fs, ino, &e.attr);
	if (r) {
		fuse_reply_err(req, -r);
		return;
	}
	e.ino = ino;
	e.attr_timeout = ino == INO_CTL ? 0 : ATTR_TIMEOUT;
	e.entry_timeout = ATTR_TIMEOUT;
	fuse_reply_entry(req, &e);
}

static void dfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	reply_attr(req, ino);
}

/* The disk keeps its size; mode, owner and times pass through to the image. */
static void dfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);
	int r = 0;

	(void)fi;
	if (ino != INO_DISK) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != fs->size) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if ((to_set & FUSE_SET_ATTR_MODE) && fchmod(fs->fd, attr->st_mode & 07777))
		r = errno;
	if (!r && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) &&
	    fchown(fs->fd, (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1,
		   (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1))
		r = errno;
	if (!r && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
		struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };
		if (to_set & FUSE_SET_ATTR_ATIME)
			ts[0] = (to_set & FUSE_SET_ATTR_ATIME_NOW) ? (struct timespec){ .tv_nsec = UTIME_NOW }
								   : attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME)
			ts[1] = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? (struct timespec){ .tv_nsec = UTIME_NOW }
								   : attr->st_mtim;
		if (futimens(fs->fd, ts))
			r = errno;
	}
	if (r)
		fuse_reply_err(req, r);
	else
		reply_attr(req, ino);
}

static void dfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);

	if (ino == INO_ROOT) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (ino == INO_DISK) {
		if (fi->flags & O_TRUNC) {
			fuse_reply_err(req, EPERM); /* the disk keeps its size */
			return;
		}
		fi->fh = (fi->flags & O_DIRECT) ? 1 : 0;
		fuse_reply_open(req, fi);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EACCES);
		return;
	}
	struct dirty_snap *s = take_snapshot(fs);
	if (!s) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fi->fh = (uintptr_t)s;
	fi->direct_io = 1; /* never cached: every open is a new map */
	if (fuse_reply_open(req, fi)) {
		/* the opener is gone (interrupted): keep its blocks dirty */
		restore_snapshot(fs, s);
		free(s);
	}
}

static void dfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino == INO_CTL)
		free((struct dirty_snap *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void dfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (ino == INO_CTL) {
		/*
		 * Reply from this thread's buffer, not the snapshot: the reader may
		 * close (and free the snapshot) as soon as the kernel has the data,
		 * while this thread is still returning from the reply's writev.
		 */
		const struct dirty_snap *s = (const struct dirty_snap *)(uintptr_t)fi->fh;
		size_t o = (size_t)off < s->len ? (size_t)off : s->len;
		size_t n = size < s->len - o ? size : s->len - o;
		void *buf = tbuf_get(n);
		if (!buf) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(buf, s->data + o, n);
		fuse_reply_buf(req, buf, n);
		return;
	}
	if (ino != INO_DISK) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((uint64_t)off >= fs->size || !size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > fs->size - (uint64_t)off)
		size = (size_t)(fs->size - (uint64_t)off);
	void *buf = tbuf_get(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	int fd = use_direct(fs, fi, (uint64_t)off, size) ? fs->dfd : fs->fd;
	ssize_t n = pread_full(fd, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
}

static void dfs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);
	ssize_t n;

	if (ino != INO_DISK) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (off < 0 || (uint64_t)off > fs->size || size > fs->size - (uint64_t)off) {
		fuse_reply_err(req, EFBIG);
		return;
	}
	if (use_direct(fs, fi, (uint64_t)off, size)) {
		void *a = tbuf_get(size);
		if (!a) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(a, buf, size);
		n = pwrite_full(fs->dfd, a, size, off);
	} else {
		n = pwrite_full(fs->fd, buf, size, off);
	}
	/* even a failed write may have changed some of the range */
	mark_range(fs, (uint64_t)off, size);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
}

static void dfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	/* nothing is buffered here: every write already reached the image */
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void dfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);

	(void)fi;
	if (ino != INO_DISK) {
		fuse_reply_err(req, 0);
		return;
	}
	int r = datasync ? fdatasync(fs->fd) : fsync(fs->fd);
	fuse_reply_err(req, r ? errno : 0);
}

static void dfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			  struct fuse_file_info *fi)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);

	(void)fi;
	if (ino != INO_DISK) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) {
		fuse_reply_err(req, EOPNOTSUPP); /* they would move every later block */
		return;
	}
	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (!(mode & FALLOC_FL_KEEP_SIZE) && (uint64_t)off + (uint64_t)len > fs->size) {
		fuse_reply_err(req, EFBIG);
		return;
	}
	int r = fallocate(fs->fd, mode, off, len) ? errno : 0;
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
		mark_range(fs, (uint64_t)off, (uint64_t)len);
	fuse_reply_err(req, r);
}

static void dfs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		      struct fuse_file_info *fi)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);

	(void)fi;
	if (ino != INO_DISK) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	off_t r = lseek(fs->fd, off, whence); /* SEEK_DATA / SEEK_HOLE: no shared position used */
	if (r < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_lseek(req, r);
}

static void dfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);
	const struct {
		const char *name;
		fuse_ino_t ino;
		mode_t mode;
	} ents[] = { { ".", INO_ROOT, S_IFDIR }, { "..", INO_ROOT, S_IFDIR }, { fs->name, INO_DISK, S_IFREG } };
	size_t used = 0;

	(void)fi;
	if (ino != INO_ROOT) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (off_t i = off < 0 ? 0 : off; i < 3; i++) {
		struct stat st = { .st_ino = ents[i].ino, .st_mode = ents[i].mode };
		size_t l = fuse_add_direntry(req, buf + used, size - used, ents[i].name, &st, i + 1);
		if (l > size - used)
			break;
		used += l;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void dfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);
	struct statvfs sv;

	(void)ino;
	if (fstatvfs(fs->fd, &sv))
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

/*
 * TRK_IMAGE_LINK points at the image behind the disk, so that a reader of
 * what the map says changed (the engine) can read it straight from the
 * image, past FUSE: a write is marked only once it reached the image. (A
 * symlink, not an xattr: a filesystem that answers getxattr is asked for
 * security.capability on every write.)
 */
static void dfs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct trk_dirtyfs *fs = fuse_req_userdata(req);

	if (ino != INO_IMAGE)
		fuse_reply_err(req, EINVAL);
	else
		fuse_reply_readlink(req, fs->image_path);
}

static const struct fuse_lowlevel_ops dfs_ops = {
	.init = dfs_init,
	.lookup = dfs_lookup,
	.getattr = dfs_getattr,
	.setattr = dfs_setattr,
	.open = dfs_open,
	.release = dfs_release,
	.read = dfs_read,
	.write = dfs_write,
	.flush = dfs_flush,
	.fsync = dfs_fsync,
	.fallocate = dfs_fallocate,
	.lseek = dfs_lseek,
	.readdir = dfs_readdir,
	.statfs = dfs_statfs,
	.readlink = dfs_readlink,
};

/* ---- mount, run, unmount ----------------------------------------------------------- */

/* libfuse reports mount failures through its log: keep the last line for our error. */
static char fuse_last_msg[256];

static void capture_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
	(void)level;
	vsnprintf(fuse_last_msg, sizeof(fuse_last_msg), fmt, ap);
	size_t n = strlen(fuse_last_msg);
	while (n && (fuse_last_msg[n - 1] == '\n' || fuse_last_msg[n - 1] == ' '))
		fuse_last_msg[--n] = 0;
}

static int check_mountpoint(const char *dir, char *err, size_t errlen)
{
	struct stat st;
	struct dirent *e;

	if (stat(dir, &st)) {
		int e0 = errno;
		if (e0 == ENOTCONN)
			eng_set_err(err, errlen, "mountpoint %s is a dead FUSE mount; run fusermount3 -u %s",
				dir, dir);
		else
			eng_set_err(err, errlen, "mountpoint %s: %s", dir, strerror(e0));
		return -e0;
	}
	if (!S_ISDIR(st.st_mode)) {
		eng_set_err(err, errlen, "mountpoint %s is not a directory", dir);
		return -ENOTDIR;
	}
	DIR *d = opendir(dir);
	if (!d) {
		int e0 = errno;
		eng_set_err(err, errlen, "cannot read mountpoint %s: %s", dir, strerror(e0));
		return -e0;
	}
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			break;
	closedir(d);
	if (e) {
		eng_set_err(err, errlen, "mountpoint %s is not empty", dir);
		return -ENOTEMPTY;
	}
	return 0;
}

static int check_dev_fuse(char *err, size_t errlen)
{
	int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	struct stat st;

	if (fd >= 0) {
		bool ok = !fstat(fd, &st) && S_ISCHR(st.st_mode) && major(st.st_rdev) == 10 &&
			  minor(st.st_rdev) == 229;
		close(fd);
		if (!ok)
			eng_set_err(err, errlen, "/dev/fuse is not the FUSE device (char 10:229)");
		return ok ? 0 : -ENODEV;
	}
	int e0 = errno;
	if (e0 == ENOENT || e0 == ENODEV || e0 == ENXIO)
		eng_set_err(err, errlen, "/dev/fuse is not available (%s); load the fuse module (modprobe fuse)",
			strerror(e0));
	else
		eng_set_err(err, errlen, "cannot open /dev/fuse: %s", strerror(e0));
	return -e0;
}

/* Open the image read-write (and with O_DIRECT where its filesystem allows). */
static int open_image(struct trk_dirtyfs *fs, const char *image, char *err, size_t errlen)
{
	struct stat st;

	fs->fd = open(image, O_RDWR | O_CLOEXEC);
	if (fs->fd < 0) {
		int e0 = errno;
		eng_set_err(err, errlen, "cannot open image %s read-write: %s", image, strerror(e0));
		return -e0;
	}
	if (fstat(fs->fd, &st)) {
		int e0 = errno;
		eng_set_err(err, errlen, "cannot stat image %s: %s", image, strerror(e0));
		return -e0;
	}
	if (!S_ISREG(st.st_mode)) {
		eng_set_err(err, errlen, "image %s is not a regular file", image);
		return -EINVAL;
	}
	if (st.st_size == 0) {
		eng_set_err(err, errlen, "image %s is empty", image);
		return -EINVAL;
	}
	fs->size = (uint64_t)st.st_size;
	fs->nblocks = (fs->size + TRK_DIRTY_BLOCK - 1) / TRK_DIRTY_BLOCK;
	fs->nwords = (fs->nblocks + 63) / 64;
	fs->dfd = open(image, O_RDWR | O_DIRECT | O_CLOEXEC);
	fs->dio_align = 4096;
#ifdef STATX_DIOALIGN
	struct statx sx;
	if (fs->dfd >= 0 && !statx(fs->dfd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) &&
	    (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align &&
	    sx.stx_dio_mem_align <= 4096 && sx.stx_dio_offset_align <= 4096)
		fs->dio_align = sx.stx_dio_offset_align;
#endif
	return 0;
}

static char *join_path(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}

static struct fuse_session *new_session(struct trk_dirtyfs *fs, bool allow_other)
{
	char opts[256];

	/* auto_unmount: fusermount3 removes the mount even if this process is killed */
	snprintf(opts, sizeof(opts),
		 "fsname=handoff-track,subtype=handoff,default_permissions,auto_unmount,max_read=%u%s",
		 MAX_IO, allow_other ? ",allow_other" : "");
	char *argv[] = { "handoff-engine", "-o", opts, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, argv);
	struct fuse_session *se = fuse_session_new(&args, &dfs_ops, sizeof(dfs_ops), fs);
	fuse_opt_free_args(&args);
	return se;
}

/*
 * fuse_session_mount runs fusermount3 (for auto_unmount), which reports
 * failures on the stderr it inherits: lend it a memfd for the call and keep
 * its last line as the reason, so the caller's error stays one line.
 */
static int mount_quietly(struct fuse_session *se, const char *mountpoint)
{
	int mfd = memfd_create("fusermount-stderr", MFD_CLOEXEC), saved = -1;

	fflush(stderr);
	if (mfd >= 0) {
		saved = dup(2);
		if (saved < 0 || dup2(mfd, 2) < 0) {
			if (saved >= 0)
				close(saved);
			saved = -1;
		}
	}
	int r = fuse_session_mount(se, mountpoint);
	if (saved >= 0) {
		dup2(saved, 2);
		close(saved);
	}
	if (mfd < 0)
		return r;
	char text[512];
	ssize_t n = pread(mfd, text, sizeof(text) - 1, 0);
	close(mfd);
	if (r && n > 0 && !fuse_last_msg[0]) {
		text[n] = 0;
		while (n && (text[n - 1] == '\n' || text[n - 1] == ' '))
			text[--n] = 0;
		char *line = strrchr(text, '\n') ? strrchr(text, '\n') + 1 : text;
		if (!strncmp(line, "fusermount3: ", 13))
			line += 13;
		snprintf(fuse_last_msg, sizeof(fuse_last_msg), "%.200s", line);
	}
	return r;
}

struct trk_dirtyfs *trk_dirtyfs_mount(const struct trk_dirtyfs_opts *o, char *err, size_t errlen)
{
	struct trk_dirtyfs *fs = calloc(1, sizeof(*fs));
	pthread_rwlockattr_t ra;

	if (!fs) {
		eng_set_err(err, errlen, "out of memory");
		return NULL;
	}
	fs->fd = fs->dfd = -1;
	pthread_rwlockattr_init(&ra);
	/* a fetch must not wait behind an endless stream of writes */
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&fs->swap, &ra);
	pthread_rwlockattr_destroy(&ra);
	fs->max_threads = o->max_threads ? o->max_threads : DEFAULT_THREADS;

	const char *base = strrchr(o->image, '/') ? strrchr(o->image, '/') + 1 : o->image;
	if (!*base || !strcmp(base, ".") || !strcmp(base, "..") || !strcmp(base, TRK_DIRTY_CTL) ||
	    !strcmp(base, TRK_IMAGE_LINK)) {
		eng_set_err(err, errlen, "image %s: its file name cannot be served (give a file path)",
			o->image);
		goto err;
	}
	fs->name = strdup(base);
	fs->mountpoint = strdup(o->mountpoint);
	if (!fs->name || !fs->mountpoint) {
		eng_set_err(err, errlen, "out of memory");
		goto err;
	}
	for (size_t n = strlen(fs->mountpoint); n > 1 && fs->mountpoint[n - 1] == '/'; n--)
		fs->mountpoint[n - 1] = 0;
	fs->disk_path = join_path(fs->mountpoint, fs->name);
	if (!fs->disk_path) {
		eng_set_err(err, errlen, "out of memory");
		goto err;
	}
	if (open_image(fs, o->image, err, errlen) || check_mountpoint(fs->mountpoint, err, errlen) ||
	    check_dev_fuse(err, errlen))
		goto err;
	if (!(fs->image_path = realpath(o->image, NULL))) {
		eng_set_err(err, errlen, "image %s: %s", o->image, strerror(errno));
		goto err;
	}
	fs->live = calloc(fs->nwords, sizeof(uint64_t));
	fs->writes = calloc(fs->nblocks ? fs->nblocks : 1, sizeof(uint32_t));
	if (!fs->live || !fs->writes) {
		eng_set_err(err, errlen, "out of memory for a %llu-block map",
			(unsigned long long)fs->nblocks);
		goto err;
	}

	fuse_last_msg[0] = 0;
	fuse_set_log_func(capture_log);
	fs->se = new_session(fs, o->allow_other);
	if (!fs->se) {
		eng_set_err(err, errlen, "cannot start a FUSE session: %s",
			fuse_last_msg[0] ? fuse_last_msg : "unknown reason");
		goto err_log;
	}
	if (fuse_set_signal_handlers(fs->se)) {
		eng_set_err(err, errlen, "cannot install signal handlers");
		goto err_log;
	}
	fs->handlers = true;
	if (mount_quietly(fs->se, fs->mountpoint)) {
		eng_set_err(err, errlen, "cannot mount FUSE on %s: %s", fs->mountpoint,
			fuse_last_msg[0] ? fuse_last_msg : "unknown reason");
		goto err_log;
	}
	fs->mounted = true;
	fuse_set_log_func(NULL);
	return fs;

err_log:
	fuse_set_log_func(NULL);
err:
	trk_dirtyfs_unmount(fs);
	return NULL;
}

const char *trk_dirtyfs_disk_path(const struct trk_dirtyfs *fs)
{
	return fs->disk_path;
}

uint64_t trk_dirtyfs_blocks(const struct trk_dirtyfs *fs)
{
	return fs->nblocks;
}

int trk_dirtyfs_run(struct trk_dirtyfs *fs, char *err, size_t errlen)
{
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();

	if (!cfg) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	fuse_loop_cfg_set_max_threads(cfg, fs->max_threads);
	fuse_loop_cfg_set_idle_threads(cfg, fs->max_threads < 4 ? fs->max_threads : 4);
	fuse_loop_cfg_set_clone_fd(cfg, 1);
	/* > 0: ended by that signal; 0: unmounted from outside; < 0: failed */
	int r = fuse_session_loop_mt(fs->se, cfg);
	fuse_loop_cfg_destroy(cfg);
	if (r < 0) {
		eng_set_err(err, errlen, "FUSE loop on %s failed: %s", fs->mountpoint, strerror(-r));
		return r;
	}
	return 0;
}

void trk_dirtyfs_unmount(struct trk_dirtyfs *fs)
{
	if (!fs)
		return;
	if (fs->se) {
		if (fs->handlers)
			fuse_remove_signal_handlers(fs->se);
		if (fs->mounted)
			fuse_session_unmount(fs->se);
		fuse_session_destroy(fs->se);
	}
	if (fs->fd >= 0)
		close(fs->fd);
	if (fs->dfd >= 0)
		close(fs->dfd);
	pthread_rwlock_destroy(&fs->swap);
	free(fs->live);
	free(fs->writes);
	free(fs->name);
	free(fs->mountpoint);
	free(fs->disk_path);
	free(fs->image_path);
	free(fs);
}

/* ---- fetching a map ------------------------------------------------------------ */

void trk_dirty_map_free(struct trk_dirty_map *m)
{
	if (!m)
		return;
	free(m->bits);
	free(m->writes);
	memset(m, 0, sizeof(*m));
}

int trk_dirty_parse(const uint8_t *buf, size_t len, struct trk_dirty_map *m, char *err,
		    size_t errlen)
{
	memset(m, 0, sizeof(*m));
	bool v1 = len >= TRK_DIRTY_HDR_LEN && !memcmp(buf, TRK_DIRTY_MAGIC_V1, 8);
	if (len < TRK_DIRTY_HDR_LEN || (!v1 && memcmp(buf, TRK_DIRTY_MAGIC, 8))) {
		eng_set_err(err, errlen, "not a dirty map (no %s header)", TRK_DIRTY_MAGIC);
		return -EBADMSG;
	}
	uint64_t nblocks = get_le64(buf + 8), ndirty = get_le64(buf + 16);
	uint64_t nbytes = map_bytes(nblocks), count = 0, counts = v1 ? 0 : 2 * ndirty;
	if (ndirty > nblocks || nbytes > len - TRK_DIRTY_HDR_LEN || nbytes + counts != len - TRK_DIRTY_HDR_LEN) {
		eng_set_err(err, errlen, "dirty map of %llu blocks, %llu dirty, has %zu bytes after its header, expected %llu",
			(unsigned long long)nblocks, (unsigned long long)ndirty, len - TRK_DIRTY_HDR_LEN,
			(unsigned long long)(nbytes + 2 * (ndirty <= nblocks ? ndirty : 0)));
		return -EBADMSG;
	}
	const uint8_t *bits = buf + TRK_DIRTY_HDR_LEN;
	for (uint64_t i = 0; i < nbytes; i++)
		count += (uint64_t)__builtin_popcount(bits[i]);
	if (nblocks % 8 && (bits[nbytes - 1] >> (nblocks % 8))) {
		eng_set_err(err, errlen, "dirty map marks blocks past its end (%llu blocks)",
			(unsigned long long)nblocks);
		return -EBADMSG;
	}
	if (count != ndirty) {
		eng_set_err(err, errlen, "dirty map says %llu blocks are dirty but marks %llu",
			(unsigned long long)ndirty, (unsigned long long)count);
		return -EBADMSG;
	}
	m->bits = malloc(nbytes ? nbytes : 1);
	m->writes = v1 ? NULL : malloc(ndirty ? ndirty * sizeof(uint16_t) : 1);
	if (!m->bits || (!v1 && !m->writes)) {
		trk_dirty_map_free(m);
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	memcpy(m->bits, bits, nbytes);
	for (uint64_t i = 0; !v1 && i < ndirty; i++)
		m->writes[i] = (uint16_t)(bits[nbytes + 2 * i] | bits[nbytes + 2 * i + 1] << 8);
	m->nblocks = nblocks;
	m->ndirty = ndirty;
	return 0;
}

static ssize_t read_full(int fd, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = read(fd, (char *)buf + done, len - done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

/* Read the whole control file: header, then exactly the bitmap and counts it announces. */
static int read_ctl(int fd, const char *ctl, uint64_t want_blocks, uint8_t **out, size_t *outlen,
		    char *err, size_t errlen)
{
	uint8_t hdr[TRK_DIRTY_HDR_LEN];
	ssize_t n = read_full(fd, hdr, sizeof(hdr));

	if (n < 0) {
		eng_set_err(err, errlen, "cannot read %s: %s", ctl, strerror((int)-n));
		return (int)n;
	}
	bool v1 = (size_t)n >= sizeof(hdr) && !memcmp(hdr, TRK_DIRTY_MAGIC_V1, 8); /* a tracker of the build before */
	if ((size_t)n < sizeof(hdr) || (!v1 && memcmp(hdr, TRK_DIRTY_MAGIC, 8))) {
		eng_set_err(err, errlen, "%s is not a dirty map", ctl);
		return -EBADMSG;
	}
	if (get_le64(hdr + 8) != want_blocks) {
		eng_set_err(err, errlen, "%s maps %llu blocks but the disk has %llu", ctl,
			(unsigned long long)get_le64(hdr + 8), (unsigned long long)want_blocks);
		return -EBADMSG;
	}
	uint64_t ndirty = get_le64(hdr + 16);
	if (ndirty > want_blocks) {
		eng_set_err(err, errlen, "%s says %llu of %llu blocks are dirty", ctl, (unsigned long long)ndirty,
			(unsigned long long)want_blocks);
		return -EBADMSG;
	}
	size_t len = TRK_DIRTY_HDR_LEN + (size_t)map_bytes(want_blocks) + (v1 ? 0 : 2 * (size_t)ndirty);
	uint8_t *buf = malloc(len + 1);
	if (!buf) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	memcpy(buf, hdr, sizeof(hdr));
	n = read_full(fd, buf + sizeof(hdr), len + 1 - sizeof(hdr));
	if (n < 0 || (size_t)n != len - sizeof(hdr)) {
		eng_set_err(err, errlen, "%s: %s", ctl,
			n < 0 ? strerror((int)-n) : "map length does not match its header");
		free(buf);
		return n < 0 ? (int)n : -EBADMSG;
	}
	*out = buf;
	*outlen = len;
	return 0;
}

int trk_image_open(const char *tracked_disk, char *err, size_t errlen)
{
	struct stat disk, img;
	char *copy = strdup(tracked_disk);
	char *link = copy ? join_path(dirname(copy), TRK_IMAGE_LINK) : NULL;
	int fd = -1, r;

	free(copy);
	if (!link) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	fd = open(link, O_RDONLY | O_CLOEXEC); /* follows the link to the image */
	if (fd < 0 || fstat(fd, &img) || stat(tracked_disk, &disk)) {
		r = -errno;
		if (r == -ENOENT)
			eng_set_err(err, errlen, "%s names no image behind it (no %s)", tracked_disk, link);
		else
			eng_set_err(err, errlen, "cannot open the image behind %s: %s", tracked_disk, strerror(-r));
		if (fd >= 0)
			close(fd);
		free(link);
		return r;
	}
	free(link);
	if (!S_ISREG(img.st_mode) || img.st_size != disk.st_size) {
		eng_set_err(err, errlen, "the image behind %s is not its disk (size differs)", tracked_disk);
		close(fd);
		return -EINVAL;
	}
	return fd;
}

int trk_dirty_fetch(const char *tracked_disk, struct trk_dirty_map *m, char *err, size_t errlen)
{
	struct stat st;
	uint8_t *buf = NULL;
	size_t len = 0;
	int r;

	memset(m, 0, sizeof(*m));
	if (stat(tracked_disk, &st)) {
		r = -errno;
		eng_set_err(err, errlen, "cannot stat tracked disk %s: %s", tracked_disk, strerror(-r));
		return r;
	}
	char *copy = strdup(tracked_disk);
	char *ctl = copy ? join_path(dirname(copy), TRK_DIRTY_CTL) : NULL;
	free(copy);
	if (!ctl) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	int fd = open(ctl, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		if (r == -ENOENT)
			eng_set_err(err, errlen, "%s is not a disk inside a track mount (no %s)", tracked_disk,
				ctl);
		else
			eng_set_err(err, errlen, "cannot open %s: %s", ctl, strerror(-r));
		free(ctl);
		return r;
	}
	uint64_t nblocks = ((uint64_t)st.st_size + TRK_DIRTY_BLOCK - 1) / TRK_DIRTY_BLOCK;
	r = read_ctl(fd, ctl, nblocks, &buf, &len, err, errlen);
	close(fd);
	if (!r)
		r = trk_dirty_parse(buf, len, m, err, errlen);
	free(buf);
	free(ctl);
	return r;
}

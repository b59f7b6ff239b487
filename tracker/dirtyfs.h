/*
 * tracker: the dirty-block tracking filesystem that serves a VM's disk.
 *
 * A libfuse3 filesystem mounted on an empty directory DIR holds one regular
 * file, DIR/<basename of IMAGE>, whose reads, writes, fsync, fallocate and
 * attributes pass straight through to IMAGE (one pread/pwrite per request;
 * O_DIRECT opens, as QEMU's cache=none makes, reach IMAGE with O_DIRECT when
 * the request is aligned). Every write or content-changing fallocate marks
 * the 4 KiB blocks it touched in a dirty bitmap once the backing call has
 * returned, so a block is marked again whenever its content may have changed
 * after an earlier fetch.
 *
 * The engine takes the map through the hidden control file DIR/.dirty:
 * opening it swaps the live bitmap for an empty one (fetch-and-clear) and the
 * open file reads back the swapped-out map:
 *
 *   "HOFFDIR2" | u64 LE block count | u64 LE set bits | bitmap, LSB first,
 *   ceil(blocks / 8) bytes | u16 LE per set bit, in block order: the writes
 *   that block got since the mount (saturated at 65535)
 *
 * so each open returns exactly the blocks written since the previous open
 * (the first: since mount), and how hot each one is. The reader also takes
 * "HOFFDIRT" maps (no counts) from a tracker of an earlier build. A map that was opened is gone from the live
 * bitmap: a caller that loses it must treat the whole disk as dirty.
 *
 * The disk has a fixed size (IMAGE's at mount): writes past it fail with
 * EFBIG and truncation with EPERM. IMAGE itself may be read directly while
 * mounted (the kernel keeps buffered and O_DIRECT I/O coherent), but must
 * only be written through the mount, or the map misses those writes.
 *
 * Threads: trk_dirtyfs_run serves requests on libfuse's worker threads;
 * the bitmap is updated with atomic OR under the read side of a lock whose
 * write side only the (rare) swap takes. trk_dirty_fetch may be called from
 * any thread of any process on the same host.
 */
#ifndef HANDOFF_DIRTYFS_H
#define HANDOFF_DIRTYFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRK_DIRTY_BLOCK 4096u
#define TRK_DIRTY_MAGIC "HOFFDIR2"
#define TRK_DIRTY_MAGIC_V1 "HOFFDIRT" /* a tracker of the build before: the bitmap without counts */
#define TRK_DIRTY_HDR_LEN 24u
#define TRK_DIRTY_CTL ".dirty"

/* ---- the engine's side --------------------------------------------------------- */

struct trk_dirty_map {
	uint64_t nblocks, ndirty;
	uint8_t *bits;    /* LSB first, ceil(nblocks / 8) bytes */
	uint16_t *writes; /* one per dirty block, in block order: writes to it since the mount (at most 65535) */
};

/*
 * Fetch-and-clear the dirty map of a tracked disk: path = the file inside a
 * track mount. Checks the block count against the disk's size. 0, or -errno
 * with a one-line message in err.
 */
int trk_dirty_fetch(const char *tracked_disk, struct trk_dirty_map *m, char *err, size_t errlen);
/* Decode a map in the .dirty format (buf, len); m->bits is allocated. 0 or -EBADMSG. */
int trk_dirty_parse(const uint8_t *buf, size_t len, struct trk_dirty_map *m, char *err,
		    size_t errlen);
void trk_dirty_map_free(struct trk_dirty_map *m);

/*
 * The image behind a tracked disk, opened read-only (path = the file inside
 * a track mount; the mount's TRK_IMAGE_LINK points at it), for reading
 * changed blocks without a trip through FUSE for each. The size must match
 * the disk's. An fd, or -errno with a one-line message (then read through the
 * mount).
 */
#define TRK_IMAGE_LINK ".image"
int trk_image_open(const char *tracked_disk, char *err, size_t errlen);

static inline bool trk_dirty_test(const struct trk_dirty_map *m, uint64_t b)
{
	return b < m->nblocks && ((m->bits[b >> 3] >> (b & 7)) & 1);
}

/* ---- the filesystem --------------------------------------------------------------- */

struct trk_dirtyfs_opts {
	const char *image;      /* raw disk image, a regular file opened read-write */
	const char *mountpoint; /* an existing, empty directory */
	bool allow_other;       /* FUSE allow_other: users other than the mounter may open */
	unsigned max_threads;   /* FUSE worker threads; 0 = default (8) */
};

struct trk_dirtyfs;

/*
 * Open the image, check the mountpoint and mount (the mount is live on
 * return; requests wait until trk_dirtyfs_run serves them). SIGINT, SIGTERM
 * and SIGHUP end the run from here on. NULL + one-line message on error.
 */
struct trk_dirtyfs *trk_dirtyfs_mount(const struct trk_dirtyfs_opts *o, char *err, size_t errlen);
/* Path of the served disk file (mountpoint/name) and its 4 KiB block count. */
const char *trk_dirtyfs_disk_path(const struct trk_dirtyfs *fs);
uint64_t trk_dirtyfs_blocks(const struct trk_dirtyfs *fs);
/*
 * Serve requests on a multi-threaded loop until a signal above or an
 * external unmount (fusermount3 -u). 0, or -errno + message if the loop
 * failed.
 */
int trk_dirtyfs_run(struct trk_dirtyfs *fs, char *err, size_t errlen);
/* Unmount (if still mounted), close the image, free. NULL is a no-op. */
void trk_dirtyfs_unmount(struct trk_dirtyfs *fs);

#endif

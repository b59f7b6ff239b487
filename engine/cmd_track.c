/*
 * handoff-engine track: serve a VM's disk image through the dirty-block
 * tracking filesystem (tracker/dirtyfs.h) in the foreground until a signal
 * or an external unmount. No EAL: the work happens on libfuse's threads.
 */
#include "cli.h"
#include "tracker/dirtyfs.h"

#include <malloc.h>
#include <stdio.h>

enum { O_IMAGE, O_MOUNT, O_ALLOW_OTHER };

static const struct cli_opt track_opts[] = {
	[O_IMAGE] = { "image", 0, "IMG", true, "the VM's raw disk image, served and tracked" },
	[O_MOUNT] = { "mount", 0, "DIR", true, "empty directory to mount on; the disk is DIR/<name of IMG>" },
	[O_ALLOW_OTHER] = { "allow-other", 0, NULL, false, "let users other than the mounting one open the disk" },
	{ 0 },
};

static int track_run(const struct cli_cmd *cmd, const char *const *val)
{
	struct trk_dirtyfs_opts o = {
		.image = val[O_IMAGE],
		.mountpoint = val[O_MOUNT],
		.allow_other = val[O_ALLOW_OTHER] != NULL,
	};
	char err[512];

	(void)cmd;
	/*
	 * libfuse's workers come and go with the load (idle ones beyond four
	 * exit), each with a 1 MiB request buffer and our bounce buffer. After
	 * the first such buffer is freed, glibc's dynamic mmap threshold would
	 * put the next ones in per-thread arenas, whose freed pages stay
	 * resident: a tracker up for weeks would creep. A fixed threshold keeps
	 * them mapped, and returned when freed.
	 */
	mallopt(M_MMAP_THRESHOLD, 128 << 10);
	struct trk_dirtyfs *fs = trk_dirtyfs_mount(&o, err, sizeof(err));
	if (!fs) {
		cli_error("track: %s", err);
		return 1;
	}
	fprintf(stderr, "track: serving %s (%llu blocks)\n", trk_dirtyfs_disk_path(fs),
		(unsigned long long)trk_dirtyfs_blocks(fs));
	int r = trk_dirtyfs_run(fs, err, sizeof(err));
	trk_dirtyfs_unmount(fs);
	if (r) {
		cli_error("track: %s", err);
		return 1;
	}
	return 0;
}

const struct cli_cmd cli_cmd_track = {
	.name = "track",
	.summary = "Serve IMG as DIR/<name of IMG> through a FUSE filesystem that records every\n"
		   "written 4 KiB block; opening DIR/.dirty fetches and clears that map. Runs in the\n"
		   "foreground until SIGINT/SIGTERM or fusermount3 -u DIR, then unmounts.",
	.usage = "--image IMG --mount DIR [--allow-other]",
	.opts = track_opts,
	.run = track_run,
	.needs_eal = false,
};

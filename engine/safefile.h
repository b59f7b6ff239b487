/*
 * Files the engine creates. Each is made exclusively under a fresh name
 * beside its target (PATH.tmp-XXXXXX by mkostemp: O_CREAT | O_EXCL, so a
 * symlink planted there is never followed and a planted file never reused),
 * written, synced, and renamed over PATH only when complete: a failed run
 * leaves no partial file, and a symlink at PATH is replaced, never written
 * through. Same directory, so the rename is atomic.
 */
#ifndef HANDOFF_SAFEFILE_H
#define HANDOFF_SAFEFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct eng_outfile {
	int fd;
	mode_t mode;     /* what the file gets on commit */
	bool no_replace; /* commit fails (-EEXIST) rather than replace a PATH that exists (a key) */
	char *path, *tmp;
};

/* Create the file aside (owner-only until committed). */
int eng_outfile_create(struct eng_outfile *f, const char *path, mode_t mode, char *err, size_t errlen);
/* fchmod, fsync, rename over PATH, sync the directory; the file is closed either way. */
int eng_outfile_commit(struct eng_outfile *f, char *err, size_t errlen);
/* Close and remove the file aside; PATH is untouched. */
void eng_outfile_abort(struct eng_outfile *f);
/* A small file in one go: create, write all of buf, commit. */
int eng_outfile_write(const char *path, const void *buf, size_t len, mode_t mode, char *err, size_t errlen);
/* The same for a file that must be new: -EEXIST, and nothing written, if PATH exists. */
int eng_outfile_write_new(const char *path, const void *buf, size_t len, mode_t mode, char *err, size_t errlen);

#endif

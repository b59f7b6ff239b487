#include "safefile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errbuf.h"

int eng_outfile_create(struct eng_outfile *f, const char *path, mode_t mode, char *err, size_t errlen)
{
	f->fd = -1;
	f->mode = mode;
	f->no_replace = false;
	f->path = strdup(path);
	if (!f->path || asprintf(&f->tmp, "%s.tmp-XXXXXX", path) < 0) {
		free(f->path);
		f->path = f->tmp = NULL;
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	f->fd = mkostemp(f->tmp, O_CLOEXEC);
	if (f->fd < 0) {
		int e = errno;
		eng_set_err(err, errlen, "cannot create a file beside %s: %s", path, strerror(e));
		free(f->path);
		free(f->tmp);
		f->path = f->tmp = NULL;
		return -e;
	}
	return 0;
}

/* The rename is durable only once the directory is synced too. */
static int sync_dir_of(const char *path)
{
	char *copy = strdup(path);
	int fd, ret = 0;

	if (!copy)
		return -ENOMEM;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd))
		ret = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return ret;
}

static void release(struct eng_outfile *f)
{
	free(f->path);
	free(f->tmp);
	f->fd = -1;
	f->path = f->tmp = NULL;
}

int eng_outfile_commit(struct eng_outfile *f, char *err, size_t errlen)
{
	int ret = 0;

	if (fchmod(f->fd, f->mode) || fsync(f->fd)) {
		ret = -errno;
		eng_set_err(err, errlen, "cannot finish %s: %s", f->path, strerror(errno));
	}
	if (close(f->fd) && !ret) {
		ret = -errno;
		eng_set_err(err, errlen, "cannot finish %s: %s", f->path, strerror(errno));
	}
	if (!ret && renameat2(AT_FDCWD, f->tmp, AT_FDCWD, f->path, f->no_replace ? RENAME_NOREPLACE : 0) &&
	    /* a filesystem without RENAME_NOREPLACE (NFS): a hard link refuses an existing name too */
	    !(f->no_replace && errno == EINVAL && link(f->tmp, f->path) == 0 && unlink(f->tmp) == 0)) {
		ret = -errno;
		if (errno == EEXIST)
			eng_set_err(err, errlen, "%s exists: not replaced", f->path);
		else
			eng_set_err(err, errlen, "cannot rename %s to %s: %s", f->tmp, f->path, strerror(errno));
	}
	if (ret)
		unlink(f->tmp);
	else if ((ret = sync_dir_of(f->path)))
		eng_set_err(err, errlen, "cannot sync the directory of %s: %s", f->path, strerror(-ret));
	release(f);
	return ret;
}

void eng_outfile_abort(struct eng_outfile *f)
{
	if (f->fd >= 0) {
		close(f->fd);
		unlink(f->tmp);
	}
	release(f);
}

static int write_whole(const char *path, const void *buf, size_t len, mode_t mode, bool no_replace, char *err,
		       size_t errlen)
{
	struct eng_outfile f;
	size_t done = 0;
	int ret;

	if ((ret = eng_outfile_create(&f, path, mode, err, errlen)))
		return ret;
	f.no_replace = no_replace;
	while (done < len) {
		ssize_t n = write(f.fd, (const char *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = n < 0 ? -errno : -ENOSPC;
			eng_set_err(err, errlen, "cannot write %s: %s", f.tmp, strerror(-ret));
			eng_outfile_abort(&f);
			return ret;
		}
		done += (size_t)n;
	}
	return eng_outfile_commit(&f, err, errlen);
}

int eng_outfile_write(const char *path, const void *buf, size_t len, mode_t mode, char *err, size_t errlen)
{
	return write_whole(path, buf, len, mode, false, err, errlen);
}

int eng_outfile_write_new(const char *path, const void *buf, size_t len, mode_t mode, char *err, size_t errlen)
{
	return write_whole(path, buf, len, mode, true, err, errlen);
}

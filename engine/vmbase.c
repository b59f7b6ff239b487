/*
 * Base VM directories (design in vmbase.h). Derived files are written aside
 * and renamed, stamp last, so a crash mid-way only costs a rebuild.
 */
#include "vmbase.h"

#include "safefile.h"
#include "edge/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const eng_vm_object_names[ENG_VM_OBJECTS] = { "disk", "memory", "device state" };
static const char *const file_names[ENG_VM_OBJECTS] = { "disk.img", "mem.img", "devices.bin" };

static char *join(const char *dir, const char *name)
{
	char *p;

	return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

/* What vm.mig is: its identity, as the stamp of the derived files. */
static int mig_stamp(const char *mig, char *buf, size_t len)
{
	struct stat st;

	if (stat(mig, &st))
		return -errno;
	snprintf(buf, len, "vm.mig %llu %llu %lld.%09ld %lld.%09ld\n", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
		 (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
	snprintf(buf + strlen(buf), len - strlen(buf), "size %lld\n", (long long)st.st_size);
	return 0;
}

struct derive_ctx {
	int fd;
	uint8_t *image;
	uint64_t size;
	char err[200];
};

static int on_layout(void *ctx, const struct qb_layout *l)
{
	struct derive_ctx *d = ctx;

	if (ftruncate(d->fd, (off_t)l->image_size)) {
		snprintf(d->err, sizeof(d->err), "cannot size mem.img: %s", strerror(errno));
		return -1;
	}
	d->image = mmap(NULL, l->image_size, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, 0);
	if (d->image == MAP_FAILED) {
		d->image = NULL;
		snprintf(d->err, sizeof(d->err), "cannot map mem.img: %s", strerror(errno));
		return -1;
	}
	d->size = l->image_size;
	return 0;
}

static int on_page(void *ctx, uint64_t off, const uint8_t *data)
{
	struct derive_ctx *d = ctx;

	if (!d->image || off + QB_PAGE > d->size)
		return -1;
	if (data)
		memcpy(d->image + off, data, QB_PAGE);
	else
		memset(d->image + off, 0, QB_PAGE); /* a later pass may zero a page */
	return 0;
}

/* vm.mig -> mem.img + devices.bin + derived.stamp (the stamp last: it says the others are whole) */
static int derive(struct eng_vmbase *b, const char *mig, const char *stamp_path,
		  const char *stamp, char *err, size_t errlen)
{
	struct eng_outfile mem = { .fd = -1 };
	struct derive_ctx d = { .fd = -1 };
	struct qb_devstate dev = { 0 };
	uint8_t *enc = NULL;
	char ferr[200];
	int ret, in;

	in = open(mig, O_RDONLY | O_CLOEXEC);
	if (in < 0) {
		snprintf(err, errlen, "cannot open %s: %s", mig, strerror(errno));
		return -errno;
	}
	if ((ret = eng_outfile_create(&mem, b->path[ENG_VM_MEMORY], 0644, ferr, sizeof(ferr)))) {
		snprintf(err, errlen, "cannot write in base directory %s: %s", b->dir, ferr);
		goto out;
	}
	d.fd = mem.fd;
	struct qb_parse_cb cb = { .layout = on_layout, .page = on_page, .ctx = &d };
	char perr[200];
	ret = qb_parse_stream(in, &cb, &b->layout, &dev, perr, sizeof(perr));
	if (ret) {
		snprintf(err, errlen, "base VM state %s: %s", mig, d.err[0] ? d.err : perr);
		goto out;
	}
	size_t enc_len = qb_devstate_encode(&dev, &enc);
	if (!enc_len) {
		ret = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (msync(d.image, d.size, MS_SYNC)) {
		ret = -errno;
		snprintf(err, errlen, "cannot write derived base files in %s: %s", b->dir, strerror(errno));
		goto out;
	}
	if ((ret = eng_outfile_commit(&mem, ferr, sizeof(ferr))) ||
	    (ret = eng_outfile_write(b->path[ENG_VM_DEVICES], enc, enc_len, 0644, ferr, sizeof(ferr))) ||
	    (ret = eng_outfile_write(stamp_path, stamp, strlen(stamp), 0644, ferr, sizeof(ferr)))) {
		snprintf(err, errlen, "cannot write derived base files in %s: %s", b->dir, ferr);
		goto out;
	}
out:
	if (d.image)
		munmap(d.image, d.size);
	if (mem.fd >= 0)
		eng_outfile_abort(&mem);
	close(in);
	qb_devstate_free(&dev);
	free(enc);
	return ret;
}

static bool stamp_matches(const char *path, const char *want)
{
	char buf[512];
	FILE *f = fopen(path, "re");
	size_t n;

	if (!f)
		return false;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	return !strcmp(buf, want);
}

/* Maps a whole number of blocks: the last block reads as zero-padded. */
static int map_image(struct eng_vmbase *b, unsigned o, char *err, size_t errlen)
{
	uint64_t size = trk_index_size(b->index[o]);
	int fd;

	b->map_len[o] = (size_t)((size + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE) * CDC_BLOCK_SIZE;
	if (!b->map_len[o])
		b->map_len[o] = CDC_BLOCK_SIZE;
	fd = open(b->path[o], O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open %s: %s", b->path[o], strerror(errno));
		return -errno;
	}
	void *m = mmap(NULL, b->map_len[o], PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED) {
		snprintf(err, errlen, "cannot map %s: %s", b->path[o], strerror(errno));
		return -ENOMEM;
	}
	b->map[o] = m;
	return 0;
}

int eng_vmbase_open(struct eng_vmbase *b, const char *dir, char *err, size_t errlen)
{
	char stamp[512], *mig = NULL, *stamp_path = NULL;
	struct stat st;
	int ret = -ENOMEM;

	memset(b, 0, sizeof(*b));
	if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "base directory %s: %s", dir,
			 errno && !S_ISDIR(st.st_mode) ? strerror(errno) : "not a directory");
		return -ENOENT;
	}
	b->dir = strdup(dir);
	mig = join(dir, "vm.mig");
	stamp_path = join(dir, "derived.stamp");
	for (int o = 0; o < ENG_VM_OBJECTS; o++)
		if (!(b->path[o] = join(dir, file_names[o])))
			goto fail_oom;
	if (!b->dir || !mig || !stamp_path)
		goto fail_oom;
	if (access(b->path[ENG_VM_DISK], R_OK) || (ret = mig_stamp(mig, stamp, sizeof(stamp)))) {
		snprintf(err, errlen, "%s is not a base VM directory (needs disk.img and vm.mig; see scripts/make-base)",
			 dir);
		ret = -ENOENT;
		goto fail;
	}
	if (!stamp_matches(stamp_path, stamp) || access(b->path[ENG_VM_MEMORY], R_OK) ||
	    access(b->path[ENG_VM_DEVICES], R_OK)) {
		if ((ret = derive(b, mig, stamp_path, stamp, err, errlen)))
			goto fail;
	}
	for (int o = 0; o < ENG_VM_OBJECTS; o++) {
		if (!(b->index[o] = trk_index_open(b->path[o], err, errlen))) {
			ret = -EIO;
			goto fail;
		}
		if ((ret = map_image(b, (unsigned)o, err, errlen)))
			goto fail;
	}
	/* The RAM layout lives in the device state's prefix (the MEM_SIZE record). */
	struct qb_devstate dev;
	char perr[200];
	if (qb_devstate_decode(b->map[ENG_VM_DEVICES], trk_index_size(b->index[ENG_VM_DEVICES]), &dev,
			       perr, sizeof(perr)) ||
	    qb_devstate_layout(&dev, &b->layout, perr, sizeof(perr))) {
		snprintf(err, errlen, "base device state %s: %s", b->path[ENG_VM_DEVICES], perr);
		ret = -EBADMSG;
		goto fail;
	}
	qb_devstate_free(&dev);
	if (b->layout.image_size != trk_index_size(b->index[ENG_VM_MEMORY])) {
		snprintf(err, errlen, "base %s: mem.img does not match the RAM layout in vm.mig", dir);
		ret = -EBADMSG;
		goto fail;
	}
	free(mig);
	free(stamp_path);
	return 0;
fail_oom:
	snprintf(err, errlen, "out of memory");
	ret = -ENOMEM;
fail:
	free(mig);
	free(stamp_path);
	eng_vmbase_close(b);
	return ret;
}

/* IMAGE.chunks-SIZE: this header, then the digests. */
struct chunk_list_header {
	char magic[8];
	uint32_t chunk_size, pad;
	uint64_t size, n;
	uint8_t index_id[CDC_DIGEST_LEN]; /* the image these are of */
	uint8_t checksum[CDC_DIGEST_LEN]; /* SHA-256 of the digests */
};
static const char chunk_list_magic[8] = "HOCHUNK1";

static bool chunk_list_load(const char *path, const struct chunk_list_header *want, uint8_t *out)
{
	struct chunk_list_header h;
	uint8_t sum[CDC_DIGEST_LEN];
	size_t len = want->n * CDC_DIGEST_LEN;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	bool ok = fd >= 0 && pread(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h) &&
		  !memcmp(&h, want, offsetof(struct chunk_list_header, checksum)) &&
		  pread(fd, out, len, sizeof(h)) == (ssize_t)len;

	if (fd >= 0)
		close(fd);
	if (ok) {
		cdc_sha256(out, len, sum);
		ok = !memcmp(sum, h.checksum, sizeof(sum));
	}
	return ok;
}

void eng_vmbase_chunk_digests(const struct eng_vmbase *b, unsigned o, uint32_t chunk_size, uint8_t *out,
			      uint64_t n)
{
	struct chunk_list_header h = { .chunk_size = chunk_size, .size = trk_index_size(b->index[o]), .n = n };
	char *path = NULL;

	memcpy(h.magic, chunk_list_magic, sizeof(h.magic));
	memcpy(h.index_id, trk_index_id(b->index[o]), CDC_DIGEST_LEN);
	if (asprintf(&path, "%s.chunks-%u", b->path[o], chunk_size) < 0)
		path = NULL;
	if (path && chunk_list_load(path, &h, out)) {
		free(path);
		return;
	}
	edg_chunk_digests(b->map[o], h.size, chunk_size, out);
	struct eng_outfile f;
	char err[256];
	cdc_sha256(out, n * CDC_DIGEST_LEN, h.checksum);
	/* best effort: without it the next handoff hashes again */
	if (path && !eng_outfile_create(&f, path, 0644, err, sizeof(err))) {
		if (write(f.fd, &h, sizeof(h)) == (ssize_t)sizeof(h) &&
		    write(f.fd, out, n * CDC_DIGEST_LEN) == (ssize_t)(n * CDC_DIGEST_LEN))
			eng_outfile_commit(&f, err, sizeof(err));
		else
			eng_outfile_abort(&f);
	}
	free(path);
}

void eng_vmbase_close(struct eng_vmbase *b)
{
	for (int o = 0; o < ENG_VM_OBJECTS; o++) {
		if (b->map[o])
			munmap((void *)b->map[o], b->map_len[o]);
		trk_index_free(b->index[o]);
		free(b->path[o]);
	}
	free(b->dir);
	memset(b, 0, sizeof(*b));
}

void eng_vmbase_id(const struct eng_vmbase *b, uint8_t out[CDC_DIGEST_LEN])
{
	uint8_t ids[ENG_VM_OBJECTS * CDC_DIGEST_LEN];

	for (int o = 0; o < ENG_VM_OBJECTS; o++)
		memcpy(ids + o * CDC_DIGEST_LEN, trk_index_id(b->index[o]), CDC_DIGEST_LEN);
	cdc_sha256(ids, sizeof(ids), out);
}

int eng_vmbase_check_layout(const struct eng_vmbase *b, const struct qb_layout *l, char *err,
			    size_t errlen)
{
	const struct qb_layout *w = &b->layout;

	for (unsigned i = 0; i < l->nblocks || i < w->nblocks; i++) {
		if (i >= l->nblocks || i >= w->nblocks || strcmp(l->blocks[i].id, w->blocks[i].id) ||
		    l->blocks[i].length != w->blocks[i].length) {
			const struct qb_ram_block *have = i < l->nblocks ? &l->blocks[i] : NULL;
			const struct qb_ram_block *want = i < w->nblocks ? &w->blocks[i] : NULL;
			snprintf(err, errlen,
				 "the VM does not match its base: RAM block %u is %s (%" PRIu64
				 " bytes), the base has %s (%" PRIu64 " bytes); start it with the base's -m and machine",
				 i, have ? have->id : "missing", have ? have->length : 0,
				 want ? want->id : "missing", want ? want->length : 0);
			return -EINVAL;
		}
	}
	return 0;
}

/* A whole small file into memory (devices.bin: a few MB at most). */
static int read_whole(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	size_t done = 0;

	*buf = NULL;
	if (fd < 0 || fstat(fd, &st) || !(*buf = malloc((size_t)st.st_size + 1))) {
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno ? errno : ENOMEM));
		if (fd >= 0)
			close(fd);
		return -EIO;
	}
	while (done < (size_t)st.st_size) {
		ssize_t n = read(fd, *buf + done, (size_t)st.st_size - done);
		if (n <= 0) {
			snprintf(err, errlen, "cannot read %s: %s", path, n ? strerror(errno) : "it shrank");
			close(fd);
			free(*buf);
			*buf = NULL;
			return -EIO;
		}
		done += (size_t)n;
	}
	close(fd);
	*len = done;
	return 0;
}

int eng_vmbase_rebuild_state(const char *dir, char *err, size_t errlen)
{
	char *mem = join(dir, file_names[ENG_VM_MEMORY]), *devp = join(dir, file_names[ENG_VM_DEVICES]);
	char *mig = join(dir, "vm.mig"), *stamp = join(dir, "derived.stamp"), ferr[200];
	uint8_t *enc = NULL, want_mem[CDC_DIGEST_LEN], want_dev[CDC_DIGEST_LEN], got[CDC_DIGEST_LEN];
	struct qb_devstate dev = { 0 };
	struct qb_layout layout;
	struct eng_outfile out = { .fd = -1 };
	void *image = MAP_FAILED;
	size_t enc_len = 0, image_len = 0;
	struct stat st;
	int ret = -ENOMEM, fd = -1;

	if (!mem || !devp || !mig || !stamp) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if ((ret = read_whole(devp, &enc, &enc_len, err, errlen)))
		goto out;
	if (qb_devstate_decode(enc, enc_len, &dev, ferr, sizeof(ferr)) ||
	    qb_devstate_layout(&dev, &layout, ferr, sizeof(ferr))) {
		snprintf(err, errlen, "%s: %s", devp, ferr);
		ret = -EBADMSG;
		goto out;
	}
	fd = open(mem, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) || (uint64_t)st.st_size != layout.image_size) {
		snprintf(err, errlen, "%s: %s", mem, fd < 0 ? strerror(errno) : "its size is not the RAM layout's");
		ret = -EBADMSG;
		goto out;
	}
	image_len = (size_t)st.st_size;
	if (image_len && (image = mmap(NULL, image_len, PROT_READ, MAP_SHARED, fd, 0)) == MAP_FAILED) {
		snprintf(err, errlen, "cannot map %s: %s", mem, strerror(errno));
		ret = -EIO;
		goto out;
	}
	cdc_sha256(image_len ? image : "", image_len, want_mem);
	cdc_sha256(enc, enc_len, want_dev);
	if ((ret = eng_outfile_create(&out, mig, 0644, err, errlen)))
		goto out;
	if ((ret = qb_write_stream(out.fd, &layout, image_len ? image : NULL, &dev, ferr, sizeof(ferr))) ||
	    (ret = eng_outfile_commit(&out, ferr, sizeof(ferr)))) {
		snprintf(err, errlen, "cannot write %s: %s", mig, ferr);
		goto out;
	}
	/* derive again from what was written: it must give back the same two files */
	unlink(stamp);
	struct eng_vmbase b;
	if ((ret = eng_vmbase_open(&b, dir, err, errlen)))
		goto out;
	cdc_sha256(b.map[ENG_VM_MEMORY], trk_index_size(b.index[ENG_VM_MEMORY]), got);
	bool same = !memcmp(got, want_mem, sizeof(got));
	cdc_sha256(b.map[ENG_VM_DEVICES], trk_index_size(b.index[ENG_VM_DEVICES]), got);
	same = same && !memcmp(got, want_dev, sizeof(got));
	eng_vmbase_close(&b);
	if (!same) {
		snprintf(err, errlen, "%s rebuilt from mem.img and devices.bin does not give them back", mig);
		ret = -EBADMSG;
	}
out:
	if (out.fd >= 0)
		eng_outfile_abort(&out);
	if (image != MAP_FAILED)
		munmap(image, image_len);
	if (fd >= 0)
		close(fd);
	qb_devstate_free(&dev);
	free(enc);
	free(mem);
	free(devp);
	free(mig);
	free(stamp);
	return ret;
}

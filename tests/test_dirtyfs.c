/*
 * tracker/dirtyfs: the real `handoff-engine track` on a real FUSE mount.
 * Writes through the mount (buffered, O_DIRECT, fallocate, from several
 * threads) are checked against a model of the disk and of the blocks each
 * fetch must return; the engine is stopped by SIGTERM, SIGINT and an
 * external fusermount3 -u and must leave no mount behind.
 */
#include "tracker/dirtyfs.h"
#include "testlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define BLK TRK_DIRTY_BLOCK
#define IMG_SIZE ((8u << 20) + 2048) /* a partial last block */
#define NBLOCKS ((IMG_SIZE + BLK - 1) / BLK)
#define START_TIMEOUT_MS 20000
#define STOP_TIMEOUT_MS 10000
#define MOUNT_LIFETIME_S 30 /* the watchdog kills an engine mounted longer */

static char engine[PATH_MAX], *dir;
static char img[300], mnt[300], disk[600], errf[300];
static pid_t track_pid = -1;
static time_t track_deadline; /* 0: no engine running */
static uint8_t ref[IMG_SIZE];  /* what the disk must hold */
static bool expect[NBLOCKS];   /* blocks written since the last fetch */
static unsigned writes[NBLOCKS]; /* writes that touched each block since the mount */

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* A small text file (e.g. the engine's stderr while it may still write it). */
static char *file_text(const char *path)
{
	char *s = calloc(1, 65536);
	int fd = open(path, O_RDONLY);

	if (fd >= 0) {
		ssize_t n = read(fd, s, 65535);
		s[n > 0 ? n : 0] = 0;
		close(fd);
	}
	return s;
}

static bool is_mounted(const char *path)
{
	FILE *f = fopen("/proc/mounts", "r");
	char line[1024], needle[400];
	bool found = false;

	snprintf(needle, sizeof(needle), " %s ", path);
	while (f && fgets(line, sizeof(line), f))
		if (strstr(line, needle))
			found = true;
	if (f)
		fclose(f);
	return found;
}

static void set_track_pid(pid_t pid)
{
	if (pid < 0)
		__atomic_store_n(&track_deadline, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&track_pid, pid, __ATOMIC_SEQ_CST);
}

/*
 * A hung filesystem would leave this process in an unkillable wait on its
 * own I/O: the watchdog kills an engine that outlives its deadline, which
 * aborts the connection and turns the hang into a failed test.
 */
static void *watchdog_main(void *arg)
{
	(void)arg;
	for (;;) {
		time_t d = __atomic_load_n(&track_deadline, __ATOMIC_SEQ_CST);
		pid_t pid = __atomic_load_n(&track_pid, __ATOMIC_SEQ_CST);
		if (d && pid > 0 && time(NULL) > d) {
			fprintf(stderr, "watchdog: track still mounted after %d s, killing it\n",
				MOUNT_LIFETIME_S);
			kill(pid, SIGKILL);
			__atomic_store_n(&track_deadline, 0, __ATOMIC_SEQ_CST);
		}
		sleep_ms(100);
	}
	return NULL;
}

/* Start `track` in the background; returns when the disk is served (bounded). */
static void start_track(void)
{
	struct stat st;

	memset(writes, 0, sizeof(writes)); /* a new mount counts from zero */
	unlink(errf); /* the ready line must be this engine's */
	pid_t parent = getpid(), pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* never outlive the test */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
			_exit(126);
		int fd = open(errf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0)
			dup2(fd, 2);
		execl(engine, engine, "track", "--image", img, "--mount", mnt, (char *)NULL);
		_exit(127);
	}
	set_track_pid(pid);
	memset(expect, 0, sizeof(expect)); /* a new engine starts with an empty map */
	__atomic_store_n(&track_deadline, time(NULL) + MOUNT_LIFETIME_S, __ATOMIC_SEQ_CST);
	for (int ms = 0; ms < START_TIMEOUT_MS; ms += 10) {
		int status;
		if (waitpid(track_pid, &status, WNOHANG) == track_pid) {
			set_track_pid(-1);
			fail_msg("track exited early (status %d): %s", status, file_text(errf));
		}
		char *s = file_text(errf);
		bool ready = strstr(s, "track: serving") != NULL;
		free(s);
		if (ready && !stat(disk, &st)) {
			assert_int_equal(st.st_size, IMG_SIZE);
			return;
		}
		sleep_ms(10);
	}
	fail_msg("track did not serve %s within %d ms", disk, START_TIMEOUT_MS);
}

/* The engine's exit code (128 + signal); its stderr is shown when that is not 0. */
static int exit_code(int status, int sent)
{
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);

	set_track_pid(-1);
	if (code && code != 128 + sent) {
		char *s = file_text(errf);
		print_message("track exited with %d; its stderr:\n%s", code, s);
		free(s);
	}
	return code;
}

/* Signal the engine and wait (bounded) for its exit status; kills it on timeout. */
static int stop_track(int sig)
{
	int status = -1;

	if (track_pid < 0)
		return -1;
	kill(track_pid, sig);
	for (int ms = 0; ms < STOP_TIMEOUT_MS; ms += 10) {
		if (waitpid(track_pid, &status, WNOHANG) == track_pid)
			return exit_code(status, sig);
		sleep_ms(10);
	}
	kill(track_pid, SIGKILL);
	waitpid(track_pid, &status, 0);
	set_track_pid(-1);
	umount2(mnt, MNT_DETACH);
	return -1;
}

/* Wait (bounded) for an engine that should exit on its own. */
static int wait_track(void)
{
	int status;

	for (int ms = 0; ms < STOP_TIMEOUT_MS; ms += 10) {
		if (waitpid(track_pid, &status, WNOHANG) == track_pid)
			return exit_code(status, 0);
		sleep_ms(10);
	}
	return stop_track(SIGKILL);
}

static void assert_unmounted_clean(void)
{
	assert_false(is_mounted(mnt));
	DIR *d = opendir(mnt);
	assert_non_null(d);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	assert_int_equal(n, 0);
}

static int group_setup(void **state)
{
	(void)state;
	const char *env = getenv("HANDOFF_ENGINE");
	if (!realpath(env ? env : "build/handoff-engine", engine))
		return -1;
	test_seed();
	dir = test_tmpdir();
	if (!dir)
		return -1;
	snprintf(img, sizeof(img), "%s/vm-disk.img", dir);
	snprintf(mnt, sizeof(mnt), "%s/mnt", dir);
	snprintf(disk, sizeof(disk), "%s/vm-disk.img", mnt);
	snprintf(errf, sizeof(errf), "%s/stderr", dir);
	if (mkdir(mnt, 0755))
		return -1;
	pthread_t wd;
	if (pthread_create(&wd, NULL, watchdog_main, NULL) || pthread_detach(wd))
		return -1;
	test_fill_text(ref, IMG_SIZE);
	test_write_file(img, ref, IMG_SIZE);
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[400];

	(void)state;
	stop_track(SIGTERM);
	if (is_mounted(mnt))
		umount2(mnt, MNT_DETACH);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd))
		return -1;
	free(dir);
	return 0;
}

/* Each test leaves the engine stopped and nothing mounted, even when it fails. */
static int test_teardown(void **state)
{
	(void)state;
	stop_track(SIGTERM);
	if (is_mounted(mnt)) {
		umount2(mnt, MNT_DETACH);
		return -1;
	}
	return 0;
}

/* ---- the model ------------------------------------------------------------------ */

static void model_write(uint64_t off, const uint8_t *buf, size_t len)
{
	memcpy(ref + off, buf, len);
	for (uint64_t b = off / BLK; len && b <= (off + len - 1) / BLK; b++) {
		expect[b] = true;
		writes[b]++;
	}
}

/* pwrite random bytes through the mount and into the model. */
static void write_through(int fd, uint64_t off, size_t len)
{
	uint8_t *buf = malloc(len);
	test_fill_random(buf, len);
	assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
	model_write(off, buf, len);
	free(buf);
}

/* The fetch returns exactly the blocks written since the last one. */
static void check_fetch(void)
{
	struct trk_dirty_map m;
	char err[256];
	uint64_t n = 0;

	if (trk_dirty_fetch(disk, &m, err, sizeof(err)))
		fail_msg("fetch: %s", err);
	assert_int_equal(m.nblocks, NBLOCKS);
	for (uint64_t b = 0; b < NBLOCKS; b++) {
		if (trk_dirty_test(&m, b) != expect[b])
			fail_msg("block %llu: dirty %d, expected %d", (unsigned long long)b,
				 trk_dirty_test(&m, b), expect[b]);
		/* each write counts once per block it touched; the kernel may split a large one, never merge */
		if (expect[b] && m.writes[n] < (writes[b] > 65535 ? 65535 : writes[b]))
			fail_msg("block %llu: %u writes counted, at least %u made", (unsigned long long)b, m.writes[n],
				 writes[b]);
		n += expect[b];
	}
	assert_int_equal(m.ndirty, n);
	assert_false(trk_dirty_test(&m, NBLOCKS));
	trk_dirty_map_free(&m);
	memset(expect, 0, sizeof(expect));
}

static void check_contents(void)
{
	size_t len;
	uint8_t *via_mount = test_read_file(disk, &len);
	assert_int_equal(len, IMG_SIZE);
	assert_memory_equal(via_mount, ref, IMG_SIZE);
	free(via_mount);
	uint8_t *backing = test_read_file(img, &len);
	assert_int_equal(len, IMG_SIZE);
	assert_memory_equal(backing, ref, IMG_SIZE);
	free(backing);
}

/* ---- tests ------------------------------------------------------------------------- */

static int run_engine(const char *args)
{
	char cmd[PATH_MAX + 2048];
	snprintf(cmd, sizeof(cmd), "%s %s 2>%s >/dev/null", engine, args, errf);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void assert_one_line_error(const char *needle)
{
	char *s = file_text(errf);
	size_t n = strlen(s);
	if (n == 0 || s[n - 1] != '\n' || memchr(s, '\n', n - 1) || !strstr(s, needle))
		fail_msg("expected one error line with '%s', got: %s", needle, s);
	free(s);
}

static void test_usage_errors(void **state)
{
	char args[1024], full[400], file[400];

	(void)state;
	assert_int_equal(run_engine("track --help"), 0);
	assert_int_equal(run_engine("track --mount /tmp"), 2);
	assert_one_line_error("--image is required");
	snprintf(args, sizeof(args), "track --image %s/none.img --mount %s", dir, mnt);
	assert_int_equal(run_engine(args), 1);
	assert_one_line_error("cannot open image");
	snprintf(full, sizeof(full), "%s/full", dir);
	snprintf(file, sizeof(file), "%s/full/x", dir);
	assert_int_equal(mkdir(full, 0755), 0);
	test_write_file(file, "x", 1);
	snprintf(args, sizeof(args), "track --image %s --mount %s", img, full);
	assert_int_equal(run_engine(args), 1);
	assert_one_line_error("is not empty");
	snprintf(args, sizeof(args), "track --image %s --mount %s", img, file);
	assert_int_equal(run_engine(args), 1);
	assert_one_line_error("is not a directory");
	snprintf(args, sizeof(args), "track --image %s --mount %s/nowhere", img, dir);
	assert_int_equal(run_engine(args), 1);
	assert_one_line_error("No such file");
	snprintf(args, sizeof(args), "track --image %s --mount %s", dir, mnt);
	assert_int_equal(run_engine(args), 1);
	assert_one_line_error("cannot open image");
	assert_false(is_mounted(mnt));
	assert_false(is_mounted(full));
	unlink(file);
	rmdir(full);
}

static void test_dirty_blocks(void **state)
{
	(void)state;
	start_track();
	check_fetch(); /* nothing written since mount */

	int fd = open(disk, O_RDWR);
	assert_true(fd >= 0);
	/* how hot a block is: block 20 written five times, 21 once (small writes: never split) */
	for (int i = 0; i < 5; i++)
		write_through(fd, 20 * BLK + 100 * (uint64_t)i, 100);
	write_through(fd, 21 * BLK, 100);
	struct trk_dirty_map hm;
	char herr[256];
	if (trk_dirty_fetch(disk, &hm, herr, sizeof(herr)))
		fail_msg("fetch: %s", herr);
	assert_int_equal(hm.ndirty, 2);
	assert_int_equal(hm.writes[0], 5);
	assert_int_equal(hm.writes[1], 1);
	trk_dirty_map_free(&hm);
	memset(expect, 0, sizeof(expect));
	write_through(fd, 20 * BLK, 1);
	check_fetch(); /* the counts run on across fetches: block 20 at 6 */
	write_through(fd, 5 * BLK, BLK);            /* aligned */
	write_through(fd, 3 * BLK + 4000, 200);     /* unaligned, spans blocks 3 and 4 */
	write_through(fd, 10 * BLK + BLK - 1, 1);   /* one byte */
	check_fetch();
	check_fetch(); /* the previous fetch cleared them */

	write_through(fd, (1u << 20) + 7, 1u << 20); /* 1 MiB: blocks 256..512 */
	write_through(fd, IMG_SIZE - 100, 100);      /* the partial last block */
	errno = 0;
	uint8_t junk[64] = { 1 };
	assert_int_equal(pwrite(fd, junk, sizeof(junk), IMG_SIZE - 10), -1); /* past the end */
	assert_int_equal(errno, EFBIG);
	assert_int_not_equal(ftruncate(fd, IMG_SIZE / 2), 0); /* the disk keeps its size */
	assert_true(open(disk, O_WRONLY | O_TRUNC) < 0);
	check_fetch();

	/* random writes with fetches in between */
	for (int i = 0; i < 300; i++) {
		uint64_t off = test_rand() % IMG_SIZE;
		size_t len = 1 + test_rand() % 70000;
		if (len > IMG_SIZE - off)
			len = IMG_SIZE - off;
		write_through(fd, off, len);
		if (test_rand() % 60 == 0)
			check_fetch();
	}
	check_fetch();

	/* the image behind the disk, where the engine reads what changed: the same bytes */
	char ierr[256];
	int ifd = trk_image_open(disk, ierr, sizeof(ierr));
	if (ifd < 0)
		fail_msg("trk_image_open: %s", ierr);
	uint8_t *seen = malloc(IMG_SIZE);
	assert_int_equal(pread(ifd, seen, IMG_SIZE, 0), IMG_SIZE);
	assert_memory_equal(seen, ref, IMG_SIZE);
	free(seen);
	close(ifd);
	assert_true(trk_image_open(img, ierr, sizeof(ierr)) < 0); /* a plain file names none */
	assert_non_null(strstr(ierr, "names no image"));

	/* the control file's raw format */
	write_through(fd, 7 * BLK + 1, 2);
	uint8_t raw[TRK_DIRTY_HDR_LEN + NBLOCKS / 8 + 2 + 8];
	int cfd = open(mnt, O_RDONLY | O_DIRECTORY);
	int ctl = openat(cfd, TRK_DIRTY_CTL, O_RDONLY);
	assert_true(ctl >= 0);
	assert_int_equal(read(ctl, raw, sizeof(raw)), TRK_DIRTY_HDR_LEN + (NBLOCKS + 7) / 8 + 2);
	assert_memory_equal(raw, "HOFFDIR2", 8);
	assert_int_equal(raw[8] | raw[9] << 8 | raw[10] << 16, NBLOCKS);
	assert_int_equal(raw[16], 1);
	assert_int_equal(raw[TRK_DIRTY_HDR_LEN], 0x80);
	unsigned w7 = raw[TRK_DIRTY_HDR_LEN + (NBLOCKS + 7) / 8] | raw[TRK_DIRTY_HDR_LEN + (NBLOCKS + 7) / 8 + 1] << 8;
	assert_true(w7 >= writes[7]); /* block 7's count follows the bitmap */
	assert_int_equal(read(ctl, raw, sizeof(raw)), 0);
	assert_int_equal(close(ctl), 0);
	assert_true(openat(cfd, TRK_DIRTY_CTL, O_WRONLY) < 0); /* read-only */
	close(cfd);
	memset(expect, 0, sizeof(expect));

	/* the directory shows only the disk; the control file is hidden */
	DIR *d = opendir(mnt);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			assert_string_equal(e->d_name, "vm-disk.img");
			n++;
		}
	closedir(d);
	assert_int_equal(n, 1);

	assert_int_equal(fsync(fd), 0);
	assert_int_equal(close(fd), 0);
	check_contents();
	check_fetch(); /* reads mark nothing */
	assert_int_equal(stop_track(SIGTERM), 0);
	assert_unmounted_clean();
}

static void test_direct_fsync_fallocate(void **state)
{
	void *buf = NULL, *back = NULL;

	(void)state;
	start_track();
	int fd = open(disk, O_RDWR | O_DIRECT);
	assert_true(fd >= 0);
	assert_int_equal(posix_memalign(&buf, 4096, 1 << 20), 0);
	assert_int_equal(posix_memalign(&back, 4096, 1 << 20), 0);

	/* 4 KiB-aligned O_DIRECT writes (the backing's O_DIRECT path) */
	test_fill_random(buf, 64 << 10);
	assert_int_equal(pwrite(fd, buf, 64 << 10, 10 * BLK), 64 << 10);
	model_write(10 * BLK, buf, 64 << 10);
	test_fill_random(buf, 1 << 20);
	assert_int_equal(pwrite(fd, buf, 1 << 20, 4 << 20), 1 << 20);
	model_write(4 << 20, buf, 1 << 20);
	assert_int_equal(pread(fd, back, 1 << 20, 4 << 20), 1 << 20);
	assert_memory_equal(back, buf, 1 << 20);
	/* 512-aligned O_DIRECT write: served, whatever the backing's alignment */
	test_fill_random(buf, 1024);
	assert_int_equal(pwrite(fd, buf, 1024, 512), 1024);
	model_write(512, buf, 1024);
	assert_int_equal(fsync(fd), 0);
	assert_int_equal(fdatasync(fd), 0);
	check_fetch();

	/* holes and zeroed ranges change content: marked */
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 30 * BLK + 100, 2 * BLK)) {
		fail_msg("punch hole: %s", strerror(errno));
	}
	memset(ref + 30 * BLK + 100, 0, 2 * BLK);
	expect[30] = expect[31] = expect[32] = true;
	assert_int_equal(fallocate(fd, FALLOC_FL_ZERO_RANGE, 40 * BLK, BLK), 0);
	memset(ref + 40 * BLK, 0, BLK);
	expect[40] = true;
	assert_int_equal(fallocate(fd, 0, 0, BLK), 0); /* allocation only: content unchanged */
	check_fetch();
	close(fd);
	check_contents();
	free(buf);
	free(back);
	assert_int_equal(stop_track(SIGTERM), 0);
	assert_unmounted_clean();
}

/* ---- concurrent writers against concurrent fetches -------------------------------- */

#define WRITERS 4
#define CONC_BLOCKS 1600

struct writer {
	int id;
	int fd;
	int err;
};

static volatile int writers_done;

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint8_t buf[BLK];

	/* each block is written exactly once: by writer (block % WRITERS) */
	for (int b = w->id; b < CONC_BLOCKS; b += WRITERS) {
		memset(buf, (uint8_t)(b * 7 + 1), sizeof(buf));
		if (pwrite(w->fd, buf, BLK, (off_t)b * BLK) != BLK)
			w->err = errno ? errno : EIO;
	}
	__atomic_add_fetch(&writers_done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static void test_concurrent_writers(void **state)
{
	pthread_t t[WRITERS];
	struct writer w[WRITERS];
	static uint8_t seen[NBLOCKS];
	struct trk_dirty_map m;
	char err[256];
	int fetches = 0;

	(void)state;
	start_track();
	check_fetch();
	memset(seen, 0, sizeof(seen));
	writers_done = 0;
	for (int i = 0; i < WRITERS; i++) {
		w[i] = (struct writer){ .id = i, .fd = open(disk, O_WRONLY) };
		assert_true(w[i].fd >= 0);
		assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
	}
	/* fetch while they write, then once more after they are done */
	bool last = false;
	while (!last) {
		last = __atomic_load_n(&writers_done, __ATOMIC_SEQ_CST) == WRITERS;
		if (trk_dirty_fetch(disk, &m, err, sizeof(err)))
			fail_msg("fetch: %s", err);
		for (uint64_t b = 0; b < NBLOCKS; b++)
			seen[b] += trk_dirty_test(&m, b);
		trk_dirty_map_free(&m);
		fetches++;
		sleep_ms(1);
	}
	for (int i = 0; i < WRITERS; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(w[i].err, 0);
		close(w[i].fd);
	}
	/* every written block in exactly one fetch, nothing else in any */
	for (uint64_t b = 0; b < NBLOCKS; b++)
		if (seen[b] != (b < CONC_BLOCKS))
			fail_msg("block %llu seen in %d fetches (of %d)", (unsigned long long)b, seen[b],
				 fetches);
	assert_true(fetches >= 2);
	for (int b = 0; b < CONC_BLOCKS; b++)
		memset(ref + (size_t)b * BLK, (uint8_t)(b * 7 + 1), BLK);
	check_contents();
	assert_int_equal(stop_track(SIGINT), 0);
	assert_unmounted_clean();
}

/* ---- stopping -------------------------------------------------------------------------- */

static void test_stop_and_unmount(void **state)
{
	char err[256], cmd[400];
	struct trk_dirty_map m;

	(void)state;
	start_track();
	assert_true(is_mounted(mnt));
	int fd = open(disk, O_RDWR); /* an open disk does not keep it mounted */
	assert_true(fd >= 0);
	assert_int_equal(stop_track(SIGTERM), 0);
	close(fd);
	assert_unmounted_clean();
	assert_int_not_equal(trk_dirty_fetch(disk, &m, err, sizeof(err)), 0);

	start_track();
	snprintf(cmd, sizeof(cmd), "fusermount3 -u %s", mnt);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(wait_track(), 0);
	assert_unmounted_clean();

	/* killed outright: auto_unmount still removes the mount */
	start_track();
	assert_int_equal(stop_track(SIGKILL), 128 + SIGKILL);
	for (int ms = 0; is_mounted(mnt) && ms < STOP_TIMEOUT_MS; ms += 10)
		sleep_ms(10);
	assert_unmounted_clean();
}

/* ---- the map format without a mount ---------------------------------------------------- */

static void test_map_parse(void **state)
{
	uint8_t buf[TRK_DIRTY_HDR_LEN + 2 + 12];
	const size_t len4 = TRK_DIRTY_HDR_LEN + 2 + 8; /* 4 dirty blocks */
	struct trk_dirty_map m;
	char err[256], path[400];

	(void)state;
	memset(buf, 0, sizeof(buf));
	memcpy(buf, "HOFFDIR2", 8);
	buf[8] = 10;  /* 10 blocks: 2 bitmap bytes, then a u16 count for each of 4 dirty blocks */
	buf[16] = 4;
	buf[24] = 0x83;
	buf[25] = 0x02;
	buf[26] = 1, buf[28] = 2, buf[30] = 0x34, buf[31] = 0x12, buf[32] = 9;
	assert_int_equal(trk_dirty_parse(buf, len4, &m, err, sizeof(err)), 0);
	assert_int_equal(m.nblocks, 10);
	assert_int_equal(m.ndirty, 4);
	assert_true(m.writes[0] == 1 && m.writes[1] == 2 && m.writes[2] == 0x1234 && m.writes[3] == 9);
	assert_true(trk_dirty_test(&m, 0) && trk_dirty_test(&m, 1) && trk_dirty_test(&m, 7) &&
		    trk_dirty_test(&m, 9));
	assert_false(trk_dirty_test(&m, 2) || trk_dirty_test(&m, 8) || trk_dirty_test(&m, 10));
	trk_dirty_map_free(&m);

	buf[16] = 3; /* count does not match (the length fits 3) */
	assert_int_equal(trk_dirty_parse(buf, len4 - 2, &m, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "marks 4"));
	buf[16] = 5;
	buf[25] = 0x06; /* block 10 is past the end */
	assert_int_equal(trk_dirty_parse(buf, len4 + 2, &m, err, sizeof(err)), -EBADMSG);
	buf[25] = 0x02;
	buf[16] = 4;
	assert_int_equal(trk_dirty_parse(buf, len4 - 1, &m, err, sizeof(err)), -EBADMSG); /* a count cut short */
	assert_int_equal(trk_dirty_parse(buf, len4 + 2, &m, err, sizeof(err)), -EBADMSG); /* one too many */
	assert_int_equal(trk_dirty_parse(buf, 10, &m, err, sizeof(err)), -EBADMSG);
	buf[16] = 200; /* more dirty than blocks: never a huge allocation */
	assert_int_equal(trk_dirty_parse(buf, len4, &m, err, sizeof(err)), -EBADMSG);
	buf[16] = 4;
	memcpy(buf, "HOFFDIRT", 8); /* an earlier build's tracker: the bitmap alone */
	assert_int_equal(trk_dirty_parse(buf, TRK_DIRTY_HDR_LEN + 2, &m, err, sizeof(err)), 0);
	assert_true(m.ndirty == 4 && trk_dirty_test(&m, 9) && !m.writes);
	trk_dirty_map_free(&m);
	assert_int_equal(trk_dirty_parse(buf, len4, &m, err, sizeof(err)), -EBADMSG);
	buf[0] = 'X';
	assert_int_equal(trk_dirty_parse(buf, len4, &m, err, sizeof(err)), -EBADMSG);
	assert_null(m.bits);

	/* a file outside any track mount */
	assert_int_equal(trk_dirty_fetch(img, &m, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "not a disk inside a track mount"));
	snprintf(path, sizeof(path), "%s/missing.img", dir);
	assert_int_equal(trk_dirty_fetch(path, &m, err, sizeof(err)), -ENOENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_map_parse),
		cmocka_unit_test_teardown(test_usage_errors, test_teardown),
		cmocka_unit_test_teardown(test_dirty_blocks, test_teardown),
		cmocka_unit_test_teardown(test_direct_fsync_fallocate, test_teardown),
		cmocka_unit_test_teardown(test_concurrent_writers, test_teardown),
		cmocka_unit_test_teardown(test_stop_and_unmount, test_teardown),
	};
	return cmocka_run_group_tests_name("dirtyfs", tests, group_setup, group_teardown);
}

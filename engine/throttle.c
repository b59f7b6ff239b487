#include "throttle.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_str(const char *dir, const char *file, const char *val)
{
	char path[512];
	int fd, ret = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0)
		return -errno;
	if (write(fd, val, strlen(val)) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

static bool has_word(const char *list, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = list; (p = strstr(p, word)); p += n)
		if ((p == list || p[-1] == ',' || p[-1] == ' ') && (p[n] == ',' || p[n] == ' ' || p[n] == '\n' || !p[n]))
			return true;
	return false;
}

/*
 * Where the cpu controller is mounted in the mount namespace of `mountinfo`:
 * a v1 hierarchy with "cpu" (its mount options in v1_opts, "rw" dropped),
 * else the v2 hierarchy if it offers "cpu". Returns the version, 0 if
 * neither.
 */
static int find_cpu_hierarchy(const char *mountinfo, char *mnt, size_t len, char *v1_opts, size_t optlen)
{
	char line[1024], v2[256] = "";
	FILE *f = fopen(mountinfo, "r");
	int version = 0;

	if (!f)
		return 0;
	while (!version && fgets(line, sizeof(line), f)) {
		char point[256], fstype[32], opts[512];
		const char *sep = strstr(line, " - ");
		if (!sep || sscanf(line, "%*s %*s %*s %*s %255s", point) != 1 ||
		    sscanf(sep + 3, "%31s %*s %511s", fstype, opts) != 2)
			continue;
		if (!strcmp(fstype, "cgroup") && has_word(opts, "cpu")) {
			snprintf(mnt, len, "%s", point);
			const char *o = !strncmp(opts, "rw,", 3) || !strncmp(opts, "ro,", 3) ? opts + 3 : opts;
			snprintf(v1_opts, optlen, "%s", o);
			version = 1;
		} else if (!strcmp(fstype, "cgroup2") && !v2[0]) {
			snprintf(v2, sizeof(v2), "%s", point);
		}
	}
	fclose(f);
	if (version || !v2[0])
		return version;
	snprintf(mnt, len, "%s", v2);
	return 2;
}

static bool v2_offers_cpu(const char *mnt)
{
	char path[600], ctl[256] = "";
	FILE *f;

	snprintf(path, sizeof(path), "%s/cgroup.controllers", mnt);
	if ((f = fopen(path, "r"))) {
		if (!fgets(ctl, sizeof(ctl), f))
			ctl[0] = 0;
		fclose(f);
	}
	return has_word(ctl, "cpu");
}

/*
 * The cpu hierarchy as this process sees it. 'ip netns exec' runs us in a
 * mount namespace with a fresh /sys and no cgroup mounts: then the host's
 * (PID 1's) hierarchy is mounted again on a private directory of our own,
 * which close() unmounts.
 */
static int open_cpu_hierarchy(struct eng_throttle *t, char *mnt, size_t len)
{
	char opts[512];
	int version = find_cpu_hierarchy("/proc/self/mountinfo", mnt, len, opts, sizeof(opts));

	if (version == 2 && !v2_offers_cpu(mnt))
		version = 0;
	if (version)
		return version;
	version = find_cpu_hierarchy("/proc/1/mountinfo", mnt, len, opts, sizeof(opts));
	if (!version)
		return 0;
	snprintf(t->mount, sizeof(t->mount), "/run/handoff-cgroup.XXXXXX");
	if (!mkdtemp(t->mount)) {
		snprintf(t->mount, sizeof(t->mount), "/tmp/handoff-cgroup.XXXXXX");
		if (!mkdtemp(t->mount))
			return t->mount[0] = 0;
	}
	if (mount("cgroup", t->mount, version == 1 ? "cgroup" : "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		  version == 1 ? opts : NULL)) {
		rmdir(t->mount);
		t->mount[0] = 0;
		return 0;
	}
	snprintf(mnt, len, "%s", t->mount);
	if (version == 2 && !v2_offers_cpu(mnt))
		return 0; /* close() unmounts */
	return version;
}

/* The cgroup path of a task in hierarchy `version` (v1: the line naming cpu). */
static int task_cgroup(const char *proc_file, int version, char *out, size_t len)
{
	char line[1024];
	FILE *f = fopen(proc_file, "r");
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (ret && fgets(line, sizeof(line), f)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c2 = 0;
		bool match = version == 2 ? !strcmp(line, "0") && c1[1] == 0 : has_word(c1 + 1, "cpu");
		if (!match)
			continue;
		c2[1 + strcspn(c2 + 1, "\n")] = 0;
		snprintf(out, len, "%s", c2 + 1);
		ret = 0;
	}
	fclose(f);
	return ret;
}

static int fail(char *err, size_t errlen, int ret, const char *what, const char *path)
{
	snprintf(err, errlen, "guest throttle: %s %s: %s", what, path, strerror(-ret));
	return ret;
}

static void unmount_private(struct eng_throttle *t)
{
	if (!t->mount[0])
		return;
	umount2(t->mount, MNT_DETACH);
	rmdir(t->mount);
	t->mount[0] = 0;
}

static int move_threads(struct eng_throttle *t, const char *dir, const char *file)
{
	char num[24];
	int ret = 0;

	for (unsigned i = 0; i < t->ntids; i++) {
		snprintf(num, sizeof(num), "%d", (int)t->tids[i]);
		int r = write_str(dir, file, num);
		if (r && r != -ESRCH && !ret)
			ret = r;
	}
	return ret;
}

/* v1: a child of the first vCPU's own cgroup, so its parent's limits still apply. */
static int setup_v1(struct eng_throttle *t, char *err, size_t errlen)
{
	char period[24];
	int ret;

	if (snprintf(t->dir, sizeof(t->dir), "%s/handoff-throttle-%d", t->home, (int)t->pid) >= (int)sizeof(t->dir))
		return fail(err, errlen, -ENAMETOOLONG, "cgroup path too long:", t->home);
	if (mkdir(t->dir, 0755) && errno != EEXIST)
		return fail(err, errlen, -errno, "cannot create", t->dir);
	t->made = true;
	snprintf(period, sizeof(period), "%d", ENG_THROTTLE_PERIOD_US);
	if ((ret = write_str(t->dir, "cpu.cfs_period_us", period)) || (ret = write_str(t->dir, "cpu.cfs_quota_us", "-1")) ||
	    (ret = move_threads(t, t->dir, "tasks")))
		return fail(err, errlen, ret, "cannot set up", t->dir);
	return 0;
}

/*
 * v2 puts single threads only into a threaded subtree: a domain of our own
 * (under the root, where cpu is delegated) takes the whole process, its
 * threaded child the vCPU threads.
 */
static int setup_v2(struct eng_throttle *t, const char *mnt, char *err, size_t errlen)
{
	char num[24];
	int ret;

	if (snprintf(t->domain, sizeof(t->domain), "%s/handoff-throttle-%d", mnt, (int)t->pid) >= (int)sizeof(t->domain) ||
	    snprintf(t->dir, sizeof(t->dir), "%s/vcpu", t->domain) >= (int)sizeof(t->dir))
		return fail(err, errlen, -ENAMETOOLONG, "cgroup path too long:", mnt);
	if (mkdir(t->domain, 0755) && errno != EEXIST)
		return fail(err, errlen, -errno, "cannot create", t->domain);
	t->made = true;
	snprintf(num, sizeof(num), "%d", (int)t->pid);
	if ((ret = write_str(t->domain, "cgroup.procs", num)) || ((ret = mkdir(t->dir, 0755) ? -errno : 0) && ret != -EEXIST) ||
	    (ret = write_str(t->dir, "cgroup.type", "threaded")) ||
	    (ret = write_str(t->domain, "cgroup.subtree_control", "+cpu")) ||
	    (ret = move_threads(t, t->dir, "cgroup.threads")))
		return fail(err, errlen, ret, "cannot set up", t->domain);
	return 0;
}

int eng_throttle_open(struct eng_throttle *t, pid_t pid, const pid_t *tids, unsigned n, char *err,
		      size_t errlen)
{
	char mnt[256], rel[256], proc[64];
	int ret;

	memset(t, 0, sizeof(*t));
	if (!n || n > ENG_THROTTLE_MAX_THREADS) {
		snprintf(err, errlen, "guest throttle: %u vCPU threads (1..%d)", n, ENG_THROTTLE_MAX_THREADS);
		return -EINVAL;
	}
	t->pid = pid;
	t->ntids = n;
	memcpy(t->tids, tids, n * sizeof(*tids));
	t->active = true; /* from here on close() undoes whatever was done */
	t->version = open_cpu_hierarchy(t, mnt, sizeof(mnt));
	if (!t->version) {
		snprintf(err, errlen, "guest throttle: no cgroup hierarchy with the cpu controller (here or in PID 1's mounts)");
		ret = -ENOTSUP;
	} else {
		snprintf(proc, sizeof(proc), t->version == 1 ? "/proc/%d/task/%d/cgroup" : "/proc/%d/cgroup", (int)pid,
			 (int)tids[0]);
		if ((ret = task_cgroup(proc, t->version, rel, sizeof(rel))))
			fail(err, errlen, ret, "cannot read the cgroup of", proc);
		else if (snprintf(t->home, sizeof(t->home), "%s%s", mnt, strcmp(rel, "/") ? rel : "") >= (int)sizeof(t->home))
			ret = fail(err, errlen, -ENAMETOOLONG, "cgroup path too long:", rel);
		else
			ret = t->version == 1 ? setup_v1(t, err, errlen) : setup_v2(t, mnt, err, errlen);
	}
	if (ret)
		eng_throttle_close(t);
	return ret;
}

int eng_throttle_set(struct eng_throttle *t, double fraction, char *err, size_t errlen)
{
	char val[64];
	int ret;

	if (!t->active) {
		snprintf(err, errlen, "guest throttle: not open");
		return -EINVAL;
	}
	fraction = fraction < 0 ? 0 : fraction > 0.99 ? 0.99 : fraction;
	/* the quota covers every vCPU of the group together */
	long quota = (long)((1 - fraction) * ENG_THROTTLE_PERIOD_US * t->ntids);
	if (quota < 1000)
		quota = 1000; /* the kernel's minimum */
	if (t->version == 1) {
		snprintf(val, sizeof(val), "%ld", fraction > 0 ? quota : -1L);
		ret = write_str(t->dir, "cpu.cfs_quota_us", val);
	} else {
		if (fraction > 0)
			snprintf(val, sizeof(val), "%ld %d", quota, ENG_THROTTLE_PERIOD_US);
		else
			snprintf(val, sizeof(val), "max %d", ENG_THROTTLE_PERIOD_US);
		ret = write_str(t->dir, "cpu.max", val);
	}
	if (ret)
		return fail(err, errlen, ret, "cannot set the quota of", t->dir);
	t->fraction = fraction;
	return 0;
}

void eng_throttle_close(struct eng_throttle *t)
{
	if (!t->active)
		return;
	t->active = false;
	if (t->made && t->version == 1) {
		move_threads(t, t->home, "tasks");
		rmdir(t->dir);
	} else if (t->made) {
		char num[24];
		snprintf(num, sizeof(num), "%d", (int)t->pid);
		write_str(t->home, "cgroup.procs", num); /* the whole process, threads included */
		rmdir(t->dir);
		rmdir(t->domain);
	}
	unmount_private(t);
}

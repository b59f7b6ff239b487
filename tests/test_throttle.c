/*
 * engine/throttle: a busy thread of this process goes into a real throttle
 * cgroup, gets at most its quota of CPU, and is back in its own cgroup (the
 * throttle cgroup removed) after close. Needs root and a cpu cgroup
 * controller: without them the test fails, it does not skip. Run it also
 * under 'ip netns exec' (as it_handoff runs send): there the hierarchy is
 * not mounted and the throttle mounts it privately.
 */
#include "testlib.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "engine/throttle.h"

static volatile int spin_stop;
static pid_t spin_tid;

static void *spin(void *arg)
{
	(void)arg;
	__atomic_store_n(&spin_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_RELEASE);
	while (!__atomic_load_n(&spin_stop, __ATOMIC_RELAXED))
		;
	return NULL;
}

/* CPU seconds the thread used over `wall` seconds of sleeping here. */
static double thread_cpu_over(pthread_t th, double wall)
{
	clockid_t cid;
	struct timespec a, b, d = { (time_t)wall, (long)((wall - (time_t)wall) * 1e9) };

	assert_int_equal(pthread_getcpuclockid(th, &cid), 0);
	clock_gettime(cid, &a);
	nanosleep(&d, NULL);
	clock_gettime(cid, &b);
	return (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
}

/* The thread's line for the cpu controller in /proc (v1) or its v2 line. */
static void cpu_cgroup_line(pid_t tid, char *out, size_t len)
{
	char path[64], line[512];

	snprintf(path, sizeof(path), "/proc/self/task/%d/cgroup", (int)tid);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	out[0] = 0;
	bool v1 = false;
	while (fgets(line, sizeof(line), f)) {
		bool cpu = strstr(line, ":cpu:") || strstr(line, ",cpu,") || strstr(line, ":cpu,") || strstr(line, ",cpu:");
		if (cpu || (!v1 && !strncmp(line, "0::", 3)))
			snprintf(out, len, "%s", line);
		v1 |= cpu;
	}
	fclose(f);
}

/* Is tid listed in the cgroup file (tasks or cgroup.threads) of dir? */
static bool listed(const char *dir, const char *file, pid_t tid)
{
	char path[600];
	int v;
	bool found = false;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	while (!found && fscanf(f, "%d", &v) == 1)
		found = v == (int)tid;
	fclose(f);
	return found;
}

static void test_throttle_slows_and_restores(void **state)
{
	struct eng_throttle t;
	pthread_t th;
	char err[300], dir[512];
	struct stat st;

	(void)state;
	spin_stop = 0;
	assert_int_equal(pthread_create(&th, NULL, spin, NULL), 0);
	while (!__atomic_load_n(&spin_tid, __ATOMIC_ACQUIRE))
		usleep(1000);
	pid_t tid = spin_tid;
	char before[512], after[512];
	cpu_cgroup_line(tid, before, sizeof(before));
	int ret = eng_throttle_open(&t, getpid(), &tid, 1, err, sizeof(err));
	if (ret)
		fail_msg("eng_throttle_open: %s", err);
	const char *file = t.version == 1 ? "tasks" : "cgroup.threads";
	assert_true(listed(t.dir, file, tid));
	cpu_cgroup_line(tid, after, sizeof(after));
	assert_non_null(strstr(after, "handoff-throttle-"));
	/* 90% taken away: at most ~0.1 s of CPU a second (checked loosely: 0.5) */
	assert_int_equal(eng_throttle_set(&t, 0.9, err, sizeof(err)), 0);
	double slowed = thread_cpu_over(th, 1.0);
	print_message("throttled to 10%%: %.3f s of CPU in 1 s (cgroup v%d)\n", slowed, t.version);
	assert_true(slowed < 0.5);
	/* bad input is clamped, not refused */
	assert_int_equal(eng_throttle_set(&t, 7, err, sizeof(err)), 0);
	assert_true(t.fraction <= 0.99);
	assert_int_equal(eng_throttle_set(&t, 0, err, sizeof(err)), 0);
	snprintf(dir, sizeof(dir), "%s", t.dir);
	eng_throttle_close(&t);
	eng_throttle_close(&t); /* twice is harmless */
	assert_false(stat(dir, &st) == 0);
	/* back where it was (in a netns the hierarchy was mounted privately and is gone again) */
	cpu_cgroup_line(tid, after, sizeof(after));
	assert_string_equal(before, after);
	assert_false(t.mount[0]);
	__atomic_store_n(&spin_stop, 1, __ATOMIC_RELAXED);
	pthread_join(th, NULL);
}

static void test_throttle_bad_input(void **state)
{
	struct eng_throttle t;
	char err[300];
	pid_t none = 0;

	(void)state;
	assert_int_equal(eng_throttle_open(&t, getpid(), &none, 0, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "vCPU threads"));
	/* a thread that does not exist: one line naming what failed, nothing left behind */
	pid_t gone = 0x3ffffff0;
	assert_true(eng_throttle_open(&t, getpid(), &gone, 1, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "guest throttle"));
	assert_false(t.active);
	memset(&t, 0, sizeof(t));
	assert_int_equal(eng_throttle_set(&t, 0.5, err, sizeof(err)), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_throttle_slows_and_restores),
		cmocka_unit_test(test_throttle_bad_input),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

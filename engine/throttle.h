/*
 * Guest throttle: slow a VM's vCPU threads so that a guest dirtying memory
 * and disk faster than the link drains them still lets the handoff converge
 * (what QEMU's auto-converge does to its own migration, done here for the
 * engine's pre-copy, which QEMU does not see).
 *
 * The vCPU threads (QMP query-cpus-fast thread-id) go into a cgroup of their
 * own with a CPU quota: "fraction" of each period is taken away. Only the
 * vCPU threads: QEMU's main loop and I/O threads keep serving QMP and the
 * disk. cgroup v1's cpu controller takes single threads in "tasks"; on
 * cgroup v2 the cgroup is a threaded child of a domain holding the process
 * (cgroup.threads, cpu.max). Closing puts every thread back where it was.
 * Where the hierarchy is not visible (a mount namespace of 'ip netns exec'),
 * PID 1's is mounted again on a private directory for as long as it is open.
 */
#ifndef HANDOFF_THROTTLE_H
#define HANDOFF_THROTTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define ENG_THROTTLE_MAX_THREADS 256
#define ENG_THROTTLE_PERIOD_US 100000 /* a vCPU runs at most (1 - fraction) of every 100 ms */

struct eng_throttle {
	bool active;
	bool made;            /* the cgroup exists (close removes it) */
	int version;          /* 1 or 2 */
	char mount[64];       /* a private mount of the hierarchy, if one was needed */
	pid_t pid;            /* the QEMU process */
	pid_t tids[ENG_THROTTLE_MAX_THREADS];
	unsigned ntids;
	char dir[512];        /* the vCPU cgroup */
	char domain[512];     /* v2: the domain cgroup holding the process */
	char home[512];       /* where the threads were (v1: the first vCPU's cgroup; v2: the process's) */
	double fraction;
};

/* Put the threads tids[0..n) of process pid into a new throttle cgroup
 * (not yet slowed). 0, or -errno with a one-line reason in err. */
int eng_throttle_open(struct eng_throttle *t, pid_t pid, const pid_t *tids, unsigned n, char *err,
		      size_t errlen);
/* Take fraction (0 .. 0.99) of the vCPUs' time away; 0 = unslowed. */
int eng_throttle_set(struct eng_throttle *t, double fraction, char *err, size_t errlen);
/* Threads back where they were, the cgroup removed. Safe to call twice. */
void eng_throttle_close(struct eng_throttle *t);

#endif

#include "guard.h"
#include "cli.h"
#include "qemu_bridge/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Messages on the pipe: a type byte, then (T) the throttle as it is. */
enum { MSG_READY = 'R', MSG_RUNNING = 'W', MSG_THROTTLE = 'T', MSG_COMMIT = 'C', MSG_RELEASE = 'X' };

/* 0, or -EPIPE when the guard is gone (never a SIGPIPE: MSG_NOSIGNAL). */
static int put(struct eng_guard *g, char type, const void *body, size_t len)
{
	char buf[1 + sizeof(struct eng_throttle)];

	if (g->fd < 0)
		return 0;
	if (len > sizeof(buf) - 1)
		return -EINVAL;
	buf[0] = type;
	if (len)
		memcpy(buf + 1, body, len);
	size_t done = 0;
	while (done < len + 1) {
		ssize_t n = send(g->fd, buf + done, len + 1 - done, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -EPIPE;
		done += (size_t)n;
	}
	return 0;
}

int eng_guard_start(struct eng_guard *g, const char *qmp_path, bool was_running, char *err, size_t errlen)
{
	int p[2];
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	/* this very binary (its inode), whatever now lies at its path */
	char *argv[] = { "handoff-engine", "guard", "--qmp", (char *)qmp_path, NULL };

	g->fd = -1;
	g->pid = 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p)) {
		snprintf(err, errlen, "cannot start the source VM's guard: %s", strerror(errno));
		return -errno;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[0], 3);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawnattr_init(&at);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
	int r = posix_spawn(&g->pid, "/proc/self/exe", &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(p[0]);
	if (r) {
		close(p[1]);
		snprintf(err, errlen, "cannot start the source VM's guard: %s", strerror(r));
		return -r;
	}
	g->fd = p[1];
	/* the guard says it is up and reading before the engine relies on it */
	struct timeval tv = { .tv_sec = 5 };
	char ready = 0, running = was_running;
	setsockopt(g->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (recv(g->fd, &ready, 1, 0) != 1 || ready != MSG_READY || put(g, MSG_RUNNING, &running, 1)) {
		snprintf(err, errlen, "the source VM's guard did not start (handoff-engine guard)");
		close(g->fd);
		g->fd = -1;
		waitpid(g->pid, NULL, WNOHANG);
		return -EIO;
	}
	return 0;
}

void eng_guard_throttle(struct eng_guard *g, const struct eng_throttle *t)
{
	put(g, MSG_THROTTLE, t, sizeof(*t)); /* a guard gone is caught at the commit */
}

static void finish(struct eng_guard *g, char type)
{
	if (g->fd < 0)
		return;
	put(g, type, NULL, 0);
	close(g->fd);
	g->fd = -1;
	/* it exits at once; never wait long on it (init reaps it after us) */
	for (int i = 0; i < 100 && waitpid(g->pid, NULL, WNOHANG) == 0; i++)
		usleep(10000);
}

int eng_guard_committed(struct eng_guard *g, bool committed)
{
	char c = committed;

	return put(g, MSG_COMMIT, &c, 1);
}

void eng_guard_release(struct eng_guard *g)
{
	finish(g, MSG_RELEASE);
}

static int read_all(int fd, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = read(fd, (char *)buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

/* The engine died before the commit: put the source VM back. */
static int restore(const char *qmp_path, bool was_running, struct eng_throttle *t)
{
	char err[256], status[64];
	struct qb_qmp *q = NULL;

	if (t->made)
		eng_throttle_close(t);
	/* the engine's QMP connection closes with it; QEMU then takes ours (10 s at most) */
	for (int i = 0; i < 20 && !q; i++)
		if (!(q = qb_qmp_connect(qmp_path, 0.3, err, sizeof(err))))
			usleep(200000);
	if (!q) {
		fprintf(stderr, "handoff-engine guard: the engine died mid-handoff and the source VM's QMP %s does not answer: %s\n",
			qmp_path, err);
		return 1;
	}
	if (qb_migrate_status(q, status, sizeof(status), err, sizeof(err)) == 0 && strcmp(status, "completed") &&
	    strcmp(status, "none") && strcmp(status, "failed") && strcmp(status, "cancelled"))
		qb_qmp_run(q, "migrate_cancel", NULL, 10, err, sizeof(err));
	int ret = 0;
	if (was_running && qb_qmp_running(q, status, sizeof(status), err, sizeof(err)) == 0) {
		if (qb_qmp_run(q, "cont", NULL, 10, err, sizeof(err))) {
			fprintf(stderr, "handoff-engine guard: the engine died mid-handoff; could not resume the source VM: %s\n", err);
			ret = 1;
		} else {
			fprintf(stderr, "handoff-engine guard: the engine died before the commit: the source VM runs again\n");
		}
	}
	qb_qmp_close(q);
	return ret;
}

int eng_guard_main(int fd, const char *qmp_path)
{
	struct eng_throttle t = { 0 };
	bool was_running = false, committed = false;
	char type, flag;

	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	/* nothing of the engine's but the pipe: a connection kept open here would hide a death */
	close_range(4, ~0u, 0);
	char ready = MSG_READY;
	if (send(fd, &ready, 1, MSG_NOSIGNAL) != 1)
		return 1;
	for (;;) {
		/* the engine is gone: after the commit the VM is the destination's */
		if (read_all(fd, &type, 1))
			return committed ? 0 : restore(qmp_path, was_running, &t);
		switch (type) {
		case MSG_RUNNING:
		case MSG_COMMIT:
			if (read_all(fd, &flag, 1))
				return committed ? 0 : restore(qmp_path, was_running, &t);
			*(type == MSG_RUNNING ? &was_running : &committed) = flag;
			break;
		case MSG_THROTTLE:
			if (read_all(fd, &t, sizeof(t)))
				return committed ? 0 : restore(qmp_path, was_running, &t);
			break;
		case MSG_RELEASE:
			return 0;
		default:
			return 1;
		}
	}
}

enum { G_QMP };

static const struct cli_opt guard_opts[] = {
	[G_QMP] = { "qmp", 0, "SRC.sock", true, "QMP socket of the source QEMU" },
	{ 0 },
};

static int guard_run(const struct cli_cmd *cmd, const char *const *val)
{
	(void)cmd;
	return eng_guard_main(3, val[G_QMP]);
}

const struct cli_cmd cli_cmd_guard = {
	.name = "guard",
	.summary = "Internal: started by send (not by hand). Puts the source VM back if send dies before\n"
		   "the commit: closes the guest throttle, cancels QEMU's migration and continues the VM.",
	.usage = "--qmp SRC.sock (reads the engine's pipe on fd 3)",
	.opts = guard_opts,
	.run = guard_run,
};

#include "guard.h"
#include "cli.h"
#include "qemu_bridge/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/*
 * Messages on the pipe: a type byte, then a body for some. Engine to guard:
 * W running flag, T the throttle as it is, C (source: a flag; destination:
 * none) committed, D u64 length and the device state, X released, K u8
 * length and the bytes of the source's COMMIT, with the connection's socket
 * (SCM_RIGHTS). Guard to engine: R ready, A armed (holds the device state),
 * F fed and an int32 errno (0: QEMU has it all).
 */
enum {
	MSG_READY = 'R', MSG_RUNNING = 'W', MSG_THROTTLE = 'T', MSG_COMMIT = 'C', MSG_RELEASE = 'X',
	MSG_TAIL = 'D', MSG_ARMED = 'A', MSG_FED = 'F', MSG_WATCH = 'K',
};
#define WATCH_MAX 64	   /* a COMMIT on the wire is 19 bytes */
#define WATCH_WAIT_S 60 /* as long as receive itself waits for COMMIT */

/* 0, or -EPIPE when the guard is gone (never a SIGPIPE: MSG_NOSIGNAL). */
static int send_all(struct eng_guard *g, const void *buf, size_t len)
{
	size_t done = 0;

	if (g->fd < 0)
		return 0;
	while (done < len) {
		ssize_t n = send(g->fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -EPIPE;
		done += (size_t)n;
	}
	return 0;
}

/* A message: its type byte, then (for some types) a fixed body. */
static int put(struct eng_guard *g, char type, const void *body, size_t len)
{
	char buf[1 + sizeof(struct eng_throttle)];

	if (len > sizeof(buf) - 1)
		return -EINVAL;
	buf[0] = type;
	if (len)
		memcpy(buf + 1, body, len);
	return send_all(g, buf, len + 1);
}

static int recv_all(int fd, void *buf, size_t len)
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

/*
 * Run this very binary (its inode, whatever now lies at its path) as a guard
 * in a session of its own: the pipe on its fd 3, extra_fd (if >= 0) on 4.
 */
static int spawn(struct eng_guard *g, char **argv, int extra_fd, const char *whose, char *err, size_t errlen)
{
	int p[2];
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;

	g->fd = -1;
	g->pid = 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p)) {
		snprintf(err, errlen, "cannot start the %s guard: %s", whose, strerror(errno));
		return -errno;
	}
	/* above 4 first: an extra_fd that is 3 would be overwritten by the pipe before it moved */
	int extra = extra_fd >= 0 ? fcntl(extra_fd, F_DUPFD_CLOEXEC, 5) : -1;
	if (extra_fd >= 0 && extra < 0) {
		int e = errno;
		close(p[0]);
		close(p[1]);
		snprintf(err, errlen, "cannot start the %s guard: %s", whose, strerror(e));
		return -e;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[0], 3);
	if (extra >= 0)
		posix_spawn_file_actions_adddup2(&fa, extra, 4);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawnattr_init(&at);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
	int r = posix_spawn(&g->pid, "/proc/self/exe", &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(p[0]);
	if (extra >= 0)
		close(extra);
	if (r) {
		close(p[1]);
		snprintf(err, errlen, "cannot start the %s guard: %s", whose, strerror(r));
		return -r;
	}
	g->fd = p[1];
	return 0;
}

/* One byte from the guard within timeout_s; 0 if it is gone or silent. */
static char answer(struct eng_guard *g, int timeout_s)
{
	struct timeval tv = { .tv_sec = timeout_s };
	char c = 0;

	setsockopt(g->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	while (recv(g->fd, &c, 1, 0) < 0 && errno == EINTR)
		;
	return c;
}

/* Close the pipe and reap the guard: it exits at once on that (never wait long: init reaps it after us). */
static void let_go(struct eng_guard *g)
{
	close(g->fd);
	g->fd = -1;
	for (int i = 0; i < 100 && waitpid(g->pid, NULL, WNOHANG) == 0; i++)
		usleep(10000);
}

int eng_guard_start(struct eng_guard *g, const char *qmp_path, bool was_running, char *err, size_t errlen)
{
	char *argv[] = { "handoff-engine", "guard", "--qmp", (char *)qmp_path, NULL };
	char running = was_running;
	int ret = spawn(g, argv, -1, "source VM's", err, errlen);

	if (ret)
		return ret;
	/* the guard says it is up and reading before the engine relies on it */
	if (answer(g, 5) != MSG_READY || put(g, MSG_RUNNING, &running, 1)) {
		snprintf(err, errlen, "the source VM's guard did not start (handoff-engine guard)");
		let_go(g);
		return -EIO;
	}
	return 0;
}

int eng_guard_start_incoming(struct eng_guard *g, int mig_fd, char *err, size_t errlen)
{
	char *argv[] = { "handoff-engine", "guard", "--incoming", NULL };

	/* its READY is read with the tail: the start overlaps QEMU's load */
	return spawn(g, argv, mig_fd, "destination VM's", err, errlen);
}

int eng_guard_hold_tail(struct eng_guard *g, const void *tail, size_t len, char *err, size_t errlen)
{
	uint64_t n = len;

	if (answer(g, 5) != MSG_READY || put(g, MSG_TAIL, &n, sizeof(n)) || send_all(g, tail, len) ||
	    answer(g, 10) != MSG_ARMED) {
		snprintf(err, errlen, "the destination VM's guard did not take the device state (handoff-engine guard --incoming)");
		let_go(g);
		return -EIO;
	}
	return 0;
}

int eng_guard_feed(struct eng_guard *g)
{
	return put(g, MSG_COMMIT, NULL, 0);
}

int eng_guard_fed(struct eng_guard *g, char *err, size_t errlen)
{
	int32_t code = 0;

	/* QEMU reads the device state at its own pace: as long as a resume may take */
	if (answer(g, 120) != MSG_FED || recv_all(g->fd, &code, sizeof(code)) || code) {
		snprintf(err, errlen, "feeding the destination QEMU its device state: %s (the VM may still start here)",
			 code ? strerror(code) : "the guard went silent");
		return code ? -code : -EIO;
	}
	return 0;
}

int eng_guard_watch_commit(struct eng_guard *g, int sock, const void *commit, size_t len)
{
	char body[2 + WATCH_MAX] = { MSG_WATCH, (char)len };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl = { 0 };
	struct iovec iov = { body, 2 + len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);

	if (g->fd < 0 || sock < 0 || !len || len > WATCH_MAX)
		return -EINVAL;
	memcpy(body + 2, commit, len);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &sock, sizeof(int));
	ssize_t n;
	while ((n = sendmsg(g->fd, &m, MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	return n == (ssize_t)iov.iov_len ? 0 : -EPIPE;
}

void eng_guard_unwatch(struct eng_guard *g)
{
	char body[2] = { MSG_WATCH, 0 };

	send_all(g, body, sizeof(body));
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
	let_go(g);
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
		if (recv_all(fd, &type, 1))
			return committed ? 0 : restore(qmp_path, was_running, &t);
		switch (type) {
		case MSG_RUNNING:
		case MSG_COMMIT:
			if (recv_all(fd, &flag, 1))
				return committed ? 0 : restore(qmp_path, was_running, &t);
			*(type == MSG_RUNNING ? &was_running : &committed) = flag;
			break;
		case MSG_THROTTLE:
			if (recv_all(fd, &t, sizeof(t)))
				return committed ? 0 : restore(qmp_path, was_running, &t);
			break;
		case MSG_RELEASE:
			return 0;
		default:
			return 1;
		}
	}
}

/* Write all of buf to QEMU's stream: 0, or an errno. */
static int32_t write_all(int fd, const char *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = write(fd, buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? errno : EIO;
		done += (size_t)n;
	}
	return 0;
}

/* One type byte; a socket passed with it (MSG_WATCH) into *passed. 0, -1 at the end (receive is gone), -2 on another error. */
static int recv_type(int fd, char *type, int *passed)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { type, 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf) };
	ssize_t n;

	while ((n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
		;
	if (n != 1)
		return n == 0 || errno == ECONNRESET ? -1 : -2;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int))) {
			if (*passed >= 0)
				close(*passed);
			memcpy(passed, CMSG_DATA(c), sizeof(int));
		}
	return 0;
}

/*
 * receive died after it said READY and before it passed COMMIT on: did the
 * source's COMMIT come (or is it still coming) on the connection? Only a key
 * holder can seal it, so its bytes prove the commit. receive may have read
 * the first bytes of it (the length, up to 2) before it died: a suffix that
 * holds the whole sealed part counts too.
 */
static bool commit_on_wire(int sock, const uint8_t *expect, size_t len)
{
	uint8_t got[WATCH_MAX];
	size_t n = 0;

	while (n < len) {
		struct pollfd p = { sock, POLLIN, 0 };
		int r = poll(&p, 1, WATCH_WAIT_S * 1000);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return false;
		ssize_t k = recv(sock, got + n, len - n, MSG_DONTWAIT);
		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k <= 0)
			return false;
		n += (size_t)k;
		if (n >= len - 2 && !memcmp(got, expect + len - n, n))
			return true;
	}
	return false;
}

/* QEMU's stream gets the device state and ends: 0, or an errno. */
static int32_t feed_tail(int mig_fd, const char *tail, uint64_t len)
{
	int32_t code = write_all(mig_fd, tail, len);

	if (!code && shutdown(mig_fd, SHUT_WR))
		code = errno;
	return code;
}

int eng_guard_incoming_main(int fd, int mig_fd)
{
	char *tail = NULL;
	uint64_t len = 0;
	char type, ready = MSG_READY;
	uint8_t commit[WATCH_MAX];
	uint8_t commit_len = 0;
	int watch = -1; /* the connection, once receive said READY */

	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	close_range(5, ~0u, 0);
	if (send(fd, &ready, 1, MSG_NOSIGNAL) != 1)
		return 1;
	for (;;) {
		int r = recv_type(fd, &type, &watch);
		if (r == -2)
			return 1; /* receive may still be there: never read its connection */
		if (r) {
			/* receive is gone before it passed COMMIT on: unless the source's COMMIT is on
			 * the wire, the stream closes with us and QEMU never runs */
			bool committed = watch >= 0 && commit_len && tail && commit_on_wire(watch, commit, commit_len);
			if (watch >= 0)
				close(watch); /* the source hears the end now, not after QEMU read the tail */
			if (!committed)
				return 0;
			int32_t code = feed_tail(mig_fd, tail, len);
			fprintf(stderr, "handoff-engine guard: receive died as the source committed: %s\n",
				code ? strerror(code) : "QEMU has the device state and starts the VM here");
			return code ? 1 : 0;
		}
		if (type == MSG_RELEASE)
			return 0;
		if (type == MSG_WATCH) {
			if (recv_all(fd, &commit_len, 1) || commit_len > WATCH_MAX || recv_all(fd, commit, commit_len))
				return 1;
			if (!commit_len && watch >= 0) { /* receive gave that connection up */
				close(watch);
				watch = -1;
			}
			if (watch < 0) /* the socket did not come: no watch, receive still feeds QEMU */
				commit_len = 0;
			continue;
		}
		if (type == MSG_TAIL) {
			char armed = MSG_ARMED;
			free(tail);
			tail = NULL;
			if (recv_all(fd, &len, sizeof(len)) || len > (1ull << 30) || !(tail = malloc(len ? len : 1)) ||
			    recv_all(fd, tail, len) || send(fd, &armed, 1, MSG_NOSIGNAL) != 1)
				return 1;
			continue;
		}
		if (type != MSG_COMMIT || !tail)
			return 1;
		/* committed: the VM is this end's now, whatever becomes of receive (which has the connection) */
		if (watch >= 0)
			close(watch);
		int32_t code = feed_tail(mig_fd, tail, len);
		char reply[1 + sizeof(code)] = { MSG_FED };
		memcpy(reply + 1, &code, sizeof(code));
		send(fd, reply, sizeof(reply), MSG_NOSIGNAL);
		if (recv_all(fd, &type, 1) && !code)
			fprintf(stderr, "handoff-engine guard: receive died after the commit: QEMU has the device state and starts the VM here\n");
		return code ? 1 : 0;
	}
}

enum { G_QMP, G_INCOMING };

static const struct cli_opt guard_opts[] = {
	[G_QMP] = { "qmp", 0, "SRC.sock", false, "QMP socket of the source QEMU (the source's guard)" },
	[G_INCOMING] = { "incoming", 0, NULL, false,
			 "the destination's guard: QEMU's incoming stream on fd 4, the device state from the pipe" },
	{ 0 },
};

static int guard_run(const struct cli_cmd *cmd, const char *const *val)
{
	(void)cmd;
	if (!val[G_QMP] == !val[G_INCOMING]) {
		fprintf(stderr, "handoff-engine guard: give --qmp SRC.sock or --incoming (it is started by send and receive)\n");
		return 2;
	}
	return val[G_INCOMING] ? eng_guard_incoming_main(3, 4) : eng_guard_main(3, val[G_QMP]);
}

const struct cli_cmd cli_cmd_guard = {
	.name = "guard",
	.summary = "Internal: started by send and receive (not by hand). The source's (--qmp) puts the source\n"
		   "VM back if send dies before the commit: closes the guest throttle, cancels QEMU's migration\n"
		   "and continues the VM. The destination's (--incoming) holds the device state and hands it to\n"
		   "QEMU on the commit, so a receive that dies after the commit still leaves the VM starting.",
	.usage = "--qmp SRC.sock | --incoming (reads the engine's pipe on fd 3)",
	.opts = guard_opts,
	.run = guard_run,
};

/*
 * QMP client: one non-blocking unix socket, a json-c tokener fed with
 * whatever arrives (QMP messages are JSON objects separated by CRLF), a FIFO
 * of events that arrived while waiting for something else. Every wait polls
 * against a CLOCK_MONOTONIC deadline, so no call can hang on a stuck QEMU.
 */
#include "engine/clock.h"
#include "qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define QMP_IN_MAX (64u << 20)	/* one message larger than this is refused */
#define QMP_EVENTS_MAX 4096	/* oldest events are dropped beyond this */
#define QMP_CMD_TIMEOUT 10.0	/* seconds, for the helpers' own commands */
#define MAX_BANDWIDTH (1ull << 40) /* bytes/s: "no limit" for migrate */
#define MAX_DOWNTIME_MS 2000000ull /* QEMU 7.2's bound on downtime-limit */

struct qb_qmp {
	int fd;
	json_tokener *tok;
	char *in;		/* received bytes not yet fed to tok */
	size_t in_len, in_cap;
	json_object **ev;	/* queued events, oldest first */
	size_t nev;
	unsigned long next_id;
};

/* poll() timeout in ms until deadline, at least 0. */
static int left_ms(double deadline)
{
	double left = deadline - eng_mono_s();

	return left <= 0 ? 0 : left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
}

static int wait_fd(int fd, short events, double deadline, char *err, size_t errlen)
{
	struct pollfd p = { .fd = fd, .events = events };

	for (;;) {
		int n = poll(&p, 1, left_ms(deadline));

		if (n > 0)
			return 0;
		if (n == 0) {
			snprintf(err, errlen, "QMP: timed out waiting for QEMU");
			return -ETIMEDOUT;
		}
		if (errno != EINTR) {
			snprintf(err, errlen, "QMP: poll failed: %s", strerror(errno));
			return -EIO;
		}
	}
}

/* Send all of buf; with fd >= 0 attached (SCM_RIGHTS) to the first bytes. */
static int send_all(struct qb_qmp *q, const char *buf, size_t len, int fd, double deadline, char *err, size_t errlen)
{
	size_t done = 0;
	int ret;

	while (done < len) {
		struct iovec iov = { .iov_base = (char *)buf + done, .iov_len = len - done };
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int))];
		} ctl;
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };

		if (fd >= 0 && !done) {
			memset(&ctl, 0, sizeof(ctl));
			m.msg_control = ctl.b;
			m.msg_controllen = sizeof(ctl.b);
			struct cmsghdr *c = CMSG_FIRSTHDR(&m);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &fd, sizeof(int));
		}
		ssize_t n = sendmsg(q->fd, &m, MSG_NOSIGNAL);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if ((ret = wait_fd(q->fd, POLLOUT, deadline, err, errlen)))
				return ret;
			continue;
		}
		snprintf(err, errlen, "QMP: send failed: %s", n < 0 ? strerror(errno) : "no progress");
		return -EIO;
	}
	return 0;
}

/* Next complete JSON object from QEMU (caller puts it). */
static int read_msg(struct qb_qmp *q, double deadline, json_object **out, char *err, size_t errlen)
{
	int ret;

	for (;;) {
		if (q->in_len) {
			json_object *o = json_tokener_parse_ex(q->tok, q->in, (int)q->in_len);
			enum json_tokener_error e = json_tokener_get_error(q->tok);

			if (o) {
				size_t used = json_tokener_get_parse_end(q->tok);

				memmove(q->in, q->in + used, q->in_len - used);
				q->in_len -= used;
				json_tokener_reset(q->tok);
				if (!json_object_is_type(o, json_type_object)) {
					json_object_put(o);
					snprintf(err, errlen, "QMP: QEMU sent a JSON value that is not an object");
					return -EIO;
				}
				*out = o;
				return 0;
			}
			if (e != json_tokener_continue) {
				snprintf(err, errlen, "QMP: malformed JSON from QEMU: %s", json_tokener_error_desc(e));
				return -EIO;
			}
			q->in_len = 0; /* all fed to the tokener, which keeps the state */
		}
		if (q->in_cap - q->in_len < 4096) {
			size_t cap = q->in_cap * 2;
			char *p;

			if (cap > QMP_IN_MAX || !(p = realloc(q->in, cap))) {
				snprintf(err, errlen, "QMP: message from QEMU too large");
				return -EIO;
			}
			q->in = p;
			q->in_cap = cap;
		}
		ssize_t n = read(q->fd, q->in + q->in_len, q->in_cap - q->in_len);
		if (n > 0) {
			q->in_len += (size_t)n;
			continue;
		}
		if (n == 0) {
			snprintf(err, errlen, "QMP: QEMU closed the connection");
			return -EIO;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			snprintf(err, errlen, "QMP: read failed: %s", strerror(errno));
			return -EIO;
		}
		if ((ret = wait_fd(q->fd, POLLIN, deadline, err, errlen)))
			return ret;
	}
}

static void queue_event(struct qb_qmp *q, json_object *ev)
{
	if (q->nev == QMP_EVENTS_MAX) {
		json_object_put(q->ev[0]);
		memmove(q->ev, q->ev + 1, (q->nev - 1) * sizeof(*q->ev));
		q->nev--;
	}
	q->ev[q->nev++] = ev;
}

static const char *str_field(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ?
		       json_object_get_string(v) : NULL;
}

/* Send one command and wait for its response; events are queued. */
static json_object *exec_fd(struct qb_qmp *q, const char *cmd, json_object *args, int fd, double timeout_s,
			    int *rc, char *err, size_t errlen)
{
	double deadline = eng_mono_s() + timeout_s;
	json_object *msg = json_object_new_object(), *resp = NULL, *v;
	char id[32];
	int ret;

	*rc = -EIO;
	snprintf(id, sizeof(id), "qb-%lu", ++q->next_id);
	json_object_object_add(msg, "execute", json_object_new_string(cmd));
	if (args)
		json_object_object_add(msg, "arguments", args);
	json_object_object_add(msg, "id", json_object_new_string(id));
	const char *s = json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN);
	size_t slen = strlen(s);
	char *line = malloc(slen + 3);
	if (!line) {
		json_object_put(msg);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	memcpy(line, s, slen);
	memcpy(line + slen, "\r\n", 3);
	json_object_put(msg);
	ret = send_all(q, line, slen + 2, fd, deadline, err, errlen);
	free(line);
	if (ret) {
		*rc = ret;
		return NULL;
	}
	for (;;) {
		json_object *o;

		if ((ret = read_msg(q, deadline, &o, err, errlen))) {
			*rc = ret;
			if (ret == -ETIMEDOUT)
				snprintf(err, errlen, "QMP: %s: no answer from QEMU within %.1f s", cmd, timeout_s);
			return NULL;
		}
		if (json_object_object_get_ex(o, "event", NULL)) {
			queue_event(q, o);
			continue;
		}
		const char *rid = str_field(o, "id");
		if (rid && strcmp(rid, id)) { /* late answer to a command that timed out */
			json_object_put(o);
			continue;
		}
		if (json_object_object_get_ex(o, "return", &v)) {
			resp = json_object_get(v);
			*rc = 0;
		} else if (json_object_object_get_ex(o, "error", &v)) {
			const char *desc = str_field(v, "desc");
			snprintf(err, errlen, "QEMU: %s: %s", cmd, desc ? desc : "error without description");
		} else {
			json_object_put(o);
			continue;
		}
		json_object_put(o);
		return resp;
	}
}

json_object *qb_qmp_exec(struct qb_qmp *q, const char *cmd, json_object *args, double timeout_s,
			 char *err, size_t errlen)
{
	int rc;

	return exec_fd(q, cmd, args, -1, timeout_s, &rc, err, errlen);
}

int qb_qmp_run(struct qb_qmp *q, const char *cmd, json_object *args, double timeout_s, char *err, size_t errlen)
{
	int rc;
	json_object *r = exec_fd(q, cmd, args, -1, timeout_s, &rc, err, errlen);

	json_object_put(r);
	return rc;
}

static int connect_retry(const char *path, double deadline, char *err, size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(err, errlen, "QMP socket path too long: %s", path);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (fd < 0) {
			snprintf(err, errlen, "socket: %s", strerror(errno));
			return -errno;
		}
		if (!connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
			return fd;
		int e = errno;
		close(fd);
		if ((e != ENOENT && e != ECONNREFUSED) || eng_mono_s() >= deadline) {
			snprintf(err, errlen, "cannot connect to QMP socket %s: %s", path, strerror(e));
			return -e;
		}
		usleep(20000);
	}
}

struct qb_qmp *qb_qmp_connect(const char *path, double timeout_s, char *err, size_t errlen)
{
	double deadline = eng_mono_s() + timeout_s;
	int fd = connect_retry(path, deadline, err, errlen);
	struct qb_qmp *q;

	if (fd < 0)
		return NULL;
	q = qb_qmp_open_fd(fd, deadline - eng_mono_s() > 1 ? deadline - eng_mono_s() : 1, err, errlen);
	if (!q && !strcmp(err, "not a QMP greeting")) /* name the socket in that one */
		snprintf(err, errlen, "%s: not a QMP greeting", path);
	return q;
}

struct qb_qmp *qb_qmp_open_fd(int fd, double timeout_s, char *err, size_t errlen)
{
	double deadline = eng_mono_s() + timeout_s;
	struct qb_qmp *q = calloc(1, sizeof(*q));
	json_object *greet = NULL;

	if (!q) {
		close(fd);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	q->fd = fd;
	if (!(q->tok = json_tokener_new()) || !(q->in = malloc(q->in_cap = 65536)) ||
	    !(q->ev = calloc(QMP_EVENTS_MAX, sizeof(*q->ev)))) {
		snprintf(err, errlen, "out of memory");
		goto err;
	}
	if (fcntl(q->fd, F_SETFL, O_NONBLOCK)) {
		snprintf(err, errlen, "fcntl: %s", strerror(errno));
		goto err;
	}
	if (read_msg(q, deadline, &greet, err, errlen))
		goto err;
	if (!json_object_object_get_ex(greet, "QMP", NULL)) {
		snprintf(err, errlen, "not a QMP greeting");
		goto err;
	}
	json_object_put(greet);
	greet = NULL;
	if (qb_qmp_run(q, "qmp_capabilities", NULL, deadline - eng_mono_s() > 1 ? deadline - eng_mono_s() : 1, err, errlen))
		goto err;
	return q;
err:
	json_object_put(greet);
	qb_qmp_close(q);
	return NULL;
}

void qb_qmp_close(struct qb_qmp *q)
{
	if (!q)
		return;
	if (q->fd >= 0)
		close(q->fd);
	for (size_t i = 0; i < q->nev; i++)
		json_object_put(q->ev[i]);
	free(q->ev);
	free(q->in);
	if (q->tok)
		json_tokener_free(q->tok);
	free(q);
}

int qb_qmp_send_fd(struct qb_qmp *q, int fd, const char *fdname, char *err, size_t errlen)
{
	json_object *args = json_object_new_object();

	if (fd < 0 || !fdname || !*fdname) {
		json_object_put(args);
		snprintf(err, errlen, "qb_qmp_send_fd: bad fd or empty name");
		return -EINVAL;
	}
	json_object_object_add(args, "fdname", json_object_new_string(fdname));
	int rc;
	json_object *r = exec_fd(q, "getfd", args, fd, QMP_CMD_TIMEOUT, &rc, err, errlen);

	json_object_put(r);
	return rc;
}

/* Hand out ev (removing it from wherever it came from). */
static void give_event(json_object *ev, json_object **data, double *ts)
{
	json_object *v, *t;

	if (data) {
		*data = json_object_object_get_ex(ev, "data", &v) ? json_object_get(v) : json_object_new_object();
	}
	if (ts) {
		*ts = 0;
		if (json_object_object_get_ex(ev, "timestamp", &t)) {
			json_object *s, *us;
			if (json_object_object_get_ex(t, "seconds", &s) && json_object_object_get_ex(t, "microseconds", &us))
				*ts = json_object_get_int64(s) + json_object_get_int64(us) / 1e6;
		}
	}
	json_object_put(ev);
}

static bool event_is(json_object *ev, const char *name)
{
	const char *e = str_field(ev, "event");

	return e && (!name || !strcmp(e, name));
}

int qb_qmp_wait_event(struct qb_qmp *q, const char *name, double timeout_s, json_object **data, double *ts,
		      char *err, size_t errlen)
{
	double deadline = eng_mono_s() + timeout_s;
	int ret;

	if (data)
		*data = NULL;
	for (size_t i = 0; i < q->nev; i++) {
		if (event_is(q->ev[i], name)) {
			json_object *ev = q->ev[i];
			memmove(q->ev + i, q->ev + i + 1, (q->nev - i - 1) * sizeof(*q->ev));
			q->nev--;
			give_event(ev, data, ts);
			return 0;
		}
	}
	for (;;) {
		json_object *o;

		if ((ret = read_msg(q, deadline, &o, err, errlen))) {
			if (ret == -ETIMEDOUT)
				snprintf(err, errlen, "QMP: no %s event within %.1f s", name ? name : "QMP", timeout_s);
			return ret;
		}
		if (event_is(o, name)) {
			give_event(o, data, ts);
			return 0;
		}
		if (json_object_object_get_ex(o, "event", NULL))
			queue_event(q, o);
		else
			json_object_put(o); /* a late command answer */
	}
}

int qb_qmp_running(struct qb_qmp *q, char *status, size_t len, char *err, size_t errlen)
{
	json_object *r = qb_qmp_exec(q, "query-status", NULL, QMP_CMD_TIMEOUT, err, errlen), *v;
	int ret;

	if (!r)
		return -EIO;
	if (!json_object_object_get_ex(r, "running", &v) || !json_object_is_type(v, json_type_boolean)) {
		snprintf(err, errlen, "QMP: query-status without \"running\"");
		ret = -EIO;
	} else {
		ret = json_object_get_boolean(v) ? 1 : 0;
		if (status && len) {
			const char *s = str_field(r, "status");
			snprintf(status, len, "%s", s ? s : "");
		}
	}
	json_object_put(r);
	return ret;
}

int qb_vcpu_threads(struct qb_qmp *q, pid_t *qemu_pid, pid_t *tids, unsigned max, unsigned *n, char *err,
		    size_t errlen)
{
	struct ucred cred;
	socklen_t clen = sizeof(cred);

	if (getsockopt(q->fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) || cred.pid <= 0) {
		snprintf(err, errlen, "QMP: cannot tell the QEMU process behind the socket: %s", strerror(errno));
		return -EIO;
	}
	*qemu_pid = cred.pid;
	json_object *cpus = qb_qmp_exec(q, "query-cpus-fast", NULL, QMP_CMD_TIMEOUT, err, errlen);
	if (!cpus)
		return -EIO;
	*n = 0;
	for (size_t i = 0; json_object_is_type(cpus, json_type_array) && i < json_object_array_length(cpus); i++) {
		json_object *tid;
		if (!json_object_object_get_ex(json_object_array_get_idx(cpus, i), "thread-id", &tid) ||
		    !json_object_is_type(tid, json_type_int) || json_object_get_int64(tid) <= 0)
			continue;
		if (*n == max) {
			json_object_put(cpus);
			snprintf(err, errlen, "QMP: more than %u vCPUs", max);
			return -E2BIG;
		}
		tids[(*n)++] = (pid_t)json_object_get_int64(tid);
	}
	json_object_put(cpus);
	if (!*n) {
		snprintf(err, errlen, "QMP: query-cpus-fast named no vCPU thread");
		return -EIO;
	}
	return 0;
}

static int set_params(struct qb_qmp *q, json_object *params, char *err, size_t errlen)
{
	return qb_qmp_run(q, "migrate-set-parameters", params, QMP_CMD_TIMEOUT, err, errlen);
}

static int check_downtime(uint64_t ms, char *err, size_t errlen)
{
	if (ms > MAX_DOWNTIME_MS) {
		snprintf(err, errlen, "downtime limit %llu ms is above QEMU's maximum of %llu ms",
			 (unsigned long long)ms, MAX_DOWNTIME_MS);
		return -EINVAL;
	}
	return 0;
}

int qb_migrate_prepare(struct qb_qmp *q, uint64_t downtime_ms, char *err, size_t errlen)
{
	json_object *caps, *list, *args, *params;
	int ret;

	if ((ret = check_downtime(downtime_ms, err, errlen)))
		return ret;
	caps = qb_qmp_exec(q, "query-migrate-capabilities", NULL, QMP_CMD_TIMEOUT, err, errlen);
	if (!caps)
		return -EIO;
	if (!json_object_is_type(caps, json_type_array)) {
		json_object_put(caps);
		snprintf(err, errlen, "QMP: query-migrate-capabilities did not return a list");
		return -EIO;
	}
	list = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(caps); i++) {
		const char *name = str_field(json_object_array_get_idx(caps, i), "capability");
		json_object *c;

		if (!name)
			continue;
		c = json_object_new_object();
		json_object_object_add(c, "capability", json_object_new_string(name));
		json_object_object_add(c, "state", json_object_new_boolean(!strcmp(name, "events")));
		json_object_array_add(list, c);
	}
	json_object_put(caps);
	args = json_object_new_object();
	json_object_object_add(args, "capabilities", list);
	if ((ret = qb_qmp_run(q, "migrate-set-capabilities", args, QMP_CMD_TIMEOUT, err, errlen)))
		return ret;
	params = json_object_new_object();
	json_object_object_add(params, "max-bandwidth", json_object_new_int64((int64_t)MAX_BANDWIDTH));
	json_object_object_add(params, "downtime-limit", json_object_new_int64((int64_t)downtime_ms));
	return set_params(q, params, err, errlen);
}

int qb_migrate_ignore_shared(struct qb_qmp *q, char *err, size_t errlen)
{
	json_object *c = json_object_new_object(), *list = json_object_new_array(),
		    *args = json_object_new_object();

	json_object_object_add(c, "capability", json_object_new_string("x-ignore-shared"));
	json_object_object_add(c, "state", json_object_new_boolean(1));
	json_object_array_add(list, c);
	json_object_object_add(args, "capabilities", list);
	return qb_qmp_run(q, "migrate-set-capabilities", args, QMP_CMD_TIMEOUT, err, errlen);
}

int qb_find_shared_ram(struct qb_qmp *q, char *id, size_t idlen, char *path, size_t pathlen,
		       char *err, size_t errlen)
{
	json_object *devs = qb_qmp_exec(q, "query-memdev", NULL, QMP_CMD_TIMEOUT, err, errlen);
	int ret = -ENOENT;

	if (!devs)
		return -EIO;
	for (size_t i = 0; json_object_is_type(devs, json_type_array) &&
			   i < json_object_array_length(devs) && ret == -ENOENT; i++) {
		json_object *d = json_object_array_get_idx(devs, i), *share;
		const char *name = str_field(d, "id");
		if (!name || !json_object_object_get_ex(d, "share", &share) || !json_object_get_boolean(share))
			continue;
		json_object *args = json_object_new_object();
		char obj[300];
		snprintf(obj, sizeof(obj), "/objects/%s", name);
		json_object_object_add(args, "path", json_object_new_string(obj));
		json_object_object_add(args, "property", json_object_new_string("mem-path"));
		json_object *mp = qb_qmp_exec(q, "qom-get", args, QMP_CMD_TIMEOUT, err, errlen);
		if (!mp) {
			ret = -EIO;
			break;
		}
		snprintf(id, idlen, "%s", name);
		snprintf(path, pathlen, "%s", json_object_get_string(mp));
		json_object_put(mp);
		ret = 0;
	}
	json_object_put(devs);
	return ret;
}

int qb_migrate_set_downtime(struct qb_qmp *q, uint64_t downtime_ms, char *err, size_t errlen)
{
	json_object *params;
	int ret;

	if ((ret = check_downtime(downtime_ms, err, errlen)))
		return ret;
	params = json_object_new_object();
	json_object_object_add(params, "downtime-limit", json_object_new_int64((int64_t)downtime_ms));
	return set_params(q, params, err, errlen);
}

int qb_migrate_set_bandwidth(struct qb_qmp *q, uint64_t bytes_per_s, char *err, size_t errlen)
{
	json_object *params;

	if (!bytes_per_s || bytes_per_s > MAX_BANDWIDTH) {
		snprintf(err, errlen, "bandwidth %llu B/s outside 1..%llu", (unsigned long long)bytes_per_s, MAX_BANDWIDTH);
		return -EINVAL;
	}
	params = json_object_new_object();
	json_object_object_add(params, "max-bandwidth", json_object_new_int64((int64_t)bytes_per_s));
	return set_params(q, params, err, errlen);
}

static int migrate_uri_fd(struct qb_qmp *q, const char *cmd, int fd, const char *fdname, char *err, size_t errlen)
{
	char uri[300];
	json_object *args;
	int ret;

	if ((ret = qb_qmp_send_fd(q, fd, fdname, err, errlen)))
		return ret;
	snprintf(uri, sizeof(uri), "fd:%s", fdname);
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	return qb_qmp_run(q, cmd, args, QMP_CMD_TIMEOUT, err, errlen);
}

int qb_migrate_to_fd(struct qb_qmp *q, int fd, const char *fdname, char *err, size_t errlen)
{
	return migrate_uri_fd(q, "migrate", fd, fdname, err, errlen);
}

int qb_migrate_incoming_fd(struct qb_qmp *q, int fd, const char *fdname, char *err, size_t errlen)
{
	return migrate_uri_fd(q, "migrate-incoming", fd, fdname, err, errlen);
}

int qb_migrate_status(struct qb_qmp *q, char *buf, size_t len, char *err, size_t errlen)
{
	json_object *r = qb_qmp_exec(q, "query-migrate", NULL, QMP_CMD_TIMEOUT, err, errlen);
	const char *s;

	if (!r)
		return -EIO;
	s = str_field(r, "status");
	snprintf(buf, len, "%s", s ? s : "none");
	json_object_put(r);
	return 0;
}

/*
 * tcp: transport over io_uring. Every blocking step (connect, accept, send,
 * recv) is one io_uring operation linked to a timeout, so no call waits
 * longer than it was told to and nothing spins. One ring and one lock per
 * direction make a send and a recv on two threads independent; the kernel
 * socket itself is full duplex.
 *
 * Dead peers. An idle connection is watched by keepalive (the kernel fails
 * the socket after ~dead_s of unanswered probes). While data is outstanding
 * keepalive is off, so a blocked send or recv wakes every `slice` and looks
 * at TCP_INFO: no ACK at all for dead_s means the peer or the link is gone.
 * TCP_USER_TIMEOUT would be simpler but also kills a live receiver that
 * merely stops reading (zero window) for longer than the timeout, which a
 * busy destination may legitimately do; here answered zero-window probes
 * count as alive, and only idle_s bounds such a wait.
 */
#include "engine/clock.h"
#include "tcp.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <liburing.h>

#define TAG_OP 1
#define TAG_TIMEOUT 2
#define RETRY_PAUSE_S 0.1 /* between connect attempts */
#define MAX_WAIT_S 1e6

struct dir {
	struct io_uring ring;
	pthread_mutex_t lock;
	bool ring_live; /* set up: must be torn down */
	bool ring_ok;   /* usable: no completion left behind */
	int err; /* sticky -errno once this direction failed */
};

struct eng_tcp {
	int fd;
	char peer[320];
	double dead_s, idle_s;
	bool sndbuf_capped;
	struct dir tx, rx;
	_Atomic uint64_t sent;
	atomic_int conn_err; /* -errno once the liveness check declared the peer dead */
	/* Link estimate and liveness watch, under slock. */
	pthread_mutex_t slock;
	uint64_t acked_base, last_acked;
	double last_t, smooth;
	bool have_last;
	bool watch_on;	/* data outstanding and no ACK seen since watch_since */
	double watch_since;
	uint64_t watch_acked;
	/* First error, written once under elock, read after `failed` is set. */
	pthread_mutex_t elock;
	atomic_bool failed;
	char err[640];
};

struct eng_tcp_listener {
	int fd;
	int port;
	char name[320];
	struct io_uring ring;
};

/* Small helpers instead of libm, which the build does not link. */
static double dmax(double a, double b)
{
	return a > b ? a : b;
}

static void sleep_s(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* ---- parsing ---------------------------------------------------------- */

static bool name_ok(const char *h, size_t n)
{
	if (!n || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = h[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_'))
			return false;
	}
	return true;
}

/* An IPv6 literal, optionally with a %scope (interface name or number). */
static bool ipv6_ok(const char *h, size_t n)
{
	char buf[INET6_ADDRSTRLEN + 1];
	struct in6_addr a;
	const char *pct = memchr(h, '%', n);
	size_t alen = pct ? (size_t)(pct - h) : n;

	if (!alen || alen >= sizeof(buf))
		return false;
	if (pct && !name_ok(pct + 1, n - alen - 1))
		return false;
	memcpy(buf, h, alen);
	buf[alen] = 0;
	return inet_pton(AF_INET6, buf, &a) == 1;
}

static int copy_out(const char *what, const char *s, size_t n, char *out, size_t outlen,
		    const char *loc, char *err, size_t errlen)
{
	if (n >= outlen) {
		snprintf(err, errlen, "%s: %s too long", loc, what);
		return -EINVAL;
	}
	memcpy(out, s, n);
	out[n] = 0;
	return 0;
}

int eng_tcp_parse(const char *loc, char *host, size_t hostlen, char *port, size_t portlen,
		  char *err, size_t errlen)
{
	const char *h, *p, *hend;

	if (strncmp(loc, "tcp:", 4)) {
		snprintf(err, errlen, "'%s' is not a tcp:HOST:PORT location", loc);
		return -EINVAL;
	}
	h = loc + 4;
	if (*h == '[') {
		hend = strchr(h, ']');
		if (!hend) {
			snprintf(err, errlen, "%s: missing ']' after the IPv6 address", loc);
			return -EINVAL;
		}
		h++;
		if (!ipv6_ok(h, (size_t)(hend - h))) {
			snprintf(err, errlen, "%s: '%.*s' is not an IPv6 address", loc, (int)(hend - h), h);
			return -EINVAL;
		}
		p = hend + 1;
		if (*p != ':') {
			snprintf(err, errlen, "%s: expected ':PORT' after ']'", loc);
			return -EINVAL;
		}
	} else {
		p = strrchr(h, ':');
		if (!p) {
			snprintf(err, errlen, "%s: missing ':PORT'", loc);
			return -EINVAL;
		}
		hend = p;
		if (memchr(h, ':', (size_t)(hend - h))) {
			snprintf(err, errlen, "%s: write an IPv6 address in brackets: tcp:[ADDR]:PORT", loc);
			return -EINVAL;
		}
		if (hend == h) {
			snprintf(err, errlen, "%s: missing host", loc);
			return -EINVAL;
		}
		if (!name_ok(h, (size_t)(hend - h))) {
			snprintf(err, errlen, "%s: '%.*s' is not a host name or address", loc, (int)(hend - h), h);
			return -EINVAL;
		}
	}
	p++;
	size_t plen = strlen(p);
	unsigned long v = 0;
	for (size_t i = 0; i < plen && v <= 65535; i++)
		v = (p[i] >= '0' && p[i] <= '9') ? v * 10 + (unsigned long)(p[i] - '0') : 99999999;
	if (!plen || plen > 5 || v < 1 || v > 65535) {
		snprintf(err, errlen, "%s: port must be a number from 1 to 65535", loc);
		return -EINVAL;
	}
	if (copy_out("host", h, (size_t)(hend - h), host, hostlen, loc, err, errlen) ||
	    copy_out("port", p, plen, port, portlen, loc, err, errlen))
		return -EINVAL;
	return 0;
}

/* ---- io_uring operations ---------------------------------------------- */

static struct __kernel_timespec to_ts(double s)
{
	struct __kernel_timespec ts;

	if (!(s > 0))
		s = 0;
	if (s > MAX_WAIT_S)
		s = MAX_WAIT_S;
	ts.tv_sec = (long long)s;
	ts.tv_nsec = (long long)((s - (double)ts.tv_sec) * 1e9);
	return ts;
}

/*
 * Submit the prepared op (tagged TAG_OP) linked to a timeout and reap both
 * completions, so the ring is empty again afterwards. Returns the op's
 * result; -ETIMEDOUT with *expired set if our timeout cancelled it (the
 * kernel's own -ETIMEDOUT, from keepalive, leaves it clear). A ring
 * failure (rare: io_uring_enter refusing) is returned as -errno with
 * *ring_broken set.
 */
static int ring_run(struct io_uring *ring, struct io_uring_sqe *op, double timeout_s,
		    bool *expired, bool *ring_broken)
{
	struct __kernel_timespec ts = to_ts(timeout_s);
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	struct io_uring_cqe *cqe;
	int res = 0, tres = 0, got = 0, tries = 0, ret;

	*ring_broken = *expired = false;
	op->user_data = TAG_OP;
	op->flags |= IOSQE_IO_LINK;
	io_uring_prep_link_timeout(sqe, &ts, 0);
	sqe->user_data = TAG_TIMEOUT;
	/* -EAGAIN: the kernel is short of memory for a moment; give it up to ~1 s. */
	while ((ret = io_uring_submit(ring)) == -EINTR || (ret == -EAGAIN && tries++ < 1000))
		if (ret == -EAGAIN)
			sleep_s(0.001);
	if (ret < 0) {
		*ring_broken = true;
		return ret;
	}
	while (got < 2) {
		ret = io_uring_wait_cqe(ring, &cqe);
		if (ret == -EINTR)
			continue;
		if (ret < 0) {
			*ring_broken = true;
			return ret;
		}
		if (cqe->user_data == TAG_OP)
			res = cqe->res;
		else
			tres = cqe->res;
		io_uring_cqe_seen(ring, cqe);
		got++;
	}
	if (res == -ECANCELED && tres == -ETIME) {
		*expired = true;
		return -ETIMEDOUT;
	}
	return res;
}

static int ring_init(struct io_uring *ring)
{
	struct io_uring_params p = { .flags = IORING_SETUP_COOP_TASKRUN };
	int ret = io_uring_queue_init_params(4, ring, &p);

	if (ret == -EINVAL) /* kernels before 5.19 */
		ret = io_uring_queue_init(4, ring, 0);
	return ret;
}

/* ---- connection set-up ------------------------------------------------ */

static void fail(struct eng_tcp *t, int e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void fail(struct eng_tcp *t, int e, const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	if (fmt)
		vsnprintf(why, sizeof(why), fmt, ap);
	else
		snprintf(why, sizeof(why), "%s", strerror(-e));
	va_end(ap);
	pthread_mutex_lock(&t->elock);
	if (!atomic_load(&t->failed)) {
		snprintf(t->err, sizeof(t->err), "connection to %s lost: %s", t->peer, why);
		atomic_store(&t->failed, true);
	}
	pthread_mutex_unlock(&t->elock);
}

static int set_int(int fd, int level, int opt, int v)
{
	return setsockopt(fd, level, opt, &v, sizeof(v)) ? -errno : 0;
}

/* Nagle off; keepalive so an idle connection to a vanished peer fails in ~dead_s (whole seconds). */
static int tune_socket(int fd, double dead_s)
{
	int idle = (int)dmax(1, dead_s / 2);
	double rest = dead_s - idle;
	int intvl = (int)dmax(1, rest / 4);
	int cnt = (int)dmax(1, rest / intvl);
	int ret;

	if ((ret = set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1)) ||
	    (ret = set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1)) ||
	    (ret = set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, idle)) ||
	    (ret = set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, intvl)) ||
	    (ret = set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, cnt)))
		return ret;
	return 0;
}

static struct eng_tcp *tcp_alloc(char *err, size_t errlen)
{
	struct eng_tcp *t = calloc(1, sizeof(*t));
	int ret;

	if (!t) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	t->fd = -1;
	t->dead_s = ENG_TCP_DEAD_S;
	t->idle_s = ENG_TCP_IDLE_S;
	pthread_mutex_init(&t->tx.lock, NULL);
	pthread_mutex_init(&t->rx.lock, NULL);
	pthread_mutex_init(&t->slock, NULL);
	pthread_mutex_init(&t->elock, NULL);
	if ((ret = ring_init(&t->tx.ring)) < 0) {
		snprintf(err, errlen, "io_uring set-up failed: %s", strerror(-ret));
		goto err;
	}
	t->tx.ring_live = t->tx.ring_ok = true;
	if ((ret = ring_init(&t->rx.ring)) < 0) {
		snprintf(err, errlen, "io_uring set-up failed: %s", strerror(-ret));
		goto err;
	}
	t->rx.ring_live = t->rx.ring_ok = true;
	return t;
err:
	eng_tcp_close(t);
	return NULL;
}

/* Record where tcpi_bytes_acked starts (the SYN may count), so acked counts payload only. */
static void tcp_ready(struct eng_tcp *t)
{
	struct tcp_info ti = { 0 };
	socklen_t l = sizeof(ti);

	if (!getsockopt(t->fd, IPPROTO_TCP, TCP_INFO, &ti, &l))
		t->acked_base = ti.tcpi_bytes_acked;
}

static void format_name(char *out, size_t outlen, const char *host, const char *port)
{
	if (strchr(host, ':'))
		snprintf(out, outlen, "[%s]:%s", host, port);
	else
		snprintf(out, outlen, "%s:%s", host, port);
}

static void format_addr(char *out, size_t outlen, const struct sockaddr *sa, socklen_t len)
{
	char h[96], p[8]; /* numeric: an IPv6 address with a scope, a port */

	if (getnameinfo(sa, len, h, sizeof(h), p, sizeof(p), NI_NUMERICHOST | NI_NUMERICSERV))
		snprintf(out, outlen, "?");
	else
		format_name(out, outlen, h, p);
}

static int resolve(const char *host, const char *port, bool passive, struct addrinfo **res,
		   char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
	int ret;

	hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : AI_ADDRCONFIG);
	if (!host || !*host || !port || !*port) {
		snprintf(err, errlen, "missing host or port");
		return -EINVAL;
	}
	ret = getaddrinfo(host, port, &hints, res);
	if (ret == EAI_ADDRFAMILY || ret == EAI_NONAME) {
		/* AI_ADDRCONFIG hides ::1 and 127.0.0.1 on hosts with only lo up. */
		hints.ai_flags &= ~AI_ADDRCONFIG;
		ret = getaddrinfo(host, port, &hints, res);
	}
	if (ret) {
		snprintf(err, errlen, "cannot resolve %s: %s", host,
			 ret == EAI_SYSTEM ? strerror(errno) : gai_strerror(ret));
		return ret == EAI_AGAIN ? -EAGAIN : -EINVAL;
	}
	return 0;
}

/* One attempt at one address: the connected fd or -errno. */
static int connect_one(struct eng_tcp *t, const struct addrinfo *ai, double timeout_s)
{
	struct io_uring_sqe *sqe;
	bool expired, broken;
	int fd, ret;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		return -errno;
	if ((ret = tune_socket(fd, t->dead_s)))
		goto err;
	sqe = io_uring_get_sqe(&t->tx.ring);
	io_uring_prep_connect(sqe, fd, ai->ai_addr, ai->ai_addrlen);
	ret = ring_run(&t->tx.ring, sqe, timeout_s, &expired, &broken);
	if (broken)
		t->tx.ring_ok = false;
	if (ret)
		goto err;
	return fd;
err:
	close(fd);
	return ret;
}

static bool connect_retryable(int e)
{
	return e == -ECONNREFUSED || e == -ETIMEDOUT || e == -ENETUNREACH || e == -EHOSTUNREACH ||
	       e == -ECONNRESET || e == -ECONNABORTED || e == -EAGAIN || e == -EADDRNOTAVAIL;
}

struct eng_tcp *eng_tcp_connect(const char *host, const char *port, double timeout_s, char *err,
				size_t errlen)
{
	struct addrinfo *res = NULL;
	double deadline = eng_mono_s() + dmax(0, timeout_s);
	struct eng_tcp *t;
	int last = -ETIMEDOUT, ret;

	t = tcp_alloc(err, errlen);
	if (!t)
		return NULL;
	format_name(t->peer, sizeof(t->peer), host ? host : "", port ? port : "");
	for (;;) {
		ret = resolve(host, port, false, &res, err, errlen);
		if (ret == -EAGAIN && eng_mono_s() + RETRY_PAUSE_S < deadline) {
			sleep_s(RETRY_PAUSE_S);
			continue;
		}
		if (ret)
			goto err;
		for (struct addrinfo *ai = res; ai && t->tx.ring_ok; ai = ai->ai_next) {
			double left = deadline - eng_mono_s();
			if (left <= 0)
				break;
			ret = connect_one(t, ai, left);
			if (ret >= 0) {
				t->fd = ret;
				freeaddrinfo(res);
				tcp_ready(t);
				return t;
			}
			last = ret;
			if (!connect_retryable(ret))
				break;
		}
		freeaddrinfo(res);
		res = NULL;
		if (!connect_retryable(last) || !t->tx.ring_ok || eng_mono_s() + RETRY_PAUSE_S >= deadline)
			break;
		sleep_s(RETRY_PAUSE_S);
	}
	snprintf(err, errlen, "cannot connect to %s within %.1f s: %s%s", t->peer, timeout_s, strerror(-last),
		 last == -ECONNREFUSED ? " (nothing listens there: a receiver listens once its set-up is done)" : "");
err:
	eng_tcp_close(t);
	return NULL;
}

struct eng_tcp_listener *eng_tcp_listen(const char *host, const char *port, char *err,
					size_t errlen)
{
	struct eng_tcp_listener *l = calloc(1, sizeof(*l));
	struct addrinfo *res = NULL, *ai;
	union {
		struct sockaddr sa;
		struct sockaddr_storage ss;
	} a;
	socklen_t alen = sizeof(a);
	int ret = -EINVAL;

	if (!l) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	l->fd = -1;
	format_name(l->name, sizeof(l->name), host ? host : "", port ? port : "");
	if ((ret = ring_init(&l->ring)) < 0) {
		snprintf(err, errlen, "io_uring set-up failed: %s", strerror(-ret));
		free(l);
		return NULL;
	}
	if (resolve(host, port, true, &res, err, errlen))
		goto err;
	for (ai = res; ai; ai = ai->ai_next) {
		l->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (l->fd < 0) {
			ret = -errno;
			continue;
		}
		if (!set_int(l->fd, SOL_SOCKET, SO_REUSEADDR, 1) &&
		    !bind(l->fd, ai->ai_addr, ai->ai_addrlen) && !listen(l->fd, 4))
			break;
		ret = -errno;
		close(l->fd);
		l->fd = -1;
	}
	freeaddrinfo(res);
	if (l->fd < 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", l->name, strerror(-ret));
		goto err;
	}
	if (!getsockname(l->fd, &a.sa, &alen))
		l->port = ntohs(a.sa.sa_family == AF_INET6 ? ((struct sockaddr_in6 *)&a)->sin6_port
							   : ((struct sockaddr_in *)&a)->sin_port);
	if (!strcmp(port, "0"))
		format_addr(l->name, sizeof(l->name), &a.sa, alen);
	return l;
err:
	eng_tcp_listener_close(l);
	return NULL;
}

int eng_tcp_listener_port(const struct eng_tcp_listener *l)
{
	return l->port;
}

struct eng_tcp *eng_tcp_listener_accept(struct eng_tcp_listener *l, double timeout_s, char *err,
					size_t errlen)
{
	union {
		struct sockaddr sa;
		struct sockaddr_storage ss;
	} a;
	socklen_t alen = sizeof(a);
	struct io_uring_sqe *sqe;
	struct eng_tcp *t;
	bool expired, broken;
	int fd, ret;

	sqe = io_uring_get_sqe(&l->ring);
	io_uring_prep_accept(sqe, l->fd, &a.sa, &alen, SOCK_CLOEXEC);
	fd = ring_run(&l->ring, sqe, timeout_s, &expired, &broken);
	if (expired) {
		snprintf(err, errlen, "no connection on %s within %.1f s", l->name, timeout_s);
		return NULL;
	}
	if (fd < 0) {
		snprintf(err, errlen, "accept on %s failed: %s", l->name, strerror(-fd));
		return NULL;
	}
	/* the connection's rings only now: a listener polled in short slices makes none meanwhile */
	if (!(t = tcp_alloc(err, errlen))) {
		close(fd);
		return NULL;
	}
	t->fd = fd;
	format_addr(t->peer, sizeof(t->peer), &a.sa, alen);
	if ((ret = tune_socket(fd, t->dead_s))) {
		snprintf(err, errlen, "cannot set up the connection from %s: %s", t->peer, strerror(-ret));
		goto err;
	}
	tcp_ready(t);
	return t;
err:
	eng_tcp_close(t);
	return NULL;
}

void eng_tcp_listener_close(struct eng_tcp_listener *l)
{
	if (!l)
		return;
	if (l->fd >= 0)
		close(l->fd);
	io_uring_queue_exit(&l->ring);
	free(l);
}

struct eng_tcp *eng_tcp_accept(const char *host, const char *port, double timeout_s, char *err,
			       size_t errlen)
{
	struct eng_tcp_listener *l = eng_tcp_listen(host, port, err, errlen);
	struct eng_tcp *t;

	if (!l)
		return NULL;
	t = eng_tcp_listener_accept(l, timeout_s, err, errlen);
	eng_tcp_listener_close(l);
	return t;
}

void eng_tcp_close(struct eng_tcp *t)
{
	if (!t)
		return;
	if (t->fd >= 0)
		close(t->fd);
	if (t->tx.ring_live)
		io_uring_queue_exit(&t->tx.ring);
	if (t->rx.ring_live)
		io_uring_queue_exit(&t->rx.ring);
	pthread_mutex_destroy(&t->tx.lock);
	pthread_mutex_destroy(&t->rx.lock);
	pthread_mutex_destroy(&t->slock);
	pthread_mutex_destroy(&t->elock);
	free(t);
}

int eng_tcp_set_timeouts(struct eng_tcp *t, double dead_s, double idle_s)
{
	int ret;

	if (!(dead_s >= 1 && dead_s <= 3600) || !(idle_s >= 0.01 && idle_s <= MAX_WAIT_S))
		return -EINVAL;
	if ((ret = tune_socket(t->fd, dead_s)))
		return ret;
	t->dead_s = dead_s;
	t->idle_s = idle_s;
	return 0;
}

/* ---- liveness --------------------------------------------------------- */

/* The peer stopped acknowledging: fail both directions and wake the other thread. */
static int declare_dead(struct eng_tcp *t)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	int expect = 0;

	if (atomic_compare_exchange_strong(&t->conn_err, &expect, -ETIMEDOUT)) {
		fail(t, -ETIMEDOUT, "no acknowledgement for %.1f s (peer or link down)", t->dead_s);
		setsockopt(t->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)); /* close() resets */
		shutdown(t->fd, SHUT_RDWR);
	}
	return atomic_load(&t->conn_err);
}

/*
 * Called when an operation has waited a slice: 0 while the peer may be
 * alive, -ETIMEDOUT once data has been outstanding with no ACK of any kind
 * (data, window update, probe answer) for dead_s.
 */
static int check_alive(struct eng_tcp *t)
{
	struct tcp_info ti = { 0 };
	socklen_t l = sizeof(ti);
	int outq = 0, ret;
	bool dead = false;
	double now;

	if ((ret = atomic_load(&t->conn_err)))
		return ret;
	if (getsockopt(t->fd, IPPROTO_TCP, TCP_INFO, &ti, &l) || ioctl(t->fd, SIOCOUTQ, &outq))
		return 0; /* the operation itself will report a broken socket */
	pthread_mutex_lock(&t->slock);
	now = eng_mono_s();
	if (outq <= 0 || (ti.tcpi_snd_wnd == 0 && ti.tcpi_probes == 0)) {
		/* Nothing outstanding (keepalive's job), or a closed window whose probes are answered. */
		t->watch_on = false;
	} else if (!t->watch_on || ti.tcpi_bytes_acked != t->watch_acked ||
		   ti.tcpi_last_ack_recv / 1000.0 < now - t->watch_since) {
		t->watch_on = true;
		t->watch_since = now;
		t->watch_acked = ti.tcpi_bytes_acked;
	} else {
		dead = now - t->watch_since >= t->dead_s;
	}
	pthread_mutex_unlock(&t->slock);
	return dead ? declare_dead(t) : 0;
}

/*
 * One send or recv of up to len bytes, waiting at most limit_s in slices of
 * a fifth of dead_s with a liveness check between them. Returns the op's
 * result; -ETIMEDOUT with *expired set when limit_s passed with nothing moved.
 */
static int io_wait(struct eng_tcp *t, struct dir *d, bool send, void *buf, size_t len,
		   double limit_s, bool *expired)
{
	double start = eng_mono_s(), slice = dmax(0.05, t->dead_s / 5);
	struct io_uring_sqe *sqe;
	bool exp, broken;
	int n;

	*expired = false;
	for (;;) {
		double left = dmax(0, limit_s - (eng_mono_s() - start));
		if (!d->ring_ok)
			return -EIO;
		sqe = io_uring_get_sqe(&d->ring);
		if (send)
			io_uring_prep_send(sqe, t->fd, buf, len, MSG_NOSIGNAL);
		else
			io_uring_prep_recv(sqe, t->fd, buf, len, 0);
		n = ring_run(&d->ring, sqe, left < slice ? left : slice, &exp, &broken);
		if (broken)
			d->ring_ok = false;
		if (!exp)
			return n;
		if ((n = check_alive(t)))
			return n;
		if (eng_mono_s() - start >= limit_s) {
			*expired = true;
			return -ETIMEDOUT;
		}
	}
}

/* Describe an error from the kernel or the ring, once. */
static void fail_io(struct eng_tcp *t, int e)
{
	if (e == -EIO)
		fail(t, e, "io_uring ring unusable");
	else if (e == -ETIMEDOUT) /* from keepalive: the socket was idle */
		fail(t, e, "no answer to keepalive probes for %.1f s", t->dead_s);
	else
		fail(t, e, NULL);
}

/* ---- data ------------------------------------------------------------- */

int eng_tcp_fd(const struct eng_tcp *t)
{
	return t->fd;
}

int eng_tcp_send(struct eng_tcp *t, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t done = 0;
	int ret = 0;

	pthread_mutex_lock(&t->tx.lock);
	if (t->tx.err) {
		ret = t->tx.err;
		goto out;
	}
	while (done < len) {
		bool expired;
		size_t chunk = len - done > INT32_MAX ? INT32_MAX : len - done;
		int n = io_wait(t, &t->tx, true, (void *)(p + done), chunk, t->idle_s, &expired);

		if (n > 0) {
			done += (size_t)n;
			atomic_fetch_add(&t->sent, (uint64_t)n);
			continue;
		}
		if (n == -EINTR || n == -EAGAIN)
			continue;
		ret = atomic_load(&t->conn_err);
		if (!ret) {
			ret = n ? n : -EPIPE;
			if (expired)
				fail(t, ret, "nothing could be sent for %.1f s", t->idle_s);
			else
				fail_io(t, ret);
		}
		break;
	}
	if (ret)
		t->tx.err = ret;
out:
	pthread_mutex_unlock(&t->tx.lock);
	return ret;
}

ssize_t eng_tcp_recv(struct eng_tcp *t, void *buf, size_t len, double timeout_s)
{
	bool deflt = timeout_s < 0, expired;
	int n;

	if (len > INT32_MAX)
		len = INT32_MAX; /* a CQE carries an int */
	pthread_mutex_lock(&t->rx.lock);
	if (t->rx.err) {
		n = t->rx.err;
		goto out;
	}
	do
		n = io_wait(t, &t->rx, false, buf, len, deflt ? t->idle_s : timeout_s, &expired);
	while (n == -EINTR || n == -EAGAIN);
	if (expired && !deflt)
		goto out; /* the caller's own poll: nothing consumed, still usable */
	if (n <= 0 && atomic_load(&t->conn_err)) {
		n = atomic_load(&t->conn_err); /* our shutdown, not the peer's EOF */
	} else if (n < 0) {
		if (expired)
			fail(t, n, "nothing received for %.1f s", t->idle_s);
		else
			fail_io(t, n);
	}
	if (n < 0)
		t->rx.err = n;
out:
	pthread_mutex_unlock(&t->rx.lock);
	return n;
}

int eng_tcp_recv_all(struct eng_tcp *t, void *buf, size_t len, double timeout_s)
{
	double deadline = eng_mono_s() + (timeout_s < 0 ? t->idle_s : timeout_s);
	size_t done = 0;

	while (done < len) {
		double left = timeout_s < 0 ? -1 : dmax(0, deadline - eng_mono_s());
		ssize_t n = eng_tcp_recv(t, (uint8_t *)buf + done, len - done, left);
		if (n < 0)
			return (int)n;
		if (n == 0)
			return -EPIPE;
		done += (size_t)n;
	}
	return 0;
}

int eng_tcp_shutdown(struct eng_tcp *t, int how)
{
	return shutdown(t->fd, how) ? -errno : 0;
}

const char *eng_tcp_error(const struct eng_tcp *t)
{
	return atomic_load(&((struct eng_tcp *)t)->failed) ? t->err : NULL;
}

const char *eng_tcp_peer(const struct eng_tcp *t)
{
	return t->peer;
}

static int sink_write(void *ctx, const void *buf, size_t len)
{
	return eng_tcp_send(ctx, buf, len);
}

static ssize_t source_read(void *ctx, void *buf, size_t len)
{
	return eng_tcp_recv(ctx, buf, len, -1);
}

struct eng_sink eng_tcp_sink(struct eng_tcp *t)
{
	return (struct eng_sink){ .write = sink_write, .ctx = t };
}

struct eng_source eng_tcp_source(struct eng_tcp *t)
{
	return (struct eng_source){ .read = source_read, .ctx = t };
}

/* ---- link estimate and buffer control --------------------------------- */

void eng_tcp_sample(struct eng_tcp *t, struct eng_link *out)
{
	struct tcp_info ti = { 0 };
	socklen_t l = sizeof(ti);
	int queued = 0;
	uint64_t acked;
	double now;

	memset(out, 0, sizeof(*out));
	/*
	 * One sample at a time: a concurrent sample's later acked count would
	 * otherwise replace ours (the no-going-back clamp below) after our
	 * SIOCOUTQ was read, and queued would exceed sent - acked.
	 */
	pthread_mutex_lock(&t->slock);
	if (getsockopt(t->fd, IPPROTO_TCP, TCP_INFO, &ti, &l))
		memset(&ti, 0, sizeof(ti));
	if (ioctl(t->fd, SIOCOUTQ, &queued) || queued < 0)
		queued = 0;
	/* Read after TCP_INFO, so sent >= everything the kernel could have acknowledged. */
	out->sent = atomic_load(&t->sent);
	now = eng_mono_s();
	acked = ti.tcpi_bytes_acked > t->acked_base ? ti.tcpi_bytes_acked - t->acked_base : 0;
	if (acked > out->sent) /* the FIN counts once acknowledged */
		acked = out->sent;
	if (acked < t->last_acked) /* TCP_INFO failed (closed socket): no news */
		acked = t->last_acked;
	if (t->have_last && now > t->last_t) {
		double dt = now - t->last_t;
		double alpha = dt / (1.0 + dt); /* ~1 - exp(-dt / 1 s) */
		out->rate_bps = (double)(acked - t->last_acked) * 8 / dt;
		t->smooth += alpha * (out->rate_bps - t->smooth);
	}
	t->have_last = true;
	t->last_t = now;
	t->last_acked = acked;
	out->rate_smooth_bps = t->smooth;
	pthread_mutex_unlock(&t->slock);
	out->acked = acked;
	out->queued = (uint64_t)queued;
	out->unsent = ti.tcpi_notsent_bytes;
	out->delivery_bps = (double)ti.tcpi_delivery_rate * 8;
	out->app_limited = ti.tcpi_delivery_rate_app_limited;
	out->rtt_ms = ti.tcpi_rtt / 1000.0;
	out->min_rtt_ms = ti.tcpi_min_rtt / 1000.0;
}

static int wmem_max(void)
{
	FILE *f = fopen("/proc/sys/net/ipv4/tcp_wmem", "r");
	int lo, def, max = 4 << 20;

	if (f) {
		if (fscanf(f, "%d %d %d", &lo, &def, &max) != 3)
			max = 4 << 20;
		fclose(f);
	}
	return max;
}

int eng_tcp_set_sndbuf(struct eng_tcp *t, int bytes)
{
	if (bytes < 0)
		return -EINVAL;
	if (bytes == 0) /* never capped: autotuning is still on */
		return t->sndbuf_capped ? set_int(t->fd, SOL_SOCKET, SO_SNDBUF, wmem_max() / 2) : 0;
	t->sndbuf_capped = true;
	return set_int(t->fd, SOL_SOCKET, SO_SNDBUF, bytes);
}

int eng_tcp_set_unsent_limit(struct eng_tcp *t, int bytes)
{
	if (bytes < 0)
		return -EINVAL;
	return set_int(t->fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, bytes ? bytes : INT32_MAX);
}

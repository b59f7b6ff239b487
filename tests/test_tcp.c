/*
 * tcp: transport over real loopback sockets and io_uring: location parsing,
 * 64 MiB through the stream sink and source with a digest check and the link
 * estimate watched while it moves, full duplex (a reply while the sender is
 * blocked), connect/accept timeouts, and peers that die: killed (fork +
 * SIGKILL), closing early, and a link that drops silently (lo down in a
 * private network namespace, so only the liveness checks can tell); a live
 * receiver that stops reading for longer than the dead-peer time must not be
 * mistaken for a dead one.
 */
#include "engine/clock.h"
#include "codecs/codecs.h"
#include "engine/tcp.h"
#include "testlib.h"

#include <errno.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define MiB (1u << 20)

static void msleep(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void fill_random(uint8_t *p, size_t n)
{
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		uint64_t r = test_rand();
		memcpy(p + i, &r, 8);
	}
	for (; i < n; i++)
		p[i] = (uint8_t)test_rand();
}

/* A connected pair on loopback: the handshake completes into the backlog, so no thread is needed. */
static void make_pair(const char *connect_host, struct eng_tcp **client, struct eng_tcp **server)
{
	char err[512], port[16];
	struct eng_tcp_listener *l = eng_tcp_listen("127.0.0.1", "0", err, sizeof(err));

	assert_non_null(l);
	snprintf(port, sizeof(port), "%d", eng_tcp_listener_port(l));
	*client = eng_tcp_connect(connect_host, port, 5.0, err, sizeof(err));
	if (!*client)
		fail_msg("%s", err);
	*server = eng_tcp_listener_accept(l, 5.0, err, sizeof(err));
	if (!*server)
		fail_msg("%s", err);
	eng_tcp_listener_close(l);
}

/* A port nothing listens on (bound, read, released). */
static void free_port(char *port, size_t len)
{
	char err[512];
	struct eng_tcp_listener *l = eng_tcp_listen("127.0.0.1", "0", err, sizeof(err));

	assert_non_null(l);
	snprintf(port, len, "%d", eng_tcp_listener_port(l));
	eng_tcp_listener_close(l);
}

/* ---- parsing ----------------------------------------------------------- */

static void test_parse(void **state)
{
	static const struct {
		const char *loc, *host, *port;
	} good[] = {
		{ "tcp:127.0.0.1:7000", "127.0.0.1", "7000" },
		{ "tcp:[::1]:1", "::1", "1" },
		{ "tcp:[fe80::1%lo]:65535", "fe80::1%lo", "65535" },
		{ "tcp:edge-site-2.example.org:443", "edge-site-2.example.org", "443" },
		{ "tcp:localhost:08080", "localhost", "08080" },
	};
	static const char *bad[] = {
		"file:/tmp/x", "tcp:", "tcp:host", "tcp:host:", "tcp::7000", "tcp:host:0",
		"tcp:host:65536", "tcp:host:12x", "tcp:host:-1", "tcp:host:123456", "tcp:::1:80",
		"tcp:[::1]7000", "tcp:[::1", "tcp:[]:80", "tcp:[zz::q]:80", "tcp:[1.2.3.4]:80",
		"tcp:ho st:80", "tcp:a/b:80", "TCP:host:80",
	};
	char host[64], port[8], err[256];
	(void)state;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		err[0] = 0;
		int ret = eng_tcp_parse(good[i].loc, host, sizeof(host), port, sizeof(port), err,
					sizeof(err));
		if (ret)
			fail_msg("%s: %s", good[i].loc, err);
		assert_string_equal(host, good[i].host);
		assert_string_equal(port, good[i].port);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = 0;
		if (eng_tcp_parse(bad[i], host, sizeof(host), port, sizeof(port), err, sizeof(err)) !=
		    -EINVAL)
			fail_msg("accepted %s", bad[i]);
		assert_true(strlen(err) > 0 && !strchr(err, '\n'));
	}
	/* Output buffers too small are an error, not a truncation. */
	assert_int_equal(eng_tcp_parse("tcp:a-long-host-name:80", host, 8, port, sizeof(port), err,
				       sizeof(err)),
			 -EINVAL);
	assert_non_null(strstr(err, "too long"));
}

/* ---- 64 MiB through sink and source ----------------------------------- */

struct rx_job {
	struct eng_tcp *t;
	uint8_t *buf;
	size_t cap, got;
	ssize_t last;
	double done_at;
	uint8_t digest[CDC_DIGEST_LEN];
};

static void *rx_stream(void *arg)
{
	struct rx_job *j = arg;
	struct eng_source src = eng_tcp_source(j->t);

	for (;;) {
		ssize_t n = src.read(src.ctx, j->buf + j->got, j->cap - j->got);
		j->last = n;
		if (n <= 0)
			break;
		j->got += (size_t)n;
		if (j->got == j->cap) { /* one more read must see the end */
			uint8_t extra;
			j->last = src.read(src.ctx, &extra, 1);
			break;
		}
	}
	j->done_at = eng_mono_s();
	cdc_sha256(j->buf, j->got, j->digest);
	if (j->last == 0)
		eng_tcp_send(j->t, j->digest, sizeof(j->digest));
	return NULL;
}

struct sampler {
	struct eng_tcp *t;
	atomic_bool stop;
	unsigned samples, violations;
	uint64_t last_sent;
};

static void *sample_loop(void *arg)
{
	struct sampler *s = arg;

	while (!atomic_load(&s->stop)) {
		struct eng_link k;
		eng_tcp_sample(s->t, &k);
		if (k.acked > k.sent || k.sent < s->last_sent)
			s->violations++;
		s->last_sent = k.sent;
		s->samples++;
		msleep(1);
	}
	return NULL;
}

static void test_stream_64mib(void **state)
{
	const size_t total = 64 * MiB;
	struct eng_tcp *client, *server;
	struct rx_job rx = { 0 };
	struct sampler smp = { 0 };
	pthread_t rth, sth;
	uint8_t *data = malloc(total), digest[CDC_DIGEST_LEN], reply[CDC_DIGEST_LEN];
	unsigned positive = 0, checked = 0;
	double t0, c0, secs, cpu;
	struct eng_link k;
	(void)state;

	assert_non_null(data);
	fill_random(data, total);
	cdc_sha256(data, total, digest);
	make_pair("127.0.0.1", &client, &server);
	rx = (struct rx_job){ .t = server, .buf = malloc(total), .cap = total };
	assert_non_null(rx.buf);
	smp.t = client;

	struct eng_sink sink = eng_tcp_sink(client);
	t0 = eng_mono_s();
	c0 = eng_cpu_s();
	assert_int_equal(pthread_create(&rth, NULL, rx_stream, &rx), 0);
	assert_int_equal(pthread_create(&sth, NULL, sample_loop, &smp), 0);
	eng_tcp_sample(client, &k); /* the first sample only sets the baseline */
	for (size_t off = 0, i = 0; off < total; i++) {
		/* Frame-like writes: a 12-byte header, then a body of up to 2 MiB. */
		size_t n = i % 2 ? 12 : 1 + test_rand() % (2 * MiB);
		if (n > total - off)
			n = total - off;
		assert_int_equal(sink.write(sink.ctx, data + off, n), 0);
		off += n;
		if (n > 12) {
			eng_tcp_sample(client, &k);
			assert_true(k.acked <= k.sent);
			assert_true(k.sent >= off);
			assert_true(k.queued <= k.sent - k.acked + 1);
			positive += k.rate_bps > 0;
			checked++;
		}
	}
	assert_int_equal(eng_tcp_shutdown(client, SHUT_WR), 0);
	assert_int_equal(eng_tcp_recv_all(client, reply, sizeof(reply), 10.0), 0);
	pthread_join(rth, NULL);
	secs = rx.done_at - t0;
	cpu = eng_cpu_s() - c0;
	atomic_store(&smp.stop, true);
	pthread_join(sth, NULL);

	assert_int_equal(rx.got, total);
	assert_int_equal(rx.last, 0);
	assert_memory_equal(rx.digest, digest, sizeof(digest));
	assert_memory_equal(reply, digest, sizeof(digest));
	assert_int_equal(smp.violations, 0);
	assert_true(positive > 0);
	print_message("[ INFO     ] 64 MiB in %.3f s: %.2f Gbit/s, %.2f CPU s per GB (both ends, "
		      "%u samples, %u/%u with rate > 0)\n",
		      secs, total * 8 / secs / 1e9, cpu / (total / 1e9), smp.samples, positive, checked);

	/* Eventually every byte is acknowledged. */
	double deadline = eng_mono_s() + 5;
	do {
		eng_tcp_sample(client, &k);
		if (k.acked == k.sent)
			break;
		msleep(5);
	} while (eng_mono_s() < deadline);
	assert_int_equal(k.sent, total);
	assert_int_equal(k.acked, total);
	assert_int_equal(k.queued, 0);
	assert_true(k.rate_smooth_bps > 0);
	assert_true(k.rtt_ms > 0 && k.rtt_ms < 1000);
	assert_null(eng_tcp_error(client));
	assert_null(eng_tcp_error(server));
	eng_tcp_close(client);
	eng_tcp_close(server);
	free(rx.buf);
	free(data);
}

/* ---- full duplex -------------------------------------------------------- */

struct duplex {
	struct eng_tcp *client, *server;
	atomic_bool sender_done, reply_seen;
	bool sender_done_at_reply;
	char reply[16];
	int reply_ret;
	size_t drained;
	pthread_mutex_t mu;
	pthread_cond_t cv;
};

/* Receiver: read 4 MiB, answer, wait until the answer is seen, drain the rest. */
static void *duplex_receiver(void *arg)
{
	struct duplex *d = arg;
	uint8_t *buf = malloc(MiB);
	struct timespec until;
	ssize_t n;

	for (int i = 0; i < 4; i++)
		if (eng_tcp_recv_all(d->server, buf, MiB, 10.0))
			goto out;
	d->drained = 4 * MiB;
	eng_tcp_send(d->server, "status: segment4", 16);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	pthread_mutex_lock(&d->mu);
	while (!atomic_load(&d->reply_seen))
		if (pthread_cond_timedwait(&d->cv, &d->mu, &until))
			break;
	pthread_mutex_unlock(&d->mu);
	while ((n = eng_tcp_recv(d->server, buf, MiB, 10.0)) > 0)
		d->drained += (size_t)n;
out:
	free(buf);
	return NULL;
}

/* Control thread on the sending side: waits for the reply on the same connection. */
static void *duplex_control(void *arg)
{
	struct duplex *d = arg;

	d->reply_ret = eng_tcp_recv_all(d->client, d->reply, sizeof(d->reply), 10.0);
	d->sender_done_at_reply = atomic_load(&d->sender_done);
	pthread_mutex_lock(&d->mu);
	atomic_store(&d->reply_seen, true);
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->mu);
	return NULL;
}

static void test_full_duplex(void **state)
{
	const size_t total = 64 * MiB;
	struct duplex d = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
	uint8_t *chunk = calloc(1, MiB);
	pthread_t rth, cth;
	(void)state;

	/* "localhost" resolves to ::1 first: refused there, connected on 127.0.0.1. */
	make_pair("localhost", &d.client, &d.server);
	assert_int_equal(pthread_create(&rth, NULL, duplex_receiver, &d), 0);
	assert_int_equal(pthread_create(&cth, NULL, duplex_control, &d), 0);
	for (size_t off = 0; off < total; off += MiB)
		assert_int_equal(eng_tcp_send(d.client, chunk, MiB), 0);
	atomic_store(&d.sender_done, true);
	assert_int_equal(eng_tcp_shutdown(d.client, SHUT_WR), 0);
	pthread_join(cth, NULL);
	pthread_join(rth, NULL);

	assert_int_equal(d.reply_ret, 0);
	assert_memory_equal(d.reply, "status: segment4", 16);
	/* The reply arrived while the sender was blocked in eng_tcp_send: the receiver
	 * read nothing between answering and seeing its answer arrive. */
	assert_false(d.sender_done_at_reply);
	assert_int_equal(d.drained, total);

	/* A poll with an explicit timeout consumes nothing and keeps the connection. */
	char buf[8];
	double t0 = eng_mono_s();
	assert_int_equal(eng_tcp_recv(d.client, buf, sizeof(buf), 0.1), -ETIMEDOUT);
	assert_true(eng_mono_s() - t0 >= 0.09 && eng_mono_s() - t0 < 2);
	assert_null(eng_tcp_error(d.client));
	assert_int_equal(eng_tcp_send(d.server, "again", 5), 0);
	assert_int_equal(eng_tcp_recv_all(d.client, buf, 5, 5.0), 0);
	assert_memory_equal(buf, "again", 5);

	/* The default (idle) timeout instead declares the connection lost, stickily. */
	assert_int_equal(eng_tcp_set_timeouts(d.client, 5, 0.2), 0);
	t0 = eng_mono_s();
	assert_int_equal(eng_tcp_recv(d.client, buf, sizeof(buf), -1), -ETIMEDOUT);
	assert_true(eng_mono_s() - t0 < 2);
	assert_non_null(eng_tcp_error(d.client));
	assert_non_null(strstr(eng_tcp_error(d.client), "lost: nothing received for 0.2 s"));
	assert_int_equal(eng_tcp_recv(d.client, buf, sizeof(buf), 1), -ETIMEDOUT);
	assert_int_equal(eng_tcp_set_timeouts(d.client, 0, 1), -EINVAL);

	eng_tcp_close(d.client);
	eng_tcp_close(d.server);
	free(chunk);
}

/* ---- connect and accept ------------------------------------------------- */

static void test_connect_refused(void **state)
{
	char port[16], err[512], want[64];
	double t0;
	(void)state;

	free_port(port, sizeof(port));
	t0 = eng_mono_s();
	assert_null(eng_tcp_connect("127.0.0.1", port, 1.0, err, sizeof(err)));
	double dt = eng_mono_s() - t0;
	assert_true(dt >= 0.8 && dt < 3);
	snprintf(want, sizeof(want), "cannot connect to 127.0.0.1:%s within 1.0 s", port);
	assert_non_null(strstr(err, want));
	assert_non_null(strstr(err, "refused"));
}

struct late {
	char port[16];
	struct eng_tcp *t;
	char err[512];
};

static void *late_listener(void *arg)
{
	struct late *l = arg;

	msleep(400);
	l->t = eng_tcp_accept("127.0.0.1", l->port, 5.0, l->err, sizeof(l->err));
	return NULL;
}

static void test_connect_retries(void **state)
{
	struct late l = { 0 };
	pthread_t th;
	char err[512];
	(void)state;

	free_port(l.port, sizeof(l.port));
	assert_int_equal(pthread_create(&th, NULL, late_listener, &l), 0);
	struct eng_tcp *c = eng_tcp_connect("127.0.0.1", l.port, 5.0, err, sizeof(err));
	pthread_join(th, NULL);
	if (!c || !l.t)
		fail_msg("%s / %s", c ? "" : err, l.t ? "" : l.err);
	assert_int_equal(eng_tcp_send(c, "hello", 5), 0);
	char buf[5];
	assert_int_equal(eng_tcp_recv_all(l.t, buf, 5, 5.0), 0);
	assert_memory_equal(buf, "hello", 5);
	eng_tcp_close(c);
	eng_tcp_close(l.t);
}

static void test_accept_timeout(void **state)
{
	char err[512];
	double t0 = eng_mono_s();
	(void)state;

	assert_null(eng_tcp_accept("127.0.0.1", "0", 0.5, err, sizeof(err)));
	double dt = eng_mono_s() - t0;
	assert_true(dt >= 0.45 && dt < 2);
	assert_non_null(strstr(err, "no connection on 127.0.0.1:"));
	assert_non_null(strstr(err, "within 0.5 s"));

	/* A port already in use is refused with the reason. */
	struct eng_tcp_listener *l = eng_tcp_listen("127.0.0.1", "0", err, sizeof(err));
	char port[16];
	assert_non_null(l);
	snprintf(port, sizeof(port), "%d", eng_tcp_listener_port(l));
	assert_null(eng_tcp_accept("127.0.0.1", port, 0.5, err, sizeof(err)));
	assert_non_null(strstr(err, "in use"));
	eng_tcp_listener_close(l);
}

/* ---- dying peers -------------------------------------------------------- */

/* Wait up to ms for one byte on fd. */
static bool wait_byte(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char c;

	return poll(&p, 1, ms) == 1 && read(fd, &c, 1) == 1;
}

struct killer {
	int pipe_rd;
	pid_t pid;
	double killed_at;
};

static void *kill_when_ready(void *arg)
{
	struct killer *k = arg;

	wait_byte(k->pipe_rd, 10000);
	k->killed_at = eng_mono_s();
	kill(k->pid, SIGKILL);
	return NULL;
}

/* Child: connect, then either read (reader) or send forever, telling the parent after 1 MiB. */
static void child_peer(const char *port, int pipe_wr, bool reader)
{
	char err[512];
	uint8_t *buf = calloc(1, MiB);
	struct eng_tcp *t = eng_tcp_connect("127.0.0.1", port, 5.0, err, sizeof(err));

	alarm(20); /* never outlive a broken parent */
	if (!t)
		_exit(2);
	if (reader ? eng_tcp_recv_all(t, buf, MiB, 10.0) : eng_tcp_send(t, buf, MiB))
		_exit(3);
	if (write(pipe_wr, "x", 1) != 1)
		_exit(4);
	for (;;) /* until SIGKILL */
		if (reader ? eng_tcp_recv(t, buf, MiB, 10.0) <= 0 : eng_tcp_send(t, buf, MiB) != 0)
			_exit(5);
}

static pid_t fork_peer(struct eng_tcp_listener *l, int pipe_fds[2], bool reader)
{
	char port[16];
	pid_t pid;

	snprintf(port, sizeof(port), "%d", eng_tcp_listener_port(l));
	assert_int_equal(pipe(pipe_fds), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pipe_fds[0]);
		child_peer(port, pipe_fds[1], reader);
	}
	close(pipe_fds[1]);
	return pid;
}

static void test_peer_killed(void **state)
{
	char err[512];
	int fds[2], status;
	uint8_t *buf = calloc(1, MiB);
	struct killer k;
	pthread_t th;
	(void)state;

	/* The receiver dies: the sender's next sends fail. */
	struct eng_tcp_listener *l = eng_tcp_listen("127.0.0.1", "0", err, sizeof(err));
	assert_non_null(l);
	k.pid = fork_peer(l, fds, true);
	struct eng_tcp *t = eng_tcp_listener_accept(l, 5.0, err, sizeof(err));
	if (!t)
		fail_msg("%s", err);
	k.pipe_rd = fds[0];
	assert_int_equal(pthread_create(&th, NULL, kill_when_ready, &k), 0);
	int ret = 0;
	for (int i = 0; i < 4096 && !ret; i++) /* bounded: 4 GiB */
		ret = eng_tcp_send(t, buf, MiB);
	double failed_at = eng_mono_s();
	pthread_join(th, NULL);
	assert_int_equal(waitpid(k.pid, &status, 0), k.pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	assert_true(ret == -ECONNRESET || ret == -EPIPE);
	assert_true(failed_at - k.killed_at < 5);
	assert_non_null(eng_tcp_error(t));
	assert_non_null(strstr(eng_tcp_error(t), "connection to 127.0.0.1:"));
	assert_non_null(strstr(eng_tcp_error(t), " lost: "));
	assert_int_equal(eng_tcp_send(t, buf, 1), ret); /* sticky */
	eng_tcp_close(t);
	close(fds[0]);

	/* The sender dies: the reader sees the end (or a reset) soon after the last bytes. */
	k.pid = fork_peer(l, fds, false);
	t = eng_tcp_listener_accept(l, 5.0, err, sizeof(err));
	if (!t)
		fail_msg("%s", err);
	assert_int_equal(eng_tcp_set_timeouts(t, 10, 5), 0);
	assert_int_equal(eng_tcp_recv_all(t, buf, MiB, 5.0), 0);
	k.pipe_rd = fds[0];
	assert_int_equal(pthread_create(&th, NULL, kill_when_ready, &k), 0);
	ssize_t n;
	uint64_t got = 0;
	while ((n = eng_tcp_recv(t, buf, MiB, -1)) > 0)
		got += (uint64_t)n;
	failed_at = eng_mono_s();
	pthread_join(th, NULL);
	assert_int_equal(waitpid(k.pid, &status, 0), k.pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	assert_true(n == 0 || n == -ECONNRESET);
	assert_true(failed_at - k.killed_at < 5);
	eng_tcp_close(t);
	close(fds[0]);
	eng_tcp_listener_close(l);
	free(buf);
}

static void *close_after_1mib(void *arg)
{
	struct eng_tcp *t = arg;
	uint8_t *buf = malloc(MiB);

	eng_tcp_recv_all(t, buf, MiB, 10.0);
	eng_tcp_close(t); /* unread data: the kernel answers with a reset */
	free(buf);
	return NULL;
}

static void test_receiver_closes_early(void **state)
{
	struct eng_tcp *client, *server;
	uint8_t *buf = calloc(1, MiB);
	pthread_t th;
	int ret = 0;
	(void)state;

	signal(SIGPIPE, SIG_DFL); /* a send without MSG_NOSIGNAL would kill the test */
	make_pair("127.0.0.1", &client, &server);
	assert_int_equal(pthread_create(&th, NULL, close_after_1mib, server), 0);
	double t0 = eng_mono_s();
	for (int i = 0; i < 4096 && !ret; i++)
		ret = eng_tcp_send(client, buf, MiB);
	pthread_join(th, NULL);
	assert_true(ret == -ECONNRESET || ret == -EPIPE);
	assert_true(eng_mono_s() - t0 < 10);
	/* After the reset, writes keep failing (the kernel's EPIPE path included). */
	assert_int_equal(eng_tcp_send(client, buf, 1), ret);
	assert_non_null(strstr(eng_tcp_error(client), " lost: "));
	eng_tcp_close(client);
	free(buf);
}

/* ---- a link that drops without a word ---------------------------------- */

static int set_lo(bool up)
{
	struct ifreq ifr = { 0 };
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), ret;

	strcpy(ifr.ifr_name, "lo");
	ret = ioctl(fd, SIOCGIFFLAGS, &ifr);
	if (!ret) {
		ifr.ifr_flags = up ? (ifr.ifr_flags | IFF_UP) : (ifr.ifr_flags & ~IFF_UP);
		ret = ioctl(fd, SIOCSIFFLAGS, &ifr);
	}
	close(fd);
	return ret;
}

struct flow {
	struct eng_tcp *t;
	bool sender;
	int ret;
	double at;
};

static void *flow_run(void *arg)
{
	struct flow *f = arg;
	uint8_t *buf = calloc(1, 256 * 1024);
	ssize_t n;

	for (int i = 0; i < 1000000; i++) { /* bounded by the dead-peer timeout, in practice */
		n = f->sender ? eng_tcp_send(f->t, buf, 256 * 1024)
			      : eng_tcp_recv(f->t, buf, 256 * 1024, -1);
		if (f->sender ? n != 0 : n <= 0) {
			f->ret = (int)n;
			break;
		}
	}
	f->at = eng_mono_s();
	free(buf);
	return NULL;
}

/* In the child: 0 = as expected, 77 = no namespaces here, else a failure code. */
static int link_drop_child(void)
{
	struct eng_tcp *client, *server;
	struct flow tx = { 0 }, rx = { 0 }, ctl = { 0 };
	pthread_t a, b, c;
	char err[512], port[16];
	double down_at;

	alarm(25);
	if (unshare(CLONE_NEWNET)) {
		fprintf(stderr, "unshare(CLONE_NEWNET): %s\n", strerror(errno));
		return 77;
	}
	if (set_lo(true))
		return 10;
	struct eng_tcp_listener *l = eng_tcp_listen("127.0.0.1", "0", err, sizeof(err));
	if (!l)
		return 11;
	snprintf(port, sizeof(port), "%d", eng_tcp_listener_port(l));
	client = eng_tcp_connect("127.0.0.1", port, 5.0, err, sizeof(err));
	server = client ? eng_tcp_listener_accept(l, 5.0, err, sizeof(err)) : NULL;
	eng_tcp_listener_close(l);
	if (!client || !server)
		return 12;
	/* Dead within 1.5 s; no single operation's idle limit may fire first. */
	if (eng_tcp_set_timeouts(client, 1.5, 30) || eng_tcp_set_timeouts(server, 1.5, 30))
		return 13;
	tx = (struct flow){ .t = client, .sender = true };
	rx = (struct flow){ .t = server };
	ctl = (struct flow){ .t = client }; /* the sender's control thread, waiting for a reply */
	pthread_create(&a, NULL, flow_run, &tx);
	pthread_create(&b, NULL, flow_run, &rx);
	pthread_create(&c, NULL, flow_run, &ctl);
	msleep(300);
	down_at = eng_mono_s();
	if (set_lo(false))
		return 14;
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	pthread_join(c, NULL);
	fprintf(stderr, "[ INFO     ] link down: send failed after %.2f s (%s), recv after %.2f s (%s), "
		"sender's recv after %.2f s (%s)\n",
		tx.at - down_at, strerror(-tx.ret), rx.at - down_at, strerror(-rx.ret),
		ctl.at - down_at, strerror(-ctl.ret));
	fprintf(stderr, "[ INFO     ] sender: %s\n", eng_tcp_error(client) ? eng_tcp_error(client) : "-");
	fprintf(stderr, "[ INFO     ] receiver: %s\n", eng_tcp_error(server) ? eng_tcp_error(server) : "-");
	if (tx.ret >= 0 || rx.ret >= 0 || ctl.ret != -ETIMEDOUT)
		return 15;
	if (tx.at - down_at > 6 || rx.at - down_at > 6 || ctl.at - down_at > 6)
		return 16;
	if (!eng_tcp_error(client) || !strstr(eng_tcp_error(client), " lost: no acknowledgement for 1.5 s"))
		return 17;
	if (!eng_tcp_error(server) || !strstr(eng_tcp_error(server), " lost: "))
		return 18;
	eng_tcp_close(client);
	eng_tcp_close(server);
	return 0;
}

static void test_link_dropped(void **state)
{
	int status;
	pid_t pid;
	(void)state;

	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(link_drop_child());
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
		skip();
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail_msg("link-drop child: %s %d", WIFEXITED(status) ? "exit" : "signal",
			 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

/* ---- send buffer control ------------------------------------------------ */

struct bulk {
	struct eng_tcp *t;
	size_t len;
	int ret;
};

static void *bulk_send(void *arg)
{
	struct bulk *b = arg;
	uint8_t *buf = calloc(1, b->len);

	b->ret = eng_tcp_send(b->t, buf, b->len);
	free(buf);
	return NULL;
}

/* A receiver that pauses (zero window, probes answered) for 3x the dead-peer time. */
static void test_slow_reader_survives(void **state)
{
	const size_t total = 32 * MiB;
	struct eng_tcp *client, *server;
	struct bulk b;
	struct eng_link k;
	pthread_t th;
	uint8_t *buf = malloc(MiB);
	(void)state;

	make_pair("127.0.0.1", &client, &server);
	assert_int_equal(eng_tcp_set_timeouts(client, 1, 10), 0);
	assert_int_equal(eng_tcp_set_timeouts(server, 1, 10), 0);
	b = (struct bulk){ .t = client, .len = total };
	assert_int_equal(pthread_create(&th, NULL, bulk_send, &b), 0);
	msleep(3000);
	eng_tcp_sample(client, &k);
	assert_true(k.sent < total); /* the sender really was held up */
	assert_null(eng_tcp_error(client));
	for (size_t got = 0; got < total; got += MiB)
		assert_int_equal(eng_tcp_recv_all(server, buf, MiB, 10.0), 0);
	pthread_join(th, NULL);
	assert_int_equal(b.ret, 0);
	assert_null(eng_tcp_error(client));
	assert_null(eng_tcp_error(server));
	eng_tcp_close(client);
	eng_tcp_close(server);
	free(buf);
}

/* With the receiver not reading, fill the socket and look at what waits there (limit 0: none). */
static void stalled_sample(bool cap_sndbuf, int limit, struct eng_link *k)
{
	struct eng_tcp *client, *server;
	struct bulk b;
	pthread_t th;
	uint8_t *buf = malloc(MiB);

	make_pair("127.0.0.1", &client, &server);
	if (limit && cap_sndbuf)
		assert_int_equal(eng_tcp_set_sndbuf(client, limit), 0);
	else if (limit)
		assert_int_equal(eng_tcp_set_unsent_limit(client, limit), 0);
	b = (struct bulk){ .t = client, .len = 32 * MiB };
	assert_int_equal(pthread_create(&th, NULL, bulk_send, &b), 0);
	msleep(300);
	eng_tcp_sample(client, k);
	for (size_t got = 0; got < b.len; got += MiB)
		assert_int_equal(eng_tcp_recv_all(server, buf, MiB, 10.0), 0);
	pthread_join(th, NULL);
	assert_int_equal(b.ret, 0);
	assert_int_equal(eng_tcp_set_sndbuf(client, 0), 0);
	assert_int_equal(eng_tcp_set_unsent_limit(client, 0), 0);
	eng_tcp_close(client);
	eng_tcp_close(server);
	free(buf);
}

static void test_send_buffer_limits(void **state)
{
	struct eng_link k;
	(void)state;

	/* Without limits the kernel queues megabytes here, all beyond the engine's reach. */
	stalled_sample(false, 0, &k);
	print_message("[ INFO     ] no limit, receiver stalled: sent %llu, queued %llu, unsent %llu\n",
		      (unsigned long long)k.sent, (unsigned long long)k.queued, (unsigned long long)k.unsent);
	assert_true(k.queued > 512 * 1024);

	stalled_sample(true, 64 * 1024, &k);
	print_message("[ INFO     ] SO_SNDBUF 64 KiB, receiver stalled: sent %llu, queued %llu, unsent %llu\n",
		      (unsigned long long)k.sent, (unsigned long long)k.queued, (unsigned long long)k.unsent);
	assert_true(k.sent < 32 * MiB);
	assert_true(k.queued <= 256 * 1024);

	stalled_sample(false, 128 * 1024, &k);
	print_message("[ INFO     ] NOTSENT_LOWAT 128 KiB, receiver stalled: sent %llu, queued %llu, unsent %llu\n",
		      (unsigned long long)k.sent, (unsigned long long)k.queued, (unsigned long long)k.unsent);
	assert_true(k.sent < 32 * MiB);
	assert_true(k.unsent <= 512 * 1024);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_stream_64mib),
		cmocka_unit_test(test_full_duplex),
		cmocka_unit_test(test_connect_refused),
		cmocka_unit_test(test_connect_retries),
		cmocka_unit_test(test_accept_timeout),
		cmocka_unit_test(test_peer_killed),
		cmocka_unit_test(test_receiver_closes_early),
		cmocka_unit_test(test_link_dropped),
		cmocka_unit_test(test_slow_reader_survives),
		cmocka_unit_test(test_send_buffer_limits),
	};

	test_seed();
	return cmocka_run_group_tests_name("tcp", tests, NULL, NULL);
}

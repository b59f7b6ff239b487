/*
 * wan-relay: the delay half of the emulated WAN that scripts/wan builds
 * (this kernel has no netem). It runs in the wan namespace between two veth
 * ends, reads every frame arriving on one with an AF_PACKET socket and
 * writes it out of the other DELAY later, in order. Bandwidth is not its
 * job: tc (tbf) shapes the egress of both ends, and the qdisc's tail drops
 * come back to us as ENOBUFS, like a router's full buffer.
 *
 * Frames keep their virtio-net header across (PACKET_VNET_HDR), so TSO/GSO
 * super-frames and partial checksums from the sites stay valid with the
 * veth offloads left on, and one syscall moves up to 64 KiB. Each direction
 * queues frames in a fixed byte ring (bounded memory: a full ring drops).
 * One thread; it sleeps in ppoll until a socket is readable, a held frame
 * falls due or a signal arrives (SIGUSR1 prints counters, SIGTERM ends).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROG		"wan-relay"
#define VNET_LEN	sizeof(struct virtio_net_hdr)
/* Largest GSO frame a veth hands over by default, plus headroom. */
#define FRAME_MAX	(VNET_LEN + 65536 + 512)
#define BATCH		32
#define SOCK_BUF	(32 << 20)
/* Wake at least this often to notice a vanished interface. */
#define IDLE_NS		1000000000ull

/* A held frame in the ring: header, then vnet header + frame, 16-aligned. */
struct rec {
	uint64_t due_ns;
	uint32_t len;
	uint32_t wrap;		/* 1: rest of the ring is unused, go to 0 */
};

/* Byte ring with ever-growing offsets; size is a multiple of 16. */
struct ring {
	uint8_t *buf;
	uint64_t size, head, tail;
};

struct dir_stats {
	uint64_t frames, bytes, queue_drops, tx_drops, trunc_drops;
};

struct port {
	const char *ifname;
	int ifindex, fd;
};

/* One direction: frames read on port from leave on port to. */
struct dir {
	char name[40];
	const struct port *from, *to;
	bool blocked;		/* tx socket full: wait for POLLOUT */
	struct ring q;
	struct dir_stats st;
};

struct opts {
	const char *if_a, *if_b, *pidfile;
	uint64_t delay_ns, queue_bytes;
};

static uint8_t scratch[BATCH][FRAME_MAX];

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, PROG ": error: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t rec_space(uint32_t len)
{
	return (sizeof(struct rec) + len + 15) & ~15ull;
}

/* The record at *off, stepping over a wrap marker; NULL when empty. */
static struct rec *ring_at(const struct ring *q, uint64_t *off)
{
	struct rec *r;

	if (*off == q->tail)
		return NULL;
	r = (struct rec *)(q->buf + *off % q->size);
	if (r->wrap) {
		*off += q->size - *off % q->size;
		if (*off == q->tail)
			return NULL;
		r = (struct rec *)q->buf;
	}
	return r;
}

/* Appends one frame; false when it does not fit (the caller drops it). */
static bool ring_push(struct ring *q, const void *data, uint32_t len, uint64_t due)
{
	uint64_t need = rec_space(len), pos = q->tail % q->size, waste = 0;
	struct rec *r;

	if (q->size - pos < need)
		waste = q->size - pos;
	if (q->tail - q->head + waste + need > q->size)
		return false;
	if (waste) {
		((struct rec *)(q->buf + pos))->wrap = 1;
		q->tail += waste;
		pos = 0;
	}
	r = (struct rec *)(q->buf + pos);
	r->due_ns = due;
	r->len = len;
	r->wrap = 0;
	memcpy(r + 1, data, len);
	q->tail += need;
	return true;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " --if-a NAME --if-b NAME [--delay-us N] [--queue-bytes N] [--pidfile PATH]\n"
		"Relays every frame between two interfaces of this network namespace,\n"
		"holding each for the one-way delay, in order (scripts/wan starts it).\n"
		"  --if-a, --if-b NAME  the two interfaces (no IP addresses needed)\n"
		"  --delay-us N         one-way delay per direction, microseconds (default 0)\n"
		"  --queue-bytes N      held bytes per direction before frames are dropped\n"
		"                       (default 16777216, at least 1048576)\n"
		"  --pidfile PATH       written once both sockets are ready\n"
		"SIGUSR1 prints the counters to stderr; SIGTERM/SIGINT end the relay.\n");
}

static uint64_t parse_u64(const char *s, const char *what, uint64_t max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v > max)
		die("%s: not a number in 0..%llu: '%s'", what, (unsigned long long)max, s);
	return v;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option lopts[] = {
		{ "if-a", required_argument, NULL, 'a' },
		{ "if-b", required_argument, NULL, 'b' },
		{ "delay-us", required_argument, NULL, 'd' },
		{ "queue-bytes", required_argument, NULL, 'q' },
		{ "pidfile", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	*o = (struct opts){ .queue_bytes = 16 << 20 };
	while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
		switch (c) {
		case 'a': o->if_a = optarg; break;
		case 'b': o->if_b = optarg; break;
		case 'd': o->delay_ns = parse_u64(optarg, "--delay-us", 60000000) * 1000; break;
		case 'q': o->queue_bytes = parse_u64(optarg, "--queue-bytes", 1ull << 32); break;
		case 'p': o->pidfile = optarg; break;
		case 'h': usage(stdout); exit(0);
		default: die("bad arguments (see --help)");
		}
	}
	if (optind < argc)
		die("unexpected argument '%s' (see --help)", argv[optind]);
	if (!o->if_a || !o->if_b)
		die("--if-a and --if-b are required (see --help)");
	if (!strcmp(o->if_a, o->if_b))
		die("--if-a and --if-b must differ");
	if (o->queue_bytes < (1 << 20))
		die("--queue-bytes must be at least 1048576");
	o->queue_bytes &= ~15ull;
}

static void set_int(int fd, int level, int name, int val, const char *what, const char *ifname)
{
	if (setsockopt(fd, level, name, &val, sizeof(val)))
		die("%s: %s: %s", ifname, what, strerror(errno));
}

/*
 * A raw socket bound to one interface, promiscuous (frames for the far
 * site's MAC are not ours), not seeing its own transmissions.
 */
static void port_open(struct port *p)
{
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL) };
	struct packet_mreq mr = { .mr_type = PACKET_MR_PROMISC };

	p->ifindex = if_nametoindex(p->ifname);
	if (!p->ifindex)
		die("no interface '%s' in this network namespace", p->ifname);
	/* Protocol 0 until bound, so no frame of another interface slips in. */
	p->fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (p->fd < 0)
		die("AF_PACKET socket: %s (run as root)", strerror(errno));
	set_int(p->fd, SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR", p->ifname);
	set_int(p->fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING", p->ifname);
	set_int(p->fd, SOL_SOCKET, SO_RCVBUFFORCE, SOCK_BUF, "SO_RCVBUFFORCE", p->ifname);
	set_int(p->fd, SOL_SOCKET, SO_SNDBUFFORCE, SOCK_BUF, "SO_SNDBUFFORCE", p->ifname);
	sll.sll_ifindex = p->ifindex;
	if (bind(p->fd, (struct sockaddr *)&sll, sizeof(sll)))
		die("bind to %s: %s", p->ifname, strerror(errno));
	mr.mr_ifindex = p->ifindex;
	if (setsockopt(p->fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)))
		die("%s: promiscuous mode: %s", p->ifname, strerror(errno));
}

static void dir_init(struct dir *d, const struct port *from, const struct port *to, uint64_t qbytes)
{
	snprintf(d->name, sizeof(d->name), "%s>%s", from->ifname, to->ifname);
	d->from = from;
	d->to = to;
	d->q.size = qbytes;
	d->q.buf = malloc(qbytes);
	if (!d->q.buf)
		die("cannot allocate a %llu-byte queue", (unsigned long long)qbytes);
}

/* Reads one batch of frames from d->rx into d's queue, due now + delay. */
static int dir_receive(struct dir *d, uint64_t delay_ns)
{
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	uint64_t due;
	int n;

	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		iov[i] = (struct iovec){ scratch[i], FRAME_MAX };
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	n = recvmmsg(d->from->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	due = now_ns() + delay_ns;
	for (int i = 0; i < n; i++) {
		uint32_t len = msgs[i].msg_len;

		if ((msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len <= VNET_LEN) {
			d->st.trunc_drops++;
			continue;
		}
		if (!ring_push(&d->q, scratch[i], len, due))
			d->st.queue_drops++;
	}
	return n;
}

/* After a socket error: fatal only when the interface is gone (down is not). */
static void port_check(const struct port *p)
{
	int err = 0;
	socklen_t len = sizeof(err);

	getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len);
	if (if_nametoindex(p->ifname) != (unsigned)p->ifindex)
		die("interface %s is gone", p->ifname);
}

/*
 * Sends every frame of d that is due, in order, in batches. A full socket
 * (EAGAIN) leaves the rest held until POLLOUT; a qdisc drop (ENOBUFS) or a
 * frame the kernel refuses loses that one frame, as on a real link.
 */
static void dir_flush(struct dir *d, uint64_t now)
{
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	uint64_t next[BATCH];

	d->blocked = false;
	for (;;) {
		uint64_t off = d->q.head;
		struct rec *r;
		int n = 0, sent;

		while (n < BATCH && (r = ring_at(&d->q, &off)) && r->due_ns <= now) {
			iov[n] = (struct iovec){ r + 1, r->len };
			msgs[n] = (struct mmsghdr){ .msg_hdr = { .msg_iov = &iov[n], .msg_iovlen = 1 } };
			off += rec_space(r->len);
			next[n++] = off;
		}
		if (!n)
			return;
		sent = sendmmsg(d->to->fd, msgs, n, MSG_DONTWAIT);
		if (sent < 0) {
			if (errno == EAGAIN || errno == EINTR) {
				d->blocked = errno == EAGAIN;
				return;
			}
			if (errno != ENOBUFS)
				port_check(d->to);
			d->st.tx_drops++;
			d->q.head = next[0];
			continue;
		}
		for (int i = 0; i < sent; i++) {
			d->st.frames++;
			d->st.bytes += iov[i].iov_len - VNET_LEN;
		}
		if (sent)
			d->q.head = next[sent - 1];
	}
}

/* Nanoseconds until d's oldest held frame is due (0: now, IDLE_NS: none). */
static uint64_t dir_wait(struct dir *d, uint64_t now)
{
	uint64_t off = d->q.head;
	struct rec *r = ring_at(&d->q, &off);

	if (!r || d->blocked)
		return IDLE_NS;
	d->q.head = off;	/* a skipped wrap marker is consumed */
	return r->due_ns > now ? r->due_ns - now : 0;
}

static void print_stats(const struct dir *dirs)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	fprintf(stderr, PROG ":");
	for (int i = 0; i < 2; i++) {
		const struct dir_stats *s = &dirs[i].st;

		fprintf(stderr, " %s frames=%llu bytes=%llu queue_drops=%llu tx_drops=%llu trunc_drops=%llu;",
			dirs[i].name, (unsigned long long)s->frames, (unsigned long long)s->bytes,
			(unsigned long long)s->queue_drops, (unsigned long long)s->tx_drops,
			(unsigned long long)s->trunc_drops);
	}
	fprintf(stderr, " cpu_user_s=%.3f cpu_sys_s=%.3f\n",
		ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
		ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
}

static int signals_open(void)
{
	sigset_t set;
	int fd;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd < 0)
		die("signalfd: %s", strerror(errno));
	return fd;
}

/* Returns true when the relay should stop. */
static bool signals_read(int fd, const struct dir *dirs)
{
	struct signalfd_siginfo si;

	while (read(fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo != SIGUSR1)
			return true;
		print_stats(dirs);
	}
	return false;
}

static void write_pidfile(const char *path)
{
	char tmp[4096];
	FILE *f;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		die("pidfile path too long");
	f = fopen(tmp, "w");
	if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) || rename(tmp, path))
		die("cannot write pidfile %s: %s", path, strerror(errno));
}

static void run(struct port *ports, struct dir *dirs, int sfd, uint64_t delay_ns)
{
	for (;;) {
		struct pollfd pfd[3];
		uint64_t now = now_ns(), wait = IDLE_NS;
		struct timespec ts;
		int n;

		for (int i = 0; i < 2; i++) {
			uint64_t w;

			dir_flush(&dirs[i], now);
			w = dir_wait(&dirs[i], now);
			wait = w < wait ? w : wait;
		}
		/* Port i transmits direction 1 - i. */
		for (int i = 0; i < 2; i++) {
			pfd[i].fd = ports[i].fd;
			pfd[i].events = POLLIN | (dirs[1 - i].blocked ? POLLOUT : 0);
		}
		pfd[2] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		ts = (struct timespec){ wait / 1000000000ull, wait % 1000000000ull };
		n = ppoll(pfd, 3, &ts, NULL);
		if (n < 0 && errno != EINTR)
			die("ppoll: %s", strerror(errno));
		if ((pfd[2].revents & POLLIN) && signals_read(sfd, dirs))
			return;
		for (int i = 0; i < 2; i++) {
			if (pfd[i].revents & POLLERR)
				port_check(&ports[i]);
			if (pfd[i].revents & POLLIN) {
				int rc = dir_receive(&dirs[i], delay_ns);

				if (rc < 0)
					port_check(&ports[i]);
			}
		}
		/* Idle wake-ups: make sure neither interface vanished. */
		if (n == 0 && wait == IDLE_NS) {
			port_check(&ports[0]);
			port_check(&ports[1]);
		}
	}
}

int main(int argc, char **argv)
{
	struct opts o;
	struct port ports[2];
	struct dir dirs[2];
	int sfd;

	parse_args(argc, argv, &o);
	sfd = signals_open();
	ports[0] = (struct port){ .ifname = o.if_a };
	ports[1] = (struct port){ .ifname = o.if_b };
	port_open(&ports[0]);
	port_open(&ports[1]);
	memset(dirs, 0, sizeof(dirs));
	dir_init(&dirs[0], &ports[0], &ports[1], o.queue_bytes);
	dir_init(&dirs[1], &ports[1], &ports[0], o.queue_bytes);
	if (o.pidfile)
		write_pidfile(o.pidfile);
	fprintf(stderr, PROG ": relaying %s <-> %s, one-way delay %.3f ms, queue %llu bytes per direction\n",
		o.if_a, o.if_b, o.delay_ns / 1e6, (unsigned long long)o.queue_bytes);
	run(ports, dirs, sfd, o.delay_ns);
	print_stats(dirs);
	if (o.pidfile)
		unlink(o.pidfile);
	return 0;
}

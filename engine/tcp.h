/*
 * The tcp: transport: one TCP connection driven through io_uring, carrying
 * the stream (stream.h, pipeline.h) one way and small control messages both
 * ways, plus a link estimate for the adaptation controller.
 *
 * Threads: each direction has its own io_uring ring and lock, so one thread
 * may send (the sink stage) while another waits for a reply on the same
 * connection (a control thread); eng_tcp_sample() may run from a third (the
 * 100 ms tick). eng_tcp_close() must not race any of them: stop them first
 * (eng_tcp_shutdown(t, SHUT_RDWR) wakes a blocked thread).
 *
 * Dead peers: a peer or link that stops acknowledging is reported within
 * about dead_s (default ENG_TCP_DEAD_S; keepalive while idle, a TCP_INFO
 * check while data is outstanding), and then fails both directions. A live
 * receiver that stops reading (zero window) is not dead: the sender waits up
 * to idle_s (default ENG_TCP_IDLE_S), the limit for any one send or recv that
 * moves no byte. Errors are sticky and described by eng_tcp_error() as one
 * line: "connection to HOST:PORT lost: REASON".
 *
 * Errors: 0 or -errno, constructors return NULL and a one-line reason in err.
 */
#ifndef HANDOFF_TCP_H
#define HANDOFF_TCP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "link.h"
#include "pipeline.h"
#include "stream.h"

#define ENG_TCP_DEAD_S 10.0 /* a peer that acknowledges nothing for this long is gone */
#define ENG_TCP_IDLE_S 60.0 /* default limit for one send/recv that moves no byte */

/*
 * "tcp:HOST:PORT": HOST is a name, an IPv4 literal or an IPv6 literal in
 * brackets ("tcp:[::1]:7000", written out without brackets); PORT is
 * 1-65535. -EINVAL with a reason in err.
 */
int eng_tcp_parse(const char *loc, char *host, size_t hostlen, char *port, size_t portlen,
		  char *err, size_t errlen);

struct eng_tcp;
struct eng_tcp_listener;

/* Connect, retrying refused or unreachable attempts until timeout_s (the receiver may start later). */
struct eng_tcp *eng_tcp_connect(const char *host, const char *port, double timeout_s, char *err,
				size_t errlen);
/* Listen on HOST:PORT (SO_REUSEADDR) and accept one connection within timeout_s. */
struct eng_tcp *eng_tcp_accept(const char *host, const char *port, double timeout_s, char *err,
			       size_t errlen);

/* The same in two steps: PORT "0" picks a free port (eng_tcp_listener_port tells which). */
struct eng_tcp_listener *eng_tcp_listen(const char *host, const char *port, char *err,
					size_t errlen);
int eng_tcp_listener_port(const struct eng_tcp_listener *l);
struct eng_tcp *eng_tcp_listener_accept(struct eng_tcp_listener *l, double timeout_s, char *err,
					size_t errlen);
void eng_tcp_listener_close(struct eng_tcp_listener *l);

void eng_tcp_close(struct eng_tcp *t);

/*
 * dead_s (1-3600; keepalive works in whole seconds): silence after which the
 * peer counts as gone; idle_s: the limit for one send, or one recv with the
 * default timeout, that moves no byte. -EINVAL out of range. Call it before
 * other threads use the connection.
 */
int eng_tcp_set_timeouts(struct eng_tcp *t, double dead_s, double idle_s);

/* Send all of buf; loops over short sends. 0 or -errno (-EPIPE, -ECONNRESET, -ETIMEDOUT ...). */
int eng_tcp_send(struct eng_tcp *t, const void *buf, size_t len);
/*
 * Receive up to len bytes within timeout_s (< 0: idle_s): bytes, 0 at orderly
 * EOF, -errno. A timeout given explicitly (>= 0) returns -ETIMEDOUT, consumes
 * nothing and leaves the connection usable (poll for control messages); the
 * default timeout marks the connection lost.
 */
ssize_t eng_tcp_recv(struct eng_tcp *t, void *buf, size_t len, double timeout_s);
/* Receive exactly len bytes: 0, -EPIPE on EOF before len, -errno. */
int eng_tcp_recv_all(struct eng_tcp *t, void *buf, size_t len, double timeout_s);
/*
 * SHUT_WR: end of stream (the peer reads 0) while replies can still arrive;
 * SHUT_RDWR: wake and fail every blocked send and recv.
 */
int eng_tcp_shutdown(struct eng_tcp *t, int how);

/* "connection to HOST:PORT lost: REASON" after the first error, else NULL. */
const char *eng_tcp_error(const struct eng_tcp *t);
/* "HOST:PORT" of the peer. */
const char *eng_tcp_peer(const struct eng_tcp *t);
/* The connected socket itself (still owned by t). */
int eng_tcp_fd(const struct eng_tcp *t);

/* Adapters for the stream writer and reader (recv uses the default timeout). */
struct eng_sink eng_tcp_sink(struct eng_tcp *t);
struct eng_source eng_tcp_source(struct eng_tcp *t);

/* The link estimate (link.h) from one getsockopt(TCP_INFO) and one ioctl(SIOCOUTQ). */
void eng_tcp_sample(struct eng_tcp *t, struct eng_link *out);

/*
 * Cap the kernel send buffer (SO_SNDBUF; the kernel doubles it for its own
 * overhead) so little data waits in the socket where newer versions can no
 * longer replace it. 0 = back to kernel autotuning if never capped, else the
 * largest autotuned size (net.ipv4.tcp_wmem[2]): Linux cannot unlock it.
 * A cap also limits bytes in flight, so it must stay above the link's
 * bandwidth-delay product; eng_tcp_set_unsent_limit() has no such cost.
 */
int eng_tcp_set_sndbuf(struct eng_tcp *t, int bytes);
/* TCP_NOTSENT_LOWAT: a send waits while more than ~bytes sit unsent in the socket; 0 = no limit. */
int eng_tcp_set_unsent_limit(struct eng_tcp *t, int bytes);

#endif

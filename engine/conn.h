/*
 * A connection to the other site, whatever carries it: "tcp:HOST:PORT"
 * (kernel TCP through io_uring, tcp.h) or "dpdk:PORT[,...]" (a DPDK port,
 * dpdk_io/dio.h). One table of calls (Redis rio style) so the handoff, the
 * control messages, diff/patch and the link probe never ask which one.
 *
 * Threads and errors follow the transports: one thread may send while
 * another receives; 0 or -errno; after the first failure every call fails
 * and eng_conn_error() gives the one-line reason.
 */
#ifndef HANDOFF_CONN_H
#define HANDOFF_CONN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <json-c/json.h>

#include "link.h"
#include "pipeline.h"

/* tcp: or dpdk: (leaves the host: a key is required). */
bool eng_conn_is_remote(const char *loc);

/*
 * What both ends must share (dpdk: checks it in its handshake; over tcp:
 * the stream header and the sealed frames check the same later): the key
 * (NULL = unkeyed) and the identity of the base (zero = none; a receiver
 * bound to none, an edge cache, takes the sender's and learns the base from
 * its plan, session.h).
 */
struct eng_conn_bind {
	const uint8_t *key;
	uint8_t base_id[32];
	const atomic_bool *cancel; /* NULL, or set to stop a dpdk: wait for the peer (tcp: ends by its timeout) */
};

struct eng_conn;

/* The sending side connects; it retries until timeout_s while the receiver starts. */
struct eng_conn *eng_conn_connect(const char *loc, const struct eng_conn_bind *b, double timeout_s,
				  char *err, size_t errlen);
/* The receiving side waits up to timeout_s for the sender. */
struct eng_conn *eng_conn_accept(const char *loc, const struct eng_conn_bind *b, double timeout_s,
				 char *err, size_t errlen);

/*
 * A service's side: listen once and take connections one after another.
 * tcp:ADDR:PORT (PORT 0 picks one) takes clients while earlier ones are
 * served; dpdk:PORT is one connection on the port at a time (serial: accept
 * again once the last one is closed), keyed by b like eng_conn_accept. accept
 * returns NULL with *timed_out set when no client came within timeout_s, or
 * the listener was stopped (then the listener stays usable to close).
 */
struct eng_conn_listener;
struct eng_conn_listener *eng_conn_listen(const char *loc, const struct eng_conn_bind *b, char *err, size_t errlen);
struct eng_conn *eng_conn_listener_accept(struct eng_conn_listener *l, double timeout_s, bool *timed_out,
					  char *err, size_t errlen);
bool eng_conn_listener_serial(const struct eng_conn_listener *l);
/* Any thread: a dpdk: accept under way returns now, and later ones at once (tcp: accepts end by their timeout). */
void eng_conn_listener_stop(struct eng_conn_listener *l);
/* The tcp: port taken; -1 for dpdk:. */
int eng_conn_listener_port(const struct eng_conn_listener *l);
void eng_conn_listener_close(struct eng_conn_listener *l);

int eng_conn_send(struct eng_conn *c, const void *buf, size_t len);
/*
 * bytes, 0 at the end of the peer's stream, -ETIMEDOUT (timeout_s >= 0 only; still usable), -errno.
 * A transport that gave up on a silent peer also answers -ETIMEDOUT, for good: eng_conn_error()
 * is set then, and only then.
 */
ssize_t eng_conn_recv(struct eng_conn *c, void *buf, size_t len, double timeout_s);
int eng_conn_recv_all(struct eng_conn *c, void *buf, size_t len, double timeout_s);
/* SHUT_WR: end of our stream, delivered; SHUT_RDWR: fail and wake every blocked call. */
int eng_conn_shutdown(struct eng_conn *c, int how);
const char *eng_conn_error(const struct eng_conn *c);
const char *eng_conn_peer(const struct eng_conn *c);
const char *eng_conn_transport(const struct eng_conn *c); /* "tcp" or "dpdk" */
/* tcp: the kernel socket (still owned by c; another process may hold a dup of it); dpdk: -1. */
int eng_conn_socket(const struct eng_conn *c);
void eng_conn_sample(struct eng_conn *c, struct eng_link *out);
/* Transport counters for --json (dpdk: port stats, retransmissions). */
json_object *eng_conn_stats_json(struct eng_conn *c);
/* Keep at most ~bytes waiting inside the transport (tcp: TCP_NOTSENT_LOWAT); 0 = no limit. */
int eng_conn_set_unsent_limit(struct eng_conn *c, int bytes);
/* At most idle_s for one send or recv that moves no byte (a peer that stopped reading); default 60 s. */
int eng_conn_set_idle_limit(struct eng_conn *c, double idle_s);
void eng_conn_close(struct eng_conn *c);

struct eng_sink eng_conn_sink(struct eng_conn *c);
struct eng_source eng_conn_source(struct eng_conn *c);

#endif

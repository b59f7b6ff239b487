/*
 * The dpdk: transport: a reliable, paced, full-duplex byte stream between
 * two DPDK ports, with the same calls and the same link figures as the tcp:
 * transport (engine/conn.h puts both behind one table). Protocol:
 * docs/transport.md; frames: wire.h; rate: pace.h; port set-up: port.h.
 *
 * Threads: a connection runs one I/O thread (registered with EAL, so it has
 * mempool caches, and free to run on any CPU EAL was given) that alone
 * touches the port's queues: RX burst, ACKs,
 * loss detection, retransmission, paced TX. Application threads copy into
 * and out of two byte rings (single producer, single consumer each), so one
 * thread may send while another receives, as with tcp:. The I/O thread backs
 * off when idle (spin briefly, then sleep up to DIO_IDLE_SLEEP_US): two
 * shared cores are not burned by polling.
 *
 * Location: "dpdk:PORT[,peer=MAC][,mtu=N][,drop=FRACTION]" where PORT is a
 * port id or ethdev name given with -a/--vdev before "--"; peer= sends to
 * one MAC instead of broadcasting the handshake; drop= discards that
 * fraction of received frames (loss injection for tests and benchmarks).
 *
 * Errors: 0 or -errno; constructors return NULL with a one-line reason.
 * After the first error every call fails and dio_error() says why.
 */
#ifndef HANDOFF_DIO_H
#define HANDOFF_DIO_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "engine/link.h"

#define DIO_SNDBUF (32u << 20)
#define DIO_RCVBUF (32u << 20)
#define DIO_IDLE_SLEEP_US 200
#define DIO_DEAD_S 10.0
#define DIO_IDLE_S 60.0

struct dio_loc {
	char port[64];
	bool have_peer;
	uint8_t peer[6];
	uint32_t mtu;  /* 0: the port's largest */
	double drop;   /* fraction of received frames discarded */
};

int dio_parse(const char *loc, struct dio_loc *out, char *err, size_t errlen);

/*
 * What both ends must share for the handshake to succeed: the operator's
 * key (NULL: an all-zero key, for unkeyed local runs) and the identity of
 * the base (all zero when there is none). A mismatch fails both ends with
 * "different key" or "different base".
 */
struct dio_bind {
	const uint8_t *key;     /* 32 bytes or NULL */
	uint8_t base_id[32];
	const atomic_bool *cancel; /* NULL, or set to stop waiting for the peer (a service stopping) */
};

struct dio_conn;

/*
 * NULL with errno ETIMEDOUT (no peer within timeout_s: no handshake, or for
 * dio_accept a link still down, as net_memif's is until its peer comes),
 * ECANCELED (b->cancel was set) or another errno, and the reason in err.
 */
struct dio_conn *dio_connect(const struct dio_loc *loc, const struct dio_bind *b, double timeout_s,
			     char *err, size_t errlen);
struct dio_conn *dio_accept(const struct dio_loc *loc, const struct dio_bind *b, double timeout_s,
			    char *err, size_t errlen);

int dio_set_timeouts(struct dio_conn *c, double dead_s, double idle_s);
int dio_send(struct dio_conn *c, const void *buf, size_t len);
/* bytes, 0 at the end of the peer's stream, -ETIMEDOUT (only for timeout_s >= 0; usable after), -errno */
ssize_t dio_recv(struct dio_conn *c, void *buf, size_t len, double timeout_s);
/* SHUT_WR: end our stream and wait (up to dead_s without progress) until the peer has all of it; SHUT_RDWR: abort. */
int dio_shutdown(struct dio_conn *c, int how);
const char *dio_error(const struct dio_conn *c);
const char *dio_peer(const struct dio_conn *c);
void dio_sample(struct dio_conn *c, struct eng_link *out);

struct dio_stats {
	uint64_t frames_tx, frames_rx, data_frames_tx, data_bytes_tx;
	uint64_t retx_frames, retx_bytes, rto_events, loss_probes, loss_rounds, dropped_injected;
	uint64_t tx_copied_bytes; /* DATA payload bytes copied into mbufs (the rest was lent from the send ring) */
	uint64_t forged_frames; /* ACK or RESET frames whose tag failed: ignored */
	uint64_t acked_bytes, received_bytes;
	uint64_t port_ipackets, port_opackets, port_ibytes, port_obytes, port_imissed, port_ierrors,
		port_oerrors;
	uint32_t mtu;
	int port_node; /* where the port's queues and mbufs went (-1: anywhere) */
	int buffers_node; /* where the send and receive buffers went (-1: the heap, no NUMA binding) */
	double seconds, pacing_bps, bw_bps, min_rtt_us;
	char port[64];
};
void dio_stats(struct dio_conn *c, struct dio_stats *s);

/* Waits (bounded) until what was sent is acknowledged, then stops the I/O thread and the port. */
void dio_close(struct dio_conn *c);

#endif

/*
 * One DPDK ethdev port set up for the dpdk: transport: found by port id or
 * device name, one RX and one TX queue, a packet mempool on the port's NUMA
 * node sized for the port's largest frame (jumbo where the PMD allows), the
 * MTU raised up to DIO_JUMBO_MTU, started, and waited on until the link is up
 * (net_memif is up only once its peer process has connected).
 *
 * Called from the thread that opens a connection; afterwards the
 * connection's I/O thread owns the queues.
 */
#ifndef HANDOFF_DIO_PORT_H
#define HANDOFF_DIO_PORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_mempool.h>

#define DIO_JUMBO_MTU 9000

struct dio_port {
	uint16_t id;
	char name[64];
	int socket;        /* NUMA node of the port, SOCKET_ID_ANY if unknown */
	uint32_t mtu;      /* bytes after the Ethernet header */
	struct rte_ether_addr mac;
	struct rte_mempool *pool;
	bool started;
	/* the PMD copies each frame out of its mbufs inside tx_burst and walks
	 * chains (net_af_packet): a payload may ride as an external buffer that
	 * is not DMA-mapped, chained to its header */
	bool tx_borrows;
};

/*
 * spec: a port id ("0") or an ethdev name ("net_af_packet0"). mtu_cap: 0 or
 * a smaller MTU to use. Waits up to link_timeout_s for the link (-ENETDOWN
 * after it), less once *cancel is set (-ECANCELED; cancel may be NULL). 0, or
 * -errno with a one-line reason that names the EAL argument to check.
 */
int dio_port_open(struct dio_port *p, const char *spec, uint32_t mtu_cap, double link_timeout_s,
		  const atomic_bool *cancel, char *err, size_t errlen);
/* That spec names a port EAL knows: 0, or -ENODEV with the EAL argument to check. */
int dio_port_find(const char *spec, uint16_t *id, char *err, size_t errlen);
void dio_port_close(struct dio_port *p);
bool dio_port_link_up(const struct dio_port *p);

/* The port whose PMD burst this thread is in (port.c: a fault there is a departed peer). */
extern _Thread_local const char *volatile dio_burst_port;

static inline uint16_t dio_port_rx(const struct dio_port *p, struct rte_mbuf **m, uint16_t n)
{
	dio_burst_port = p->name;
	n = rte_eth_rx_burst(p->id, 0, m, n);
	dio_burst_port = NULL;
	return n;
}

static inline uint16_t dio_port_tx(const struct dio_port *p, struct rte_mbuf **m, uint16_t n)
{
	dio_burst_port = p->name;
	n = rte_eth_tx_burst(p->id, 0, m, n);
	dio_burst_port = NULL;
	return n;
}

#endif

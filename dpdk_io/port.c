#include "engine/cli.h"
#include "engine/clock.h"
#include "engine/numa.h"
#include "port.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_log.h>
#include <rte_mbuf.h>

#define RX_DESC 1024
#define TX_DESC 1024
#define POOL_MBUFS 4095 /* RX ring + TX in flight + bursts; a power of two minus one */
#define POOL_CACHE 128
#define LINK_RETRY_S 2.0 /* restart a port whose link stays down this long */

/*
 * What each port was last configured with. A later open with the same MTU
 * and pool only starts it again: reconfiguring replaces the PMD's queues,
 * and a net_memif server accepts its next client while stopped, recording
 * that client's rings in the queues it has then (a fresh TX queue would
 * point at no ring: the server hears the client and never answers it).
 */
static struct port_setup {
	bool configured;
	uint32_t mtu;
	struct rte_mempool *pool;
} setups[RTE_MAX_ETHPORTS];

/*
 * A fault inside a PMD burst. net_memif unmaps a departed peer's shared
 * regions from EAL's interrupt thread (memif_disconnect) with no lock
 * against a burst copying into or out of them, and DPDK gives no hook to
 * stop the datapath first (memif raises no link event): a sender whose
 * receiver was killed mid-stream died of SIGSEGV with no word, in about 1
 * of 30 such runs under load. Such a fault ends the process with one line
 * instead; the source VM's guard (engine/guard.h) puts the VM back as for
 * any death of the engine. A fault anywhere else goes to the handler that
 * was there before (returning re-runs the faulting instruction under it).
 */
_Thread_local const char *volatile dio_burst_port;
static struct sigaction prev_segv, prev_bus;
static pthread_once_t burst_guard_once = PTHREAD_ONCE_INIT;

/* dst += src within a buffer of end - dst left: async-signal-safe */
static char *put(char *dst, const char *end, const char *src)
{
	while (*src && dst < end)
		*dst++ = *src++;
	return dst;
}

static void burst_fault(int sig, siginfo_t *si, void *ctx)
{
	const char *port = dio_burst_port;
	char line[256], *end = line + sizeof(line) - 1, *p = line;

	(void)si;
	(void)ctx;
	if (port) {
		p = put(p, end, "handoff-engine: dpdk: port ");
		p = put(p, end, port);
		p = put(p, end, " faulted inside its driver's burst: the peer went away while it copied"
				" (its shared memory was unmapped); the transfer is lost");
		*p++ = '\n';
		ssize_t r = write(2, line, (size_t)(p - line)); /* one write: one line */
		(void)r;
		_exit(1);
	}
	sigaction(sig, sig == SIGBUS ? &prev_bus : &prev_segv, NULL);
}

static void burst_guard_install(void)
{
	struct sigaction sa = { .sa_sigaction = burst_fault, .sa_flags = SA_SIGINFO | SA_NODEFER };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, &prev_segv);
	sigaction(SIGBUS, &sa, &prev_bus);
}

int dio_port_find(const char *spec, uint16_t *id, char *err, size_t errlen)
{
	char *end;
	unsigned long v = strtoul(spec, &end, 10);

	if (*spec && !*end) {
		if (v >= RTE_MAX_ETHPORTS || !rte_eth_dev_is_valid_port((uint16_t)v)) {
			snprintf(err, errlen,
				 "no DPDK port %lu (%u ports; give the NIC with -a PCI or a virtual one with --vdev before --)",
				 v, rte_eth_dev_count_avail());
			return -ENODEV;
		}
		*id = (uint16_t)v;
		return 0;
	}
	if (rte_eth_dev_get_port_by_name(spec, id)) {
		snprintf(err, errlen, "no DPDK port named %s (give it with --vdev %s,... or -a before --)",
			 spec, spec);
		return -ENODEV;
	}
	return 0;
}

/* The largest MTU ethdev lets us configure on this port, up to DIO_JUMBO_MTU. */
static uint32_t ethdev_mtu(const struct rte_eth_dev_info *info)
{
	uint32_t hw = info->max_mtu;

	/* what the PMD says it receives into one buffer bounds it too (af_packet, memif: 1518) */
	if (info->max_rx_pktlen > RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN &&
	    info->max_rx_pktlen - RTE_ETHER_HDR_LEN - RTE_ETHER_CRC_LEN < hw)
		hw = info->max_rx_pktlen - RTE_ETHER_HDR_LEN - RTE_ETHER_CRC_LEN;
	if (hw > DIO_JUMBO_MTU)
		hw = DIO_JUMBO_MTU;
	if (hw < info->min_mtu)
		hw = info->min_mtu;
	return hw ? hw : RTE_ETHER_MTU;
}

/*
 * The port's queues and mbufs go on its device's node (numa.h): a PCI NIC's
 * as hwloc places it, else DPDK's word, else (a virtual port) the node the
 * pipeline runs on, which is where its frames come from and go to.
 */
static int port_node(uint16_t id, const struct rte_eth_dev_info *info)
{
	const struct rte_bus *bus = info->device ? rte_dev_bus(info->device) : NULL;
	bool pci = bus && !strcmp(rte_bus_name(bus), "pci");
	struct eng_numa *topo = NULL;
	char err[256];

	if (pci)
		topo = eng_numa_open(NULL, true, err, sizeof(err));
	int node = eng_numa_port_node(topo, pci ? rte_dev_name(info->device) : NULL, rte_eth_dev_socket_id(id),
				      cli_pipeline_node());
	eng_numa_close(topo);
	return node >= 0 && cli_dpdk_has_node(node) ? node : SOCKET_ID_ANY;
}

/*
 * PMDs that copy every frame out of its mbufs before tx_burst returns, where
 * a payload may stay on the send ring. A PCI NIC reads the mbufs later by
 * DMA. net_memif copies too (without zero-copy=yes), but it unmaps a peer's
 * regions from its interrupt thread while tx_burst may be copying into them
 * (a sender crashed when its receiver was killed, in the one make test run
 * with lending; 0 of 75 such runs alone): the longer each burst, the
 * likelier, so its payloads are copied into mbufs first, as before.
 */
static bool tx_copies_frames(const struct rte_eth_dev_info *info)
{
	return (info->tx_offload_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS) && info->driver_name &&
	       !strcmp(info->driver_name, "net_af_packet");
}

int dio_port_open(struct dio_port *p, const char *spec, uint32_t mtu_cap, double link_timeout_s,
		  const atomic_bool *cancel, char *err, size_t errlen)
{
	struct rte_eth_dev_info info;
	struct rte_eth_conf conf;
	char pool_name[RTE_MEMPOOL_NAMESIZE];
	uint16_t nrx = RX_DESC, ntx = TX_DESC;
	int ret;

	memset(p, 0, sizeof(*p));
	pthread_once(&burst_guard_once, burst_guard_install);
	if ((ret = dio_port_find(spec, &p->id, err, errlen)))
		return ret;
	rte_eth_dev_get_name_by_port(p->id, p->name);
	if ((ret = rte_eth_dev_info_get(p->id, &info))) {
		snprintf(err, errlen, "DPDK port %s: cannot read device info: %s", p->name, rte_strerror(-ret));
		return ret;
	}
	p->socket = port_node(p->id, &info);
	p->tx_borrows = tx_copies_frames(&info);
	/*
	 * Virtual PMDs report 1518-byte frames whatever the path carries
	 * (af_packet sends up to its framesz, memif chains buffers): an mtu=
	 * beyond that is the operator's word, checked by the handshake, whose
	 * frames are padded to the full size.
	 */
	uint32_t eth_mtu = ethdev_mtu(&info);
	p->mtu = mtu_cap ? mtu_cap : eth_mtu;

	/* data room: headroom + the whole frame, rounded up to a cache line */
	/*
	 * af_packet wants a buffer for its whole frame slot (framesz, default
	 * 2048), which the operator may size a little above the MTU (framesz
	 * must divide blocksz): allow max(2 KiB, MTU/8), up to mbufs' 64 KiB.
	 */
	unsigned slack = p->mtu / 8 > 2048 ? p->mtu / 8 : 2048;
	unsigned room = RTE_PKTMBUF_HEADROOM + p->mtu + RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN + slack;
	room = (room + 1023) & ~1023u;
	if (room > UINT16_MAX)
		room = UINT16_MAX;
	snprintf(pool_name, sizeof(pool_name), "dio_pool_%u", p->id);
	p->pool = rte_mempool_lookup(pool_name);
	if (p->pool && p->pool->elt_size < sizeof(struct rte_mbuf) + room) {
		rte_mempool_free(p->pool);
		setups[p->id].configured = false; /* its RX queue held that pool */
		p->pool = NULL;
	}
	if (!p->pool)
		p->pool = rte_pktmbuf_pool_create(pool_name, POOL_MBUFS, POOL_CACHE, 0, room, p->socket);
	if (!p->pool) {
		snprintf(err, errlen, "DPDK port %s: no memory for %u packet buffers of %u bytes (%s; raise -m)",
			 p->name, POOL_MBUFS, room, rte_strerror(rte_errno));
		return -ENOMEM;
	}

	struct port_setup *setup = &setups[p->id];
	if (!setup->configured || setup->mtu != p->mtu || setup->pool != p->pool) {
		setup->configured = false;
		memset(&conf, 0, sizeof(conf));
		conf.rxmode.mtu = p->mtu < eth_mtu ? p->mtu : eth_mtu;
		if (p->tx_borrows)
			conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
		if ((ret = rte_eth_dev_configure(p->id, 1, 1, &conf))) {
			snprintf(err, errlen, "DPDK port %s: cannot configure (MTU %u): %s", p->name, p->mtu,
				 rte_strerror(-ret));
			goto err;
		}
		rte_eth_dev_adjust_nb_rx_tx_desc(p->id, &nrx, &ntx);
		if ((ret = rte_eth_rx_queue_setup(p->id, 0, nrx, p->socket, NULL, p->pool)) ||
		    (ret = rte_eth_tx_queue_setup(p->id, 0, ntx, p->socket, NULL))) {
			snprintf(err, errlen, "DPDK port %s: cannot set up its queues: %s", p->name,
				 rte_strerror(-ret));
			goto err;
		}
		*setup = (struct port_setup){ .configured = true, .mtu = p->mtu, .pool = p->pool };
	}
	/*
	 * Bring the link up. A net_memif client cannot start before its server
	 * listens, and one that connected before the server started is turned
	 * away and never retries by itself: start, wait LINK_RETRY_S for the
	 * link, otherwise stop and start again, until the deadline. PMD error
	 * lines of the retries are muted; our own line says what failed.
	 */
	double deadline = eng_mono_s() + link_timeout_s;
	uint32_t log_level = rte_log_get_global_level();
	for (int attempt = 0;; attempt++) {
		if (attempt == 1)
			rte_log_set_global_level(RTE_LOG_CRIT);
		ret = rte_eth_dev_start(p->id);
		if (!ret) {
			p->started = true;
			double until = eng_mono_s() + LINK_RETRY_S;
			while (!dio_port_link_up(p) && eng_mono_s() < until && eng_mono_s() < deadline &&
			       !(cancel && atomic_load(cancel)))
				usleep(20000);
			if (dio_port_link_up(p))
				break;
		}
		if (cancel && atomic_load(cancel)) {
			rte_log_set_global_level(log_level);
			snprintf(err, errlen, "DPDK port %s: stopped waiting for its link", p->name);
			ret = -ECANCELED;
			goto err;
		}
		if (eng_mono_s() >= deadline) {
			rte_log_set_global_level(log_level);
			if (ret)
				snprintf(err, errlen, "DPDK port %s: cannot start: %s (is the peer there?)", p->name,
					 rte_strerror(ret < 0 ? -ret : EIO));
			else
				snprintf(err, errlen,
					 "DPDK port %s: link is down after %.0f s (cable, peer process or --vdev arguments?)",
					 p->name, link_timeout_s);
			ret = ret ? ret : -ENETDOWN;
			goto err;
		}
		if (p->started) {
			rte_eth_dev_stop(p->id);
			p->started = false;
		} else {
			usleep(50000);
		}
	}
	rte_log_set_global_level(log_level);
	/* the frames are addressed to us; promiscuous only helps PMDs that filter */
	rte_eth_promiscuous_enable(p->id);
	rte_eth_macaddr_get(p->id, &p->mac);
	return 0;
err:
	dio_port_close(p);
	return ret < 0 ? ret : -EIO;
}

bool dio_port_link_up(const struct dio_port *p)
{
	struct rte_eth_link link;

	if (rte_eth_link_get_nowait(p->id, &link))
		return false;
	return link.link_status == RTE_ETH_LINK_UP;
}

void dio_port_close(struct dio_port *p)
{
	if (p->started) {
		rte_eth_dev_stop(p->id);
		p->started = false;
	}
	/* the pool stays for a later connection on the same port; EAL frees it at exit */
}

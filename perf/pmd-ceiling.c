/*
 * pmd-ceiling: the most a DPDK port moves between two processes with no
 * transport on top: the sender bursts frames of the full MTU as fast as
 * the PMD takes them (no copy of payload, no pacing, no acknowledgements),
 * the receiver counts what arrives. Whatever dpdk: achieves on that port is
 * bounded by this; perf/bench-transport reports it beside dpdk: and tcp:.
 *
 *   pmd-ceiling [EAL args --] tx PORT MTU SECONDS
 *   pmd-ceiling [EAL args --] rx PORT MTU SECONDS
 *
 * Each prints one JSON object: frames, bytes, seconds (rx: first to last
 * frame), cpu_s and gbit_s. rx stops 1 s after the last frame, or after
 * SECONDS + 10 without one.
 */
#include "engine/clock.h"
#include "dpdk_io/port.h"
#include "dpdk_io/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>

#define BURST 32
/* not the transport's EtherType: a dpdk: end on the same link ignores these */
#define CEILING_ETHERTYPE (DIO_ETHERTYPE + 1)

static void report(const char *role, uint64_t frames, uint64_t bytes, double secs, double cpu)
{
	printf("{\"role\": \"%s\", \"frames\": %llu, \"bytes\": %llu, \"seconds\": %.4f, \"cpu_s\": %.3f, "
	       "\"gbit_s\": %.3f}\n",
	       role, (unsigned long long)frames, (unsigned long long)bytes, secs, cpu,
	       secs > 0 ? bytes * 8 / secs / 1e9 : 0.0);
}

static int run_tx(struct dio_port *p, uint32_t len, double seconds)
{
	struct rte_mbuf *m[BURST];
	uint64_t frames = 0, bytes = 0;
	double t0 = eng_mono_s(), c0 = eng_cpu_s();

	while (eng_mono_s() - t0 < seconds) {
		if (rte_pktmbuf_alloc_bulk(p->pool, m, BURST))
			continue; /* the PMD still holds them: wait for completions */
		for (int i = 0; i < BURST; i++) {
			struct rte_ether_hdr *eh = rte_pktmbuf_mtod(m[i], struct rte_ether_hdr *);
			memset(&eh->dst_addr, 0xff, sizeof(eh->dst_addr));
			eh->src_addr = p->mac;
			eh->ether_type = rte_cpu_to_be_16(CEILING_ETHERTYPE);
			m[i]->data_len = m[i]->pkt_len = len;
		}
		uint16_t sent = rte_eth_tx_burst(p->id, 0, m, BURST);
		rte_pktmbuf_free_bulk(m + sent, BURST - sent);
		frames += sent;
		bytes += (uint64_t)sent * len;
	}
	report("tx", frames, bytes, eng_mono_s() - t0, eng_cpu_s() - c0);
	return 0;
}

static int run_rx(struct dio_port *p, double seconds)
{
	struct rte_mbuf *m[BURST];
	uint64_t frames = 0, bytes = 0;
	double start = eng_mono_s(), first = 0, last = 0, c0 = eng_cpu_s();

	for (;;) {
		uint16_t n = rte_eth_rx_burst(p->id, 0, m, BURST);
		double t = eng_mono_s();
		for (uint16_t i = 0; i < n; i++) {
			const struct rte_ether_hdr *eh = rte_pktmbuf_mtod(m[i], const struct rte_ether_hdr *);
			if (eh->ether_type == rte_cpu_to_be_16(CEILING_ETHERTYPE)) {
				if (!frames)
					first = t;
				frames++;
				bytes += m[i]->pkt_len;
				last = t;
			}
		}
		rte_pktmbuf_free_bulk(m, n);
		if (frames ? t - last > 1.0 : t - start > seconds + 10)
			break;
	}
	report("rx", frames, bytes, last - first, eng_cpu_s() - c0);
	return frames ? 0 : 1;
}

int main(int argc, char **argv)
{
	struct dio_port port;
	char err[256];

	int n = rte_eal_init(argc, argv);
	if (n < 0) {
		fprintf(stderr, "pmd-ceiling: bad EAL arguments: %s\n", rte_strerror(rte_errno));
		return 2;
	}
	argc -= n;
	argv += n;
	if (argc > 1 && !strcmp(argv[1], "--")) {
		argc--;
		argv++;
	}
	if (argc != 5 || (strcmp(argv[1], "tx") && strcmp(argv[1], "rx"))) {
		fprintf(stderr, "usage: pmd-ceiling [EAL args --] tx|rx PORT MTU SECONDS\n");
		return 2;
	}
	uint32_t mtu = (uint32_t)strtoul(argv[3], NULL, 10);
	double seconds = strtod(argv[4], NULL);
	if (dio_port_open(&port, argv[2], mtu, 20, NULL, err, sizeof(err))) {
		fprintf(stderr, "pmd-ceiling: %s\n", err);
		return 1;
	}
	int ret = !strcmp(argv[1], "tx") ? run_tx(&port, port.mtu + RTE_ETHER_HDR_LEN, seconds)
					 : run_rx(&port, seconds);
	dio_port_close(&port);
	rte_eal_cleanup();
	return ret;
}

/*
 * libFuzzer target for the frames a dpdk: connection receives from its port
 * (dpdk_io/dio.c): HELLO and HELLO_ACK (the handshake), DATA, ACK with SACK
 * ranges, RESET, and anything else that arrives with the EtherType. The
 * transport's own code runs on a real EAL (--no-huge, a net_null port that
 * swallows what it sends): this file includes dio.c to drive one I/O step at
 * a time, in the I/O thread's order, on a clock the input advances.
 *
 * Input: byte 0 sets the connection up:
 *   bit 0: a listener (else a connector);
 *   bit 1: already established, session FUZZ_SESSION, peer FUZZ_PEER;
 *   bit 2: the application has bytes in flight (byte 1 KiB units follow);
 *   bit 3: the harness makes every HELLO and HELLO_ACK one a key holder
 *          would send (session, nonces, base, tag), so the fuzzer reaches
 *          what comes after the HMAC.
 * Then frames: step:u8 (clock advance in ms), len:u16, len bytes from the
 * Ethernet header on. After each: the application reads what is in order.
 */
#include "dpdk_io/dio.c"

#include <rte_eal.h>

#define FUZZ_SESSION 0x1122334455667788ull

/* What the command line would know (engine/cli.c): no pipeline node, so a virtual port's memory goes anywhere. */
int cli_pipeline_node(void)
{
	return -1;
}

bool cli_dpdk_has_node(int node)
{
	(void)node;
	return false;
}

static const uint8_t fuzz_key[32] = { 0x42, 0x17 };
static const uint8_t fuzz_peer[6] = { 0x02, 0, 0, 0, 0, 0x02 };
static struct dio_port port0;
static uint8_t *snd_buf, *rcv_buf;
static struct seg *sb;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	char prefix[64], err[256] = "rte_eal_init failed";
	snprintf(prefix, sizeof(prefix), "fuzzdio%d", (int)getpid());
	char *eal[] = { "fuzz_dio", "-l", "0", "--no-huge", "--no-pci", "-m", "128", "--no-telemetry",
			"--no-shconf", "--vdev", "net_null0", "--file-prefix", prefix, "--log-level", "1" };
	if (rte_eal_init((int)(sizeof(eal) / sizeof(eal[0])), eal) < 0 ||
	    dio_port_open(&port0, "net_null0", 0, 5, NULL, err, sizeof(err))) {
		fprintf(stderr, "fuzz_dio: cannot set up EAL and net_null0: %s\n", err);
		abort();
	}
	snd_buf = malloc(DIO_SNDBUF);
	rcv_buf = malloc(DIO_RCVBUF);
	sb = calloc(SEGS, sizeof(*sb));
	if (!snd_buf || !rcv_buf || !sb)
		abort();
	return 0;
}

/*
 * What a key holder's HELLO or HELLO_ACK would carry: this connection's
 * session, nonce and base, and the right tag (the rest is the fuzzer's).
 */
static void seal_hello(const struct dio_conn *c, struct dio_hdr *h, struct dio_hello *p)
{
	static const uint8_t zero[DIO_NONCE_LEN];

	memcpy(p->base_id, c->bind.base_id, DIO_ID_LEN);
	if (h->type == DIO_HELLO) {
		memset(p->peer_nonce, 0, DIO_NONCE_LEN);
		hello_tag(c, "handoff-hello", h->session, c->bind.base_id, p->nonce, zero, p->mtu, p->tag);
	} else {
		h->session = c->session;
		memcpy(p->peer_nonce, c->my_nonce, DIO_NONCE_LEN);
		hello_tag(c, "handoff-ack", c->session, c->bind.base_id, c->my_nonce, p->nonce, p->mtu, p->tag);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t base_id[32] = { 0x99 };
	struct dio_loc loc = { .port = "net_null0" };
	struct dio_bind bind = { .key = fuzz_key };
	char err[256];
	uint8_t sink[4096];

	if (size < 1 || size > 1 << 20)
		return 0;
	uint8_t setup = data[0];
	size_t pos = 1;
	memcpy(bind.base_id, base_id, sizeof(base_id));
	struct dio_conn *c = calloc(1, sizeof(*c));
	if (!c || conn_init(c, &loc, &bind, setup & 1, err, sizeof(err))) {
		free(c);
		return 0;
	}
	c->port = port0;
	c->port.started = false; /* the port is the harness's: conn_fini leaves it */
	c->snd_buf = snd_buf;
	c->rcv_buf = rcv_buf;
	c->sb = sb;
	if (conn_start_state(c, err, sizeof(err)))
		abort();
	uint64_t now = 1000000;
	c->last_rx_us = c->last_progress_us = c->last_tx_us = c->link_checked_us = now;
	c->next_tx_us = (double)now;
	if (setup & 2) {
		c->session = FUZZ_SESSION;
		memcpy(c->peer_mac.addr_bytes, fuzz_peer, 6);
		c->have_peer = true;
		atomic_store(&c->established, true);
	}
	if ((setup & 4) && pos < size) {
		size_t n = (size_t)data[pos++] << 10;
		for (size_t done = 0; done < n; done += sizeof(sink)) {
			memset(sink, (int)done, sizeof(sink));
			dio_send(c, sink, n - done < sizeof(sink) ? n - done : sizeof(sink));
		}
		after_rx(c, now, 0); /* the first segments go out */
	}
	while (pos + 3 <= size && !atomic_load(&c->err)) {
		now += (uint64_t)data[pos] * 1000;
		uint16_t len = (uint16_t)(data[pos + 1] | data[pos + 2] << 8);
		pos += 3;
		if (len > size - pos)
			len = (uint16_t)(size - pos);
		struct rte_mbuf *m = rte_pktmbuf_alloc(port0.pool);
		if (!m)
			abort();
		uint8_t *p = (uint8_t *)rte_pktmbuf_append(m, len);
		if (!p && len) {
			rte_pktmbuf_free(m);
			pos += len;
			continue;
		}
		memcpy(p, data + pos, len);
		pos += len;
		size_t hello = sizeof(struct rte_ether_hdr) + sizeof(struct dio_hdr);
		if ((setup & 8) && len >= hello + sizeof(struct dio_hello)) {
			struct dio_hdr *h = (void *)(p + sizeof(struct rte_ether_hdr));
			if (h->type == DIO_HELLO || h->type == DIO_HELLO_ACK)
				seal_hello(c, h, (void *)(h + 1));
		}
		on_frame(c, m, now);
		rte_pktmbuf_free(m);
		after_rx(c, now, 1);
		uint64_t rd = atomic_load(&c->rcv_read), cum = atomic_load(&c->rcv_cum);
		if (cum > rd)
			dio_recv(c, sink, sizeof(sink), 0);
	}
	for (int i = 0; i < c->ntx; i++)
		rte_pktmbuf_free(c->txq[i]);
	conn_fini(c);
	free(c);
	return 0;
}

/*
 * dpdk: connections. The I/O thread (io_main) owns the port and every
 * protocol variable; application threads share only the two byte rings and
 * their offsets (atomics, one writer each) plus a mutex and two condition
 * variables to sleep on:
 *
 *   send ring: [snd_una, app_end) not yet acknowledged; the app writes at
 *              app_end, the I/O thread cuts frames from snd_nxt and
 *              retransmits from anywhere in [snd_una, snd_nxt).
 *   recv ring: [rcv_read, rcv_cum) in order, for the app; beyond rcv_cum,
 *              out-of-order bytes the I/O thread keeps as ranges (SACK).
 *
 * Loss detection is time-based (as RACK): a segment is lost when one sent
 * later than it (by more than a quarter RTT) was acknowledged first, or
 * when nothing at all was acknowledged for an RTO.
 */
#include "dio.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <numa.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_telemetry.h>

#include "codecs/codecs.h"
#include "pace.h"
#include "port.h"
#include "wire.h"

#define BURST 32
#define SEGS (1u << 16)          /* scoreboard entries: segments in flight */
#define HELLO_EVERY_US 200000
#define KEEPALIVE_US 500000
#define MIN_RTO_US 200000
#define MIN_PTO_US 2000          /* tail-loss probe: at least 2 ms */
#define MAX_RTO_US 4000000
#define INIT_RATE_BPS 20e6
#define SPIN_IDLE 64             /* empty polls before the I/O thread sleeps */
#define PACE_SLACK_US 500.0
#define LINK_CHECK_US 100000
#define LINK_DOWN_US 1000000      /* link down this long: the peer is gone */
#define LINGER_S 5.0             /* close: wait this long for the peer to acknowledge */

struct seg {
	uint64_t off;
	uint32_t len;
	bool fin, sacked, lost, app_limited, retx;
	uint64_t sent_us;      /* last transmission */
	uint64_t delivered;    /* conn delivered count at that time */
	uint64_t delivered_us; /* and when it last grew */
	uint64_t first_sent_us; /* send time of the newest segment delivered by then */
};

struct range {
	uint64_t start, end;
};

struct dio_conn {
	struct dio_port port;
	struct dio_loc loc;
	struct dio_bind bind;
	uint8_t hello_key[32]; /* HKDF of the operator key for the handshake alone */
	EVP_MAC_CTX *frame_mac; /* keyed with k_frames once established (wire.h): io thread only */
	bool listener;
	bool trace; /* HANDOFF_DIO_TRACE: a state line a second, each RTO, on stderr */
	uint64_t session;
	uint8_t my_nonce[DIO_NONCE_LEN], peer_nonce[DIO_NONCE_LEN];
	struct rte_ether_addr peer_mac;
	bool have_peer;
	uint32_t peer_mtu, payload; /* largest payload we send */
	char peer_name[128];

	pthread_t io;
	bool io_started;
	bool reset_sent; /* we refused or aborted: the peer leaves first (conn_free) */
	atomic_bool stop;
	atomic_bool established;

	/* shared with application threads */
	pthread_mutex_t lock;
	pthread_cond_t cv_send, cv_recv;
	atomic_int err;  /* sticky -errno */
	char errmsg[384];
	double dead_s, idle_s;

	uint8_t *snd_buf;
	/* DATA payloads lent to the PMD straight from snd_buf (port.tx_borrows):
	 * one reference of ours keeps the count above 0, so nothing is freed */
	struct rte_mbuf_ext_shared_info snd_lent;
	_Atomic uint64_t app_end;  /* app: bytes written */
	_Atomic uint64_t snd_una;  /* io: bytes acknowledged */
	atomic_bool fin_req;       /* app: no more bytes after app_end */
	atomic_bool fin_acked;     /* io */
	atomic_bool send_waiting, recv_waiting;

	uint8_t *rcv_buf;
	_Atomic uint64_t rcv_cum;  /* io: in-order bytes received */
	_Atomic uint64_t rcv_read; /* app: bytes consumed */
	atomic_bool rcv_eof;       /* io: the peer's FIN and all before it arrived */

	/* I/O thread only */
	uint64_t snd_nxt, peer_wnd_end;
	bool fin_sent;
	struct seg *sb;  /* scoreboard ring, offsets increasing */
	bool bufs_on_node; /* snd_buf, rcv_buf and sb are bound to the port's node (libnuma) */
	uint32_t sb_head, sb_count;
	struct range ranges[DIO_MAX_SACK];
	int nranges;
	uint64_t fin_at; bool fin_seen;
	uint64_t last_echo_us, last_adv_wnd;
	bool ack_due;
	bool wake_send, wake_recv; /* progress an application thread may wait for */
	uint64_t delivered, delivered_us, first_sent_us, rack_sent_us;
	uint64_t round_end, round_sent, round_lost;
	uint64_t last_progress_us, last_rx_us, last_tx_us, rto_us;
	uint64_t link_checked_us, link_down_since_us;
	double srtt_us;  /* smoothed RTT (1/8 EWMA) for the probe timeout */
	bool probed;     /* a tail-loss probe went out since the last progress */
	double next_tx_us;
	struct dio_pace pace;
	uint64_t rng;
	struct rte_mbuf *txq[BURST];
	int ntx;

	/* statistics: written by io, read racily by samplers (counters only) */
	_Atomic uint64_t st_frames_tx, st_frames_rx, st_data_frames, st_data_bytes, st_retx_frames,
		st_retx_bytes, st_rto, st_probes, st_dropped, st_forged, st_tx_copied;
	_Atomic uint64_t st_pacing, st_bw, st_rtt; /* doubles as bits */
	uint64_t t0_us;

	/* dio_sample */
	pthread_mutex_t slock;
	uint64_t prev_acked;
	double prev_t, smooth;
};

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + ts.tv_nsec / 1000;
}

/* then may be a little after now (stamped later by another step): never wrap */
static uint64_t since_us(uint64_t now, uint64_t then)
{
	return now > then ? now - then : 0;
}

static void put_dbl(_Atomic uint64_t *a, double v)
{
	uint64_t u;
	memcpy(&u, &v, 8);
	atomic_store_explicit(a, u, memory_order_relaxed);
}

static double get_dbl(_Atomic uint64_t *a)
{
	uint64_t u = atomic_load_explicit(a, memory_order_relaxed);
	double v;
	memcpy(&v, &u, 8);
	return v;
}

/* First error wins; wakes every waiter. */
static void fail(struct dio_conn *c, int e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(struct dio_conn *c, int e, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&c->lock);
	if (!atomic_load(&c->err)) {
		char why[200];
		va_start(ap, fmt);
		vsnprintf(why, sizeof(why), fmt, ap);
		va_end(ap);
		snprintf(c->errmsg, sizeof(c->errmsg), "connection to %s lost: %s", c->peer_name, why);
		atomic_store(&c->err, e);
	}
	pthread_cond_broadcast(&c->cv_send);
	pthread_cond_broadcast(&c->cv_recv);
	pthread_mutex_unlock(&c->lock);
}

/* ---- location ------------------------------------------------------------------ */

static int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned v[6];
	char tail;
	if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (v[i] > 255)
			return -1;
		mac[i] = (uint8_t)v[i];
	}
	return 0;
}

int dio_parse(const char *loc, struct dio_loc *out, char *err, size_t errlen)
{
	char buf[256], *save = NULL;

	memset(out, 0, sizeof(*out));
	if (strncmp(loc, "dpdk:", 5) || strlen(loc + 5) >= sizeof(buf)) {
		snprintf(err, errlen, "bad location '%s' (want dpdk:PORT[,peer=MAC][,mtu=N][,drop=F])", loc);
		return -EINVAL;
	}
	strcpy(buf, loc + 5);
	char *tok = strtok_r(buf, ",", &save);
	if (!tok || !*tok || strlen(tok) >= sizeof(out->port)) {
		snprintf(err, errlen, "bad location '%s': no port (dpdk:0 or dpdk:net_af_packet0)", loc);
		return -EINVAL;
	}
	strcpy(out->port, tok);
	while ((tok = strtok_r(NULL, ",", &save))) {
		char *end;
		if (!strncmp(tok, "peer=", 5)) {
			if (parse_mac(tok + 5, out->peer))
				goto bad;
			out->have_peer = true;
		} else if (!strncmp(tok, "mtu=", 4)) {
			unsigned long v = strtoul(tok + 4, &end, 10);
			if (*end || v < 256 || v > 65000)
				goto bad;
			out->mtu = (uint32_t)v;
		} else if (!strncmp(tok, "drop=", 5)) {
			out->drop = strtod(tok + 5, &end);
			if (*end || !(out->drop >= 0 && out->drop < 1))
				goto bad;
		} else {
			goto bad;
		}
		continue;
bad:
		snprintf(err, errlen, "bad option '%s' in %s (peer=MAC, mtu=256..65000, drop=0..0.99)", tok, loc);
		return -EINVAL;
	}
	return 0;
}

/* ---- frames -------------------------------------------------------------------- */

static struct rte_mbuf *frame_new(struct dio_conn *c, uint8_t type, uint16_t flags, uint64_t seq,
				  uint32_t len, void **payload)
{
	struct rte_mbuf *m = rte_pktmbuf_alloc(c->port.pool);
	if (!m)
		return NULL;
	size_t total = sizeof(struct rte_ether_hdr) + sizeof(struct dio_hdr) + len;
	char *p = rte_pktmbuf_append(m, (uint16_t)total);
	if (!p) {
		rte_pktmbuf_free(m);
		return NULL;
	}
	struct rte_ether_hdr *eh = (void *)p;
	if (c->have_peer)
		rte_ether_addr_copy(&c->peer_mac, &eh->dst_addr);
	else
		memset(&eh->dst_addr, 0xff, sizeof(eh->dst_addr));
	rte_ether_addr_copy(&c->port.mac, &eh->src_addr);
	eh->ether_type = rte_cpu_to_be_16(DIO_ETHERTYPE);
	struct dio_hdr *h = (void *)(eh + 1);
	*h = (struct dio_hdr){ .version = DIO_VERSION, .type = type, .flags = flags, .len = len,
			       .session = c->session, .seq = seq, .ts_us = now_us() };
	*payload = h + 1;
	return m;
}

static void tx_flush(struct dio_conn *c)
{
	if (!c->ntx)
		return;
	uint16_t n = dio_port_tx(&c->port, c->txq, (uint16_t)c->ntx);
	atomic_fetch_add_explicit(&c->st_frames_tx, n, memory_order_relaxed);
	/* what the queue did not take waits for the next flush, in order */
	memmove(c->txq, c->txq + n, (c->ntx - n) * sizeof(c->txq[0]));
	c->ntx -= n;
	c->last_tx_us = now_us();
}

static void tx_queue(struct dio_conn *c, struct rte_mbuf *m)
{
	if (c->ntx == BURST)
		tx_flush(c);
	if (c->ntx == BURST) { /* the port is full: drop it, the protocol retransmits */
		rte_pktmbuf_free(m);
		return;
	}
	c->txq[c->ntx++] = m;
}

/* The tag of a frame whose payload is plen bytes before the tag (wire.h). */
static int frame_tag(struct dio_conn *c, const struct dio_hdr *h, const void *pl, uint32_t plen,
		     uint8_t out[DIO_FRAME_TAG_LEN])
{
	uint8_t full[32];
	size_t n = 0;

	if (!c->frame_mac || !EVP_MAC_init(c->frame_mac, NULL, 0, NULL) ||
	    !EVP_MAC_update(c->frame_mac, (const void *)h, sizeof(*h)) || !EVP_MAC_update(c->frame_mac, pl, plen) ||
	    !EVP_MAC_final(c->frame_mac, full, &n, sizeof(full)) || n != sizeof(full))
		return -1;
	memcpy(out, full, DIO_FRAME_TAG_LEN);
	return 0;
}

/* A tagged frame from the peer: does the tag at its end check out? */
static bool frame_tag_ok(struct dio_conn *c, const struct dio_hdr *h, const uint8_t *pl, uint32_t plen)
{
	uint8_t tag[DIO_FRAME_TAG_LEN];

	if (plen < DIO_FRAME_TAG_LEN || frame_tag(c, h, pl, plen - DIO_FRAME_TAG_LEN, tag))
		return false;
	bool ok = !CRYPTO_memcmp(tag, pl + plen - DIO_FRAME_TAG_LEN, DIO_FRAME_TAG_LEN);
	if (!ok)
		atomic_fetch_add_explicit(&c->st_forged, 1, memory_order_relaxed);
	return ok;
}

/* k_frames, once both nonces are known (wire.h). 0, or -1: the connection cannot go on. */
static int key_frames(struct dio_conn *c)
{
	uint8_t msg[16 + 8 + 2 * DIO_NONCE_LEN], k[32];
	unsigned len = sizeof(k);
	const uint8_t *nc = c->listener ? c->peer_nonce : c->my_nonce, *nl = c->listener ? c->my_nonce : c->peer_nonce;
	OSSL_PARAM params[] = { OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
				OSSL_PARAM_construct_end() };

	memset(msg, 0, sizeof(msg));
	memcpy(msg, "handoff-frames", 14);
	memcpy(msg + 16, &c->session, 8);
	memcpy(msg + 24, nc, DIO_NONCE_LEN);
	memcpy(msg + 24 + DIO_NONCE_LEN, nl, DIO_NONCE_LEN);
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX_free(c->frame_mac);
	c->frame_mac = mac ? EVP_MAC_CTX_new(mac) : NULL;
	EVP_MAC_free(mac);
	int ret = c->frame_mac && HMAC(EVP_sha256(), c->hello_key, 32, msg, sizeof(msg), k, &len) &&
			  EVP_MAC_init(c->frame_mac, k, sizeof(k), params) ? 0 : -1;
	explicit_bzero(k, sizeof(k));
	if (ret) {
		EVP_MAC_CTX_free(c->frame_mac);
		c->frame_mac = NULL;
		fail(c, -EIO, "cannot key the dpdk: frames (OpenSSL HMAC)");
	}
	return ret;
}

static void send_reset(struct dio_conn *c, const char *why)
{
	uint8_t *pl;
	uint32_t n = (uint32_t)strlen(why), tag = c->frame_mac ? DIO_FRAME_TAG_LEN : 0;
	if (n > 200)
		n = 200;
	struct rte_mbuf *m = frame_new(c, DIO_RESET, 0, 0, n + tag, (void **)&pl);
	if (!m)
		return;
	memcpy(pl, why, n);
	if (tag && frame_tag(c, (const struct dio_hdr *)pl - 1, pl, n, pl + n)) {
		rte_pktmbuf_free(m);
		return;
	}
	tx_queue(c, m);
	tx_flush(c);
	c->reset_sent = true;
}

/* ---- handshake ----------------------------------------------------------------- */

/* session and base as the HELLO names them: checked before anything of the HELLO is taken */
static void hello_tag(const struct dio_conn *c, const char *label, uint64_t session, const uint8_t *base_id,
		      const uint8_t *nc, const uint8_t *ns, uint32_t mtu, uint8_t out[DIO_TAG_LEN])
{
	uint8_t msg[16 + 8 + 2 * DIO_NONCE_LEN + DIO_ID_LEN + 4];
	unsigned len = DIO_TAG_LEN;
	size_t n = 0;

	memset(msg, 0, sizeof(msg));
	memcpy(msg, label, strlen(label) < 16 ? strlen(label) : 16);
	n = 16;
	memcpy(msg + n, &session, 8), n += 8;
	memcpy(msg + n, nc, DIO_NONCE_LEN), n += DIO_NONCE_LEN;
	memcpy(msg + n, ns, DIO_NONCE_LEN), n += DIO_NONCE_LEN;
	memcpy(msg + n, base_id, DIO_ID_LEN), n += DIO_ID_LEN;
	memcpy(msg + n, &mtu, 4), n += 4; /* the sender's MTU: no one can shrink it on the way */
	HMAC(EVP_sha256(), c->hello_key, 32, msg, n, out, &len);
}

static void send_hello(struct dio_conn *c, bool ack)
{
	struct dio_hello *h;
	/* padded to our largest frame: the handshake only succeeds if such frames get through */
	uint32_t len = c->port.mtu - sizeof(struct dio_hdr);
	struct rte_mbuf *m = frame_new(c, ack ? DIO_HELLO_ACK : DIO_HELLO, 0, 0, len, (void **)&h);
	if (!m)
		return;
	memset(h, 0, len);
	memcpy(h->nonce, c->my_nonce, DIO_NONCE_LEN);
	h->mtu = c->port.mtu - sizeof(struct dio_hdr);
	if (ack) {
		memcpy(h->peer_nonce, c->peer_nonce, DIO_NONCE_LEN);
		hello_tag(c, "handoff-ack", c->session, c->bind.base_id, c->peer_nonce, c->my_nonce, h->mtu, h->tag);
	} else {
		hello_tag(c, "handoff-hello", c->session, c->bind.base_id, c->my_nonce, h->peer_nonce, h->mtu, h->tag);
	}
	memcpy(h->base_id, c->bind.base_id, DIO_ID_LEN);
	tx_queue(c, m);
	tx_flush(c);
}

static void set_peer(struct dio_conn *c, const struct rte_ether_hdr *eh, uint32_t peer_mtu)
{
	rte_ether_addr_copy(&eh->src_addr, &c->peer_mac);
	c->have_peer = true;
	c->peer_mtu = peer_mtu;
	uint32_t mine = c->port.mtu - sizeof(struct dio_hdr);
	c->payload = peer_mtu && peer_mtu < mine ? peer_mtu : mine;
	char mac[RTE_ETHER_ADDR_FMT_SIZE];
	rte_ether_format_addr(mac, sizeof(mac), &eh->src_addr);
	snprintf(c->peer_name, sizeof(c->peer_name), "%s via %s", mac, c->port.name);
}

/* Listener: a HELLO. Returns false when it fails the connection. */
static bool on_hello(struct dio_conn *c, const struct rte_ether_hdr *eh, const struct dio_hdr *h,
		     const struct dio_hello *p)
{
	uint8_t tag[DIO_TAG_LEN], zero[DIO_NONCE_LEN] = { 0 };

	if (atomic_load(&c->established)) {
		if (h->session == c->session)
			send_hello(c, true); /* our HELLO_ACK was lost */
		return true;
	}
	if (c->loc.have_peer && memcmp(eh->src_addr.addr_bytes, c->loc.peer, 6))
		return true; /* not the peer we were told to wait for */
	/* a listener bound to no base (an edge cache: the source's plan names it) takes the sender's */
	static const uint8_t no_base[DIO_ID_LEN];
	const uint8_t *base = memcmp(c->bind.base_id, no_base, DIO_ID_LEN) ? c->bind.base_id : p->base_id;
	bool base_ok = !memcmp(p->base_id, base, DIO_ID_LEN);
	if (base_ok)
		hello_tag(c, "handoff-hello", h->session, base, p->nonce, zero, p->mtu, tag);
	/* a refusal goes back to whoever sent it (its address and session); the base and the
	 * peer's nonce are taken only from a HELLO whose tag checks out */
	c->session = h->session;
	set_peer(c, eh, p->mtu);
	if (!base_ok) {
		send_reset(c, "the receiver holds a different base");
		fail(c, -EPERM, "the sender's base differs from ours (handshake refused)");
		return false;
	}
	if (CRYPTO_memcmp(tag, p->tag, DIO_TAG_LEN)) {
		send_reset(c, "the receiver has a different key");
		fail(c, -EPERM, "the sender's key differs from ours (handshake refused)");
		return false;
	}
	memcpy(c->bind.base_id, base, DIO_ID_LEN);
	memcpy(c->peer_nonce, p->nonce, DIO_NONCE_LEN);
	if (key_frames(c))
		return false;
	send_hello(c, true);
	atomic_store(&c->established, true);
	return true;
}

/* Connector: the listener's answer. */
static void on_hello_ack(struct dio_conn *c, const struct rte_ether_hdr *eh, const struct dio_hello *p)
{
	uint8_t tag[DIO_TAG_LEN];

	if (atomic_load(&c->established) || memcmp(p->peer_nonce, c->my_nonce, DIO_NONCE_LEN))
		return;
	if (memcmp(p->base_id, c->bind.base_id, DIO_ID_LEN)) {
		fail(c, -EPERM, "the receiver holds a different base (handshake refused)");
		return;
	}
	hello_tag(c, "handoff-ack", c->session, c->bind.base_id, c->my_nonce, p->nonce, p->mtu, tag);
	if (CRYPTO_memcmp(tag, p->tag, DIO_TAG_LEN)) {
		fail(c, -EPERM, "the receiver's key differs from ours (handshake refused)");
		return;
	}
	memcpy(c->peer_nonce, p->nonce, DIO_NONCE_LEN);
	set_peer(c, eh, p->mtu);
	if (key_frames(c))
		return;
	atomic_store(&c->established, true);
}

/* ---- receiving data ------------------------------------------------------------ */

static void ranges_add(struct dio_conn *c, uint64_t s, uint64_t e)
{
	int i = 0;
	while (i < c->nranges && c->ranges[i].end < s)
		i++;
	/* merge every range that touches [s, e) */
	int j = i;
	while (j < c->nranges && c->ranges[j].start <= e) {
		if (c->ranges[j].start < s)
			s = c->ranges[j].start;
		if (c->ranges[j].end > e)
			e = c->ranges[j].end;
		j++;
	}
	if (j == i && c->nranges == DIO_MAX_SACK)
		return; /* no room: forget it, it will be sent again */
	memmove(&c->ranges[i + 1], &c->ranges[j], (c->nranges - j) * sizeof(c->ranges[0]));
	c->nranges -= j - i - 1;
	c->ranges[i] = (struct range){ s, e };
}

static void ring_put(uint8_t *ring, uint32_t cap, uint64_t off, const void *src, size_t len)
{
	size_t at = off % cap, first = cap - at < len ? cap - at : len;
	memcpy(ring + at, src, first);
	memcpy(ring, (const uint8_t *)src + first, len - first);
}

static void ring_get(const uint8_t *ring, uint32_t cap, uint64_t off, void *dst, size_t len)
{
	size_t at = off % cap, first = cap - at < len ? cap - at : len;
	memcpy(dst, ring + at, first);
	memcpy((uint8_t *)dst + first, ring, len - first);
}

static void on_data(struct dio_conn *c, const struct dio_hdr *h, const uint8_t *pl)
{
	uint64_t cum = atomic_load_explicit(&c->rcv_cum, memory_order_relaxed);
	uint64_t limit = atomic_load_explicit(&c->rcv_read, memory_order_acquire) + DIO_RCVBUF;
	uint64_t s = h->seq, e = h->seq + h->len;

	c->ack_due = true;
	c->last_echo_us = h->ts_us;
	if (h->flags & DIO_F_FIN) {
		c->fin_at = e;
		c->fin_seen = true;
	}
	if (e > limit)
		return; /* beyond the window we advertised: a broken or stale sender */
	if (s < cum) {
		pl += cum - s;
		s = cum;
	}
	if (s < e) {
		ring_put(c->rcv_buf, DIO_RCVBUF, s, pl, e - s);
		ranges_add(c, s, e);
	}
	/* the first range now starting at cum is in order */
	if (c->nranges && c->ranges[0].start <= cum) {
		cum = c->ranges[0].end;
		memmove(&c->ranges[0], &c->ranges[1], (c->nranges - 1) * sizeof(c->ranges[0]));
		c->nranges--;
		atomic_store(&c->rcv_cum, cum);
		c->wake_recv = true; /* once per burst, in io_main */
	}
	if (c->fin_seen && cum >= c->fin_at && !atomic_load(&c->rcv_eof)) {
		atomic_store(&c->rcv_eof, true);
		pthread_mutex_lock(&c->lock);
		pthread_cond_broadcast(&c->cv_recv);
		pthread_mutex_unlock(&c->lock);
	}
}

static void send_ack(struct dio_conn *c)
{
	struct dio_ack *a;
	uint32_t len = sizeof(*a) + c->nranges * sizeof(struct dio_range);
	struct rte_mbuf *m = frame_new(c, DIO_ACK, 0, 0, len + DIO_FRAME_TAG_LEN, (void **)&a);
	if (!m)
		return;
	uint64_t cum = atomic_load_explicit(&c->rcv_cum, memory_order_relaxed);
	c->last_adv_wnd = atomic_load_explicit(&c->rcv_read, memory_order_acquire) + DIO_RCVBUF;
	*a = (struct dio_ack){ .cum = cum, .wnd_end = c->last_adv_wnd, .ts_echo_us = c->last_echo_us,
			       .flags = c->fin_seen && cum >= c->fin_at ? DIO_A_FIN : 0,
			       .nsack = (uint32_t)c->nranges };
	struct dio_range *r = (void *)(a + 1);
	for (int i = 0; i < c->nranges; i++)
		r[i] = (struct dio_range){ c->ranges[i].start, c->ranges[i].end };
	if (frame_tag(c, (const struct dio_hdr *)a - 1, a, len, (uint8_t *)a + len)) {
		rte_pktmbuf_free(m);
		return;
	}
	tx_queue(c, m);
	c->ack_due = false;
	c->last_echo_us = 0;
}

/* ---- acknowledgements ---------------------------------------------------------- */

static struct seg *sb_at(struct dio_conn *c, uint32_t i)
{
	return &c->sb[(c->sb_head + i) % SEGS];
}

/*
 * A delivered segment. If it was sent again, the delivery may be the first
 * transmission's: its send time then says nothing (RFC 8985), unless the
 * ACK echoes a time at or after the retransmission.
 */
static void deliver(struct dio_conn *c, struct seg *s, uint64_t now, uint64_t echo_us, struct seg *newest)
{
	c->delivered += s->len ? s->len : 1;
	c->delivered_us = now;
	if (s->retx && echo_us < s->sent_us)
		return;
	if (s->sent_us > c->rack_sent_us)
		c->rack_sent_us = s->sent_us;
	if (!newest->sent_us || s->sent_us >= newest->sent_us)
		*newest = *s;
}

static void mark_lost(struct dio_conn *c, uint64_t now);

static void on_ack(struct dio_conn *c, const struct dio_hdr *h, const struct dio_ack *a, uint32_t plen)
{
	uint64_t now = now_us();
	struct seg newest = { 0 };
	uint64_t una = atomic_load_explicit(&c->snd_una, memory_order_relaxed);
	uint32_t nsack = a->nsack;
	const struct dio_range *r = (const void *)(a + 1);
	bool progress = false;

	/* only the peer acknowledges, and only what was sent (wire.h: the tag) */
	if (nsack > DIO_MAX_SACK || sizeof(*a) + nsack * sizeof(*r) + DIO_FRAME_TAG_LEN > plen ||
	    !frame_tag_ok(c, h, (const uint8_t *)a, plen) || a->cum > c->snd_nxt ||
	    ((a->flags & DIO_A_FIN) && !c->fin_sent))
		return;
	if (a->wnd_end > c->peer_wnd_end)
		c->peer_wnd_end = a->wnd_end;
	/* cumulative */
	while (c->sb_count) {
		struct seg *s = sb_at(c, 0);
		bool acked = s->fin ? (a->flags & DIO_A_FIN) != 0 : s->off + s->len <= a->cum;
		if (!acked)
			break;
		if (!s->sacked)
			deliver(c, s, now, a->ts_echo_us, &newest);
		c->sb_head = (c->sb_head + 1) % SEGS;
		c->sb_count--;
	}
	if (a->cum > una && a->cum <= c->snd_nxt) {
		atomic_store(&c->snd_una, a->cum);
		c->last_progress_us = now;
		progress = true;
		c->wake_send = true; /* once per burst, in io_main */
	}
	if ((a->flags & DIO_A_FIN) && c->fin_sent && !atomic_load(&c->fin_acked)) {
		atomic_store(&c->fin_acked, true);
		pthread_mutex_lock(&c->lock);
		pthread_cond_broadcast(&c->cv_send);
		pthread_mutex_unlock(&c->lock);
	}
	/* selective: segments wholly inside a range */
	for (uint32_t i = 0, k = 0; i < c->sb_count && k < nsack; i++) {
		struct seg *s = sb_at(c, i);
		while (k < nsack && r[k].end <= s->off)
			k++;
		if (k < nsack && !s->sacked && !s->fin && s->off >= r[k].start && s->off + s->len <= r[k].end) {
			s->sacked = true;
			s->lost = false;
			deliver(c, s, now, a->ts_echo_us, &newest);
			c->last_progress_us = now;
			progress = true;
		}
	}
	/* samples */
	double rtt = a->ts_echo_us && now > a->ts_echo_us ? (double)(now - a->ts_echo_us) : 0;
	if (rtt > 0)
		c->srtt_us = c->srtt_us > 0 ? c->srtt_us + (rtt - c->srtt_us) / 8 : rtt;
	double rate = 0;
	if (newest.sent_us) {
		/*
		 * Over the longer of the send and the acknowledgement intervals
		 * (as BBR): ACKs that arrive bunched cannot make the link look
		 * faster than the data was sent.
		 */
		uint64_t ack_iv = since_us(now, newest.delivered_us);
		uint64_t send_iv = since_us(newest.sent_us, newest.first_sent_us);
		uint64_t iv = ack_iv > send_iv ? ack_iv : send_iv;
		if (iv)
			rate = (double)(c->delivered - newest.delivered) * 8e6 / (double)iv;
		c->first_sent_us = newest.sent_us;
	}
	dio_pace_sample(&c->pace, (double)now, rate, rtt, newest.app_limited);
	if (newest.sent_us && newest.delivered >= c->round_end) {
		dio_pace_round(&c->pace, (double)now, c->round_sent, c->round_lost);
		c->round_end = c->delivered;
		c->round_sent = c->round_lost = 0;
	}
	if (progress) {
		c->probed = false;
		double base = c->pace.min_rtt_us > 0 ? 4 * c->pace.min_rtt_us : 0;
		c->rto_us = base > MIN_RTO_US ? (uint64_t)base : MIN_RTO_US; /* undo RTO back-off */
	}
	mark_lost(c, now);
}

/*
 * A segment is lost when three segments' worth of data beyond it was
 * selectively acknowledged (segments of one burst leave together, so send
 * times alone cannot order them), or when something sent after it was
 * delivered and it has been out for an RTT plus a reordering allowance
 * (this catches lost retransmissions).
 */
static void mark_lost(struct dio_conn *c, uint64_t now)
{
	uint64_t hi_sacked = 0;
	double reo = c->pace.min_rtt_us > 0 ? c->pace.min_rtt_us / 4 : 1000;
	double rtt = c->srtt_us > 0 ? c->srtt_us : 1000; /* with the queue the segment waits in */

	if (reo < 50)
		reo = 50;
	for (uint32_t i = c->sb_count; i-- > 0;) {
		struct seg *s = sb_at(c, i);
		if (s->sacked) {
			if (s->off + s->len > hi_sacked)
				hi_sacked = s->off + s->len;
			continue;
		}
		if (s->lost)
			continue;
		/* a resent segment is judged by time only: the SACKs beyond it predate the resend */
		bool fack = !s->retx && hi_sacked >= s->off + s->len + 3 * (uint64_t)c->payload;
		bool rack = s->sent_us < c->rack_sent_us && (double)(now - s->sent_us) > rtt + reo;
		if (fack || rack) {
			s->lost = true;
			c->round_lost += s->len;
		}
	}
}

/* ---- sending data -------------------------------------------------------------- */

/* False when the port's queue is full: try again on the next loop. */
static bool can_transmit(struct dio_conn *c)
{
	if (c->ntx == BURST)
		tx_flush(c);
	return c->ntx < BURST;
}

/* snd_lent's free callback: the count never reaches 0 (the send ring is the connection's) */
static void never_freed(void *addr, void *opaque)
{
	(void)addr;
	(void)opaque;
}

/*
 * A DATA frame whose payload stays where it is on the send ring: the header
 * in one mbuf, and chained to it one that points at the ring. The bytes
 * stay put until acknowledged, and the PMD has copied them before tx_burst
 * returns. NULL when the payload wraps around the ring's end (it is copied
 * then) or no mbuf is left.
 */
static struct rte_mbuf *frame_lent(struct dio_conn *c, const struct seg *s)
{
	uint64_t at = s->off % DIO_SNDBUF;
	void *pl;

	if (at + s->len > DIO_SNDBUF)
		return NULL;
	struct rte_mbuf *m = frame_new(c, DIO_DATA, s->fin ? DIO_F_FIN : 0, s->off, s->len, &pl);
	struct rte_mbuf *body = m ? rte_pktmbuf_alloc(c->port.pool) : NULL;
	if (!body) {
		rte_pktmbuf_free(m);
		return NULL;
	}
	rte_pktmbuf_trim(m, (uint16_t)s->len); /* the header alone */
	rte_mbuf_ext_refcnt_update(&c->snd_lent, 1);
	rte_pktmbuf_attach_extbuf(body, c->snd_buf + at, RTE_BAD_IOVA, (uint16_t)s->len, &c->snd_lent);
	body->data_len = (uint16_t)s->len;
	body->pkt_len = s->len;
	if (rte_pktmbuf_chain(m, body)) {
		rte_pktmbuf_free(m);
		rte_pktmbuf_free(body);
		return NULL;
	}
	return m;
}

static void transmit(struct dio_conn *c, struct seg *s, bool retx, uint64_t now)
{
	struct rte_mbuf *m = c->port.tx_borrows ? frame_lent(c, s) : NULL;
	if (!m) {
		void *pl;
		if (!(m = frame_new(c, DIO_DATA, s->fin ? DIO_F_FIN : 0, s->off, s->len, &pl)))
			return;
		ring_get(c->snd_buf, DIO_SNDBUF, s->off, pl, s->len);
		atomic_fetch_add_explicit(&c->st_tx_copied, s->len, memory_order_relaxed);
	}
	s->sent_us = now;
	s->retx |= retx;
	s->delivered = c->delivered;
	s->delivered_us = c->delivered_us ? c->delivered_us : now;
	s->first_sent_us = c->first_sent_us ? c->first_sent_us : now;
	s->lost = false;
	tx_queue(c, m);
	c->round_sent += s->len;
	double bits = (double)(s->len + sizeof(struct dio_hdr) + RTE_ETHER_HDR_LEN) * 8;
	c->next_tx_us += bits * 1e6 / c->pace.pacing_bps;
	atomic_fetch_add_explicit(&c->st_data_frames, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&c->st_data_bytes, s->len, memory_order_relaxed);
	if (retx) {
		atomic_fetch_add_explicit(&c->st_retx_frames, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&c->st_retx_bytes, s->len, memory_order_relaxed);
	}
}

/* Bytes the network holds: sent, neither acknowledged nor known lost (the "pipe"). */
static uint64_t inflight_bytes(struct dio_conn *c)
{
	uint64_t b = 0;
	for (uint32_t i = 0; i < c->sb_count; i++) {
		const struct seg *s = sb_at(c, i);
		if (!s->sacked && !s->lost)
			b += s->len;
	}
	return b;
}

/* Paced transmission: lost segments first, then new data. Returns frames sent. */
static int send_some(struct dio_conn *c, uint64_t now)
{
	int sent = 0;
	/*
	 * A burst may catch up what a late wake-up missed: sleeps overshoot by
	 * tens of microseconds, so without catch-up the rate would fall short of
	 * the pacing rate. PACE_SLACK_US bounds the burst (at 100 Mbit/s: ~6 KB).
	 */
	double slack = (double)(4 * (c->payload + 64) * 8) * 1e6 / c->pace.pacing_bps;
	if (slack < PACE_SLACK_US)
		slack = PACE_SLACK_US;
	if (c->next_tx_us < (double)now - slack)
		c->next_tx_us = (double)now - slack;

	for (uint32_t i = 0; i < c->sb_count && sent < BURST && c->next_tx_us <= (double)now; i++) {
		struct seg *s = sb_at(c, i);
		if (s->lost && !s->sacked) {
			if (!can_transmit(c))
				return sent;
			transmit(c, s, true, now);
			sent++;
		}
	}
	uint64_t wnd = dio_pace_window(&c->pace, c->payload), pipe = inflight_bytes(c);
	while (sent < BURST && c->next_tx_us <= (double)now && c->sb_count < SEGS) {
		uint64_t end = atomic_load_explicit(&c->app_end, memory_order_acquire);
		bool fin = atomic_load(&c->fin_req) && !c->fin_sent;
		uint64_t avail = end - c->snd_nxt;
		if (!avail && !(fin && end == c->snd_nxt))
			break;
		if (pipe >= wnd || !can_transmit(c))
			break;
		uint32_t len = avail < c->payload ? (uint32_t)avail : c->payload;
		if (c->snd_nxt + len > c->peer_wnd_end) {
			if (c->peer_wnd_end <= c->snd_nxt)
				break; /* the receiver's buffer is full */
			len = (uint32_t)(c->peer_wnd_end - c->snd_nxt);
		}
		struct seg *s = &c->sb[(c->sb_head + c->sb_count) % SEGS];
		*s = (struct seg){ .off = c->snd_nxt, .len = len };
		s->fin = fin && c->snd_nxt + len == end;
		s->app_limited = c->snd_nxt + len == end;
		c->sb_count++;
		c->snd_nxt += len;
		if (s->fin)
			c->fin_sent = true;
		pipe += len;
		transmit(c, s, false, now);
		sent++;
	}
	return sent;
}

static double probe_timeout_us(const struct dio_conn *c)
{
	double pto = 2 * (c->srtt_us > 0 ? c->srtt_us : 1000);
	return pto > MIN_PTO_US ? pto : MIN_PTO_US;
}

static void check_timers(struct dio_conn *c, uint64_t now)
{
	if (c->sb_count && since_us(now, c->last_progress_us) > c->rto_us) {
		/* nothing acknowledged for an RTO: everything out there is lost */
		uint32_t nsacked = 0, nlost = 0;
		for (uint32_t i = 0; i < c->sb_count; i++) {
			struct seg *s = sb_at(c, i);
			nsacked += s->sacked;
			nlost += s->lost;
			if (!s->sacked && !s->lost) {
				s->lost = true;
				c->round_lost += s->len;
			}
		}
		dio_pace_timeout(&c->pace);
		c->round_sent = c->round_lost = 0;
		c->round_end = c->delivered;
		c->last_progress_us = now;
		c->rto_us = c->rto_us * 2 > MAX_RTO_US ? MAX_RTO_US : c->rto_us * 2;
		if (c->trace)
			fprintf(stderr, "dio: RTO: sacked %u lost %u una %lu nxt %lu inflight %u first seg %lu+%u sacked %d lost %d sent %lu us ago\n",
				nsacked, nlost, (unsigned long)atomic_load(&c->snd_una), (unsigned long)c->snd_nxt, c->sb_count,
				(unsigned long)sb_at(c, 0)->off, sb_at(c, 0)->len, sb_at(c, 0)->sacked, sb_at(c, 0)->lost,
				(unsigned long)since_us(now, sb_at(c, 0)->sent_us));
		atomic_fetch_add_explicit(&c->st_rto, 1, memory_order_relaxed);
	} else if (c->sb_count && !c->probed &&
		   (double)since_us(now, c->last_progress_us) > probe_timeout_us(c)) {
		/*
		 * Tail-loss probe: no acknowledgement for two RTTs, perhaps because
		 * the last frames or their ACK were lost and nothing follows to
		 * reveal it. Resending the first unacknowledged segment draws an
		 * ACK that either shows the loss or confirms delivery.
		 */
		for (uint32_t i = 0; i < c->sb_count; i++) {
			struct seg *s = sb_at(c, i);
			if (!s->sacked) {
				if (!s->lost) {
					s->lost = true;
					c->round_lost += s->len;
				}
				break;
			}
		}
		c->probed = true;
		atomic_fetch_add_explicit(&c->st_probes, 1, memory_order_relaxed);
	} else if (c->sb_count == 0) {
		double base = c->pace.min_rtt_us > 0 ? 4 * c->pace.min_rtt_us : 0;
		c->rto_us = base > MIN_RTO_US ? (uint64_t)base : MIN_RTO_US;
	}
	/* the receiver reads: reopen the window before the sender stalls on it */
	uint64_t wnd = atomic_load_explicit(&c->rcv_read, memory_order_acquire) + DIO_RCVBUF;
	if (wnd - c->last_adv_wnd >= DIO_RCVBUF / 4)
		c->ack_due = true;
	if (since_us(now, c->last_tx_us) > KEEPALIVE_US)
		c->ack_due = true; /* also the keepalive */
	if (since_us(now, c->last_rx_us) > (uint64_t)(c->dead_s * 1e6))
		fail(c, -ETIMEDOUT, "no frame from the peer for %.0f s", c->dead_s);
	/* a link that went down (memif: the peer process exited) fails sooner */
	if (since_us(now, c->link_checked_us) >= LINK_CHECK_US) {
		c->link_checked_us = now;
		if (dio_port_link_up(&c->port))
			c->link_down_since_us = 0;
		else if (!c->link_down_since_us)
			c->link_down_since_us = now;
		else if (since_us(now, c->link_down_since_us) > LINK_DOWN_US)
			fail(c, -ENETDOWN, "the port's link went down");
	}
}

/* ---- the I/O thread ------------------------------------------------------------ */

static bool drop_frame(struct dio_conn *c)
{
	if (c->loc.drop <= 0)
		return false;
	c->rng ^= c->rng << 13;
	c->rng ^= c->rng >> 7;
	c->rng ^= c->rng << 17;
	return (double)(c->rng >> 11) * 0x1p-53 < c->loc.drop;
}

/* One received frame; false if it is not ours. */
static void on_frame(struct dio_conn *c, struct rte_mbuf *m, uint64_t now)
{
	if (m->nb_segs != 1 || m->data_len < sizeof(struct rte_ether_hdr) + sizeof(struct dio_hdr))
		return;
	struct rte_ether_hdr *eh = rte_pktmbuf_mtod(m, struct rte_ether_hdr *);
	if (eh->ether_type != rte_cpu_to_be_16(DIO_ETHERTYPE))
		return;
	if (rte_is_same_ether_addr(&eh->src_addr, &c->port.mac))
		return; /* our own broadcast, looped back */
	struct dio_hdr *h = (void *)(eh + 1);
	uint32_t plen = m->data_len - sizeof(*eh) - sizeof(*h);
	const uint8_t *pl = (const uint8_t *)(h + 1);
	if (h->version != DIO_VERSION || h->len > plen)
		return;
	plen = h->len;
	bool est = atomic_load(&c->established);
	if (h->type == DIO_HELLO) {
		if (c->listener && plen >= sizeof(struct dio_hello))
			on_hello(c, eh, h, (const void *)pl);
		return;
	}
	if (h->session != c->session ||
	    (!c->listener && !est && h->type != DIO_HELLO_ACK && h->type != DIO_RESET))
		return;
	if (c->have_peer && !rte_is_same_ether_addr(&eh->src_addr, &c->peer_mac))
		return;
	if (drop_frame(c)) {
		atomic_fetch_add_explicit(&c->st_dropped, 1, memory_order_relaxed);
		return;
	}
	c->last_rx_us = now;
	atomic_fetch_add_explicit(&c->st_frames_rx, 1, memory_order_relaxed);
	switch (h->type) {
	case DIO_HELLO_ACK:
		if (!c->listener && plen >= sizeof(struct dio_hello))
			on_hello_ack(c, eh, (const void *)pl);
		break;
	case DIO_DATA:
		if (est)
			on_data(c, h, pl);
		break;
	case DIO_ACK:
		if (est && plen >= sizeof(struct dio_ack))
			on_ack(c, h, (const void *)pl, plen);
		break;
	case DIO_RESET: {
		char why[201];
		/* once established only a tagged RESET ends the connection; before, one refuses a HELLO */
		if (est && !frame_tag_ok(c, h, pl, plen))
			break;
		if (est)
			plen -= DIO_FRAME_TAG_LEN;
		uint32_t n = plen < 200 ? plen : 200;
		memcpy(why, pl, n);
		why[n] = 0;
		for (uint32_t i = 0; i < n; i++)
			if (why[i] < 32 || why[i] > 126)
				why[i] = '?';
		fail(c, -ECONNRESET, "peer reset: %s", n ? why : "no reason given");
		break;
	}
	}
}

/* One wake-up per burst for the application threads that wait on progress. */
static void wake_waiters(struct dio_conn *c)
{
	bool s = c->wake_send && atomic_load(&c->send_waiting);
	bool r = c->wake_recv && atomic_load(&c->recv_waiting);

	c->wake_send = c->wake_recv = false;
	if (!s && !r)
		return;
	pthread_mutex_lock(&c->lock);
	if (s)
		pthread_cond_broadcast(&c->cv_send);
	if (r)
		pthread_cond_broadcast(&c->cv_recv);
	pthread_mutex_unlock(&c->lock);
}

/* After a burst of n received frames: acknowledge, send what is due, run the timers. */
static int after_rx(struct dio_conn *c, uint64_t now, uint16_t n)
{
	int work = 0;

	if (atomic_load(&c->established)) {
		if (c->ack_due && n)
			send_ack(c); /* one ACK per burst of data */
		work += send_some(c, now);
		check_timers(c, now);
		if (c->ack_due)
			send_ack(c);
	} else if (c->listener) {
		c->last_rx_us = now; /* the accept timeout governs the wait */
	}
	tx_flush(c);
	return work;
}

/*
 * EAL pins the thread that started it to the main lcore's CPU, and a thread
 * made from it inherits that: the I/O thread shared one CPU with the
 * application's main thread (probe's generator, the pipeline's ingest and
 * sink) while the other CPUs EAL was given idled. It may run on any of them
 * on the port's NUMA node (all of them if none is there): the scheduler
 * places it. False when that is one CPU anyway.
 */
static bool io_thread_cpus(int socket, rte_cpuset_t *cpus)
{
	rte_cpuset_t all;
	unsigned id;

	CPU_ZERO(cpus);
	CPU_ZERO(&all);
	RTE_LCORE_FOREACH(id) {
		rte_cpuset_t cs = rte_lcore_cpuset(id);
		CPU_OR(&all, &all, &cs);
		if (socket < 0 || rte_lcore_to_socket_id(id) == (unsigned)socket)
			CPU_OR(cpus, cpus, &cs);
	}
	if (!CPU_COUNT(cpus))
		*cpus = all;
	return CPU_COUNT(cpus) > 1;
}

static void *io_main(void *arg)
{
	struct dio_conn *c = arg;
	struct rte_mbuf *rx[BURST];
	unsigned idle = 0;
	uint64_t last_hello = 0, last_trace = 0;

	rte_thread_register();
	/* sleeps here are tens of microseconds: the default 50 us timer slack would double them */
	prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
	c->last_rx_us = c->last_progress_us = c->last_tx_us = now_us();
	c->next_tx_us = (double)now_us();
	while (!atomic_load(&c->stop)) {
		uint64_t now = now_us();
		int work = 0;

		if (!c->listener && !atomic_load(&c->established) && since_us(now, last_hello) > HELLO_EVERY_US) {
			send_hello(c, false);
			last_hello = now;
		}
		uint16_t n = dio_port_rx(&c->port, rx, BURST);
		for (uint16_t i = 0; i < n; i++) {
			on_frame(c, rx[i], now);
			rte_pktmbuf_free(rx[i]);
		}
		wake_waiters(c);
		work += n;
		if (atomic_load(&c->err)) {
			tx_flush(c);
			break;
		}
		work += after_rx(c, now, n);
		if (c->trace && since_us(now, last_trace) >= 1000000) {
			last_trace = now;
			fprintf(stderr,
				"dio %s: una %lu nxt %lu app %lu inflight %u pacing %.1f Mbit/s bw %.1f scale %.2f rtt %.0f us rto %lu rcv %lu ranges %d\n",
				c->listener ? "rx" : "tx", (unsigned long)atomic_load(&c->snd_una), (unsigned long)c->snd_nxt,
				(unsigned long)atomic_load(&c->app_end), c->sb_count, c->pace.pacing_bps / 1e6,
				c->pace.bw_bps / 1e6, c->pace.loss_scale, c->pace.min_rtt_us, (unsigned long)c->rto_us,
				(unsigned long)atomic_load(&c->rcv_cum), c->nranges);
		}
		put_dbl(&c->st_pacing, c->pace.pacing_bps);
		put_dbl(&c->st_bw, c->pace.bw_bps);
		put_dbl(&c->st_rtt, c->pace.min_rtt_us);

		if (work) {
			idle = 0;
			continue;
		}
		if (++idle < SPIN_IDLE) {
			rte_pause();
			continue;
		}
		/* sleep until the next paced send is due, at most DIO_IDLE_SLEEP_US */
		double wait = DIO_IDLE_SLEEP_US;
		uint64_t t = now_us();
		if (c->next_tx_us > (double)t && c->next_tx_us - (double)t < wait &&
		    atomic_load_explicit(&c->app_end, memory_order_relaxed) > c->snd_nxt)
			wait = c->next_tx_us - (double)t;
		if (wait >= 20) {
			struct timespec ts = { 0, (long)(wait * 1000) };
			nanosleep(&ts, NULL);
		}
	}
	tx_flush(c);
	for (int i = 0; i < c->ntx; i++)
		rte_pktmbuf_free(c->txq[i]);
	c->ntx = 0;
	rte_thread_unregister();
	return NULL;
}

/* ---- telemetry: /handoff/link ------------------------------------------------ */

/* The open connection telemetry reports (one per process in practice). */
static pthread_mutex_t tele_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dio_conn *tele_conn;

static int tele_link(const char *cmd, const char *params, struct rte_tel_data *d)
{
	struct dio_stats st;

	(void)cmd;
	(void)params;
	rte_tel_data_start_dict(d);
	pthread_mutex_lock(&tele_lock);
	if (!tele_conn) {
		pthread_mutex_unlock(&tele_lock);
		rte_tel_data_add_dict_string(d, "state", "no connection");
		return 0;
	}
	dio_stats(tele_conn, &st);
	rte_tel_data_add_dict_string(d, "peer", tele_conn->peer_name);
	pthread_mutex_unlock(&tele_lock);
	rte_tel_data_add_dict_string(d, "port", st.port);
#define U(f) rte_tel_data_add_dict_u64(d, #f, st.f)
	U(mtu); U(frames_tx); U(frames_rx); U(data_bytes_tx); U(retx_frames); U(retx_bytes);
	U(rto_events); U(loss_probes); U(acked_bytes); U(received_bytes); U(port_imissed);
#undef U
	rte_tel_data_add_dict_u64(d, "pacing_bps", (uint64_t)st.pacing_bps);
	rte_tel_data_add_dict_u64(d, "bw_bps", (uint64_t)st.bw_bps);
	rte_tel_data_add_dict_u64(d, "min_rtt_us", (uint64_t)st.min_rtt_us);
	return 0;
}

static void tele_register(void)
{
	rte_telemetry_register_cmd("/handoff/link", tele_link,
				   "The dpdk: connection's counters and rate. Takes no parameters");
}

static void tele_set(struct dio_conn *c, struct dio_conn *expect)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, tele_register);
	pthread_mutex_lock(&tele_lock);
	if (tele_conn == expect)
		tele_conn = c;
	pthread_mutex_unlock(&tele_lock);
}

/* ---- set-up and teardown ------------------------------------------------------- */

/* What conn_init set up (not the buffers, the port or the I/O thread). */
static void conn_fini(struct dio_conn *c)
{
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->slock);
	pthread_cond_destroy(&c->cv_send);
	pthread_cond_destroy(&c->cv_recv);
	explicit_bzero(c->hello_key, sizeof(c->hello_key));
	EVP_MAC_CTX_free(c->frame_mac);
}

static void conn_free_buffers(struct dio_conn *c);

static void conn_free(struct dio_conn *c)
{
	if (!c)
		return;
	tele_set(NULL, c);
	if (c->io_started) {
		atomic_store(&c->stop, true);
		pthread_join(c->io, NULL);
	}
	/*
	 * Stopping our port while the peer stops its own races, inside
	 * net_memif, with the peer's disconnect that DPDK's interrupt thread
	 * handles (seen: "EAL: Error: Invalid memory" and a crash, about 1 run
	 * in 20 of a refused handshake, and a serve --listen dpdk: that
	 * crashed after a client's clean goodbye). So one side leaves first:
	 * after a RESET of ours the peer closes at once, and after a clean end
	 * the connector does; the other waits for up to a second, and for the
	 * PMD to finish with its leaving (the link reads down as it starts).
	 */
	bool peer_leaves_first = c->reset_sent || (c->listener && atomic_load(&c->err) != -ECONNRESET);
	if (peer_leaves_first && c->port.started) {
		for (int i = 0; i < 50 && dio_port_link_up(&c->port); i++)
			usleep(20000);
		usleep(100000);
	}
	dio_port_close(&c->port);
	conn_free_buffers(c);
	conn_fini(c);
	free(c);
}

/* A zeroed connection's settings, keys and locks. 0, or -1 with err. */
static int conn_init(struct dio_conn *c, const struct dio_loc *loc, const struct dio_bind *b, bool listener,
		     char *err, size_t errlen)
{
	c->loc = *loc;
	c->bind = *b;
	static const uint8_t unkeyed[32];
	if (cdc_derive_key(b->key ? b->key : unkeyed, "handoff-dio", 11, "handoff dpdk hello", c->hello_key,
			   sizeof(c->hello_key))) {
		snprintf(err, errlen, "cannot derive the handshake key");
		return -1;
	}
	c->bind.key = NULL;
	c->listener = listener;
	c->trace = getenv("HANDOFF_DIO_TRACE") != NULL;
	c->dead_s = DIO_DEAD_S;
	c->idle_s = DIO_IDLE_S;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->slock, NULL);
	pthread_condattr_t ca; /* waits use CLOCK_MONOTONIC deadlines (deadline_ts) */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cv_send, &ca);
	pthread_cond_init(&c->cv_recv, &ca);
	pthread_condattr_destroy(&ca);
	return 0;
}

/* The protocol's starting state, once the port is open. 0, or -1 with err. */
static int conn_start_state(struct dio_conn *c, char *err, size_t errlen)
{
	if (c->port.mtu < sizeof(struct dio_hdr) + 256) {
		snprintf(err, errlen, "DPDK port %s: MTU %u is too small", c->port.name, c->port.mtu);
		return -1;
	}
	c->payload = c->port.mtu - sizeof(struct dio_hdr);
	snprintf(c->peer_name, sizeof(c->peer_name), "the peer via %s", c->port.name);
	if (c->loc.have_peer) {
		memcpy(c->peer_mac.addr_bytes, c->loc.peer, 6);
		c->have_peer = !c->listener;
	}
	/* the handshake's freshness rests on these: no randomness, no connection */
	if (RAND_bytes((unsigned char *)&c->rng, sizeof(c->rng)) != 1 || RAND_bytes(c->my_nonce, DIO_NONCE_LEN) != 1 ||
	    (!c->listener && RAND_bytes((unsigned char *)&c->session, sizeof(c->session)) != 1)) {
		snprintf(err, errlen, "no random bytes for the dpdk: handshake (OpenSSL RAND_bytes failed)");
		return -1;
	}
	c->rng |= 1;
	c->snd_lent.free_cb = never_freed;
	rte_mbuf_ext_refcnt_set(&c->snd_lent, 1);
	c->peer_wnd_end = DIO_RCVBUF;
	c->last_adv_wnd = DIO_RCVBUF;
	c->rto_us = MIN_RTO_US;
	dio_pace_init(&c->pace, INIT_RATE_BPS, c->payload);
	c->pace.trace = c->trace;
	c->t0_us = now_us();
	return 0;
}

/*
 * The send and receive rings and the scoreboard go on the port's node
 * (port.c: where its queues and mbufs went), as plain memory bound there
 * (libnuma), not EAL memory: -m is sized for the pipeline's tables, and EAL
 * frees zero every byte. Without NUMA support, or when the bind fails, they
 * come from the heap and the stats say so (buffers_node -1).
 */
static void *node_alloc(size_t len, int node)
{
	return node != SOCKET_ID_ANY && numa_available() >= 0 ? numa_alloc_onnode(len, node) : NULL;
}

/* Frees what the buffers are, from libnuma (on_node) or the heap; a missing one is skipped. */
static void release_buffers(struct dio_conn *c, bool on_node)
{
	void *p[] = { c->snd_buf, c->rcv_buf, c->sb };
	size_t len[] = { DIO_SNDBUF, DIO_RCVBUF, SEGS * sizeof(*c->sb) };

	for (unsigned i = 0; i < 3; i++) {
		if (on_node && p[i])
			numa_free(p[i], len[i]);
		else if (!on_node)
			free(p[i]);
	}
	c->snd_buf = c->rcv_buf = NULL;
	c->sb = NULL;
}

static void conn_free_buffers(struct dio_conn *c)
{
	release_buffers(c, c->bufs_on_node);
}

static int conn_alloc_buffers(struct dio_conn *c, char *err, size_t errlen)
{
	int node = c->port.socket;

	c->snd_buf = node_alloc(DIO_SNDBUF, node);
	c->rcv_buf = node_alloc(DIO_RCVBUF, node);
	c->sb = node_alloc(SEGS * sizeof(*c->sb), node); /* fresh pages: zero */
	c->bufs_on_node = c->snd_buf && c->rcv_buf && c->sb;
	if (c->bufs_on_node)
		return 0;
	release_buffers(c, true); /* what the node gave, if anything */
	c->snd_buf = malloc(DIO_SNDBUF);
	c->rcv_buf = malloc(DIO_RCVBUF);
	c->sb = calloc(SEGS, sizeof(*c->sb));
	if (!c->snd_buf || !c->rcv_buf || !c->sb) {
		snprintf(err, errlen, "out of memory for the dpdk: buffers");
		return -1;
	}
	return 0;
}

static struct dio_conn *conn_open(const struct dio_loc *loc, const struct dio_bind *b, bool listener,
				  double timeout_s, char *err, size_t errlen)
{
	struct dio_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, errlen, "out of memory");
		errno = ENOMEM;
		return NULL;
	}
	if (conn_init(c, loc, b, listener, err, errlen)) {
		free(c);
		errno = EIO;
		return NULL;
	}
	int why = EIO, r = dio_port_open(&c->port, loc->port, loc->mtu, timeout_s > 0 ? timeout_s : 1, b->cancel, err, errlen);
	if (r) {
		why = r == -ENETDOWN ? ETIMEDOUT : -r;
		goto err;
	}
	if (conn_alloc_buffers(c, err, errlen) || conn_start_state(c, err, errlen))
		goto err;
	pthread_attr_t attr;
	rte_cpuset_t cpus;
	pthread_attr_init(&attr);
	if (io_thread_cpus(c->port.socket, &cpus)) /* set before it starts: EAL reads it as it registers */
		pthread_attr_setaffinity_np(&attr, sizeof(cpus), &cpus);
	int created = pthread_create(&c->io, &attr, io_main, c);
	pthread_attr_destroy(&attr);
	if (created) {
		snprintf(err, errlen, "cannot start the dpdk: I/O thread");
		goto err;
	}
	c->io_started = true;

	/* wait for the handshake */
	uint64_t deadline = now_us() + (uint64_t)(timeout_s * 1e6);
	while (!atomic_load(&c->established) && !atomic_load(&c->err)) {
		if (b->cancel && atomic_load(b->cancel)) {
			snprintf(err, errlen, "stopped waiting for a peer on DPDK port %s", c->port.name);
			why = ECANCELED;
			goto err;
		}
		if (now_us() >= deadline) {
			why = ETIMEDOUT;
			/* oversize frames vanish without a trace (af_packet, switches): say so */
			snprintf(err, errlen, listener ? "no sender reached DPDK port %s within %.0f s (handshake frames are %u bytes: a smaller MTU on the path drops them; try mtu=)"
						       : "no receiver answered on DPDK port %s within %.0f s (handshake frames are %u bytes: a smaller MTU on the path drops them; try mtu=)",
				 c->port.name, timeout_s, (unsigned)(c->port.mtu + RTE_ETHER_HDR_LEN));
			goto err;
		}
		usleep(2000);
	}
	if (atomic_load(&c->err)) {
		const char *m = strstr(c->errmsg, "lost: ");
		snprintf(err, errlen, "%s", m ? m + 6 : c->errmsg);
		goto err;
	}
	tele_set(c, tele_conn);
	return c;
err:
	conn_free(c);
	errno = why;
	return NULL;
}

struct dio_conn *dio_connect(const struct dio_loc *loc, const struct dio_bind *b, double timeout_s,
			     char *err, size_t errlen)
{
	return conn_open(loc, b, false, timeout_s, err, errlen);
}

struct dio_conn *dio_accept(const struct dio_loc *loc, const struct dio_bind *b, double timeout_s,
			    char *err, size_t errlen)
{
	return conn_open(loc, b, true, timeout_s, err, errlen);
}

int dio_set_timeouts(struct dio_conn *c, double dead_s, double idle_s)
{
	if (!(dead_s >= 1 && dead_s <= 3600) || !(idle_s > 0))
		return -EINVAL;
	c->dead_s = dead_s;
	c->idle_s = idle_s;
	return 0;
}

static void deadline_ts(struct timespec *ts, double s)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	double t = ts->tv_sec + ts->tv_nsec * 1e-9 + s;
	ts->tv_sec = (time_t)t;
	ts->tv_nsec = (long)((t - (double)ts->tv_sec) * 1e9);
}

/*
 * Sleep on cv for up to ~10 ms until *watch moves from seen. The I/O thread
 * stores *watch, then looks at the flag; we set the flag, then look at
 * *watch (both sequentially consistent), so a wake-up cannot fall between.
 */
static void wait_a_little(struct dio_conn *c, pthread_cond_t *cv, atomic_bool *flag, _Atomic uint64_t *watch,
			  uint64_t seen)
{
	struct timespec ts;
	deadline_ts(&ts, 0.01);
	pthread_mutex_lock(&c->lock);
	atomic_store(flag, true);
	if (atomic_load(watch) == seen)
		pthread_cond_timedwait(cv, &c->lock, &ts);
	atomic_store(flag, false);
	pthread_mutex_unlock(&c->lock);
}

int dio_send(struct dio_conn *c, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint64_t last_una = atomic_load(&c->snd_una);
	uint64_t since = now_us();

	if (atomic_load(&c->fin_req))
		return -EPIPE;
	while (len) {
		int e = atomic_load(&c->err);
		if (e)
			return e;
		uint64_t end = atomic_load_explicit(&c->app_end, memory_order_relaxed);
		uint64_t una = atomic_load_explicit(&c->snd_una, memory_order_acquire);
		size_t room = DIO_SNDBUF - (size_t)(end - una);
		if (una != last_una) {
			last_una = una;
			since = now_us();
		}
		if (!room) {
			if (now_us() - since > (uint64_t)(c->idle_s * 1e6)) {
				fail(c, -ETIMEDOUT, "the peer took nothing for %.0f s", c->idle_s);
				continue;
			}
			wait_a_little(c, &c->cv_send, &c->send_waiting, &c->snd_una, una);
			continue;
		}
		size_t n = len < room ? len : room;
		ring_put(c->snd_buf, DIO_SNDBUF, end, p, n);
		atomic_store_explicit(&c->app_end, end + n, memory_order_release);
		p += n;
		len -= n;
	}
	return 0;
}

ssize_t dio_recv(struct dio_conn *c, void *buf, size_t len, double timeout_s)
{
	uint64_t start = now_us();
	double limit = timeout_s >= 0 ? timeout_s : c->idle_s;

	for (;;) {
		uint64_t rd = atomic_load_explicit(&c->rcv_read, memory_order_relaxed);
		uint64_t cum = atomic_load_explicit(&c->rcv_cum, memory_order_acquire);
		if (cum > rd) {
			size_t n = cum - rd < len ? (size_t)(cum - rd) : len;
			ring_get(c->rcv_buf, DIO_RCVBUF, rd, buf, n);
			atomic_store_explicit(&c->rcv_read, rd + n, memory_order_release);
			return (ssize_t)n;
		}
		if (atomic_load(&c->rcv_eof))
			return 0;
		int e = atomic_load(&c->err);
		if (e)
			return e;
		if ((double)(now_us() - start) > limit * 1e6) {
			if (timeout_s >= 0)
				return -ETIMEDOUT;
			fail(c, -ETIMEDOUT, "nothing received for %.0f s", limit);
			continue;
		}
		wait_a_little(c, &c->cv_recv, &c->recv_waiting, &c->rcv_cum, cum);
	}
}

int dio_shutdown(struct dio_conn *c, int how)
{
	if (how == SHUT_RDWR) {
		if (!atomic_load(&c->err)) {
			atomic_store(&c->stop, true); /* the I/O thread is the only one on the port */
			if (c->io_started) {
				pthread_join(c->io, NULL);
				c->io_started = false;
			}
			send_reset(c, "the sender aborted");
			fail(c, -ECONNABORTED, "aborted by this end");
		}
		return 0;
	}
	atomic_store(&c->fin_req, true);
	uint64_t last = atomic_load(&c->snd_una), since = now_us();
	while (!atomic_load(&c->fin_acked)) {
		int e = atomic_load(&c->err);
		if (e)
			return e;
		uint64_t una = atomic_load(&c->snd_una);
		if (una != last) {
			last = una;
			since = now_us();
		} else if (now_us() - since > (uint64_t)(c->dead_s * 1e6)) {
			fail(c, -ETIMEDOUT, "the end of the stream was not acknowledged for %.0f s", c->dead_s);
			return -ETIMEDOUT;
		}
		wait_a_little(c, &c->cv_send, &c->send_waiting, &c->snd_una, una);
	}
	return 0;
}

const char *dio_error(const struct dio_conn *c)
{
	return atomic_load(&((struct dio_conn *)c)->err) ? c->errmsg : NULL;
}

const char *dio_peer(const struct dio_conn *c)
{
	return c->peer_name;
}

void dio_sample(struct dio_conn *c, struct eng_link *out)
{
	double t = (double)now_us() * 1e-6;

	memset(out, 0, sizeof(*out));
	out->sent = atomic_load(&c->app_end);
	out->acked = atomic_load(&c->snd_una);
	out->queued = out->sent - out->acked;
	uint64_t data = atomic_load(&c->st_data_bytes) - atomic_load(&c->st_retx_bytes);
	out->unsent = out->sent > data ? out->sent - data : 0;
	out->delivery_bps = get_dbl(&c->st_bw);
	out->rtt_ms = out->min_rtt_ms = get_dbl(&c->st_rtt) / 1000;
	out->app_limited = out->unsent == 0;
	pthread_mutex_lock(&c->slock);
	if (c->prev_t > 0 && t > c->prev_t) {
		out->rate_bps = (double)(out->acked - c->prev_acked) * 8 / (t - c->prev_t);
		double a = (t - c->prev_t) / 1.0;
		if (a > 1)
			a = 1;
		c->smooth = c->smooth ? c->smooth + a * (out->rate_bps - c->smooth) : out->rate_bps;
	}
	out->rate_smooth_bps = c->smooth;
	c->prev_acked = out->acked;
	c->prev_t = t;
	pthread_mutex_unlock(&c->slock);
}

void dio_stats(struct dio_conn *c, struct dio_stats *s)
{
	struct rte_eth_stats es;

	memset(s, 0, sizeof(*s));
	s->frames_tx = atomic_load(&c->st_frames_tx);
	s->frames_rx = atomic_load(&c->st_frames_rx);
	s->data_frames_tx = atomic_load(&c->st_data_frames);
	s->data_bytes_tx = atomic_load(&c->st_data_bytes);
	s->retx_frames = atomic_load(&c->st_retx_frames);
	s->retx_bytes = atomic_load(&c->st_retx_bytes);
	s->tx_copied_bytes = atomic_load(&c->st_tx_copied);
	s->rto_events = atomic_load(&c->st_rto);
	s->loss_probes = atomic_load(&c->st_probes);
	s->loss_rounds = c->pace.loss_rounds;
	s->dropped_injected = atomic_load(&c->st_dropped);
	s->forged_frames = atomic_load(&c->st_forged);
	s->acked_bytes = atomic_load(&c->snd_una);
	s->received_bytes = atomic_load(&c->rcv_cum);
	s->mtu = c->port.mtu;
	s->seconds = (double)(now_us() - c->t0_us) * 1e-6;
	s->pacing_bps = get_dbl(&c->st_pacing);
	s->bw_bps = get_dbl(&c->st_bw);
	s->min_rtt_us = get_dbl(&c->st_rtt);
	snprintf(s->port, sizeof(s->port), "%s", c->port.name);
	s->port_node = c->port.socket == SOCKET_ID_ANY ? -1 : c->port.socket;
	s->buffers_node = c->bufs_on_node ? s->port_node : -1;
	if (!rte_eth_stats_get(c->port.id, &es)) {
		s->port_ipackets = es.ipackets;
		s->port_opackets = es.opackets;
		s->port_ibytes = es.ibytes;
		s->port_obytes = es.obytes;
		s->port_imissed = es.imissed;
		s->port_ierrors = es.ierrors;
		s->port_oerrors = es.oerrors;
	}
}

void dio_close(struct dio_conn *c)
{
	if (!c)
		return;
	/* linger: what we sent (a control reply, the end of a stream) should arrive */
	uint64_t until = now_us() + (uint64_t)(LINGER_S * 1e6);
	while (!atomic_load(&c->err) && atomic_load(&c->snd_una) < atomic_load(&c->app_end) &&
	       now_us() < until)
		wait_a_little(c, &c->cv_send, &c->send_waiting, &c->snd_una, atomic_load(&c->snd_una));
	conn_free(c);
}

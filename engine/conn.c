/*
 * The table behind engine/conn.h: one set of adapters per transport. The
 * adapters only translate; every behaviour (timeouts, dead peers, rate
 * estimates) belongs to the transport itself.
 */
#include "engine/clock.h"
#include "conn.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpdk_io/dio.h"
#include "dpdk_io/port.h"
#include "tcp.h"

struct conn_ops {
	const char *name;
	int (*send)(void *t, const void *buf, size_t len);
	ssize_t (*recv)(void *t, void *buf, size_t len, double timeout_s);
	int (*shutdown)(void *t, int how);
	const char *(*error)(const void *t);
	const char *(*peer)(const void *t);
	void (*sample)(void *t, struct eng_link *out);
	json_object *(*stats)(void *t);
	int (*unsent_limit)(void *t, int bytes);
	int (*idle_limit)(void *t, double idle_s);
	void (*close)(void *t);
};

struct eng_conn {
	const struct conn_ops *ops;
	void *t;
};

/* ---- tcp: ------------------------------------------------------------------- */

static int tcp_send(void *t, const void *b, size_t n) { return eng_tcp_send(t, b, n); }
static ssize_t tcp_recv(void *t, void *b, size_t n, double to) { return eng_tcp_recv(t, b, n, to); }
static int tcp_shutdown(void *t, int how) { return eng_tcp_shutdown(t, how); }
static const char *tcp_error(const void *t) { return eng_tcp_error(t); }
static const char *tcp_peer(const void *t) { return eng_tcp_peer(t); }
static void tcp_sample(void *t, struct eng_link *o) { eng_tcp_sample(t, o); }
static int tcp_unsent(void *t, int bytes) { return eng_tcp_set_unsent_limit(t, bytes); }
static int tcp_idle(void *t, double s) { return eng_tcp_set_timeouts(t, ENG_TCP_DEAD_S, s); }
static void tcp_close(void *t) { eng_tcp_close(t); }

static const struct conn_ops tcp_ops = {
	"tcp", tcp_send, tcp_recv, tcp_shutdown, tcp_error, tcp_peer, tcp_sample, NULL, tcp_unsent, tcp_idle, tcp_close,
};

/* ---- dpdk: ------------------------------------------------------------------ */

static int dpdk_send(void *t, const void *b, size_t n) { return dio_send(t, b, n); }
static ssize_t dpdk_recv(void *t, void *b, size_t n, double to) { return dio_recv(t, b, n, to); }
static int dpdk_shutdown(void *t, int how) { return dio_shutdown(t, how); }
static const char *dpdk_error(const void *t) { return dio_error(t); }
static const char *dpdk_peer(const void *t) { return dio_peer(t); }
static void dpdk_sample(void *t, struct eng_link *o) { dio_sample(t, o); }
static int dpdk_unsent(void *t, int bytes) { (void)t, (void)bytes; return 0; }
static int dpdk_idle(void *t, double s) { return dio_set_timeouts(t, DIO_DEAD_S, s); }
static void dpdk_close(void *t) { dio_close(t); }

static json_object *dpdk_stats(void *t)
{
	struct dio_stats s;
	json_object *o = json_object_new_object();

	dio_stats(t, &s);
#define U(f) json_object_object_add(o, #f, json_object_new_int64((int64_t)s.f))
#define D(f) json_object_object_add(o, #f, json_object_new_double(s.f))
	json_object_object_add(o, "port", json_object_new_string(s.port));
	json_object_object_add(o, "port_node", json_object_new_int(s.port_node));
	json_object_object_add(o, "buffers_node", json_object_new_int(s.buffers_node));
	U(mtu); U(frames_tx); U(frames_rx); U(data_frames_tx); U(data_bytes_tx); U(retx_frames);
	U(retx_bytes); U(tx_copied_bytes); U(rto_events); U(loss_probes); U(loss_rounds); U(dropped_injected); U(forged_frames); U(acked_bytes);
	U(received_bytes); U(port_ipackets); U(port_opackets); U(port_ibytes); U(port_obytes);
	U(port_imissed); U(port_ierrors); U(port_oerrors);
	D(seconds); D(pacing_bps); D(bw_bps); D(min_rtt_us);
#undef U
#undef D
	return o;
}

static const struct conn_ops dpdk_ops = {
	"dpdk", dpdk_send, dpdk_recv, dpdk_shutdown, dpdk_error, dpdk_peer, dpdk_sample, dpdk_stats, dpdk_unsent,
	dpdk_idle, dpdk_close,
};

/* ---- the table -------------------------------------------------------------- */

bool eng_conn_is_remote(const char *loc)
{
	return !strncmp(loc, "tcp:", 4) || !strncmp(loc, "dpdk:", 5);
}

static struct eng_conn *open_conn(const char *loc, const struct eng_conn_bind *b, bool listen,
				  double timeout_s, char *err, size_t errlen)
{
	struct eng_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (!strncmp(loc, "tcp:", 4)) {
		char host[256], port[32];
		c->ops = &tcp_ops;
		if (!eng_tcp_parse(loc, host, sizeof(host), port, sizeof(port), err, errlen))
			c->t = listen ? eng_tcp_accept(host, port, timeout_s, err, errlen)
				      : eng_tcp_connect(host, port, timeout_s, err, errlen);
	} else if (!strncmp(loc, "dpdk:", 5)) {
		struct dio_loc dl;
		struct dio_bind db = { .key = b ? b->key : NULL, .cancel = b ? b->cancel : NULL };
		c->ops = &dpdk_ops;
		if (b)
			memcpy(db.base_id, b->base_id, sizeof(db.base_id));
		if (!dio_parse(loc, &dl, err, errlen))
			c->t = listen ? dio_accept(&dl, &db, timeout_s, err, errlen)
				      : dio_connect(&dl, &db, timeout_s, err, errlen);
	} else {
		snprintf(err, errlen, "'%s' is not a network location (tcp:HOST:PORT or dpdk:PORT)", loc);
	}
	if (!c->t) {
		free(c);
		return NULL;
	}
	return c;
}

struct eng_conn *eng_conn_connect(const char *loc, const struct eng_conn_bind *b, double timeout_s,
				  char *err, size_t errlen)
{
	return open_conn(loc, b, false, timeout_s, err, errlen);
}

struct eng_conn *eng_conn_accept(const char *loc, const struct eng_conn_bind *b, double timeout_s,
				 char *err, size_t errlen)
{
	return open_conn(loc, b, true, timeout_s, err, errlen);
}

struct eng_conn_listener {
	struct eng_tcp_listener *tcp; /* tcp: */
	bool dpdk;                    /* dpdk: the port itself, one client at a time */
	struct dio_loc dl;
	struct dio_bind db;
	uint8_t key[32];
	atomic_bool stop;
};

static struct eng_conn_listener *listen_dpdk(const char *loc, const struct eng_conn_bind *b, char *err,
					     size_t errlen)
{
	struct eng_conn_listener *l = calloc(1, sizeof(*l));
	uint16_t id;

	if (!l) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	/* a port EAL does not know fails here, once, not at every accept */
	if (dio_parse(loc, &l->dl, err, errlen) || dio_port_find(l->dl.port, &id, err, errlen)) {
		free(l);
		return NULL;
	}
	l->dpdk = true;
	if (b && b->key) {
		memcpy(l->key, b->key, sizeof(l->key));
		l->db.key = l->key;
	}
	if (b)
		memcpy(l->db.base_id, b->base_id, sizeof(l->db.base_id));
	l->db.cancel = &l->stop;
	return l;
}

struct eng_conn_listener *eng_conn_listen(const char *loc, const struct eng_conn_bind *b, char *err, size_t errlen)
{
	char host[256], port[32];
	struct eng_conn_listener *l;

	if (!strncmp(loc, "dpdk:", 5))
		return listen_dpdk(loc, b, err, errlen);
	if (strncmp(loc, "tcp:", 4)) {
		snprintf(err, errlen, "'%s': a service listens on tcp:ADDR:PORT or dpdk:PORT", loc);
		return NULL;
	}
	/* port 0 (any free one) is for listeners only, which eng_tcp_parse does not know */
	size_t ll = strlen(loc);
	bool any = ll > 6 && !strcmp(loc + ll - 2, ":0");
	char fixed[300];
	snprintf(fixed, sizeof(fixed), "%.*s%s", (int)(any ? ll - 1 : ll), loc, any ? "1" : "");
	if (eng_tcp_parse(fixed, host, sizeof(host), port, sizeof(port), err, errlen))
		return NULL;
	if (any)
		strcpy(port, "0");
	if (!(l = calloc(1, sizeof(*l)))) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (!(l->tcp = eng_tcp_listen(host, port, err, errlen))) {
		free(l);
		return NULL;
	}
	return l;
}

struct eng_conn *eng_conn_listener_accept(struct eng_conn_listener *l, double timeout_s, bool *timed_out,
					  char *err, size_t errlen)
{
	struct eng_conn *c = calloc(1, sizeof(*c));

	*timed_out = false;
	if (!c) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	err[0] = 0;
	if (l->dpdk) {
		c->ops = &dpdk_ops;
		if (!atomic_load(&l->stop))
			c->t = dio_accept(&l->dl, &l->db, timeout_s, err, errlen);
		*timed_out = !c->t && (atomic_load(&l->stop) || errno == ETIMEDOUT || errno == ECANCELED);
	} else {
		c->ops = &tcp_ops;
		c->t = eng_tcp_listener_accept(l->tcp, timeout_s, err, errlen);
		*timed_out = !c->t && !strncmp(err, "no connection", 13);
	}
	if (!c->t) {
		free(c);
		return NULL;
	}
	return c;
}

bool eng_conn_listener_serial(const struct eng_conn_listener *l)
{
	return l->dpdk;
}

void eng_conn_listener_stop(struct eng_conn_listener *l)
{
	atomic_store(&l->stop, true);
}

int eng_conn_listener_port(const struct eng_conn_listener *l)
{
	return l->dpdk ? -1 : eng_tcp_listener_port(l->tcp);
}

void eng_conn_listener_close(struct eng_conn_listener *l)
{
	if (!l)
		return;
	if (l->tcp)
		eng_tcp_listener_close(l->tcp);
	explicit_bzero(l->key, sizeof(l->key));
	free(l);
}

int eng_conn_send(struct eng_conn *c, const void *buf, size_t len)
{
	return c->ops->send(c->t, buf, len);
}

ssize_t eng_conn_recv(struct eng_conn *c, void *buf, size_t len, double timeout_s)
{
	return c->ops->recv(c->t, buf, len, timeout_s);
}

int eng_conn_recv_all(struct eng_conn *c, void *buf, size_t len, double timeout_s)
{
	uint8_t *p = buf;
	double deadline = eng_mono_s() + timeout_s;
	while (len) {
		double left = timeout_s < 0 ? -1 : deadline - eng_mono_s();
		ssize_t n = c->ops->recv(c->t, p, len, timeout_s < 0 ? -1 : left > 0 ? left : 0);
		if (n < 0)
			return (int)n;
		if (n == 0)
			return -EPIPE;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int eng_conn_shutdown(struct eng_conn *c, int how)
{
	return c->ops->shutdown(c->t, how);
}

const char *eng_conn_error(const struct eng_conn *c)
{
	return c->ops->error(c->t);
}

const char *eng_conn_peer(const struct eng_conn *c)
{
	return c->ops->peer(c->t);
}

const char *eng_conn_transport(const struct eng_conn *c)
{
	return c->ops->name;
}

int eng_conn_socket(const struct eng_conn *c)
{
	return c->ops == &tcp_ops ? eng_tcp_fd(c->t) : -1;
}

void eng_conn_sample(struct eng_conn *c, struct eng_link *out)
{
	c->ops->sample(c->t, out);
}

json_object *eng_conn_stats_json(struct eng_conn *c)
{
	return c->ops->stats ? c->ops->stats(c->t) : NULL;
}

int eng_conn_set_unsent_limit(struct eng_conn *c, int bytes)
{
	return c->ops->unsent_limit(c->t, bytes);
}

int eng_conn_set_idle_limit(struct eng_conn *c, double idle_s)
{
	return c->ops->idle_limit(c->t, idle_s);
}

void eng_conn_close(struct eng_conn *c)
{
	if (!c)
		return;
	c->ops->close(c->t);
	free(c);
}

static int sink_write(void *ctx, const void *buf, size_t len)
{
	return eng_conn_send(ctx, buf, len);
}

static ssize_t source_read(void *ctx, void *buf, size_t len)
{
	return eng_conn_recv(ctx, buf, len, -1);
}

struct eng_sink eng_conn_sink(struct eng_conn *c)
{
	return (struct eng_sink){ .write = sink_write, .ctx = c };
}

struct eng_source eng_conn_source(struct eng_conn *c)
{
	return (struct eng_source){ .read = source_read, .ctx = c };
}

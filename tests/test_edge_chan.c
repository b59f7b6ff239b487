/*
 * The chunk service's sealed channel (edge/chan.c) over real loopback TCP:
 * early frames sent with the client's hello arrive first and in order, then
 * the session's; their limits; a client without the key is refused at its
 * early frames; and a recorded hello with its early frames, replayed by a
 * host without the key, is answered (sealed for a session it cannot read)
 * but its next frame fails; a relay that cuts an early frame from the flight
 * is caught by the client (the service's MAC covers the count it took).
 */
#include "testlib.h"

#include "codecs/codecs.h"
#include "edge/chan.h"
#include "engine/conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

#define BYE 0xFF

/* A server that answers each message with type + 1 and the same payload, until BYE. */
struct echo {
	struct eng_conn_listener *l;
	uint8_t key[32];
	unsigned msgs;
	uint8_t types[80];
	int rc;
	char err[256];
	pthread_t th;
};

static void *echo_main(void *arg)
{
	struct echo *e = arg;
	bool timed_out;
	uint8_t *buf = malloc(EDG_CHAN_MAX_PAYLOAD);
	struct eng_conn *c = eng_conn_listener_accept(e->l, 10, &timed_out, e->err, sizeof(e->err));
	struct edg_chan *ch = c ? edg_chan_server(c, e->key, 5, e->err, sizeof(e->err)) : NULL;

	e->rc = -1;
	for (;;) {
		uint8_t type;
		uint32_t len;
		if (!ch || !buf)
			break;
		int r = edg_chan_recv(ch, &type, buf, EDG_CHAN_MAX_PAYLOAD, &len, 5);
		if (r || type == BYE) {
			e->rc = r;
			break;
		}
		if (e->msgs < sizeof(e->types))
			e->types[e->msgs] = type;
		e->msgs++;
		if (edg_chan_send(ch, (uint8_t)(type + 1), buf, len))
			break;
	}
	edg_chan_free(ch);
	eng_conn_close(c);
	free(buf);
	return NULL;
}

static void echo_start(struct echo *e, const uint8_t key[32], char *loc, size_t loclen)
{
	char err[256];

	memset(e, 0, sizeof(*e));
	memcpy(e->key, key, 32);
	e->l = eng_conn_listen("tcp:127.0.0.1:0", NULL, err, sizeof(err));
	assert_non_null(e->l);
	snprintf(loc, loclen, "tcp:127.0.0.1:%d", eng_conn_listener_port(e->l));
	assert_int_equal(pthread_create(&e->th, NULL, echo_main, e), 0);
}

static void echo_stop(struct echo *e)
{
	pthread_join(e->th, NULL);
	eng_conn_listener_close(e->l);
}

static void test_early_frames(void **state)
{
	uint8_t key[32], *payload = malloc(EDG_CHAN_EARLY_MAX), *back = malloc(EDG_CHAN_MAX_PAYLOAD);
	const uint32_t sizes[] = { 0, 10, 1000, 20000, 3000 }; /* the last one after the hello */
	char loc[64], err[256];
	struct echo e;

	(void)state;
	assert_non_null(payload);
	assert_non_null(back);
	test_fill_random(key, sizeof(key));
	test_fill_random(payload, EDG_CHAN_EARLY_MAX);
	echo_start(&e, key, loc, sizeof(loc));
	struct eng_conn *c = eng_conn_connect(loc, NULL, 5, err, sizeof(err));
	assert_non_null(c);
	struct edg_chan *ch = edg_chan_client_start(c, key, err, sizeof(err));
	assert_non_null(ch);
	for (unsigned k = 0; k < 4; k++)
		assert_int_equal(edg_chan_send(ch, (uint8_t)(10 + k), payload + k, sizes[k]), 0);
	assert_int_equal(edg_chan_client_finish(ch, key, 5, err, sizeof(err)), 0);
	assert_int_equal(edg_chan_send(ch, 14, payload + 4, sizes[4]), 0);
	for (unsigned k = 0; k < 5; k++) {
		uint8_t type;
		uint32_t len;
		assert_int_equal(edg_chan_recv(ch, &type, back, EDG_CHAN_MAX_PAYLOAD, &len, 5), 0);
		assert_int_equal(type, 11 + k);
		assert_int_equal(len, sizes[k]);
		if (len)
			assert_memory_equal(back, payload + k, len);
	}
	assert_int_equal(edg_chan_send(ch, BYE, NULL, 0), 0);
	echo_stop(&e);
	assert_int_equal(e.rc, 0);
	assert_int_equal(e.msgs, 5);
	for (unsigned k = 0; k < 5; k++)
		assert_int_equal(e.types[k], 10 + k);
	edg_chan_free(ch);
	eng_conn_close(c);
	free(payload);
	free(back);
}

static void test_early_limits(void **state)
{
	uint8_t key[32], *payload = calloc(1, EDG_CHAN_EARLY_MAX + 1);
	char loc[64], err[256];
	struct echo e;

	(void)state;
	assert_non_null(payload);
	test_fill_random(key, sizeof(key));
	echo_start(&e, key, loc, sizeof(loc));
	struct eng_conn *c = eng_conn_connect(loc, NULL, 5, err, sizeof(err));
	assert_non_null(c);
	struct edg_chan *ch = edg_chan_client_start(c, key, err, sizeof(err));
	assert_non_null(ch);
	/* more bytes than an early flight holds: refused, nothing queued */
	assert_int_equal(edg_chan_send(ch, 1, payload, EDG_CHAN_EARLY_MAX + 1), -EMSGSIZE);
	for (unsigned k = 0; k < EDG_CHAN_EARLY_FRAMES; k++)
		assert_int_equal(edg_chan_send(ch, 1, payload, 8), 0);
	assert_int_equal(edg_chan_send(ch, 1, payload, 8), -EMSGSIZE);
	assert_int_equal(edg_chan_client_finish(ch, key, 5, err, sizeof(err)), 0);
	for (unsigned k = 0; k < EDG_CHAN_EARLY_FRAMES; k++) {
		uint8_t type;
		uint32_t len;
		assert_int_equal(edg_chan_recv(ch, &type, payload, EDG_CHAN_EARLY_MAX, &len, 5), 0);
		assert_int_equal(type, 2);
		assert_int_equal(len, 8);
	}
	assert_int_equal(edg_chan_send(ch, BYE, NULL, 0), 0);
	echo_stop(&e);
	assert_int_equal(e.rc, 0);
	assert_int_equal(e.msgs, EDG_CHAN_EARLY_FRAMES);
	edg_chan_free(ch);
	eng_conn_close(c);
	free(payload);
}

static void test_wrong_key(void **state)
{
	uint8_t key[32], other[32];
	char loc[64], err[256];
	struct echo e;

	(void)state;
	test_fill_random(key, sizeof(key));
	test_fill_random(other, sizeof(other));
	echo_start(&e, key, loc, sizeof(loc));
	struct eng_conn *c = eng_conn_connect(loc, NULL, 5, err, sizeof(err));
	assert_non_null(c);
	struct edg_chan *ch = edg_chan_client_start(c, other, err, sizeof(err));
	assert_non_null(ch);
	assert_int_equal(edg_chan_send(ch, 1, "recipe?", 7), 0);
	assert_int_not_equal(edg_chan_client_finish(ch, other, 5, err, sizeof(err)), 0);
	edg_chan_free(ch);
	eng_conn_close(c);
	echo_stop(&e);
	assert_int_equal(e.msgs, 0);
	assert_non_null(strstr(e.err, "does not hold our key"));
}

/* ---- replay ------------------------------------------------------------------------ */

struct early_client {
	char loc[64];
	uint8_t key[32];
	int ret;
};

/* A real client: hello with two early frames to whoever listens at loc. */
static void *early_client_main(void *arg)
{
	struct early_client *ec = arg;
	char err[256];
	struct eng_conn *c = eng_conn_connect(ec->loc, NULL, 5, err, sizeof(err));
	struct edg_chan *ch = c ? edg_chan_client_start(c, ec->key, err, sizeof(err)) : NULL;

	ec->ret = -1;
	if (ch && !edg_chan_send(ch, 21, "first", 5) && !edg_chan_send(ch, 22, "second", 6))
		ec->ret = edg_chan_client_finish(ch, ec->key, 2, err, sizeof(err));
	edg_chan_free(ch);
	eng_conn_close(c);
	return NULL;
}

static int raw_listen(uint16_t *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 1), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

static int raw_connect(const char *loc)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	a.sin_port = htons((uint16_t)atoi(strrchr(loc, ':') + 1));
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	return fd;
}

/* Everything fd sends until it is quiet for quiet_ms. */
static size_t read_quiet(int fd, uint8_t *buf, size_t cap, int quiet_ms)
{
	size_t n = 0;
	struct pollfd p = { .fd = fd, .events = POLLIN };

	while (n < cap && poll(&p, 1, quiet_ms) == 1) {
		ssize_t r = read(fd, buf + n, cap - n);
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	return n;
}

/*
 * A real client (a thread, t) connected to a listener of ours: what it sent, its hello and two
 * early frames, in rec (*n bytes); it waits on the returned socket for the service's answer.
 */
static int record_client(struct early_client *ec, const uint8_t key[32], pthread_t *t, uint8_t *rec, size_t cap,
			 size_t *n)
{
	uint16_t port;
	int lfd = raw_listen(&port);

	memset(ec, 0, sizeof(*ec));
	snprintf(ec->loc, sizeof(ec->loc), "tcp:127.0.0.1:%u", port);
	memcpy(ec->key, key, 32);
	assert_int_equal(pthread_create(t, NULL, early_client_main, ec), 0);
	int fd = accept(lfd, NULL, NULL);
	assert_true(fd >= 0);
	close(lfd);
	*n = read_quiet(fd, rec, cap, 300);
	return fd;
}

static void test_replayed_hello(void **state)
{
	uint8_t key[32], rec[4096], got[4096];
	char loc[64];
	struct early_client ec;
	struct echo e;
	pthread_t t;
	size_t n;

	(void)state;
	test_fill_random(key, sizeof(key));
	close(record_client(&ec, key, &t, rec, sizeof(rec), &n));
	pthread_join(t, NULL);
	assert_int_not_equal(ec.ret, 0); /* nobody answered it */
	assert_true(n > 5 + 32 + 1 + 2 * (4 + 1 + 16));

	/* play it to the real server without the key */
	echo_start(&e, key, loc, sizeof(loc));
	int fd = raw_connect(loc);
	assert_int_equal(write(fd, rec, n), (ssize_t)n);
	size_t m = read_quiet(fd, got, sizeof(got), 500);
	/* answered: the server's hello (69 bytes) and two sealed echoes, for a session the replayer lacks */
	assert_true(m >= 69 + 2 * (4 + 1 + 16));
	assert_memory_equal(got, "HOCH", 4);
	/* its next frame (the early ones again, as session frames) fails and ends the session */
	assert_int_equal(write(fd, rec + 5 + 32 + 1, n - (5 + 32 + 1)), (ssize_t)(n - (5 + 32 + 1)));
	echo_stop(&e);
	close(fd);
	assert_int_equal(e.msgs, 2);
	assert_int_equal(e.types[0], 21);
	assert_int_equal(e.types[1], 22);
	assert_int_equal(e.rc, -EBADMSG);
}

/* A relay that drops the last early frame and lowers the count: the client must notice. */
static void test_cut_early_frame(void **state)
{
	uint8_t key[32], rec[4096], reply[69];
	char loc[64];
	struct early_client ec;
	struct echo e;
	pthread_t t;
	size_t n;

	(void)state;
	test_fill_random(key, sizeof(key));
	echo_start(&e, key, loc, sizeof(loc));
	int cfd = record_client(&ec, key, &t, rec, sizeof(rec), &n);
	const size_t hello = 5 + 32 + 1, first = 4 + 1 + 5 + 16; /* "first": type + 5 bytes, sealed */
	assert_true(n == hello + first + 4 + 1 + 6 + 16 && rec[hello - 1] == 2);
	rec[hello - 1] = 1; /* one frame said, one sent: both authentic, the second cut */
	int sfd = raw_connect(loc);
	assert_int_equal(write(sfd, rec, hello + first), (ssize_t)(hello + first));
	assert_int_equal(read_quiet(sfd, reply, sizeof(reply), 500), sizeof(reply));
	assert_int_equal(write(cfd, reply, sizeof(reply)), (ssize_t)sizeof(reply));
	pthread_join(t, NULL);
	assert_int_not_equal(ec.ret, 0); /* the service's MAC covers the count it took */
	close(cfd);
	close(sfd);
	echo_stop(&e);
	assert_int_equal(e.msgs, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_early_frames),
		cmocka_unit_test(test_early_limits),
		cmocka_unit_test(test_wrong_key),
		cmocka_unit_test(test_replayed_hello),
		cmocka_unit_test(test_cut_early_frame),
	};

	test_seed();
	return cmocka_run_group_tests(tests, NULL, NULL);
}

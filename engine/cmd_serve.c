/*
 * handoff-engine serve: an edge's chunk cache as a service other edges fetch
 * from (edge/xfer.h over edge/chan.h). Long-running; SIGTERM or SIGINT stops
 * it cleanly: no new client is taken, the ones being served are cut off
 * (their fetches fail and keep what had arrived), the cache is closed. Up to
 * CLIENTS_MAX clients are served at once over tcp:, a thread each: a
 * destination fetching from several edges, and several destinations, share a
 * service. Over dpdk: the port carries one client at a time (conn.h), so
 * clients are served in turn; each client reaches it through a port of its
 * own, so the address is not told to the coordinator.
 */
#include "cli.h"
#include "cli_coord.h"
#include "conn.h"
#include "edge/chan.h"
#include "edge/xfer.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { S_CACHE, S_LISTEN, S_KEY, S_ADVERTISE, S_COORD, S_AUTH, S_EDGE };

static const struct cli_opt serve_opts[] = {
	[S_CACHE] = { "cache", 0, "DIR", true, "the cache to serve" },
	[S_LISTEN] = { "listen", 0, "tcp:ADDR:PORT|dpdk:PORT", true,
		       "where to take clients (tcp: PORT 0: any free port, printed; dpdk: a port given to EAL before --)" },
	[S_KEY] = { "key", 0, "FILE", true, "the key clients must hold (handoff-engine keygen)" },
	[S_ADVERTISE] = { "advertise", 0, "tcp:HOST:PORT", false,
			  "where other edges reach this service, told to the coordinator (default: the listen "
			  "address with the port taken)" },
	COORD_OPTS(S_COORD, S_AUTH, S_EDGE),
	{ 0 },
};

#define HANDSHAKE_S 10.0
#define CLIENTS_MAX 32 /* served at once; more wait in the listen queue */
#define EAL_MB 256     /* a dpdk: port's packet buffers and rings */

struct server;

struct client {
	struct server *sv;
	struct edg_store *s;
	const uint8_t *key;
	struct eng_conn *c;
	pthread_t th;
	atomic_bool done;  /* its thread ended: join it and reuse the slot */
	bool used;
};

struct server {
	struct eng_conn_listener *l;
	pthread_mutex_t lock;
	pthread_cond_t freed;
	struct client clients[CLIENTS_MAX]; /* the ones being served, to cut off on a signal */
	unsigned busy;
	atomic_bool stop;
	sigset_t sigs;
	int signo;
};

/* Waits for SIGTERM/SIGINT (blocked everywhere else) and stops the loop. */
static void *signal_thread(void *arg)
{
	struct server *sv = arg;
	int sig;

	if (sigwait(&sv->sigs, &sig))
		return NULL;
	sv->signo = sig;
	atomic_store(&sv->stop, true);
	eng_conn_listener_stop(sv->l);
	pthread_mutex_lock(&sv->lock);
	for (unsigned i = 0; i < CLIENTS_MAX; i++)
		if (sv->clients[i].used && !atomic_load(&sv->clients[i].done))
			eng_conn_shutdown(sv->clients[i].c, SHUT_RDWR);
	pthread_cond_broadcast(&sv->freed);
	pthread_mutex_unlock(&sv->lock);
	return NULL;
}

static void *serve_one(void *arg)
{
	struct client *cl = arg;
	struct server *sv = cl->sv;
	char err[512] = "";
	struct edg_serve_stats st = { 0 };
	const char *peer = eng_conn_peer(cl->c);
	int r = -1;

	struct edg_chan *ch = atomic_load(&sv->stop) ? NULL : edg_chan_server(cl->c, cl->key, HANDSHAKE_S, err, sizeof(err));
	if (ch)
		r = edg_serve_session(cl->s, ch, &st, err, sizeof(err));
	if (r && !ch)
		fprintf(stderr, "serve: %s: %s\n", peer, atomic_load(&sv->stop) ? "cut off by the shutdown" : err);
	else if (r) /* a fetch cuts off the copies it no longer needs: what was served still counts */
		fprintf(stderr, "serve: %s: %s after %llu recipes, %llu chunks (%.1f MB sent)\n", peer,
			atomic_load(&sv->stop) ? "cut off by the shutdown" : err, (unsigned long long)st.recipes,
			(unsigned long long)st.chunks_sent, st.bytes_sent / 1e6);
	else
		fprintf(stderr, "serve: %s: %llu recipes, %llu chunks (%.1f MB, %.1f MB sent), %llu missing\n", peer,
			(unsigned long long)st.recipes, (unsigned long long)st.chunks_sent, st.bytes_raw / 1e6,
			st.bytes_sent / 1e6, (unsigned long long)st.chunks_missing);
	edg_chan_free(ch);
	pthread_mutex_lock(&sv->lock);
	atomic_store(&cl->done, true);
	pthread_cond_broadcast(&sv->freed);
	pthread_mutex_unlock(&sv->lock);
	return NULL;
}

/* Joins the clients that ended (all of them with wait_all); under sv->lock. */
static void reap(struct server *sv, bool wait_all)
{
	for (;;) {
		for (unsigned i = 0; i < CLIENTS_MAX; i++) {
			struct client *cl = &sv->clients[i];
			if (cl->used && atomic_load(&cl->done)) {
				pthread_join(cl->th, NULL);
				eng_conn_close(cl->c);
				cl->used = false;
				sv->busy--;
			}
		}
		if (!sv->busy || (!wait_all && sv->busy < CLIENTS_MAX))
			return;
		pthread_cond_wait(&sv->freed, &sv->lock);
	}
}

/* A thread for the new client; 0, or -1 when none could start (the client is dropped). */
static int start_client(struct server *sv, struct edg_store *s, struct eng_conn *c, const uint8_t *key)
{
	int r = -1;

	pthread_mutex_lock(&sv->lock);
	reap(sv, false);
	for (unsigned i = 0; i < CLIENTS_MAX; i++) {
		struct client *cl = &sv->clients[i];
		if (cl->used)
			continue;
		*cl = (struct client){ .sv = sv, .s = s, .key = key, .c = c, .used = true };
		if (pthread_create(&cl->th, NULL, serve_one, cl)) {
			cl->used = false;
			break;
		}
		sv->busy++;
		r = 0;
		break;
	}
	pthread_mutex_unlock(&sv->lock);
	return r;
}

/* Tell the coordinator where other edges reach this service. */
static int advertise(struct edg_coord *coord, const char *loc, const char *listen, int port)
{
	char where[300], err[512];

	if (!loc) {
		/* tcp:ADDR:PORT with the port taken; a wildcard address tells others nothing */
		const char *colon = strrchr(listen, ':');
		int n = colon ? (int)(colon - listen) : 0;
		if (!colon || !strncmp(listen, "tcp:0.0.0.0:", 12) || !strncmp(listen, "tcp::", 5) ||
		    !strncmp(listen, "tcp:[::]:", 9)) {
			cli_error("serve: listening on %s: say where other edges reach it (--advertise tcp:HOST:PORT)", listen);
			return -1;
		}
		snprintf(where, sizeof(where), "%.*s:%d", n, listen, port);
		loc = where;
	}
	if (strncmp(loc, "tcp:", 4)) { /* a dpdk: port means nothing on another host */
		cli_error("serve: --advertise wants tcp:HOST:PORT, not '%s'", loc);
		return -1;
	}
	if (edg_coord_advertise(coord, loc, err, sizeof(err))) {
		cli_error("serve: %s", err);
		return -1;
	}
	fprintf(stderr, "serve: told the coordinator other edges reach this cache at %s\n", loc);
	return 0;
}

static int serve_run(const struct cli_cmd *cmd, const char *const *val)
{
	CLI_KEY(key);
	char err[512];
	struct server sv = { .lock = PTHREAD_MUTEX_INITIALIZER, .freed = PTHREAD_COND_INITIALIZER };
	pthread_t sig_thread;
	bool dpdk = !strncmp(val[S_LISTEN], "dpdk:", 5);
	int socket;

	if (dpdk && val[S_COORD]) {
		cli_error("%s: a dpdk: service is not told to the coordinator (each client reaches it through a "
			  "port of its own): name it in the client's --from, or serve tcp: for --coordinator",
			  cmd->name);
		return 2;
	}
	if (cli_read_key(val[S_KEY], key))
		return 1;
	/* the signals go to one thread, which can safely wake a blocked session (blocked before
	 * EAL starts its own threads, which would otherwise take them and die) */
	sigemptyset(&sv.sigs);
	sigaddset(&sv.sigs, SIGTERM);
	sigaddset(&sv.sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sv.sigs, NULL);
	if (dpdk && cli_eal_start(EAL_MB, &socket))
		return 1;
	struct edg_store *s = edg_store_open(val[S_CACHE], false, 0, 0, err, sizeof(err));
	if (!s) {
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	/* dpdk: checks the key in its own handshake too: a peer without it does not hold the port */
	struct eng_conn_bind bind = { .key = key };
	struct eng_conn_listener *l = eng_conn_listen(val[S_LISTEN], &bind, err, sizeof(err));
	if (!l) {
		cli_error("%s: %s", cmd->name, err);
		edg_store_close(s);
		return 1;
	}
	sv.l = l;
	if (dpdk)
		fprintf(stderr, "serve: %s on %s, one client at a time (%u-byte chunks)\n", val[S_CACHE],
			val[S_LISTEN], edg_store_chunk_size(s));
	else
		fprintf(stderr, "serve: %s on port %d (%u-byte chunks)\n", val[S_CACHE], eng_conn_listener_port(l),
			edg_store_chunk_size(s));
	bool missed;
	struct edg_coord *coord = cli_coord_open(cmd->name, val[S_COORD], val[S_AUTH], val[S_EDGE], NULL, &missed);
	if (missed || (coord && advertise(coord, val[S_ADVERTISE], val[S_LISTEN], eng_conn_listener_port(l)))) {
		edg_coord_close(coord);
		eng_conn_listener_close(l);
		edg_store_close(s);
		return 1;
	}
	if (dpdk)
		printf("%s\n", val[S_LISTEN]);
	else
		printf("%d\n", eng_conn_listener_port(l));
	fflush(stdout);
	if (pthread_create(&sig_thread, NULL, signal_thread, &sv)) {
		cli_error("%s: cannot start the signal thread", cmd->name);
		edg_coord_close(coord);
		eng_conn_listener_close(l);
		edg_store_close(s);
		return 1;
	}
	unsigned clients = 0, backoff_ms = 0;
	bool serial = eng_conn_listener_serial(l);
	while (!atomic_load(&sv.stop)) {
		bool timed_out;
		/* a serial (dpdk:) accept is woken by the signal thread; tcp: looks at the flag each second */
		struct eng_conn *c = eng_conn_listener_accept(l, serial ? 3600 : 1.0, &timed_out, err, sizeof(err));
		if (!c) {
			if (!timed_out) {
				fprintf(stderr, "serve: %s\n", err);
				/* a fault that repeats at once does not flood the log: 0.1 s, doubling up to 5 s */
				backoff_ms = backoff_ms ? (backoff_ms * 2 > 5000 ? 5000 : backoff_ms * 2) : 100;
				for (unsigned t = 0; t < backoff_ms && !atomic_load(&sv.stop); t += 50)
					usleep(50000);
			}
			continue;
		}
		backoff_ms = 0;
		clients++;
		if (start_client(&sv, s, c, key)) {
			fprintf(stderr, "serve: %s: no thread to serve it\n", eng_conn_peer(c));
			eng_conn_close(c);
		} else if (serial) { /* the port is this client's until it is closed */
			pthread_mutex_lock(&sv.lock);
			reap(&sv, true);
			pthread_mutex_unlock(&sv.lock);
		}
	}
	pthread_mutex_lock(&sv.lock);
	reap(&sv, true);
	pthread_mutex_unlock(&sv.lock);
	pthread_join(sig_thread, NULL);
	if (coord && edg_coord_advertise(coord, NULL, err, sizeof(err)))
		fprintf(stderr, "serve: warning: %s (other edges may still try here)\n", err);
	edg_coord_close(coord);
	explicit_bzero(key, sizeof(key));
	eng_conn_listener_close(l);
	edg_store_close(s);
	fprintf(stderr, "serve: stopped by %s after %u clients\n", strsignal(sv.signo), clients);
	return 0;
}

const struct cli_cmd cli_cmd_serve = {
	.name = "serve",
	.summary = "Serve a chunk cache to other edges: they fetch an image's recipe and the\n"
		   "chunks they lack (handoff-engine cache fetch). Sessions are sealed with keys\n"
		   "fresh to each session, derived from --key and both ends' random values.\n"
		   "Prints the port (tcp:) or the location (dpdk:) on stdout; one line per client\n"
		   "on stderr; up to 32 clients at once over tcp:, one at a time over dpdk: (EAL\n"
		   "arguments before --, as for receive). With --coordinator (tcp: only) it says\n"
		   "where it serves, so destinations that ask the coordinator who holds a chunk can\n"
		   "fetch from here (cache fetch, receive). SIGTERM or SIGINT stops it cleanly (and\n"
		   "withdraws the address).",
	.usage = "--cache DIR --listen tcp:ADDR:PORT|dpdk:PORT --key FILE [--coordinator URL --coordinator-auth FILE [--edge NAME] [--advertise tcp:HOST:PORT]]",
	.opts = serve_opts,
	.run = serve_run,
	.needs_eal = true,
};

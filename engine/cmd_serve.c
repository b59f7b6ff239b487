/*
 * handoff-engine serve: an edge's chunk cache as a service other edges fetch
 * from (edge/xfer.h over edge/chan.h). Long-running; SIGTERM or SIGINT stops
 * it cleanly: no new client is taken, the one being served is cut off (its
 * fetch fails and keeps what had arrived), the cache is closed.
 */
#include "cli.h"
#include "conn.h"
#include "edge/chan.h"
#include "edge/xfer.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

enum { S_CACHE, S_LISTEN, S_KEY };

static const struct cli_opt serve_opts[] = {
	[S_CACHE] = { "cache", 0, "DIR", true, "the cache to serve" },
	[S_LISTEN] = { "listen", 0, "tcp:ADDR:PORT", true, "where to take clients (PORT 0: any free port, printed)" },
	[S_KEY] = { "key", 0, "FILE", true, "the key clients must hold (handoff-engine keygen)" },
	{ 0 },
};

#define HANDSHAKE_S 10.0

struct server {
	pthread_mutex_t lock;
	struct eng_conn *active; /* the client being served, to cut off on a signal */
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
	pthread_mutex_lock(&sv->lock);
	if (sv->active)
		eng_conn_shutdown(sv->active, SHUT_RDWR);
	pthread_mutex_unlock(&sv->lock);
	return NULL;
}

static void serve_one(struct server *sv, struct edg_store *s, struct eng_conn *c, const uint8_t *key)
{
	char err[512] = "";
	struct edg_serve_stats st = { 0 };
	const char *peer = eng_conn_peer(c);
	int r = -1;

	pthread_mutex_lock(&sv->lock);
	sv->active = c;
	pthread_mutex_unlock(&sv->lock);
	struct edg_chan *ch = atomic_load(&sv->stop) ? NULL : edg_chan_server(c, key, HANDSHAKE_S, err, sizeof(err));
	if (ch)
		r = edg_serve_session(s, ch, &st, err, sizeof(err));
	pthread_mutex_lock(&sv->lock);
	sv->active = NULL;
	pthread_mutex_unlock(&sv->lock);
	if (r)
		fprintf(stderr, "serve: %s: %s\n", peer, atomic_load(&sv->stop) ? "cut off by the shutdown" : err);
	else
		fprintf(stderr, "serve: %s: %llu recipes, %llu chunks (%.1f MB, %.1f MB sent), %llu missing\n", peer,
			(unsigned long long)st.recipes, (unsigned long long)st.chunks_sent, st.bytes_raw / 1e6,
			st.bytes_sent / 1e6, (unsigned long long)st.chunks_missing);
	edg_chan_free(ch);
	eng_conn_close(c);
}

static int serve_run(const struct cli_cmd *cmd, const char *const *val)
{
	CLI_KEY(key);
	char err[512];
	struct server sv = { .lock = PTHREAD_MUTEX_INITIALIZER };
	pthread_t sig_thread;

	if (cli_read_key(val[S_KEY], key))
		return 1;
	/* the signals go to one thread, which can safely wake a blocked session */
	sigemptyset(&sv.sigs);
	sigaddset(&sv.sigs, SIGTERM);
	sigaddset(&sv.sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sv.sigs, NULL);
	struct edg_store *s = edg_store_open(val[S_CACHE], false, 0, 0, err, sizeof(err));
	if (!s) {
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	struct eng_conn_listener *l = eng_conn_listen(val[S_LISTEN], err, sizeof(err));
	if (!l) {
		cli_error("%s: %s", cmd->name, err);
		edg_store_close(s);
		return 1;
	}
	fprintf(stderr, "serve: %s on port %d (%u-byte chunks)\n", val[S_CACHE], eng_conn_listener_port(l),
		edg_store_chunk_size(s));
	printf("%d\n", eng_conn_listener_port(l));
	fflush(stdout);
	pthread_create(&sig_thread, NULL, signal_thread, &sv);
	unsigned clients = 0;
	while (!atomic_load(&sv.stop)) {
		bool timed_out;
		struct eng_conn *c = eng_conn_listener_accept(l, 1.0, &timed_out, err, sizeof(err));
		if (!c) {
			if (!timed_out)
				fprintf(stderr, "serve: %s\n", err);
			continue;
		}
		clients++;
		serve_one(&sv, s, c, key);
	}
	pthread_join(sig_thread, NULL);
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
		   "Prints the port on stdout; one line per client on stderr; one client at a\n"
		   "time. SIGTERM or SIGINT stops it cleanly.",
	.usage = "--cache DIR --listen tcp:ADDR:PORT --key FILE",
	.opts = serve_opts,
	.run = serve_run,
};

/*
 * Multi-source chunk fetch: the chunks a cache lacks of an image, pulled
 * from every chunk service that holds them at once (seed 001: several
 * transmission paths into the destination). Each service is asked which of
 * the wanted chunks it holds; then one worker per service keeps its path
 * full with a window sized from that path's measured goodput and round trip
 * (not a fixed count), taking the scarcest chunks first; the image's origin
 * takes the chunks only it holds first and, of the rest, those the others
 * would reach last. A chunk is asked of one service at a time; when nothing
 * is left to hand out, an idle service asks again for chunks still in flight
 * elsewhere (endgame), and the first copy to arrive counts. Every chunk is
 * checked against its digest. A service that fails, lacks a chunk it said it
 * held, or stays silent for the timeout loses its chunks to the others.
 */
#ifndef HANDOFF_EDGE_MULTI_H
#define HANDOFF_EDGE_MULTI_H

#include <stdio.h>

#include "xfer.h"

#define EDG_PEERS_MAX 16

struct edg_peer {
	const char *loc;       /* tcp:HOST:PORT or dpdk:PORT[,...] */
	const char *name;      /* for progress and reports */
	bool origin;           /* the image's source: last for chunks others hold */
	/* a channel already open to the service (edg_sources_connect), or NULL:
	 * the fetch then opens one. The fetch takes the channel over and sets
	 * both NULL; the caller closes what is left */
	struct eng_conn *conn;
	struct edg_chan *chan;
	bool holds_all;        /* the recipes came from it: not asked what it holds */
	bool recipes_asked;    /* its shares were asked with its hello (edg_sources_connect) */
	bool push_asked;       /* ... with the first chunks of each share sent unasked behind it */
	uint8_t *pushed;       /* their digests, read with the shares (the chunks wait in the channel) */
	uint32_t npushed;      /* the fetch takes them, or drops them with the channel (edg_peer_drop) */
	/* filled in by the fetch */
	uint64_t held;         /* wanted chunks it said it holds */
	double answer_s;       /* seconds after the fetch began: it said what it holds */
	double first_chunk_s;  /* ... its first chunk arrived (0: none) */
	double last_chunk_s;   /* ... its last one */
	uint64_t chunks, raw_bytes, wire_bytes, duplicate_chunks, lacked;
	uint64_t unasked;      /* chunks it sent unasked behind its shares that were taken (push) */
	double rate_bps;       /* raw bits/s while it had chunks in flight */
	double window_bytes, min_rtt_s;
	bool failed;
	char error[256];
};

struct edg_multi_report {
	uint64_t size, chunks, missing;   /* the image, and the distinct chunks the cache lacked */
	uint64_t fetched_chunks, fetched_raw_bytes, wire_bytes, duplicate_bytes, lost;
	double seconds, stall_s, timeout_s;  /* stall_s: the longest gap between arrivals */
};

/* Called about twice a second from the calling thread, peers' figures so far. */
typedef void (*edg_multi_progress_fn)(void *ctx, const struct edg_peer *peers, unsigned npeers, uint64_t done,
				      uint64_t total, double seconds);

/*
 * Fetch into s those of the n digests it lacks (each once), from peers at
 * once. The caller pins what it needs kept. With deadline_s > 0 nothing more
 * is asked for after that many seconds (what is in flight still lands).
 * 0 also when some chunk is held by no peer left or was not fetched by the
 * deadline (rep->lost counts them: the caller decides what that means), or
 * -errno with err (bad arguments, the store failing).
 */
int edg_fetch_set(struct edg_store *s, struct edg_peer *peers, unsigned npeers, const uint8_t key[32],
		  const uint8_t *digests, uint64_t n, double timeout_s, double deadline_s, struct edg_multi_report *rep,
		  edg_multi_progress_fn progress, void *ctx, char *err, size_t errlen);

/*
 * Fetch what s lacks of the nimg recipes rc[] from peers[0..npeers), all in
 * one fetch, and register image i as as[i] (pinned meanwhile, as
 * edg_fetch_chunks). A peer that cannot be reached or fails is reported in
 * its own entry; the fetch fails only when some chunk is held by no peer that
 * is left (then nothing is registered; what arrived stays). 0, or -errno.
 */
int edg_fetch_multi(struct edg_store *s, struct edg_peer *peers, unsigned npeers, const uint8_t key[32],
		    const struct edg_recipe *rc, const char *const *as, unsigned nimg, double timeout_s,
		    struct edg_multi_report *rep, edg_multi_progress_fn progress, void *ctx, char *err, size_t errlen);

/* Where to fetch from: services named on the command line and edges the coordinator knows. */
struct edg_coord;
struct edg_sources {
	struct edg_peer p[EDG_PEERS_MAX];
	char loc[EDG_PEERS_MAX][300], name[EDG_PEERS_MAX][80];
	unsigned n;
};
/*
 * Open a sealed channel to each of the n peers at once (p[k].conn and .chan),
 * so that connecting overlaps the recipes' transfer: the origin within
 * timeout_s, the others within EDG_CONNECT_S (one dead source holds the
 * rest up no longer). With names (nimg of them), each peer's share of every
 * recipe (as edg_sources_recipes deals them) is asked with its hello, as early
 * requests (chan.h): the shares start one round trip sooner; with push_bytes,
 * each with about that many bytes of its first chunks behind it, unasked (for a cache
 * that holds nothing yet, so the paths carry data while the destination puts
 * the recipes together and asks). A peer that
 * cannot be reached is left without, its reason in p[k].error (the fetch
 * tries again and reports it).
 */
void edg_sources_connect(struct edg_peer *p, unsigned n, const uint8_t key[32], double timeout_s,
			 const char *const *names, unsigned nimg, uint32_t push_bytes);
/* Close what the fetch did not take over of a peer: its channel (saying goodbye) and connection. */
void edg_peer_drop(struct edg_peer *p);
#define EDG_CONNECT_S 2.0 /* the longest a source other than the origin may take to connect and key */
/*
 * The recipes of names[0..nimg) into rc[] (each digests NULL before), in
 * shares from every peer with a channel open at once: each sends one part of
 * each (the origin, when others can, the header alone: its link is the one
 * to spare). The first peer (in order) that has an image
 * names its recipe; a share another peer lacks, or holds in another version,
 * is asked of that one after, and the whole is checked against the recipe's
 * hash (on a mismatch it is fetched whole from the first). A peer that sent
 * a share of every image's recipe holds those images: holds_all, and it is
 * not asked what it holds. A peer silent for timeout_s, or whose channel fell
 * out of step, loses its channel.
 * Returns how many recipes arrived; err takes the first failure's reason.
 */
unsigned edg_sources_recipes(struct edg_peer *p, unsigned n, const char *const *names, unsigned nimg,
			     struct edg_recipe *rc, double timeout_s, uint64_t *wire, char *err, size_t errlen);
/*
 * Add tcp:HOST:PORT or dpdk:PORT[,peer=MAC,...] locations, comma-separated (a
 * source named twice is one; origin marks it). A dpdk: source is a port of
 * this process's own (EAL arguments before --), one per source. 0, or -1 with err.
 */
int edg_sources_add(struct edg_sources *src, const char *list, bool origin, char *err, size_t errlen);
/* The list names a dpdk: source: EAL must be up before connecting. */
bool edg_sources_need_eal(const char *list);
/* The source on the same DPDK port as dpdk: location loc (by the name given), or -1. */
int edg_sources_port_user(const struct edg_sources *src, const char *loc);
/*
 * Add the edges that hold any of the n digests (other than the asking edge),
 * at the address each advertised; one line on log for an edge that holds some
 * but serves nowhere known. 0, or -1 with err (the coordinator failed).
 */
int edg_sources_ask_coordinator(struct edg_sources *src, struct edg_coord *c, const uint8_t *digests, uint64_t n,
				FILE *log, char *err, size_t errlen);

#endif

/*
 * Client of the cache coordinator: a Redis 7 server (scripts/coordinator
 * starts one with AOF and an ACL user) holding, per chunk, which edges hold
 * it, which registered images and running VMs contain it, and the leases of
 * handoffs in flight (edge/coordinator.lua describes the keys). Every update
 * is per chunk, idempotent and pipelined in batches; a chunk's decisions are
 * Redis functions, atomic on its one key. The coordinator may be a Redis
 * Cluster (scripts/coordinator up --cluster N): every command names one key
 * and goes to the node that serves it.
 */
#ifndef HANDOFF_EDGE_COORD_H
#define HANDOFF_EDGE_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct edg_coord;

/*
 * Connect to redis://[USER@]HOST:PORT (USER default "handoff") with the
 * password in password_file (one line; refused when others may read it) and
 * act as edge `edge` (1-64 of [A-Za-z0-9._-]). HOST:PORT may be any node of
 * a cluster: the others are learnt from it. Checks that every node has the
 * handoff functions. NULL after a one-line message in err.
 */
struct edg_coord *edg_coord_connect(const char *url, const char *password_file, const char *edge,
				    double timeout_s, char *err, size_t errlen);
void edg_coord_close(struct edg_coord *c);
/* Whether the coordinator is a cluster, and of how many nodes (seen so far). */
bool edg_coord_is_cluster(const struct edg_coord *c, unsigned *nodes);
/* Commands the cluster redirected (MOVED, ASK) or asked to retry: 0 while its slot map holds. */
uint64_t edg_coord_redirects(const struct edg_coord *c);

/* This edge holds these chunks (a chunk reported twice counts once). */
int edg_coord_report(struct edg_coord *c, const uint8_t *digests, uint64_t n, char *err, size_t errlen);
/*
 * Image (or running VM) `name`, registered by this edge, contains these
 * chunks / no longer does. Registrations are per edge: a chunk is referenced
 * while any edge's registration contains it.
 */
int edg_coord_register(struct edg_coord *c, const char *name, const uint8_t *digests, uint64_t n, char *err,
		       size_t errlen);
int edg_coord_unregister(struct edg_coord *c, const char *name, const uint8_t *digests, uint64_t n, char *err,
			 size_t errlen);
/*
 * An image in this edge's cache (cache add): registration NAME contains these
 * chunks. The list is kept at the coordinator too (ho:img:EDGE:NAME), so
 * adding the image again under that name moves the count from the old list
 * (chunks only it held stop counting), and removing it needs only the name,
 * even after the cache lost it. While a registration moves, the list holds
 * old and new together: a failure midway is repaired by doing it again.
 */
int edg_coord_register_image(struct edg_coord *c, const char *name, const uint8_t *digests, uint64_t n, char *err,
			     size_t errlen);
/* End it: *n (may be NULL) how many chunks it held (0: none was registered here). */
int edg_coord_unregister_image(struct edg_coord *c, const char *name, uint64_t *n, char *err, size_t errlen);
/*
 * A VM running on this edge (the one `receive --vm-name NAME` resumed): its
 * registration, image "vm:NAME", contains these chunks (the base it was handed
 * off against). The list is kept at the coordinator too (ho:vm:EDGE:NAME), so
 * that ending the registration when the VM leaves (`send --vm-name NAME`)
 * needs only the name. Registering again replaces the list; chunks only the
 * old one held stop counting for it.
 */
int edg_coord_register_vm(struct edg_coord *c, const char *name, const uint8_t *digests, uint64_t n, char *err,
			  size_t errlen);
/* End it: *n (may be NULL) how many chunks it held (0: none was registered here). */
int edg_coord_unregister_vm(struct edg_coord *c, const char *name, uint64_t *n, char *err, size_t errlen);
/* A VM name the two above take (1 to 252 bytes); false with the reason in err. */
bool edg_coord_vm_name_ok(const char *name, char *err, size_t errlen);
/* A handoff in flight needs these chunks for ttl_s / is done with them. */
int edg_coord_lease(struct edg_coord *c, const char *id, const uint8_t *digests, uint64_t n, double ttl_s,
		    char *err, size_t errlen);
int edg_coord_release(struct edg_coord *c, const char *id, const uint8_t *digests, uint64_t n, char *err,
		      size_t errlen);
/*
 * For each chunk: may this edge drop its copy (ok[i])? Never while a live
 * lease needs it. Yes if no image contains it and it has been unreferenced
 * for grace_s; with copies > 0 also if images contain it but none of this
 * edge's, and at least `copies` other edges hold it, one of them an edge
 * that registered it (this copy is an extra). The edge stays a holder until
 * edg_coord_forget.
 */
int edg_coord_may_delete(struct edg_coord *c, const uint8_t *digests, uint64_t n, uint64_t grace_s, unsigned copies,
			 bool *ok, char *err, size_t errlen);
/*
 * The keep policy: what this edge's copy of each chunk is worth (higher:
 * keep longer). Popular (each image or running VM on any edge that contains
 * it counts), recent (halved every half_life_s of age_s[i], the time since
 * this edge last used it) and scarce (divided by one plus the number of other
 * edges that hold it). An edge over its quota collects the least worth first.
 */
int edg_coord_keep(struct edg_coord *c, const uint8_t *digests, uint64_t n, const uint64_t *age_s,
		   double half_life_s, double *worth, char *err, size_t errlen);
/* This edge dropped these chunks. */
int edg_coord_forget(struct edg_coord *c, const uint8_t *digests, uint64_t n, char *err, size_t errlen);
/* For each chunk: how many images contain it and how many edges hold it. */
int edg_coord_holders(struct edg_coord *c, const uint8_t *digests, uint64_t n, uint32_t *refs, uint32_t *holders,
		      char *err, size_t errlen);

/* The other edges that hold any of these chunks, and how many of them each holds. */
#define EDG_HOLDERS_MAX 16
struct edg_holder_names {
	unsigned n;
	char edge[EDG_HOLDERS_MAX][65];
	uint64_t chunks[EDG_HOLDERS_MAX];
};
int edg_coord_holder_names(struct edg_coord *c, const uint8_t *digests, uint64_t n, struct edg_holder_names *h,
			   char *err, size_t errlen);
/* Where this edge serves its cache (handoff-engine serve), for the others to fetch from; NULL withdraws it. */
int edg_coord_advertise(struct edg_coord *c, const char *loc, char *err, size_t errlen);
/* Where edge `edge` serves: -ENOENT if it never said. */
int edg_coord_edge_addr(struct edg_coord *c, const char *edge, char *loc, size_t len, char *err, size_t errlen);

#endif

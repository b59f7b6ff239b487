/*
 * The cache coordinator and chunk sources on the command line: the options
 * every command that talks to the coordinator takes, opening it
 * (edge/coord.h), and a multi-source fetch's sources as JSON (edge/multi.h).
 */
#ifndef HANDOFF_ENGINE_CLI_COORD_H
#define HANDOFF_ENGINE_CLI_COORD_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "edge/coord.h"

#define COORD_OPTS(url, auth, edge)                                                                       \
	[url] = { "coordinator", 0, "URL", false, "redis://[USER@]HOST:PORT of the cache coordinator" },      \
	[auth] = { "coordinator-auth", 0, "FILE", false, "its password (one line, mode 0600)" },            \
	[edge] = { "edge", 0, "NAME", false, "this edge's name at the coordinator (default: the host name)" }

#define COORD_TIMEOUT_S 5.0
/* Exit status when the cache changed but the coordinator could not be told. */
#define EXIT_COORD_MISSED 4

/*
 * The coordinator, when url names one; NULL if not asked for or unreachable
 * (then *missed, after one line saying so: an error, or with `without` (what
 * the command does instead) a warning that says both). edge NULL: the host name.
 */
struct edg_coord *cli_coord_open(const char *cmd, const char *url, const char *auth, const char *edge,
				 const char *without, bool *missed);

/*
 * End VM name's registration as running on this edge (edg_coord_unregister_vm):
 * "ended", "none here", or "failed" after one line (a warning when warn: the
 * caller's work is done all the same).
 */
const char *cli_coord_end_vm(const char *cmd, const char *name, const char *url, const char *auth, const char *edge,
			     bool warn);

/* Each source's part of a fetch of `fetched` chunks, for --json. */
struct edg_peer;
json_object *cli_sources_json(const struct edg_peer *p, unsigned n, uint64_t fetched);

#endif

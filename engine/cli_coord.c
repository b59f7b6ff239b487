#include "cli_coord.h"
#include "cli.h"
#include "edge/multi.h"

#include <unistd.h>

struct edg_coord *cli_coord_open(const char *cmd, const char *url, const char *auth, const char *edge,
				 const char *without, bool *missed)
{
	char host[65] = "", err[512];

	*missed = false;
	if (!url)
		return NULL;
	if (!auth) {
		if (without)
			fprintf(stderr, "%s: warning: --coordinator needs --coordinator-auth FILE; %s\n", cmd, without);
		else
			cli_error("%s: --coordinator needs --coordinator-auth FILE", cmd);
		*missed = true;
		return NULL;
	}
	if (!edge) {
		gethostname(host, sizeof(host) - 1);
		edge = host;
	}
	struct edg_coord *c = edg_coord_connect(url, auth, edge, COORD_TIMEOUT_S, err, sizeof(err));
	if (!c) {
		if (without)
			fprintf(stderr, "%s: warning: %s; %s\n", cmd, err, without);
		else
			cli_error("%s: %s", cmd, err);
		*missed = true;
	}
	return c;
}

const char *cli_coord_end_vm(const char *cmd, const char *name, const char *url, const char *auth, const char *edge,
			     bool warn)
{
	bool missed;
	char err[256];
	uint64_t n = 0;
	struct edg_coord *c = cli_coord_open(cmd, url, auth, edge,
					     warn ? "the coordinator still counts the VM as running here" : NULL, &missed);

	if (!c)
		return "failed";
	int r = edg_coord_unregister_vm(c, name, &n, err, sizeof(err));
	edg_coord_close(c);
	if (r && warn)
		fprintf(stderr, "%s: warning: the coordinator still counts VM %s as running here: %s\n", cmd, name, err);
	else if (r)
		cli_error("%s: the coordinator still counts VM %s as running here: %s", cmd, name, err);
	return r ? "failed" : n ? "ended" : "none here";
}

json_object *cli_sources_json(const struct edg_peer *p, unsigned n, uint64_t fetched)
{
	json_object *arr = json_object_new_array();

	for (unsigned k = 0; k < n; k++) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(p[k].name));
		json_object_object_add(o, "loc", json_object_new_string(p[k].loc));
		json_object_object_add(o, "origin", json_object_new_boolean(p[k].origin));
		json_object_object_add(o, "held_chunks", json_object_new_int64((int64_t)p[k].held));
		/* it sent its share of every recipe asked: it holds those images, and was not asked what it holds */
		json_object_object_add(o, "holds_images", json_object_new_boolean(p[k].holds_all));
		json_object_object_add(o, "chunks", json_object_new_int64((int64_t)p[k].chunks));
		json_object_object_add(o, "share", json_object_new_double(fetched ? (double)p[k].chunks / (double)fetched : 0));
		json_object_object_add(o, "raw_bytes", json_object_new_int64((int64_t)p[k].raw_bytes));
		json_object_object_add(o, "wire_bytes", json_object_new_int64((int64_t)p[k].wire_bytes));
		json_object_object_add(o, "rate_mbit", json_object_new_double(p[k].rate_bps / 1e6));
		json_object_object_add(o, "window_bytes", json_object_new_int64((int64_t)p[k].window_bytes));
		json_object_object_add(o, "min_rtt_ms", json_object_new_double(p[k].min_rtt_s * 1e3));
		json_object_object_add(o, "answer_s", json_object_new_double(p[k].answer_s));
		json_object_object_add(o, "first_chunk_s", json_object_new_double(p[k].first_chunk_s));
		json_object_object_add(o, "last_chunk_s", json_object_new_double(p[k].last_chunk_s));
		json_object_object_add(o, "duplicate_chunks", json_object_new_int64((int64_t)p[k].duplicate_chunks));
		json_object_object_add(o, "lacked", json_object_new_int64((int64_t)p[k].lacked));
		json_object_object_add(o, "unasked_chunks", json_object_new_int64((int64_t)p[k].unasked));
		json_object_object_add(o, "failed", json_object_new_boolean(p[k].failed));
		if (p[k].failed)
			json_object_object_add(o, "error", json_object_new_string(p[k].error));
		json_object_array_add(arr, o);
	}
	return arr;
}

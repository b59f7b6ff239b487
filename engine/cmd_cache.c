/*
 * handoff-engine cache add|stat|verify|gc: an edge's chunk cache
 * (edge/store.h) from the command line. No EAL: the store is an embedded
 * LMDB database and the work is reading and hashing files.
 */
#include "cli.h"
#include "cli_coord.h"
#include "conn.h"
#include "edge/chan.h"
#include "edge/coord.h"
#include "edge/multi.h"
#include "edge/store.h"
#include "edge/xfer.h"
#include "vmbase.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { A_CACHE, A_CHUNK, A_NAME, A_JSON, A_COORD, A_AUTH, A_EDGE };

static const struct cli_opt add_opts[] = {
	[A_CACHE] = { "cache", 0, "DIR", true, "the cache directory (created if absent)" },
	[A_CHUNK] = { "chunk-size", 0, "BYTES", false,
		      "chunk size of a new cache (4K..4M, a multiple of 4K; default 64K)" },
	[A_NAME] = { "name", 0, "NAME", false, "register the (single) IMAGE under NAME, not its file name" },
	[A_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout" },
	COORD_OPTS(A_COORD, A_AUTH, A_EDGE),
	{ 0 },
};

struct progress {
	const char *name;
	double t0;
};

static double mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
	struct progress *p = ctx;

	cli_progress(p->name, done, total, 0, mono_s() - p->t0);
}

static struct edg_store *open_store(const char *cmd, const char *dir, bool create, uint32_t chunk)
{
	char err[512];
	struct edg_store *s = edg_store_open(dir, create, chunk, 0, err, sizeof(err));

	if (!s)
		cli_error("%s: %s", cmd, err);
	return s;
}

/*
 * Tell the coordinator this edge holds the image's chunks and the image
 * contains them. What an earlier image of that name contained stops counting
 * for it: the coordinator's own list of the registration says what that was
 * (so a retry after a failure midway repairs the counts, though the cache
 * here already holds the new image), and the cache's old recipe (old, n_old)
 * says it for a registration made before the coordinator kept lists. Every
 * step is idempotent.
 */
static int coord_add(struct edg_coord *c, struct edg_store *s, const char *name, const uint8_t *old,
		     uint64_t n_old, char *err, size_t errlen)
{
	uint8_t *d;
	uint64_t size, n;
	int r = edg_store_recipe(s, name, &size, &d, &n);

	if (r) {
		snprintf(err, errlen, "cannot read back the recipe of %s", name);
		return r;
	}
	/* the new registration first: chunks both contain never look unreferenced meanwhile */
	r = edg_coord_report(c, d, n, err, errlen);
	if (!r)
		r = edg_coord_register_image(c, name, d, n, err, errlen);
	if (!r && old) {
		uint64_t k = 0;
		uint8_t *gone = edg_digests_minus(old, n_old, d, n, &k);
		r = gone ? edg_coord_unregister(c, name, gone, k, err, errlen) : -ENOMEM;
		free(gone);
	}
	free(d);
	return r;
}

/*
 * Add one image to the cache and, with a coordinator, tell it (coord_add).
 * A coordinator that fails is closed (*c NULL, *missed) after one line: the
 * cache keeps the image, and the caller exits EXIT_COORD_MISSED at the end.
 * Prints the image's line; -1 (after one line) when the add itself failed.
 */
static int add_image(const char *cmd, struct edg_store *s, struct edg_coord **c, bool *missed, const char *name,
		     const char *path, struct edg_add_report *rep)
{
	struct progress p = { name, mono_s() };
	uint8_t *old = NULL;
	uint64_t old_size, n_old = 0;
	char err[512];

	if (*c && edg_store_recipe(s, name, &old_size, &old, &n_old))
		old = NULL;
	if (edg_store_add_file(s, name, path, rep, on_progress, &p, err, sizeof(err))) {
		cli_progress_end();
		cli_error("%s: %s", cmd, err); /* err names the file where it matters */
		free(old);
		return -1;
	}
	cli_progress_end();
	int cr = *c ? coord_add(*c, s, name, old, n_old, err, sizeof(err)) : 0;
	free(old);
	if (cr) {
		cli_error("%s: %s", cmd, err);
		edg_coord_close(*c);
		*c = NULL;
		*missed = true;
	}
	fprintf(stderr, "%s: %s: %llu chunks, %llu new (%.1f MB), %.1f s\n", cmd, name,
		(unsigned long long)rep->chunks, (unsigned long long)rep->new_chunks, rep->new_bytes / 1e6,
		rep->seconds);
	return 0;
}

static int add_run(const struct cli_cmd *cmd, const char *const *val)
{
	uint64_t chunk = 0;
	int n;
	const char *const *images = cli_operands(&n);
	int ret = 0;

	if (!n) {
		cli_error("%s: name at least one IMAGE (see %s --help)", cmd->name, cmd->name);
		return 2;
	}
	if (val[A_NAME] && n > 1) {
		cli_error("%s: --name names one image, not %d", cmd->name, n);
		return 2;
	}
	if (val[A_CHUNK] && (cli_parse_size(val[A_CHUNK], &chunk) || chunk > EDG_CHUNK_MAX)) {
		cli_error("%s: bad --chunk-size '%s'", cmd->name, val[A_CHUNK]);
		return 2;
	}
	struct edg_store *s = open_store(cmd->name, val[A_CACHE], true, (uint32_t)chunk);
	if (!s)
		return 1;
	bool missed;
	struct edg_coord *c = cli_coord_open(cmd->name, val[A_COORD], val[A_AUTH], val[A_EDGE], NULL, &missed);
	json_object *list = json_object_new_array();
	for (int i = 0; i < n && !ret; i++) {
		char copy[4096];
		snprintf(copy, sizeof(copy), "%s", images[i]);
		const char *name = val[A_NAME] ? val[A_NAME] : basename(copy);
		struct edg_add_report rep;
		if (add_image(cmd->name, s, &c, &missed, name, images[i], &rep)) {
			ret = 1;
			break;
		}
		json_object *o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(name));
		json_object_object_add(o, "path", json_object_new_string(images[i]));
		json_object_object_add(o, "size", json_object_new_int64((int64_t)rep.size));
		json_object_object_add(o, "chunks", json_object_new_int64((int64_t)rep.chunks));
		json_object_object_add(o, "new_chunks", json_object_new_int64((int64_t)rep.new_chunks));
		json_object_object_add(o, "new_bytes", json_object_new_int64((int64_t)rep.new_bytes));
		json_object_object_add(o, "seconds", json_object_new_double(rep.seconds));
		json_object_array_add(list, o);
	}
	if (!ret && val[A_JSON]) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "command", json_object_new_string("cache add"));
		json_object_object_add(o, "chunk_size", json_object_new_int64(edg_store_chunk_size(s)));
		json_object_object_add(o, "images", json_object_get(list));
		cli_print_json(o);
	}
	json_object_put(list);
	edg_store_close(s);
	edg_coord_close(c);
	if (!ret && missed) {
		fprintf(stderr, "cache add: the images are in the cache, but the coordinator does not know: "
				"add them again once it answers\n");
		return EXIT_COORD_MISSED;
	}
	return ret;
}

const struct cli_cmd cli_cmd_cache_add = {
	.name = "cache add",
	.summary = "Cut each IMAGE (a disk image, a memory snapshot, a kernel: any file) into\n"
		   "fixed-size chunks named by their SHA-256, store the ones the cache lacks and\n"
		   "register the image (its recipe: the list of its chunks). Adding an image again\n"
		   "replaces its recipe; chunks are stored once however many images hold them.\n"
		   "With --coordinator, the coordinator learns that this edge holds the chunks and\n"
		   "that the image contains them; if it cannot be told, the exit status is 4.",
	.usage = "--cache DIR [--chunk-size BYTES] [--name NAME] [--json] [--coordinator URL ...] IMAGE...",
	.opts = add_opts,
	.run = add_run,
	.args = "IMAGE...",
};

enum { S_CACHE, S_JSON };

static const struct cli_opt stat_opts[] = {
	[S_CACHE] = { "cache", 0, "DIR", true, "the cache directory" },
	[S_JSON] = { "json", 0, NULL, false, "print JSON on stdout instead of text" },
	{ 0 },
};

static int stat_run(const struct cli_cmd *cmd, const char *const *val)
{
	struct edg_store *s = open_store(cmd->name, val[S_CACHE], false, 0);
	struct edg_stat st;
	char err[512];

	if (!s)
		return 1;
	int r = edg_store_stat(s, &st, err, sizeof(err));
	edg_store_close(s);
	if (r) {
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	if (val[S_JSON]) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "command", json_object_new_string("cache stat"));
#define ADD(f) json_object_object_add(o, #f, json_object_new_int64((int64_t)st.f))
		ADD(chunk_size);
		ADD(chunks);
		ADD(bytes);
		ADD(referenced_chunks);
		ADD(referenced_bytes);
		ADD(pinned_chunks);
		ADD(pinned_bytes);
		ADD(images);
		ADD(image_bytes);
		ADD(pins);
		ADD(referenced_missing);
		ADD(file_bytes);
#undef ADD
		cli_print_json(o);
		return 0;
	}
	printf("cache %s: %u-byte chunks\n"
	       "  chunks      %llu (%.1f MB)\n"
	       "  referenced  %llu (%.1f MB) by %llu images of %.1f MB in all\n"
	       "  pinned      %llu (%.1f MB) by %llu pins\n"
	       "  lost        %llu referenced chunks whose bytes are gone (fetched again when needed)\n"
	       "  file        %.1f MB\n",
	       val[S_CACHE], st.chunk_size, (unsigned long long)st.chunks, st.bytes / 1e6,
	       (unsigned long long)st.referenced_chunks, st.referenced_bytes / 1e6, (unsigned long long)st.images,
	       st.image_bytes / 1e6, (unsigned long long)st.pinned_chunks, st.pinned_bytes / 1e6,
	       (unsigned long long)st.pins, (unsigned long long)st.referenced_missing, st.file_bytes / 1e6);
	return 0;
}

const struct cli_cmd cli_cmd_cache_stat = {
	.name = "cache stat",
	.summary = "What the cache holds: chunks and bytes, how much of it registered images\n"
		   "reference and handoffs in flight pin, and the database file's size.",
	.usage = "--cache DIR [--json]",
	.opts = stat_opts,
	.run = stat_run,
};

enum { R_CACHE, R_NAME, R_ONLY, R_COORD, R_AUTH, R_EDGE };

static const struct cli_opt remove_opts[] = {
	[R_CACHE] = { "cache", 0, "DIR", true, "the cache directory" },
	[R_NAME] = { "name", 0, "NAME", true, "the image to unregister" },
	[R_ONLY] = { "registration-only", 0, NULL, false,
		     "the cache no longer holds the image (a remove whose coordinator failed): end only this "
		     "edge's registration of it at the coordinator" },
	COORD_OPTS(R_COORD, R_AUTH, R_EDGE),
	{ 0 },
};

static int remove_run(const struct cli_cmd *cmd, const char *const *val)
{
	struct edg_store *s = open_store(cmd->name, val[R_CACHE], false, 0);
	uint8_t *d = NULL;
	uint64_t size, n = 0;
	char err[512];
	bool missed;

	if (!s)
		return 1;
	bool only = val[R_ONLY] != NULL;
	int rr = edg_store_recipe(s, val[R_NAME], &size, &d, &n);
	if (rr && (rr != -ENOENT || !only)) {
		cli_error(rr == -ENOENT ? "%s: no image '%s' in %s" : "%s: cannot read image '%s' in %s", cmd->name,
			  val[R_NAME], val[R_CACHE]);
		edg_store_close(s);
		return 1;
	}
	if (only && !rr) {
		cli_error("%s: %s still holds '%s': remove it without --registration-only", cmd->name, val[R_CACHE],
			  val[R_NAME]);
		free(d);
		edg_store_close(s);
		return 1;
	}
	if (only && !val[R_COORD]) {
		cli_error("%s: --registration-only ends a registration at the coordinator: give --coordinator", cmd->name);
		edg_store_close(s);
		return 1;
	}
	struct edg_coord *c = cli_coord_open(cmd->name, val[R_COORD], val[R_AUTH], val[R_EDGE], NULL, &missed);
	int r = only ? 0 : edg_store_remove_image(s, val[R_NAME], err, sizeof(err));
	uint64_t listed = 0;
	/* by the recipe first (a registration made before the coordinator kept lists), the list last */
	if (r) {
		cli_error("%s: %s", cmd->name, err);
	} else if (c && ((!only && edg_coord_unregister(c, val[R_NAME], d, n, err, sizeof(err))) ||
			 edg_coord_unregister_image(c, val[R_NAME], &listed, err, sizeof(err)))) {
		cli_error("%s: %s", cmd->name, err);
		missed = true;
	}
	free(d);
	edg_coord_close(c);
	edg_store_close(s);
	if (r)
		return 1;
	if (only && !missed && !listed) {
		cli_error("%s: this edge has no registration of '%s' at the coordinator", cmd->name, val[R_NAME]);
		return 1;
	}
	fprintf(stderr, "cache remove: %s unregistered (%llu chunks lost a reference)%s\n", val[R_NAME],
		(unsigned long long)(only ? listed : n),
		missed ? "; the coordinator does not know: once it answers, run cache remove again with "
			 "--registration-only"
		: only ? " at the coordinator" : "");
	return missed ? EXIT_COORD_MISSED : 0;
}

const struct cli_cmd cli_cmd_cache_remove = {
	.name = "cache remove",
	.summary = "Unregister image NAME: its chunks lose one reference each and gc may take the\n"
		   "ones no other image holds. With --coordinator, the coordinator learns it too\n"
		   "(exit status 4 if it cannot be told).",
	.usage = "--cache DIR --name NAME [--registration-only] [--coordinator URL ...]",
	.opts = remove_opts,
	.run = remove_run,
};

enum { V_NAME, V_COORD, V_AUTH, V_EDGE };

static const struct cli_opt vm_left_opts[] = {
	[V_NAME] = { "name", 0, "NAME", true, "the VM (receive --vm-name NAME)" },
	COORD_OPTS(V_COORD, V_AUTH, V_EDGE),
	{ 0 },
};

static int vm_left_run(const struct cli_cmd *cmd, const char *const *val)
{
	char err[256];

	if (!val[V_COORD] || !val[V_AUTH]) {
		cli_error("%s: needs --coordinator URL --coordinator-auth FILE", cmd->name);
		return 2;
	}
	if (!edg_coord_vm_name_ok(val[V_NAME], err, sizeof(err))) {
		cli_error("%s: %s", cmd->name, err);
		return 2;
	}
	const char *what = cli_coord_end_vm(cmd->name, val[V_NAME], val[V_COORD], val[V_AUTH], val[V_EDGE], false);
	if (!strcmp(what, "failed"))
		return 1;
	fprintf(stderr, "%s: VM %s: %s\n", cmd->name, val[V_NAME],
		strcmp(what, "ended") ? "no registration on this edge" : "no longer counted as running on this edge");
	return 0;
}

const struct cli_cmd cli_cmd_cache_vm_left = {
	.name = "cache vm-left",
	.summary = "End the registration of VM NAME as running on this edge (receive --vm-name\n"
		   "made it; send --vm-name ends it when the VM moves on): for a VM shut down\n"
		   "here, or a handoff that could not tell the coordinator. Its base's chunks\n"
		   "then stop counting it.",
	.usage = "--name NAME --coordinator URL --coordinator-auth FILE [--edge NAME]",
	.opts = vm_left_opts,
	.run = vm_left_run,
};

static void print_bad(void *ctx, const uint8_t d[EDG_DIGEST_LEN])
{
	char hex[2 * EDG_DIGEST_LEN + 1];

	edg_digest_hex(d, hex);
	fprintf(stderr, "cache verify: corrupt chunk %s dropped\n", hex);
	json_object_array_add(ctx, json_object_new_string(hex));
}

static int verify_run(const struct cli_cmd *cmd, const char *const *val)
{
	struct edg_store *s = open_store(cmd->name, val[S_CACHE], false, 0);
	uint64_t checked, bad;
	char err[512];

	if (!s)
		return 1;
	json_object *bads = json_object_new_array();
	int r = edg_store_verify(s, &checked, &bad, print_bad, bads, err, sizeof(err));
	edg_store_close(s);
	if (r) {
		json_object_put(bads);
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	fprintf(stderr, "cache verify: %llu chunks checked, %llu corrupt%s\n", (unsigned long long)checked,
		(unsigned long long)bad, bad ? " (dropped: they are fetched again when needed)" : "");
	if (val[S_JSON]) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "command", json_object_new_string("cache verify"));
		json_object_object_add(o, "checked", json_object_new_int64((int64_t)checked));
		json_object_object_add(o, "corrupt", json_object_new_int64((int64_t)bad));
		json_object_object_add(o, "dropped", bads);
		cli_print_json(o);
	} else {
		json_object_put(bads);
	}
	/* corrupt chunks are a finding, not a failure of the command: 3 tells a script */
	return bad ? 3 : 0;
}

const struct cli_cmd cli_cmd_cache_verify = {
	.name = "cache verify",
	.summary = "Re-hash every chunk and drop the ones whose bytes no longer match their\n"
		   "name (the images that held them are then fetched again where they lack\n"
		   "them). Exit status 3 when any was corrupt.",
	.usage = "--cache DIR [--json]",
	.opts = stat_opts,
	.run = verify_run,
};

enum { G_CACHE, G_KEEP, G_GRACE, G_COPIES, G_HALF, G_JSON, G_COORD, G_AUTH, G_EDGE };

static const struct cli_opt gc_opts[] = {
	[G_CACHE] = { "cache", 0, "DIR", true, "the cache directory" },
	[G_KEEP] = { "keep", 0, "BYTES", true, "collect until the chunks take at most this much (e.g. 20G)" },
	[G_GRACE] = { "grace", 0, "SECONDS", false,
		      "keep unreferenced chunks added or used this recently (default 600)" },
	[G_COPIES] = { "copies", 0, "N", false,
		       "with --coordinator: also drop this edge's copy of a chunk other edges' images contain, if N other edges hold it and one of them registered it (default 0: never)" },
	[G_HALF] = { "half-life", 0, "SECONDS", false,
		     "with --coordinator: the keep policy halves a chunk's worth every this long unused here (default 86400)" },
	[G_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout" },
	COORD_OPTS(G_COORD, G_AUTH, G_EDGE),
	{ 0 },
};

struct gc_ctx {
	struct edg_coord *c;
	uint64_t grace;
	unsigned copies;
	double half_life_s;
	char err[512], rank_err[512];
};

/* The keep policy's worth of each candidate (popular, recent, scarce: edg_coord_keep). */
static int rank_by_coordinator(void *ctx, const uint8_t *digests, uint64_t n, const uint64_t *age_s, double *worth)
{
	struct gc_ctx *g = ctx;

	return edg_coord_keep(g->c, digests, n, age_s, g->half_life_s, worth, g->rank_err, sizeof(g->rank_err));
}

/* The coordinator's word on each candidate: no image anywhere needs this copy, no handoff leases it. */
static int ask_coordinator(void *ctx, const uint8_t *digests, uint64_t n, bool *ok)
{
	struct gc_ctx *g = ctx;

	return edg_coord_may_delete(g->c, digests, n, g->grace, g->copies, ok, g->err, sizeof(g->err));
}

/* Deleted for good: this edge no longer holds them (a failure only leaves it listed as a holder). */
static void tell_coordinator(void *ctx, const uint8_t *digests, uint64_t n)
{
	struct gc_ctx *g = ctx;
	char err[256];

	if (edg_coord_forget(g->c, digests, n, err, sizeof(err)))
		fprintf(stderr, "cache gc: warning: the coordinator still lists this edge as holding %llu of the "
				"deleted chunks: %s\n", (unsigned long long)n, err);
}

static int gc_run(const struct cli_cmd *cmd, const char *const *val)
{
	uint64_t keep, grace = 600;
	struct edg_gc_report rep;
	char err[512], *end;

	if (cli_parse_size(val[G_KEEP], &keep)) {
		cli_error("%s: bad --keep '%s'", cmd->name, val[G_KEEP]);
		return 2;
	}
	if (val[G_GRACE]) {
		errno = 0;
		grace = strtoull(val[G_GRACE], &end, 10);
		if (errno || *end || end == val[G_GRACE]) {
			cli_error("%s: bad --grace '%s'", cmd->name, val[G_GRACE]);
			return 2;
		}
	}
	unsigned long copies = 0;
	double half = 86400;
	if (val[G_COPIES] && (errno = 0, copies = strtoul(val[G_COPIES], &end, 10), errno || *end || copies > 1000)) {
		cli_error("%s: bad --copies '%s' (0 to 1000)", cmd->name, val[G_COPIES]);
		return 2;
	}
	if (val[G_HALF] && ((half = strtod(val[G_HALF], &end)) < 1 || *end)) {
		cli_error("%s: bad --half-life '%s' (seconds, at least 1)", cmd->name, val[G_HALF]);
		return 2;
	}
	struct edg_store *s = open_store(cmd->name, val[G_CACHE], false, 0);
	if (!s)
		return 1;
	bool missed;
	struct gc_ctx g = { .c = cli_coord_open(cmd->name, val[G_COORD], val[G_AUTH], val[G_EDGE],
						"collecting on this edge's knowledge alone", &missed),
			    .grace = grace, .copies = (unsigned)copies, .half_life_s = half };
	struct edg_gc_hooks hooks = { rank_by_coordinator, ask_coordinator, tell_coordinator, &g };
	int r = edg_store_gc(s, keep, grace, g.c ? &hooks : NULL, &rep, err, sizeof(err));
	edg_store_close(s);
	edg_coord_close(g.c);
	if (rep.rank_failed)
		fprintf(stderr, "cache gc: warning: no keep policy from the coordinator (%s): least recently used first\n",
			g.rank_err);
	/* one error line: the coordinator's failure explains a missed quota */
	if (rep.filter_failed) {
		cli_error("%s: the coordinator stopped answering (%s): what it had not approved was kept", cmd->name,
			  g.err);
	} else if (r && r != -ENOSPC) {
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	fprintf(stderr, "cache gc: %.1f -> %.1f MB, %llu chunks (%.1f MB) deleted\n", rep.before_bytes / 1e6,
		rep.after_bytes / 1e6, (unsigned long long)rep.deleted_chunks, rep.deleted_bytes / 1e6);
	if (val[G_JSON]) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "command", json_object_new_string("cache gc"));
		json_object_object_add(o, "keep_bytes", json_object_new_int64((int64_t)keep));
		json_object_object_add(o, "before_bytes", json_object_new_int64((int64_t)rep.before_bytes));
		json_object_object_add(o, "after_bytes", json_object_new_int64((int64_t)rep.after_bytes));
		json_object_object_add(o, "deleted_chunks", json_object_new_int64((int64_t)rep.deleted_chunks));
		json_object_object_add(o, "deleted_bytes", json_object_new_int64((int64_t)rep.deleted_bytes));
		json_object_object_add(o, "referenced_bytes", json_object_new_int64((int64_t)rep.kept_referenced_bytes));
		json_object_object_add(o, "pinned_bytes", json_object_new_int64((int64_t)rep.kept_pinned_bytes));
		json_object_object_add(o, "young_bytes", json_object_new_int64((int64_t)rep.kept_young_bytes));
		json_object_object_add(o, "coordinator_kept_bytes",
				       json_object_new_int64((int64_t)rep.kept_by_filter_bytes));
		json_object_object_add(o, "in_use_bytes", json_object_new_int64((int64_t)rep.kept_in_use_bytes));
		json_object_object_add(o, "coordinator", json_object_new_string(
			!val[G_COORD] ? "none" : g.c && !rep.filter_failed ? "asked" : "unreachable"));
		json_object_object_add(o, "order", json_object_new_string(rep.ranked ? "keep policy" : "least recently used"));
		json_object_object_add(o, "quota_reached", json_object_new_boolean(r == 0));
		cli_print_json(o);
	}
	if (r && !rep.filter_failed)
		cli_error("%s: %s", cmd->name, err);
	return r || rep.filter_failed ? 1 : 0;
}

const struct cli_cmd cli_cmd_cache_gc = {
	.name = "cache gc",
	.summary = "Delete chunks that no registered image references and no handoff in flight\n"
		   "pins, least recently used first, until the cache holds at most --keep bytes of\n"
		   "chunks. Expired pins are dropped first. With --coordinator, the keep policy\n"
		   "orders them (least worth first: unpopular across every edge's images and VMs,\n"
		   "long unused here, held by many other edges), and a chunk goes only if no\n"
		   "image anywhere contains it (or, with --copies N, none of this edge's and N\n"
		   "other edges hold it) and no handoff leases it; this edge then stops counting\n"
		   "as its holder. Unreachable, the edge decides alone. Fails (after collecting\n"
		   "what it may) when what must be kept exceeds --keep.",
	.usage = "--cache DIR --keep BYTES [--grace SECONDS] [--json] [--coordinator URL ... [--copies N] [--half-life SECONDS]]",
	.opts = gc_opts,
	.run = gc_run,
};

/* A fetch's summary on stdout; size_key names the fetched bytes' total as each command always has. */
static void print_fetch_json(const char *command, const char *name, const char *size_key,
			     const struct edg_fetch_report *r)
{
	json_object *o = json_object_new_object();

	json_object_object_add(o, "command", json_object_new_string(command));
	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, size_key, json_object_new_int64((int64_t)r->size));
	json_object_object_add(o, "chunks", json_object_new_int64((int64_t)r->chunks));
	json_object_object_add(o, "missing", json_object_new_int64((int64_t)r->missing));
	json_object_object_add(o, "fetched_chunks", json_object_new_int64((int64_t)r->fetched_chunks));
	json_object_object_add(o, "fetched_raw_bytes", json_object_new_int64((int64_t)r->fetched_raw_bytes));
	json_object_object_add(o, "wire_bytes", json_object_new_int64((int64_t)r->fetched_wire_bytes));
	json_object_object_add(o, "seconds", json_object_new_double(r->seconds));
	cli_print_json(o);
}

enum { F_CACHE, F_FROM, F_ORIGIN, F_KEY, F_NAME, F_AS, F_JSON, F_TIMEOUT, F_COORD, F_AUTH, F_EDGE };

static const struct cli_opt fetch_opts[] = {
	[F_CACHE] = { "cache", 0, "DIR", true, "the cache to fill (created if absent, with the service's chunk size)" },
	[F_FROM] = { "from", 0, "LOC,...", false,
		     "chunk services (handoff-engine serve) to fetch from, all at once: tcp:HOST:PORT, or "
		     "dpdk:PORT[,peer=MAC] through a port of this process's own (EAL arguments before --)" },
	[F_ORIGIN] = { "origin", 0, "LOC", false,
		       "the image's own source: holds all of it, asked last for chunks others hold" },
	[F_KEY] = { "key", 0, "FILE", true, "the key the services hold" },
	[F_NAME] = { "name", 0, "NAME[,NAME...]", true, "the images to fetch (several: one fetch for all)" },
	[F_AS] = { "as", 0, "NAME", false, "register the (one) image here under NAME (default: the same)" },
	[F_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout (with each source's share)" },
	[F_TIMEOUT] = { "timeout", 0, "SECONDS", false,
			"a source silent this long loses its chunks to the others (default 2)" },
	COORD_OPTS(F_COORD, F_AUTH, F_EDGE),
	{ 0 },
};

#define FETCH_CONNECT_S 10.0
#define FETCH_TIMEOUT_S 2.0
#define FETCH_PUSH_BYTES (512u << 10) /* per source, unasked, into a new cache: 8 chunks of 64 KiB */
#define FETCH_EAL_MB 512 /* a dpdk: source's packet buffers and rings, several sources */
#define FETCH_LOG_S 5.0 /* progress lines when stderr is not a terminal */
#define FETCH_IMAGES_MAX 16

struct multi_progress {
	const char *name;
	double last;
};

static void on_multi_progress(void *ctx, const struct edg_peer *p, unsigned n, uint64_t done, uint64_t total,
			      double secs)
{
	struct multi_progress *mp = ctx;
	bool tty = isatty(2);
	char line[1024];
	int at;

	if (!tty && secs - mp->last < FETCH_LOG_S)
		return;
	mp->last = secs;
	at = snprintf(line, sizeof(line), "cache fetch: %s: %llu/%llu chunks (%.0f%%) in %.1f s", mp->name,
		      (unsigned long long)done, (unsigned long long)total, total ? 100.0 * (double)done / (double)total : 100.0,
		      secs);
	for (unsigned k = 0; k < n && at < (int)sizeof(line); k++)
		at += snprintf(line + at, sizeof(line) - (size_t)at, " | %s %.0f%% %.1f Mbit/s%s", p[k].name,
			       done ? 100.0 * (double)p[k].chunks / (double)done : 0.0,
			       secs > 0 ? (double)p[k].raw_bytes * 8 / 1e6 / secs : 0.0, p[k].failed ? " failed" : "");
	fprintf(stderr, tty ? "\r%s\033[K" : "%s\n", line);
}

/* With --coordinator: the edges that hold what the cache lacks of the image join the sources. */
static void coordinated_sources(struct edg_coord *c, struct edg_store *s, const struct edg_recipe *rc,
				struct edg_sources *src)
{
	char err[512];
	bool *missing = malloc(rc->n ? rc->n : 1);
	uint8_t *lack = malloc(rc->n ? rc->n * EDG_DIGEST_LEN : 1);
	uint64_t nl = 0, nm;

	if (missing && lack && !edg_store_missing(s, rc->digests, rc->n, missing, &nm)) {
		for (uint64_t i = 0; i < rc->n; i++)
			if (missing[i])
				memcpy(lack + nl++ * EDG_DIGEST_LEN, rc->digests + i * EDG_DIGEST_LEN, EDG_DIGEST_LEN);
		if (edg_sources_ask_coordinator(src, c, lack, nl, stderr, err, sizeof(err)))
			fprintf(stderr, "cache fetch: warning: %s (fetching from the sources named)\n", err);
	}
	free(missing);
	free(lack);
}

static int fetch_run(const struct cli_cmd *cmd, const char *const *val)
{
	CLI_KEY(key);
	char err[512] = "";
	struct edg_sources src = { .n = 0 };
	struct edg_multi_report rep;
	struct multi_progress mp = { val[F_NAME], 0 };
	double timeout = FETCH_TIMEOUT_S;
	uint64_t recipe_wire = 0;

	if (!val[F_FROM] && !val[F_ORIGIN]) {
		cli_error("%s: name the sources: --from LOC,... and/or --origin LOC (tcp:HOST:PORT or dpdk:PORT)", cmd->name);
		return 2;
	}
	if (val[F_TIMEOUT]) {
		char *end;
		timeout = strtod(val[F_TIMEOUT], &end);
		if (*end || end == val[F_TIMEOUT] || !(timeout >= 0.1 && timeout <= 3600)) {
			cli_error("%s: bad --timeout '%s' (seconds, 0.1..3600)", cmd->name, val[F_TIMEOUT]);
			return 2;
		}
	}
	if ((val[F_ORIGIN] && edg_sources_add(&src, val[F_ORIGIN], true, err, sizeof(err))) ||
	    (val[F_FROM] && edg_sources_add(&src, val[F_FROM], false, err, sizeof(err)))) {
		cli_error("%s: %s", cmd->name, err);
		return 2;
	}
	if (cli_read_key(val[F_KEY], key))
		return 1;
	int socket;
	if ((edg_sources_need_eal(val[F_FROM]) || edg_sources_need_eal(val[F_ORIGIN])) &&
	    cli_eal_start(FETCH_EAL_MB, &socket))
		return 1;
	/* each image's recipe from the origin, else the first source named that has it */
	struct edg_recipe rc[FETCH_IMAGES_MAX] = { { 0 } };
	const char *as[FETCH_IMAGES_MAX], *want[FETCH_IMAGES_MAX];
	char names[FETCH_IMAGES_MAX][EDG_NAME_MAX + 1];
	unsigned nimg = 0, got = 0;
	struct edg_store *s = NULL;
	struct edg_coord *coord = NULL;
	bool missed = false;
	int r = -1;
	for (const char *p = val[F_NAME]; *p;) {
		size_t l = strcspn(p, ",");
		if (l && (nimg == FETCH_IMAGES_MAX || l > EDG_NAME_MAX)) {
			cli_error("%s: --name: at most %d images of at most %d characters", cmd->name, FETCH_IMAGES_MAX,
				  EDG_NAME_MAX);
			return 2;
		}
		if (l) {
			snprintf(names[nimg], sizeof(names[0]), "%.*s", (int)l, p);
			as[nimg] = want[nimg] = names[nimg];
			nimg++;
		}
		p += l + (p[l] == ',');
	}
	if (!nimg || (val[F_AS] && nimg > 1)) {
		cli_error("%s: %s", cmd->name, nimg ? "--as goes with one --name" : "--name names no image");
		return 2;
	}
	if (val[F_AS])
		as[0] = val[F_AS];
	memset(&rep, 0, sizeof(rep));
	double t0 = mono_s(), recipe_s;
	/* every source at once, then each image's recipe in shares from all of them; the
	 * origin's (else the first source's that has it) names it */
	/* a cache with nothing yet wants every chunk: each source sends its share's first ones
	 * unasked, so the paths carry data while the recipes are put together and the chunks asked */
	char mdb[PATH_MAX];
	snprintf(mdb, sizeof(mdb), "%s/data.mdb", val[F_CACHE]);
	edg_sources_connect(src.p, src.n, key, FETCH_CONNECT_S, want, nimg, access(mdb, F_OK) ? FETCH_PUSH_BYTES : 0);
	got = edg_sources_recipes(src.p, src.n, want, nimg, rc, timeout, &recipe_wire, err, sizeof(err));
	recipe_s = mono_s() - t0;
	if (got == nimg) {
		err[0] = 0; /* a source that lacked an image is no failure when others had it */
		/* a new cache takes the service's chunk size */
		s = edg_store_open(val[F_CACHE], true, rc[0].chunk_size, 0, err, sizeof(err));
		coord = s ? cli_coord_open(cmd->name, val[F_COORD], val[F_AUTH], val[F_EDGE], NULL, &missed) : NULL;
		for (unsigned i = 0; s && coord && i < nimg; i++)
			coordinated_sources(coord, s, &rc[i], &src);
		if (s)
			r = edg_fetch_multi(s, src.p, src.n, key, rc, as, nimg, timeout, &rep, on_multi_progress, &mp, err,
					    sizeof(err));
	}
	for (unsigned k = 0; k < src.n; k++) /* a channel the fetch did not take over */
		edg_peer_drop(&src.p[k]);
	explicit_bzero(key, sizeof(key));
	cli_progress_end();
	if (isatty(2))
		fprintf(stderr, "\r\033[K");
	for (unsigned i = 0; i < nimg; i++)
		free(rc[i].digests);
	edg_store_close(s);
	edg_coord_close(coord);
	if (r) {
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	rep.wire_bytes += recipe_wire;
	fprintf(stderr, "cache fetch: %s: %llu chunks, %llu missing here, %llu fetched (%.1f MB, %.1f MB on the wire) "
			"from %u sources in %.1f s; longest stall %.2f s\n",
		val[F_NAME], (unsigned long long)rep.chunks, (unsigned long long)rep.missing,
		(unsigned long long)rep.fetched_chunks, rep.fetched_raw_bytes / 1e6, rep.wire_bytes / 1e6, src.n,
		rep.seconds, rep.stall_s);
	for (unsigned k = 0; k < src.n; k++)
		fprintf(stderr, "cache fetch:   %s%s: %llu chunks (%.0f%%), %.1f Mbit/s%s%s\n", src.p[k].name,
			src.p[k].origin ? " (origin)" : "", (unsigned long long)src.p[k].chunks,
			rep.fetched_chunks ? 100.0 * (double)src.p[k].chunks / (double)rep.fetched_chunks : 0.0,
			src.p[k].rate_bps / 1e6, src.p[k].failed ? ", failed: " : "", src.p[k].failed ? src.p[k].error : "");
	if (val[F_JSON]) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "command", json_object_new_string("cache fetch"));
		json_object_object_add(o, "name", json_object_new_string(val[F_NAME]));
		json_object_object_add(o, "size", json_object_new_int64((int64_t)rep.size));
		json_object_object_add(o, "chunks", json_object_new_int64((int64_t)rep.chunks));
		json_object_object_add(o, "missing", json_object_new_int64((int64_t)rep.missing));
		json_object_object_add(o, "fetched_chunks", json_object_new_int64((int64_t)rep.fetched_chunks));
		json_object_object_add(o, "fetched_raw_bytes", json_object_new_int64((int64_t)rep.fetched_raw_bytes));
		json_object_object_add(o, "wire_bytes", json_object_new_int64((int64_t)rep.wire_bytes));
		json_object_object_add(o, "duplicate_bytes", json_object_new_int64((int64_t)rep.duplicate_bytes));
		json_object_object_add(o, "seconds", json_object_new_double(rep.seconds));
		json_object_object_add(o, "stall_s", json_object_new_double(rep.stall_s));
		json_object_object_add(o, "timeout_s", json_object_new_double(rep.timeout_s));
		json_object_object_add(o, "recipe_s", json_object_new_double(recipe_s));
		json_object_object_add(o, "sources", cli_sources_json(src.p, src.n, rep.fetched_chunks));
		cli_print_json(o);
	}
	return missed ? EXIT_COORD_MISSED : 0;
}

const struct cli_cmd cli_cmd_cache_fetch = {
	.name = "cache fetch",
	.summary = "Fetch image NAME from chunk services (handoff-engine serve): its recipe (every\n"
		   "image's in one round trip, a share from each source at once, the whole checked\n"
		   "against the recipe's hash; a source that sent its shares holds the images and\n"
		   "is not asked what it holds), then only the chunks this cache lacks, from\n"
		   "every source at once over the same channels (each path kept\n"
		   "full by a window sized from its measured rate and round trip; scarce chunks\n"
		   "first, the origin last for chunks others hold; a silent or failed source's\n"
		   "chunks move to the others), each checked against its digest; then register\n"
		   "it. With --coordinator, the edges that hold what is lacking are asked too.\n"
		   "A fetch that fails registers nothing; the chunks that arrived stay.",
	.usage = "--cache DIR --key FILE --name NAME[,NAME...] {--from LOC,... | --origin LOC} [--as NAME] "
		 "[--timeout SECONDS] [--json] [--coordinator URL --coordinator-auth FILE [--edge NAME]]",
	.opts = fetch_opts,
	.run = fetch_run,
	.needs_eal = true,
};

enum { E_CACHE, E_NAME, E_OUT };

static const struct cli_opt export_opts[] = {
	[E_CACHE] = { "cache", 0, "DIR", true, "the cache" },
	[E_NAME] = { "name", 0, "NAME", true, "the image to write" },
	[E_OUT] = { "output", 'o', "FILE", true, "where (written beside, renamed into place when complete)" },
	{ 0 },
};

static int export_run(const struct cli_cmd *cmd, const char *const *val)
{
	char err[512] = "out of memory";
	struct edg_store *s = open_store(cmd->name, val[E_CACHE], false, 0);

	if (!s)
		return 1;
	int r = edg_store_export(s, val[E_NAME], val[E_OUT], err, sizeof(err));
	edg_store_close(s);
	if (r) {
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	return 0;
}

const struct cli_cmd cli_cmd_cache_export = {
	.name = "cache export",
	.summary = "Write image NAME out of the cache into FILE, every chunk checked against its\n"
		   "digest; FILE appears only when complete.",
	.usage = "--cache DIR --name NAME -o FILE",
	.opts = export_opts,
	.run = export_run,
};

/* ---- a base VM in a cache ----------------------------------------------------------- */

/*
 * A base VM directory is vm.json and the files it names: the kernel, the
 * initramfs, the disk and the saved state vm.mig. In a cache they are
 * images NAME/<file>, except that the saved state is kept as what the
 * engine derives from it, the RAM image mem.img and the device state
 * devices.bin: the RAM image is page-aligned, so related bases share its
 * chunks (vm.mig's pages sit at odd offsets between records: few chunks
 * matched), and fetch-base writes vm.mig again from the two.
 */
#define BASE_FILES_MAX 6

struct base_files {
	const char *file[BASE_FILES_MAX]; /* vm.json, kernel, [initrd,] disk, mem.img, devices.bin */
	unsigned n;
	const char *disk_sha;
	json_object *json;
};

static const char *json_str(json_object *o, const char *k1, const char *k2)
{
	json_object *v;

	if (!json_object_object_get_ex(o, k1, &v))
		return NULL;
	if (k2 && !json_object_object_get_ex(v, k2, &v))
		return NULL;
	return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* The files vm.json names (plain names in the base directory). 0, or -1 with err. */
static int base_files(const char *vm_json, struct base_files *b, char *err, size_t errlen)
{
	memset(b, 0, sizeof(*b));
	if (!(b->json = json_object_from_file(vm_json))) {
		snprintf(err, errlen, "%s: cannot read it as JSON", vm_json);
		return -1;
	}
	b->file[b->n++] = "vm.json";
	const char *f[] = { json_str(b->json, "kernel", NULL), json_str(b->json, "initrd", NULL),
			    json_str(b->json, "disk", "file"), json_str(b->json, "state", "file") };
	for (unsigned i = 0; i < 4; i++) {
		if (!f[i] && i == 1)
			continue; /* no initramfs */
		if (!f[i] || !f[i][0] || strchr(f[i], '/') || !strcmp(f[i], "..") || !strcmp(f[i], ".")) {
			snprintf(err, errlen, "%s: %s names no plain file in the base directory", vm_json,
				 (const char *[]){ "kernel", "initrd", "disk.file", "state.file" }[i]);
			json_object_put(b->json);
			b->json = NULL;
			return -1;
		}
		if (i == 3 && strcmp(f[i], "vm.mig")) {
			snprintf(err, errlen, "%s: state.file is %s; the engine reads vm.mig", vm_json, f[i]);
			json_object_put(b->json);
			b->json = NULL;
			return -1;
		}
		if (i < 3)
			b->file[b->n++] = f[i];
	}
	b->file[b->n++] = "mem.img";
	b->file[b->n++] = "devices.bin";
	b->disk_sha = json_str(b->json, "disk", "sha256");
	return 0;
}

static bool base_name_ok(const char *cmd, const char *name)
{
	if (!name[0] || strchr(name, '/') || strlen(name) > 200) {
		cli_error("%s: base name '%s': 1-200 bytes, no '/'", cmd, name);
		return false;
	}
	return true;
}

enum { AB_CACHE, AB_NAME, AB_CHUNK, AB_COORD, AB_AUTH, AB_EDGE };

static const struct cli_opt add_base_opts[] = {
	[AB_CACHE] = { "cache", 0, "DIR", true, "the cache directory (created if absent)" },
	[AB_NAME] = { "name", 0, "NAME", true, "the base's name in the cache (its files become NAME/<file>)" },
	[AB_CHUNK] = { "chunk-size", 0, "BYTES", false, "chunk size of a new cache (default 64K)" },
	COORD_OPTS(AB_COORD, AB_AUTH, AB_EDGE),
	{ 0 },
};

static int add_base_run(const struct cli_cmd *cmd, const char *const *val)
{
	int n;
	const char *const *dirs = cli_operands(&n);
	char err[512], path[4200], name[300];
	uint64_t chunk = 0;
	struct base_files b;

	if (n != 1) {
		cli_error("%s: name one BASEDIR (see %s --help)", cmd->name, cmd->name);
		return 2;
	}
	if (!base_name_ok(cmd->name, val[AB_NAME]))
		return 2;
	if (val[AB_CHUNK] && (cli_parse_size(val[AB_CHUNK], &chunk) || chunk > EDG_CHUNK_MAX)) {
		cli_error("%s: bad --chunk-size '%s'", cmd->name, val[AB_CHUNK]);
		return 2;
	}
	snprintf(path, sizeof(path), "%s/vm.json", dirs[0]);
	if (base_files(path, &b, err, sizeof(err))) {
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	/* mem.img and devices.bin derived from vm.mig, if they are not yet */
	struct eng_vmbase vb;
	if (eng_vmbase_open(&vb, dirs[0], err, sizeof(err))) {
		cli_error("%s: %s", cmd->name, err);
		json_object_put(b.json);
		return 1;
	}
	eng_vmbase_close(&vb);
	struct edg_store *s = open_store(cmd->name, val[AB_CACHE], true, (uint32_t)chunk);
	int ret = s ? 0 : 1;
	bool missed = false;
	struct edg_coord *c = s ? cli_coord_open(cmd->name, val[AB_COORD], val[AB_AUTH], val[AB_EDGE], NULL, &missed)
				: NULL;
	for (unsigned i = 0; i < b.n && !ret; i++) {
		struct edg_add_report rep;
		snprintf(path, sizeof(path), "%s/%s", dirs[0], b.file[i]);
		snprintf(name, sizeof(name), "%s/%s", val[AB_NAME], b.file[i]);
		if (add_image(cmd->name, s, &c, &missed, name, path, &rep))
			ret = 1;
	}
	json_object_put(b.json);
	edg_store_close(s);
	edg_coord_close(c);
	if (!ret && missed) {
		fprintf(stderr, "cache add-base: the base is in the cache, but the coordinator does not know: "
				"add it again once it answers\n");
		return EXIT_COORD_MISSED;
	}
	return ret;
}

const struct cli_cmd cli_cmd_cache_add_base = {
	.name = "cache add-base",
	.summary = "Add a base VM directory (scripts/make-base) to the cache: vm.json and the\n"
		   "files it names (kernel, initramfs, disk) become images NAME/<file>, and the\n"
		   "saved state its page-aligned parts NAME/mem.img and NAME/devices.bin.\n"
		   "With --coordinator, as cache add: the coordinator learns that this edge holds\n"
		   "their chunks and registers each image.",
	.usage = "--cache DIR --name NAME [--chunk-size BYTES] [--coordinator URL ...] BASEDIR",
	.opts = add_base_opts,
	.run = add_base_run,
	.args = "BASEDIR",
};

/* SHA-256 of a whole file, as hex (65 bytes). */
static int file_sha256(const char *path, char *hex)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t buf[1 << 16], md[32];
	FILE *f = fopen(path, "rb");
	size_t n;
	int ok = f && ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);

	while (ok && (n = fread(buf, 1, sizeof(buf), f)) > 0)
		ok = EVP_DigestUpdate(ctx, buf, n);
	ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, md, NULL);
	if (f)
		fclose(f);
	EVP_MD_CTX_free(ctx);
	if (ok)
		edg_digest_hex(md, hex);
	return ok ? 0 : -1;
}

enum { FB_CACHE, FB_FROM, FB_KEY, FB_NAME, FB_OUT, FB_BOOT, FB_JSON };

static const struct cli_opt fetch_base_opts[] = {
	[FB_CACHE] = { "cache", 0, "DIR", true, "the cache to fill (created if absent)" },
	[FB_FROM] = { "from", 0, "tcp:HOST:PORT|dpdk:PORT", true, "the chunk service that holds the base" },
	[FB_KEY] = { "key", 0, "FILE", true, "the key the service holds" },
	[FB_NAME] = { "name", 0, "NAME", true, "the base's name (cache add-base --name)" },
	[FB_OUT] = { "output", 'o', "BASEDIR", true, "where to write the base VM (absent or empty)" },
	[FB_BOOT] = { "boot-only", 0, NULL, false, "only what a destination QEMU needs to start and wait for a handoff into an edge cache (receive --cache): vm.json, kernel, initramfs, and an empty disk of the base's size" },
	[FB_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout" },
	{ 0 },
};

/* Fetch NAME/file into s and write it to BASEDIR/file; adds to the totals. */
static int fetch_one(struct edg_store **s, const char *cache, struct edg_chan *ch, const char *base,
		     const char *file, const char *out, struct edg_fetch_report *tot, char *err, size_t errlen)
{
	char name[300], path[4200];
	struct edg_recipe rc;
	struct edg_fetch_report rep = { 0 };
	struct progress p = { file, mono_s() };
	int r;

	snprintf(name, sizeof(name), "%s/%s", base, file);
	if ((r = edg_fetch_recipe(ch, name, &rc, &rep.fetched_wire_bytes, err, errlen)))
		return r;
	if (!*s && !(*s = edg_store_open(cache, true, rc.chunk_size, 0, err, errlen))) {
		free(rc.digests);
		return -EIO;
	}
	r = edg_fetch_chunks(*s, ch, &rc, name, &rep, on_progress, &p, err, errlen);
	cli_progress_end();
	free(rc.digests);
	if (r)
		return r;
	snprintf(path, sizeof(path), "%s/%s", out, file);
	if ((r = edg_store_export(*s, name, path, err, errlen)))
		return r;
	tot->size += rep.size;
	tot->chunks += rep.chunks;
	tot->missing += rep.missing;
	tot->fetched_chunks += rep.fetched_chunks;
	tot->fetched_raw_bytes += rep.fetched_raw_bytes;
	tot->fetched_wire_bytes += rep.fetched_wire_bytes;
	fprintf(stderr, "cache fetch-base: %s: %llu chunks, %llu fetched (%.1f MB on the wire)\n", file,
		(unsigned long long)rep.chunks, (unsigned long long)rep.fetched_chunks, rep.fetched_wire_bytes / 1e6);
	return 0;
}

/* BASEDIR/file: a new sparse file of NAME/file's size (what receive --cache writes into). */
static int empty_image(struct edg_chan *ch, const char *base, const char *file, const char *out,
		       struct edg_fetch_report *tot, char *err, size_t errlen)
{
	char name[300], path[4200];
	struct edg_recipe rc;
	uint64_t wire = 0;
	int r;

	snprintf(name, sizeof(name), "%s/%s", base, file);
	if ((r = edg_fetch_recipe(ch, name, &rc, &wire, err, errlen)))
		return r;
	free(rc.digests);
	tot->fetched_wire_bytes += wire;
	snprintf(path, sizeof(path), "%s/%s", out, file);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0 || ftruncate(fd, (off_t)rc.size)) {
		r = -errno;
		snprintf(err, errlen, "cannot create %.200s: %s", path, strerror(-r));
	}
	if (fd >= 0)
		close(fd);
	if (!r)
		fprintf(stderr, "cache fetch-base: %s: empty, %llu bytes (the handoff fills it)\n", file,
			(unsigned long long)rc.size);
	return r;
}

/* Remove a directory this command filled (plain files only), after a failure. */
static void remove_flat_dir(const char dir[static 1])
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[4400];

	while (d && (e = readdir(d))) {
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
			unlink(p);
		}
	}
	if (d)
		closedir(d);
	rmdir(dir);
}

/* BASEDIR absent, or an empty directory: a base in use is never overwritten. */
static bool out_dir_free(const char *cmd, const char *dir, bool *exists)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	bool empty = true;

	*exists = d != NULL;
	if (!d) {
		if (errno == ENOENT)
			return true;
		cli_error("%s: %s: %s", cmd, dir, strerror(errno));
		return false;
	}
	while ((e = readdir(d)))
		empty &= !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
	closedir(d);
	if (!empty)
		cli_error("%s: %s is not an empty directory (a base in use is never overwritten)", cmd, dir);
	return empty;
}

static int fetch_base_run(const struct cli_cmd *cmd, const char *const *val)
{
	CLI_KEY(key);
	char err[512] = "", path[4400], tmp[4096];
	struct edg_fetch_report tot = { 0 };
	struct base_files b = { 0 };
	struct edg_store *s = NULL;
	double t0 = mono_s();
	bool exists, boot = val[FB_BOOT] != NULL;
	int r = -1;

	if (!base_name_ok(cmd->name, val[FB_NAME]) || !out_dir_free(cmd->name, val[FB_OUT], &exists))
		return 2;
	int socket;
	if (!strncmp(val[FB_FROM], "dpdk:", 5) && cli_eal_start(FETCH_EAL_MB, &socket))
		return 1;
	/* everything goes into a directory beside BASEDIR, renamed into place when complete */
	snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", val[FB_OUT]);
	if (!mkdtemp(tmp)) {
		cli_error("%s: cannot create a directory beside %s: %s", cmd->name, val[FB_OUT], strerror(errno));
		return 1;
	}
	if (cli_read_key(val[FB_KEY], key)) {
		rmdir(tmp);
		return 1;
	}
	struct eng_conn_bind bind = { .key = key }; /* dpdk: keys its own handshake with it too */
	struct eng_conn *c = eng_conn_connect(val[FB_FROM], &bind, FETCH_CONNECT_S, err, sizeof(err));
	struct edg_chan *ch = c ? edg_chan_client(c, key, FETCH_CONNECT_S, err, sizeof(err)) : NULL;
	explicit_bzero(key, sizeof(key));
	/* vm.json first: it names the rest */
	if (ch && !fetch_one(&s, val[FB_CACHE], ch, val[FB_NAME], "vm.json", tmp, &tot, err, sizeof(err))) {
		snprintf(path, sizeof(path), "%s/vm.json", tmp);
		r = base_files(path, &b, err, sizeof(err));
		/* the last three: disk, mem.img, devices.bin (--boot-only: an empty disk, no state) */
		for (unsigned i = 1; !r && i < b.n; i++)
			if (!boot || i < b.n - 3)
				r = fetch_one(&s, val[FB_CACHE], ch, val[FB_NAME], b.file[i], tmp, &tot, err, sizeof(err));
			else if (i == b.n - 3)
				r = empty_image(ch, val[FB_NAME], b.file[i], tmp, &tot, err, sizeof(err));
		/* end to end: the disk is the one vm.json describes */
		char hex[65];
		if (!r && !boot && b.disk_sha) {
			snprintf(path, sizeof(path), "%s/%s", tmp, b.file[b.n - 3]);
			if (file_sha256(path, hex) || strcmp(hex, b.disk_sha)) {
				snprintf(err, sizeof(err), "%.200s does not match the SHA-256 vm.json gives it",
					 b.file[b.n - 3]);
				r = -EBADMSG;
			}
		}
		edg_fetch_done(ch);
		/* and the saved state QEMU starts from, written again from mem.img and devices.bin */
		if (!r && !boot)
			r = eng_vmbase_rebuild_state(tmp, err, sizeof(err));
	}
	edg_chan_free(ch);
	if (c)
		eng_conn_close(c);
	edg_store_close(s);
	if (b.json)
		json_object_put(b.json);
	if (!r && ((exists && rmdir(val[FB_OUT])) || rename(tmp, val[FB_OUT]))) {
		snprintf(err, sizeof(err), "cannot move %.200s to %.200s: %s", tmp, val[FB_OUT], strerror(errno));
		r = -errno;
	}
	if (r) {
		remove_flat_dir(tmp);
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	tot.seconds = mono_s() - t0;
	fprintf(stderr, "cache fetch-base: %s in %s: %llu of %llu chunks fetched, %.1f MB on the wire, %.1f s\n",
		val[FB_NAME], val[FB_OUT], (unsigned long long)tot.fetched_chunks, (unsigned long long)tot.chunks,
		tot.fetched_wire_bytes / 1e6, tot.seconds);
	if (val[FB_JSON])
		print_fetch_json("cache fetch-base", val[FB_NAME], "bytes", &tot);
	return 0;
}

const struct cli_cmd cli_cmd_cache_fetch_base = {
	.name = "cache fetch-base",
	.summary = "Fetch base VM NAME from a chunk service into the cache (only the chunks it\n"
		   "lacks) and write it out as BASEDIR: vm.json and the files it names, each\n"
		   "checked chunk by chunk, the disk also against vm.json's SHA-256, and vm.mig\n"
		   "written again from mem.img and devices.bin (checked to give them back).\n"
		   "BASEDIR must be absent or empty. Then BASEDIR serves as --base for receive.\n"
		   "With --boot-only, only what the destination QEMU needs to start (vm.json, the\n"
		   "kernel, the initramfs) and an empty disk of the base's size: receive --cache then\n"
		   "takes the rest from the cache, or over the link.",
	.usage = "--cache DIR --from tcp:HOST:PORT|dpdk:PORT --key FILE --name NAME -o BASEDIR [--boot-only] [--json]",
	.opts = fetch_base_opts,
	.run = fetch_base_run,
	.needs_eal = true,
};

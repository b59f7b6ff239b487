/*
 * handoff-engine cache add|stat|verify|gc: an edge's chunk cache
 * (edge/store.h) from the command line. No EAL: the store is an embedded
 * LMDB database and the work is reading and hashing files.
 */
#include "cli.h"
#include "edge/store.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { A_CACHE, A_CHUNK, A_NAME, A_JSON };

static const struct cli_opt add_opts[] = {
	[A_CACHE] = { "cache", 0, "DIR", true, "the cache directory (created if absent)" },
	[A_CHUNK] = { "chunk-size", 0, "BYTES", false,
		      "chunk size of a new cache (4K..4M, a multiple of 4K; default 64K)" },
	[A_NAME] = { "name", 0, "NAME", false, "register the (single) IMAGE under NAME, not its file name" },
	[A_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout" },
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

static int add_run(const struct cli_cmd *cmd, const char *const *val)
{
	uint64_t chunk = 0;
	int n;
	const char *const *images = cli_operands(&n);
	char err[512];
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
	json_object *list = json_object_new_array();
	for (int i = 0; i < n && !ret; i++) {
		char copy[4096];
		snprintf(copy, sizeof(copy), "%s", images[i]);
		const char *name = val[A_NAME] ? val[A_NAME] : basename(copy);
		struct progress p = { name, mono_s() };
		struct edg_add_report rep;
		if (edg_store_add_file(s, name, images[i], &rep, on_progress, &p, err, sizeof(err))) {
			cli_progress_end();
			cli_error("%s: %s", cmd->name, err); /* err names the file where it matters */
			ret = 1;
			break;
		}
		cli_progress_end();
		fprintf(stderr, "cache add: %s: %llu chunks, %llu new (%.1f MB), %.1f s\n", name,
			(unsigned long long)rep.chunks, (unsigned long long)rep.new_chunks, rep.new_bytes / 1e6,
			rep.seconds);
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
	return ret;
}

const struct cli_cmd cli_cmd_cache_add = {
	.name = "cache add",
	.summary = "Cut each IMAGE (a disk image, a memory snapshot, a kernel: any file) into\n"
		   "fixed-size chunks named by their SHA-256, store the ones the cache lacks and\n"
		   "register the image (its recipe: the list of its chunks). Adding an image again\n"
		   "replaces its recipe; chunks are stored once however many images hold them.",
	.usage = "--cache DIR [--chunk-size BYTES] [--name NAME] [--json] IMAGE...",
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
		ADD(file_bytes);
#undef ADD
		cli_print_json(o);
		return 0;
	}
	printf("cache %s: %u-byte chunks\n"
	       "  chunks      %llu (%.1f MB)\n"
	       "  referenced  %llu (%.1f MB) by %llu images of %.1f MB in all\n"
	       "  pinned      %llu (%.1f MB) by %llu pins\n"
	       "  file        %.1f MB\n",
	       val[S_CACHE], st.chunk_size, (unsigned long long)st.chunks, st.bytes / 1e6,
	       (unsigned long long)st.referenced_chunks, st.referenced_bytes / 1e6, (unsigned long long)st.images,
	       st.image_bytes / 1e6, (unsigned long long)st.pinned_chunks, st.pinned_bytes / 1e6,
	       (unsigned long long)st.pins, st.file_bytes / 1e6);
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

enum { G_CACHE, G_KEEP, G_GRACE, G_JSON };

static const struct cli_opt gc_opts[] = {
	[G_CACHE] = { "cache", 0, "DIR", true, "the cache directory" },
	[G_KEEP] = { "keep", 0, "BYTES", true, "collect until the chunks take at most this much (e.g. 20G)" },
	[G_GRACE] = { "grace", 0, "SECONDS", false,
		      "keep unreferenced chunks added or used this recently (default 600)" },
	[G_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout" },
	{ 0 },
};

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
	struct edg_store *s = open_store(cmd->name, val[G_CACHE], false, 0);
	if (!s)
		return 1;
	int r = edg_store_gc(s, keep, grace, &rep, err, sizeof(err));
	edg_store_close(s);
	if (r && r != -ENOSPC) {
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
		json_object_object_add(o, "quota_reached", json_object_new_boolean(r == 0));
		cli_print_json(o);
	}
	if (r) {
		cli_error("%s: %s", cmd->name, err);
		return 1;
	}
	return 0;
}

const struct cli_cmd cli_cmd_cache_gc = {
	.name = "cache gc",
	.summary = "Delete chunks that no registered image references and no handoff in flight\n"
		   "pins, least recently used first, until the cache holds at most --keep bytes of\n"
		   "chunks. Expired pins are dropped first. Fails (after collecting what it may)\n"
		   "when what must be kept alone exceeds --keep.",
	.usage = "--cache DIR --keep BYTES [--grace SECONDS] [--json]",
	.opts = gc_opts,
	.run = gc_run,
};

/*
 * handoff-engine patch: rebuild TARGET from BASE and a stream. The result is
 * built aside (a copy of the base, then the stream's blocks), verified
 * against the stream's digest and only then renamed into place.
 */
#include "cli.h"
#include "conn.h"
#include "io.h"
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { O_BASE, O_IN, O_OUT, O_KEY, O_JSON };

static const struct cli_opt patch_opts[] = {
	[O_BASE] = { "base", 'b', "BASE", true, "the base image the stream was made against" },
	[O_IN] = { "input", 'i', "IN", true, "stream source: PATH, file:PATH, or tcp:ADDR:PORT / dpdk:PORT to receive on (needs --key)" },
	[O_OUT] = { "output", 'o', "RESULT", true, "where to write the rebuilt image" },
	[O_KEY] = { "key", 'k', "FILE", false, "key the stream was sealed with" },
	[O_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout" },
	{ 0 },
};

struct patch_progress {
	struct timespec start;
	double last;
};

static double since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void patch_progress(void *ctx, const struct eng_patch_stats *st)
{
	struct patch_progress *pp = ctx;
	double now = since(&pp->start);

	if (now - pp->last < 0.1)
		return;
	pp->last = now;
	cli_progress("patch", st->records * CDC_BLOCK_SIZE, 0, st->wire_bytes, now);
}

/* The result starts as a copy of the base: unchanged blocks are not sent. */
static int copy_base(int from, int to, uint64_t size)
{
	loff_t in = 0, out = 0;

	while ((uint64_t)in < size) {
		ssize_t n = copy_file_range(from, &in, to, &out, size - (uint64_t)in, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
	}
	return 0;
}

static int patch_run(const struct cli_cmd *cmd, const char *const *val)
{
	char err[256];
	CLI_KEY(key);
	const char *in_path, *out_path;
	struct eng_outfile out = { .fd = -1 };
	struct trk_index *base = NULL;
	struct eng_conn *conn = NULL;
	uint8_t session[ENG_SESSION_LEN];
	bool remote = eng_conn_is_remote(val[O_IN]);
	int in_fd = -1, base_fd = -1, ret = 1, socket;

	(void)cmd;
	if (val[O_KEY] && cli_read_key(val[O_KEY], key))
		return 2;
	if (remote && !val[O_KEY]) {
		cli_error("a key is required for streams that cross a link (--key FILE)");
		return 2;
	}
	in_path = val[O_IN];
	if ((!remote && eng_parse_location(val[O_IN], &in_path, err, sizeof(err))) ||
	    eng_parse_location(val[O_OUT], &out_path, err, sizeof(err))) {
		cli_error("%s", err);
		return 2;
	}
	in_fd = remote ? -2 : open(in_path, O_RDONLY | O_CLOEXEC);
	if (in_fd == -1) {
		cli_error("cannot open stream %s: %s", in_path, strerror(errno));
		goto out;
	}
	base_fd = open(val[O_BASE], O_RDONLY | O_CLOEXEC);
	if (base_fd < 0) {
		cli_error("cannot open base %s: %s", val[O_BASE], strerror(errno));
		goto out;
	}
	if (cli_eal_start(256, &socket))
		goto out;
	base = trk_index_open(val[O_BASE], err, sizeof(err));
	if (!base) {
		cli_error("%s", err);
		goto out;
	}
	if (remote) { /* before RESULT's temporary file exists: the wait may be long */
		struct eng_conn_bind b = { .key = key };
		memcpy(b.base_id, trk_index_id(base), sizeof(b.base_id));
		conn = eng_conn_accept(in_path, &b, 600, err, sizeof(err));
		if (!conn || eng_session_offer(conn, session, 0, err, sizeof(err))) {
			cli_error("%s", err);
			goto out;
		}
	}
	if (eng_outfile_create(&out, out_path, 0644, err, sizeof(err))) {
		cli_error("%s", err);
		goto out;
	}
	int r = copy_base(base_fd, out.fd, trk_index_size(base));
	if (r) {
		cli_error("cannot copy base into %s: %s", out.tmp, strerror(-r));
		eng_outfile_abort(&out);
		goto out;
	}
	struct eng_fd src_fd = { .fd = in_fd };
	struct eng_fd base_f = { .fd = base_fd, .size = trk_index_size(base) };
	struct eng_fd out_f = { .fd = out.fd, .size = trk_index_size(base) };
	struct eng_source src = conn ? eng_conn_source(conn) : eng_fd_source(&src_fd);
	struct eng_store base_store = eng_fd_store(&base_f), out_store = eng_fd_store(&out_f);
	struct patch_progress pp = { .last = 0 };
	clock_gettime(CLOCK_MONOTONIC, &pp.start);
	struct eng_patch_object obj = {
		.name = "image",
		.base = &base_store,
		.out = &out_store,
		.base_digests = trk_index_digest(base, 0),
		.base_size = trk_index_size(base),
		.base_id = trk_index_id(base),
	};
	struct eng_patch_args a = {
		.src = &src,
		.kind = ENG_KIND_IMAGE,
		.nobj = 1,
		.obj = &obj,
		.key = val[O_KEY] ? key : NULL,
		.session = conn ? session : NULL,
		.progress = patch_progress,
		.progress_ctx = &pp,
	};
	struct eng_patch_stats st;
	if (eng_patch_stream(&a, &st, err, sizeof(err))) {
		cli_error("patch failed: %s", err);
		eng_outfile_abort(&out);
		goto out;
	}
	cli_progress_end();
	if (eng_outfile_commit(&out, err, sizeof(err))) {
		cli_error("%s", err);
		goto out;
	}
	double secs = since(&pp.start);
	if (val[O_JSON]) {
		json_object *o = json_object_new_object();
		json_object_object_add(o, "command", json_object_new_string("patch"));
		json_object_object_add(o, "base", json_object_new_string(val[O_BASE]));
		json_object_object_add(o, "input", json_object_new_string(in_path));
		json_object_object_add(o, "output", json_object_new_string(out_path));
		json_object_object_add(o, "bytes_in", json_object_new_int64((int64_t)st.wire_bytes));
		json_object_object_add(o, "bytes_out", json_object_new_int64((int64_t)st.size[0]));
		json_object_object_add(o, "segments", json_object_new_int64((int64_t)st.segments));
		json_object_object_add(o, "records", json_object_new_int64((int64_t)st.records));
		json_object_object_add(o, "seconds", json_object_new_double(secs));
		json_object_object_add(o, "digest_ok", json_object_new_boolean(1));
		if (conn) {
			json_object *l = eng_conn_stats_json(conn);
			json_object_object_add(o, "transport", json_object_new_string(eng_conn_transport(conn)));
			if (l)
				json_object_object_add(o, "link", l);
		}
		cli_print_json(o);
	} else {
		fprintf(stderr, "patch: %.2f MiB stream -> %.1f MiB in %.2f s, digest verified\n",
			(double)st.wire_bytes / 1048576.0, (double)st.size[0] / 1048576.0, secs);
	}
	ret = 0;
out:
	eng_conn_close(conn);
	trk_index_free(base);
	if (in_fd >= 0)
		close(in_fd);
	if (base_fd >= 0)
		close(base_fd);
	return ret;
}

const struct cli_cmd cli_cmd_patch = {
	.name = "patch",
	.summary = "Rebuild the target from BASE and a stream made by diff. RESULT appears only\n"
		   "when every segment authenticated and the rebuilt image matches the stream's digest.",
	.usage = "--base BASE -i IN -o RESULT [--key FILE] [--json]",
	.opts = patch_opts,
	.run = patch_run,
	.needs_eal = true,
};

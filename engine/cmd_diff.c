/*
 * handoff-engine diff: shrink TARGET against BASE into a sealed stream.
 * Main thread: opens inputs, indexes the base, runs the pipeline, reports.
 */
#include "cli.h"
#include "conn.h"
#include "io.h"
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rte_cycles.h>

enum { O_BASE, O_TARGET, O_OUT, O_KEY, O_MODE, O_CIPHER, O_JSON };

static const struct cli_opt diff_opts[] = {
	[O_BASE] = { "base", 'b', "BASE", true, "base image both ends hold (index cached as BASE.hidx)" },
	[O_TARGET] = { "target", 't', "TARGET", true, "image to encode against BASE" },
	[O_OUT] = { "output", 'o', "OUT", true, "stream destination: PATH, file:PATH, or tcp:HOST:PORT / dpdk:PORT of a patch --input (needs --key)" },
	[O_KEY] = { "key", 'k', "FILE", false, "seal with this 32-byte key (AEAD); without it, integrity only" },
	[O_MODE] = { "mode", 'm', "MODE", false, "auto (default) or DELTA:COMP:LEVEL, e.g. wdiff:zstd:3" },
	[O_CIPHER] = { "cipher", 0, "NAME", false, "aes-256-gcm (default) or chacha20-poly1305" },
	[O_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout" },
	{ 0 },
};

/* auto for diff (send's auto is the adaptation controller): deltas where they pay, fast zstd */
static const struct eng_mode auto_mode = { CDC_DELTA_BEST, CDC_COMP_ZSTD, 3 };

struct diff_tick {
	uint64_t start;
};

static void diff_tick(void *ctx, struct eng_pipeline *p)
{
	struct diff_tick *t = ctx;
	struct eng_diff_report rep;

	eng_pipeline_report(p, &rep);
	cli_progress("diff", rep.stages[ENG_STAGE_HASH].bytes_in, rep.target_size, rep.wire_bytes,
		     (double)(rte_rdtsc() - t->start) / (double)rte_get_tsc_hz());
}

/*
 * The base and target are read through mappings: if either shrinks while it
 * is read, the access faults with SIGBUS. Say what happened instead of dying
 * without a word, and leave no partial output behind.
 */
static const char *volatile partial_output;

static void on_sigbus(int sig)
{
	static const char msg[] =
		"handoff-engine: diff failed: the base or the target shrank while it was read\n";
	(void)sig;
	if (partial_output)
		unlink(partial_output);
	if (write(2, msg, sizeof(msg) - 1) < 0) {
	}
	_exit(1);
}

static void catch_truncation(const char *tmp_path)
{
	partial_output = tmp_path;
	struct sigaction sa = { .sa_handler = on_sigbus };
	sigaction(SIGBUS, &sa, NULL);
}

static int diff_run(const struct cli_cmd *cmd, const char *const *val)
{
	char err[256], lcores[128];
	struct eng_mode mode = auto_mode;
	bool is_auto = !val[O_MODE] || !strcmp(val[O_MODE], "auto");
	CLI_KEY(key);
	enum cdc_aead aead;
	const char *out_path;
	struct eng_outfile out = { .fd = -1 };
	struct trk_index *base = NULL;
	void *base_map = MAP_FAILED, *target_map = MAP_FAILED;
	struct stat bst, tst;
	int tfd = -1, bfd = -1, ret = 1;

	(void)cmd;
	if (!is_auto && eng_mode_parse(val[O_MODE], &mode, err, sizeof(err))) {
		cli_error("%s", err);
		return 2;
	}
	if (cli_parse_aead(val[O_CIPHER], &aead) || (val[O_KEY] && cli_read_key(val[O_KEY], key)))
		return 2;
	bool remote = eng_conn_is_remote(val[O_OUT]);
	struct eng_conn *conn = NULL;
	uint8_t session[ENG_SESSION_LEN];
	if (remote && !val[O_KEY]) {
		cli_error("a key is required for streams that cross a link (--key FILE)");
		return 2;
	}
	out_path = val[O_OUT];
	if (!remote && eng_parse_location(val[O_OUT], &out_path, err, sizeof(err))) {
		cli_error("%s", err);
		return 2;
	}
	tfd = open(val[O_TARGET], O_RDONLY | O_CLOEXEC);
	if (tfd < 0 || fstat(tfd, &tst)) {
		cli_error("cannot open target %s: %s", val[O_TARGET], strerror(errno));
		goto out;
	}
	bfd = open(val[O_BASE], O_RDONLY | O_CLOEXEC);
	if (bfd < 0 || fstat(bfd, &bst)) {
		cli_error("cannot open base %s: %s", val[O_BASE], strerror(errno));
		goto out;
	}
	int socket;
	if (cli_eal_start(cli_diff_mem_mb((uint64_t)bst.st_size, (uint64_t)tst.st_size), &socket))
		goto out;
	base = trk_index_open(val[O_BASE], err, sizeof(err));
	if (!base) {
		cli_error("%s", err);
		goto out;
	}
	if (trk_index_size(base) != (uint64_t)bst.st_size) {
		cli_error("base %s changed while it was indexed; try again", val[O_BASE]);
		goto out;
	}
	if (bst.st_size) {
		base_map = mmap(NULL, (size_t)bst.st_size, PROT_READ, MAP_SHARED, bfd, 0);
		if (base_map == MAP_FAILED) {
			cli_error("cannot map base %s: %s", val[O_BASE], strerror(errno));
			goto out;
		}
	}
	if (remote) {
		struct eng_conn_bind b = { .key = key };
		memcpy(b.base_id, trk_index_id(base), sizeof(b.base_id));
		conn = eng_conn_connect(out_path, &b, 30, err, sizeof(err));
		if (!conn || eng_session_take(conn, session, NULL, ENG_SESSION_WAIT_S, err, sizeof(err))) {
			cli_error("%s", err);
			goto out;
		}
	} else if (eng_outfile_create(&out, out_path, 0644, err, sizeof(err))) {
		cli_error("%s", err);
		goto out;
	}
	posix_fadvise(tfd, 0, 0, POSIX_FADV_SEQUENTIAL);
	/* read in place rather than copied; a failed mapping falls back to pread */
	if (tst.st_size) {
		target_map = mmap(NULL, (size_t)tst.st_size, PROT_READ, MAP_SHARED, tfd, 0);
		if (target_map != MAP_FAILED)
			madvise(target_map, (size_t)tst.st_size, MADV_SEQUENTIAL);
	}
	catch_truncation(out.tmp);

	struct eng_fd out_fd = { .fd = out.fd };
	struct eng_sink sink = conn ? eng_conn_sink(conn) : eng_fd_sink(&out_fd);
	struct diff_tick tick = { .start = rte_rdtsc() };
	struct eng_file_feed target = {
		.fd = tfd,
		.map = target_map == MAP_FAILED ? NULL : target_map,
		.size = (uint64_t)tst.st_size,
	};
	struct eng_feed feed = eng_file_feed(&target);
	struct eng_diff_object obj = {
		.name = "image",
		.base = base,
		.base_map = base_map == MAP_FAILED ? NULL : base_map,
		.capacity = (uint64_t)tst.st_size,
	};
	struct eng_diff_args a = {
		.kind = ENG_KIND_IMAGE,
		.nobj = 1,
		.obj = &obj,
		.feed = &feed,
		.sink = &sink,
		.key = val[O_KEY] ? key : NULL,
		.session = conn ? session : NULL,
		.aead = aead,
		.mode = mode,
		.socket = socket,
		.tick = diff_tick,
		.tick_ctx = &tick,
		.exit_after = true,
	};
	struct eng_diff_report rep;
	int run = eng_diff_run(&a, &rep, err, sizeof(err));
	partial_output = NULL; /* reading is over */
	if (run) {
		cli_error("diff failed: %s", conn && eng_conn_error(conn) ? eng_conn_error(conn) : err);
		if (conn)
			eng_conn_shutdown(conn, SHUT_RDWR);
		else
			eng_outfile_abort(&out);
		goto out;
	}
	cli_progress_end();
	if (conn ? eng_conn_shutdown(conn, SHUT_WR) != 0 : eng_outfile_commit(&out, err, sizeof(err)) != 0) {
		cli_error("%s", conn ? (eng_conn_error(conn) ? eng_conn_error(conn) : "the receiver did not take the stream's end")
				     : err);
		goto out;
	}
	char mode_name[48];
	eng_mode_format(&mode, mode_name, sizeof(mode_name));
	cli_lcore_list(lcores, sizeof(lcores));
	double mb_s = rep.seconds > 0 ? (double)rep.target_size / 1e6 / rep.seconds : 0;
	if (val[O_JSON]) {
		json_object *o = json_object_new_object(), *v = json_object_new_object(),
			    *d = json_object_new_object();
		json_object_object_add(o, "command", json_object_new_string("diff"));
		json_object_object_add(o, "base", json_object_new_string(val[O_BASE]));
		json_object_object_add(o, "target", json_object_new_string(val[O_TARGET]));
		json_object_object_add(o, "output", json_object_new_string(out_path));
		json_object_object_add(o, "mode", json_object_new_string(is_auto ? "auto" : mode_name));
		json_object_object_add(o, "mode_used", json_object_new_string(mode_name));
		json_object_object_add(o, "keyed", json_object_new_boolean(val[O_KEY] != NULL));
		json_object_object_add(o, "bytes_in", json_object_new_int64((int64_t)rep.target_size));
		json_object_object_add(o, "bytes_out", json_object_new_int64((int64_t)rep.wire_bytes));
		json_object_object_add(o, "ratio", json_object_new_double(
			rep.target_size ? (double)rep.wire_bytes / (double)rep.target_size : 0));
		json_object_object_add(o, "seconds", json_object_new_double(rep.seconds));
		json_object_object_add(o, "throughput_mb_s", json_object_new_double(mb_s));
		json_object_object_add(o, "lcores", json_object_new_int((int)rep.lcores));
		json_object_object_add(o, "lcore_list", json_object_new_string(lcores));
		json_object_object_add(o, "segments", json_object_new_int64((int64_t)rep.segments));
		for (int i = 0; i < ENG_VERDICT_COUNT; i++)
			json_object_object_add(v, eng_verdict_name(i), json_object_new_int64((int64_t)rep.verdicts[i]));
		json_object_object_add(o, "blocks", v);
		for (int i = 0; i < CDC_DELTA_COUNT; i++)
			if (i != CDC_DELTA_BEST)
				json_object_object_add(d, i == CDC_DELTA_NONE ? "raw" : cdc_delta_name(i),
						       json_object_new_int64((int64_t)rep.deltas[i]));
		json_object_object_add(o, "new_blocks", d);
		json_object_object_add(o, "stages", cli_stage_json(&rep));
		json_object_object_add(o, "placement", cli_placement_json());
		cli_print_json(o);
	} else {
		fprintf(stderr, "diff: %.1f MiB -> %.2f MiB (%.2f%%) in %.2f s, %.0f MB/s on %u lcores (%s), mode %s\n",
			(double)rep.target_size / 1048576.0, (double)rep.wire_bytes / 1048576.0,
			rep.target_size ? 100.0 * (double)rep.wire_bytes / (double)rep.target_size : 0,
			rep.seconds, mb_s, rep.lcores, lcores, mode_name);
	}
	ret = 0;
out:
	eng_conn_close(conn);
	if (base_map != MAP_FAILED)
		munmap(base_map, (size_t)bst.st_size);
	if (target_map != MAP_FAILED)
		munmap(target_map, (size_t)tst.st_size);
	trk_index_free(base);
	if (tfd >= 0)
		close(tfd);
	if (bfd >= 0)
		close(bfd);
	return ret;
}

const struct cli_cmd cli_cmd_diff = {
	.name = "diff",
	.summary = "Encode TARGET against BASE: blocks are hashed, deduplicated against the base,\n"
		   "zero and earlier blocks, delta-encoded, compressed in ~1 MiB segments and sealed.",
	.usage = "--base BASE --target TARGET -o OUT [--key FILE] [--mode auto|DELTA:COMP:LEVEL] [--json]",
	.opts = diff_opts,
	.run = diff_run,
	.needs_eal = true,
};

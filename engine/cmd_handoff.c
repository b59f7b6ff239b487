/*
 * handoff-engine send / receive: the VM handoff's command lines (the work is
 * in handoff_send.c and handoff_receive.c).
 */
#include "cli.h"
#include "cli_coord.h"
#include "conn.h"
#include "handoff.h"
#include "edge/multi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { S_QMP, S_DISK, S_BASE, S_TO, S_KEY, S_MODE, S_CIPHER, S_JSON, S_TIMEOUT, S_TRACE, S_BUDGET, S_THROTTLE,
       S_RETRY, S_ORDER, S_VM_NAME, S_COORD, S_AUTH, S_EDGE };

static const struct cli_opt send_opts[] = {
	[S_QMP] = { "qmp", 0, "SRC.sock", true, "QMP socket of the running source QEMU" },
	[S_DISK] = { "disk", 0, "TRACKED_DISK", true, "the VM's disk as served by 'handoff-engine track'" },
	[S_BASE] = { "base", 0, "BASEDIR", true, "base VM directory the VM was started from (scripts/make-base)" },
	[S_TO] = { "to", 0, "DEST", true, "tcp:HOST:PORT or dpdk:PORT (live handoff), or file:PATH (VM overlay of the suspended VM)" },
	[S_KEY] = { "key", 'k', "FILE", false, "32-byte key (handoff-engine keygen); required for tcp: and dpdk:" },
	[S_MODE] = { "mode", 'm', "MODE", false, "auto (default: re-picked from link, CPU and data while running) or DELTA:COMP:LEVEL, e.g. wdiff:zstd:3" },
	[S_CIPHER] = { "cipher", 0, "NAME", false, "aes-256-gcm (default) or chacha20-poly1305" },
	[S_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout at the end" },
	[S_TIMEOUT] = { "connect-timeout", 0, "SECONDS", false, "how long to retry connecting (default 30)" },
	[S_TRACE] = { "trace", 0, "FILE", false, "write one JSON line per controller tick (time, mode, P, R, link, queue), per guest throttle step and per pass (its order)" },
	[S_BUDGET] = { "stop-budget", 0, "SECONDS", false, "stop the VM once the rest fits in this much link time, like QEMU's downtime-limit, and is at most 4 MiB or stopped shrinking (default 1; the pause adds about 1 s)" },
	[S_THROTTLE] = { "throttle", 0, "on|off", false, "when the guest dirties faster than the link drains, slow its vCPUs (cgroup CPU quota) until the rest fits the budget (default on)" },
	[S_RETRY] = { "retry-for", 0, "SECONDS", false, "if the link is cut, reconnect for up to this long and go on from what the destination verified (default 0: fail at once; the receiver needs --retry-for too)" },
	[S_ORDER] = { "order", 0, "random|dirty", false, "each pre-copy pass in a random order (default), or coldest blocks first and the most often written last (dirty: experimental)" },
	[S_VM_NAME] = { "vm-name", 0, "NAME", false, "with --coordinator: once the destination runs the VM, end its registration as running on this edge (receive --vm-name)" },
	COORD_OPTS(S_COORD, S_AUTH, S_EDGE),
	{ 0 },
};

/* where --mode auto starts (why: docs/adapt.md; perf/bench-adapt's START_MODE names it too) */
static const struct eng_mode auto_mode = { CDC_DELTA_NONE, CDC_COMP_ZSTD, -5 };

static int need_key(const char *loc, const char *key_path, const char *what)
{
	if (eng_conn_is_remote(loc) && !key_path) {
		cli_error("%s: a key is required for transfers that leave the host (--key FILE; make one with 'handoff-engine keygen')",
			  what);
		return -1;
	}
	return 0;
}

static int parse_retry(const char *text, double *out)
{
	char *end;

	*out = strtod(text, &end);
	if (*end || end == text || *out < 0 || *out > 86400) {
		cli_error("bad --retry-for '%s' (seconds, 0..86400)", text);
		return -1;
	}
	return 0;
}

static int finish(json_object *summary, bool json, int ret, const char *what, const char *err)
{
	if (json && summary)
		cli_print_json(summary);
	else
		json_object_put(summary);
	if (ret) {
		cli_error("%s failed: %s", what, err);
		return 1;
	}
	return 0;
}

/*
 * --vm-name goes with a coordinator, checked before the handoff rather than
 * after it; send has no other use for one (receive does: its cache).
 */
static int vm_name_args(const char *cmd, const char *name, const char *url, const char *auth, bool coord_alone)
{
	char err[256];

	if (!name && (!url || coord_alone))
		return 0;
	if (!name) {
		cli_error("%s: --coordinator goes with --vm-name NAME: the VM whose registration here ends", cmd);
		return -1;
	}
	if (!url || !auth) {
		cli_error("%s: --vm-name needs --coordinator URL --coordinator-auth FILE", cmd);
		return -1;
	}
	if (!edg_coord_vm_name_ok(name, err, sizeof(err))) {
		cli_error("%s: %s", cmd, err);
		return -1;
	}
	return 0;
}

static int send_eal(int *socket, char *err, size_t errlen)
{
	return cli_eal_start_quiet(512, socket, err, errlen);
}

static int send_run(const struct cli_cmd *cmd, const char *const *val)
{
	struct eng_send_args a = {
		.qmp_path = val[S_QMP], .disk_path = val[S_DISK], .base_dir = val[S_BASE], .to = val[S_TO],
		.mode = auto_mode, .progress = isatty(2), .connect_timeout_s = 30, .trace_path = val[S_TRACE],
		.stop_budget_s = ENG_STOP_SECONDS, .throttle = true,
	};
	char *end;
	CLI_KEY(key);
	char err[512];
	json_object *summary = NULL;

	(void)cmd;
	if (val[S_MODE] && strcmp(val[S_MODE], "auto") && eng_mode_parse(val[S_MODE], &a.mode, err, sizeof(err))) {
		cli_error("%s", err);
		return 2;
	}
	a.adapt = !val[S_MODE] || !strcmp(val[S_MODE], "auto");
	if (val[S_TIMEOUT] && (a.connect_timeout_s = strtod(val[S_TIMEOUT], NULL)) <= 0) {
		cli_error("bad --connect-timeout '%s'", val[S_TIMEOUT]);
		return 2;
	}
	if (val[S_BUDGET] && ((a.stop_budget_s = strtod(val[S_BUDGET], &end)) < 0.05 || a.stop_budget_s > 600 ||
			      *end || end == val[S_BUDGET])) {
		cli_error("bad --stop-budget '%s' (seconds, 0.05..600)", val[S_BUDGET]);
		return 2;
	}
	if (val[S_THROTTLE] && strcmp(val[S_THROTTLE], "on") && strcmp(val[S_THROTTLE], "off")) {
		cli_error("bad --throttle '%s' (on or off)", val[S_THROTTLE]);
		return 2;
	}
	a.throttle = !val[S_THROTTLE] || !strcmp(val[S_THROTTLE], "on");
	if (val[S_ORDER] && strcmp(val[S_ORDER], "dirty") && strcmp(val[S_ORDER], "random")) {
		cli_error("bad --order '%s' (dirty or random)", val[S_ORDER]);
		return 2;
	}
	a.order_random = !val[S_ORDER] || !strcmp(val[S_ORDER], "random");
	if (val[S_RETRY] && parse_retry(val[S_RETRY], &a.retry_for_s))
		return 2;
	if (vm_name_args("send", val[S_VM_NAME], val[S_COORD], val[S_AUTH], false))
		return 2;
	if (val[S_VM_NAME] && !eng_conn_is_remote(a.to)) {
		cli_error("--vm-name goes with a live handoff (tcp:, dpdk:): an overlay runs nowhere yet");
		return 2;
	}
	if (need_key(a.to, val[S_KEY], "send") || cli_parse_aead(val[S_CIPHER], &a.aead) ||
	    (val[S_KEY] && cli_read_key(val[S_KEY], key)))
		return 2;
	a.key = val[S_KEY] ? key : NULL;
	a.start_eal = send_eal; /* overlapped with the set-up */
	int ret = eng_handoff_send(&a, &summary, err, sizeof(err));
	if (!ret && val[S_VM_NAME] && summary) /* the VM runs at the destination now: not here */
		json_object_object_add(summary, "coordinator_vm", json_object_new_string(cli_coord_end_vm(
			"send", val[S_VM_NAME], val[S_COORD], val[S_AUTH], val[S_EDGE], true)));
	else if (!ret && val[S_VM_NAME])
		cli_coord_end_vm("send", val[S_VM_NAME], val[S_COORD], val[S_AUTH], val[S_EDGE], true);
	if (!ret && !val[S_JSON]) {
		json_object *t, *w, *dt;
		if (json_object_object_get_ex(summary, "total_s", &t) &&
		    json_object_object_get_ex(summary, "wire_bytes", &w) &&
		    json_object_object_get_ex(summary, "downtime_s", &dt))
			fprintf(stderr, "send: done in %.2f s, %.2f MB on the wire, downtime %.3f s\n",
				json_object_get_double(t), (double)json_object_get_int64(w) / 1e6,
				json_object_get_double(dt));
	}
	return finish(summary, val[S_JSON] != NULL, ret, "send", err);
}

const struct cli_cmd cli_cmd_send = {
	.name = "send",
	.summary = "Hand a running QEMU VM off to a destination (tcp: or dpdk:) while it runs, or write the\n"
		   "suspended VM as an overlay against its base (file:). Memory, disk and device state are\n"
		   "deduplicated and delta-encoded against the base, compressed and sealed. If anything\n"
		   "fails before the destination is committed, the source VM keeps running.",
	.usage = "--qmp SRC.sock --disk TRACKED_DISK --base BASEDIR --to tcp:HOST:PORT|dpdk:PORT|file:PATH [--key FILE] [--json]\n"
		 "[--mode auto|DELTA:COMP:LEVEL] [--stop-budget SECONDS] [--throttle on|off] [--trace FILE] [--retry-for SECONDS] [--order random|dirty]\n"
		 "[--vm-name NAME --coordinator URL --coordinator-auth FILE [--edge NAME]]\n"
		 "(dpdk: needs the port in the EAL arguments, e.g. --vdev net_af_packet0,iface=eth1 -- send ... --to dpdk:0)",
	.opts = send_opts,
	.run = send_run,
	.needs_eal = true,
};

enum { R_FROM, R_QMP, R_BASE, R_CACHE, R_DISK_OUT, R_KEY, R_JSON, R_TIMEOUT, R_RETRY, R_FETCH_FROM, R_FETCH_KEY,
       R_VM_NAME, R_COORD, R_AUTH, R_EDGE };

static const struct cli_opt receive_opts[] = {
	[R_FROM] = { "from", 0, "SOURCE", true, "tcp:ADDR:PORT to listen on, dpdk:PORT to wait on, or file:PATH of a VM overlay" },
	[R_QMP] = { "qmp", 0, "DST.sock", true, "QMP socket of the destination QEMU, started with -incoming defer" },
	[R_BASE] = { "base", 0, "BASEDIR", false, "the same base VM directory as the source's (or --cache)" },
	[R_CACHE] = { "cache", 0, "DIR", false, "no base here: this edge chunk cache supplies every chunk of the source's base it holds; the rest crosses the link (tcp:, dpdk:)" },
	[R_DISK_OUT] = { "disk-out", 0, "PATH", true, "opened by the destination QEMU, written in place: a copy of the base disk (--base), or a file of the base disk's size (--cache)" },
	[R_KEY] = { "key", 'k', "FILE", false, "the sender's key; required for tcp: and dpdk:" },
	[R_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout at the end" },
	[R_TIMEOUT] = { "accept-timeout", 0, "SECONDS", false,
			"how long to wait for the source once listening (default 600; with --base the set-up comes first)" },
	[R_RETRY] = { "retry-for", 0, "SECONDS", false, "if the link is cut, wait this long plus 30 s (the source may notice a cut only after 15 s of silence, or later when its kernel gives up) for the source to reconnect and resume (default 0: fail at once)" },
	[R_FETCH_FROM] = { "fetch-from", 0, "LOC,...", false, "with --cache: before the stream, fetch what the cache lacks from these chunk services (handoff-engine serve; tcp:HOST:PORT or dpdk:PORT) at once; the source sends what they do not deliver" },
	[R_FETCH_KEY] = { "fetch-key", 0, "FILE", false, "the chunk services' key (default: --key)" },
	[R_VM_NAME] = { "vm-name", 0, "NAME", false, "with --cache and --coordinator: once resumed, register the VM as running on this edge (it references its base's chunks until send --vm-name moves it on)" },
	COORD_OPTS(R_COORD, R_AUTH, R_EDGE),
	{ 0 },
};

static int receive_run(const struct cli_cmd *cmd, const char *const *val)
{
	struct eng_receive_args a = {
		.from = val[R_FROM], .qmp_path = val[R_QMP], .base_dir = val[R_BASE], .cache_dir = val[R_CACHE],
		.disk_out = val[R_DISK_OUT], .progress = isatty(2), .accept_timeout_s = 600,
	};
	CLI_KEY(key);
	char err[512];
	json_object *summary = NULL;

	(void)cmd;
	if (val[R_TIMEOUT] && (a.accept_timeout_s = strtod(val[R_TIMEOUT], NULL)) <= 0) {
		cli_error("bad --accept-timeout '%s'", val[R_TIMEOUT]);
		return 2;
	}
	if (val[R_RETRY] && parse_retry(val[R_RETRY], &a.retry_for_s))
		return 2;
	if (!a.base_dir == !a.cache_dir) {
		cli_error("give the base VM (--base BASEDIR) or an edge cache (--cache DIR), one of them");
		return 2;
	}
	if (a.cache_dir && !eng_conn_is_remote(a.from)) {
		cli_error("--cache needs a live source (tcp:, dpdk:): an overlay file is made against a whole base");
		return 2;
	}
	if (need_key(a.from, val[R_KEY], "receive") || (val[R_KEY] && cli_read_key(val[R_KEY], key)))
		return 2;
	a.key = val[R_KEY] ? key : NULL;
	CLI_KEY(fetch_key);
	if ((val[R_FETCH_FROM] || val[R_COORD]) && !a.cache_dir) {
		cli_error("--fetch-from and --coordinator go with --cache: they fill what the cache lacks");
		return 2;
	}
	if (vm_name_args("receive", val[R_VM_NAME], val[R_COORD], val[R_AUTH], true))
		return 2;
	a.vm_name = val[R_VM_NAME];
	if (val[R_FETCH_KEY] && cli_read_key(val[R_FETCH_KEY], fetch_key))
		return 2;
	a.fetch_key = val[R_FETCH_KEY] ? fetch_key : NULL;
	a.fetch_from = val[R_FETCH_FROM];
	if (a.fetch_from) { /* every source well-formed, none on the handoff's own DPDK port, before anything starts */
		struct edg_sources *t = calloc(1, sizeof(*t));
		int k = -1;
		if (!t || edg_sources_add(t, a.fetch_from, false, err, sizeof(err)) ||
		    (k = edg_sources_port_user(t, a.from)) >= 0) {
			if (k >= 0)
				snprintf(err, sizeof(err), "%.200s: the handoff itself uses that DPDK port", t->loc[k]);
			cli_error("receive: --fetch-from: %s", t ? err : "out of memory");
			free(t);
			return 2;
		}
		free(t);
	}
	bool missed;
	/* without it the handoff still completes: the source sends what the cache lacks */
	a.coord = cli_coord_open("receive", val[R_COORD], val[R_AUTH], val[R_EDGE],
				 "going on without it: the source sends what this cache lacks", &missed);
	int socket;
	if ((!strncmp(a.from, "dpdk:", 5) || edg_sources_need_eal(a.fetch_from)) && cli_eal_start(512, &socket))
		return 1;
	int ret = eng_handoff_receive(&a, &summary, err, sizeof(err));
	edg_coord_close(a.coord);
	explicit_bzero(fetch_key, sizeof(fetch_key));
	if (!ret && !val[R_JSON])
		fprintf(stderr, "receive: VM resumed from %s, every object verified\n", a.from);
	return finish(summary, val[R_JSON] != NULL, ret, "receive", err);
}

const struct cli_cmd cli_cmd_receive = {
	.name = "receive",
	.summary = "Receive a VM handed off by 'send' (tcp:, dpdk:) or apply a VM overlay (file:), verify\n"
		   "every object against the stream's digests, and resume the VM in the destination QEMU.\n"
		   "The VM never resumes on partial or unverified state.",
	.usage = "--from tcp:ADDR:PORT|dpdk:PORT|file:PATH --qmp DST.sock --base BASEDIR|--cache DIR --disk-out PATH\n"
		 "[--key FILE] [--json] [--accept-timeout SECONDS] [--retry-for SECONDS]\n"
		 "[--fetch-from tcp:HOST:PORT,... [--fetch-key FILE]] [--vm-name NAME] [--coordinator URL --coordinator-auth FILE [--edge NAME]]",
	.opts = receive_opts,
	.run = receive_run,
	.needs_eal = true,
};

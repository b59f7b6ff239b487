/*
 * Command-line plumbing shared by the handoff-engine commands: one option
 * table per command (parsing and --help both read it), EAL start-up with safe
 * defaults, key files, progress lines and JSON summaries.
 */
#ifndef HANDOFF_CLI_H
#define HANDOFF_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <json-c/json.h>

#include "codecs/codecs.h"
#include "pipeline.h"

#define CLI_MAX_OPTS 32

struct cli_opt {
	const char *name;  /* long name, without -- */
	char shortc;       /* 0: long only */
	const char *arg;   /* NULL: a flag */
	bool required;
	const char *help;
};

struct cli_cmd {
	const char *name;
	const char *summary;
	const char *usage;
	const struct cli_opt *opts; /* NULL-terminated by name */
	int (*run)(const struct cli_cmd *cmd, const char *const *val);
	bool needs_eal;
	const char *args; /* operands after the options, e.g. "IMAGE...": NULL if none */
};

/* Parse argv against cmd's table into val[] (by table index). 1 = --help shown. */
int cli_parse(const struct cli_cmd *cmd, int argc, char **argv, const char **val);
void cli_help(const struct cli_cmd *cmd);
/* The operands cli_parse left (commands with args): n of them. */
const char *const *cli_operands(int *n);
/* "512", "64K", "1.5G", "2T" (binary units) into bytes. 0, or -1 if malformed. */
int cli_parse_size(const char *s, uint64_t *out);

/* When the process reached main() and when EAL was up (eng_mono_s; 0: not yet):
 * a command's start-up time is measured from the first. */
extern double cli_main_s, cli_eal_up_s;

/* One-line error to stderr, prefixed with the program name. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Start DPDK's EAL. With no user EAL arguments, pick defaults for this host:
 * lcores from hwloc (one per physical core), --no-huge when no hugepages are
 * mounted (with -m sized from mem_mb), --no-pci, a unique file prefix.
 * *socket gets the NUMA node for pools: the main lcore's, whoever chose the
 * lcores. 0, or -1 after a one-line error.
 */
int cli_eal_start(unsigned mem_mb, int *socket);
/* The same, the reason in err instead of on stderr; safe while another thread of ours prints. */
int cli_eal_start_quiet(unsigned mem_mb, int *socket, char *err, size_t errlen);
/* EAL memory (MiB) a diff of these sizes needs: pools and dedup tables. */
unsigned cli_diff_mem_mb(uint64_t base_size, uint64_t target_size);
/* The EAL arguments the operator gave before --, kept for cli_eal_start. */
void cli_set_eal_args(int argc, char **argv);
void cli_eal_stop(void);
/* The EAL lcores as a list, e.g. "0-1" or "0,2". */
void cli_lcore_list(char *buf, size_t len);

/* Read a 32-byte key: raw, or 64 hex digits, from a file only its owner may
 * open (group or world permissions are refused, as ssh does). 0, or -1 after
 * a one-line error. */
int cli_read_key(const char *path, uint8_t key[CDC_KEY_LEN]);

/* A key on the stack, wiped when its scope ends, on every return path. */
static inline void cli_key_wipe(uint8_t (*key)[CDC_KEY_LEN])
{
	explicit_bzero(*key, sizeof(*key));
}
#define CLI_KEY(name) uint8_t name[CDC_KEY_LEN] __attribute__((cleanup(cli_key_wipe)))
int cli_parse_aead(const char *name, enum cdc_aead *aead);

/* Progress line on a terminal (no-op otherwise); cli_progress_end clears it. */
void cli_progress(const char *what, uint64_t done, uint64_t total, uint64_t out_bytes,
		  double seconds);
void cli_progress_end(void);

json_object *cli_stage_json(const struct eng_diff_report *rep);
/* Where cli_eal_start placed the pipeline (numa.h): node, nodes, the lcores' CPUs. NULL before EAL. */
json_object *cli_placement_json(void);
/* The pipeline's node (a dpdk: port without a node of its own goes there too); -1 before EAL. */
int cli_pipeline_node(void);
/* DPDK has memory on this node (a socket id it knows). */
bool cli_dpdk_has_node(int node);
void cli_print_json(json_object *o);

extern const struct cli_cmd cli_cmd_diff, cli_cmd_patch, cli_cmd_keygen, cli_cmd_track, cli_cmd_send,
	cli_cmd_receive, cli_cmd_probe, cli_cmd_cache_add, cli_cmd_cache_stat, cli_cmd_cache_verify,
	cli_cmd_cache_gc, cli_cmd_cache_remove, cli_cmd_cache_fetch, cli_cmd_cache_export, cli_cmd_serve,
	cli_cmd_cache_add_base, cli_cmd_cache_fetch_base, cli_cmd_cache_vm_left, cli_cmd_guard;

#endif

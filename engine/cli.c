/*
 * Shared command-line plumbing (see cli.h). Runs on the main thread before
 * and after the pipeline; the progress line is drawn from the pipeline's tick.
 */
#include "cli.h"
#include "clock.h"
#include "numa.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <getopt.h>
#include <hwloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_log.h>

void cli_error(const char *fmt, ...)
{
	va_list ap;

	cli_progress_end();
	fputs("handoff-engine: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ---- options ----------------------------------------------------------------- */

void cli_help(const struct cli_cmd *cmd)
{
	printf("usage: handoff-engine [EAL args --] %s %s\n\n%s\n\noptions:\n", cmd->name,
	       cmd->usage, cmd->summary);
	for (const struct cli_opt *o = cmd->opts; o->name; o++) {
		char left[64];
		snprintf(left, sizeof(left), "%s%c%s--%s%s%s", o->shortc ? "-" : "",
			 o->shortc ? o->shortc : ' ', o->shortc ? ", " : "  ", o->name,
			 o->arg ? " " : "", o->arg ? o->arg : "");
		printf("  %-28s %s%s\n", o->shortc ? left : left + 2, o->help,
		       o->required ? " (required)" : "");
	}
	printf("  %-28s %s\n", "-h, --help", "show this help");
	printf("\nEAL args (before --) are DPDK's, e.g. -l 0-1 --no-huge -m 512; without them the\n"
	       "engine picks lcores with hwloc and adds --no-huge when no hugepages are mounted.\n");
}

static int cli_argc;
static const char *const *cli_argv;

const char *const *cli_operands(int *n)
{
	*n = cli_argc;
	return cli_argv;
}

int cli_parse_size(const char *s, uint64_t *out)
{
	char *end;
	double v = strtod(s, &end), mul = 1;

	switch (*end) {
	case 'K': case 'k': mul = 0x1p10; end++; break;
	case 'M': case 'm': mul = 0x1p20; end++; break;
	case 'G': case 'g': mul = 0x1p30; end++; break;
	case 'T': case 't': mul = 0x1p40; end++; break;
	}
	if (end == s || *end || !(v >= 0) || v * mul > 0x1p60)
		return -1;
	*out = (uint64_t)(v * mul);
	return 0;
}

int cli_parse(const struct cli_cmd *cmd, int argc, char **argv, const char **val)
{
	struct option lopts[CLI_MAX_OPTS + 2];
	/* with operands, GNU getopt's permutation lets options and operands mix */
	char sopts[3 * CLI_MAX_OPTS + 4];
	int n = 0, c;

	strcpy(sopts, cmd->args ? "h" : "+h");
	cli_argc = 0;
	cli_argv = NULL;

	for (const struct cli_opt *o = cmd->opts; o->name; o++, n++) {
		if (n >= CLI_MAX_OPTS) { /* a table outgrew the arrays: a build defect, said at once */
			cli_error("%s: more than %d options (raise CLI_MAX_OPTS)", cmd->name, CLI_MAX_OPTS);
			return -1;
		}
		lopts[n] = (struct option){ o->name, o->arg ? required_argument : no_argument, NULL,
					    256 + n };
		if (o->shortc) {
			size_t l = strlen(sopts);
			sopts[l] = o->shortc;
			sopts[l + 1] = o->arg ? ':' : 0;
			sopts[l + 2] = 0;
		}
		val[n] = NULL;
	}
	lopts[n++] = (struct option){ "help", no_argument, NULL, 'h' };
	lopts[n] = (struct option){ 0 };
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, sopts, lopts, NULL)) != -1) {
		if (c == 'h') {
			cli_help(cmd);
			return 1;
		}
		if (c == '?' || c == ':') {
			cli_error("%s: unknown or incomplete option '%s' (see %s --help)", cmd->name,
				  argv[optind - 1], cmd->name);
			return -1;
		}
		int idx = c >= 256 ? c - 256 : -1;
		for (int i = 0; idx < 0 && cmd->opts[i].name; i++)
			if (cmd->opts[i].shortc == c)
				idx = i;
		val[idx] = cmd->opts[idx].arg ? optarg : "1";
	}
	if (optind < argc && !cmd->args) {
		cli_error("%s: unexpected argument '%s' (see %s --help)", cmd->name, argv[optind],
			  cmd->name);
		return -1;
	}
	cli_argc = argc - optind;
	cli_argv = (const char *const *)argv + optind;
	for (int i = 0; cmd->opts[i].name; i++)
		if (cmd->opts[i].required && !val[i]) {
			cli_error("%s: --%s is required (see %s --help)", cmd->name, cmd->opts[i].name,
				  cmd->name);
			return -1;
		}
	return 0;
}

/* ---- EAL ---------------------------------------------------------------------- */

static bool hugepages_available(void)
{
	FILE *f = fopen("/proc/mounts", "r");
	char line[512];
	bool mounted = false;

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, " hugetlbfs "))
			mounted = true;
	fclose(f);
	if (!mounted)
		return false;
	f = fopen("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "r");
	long free_pages = 0;
	if (f) {
		if (fscanf(f, "%ld", &free_pages) != 1)
			free_pages = 0;
		fclose(f);
	}
	return free_pages > 0;
}

/* One lcore per physical core this process may run on. */
static void hwloc_defaults(char *list, size_t len)
{
	hwloc_topology_t topo;
	size_t n = 0;

	snprintf(list, len, "0");
	if (hwloc_topology_init(&topo) || hwloc_topology_load(topo))
		return;
	hwloc_cpuset_t allowed = hwloc_bitmap_alloc();
	if (hwloc_get_cpubind(topo, allowed, HWLOC_CPUBIND_PROCESS))
		hwloc_bitmap_copy(allowed, hwloc_topology_get_allowed_cpuset(topo));
	int ncores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
	bool first = true;
	for (int i = 0; i < ncores && n + 8 < len; i++) {
		hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, i);
		hwloc_cpuset_t cs = hwloc_bitmap_dup(core->cpuset);
		hwloc_bitmap_and(cs, cs, allowed);
		int pu = hwloc_bitmap_first(cs);
		hwloc_bitmap_free(cs);
		if (pu < 0)
			continue;
		if (first)
			n = 0;
		n += (size_t)snprintf(list + n, len - n, "%s%d", first ? "" : ",", pu);
		first = false;
	}
	hwloc_bitmap_free(allowed);
	hwloc_topology_destroy(topo);
}

static bool user_gave(int argc, char **argv, const char *opt)
{
	for (int i = 0; i < argc; i++)
		if (!strncmp(argv[i], opt, strlen(opt)))
			return true;
	return false;
}

static int eal_argc;
static char **eal_argv;
static bool eal_started;
static bool eal_defaults; /* our own file prefix: remove its runtime dir at exit */

void cli_set_eal_args(int argc, char **argv)
{
	eal_argc = argc;
	eal_argv = argv;
}

unsigned cli_diff_mem_mb(uint64_t base_size, uint64_t target_size)
{
	/*
	 * The pipeline's buffers live outside the EAL heap (pipeline.c); the heap
	 * holds rings, a dpdk: output's mbuf pool (~40 MiB of jumbo frames) and
	 * the dedup tables, ~128 B per indexed or sent block. A bigger -m only
	 * makes EAL's start-up longer.
	 */
	uint64_t blocks = base_size / CDC_BLOCK_SIZE;
	uint64_t tblocks = target_size / CDC_BLOCK_SIZE;
	blocks += tblocks < (4u << 20) ? tblocks : (4u << 20);
	return (unsigned)(128 + (blocks * 128 >> 20));
}

double cli_main_s, cli_eal_up_s;

static struct {
	int node, nodes;
	char cpus[256];
	const char *from; /* "hwloc", or "dpdk" when hwloc could not say */
} placement = { .node = -1 };

static bool dpdk_has_socket(int node)
{
	for (unsigned i = 0; i < rte_socket_count(); i++)
		if (rte_socket_id_by_idx(i) == node)
			return true;
	return false;
}

/* The node of most of the lcores' CPUs (the main lcore's first: it wins a tie). */
static int place_pipeline(void)
{
	unsigned cpus[CPU_SETSIZE], n = 0, lcore, main_lcore = rte_get_main_lcore();
	size_t len = 0;
	char err[256];

	for (int pass = 0; pass < 2; pass++)
		RTE_LCORE_FOREACH(lcore) {
			if ((lcore == main_lcore) != (pass == 0))
				continue;
			rte_cpuset_t cs = rte_lcore_cpuset(lcore); /* --lcores may give one several */
			for (unsigned cpu = 0; cpu < CPU_SETSIZE && n < RTE_DIM(cpus); cpu++)
				if (CPU_ISSET(cpu, &cs)) {
					cpus[n++] = cpu;
					if (len + 12 < sizeof(placement.cpus))
						len += (size_t)snprintf(placement.cpus + len, sizeof(placement.cpus) - len,
									"%s%u", len ? "," : "", cpu);
				}
		}
	struct eng_numa *topo = eng_numa_open(NULL, false, err, sizeof(err));
	int node = topo ? eng_numa_node_of_cpus(topo, cpus, n) : -1;
	placement.nodes = topo ? eng_numa_nodes(topo) : (int)rte_socket_count();
	eng_numa_close(topo);
	placement.from = "hwloc";
	if (node < 0 || !dpdk_has_socket(node)) {
		unsigned s = rte_lcore_to_socket_id(main_lcore);
		node = dpdk_has_socket((int)s) ? (int)s : (int)rte_socket_id();
		placement.from = "dpdk";
	}
	return placement.node = node;
}

json_object *cli_placement_json(void)
{
	if (placement.node < 0)
		return NULL;
	json_object *o = json_object_new_object();
	json_object_object_add(o, "node", json_object_new_int(placement.node));
	json_object_object_add(o, "nodes", json_object_new_int(placement.nodes));
	json_object_object_add(o, "lcore_cpus", json_object_new_string(placement.cpus));
	json_object_object_add(o, "from", json_object_new_string(placement.from));
	return o;
}

int cli_pipeline_node(void)
{
	return placement.node;
}

bool cli_dpdk_has_node(int node)
{
	return dpdk_has_socket(node);
}

/* Writes what f holds to stderr (what other threads printed while EAL's output was held). */
static void replay(FILE *f)
{
	char buf[4096];
	size_t n;

	fflush(f);
	rewind(f);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		if (fwrite(buf, 1, n, stderr) != n)
			break;
}

int cli_eal_start(unsigned mem_mb, int *socket)
{
	char err[1024];

	if (!cli_eal_start_quiet(mem_mb, socket, err, sizeof(err)))
		return 0;
	cli_error("%s", err);
	return -1;
}

int cli_eal_start_quiet(unsigned mem_mb, int *socket, char *err, size_t errlen)
{
	char lcores[256], mem[32], prefix[64], *argv[64];
	char *logbuf = NULL;
	size_t loglen = 0;
	int argc = 0;

	hwloc_defaults(lcores, sizeof(lcores));
	argv[argc++] = "handoff-engine";
	if (eal_argc == 0) {
		argv[argc++] = "-l";
		argv[argc++] = lcores;
		if (!hugepages_available()) {
			snprintf(mem, sizeof(mem), "%u", mem_mb);
			argv[argc++] = "--no-huge";
			argv[argc++] = "-m";
			argv[argc++] = mem;
		}
		argv[argc++] = "--no-pci";
		argv[argc++] = "--no-shconf";
		snprintf(prefix, sizeof(prefix), "--file-prefix=handoff-%d", (int)getpid());
		argv[argc++] = prefix;
	}
	for (int i = 0; i < eal_argc && argc < 62; i++)
		argv[argc++] = eal_argv[i];
	argv[argc] = NULL;

	/* EAL chatters on stdout/stderr; keep it for the error line if init fails. */
	FILE *log = open_memstream(&logbuf, &loglen);
	if (log)
		rte_openlog_stream(log);
	if (!user_gave(eal_argc, eal_argv, "--log-level"))
		rte_log_set_global_level(RTE_LOG_NOTICE);
	fflush(stdout);
	fflush(stderr);
	/*
	 * Held, not dropped: a usage text on bad arguments is noise beside our one
	 * line, but another thread of ours (send prepares while EAL starts) may
	 * print meanwhile, and that comes out after.
	 */
	FILE *held = tmpfile();
	int saved_stdout = dup(1), saved_stderr = dup(2), devnull = held ? -1 : open("/dev/null", O_WRONLY);
	int sink = held ? fileno(held) : devnull;
	if (sink >= 0) {
		dup2(sink, 1);
		dup2(sink, 2);
	}
	int ret = rte_eal_init(argc, argv);
	int eal_errno = rte_errno;
	fflush(stdout);
	fflush(stderr);
	if (saved_stdout >= 0) {
		dup2(saved_stdout, 1);
		close(saved_stdout);
	}
	if (saved_stderr >= 0) {
		dup2(saved_stderr, 2);
		close(saved_stderr);
	}
	if (devnull >= 0)
		close(devnull);
	rte_openlog_stream(stderr);
	if (log)
		fclose(log);
	if (ret < 0) {
		/* the last EAL message is the reason */
		const char *why = NULL;
		if (logbuf) {
			char *end = logbuf + loglen;
			while (end > logbuf && (end[-1] == '\n' || end[-1] == ' '))
				*--end = 0;
			why = strrchr(logbuf, '\n');
			why = why ? why + 1 : (*logbuf ? logbuf : NULL);
			if (why && !strncmp(why, "EAL: ", 5))
				why += 5;
		}
		snprintf(err, errlen, "DPDK EAL initialisation failed (%s)%s%s; check the EAL arguments before --",
			 rte_strerror(eal_errno), why ? ": " : "", why ? why : "");
		free(logbuf);
		if (held)
			fclose(held);
		return -1;
	}
	if (held) {
		replay(held);
		fclose(held);
	}
	free(logbuf);
	eal_started = true;
	cli_eal_up_s = eng_mono_s();
	eal_defaults = eal_argc == 0;
	if (!user_gave(eal_argc, eal_argv, "--log-level"))
		rte_log_set_global_level(RTE_LOG_WARNING);
	/*
	 * Rings, tables and pools go on the node of the main lcore, whoever chose
	 * the lcores (hwloc's default or the operator's -l): the pipeline's
	 * stages run there. A DPDK port's own mbuf pool is on the port's node
	 * (dpdk_io/port.c).
	 */
	*socket = place_pipeline();
	return 0;
}

void cli_eal_stop(void)
{
	char dir[PATH_MAX];

	if (!eal_started)
		return;
	snprintf(dir, sizeof(dir), "%s", rte_eal_get_runtime_dir());
	rte_eal_cleanup();
	eal_started = false;
	if (eal_defaults) {
		DIR *d = opendir(dir);
		struct dirent *e;
		while (d && (e = readdir(d))) {
			char path[PATH_MAX + 256];
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
			unlink(path);
		}
		if (d)
			closedir(d);
		rmdir(dir);
	}
}

void cli_lcore_list(char *buf, size_t len)
{
	unsigned id;
	size_t n = 0;

	buf[0] = 0;
	RTE_LCORE_FOREACH(id)
	{
		if (n + 8 < len)
			n += (size_t)snprintf(buf + n, len - n, "%s%u", n ? "," : "", id);
	}
}

/* ---- keys ------------------------------------------------------------------- */

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int parse_key(const uint8_t *buf, ssize_t n, uint8_t key[CDC_KEY_LEN])
{
	if (n == CDC_KEY_LEN) {
		memcpy(key, buf, CDC_KEY_LEN);
		return 0;
	}
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		n--;
	if (n == 2 * CDC_KEY_LEN) {
		for (int i = 0; i < CDC_KEY_LEN; i++) {
			int hi = hexval(buf[2 * i]), lo = hexval(buf[2 * i + 1]);
			if (hi < 0 || lo < 0)
				goto bad;
			key[i] = (uint8_t)(hi << 4 | lo);
		}
		return 0;
	}
bad:
	explicit_bzero(key, CDC_KEY_LEN);
	return -1;
}

int cli_read_key(const char *path, uint8_t key[CDC_KEY_LEN])
{
	uint8_t buf[130];
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;
	ssize_t n;

	if (fd < 0) {
		cli_error("cannot open key file %s: %s", path, strerror(errno));
		return -1;
	}
	/* as ssh does with its keys: a key others could read is no secret */
	if (fstat(fd, &st) || (st.st_mode & 077)) {
		cli_error("key file %s is open to others (mode %03o; chmod 600 %s)", path, (unsigned)(st.st_mode & 0777), path);
		close(fd);
		return -1;
	}
	n = read(fd, buf, sizeof(buf));
	close(fd);
	r = parse_key(buf, n, key);
	explicit_bzero(buf, sizeof(buf));
	if (r)
		cli_error("key file %s must hold 32 raw bytes or 64 hex digits (make one with: handoff-engine keygen -o FILE)",
			  path);
	return r;
}

int cli_parse_aead(const char *name, enum cdc_aead *aead)
{
	if (!name || !strcmp(name, "aes-256-gcm"))
		*aead = CDC_AEAD_AES256GCM;
	else if (!strcmp(name, "chacha20-poly1305"))
		*aead = CDC_AEAD_CHACHA20POLY1305;
	else {
		cli_error("unknown cipher '%s': use aes-256-gcm or chacha20-poly1305", name);
		return -1;
	}
	return 0;
}

/* ---- progress and JSON ------------------------------------------------------- */

static bool progress_shown;

void cli_progress(const char *what, uint64_t done, uint64_t total, uint64_t out_bytes,
		  double seconds)
{
	if (!isatty(2))
		return;
	double mib = (double)done / 1048576.0;
	fprintf(stderr, "\r%s: %.0f / %.0f MiB (%3.0f%%)  %.0f MB/s  out %.1f MiB   ", what, mib,
		(double)total / 1048576.0, total ? 100.0 * (double)done / (double)total : 100.0,
		seconds > 0 ? (double)done / 1e6 / seconds : 0.0, (double)out_bytes / 1048576.0);
	progress_shown = true;
}

void cli_progress_end(void)
{
	if (progress_shown)
		fprintf(stderr, "\r\033[K");
	progress_shown = false;
}

json_object *cli_stage_json(const struct eng_diff_report *rep)
{
	json_object *arr = json_object_new_array();

	for (int i = 0; i < ENG_STAGE_COUNT; i++) {
		const struct eng_stage_report *s = &rep->stages[i];
		json_object *o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(s->name));
		json_object_object_add(o, "instances", json_object_new_int((int)s->instances));
		json_object_object_add(o, "blocks", json_object_new_int64((int64_t)s->blocks));
		json_object_object_add(o, "bytes_in", json_object_new_int64((int64_t)s->bytes_in));
		json_object_object_add(o, "bytes_out", json_object_new_int64((int64_t)s->bytes_out));
		json_object_object_add(o, "busy_s", json_object_new_double((double)s->busy_ns / 1e9));
		json_object_object_add(o, "P_ns_per_block",
				       json_object_new_double(s->blocks ? (double)s->busy_ns / (double)s->blocks : 0));
		json_object_object_add(o, "R",
				       json_object_new_double(s->bytes_in ? (double)s->bytes_out / (double)s->bytes_in : 0));
		json_object_array_add(arr, o);
	}
	return arr;
}

void cli_print_json(json_object *o)
{
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

/*
 * handoff-engine: entry point. DPDK convention: optional EAL arguments,
 * then --, then the command and its options. EAL starts inside a command,
 * once it knows how much memory its inputs need.
 */
#include "cli.h"
#include "safefile.h"
#include "clock.h"
#include "codecs/codecs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define HANDOFF_VERSION "0.1.0"

enum { K_OUT };

static const struct cli_opt keygen_opts[] = {
	[K_OUT] = { "output", 'o', "FILE", true, "where to write the new key (mode 0600)" },
	{ 0 },
};

static int keygen_run(const struct cli_cmd *cmd, const char *const *val)
{
	CLI_KEY(key);
	char hex[2 * CDC_KEY_LEN + 2];

	(void)cmd;
	if (cdc_random(key, sizeof(key))) {
		cli_error("keygen: no randomness available");
		return 1;
	}
	for (int i = 0; i < CDC_KEY_LEN; i++)
		sprintf(hex + 2 * i, "%02x", key[i]);
	strcat(hex, "\n");
	/* written aside and renamed into place only whole; never over an existing key */
	char err[512];
	int ret = eng_outfile_write_new(val[K_OUT], hex, strlen(hex), 0600, err, sizeof(err)) ? 1 : 0;
	if (ret)
		cli_error("keygen: %s", err);
	explicit_bzero(hex, sizeof(hex));
	return ret;
}

const struct cli_cmd cli_cmd_keygen = {
	.name = "keygen",
	.summary = "Write a new random 256-bit key, as hex, for --key.",
	.usage = "-o FILE",
	.opts = keygen_opts,
	.run = keygen_run,
};

static const struct cli_cmd *const commands[] = {
	&cli_cmd_diff,	    &cli_cmd_patch,	 &cli_cmd_send,	       &cli_cmd_receive,
	&cli_cmd_track,	    &cli_cmd_probe,	 &cli_cmd_keygen,      &cli_cmd_cache_add,
	&cli_cmd_cache_stat, &cli_cmd_cache_remove, &cli_cmd_cache_verify, &cli_cmd_cache_gc,
	&cli_cmd_cache_fetch, &cli_cmd_cache_export, &cli_cmd_cache_add_base, &cli_cmd_cache_fetch_base,
	&cli_cmd_cache_vm_left, &cli_cmd_serve, &cli_cmd_guard,
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
	fprintf(f, "usage: handoff-engine [EAL args --] COMMAND [options]\n\ncommands:\n");
	for (size_t i = 0; i < N_COMMANDS; i++)
		fprintf(f, "  %-12s %s %s\n", commands[i]->name, commands[i]->name, commands[i]->usage);
	fprintf(f, "\n'handoff-engine COMMAND --help' describes a command. EAL args are DPDK's\n"
		   "(e.g. -l 0-1 --no-huge -m 512 --file-prefix x); without them the engine picks\n"
		   "lcores with hwloc and adds --no-huge when no hugepages are mounted.\n");
}

/* A command is one word ("send") or two ("cache add"); *words: how many it took. */
static const struct cli_cmd *find_command2(int argc, char **argv, int *words)
{
	for (size_t i = 0; i < N_COMMANDS; i++) {
		const char *n = commands[i]->name, *sp = strchr(n, ' ');
		if (!sp && !strcmp(n, argv[0])) {
			*words = 1;
			return commands[i];
		}
		if (sp && argc > 1 && !strncmp(n, argv[0], (size_t)(sp - n)) && !argv[0][sp - n] &&
		    !strcmp(sp + 1, argv[1])) {
			*words = 2;
			return commands[i];
		}
	}
	return NULL;
}

static const struct cli_cmd *find_command(const char *name)
{
	int words;
	char *argv[1] = { (char *)name };

	return find_command2(1, argv, &words);
}

/* "cache" alone, or a second word it does not know: which words may follow. */
static bool command_group(const char *name)
{
	size_t l = strlen(name);

	for (size_t i = 0; i < N_COMMANDS; i++)
		if (!strncmp(commands[i]->name, name, l) && commands[i]->name[l] == ' ')
			return true;
	return false;
}

/* The names of every command, or of those in group (e.g. "cache"). */
static void command_names(char *buf, size_t len, const char *group)
{
	size_t at = 0, l = group ? strlen(group) : 0;

	buf[0] = 0;
	for (size_t i = 0; i < N_COMMANDS && at < len; i++)
		if (!group || (!strncmp(commands[i]->name, group, l) && commands[i]->name[l] == ' '))
			at += (size_t)snprintf(buf + at, len - at, "%s%s", at ? ", " : "", commands[i]->name);
}

int main(int argc, char **argv)
{
	const char *val[CLI_MAX_OPTS];
	int first = 1;

	cli_main_s = eng_mono_s();

	/* EAL args come first and end at "--"; a command name means there are none. */
	if (argc > 1 && !find_command(argv[1]) && argv[1][0] == '-' && strcmp(argv[1], "--help") &&
	    strcmp(argv[1], "-h") && strcmp(argv[1], "--version")) {
		int dd = 1;
		while (dd < argc && strcmp(argv[dd], "--"))
			dd++;
		if (dd == argc) {
			cli_error("EAL arguments must be followed by -- and a command (see --help)");
			return 2;
		}
		cli_set_eal_args(dd - 1, argv + 1);
		first = dd + 1;
	} else if (argc > 1 && !strcmp(argv[1], "--")) {
		first = 2;
	}
	if (first >= argc) {
		usage(stderr);
		return 2;
	}
	const char *name = argv[first];
	if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(name, "--version")) {
		printf("handoff-engine %s (stream format v2)\n", HANDOFF_VERSION);
		return 0;
	}
	int words = 1;
	const struct cli_cmd *cmd = find_command2(argc - first, argv + first, &words);
	if (!cmd) {
		char names[512];
		bool group = command_group(name);
		command_names(names, sizeof(names), group ? name : NULL);
		if (group && first + 1 < argc)
			cli_error("%s: unknown subcommand '%s' (%s)", name, argv[first + 1], names);
		else if (group)
			cli_error("%s needs a subcommand: %s", name, names);
		else
			cli_error("unknown command '%s' (commands: %s; see --help)", name, names);
		return 2;
	}
	/* the options start after the command's words; getopt skips argv[0] */
	int r = cli_parse(cmd, argc - first - words + 1, argv + first + words - 1, val);
	if (r)
		return r > 0 ? 0 : 2;
	int ret = cmd->run(cmd, val);
	if (cmd->needs_eal)
		cli_eal_stop();
	return ret;
}

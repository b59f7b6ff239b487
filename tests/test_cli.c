/*
 * handoff-engine as an operator runs it: real files, real EAL start-up with
 * the engine's own defaults, exit codes and one-line errors, and no RESULT
 * left behind by any failed patch.
 */
#include "testlib.h"

#include <json-c/json.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char engine[512], *dir;
static char base[300], target[300], keyf[300], key2f[300], out[300], result[300], errf[300];

/* Run the engine with args (a shell fragment); returns the exit code. */
static int run(const char *fmt, ...)
{
	char args[2048], cmd[4096];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof(cmd), "%s %s 2>%s", engine, args, errf);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static char *stderr_text(void)
{
	size_t len;
	uint8_t *b = test_read_file(errf, &len);
	char *s = malloc(len + 1);
	memcpy(s, b, len);
	s[len] = 0;
	free(b);
	return s;
}

/* The failure was one line naming `needle`. */
static void assert_one_line_error(const char *needle)
{
	char *s = stderr_text();
	size_t n = strlen(s);
	if (n == 0 || s[n - 1] != '\n' || memchr(s, '\n', n - 1) || !strstr(s, needle))
		fail_msg("expected one error line with '%s', got: %s", needle, s);
	free(s);
}

static bool exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

/* no RESULT and no half-written RESULT.tmp-* beside it */
static void assert_no_result(void)
{
	char cmd[600];
	assert_false(exists(result));
	snprintf(cmd, sizeof(cmd), "ls %s.tmp-* >/dev/null 2>&1", result);
	assert_int_not_equal(system(cmd), 0);
}

static bool same_files(const char *a, const char *b)
{
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "cmp -s %s %s", a, b);
	return system(cmd) == 0;
}

static int setup(void **state)
{
	(void)state;
	const char *env = getenv("HANDOFF_ENGINE");
	if (!realpath(env ? env : "build/handoff-engine", engine))
		return -1;
	dir = test_tmpdir();
	snprintf(base, sizeof(base), "%s/base.img", dir);
	snprintf(target, sizeof(target), "%s/target.img", dir);
	snprintf(keyf, sizeof(keyf), "%s/key", dir);
	snprintf(key2f, sizeof(key2f), "%s/key2", dir);
	snprintf(out, sizeof(out), "%s/stream.hof", dir);
	snprintf(result, sizeof(result), "%s/result.img", dir);
	snprintf(errf, sizeof(errf), "%s/stderr", dir);
	/* base 4 MiB + 100 bytes, target 5 MiB + 33 with edits */
	size_t bl = (4 << 20) + 100, tl = (5 << 20) + 33;
	uint8_t *b = malloc(bl), *t = malloc(tl);
	test_fill_text(b, bl);
	test_fill_random(b + (1 << 20), 1 << 20);
	memcpy(t, b, bl);
	test_fill_text(t + bl, tl - bl);
	for (int i = 0; i < 3000; i++)
		t[test_rand() % tl] = (uint8_t)test_rand();
	test_write_file(base, b, bl);
	test_write_file(target, t, tl);
	free(b);
	free(t);
	return 0;
}

static void test_help_and_usage_errors(void **state)
{
	(void)state;
	assert_int_equal(run("--help"), 0);
	assert_int_equal(run("diff --help"), 0);
	assert_int_equal(run("patch --help"), 0);
	assert_int_equal(run("frobnicate"), 2);
	assert_one_line_error("unknown command");
	assert_int_equal(run("diff --base %s -o %s", base, out), 2);
	assert_one_line_error("--target is required");
	assert_int_equal(run("diff --base %s --target %s -o %s --mode xor:gzip:1", base, target, out), 2);
	assert_one_line_error("bad mode");
	assert_int_equal(run("diff --base %s --target %s -o tcp:1.2.3.4:5", base, target), 2);
	assert_one_line_error("key is required");
	assert_int_equal(run("patch --base %s -i dpdk:0 -o %s", base, out), 2);
	assert_one_line_error("key is required");
}

static void test_round_trip_with_key(void **state)
{
	(void)state;
	char json[700];
	assert_int_equal(run("keygen -o %s", keyf), 0);
	assert_int_equal(run("keygen -o %s", key2f), 0);
	assert_int_equal(run("keygen -o %s", keyf), 1); /* never overwrites a key */
	snprintf(json, sizeof(json), "%s/diff.json", dir);
	assert_int_equal(run("diff --base %s --target %s -o file:%s --key %s --json >%s", base, target,
			     out, keyf, json), 0);
	json_object *o = json_object_from_file(json);
	assert_non_null(o);
	json_object *v;
	assert_true(json_object_object_get_ex(o, "lcores", &v) && json_object_get_int(v) >= 1);
	assert_true(json_object_object_get_ex(o, "bytes_out", &v) && json_object_get_int64(v) > 0);
	assert_true(json_object_object_get_ex(o, "stages", &v) && json_object_array_length(v) == 8);
	json_object_put(o);
	assert_int_equal(run("patch --base %s -i %s -o %s --key %s", base, out, result, keyf), 0);
	assert_true(same_files(result, target));
	unlink(result);
	/* a key file others may read is refused, as ssh does */
	char open_key[600], cmd[2000];
	snprintf(open_key, sizeof(open_key), "%s/open.key", dir);
	snprintf(cmd, sizeof(cmd), "cp %s %s && chmod 640 %s", keyf, open_key, open_key);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(run("patch --base %s -i %s -o %s --key %s", base, out, result, open_key), 2);
	assert_one_line_error("open to others (mode 640");
	assert_false(exists(result));
	/* the base and a reversed diff work too (target smaller than base) */
	assert_int_equal(run("-l 0-1 --no-huge -m 256 --no-pci --file-prefix cli%d -- diff --base %s --target %s -o %s --mode wdiff:igzip:1",
			     (int)getpid(), target, base, out), 0);
	assert_int_equal(run("patch --base %s -i %s -o %s", target, out, result), 0);
	assert_true(same_files(result, base));
	unlink(result);
}

/*
 * diff -o tcp: into patch -i tcp: on loopback: the receiver offers its
 * session, the sender binds the stream's keys to it (engine/session.h).
 */
static void test_round_trip_over_tcp(void **state)
{
	char cmd[4096], perr[400];
	int port = 20000 + (int)(getpid() % 12000); /* below the ephemeral ports (32768-) */

	(void)state;
	if (!exists(keyf))
		assert_int_equal(run("keygen -o %s", keyf), 0);
	snprintf(perr, sizeof(perr), "%s/patch.err", dir);
	snprintf(cmd, sizeof(cmd), "%s patch --base %s -i tcp:127.0.0.1:%d -o %s --key %s 2>%s & p=$!; "
		 "%s diff --base %s --target %s -o tcp:127.0.0.1:%d --key %s 2>%s; d=$?; wait $p; "
		 "test $d -eq 0 -a $? -eq 0",
		 engine, base, port, result, keyf, perr, engine, base, target, port, keyf, errf);
	int st = system(cmd);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		char *e = stderr_text();
		fail_msg("diff -o tcp: | patch -i tcp: failed: %s", e);
	}
	assert_true(same_files(result, target));
	unlink(result);
}

static void test_patch_failures_leave_nothing(void **state)
{
	(void)state;
	assert_int_equal(run("diff --base %s --target %s -o %s --key %s", base, target, out, keyf), 0);
	assert_int_equal(run("patch --base %s -i %s -o %s --key %s", base, out, result, key2f), 1);
	assert_one_line_error("wrong key");
	assert_no_result();
	assert_int_equal(run("patch --base %s -i %s -o %s", base, out, result), 1);
	assert_one_line_error("encrypted");
	assert_no_result();
	/* wrong base: the target itself */
	assert_int_equal(run("patch --base %s -i %s -o %s --key %s", target, out, result, keyf), 1);
	assert_one_line_error("wrong base");
	assert_no_result();
	/* truncated and corrupted copies of the stream */
	size_t len;
	uint8_t *s = test_read_file(out, &len);
	char bad[320];
	snprintf(bad, sizeof(bad), "%s/bad.hof", dir);
	test_write_file(bad, s, len - 100);
	assert_int_equal(run("patch --base %s -i %s -o %s --key %s", base, bad, result, keyf), 1);
	assert_one_line_error("truncated");
	assert_no_result();
	s[len / 2] ^= 4;
	test_write_file(bad, s, len);
	assert_int_equal(run("patch --base %s -i %s -o %s --key %s", base, bad, result, keyf), 1);
	assert_one_line_error("authentication");
	assert_no_result();
	free(s);
	/* not a stream at all */
	assert_int_equal(run("patch --base %s -i %s -o %s --key %s", base, base, result, keyf), 1);
	assert_one_line_error("not a handoff stream");
	assert_no_result();
	/* a missing input */
	assert_int_equal(run("patch --base %s -i %s/none -o %s", base, dir, result), 1);
	assert_one_line_error("cannot open stream");
	assert_no_result();
}

static void test_bad_eal_args(void **state)
{
	(void)state;
	assert_int_equal(run("--no-such-eal-flag -- diff --base %s --target %s -o %s", base, target, out), 1);
	assert_one_line_error("EAL");
	assert_int_equal(run("-l 0-1 diff --base %s --target %s -o %s", base, target, out), 2);
	assert_one_line_error("followed by --");
}

/* A full disk: the error names it and no partial output remains. */
static void test_full_disk(void **state)
{
	(void)state;
	char small[320], dst[400];
	snprintf(small, sizeof(small), "%s/small", dir);
	mkdir(small, 0700);
	if (mount("tmpfs", small, "tmpfs", 0, "size=256k")) {
		fprintf(stderr, "[ SKIP     ] cannot mount a small tmpfs here\n");
		return;
	}
	snprintf(dst, sizeof(dst), "%s/out.hof", small);
	assert_int_equal(run("diff --base %s --target %s -o %s --mode none:none:0", base, target, dst), 1);
	assert_one_line_error("No space left");
	assert_false(exists(dst));
	char cmd[500];
	snprintf(cmd, sizeof(cmd), "ls %s | grep -q .", small);
	assert_int_not_equal(system(cmd), 0);
	umount(small);
}

/* perf/diff-floor, beside the engine: a whole JSON report whose block counts add up. */
static void test_diff_floor(void **state)
{
	(void)state;
	char floor_bin[600], cmd[2600], floor_out[320], json[320];
	snprintf(floor_bin, sizeof(floor_bin), "%s", engine);
	strcpy(strrchr(floor_bin, '/') + 1, "diff-floor");
	snprintf(floor_out, sizeof(floor_out), "%s/floor.out", dir);
	snprintf(json, sizeof(json), "%s/floor.json", dir);
	snprintf(cmd, sizeof(cmd), "%s --base %s --target %s --mode none:igzip:1 -o %s >%s 2>%s", floor_bin,
		 base, target, floor_out, json, errf);
	assert_int_equal(system(cmd), 0);
	json_object *o = json_object_from_file(json), *blocks, *cpu, *v;
	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "blocks", &blocks));
	int64_t sum = 0;
	const char *kinds[] = { "zero", "same", "hashed" };
	for (int i = 0; i < 3; i++) {
		assert_true(json_object_object_get_ex(blocks, kinds[i], &v));
		sum += json_object_get_int64(v);
	}
	assert_int_equal(sum, ((5 << 20) + 33) / 4096); /* whole blocks */
	assert_true(json_object_object_get_ex(blocks, "new", &v));
	assert_true(json_object_get_int64(v) > 0);
	assert_true(json_object_object_get_ex(o, "cpu_s", &cpu));
	assert_int_equal(json_object_object_length(cpu), 8);
	assert_true(json_object_object_get_ex(o, "total_cpu_s", &v));
	assert_true(json_object_get_double(v) > 0);
	assert_true(json_object_object_get_ex(o, "wire_bytes", &v));
	struct stat st;
	assert_int_equal(stat(floor_out, &st), 0);
	assert_int_equal((int64_t)st.st_size, json_object_get_int64(v));
	json_object_put(o);
	snprintf(cmd, sizeof(cmd), "%s --base %s --target %s --mode xor:zstd:1 >/dev/null 2>&1", floor_bin, base,
		 target);
	assert_int_equal(WEXITSTATUS(system(cmd)), 2); /* a delta mode is not what it measures */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_help_and_usage_errors),
		cmocka_unit_test(test_round_trip_with_key),
		cmocka_unit_test(test_round_trip_over_tcp),
		cmocka_unit_test(test_patch_failures_leave_nothing),
		cmocka_unit_test(test_bad_eal_args),
		cmocka_unit_test(test_full_disk),
		cmocka_unit_test(test_diff_floor),
	};
	test_seed();
	return cmocka_run_group_tests_name("cli", tests, setup, NULL);
}

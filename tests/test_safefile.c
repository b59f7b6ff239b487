/*
 * Files the engine creates (engine/safefile.h): never written through a
 * planted symlink, at the target or at the name the engine used to write
 * aside (PATH.tmp-PID); nothing partial is left when writing fails; the
 * permissions are the ones asked for; a file that must be new (a key) never
 * replaces one that exists. The base-VM derivation and the index
 * cache use the same module.
 */
#include "testlib.h"

#include <errno.h>
#include <sys/stat.h>

#include "engine/safefile.h"

static const char victim_text[] = "the victim's own bytes\n";

static char *path_in(const char *dir, const char *name)
{
	char *p;
	assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
	return p;
}

static void assert_victim_untouched(const char *victim)
{
	size_t len;
	uint8_t *got = test_read_file(victim, &len);
	assert_non_null(got);
	assert_int_equal(len, strlen(victim_text));
	assert_memory_equal(got, victim_text, len);
	free(got);
}

static void remove_dir(char *dir)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
	free(dir);
}

/* Nothing but out (and the victim) in dir: no file left aside. */
static void assert_only(const char *dir, int expect)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "test $(ls -A %s | wc -l) -eq %d", dir, expect);
	assert_int_equal(system(cmd), 0);
}

static void test_a_symlink_at_the_target_is_replaced_not_followed(void **state)
{
	char *dir = test_tmpdir(), err[256];
	char *victim = path_in(dir, "victim"), *out = path_in(dir, "out");
	struct stat st;

	(void)state;
	test_write_file(victim, victim_text, strlen(victim_text));
	assert_int_equal(symlink(victim, out), 0);
	assert_int_equal(eng_outfile_write(out, "new", 3, 0644, err, sizeof(err)), 0);
	assert_victim_untouched(victim);
	assert_int_equal(lstat(out, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0644);
	assert_int_equal(st.st_size, 3);
	assert_only(dir, 2);
	free(victim);
	free(out);
	remove_dir(dir);
}

static void test_a_symlink_at_the_old_aside_name_is_not_followed(void **state)
{
	char *dir = test_tmpdir(), err[256], name[64];
	char *victim = path_in(dir, "victim"), *out = path_in(dir, "out");
	struct eng_outfile f;

	(void)state;
	test_write_file(victim, victim_text, strlen(victim_text));
	/* the name the engine wrote aside until now: predictable from the PID */
	snprintf(name, sizeof(name), "out.tmp-%d", (int)getpid());
	char *planted = path_in(dir, name);
	assert_int_equal(symlink(victim, planted), 0);
	assert_int_equal(eng_outfile_create(&f, out, 0600, err, sizeof(err)), 0);
	assert_string_not_equal(f.tmp, planted);
	assert_int_equal(write(f.fd, "secret", 6), 6);
	assert_int_equal(eng_outfile_commit(&f, err, sizeof(err)), 0);
	assert_victim_untouched(victim);
	struct stat st;
	assert_int_equal(stat(out, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_only(dir, 3); /* victim, the planted link, out */
	free(planted);
	free(victim);
	free(out);
	remove_dir(dir);
}

static void test_abort_leaves_the_target_as_it_was(void **state)
{
	char *dir = test_tmpdir(), err[256];
	char *out = path_in(dir, "out");
	struct eng_outfile f;

	(void)state;
	test_write_file(out, victim_text, strlen(victim_text));
	assert_int_equal(eng_outfile_create(&f, out, 0644, err, sizeof(err)), 0);
	assert_int_equal(write(f.fd, "half", 4), 4);
	eng_outfile_abort(&f);
	assert_victim_untouched(out);
	assert_only(dir, 1);
	free(out);
	remove_dir(dir);
}

static void test_a_new_file_never_replaces_one_that_exists(void **state)
{
	char *dir = test_tmpdir(), err[256] = "";
	char *out = path_in(dir, "key"), *victim = path_in(dir, "victim"), *link = path_in(dir, "link");

	(void)state;
	test_write_file(out, victim_text, strlen(victim_text));
	assert_int_equal(eng_outfile_write_new(out, "new", 3, 0600, err, sizeof(err)), -EEXIST);
	assert_non_null(strstr(err, "exists"));
	assert_victim_untouched(out);
	/* a symlink there, even a dangling one, counts as existing: neither it nor its target changes */
	test_write_file(victim, victim_text, strlen(victim_text));
	assert_int_equal(symlink(victim, link), 0);
	assert_int_equal(eng_outfile_write_new(link, "new", 3, 0600, err, sizeof(err)), -EEXIST);
	assert_victim_untouched(victim);
	char *dangling = path_in(dir, "dangling"), *nowhere = path_in(dir, "nowhere");
	assert_int_equal(symlink(nowhere, dangling), 0);
	assert_int_equal(eng_outfile_write_new(dangling, "new", 3, 0600, err, sizeof(err)), -EEXIST);
	assert_int_equal(access(nowhere, F_OK), -1); /* not created through the link */
	assert_only(dir, 4);
	free(dangling);
	free(nowhere);
	unlink(out);
	assert_int_equal(eng_outfile_write_new(out, "new", 3, 0600, err, sizeof(err)), 0);
	struct stat st;
	assert_int_equal(stat(out, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(st.st_size, 3);
	free(out);
	free(victim);
	free(link);
	remove_dir(dir);
}

static void test_a_missing_directory_is_a_clear_error(void **state)
{
	char err[256] = "";
	struct eng_outfile f;

	(void)state;
	assert_int_not_equal(eng_outfile_create(&f, "/nonexistent-handoff-dir/out", 0644, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "/nonexistent-handoff-dir/out"));
	assert_non_null(strstr(err, "No such file"));
	assert_int_equal(f.fd, -1);
}

int main(void)
{
	test_seed();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_symlink_at_the_target_is_replaced_not_followed),
		cmocka_unit_test(test_a_symlink_at_the_old_aside_name_is_not_followed),
		cmocka_unit_test(test_abort_leaves_the_target_as_it_was),
		cmocka_unit_test(test_a_new_file_never_replaces_one_that_exists),
		cmocka_unit_test(test_a_missing_directory_is_a_clear_error),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * The adaptation controller (engine/adapt.h) against synthetic figures: it
 * must pick the mode whose min(processing, network) is largest, hold a
 * choice for ENG_ADAPT_HOLD_S, ignore gains under the margin, rescale the
 * table by what the running mode measures, and follow the CPU the guest
 * leaves free. Also: the generated table (perf/profile) is sane.
 */
#include "testlib.h"

#include "engine/adapt.h"

/* fast-and-loose, balanced, tight-and-slow */
static const struct eng_mode_profile table[] = {
	{ "none:igzip:0", { CDC_DELTA_NONE, CDC_COMP_IGZIP, 0 }, 4000, 0.20 },
	{ "wdiff:zstd:3", { CDC_DELTA_WDIFF, CDC_COMP_ZSTD, 3 }, 8000, 0.10 },
	{ "best:lzma:6", { CDC_DELTA_BEST, CDC_COMP_LZMA, 6 }, 150000, 0.07 },
};

/* A sample as if the running mode m had run exactly as profiled for dt seconds at input rate in_Bps. */
static void advance(struct eng_adapt_sample *s, const struct eng_mode_profile *m, double dt, double in_Bps,
		    double link_bps, double free_lc, double p_factor, double r_factor)
{
	uint64_t blocks = (uint64_t)(in_Bps * dt / 4096);
	s->t += dt;
	s->fed_blocks += blocks;
	s->busy_ns += (uint64_t)(blocks * m->p_ns * p_factor);
	s->in_bytes += blocks * 4096;
	s->wire_bytes += (uint64_t)(blocks * 4096 * m->r * r_factor);
	s->link_bps = link_bps;
	s->free_lcores = free_lc;
}

/* Ticks every 100 ms for secs; returns the mode the controller settled on. */
static unsigned run(struct eng_adapt *a, struct eng_adapt_sample *s, double secs, double link_bps, double free_lc,
		    double p_factor, double r_factor)
{
	struct eng_mode next;
	for (int i = 0; i < (int)(secs * 10 + 0.5); i++) {
		advance(s, &a->table[a->cur], 0.1, 5e6, link_bps, free_lc, p_factor, r_factor);
		eng_adapt_tick(a, s, &next);
	}
	return a->cur;
}

static void test_slow_link_picks_the_tightest_mode(void **state)
{
	struct eng_adapt a;
	struct eng_adapt_sample s = { 0 };

	(void)state;
	eng_adapt_init(&a, table, 3, &table[0].mode, NULL);
	assert_int_equal(run(&a, &s, 12, 5e6, 2, 1, 1), 2);
	assert_int_equal(a.switches, 1);
}

static void test_fast_link_picks_the_cheapest_mode(void **state)
{
	struct eng_adapt a;
	struct eng_adapt_sample s = { 0 };

	(void)state;
	eng_adapt_init(&a, table, 3, &table[2].mode, NULL);
	assert_int_equal(run(&a, &s, 12, 10e9, 2, 1, 1), 0);
}

static void test_a_choice_holds_five_seconds(void **state)
{
	struct eng_adapt a;
	struct eng_adapt_sample s = { 0 };

	(void)state;
	eng_adapt_init(&a, table, 3, &table[0].mode, NULL);
	run(&a, &s, ENG_ADAPT_HOLD_S - 0.5, 5e6, 2, 1, 1);
	assert_int_equal(a.cur, 0); /* better exists, but not yet */
	run(&a, &s, 1.0, 5e6, 2, 1, 1);
	assert_int_equal(a.cur, 2);
	double switched = s.t;
	/* the link jumps: the next switch waits for the hold again */
	run(&a, &s, 3, 10e9, 2, 1, 1);
	assert_int_equal(a.cur, 2);
	run(&a, &s, 3, 10e9, 2, 1, 1);
	assert_int_equal(a.cur, 0);
	assert_true(s.t - switched >= ENG_ADAPT_HOLD_S);
}

static void test_gains_under_the_margin_do_not_switch(void **state)
{
	static const struct eng_mode_profile close[] = {
		{ "a", { CDC_DELTA_NONE, CDC_COMP_ZSTD, 1 }, 4000, 0.100 },
		{ "b", { CDC_DELTA_NONE, CDC_COMP_ZSTD, 3 }, 4100, 0.098 }, /* 2% better on a slow link */
	};
	struct eng_adapt a;
	struct eng_adapt_sample s = { 0 };

	(void)state;
	eng_adapt_init(&a, close, 2, &close[0].mode, NULL);
	assert_int_equal(run(&a, &s, 20, 5e6, 2, 1, 1), 0);
}

static void test_live_figures_rescale_the_table(void **state)
{
	struct eng_adapt a;
	struct eng_adapt_sample s = { 0 };

	(void)state;
	eng_adapt_init(&a, table, 3, &table[1].mode, NULL);
	/* this data compresses 3x worse and the cores are 2x slower than the reference */
	run(&a, &s, 3, 5e6, 2, 2, 3);
	assert_true(a.scale_p > 1.9 && a.scale_p < 2.1);
	assert_true(a.scale_r > 2.9 && a.scale_r < 3.1);
}

static void test_a_cpu_hog_moves_to_a_cheaper_mode(void **state)
{
	struct eng_adapt a;
	struct eng_adapt_sample s = { 0 };

	(void)state;
	/* 20 Mbit/s, two free lcores: lzma is network-bound at 35.7 MB/s of input, wdiff at 25 -> lzma */
	eng_adapt_init(&a, table, 3, &table[1].mode, NULL);
	assert_int_equal(run(&a, &s, 8, 20e6, 2, 1, 1), 2);
	/* a hog leaves 0.2 lcores: lzma would process 5.5 MB/s, wdiff stays network-bound at 25 */
	assert_int_equal(run(&a, &s, 8, 20e6, 0.2, 1, 1), 1);
}

static void test_trace_has_one_line_per_tick(void **state)
{
	struct eng_adapt a;
	struct eng_adapt_sample s = { 0 };
	char *buf = NULL;
	size_t len = 0;

	(void)state;
	FILE *f = open_memstream(&buf, &len);
	eng_adapt_init(&a, table, 3, &table[0].mode, f);
	run(&a, &s, 1.0, 5e6, 2, 1, 1);
	fclose(f);
	int lines = 0;
	for (size_t i = 0; i < len; i++)
		lines += buf[i] == '\n';
	assert_int_equal(lines, 10);
	assert_non_null(strstr(buf, "\"mode\":\"none:igzip:0\""));
	assert_non_null(strstr(buf, "\"link_mbit\":5.000"));
	free(buf);
}

static void test_generated_table_is_sane(void **state)
{
	(void)state;
	assert_true(eng_mode_table_len >= 12);
	for (unsigned i = 0; i < eng_mode_table_len; i++) {
		assert_true(eng_mode_table[i].p_ns > 100 && eng_mode_table[i].p_ns < 1e7);
		assert_true(eng_mode_table[i].r > 0 && eng_mode_table[i].r <= 1.1);
	}
	assert_non_null(strstr(eng_mode_table_command, "perf/profile"));
}

static void test_cpu_meter(void **state)
{
	struct eng_cpu_meter m = { 0 };

	(void)state;
	double f1 = eng_cpu_free(&m);
	usleep(100000);
	double f2 = eng_cpu_free(&m);
	assert_true(f1 > 0 && f2 >= 0 && f2 <= m.ncpu);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_slow_link_picks_the_tightest_mode),
		cmocka_unit_test(test_fast_link_picks_the_cheapest_mode),
		cmocka_unit_test(test_a_choice_holds_five_seconds),
		cmocka_unit_test(test_gains_under_the_margin_do_not_switch),
		cmocka_unit_test(test_live_figures_rescale_the_table),
		cmocka_unit_test(test_a_cpu_hog_moves_to_a_cheaper_mode),
		cmocka_unit_test(test_trace_has_one_line_per_tick),
		cmocka_unit_test(test_generated_table_is_sane),
		cmocka_unit_test(test_cpu_meter),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

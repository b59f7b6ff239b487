/*
 * dpdk_io pieces that need no port: location parsing, the pacing
 * controller driven by a simulated bottleneck, and the guard on PMD bursts.
 * The transport itself runs over real PMDs in tests/it_dpdk.
 */
#include "testlib.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "dpdk_io/dio.h"
#include "dpdk_io/pace.h"
#include "dpdk_io/port.h"

static void test_parse(void **state)
{
	struct dio_loc l;
	char err[200];

	(void)state;
	assert_int_equal(dio_parse("dpdk:0", &l, err, sizeof(err)), 0);
	assert_string_equal(l.port, "0");
	assert_false(l.have_peer);
	assert_int_equal(dio_parse("dpdk:net_memif0,peer=02:00:00:aa:bb:0c,mtu=9000,drop=0.01", &l, err,
				   sizeof(err)), 0);
	assert_string_equal(l.port, "net_memif0");
	assert_true(l.have_peer);
	assert_int_equal(l.peer[5], 0x0c);
	assert_int_equal(l.mtu, 9000);
	assert_true(l.drop > 0.0099 && l.drop < 0.0101);
	const char *bad[] = { "dpdk:", "tcp:1.2.3.4:5", "dpdk:0,mtu=100", "dpdk:0,drop=1", "dpdk:0,drop=-0.1",
			      "dpdk:0,peer=02:00:00", "dpdk:0,speed=10", "dpdk:0,mtu=9000x" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = 0;
		assert_int_not_equal(dio_parse(bad[i], &l, err, sizeof(err)), 0);
		assert_non_null(strstr(err, "dpdk:") ? err : NULL);
	}
}

/*
 * A bottleneck of link_bps: each round the sender paces at pacing_bps, the
 * link delivers min(pacing, link); loss is the given fraction of what was
 * sent, plus everything above the link rate when the queue (qlimit rounds of
 * excess) overflows.
 */
static void run_rounds(struct dio_pace *p, double link_bps, double random_loss, int rounds, double *t_us)
{
	const double rtt_us = 20000, frame = 9000;
	double queued = 0;

	for (int r = 0; r < rounds; r++) {
		double sent = p->pacing_bps / 8 * rtt_us * 1e-6;
		double deliverable = link_bps / 8 * rtt_us * 1e-6;
		double excess = sent > deliverable ? sent - deliverable : 0;
		double lost = sent * random_loss;
		queued += excess;
		if (queued > 4 * deliverable) { /* the queue overflows: tail drop */
			lost += queued - 4 * deliverable;
			queued = 4 * deliverable;
		}
		double rate = (sent < deliverable ? sent : deliverable) * 8 / (rtt_us * 1e-6);
		for (int k = 0; k < 4; k++) {
			*t_us += rtt_us / 4;
			dio_pace_sample(p, *t_us, rate * (1 - random_loss), rtt_us + queued * 8 / link_bps * 1e6, false);
		}
		dio_pace_round(p, *t_us, (uint64_t)sent, (uint64_t)lost);
		(void)frame;
	}
}

static void test_startup_finds_the_link(void **state)
{
	struct dio_pace p;
	double t = 0;

	(void)state;
	dio_pace_init(&p, 20e6, 9000);
	run_rounds(&p, 100e6, 0, 60, &t);
	assert_false(p.startup);
	/* the estimate sits at the bottleneck, the pacing rate cycles around it */
	assert_true(p.bw_bps > 90e6 && p.bw_bps < 110e6);
	assert_true(p.pacing_bps > 60e6 && p.pacing_bps < 130e6);
	assert_true(p.min_rtt_us >= 20000 && p.min_rtt_us < 21000);
	assert_true(dio_pace_window(&p, 9000) >= 64 * 9000);
}

static void test_random_loss_costs_no_rate(void **state)
{
	struct dio_pace p;
	double t = 0;

	(void)state;
	dio_pace_init(&p, 20e6, 9000);
	run_rounds(&p, 100e6, 0.01, 200, &t);
	assert_true(p.bw_bps > 85e6);
	assert_true(p.loss_scale > 0.9);
}

static void test_heavy_loss_backs_off_but_at_most_to_half(void **state)
{
	struct dio_pace p;
	double t = 0;

	(void)state;
	dio_pace_init(&p, 20e6, 9000);
	run_rounds(&p, 100e6, 0, 60, &t);
	for (int i = 0; i < 300; i++)
		dio_pace_round(&p, (t += 20000), 1000000, 300000); /* 30% lost */
	assert_true(p.loss_rounds > 0);
	assert_true(p.loss_scale >= 0.5 && p.loss_scale < 0.6);
	for (int i = 0; i < 2000; i++)
		dio_pace_round(&p, (t += 20000), 1000000, 0);
	assert_true(p.loss_scale > 0.99); /* won back once the loss stopped */
	/* a timeout always backs off */
	double before = p.loss_scale;
	dio_pace_timeout(&p);
	assert_true(p.loss_scale < before);
}

static void test_app_limited_samples_do_not_lower_the_estimate(void **state)
{
	struct dio_pace p;
	double t = 0;

	(void)state;
	dio_pace_init(&p, 20e6, 9000);
	run_rounds(&p, 100e6, 0, 60, &t);
	double bw = p.bw_bps;
	for (int i = 0; i < 500; i++) {
		t += 20000;
		dio_pace_sample(&p, t, 1e6, 20000, true); /* the sender had nothing to send */
		dio_pace_round(&p, t, 1000, 0);
	}
	assert_true(p.bw_bps >= bw * 0.99);
}

/*
 * A child that faults (a write to a page it may not touch), inside a PMD
 * burst or not, once a port open installed the guard; its stderr in out.
 */
static int fault_child(bool in_burst, char *out, size_t outlen)
{
	int fds[2], status;

	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (!pid) {
		struct dio_port port;
		char err[256];
		dup2(fds[1], 2);
		close(fds[0]);
		signal(SIGSEGV, SIG_DFL); /* the handler before ours: not cmocka's (or ASan's) */
		/* no EAL, no port: the open fails, after installing the guard */
		if (dio_port_open(&port, "no_such_port", 0, 0.1, NULL, err, sizeof(err)) != -ENODEV)
			_exit(3);
		volatile int *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (in_burst)
			dio_burst_port = "net_memif0";
		*page = 1;
		_exit(4);
	}
	close(fds[1]);
	size_t got = 0;
	for (ssize_t n; got < outlen - 1 && (n = read(fds[0], out + got, outlen - 1 - got)) > 0;)
		got += (size_t)n;
	out[got] = 0;
	close(fds[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return status;
}

/*
 * net_memif unmaps a departed peer's memory while a burst may copy into
 * it: a fault inside a burst ends the process with one line and status 1.
 * Any other fault is left to the handler before (here the default: the
 * signal).
 */
static void test_a_fault_inside_a_burst_ends_with_one_line(void **state)
{
	char out[4096];

	(void)state;
	int st = fault_child(true, out, sizeof(out));
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 1);
	assert_non_null(strstr(out, "dpdk: port net_memif0 faulted inside its driver's burst"));
	assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);

	st = fault_child(false, out, sizeof(out));
	assert_false(WIFEXITED(st) && WEXITSTATUS(st) == 4); /* the write did fault */
	assert_null(strstr(out, "driver's burst"));
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_startup_finds_the_link),
		cmocka_unit_test(test_random_loss_costs_no_rate),
		cmocka_unit_test(test_heavy_loss_backs_off_but_at_most_to_half),
		cmocka_unit_test(test_app_limited_samples_do_not_lower_the_estimate),
		cmocka_unit_test(test_a_fault_inside_a_burst_ends_with_one_line),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

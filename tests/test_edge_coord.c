/*
 * edge/coord against a real redis-server started by scripts/coordinator (AOF,
 * ACL user, the handoff functions): registrations count once per image, a
 * chunk may go only when no image contains it, no live lease needs it and its
 * grace period passed, only the asking edge stops being its holder, the ACL
 * keeps a client to its own keys and commands, the keep policy ranks by
 * popularity, scarcity and recency, an extra copy may go where the chunk
 * lives on, a running VM's registration ends by its name, a restart keeps it
 * all, and three edges at once doing random
 * steps never see a registered or leased chunk granted for deletion. All of
 * it twice: on one server, and on a Redis Cluster of three (scripts/coordinator
 * up --cluster 3), where chunks spread over the nodes, a node's crash and
 * restart loses nothing, and a resharding under a connected edge is followed.
 */
#include "edge/coord.h"
#include "edge/store.h"
#include "testlib.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[300], pwfile[320], url[64], badpw[320];
static int port, cluster_nodes; /* 0: one server */

static int run(const char *fmt, const char *arg)
{
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), fmt, arg);
	return system(cmd);
}

static int coordinator_up(void)
{
	char cmd[1024];
	char nodes[32] = "";
	if (cluster_nodes)
		snprintf(nodes, sizeof(nodes), " --cluster %d", cluster_nodes);
	snprintf(cmd, sizeof(cmd), "scripts/coordinator up --dir %s/redis --password-file %s --port %d%s >/dev/null",
		 dir, pwfile, port, nodes);
	return system(cmd);
}

static int setup(void)
{
	char *d = test_tmpdir();
	snprintf(dir, sizeof(dir), "%s", d);
	free(d);
	snprintf(pwfile, sizeof(pwfile), "%s/pw", dir);
	snprintf(badpw, sizeof(badpw), "%s/badpw", dir);
	test_write_file(pwfile, "correct horse\n", 14);
	test_write_file(badpw, "wrong\n", 6);
	chmod(pwfile, 0600);
	chmod(badpw, 0600);
	/* below the ephemeral ports (32768-); a cluster's bus ports (+10000) too */
	port = cluster_nodes ? 12000 + (int)(getpid() % 2000) * cluster_nodes : 21000 + (int)(getpid() % 11000);
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
	if (coordinator_up()) {
		fprintf(stderr, "test_edge_coord: scripts/coordinator up failed (redis-server installed? scripts/setup)\n");
		return -1;
	}
	return 0;
}

static int setup_single(void **state)
{
	(void)state;
	cluster_nodes = 0;
	return setup();
}

static int setup_cluster(void **state)
{
	(void)state;
	cluster_nodes = 3;
	return setup();
}

static int teardown(void **state)
{
	(void)state;
	char arg[320];
	snprintf(arg, sizeof(arg), "%s/redis", dir);
	run("scripts/coordinator down --dir %s >/dev/null 2>&1", arg);
	run("rm -rf %s", dir);
	return 0;
}

static struct edg_coord *edge(const char *name)
{
	char err[256];
	struct edg_coord *c = edg_coord_connect(url, pwfile, name, 5, err, sizeof(err));
	if (!c)
		fprintf(stderr, "connect: %s\n", err);
	assert_non_null(c);
	return c;
}

/* n digests, distinct per seed. */
static uint8_t *digests(unsigned n, unsigned seed)
{
	uint8_t *d = calloc(n, EDG_DIGEST_LEN);
	for (unsigned i = 0; i < n; i++) {
		d[i * EDG_DIGEST_LEN] = (uint8_t)seed;
		d[i * EDG_DIGEST_LEN + 1] = (uint8_t)i;
		d[i * EDG_DIGEST_LEN + 2] = (uint8_t)(i >> 8);
		d[i * EDG_DIGEST_LEN + 31] = 0x5a;
	}
	return d;
}

static void test_connect_errors(void **state)
{
	(void)state;
	char err[256], other[80], world[320];

	assert_null(edg_coord_connect("http://x:1", pwfile, "a", 1, err, sizeof(err)));
	assert_non_null(strstr(err, "redis://"));
	assert_null(edg_coord_connect(url, badpw, "a", 1, err, sizeof(err)));
	assert_non_null(strstr(err, "WRONGPASS"));
	snprintf(world, sizeof(world), "%s/worldpw", dir);
	test_write_file(world, "correct horse\n", 14);
	chmod(world, 0644);
	assert_null(edg_coord_connect(url, world, "a", 1, err, sizeof(err)));
	assert_non_null(strstr(err, "readable by others"));
	snprintf(other, sizeof(other), "redis://127.0.0.1:%d", port == 65535 ? 1 : port + 1);
	assert_null(edg_coord_connect(other, pwfile, "a", 1, err, sizeof(err)));
	assert_non_null(strstr(err, "unreachable"));
	assert_null(edg_coord_connect(url, pwfile, "bad name", 1, err, sizeof(err)));
}

static void test_references_and_may_delete(void **state)
{
	(void)state;
	struct edg_coord *a = edge("edge-a");
	uint8_t *d = digests(10, 1);
	uint32_t refs[10], holders[10];
	bool ok[10];
	char err[256];

	assert_int_equal(edg_coord_report(a, d, 10, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_report(a, d, 10, err, sizeof(err)), 0); /* twice = once */
	assert_int_equal(edg_coord_register(a, "img", d, 5, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register(a, "img", d, 5, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_holders(a, d, 10, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 10; i++) {
		assert_int_equal(refs[i], i < 5 ? 1 : 0);
		assert_int_equal(holders[i], 1);
	}
	/* referenced chunks stay; the others may go; asking changes nothing, forgetting does */
	assert_int_equal(edg_coord_may_delete(a, d, 10, 0, 0, ok, err, sizeof(err)), 0);
	for (int i = 0; i < 10; i++)
		assert_int_equal(ok[i], i >= 5);
	assert_int_equal(edg_coord_holders(a, d, 10, refs, holders, err, sizeof(err)), 0);
	assert_int_equal(holders[7], 1);
	assert_int_equal(edg_coord_forget(a, d + 5 * EDG_DIGEST_LEN, 5, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_holders(a, d, 10, refs, holders, err, sizeof(err)), 0);
	assert_int_equal(holders[0], 1);
	assert_int_equal(holders[7], 0);
	/* unregistered: not before the grace period, then yes */
	assert_int_equal(edg_coord_unregister(a, "img", d, 5, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_may_delete(a, d, 5, 3600, 0, ok, err, sizeof(err)), 0);
	for (int i = 0; i < 5; i++)
		assert_false(ok[i]);
	assert_int_equal(edg_coord_may_delete(a, d, 5, 0, 0, ok, err, sizeof(err)), 0);
	for (int i = 0; i < 5; i++)
		assert_true(ok[i]);
	/* a second image keeps a chunk the first one dropped */
	assert_int_equal(edg_coord_register(a, "img2", d, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register(a, "img3", d, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_unregister(a, "img2", d, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_holders(a, d, 1, refs, holders, err, sizeof(err)), 0);
	assert_int_equal(refs[0], 1);
	assert_int_equal(edg_coord_may_delete(a, d, 1, 0, 0, ok, err, sizeof(err)), 0);
	assert_false(ok[0]);
	free(d);
	edg_coord_close(a);
}

static void test_leases_and_two_edges(void **state)
{
	(void)state;
	struct edg_coord *a = edge("edge-a"), *b = edge("edge-b");
	uint8_t *d = digests(4, 2);
	uint32_t refs[4], holders[4];
	bool ok[4];
	char err[256];

	assert_int_equal(edg_coord_report(a, d, 4, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_report(b, d, 4, err, sizeof(err)), 0);
	/* a handoff in flight needs chunks 0-1 for a minute, 2 for 0.2 s */
	assert_int_equal(edg_coord_lease(b, "handoff-7", d, 2, 60, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_lease(b, "handoff-8", d + 2 * EDG_DIGEST_LEN, 1, 0.2, err, sizeof(err)), 0);
	usleep(400000);
	assert_int_equal(edg_coord_may_delete(a, d, 4, 0, 0, ok, err, sizeof(err)), 0);
	assert_false(ok[0]);
	assert_false(ok[1]);
	assert_true(ok[2]); /* its lease expired */
	assert_true(ok[3]);
	/* edge-a drops 2 and 3: only it stops holding them */
	assert_int_equal(edg_coord_forget(a, d + 2 * EDG_DIGEST_LEN, 2, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_holders(b, d, 4, refs, holders, err, sizeof(err)), 0);
	assert_int_equal(holders[0], 2);
	assert_int_equal(holders[3], 1);
	assert_int_equal(edg_coord_release(b, "handoff-7", d, 2, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_may_delete(a, d, 2, 0, 0, ok, err, sizeof(err)), 0);
	assert_true(ok[0] && ok[1]);
	free(d);
	edg_coord_close(a);
	edg_coord_close(b);
}

/*
 * The keep policy asked by edge-c: more images containing a chunk raise its
 * worth, more other holders lower it, each half-life unused halves it. And
 * with --copies, edge-c may drop an extra copy of a chunk another edge's
 * image contains, if enough others hold it, one of them its registrant.
 */
static void test_keep_policy_and_copies(void **state)
{
	(void)state;
	struct edg_coord *a = edge("edge-a"), *b = edge("edge-b"), *c = edge("edge-c"), *e = edge("edge-e");
	uint8_t *d = digests(5, 4);
	uint64_t age[5] = { 0 };
	double worth[5];
	bool ok[5];
	char err[256];
	const size_t L = EDG_DIGEST_LEN;

	/* d0: images of a and b, held by a, b, c; d1: a's image only, held by a, b, c;
	 * d2: a's image, held by a, b, c, e; d3: nobody's image, c alone; d4: c's own image */
	assert_int_equal(edg_coord_report(a, d, 3, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_report(b, d, 3, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_report(c, d, 5, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_report(e, d + 2 * L, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register(a, "p1", d, 3, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register(b, "p2", d, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register(c, "own", d + 4 * L, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_keep(c, d, 4, age, 3600, worth, err, sizeof(err)), 0);
	assert_true(fabs(worth[0] - 3.0 / 3) < 1e-5); /* two images, two other holders */
	assert_true(fabs(worth[1] - 2.0 / 3) < 1e-5); /* one image: less */
	assert_true(fabs(worth[2] - 2.0 / 4) < 1e-5); /* one more holder elsewhere: less again */
	assert_true(fabs(worth[3] - 1.0) < 1e-5);     /* nobody's, but the only copy */
	age[0] = 3600;
	age[3] = 7200;
	assert_int_equal(edg_coord_keep(c, d, 4, age, 3600, worth, err, sizeof(err)), 0);
	assert_true(fabs(worth[0] - 0.5) < 1e-5); /* one half-life unused */
	assert_true(fabs(worth[3] - 0.25) < 1e-5);

	/* copies: never while referenced with 0; with 2, d0-d2 are extras here (a holds them, a registered
	 * them; two others hold each); d3 is nobody's (grace 0): yes; d4 is c's own: never */
	assert_int_equal(edg_coord_may_delete(c, d, 5, 0, 0, ok, err, sizeof(err)), 0);
	assert_true(!ok[0] && !ok[1] && !ok[2] && ok[3] && !ok[4]);
	assert_int_equal(edg_coord_may_delete(c, d, 5, 0, 2, ok, err, sizeof(err)), 0);
	assert_true(ok[0] && ok[1] && ok[2] && ok[3] && !ok[4]);
	assert_int_equal(edg_coord_may_delete(c, d, 5, 0, 3, ok, err, sizeof(err)), 0);
	assert_true(!ok[0] && !ok[1] && ok[2]); /* only d2 has three other holders */
	/* d1's registrant no longer holds it (a and b dropped their copies, e took one): not an extra */
	assert_int_equal(edg_coord_forget(a, d + 1 * L, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_forget(b, d + 1 * L, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_report(e, d + 1 * L, 1, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_may_delete(c, d + 1 * L, 1, 0, 1, ok, err, sizeof(err)), 0);
	assert_false(ok[0]); /* e holds it, but the image is a's and a no longer does */
	/* a lease beats everything */
	assert_int_equal(edg_coord_lease(b, "handoff-9", d, 1, 60, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_may_delete(c, d, 1, 0, 2, ok, err, sizeof(err)), 0);
	assert_false(ok[0]);
	free(d);
	edg_coord_close(a);
	edg_coord_close(b);
	edg_coord_close(c);
	edg_coord_close(e);
}

static void test_acl_limits(void **state)
{
	(void)state;
	redisContext *r = redisConnect("127.0.0.1", port);
	assert_non_null(r);
	assert_int_equal(r->err, 0);
	redisReply *rep = redisCommand(r, "HSET ho:c:x f 1");
	assert_int_equal(rep->type, REDIS_REPLY_ERROR); /* no password: nothing */
	assert_non_null(strstr(rep->str, "NOAUTH"));
	freeReplyObject(rep);
	rep = redisCommand(r, "AUTH handoff %s", "correct horse");
	assert_int_equal(rep->type, REDIS_REPLY_STATUS);
	freeReplyObject(rep);
	const char *denied[] = { "FLUSHALL", "SET other 1", "CONFIG SET appendonly no", "FUNCTION FLUSH",
				 "KEYS *", "CLUSTER NODES", "CLUSTER GETKEYSINSLOT 0 10" };
	for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++) {
		rep = redisCommand(r, denied[i]);
		assert_int_equal(rep->type, REDIS_REPLY_ERROR);
		assert_non_null(strstr(rep->str, "NOPERM"));
		freeReplyObject(rep);
	}
	redisFree(r);
}

/*
 * A running VM's registration: its chunks count it; registering it again with
 * another list moves the count; ending it needs only the name, and ending it
 * again finds nothing.
 */
static void test_running_vm(void **state)
{
	(void)state;
	struct edg_coord *a = edge("edge-vm");
	uint8_t *d = digests(40, 6);
	uint32_t refs[40], holders[40];
	uint64_t n = 99;
	char err[256];

	assert_int_equal(edg_coord_register_vm(a, "web-1", d, 30, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_holders(a, d, 40, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 40; i++)
		assert_int_equal(refs[i], i < 30 ? 1 : 0);
	/* it came back against another base: chunks 10..39 */
	assert_int_equal(edg_coord_register_vm(a, "web-1", d + 10 * EDG_DIGEST_LEN, 30, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_holders(a, d, 40, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 40; i++)
		assert_int_equal(refs[i], i < 10 ? 0 : 1);
	/* another edge's VM of the same name is another registration */
	struct edg_coord *b = edge("edge-vm2");
	assert_int_equal(edg_coord_unregister_vm(b, "web-1", &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	assert_int_equal(edg_coord_unregister_vm(a, "web-1", &n, err, sizeof(err)), 0);
	assert_int_equal(n, 30);
	assert_int_equal(edg_coord_holders(a, d, 40, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 40; i++)
		assert_int_equal(refs[i], 0);
	assert_int_equal(edg_coord_unregister_vm(a, "web-1", &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	assert_int_equal(edg_coord_register_vm(a, "", d, 1, err, sizeof(err)), -EINVAL);
	free(d);
	edg_coord_close(b);
	edg_coord_close(a);
}

/*
 * An image registered again under its name moves the count from the old
 * list to the new one; ending it needs only the name; a VM of the same name
 * is another registration.
 */
static void test_image_lists(void **state)
{
	(void)state;
	struct edg_coord *a = edge("edge-img");
	uint8_t *d = digests(40, 8);
	uint32_t refs[40], holders[40];
	uint64_t n = 0;
	char err[256];

	assert_int_equal(edg_coord_register_image(a, "disk-7", d, 30, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register_vm(a, "disk-7", d, 5, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register_image(a, "disk-7", d + 10 * EDG_DIGEST_LEN, 30, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_holders(a, d, 40, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 40; i++)
		assert_int_equal(refs[i], (i < 5) + (i >= 10));
	assert_int_equal(edg_coord_unregister_image(a, "disk-7", &n, err, sizeof(err)), 0);
	assert_int_equal(n, 30);
	assert_int_equal(edg_coord_unregister_image(a, "disk-7", &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	assert_int_equal(edg_coord_unregister_vm(a, "disk-7", &n, err, sizeof(err)), 0);
	assert_int_equal(n, 5);
	assert_int_equal(edg_coord_holders(a, d, 40, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 40; i++)
		assert_int_equal(refs[i], 0);
	free(d);
	edg_coord_close(a);
}

/* Last, as it restarts the server: what was registered survives a shutdown and a crash (AOF). */
static void test_restart_keeps_state(void **state)
{
	(void)state;
	struct edg_coord *a = edge("edge-a");
	uint8_t *d = digests(300, 3);
	uint32_t refs[300], holders[300];
	char err[256], arg[320];

	assert_int_equal(edg_coord_report(a, d, 300, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register(a, "vm:42", d, 300, err, sizeof(err)), 0);
	edg_coord_close(a);
	snprintf(arg, sizeof(arg), "%s/redis", dir);
	assert_int_equal(run("scripts/coordinator down --dir %s >/dev/null 2>&1", arg), 0);
	assert_null(edg_coord_connect(url, pwfile, "edge-a", 1, err, sizeof(err)));
	assert_int_equal(coordinator_up(), 0);
	a = edge("edge-a");
	assert_int_equal(edg_coord_holders(a, d, 300, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 300; i++) {
		assert_int_equal(refs[i], 1);
		assert_int_equal(holders[i], 1);
	}

	/* a crash (SIGKILL, no shutdown) loses at most the last second: appendfsync everysec */
	uint8_t *d2 = digests(200, 5);
	assert_int_equal(edg_coord_report(a, d2, 200, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register(a, "vm:43", d2, 200, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_unregister(a, "vm:42", d, 100, err, sizeof(err)), 0);
	edg_coord_close(a);
	struct edg_coord *kept = edge("edge-kept"); /* connected across the crash: it reconnects */
	usleep(2500 * 1000);
	if (cluster_nodes) /* one node of the cluster crashes: its share must come back */
		snprintf(arg, sizeof(arg), "%s/redis/node-1", dir);
	assert_int_equal(run("kill -9 $(cat %s/redis.pid)", arg), 0);
	/* until it is gone (or a zombie): a dying server may still take a connection */
	assert_int_equal(run("p=$(cat %s/redis.pid); for i in $(seq 100); do "
			     "s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null) || exit 0; "
			     "[ \"${s%%%% *}\" = Z ] && exit 0; sleep 0.05; done; exit 1", arg), 0);
	assert_null(edg_coord_connect(url, pwfile, "edge-a", 1, err, sizeof(err)));
	assert_int_equal(coordinator_up(), 0);
	a = edge("edge-a");
	assert_int_equal(edg_coord_holders(a, d, 300, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 300; i++) {
		assert_int_equal(refs[i], i < 100 ? 0 : 1);
		assert_int_equal(holders[i], 1);
	}
	assert_int_equal(edg_coord_holders(a, d2, 200, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 200; i++) {
		assert_int_equal(refs[i], 1);
		assert_int_equal(holders[i], 1);
	}
	memset(refs, 0, sizeof(refs));
	assert_int_equal(edg_coord_holders(kept, d2, 200, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < 200; i++)
		assert_int_equal(refs[i], 1);
	edg_coord_close(kept);
	free(d2);
	free(d);
	edg_coord_close(a);
}

/*
 * Three edges at once, each in its own process with its own connections,
 * doing random steps on one pool of chunks: register and unregister its
 * image, lease and release for a handoff, report, and collect (may-delete
 * with or without --copies, then forget what it was allowed to drop). After
 * every step each edge checks what it alone knows: nothing its registration
 * contains or its lease needs was ever granted for deletion, to it or to a
 * probe edge asking with no copies (and with copies, for the leased ones),
 * and its registered chunks count at least one reference.
 */
static void test_random_interleavings(void **state)
{
	(void)state;
	enum { EDGES = 3, STEPS = 80, POOL = 48 };
	uint8_t *d = digests(POOL, 9);
	pid_t pids[EDGES];

	for (int w = 0; w < EDGES; w++) {
		uint64_t seed = test_rand();
		if ((pids[w] = fork()) != 0)
			continue;
		test_rng_state = seed;
		char name[16], probe_name[16], lease_id[32], err[256] = "";
		snprintf(name, sizeof(name), "edge-r%d", w);
		snprintf(probe_name, sizeof(probe_name), "probe-r%d", w);
		snprintf(lease_id, sizeof(lease_id), "handoff-r%d", w);
		struct edg_coord *c = edg_coord_connect(url, pwfile, name, 5, err, sizeof(err));
		struct edg_coord *probe = edg_coord_connect(url, pwfile, probe_name, 5, err, sizeof(err));
		bool reg[POOL] = { 0 }, leased[POOL] = { 0 }, ok[POOL];
		uint32_t refs[POOL], holders[POOL];
		int bad = !c || !probe;
		for (int step = 0; step < STEPS && !bad; step++) {
			unsigned a = (unsigned)(test_rand() % POOL), n = 1 + (unsigned)(test_rand() % (POOL - a));
			const uint8_t *r = d + (size_t)a * EDG_DIGEST_LEN;
			switch (test_rand() % 6) {
			case 0:
				bad |= edg_coord_register(c, "img", r, n, err, sizeof(err)) != 0;
				for (unsigned i = a; i < a + n; i++)
					reg[i] = true;
				break;
			case 1:
				bad |= edg_coord_unregister(c, "img", r, n, err, sizeof(err)) != 0;
				for (unsigned i = a; i < a + n; i++)
					reg[i] = false;
				break;
			case 2:
				bad |= edg_coord_lease(c, lease_id, r, n, 60, err, sizeof(err)) != 0;
				for (unsigned i = a; i < a + n; i++)
					leased[i] = true;
				break;
			case 3:
				bad |= edg_coord_release(c, lease_id, d, POOL, err, sizeof(err)) != 0;
				memset(leased, 0, sizeof(leased));
				break;
			case 4:
				bad |= edg_coord_report(c, r, n, err, sizeof(err)) != 0;
				break;
			default: { /* collect: drop what it may, as gc does */
				unsigned copies = (unsigned)(test_rand() % 2);
				bad |= edg_coord_may_delete(c, r, n, 0, copies, ok, err, sizeof(err)) != 0;
				for (unsigned i = 0; i < n && !bad; i++) {
					if (ok[i] && (reg[a + i] || leased[a + i])) {
						fprintf(stderr, "%s: chunk %u granted for deletion while %s\n", name, a + i,
							reg[a + i] ? "registered here" : "leased here");
						bad = 1;
					}
					if (ok[i])
						bad |= edg_coord_forget(c, r + (size_t)i * EDG_DIGEST_LEN, 1, err, sizeof(err)) != 0;
				}
			}
			}
			/* what this edge alone knows must hold whatever the others did meanwhile */
			bad |= edg_coord_may_delete(probe, d, POOL, 0, 0, ok, err, sizeof(err)) != 0;
			for (unsigned i = 0; i < POOL && !bad; i++)
				if (ok[i] && (reg[i] || leased[i])) {
					fprintf(stderr, "%s: chunk %u free to delete for another edge while %s here\n", name, i,
						reg[i] ? "registered" : "leased");
					bad = 1;
				}
			bad |= edg_coord_may_delete(probe, d, POOL, 0, 1, ok, err, sizeof(err)) != 0;
			for (unsigned i = 0; i < POOL && !bad; i++)
				if (ok[i] && leased[i]) {
					fprintf(stderr, "%s: leased chunk %u free to delete as an extra copy\n", name, i);
					bad = 1;
				}
			bad |= edg_coord_holders(c, d, POOL, refs, holders, err, sizeof(err)) != 0;
			for (unsigned i = 0; i < POOL && !bad; i++)
				if (reg[i] && refs[i] == 0) {
					fprintf(stderr, "%s: chunk %u registered here counts no reference\n", name, i);
					bad = 1;
				}
		}
		if (bad && err[0])
			fprintf(stderr, "%s: %s\n", name, err);
		edg_coord_close(c);
		edg_coord_close(probe);
		_exit(bad);
	}
	for (int w = 0; w < EDGES; w++) {
		int st;
		assert_int_equal(waitpid(pids[w], &st, 0), pids[w]);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 0);
	}
	free(d);
}

/* What one node of the cluster holds (DBSIZE; the handoff user may ask it). */
static long long node_keys(int p)
{
	redisContext *r = redisConnect("127.0.0.1", p);
	assert_non_null(r);
	assert_int_equal(r->err, 0);
	redisReply *rep = redisCommand(r, "AUTH handoff %s", "correct horse");
	freeReplyObject(rep);
	rep = redisCommand(r, "DBSIZE");
	assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
	long long n = rep->integer;
	freeReplyObject(rep);
	redisFree(r);
	return n;
}

/*
 * The chunks spread over the three nodes, each command straight to its node
 * (no redirection: the client's slots are the cluster's); then half of node
 * 0's slots move to node 1 (redis-cli --cluster reshard, keys and all) under
 * a connected edge, which follows the redirections to the same answers.
 */
static void test_cluster_spreads_and_reshards(void **state)
{
	(void)state;
	struct edg_coord *a = edge("edge-c");
	enum { N = 3000 };
	uint8_t *d = digests(N, 21);
	uint32_t *refs = calloc(N, sizeof(*refs)), *holders = calloc(N, sizeof(*holders));
	unsigned nodes = 0;
	char err[256], arg[320];

	assert_true(edg_coord_is_cluster(a, &nodes));
	assert_int_equal(nodes, 3);
	assert_int_equal(edg_coord_report(a, d, N, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_register(a, "img-c", d, N, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_redirects(a), 0);
	long long total = 0;
	for (int k = 0; k < 3; k++) {
		long long n = node_keys(port + k);
		assert_true(n > N / 6); /* about a third each */
		total += n;
	}
	assert_true(total >= N);

	/* a running VM's key with a {hash tag} in its name goes where the tag says: no redirection */
	assert_int_equal(edg_coord_register_vm(a, "web-{7}", d, 10, err, sizeof(err)), 0);
	uint64_t n_vm = 0;
	assert_int_equal(edg_coord_unregister_vm(a, "web-{7}", &n_vm, err, sizeof(err)), 0);
	assert_int_equal(n_vm, 10);
	assert_int_equal(edg_coord_redirects(a), 0);

	/* the resharding runs while the edge keeps asking: every answer stays right */
	snprintf(arg, sizeof(arg), "%s/redis", dir);
	assert_int_equal(run("d=%s; rm -f $d/reshard.done; a() { REDISCLI_AUTH=$(cat $d/admin.pw) redis-cli "
			     "--no-auth-warning --user admin \"$@\"; }; p=$(cat $d/node-0/port); q=$(cat $d/node-1/port); "
			     "from=$(a -p $p CLUSTER MYID) && to=$(a -p $q CLUSTER MYID) && "
			     "(a --cluster reshard 127.0.0.1:$p --cluster-from $from --cluster-to $to "
			     "--cluster-slots 2000 --cluster-yes >$d/reshard.log 2>&1; echo $? >$d/reshard.done) &",
			     arg),
			 0);
	char done[400];
	snprintf(done, sizeof(done), "%s/reshard.done", arg);
	int rounds = 0;
	for (bool last = false; !last; rounds++) {
		last = access(done, F_OK) == 0;
		memset(refs, 0, N * sizeof(*refs));
		assert_int_equal(edg_coord_holders(a, d, N, refs, holders, err, sizeof(err)), 0);
		for (int i = 0; i < N; i++) {
			assert_int_equal(refs[i], 1);
			assert_int_equal(holders[i], 1);
		}
		assert_true(rounds < 100000);
	}
	assert_int_equal(run("exit $(cat %s/reshard.done)", arg), 0);
	fprintf(stderr, "  %d rounds of holders during the resharding, %llu redirections\n", rounds,
		(unsigned long long)edg_coord_redirects(a));
	assert_true(edg_coord_redirects(a) > 0);
	uint64_t after = edg_coord_redirects(a);
	assert_int_equal(edg_coord_unregister(a, "img-c", d, N, err, sizeof(err)), 0);
	assert_int_equal(edg_coord_holders(a, d, N, refs, holders, err, sizeof(err)), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(refs[i], 0);
	assert_int_equal(edg_coord_redirects(a), after); /* the map was reloaded once */
	free(refs);
	free(holders);
	free(d);
	edg_coord_close(a);
}

int main(void)
{
	test_seed();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_connect_errors),
		cmocka_unit_test(test_references_and_may_delete),
		cmocka_unit_test(test_leases_and_two_edges),
		cmocka_unit_test(test_keep_policy_and_copies),
		cmocka_unit_test(test_random_interleavings),
		cmocka_unit_test(test_running_vm),
		cmocka_unit_test(test_image_lists),
		cmocka_unit_test(test_acl_limits),
		cmocka_unit_test(test_restart_keeps_state),
	};
	const struct CMUnitTest cluster[] = {
		cmocka_unit_test(test_references_and_may_delete),
		cmocka_unit_test(test_leases_and_two_edges),
		cmocka_unit_test(test_keep_policy_and_copies),
		cmocka_unit_test(test_random_interleavings),
		cmocka_unit_test(test_running_vm),
		cmocka_unit_test(test_image_lists),
		cmocka_unit_test(test_acl_limits),
		cmocka_unit_test(test_cluster_spreads_and_reshards),
		cmocka_unit_test(test_restart_keeps_state),
	};
	int failed = cmocka_run_group_tests_name("coordinator", tests, setup_single, teardown);
	return failed + cmocka_run_group_tests_name("coordinator-cluster", cluster, setup_cluster, teardown);
}

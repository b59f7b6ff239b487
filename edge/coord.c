/*
 * Cache coordinator client on hiredis (see coord.h). Commands go out in
 * pipelined batches: one round trip per BATCH chunks, not per chunk. The
 * coordinator is one Redis server or a Redis Cluster: every command names one
 * key, so in a cluster each goes to the node that serves the key's slot (the
 * map from CLUSTER SLOTS; hiredis 0.14 has no cluster support of its own),
 * a batch is pipelined to every node at once, and a MOVED or ASK reply (the
 * cluster resharding) is followed and the map reloaded.
 */
#include "coord.h"
#include "engine/clock.h"
#include "engine/errbuf.h"
#include "store.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH 1024
#define KEY_LEN (5 + 2 * EDG_DIGEST_LEN) /* "ho:c:" + hex */
#define FIELD_MAX (2 + 64 + 1 + EDG_NAME_MAX) /* "i:" EDGE ":" IMAGE */
#define SLOTS 16384
#define NODES_MAX 64
#define REDIRECTS_MAX 16 /* per command: a resharding moves a slot once or twice */
#define BUSY_WAIT_S 10.0 /* TRYAGAIN, CLUSTERDOWN: past a failover (scripts/coordinator's node timeout: 3 s) */

struct node {
	redisContext *r; /* NULL until used, and again after its connection failed */
	char host[256];
	int port;
	char where[300];  /* host:port, for messages */
	uint32_t pending; /* replies pipelined and not yet read */
};

struct edg_coord {
	struct node node[NODES_MAX];
	unsigned nnodes;
	bool cluster;
	bool stale; /* a cluster connection failed: the map is learnt again before the next command */
	uint8_t slot_node[SLOTS]; /* cluster: the node that serves each slot */
	uint64_t redirects;
	char user[65], pw[512]; /* to log in to the nodes a cluster names */
	struct timeval tv;
	char edge[65];
};

/* One command per chunk: up to 7 arguments, built into the slot's own buffers. */
struct cmd {
	const char *argv[7];
	size_t len[7];
	char key[KEY_LEN + 1], field[FIELD_MAX + 1], num[32], num2[32];
};

typedef void (*build_fn)(struct edg_coord *c, const uint8_t *digest, const void *ctx, struct cmd *m);
/* A reply for chunk i; 0, or -1 with the message in err. */
typedef int (*reply_fn)(uint64_t i, const redisReply *rep, void *out, char *err, size_t errlen);

static void key_of(const uint8_t *d, char *key)
{
	memcpy(key, "ho:c:", 5);
	edg_digest_hex(d, key + 5);
}

static void set_arg(struct cmd *m, int i, const char *s)
{
	m->argv[i] = s;
	m->len[i] = strlen(s);
}

/* ---- nodes and slots ------------------------------------------------------------ */

static int node_open(struct edg_coord *c, struct node *n, char *err, size_t errlen)
{
	n->pending = 0;
	n->r = redisConnectWithTimeout(n->host, n->port, c->tv);
	if (!n->r || n->r->err) {
		eng_set_err(err, errlen, "coordinator %s unreachable: %s", n->where, n->r ? n->r->errstr : "out of memory");
		goto fail;
	}
	redisSetTimeout(n->r, c->tv);
	const char *auth[] = { "AUTH", c->user, c->pw };
	redisReply *rep = redisCommandArgv(n->r, 3, auth, NULL);
	if (!rep || rep->type == REDIS_REPLY_ERROR) {
		eng_set_err(err, errlen, "coordinator %s refused %s: %s", n->where, c->user,
			    rep ? rep->str : n->r->errstr);
		freeReplyObject(rep);
		goto fail;
	}
	freeReplyObject(rep);
	return 0;
fail:
	if (n->r)
		redisFree(n->r);
	n->r = NULL;
	c->stale = c->cluster; /* a failover may have moved its slots */
	return -EIO;
}

/* The next command to the node opens a new connection. */
static void node_drop(struct node *n)
{
	if (n->r)
		redisFree(n->r);
	n->r = NULL;
	n->pending = 0;
}

/* A connection failed mid-command: say so, drop it, and doubt the slot map. */
static void node_lost(struct edg_coord *c, struct node *n, char *err, size_t errlen)
{
	eng_set_err(err, errlen, "coordinator %s unreachable: %s", n->where,
		    n->r && n->r->errstr[0] ? n->r->errstr : "connection lost");
	node_drop(n);
	c->stale = c->cluster;
}

/* The node at host:port (an empty host: the URL's), added on first sight; -1 when there are too many. */
static int node_at(struct edg_coord *c, const char *host, int port)
{
	if (!host[0])
		host = c->node[0].host;
	for (unsigned i = 0; i < c->nnodes; i++)
		if (c->node[i].port == port && !strcmp(c->node[i].host, host))
			return (int)i;
	if (c->nnodes == NODES_MAX || strlen(host) >= sizeof(c->node[0].host))
		return -1;
	struct node *n = &c->node[c->nnodes];
	memset(n, 0, sizeof(*n));
	snprintf(n->host, sizeof(n->host), "%s", host);
	n->port = port;
	snprintf(n->where, sizeof(n->where), "%s:%d", host, port);
	return (int)c->nnodes++;
}

/* Redis Cluster's key slot: CRC16 (XMODEM) of the key, or of its {hash tag}. */
static unsigned key_slot(const char *key, size_t len)
{
	const char *open = memchr(key, '{', len), *close;
	uint16_t crc = 0;

	if (open && (close = memchr(open + 1, '}', len - (size_t)(open + 1 - key))) && close > open + 1) {
		len = (size_t)(close - open - 1);
		key = open + 1;
	}
	for (size_t i = 0; i < len; i++) {
		crc ^= (uint16_t)((uint8_t)key[i] << 8);
		for (int k = 0; k < 8; k++)
			crc = crc & 0x8000 ? (uint16_t)(crc << 1 ^ 0x1021) : (uint16_t)(crc << 1);
	}
	return crc & (SLOTS - 1);
}

static struct node *node_for(struct edg_coord *c, const char *key, size_t len)
{
	return &c->node[c->cluster ? c->slot_node[key_slot(key, len)] : 0];
}

/* One CLUSTER SLOTS reply into map (a node per slot): 0, or -errno with the reason. */
static int slots_parse(struct edg_coord *c, const redisReply *rep, const struct node *asked, uint8_t *map, char *err,
		       size_t errlen)
{
	memset(map, 0xff, SLOTS);
	if (rep->type != REDIS_REPLY_ARRAY) {
		eng_set_err(err, errlen, "coordinator %s: CLUSTER SLOTS: %s", asked->where,
			    rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
		return -EPROTO;
	}
	for (size_t i = 0; i < rep->elements; i++) {
		const redisReply *e = rep->element[i], *m;
		int at;
		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
		    e->element[1]->type != REDIS_REPLY_INTEGER || (m = e->element[2])->type != REDIS_REPLY_ARRAY ||
		    m->elements < 2 || m->element[0]->type != REDIS_REPLY_STRING ||
		    m->element[1]->type != REDIS_REPLY_INTEGER || e->element[0]->integer < 0 ||
		    e->element[1]->integer >= SLOTS || e->element[0]->integer > e->element[1]->integer) {
			eng_set_err(err, errlen, "coordinator %s: CLUSTER SLOTS: unexpected reply", asked->where);
			return -EPROTO;
		}
		if ((at = node_at(c, m->element[0]->str, (int)m->element[1]->integer)) < 0) {
			eng_set_err(err, errlen, "coordinator %s: more than %d cluster nodes", asked->where, NODES_MAX);
			return -E2BIG;
		}
		memset(map + e->element[0]->integer, at, (size_t)(e->element[1]->integer - e->element[0]->integer + 1));
	}
	for (unsigned s = 0; s < SLOTS; s++)
		if (map[s] == 0xff) {
			eng_set_err(err, errlen, "coordinator %s: cluster slot %u is served by no node", asked->where, s);
			return -EPROTO;
		}
	return 0;
}

/*
 * Learn who serves which slot (CLUSTER SLOTS): from node `first` if it
 * answers (the one a MOVED named knows best), else from the others in turn.
 * The map changes only for a whole answer. At connect, a server without
 * cluster support is the whole coordinator.
 */
static int slots_load(struct edg_coord *c, int first, bool connecting, char *err, size_t errlen)
{
	int r = -EIO;

	for (unsigned k = 0; k <= c->nnodes; k++) { /* k 0: first; then every node but it */
		if ((k == 0 && first < 0) || (k > 0 && (int)(k - 1) == first))
			continue;
		struct node *n = &c->node[k == 0 ? (unsigned)first : k - 1];
		uint8_t map[SLOTS];
		redisReply *rep;
		if (!n->r && node_open(c, n, err, errlen))
			continue;
		if (!(rep = redisCommand(n->r, "CLUSTER SLOTS"))) {
			node_lost(c, n, err, errlen);
			continue;
		}
		if (connecting && rep->type == REDIS_REPLY_ERROR && strstr(rep->str, "cluster support disabled")) {
			freeReplyObject(rep);
			c->cluster = false;
			return 0;
		}
		r = slots_parse(c, rep, n, map, err, errlen);
		freeReplyObject(rep);
		if (!r) {
			memcpy(c->slot_node, map, SLOTS);
			c->cluster = true;
			c->stale = false;
			return 0;
		}
	}
	return r;
}

/* Before commands: a map that a lost connection made doubtful is learnt again (if that fails, later). */
static void slots_fresh(struct edg_coord *c)
{
	char e[256];

	if (c->cluster && c->stale)
		slots_load(c, -1, false, e, sizeof(e));
}

/* "MOVED 3999 host:port" / "ASK 3999 host:port": the node named, *slot its slot; -1 if neither. */
static int redirect_target(struct edg_coord *c, const redisReply *rep, bool *ask, unsigned *slot)
{
	const char *s = rep->str, *colon;
	int off = 0;

	*ask = false;
	if (rep->type != REDIS_REPLY_ERROR || !c->cluster)
		return -1;
	*ask = !strncmp(s, "ASK ", 4);
	if (!*ask && strncmp(s, "MOVED ", 6))
		return -1;
	s += *ask ? 4 : 6;
	if (sscanf(s, "%u %n", slot, &off) != 1 || *slot >= SLOTS || !(colon = strrchr(s, ':')) || colon < s + off)
		return -1;
	char host[256];
	size_t hl = (size_t)(colon - (s + off));
	if (hl >= sizeof(host))
		return -1;
	memcpy(host, s + off, hl);
	host[hl] = 0;
	return node_at(c, host, atoi(colon + 1));
}

/* A slot in migration, or the cluster electing a node: it answers again in a moment. */
static bool busy_reply(const redisReply *rep)
{
	return rep->type == REDIS_REPLY_ERROR &&
	       (!strncmp(rep->str, "TRYAGAIN", 8) || !strncmp(rep->str, "CLUSTERDOWN", 11));
}

/*
 * One command on the node that serves key, following the cluster: a MOVED
 * (the map reloaded once, from the node it names) or an ASK, up to
 * REDIRECTS_MAX times; a busy cluster for up to BUSY_WAIT_S; a lost
 * connection once (every command here is idempotent). *from (may be NULL):
 * the node that answered. NULL on a lost connection, with the message in err.
 */
static redisReply *routed(struct edg_coord *c, const char *key, size_t keylen, int argc, const char **argv,
			  const size_t *len, struct node **from, char *err, size_t errlen)
{
	bool ask = false, lost_once = false, reloaded = false;
	double busy_until = 0;
	int hops = 0;

	slots_fresh(c);
	struct node *n = node_for(c, key, keylen);
	for (;;) {
		redisReply *rep = NULL, *asking = NULL;
		unsigned slot;
		if (!n->r && node_open(c, n, err, errlen))
			goto lost;
		if (ask && (redisAppendCommand(n->r, "ASKING") != REDIS_OK ||
			    redisGetReply(n->r, (void **)&asking) != REDIS_OK)) {
			node_lost(c, n, err, errlen);
			goto lost;
		}
		freeReplyObject(asking);
		if (!(rep = redisCommandArgv(n->r, argc, argv, len))) {
			node_lost(c, n, err, errlen);
			goto lost;
		}
		int at = redirect_target(c, rep, &ask, &slot);
		bool busy = at < 0 && busy_reply(rep);
		if ((at < 0 && !busy) || (!busy && hops == REDIRECTS_MAX) ||
		    (busy && busy_until && eng_mono_s() > busy_until)) {
			if (from)
				*from = n;
			return rep; /* an error reply is the caller's to report */
		}
		freeReplyObject(rep);
		c->redirects++;
		if (busy) {
			if (!busy_until)
				busy_until = eng_mono_s() + BUSY_WAIT_S;
			usleep(100 * 1000);
			c->stale = c->cluster; /* an election may have moved the slot */
			slots_fresh(c);
			n = node_for(c, key, keylen);
			continue;
		}
		hops++;
		if (!ask) {
			char e[256];
			if (!reloaded)
				slots_load(c, at, false, e, sizeof(e));
			reloaded = true;
			c->slot_node[slot] = (uint8_t)at; /* the MOVED is newer than any map */
		}
		n = &c->node[at];
		continue;
lost:
		if (lost_once)
			return NULL;
		lost_once = true;
		ask = false;
		slots_fresh(c);
		n = node_for(c, key, keylen);
	}
}

/* Read and drop every reply still pipelined, after a lost connection: the others stay usable. */
static void drain(struct edg_coord *c)
{
	for (unsigned i = 0; i < c->nnodes; i++) {
		struct node *n = &c->node[i];
		while (n->r && n->pending) {
			redisReply *rep = NULL;
			if (redisGetReply(n->r, (void **)&rep) != REDIS_OK || !rep) {
				node_drop(n);
				break;
			}
			freeReplyObject(rep);
			n->pending--;
		}
	}
}

static void free_replies(redisReply **rep, uint64_t k)
{
	for (uint64_t i = 0; i < k; i++) {
		freeReplyObject(rep[i]);
		rep[i] = NULL;
	}
}

/*
 * One batch: pipelined to every node it touches at once, then what the
 * cluster redirected, one at a time where it now belongs. 0 with every
 * reply in rep (to[i]: the node that gave it; a redirection or wait that
 * ran out is an error reply, and the rest are not sent); or -errno, the
 * message in err and no reply.
 */
static int batch_once(struct edg_coord *c, struct cmd *m, struct node **to, redisReply **rep, uint64_t k, int argc,
		      char *err, size_t errlen)
{
	int r = 0, moved_to = -1;

	slots_fresh(c);
	for (uint64_t i = 0; i < k; i++) /* every node first: a failure sends nothing */
		if (!(to[i] = node_for(c, m[i].key, strlen(m[i].key)))->r && node_open(c, to[i], err, errlen))
			return -EIO;
	for (uint64_t i = 0; i < k && !r; i++) {
		if (redisAppendCommandArgv(to[i]->r, argc, m[i].argv, m[i].len) != REDIS_OK) {
			eng_set_err(err, errlen, "out of memory");
			r = -ENOMEM;
		} else {
			to[i]->pending++;
		}
	}
	/* every node's replies come in the order its commands went */
	for (uint64_t i = 0; i < k && !r; i++) {
		bool ask;
		unsigned slot;
		if (redisGetReply(to[i]->r, (void **)&rep[i]) != REDIS_OK || !rep[i]) {
			node_lost(c, to[i], err, errlen);
			r = -EIO;
			break;
		}
		to[i]->pending--;
		int at = redirect_target(c, rep[i], &ask, &slot);
		if (at >= 0 || busy_reply(rep[i])) {
			if (at >= 0 && !ask)
				moved_to = at;
			c->redirects++;
			freeReplyObject(rep[i]); /* sent again once the pipelines are read */
			rep[i] = NULL;
		}
	}
	if (r) {
		drain(c);
		free_replies(rep, k);
		return r;
	}
	if (moved_to >= 0) { /* a resharding moves many slots: learn them all at once */
		char e[256];
		slots_load(c, moved_to, false, e, sizeof(e));
	}
	for (uint64_t i = 0; i < k; i++) {
		if (rep[i])
			continue;
		if (!(rep[i] = routed(c, m[i].key, strlen(m[i].key), argc, m[i].argv, m[i].len, &to[i], err, errlen))) {
			free_replies(rep, k);
			return -EIO;
		}
		if (rep[i]->type == REDIS_REPLY_ERROR)
			break; /* still redirected or busy: reported, the rest wait for a retry */
	}
	return 0;
}

static int run_batches(struct edg_coord *c, const uint8_t *digests, uint64_t n, int argc, build_fn build,
		       const void *ctx, reply_fn on_reply, void *out, const char *what, char *err, size_t errlen)
{
	struct cmd *m = malloc(BATCH * sizeof(*m));
	struct node **to = malloc(BATCH * sizeof(*to));
	redisReply **rep = calloc(BATCH, sizeof(*rep));
	int r = 0;

	if (!m || !to || !rep) {
		eng_set_err(err, errlen, "out of memory");
		r = -ENOMEM;
	}
	for (uint64_t at = 0; at < n && !r; at += BATCH) {
		uint64_t k = n - at < BATCH ? n - at : BATCH;
		for (uint64_t i = 0; i < k; i++)
			build(c, digests + (at + i) * EDG_DIGEST_LEN, ctx, &m[i]);
		/* a lost connection (a restart, a failover): every command is idempotent, so once more */
		if ((r = batch_once(c, m, to, rep, k, argc, err, errlen)) == -EIO)
			r = batch_once(c, m, to, rep, k, argc, err, errlen);
		for (uint64_t i = 0; i < k && !r; i++) {
			if (rep[i]->type == REDIS_REPLY_ERROR) {
				eng_set_err(err, errlen, "coordinator %s: %s: %s", to[i]->where, what, rep[i]->str);
				r = -EPROTO;
			} else if (on_reply && on_reply(at + i, rep[i], out, err, errlen)) {
				r = -EPROTO;
			}
		}
		free_replies(rep, k);
	}
	free(rep);
	free(to);
	free(m);
	return r;
}

/* ---- connect ------------------------------------------------------------------ */

static bool edge_name_ok(const char *s)
{
	size_t l = strlen(s);

	if (!l || l > 64)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      *s == '.' || *s == '_' || *s == '-'))
			return false;
	return true;
}

/* The password: first line of a file only its owner may read (as ssh treats keys). */
static int read_password(const char *path, char *pw, size_t len, char *err, size_t errlen)
{
	struct stat st;
	FILE *f = fopen(path, "r");

	if (!f || fstat(fileno(f), &st)) {
		eng_set_err(err, errlen, "cannot read coordinator password %s: %s", path, strerror(errno));
		if (f)
			fclose(f);
		return -1;
	}
	if (st.st_mode & 077) {
		fclose(f);
		eng_set_err(err, errlen, "coordinator password %s is readable by others (chmod 600 it)", path);
		return -1;
	}
	bool got = fgets(pw, (int)len, f) != NULL;
	fclose(f);
	pw[strcspn(pw, "\r\n")] = 0;
	if (!got || !pw[0]) {
		eng_set_err(err, errlen, "coordinator password %s is empty", path);
		return -1;
	}
	return 0;
}

/* Every node must have the handoff functions: FUNCTION LOAD is per node, even in a cluster. */
static int functions_loaded(struct edg_coord *c, char *err, size_t errlen)
{
	for (unsigned i = 0; i < c->nnodes; i++) {
		struct node *n = &c->node[i];
		if (!n->r && node_open(c, n, err, errlen))
			return -EIO;
		redisReply *rep = redisCommand(n->r, "FCALL ho_version 0");
		if (!rep) {
			node_lost(c, n, err, errlen);
			return -EIO;
		}
		if (rep->type != REDIS_REPLY_INTEGER || rep->integer != 1) {
			eng_set_err(err, errlen,
				    "coordinator %s has no handoff functions (scripts/coordinator loads them)%s%s",
				    n->where, rep->type == REDIS_REPLY_ERROR ? ": " : "",
				    rep->type == REDIS_REPLY_ERROR ? rep->str : "");
			freeReplyObject(rep);
			return -EPROTO;
		}
		freeReplyObject(rep);
	}
	return 0;
}

struct edg_coord *edg_coord_connect(const char *url, const char *password_file, const char *edge,
				    double timeout_s, char *err, size_t errlen)
{
	char host[256];
	const char *p = url, *at, *colon;
	struct edg_coord *c;
	char *end;

	if (!(c = calloc(1, sizeof(*c)))) {
		eng_set_err(err, errlen, "out of memory");
		return NULL;
	}
	snprintf(c->user, sizeof(c->user), "handoff");
	if (strncmp(p, "redis://", 8)) {
		eng_set_err(err, errlen, "coordinator '%s': want redis://[USER@]HOST:PORT", url);
		goto fail;
	}
	p += 8;
	if ((at = strchr(p, '@'))) {
		if ((size_t)(at - p) >= sizeof(c->user) || at == p) {
			eng_set_err(err, errlen, "coordinator '%s': bad user", url);
			goto fail;
		}
		memcpy(c->user, p, (size_t)(at - p));
		c->user[at - p] = 0;
		p = at + 1;
	}
	colon = strrchr(p, ':');
	long port = colon ? strtol(colon + 1, &end, 10) : 0;
	if (!colon || colon == p || (size_t)(colon - p) >= sizeof(host) || *end || port < 1 || port > 65535) {
		eng_set_err(err, errlen, "coordinator '%s': want redis://[USER@]HOST:PORT", url);
		goto fail;
	}
	memcpy(host, p, (size_t)(colon - p));
	host[colon - p] = 0;
	if (!edge_name_ok(edge)) {
		eng_set_err(err, errlen, "edge name '%s': 1-64 of letters, digits, '.', '_', '-'", edge);
		goto fail;
	}
	if (read_password(password_file, c->pw, sizeof(c->pw), err, errlen))
		goto fail;
	snprintf(c->edge, sizeof(c->edge), "%s", edge);
	c->tv = (struct timeval){ .tv_sec = (time_t)timeout_s,
				  .tv_usec = (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6) };
	node_at(c, host, (int)port);
	if (node_open(c, &c->node[0], err, errlen) || slots_load(c, 0, true, err, errlen) ||
	    functions_loaded(c, err, errlen))
		goto fail;
	return c;
fail:
	edg_coord_close(c);
	return NULL;
}

void edg_coord_close(struct edg_coord *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->nnodes; i++)
		node_drop(&c->node[i]);
	explicit_bzero(c->pw, sizeof(c->pw));
	free(c);
}

uint64_t edg_coord_redirects(const struct edg_coord *c)
{
	return c->redirects;
}

bool edg_coord_is_cluster(const struct edg_coord *c, unsigned *nodes)
{
	if (nodes)
		*nodes = c->nnodes;
	return c->cluster;
}

/* ---- updates -------------------------------------------------------------------- */

static void build_hset(struct edg_coord *c, const uint8_t *d, const char *prefix, const char *name,
		       const char *value, struct cmd *m)
{
	(void)c;
	key_of(d, m->key);
	snprintf(m->field, sizeof(m->field), "%s%s", prefix, name);
	snprintf(m->num, sizeof(m->num), "%s", value);
	set_arg(m, 0, "HSET");
	set_arg(m, 1, m->key);
	set_arg(m, 2, m->field);
	set_arg(m, 3, m->num);
}

static void build_fcall(const uint8_t *d, const char *fn, const char *a1, const char *a2, struct cmd *m)
{
	key_of(d, m->key);
	snprintf(m->field, sizeof(m->field), "%s", a1);
	set_arg(m, 0, "FCALL");
	set_arg(m, 1, fn);
	set_arg(m, 2, "1");
	set_arg(m, 3, m->key);
	set_arg(m, 4, m->field);
	if (a2) {
		snprintf(m->num, sizeof(m->num), "%s", a2);
		set_arg(m, 5, m->num);
	}
}

struct named {
	const char *name, *value;
};

static void b_report(struct edg_coord *c, const uint8_t *d, const void *ctx, struct cmd *m)
{
	build_hset(c, d, "e:", c->edge, ((const struct named *)ctx)->value, m);
}

/* A registration is this edge's: another edge's registration of the same name stands on its own. */
static void reg_name(struct edg_coord *c, const char *image, char *out, size_t len)
{
	snprintf(out, len, "%s:%s", c->edge, image);
}

static void b_register(struct edg_coord *c, const uint8_t *d, const void *ctx, struct cmd *m)
{
	char reg[FIELD_MAX];
	reg_name(c, ((const struct named *)ctx)->name, reg, sizeof(reg));
	build_hset(c, d, "i:", reg, "1", m);
}

static void b_lease(struct edg_coord *c, const uint8_t *d, const void *ctx, struct cmd *m)
{
	const struct named *nm = ctx;
	build_hset(c, d, "l:", nm->name, nm->value, m);
}

static void b_unref(struct edg_coord *c, const uint8_t *d, const void *ctx, struct cmd *m)
{
	char reg[FIELD_MAX];
	reg_name(c, ((const struct named *)ctx)->name, reg, sizeof(reg));
	build_fcall(d, "ho_unref", reg, NULL, m);
}

static void b_release(struct edg_coord *c, const uint8_t *d, const void *ctx, struct cmd *m)
{
	(void)c;
	build_fcall(d, "ho_release", ((const struct named *)ctx)->name, NULL, m);
}

struct may_delete {
	uint64_t grace_s;
	unsigned copies;
};

static void b_may_delete(struct edg_coord *c, const uint8_t *d, const void *ctx, struct cmd *m)
{
	const struct may_delete *md = ctx;
	char g[32];

	snprintf(g, sizeof(g), "%llu", (unsigned long long)md->grace_s);
	build_fcall(d, "ho_may_delete", c->edge, g, m);
	snprintf(m->num2, sizeof(m->num2), "%u", md->copies);
	set_arg(m, 6, m->num2);
}

/* Per chunk, this edge's age of it: the i-th digest's is age_s[i]. */
struct keep {
	const uint8_t *digests;
	const uint64_t *age_s;
	char half_life[32];
};

static void b_keep(struct edg_coord *c, const uint8_t *d, const void *ctx, struct cmd *m)
{
	const struct keep *k = ctx;
	char age[32];

	snprintf(age, sizeof(age), "%llu", (unsigned long long)k->age_s[(size_t)(d - k->digests) / EDG_DIGEST_LEN]);
	build_fcall(d, "ho_keep", c->edge, age, m);
	snprintf(m->num2, sizeof(m->num2), "%s", k->half_life);
	set_arg(m, 6, m->num2);
}

static void b_forget(struct edg_coord *c, const uint8_t *d, const void *ctx, struct cmd *m)
{
	(void)ctx;
	build_fcall(d, "ho_forget", c->edge, NULL, m);
}

static void b_holders(struct edg_coord *c, const uint8_t *d, const void *ctx, struct cmd *m)
{
	(void)c;
	(void)ctx;
	key_of(d, m->key);
	set_arg(m, 0, "FCALL");
	set_arg(m, 1, "ho_holders");
	set_arg(m, 2, "1");
	set_arg(m, 3, m->key);
}

static bool name_ok(const char *name, const char *what, char *err, size_t errlen)
{
	if (!name[0] || strlen(name) > EDG_NAME_MAX) {
		eng_set_err(err, errlen, "%s '%s': 1 to %d bytes", what, name, EDG_NAME_MAX);
		return false;
	}
	return true;
}

int edg_coord_report(struct edg_coord *c, const uint8_t *digests, uint64_t n, char *err, size_t errlen)
{
	char now[32];
	snprintf(now, sizeof(now), "%llu", (unsigned long long)time(NULL));
	struct named nm = { NULL, now };
	return run_batches(c, digests, n, 4, b_report, &nm, NULL, NULL, "report", err, errlen);
}

int edg_coord_register(struct edg_coord *c, const char *name, const uint8_t *digests, uint64_t n, char *err,
		       size_t errlen)
{
	struct named nm = { name, NULL };
	if (!name_ok(name, "image", err, errlen))
		return -EINVAL;
	return run_batches(c, digests, n, 4, b_register, &nm, NULL, NULL, "register", err, errlen);
}

int edg_coord_unregister(struct edg_coord *c, const char *name, const uint8_t *digests, uint64_t n, char *err,
			 size_t errlen)
{
	struct named nm = { name, NULL };
	if (!name_ok(name, "image", err, errlen))
		return -EINVAL;
	return run_batches(c, digests, n, 5, b_unref, &nm, NULL, NULL, "unregister", err, errlen);
}

/* ---- listed registrations: images and running VMs ---------------------------- */

bool edg_coord_vm_name_ok(const char *name, char *err, size_t errlen)
{
	if (!name[0] || strlen(name) > EDG_NAME_MAX - 3) { /* registered as "vm:NAME" */
		eng_set_err(err, errlen, "VM name '%s': 1 to %d bytes", name, EDG_NAME_MAX - 3);
		return false;
	}
	return true;
}

/*
 * A registration whose chunk list the coordinator keeps too, so that it can
 * be moved or ended by its name alone: registration image (an image's name,
 * or "vm:NAME"), its list at key (ho:img:EDGE:NAME, ho:vm:EDGE:NAME).
 */
struct listed {
	char image[EDG_NAME_MAX + 1], key[EDG_NAME_MAX + 80];
};

static int image_listed(const struct edg_coord *c, const char *name, struct listed *l, char *err, size_t errlen)
{
	if (!name_ok(name, "image", err, errlen))
		return -EINVAL;
	if (!strncmp(name, "vm:", 3)) { /* a running VM's registration: one image would end the other's */
		eng_set_err(err, errlen, "image name '%s': names beginning 'vm:' are the running VMs'", name);
		return -EINVAL;
	}
	snprintf(l->image, sizeof(l->image), "%s", name);
	snprintf(l->key, sizeof(l->key), "ho:img:%s:%s", c->edge, name);
	return 0;
}

static int vm_listed(const struct edg_coord *c, const char *name, struct listed *l, char *err, size_t errlen)
{
	if (!edg_coord_vm_name_ok(name, err, errlen))
		return -EINVAL;
	snprintf(l->image, sizeof(l->image), "vm:%s", name);
	snprintf(l->key, sizeof(l->key), "ho:vm:%s:%s", c->edge, name);
	return 0;
}

/* The kept chunk list (malloc'd); *d NULL, *n 0 when there is none. */
static int list_get(struct edg_coord *c, const char *key, uint8_t **d, uint64_t *n, char *err, size_t errlen)
{
	const char *argv[] = { "GET", key };
	struct node *from = NULL;
	redisReply *rep = routed(c, key, strlen(key), 2, argv, NULL, &from, err, errlen);
	int r = 0;

	*d = NULL;
	*n = 0;
	if (!rep) {
		r = -EIO;
	} else if (rep->type == REDIS_REPLY_ERROR) {
		eng_set_err(err, errlen, "coordinator %s: chunk list: %s", from->where, rep->str);
		r = -EPROTO;
	} else if (rep->type == REDIS_REPLY_STRING && rep->len % EDG_DIGEST_LEN) {
		eng_set_err(err, errlen, "coordinator %s: %s is not a chunk list (%zu bytes)", from->where, key, rep->len);
		r = -EPROTO;
	} else if (rep->type == REDIS_REPLY_STRING && rep->len) {
		if (!(*d = malloc(rep->len))) {
			eng_set_err(err, errlen, "out of memory");
			r = -ENOMEM;
		} else {
			memcpy(*d, rep->str, rep->len);
			*n = rep->len / EDG_DIGEST_LEN;
		}
	}
	freeReplyObject(rep);
	return r;
}

/* One command on key argv[1] whose reply only says whether it worked. */
static int simple(struct edg_coord *c, int argc, const char **argv, const size_t *len, const char *what, char *err,
		  size_t errlen)
{
	struct node *from = NULL;
	redisReply *rep = routed(c, argv[1], len ? len[1] : strlen(argv[1]), argc, argv, len, &from, err, errlen);
	int r = 0;

	if (!rep) {
		r = -EIO;
	} else if (rep->type == REDIS_REPLY_ERROR) {
		eng_set_err(err, errlen, "coordinator %s: %s: %s", from->where, what, rep->str);
		r = -EPROTO;
	}
	freeReplyObject(rep);
	return r;
}

/* Stores a chunk list at key (n may be 0). */
static int list_set(struct edg_coord *c, const char *key, const uint8_t *digests, uint64_t n, char *err,
		    size_t errlen)
{
	const char *argv[] = { "SET", key, n ? (const char *)digests : "" };
	size_t len[] = { 3, strlen(key), n * EDG_DIGEST_LEN };

	return simple(c, 3, argv, len, "chunk list", err, errlen);
}

static int register_listed(struct edg_coord *c, const struct listed *l, const uint8_t *list, uint64_t n_list,
			   char *err, size_t errlen)
{
	uint8_t *old, *both = NULL, *gone = NULL;
	uint64_t n_old, k = 0, n;
	int r;

	/* each chunk once: a base repeats many (zero pages), and each is a coordinator write */
	uint8_t *digests = edg_digests_minus(list, n_list, NULL, 0, &n);
	if (!digests) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if ((r = list_get(c, l->key, &old, &n_old, err, errlen))) {
		free(digests);
		return r;
	}
	/*
	 * The kept list always names every chunk registered under the name, so a
	 * crash anywhere leaves a state that ending it repairs: first the old
	 * and the new list together, then the new registrations, then the end of
	 * the old-only ones, and last the new list alone.
	 */
	if (old) {
		gone = edg_digests_minus(old, n_old, digests, n, &k);
		both = malloc((n + k) * EDG_DIGEST_LEN + 1);
		if (!gone || !both) {
			eng_set_err(err, errlen, "out of memory");
			r = -ENOMEM;
			goto out;
		}
		memcpy(both, digests, n * EDG_DIGEST_LEN);
		memcpy(both + n * EDG_DIGEST_LEN, gone, k * EDG_DIGEST_LEN);
		if ((r = list_set(c, l->key, both, n + k, err, errlen)))
			goto out;
	} else if ((r = list_set(c, l->key, digests, n, err, errlen))) {
		goto out;
	}
	if ((r = edg_coord_register(c, l->image, digests, n, err, errlen)))
		goto out;
	if (k && (r = edg_coord_unregister(c, l->image, gone, k, err, errlen)))
		goto out;
	if (old)
		r = list_set(c, l->key, digests, n, err, errlen);
out:
	free(both);
	free(gone);
	free(old);
	free(digests);
	return r;
}

static int unregister_listed(struct edg_coord *c, const struct listed *l, uint64_t *n, char *err, size_t errlen)
{
	uint8_t *d;
	uint64_t k;
	int r;

	if (n)
		*n = 0;
	if ((r = list_get(c, l->key, &d, &k, err, errlen)))
		return r;
	/* the registration first, the list last: a failure in between is repaired by ending it again */
	if (d)
		r = edg_coord_unregister(c, l->image, d, k, err, errlen);
	free(d);
	const char *argv[] = { "DEL", l->key };
	size_t len[] = { 3, strlen(l->key) };
	if (!r)
		r = simple(c, 2, argv, len, "chunk list", err, errlen);
	if (!r && n)
		*n = k;
	return r;
}

int edg_coord_register_image(struct edg_coord *c, const char *name, const uint8_t *digests, uint64_t n, char *err,
			     size_t errlen)
{
	struct listed l;
	int r = image_listed(c, name, &l, err, errlen);

	return r ? r : register_listed(c, &l, digests, n, err, errlen);
}

int edg_coord_unregister_image(struct edg_coord *c, const char *name, uint64_t *n, char *err, size_t errlen)
{
	struct listed l;
	int r = image_listed(c, name, &l, err, errlen);

	return r ? r : unregister_listed(c, &l, n, err, errlen);
}

int edg_coord_register_vm(struct edg_coord *c, const char *name, const uint8_t *digests, uint64_t n, char *err,
			  size_t errlen)
{
	struct listed l;
	int r = vm_listed(c, name, &l, err, errlen);

	return r ? r : register_listed(c, &l, digests, n, err, errlen);
}

int edg_coord_unregister_vm(struct edg_coord *c, const char *name, uint64_t *n, char *err, size_t errlen)
{
	struct listed l;
	int r = vm_listed(c, name, &l, err, errlen);

	return r ? r : unregister_listed(c, &l, n, err, errlen);
}

int edg_coord_lease(struct edg_coord *c, const char *id, const uint8_t *digests, uint64_t n, double ttl_s,
		    char *err, size_t errlen)
{
	struct timespec ts;
	char until[32];

	if (!name_ok(id, "lease", err, errlen))
		return -EINVAL;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(until, sizeof(until), "%llu",
		 (unsigned long long)((double)ts.tv_sec * 1000 + (double)ts.tv_nsec / 1e6 + ttl_s * 1000));
	struct named nm = { id, until };
	return run_batches(c, digests, n, 4, b_lease, &nm, NULL, NULL, "lease", err, errlen);
}

int edg_coord_release(struct edg_coord *c, const char *id, const uint8_t *digests, uint64_t n, char *err,
		      size_t errlen)
{
	struct named nm = { id, NULL };
	if (!name_ok(id, "lease", err, errlen))
		return -EINVAL;
	return run_batches(c, digests, n, 5, b_release, &nm, NULL, NULL, "release", err, errlen);
}

static int r_flag(uint64_t i, const redisReply *rep, void *out, char *err, size_t errlen)
{
	if (rep->type != REDIS_REPLY_INTEGER) {
		eng_set_err(err, errlen, "coordinator: unexpected reply to ho_may_delete");
		return -1;
	}
	((bool *)out)[i] = rep->integer == 1;
	return 0;
}

int edg_coord_may_delete(struct edg_coord *c, const uint8_t *digests, uint64_t n, uint64_t grace_s, unsigned copies,
			 bool *ok, char *err, size_t errlen)
{
	struct may_delete md = { grace_s, copies };
	return run_batches(c, digests, n, 7, b_may_delete, &md, r_flag, ok, "may-delete", err, errlen);
}

static int r_keep(uint64_t i, const redisReply *rep, void *out, char *err, size_t errlen)
{
	if (rep->type != REDIS_REPLY_INTEGER) {
		eng_set_err(err, errlen, "coordinator: unexpected reply to ho_keep");
		return -1;
	}
	((double *)out)[i] = (double)rep->integer / 1e6;
	return 0;
}

int edg_coord_keep(struct edg_coord *c, const uint8_t *digests, uint64_t n, const uint64_t *age_s,
		   double half_life_s, double *worth, char *err, size_t errlen)
{
	struct keep k = { digests, age_s, "" };
	snprintf(k.half_life, sizeof(k.half_life), "%.0f", half_life_s > 1 ? half_life_s : 1);
	return run_batches(c, digests, n, 7, b_keep, &k, r_keep, worth, "keep", err, errlen);
}

int edg_coord_forget(struct edg_coord *c, const uint8_t *digests, uint64_t n, char *err, size_t errlen)
{
	return run_batches(c, digests, n, 5, b_forget, NULL, NULL, NULL, "forget", err, errlen);
}

struct holders_out {
	uint32_t *refs, *holders;
};

static int r_holders(uint64_t i, const redisReply *rep, void *out, char *err, size_t errlen)
{
	struct holders_out *o = out;

	if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[0]->type != REDIS_REPLY_INTEGER ||
	    rep->element[1]->type != REDIS_REPLY_ARRAY) {
		eng_set_err(err, errlen, "coordinator: unexpected reply to ho_holders");
		return -1;
	}
	o->refs[i] = (uint32_t)rep->element[0]->integer;
	o->holders[i] = (uint32_t)rep->element[1]->elements;
	return 0;
}

int edg_coord_holders(struct edg_coord *c, const uint8_t *digests, uint64_t n, uint32_t *refs, uint32_t *holders,
		      char *err, size_t errlen)
{
	struct holders_out o = { refs, holders };
	return run_batches(c, digests, n, 4, b_holders, NULL, r_holders, &o, "holders", err, errlen);
}

/* ---- holders by name, and where edges serve ------------------------------------ */

struct names_out {
	struct edg_holder_names *h;
	const char *self;
};

static int r_holder_names(uint64_t i, const redisReply *rep, void *out, char *err, size_t errlen)
{
	struct names_out *o = out;
	struct edg_holder_names *h = o->h;

	(void)i;
	if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[1]->type != REDIS_REPLY_ARRAY) {
		eng_set_err(err, errlen, "coordinator: unexpected reply to ho_holders");
		return -1;
	}
	for (size_t k = 0; k < rep->element[1]->elements; k++) {
		const redisReply *e = rep->element[1]->element[k];
		unsigned j;
		if (e->type != REDIS_REPLY_STRING || !edge_name_ok(e->str) || !strcmp(e->str, o->self))
			continue;
		for (j = 0; j < h->n && strcmp(h->edge[j], e->str); j++)
			;
		if (j == h->n) {
			if (h->n == EDG_HOLDERS_MAX)
				continue; /* the most an edge asks at once; the rest stay unasked */
			snprintf(h->edge[h->n++], sizeof(h->edge[0]), "%s", e->str);
		}
		h->chunks[j]++;
	}
	return 0;
}

int edg_coord_holder_names(struct edg_coord *c, const uint8_t *digests, uint64_t n, struct edg_holder_names *h,
			   char *err, size_t errlen)
{
	struct names_out o = { h, c->edge };

	memset(h, 0, sizeof(*h));
	return run_batches(c, digests, n, 4, b_holders, NULL, r_holder_names, &o, "holders", err, errlen);
}

/* "ho:edge:<name>", a hash: addr (where it serves), at (ms since the epoch) */
static void edge_key(const char *edge, char *key, size_t len)
{
	snprintf(key, len, "ho:edge:%s", edge);
}

int edg_coord_advertise(struct edg_coord *c, const char *loc, char *err, size_t errlen)
{
	char key[80], at[32];
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(at, sizeof(at), "%llu", (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000);
	edge_key(c->edge, key, sizeof(key));
	const char *set[] = { "HSET", key, "addr", loc ? loc : "", "at", at }, *del[] = { "HDEL", key, "addr", "at" };

	return loc ? simple(c, 6, set, NULL, "advertise", err, errlen) : simple(c, 4, del, NULL, "advertise", err, errlen);
}

int edg_coord_edge_addr(struct edg_coord *c, const char *edge, char *loc, size_t len, char *err, size_t errlen)
{
	char key[80];

	if (!edge_name_ok(edge)) {
		eng_set_err(err, errlen, "edge name '%s': 1-64 of letters, digits, '.', '_', '-'", edge);
		return -EINVAL;
	}
	edge_key(edge, key, sizeof(key));
	const char *argv[] = { "HGET", key, "addr" };
	struct node *from = NULL;
	redisReply *rep = routed(c, key, strlen(key), 3, argv, NULL, &from, err, errlen);
	int r = 0;
	if (!rep) {
		r = -EIO;
	} else if (rep->type == REDIS_REPLY_ERROR) {
		eng_set_err(err, errlen, "coordinator %s: edge address: %s", from->where, rep->str);
		r = -EPROTO;
	} else if (rep->type != REDIS_REPLY_STRING || !rep->len || rep->len >= len) {
		eng_set_err(err, errlen, "edge %s serves nowhere the coordinator knows", edge);
		r = -ENOENT;
	} else {
		memcpy(loc, rep->str, rep->len);
		loc[rep->len] = 0;
	}
	freeReplyObject(rep);
	return r;
}

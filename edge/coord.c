/*
 * Cache coordinator client on hiredis (see coord.h). Commands go out in
 * pipelined batches: one round trip per BATCH chunks, not per chunk.
 */
#include "coord.h"
#include "engine/errbuf.h"
#include "store.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define BATCH 1024
#define KEY_LEN (5 + 2 * EDG_DIGEST_LEN) /* "ho:c:" + hex */
#define FIELD_MAX (2 + 64 + 1 + EDG_NAME_MAX) /* "i:" EDGE ":" IMAGE */

struct edg_coord {
	redisContext *r;
	char edge[65];
	char where[300]; /* host:port, for messages */
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

static int run_batches(struct edg_coord *c, const uint8_t *digests, uint64_t n, int argc, build_fn build,
		       const void *ctx, reply_fn on_reply, void *out, const char *what, char *err, size_t errlen)
{
	struct cmd *m = malloc(BATCH * sizeof(*m));

	if (!m) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (uint64_t at = 0; at < n; at += BATCH) {
		uint64_t k = n - at < BATCH ? n - at : BATCH;
		for (uint64_t i = 0; i < k; i++) {
			build(c, digests + (at + i) * EDG_DIGEST_LEN, ctx, &m[i]);
			if (redisAppendCommandArgv(c->r, argc, m[i].argv, m[i].len) != REDIS_OK)
				goto io;
		}
		for (uint64_t i = 0; i < k; i++) {
			redisReply *rep = NULL;
			if (redisGetReply(c->r, (void **)&rep) != REDIS_OK || !rep)
				goto io;
			int bad = rep->type == REDIS_REPLY_ERROR;
			if (bad)
				eng_set_err(err, errlen, "coordinator %s: %s: %s", c->where, what, rep->str);
			else if (on_reply && on_reply(at + i, rep, out, err, errlen))
				bad = 1;
			freeReplyObject(rep);
			if (bad) {
				/* the rest of the batch's replies are read so the connection stays usable */
				while (++i < k && redisGetReply(c->r, (void **)&rep) == REDIS_OK && rep)
					freeReplyObject(rep);
				free(m);
				return -EPROTO;
			}
		}
	}
	free(m);
	return 0;
io:
	eng_set_err(err, errlen, "coordinator %s unreachable: %s", c->where,
		    c->r->errstr[0] ? c->r->errstr : "connection lost");
	free(m);
	return -EIO;
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

struct edg_coord *edg_coord_connect(const char *url, const char *password_file, const char *edge,
				    double timeout_s, char *err, size_t errlen)
{
	char user[65] = "handoff", host[256], pw[512];
	const char *p = url, *at, *colon;
	struct edg_coord *c;
	redisReply *rep;
	char *end;

	if (strncmp(p, "redis://", 8)) {
		eng_set_err(err, errlen, "coordinator '%s': want redis://[USER@]HOST:PORT", url);
		return NULL;
	}
	p += 8;
	if ((at = strchr(p, '@'))) {
		if ((size_t)(at - p) >= sizeof(user) || at == p) {
			eng_set_err(err, errlen, "coordinator '%s': bad user", url);
			return NULL;
		}
		memcpy(user, p, (size_t)(at - p));
		user[at - p] = 0;
		p = at + 1;
	}
	colon = strrchr(p, ':');
	long port = colon ? strtol(colon + 1, &end, 10) : 0;
	if (!colon || colon == p || (size_t)(colon - p) >= sizeof(host) || *end || port < 1 || port > 65535) {
		eng_set_err(err, errlen, "coordinator '%s': want redis://[USER@]HOST:PORT", url);
		return NULL;
	}
	memcpy(host, p, (size_t)(colon - p));
	host[colon - p] = 0;
	if (!edge_name_ok(edge)) {
		eng_set_err(err, errlen, "edge name '%s': 1-64 of letters, digits, '.', '_', '-'", edge);
		return NULL;
	}
	if (read_password(password_file, pw, sizeof(pw), err, errlen))
		return NULL;
	if (!(c = calloc(1, sizeof(*c)))) {
		eng_set_err(err, errlen, "out of memory");
		return NULL;
	}
	snprintf(c->edge, sizeof(c->edge), "%s", edge);
	snprintf(c->where, sizeof(c->where), "%s:%ld", host, port);
	struct timeval tv = { .tv_sec = (time_t)timeout_s,
			      .tv_usec = (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6) };
	c->r = redisConnectWithTimeout(host, (int)port, tv);
	if (!c->r || c->r->err) {
		eng_set_err(err, errlen, "coordinator %s unreachable: %s", c->where,
			    c->r ? c->r->errstr : "out of memory");
		goto fail;
	}
	redisSetTimeout(c->r, tv);
	const char *auth[] = { "AUTH", user, pw };
	rep = redisCommandArgv(c->r, 3, auth, NULL);
	explicit_bzero(pw, sizeof(pw));
	if (!rep || rep->type == REDIS_REPLY_ERROR) {
		eng_set_err(err, errlen, "coordinator %s refused %s: %s", c->where, user,
			    rep ? rep->str : c->r->errstr);
		freeReplyObject(rep);
		goto fail;
	}
	freeReplyObject(rep);
	rep = redisCommand(c->r, "FCALL ho_version 0");
	if (!rep || rep->type != REDIS_REPLY_INTEGER || rep->integer != 1) {
		eng_set_err(err, errlen, "coordinator %s has no handoff functions (scripts/coordinator loads them)%s%s",
			    c->where, rep && rep->type == REDIS_REPLY_ERROR ? ": " : "",
			    rep && rep->type == REDIS_REPLY_ERROR ? rep->str : "");
		freeReplyObject(rep);
		goto fail;
	}
	freeReplyObject(rep);
	return c;
fail:
	explicit_bzero(pw, sizeof(pw));
	edg_coord_close(c);
	return NULL;
}

void edg_coord_close(struct edg_coord *c)
{
	if (!c)
		return;
	if (c->r)
		redisFree(c->r);
	free(c);
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

/* ---- running VMs ---------------------------------------------------------------- */

bool edg_coord_vm_name_ok(const char *name, char *err, size_t errlen)
{
	if (!name[0] || strlen(name) > EDG_NAME_MAX - 3) { /* registered as "vm:NAME" */
		eng_set_err(err, errlen, "VM name '%s': 1 to %d bytes", name, EDG_NAME_MAX - 3);
		return false;
	}
	return true;
}

/* Image name "vm:NAME" and key ho:vm:EDGE:NAME of running VM name on this edge. */
static int vm_names(const struct edg_coord *c, const char *name, char *image, char *key, size_t keylen, char *err,
		    size_t errlen)
{
	if (!edg_coord_vm_name_ok(name, err, errlen))
		return -EINVAL;
	snprintf(image, EDG_NAME_MAX + 1, "vm:%s", name);
	snprintf(key, keylen, "ho:vm:%s:%s", c->edge, name);
	return 0;
}

/* The chunk list of a running VM's registration (malloc'd); *d NULL, *n 0 when there is none. */
static int vm_list(struct edg_coord *c, const char *key, uint8_t **d, uint64_t *n, char *err, size_t errlen)
{
	redisReply *rep = redisCommand(c->r, "GET %s", key);
	int r = 0;

	*d = NULL;
	*n = 0;
	if (!rep || rep->type == REDIS_REPLY_ERROR) {
		eng_set_err(err, errlen, "coordinator %s: running VM: %s", c->where, rep ? rep->str : c->r->errstr);
		r = rep ? -EPROTO : -EIO;
	} else if (rep->type == REDIS_REPLY_STRING && rep->len % EDG_DIGEST_LEN) {
		eng_set_err(err, errlen, "coordinator %s: %s is not a chunk list (%zu bytes)", c->where, key, rep->len);
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

/* One command whose reply only says whether it worked. */
static int simple(struct edg_coord *c, int argc, const char **argv, const size_t *len, const char *what, char *err,
		  size_t errlen)
{
	redisReply *rep = redisCommandArgv(c->r, argc, argv, len);
	int r = 0;

	if (!rep || rep->type == REDIS_REPLY_ERROR) {
		eng_set_err(err, errlen, "coordinator %s: %s: %s", c->where, what, rep ? rep->str : c->r->errstr);
		r = rep ? -EPROTO : -EIO;
	}
	freeReplyObject(rep);
	return r;
}

/* Stores a running VM's chunk list at key (n may be 0). */
static int vm_store(struct edg_coord *c, const char *key, const uint8_t *digests, uint64_t n, char *err,
		    size_t errlen)
{
	const char *argv[] = { "SET", key, n ? (const char *)digests : "" };
	size_t len[] = { 3, strlen(key), n * EDG_DIGEST_LEN };

	return simple(c, 3, argv, len, "running VM", err, errlen);
}

int edg_coord_register_vm(struct edg_coord *c, const char *name, const uint8_t *list, uint64_t n_list, char *err,
			  size_t errlen)
{
	char image[EDG_NAME_MAX + 1], key[EDG_NAME_MAX + 80];
	uint8_t *old, *both = NULL, *gone = NULL;
	uint64_t n_old, k = 0, n;
	int r;

	if ((r = vm_names(c, name, image, key, sizeof(key), err, errlen)))
		return r;
	/* each chunk once: a base repeats many (zero pages), and each is a coordinator write */
	uint8_t *digests = edg_digests_minus(list, n_list, NULL, 0, &n);
	if (!digests) {
		eng_set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if ((r = vm_list(c, key, &old, &n_old, err, errlen))) {
		free(digests);
		return r;
	}
	/*
	 * The stored list always names every chunk registered for the VM, so a
	 * crash anywhere leaves a state that ending the VM repairs: first the old
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
		if ((r = vm_store(c, key, both, n + k, err, errlen)))
			goto out;
	} else if ((r = vm_store(c, key, digests, n, err, errlen))) {
		goto out;
	}
	if ((r = edg_coord_register(c, image, digests, n, err, errlen)))
		goto out;
	if (k && (r = edg_coord_unregister(c, image, gone, k, err, errlen)))
		goto out;
	if (old)
		r = vm_store(c, key, digests, n, err, errlen);
out:
	free(both);
	free(gone);
	free(old);
	free(digests);
	return r;
}

int edg_coord_unregister_vm(struct edg_coord *c, const char *name, uint64_t *n, char *err, size_t errlen)
{
	char image[EDG_NAME_MAX + 1], key[EDG_NAME_MAX + 80];
	uint8_t *d;
	uint64_t k;
	int r;

	if (n)
		*n = 0;
	if ((r = vm_names(c, name, image, key, sizeof(key), err, errlen)) ||
	    (r = vm_list(c, key, &d, &k, err, errlen)))
		return r;
	/* the registration first, the list last: a failure in between is repaired by ending it again */
	if (d)
		r = edg_coord_unregister(c, image, d, k, err, errlen);
	free(d);
	const char *argv[] = { "DEL", key };
	size_t len[] = { 3, strlen(key) };
	if (!r)
		r = simple(c, 2, argv, len, "running VM", err, errlen);
	if (!r && n)
		*n = k;
	return r;
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
	redisReply *rep = redisCommand(c->r, "HGET %s addr", key);
	int r = 0;
	if (!rep || rep->type == REDIS_REPLY_ERROR) {
		eng_set_err(err, errlen, "coordinator %s: edge address: %s", c->where, rep ? rep->str : c->r->errstr);
		r = rep ? -EPROTO : -EIO;
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

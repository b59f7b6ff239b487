/*
 * qemu_bridge/qmp: a small synchronous QMP client (json-c) for the engine's
 * control of the source and destination QEMU: run commands, pass file
 * descriptors, wait for events, and set up migrations whose stream the
 * bridge can parse (migstream.h).
 *
 * One connection is used by one thread at a time. Commands are strictly
 * request/response (each carries an "id"); events that arrive meanwhile are
 * queued in order and handed out by qb_qmp_wait_event(). Every call is
 * bounded by a timeout. Errors: NULL or -errno with a one-line reason in err
 * (QEMU's own "desc" for command errors).
 */
#ifndef HANDOFF_QB_QMP_H
#define HANDOFF_QB_QMP_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct qb_qmp;

/* Connect to a QMP unix socket (retrying while QEMU has not created it yet,
 * up to timeout_s), read the greeting, send qmp_capabilities. NULL + err. */
struct qb_qmp *qb_qmp_connect(const char *path, double timeout_s, char *err, size_t errlen);
/* The same on a connected socket (owned from here on, closed on failure): tests and fuzzing. */
struct qb_qmp *qb_qmp_open_fd(int fd, double timeout_s, char *err, size_t errlen);
void qb_qmp_close(struct qb_qmp *q);

/* Run a command; args (may be NULL) is consumed. Returns the "return" value
 * (caller json_object_put()s; an empty object for {}), or NULL with QEMU's
 * error "desc" (or a timeout/IO reason) in err. */
json_object *qb_qmp_exec(struct qb_qmp *q, const char *cmd, json_object *args, double timeout_s,
			 char *err, size_t errlen);
/* qb_qmp_exec for commands whose return value is not needed: 0 or -errno. */
int qb_qmp_run(struct qb_qmp *q, const char *cmd, json_object *args, double timeout_s, char *err, size_t errlen);

/* Pass fd to QEMU with SCM_RIGHTS + "getfd" under fdname (for "fd:NAME"
 * migration URIs). The caller keeps its own fd and may close it after. */
int qb_qmp_send_fd(struct qb_qmp *q, int fd, const char *fdname, char *err, size_t errlen);

/* Wait for the named event (any event if name is NULL), queued ones first.
 * 0 on success; *data gets the event's "data" (caller puts; may pass NULL;
 * an empty object if the event has none), *ts its QEMU timestamp in seconds
 * (may pass NULL). -ETIMEDOUT / -EIO with err. */
int qb_qmp_wait_event(struct qb_qmp *q, const char *name, double timeout_s, json_object **data, double *ts,
		      char *err, size_t errlen);

/* query-status: 1 running, 0 not running, <0 error; optional status copy. */
int qb_qmp_running(struct qb_qmp *q, char *status, size_t len, char *err, size_t errlen);

/* The QEMU process behind the socket (SO_PEERCRED) and its vCPU threads
 * (query-cpus-fast thread-id), at most max of them. 0 or -errno with err. */
int qb_vcpu_threads(struct qb_qmp *q, pid_t *qemu_pid, pid_t *tids, unsigned max, unsigned *n, char *err,
		    size_t errlen);

/* Make the source ready for a bridge-parsed migration: every migration
 * capability off except "events" (so no multifd, postcopy, compress,
 * xbzrle, x-ignore-shared, auto-converge...; the stream then holds only
 * PAGE/ZERO records), max-bandwidth effectively unlimited (2^40 B/s),
 * downtime-limit as given (ms, at most 2000000). Must run before "migrate". */
int qb_migrate_prepare(struct qb_qmp *q, uint64_t downtime_ms, char *err, size_t errlen);
/* Change downtime-limit, also while migrating; raising it lets QEMU stop
 * the VM and finish. A tiny limit alone does NOT keep QEMU iterating when
 * the guest dirties memory slowly (measured here: 1 ms with a 2 or 8 MB/s
 * workload converges 0.2-0.5 s after the first full pass, because QEMU
 * re-syncs its dirty bitmap microseconds apart and finds nothing pending).
 * Hold QEMU with max-bandwidth instead (below). */
/* Turn on x-ignore-shared (after qb_migrate_prepare): RAM on shared memory
 * backends is not sent; both ends map the same bytes (the engine copies them). */
int qb_migrate_ignore_shared(struct qb_qmp *q, char *err, size_t errlen);
/* The first memory backend with share=on: its id (= its RAM block's name) and
 * mem-path. 0, -ENOENT when there is none, -EIO with err. */
int qb_find_shared_ram(struct qb_qmp *q, char *id, size_t idlen, char *path, size_t pathlen,
		       char *err, size_t errlen);
int qb_migrate_set_downtime(struct qb_qmp *q, uint64_t downtime_ms, char *err, size_t errlen);
/* Change max-bandwidth (bytes/s, 1 .. 2^40), also while migrating. Once a
 * 100 ms window has used bandwidth/10 bytes, QEMU sleeps out the window;
 * while its pending RAM exceeds bandwidth * downtime-limit it cannot
 * converge. So a bandwidth below the guest's dirty rate (or so low that
 * the first pass is unfinished) plus a tiny downtime limit holds QEMU
 * iterating with the VM running, and raising both finishes the migration. */
int qb_migrate_set_bandwidth(struct qb_qmp *q, uint64_t bytes_per_s, char *err, size_t errlen);
/* Start "migrate" into fd (sent with getfd under fdname). */
int qb_migrate_to_fd(struct qb_qmp *q, int fd, const char *fdname, char *err, size_t errlen);
/* Destination (QEMU started with -incoming defer): "migrate-incoming" from
 * fd (sent with getfd under fdname). */
int qb_migrate_incoming_fd(struct qb_qmp *q, int fd, const char *fdname, char *err, size_t errlen);
/* query-migrate "status" ("active", "completed", "failed", ...) into buf;
 * 0 or -errno. */
int qb_migrate_status(struct qb_qmp *q, char *buf, size_t len, char *err, size_t errlen);

#endif

/*
 * The source VM's guard: a small process that outlives the engine. A send
 * that dies mid-handoff (killed, crashed, out of memory) cannot put the
 * source VM back itself: after the stop QEMU holds it paused, and a throttle
 * keeps its vCPUs slowed. The guard waits on a pipe from the engine; if the
 * pipe closes before the engine said "committed" or "released", it undoes
 * what the engine left: the throttle cgroup is closed, QEMU's migration is
 * cancelled and the VM continued if it was running. Once COMMIT went out the
 * VM is the destination's and the guard does nothing.
 *
 * It is the engine binary itself (`handoff-engine guard`, run by send from
 * /proc/self/exe, so the same build even if the file was replaced; not for
 * operators), started in a session of its own so that a ^C meant for the
 * engine does not reach it, and it says it is up before send goes on.
 *
 * The destination has the mirror image (`handoff-engine guard --incoming`):
 * receive hands it QEMU's incoming stream, which lacks only the device
 * state, and the device state itself before it tells the source it is
 * ready. On COMMIT receive says one byte and the guard feeds the device
 * state to QEMU, so a receive killed after the commit still leaves the VM
 * starting at the destination, never paused at both ends. Before COMMIT a
 * receive that dies takes the stream down with it and QEMU never runs.
 *
 * Between READY and COMMIT (a round trip) receive cannot know whether the
 * source has committed, so over tcp: it hands the guard the connection's
 * socket and the exact bytes the source's COMMIT will be (control.h): if
 * receive dies there, the guard reads the connection itself and feeds QEMU
 * when the COMMIT comes. What is left is receive dying in the microseconds
 * between reading COMMIT and passing it on, and dpdk:, whose port dies with
 * receive: there the source, committed and unconfirmed, stays paused.
 */
#ifndef HANDOFF_GUARD_H
#define HANDOFF_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "throttle.h"

struct eng_guard {
	pid_t pid;
	int fd; /* the pipe's write end; -1: no guard */
};

/* Start a guard for the VM behind qmp_path that was running (or not). */
int eng_guard_start(struct eng_guard *g, const char *qmp_path, bool was_running, char *err, size_t errlen);
/* The throttle as it is now (after each change): the guard closes it if the engine dies. */
void eng_guard_throttle(struct eng_guard *g, const struct eng_throttle *t);
/* COMMIT is about to go out: from here on the VM is the destination's
 * (false again: a reconnect found that the COMMIT never arrived). -EPIPE
 * when the guard is gone: then COMMIT must not go out unguarded. */
int eng_guard_committed(struct eng_guard *g, bool committed);
/* The engine ended and left the VM as it should be: the guard just exits. */
void eng_guard_release(struct eng_guard *g);

/* Destination: a guard holding QEMU's incoming stream mig_fd (not yet used). */
int eng_guard_start_incoming(struct eng_guard *g, int mig_fd, char *err, size_t errlen);
/* It keeps the device state (QEMU's stream tail) until the commit. */
int eng_guard_hold_tail(struct eng_guard *g, const void *tail, size_t len, char *err, size_t errlen);
/* READY is about to go out on the connection whose socket is sock (tcp:):
 * watch it for these bytes (the source's COMMIT) should receive die. */
int eng_guard_watch_commit(struct eng_guard *g, int sock, const void *commit, size_t len);
/* No COMMIT on that connection (receive gave it up): the guard closes its copy. */
void eng_guard_unwatch(struct eng_guard *g);
/* COMMIT arrived: the guard feeds the tail and ends QEMU's stream... */
int eng_guard_feed(struct eng_guard *g);
/* ...and says when it did: 0 when QEMU has it all. */
int eng_guard_fed(struct eng_guard *g, char *err, size_t errlen);

/* `handoff-engine guard`: the guard's side, reading the pipe on fd. */
int eng_guard_main(int fd, const char *qmp_path);
/* `handoff-engine guard --incoming`: pipe on fd, QEMU's stream on mig_fd. */
int eng_guard_incoming_main(int fd, int mig_fd);

#endif

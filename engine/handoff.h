/*
 * The VM handoff: a running (or suspended) QEMU VM's disk, memory and device
 * state, sent against a base VM both sites hold.
 *
 * Source (handoff_send.c): QEMU migrates into a socket the engine reads;
 * qemu_bridge parses it into pages (kept in a mirror of guest RAM, marking
 * what changed) and opaque device state; the FUSE tracker says which disk
 * blocks were written. A feed hands the pipeline every changed block once
 * per pass, in a randomized order, newest content only. The engine owns
 * pre-copy: a new pass starts when ~10 MB changed again; when a pass would
 * take <= 2 s on the link (pipeline and socket backlog included), QEMU is
 * let finish: it stops the VM and sends the last pages and the devices; a
 * final pass sends those, the last disk blocks and the device state.
 *
 * Destination (handoff_receive.c): verifies and applies the stream (disk
 * blocks into its copy of the base disk through io_uring, memory into a RAM
 * image, device state into a buffer), rebuilds a migration stream for its
 * QEMU (started with -incoming defer), and resumes the VM only after every
 * object matched its digest and the source committed (control.h).
 */
#ifndef HANDOFF_HANDOFF_H
#define HANDOFF_HANDOFF_H

#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include "pipeline.h"
#include "vmbase.h"

/* Pre-copy policy (DESIGN.md / seed 004). */
#define ENG_ITERATE_BYTES (10ull << 20) /* a new pass when this much changed again */
/* The stop budget (send --stop-budget): stop the VM when the rest would take
 * this long on the link, as QEMU's downtime-limit does. The default keeps the
 * guest's pause within 2 s: the stop itself costs about another second (pages
 * dirtied since the last scan, QEMU's device state, the commit round trip).
 * Measured at 10 Mbit/s with 1.5: the final pass took 2.2 s. */
#define ENG_STOP_SECONDS 1.0
/* On a fast link a second is tens of MB: if the link slows during the stop,
 * the pause grows with them (300 -> 5 Mbit/s turned 1 s into 17). Passes are
 * cheap there, so the VM stops once the rest is under this many bytes, or
 * the rest no longer shrinks. */
#define ENG_STOP_BYTES (4ull << 20)
#define ENG_DEVICES_CAPACITY (64ull << 20)

struct eng_send_args {
	const char *qmp_path, *disk_path, *base_dir, *to;
	const uint8_t *key; /* NULL: unkeyed (files only) */
	enum cdc_aead aead;
	struct eng_mode mode;    /* the mode to start with */
	bool adapt;              /* --mode auto: the controller (adapt.h) re-picks it while running */
	const char *trace_path;  /* --trace: one JSON line per controller tick */
	int socket;
	/*
	 * NULL, or starts EAL (0, or -1 with err) and sets *socket: called on the
	 * calling thread (EAL's main lcore) while another thread opens the base,
	 * QMP and, over tcp:, the connection, so that EAL's start (0.1 s of TSC
	 * calibration on hosts whose CPUID does not give the frequency) overlaps them.
	 */
	int (*start_eal)(int *socket, char *err, size_t errlen);
	bool progress;
	double connect_timeout_s;
	double stop_budget_s;    /* ENG_STOP_SECONDS unless --stop-budget */
	bool throttle;           /* slow the guest when it dirties faster than the link drains */
	double retry_for_s;      /* after a link cut, reconnect and resume for this long (0: fail) */
	bool order_random;       /* each pass in a random order (the default), not coldest first (--order dirty) */
};

struct eng_receive_args {
	const char *from, *qmp_path, *disk_out;
	const char *base_dir;    /* the base VM, or NULL and: */
	const char *cache_dir;   /* an edge chunk cache that holds some of it (cache_base.h) */
	const uint8_t *key;
	bool progress;
	double accept_timeout_s;
	double retry_for_s;      /* after a link cut, wait this long for the source to resume (0: fail) */
	/* with a cache: before the stream, fetch what it lacks from these edges' chunk services
	 * (tcp:HOST:PORT,...) and the holders the coordinator names, all at once */
	const char *fetch_from;
	struct edg_coord *coord;
	const char *vm_name;       /* with coord: register the VM as running here once it resumed */
	const uint8_t *fetch_key;  /* the services' key (default: key) */
	double fetch_timeout_s;
};

/* 0 on success; otherwise a one-line reason in err. *summary (caller puts) either way when set. */
int eng_handoff_send(const struct eng_send_args *a, json_object **summary, char *err, size_t errlen);
int eng_handoff_receive(const struct eng_receive_args *a, json_object **summary, char *err,
			size_t errlen);

#endif

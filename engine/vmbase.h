/*
 * A base VM directory, the state both sites hold before a handoff:
 *
 *   disk.img      the base disk
 *   vm.mig        QEMU's own migration stream of the idle base VM (make-base)
 *   vm.json       how to start an identical VM (read by the scripts)
 *
 * From vm.mig the engine derives, once, the RAM image (mem.img: every RAM
 * block in stream order) and the device state (devices.bin: the opaque
 * parts of the stream, qb_devstate_encode), and every image gets its cached
 * block index. The derived files are rebuilt whenever vm.mig changes
 * (derived.stamp records which vm.mig they came from).
 */
#ifndef HANDOFF_VMBASE_H
#define HANDOFF_VMBASE_H

#include <stddef.h>
#include <stdint.h>

#include "qemu_bridge/migstream.h"
#include "stream.h"
#include "tracker/tracker.h"

struct eng_vmbase {
	char *dir;
	char *path[ENG_VM_OBJECTS];             /* disk.img, mem.img, devices.bin */
	struct trk_index *index[ENG_VM_OBJECTS];
	const uint8_t *map[ENG_VM_OBJECTS];     /* read-only, whole blocks (zero-padded) */
	size_t map_len[ENG_VM_OBJECTS];
	struct qb_layout layout;                /* RAM blocks of the base VM */
};

extern const char *const eng_vm_object_names[ENG_VM_OBJECTS];

/* Open BASEDIR, deriving and indexing what is missing or stale. 0 or -errno + one line. */
int eng_vmbase_open(struct eng_vmbase *b, const char *dir, char *err, size_t errlen);
void eng_vmbase_close(struct eng_vmbase *b);
/*
 * A base directory holding mem.img and devices.bin but no vm.mig (fetched
 * from an edge cache, which keeps the page-aligned RAM image because it
 * shares chunks with related bases): write vm.mig from them and check that
 * deriving again from it gives back the same two files. The state is then
 * the same, though vm.mig's bytes may differ from the original's (page
 * records ordered and encoded anew). 0, or -errno and one line.
 */
int eng_vmbase_rebuild_state(const char *dir, char *err, size_t errlen);
/* Identity of the whole base (a digest of its three indexes' ids), for transport handshakes. */
void eng_vmbase_id(const struct eng_vmbase *b, uint8_t out[CDC_DIGEST_LEN]);
/*
 * The SHA-256 of every chunk_size-byte chunk of object o (an edge cache's
 * names for them; the last chunk short), n of them into out. Hashing a whole
 * base takes a second on a busy core, on the critical path of every handoff
 * into a cache: the list is kept beside the image (IMAGE.chunks-SIZE, with
 * the image's index id and its own checksum) and used while both hold; a base
 * directory that cannot be written costs only the hashing.
 */
void eng_vmbase_chunk_digests(const struct eng_vmbase *b, unsigned o, uint32_t chunk_size, uint8_t *out,
			      uint64_t n);
/* Same RAM blocks (names and sizes) as the base? 0, or -EINVAL with the first difference. */
int eng_vmbase_check_layout(const struct eng_vmbase *b, const struct qb_layout *l, char *err,
			    size_t errlen);

#endif

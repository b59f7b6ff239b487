/*
 * qemu_bridge/migstream: QEMU 7.2's precopy migration stream, taken apart on
 * the source and put back together on the destination.
 *
 * Source side: the engine hands qb_parse_stream() the socket QEMU migrates
 * into; RAM pages come out through callbacks (a RAM image offset and 4 KiB of
 * data), everything else is kept as opaque bytes (struct qb_devstate).
 * Destination side: qb_write_stream() turns a RAM image plus those opaque
 * bytes into a stream that stock QEMU 7.2 `-incoming` accepts. No QEMU patch.
 *
 * The stream, as measured on this machine (QEMU 7.2, q35, TCG):
 *
 *   "QEVM" be32(3)
 *   0x07 CONFIG: be32 len, machine name, optional subsections (0x05 ...)
 *   0x01 START  be32 id, u8 len "ram", be32 instance, be32 version,
 *               MEM_SIZE record (total | 0x4, then per block: u8 len, id,
 *               be64 length), EOS (0x10)            footer 0x7e be32 id
 *   0x02 PART   be32 id, page records..., EOS     footer   (many)
 *   0x03 END    be32 id, page records..., EOS     footer
 *   0x04 FULL   device sections (opaque here)     footer   (many)
 *   0x00 EOF, then 0x06 VMDESC be32 len + JSON describing the devices
 *
 *   page record: be64 (offset in block | flags); unless CONTINUE (0x20) the
 *   block id follows (u8 len + bytes); ZERO (0x2) carries one fill byte,
 *   PAGE (0x8) 4096 bytes. XBZRLE (0x40), HOOK (0x80, RDMA) and COMPRESS
 *   (0x100) are rejected: qb_migrate_prepare() switches them off.
 *
 * Note: QEMU's EOF marker is 0x00 (QEMU_VM_EOF), not 0x1f.
 *
 * Threads: every call here is self-contained (no globals); the engine runs
 * the parser in its ingest thread and the writer in its QEMU-feeding thread.
 * Errors: 0 or -errno (-EBADMSG malformed or unsupported stream, -EIO I/O,
 * -ENOMEM, -EINVAL bad arguments) with a one-line reason in err.
 */
#ifndef HANDOFF_QB_MIGSTREAM_H
#define HANDOFF_QB_MIGSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QB_PAGE 4096
#define QB_MAX_BLOCKS 64
/* Reading or writing fails with -ETIMEDOUT when the peer moves no byte for
 * this long (QEMU sends at least one section per 100 ms while migrating).
 * To abort sooner, shutdown(fd, SHUT_RDWR) from another thread. */
#define QB_STALL_TIMEOUT_S 60

/* Section types and RAM record flags of QEMU 7.2 (migration/savevm.c, ram.c). */
#define QB_SEC_EOF 0x00
#define QB_SEC_START 0x01
#define QB_SEC_PART 0x02
#define QB_SEC_END 0x03
#define QB_SEC_FULL 0x04
#define QB_SEC_SUBSECTION 0x05
#define QB_SEC_VMDESC 0x06
#define QB_SEC_CONFIG 0x07
#define QB_SEC_COMMAND 0x08
#define QB_SEC_FOOTER 0x7e

#define QB_RAM_ZERO 0x02
#define QB_RAM_MEM_SIZE 0x04
#define QB_RAM_PAGE 0x08
#define QB_RAM_EOS 0x10
#define QB_RAM_CONTINUE 0x20
#define QB_RAM_XBZRLE 0x40
#define QB_RAM_HOOK 0x80
#define QB_RAM_COMPRESS 0x100

struct qb_ram_block {
	char id[256];
	uint64_t length;
	uint64_t image_off; /* offset in the RAM image */
	bool shared;        /* writer: a shared memory backend both QEMU and we map; no pages sent */
};

/* RAM image = all RAM blocks of the MEM_SIZE list, concatenated in stream
 * order (each length is page aligned). */
struct qb_layout {
	unsigned nblocks;
	struct qb_ram_block blocks[QB_MAX_BLOCKS];
	uint64_t image_size;
	bool ignore_shared; /* the stream was made with x-ignore-shared (shared blocks carry no pages) */
};

struct qb_parse_cb {
	/* once, after the MEM_SIZE record */
	int (*layout)(void *ctx, const struct qb_layout *l);
	/* data NULL = zero page; data is only valid during the call */
	int (*page)(void *ctx, uint64_t image_off, const uint8_t *data);
	/* after each RAM section's EOS and footer: 1 START, 2 PART, 3 END */
	int (*section_end)(void *ctx, unsigned section_type);
	void *ctx; /* any callback may be NULL; a non-zero return aborts the parse */
};

/*
 * Opaque device state, kept as raw bytes for the rebuild:
 * prefix = everything from the file magic through the footer of the RAM
 *          START section (header, CONFIG section, ram START incl. its
 *          MEM_SIZE record and EOS);
 * tail   = everything after the footer of the RAM END section through end of
 *          stream (device FULL sections, EOF, VMDESC).
 */
struct qb_devstate {
	uint8_t *prefix;
	size_t prefix_len;
	uint8_t *tail;
	size_t tail_len;
	uint32_t ram_section_id;
};

void qb_devstate_free(struct qb_devstate *d);

/*
 * Parse a whole stream from fd (socket, pipe or file) until EOF, 1 MiB reads.
 * layout and dev are filled on success (either may be NULL if unwanted); on
 * failure dev holds nothing to free. Rejects with a one-line reason: bad
 * magic/version, unsupported records (XBZRLE, COMPRESS, RDMA hooks),
 * commands (postcopy, return path), other iterative sections than "ram",
 * truncation, page offsets outside their block, unknown blocks, a MEM_SIZE
 * total that does not match the blocks, a tail without a complete VMDESC.
 * On failure the caller should close fd so the source QEMU's migration fails
 * (and its VM keeps running).
 */
int qb_parse_stream(int fd, const struct qb_parse_cb *cb, struct qb_layout *layout,
		    struct qb_devstate *dev, char *err, size_t errlen);
/* The same on a stream held in memory (tests, fuzzing). */
int qb_parse_mem(const uint8_t *buf, size_t len, const struct qb_parse_cb *cb,
		 struct qb_layout *layout, struct qb_devstate *dev, char *err, size_t errlen);

/* The layout recorded in a devstate's prefix (the destination gets it from
 * the shipped devstate blob, no separate message needed). */
int qb_devstate_layout(const struct qb_devstate *d, struct qb_layout *layout, char *err, size_t errlen);

/* Writer flags. */
#define QB_WRITE_SKIP_ZERO 0x1u /* omit zero pages (relies on fresh zeroed RAM) */
#define QB_WRITE_NO_TAIL 0x2u   /* stop before the device state: the caller writes dev->tail later */

/*
 * Rebuild a complete stream into fd: prefix, one PART section with a record
 * for every page of image (image_size bytes, laid out as `layout`, which
 * must match the prefix's MEM_SIZE list), EOS + footer, an END section with
 * EOS + footer, then tail. Non-zero pages become PAGE records; zero pages
 * become 9-byte ZERO records, so memory that the destination QEMU set up at
 * reset (ROM blocks) ends up exactly as on the source. Writes to sockets use
 * MSG_NOSIGNAL (a closed peer is -EPIPE, not SIGPIPE).
 */
int qb_write_stream(int fd, const struct qb_layout *layout, const uint8_t *image,
		    const struct qb_devstate *dev, char *err, size_t errlen);
/* Same with QB_WRITE_* flags. */
int qb_write_stream_ex(int fd, const struct qb_layout *layout, const uint8_t *image,
		       const struct qb_devstate *dev, unsigned flags, char *err, size_t errlen);

/*
 * Serialize a devstate to one malloc'd buffer (so the engine can ship it as
 * a blob): "QBDS", be32 version 1, be32 ram_section_id, be32 0,
 * be64 prefix_len, be64 tail_len, prefix, tail. Returns its size, 0 on
 * out-of-memory or an empty devstate.
 */
size_t qb_devstate_encode(const struct qb_devstate *d, uint8_t **out);
/* Decode and validate (prefix parses, tail ends in a complete VMDESC). */
int qb_devstate_decode(const uint8_t *buf, size_t len, struct qb_devstate *d, char *err, size_t errlen);

#endif

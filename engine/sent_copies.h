/*
 * Copies of what the receiver holds where it has no base (a live handoff
 * into an edge cache that lacked some chunks): the block as last sent. A
 * block the guest keeps writing goes in every pass; against its copy it
 * goes as a delta (ENG_OP_CUR, docs/format.md) instead of whole, as it
 * would against a base.
 *
 * Owned by the pipeline's dedup stage, which alone reads and writes it, in
 * stream order: every record but SAME refreshes a block's copy (a zero, base
 * or duplicate record too), and a copy answers only while its digest is the
 * one the receiver holds (the dedup's held digest). Copies live as long as
 * one pipeline run: a stream resumed after a cut starts without any.
 */
#ifndef HANDOFF_SENT_COPIES_H
#define HANDOFF_SENT_COPIES_H

#include <stdint.h>

#include "codecs/codecs.h"
#include "stream.h"

/* 128 MiB of copies at most. */
#define ENG_SENT_COPIES_MAX 32768u

struct eng_sent_copies {
	uint32_t *slot[ENG_MAX_OBJECTS]; /* per block: 1 + its slot; 0: no copy */
	uint64_t blocks[ENG_MAX_OBJECTS];
	uint8_t *data;                    /* cap blocks, touched as slots are taken */
	uint8_t (*digest)[CDC_DIGEST_LEN];
	uint32_t used[ENG_MAX_OBJECTS], quota[ENG_MAX_OBJECTS]; /* an object's slots: from first[o] */
	uint32_t first[ENG_MAX_OBJECTS], cap;
};

/*
 * Room for quota[o] copies of blocks of object o (of blocks[o] blocks),
 * ENG_SENT_COPIES_MAX in all at most: past that, later objects get less.
 * An object's slots go first come, first served. 0 or -ENOMEM; quota NULL
 * or all 0: a store that keeps nothing.
 */
int eng_sent_copies_init(struct eng_sent_copies *c, unsigned nobj, const uint64_t *blocks,
			 const uint32_t *quota);
void eng_sent_copies_free(struct eng_sent_copies *c);

/* The copy of block blk of object o if the receiver holds it (its digest is held), else NULL. */
const uint8_t *eng_sent_copies_get(const struct eng_sent_copies *c, unsigned o, uint64_t blk,
				   const uint8_t *held);

/* The receiver will hold data (of that digest) at block blk of object o: keep it, while there is room. */
void eng_sent_copies_put(struct eng_sent_copies *c, unsigned o, uint64_t blk, const uint8_t *data,
			 const uint8_t *digest);

#endif

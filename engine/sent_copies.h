/*
 * Copies of what the receiver holds where it has no base (a live handoff
 * into an edge cache that lacked some chunks): the block as last sent. A
 * block the guest keeps writing goes in every pass; against its copy it
 * goes as a delta (ENG_OP_CUR, docs/format.md) instead of whole, as it
 * would against a base.
 *
 * Owned by the pipeline's dedup stage, which alone reads and writes it, in
 * stream order: a copy answers only while its digest is the one the
 * receiver holds (the dedup's held digest), so a block written since by a
 * zero, base or duplicate record, or owed again after a cut, has none.
 */
#ifndef HANDOFF_SENT_COPIES_H
#define HANDOFF_SENT_COPIES_H

#include <stdint.h>

#include "codecs/codecs.h"
#include "stream.h"

/* 128 MiB of copies at most: slots go first come, first served. */
#define ENG_SENT_COPIES_MAX 32768u

struct eng_sent_copies {
	uint32_t *slot[ENG_MAX_OBJECTS]; /* per block: 1 + its slot; 0: no copy */
	uint64_t blocks[ENG_MAX_OBJECTS];
	uint8_t *data;                    /* cap blocks, touched as slots are taken */
	uint8_t (*digest)[CDC_DIGEST_LEN];
	uint32_t used, cap;
};

/* Room for cap copies (at most ENG_SENT_COPIES_MAX) of blocks of objects of
 * blocks[o] blocks. 0 or -ENOMEM. cap 0: an empty store that keeps nothing. */
int eng_sent_copies_init(struct eng_sent_copies *c, unsigned nobj, const uint64_t *blocks, uint32_t cap);
void eng_sent_copies_free(struct eng_sent_copies *c);

/* The copy of block blk of object o if the receiver holds it (its digest is held), else NULL. */
const uint8_t *eng_sent_copies_get(const struct eng_sent_copies *c, unsigned o, uint64_t blk,
				   const uint8_t *held);

/* The receiver will hold data (of that digest) at block blk of object o: keep it, while there is room. */
void eng_sent_copies_put(struct eng_sent_copies *c, unsigned o, uint64_t blk, const uint8_t *data,
			 const uint8_t *digest);

#endif

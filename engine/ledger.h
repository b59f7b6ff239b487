/*
 * What a resumable stream has carried so far (the live handoff's link cuts).
 *
 * The writer keeps, for every block of every object, the digest the reader
 * will hold once the segments so far have arrived (the pipeline's dedup
 * decides on it) and the data segment that last carried the block. After a
 * cut the reader says how many data segments it applied; every block carried
 * in a later one is owed again, and its digest is unknown until it is sent
 * once more. Segments are counted across the streams of one handoff: each
 * new stream (a new connection) numbers on from what the reader applied.
 * A block taken from the feed but not yet in a segment when a run ends early
 * (in a stage, or dropped with the pipeline) is owed too: a count of its
 * versions in flight says so.
 */
#ifndef HANDOFF_LEDGER_H
#define HANDOFF_LEDGER_H

#include <stdint.h>

#include "codecs/codecs.h"
#include "stream.h"
#include "tracker/tracker.h"

struct eng_ledger {
	unsigned nobj;
	uint64_t blocks[ENG_MAX_OBJECTS];
	uint8_t (*held[ENG_MAX_OBJECTS])[CDC_DIGEST_LEN];
	uint32_t *carried[ENG_MAX_OBJECTS]; /* 1 + data segment that last carried it; 0: none */
	uint16_t *in_flight[ENG_MAX_OBJECTS]; /* versions between the feed and a segment */
	uint64_t first_segment;             /* the current stream's segment 0 */
};

/* No content hashes to this: a block the receiver may not hold is never "the same". */
extern const uint8_t eng_unknown_digest[CDC_DIGEST_LEN];

/* Every block as the base has it (zeros past the base), up to capacity[o]
 * bytes; unknown where have[o] (NULL: all held) says the receiver lacks it. */
int eng_ledger_init(struct eng_ledger *l, unsigned nobj, const struct trk_index *const *base,
		    const uint64_t *capacity, const uint8_t *const *have);
void eng_ledger_free(struct eng_ledger *l);

/* Ingest: the feed handed this block over. */
static inline void eng_ledger_fed(struct eng_ledger *l, uint64_t ref)
{
	__atomic_fetch_add(&l->in_flight[ENG_REF_OBJ(ref)][ENG_REF_BLK(ref)], 1, __ATOMIC_RELAXED);
}

/* Dedup: the reader will hold it already (the segments that carried it count). */
static inline void eng_ledger_same(struct eng_ledger *l, uint64_t ref)
{
	__atomic_fetch_sub(&l->in_flight[ENG_REF_OBJ(ref)][ENG_REF_BLK(ref)], 1, __ATOMIC_RELAXED);
}

/* The segment stage: this block went into data segment seq of the current stream. */
static inline void eng_ledger_carried(struct eng_ledger *l, uint64_t ref, uint64_t seq)
{
	l->carried[ENG_REF_OBJ(ref)][ENG_REF_BLK(ref)] = (uint32_t)(l->first_segment + seq + 1);
	__atomic_fetch_sub(&l->in_flight[ENG_REF_OBJ(ref)][ENG_REF_BLK(ref)], 1, __ATOMIC_RELAXED);
}

/*
 * The reader applied the first `applied` data segments: each block carried
 * later, or still in flight, is passed to owe() (to be sent again) and its
 * digest forgotten. Call it between runs. The next stream numbers its
 * segments from `applied`. Returns the blocks owed.
 */
uint64_t eng_ledger_rewind(struct eng_ledger *l, uint64_t applied,
			   void (*owe)(void *ctx, unsigned obj, uint64_t block), void *ctx);

#endif

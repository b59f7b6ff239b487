#include "ledger.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

const uint8_t eng_unknown_digest[CDC_DIGEST_LEN] = {
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
};

int eng_ledger_init(struct eng_ledger *l, unsigned nobj, const struct trk_index *const *base,
		    const uint64_t *capacity, const uint8_t *const *have)
{
	memset(l, 0, sizeof(*l));
	if (nobj > ENG_MAX_OBJECTS)
		return -EINVAL;
	l->nobj = nobj;
	for (unsigned o = 0; o < nobj; o++) {
		uint64_t n = (capacity[o] + CDC_BLOCK_SIZE - 1) / CDC_BLOCK_SIZE, nb = trk_index_blocks(base[o]);
		l->blocks[o] = n;
		l->held[o] = malloc((n ? n : 1) * CDC_DIGEST_LEN);
		l->carried[o] = calloc(n ? n : 1, sizeof(uint32_t));
		l->in_flight[o] = calloc(n ? n : 1, sizeof(uint16_t));
		if (!l->held[o] || !l->carried[o] || !l->in_flight[o]) {
			eng_ledger_free(l);
			return -ENOMEM;
		}
		for (uint64_t b = 0; b < n; b++) {
			bool has = b < nb && (!have || !have[o] || (have[o][b >> 3] >> (b & 7) & 1));
			memcpy(l->held[o][b],
			       b >= nb ? cdc_zero_digest() : has ? trk_index_digest(base[o], b) : eng_unknown_digest,
			       CDC_DIGEST_LEN);
		}
	}
	return 0;
}

void eng_ledger_free(struct eng_ledger *l)
{
	for (unsigned o = 0; o < ENG_MAX_OBJECTS; o++) {
		free(l->held[o]);
		free(l->carried[o]);
		free(l->in_flight[o]);
		l->held[o] = NULL;
		l->carried[o] = NULL;
		l->in_flight[o] = NULL;
	}
}

uint64_t eng_ledger_rewind(struct eng_ledger *l, uint64_t applied,
			   void (*owe)(void *ctx, unsigned obj, uint64_t block), void *ctx)
{
	uint64_t owed = 0;

	for (unsigned o = 0; o < l->nobj; o++)
		for (uint64_t b = 0; b < l->blocks[o]; b++) {
			if (l->carried[o][b] <= applied && !l->in_flight[o][b])
				continue;
			l->carried[o][b] = 0;
			l->in_flight[o][b] = 0;
			memcpy(l->held[o][b], eng_unknown_digest, CDC_DIGEST_LEN);
			owe(ctx, o, b);
			owed++;
		}
	l->first_segment = applied;
	return owed;
}

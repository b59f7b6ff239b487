#include "sent_copies.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int eng_sent_copies_init(struct eng_sent_copies *c, unsigned nobj, const uint64_t *blocks,
			 const uint32_t *quota)
{
	uint32_t cap = 0;

	memset(c, 0, sizeof(*c));
	if (!quota || nobj > ENG_MAX_OBJECTS)
		return 0;
	for (unsigned o = 0; o < nobj; o++) {
		uint32_t q = quota[o] < ENG_SENT_COPIES_MAX - cap ? quota[o] : ENG_SENT_COPIES_MAX - cap;
		c->first[o] = cap;
		c->quota[o] = q;
		c->blocks[o] = blocks[o];
		cap += q;
	}
	if (!cap)
		return 0;
	for (unsigned o = 0; o < nobj; o++)
		if (c->quota[o] && !(c->slot[o] = calloc(blocks[o] ? blocks[o] : 1, sizeof(uint32_t))))
			goto nomem;
	/* reserved, not committed: a handoff that resends little costs little */
	void *m = mmap(NULL, (size_t)cap * CDC_BLOCK_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		goto nomem;
	c->data = m;
	c->cap = cap; /* from here on free() unmaps it */
	if (!(c->digest = malloc((size_t)cap * CDC_DIGEST_LEN)))
		goto nomem;
	return 0;
nomem:
	eng_sent_copies_free(c);
	return -ENOMEM;
}

void eng_sent_copies_free(struct eng_sent_copies *c)
{
	for (unsigned o = 0; o < ENG_MAX_OBJECTS; o++)
		free(c->slot[o]);
	if (c->data)
		munmap(c->data, (size_t)c->cap * CDC_BLOCK_SIZE);
	free(c->digest);
	memset(c, 0, sizeof(*c));
}

const uint8_t *eng_sent_copies_get(const struct eng_sent_copies *c, unsigned o, uint64_t blk,
				   const uint8_t *held)
{
	if (!c->cap || o >= ENG_MAX_OBJECTS || !c->slot[o] || blk >= c->blocks[o] || !c->slot[o][blk])
		return NULL;
	uint32_t s = c->slot[o][blk] - 1;
	return memcmp(c->digest[s], held, CDC_DIGEST_LEN) ? NULL : c->data + (size_t)s * CDC_BLOCK_SIZE;
}

void eng_sent_copies_put(struct eng_sent_copies *c, unsigned o, uint64_t blk, const uint8_t *data,
			 const uint8_t *digest)
{
	if (!c->cap || o >= ENG_MAX_OBJECTS || !c->slot[o] || blk >= c->blocks[o])
		return;
	if (!c->slot[o][blk]) {
		if (c->used[o] == c->quota[o])
			return;
		c->slot[o][blk] = c->first[o] + ++c->used[o];
	}
	uint32_t s = c->slot[o][blk] - 1;
	memcpy(c->data + (size_t)s * CDC_BLOCK_SIZE, data, CDC_BLOCK_SIZE);
	memcpy(c->digest[s], digest, CDC_DIGEST_LEN);
}

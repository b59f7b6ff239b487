/*
 * libFuzzer target for the tracker's dirty map (tracker/dirtyfs.c,
 * trk_dirty_parse): what send reads from a track mount's .dirty file, in
 * both formats (HOFFDIR2, and HOFFDIRT of the build before). The input is
 * the whole file. A map that parses is then used as send uses it: every
 * block's bit looked up, every dirty block's write count read; the bits it
 * marks must number ndirty, none past nblocks.
 */
#include "tracker/dirtyfs.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct trk_dirty_map m;
	char err[256];

	if (trk_dirty_parse(data, size, &m, err, sizeof(err)))
		return 0;
	uint64_t marked = 0, writes = 0;
	for (uint64_t b = 0; b < m.nblocks; b++)
		if (m.bits[b / 8] >> (b % 8) & 1)
			writes += m.writes ? m.writes[marked++] : (marked++, 0);
	if (marked != m.ndirty)
		abort();
	trk_dirty_map_free(&m);
	(void)writes;
	return 0;
}

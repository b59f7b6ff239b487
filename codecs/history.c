/*
 * The stream's history window: the decompressed bytes of the data segments
 * carried so far, in a ring mapped twice back to back. Any range of up to the
 * ring's capacity is then one contiguous span wherever it wraps, so zstd can
 * take the window as a prefix directly followed by the segment it precedes.
 */
#include "codecs.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

struct cdc_history *cdc_history_new(size_t min_capacity)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t cap = (min_capacity + page - 1) / page * page;
	struct cdc_history *h = calloc(1, sizeof(*h));
	int fd = -1;

	if (!h || cap == 0)
		goto fail;
	fd = memfd_create("handoff-history", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)cap))
		goto fail;
	/* reserve both halves at once, then map the same pages into each */
	uint8_t *m = mmap(NULL, 2 * cap, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		goto fail;
	if (mmap(m, cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
	    mmap(m + cap, cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
		munmap(m, 2 * cap);
		goto fail;
	}
	close(fd);
	h->map = m;
	h->cap = cap;
	return h;
fail:
	if (fd >= 0)
		close(fd);
	free(h);
	return NULL;
}

void cdc_history_free(struct cdc_history *h)
{
	if (!h)
		return;
	munmap(h->map, 2 * h->cap);
	free(h);
}

size_t cdc_history_window(enum cdc_comp comp, int level)
{
	/*
	 * Memory state repeats across far more than a segment (copies of
	 * files, of buffers); a window of earlier segments finds it. Loading
	 * the window costs the match finder time, so its size follows the
	 * level: none for the fast negative levels, little for the slow
	 * optimal parsers (13+), 4 and 8 MiB between (perf/bench-diff).
	 */
	if (comp != CDC_COMP_ZSTD || level < 1)
		return 0;
	if (level <= 5)
		return 4u << 20;
	if (level <= 12)
		return 8u << 20;
	return 2u << 20;
}

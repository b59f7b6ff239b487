/*
 * Sources, sinks and block stores behind the small function tables of
 * stream.h and pipeline.h (Redis rio style): files, and memory for tests and
 * fuzzers. The network transports (tcp:, dpdk:) are in conn.h.
 *
 * Output files: safefile.h.
 */
#ifndef HANDOFF_IO_H
#define HANDOFF_IO_H

#include <stddef.h>
#include <stdint.h>

#include "pipeline.h"
#include "safefile.h"
#include "stream.h"

/* Strip a "file:" prefix; reject transports this build cannot open. */
int eng_parse_location(const char *loc, const char **path, char *err, size_t errlen);

/* fd-backed tables; ctx is a struct eng_fd (the struct outlives the tables). */
struct eng_fd {
	int fd;
	uint64_t size; /* for stores: the current size, to zero-pad reads */
};
struct eng_sink eng_fd_sink(struct eng_fd *f);
struct eng_source eng_fd_source(struct eng_fd *f);
struct eng_store eng_fd_store(struct eng_fd *f);

/* Memory-backed tables for tests and fuzzing. */
struct eng_mem {
	uint8_t *data;
	size_t len, cap, pos;
	size_t max; /* a store refuses to grow past this */
};
struct eng_sink eng_mem_sink(struct eng_mem *m);
struct eng_source eng_mem_source(struct eng_mem *m);
struct eng_store eng_mem_store(struct eng_mem *m);
void eng_mem_free(struct eng_mem *m);

#endif

/*
 * A block store over a file written through io_uring: writes are queued
 * (copied into a ring of block buffers) and reaped in batches, so applying a
 * stream never waits on the disk block by block. Reads (DUP references to
 * the same file) first wait for every queued write, so they see them.
 */
#ifndef HANDOFF_URING_STORE_H
#define HANDOFF_URING_STORE_H

#include <stdint.h>

#include "stream.h"

struct eng_uring_file;

struct eng_uring_file *eng_uring_file_new(int fd, uint64_t size, char *err, size_t errlen);
struct eng_store eng_uring_store(struct eng_uring_file *u);
/* Wait for every write, then fdatasync: 0 or the first error. */
int eng_uring_file_sync(struct eng_uring_file *u);
void eng_uring_file_free(struct eng_uring_file *u);
uint64_t eng_uring_file_writes(const struct eng_uring_file *u);

#endif

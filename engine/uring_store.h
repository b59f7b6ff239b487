/*
 * A block store over a file written through io_uring: writes are queued
 * (copied into 64 block buffers registered with the ring), submitted 16 at
 * a time and reaped as buffers are needed, so applying a stream never waits
 * on the disk block by block. Reads (DUP references to the same file) go
 * through the same ring; one of a block whose write is still in flight first
 * waits for every write, so it sees it.
 */
#ifndef HANDOFF_URING_STORE_H
#define HANDOFF_URING_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "stream.h"

struct eng_uring_file;

struct eng_uring_file *eng_uring_file_new(int fd, uint64_t size, char *err, size_t errlen);
struct eng_store eng_uring_store(struct eng_uring_file *u);
/* Wait for every write, then fdatasync: 0 or the first error. */
int eng_uring_file_sync(struct eng_uring_file *u);
void eng_uring_file_free(struct eng_uring_file *u);
uint64_t eng_uring_file_writes(const struct eng_uring_file *u);
/* Whether the block buffers are registered with the ring (else plain writes: RLIMIT_MEMLOCK). */
bool eng_uring_file_fixed(const struct eng_uring_file *u);

#endif

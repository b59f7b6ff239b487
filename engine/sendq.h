/*
 * A send queue between the pipeline's sink stage and a blocking transport:
 * the sink copies a sealed frame in and returns at once (-EAGAIN when the
 * queue is full, so the stage retries and the lcore stays free), a writer
 * thread sends frames in order. The cap bounds what waits here, where newer
 * versions of a block can no longer replace it: the handoff sizes it to a
 * fraction of a second of link time.
 */
#ifndef HANDOFF_SENDQ_H
#define HANDOFF_SENDQ_H

#include <stddef.h>
#include <stdint.h>

#include "pipeline.h"

struct eng_sendq;

/* send(ctx, buf, len) -> 0 or -errno, called on the writer thread only. */
struct eng_sendq *eng_sendq_new(size_t cap, int (*send)(void *ctx, const void *buf, size_t len),
				void *ctx);
/* Stops the writer (after what is queued, unless it failed) and frees. */
void eng_sendq_free(struct eng_sendq *q);
struct eng_sink eng_sendq_sink(struct eng_sendq *q);
void eng_sendq_set_cap(struct eng_sendq *q, size_t cap);
uint64_t eng_sendq_queued(struct eng_sendq *q);
/* The writer's error (0 while all is well): a dead link shows here even when nothing is being queued. */
int eng_sendq_error(struct eng_sendq *q);
/* Wait until everything queued was sent: 0, the writer's error, or -ETIMEDOUT. */
int eng_sendq_drain(struct eng_sendq *q, double timeout_s);

#endif

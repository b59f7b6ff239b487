/* Send queue (design in sendq.h): a FIFO of copied frames, one writer thread. */
#include "sendq.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct chunk {
	struct chunk *next;
	size_t len;
	uint8_t data[];
};

struct eng_sendq {
	pthread_mutex_t lock;
	pthread_cond_t more, emptied;
	struct chunk *head, *tail;
	uint64_t queued; /* bytes in the FIFO plus the one being sent */
	size_t cap;
	int error;
	bool stop;
	int (*send)(void *ctx, const void *buf, size_t len);
	void *ctx;
	pthread_t writer;
};

static void *writer_main(void *arg)
{
	struct eng_sendq *q = arg;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		while (!q->head && !q->stop)
			pthread_cond_wait(&q->more, &q->lock);
		if (!q->head)
			break;
		struct chunk *c = q->head;
		pthread_mutex_unlock(&q->lock);
		int ret = q->error ? q->error : q->send(q->ctx, c->data, c->len);
		pthread_mutex_lock(&q->lock);
		q->head = c->next;
		if (!q->head)
			q->tail = NULL;
		q->queued -= c->len;
		if (ret && !q->error)
			q->error = ret;
		free(c);
		if (!q->head)
			pthread_cond_broadcast(&q->emptied);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

struct eng_sendq *eng_sendq_new(size_t cap, int (*send)(void *ctx, const void *buf, size_t len),
				void *ctx)
{
	struct eng_sendq *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->more, NULL);
	pthread_cond_init(&q->emptied, NULL);
	q->cap = cap;
	q->send = send;
	q->ctx = ctx;
	if (pthread_create(&q->writer, NULL, writer_main, q)) {
		free(q);
		return NULL;
	}
	return q;
}

void eng_sendq_free(struct eng_sendq *q)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stop = true;
	pthread_cond_broadcast(&q->more);
	pthread_mutex_unlock(&q->lock);
	pthread_join(q->writer, NULL);
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->more);
	pthread_cond_destroy(&q->emptied);
	free(q);
}

static int sendq_write(void *ctx, const void *buf, size_t len)
{
	struct eng_sendq *q = ctx;
	int ret = 0;

	pthread_mutex_lock(&q->lock);
	if (q->error)
		ret = q->error;
	else if (q->queued && q->queued + len > q->cap)
		ret = -EAGAIN; /* an empty queue takes any frame, so big frames still pass */
	pthread_mutex_unlock(&q->lock);
	if (ret)
		return ret;
	struct chunk *c = malloc(sizeof(*c) + len);
	if (!c)
		return -ENOMEM;
	c->next = NULL;
	c->len = len;
	memcpy(c->data, buf, len);
	pthread_mutex_lock(&q->lock);
	if (q->tail)
		q->tail->next = c;
	else
		q->head = c;
	q->tail = c;
	q->queued += len;
	pthread_cond_signal(&q->more);
	pthread_mutex_unlock(&q->lock);
	return 0;
}

struct eng_sink eng_sendq_sink(struct eng_sendq *q)
{
	return (struct eng_sink){ .write = sendq_write, .ctx = q };
}

void eng_sendq_set_cap(struct eng_sendq *q, size_t cap)
{
	pthread_mutex_lock(&q->lock);
	q->cap = cap;
	pthread_mutex_unlock(&q->lock);
}

uint64_t eng_sendq_queued(struct eng_sendq *q)
{
	pthread_mutex_lock(&q->lock);
	uint64_t n = q->queued;
	pthread_mutex_unlock(&q->lock);
	return n;
}

int eng_sendq_error(struct eng_sendq *q)
{
	pthread_mutex_lock(&q->lock);
	int e = q->error;
	pthread_mutex_unlock(&q->lock);
	return e;
}

int eng_sendq_drain(struct eng_sendq *q, double timeout_s)
{
	struct timespec until;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += (time_t)timeout_s;
	until.tv_nsec += (long)((timeout_s - (double)(time_t)timeout_s) * 1e9);
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&q->lock);
	while (q->head && !q->error && ret != ETIMEDOUT)
		ret = pthread_cond_timedwait(&q->emptied, &q->lock, &until);
	ret = q->error ? q->error : q->head ? -ETIMEDOUT : 0;
	pthread_mutex_unlock(&q->lock);
	return ret;
}

/*
 * The two clocks timing code reads: monotonic wall time and this process's
 * CPU time (user + system), both in seconds.
 */
#ifndef HANDOFF_CLOCK_H
#define HANDOFF_CLOCK_H

#include <sys/resource.h>
#include <time.h>

static inline double eng_mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline double eng_cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

#endif

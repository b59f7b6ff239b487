/*
 * The engine's way to report a failure: a one-line message into the caller's
 * buffer (err, errlen), which the command prints once as its error.
 */
#ifndef HANDOFF_ERRBUF_H
#define HANDOFF_ERRBUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

static inline void __attribute__((format(printf, 3, 4)))
eng_set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

#endif

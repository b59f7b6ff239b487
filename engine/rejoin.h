/*
 * receive --retry-for over tcp: the port stays open for the whole handoff.
 *
 * A source may give up on a connection that this end still holds open: a
 * stall (a middlebox or a route that stops forwarding without a reset)
 * leaves the receiver reading from a connection nothing arrives on, and only
 * the source's silence limit notices. The source then connects again and
 * asks to resume (session.h). A thread here accepts every such connection,
 * offers it a fresh session value and takes its ask. An ask that
 * authenticates (only a key holder naming this handoff can make one) calls
 * `retire`, which ends the old connection so that the receiving path sees a
 * cut at once and answers the ask (eng_rejoin_take). Anything else is turned
 * away with one line and the wait goes on.
 */
#ifndef HANDOFF_REJOIN_H
#define HANDOFF_REJOIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "session.h"

struct eng_rejoin;

struct eng_rejoin_args {
	const uint8_t *key;
	uint32_t cache_chunk; /* what the first offer said (session.h) */
	bool progress;        /* a terminal: clear the progress line before saying something */
	/* an authenticated ask is about to wait: end the old connection (true: there was one) */
	bool (*retire)(void *ctx);
	void *ctx;
};

/* Takes l (closed by eng_rejoin_stop, or here on failure). 0 or -errno and a reason. */
int eng_rejoin_start(struct eng_rejoin **out, struct eng_conn_listener *l, const struct eng_rejoin_args *a,
		     char *err, size_t errlen);
/* The handoff is named (its first stream's salt and AEAD): asks are taken from now on. */
void eng_rejoin_name(struct eng_rejoin *r, const uint8_t handoff[32], enum cdc_aead aead);
/*
 * An authenticated ask within timeout_s: its connection, the value offered on
 * it and the ask's nonce, for eng_session_resume_reply. NULL: none came. An
 * ask older than ENG_REJOIN_FRESH_S is dropped unanswered: its source stopped
 * waiting for the answer (ENG_SESSION_WAIT_S) and asks again.
 */
#define ENG_REJOIN_FRESH_S 8.0
struct eng_conn *eng_rejoin_take(struct eng_rejoin *r, double timeout_s, uint8_t value[ENG_SESSION_LEN],
				 uint8_t nonce[ENG_RESUME_NONCE_LEN]);
/* Stops the thread and closes the listener and any connection not taken. NULL: nothing. */
void eng_rejoin_stop(struct eng_rejoin *r);

#endif

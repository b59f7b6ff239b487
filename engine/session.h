/*
 * Freshness for a stream that crosses a link. Before anything else the
 * receiving end offers a random value for this connection:
 *
 *   offer = magic "HOFFSESS" | version:u16 = 1 | zero:u16 | value[32]
 *
 * and the sender mixes it with its own random salt into every key of the
 * stream (stream.h: segments, key check, control messages). Both ends thus
 * make each session's keys fresh: bytes recorded from one connection fail
 * the key check on any other, before a frame is applied, and a sender cannot
 * reuse its salt to make them match. Files have no session (the value is
 * zero): a file is meant to be read again.
 */
#ifndef HANDOFF_SESSION_H
#define HANDOFF_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "stream.h"

#define ENG_SESSION_OFFER_LEN (12 + ENG_SESSION_LEN)
#define ENG_SESSION_WAIT_S 10.0 /* the receiver offers as it accepts: this is generous */

/* Receiver: a fresh value, sent at once. 0, or -errno and a one-line reason. */
int eng_session_offer(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], char *err, size_t errlen);
/* Sender: the receiver's offer, within timeout_s. 0, or -errno and a one-line reason. */
int eng_session_take(struct eng_conn *c, uint8_t value[ENG_SESSION_LEN], double timeout_s, char *err,
		     size_t errlen);

#endif

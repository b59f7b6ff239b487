/*
 * A sealed message channel over an engine connection (tcp: or dpdk:), for
 * the chunk service. Fresh per session: each end contributes 32 random bytes
 * to a handshake, the server proves it holds the key with an HMAC over both,
 * and the two directions are sealed (AES-256-GCM, the frame counter as nonce)
 * with keys derived from the shared key and both values (HKDF-SHA256, a
 * separate key per use). A recorded session replayed against a server meets
 * a different server value and fails at its first session frame (the early
 * requests that rode with its hello are answered, sealed for a session the
 * replayer cannot read); a peer without the key can neither read nor inject
 * a frame.
 *
 * Frame: length (4 bytes, little-endian, authenticated), then the sealed
 * body (1 type byte + payload) and its 16-byte tag.
 */
#ifndef HANDOFF_EDGE_CHAN_H
#define HANDOFF_EDGE_CHAN_H

#include <stddef.h>
#include <stdint.h>

#include "engine/conn.h"

#define EDG_CHAN_MAX_PAYLOAD (8u << 20)

struct edg_chan;

#define EDG_CHAN_EARLY_FRAMES 64         /* sent with the client's hello, at most */
#define EDG_CHAN_EARLY_MAX (64u << 10)   /* their payloads' bytes, at most */

/* Handshake as the client / the server; NULL after a one-line message (a wrong key says so). */
struct edg_chan *edg_chan_client(struct eng_conn *c, const uint8_t key[32], double timeout_s, char *err,
				 size_t errlen);
/*
 * The client's handshake in two steps, to save a round trip: after start,
 * edg_chan_send queues early frames (at most EDG_CHAN_EARLY_FRAMES and
 * EDG_CHAN_EARLY_MAX bytes; then -EMSGSIZE) that finish sends with the hello.
 * Early frames can be replayed to a server by whoever recorded them (the
 * server's answers stay sealed for the real session): only requests that
 * read go early. finish: 0, or -1 with err (then free the channel).
 */
struct edg_chan *edg_chan_client_start(struct eng_conn *c, const uint8_t key[32], char *err, size_t errlen);
int edg_chan_client_finish(struct edg_chan *ch, const uint8_t key[32], double timeout_s, char *err, size_t errlen);
struct edg_chan *edg_chan_server(struct eng_conn *c, const uint8_t key[32], double timeout_s, char *err,
				 size_t errlen);
int edg_chan_send(struct edg_chan *ch, uint8_t type, const void *payload, uint32_t len);
/*
 * The next message into buf (cap bytes): 0, -EBADMSG (forged, replayed or
 * corrupt), -EMSGSIZE (larger than cap), -EPIPE (the peer closed),
 * -ETIMEDOUT or another -errno. *len: the payload's length. After any
 * error the channel may be out of step (a timeout can fall inside a
 * frame): close it.
 */
int edg_chan_recv(struct edg_chan *ch, uint8_t *type, void *buf, uint32_t cap, uint32_t *len, double timeout_s);
/* The same without a copy: *payload points into the channel's own buffer until the next receive. */
int edg_chan_recv_view(struct edg_chan *ch, uint8_t *type, const uint8_t **payload, uint32_t max, uint32_t *len,
		       double timeout_s);
/*
 * The peer sent a frame of this session (not only early frames, which a
 * recording can replay): a server gives a client that has not yet proved its
 * session a short wait.
 */
bool edg_chan_in_session(const struct edg_chan *ch);
/* Wipes the keys; the connection stays the caller's. */
void edg_chan_free(struct edg_chan *ch);

#endif

/*
 * Frames of the dpdk: transport (docs/transport.md), after the 14-byte
 * Ethernet header with EtherType DIO_ETHERTYPE. All fields little-endian
 * (both ends are x86 here; a big-endian port would swap in wire.c only).
 *
 * Sequence numbers are byte offsets in each direction's stream, as in TCP,
 * so a retransmission may be cut differently from the first send and the
 * send buffer itself is the retransmission store.
 */
#ifndef HANDOFF_DIO_WIRE_H
#define HANDOFF_DIO_WIRE_H

#include <stdint.h>

#define DIO_ETHERTYPE 0x88B5 /* IEEE 802 local experimental EtherType 1 */
#define DIO_VERSION 2 /* 2: ACK and RESET frames carry a tag */

enum dio_type {
	DIO_HELLO = 1,     /* connector -> listener: session, nonce, base identity, tag */
	DIO_HELLO_ACK = 2, /* listener -> connector: its nonce, tag over both */
	DIO_DATA = 3,      /* payload at seq; flag FIN: the stream ends at seq + len */
	DIO_ACK = 4,       /* struct dio_ack, then nsack struct dio_range, then a frame tag */
	DIO_RESET = 5,     /* abort: a one-line reason, then a frame tag once the handshake is done */
};

#define DIO_F_FIN 0x1 /* DATA: last bytes of this direction */

struct dio_hdr {
	uint8_t version;
	uint8_t type;
	uint16_t flags;
	uint32_t len; /* payload bytes after this header */
	uint64_t session; /* chosen by the connector, the same in every frame */
	uint64_t seq;     /* DATA: stream offset of the first payload byte */
	uint64_t ts_us;   /* sender's clock when sent (echoed by ACK) */
} __attribute__((packed));

#define DIO_NONCE_LEN 16
#define DIO_ID_LEN 32
#define DIO_TAG_LEN 32
/*
 * Frames that change the sender's state (ACK: what it may forget; RESET: the
 * end) end with the first 16 bytes of HMAC-SHA256(k_frames, header | payload
 * before the tag). k_frames = HMAC-SHA256(k_hello, "handoff-frames" |
 * session | nonce_c | nonce_l): fresh per connection, known to the two ends.
 * DATA carries sealed stream segments (docs/format.md): it needs no tag.
 */
#define DIO_FRAME_TAG_LEN 16

/* HELLO and HELLO_ACK payload. tag = HMAC-SHA256(key, label | session | both nonces | base_id). */
struct dio_hello {
	uint8_t nonce[DIO_NONCE_LEN];
	uint8_t peer_nonce[DIO_NONCE_LEN]; /* HELLO_ACK: the connector's nonce; HELLO: zero */
	uint8_t base_id[DIO_ID_LEN];
	uint8_t tag[DIO_TAG_LEN];
	uint32_t mtu; /* largest payload this end accepts */
} __attribute__((packed));

struct dio_range {
	uint64_t start, end; /* [start, end) received beyond cum */
} __attribute__((packed));

#define DIO_MAX_SACK 16

#define DIO_A_FIN 0x1 /* the peer's FIN was received and everything before it */

struct dio_ack {
	uint64_t cum;     /* every byte below this was received */
	uint64_t wnd_end; /* the sender may send bytes below this */
	uint64_t ts_echo_us; /* ts_us of the DATA frame that triggered this ACK */
	uint32_t flags;
	uint32_t nsack;
} __attribute__((packed));

#endif

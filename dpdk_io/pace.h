/*
 * Sending rate of one dpdk: connection, from acknowledgements only (the
 * same figures the tcp: transport reports), in the spirit of BBR:
 *   - each ACK gives a delivery-rate sample (bytes delivered between a
 *     segment's send and its acknowledgement, over that time) and an RTT;
 *   - the bottleneck rate is the largest sample of the last DIO_BW_ROUNDS
 *     slots (a slot: a round, one RTT's worth of sent data acknowledged,
 *     but at least DIO_BW_SLOT_US), the base
 *     RTT the smallest of the last DIO_RTT_WINDOW_S seconds;
 *   - start-up doubles the rate each round until it stops growing; then the
 *     pacing rate cycles its gain (1.25 probe, 0.75 drain, 1 x6) around the
 *     bottleneck rate;
 *   - loss: rounds that lost more than DIO_LOSS_THRESH of what they sent
 *     (judged over at least DIO_LOSS_MIN_FRAMES frames) back the rate off
 *     (x0.85, down to half), and loss-free rounds win it
 *     back: random loss below the threshold costs retransmissions,
 *     not rate, while a queue that overflows (tbf) is backed away from.
 * The window in flight is capped at 2 x rate x base RTT (plus a floor), so a
 * stale estimate cannot flood a queue.
 *
 * Owned and called by the connection's I/O thread only.
 */
#ifndef HANDOFF_DIO_PACE_H
#define HANDOFF_DIO_PACE_H

#include <stdbool.h>
#include <stdint.h>

#define DIO_BW_ROUNDS 10
#define DIO_RTT_WINDOW_S 10.0
#define DIO_LOSS_THRESH 0.05
#define DIO_BW_SLOT_US 100000.0
#define DIO_LOSS_MIN_FRAMES 200

struct dio_pace {
	double bw_bps;      /* bottleneck estimate (max filter) */
	double min_rtt_us;  /* base RTT estimate */
	double min_rtt_at_us;
	double pacing_bps;  /* what the sender paces at now */
	double loss_scale;  /* <= 1: back-off after lossy rounds */
	double bw_round[DIO_BW_ROUNDS];
	uint64_t rounds, slot;
	double slot_start_us;
	bool startup;
	double startup_best;
	int startup_flat; /* rounds without 25% growth */
	int cycle;        /* gain-cycle phase */
	uint64_t loss_rounds; /* rounds that backed off */
	uint64_t loss_sent, loss_lost; /* since loss was last judged */
	uint32_t frame_bytes;
	bool trace; /* print each loss judgement on stderr */
};

void dio_pace_init(struct dio_pace *p, double init_bps, uint32_t frame_bytes);
/* One ACK's sample: delivery rate (bits/s, 0 if none), RTT (us, 0 if none); app_limited: the sender had nothing to send. */
void dio_pace_sample(struct dio_pace *p, double now_us, double rate_bps, double rtt_us, bool app_limited);
/* A round ended: bytes sent and declared lost in it. */
void dio_pace_round(struct dio_pace *p, double now_us, uint64_t sent, uint64_t lost);
/* No acknowledgement for a whole RTO. */
void dio_pace_timeout(struct dio_pace *p);
/* Bytes allowed in flight. */
uint64_t dio_pace_window(const struct dio_pace *p, uint32_t frame_bytes);

#endif

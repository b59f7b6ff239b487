/*
 * What a transport knows about its link, sampled every controller tick
 * (100 ms) the same way whatever carries the stream (tcp: or dpdk:), so the
 * handoff's stop decision and the adaptation controller see one kind of figure.
 */
#ifndef HANDOFF_LINK_H
#define HANDOFF_LINK_H

#include <stdbool.h>
#include <stdint.h>

/*
 * sent   bytes handed to the transport;
 * acked  bytes the peer acknowledged, <= sent;
 * queued bytes sent but not yet acknowledged (sent - acked);
 * unsent the part of queued not yet on the wire;
 * rate_bps acknowledged bits per second since the previous sample, and
 * rate_smooth_bps its EWMA with a ~1 s time constant;
 * delivery_bps the transport's delivery-rate estimate of the link (tcp: the
 * kernel's; dpdk: the pacer's bottleneck estimate), app_limited set when the
 * sender, not the link, was the bottleneck (then rates understate the link);
 * rtt_ms smoothed (tcp:) or base (dpdk:) round-trip time, min_rtt_ms the
 * smallest seen (the path's own delay, without the queues we fill).
 */
struct eng_link {
	uint64_t sent, acked, queued, unsent;
	double rate_bps, rate_smooth_bps, delivery_bps, rtt_ms, min_rtt_ms;
	bool app_limited;
};

#endif

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

/*
 * The link's rate the engine acts on (the feed's commit, the stop, the
 * controller): the larger of the acknowledged rate's EWMA and the
 * delivery-rate estimate, since a link that idled (app-limited) understates
 * itself in both. But a fall the delivery rate has shown for ENG_LINK_FALL_S
 * with data waiting is taken at once, and held until the EWMA has followed:
 * after 300 -> 5 Mbit/s the EWMA took 3-5 s to come down, and what was
 * committed and encoded for the fast link meanwhile crossed at 5.
 */
#define ENG_LINK_FALL_S 0.3
#define ENG_LINK_FALL_RATIO 0.5 /* the delivery rate below this share of the EWMA: falling */

struct eng_link_fall {
	bool falling; /* since `since`, with data waiting */
	double since;
	bool fallen;  /* bps stands for the link until the EWMA follows */
	double bps;   /* the delivery rate of the last sample with data waiting */
};

static inline double eng_link_rate_bps(struct eng_link_fall *f, const struct eng_link *l, double now)
{
	double hi = l->rate_smooth_bps > l->delivery_bps ? l->rate_smooth_bps : l->delivery_bps;

	if (l->delivery_bps <= 0) {
		f->falling = f->fallen = false;
		return hi;
	}
	if (f->fallen) {
		/* an app-limited sample is our own sending rate, not the link's */
		if (!l->app_limited)
			f->bps = l->delivery_bps;
		if (l->rate_smooth_bps > 1.25 * f->bps)
			return f->bps;
		f->fallen = false;
	}
	if (l->app_limited || l->delivery_bps >= ENG_LINK_FALL_RATIO * l->rate_smooth_bps) {
		f->falling = false;
		return hi;
	}
	if (!f->falling) {
		f->falling = true;
		f->since = now;
	}
	if (now - f->since < ENG_LINK_FALL_S)
		return hi;
	f->falling = false;
	f->fallen = true;
	f->bps = l->delivery_bps;
	return f->bps;
}

#endif

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
 * itself in both. But a fall shown for ENG_LINK_FALL_S with data waiting is
 * taken at once, and held until the EWMA has followed: after 300 -> 5 Mbit/s
 * the EWMA took 3-5 s to come down, and what was committed and encoded for
 * the fast link meanwhile crossed at 5.
 *
 * The fall shows in the delivery rate, or in the acknowledged rate while
 * data waits to go out (unsent): the kernel's delivery rate is its last
 * rate sample and stands still while ACKs stop (seen: 1973 Mbit/s for 3 s
 * after a fall from unshaped to 5 Mbit/s, TCP in loss recovery, so the
 * whole state was encoded for the fast link). The acknowledged rate is
 * taken as a short EWMA (ENG_LINK_WAIT_S) of the samples with data waiting.
 * The delivery rate the fall was taken at counts for nothing until it moves:
 * once our queue ran dry it would bring the fast link back.
 */
#define ENG_LINK_FALL_S 0.3
#define ENG_LINK_FALL_RATIO 0.5 /* the link's figure below this share of the EWMA: falling */
#define ENG_LINK_WAIT_S 0.3     /* time constant of the acknowledged rate with data waiting */

struct eng_link_fall {
	bool falling;   /* since `since`, with data waiting */
	double since;
	uint64_t acked_since; /* acknowledged bytes then */
	bool fallen;    /* bps stands for the link until the EWMA follows */
	double bps;     /* the link's figure of the last sample that had one */
	double stale_delivery; /* the delivery rate when the fall was taken: no figure while it stands still */
	bool waited;    /* wait_bps has a sample */
	double wait_bps, wait_t; /* the acknowledged rate's EWMA with data waiting, and its last sample */
};

/*
 * What the link carried lately, when this sample says: *bps set, true.
 * fresh: the delivery rate, when it is one (0 when app-limited, our own
 * rate, or standing still since the fall).
 */
static inline bool eng_link_seen(struct eng_link_fall *f, const struct eng_link *l, double fresh, double now,
				 double *bps)
{
	bool have = fresh > 0;

	*bps = fresh;
	if (l->unsent > 0) {
		double dt = now - f->wait_t;
		if (!f->waited || dt > 1) /* the first sample, or the first after a pause */
			f->wait_bps = l->rate_bps;
		else if (dt > 0)
			f->wait_bps += dt / (ENG_LINK_WAIT_S + dt) * (l->rate_bps - f->wait_bps);
		f->waited = true;
		f->wait_t = now;
		if (!have || f->wait_bps < *bps)
			*bps = f->wait_bps;
		have = true;
	}
	return have;
}

static inline double eng_link_rate_bps(struct eng_link_fall *f, const struct eng_link *l, double now)
{
	double delivery = l->delivery_bps != f->stale_delivery ? l->delivery_bps : 0;
	double hi = l->rate_smooth_bps > delivery ? l->rate_smooth_bps : delivery;
	double fresh = l->app_limited ? 0 : delivery, seen;
	bool have = eng_link_seen(f, l, fresh, now, &seen);

	if (f->fallen) {
		/* the kernel's estimate, once it moves again, is steadier than our EWMA of ACKs */
		if (fresh > 0)
			f->bps = fresh;
		else if (have)
			f->bps = seen;
		if (l->rate_smooth_bps > 1.25 * f->bps)
			return f->bps;
		f->fallen = false;
	}
	if (!have || seen >= ENG_LINK_FALL_RATIO * l->rate_smooth_bps) {
		f->falling = false;
		return hi;
	}
	if (!f->falling) {
		f->falling = true;
		f->since = now;
		f->acked_since = l->acked;
	}
	if (now - f->since < ENG_LINK_FALL_S)
		return hi;
	f->falling = false;
	f->fallen = true;
	f->bps = seen;
	if (l->unsent > 0 && l->acked > f->acked_since) {
		/* what crossed while it fell, data waiting: the EWMA still remembers the fast link */
		double mean = (double)(l->acked - f->acked_since) * 8 / (now - f->since);
		if (mean < f->bps)
			f->bps = mean;
	}
	f->wait_bps = f->bps; /* it follows the link from here */
	f->stale_delivery = l->delivery_bps;
	return f->bps;
}

#endif

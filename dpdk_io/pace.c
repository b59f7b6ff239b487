#include "pace.h"

#include <stdio.h>
#include <string.h>

#define MIN_BPS 1e5   /* never pace below 100 kbit/s */
#define MAX_BPS 4e11  /* nor above any NIC there is */
#define STARTUP_GAIN 2.0
#define BACKOFF 0.85
#define RECOVER 0.05  /* loss_scale regained per clean judgement */
#define MIN_SCALE 0.5 /* back-off never halves the rate more than once over */
#define FLOOR_FRAMES 64
#define MIN_WINDOW_RTT_US 4000 /* scheduling delays on shared cores add milliseconds to tiny RTTs */

static const double gain_cycle[8] = { 1.25, 0.75, 1, 1, 1, 1, 1, 1 };

static double clamp_bps(double v)
{
	return v < MIN_BPS ? MIN_BPS : v > MAX_BPS ? MAX_BPS : v;
}

static void update_pacing(struct dio_pace *p)
{
	double gain = p->startup ? STARTUP_GAIN : gain_cycle[p->cycle];
	p->pacing_bps = clamp_bps(gain * p->bw_bps * p->loss_scale);
}

void dio_pace_init(struct dio_pace *p, double init_bps, uint32_t frame_bytes)
{
	memset(p, 0, sizeof(*p));
	p->frame_bytes = frame_bytes;
	p->bw_bps = clamp_bps(init_bps);
	p->loss_scale = 1;
	p->startup = true;
	update_pacing(p);
}

void dio_pace_sample(struct dio_pace *p, double now_us, double rate_bps, double rtt_us, bool app_limited)
{
	if (rtt_us > 0 && (p->min_rtt_us == 0 || rtt_us <= p->min_rtt_us ||
			   now_us - p->min_rtt_at_us > DIO_RTT_WINDOW_S * 1e6)) {
		p->min_rtt_us = rtt_us;
		p->min_rtt_at_us = now_us;
	}
	/* an app-limited sample understates the link; it may only raise the estimate */
	if (rate_bps <= 0 || (app_limited && rate_bps < p->bw_bps))
		return;
	double *slot = &p->bw_round[p->slot % DIO_BW_ROUNDS];
	if (rate_bps > *slot)
		*slot = rate_bps;
	double best = 0;
	for (int i = 0; i < DIO_BW_ROUNDS; i++)
		if (p->bw_round[i] > best)
			best = p->bw_round[i];
	p->bw_bps = clamp_bps(best);
	update_pacing(p);
}

void dio_pace_round(struct dio_pace *p, double now_us, uint64_t sent, uint64_t lost)
{
	p->rounds++;
	/*
	 * The bandwidth filter's slots last a round but at least
	 * DIO_BW_SLOT_US, so it remembers ~1 s even at microsecond RTTs: a dip
	 * (loss back-off, a busy receiver) must not erase what the link did.
	 */
	if (now_us - p->slot_start_us >= DIO_BW_SLOT_US) {
		p->slot++;
		p->bw_round[p->slot % DIO_BW_ROUNDS] = 0;
		p->slot_start_us = now_us;
	}
	/*
	 * Judge loss over enough frames that one random drop is not a rate:
	 * at microsecond RTTs a round is a handful of frames.
	 */
	p->loss_sent += sent;
	p->loss_lost += lost;
	bool judge = p->loss_sent >= (uint64_t)DIO_LOSS_MIN_FRAMES * p->frame_bytes;
	bool lossy = judge && (double)p->loss_lost > DIO_LOSS_THRESH * (double)p->loss_sent;
	if (judge && p->trace)
		fprintf(stderr, "pace: judged %.1f%% lost of %lu bytes\n", 100.0 * p->loss_lost / p->loss_sent,
			(unsigned long)p->loss_sent);
	if (judge)
		p->loss_sent = p->loss_lost = 0;
	if (lossy) {
		p->loss_scale *= BACKOFF;
		if (p->loss_scale < MIN_SCALE)
			p->loss_scale = MIN_SCALE;
		p->loss_rounds++;
		p->startup = false; /* loss means the link is full */
	} else if (judge && p->loss_scale < 1) {
		p->loss_scale += RECOVER;
		if (p->loss_scale > 1)
			p->loss_scale = 1;
	}
	if (p->startup) {
		if (p->bw_bps > 1.25 * p->startup_best) {
			p->startup_best = p->bw_bps;
			p->startup_flat = 0;
		} else if (++p->startup_flat >= 3) {
			p->startup = false;
		}
	} else {
		p->cycle = (p->cycle + 1) % 8;
	}
	update_pacing(p);
}

uint64_t dio_pace_window(const struct dio_pace *p, uint32_t frame_bytes)
{
	double rtt_s = (p->min_rtt_us > MIN_WINDOW_RTT_US ? p->min_rtt_us : MIN_WINDOW_RTT_US) * 1e-6;
	double bdp = p->bw_bps * p->loss_scale / 8 * rtt_s;
	double gain = p->startup ? 2 * STARTUP_GAIN : 2;
	uint64_t w = (uint64_t)(gain * bdp);
	uint64_t floor = (uint64_t)FLOOR_FRAMES * frame_bytes;
	return w > floor ? w : floor;
}

void dio_pace_timeout(struct dio_pace *p)
{
	/* nothing acknowledged for an RTO: the path is congested or gone, back off now */
	p->loss_scale *= BACKOFF;
	if (p->loss_scale < MIN_SCALE)
		p->loss_scale = MIN_SCALE;
	p->loss_rounds++;
	p->loss_sent = p->loss_lost = 0;
	p->startup = false;
	update_pacing(p);
}

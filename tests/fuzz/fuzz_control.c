/*
 * libFuzzer target for what crosses a live connection besides the stream:
 * the sealed control messages (engine/control.c: READY, COMMIT, RESUMED,
 * FAILED), the receiver's session offer and the resume ask and reply
 * (engine/session.c). The connection is this harness's own: reads take the
 * input's bytes in order (a short input ends like a closed peer), writes go
 * to a buffer the harness may read back.
 *
 * Input byte 0 picks the path:
 *   0: the rest is what the peer sends on the control channel, read message
 *      after message until one fails;
 *   1: byte 1 is a message type and the rest its text, sealed properly by a
 *      sending end (so the fuzzer reaches what comes after the AEAD);
 *   2: the rest is a session offer;
 *   3: the rest is a resume ask, then (when accepted) the rest of it a reply
 *      to an ask of ours;
 *   4: the rest is a base plan;
 *   5: the rest is a chunk map answering a fixed plan.
 */
#include "engine/control.h"
#include "engine/session.h"

#include <errno.h>
#include <string.h>

struct eng_conn {
	const uint8_t *in;
	size_t len, pos;
	uint8_t out[4096];
	size_t out_len;
};

int eng_conn_recv_all(struct eng_conn *c, void *buf, size_t len, double timeout_s)
{
	(void)timeout_s;
	if (c->len - c->pos < len) {
		c->pos = c->len;
		return -EPIPE;
	}
	memcpy(buf, c->in + c->pos, len);
	c->pos += len;
	return 0;
}

int eng_conn_send(struct eng_conn *c, const void *buf, size_t len)
{
	if (len > sizeof(c->out) - c->out_len)
		return -ENOBUFS;
	memcpy(c->out + c->out_len, buf, len);
	c->out_len += len;
	return 0;
}

const char *eng_conn_peer(const struct eng_conn *c)
{
	(void)c;
	return "fuzz";
}

const char *eng_conn_error(const struct eng_conn *c)
{
	(void)c;
	return "fuzz";
}

static const uint8_t key[CDC_KEY_LEN] = { 0x11, 0x22, 0x33 };
static const uint8_t handoff[32] = { 0x44 };
static const uint8_t value[ENG_SESSION_LEN] = { 0x55 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct eng_stream s = { .aead = CDC_AEAD_AES256GCM };
	struct eng_conn conn = { 0 };
	struct eng_control rx, tx;
	enum eng_msg_type type;
	enum eng_resume_state state;
	uint8_t nonce[ENG_RESUME_NONCE_LEN], got[ENG_SESSION_LEN];
	uint64_t applied;
	char text[ENG_MSG_TEXT_MAX + 1], err[256], sealed_text[ENG_MSG_TEXT_MAX + 1];

	if (size < 1 || size > 65536)
		return 0;
	conn.in = data + 1;
	conn.len = size - 1;
	switch (data[0] % 6) {
	case 0:
		if (eng_control_init(&rx, &conn, &s, key, 0))
			return 0;
		while (eng_control_recv(&rx, 0, &type, text, sizeof(text)) == 0)
			;
		eng_control_free(&rx);
		break;
	case 1: {
		if (size < 2 || eng_control_init(&tx, &conn, &s, key, 1))
			return 0;
		size_t n = size - 2 < ENG_MSG_TEXT_MAX ? size - 2 : ENG_MSG_TEXT_MAX;
		memcpy(sealed_text, data + 2, n);
		sealed_text[n] = 0; /* a text stops at its first NUL, as a sender's would */
		eng_control_send(&tx, (enum eng_msg_type)data[1], sealed_text);
		eng_control_free(&tx);
		struct eng_conn back = { .in = conn.out, .len = conn.out_len };
		if (eng_control_init(&rx, &back, &s, key, 0))
			return 0;
		eng_control_recv(&rx, 0, &type, text, sizeof(text));
		eng_control_free(&rx);
		break;
	}
	case 2: {
		uint32_t chunk;
		eng_session_take(&conn, got, &chunk, 0, err, sizeof(err));
		break;
	}
	case 3:
		if (eng_session_resume_take(&conn, value, key, CDC_AEAD_AES256GCM, handoff, 0, nonce, err,
					    sizeof(err)) == 0)
			eng_session_resume_reply(&conn, value, key, CDC_AEAD_AES256GCM, handoff, nonce,
						 ENG_RESUME_VERIFIED, 1);
		eng_session_resume_ask(&conn, value, key, CDC_AEAD_AES256GCM, handoff, 0, &state, &applied, err,
				       sizeof(err));
		break;
	case 4: {
		struct eng_base_plan plan;
		if (eng_base_plan_recv(&conn, value, key, 0, &plan, err, sizeof(err)) == 0)
			eng_base_plan_free(&plan);
		break;
	}
	case 5: {
		static uint8_t digests[3 * CDC_DIGEST_LEN], map0[1], map1[2];
		struct eng_base_plan plan = { .aead = CDC_AEAD_AES256GCM, .nobj = 2, .chunk_size = 65536 };
		uint8_t *have[2] = { map0, map1 };
		plan.obj[0] = (struct eng_plan_object){ .size = 65536, .chunks = 1, .digests = digests };
		plan.obj[1] = (struct eng_plan_object){ .size = 9 * 65536, .chunks = 9, .digests = digests };
		eng_base_have_recv(&conn, value, key, 0, &plan, have, err, sizeof(err));
		break;
	}
	}
	return 0;
}

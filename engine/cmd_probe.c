/*
 * handoff-engine probe: measure a link before trusting a handoff to it. The
 * sending end streams N bytes of a seeded pseudo-random (incompressible)
 * sequence over tcp: or dpdk:; the receiving end regenerates the sequence,
 * compares every byte and answers with its verdict. Both print goodput, CPU
 * time and the transport's counters; perf/bench-transport runs it.
 *
 * Wire: "HOPROBE1" | bytes:u64 | seed:u64, the bytes, then the receiver's
 * reply: "HOVERDCT" | received:u64 | equal:u8 | receive seconds:f64.
 */
#include "engine/clock.h"
#include "cli.h"
#include "conn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#define CHUNK (256u << 10)

enum { P_TO, P_FROM, P_BYTES, P_KEY, P_JSON, P_TIMEOUT };

static const struct cli_opt probe_opts[] = {
	[P_TO] = { "to", 0, "DEST", false, "send: tcp:HOST:PORT or dpdk:PORT[,peer=MAC][,mtu=N][,drop=F]" },
	[P_FROM] = { "from", 0, "SOURCE", false, "receive: tcp:ADDR:PORT to listen on or dpdk:PORT[,...]" },
	[P_BYTES] = { "bytes", 'n', "N", false, "bytes to send (suffix K, M, G; default 256M)" },
	[P_KEY] = { "key", 'k', "FILE", false, "key both ends share (dpdk: handshake); default all-zero" },
	[P_JSON] = { "json", 0, NULL, false, "print a JSON summary on stdout" },
	[P_TIMEOUT] = { "timeout", 0, "SECONDS", false, "wait this long for the peer (default 30)" },
	{ 0 },
};

/*
 * The byte sequence: AES-128-CTR keystream under a key made from the seed
 * (AES-NI: several GB/s, so the probe measures the link, not the generator).
 */
struct prng {
	EVP_CIPHER_CTX *ctx;
	uint8_t *zero;
};

static int prng_seed(struct prng *r, uint64_t seed)
{
	uint8_t key[16] = { 0 }, iv[16] = { 0 };

	memcpy(key, &seed, sizeof(seed));
	r->ctx = EVP_CIPHER_CTX_new();
	r->zero = calloc(1, CHUNK);
	if (!r->ctx || !r->zero || EVP_EncryptInit_ex(r->ctx, EVP_aes_128_ctr(), NULL, key, iv) != 1)
		return -1;
	return 0;
}

static void prng_fill(struct prng *r, void *buf, size_t len)
{
	int n = 0;
	EVP_EncryptUpdate(r->ctx, buf, &n, r->zero, (int)len); /* len <= CHUNK */
}

static void prng_free(struct prng *r)
{
	EVP_CIPHER_CTX_free(r->ctx);
	free(r->zero);
}

/* A byte count for the probe's buffers: whole 8-byte words. */
static int parse_size(const char *s, uint64_t *out)
{
	if (cli_parse_size(s, out) || *out > 10000000000000ull)
		return -1;
	*out &= ~7ull;
	return *out ? 0 : -1;
}

static json_object *summary(struct eng_conn *c, const char *role, uint64_t bytes, double secs, double cpu,
			    bool equal)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "role", json_object_new_string(role));
	json_object_object_add(o, "transport", json_object_new_string(eng_conn_transport(c)));
	json_object_object_add(o, "bytes", json_object_new_int64((int64_t)bytes));
	json_object_object_add(o, "seconds", json_object_new_double(secs));
	json_object_object_add(o, "goodput_mbit", json_object_new_double(secs > 0 ? bytes * 8 / secs / 1e6 : 0));
	json_object_object_add(o, "cpu_s", json_object_new_double(cpu));
	json_object_object_add(o, "bytes_equal", json_object_new_boolean(equal));
	json_object *st = eng_conn_stats_json(c);
	if (st)
		json_object_object_add(o, "link", st);
	return o;
}

static int probe_send(const char *loc, const struct eng_conn_bind *b, uint64_t bytes, double timeout,
		      bool json)
{
	char err[512];
	uint8_t hdr[24], reply[33];
	uint64_t seed;
	struct prng r = { 0 };
	int ret = 1;

	RAND_bytes((unsigned char *)&seed, sizeof(seed));
	uint8_t *buf = malloc(CHUNK);
	struct eng_conn *c = NULL;
	if (!buf || prng_seed(&r, seed)) {
		cli_error("probe: out of memory");
		goto out;
	}
	if (!(c = eng_conn_connect(loc, b, timeout, err, sizeof(err)))) {
		cli_error("probe: %s", err);
		goto out;
	}
	double t0 = eng_mono_s(), c0 = eng_cpu_s(), last = t0;
	memcpy(hdr, "HOPROBE1", 8);
	memcpy(hdr + 8, &bytes, 8);
	memcpy(hdr + 16, &seed, 8);
	int e = eng_conn_send(c, hdr, sizeof(hdr));
	for (uint64_t done = 0; !e && done < bytes;) {
		size_t n = bytes - done < CHUNK ? (size_t)(bytes - done) : CHUNK;
		prng_fill(&r, buf, n);
		e = eng_conn_send(c, buf, n);
		done += n;
		if (isatty(2) && eng_mono_s() - last > 0.2) {
			last = eng_mono_s();
			cli_progress("probe", done, bytes, done, last - t0);
		}
	}
	cli_progress_end();
	if (!e)
		e = eng_conn_recv_all(c, reply, sizeof(reply), timeout + 60);
	double secs = eng_mono_s() - t0;
	if (e) {
		const char *why = eng_conn_error(c);
		cli_error("probe: %s", why ? why : strerror(-e));
		goto out;
	}
	uint64_t got;
	double rsecs;
	memcpy(&got, reply + 8, 8);
	memcpy(&rsecs, reply + 17, 8);
	bool equal = !memcmp(reply, "HOVERDCT", 8) && got == bytes && reply[16] == 1;
	json_object *o = summary(c, "send", bytes, secs, eng_cpu_s() - c0, equal);
	json_object_object_add(o, "receiver_seconds", json_object_new_double(rsecs));
	if (json)
		cli_print_json(o); /* frees o */
	else
		fprintf(stderr, "probe: %.1f MB over %s in %.2f s: %.1f Mbit/s, %s\n", bytes / 1e6,
			eng_conn_transport(c), secs, bytes * 8 / secs / 1e6,
			equal ? "every byte arrived intact" : "THE RECEIVER SAW DIFFERENT BYTES");
	if (!json)
		json_object_put(o);
	ret = equal ? 0 : 1;
out:
	eng_conn_close(c);
	prng_free(&r);
	free(buf);
	return ret;
}

static int probe_receive(const char *loc, const struct eng_conn_bind *b, double timeout, bool json)
{
	char err[512];
	uint8_t hdr[24], reply[33];
	uint64_t bytes, seed, done = 0;
	struct prng r = { 0 };
	bool equal = true;
	int ret = 1;

	uint8_t *buf = malloc(CHUNK), *want = malloc(CHUNK);
	struct eng_conn *c = buf && want ? eng_conn_accept(loc, b, timeout, err, sizeof(err)) : NULL;
	if (!c) {
		cli_error("probe: %s", buf && want ? err : "out of memory");
		free(buf);
		free(want);
		return 1;
	}
	double c0 = eng_cpu_s(), t0 = 0;
	int e = eng_conn_recv_all(c, hdr, sizeof(hdr), -1);
	if (!e && memcmp(hdr, "HOPROBE1", 8)) {
		cli_error("probe: the peer is not a 'handoff-engine probe --to'");
		goto out;
	}
	memcpy(&bytes, hdr + 8, 8);
	memcpy(&seed, hdr + 16, 8);
	if (prng_seed(&r, seed)) {
		cli_error("probe: out of memory");
		goto out;
	}
	t0 = eng_mono_s();
	while (!e && done < bytes) {
		size_t n = bytes - done < CHUNK ? (size_t)(bytes - done) : CHUNK;
		e = eng_conn_recv_all(c, buf, n, -1);
		if (e)
			break;
		prng_fill(&r, want, n);
		if (memcmp(buf, want, n))
			equal = false;
		done += n;
	}
	double secs = eng_mono_s() - t0;
	if (e) {
		const char *why = eng_conn_error(c);
		cli_error("probe: %s after %llu of %llu bytes", why ? why : strerror(-e),
			  (unsigned long long)done, (unsigned long long)bytes);
		goto out;
	}
	memcpy(reply, "HOVERDCT", 8);
	memcpy(reply + 8, &done, 8);
	reply[16] = equal;
	memcpy(reply + 17, &secs, 8);
	memset(reply + 25, 0, 8);
	if ((e = eng_conn_send(c, reply, sizeof(reply)))) {
		cli_error("probe: cannot answer the sender: %s", eng_conn_error(c) ? eng_conn_error(c) : strerror(-e));
		goto out;
	}
	json_object *o = summary(c, "receive", done, secs, eng_cpu_s() - c0, equal);
	if (json)
		cli_print_json(o);
	else
		fprintf(stderr, "probe: received %.1f MB over %s in %.2f s: %.1f Mbit/s, %s\n", done / 1e6,
			eng_conn_transport(c), secs, done * 8 / secs / 1e6,
			equal ? "every byte as sent" : "BYTES DIFFER FROM WHAT WAS SENT");
	if (!json)
		json_object_put(o);
	ret = equal ? 0 : 1;
out:
	eng_conn_close(c); /* lingers until the verdict is acknowledged */
	prng_free(&r);
	free(buf);
	free(want);
	return ret;
}

static int probe_run(const struct cli_cmd *cmd, const char *const *val)
{
	CLI_KEY(key);
	uint64_t bytes = 256u << 20;
	double timeout = 30;
	struct eng_conn_bind b = { 0 };
	const char *loc = val[P_TO] ? val[P_TO] : val[P_FROM];
	int socket;

	(void)cmd;
	if (!val[P_TO] == !val[P_FROM]) {
		cli_error("probe: give exactly one of --to (sending end) and --from (receiving end)");
		return 2;
	}
	if (!eng_conn_is_remote(loc)) {
		cli_error("probe: '%s' is not a network location (tcp:HOST:PORT or dpdk:PORT)", loc);
		return 2;
	}
	if (val[P_BYTES] && (!val[P_TO] || parse_size(val[P_BYTES], &bytes))) {
		cli_error("probe: bad --bytes '%s' (sending end only; e.g. 512M)", val[P_BYTES]);
		return 2;
	}
	if (val[P_TIMEOUT] && !((timeout = strtod(val[P_TIMEOUT], NULL)) > 0)) {
		cli_error("probe: bad --timeout '%s'", val[P_TIMEOUT]);
		return 2;
	}
	if (val[P_KEY]) {
		if (cli_read_key(val[P_KEY], key))
			return 2;
		b.key = key;
	}
	if (!strncmp(loc, "dpdk:", 5) && cli_eal_start(512, &socket))
		return 1;
	return val[P_TO] ? probe_send(loc, &b, bytes, timeout, val[P_JSON] != NULL)
			 : probe_receive(loc, &b, timeout, val[P_JSON] != NULL);
}

const struct cli_cmd cli_cmd_probe = {
	.name = "probe",
	.summary = "Measure a link: the sending end (--to) streams pseudo-random bytes, the receiving\n"
		   "end (--from) checks every one; both report goodput, CPU time and transport counters.\n"
		   "dpdk: needs its port in the EAL arguments: -a PCI_ADDRESS for a NIC, or a virtual\n"
		   "device such as --vdev net_af_packet0,iface=eth1 or --vdev net_memif0,role=server.",
	.usage = "--to tcp:HOST:PORT|dpdk:PORT [--bytes N] [--key FILE] [--json]\n"
		 "       probe --from tcp:ADDR:PORT|dpdk:PORT [--key FILE] [--json]",
	.opts = probe_opts,
	.run = probe_run,
	.needs_eal = true,
};

/*
 * libFuzzer target for the QMP client (qemu_bridge/qmp.c): the input is
 * everything QEMU's monitor says, from the greeting on, after which the
 * socket closes. The engine's session is played against it: capabilities,
 * query-status, query-cpus-fast (vCPU threads), the shared-RAM lookup
 * (qom-list / qom-get), query-migrate, and a wait for an event. Replies may
 * come in any order, interleaved with events, split anywhere.
 */
#include "qemu_bridge/qmp.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int sv[2];
	char err[256], buf[256], path[256];
	pid_t pid, tids[64];
	unsigned n;

	if (size > 100000 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return 0;
	/* all of QEMU's side at once, then its end of the stream */
	for (size_t done = 0; done < size;) {
		ssize_t w = write(sv[1], data + done, size - done);
		if (w <= 0)
			break;
		done += (size_t)w;
	}
	shutdown(sv[1], SHUT_WR);
	struct qb_qmp *q = qb_qmp_open_fd(sv[0], 0.2, err, sizeof(err));
	if (q) {
		(void)qb_qmp_running(q, buf, sizeof(buf), err, sizeof(err));
		(void)qb_vcpu_threads(q, &pid, tids, 64, &n, err, sizeof(err));
		(void)qb_find_shared_ram(q, buf, sizeof(buf), path, sizeof(path), err, sizeof(err));
		(void)qb_migrate_status(q, buf, sizeof(buf), err, sizeof(err));
		json_object *ev = NULL;
		if (!qb_qmp_wait_event(q, NULL, 0, &ev, NULL, err, sizeof(err)))
			json_object_put(ev);
		qb_qmp_close(q);
	}
	close(sv[1]);
	return 0;
}

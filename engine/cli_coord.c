#include "cli_coord.h"
#include "cli.h"

#include <unistd.h>

struct edg_coord *cli_coord_open(const char *cmd, const char *url, const char *auth, const char *edge, bool *missed)
{
	char host[65] = "", err[512];

	*missed = false;
	if (!url)
		return NULL;
	if (!auth) {
		cli_error("%s: --coordinator needs --coordinator-auth FILE", cmd);
		*missed = true;
		return NULL;
	}
	if (!edge) {
		gethostname(host, sizeof(host) - 1);
		edge = host;
	}
	struct edg_coord *c = edg_coord_connect(url, auth, edge, COORD_TIMEOUT_S, err, sizeof(err));
	if (!c) {
		cli_error("%s: %s", cmd, err);
		*missed = true;
	}
	return c;
}

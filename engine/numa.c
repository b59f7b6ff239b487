#include "numa.h"

#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>

struct eng_numa {
	hwloc_topology_t topo;
};

struct eng_numa *eng_numa_open(const char *xml, bool with_io, char *err, size_t errlen)
{
	struct eng_numa *n = calloc(1, sizeof(*n));

	if (!xml)
		xml = getenv("HANDOFF_TOPOLOGY");
	if (!n || hwloc_topology_init(&n->topo)) {
		snprintf(err, errlen, "cannot read the machine's topology (hwloc)");
		free(n);
		return NULL;
	}
	/* a port's node is its PCI device's */
	if (with_io)
		hwloc_topology_set_io_types_filter(n->topo, HWLOC_TYPE_FILTER_KEEP_ALL);
	if ((xml && hwloc_topology_set_xml(n->topo, xml)) || hwloc_topology_load(n->topo)) {
		snprintf(err, errlen, xml ? "cannot load the topology %s (hwloc XML)" : "cannot read the machine's topology (hwloc)%s",
			 xml ? xml : "");
		hwloc_topology_destroy(n->topo);
		free(n);
		return NULL;
	}
	return n;
}

void eng_numa_close(struct eng_numa *n)
{
	if (!n)
		return;
	hwloc_topology_destroy(n->topo);
	free(n);
}

int eng_numa_nodes(const struct eng_numa *n)
{
	int c = hwloc_get_nbobjs_by_type(n->topo, HWLOC_OBJ_NUMANODE);
	return c > 0 ? c : 1;
}

/* An object's node (nodesets hold the OS indexes of nodes); -1 unless exactly one:
 * a NIC local to a whole package of several nodes, or to the machine, names none. */
static int node_of(hwloc_obj_t o)
{
	return o && hwloc_bitmap_weight(o->nodeset) == 1 ? hwloc_bitmap_first(o->nodeset) : -1;
}

int eng_numa_node_of_cpu(const struct eng_numa *n, unsigned cpu)
{
	return node_of(hwloc_get_pu_obj_by_os_index(n->topo, cpu));
}

int eng_numa_node_of_cpus(const struct eng_numa *n, const unsigned *cpus, unsigned count)
{
	int best = -1, best_count = 0;

	for (unsigned i = 0; i < count; i++) {
		int node = eng_numa_node_of_cpu(n, cpus[i]), c = 0;
		if (node < 0)
			continue;
		for (unsigned k = 0; k < count; k++)
			c += eng_numa_node_of_cpu(n, cpus[k]) == node;
		if (c > best_count) /* strictly more: the earlier CPU wins a tie */
			best = node, best_count = c;
	}
	return best;
}

int eng_numa_node_of_pci(const struct eng_numa *n, const char *busid)
{
	hwloc_obj_t dev = hwloc_get_pcidev_by_busidstring(n->topo, busid);

	return dev ? node_of(hwloc_get_non_io_ancestor_obj(n->topo, dev)) : -1;
}

int eng_numa_port_node(const struct eng_numa *n, const char *pci_busid, int dpdk_socket, int pipeline_node)
{
	int node = n && pci_busid ? eng_numa_node_of_pci(n, pci_busid) : -1;

	if (node >= 0)
		return node;
	return dpdk_socket >= 0 ? dpdk_socket : pipeline_node;
}

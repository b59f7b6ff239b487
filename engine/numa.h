/*
 * NUMA placement, asked of hwloc: the pipeline's pools, rings and tables go
 * on the node that holds most of the CPUs running its lcores (the main
 * lcore's on a tie), whoever chose them (the operator's -l or the engine's
 * default); a dpdk: port's queues and mbufs on the node its PCI device hangs
 * off. hwloc answers rather than DPDK so that a topology described in XML
 * (HANDOFF_TOPOLOGY=FILE, or hwloc's own HWLOC_XMLFILE) gives the answers a
 * machine of that shape would: tests/test_numa.c places on a two-node one.
 */
#ifndef HANDOFF_NUMA_H
#define HANDOFF_NUMA_H

#include <stdbool.h>
#include <stddef.h>

struct eng_numa;

/* xml: a topology file, or NULL for $HANDOFF_TOPOLOGY, else this machine;
 * with_io: PCI devices too (slower: only a port needs them). NULL + err on failure. */
struct eng_numa *eng_numa_open(const char *xml, bool with_io, char *err, size_t errlen);
void eng_numa_close(struct eng_numa *n);
int eng_numa_nodes(const struct eng_numa *n);
/* The node of one CPU (OS index); -1 when the topology does not know it. */
int eng_numa_node_of_cpu(const struct eng_numa *n, unsigned cpu);
/* The node holding most of cpus[0..count) (cpus[0]'s on a tie); -1 if none is known. */
int eng_numa_node_of_cpus(const struct eng_numa *n, const unsigned *cpus, unsigned count);
/* The node a PCI device ("DDDD:BB:DD.F") is attached to; -1 unknown. */
int eng_numa_node_of_pci(const struct eng_numa *n, const char *busid);
/* A port's node: its PCI device's (pci_busid NULL: a virtual device), else
 * what DPDK said (dpdk_socket, < 0: unknown), else the pipeline's node. */
int eng_numa_port_node(const struct eng_numa *n, const char *pci_busid, int dpdk_socket, int pipeline_node);

#endif

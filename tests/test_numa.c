/*
 * NUMA placement (engine/numa.h) on a two-node machine described to hwloc in
 * XML: two packages, each with its NUMA node and two cores, and a NIC on the
 * second package's PCI bus. The pipeline's node follows the lcores the
 * operator names; a port's follows its device.
 */
#include "engine/numa.h"
#include "testlib.h"

static const char two_nodes[] =
	"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	"<!DOCTYPE topology SYSTEM \"hwloc2.dtd\">\n"
	"<topology version=\"2.0\">\n"
	" <object type=\"Machine\" os_index=\"0\" cpuset=\"0x0000000f\" complete_cpuset=\"0x0000000f\" allowed_cpuset=\"0x0000000f\""
	"  nodeset=\"0x00000003\" complete_nodeset=\"0x00000003\" allowed_nodeset=\"0x00000003\" gp_index=\"1\">\n"
	"  <object type=\"Package\" os_index=\"0\" cpuset=\"0x00000003\" complete_cpuset=\"0x00000003\" nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"2\">\n"
	"   <object type=\"NUMANode\" os_index=\"0\" cpuset=\"0x00000003\" complete_cpuset=\"0x00000003\" nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"3\" local_memory=\"1073741824\"/>\n"
	"   <object type=\"Core\" os_index=\"0\" cpuset=\"0x00000001\" complete_cpuset=\"0x00000001\" nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"4\">\n"
	"    <object type=\"PU\" os_index=\"0\" cpuset=\"0x00000001\" complete_cpuset=\"0x00000001\" nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"5\"/>\n"
	"   </object>\n"
	"   <object type=\"Core\" os_index=\"1\" cpuset=\"0x00000002\" complete_cpuset=\"0x00000002\" nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"6\">\n"
	"    <object type=\"PU\" os_index=\"1\" cpuset=\"0x00000002\" complete_cpuset=\"0x00000002\" nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"7\"/>\n"
	"   </object>\n"
	"  </object>\n"
	"  <object type=\"Package\" os_index=\"1\" cpuset=\"0x0000000c\" complete_cpuset=\"0x0000000c\" nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"8\">\n"
	"   <object type=\"NUMANode\" os_index=\"1\" cpuset=\"0x0000000c\" complete_cpuset=\"0x0000000c\" nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"9\" local_memory=\"1073741824\"/>\n"
	"   <object type=\"Core\" os_index=\"2\" cpuset=\"0x00000004\" complete_cpuset=\"0x00000004\" nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"10\">\n"
	"    <object type=\"PU\" os_index=\"2\" cpuset=\"0x00000004\" complete_cpuset=\"0x00000004\" nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"11\"/>\n"
	"   </object>\n"
	"   <object type=\"Core\" os_index=\"3\" cpuset=\"0x00000008\" complete_cpuset=\"0x00000008\" nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"12\">\n"
	"    <object type=\"PU\" os_index=\"3\" cpuset=\"0x00000008\" complete_cpuset=\"0x00000008\" nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"13\"/>\n"
	"   </object>\n"
	"   <object type=\"Bridge\" gp_index=\"14\" bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[81-81]\">\n"
	"    <object type=\"PCIDev\" gp_index=\"15\" pci_busid=\"0000:81:00.0\" pci_type=\"0200 [8086:1592] [8086:0002] 02\"/>\n"
	"   </object>\n"
	"  </object>\n"
	" </object>\n"
	"</topology>\n";

static void test_two_node_placement(void **state)
{
	char *dir = test_tmpdir(), path[512], err[256];

	(void)state;
	snprintf(path, sizeof(path), "%s/two-nodes.xml", dir);
	test_write_file(path, two_nodes, sizeof(two_nodes) - 1);
	struct eng_numa *n = eng_numa_open(path, true, err, sizeof(err));
	if (!n)
		fail_msg("%s", err);
	assert_int_equal(eng_numa_nodes(n), 2);
	/* -l 2-3: both on node 1; -l 0-1: node 0 */
	const unsigned hi[] = { 2, 3 }, lo[] = { 0, 1 }, mixed[] = { 3, 0 }, most[] = { 0, 2, 3 };
	assert_int_equal(eng_numa_node_of_cpus(n, hi, 2), 1);
	assert_int_equal(eng_numa_node_of_cpus(n, lo, 2), 0);
	assert_int_equal(eng_numa_node_of_cpus(n, mixed, 2), 1); /* a tie: the main lcore's */
	assert_int_equal(eng_numa_node_of_cpus(n, most, 3), 1);  /* where most of them are */
	assert_int_equal(eng_numa_node_of_cpu(n, 7), -1);        /* not in this topology */
	/* the NIC on package 1's bus: its queues on node 1, whatever the lcores */
	assert_int_equal(eng_numa_node_of_pci(n, "0000:81:00.0"), 1);
	assert_int_equal(eng_numa_port_node(n, "0000:81:00.0", -1, 0), 1);
	assert_int_equal(eng_numa_port_node(n, NULL, -1, 0), 0); /* a virtual port: the pipeline's node */
	assert_int_equal(eng_numa_port_node(n, "0000:05:00.0", 1, 0), 1); /* unknown to hwloc: DPDK's word */
	eng_numa_close(n);
	assert_null(eng_numa_open("/nonexistent/topology.xml", false, err, sizeof(err)));
	unlink(path);
	rmdir(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_two_node_placement),
	};
	test_seed();
	return cmocka_run_group_tests_name("numa", tests, NULL, NULL);
}

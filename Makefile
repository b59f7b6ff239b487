# handoff: build, test, demo and benchmarks. `make test` and `make demo` set
# up the machine first (scripts/setup, idempotent apt-get).

BUILD    ?= build
CC       ?= gcc
SANITIZE ?=
DPDK_CFLAGS := $(shell pkg-config --cflags libdpdk 2>/dev/null)
# DPDK is linked statically with the drivers named here: a shared EAL dlopens
# every PMD plugin Debian ships (~130) at start, which cost each run ~0.06 s of
# CPU. Real NICs: Intel (e1000, ixgbe, i40e, iavf, ice), Mellanox mlx5, AWS
# ena, Broadcom bnxt, VMware and virtio; virtual: af_packet, memif, tap,
# vhost, ring, null.
DPDK_DRIVERS := bus_pci bus_vdev bus_auxiliary mempool_ring mempool_stack \
	net_af_packet net_memif net_ring net_null net_tap net_vhost net_virtio \
	net_e1000 net_ixgbe net_i40e net_iavf common_iavf net_ice net_ena \
	net_vmxnet3 net_bnxt net_mlx5 common_mlx5
# The libraries (not drivers) from the static pkg-config list, in its order.
DPDK_CORE   := $(filter-out -l:librte_common_% -l:librte_bus_% -l:librte_mempool_% \
	-l:librte_dma_% -l:librte_net_% -l:librte_raw_% -l:librte_crypto_% \
	-l:librte_compress_% -l:librte_regex_% -l:librte_vdpa_% -l:librte_event_% \
	-l:librte_baseband_%,$(filter -l:librte_%,$(shell pkg-config --static --libs libdpdk 2>/dev/null)))
DPDK_LIBS   := -Wl,--whole-archive $(DPDK_DRIVERS:%=-l:librte_%.a) -Wl,--no-whole-archive \
	-Wl,--start-group $(DPDK_CORE) -Wl,--end-group -lmlx5 -libverbs -lbsd -lnuma -lrt -latomic -lm -ldl
FUSE_CFLAGS := $(shell pkg-config --cflags fuse3 2>/dev/null)

CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Wno-missing-field-initializers -Werror=incompatible-pointer-types -I. $(DPDK_CFLAGS) $(FUSE_CFLAGS)
LDLIBS  += $(DPDK_LIBS) -lisal -lIPSec_MB -lzstd -llzma -lcrypto -lhwloc -ljson-c -luring -lfuse3 -llmdb -lhiredis -lpthread
ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
LDFLAGS += -fsanitize=$(SANITIZE)
endif

# One module per file: every .c of a folder is part of the library.
CODECS_SRC  := $(wildcard codecs/*.c)
TRACKER_SRC := $(wildcard tracker/*.c)
BRIDGE_SRC  := $(wildcard qemu_bridge/*.c)
DPDKIO_SRC  := $(wildcard dpdk_io/*.c)
EDGE_SRC    := $(wildcard edge/*.c)
ENGINE_SRC  := $(filter-out engine/main.c,$(wildcard engine/*.c))
LIB_SRC     := $(CODECS_SRC) $(TRACKER_SRC) $(BRIDGE_SRC) $(DPDKIO_SRC) $(EDGE_SRC) $(ENGINE_SRC)
LIB_OBJ     := $(LIB_SRC:%.c=$(BUILD)/%.o)
ENGINE      := $(BUILD)/handoff-engine

TESTS       := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
# Integration tests (real QEMU, FUSE, namespaces): executables tests/it_*.
INTEGRATION := $(sort $(wildcard tests/it_*))
# Small helper programs the scripts run (e.g. the WAN delay relay), and the
# benchmarks' DPDK programs (perf/*.c, linked with the engine library).
TOOLS       := $(patsubst scripts/%.c,$(BUILD)/%,$(wildcard scripts/*.c)) \
	$(patsubst perf/%.c,$(BUILD)/%,$(wildcard perf/*.c))

export ASAN_OPTIONS UBSAN_OPTIONS

.PHONY: all setup test unit unit-sanitized integration integration-sanitized fuzz fuzz-run fuzz-long soak demo bench bench-handoff bench-transport bench-adapt bench-edge clean
all: $(ENGINE) $(TOOLS)

setup:
	@scripts/setup

$(BUILD)/%.o: %.c $(wildcard */*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libhandoff.a: $(LIB_OBJ)
	ar rcs $@ $^

$(ENGINE): $(BUILD)/engine/main.o $(BUILD)/libhandoff.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/%: scripts/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $< -o $@ -lpthread

$(BUILD)/%: perf/%.c $(BUILD)/libhandoff.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(BUILD)/libhandoff.a -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/testlib.h $(BUILD)/libhandoff.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(BUILD)/libhandoff.a -o $@ $(LDLIBS) -lcmocka

# Every parser of outside input under libFuzzer with ASan and UBSan (clang,
# own objects): the stream, QEMU's migration stream and device state, QMP
# replies, the base index cache, control messages, the session and resume
# messages, the edge cache's LMDB records and the dpdk: transport's frames.
# Corpus seeds in tests/fuzz/corpus/TARGET.
FUZZ_TARGETS := stream migstream qmp index control cache dio xfer dirty
FUZZ_BINS := $(FUZZ_TARGETS:%=$(BUILD)/fuzz_%)
FUZZ_SRC_stream := $(CODECS_SRC) engine/stream.c engine/io.c
FUZZ_SRC_migstream := $(CODECS_SRC) qemu_bridge/migstream.c
FUZZ_SRC_qmp := qemu_bridge/qmp.c
FUZZ_SRC_index := $(CODECS_SRC) tracker/index.c engine/safefile.c
FUZZ_SRC_control := $(CODECS_SRC) engine/control.c engine/session.c engine/stream.c engine/io.c
FUZZ_SRC_cache := $(CODECS_SRC) engine/safefile.c
FUZZ_SRC_xfer := $(CODECS_SRC) edge/xfer.c edge/store.c engine/safefile.c
FUZZ_SRC_dirty := tracker/dirtyfs.c
FUZZ_LIBS_dirty := -lfuse3
# dio: DPDK frames on a real EAL (fuzz_dio.c includes dpdk_io/dio.c)
# cache: one store per process (fuzz_cache.c includes edge/store.c)
FUZZ_SRC_dio := $(CODECS_SRC) dpdk_io/port.c dpdk_io/pace.c engine/numa.c
FUZZ_LIBS_dio := $(DPDK_LIBS) -lhwloc
$(BUILD)/fuzz_dio: dpdk_io/dio.c
$(BUILD)/fuzz_cache: edge/store.c
.SECONDEXPANSION:
$(BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $$(FUZZ_SRC_$$*) $(wildcard */*.h)
	@mkdir -p $(dir $@)
	clang -O1 -g -std=gnu11 -D_GNU_SOURCE -I. $(DPDK_CFLAGS) $(FUSE_CFLAGS) -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined $< $(FUZZ_SRC_$*) -o $@ $(FUZZ_LIBS_$*) -lisal -lIPSec_MB -lzstd -llzma -lcrypto -luring -ljson-c -llmdb

unit: $(ENGINE) $(TOOLS) $(TESTS)
	@HANDOFF_ENGINE=$(ENGINE) scripts/run-tests $(TESTS)

integration: $(ENGINE) $(TOOLS)
	@HANDOFF_ENGINE=$(abspath $(ENGINE)) HANDOFF_BUILD=$(abspath $(BUILD)) scripts/run-tests $(INTEGRATION)

# The same tests on an ASan + UBSan build (leak checks off: DPDK keeps its
# memory until exit by design).
unit-sanitized:
	@$(MAKE) --no-print-directory BUILD=build-asan SANITIZE=address,undefined unit \
	    ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1

# The integration tests with the engine built the same way (not in make test: it
# takes about twice as long). Every engine process, the background ones too,
# writes what a sanitizer finds under build-asan/sanitizer-reports: any file
# there fails the run.
SAN_REPORTS := $(abspath build-asan)/sanitizer-reports
integration-sanitized: setup
	@rm -rf $(SAN_REPORTS) && mkdir -p $(SAN_REPORTS)
	@$(MAKE) --no-print-directory BUILD=build-asan SANITIZE=address,undefined integration \
	    ASAN_OPTIONS=detect_leaks=0:log_path=$(SAN_REPORTS)/asan \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(SAN_REPORTS)/ubsan; rc=$$?; \
	if [ -n "$$(ls -A $(SAN_REPORTS))" ]; then \
	    echo "integration-sanitized: sanitizer reports in $(SAN_REPORTS):"; head -30 $(SAN_REPORTS)/*; exit 1; \
	fi; exit $$rc

fuzz: $(FUZZ_BINS)
# Bounded (make test): each target replays its saved corpus, then fuzzes 12 s (9 targets).
fuzz-run: $(FUZZ_BINS)
	@scripts/run-fuzz --seconds 12 $(FUZZ_BINS)
# Long (not in make test): 10^6 inputs per target; perf/results/fuzz-latest.json.
fuzz-long: $(FUZZ_BINS)
	@scripts/run-fuzz --runs 1000000 --json perf/results/fuzz-latest.json $(FUZZ_BINS)

test: setup
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory unit-sanitized
	@$(MAKE) --no-print-directory fuzz-run

demo: setup
	@$(MAKE) --no-print-directory $(ENGINE)
	@scripts/demo

bench: setup
	@$(MAKE) --no-print-directory all
	@perf/bench-diff

# handoff-engine vs QEMU's own live migration over the emulated WAN (needs root): the
# default workload, one that outruns the link, and the default one on an unshaped link
bench-handoff: setup
	@$(MAKE) --no-print-directory all
	@HANDOFF_ENGINE=$(abspath $(ENGINE)) HANDOFF_BUILD=$(abspath $(BUILD)) perf/handoff-bench --cases default,outrun,fast

bench-transport: setup
	@$(MAKE) --no-print-directory all
	@HANDOFF_BUILD=$(abspath $(BUILD)) perf/bench-transport

bench-adapt: setup
	@$(MAKE) --no-print-directory all
	@HANDOFF_BUILD=$(abspath $(BUILD)) perf/bench-adapt

# Many live handoffs back and forth between two sites, trackers kept up (not in make test): perf/soak.
soak: setup
	@$(MAKE) --no-print-directory all
	@perf/soak

# A VM handed to an edge that never held its base (needs root): perf/bench-edge.
bench-edge: setup
	@$(MAKE) --no-print-directory all
	@HANDOFF_BUILD=$(abspath $(BUILD)) perf/bench-edge

clean:
	rm -rf $(BUILD) build-asan

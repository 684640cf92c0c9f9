# attnserve — build, test and benchmark entry points.
#   make deps    install missing Debian 12 packages (apt-get; as root or via sudo)
#   make build   configure and build everything (Release) into $(BUILD_DIR)
#   make run     deps + build + start attnserve on the embedded demo model
#                (gRPC :50051, metrics :9090; ARGS="--log-level debug" adds flags)
#   make test    deps + build + every ctest suite (what .ci/run calls)
#   make bench   deps + core_bench + its table (BENCH_ARGS="--quick", "--filter L8192",
#                "--breakdown" for where each row's time goes)
#   make bench-torch  deps + core_bench + PyTorch's nn.MultiheadAttention on the same
#                rows (Debian's python3-torch on OpenBLAS) and the speed-up table
#   make bench-serve  deps + build + the serving benchmark (serve_bench)
#   make bench-serve-tls  deps + build + what TLS, mTLS and tokens cost (serve_bench --tls --token)
#   make bench-session  deps + build + streaming sessions against re-sending the window
#                through Attend (session_bench: CPU and p50 per chunk, cache bytes per session)
#   make golden  regenerate the PyTorch golden fixtures (needs python3-torch)
#   make image   build the container image attnserve:VERSION and :latest (docker if
#                its daemon answers, else podman; see tools/image.sh)
#   make image-test  make image + run it for real (ctest -L image)
#   make asan    every ctest suite built with ASan + UBSan, in $(ASAN_DIR) (not the
#                image's: they check the release binaries the image ships)
#   make tsan    the server, batcher, client and e2e suites and the canaries
#                (tests/tsan_canary_test.cc) under ThreadSanitizer,
#                in $(TSAN_DIR)
#   make fuzz    each libFuzzer target of tests/fuzz for FUZZ_SECONDS seconds
#                (clang, in $(FUZZ_DIR)); prints executions per target
#   make check   test + asan + tsan + fuzz (FUZZ_SECONDS=60) + image-test: the full
#                gate, what .ci/run calls; prints the time of each part
#   make ci      test + image-test: the shorter gate (no sanitizers, no fuzzing)
#   make soak    a real attnserve under mixed load for SOAK_SECONDS; RSS and fds

BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)
CTEST_ARGS ?=

# Build and test dependencies, all from Debian 12 (bookworm).
DEB_PACKAGES := \
  cmake g++ make pkg-config \
  libdnnl-dev ocl-icd-opencl-dev libabsl-dev nlohmann-json3-dev \
  libgtest-dev libgmock-dev libbenchmark-dev prometheus \
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
  libspdlog-dev prometheus-cpp-dev libcli11-dev libssl-dev openssl libjemalloc-dev \
  python3-yaml python3-kubernetes python3-grpcio python3-protobuf
# kubectl for `kubectl kustomize` in the deploy tests: Debian's, unless a
# kubectl is already installed (e.g. the Google Cloud SDK's, whose package owns
# /usr/bin/kubectl too, so installing both would fail).
DEB_PACKAGES += $(if $(shell command -v kubectl 2>/dev/null),,kubernetes-client)
# Only for regenerating fixtures and the demo model.
DEB_PACKAGES_GOLDEN := python3-torch python3-numpy
# Only for the PyTorch comparison. Installing libopenblas0-pthread makes OpenBLAS
# the libblas.so.3 alternative that Debian's PyTorch links (instead of the
# reference BLAS); bench/torch_mha.py checks that it is really in use.
DEB_PACKAGES_BENCH := python3-torch python3-numpy libopenblas0-pthread
# For `make fuzz` (and so `make check`): clang with libFuzzer and the OpenMP
# runtime clang's -fopenmp links.
DEB_PACKAGES_FUZZ := clang-14 libfuzzer-14-dev libclang-rt-14-dev libomp-14-dev

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps deps-golden deps-bench deps-fuzz build run test bench bench-torch bench-serve \
  golden demo-model clean image image-test asan tsan fuzz check ci soak

all: build

deps:
	@PKGS="$(DEB_PACKAGES)" SUDO="$(SUDO)" sh tools/install-deps.sh

deps-golden:
	@PKGS="$(DEB_PACKAGES_GOLDEN)" SUDO="$(SUDO)" sh tools/install-deps.sh

deps-bench:
	@PKGS="$(DEB_PACKAGES_BENCH)" SUDO="$(SUDO)" sh tools/install-deps.sh

deps-fuzz:
	@PKGS="$(DEB_PACKAGES_FUZZ)" SUDO="$(SUDO)" sh tools/install-deps.sh

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

build: $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS)

run: deps
	$(MAKE) build
	$(BUILD_DIR)/server/attnserve --model-repository models $(ARGS)

test: deps
	$(MAKE) build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) -LE container $(CTEST_ARGS)

bench: deps
	$(MAKE) $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS) --target core_bench
	$(BUILD_DIR)/bench/core_bench $(BENCH_ARGS)

# OPENBLAS_CORETYPE: OpenBLAS 0.3.21 does not recognise this CPU and would pick
# SSE3 kernels; Cooperlake's are the AVX-512 ones it has.
bench-torch: deps deps-bench
	$(MAKE) $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS) --target core_bench
	OPENBLAS_CORETYPE=$${OPENBLAS_CORETYPE:-Cooperlake} /usr/bin/python3 bench/compare_torch.py \
	  --core-bench $(BUILD_DIR)/bench/core_bench $(BENCH_ARGS)

bench-serve: deps
	$(MAKE) build
	$(BUILD_DIR)/bench/serve_bench --seconds 5

.PHONY: bench-serve-tls
bench-serve-tls: deps
	$(MAKE) build
	$(BUILD_DIR)/bench/serve_bench --tls --token --seconds 5 --rounds 5

.PHONY: bench-session
bench-session: deps
	$(MAKE) build
	$(BUILD_DIR)/bench/session_bench --seconds 5

golden: deps deps-golden
	/usr/bin/python3 tests/golden/export_golden.py

demo-model:
	/usr/bin/python3 models/make_demo.py models/demo

image:
	sh tools/image.sh build

# The image's tests (the container test and the runtime-library check) with
# the host build they compare against.
image-test: deps
	$(MAKE) image
	$(MAKE) $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS) --target image_container_test attnserve attnctl
	cd $(BUILD_DIR) && ctest --output-on-failure -L image $(CTEST_ARGS)

# ---- Sanitizers, fuzzing, soak (what `make check` runs). ----
ASAN_DIR ?= build-asan
TSAN_DIR ?= build-tsan
FUZZ_DIR ?= build-fuzz
# -O1 -g1: what the sanitizers' documentation recommends, line numbers and
# function names in every report, and half the compile time of -O2 -g
# (measured: service.cc 26.4 s -> 14.3 s under ASan). No benchmarks.
SAN_BUILD_TYPE ?= RelWithDebInfo
SAN_CXX_FLAGS ?= -O1 -g1 -DNDEBUG
SAN_CMAKE_ARGS = -DCMAKE_BUILD_TYPE=$(SAN_BUILD_TYPE) \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$(SAN_CXX_FLAGS)" -DATTNSERVE_BUILD_BENCH=OFF
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 600
# ASan + UBSan: any report fails the test (halt_on_error, exit code 1); leaks
# are checked at exit. allocator_may_return_null=1: an impossible allocation
# fails as it does without ASan (null from malloc and nothrow new, so the
# out-of-memory paths that core_failure_test drives are tested) instead of
# aborting.
# tests/lsan.supp names the leaks inside Debian's libraries, each with its
# reason.
ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=0:allocator_may_return_null=1 \
  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# TSan: every OpenMP region (ours and oneDNN's) runs on its calling thread,
# because Debian's libgomp is not instrumented and its barriers would look
# like races. OMP_NUM_THREADS=1 for the default team, OMP_THREAD_LIMIT=1 for
# engines given --threads N (the engine caps N at the limit, so oneDNN also
# plans for one thread). tests/tsan.supp lists the reports that come from
# uninstrumented libraries, each with its reason; gRPC's own ordering is
# annotated by tests/tsan/grpc_happens_before.cc.
TSAN_ENV := TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
  OMP_NUM_THREADS=1 OMP_THREAD_LIMIT=1
TSAN_LABELS ?= server|client|e2e|tsan
# The executables those labels run (not the core suites or the benchmarks);
# tsan_canary_test: races that must still be reported.
TSAN_TARGETS = attnserve attnctl tsan_canary_test $(basename $(notdir $(wildcard \
  tests/server_*_test.cc tests/client_*_test.cc tests/e2e_*_test.cc)))

$(ASAN_DIR)/CMakeCache.txt:
	cmake -S . -B $(ASAN_DIR) $(SAN_CMAKE_ARGS) -DATTN_SANITIZE=address,undefined

$(TSAN_DIR)/CMakeCache.txt:
	cmake -S . -B $(TSAN_DIR) $(SAN_CMAKE_ARGS) -DATTN_SANITIZE=thread

$(FUZZ_DIR)/CMakeCache.txt:
	CXX=clang++-14 cmake -S . -B $(FUZZ_DIR) $(SAN_CMAKE_ARGS) -DATTN_FUZZ=ON

asan: deps
	$(MAKE) $(ASAN_DIR)/CMakeCache.txt
	cmake --build $(ASAN_DIR) -j $(JOBS)
	cd $(ASAN_DIR) && $(ASAN_ENV) ctest --output-on-failure -j $(JOBS) -LE 'container|image' $(CTEST_ARGS)

tsan: deps
	$(MAKE) $(TSAN_DIR)/CMakeCache.txt
	cmake --build $(TSAN_DIR) -j $(JOBS) --target $(TSAN_TARGETS)
	cd $(TSAN_DIR) && $(TSAN_ENV) ctest --output-on-failure -j $(JOBS) -L '$(TSAN_LABELS)' $(CTEST_ARGS)

fuzz: deps deps-fuzz
	$(MAKE) $(FUZZ_DIR)/CMakeCache.txt
	cmake --build $(FUZZ_DIR) -j $(JOBS) --target fuzz_all
	sh tests/fuzz/run.sh $(FUZZ_DIR) $(FUZZ_SECONDS)

# Each part in turn; the first that fails stops it. Ends with each part's
# wall-clock time.
CHECK_PARTS := test asan tsan fuzz image-test
check:
	@set -e; times=""; for part in $(CHECK_PARTS); do \
	  start=$$(date +%s); \
	  $(MAKE) $$part FUZZ_SECONDS=60; \
	  times="$$times $$part $$(( $$(date +%s) - start )) s,"; \
	done; echo "== make check passed:$${times%,}"

ci:
	$(MAKE) test
	$(MAKE) image-test

soak: deps
	$(MAKE) build
	$(BUILD_DIR)/bench/soak --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(TSAN_DIR) $(FUZZ_DIR)

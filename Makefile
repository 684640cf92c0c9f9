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
#   make golden  regenerate the PyTorch golden fixtures (needs python3-torch)

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
  libspdlog-dev prometheus-cpp-dev libcli11-dev libssl-dev openssl \
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

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps deps-golden deps-bench build run test bench bench-torch bench-serve golden \
  demo-model clean

all: build

deps:
	@PKGS="$(DEB_PACKAGES)" SUDO="$(SUDO)" sh tools/install-deps.sh

deps-golden:
	@PKGS="$(DEB_PACKAGES_GOLDEN)" SUDO="$(SUDO)" sh tools/install-deps.sh

deps-bench:
	@PKGS="$(DEB_PACKAGES_BENCH)" SUDO="$(SUDO)" sh tools/install-deps.sh

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

build: $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS)

run: deps
	$(MAKE) build
	$(BUILD_DIR)/server/attnserve --model-repository models $(ARGS)

test: deps
	$(MAKE) build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

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

golden: deps deps-golden
	/usr/bin/python3 tests/golden/export_golden.py

demo-model:
	/usr/bin/python3 models/make_demo.py models/demo

clean:
	rm -rf $(BUILD_DIR)

# attnserve — build, test and benchmark entry points.
#   make deps    install missing Debian 12 packages (apt-get; as root or via sudo)
#   make build   configure and build everything (Release) into $(BUILD_DIR)
#   make run     deps + build + start attnserve on the embedded demo model
#                (gRPC :50051, metrics :9090; ARGS="--log-level debug" adds flags)
#   make test    deps + build + every ctest suite (what .ci/run calls)
#   make bench   deps + build + the core benchmark table (core_bench)
#   make bench-serve  deps + build + the serving benchmark (serve_bench)
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
  libspdlog-dev prometheus-cpp-dev libcli11-dev \
  python3-yaml python3-kubernetes python3-grpcio python3-protobuf
# kubectl for `kubectl kustomize` in the deploy tests: Debian's, unless a
# kubectl is already installed (e.g. the Google Cloud SDK's, whose package owns
# /usr/bin/kubectl too, so installing both would fail).
DEB_PACKAGES += $(if $(shell command -v kubectl 2>/dev/null),,kubernetes-client)
# Only for regenerating fixtures and the demo model.
DEB_PACKAGES_GOLDEN := python3-torch python3-numpy

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps deps-golden build run test bench bench-serve golden demo-model clean

all: build

deps:
	@PKGS="$(DEB_PACKAGES)" SUDO="$(SUDO)" sh tools/install-deps.sh

deps-golden:
	@PKGS="$(DEB_PACKAGES_GOLDEN)" SUDO="$(SUDO)" sh tools/install-deps.sh

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
	$(MAKE) build
	$(BUILD_DIR)/bench/core_bench --benchmark_min_time=0.5 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

bench-serve: deps
	$(MAKE) build
	$(BUILD_DIR)/bench/serve_bench --seconds 5

golden: deps deps-golden
	/usr/bin/python3 tests/golden/export_golden.py

demo-model:
	/usr/bin/python3 models/make_demo.py models/demo

clean:
	rm -rf $(BUILD_DIR)

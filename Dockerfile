# attnserve container image: multi-stage on Debian 12 (bookworm).
#   docker build -t attnserve .
#   docker run -p 50051:50051 -p 9090:9090 attnserve
# Configure with ATTNSERVE_* environment variables (see README, "Flags").

# --- Build stage: the -dev packages and the same CMake build as `make build`.
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake g++ make pkg-config \
      libdnnl-dev ocl-icd-opencl-dev libabsl-dev nlohmann-json3-dev \
      libgtest-dev libgmock-dev libbenchmark-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libspdlog-dev prometheus-cpp-dev libcli11-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release \
 && cmake --build build -j"$(nproc)" --target attnserve attnctl

# --- Runtime stage: only the shared libraries attnserve and attnctl link
# (ldd + dpkg -S on the built binaries; `make test` checks this list, see
# tests/image_runtime_libs_test.py), the binaries and the models.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libcivetweb1 libdnnl2 libfmt9 libgomp1 \
      libgrpc++1.51 libgrpc29 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
      libprotobuf32 libre2-9 libspdlog1.10 libssl3 ocl-icd-libopencl1 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin attnserve
COPY --from=build /src/build/server/attnserve /usr/local/bin/attnserve
COPY --from=build /src/build/client/attnctl /usr/local/bin/attnctl
COPY --from=build /src/models /opt/attnserve/models
ENV ATTNSERVE_MODEL_REPOSITORY=/opt/attnserve/models \
    ATTNSERVE_LOG_FORMAT=json
USER 10001
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/attnserve"]

# attnserve container image: multi-stage on Debian 12 (bookworm).
#   make image            (tools/image.sh: docker or podman, tags attnserve:VERSION and :latest)
#   docker build --build-arg REVISION=$(git rev-parse --short HEAD) -t attnserve .
#   docker run --rm -p 127.0.0.1:50051:50051 -p 127.0.0.1:9090:9090 attnserve
# Configure with ATTNSERVE_* environment variables (see README, "Flags").
# podman: build with --format docker, or the HEALTHCHECK is dropped (OCI images
# have none).

# --- Build stage: the -dev packages and the same CMake build as `make build`,
# only the two binaries (no tests, benchmarks, GoogleTest).
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake g++ make pkg-config \
      libdnnl-dev ocl-icd-opencl-dev libabsl-dev nlohmann-json3-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libspdlog-dev prometheus-cpp-dev libcli11-dev libjemalloc-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore lets only the sources of the binaries and the models in.
COPY . .
# Without tests, `all` is just the two binaries and their libraries, built in
# one parallel make (naming the two targets would build one after the other).
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DATTNSERVE_BUILD_TESTS=OFF \
 && cmake --build build -j"$(nproc)"
# The revision (the context has no .git) is stamped after the long compile, so
# a new revision alone recompiles one file.
ARG REVISION=unknown
RUN cmake -B build -DATTNSERVE_GIT_REVISION="$REVISION" \
 && cmake --build build -j"$(nproc)" \
 && strip --strip-unneeded build/server/attnserve build/client/attnctl

# --- Runtime stage: only the shared libraries attnserve and attnctl link (ldd
# inside the image finds every one: `make image-test`), the binaries, the models.
# libdnnl links libOpenCL.so.1 (readelf -d), hence ocl-icd-libopencl1.
# The dpkg excludes (what the real bookworm-slim has, which a debootstrap
# minbase lacks) keep docs, man pages and translations out.
FROM debian:bookworm-slim
RUN printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
      'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
      > /etc/dpkg/dpkg.cfg.d/attnserve-nodoc \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libcivetweb1 libdnnl2 libfmt9 libgomp1 \
      libgrpc++1.51 libgrpc29 libjemalloc2 libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
      libprotobuf32 libre2-9 libspdlog1.10 libssl3 ocl-icd-libopencl1 zlib1g \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old \
      /var/lib/dpkg/*-old /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 10001 attnserve \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin attnserve
COPY --from=build /src/models /opt/attnserve/models
COPY --from=build /src/build/client/attnctl /usr/local/bin/attnctl
COPY --from=build /src/build/server/attnserve /usr/local/bin/attnserve
ENV ATTNSERVE_MODEL_REPOSITORY=/opt/attnserve/models \
    ATTNSERVE_LOG_FORMAT=json
USER 10001:10001
EXPOSE 50051 9090
# docker/podman only (Kubernetes uses the Deployment's gRPC probes). attnctl
# calls 127.0.0.1:50051; set ATTNCTL_TARGET too when changing ATTNSERVE_PORT.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/attnctl", "--deadline-ms", "3000", "--retries", "0", "health"]
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="attnserve" \
      org.opencontainers.image.description="Multi-head self-attention over gRPC (oneDNN, dynamic batching)" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.source="$SOURCE"
ENTRYPOINT ["/usr/local/bin/attnserve"]

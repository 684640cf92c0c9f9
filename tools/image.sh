#!/bin/sh
# The container image: which engine builds and runs it, its base, the build.
#
#   tools/image.sh build    build attnserve:VERSION and attnserve:latest (make image)
#   tools/image.sh engine   print the engine command line that can run the built image,
#                           e.g. "podman --runtime runc" (the image test reads it);
#                           exit 77 when no container can start on this host
#   tools/image.sh run-args print the extra `run` arguments the engine needs here
#                           (podman: --ulimit values within this host's hard limits)
#
# Nothing is assumed about the host, everything is detected:
# - engine: docker when `docker info` answers (a docker client with no daemon
#   does not count), else podman, installed from Debian (podman runc) when
#   missing. ATTNSERVE_CONTAINER_ENGINE=docker|podman forces one.
# - OCI runtime (podman): its default when that can start a container, else
#   runc (crun fails on cgroup v1 hybrid hosts: "cgroups in hybrid mode not
#   supported").
# - rlimits (podman): podman asks for nofile 1048576 by default, which fails
#   ("error setting rlimit") where the host's hard limit is lower; we ask for
#   the host's hard limits (capped) instead.
# - base images: debian:bookworm and debian:bookworm-slim are used when present,
#   else pulled; when no registry answers, a Debian bookworm minbase made by
#   debootstrap from this host's apt mirror is imported under both names.
set -eu

cd "$(dirname "$0")/.."
IMAGE=${ATTNSERVE_IMAGE_NAME:-attnserve}
VERSION=$(sed -n 's/^project(attnserve VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
BASES="docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
PULL_TIMEOUT_S=${ATTNSERVE_PULL_TIMEOUT_S:-60}

log() { echo "image: $*" >&2; }

# The engine's name: docker or podman.
engine_name() {
  if [ -n "${ATTNSERVE_CONTAINER_ENGINE:-}" ]; then
    echo "$ATTNSERVE_CONTAINER_ENGINE"
  elif command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
    echo docker
  else
    if ! command -v podman >/dev/null 2>&1; then
      log "no docker daemon answers and podman is missing: installing podman runc"
      PKGS="podman runc" SUDO="$SUDO" sh tools/install-deps.sh >&2
    fi
    echo podman
  fi
}

# The smaller of this process's hard limit `name` (as /proc/self/limits
# spells it) and a cap.
hard_limit() {
  limit=$(awk -v name="$1" 'index($0, name) == 1 { print $(NF - 1) }' /proc/self/limits)
  case $limit in ''|*[!0-9]*) limit=$2 ;; esac
  [ "$limit" -le "$2" ] || limit=$2
  echo "$limit"
}

# Extra arguments podman's run and build need on this host; none for docker.
run_args() {
  [ "$1" = podman ] || return 0
  nofile=$(hard_limit "Max open files" 1048576)
  nproc=$(hard_limit "Max processes" 32768)
  echo "--ulimit nofile=$nofile:$nofile --ulimit nproc=$nproc:$nproc"
}

# "podman" or "podman --runtime runc": the default runtime when it can start
# `image` (running `command [args...]`), else runc (installed from Debian when
# missing) when that can. Fails, printing the engine's errors, when neither can.
engine_command() {
  engine=$1 image=$2 entrypoint=$3
  shift 3
  [ "$engine" = podman ] || { echo docker; return 0; }
  # shellcheck disable=SC2046  # run_args is a list of words
  if err=$(podman run --rm $(run_args podman) --network none --entrypoint "$entrypoint" \
             "$image" "$@" 2>&1 >/dev/null); then
    echo podman
    return 0
  fi
  log "podman's default OCI runtime cannot start a container: $err; trying runc"
  command -v runc >/dev/null 2>&1 || PKGS=runc SUDO="$SUDO" sh tools/install-deps.sh >&2
  # shellcheck disable=SC2046
  if err=$(podman --runtime runc run --rm $(run_args podman) --network none \
             --entrypoint "$entrypoint" "$image" "$@" 2>&1 >/dev/null); then
    echo "podman --runtime runc"
    return 0
  fi
  log "podman cannot start a container here, with runc either: $err"
  return 1
}

image_exists() {
  case $1 in
    podman) podman image exists "$2" ;;
    *) docker image inspect "$2" >/dev/null 2>&1 ;;
  esac
}

# The URI of this host's apt source for Debian `suite` (one-line .list files
# or deb822 .sources files); empty when there is none.
apt_mirror() {
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && awk -v s="$1" '$1 == "deb" && $3 == s { print $2; exit }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && awk -v s="$1" '
      /^URIs:/ { uri = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) hit = 1 }
      /^$/ { if (hit) { print uri; exit } uri = ""; hit = 0 }
      END { if (hit) print uri }' "$f"
  done | head -n 1
}

# What debian:*-slim leaves out (debuerreotype's slimify list), as dpkg
# path filters: docs but their copyright, man and info pages, translations.
SLIM_DPKG_FILTERS='path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*'

# Removes what SLIM_DPKG_FILTERS excludes from the root filesystem `root`,
# and installs the filters for packages installed later.
slimify() {
  echo "$SLIM_DPKG_FILTERS" | $SUDO tee "$1/etc/dpkg/dpkg.cfg.d/docker" >/dev/null
  $SUDO find "$1/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  $SUDO find "$1/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias \
    -exec rm -rf {} +
  for d in groff info linda lintian man; do $SUDO rm -rf "${1:?}/usr/share/$d"; done
}

# `engine import`s the root filesystem `root` as image `name`.
import_root() {
  log "importing $3 as $2"
  $SUDO tar -C "$3" --numeric-owner -c . | $1 import --change 'CMD ["/bin/bash"]' - "$2" >&2
}

# Makes the base images named in `names` (debian:bookworm and/or
# debian:bookworm-slim) from one debootstrap minbase of bookworm from this
# host's apt mirror, with the apt sources the build stages then use (the same
# mirror).
make_local_base() {
  engine=$1 names=$2
  mirror=$(apt_mirror bookworm)
  mirror=${mirror:-http://deb.debian.org/debian}
  security=$(apt_mirror bookworm-security)
  command -v debootstrap >/dev/null 2>&1 || PKGS=debootstrap SUDO="$SUDO" sh tools/install-deps.sh >&2
  root=$(mktemp -d /var/tmp/attnserve-base.XXXXXX)
  trap '$SUDO rm -rf "$root"' EXIT
  log "no registry answers: debootstrap --variant=minbase bookworm from $mirror"
  $SUDO debootstrap --variant=minbase bookworm "$root" "$mirror" >&2
  {
    echo "deb $mirror bookworm main"
    echo "deb $mirror bookworm-updates main"
    [ -z "$security" ] || echo "deb $security bookworm-security main"
  } | $SUDO tee "$root/etc/apt/sources.list" >/dev/null
  $SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  case $names in *"debian:bookworm "* | *"debian:bookworm") import_root "$engine" \
    docker.io/library/debian:bookworm "$root" ;; esac
  slimify "$root"
  case $names in *bookworm-slim*) import_root "$engine" \
    docker.io/library/debian:bookworm-slim "$root" ;; esac
}

# Every base image present: pulled, or made locally when no pull works.
ensure_bases() {
  engine=$1 missing=""
  for name in $BASES; do
    image_exists "$engine" "$name" && continue
    log "pulling $name"
    timeout "$PULL_TIMEOUT_S" "$engine" pull "$name" >&2 || missing="$missing $name"
  done
  [ -z "$missing" ] || make_local_base "$engine" "$missing"
}

revision() {
  rev=$(git rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  git diff --quiet HEAD -- 2>/dev/null || rev="$rev-dirty"
  echo "$rev"
}

# Where the source lives, for the image's org.opencontainers.image.source:
# ATTNSERVE_SOURCE_URL, else the git remote "origin", else "unknown".
source_url() {
  echo "${ATTNSERVE_SOURCE_URL:-$(git config --get remote.origin.url 2>/dev/null || echo unknown)}"
}

build() {
  engine=$(engine_name)
  ensure_bases "$engine"
  cmd=$(engine_command "$engine" docker.io/library/debian:bookworm-slim true)
  rev=$(revision)
  log "building $IMAGE:$VERSION (revision $rev) with $cmd"
  start=$(date +%s)
  # podman writes OCI images by default, which have no HEALTHCHECK.
  format=$([ "$engine" = podman ] && echo "--format docker" || true)
  # shellcheck disable=SC2046,SC2086  # word lists
  $cmd build $format $(run_args "$engine") --network host \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$rev" --build-arg SOURCE="$(source_url)" \
    -t "$IMAGE:$VERSION" -t "$IMAGE:latest" -f Dockerfile .
  size=$($engine image inspect --format '{{.Size}}' "$IMAGE:$VERSION")
  base=$($engine image inspect --format '{{.Size}}' docker.io/library/debian:bookworm-slim)
  log "built $IMAGE:$VERSION and $IMAGE:latest in $(($(date +%s) - start)) s:" \
      "$((size / 1000000)) MB, of which the base debian:bookworm-slim $((base / 1000000)) MB"
}

case ${1:-} in
  build) build ;;
  engine)
    engine=$(engine_name)
    image_exists "$engine" "$IMAGE:$VERSION" ||
      { log "no image $IMAGE:$VERSION: run 'make image' first"; exit 1; }
    engine_command "$engine" "$IMAGE:$VERSION" /bin/true || exit 77 ;;
  run-args) run_args "$(engine_name)" ;;
  version) echo "$VERSION" ;;
  *) echo "usage: $0 build|engine|run-args|version" >&2; exit 2 ;;
esac

#include "server/openmp_defaults.h"

#include <limits.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <string_view>

namespace attnserve::server {
namespace {

// Set, with GOMP_SPINCOUNT, by the run that applied the default, so that the
// next one can say where the value came from. Not an ATTNSERVE_* variable:
// those are flags.
constexpr char kAppliedMarker[] = "ATTN_OPENMP_DEFAULT_APPLIED";

}  // namespace

void ApplyOpenMpDefaults(char** argv) {
  if (std::getenv("GOMP_SPINCOUNT") != nullptr || std::getenv("OMP_WAIT_POLICY") != nullptr) {
    return;
  }
  // The binary's own path, so that the process keeps its name (the kernel
  // names a process after the file it executes: "exe" for /proc/self/exe,
  // which `ps`, `top` and the thread names would then show).
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return;  // no /proc: run on libgomp's default
  path[n] = '\0';
  const std::string_view exe(path, n);
  const std::string_view name = exe.substr(exe.rfind('/') + 1);
  // Started through the dynamic loader (`ld-linux-x86-64.so.2 attnserve ...`):
  // /proc/self/exe is the loader, which would take the first flag for the
  // program. Run on libgomp's default rather than guess.
  if (name.starts_with("ld-linux") || name.starts_with("ld.so")) return;
  if (setenv("GOMP_SPINCOUNT", kDefaultGompSpinCount, 1) != 0 ||
      setenv(kAppliedMarker, "1", 1) != 0) {
    return;
  }
  if (!exe.ends_with(" (deleted)")) execv(path, argv);  // else replaced on disk since
  execv("/proc/self/exe", argv);
  // Still here: no permission. Run on libgomp's default.
  unsetenv("GOMP_SPINCOUNT");
  unsetenv(kAppliedMarker);
}

std::string OpenMpWaitDescription() {
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  if (spin != nullptr && std::getenv(kAppliedMarker) != nullptr) {
    return std::string("GOMP_SPINCOUNT=") + spin + " (attnserve's default)";
  }
  std::string found;
  if (spin != nullptr) found = std::string("GOMP_SPINCOUNT=") + spin;
  if (policy != nullptr) {
    found += (found.empty() ? "" : " ") + std::string("OMP_WAIT_POLICY=") + policy;
  }
  return found.empty() ? "libgomp's default (300000 spins; attnserve's could not be applied)"
                       : found;
}

}  // namespace attnserve::server

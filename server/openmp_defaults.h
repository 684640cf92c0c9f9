// The OpenMP wait policy the attnserve binary runs with.
//
// Between parallel regions libgomp's idle threads spin before they sleep:
// by default 300,000 spins (about 3 ms), after every region. Inside a batch
// the engine's regions follow one another within microseconds, so a short
// spin saves a kernel wake-up per region; between batches (with one request
// in flight the engine is idle about half the time) a long spin burns a core
// that gRPC's threads and the clients need. attnserve therefore runs with
// GOMP_SPINCOUNT=3000 unless the environment sets GOMP_SPINCOUNT or
// OMP_WAIT_POLICY (measured on the demo model, L = 128: README, "Serving
// overhead"). libgomp reads these once, when it is loaded, before main() —
// and glibc resets the environment after .preinit_array functions run — so
// the binary sets the variable and executes itself again, once, first thing
// in main(). Setting GOMP_SPINCOUNT or OMP_WAIT_POLICY skips that second
// start (e.g. under valgrind, whose tool it would escape); a binary started
// through the dynamic loader runs on libgomp's default. Not thread-safe:
// call before any thread starts.
#ifndef ATTNSERVE_SERVER_OPENMP_DEFAULTS_H_
#define ATTNSERVE_SERVER_OPENMP_DEFAULTS_H_

#include <string>

namespace attnserve::server {

// attnserve's default for GOMP_SPINCOUNT.
inline constexpr char kDefaultGompSpinCount[] = "3000";

// When neither GOMP_SPINCOUNT nor OMP_WAIT_POLICY is set: sets
// GOMP_SPINCOUNT to the default and replaces this process with a new run of
// this binary (its path, as /proc/self/exe names it) with `argv`: the same
// PID, name, signals and descriptors. Returns
// when nothing needs doing, or when that execution failed (libgomp's default
// then stays; OpenMpWaitDescription says so).
void ApplyOpenMpDefaults(char** argv);

// "GOMP_SPINCOUNT=3000 (attnserve's default)", the operator's setting
// ("GOMP_SPINCOUNT=N", "OMP_WAIT_POLICY=..."), or libgomp's default.
std::string OpenMpWaitDescription();

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_OPENMP_DEFAULTS_H_

// The version and source revision this attnserve was built from: the
// project VERSION of CMakeLists.txt and `git rev-parse --short HEAD` at build
// time ("-dirty" when tracked files differed from it; "unknown" without git,
// e.g. in a container build whose context has no .git, unless the build sets
// -DATTNSERVE_GIT_REVISION). Constants; thread-safe.
#ifndef ATTNSERVE_SERVER_VERSION_H_
#define ATTNSERVE_SERVER_VERSION_H_

namespace attnserve::server {

// "0.1.0".
const char* Version();
// "1a2b3c4", "1a2b3c4-dirty" or "unknown".
const char* GitRevision();
// "attnserve 0.1.0 (git 1a2b3c4)": what --version prints and startup logs.
const char* VersionString();

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_VERSION_H_

#include "server/version.h"

// Generated at build time by server/version.cmake (rewritten only when the
// revision changes, so a new commit recompiles this file alone).
#include "attnserve_version.h"

namespace attnserve::server {

const char* Version() { return ATTNSERVE_VERSION; }
const char* GitRevision() { return ATTNSERVE_GIT_REVISION; }
const char* VersionString() {
  return "attnserve " ATTNSERVE_VERSION " (git " ATTNSERVE_GIT_REVISION ")";
}

}  // namespace attnserve::server

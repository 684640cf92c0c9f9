#include "client/token.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <openssl/rand.h>
#include <openssl/sha.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace attnserve::client {

absl::StatusOr<std::string> GenerateToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    return absl::InternalError("OpenSSL RAND_bytes failed: no random token could be made");
  }
  std::string token = absl::StrCat(
      kTokenPrefix,
      absl::WebSafeBase64Escape(absl::string_view(reinterpret_cast<const char*>(bytes), sizeof bytes)));
  OPENSSL_cleanse(bytes, sizeof bytes);
  return token;
}

std::string TokenSha256Hex(const std::string& token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof digest));
}

absl::Status ValidatePrincipal(const std::string& principal) {
  if (principal.empty() || principal.size() > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a principal must be 1 to 256 characters; was ", principal.size()));
  }
  if (principal[0] == '#') {
    return absl::InvalidArgumentError(
        absl::StrCat("principal '", principal, "' starts with '#', which marks a comment line"));
  }
  for (unsigned char c : principal) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "principal '", principal,
          "' holds whitespace, a control or a non-ASCII character; use visible ASCII"));
    }
  }
  return absl::OkStatus();
}

std::string TokenFileLine(const std::string& principal, const std::string& token) {
  return absl::StrCat(principal, " ", TokenSha256Hex(token));
}

absl::Status AppendTokenLine(const std::string& path, const std::string& principal,
                             const std::string& token) {
  const int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot open ", path, " for appending: ", std::strerror(errno)));
  }
  const std::string line = TokenFileLine(principal, token) + "\n";
  const ssize_t written = write(fd, line.data(), line.size());
  const int write_errno = errno;
  const bool closed = close(fd) == 0;
  if (written != static_cast<ssize_t>(line.size()) || !closed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot write ", path, ": ", written < 0 ? std::strerror(write_errno) : "short write"));
  }
  return absl::OkStatus();
}

}  // namespace attnserve::client

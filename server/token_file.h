// TokenSet: the bearer tokens of --auth-tokens, parsed from a file of lines
// "PRINCIPAL SHA256_HEX" (only hashes are on disk), and the constant-time
// check of a presented token. An immutable value: thread-safe.
//
// File format: one entry per line, the principal name (no spaces) and the
// lower- or upper-case hex SHA-256 of the token, separated by blanks; blank
// lines and lines starting with '#' are ignored. A hash may appear once; a
// principal may have several tokens (rotation: add the new, then remove the
// old). `attnctl token NAME` prints a fresh token and its line.
#ifndef ATTNSERVE_SERVER_TOKEN_FILE_H_
#define ATTNSERVE_SERVER_TOKEN_FILE_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace attnserve::server {

class TokenSet {
 public:
  using Digest = std::array<uint8_t, 32>;

  // Parses the file's text. `source` names it in errors:
  // INVALID_ARGUMENT "SOURCE:LINE: expected 'PRINCIPAL SHA256_HEX'...".
  // Error messages never contain a hash or token.
  static absl::StatusOr<TokenSet> Parse(std::string_view text, const std::string& source);

  // The principal whose token `token` is, or nullopt. Hashes `token` with
  // SHA-256 and compares the digest with every entry in constant time (no
  // early exit), so the time taken does not depend on which entry matched.
  std::optional<std::string> Authenticate(std::string_view token) const;

  size_t size() const { return entries_.size(); }

  // SHA-256 of `data`.
  static Digest Sha256(std::string_view data);

 private:
  struct Entry {
    std::string principal;
    Digest digest;
  };
  std::vector<Entry> entries_;
};

}  // namespace attnserve::server

#endif  // ATTNSERVE_SERVER_TOKEN_FILE_H_

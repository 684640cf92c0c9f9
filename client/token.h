// Bearer tokens for attnserve's --auth-tokens: making a random token and the
// line the server's token file holds for it (`PRINCIPAL SHA256HEX`, only the
// hash on disk, as htpasswd keeps only hashes). Thread-safe: free functions
// without shared state.
#ifndef ATTNSERVE_CLIENT_TOKEN_H_
#define ATTNSERVE_CLIENT_TOKEN_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnserve::client {

// What every generated token starts with: secret scanners can recognise a
// leaked token, and a token never starts with '-' (a command line would take
// it for a flag).
inline constexpr char kTokenPrefix[] = "attn_";

// A new token: kTokenPrefix, then 32 bytes from OpenSSL's RAND_bytes (the
// system's CSPRNG) in base64url without padding (43 characters of A-Z a-z
// 0-9 - _): 48 characters that can be sent as `authorization: Bearer TOKEN`
// and pasted anywhere unquoted. INTERNAL if the random generator fails.
absl::StatusOr<std::string> GenerateToken();

// The lower-case hex SHA-256 of the token's bytes as sent (the text after
// "Bearer "): what the server's token file holds and compares against.
std::string TokenSha256Hex(const std::string& token);

// OK when `principal` can name a token's owner in the token file and in an
// authorization policy: 1 to 256 visible ASCII characters, no whitespace,
// not starting with '#' (a comment line). INVALID_ARGUMENT naming the rule
// otherwise.
absl::Status ValidatePrincipal(const std::string& principal);

// "PRINCIPAL SHA256HEX" for `token` (no newline).
std::string TokenFileLine(const std::string& principal, const std::string& token);

// Appends TokenFileLine(principal, token) and a newline to `path`, creating
// it with mode 0600 (only its owner may read it) when it does not exist.
// INVALID_ARGUMENT naming the file when it cannot be opened or written.
absl::Status AppendTokenLine(const std::string& path, const std::string& principal,
                             const std::string& token);

}  // namespace attnserve::client

#endif  // ATTNSERVE_CLIENT_TOKEN_H_

#include "server/token_file.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <sstream>

#include "absl/strings/str_cat.h"

namespace attnserve::server {
namespace {

// -1 for a character that is not a hex digit.
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool ParseDigest(std::string_view hex, TokenSet::Digest* digest) {
  if (hex.size() != 2 * digest->size()) return false;
  for (size_t i = 0; i < digest->size(); ++i) {
    const int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*digest)[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

}  // namespace

TokenSet::Digest TokenSet::Sha256(std::string_view data) {
  Digest digest{};
  unsigned int length = 0;
  // EVP_Digest with SHA-256 cannot fail for in-memory input short of
  // allocation failure; a zero digest then matches no entry.
  EVP_Digest(data.data(), data.size(), digest.data(), &length, EVP_sha256(), nullptr);
  return digest;
}

absl::StatusOr<TokenSet> TokenSet::Parse(std::string_view text, const std::string& source) {
  TokenSet set;
  std::istringstream in{std::string(text)};
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    std::istringstream fields(line);
    std::string principal, hex, extra;
    if (!(fields >> principal) || principal[0] == '#') continue;  // blank or comment
    const auto where = absl::StrCat(source, ":", number, ": ");
    if (!(fields >> hex) || (fields >> extra)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "expected 'PRINCIPAL SHA256_HEX' (two fields; "
                              "'attnctl token NAME' prints such a line)"));
    }
    Entry entry{principal, {}};
    if (!ParseDigest(hex, &entry.digest)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "the second field must be 64 hex digits (the SHA-256 of the token, "
                 "never the token itself); principal ", principal));
    }
    for (const Entry& e : set.entries_) {
      if (CRYPTO_memcmp(e.digest.data(), entry.digest.data(), entry.digest.size()) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, "this hash is already listed for principal ", e.principal,
            "; each token belongs to one principal"));
      }
    }
    set.entries_.push_back(std::move(entry));
  }
  return set;
}

std::optional<std::string> TokenSet::Authenticate(std::string_view token) const {
  const Digest digest = Sha256(token);
  const Entry* match = nullptr;
  for (const Entry& e : entries_) {
    // Every entry is compared; the branch below only records the result.
    const bool equal = CRYPTO_memcmp(e.digest.data(), digest.data(), digest.size()) == 0;
    if (equal) match = &e;
  }
  if (match == nullptr) return std::nullopt;
  return match->principal;
}

}  // namespace attnserve::server

// TokenSet: the --auth-tokens file format and the token check.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/token_file.h"

namespace attnserve::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Hex(const TokenSet::Digest& d) {
  std::string s;
  for (uint8_t b : d) {
    s += "0123456789abcdef"[b >> 4];
    s += "0123456789abcdef"[b & 15];
  }
  return s;
}

TEST(TokenSetTest, Sha256MatchesTheKnownVector) {
  EXPECT_EQ(Hex(TokenSet::Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(TokenSetTest, AuthenticatesByHashWithCommentsBlanksAndUpperCaseHex) {
  std::string upper = Hex(TokenSet::Sha256("token-b"));
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  const std::string text = "# comment\n\n  alice " + Hex(TokenSet::Sha256("token-a")) +
                           "\t\nbob " + upper + "\nalice " + Hex(TokenSet::Sha256("token-a2")) +
                           "\n   # indented comment\n";
  auto set = TokenSet::Parse(text, "tokens.txt");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->size(), 3u);
  EXPECT_EQ(set->Authenticate("token-a"), "alice");
  EXPECT_EQ(set->Authenticate("token-a2"), "alice");
  EXPECT_EQ(set->Authenticate("token-b"), "bob");
  EXPECT_EQ(set->Authenticate("token-c"), std::nullopt);
  EXPECT_EQ(set->Authenticate(""), std::nullopt);
  EXPECT_EQ(set->Authenticate(Hex(TokenSet::Sha256("token-a"))), std::nullopt);  // hash is not a token
  auto empty = TokenSet::Parse("", "empty");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->Authenticate("anything"), std::nullopt);
}

TEST(TokenSetTest, ErrorsNameFileAndLineAndNeverEchoTheSecretField) {
  const std::string good = "a " + Hex(TokenSet::Sha256("x")) + "\n";
  struct Case {
    std::string text;
    std::string expected;
  };
  const Case cases[] = {
      {good + "b\n", "tokens:2: expected 'PRINCIPAL SHA256_HEX'"},
      {good + "b " + Hex(TokenSet::Sha256("y")) + " extra\n", "tokens:2: expected"},
      {"# c\nb my-plain-secret-token\n", "tokens:2: the second field must be 64 hex digits"},
      {"b " + std::string(63, 'a') + "\n", "tokens:1: the second field must be 64 hex"},
      {"b " + std::string(63, 'a') + "g\n", "tokens:1: the second field must be 64 hex"},
      {good + "c " + Hex(TokenSet::Sha256("x")) + "\n", "tokens:2: this hash is already listed"},
  };
  for (const Case& c : cases) {
    auto set = TokenSet::Parse(c.text, "tokens");
    ASSERT_FALSE(set.ok()) << c.text;
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(set.status().message()), HasSubstr(c.expected));
    EXPECT_THAT(std::string(set.status().message()), Not(HasSubstr("my-plain-secret-token")));
    EXPECT_THAT(std::string(set.status().message()), Not(HasSubstr("aaaaaaaa")));
  }
}

}  // namespace
}  // namespace attnserve::server

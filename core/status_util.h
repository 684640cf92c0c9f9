// Message building for core's errors. Internal to core/; header-only pure
// functions, safe from any thread.
//
// core uses absl::StrCat for messages of strings and numbers. Cat is for
// messages with a std::string_view argument (core's headers use them):
// Debian's Abseil is built with its own absl::string_view, which
// std::string_view does not convert to, so StrCat does not take one; a
// stream takes both.
#ifndef ATTNSERVE_CORE_STATUS_UTIL_H_
#define ATTNSERVE_CORE_STATUS_UTIL_H_

#include <sstream>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace attnserve::core {

// Concatenates anything with an operator<<.
template <typename... Args>
std::string Cat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

// "a, b, c" for Join({a, b, c}, ", ").
template <typename Container>
std::string Join(const Container& items, std::string_view separator) {
  std::ostringstream out;
  std::string_view sep;
  for (const auto& item : items) {
    out << sep << item;
    sep = separator;
  }
  return out.str();
}

// INVALID_ARGUMENT "<source>: <message>"; source is the file at fault.
inline absl::Status Invalid(std::string_view source, std::string_view message) {
  return absl::InvalidArgumentError(Cat(source, ": ", message));
}

}  // namespace attnserve::core

#endif  // ATTNSERVE_CORE_STATUS_UTIL_H_

#include "server/authz_policy.h"

#include <nlohmann/json.hpp>

#include <set>

#include "absl/strings/str_cat.h"

namespace attnserve::server {
namespace {

using Json = nlohmann::json;

absl::Status Error(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

// Rejects keys of `object` not in `known`: gRPC's format has more fields
// than this subset, and silently dropping one could widen access.
absl::Status OnlyKnownKeys(const Json& object, const std::set<std::string>& known,
                           const std::string& where) {
  for (const auto& [key, value] : object.items()) {
    if (known.count(key) == 0) {
      std::string list;
      for (const std::string& k : known) absl::StrAppend(&list, list.empty() ? "" : ", ", k);
      return Error(where, absl::StrCat("unsupported field '", key, "' (supported: ", list, ")"));
    }
  }
  return absl::OkStatus();
}

// `object[key]`, which must be a non-empty array of strings, as patterns.
absl::Status ParsePatterns(const Json& object, const std::string& key, const std::string& where,
                           std::vector<StringPattern>* out) {
  if (!object.contains(key)) return absl::OkStatus();
  const Json& list = object[key];
  const std::string at = absl::StrCat(where, ".", key);
  if (!list.is_array() || list.empty()) {
    return Error(at, "must be a non-empty array of strings (omit it to match everything)");
  }
  for (size_t i = 0; i < list.size(); ++i) {
    if (!list[i].is_string() || list[i].get<std::string>().empty()) {
      return Error(absl::StrCat(at, "[", i, "]"), "must be a non-empty string");
    }
    out->emplace_back(list[i].get<std::string>());
  }
  return absl::OkStatus();
}

// `object[key]`, when present, must be an object with only `known` keys.
absl::StatusOr<const Json*> SubObject(const Json& object, const std::string& key,
                                      const std::set<std::string>& known,
                                      const std::string& where) {
  if (!object.contains(key)) return nullptr;
  const Json& sub = object[key];
  const std::string at = absl::StrCat(where, ".", key);
  if (!sub.is_object()) return Error(at, "must be an object");
  if (absl::Status s = OnlyKnownKeys(sub, known, at); !s.ok()) return s;
  return &sub;
}

}  // namespace

StringPattern::StringPattern(std::string pattern) {
  if (pattern == "*") {
    kind_ = Kind::kAny;
  } else if (pattern.size() > 1 && pattern.back() == '*') {
    kind_ = Kind::kPrefix;
    pattern.pop_back();
  } else if (pattern.size() > 1 && pattern.front() == '*') {
    kind_ = Kind::kSuffix;
    pattern.erase(0, 1);
  } else {
    kind_ = Kind::kExact;
  }
  text_ = std::move(pattern);
}

bool StringPattern::Matches(std::string_view value) const {
  switch (kind_) {
    case Kind::kAny:
      return true;
    case Kind::kPrefix:
      return value.starts_with(text_);
    case Kind::kSuffix:
      return value.ends_with(text_);
    case Kind::kExact:
      return value == text_;
  }
  return false;
}

bool AuthzPolicy::Rule::Matches(std::string_view path,
                                std::span<const std::string> callers) const {
  bool path_ok = paths.empty();
  for (const StringPattern& p : paths) path_ok = path_ok || p.Matches(path);
  if (!path_ok) return false;
  if (principals.empty()) return true;  // no source condition: anyone
  for (const StringPattern& p : principals) {
    for (const std::string& caller : callers) {
      if (p.Matches(caller)) return true;  // "*" needs at least one principal
    }
  }
  return false;
}

absl::StatusOr<AuthzPolicy> AuthzPolicy::Parse(std::string_view json, const std::string& source) {
  const Json root = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Error(source, "not valid JSON");
  if (!root.is_object()) return Error(source, "the policy must be a JSON object");
  if (absl::Status s = OnlyKnownKeys(root, {"name", "allow_rules", "deny_rules"}, source); !s.ok())
    return s;
  AuthzPolicy policy;
  if (!root.contains("name") || !root["name"].is_string() ||
      root["name"].get<std::string>().empty()) {
    return Error(source, "'name' (a non-empty string) is required");
  }
  policy.name_ = root["name"].get<std::string>();
  if (!root.contains("allow_rules")) return Error(source, "'allow_rules' is required");
  for (const char* kind : {"deny_rules", "allow_rules"}) {
    if (!root.contains(kind)) continue;
    const Json& rules = root[kind];
    if (!rules.is_array()) return Error(absl::StrCat(source, ": ", kind), "must be an array");
    auto& out = std::string_view(kind) == "deny_rules" ? policy.deny_rules_ : policy.allow_rules_;
    for (size_t i = 0; i < rules.size(); ++i) {
      const std::string at = absl::StrCat(source, ": ", kind, "[", i, "]");
      const Json& r = rules[i];
      if (!r.is_object()) return Error(at, "must be an object");
      if (absl::Status s = OnlyKnownKeys(r, {"name", "source", "request"}, at); !s.ok()) return s;
      if (!r.contains("name") || !r["name"].is_string() || r["name"].get<std::string>().empty()) {
        return Error(at, "'name' (a non-empty string) is required");
      }
      Rule rule{r["name"].get<std::string>(), {}, {}};
      auto src = SubObject(r, "source", {"principals"}, at);
      if (!src.ok()) return src.status();
      if (*src != nullptr) {
        if (absl::Status s = ParsePatterns(**src, "principals", at + ".source", &rule.principals);
            !s.ok())
          return s;
      }
      auto req = SubObject(r, "request", {"paths"}, at);
      if (!req.ok()) return req.status();
      if (*req != nullptr) {
        if (absl::Status s = ParsePatterns(**req, "paths", at + ".request", &rule.paths); !s.ok())
          return s;
      }
      out.push_back(std::move(rule));
    }
  }
  return policy;
}

AuthzDecision AuthzPolicy::Evaluate(std::string_view path,
                                    std::span<const std::string> principals) const {
  for (const Rule& rule : deny_rules_) {
    if (rule.Matches(path, principals)) return {false, rule.name};
  }
  for (const Rule& rule : allow_rules_) {
    if (rule.Matches(path, principals)) return {true, rule.name};
  }
  return {false, ""};
}

}  // namespace attnserve::server

#include "broker/core/acl.h"

#include "broker/core/topic_tree.h"
#include "broker/mqtt/topic.h"

namespace fmq {
namespace {

// Substitutes %c, %u and %g (one group of the device); fails when a value
// could widen the rule (it holds a level separator or a wildcard), as
// mosquitto does.
bool Expand(std::string_view pattern, std::string_view client_id, std::string_view username, std::string* out,
            std::string_view group = {}) {
  out->clear();
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '%' && i + 1 < pattern.size() &&
        (pattern[i + 1] == 'c' || pattern[i + 1] == 'u' || pattern[i + 1] == 'g')) {
      std::string_view v = pattern[i + 1] == 'c' ? client_id : pattern[i + 1] == 'u' ? username : group;
      if (v.empty() || v.find_first_of("/+#") != std::string_view::npos) return false;
      out->append(v);
      ++i;
    } else {
      out->push_back(pattern[i]);
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<AclRule> ParseAclRule(std::string_view text) {
  size_t sp = text.find(' ');
  if (sp == std::string_view::npos)
    return absl::InvalidArgumentError("ACL rule '" + std::string(text) + "' is not '<access> <filter>'");
  std::string_view access = text.substr(0, sp);
  std::string_view pattern = text.substr(sp + 1);
  while (!pattern.empty() && pattern.front() == ' ') pattern.remove_prefix(1);
  AclRule r;
  if (access == "read")
    r.read = true;
  else if (access == "write")
    r.write = true;
  else if (access == "readwrite")
    r.read = r.write = true;
  else if (access == "deny")
    r.deny = true;
  else
    return absl::InvalidArgumentError("ACL access '" + std::string(access) + "' is not read, write, readwrite or deny");
  std::string probe;
  if (!Expand(pattern, "c", "u", &probe, "g") || !mqtt::ValidateTopicFilter(probe, {}).ok() || probe[0] == '$') {
    return absl::InvalidArgumentError("ACL pattern '" + std::string(pattern) + "' is not a valid topic filter");
  }
  r.pattern.assign(pattern);
  return r;
}

bool FilterCovers(std::string_view pattern, std::string_view filter) {
  std::vector<std::string_view> p, f;
  SplitLevels(pattern, &p);
  SplitLevels(filter, &f);
  for (size_t i = 0; i < f.size(); ++i) {
    if (i >= p.size()) return false;
    if (p[i] == "#") return true;
    if (f[i] == "#") return false;  // only '#' covers '#'
    if (p[i] == "+") continue;      // covers any one level, '+' included
    if (f[i] == "+" || p[i] != f[i]) return false;
  }
  // "a/#" also covers "a" itself.
  return f.size() == p.size() || (f.size() + 1 == p.size() && p.back() == "#");
}

AclPolicy::AclPolicy() {
  device_rules_.push_back(*ParseAclRule("readwrite devices/%c/#"));
  device_rules_.push_back(*ParseAclRule("read groups/%g/#"));
  anonymous_rules_.push_back(*ParseAclRule("readwrite #"));
}

template <class F>
bool AclPolicy::Any(const PeerIdentity* who, std::string_view client_id, std::string_view username, bool write,
                    bool sub, F&& test) const {
  if (who != nullptr && !who->device) return true;  // operators: the whole tenant tree
  std::string expanded;
  // Patterns one rule stands for: itself, or one per group of the device (%g).
  auto each = [&](const AclRule& r, auto&& fn) {
    if (r.pattern.find("%g") != std::string::npos) {
      if (who == nullptr) return false;
      for (const std::string& g : who->groups) {
        if (Expand(r.pattern, client_id, username, &expanded, g) && fn(expanded)) return true;
      }
      return false;
    }
    return Expand(r.pattern, client_id, username, &expanded) && fn(expanded);
  };
  auto check = [&](const std::vector<AclRule>& rules) {
    for (const AclRule& r : rules) {
      if (!r.deny) continue;
      // A publish is denied on a match; a subscription when its filter lies
      // inside the denied area (so a denied topic is never published, and
      // a wider filter never receives it).
      if (each(r, [&](const std::string& p) { return sub ? FilterCovers(p, test.target) : test(p); })) return -1;
    }
    for (const AclRule& r : rules) {
      if (r.deny || (write ? !r.write : !r.read)) continue;
      if (each(r, test)) return 1;
    }
    return 0;
  };
  if (who == nullptr) return check(anonymous_rules_) == 1;
  const int d = check(device_rules_);
  if (d != 0) return d == 1;
  auto it = tenant_rules_.find(who->tenant);
  return it != tenant_rules_.end() && check(it->second) == 1;
}

namespace {
// The test an allowing rule's pattern must pass, with the client's topic
// or filter (deny rules look at it themselves).
struct Matches {
  std::string_view target;
  bool operator()(const std::string& pattern) const { return mqtt::TopicMatches(pattern, target); }
};
struct Covers {
  std::string_view target;
  bool operator()(const std::string& pattern) const { return FilterCovers(pattern, target); }
};
}  // namespace

bool AclPolicy::CanPublish(const PeerIdentity* who, std::string_view client_id, std::string_view username,
                           std::string_view topic) const {
  return Any(who, client_id, username, true, false, Matches{topic});
}

bool AclPolicy::CanSubscribe(const PeerIdentity* who, std::string_view client_id, std::string_view username,
                             std::string_view filter) const {
  return Any(who, client_id, username, false, true, Covers{filter});
}

}  // namespace fmq

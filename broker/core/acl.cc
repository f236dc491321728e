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
  if (sp == std::string_view::npos) return absl::InvalidArgumentError("ACL rule '" + std::string(text) + "' is not '<access> <filter>'");
  std::string_view access = text.substr(0, sp);
  std::string_view pattern = text.substr(sp + 1);
  while (!pattern.empty() && pattern.front() == ' ') pattern.remove_prefix(1);
  AclRule r;
  if (access == "read") r.read = true;
  else if (access == "write") r.write = true;
  else if (access == "readwrite") r.read = r.write = true;
  else return absl::InvalidArgumentError("ACL access '" + std::string(access) + "' is not read, write or readwrite");
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
}

template <class F>
bool AclPolicy::Any(const PeerIdentity& who, std::string_view client_id, std::string_view username, bool write,
                    F&& test) const {
  if (!who.device) return true;  // operators: the whole tenant tree
  std::string expanded;
  auto check = [&](const std::vector<AclRule>& rules) {
    for (const AclRule& r : rules) {
      if (write ? !r.write : !r.read) continue;
      if (r.pattern.find("%g") != std::string::npos) {
        for (const std::string& g : who.groups) {  // one rule per group of the device
          if (Expand(r.pattern, client_id, username, &expanded, g) && test(expanded)) return true;
        }
        continue;
      }
      if (Expand(r.pattern, client_id, username, &expanded) && test(expanded)) return true;
    }
    return false;
  };
  if (check(device_rules_)) return true;
  auto it = tenant_rules_.find(who.tenant);
  return it != tenant_rules_.end() && check(it->second);
}

bool AclPolicy::CanPublish(const PeerIdentity& who, std::string_view client_id, std::string_view username,
                           std::string_view topic) const {
  return Any(who, client_id, username, true,
             [&](const std::string& pattern) { return mqtt::TopicMatches(pattern, topic); });
}

bool AclPolicy::CanSubscribe(const PeerIdentity& who, std::string_view client_id, std::string_view username,
                             std::string_view filter) const {
  return Any(who, client_id, username, false,
             [&](const std::string& pattern) { return FilterCovers(pattern, filter); });
}

}  // namespace fmq

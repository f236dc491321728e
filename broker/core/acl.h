// Topic access control for clients with a certificate identity, in the
// spirit of mosquitto's pattern ACLs: rules "read|write|readwrite <filter>"
// where %c is the client id, %u the user name and %g each of the device's
// groups (from the registry at CONNECT, updated live by device.set_groups,
// which also drops subscriptions the change revokes). Operators may use their
// whole tenant tree (tenant isolation itself is the mount point, see
// doc/architecture.md); devices get the device rules plus their tenant's
// rules. The default device policy is `readwrite devices/%c/#` and
// `read groups/%g/#`. Anonymous plain-TCP clients (their namespace is
// separate) have rules of their own, `readwrite #` by default. A rule
// `deny <filter>` wins over every allowing rule of its list: no publish to a
// topic it matches, no subscription to a filter inside it. Built at
// start-up, then read-only: any thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "broker/core/hooks.h"

namespace fmq {

struct AclRule {
  bool read = false;
  bool write = false;
  bool deny = false;    // "deny <filter>": neither, whatever else allows
  std::string pattern;  // a topic filter, may contain %c and %u
};

absl::StatusOr<AclRule> ParseAclRule(std::string_view text);

// True when every topic `filter` can match is also matched by `pattern`.
bool FilterCovers(std::string_view pattern, std::string_view filter);

class AclPolicy {
 public:
  AclPolicy();  // the default device policy
  void SetDeviceRules(std::vector<AclRule> rules) { device_rules_ = std::move(rules); }
  void SetTenantRules(const std::string& tenant, std::vector<AclRule> rules) {
    tenant_rules_[tenant] = std::move(rules);
  }
  void SetAnonymousRules(std::vector<AclRule> rules) { anonymous_rules_ = std::move(rules); }

  // `who` is null for an anonymous (plain TCP) client. `topic` and `filter`
  // are as the client sent them (before mounting).
  bool CanPublish(const PeerIdentity* who, std::string_view client_id, std::string_view username,
                  std::string_view topic) const;
  bool CanSubscribe(const PeerIdentity* who, std::string_view client_id, std::string_view username,
                    std::string_view filter) const;

 private:
  template <class F>
  bool Any(const PeerIdentity* who, std::string_view client_id, std::string_view username, bool write, bool sub,
           F&& test) const;

  std::vector<AclRule> anonymous_rules_;
  std::vector<AclRule> device_rules_;
  absl::flat_hash_map<std::string, std::vector<AclRule>> tenant_rules_;
};

}  // namespace fmq

#include "broker/core/acl.h"

#include <doctest/doctest.h>

namespace fmq {
namespace {

TEST_CASE("FilterCovers: a subscription is allowed only inside a rule's filter") {
  struct Case {
    const char* pattern;
    const char* filter;
    bool covers;
  };
  for (const Case& c : std::initializer_list<Case>{{"devices/d1/#", "devices/d1/#", true},
                                                   {"devices/d1/#", "devices/d1", true},
                                                   {"devices/d1/#", "devices/d1/cmd/+", true},
                                                   {"devices/d1/#", "devices/+/cmd", false},
                                                   {"devices/d1/#", "devices/#", false},
                                                   {"devices/d1/#", "#", false},
                                                   {"devices/+/cmd", "devices/d1/cmd", true},
                                                   {"devices/+/cmd", "devices/+/cmd", true},
                                                   {"devices/+/cmd", "devices/#", false},
                                                   {"devices/+/cmd", "devices/d1/cmd/x", false},
                                                   {"#", "anything/+/#", true},
                                                   {"a/b", "a/b", true},
                                                   {"a/b", "a/+", false},
                                                   {"a/+", "a", false}}) {
    CAPTURE(c.pattern);
    CAPTURE(c.filter);
    CHECK(FilterCovers(c.pattern, c.filter) == c.covers);
  }
}

TEST_CASE("ACL rules: parsing, the default device policy, operators, tenant rules, no wildcard injection") {
  CHECK_FALSE(ParseAclRule("readwrite").ok());
  CHECK_FALSE(ParseAclRule("delete a/b").ok());
  CHECK_FALSE(ParseAclRule("read a/#/b").ok());
  CHECK_FALSE(ParseAclRule("read $SYS/#").ok());
  CHECK(ParseAclRule("read fleet/%u/+").ok());

  AclPolicy acl;
  PeerIdentity dev{"acme", "d1", true, false, "", {}};
  CHECK(acl.CanPublish(&dev, "d1", "", "devices/d1/telemetry"));
  CHECK_FALSE(acl.CanPublish(&dev, "d1", "", "devices/d2/telemetry"));
  CHECK(acl.CanSubscribe(&dev, "d1", "", "devices/d1/#"));
  CHECK_FALSE(acl.CanSubscribe(&dev, "d1", "", "devices/+/cmd"));
  CHECK_FALSE(acl.CanSubscribe(&dev, "d1", "", "#"));
  // The device's groups: read-only, each group its own subtree.
  PeerIdentity grouped{"acme", "d1", true, false, "", {"lobby", "floor-2"}};
  CHECK(acl.CanSubscribe(&grouped, "d1", "", "groups/lobby/#"));
  CHECK(acl.CanSubscribe(&grouped, "d1", "", "groups/floor-2/config"));
  CHECK_FALSE(acl.CanSubscribe(&grouped, "d1", "", "groups/floor-3/#"));
  CHECK_FALSE(acl.CanSubscribe(&grouped, "d1", "", "groups/+/config"));
  CHECK_FALSE(acl.CanPublish(&grouped, "d1", "", "groups/lobby/config"));
  CHECK_FALSE(acl.CanSubscribe(&dev, "d1", "", "groups/lobby/#"));  // no groups
  PeerIdentity op{"acme", "admin", false, false, "", {}};
  CHECK(acl.CanPublish(&op, "admin", "", "devices/d2/cmd"));
  CHECK(acl.CanSubscribe(&op, "admin", "", "#"));

  acl.SetTenantRules("acme", {*ParseAclRule("read fleet/broadcast/#"), *ParseAclRule("write users/%u/in")});
  CHECK(acl.CanSubscribe(&dev, "d1", "", "fleet/broadcast/#"));
  const PeerIdentity other{"other", "d1", true, false, "", {}};
  CHECK_FALSE(acl.CanSubscribe(&other, "d1", "", "fleet/broadcast/#"));
  CHECK_FALSE(acl.CanPublish(&dev, "d1", "", "fleet/broadcast/x"));  // read only
  CHECK(acl.CanPublish(&dev, "d1", "bob", "users/bob/in"));
  // A user name with level separators or wildcards never widens a rule.
  CHECK_FALSE(acl.CanPublish(&dev, "d1", "bob/in/x", "users/bob/in/x/in"));
  CHECK_FALSE(acl.CanPublish(&dev, "d1", "+", "users/+/in"));
  CHECK_FALSE(acl.CanPublish(&dev, "d1", "", "users//in"));
}

TEST_CASE("ACL rules for anonymous clients, and deny rules winning inside their list") {
  AclPolicy acl;
  // Default: anonymous clients use their whole namespace.
  CHECK(acl.CanPublish(nullptr, "c", "", "test/nosubscribe"));
  CHECK(acl.CanSubscribe(nullptr, "c", "", "#"));
  REQUIRE(ParseAclRule("deny test/nosubscribe").ok());
  CHECK_FALSE(ParseAclRule("allow x").ok());
  acl.SetAnonymousRules({*ParseAclRule("readwrite #"), *ParseAclRule("deny test/nosubscribe"),
                         *ParseAclRule("deny private/#"), *ParseAclRule("read users/%c/#")});
  CHECK_FALSE(acl.CanSubscribe(nullptr, "c", "", "test/nosubscribe"));
  CHECK_FALSE(acl.CanPublish(nullptr, "c", "", "test/nosubscribe"));
  CHECK_FALSE(acl.CanSubscribe(nullptr, "c", "", "private/a/#"));
  CHECK_FALSE(acl.CanPublish(nullptr, "c", "", "private/a"));
  CHECK(acl.CanSubscribe(nullptr, "c", "", "test/other"));
  CHECK(acl.CanSubscribe(nullptr, "c", "", "#"));  // wider: allowed; no one may publish inside the denied area
  CHECK(acl.CanPublish(nullptr, "c", "", "test/other"));
  // Without an allowing rule, nothing.
  acl.SetAnonymousRules({*ParseAclRule("read users/%c/#")});
  CHECK(acl.CanSubscribe(nullptr, "c", "", "users/c/#"));
  CHECK_FALSE(acl.CanSubscribe(nullptr, "c", "", "users/d/#"));
  CHECK_FALSE(acl.CanPublish(nullptr, "c", "", "users/c/x"));
  acl.SetAnonymousRules({});
  CHECK_FALSE(acl.CanPublish(nullptr, "c", "", "a"));
  // Devices: a deny in the device rules beats the device's own subtree; the
  // anonymous rules never apply to certificate clients.
  const PeerIdentity dev{"acme", "d1", true, false, "", {}};
  acl.SetDeviceRules({*ParseAclRule("readwrite devices/%c/#"), *ParseAclRule("deny devices/%c/secret")});
  CHECK(acl.CanPublish(&dev, "d1", "", "devices/d1/up"));
  CHECK_FALSE(acl.CanPublish(&dev, "d1", "", "devices/d1/secret"));
  CHECK_FALSE(acl.CanSubscribe(&dev, "d1", "", "devices/d1/secret"));
}

}  // namespace
}  // namespace fmq

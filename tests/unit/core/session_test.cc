// The compact per-session containers: PacketIdSet (inbound QoS 2 ids in
// one pointer) and SessionTable (sessions found by a view of their name).
#include "broker/core/session.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <set>

namespace fmq {
namespace {

TEST_CASE("PacketIdSet: a sorted set of ids that matches std::set, freed when empty") {
  PacketIdSet s;
  CHECK(s.empty());
  CHECK(s.begin() == s.end());
  CHECK_FALSE(s.contains(1));
  CHECK(s.erase(1) == 0);
  std::set<uint16_t> ref;
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) {
    const auto id = static_cast<uint16_t>(1 + rng() % 300);
    if (rng() % 3 == 0) {
      CHECK(s.erase(id) == ref.erase(id));
    } else {
      CHECK(s.insert(id) == ref.insert(id).second);
    }
    REQUIRE(s.size() == ref.size());
  }
  CHECK(std::equal(s.begin(), s.end(), ref.begin(), ref.end()));
  for (uint16_t id : ref) CHECK(s.contains(id));
  for (uint16_t id : std::set<uint16_t>(ref)) s.erase(id);
  CHECK(s.empty());
  CHECK(s.begin() == nullptr);  // the block is gone
}

TEST_CASE("PacketIdSet: holds every non-zero 16-bit id") {
  PacketIdSet s;
  for (uint32_t id = 65535; id >= 1; --id) REQUIRE(s.insert(static_cast<uint16_t>(id)));
  CHECK(s.size() == 65535);
  CHECK(*s.begin() == 1);
  CHECK(*(s.end() - 1) == 65535);
  CHECK_FALSE(s.insert(4242));
}

TEST_CASE("SessionTable: found by tenant and client id, replaced and erased by name") {
  SessionTable t;
  TenantNames names;
  auto make = [&names](std::string_view tenant, std::string id, uint64_t sid) {
    auto s = std::make_unique<Session>();
    s->id = sid;
    s->client_id = std::move(id);
    s->set_tenant(names.Intern(tenant));
    return s;
  };
  t.Insert(make("", "dev-1", 1));
  t.Insert(make("acme", "dev-1", 2));  // same id, another tenant: another session
  t.Insert(make("acme", "a-client-id-longer-than-fifteen-bytes", 3));
  CHECK(t.size() == 3);
  CHECK(t.Find("", "dev-1")->id == 1);
  CHECK(t.Find("acme", "dev-1")->id == 2);
  CHECK(t.Find("acme", "a-client-id-longer-than-fifteen-bytes")->id == 3);
  CHECK(t.Find("acme", "dev-2") == nullptr);
  CHECK(t.Find("acm", "edev-1") == nullptr);  // the boundary between the two is part of the key
  t.Insert(make("acme", "dev-1", 4));         // replaces session 2
  CHECK(t.size() == 3);
  CHECK(t.Find("acme", "dev-1")->id == 4);
  Session* s = t.Find("", "dev-1");
  t.Erase(*s);
  CHECK(t.Find("", "dev-1") == nullptr);
  CHECK(t.size() == 2);
}

}  // namespace
}  // namespace fmq

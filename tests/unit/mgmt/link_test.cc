// What the broker observed of a device's connection (mgmt/health/link.h):
// totals and disconnects by reason, uptime ratios over 1 h, 24 h and 7 d
// from the minute and hour rings (intervals crossing slot edges, gaps
// longer than a ring, the window before the device was first seen), an
// interval a stopped broker left open, the stored form round-tripping and
// damaged bytes refused; then the feature keeping it in the store (started
// only by a connect, gone with a retired device).
#include "mgmt/health/link.h"

#include <doctest/doctest.h>

#include <fstream>
#include <iterator>

#include "common/clock.h"
#include "mgmt/health/health_feature.h"
#include "storage/keys.h"
#include "storage/kv_store.h"

namespace fmq::health {
namespace {

using K = LinkEvent::Kind;
constexpr int64_t kMin = 60'000, kHour = 3'600'000, kDay = 24 * kHour;
constexpr int64_t kT0 = 1'800'000'000'000;  // a whole hour in unix ms

LinkEvent Ev(K k, int64_t at, std::string reason = "", LinkCounters d = {}) {
  return LinkEvent{k, at, d, std::move(reason), k == K::kDisconnected && reason == "protocol_error" ? "rule" : ""};
}

TEST_CASE("link: totals, disconnects by reason and the last error") {
  LinkRecord r;
  LinkCounters d;
  d.bytes_in = 100;
  d.packets_in = 3;
  d.publish_in = 1;
  d.denied = 1;
  r.Apply(Ev(K::kConnected, kT0));
  r.Apply(Ev(K::kCounters, kT0 + kMin, "", d));
  d.denied = 0;
  r.Apply(LinkEvent{K::kDisconnected, kT0 + 2 * kMin, d, "protocol_error", "MQTT-3.1.0-1 first packet"});
  r.Apply(Ev(K::kConnected, kT0 + 3 * kMin));
  r.Apply(Ev(K::kDisconnected, kT0 + 4 * kMin, "clean"));
  CHECK(r.connects() == 2);
  CHECK(r.totals().bytes_in == 200);
  CHECK(r.totals().packets_in == 6);
  CHECK(r.totals().denied == 1);
  CHECK(r.disconnects().at("protocol_error") == 1);
  CHECK(r.disconnects().at("clean") == 1);
  Json j = r.ToJson(kT0 + 5 * kMin, false);
  CHECK(j["protocol_errors"] == 1);
  CHECK(j["last_error"]["reason"] == "protocol_error");
  CHECK(j["last_error"]["detail"] == "MQTT-3.1.0-1 first packet");
  CHECK(j["last_error"]["time_ms"] == kT0 + 2 * kMin);  // a clean close is not an error
  CHECK(j["counted_to_ms"] == kT0 + 4 * kMin);
}

TEST_CASE("link: uptime over 1 h, 24 h and 7 d") {
  LinkRecord r;
  CHECK(r.Uptime(kT0, kHour, false) < 0);  // never seen
  r.Apply(Ev(K::kConnected, kT0 - 2 * kDay));
  // Connected for 30 of the last 60 minutes, crossing minute edges.
  r.Apply(Ev(K::kDisconnected, kT0 - 30 * kMin - 30'000, "connection_lost"));
  r.Apply(Ev(K::kConnected, kT0 - 30 * kMin + 30'000));
  const int64_t now = kT0;
  // Online: the open interval counts up to now, unreported.
  CHECK(r.Uptime(now, kHour, true) == doctest::Approx(59.0 / 60).epsilon(0.001));
  // Offline with the interval open (a stopped broker): it ends where it was
  // last accounted, its connect.
  CHECK(r.Uptime(now, kHour, false) == doctest::Approx(29.5 / 60).epsilon(0.001));
  CHECK(r.Uptime(now, kDay, true) == doctest::Approx((kDay - kMin) / double(kDay)).epsilon(0.001));
  // 7 d: known only since first seen (2 days): the ratio is of those.
  CHECK(r.Uptime(now, 7 * kDay, true) == doctest::Approx((2 * kDay - kMin) / double(2 * kDay)).epsilon(0.001));
  r.Apply(Ev(K::kDisconnected, now, "keepalive_timeout"));
  // Three hours offline: the 1 h window is empty, the 24 h one counts 21 of 24.
  const int64_t later = now + 3 * kHour;
  CHECK(r.Uptime(later, kHour, false) == 0);
  CHECK(r.Uptime(later, kDay, false) == doctest::Approx(21.0 / 24 - 1.0 / 24 / 60).epsilon(0.01));
  // A gap longer than both rings: everything is zero, nothing is stale.
  const int64_t much_later = now + 10 * kDay;
  CHECK(r.Uptime(much_later, 7 * kDay, false) == 0);
  r.Apply(Ev(K::kConnected, much_later));
  r.Apply(Ev(K::kCounters, much_later + 30 * kMin));
  CHECK(r.Uptime(much_later + 30 * kMin, kHour, false) == doctest::Approx(0.5));
  CHECK(r.Uptime(much_later + 60 * kMin, kHour, true) == doctest::Approx(1.0));
}

TEST_CASE("link: a device seen for seconds, mid-slot, is up all of that time, not a share of the slot") {
  LinkRecord r;
  r.Apply(Ev(K::kConnected, kT0 + 30'000));
  CHECK(r.Uptime(kT0 + 31'500, kHour, true) == doctest::Approx(1.0));
  CHECK(r.Uptime(kT0 + 31'500, 7 * kDay, true) == doctest::Approx(1.0));
  r.Apply(Ev(K::kDisconnected, kT0 + 31'500, "clean"));
  CHECK(r.Uptime(kT0 + 33'000, kHour, false) == doctest::Approx(0.5));
  CHECK(r.Uptime(kT0 + 33'000, kDay, false) == doctest::Approx(0.5));
}

TEST_CASE("link: an interval a stopped broker left open ends at its last accounting") {
  LinkRecord r;
  r.Apply(Ev(K::kConnected, kT0));
  r.Apply(Ev(K::kCounters, kT0 + 10 * kMin));
  // The broker stops; after its restart the device is offline, then back.
  Json offline = r.ToJson(kT0 + 60 * kMin, false);
  CHECK(offline["disconnects"]["unrecorded"] == 1);
  CHECK(offline["counted_to_ms"] == kT0 + 10 * kMin);  // its last report
  CHECK(offline["last_disconnect_ms"] == kT0 + 10 * kMin);
  CHECK(offline["uptime"]["1h"] == doctest::Approx(10.0 / 60).epsilon(0.001));
  r.Apply(Ev(K::kConnected, kT0 + 60 * kMin));
  CHECK(r.disconnects().at("unrecorded") == 1);
  CHECK(r.connects() == 2);
  CHECK(r.Uptime(kT0 + 60 * kMin, kHour, true) == doctest::Approx(10.0 / 60).epsilon(0.001));
}

TEST_CASE("link: the stored form round-trips; damaged bytes are refused") {
  LinkRecord r;
  LinkCounters d;
  d.bytes_out = 1ull << 40;
  r.Apply(Ev(K::kConnected, kT0));
  r.Apply(Ev(K::kCounters, kT0 + 90 * kMin, "", d));
  r.Apply(
      LinkEvent{K::kDisconnected, kT0 + 91 * kMin, d, "protocol_error", "MQTT-3.3.2-4 payload is not UTF-8 \u00e9"});
  LinkRecord back;
  REQUIRE(LinkRecord::Decode(r.Encode(), &back));
  CHECK(back.Encode() == r.Encode());
  CHECK(back.ToJson(kT0 + 2 * kHour, false) == r.ToJson(kT0 + 2 * kHour, false));
  CHECK(back.totals().bytes_out == 2ull << 40);
  // The fuzz seed is a record the decoder accepts (so the replay reaches
  // past Decode).
  std::ifstream seed(FMQ_SOURCE_DIR "/tests/fuzz/corpus-health/link-record");
  const std::string seed_bytes((std::istreambuf_iterator<char>(seed)), std::istreambuf_iterator<char>());
  CHECK(LinkRecord::Decode(seed_bytes, &back));
  const std::string enc = r.Encode();
  const char* bad[] = {"", "[]", "{}", "not json", R"({"v":2})"};
  for (const char* b : bad) CHECK_FALSE(LinkRecord::Decode(b, &back));
  Json j = Json::parse(enc);
  REQUIRE(!j["m"].empty());  // sparse: [[slot, ms], ...]
  j["m"][0][1] = 70'000;     // more than a minute in a minute
  CHECK_FALSE(LinkRecord::Decode(j.dump(), &back));
  j = Json::parse(enc);
  j["h"].push_back(Json::array({168, 1}));  // no such slot
  CHECK_FALSE(LinkRecord::Decode(j.dump(), &back));
  j = Json::parse(enc);
  j["h"].push_back(Json::array({1}));
  CHECK_FALSE(LinkRecord::Decode(j.dump(), &back));
  j = Json::parse(enc);
  j["bytes_in"] = -1;
  CHECK_FALSE(LinkRecord::Decode(j.dump(), &back));
  j = Json::parse(enc);
  j["disc"]["clean"] = "x";
  CHECK_FALSE(LinkRecord::Decode(j.dump(), &back));
}

TEST_CASE("link: the feature keeps it under the tenant, folds a turn, starts afresh from damage, drops it on retire") {
  FakeClock clock;
  storage::MemKvStore kv;
  HealthFeature f(&kv, &clock);
  const storage::TenantId t = storage::TenantId::FromAuthenticated("acme");
  const storage::TenantId other = storage::TenantId::FromAuthenticated("umbrella");
  LinkCounters d;
  d.publish_in = 2;
  f.OnLink(t, "d1", Ev(K::kConnected, kT0));
  f.OnLink(t, "d1", Ev(K::kCounters, kT0 + kMin, "", d));  // same turn: folded into the pending record
  mgmt::Output out;
  REQUIRE(f.Commit(&out).ok());
  f.OnLink(t, "d1", Ev(K::kDisconnected, kT0 + 2 * kMin, "clean", d));
  REQUIRE(f.Commit(&out).ok());
  auto got = f.Link(t, "d1");
  REQUIRE(got.ok());
  CHECK(got->totals().publish_in == 4);
  CHECK(got->connects() == 1);
  CHECK(kv.Get(storage::Family::kHealth, storage::keys::HealthLink(t, "d1")).ok());
  // Another tenant's device of the same name has nothing.
  auto theirs = f.Link(other, "d1");
  REQUIRE(theirs.ok());
  CHECK(theirs->connects() == 0);
  // Damaged bytes on disk: counted, started afresh, replaced by the next event.
  storage::WriteBatch b;
  b.Put(storage::Family::kHealth, storage::keys::HealthLink(t, "d2"), "{\"v\":1,\"first\":");
  REQUIRE(kv.Write(b, true).ok());
  got = f.Link(t, "d2");
  REQUIRE(got.ok());
  CHECK(got->connects() == 0);
  f.OnLink(t, "d2", Ev(K::kConnected, kT0));
  REQUIRE(f.Commit(&out).ok());
  got = f.Link(t, "d2");
  CHECK(got->connects() == 1);
  uint64_t damaged = 0;
  f.Counters([&](const char* n, uint64_t v) {
    if (std::string_view(n) == "health/link_records_damaged") damaged = v;
  });
  CHECK(damaged == 2);  // read twice before it was replaced
  // Only a connect starts a record: counters of a device never seen connecting
  // (not registered) are not kept.
  f.OnLink(t, "ghost", Ev(K::kCounters, kT0, "", d));
  f.OnLink(t, "ghost", Ev(K::kDisconnected, kT0, "clean"));
  REQUIRE(f.Commit(&out).ok());
  CHECK(absl::IsNotFound(kv.Get(storage::Family::kHealth, storage::keys::HealthLink(t, "ghost")).status()));
  // Retired: the record goes, and the disconnect its retirement causes (in
  // the same turn or a later one) does not write it back.
  f.OnLink(t, "d1", Ev(K::kConnected, kT0 + 3 * kMin));
  REQUIRE(f.Commit(&out).ok());
  f.OnDeviceRetired(t, "d1");
  f.OnLink(t, "d1", Ev(K::kDisconnected, kT0 + 4 * kMin, "administrative"));
  REQUIRE(f.Commit(&out).ok());
  CHECK(absl::IsNotFound(kv.Get(storage::Family::kHealth, storage::keys::HealthLink(t, "d1")).status()));
  f.OnLink(t, "d1", Ev(K::kDisconnected, kT0 + 5 * kMin, "administrative"));
  REQUIRE(f.Commit(&out).ok());
  CHECK(absl::IsNotFound(kv.Get(storage::Family::kHealth, storage::keys::HealthLink(t, "d1")).status()));
}

}  // namespace
}  // namespace fmq::health

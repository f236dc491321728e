// Device health reports: the report schema as a table of good and bad
// bodies, and the feature over an in-memory store on a fake clock — latest
// values, the per-minute history (folding within a minute and across turns,
// the 24-hour ring reusing its slots), the report rate bound, damaged bytes
// on disk, and a retired device's data removed.
#include <doctest/doctest.h>

#include "common/clock.h"
#include "mgmt/health/health_feature.h"
#include "storage/keys.h"
#include "storage/kv_store.h"

namespace fmq::health {
namespace {

using storage::TenantId;

TEST_CASE("health: report schema, names, ranges and bounds") {
  Options o;
  Values v;
  CHECK(ValidateReport(Json::parse(R"({"uptime_s":3600,"cpu_pct":12.5,"mem_pct":40,"storage_pct":71,
      "battery_pct":88,"temperature_c":-4.5,"errors":3,"rssi_dbm":-71,"metrics":{"queue_depth":4,"fan.rpm":1200}})"),
                       o, &v) == "");
  CHECK(v.size() == 10);
  CHECK(v["m.fan.rpm"] == 1200);
  CHECK(v["temperature_c"] == -4.5);
  Json many = Json::object();
  for (int i = 0; i < 33; ++i) many["m" + std::to_string(i)] = i;
  const std::pair<const char*, const char*> bad[] = {
      {"[]", "JSON object"},
      {"{}", "at least one"},
      {R"({"client_token":"x"})", "at least one"},
      {R"({"cpu":5})", "unknown field 'cpu'"},
      {R"({"cpu_pct":"5"})", "must be a number"},
      {R"({"cpu_pct":100.5})", "within 0..100"},
      {R"({"temperature_c":1e9})", "within"},
      {R"({"uptime_s":-1})", "within"},
      {R"({"uptime_s":1.5})", "integer"},
      {R"({"errors":true})", "integer"},
      {R"({"metrics":[1]})", "must be an object"},
      {R"({"metrics":{"Bad Name":1}})", "name"},
      {R"({"metrics":{"":1}})", "name"},
      {R"({"metrics":{"x":"1"}})", "finite number"},
      {R"({"metrics":{"x":1e300}})", "finite number"},
      {R"({"metrics":{"x":null}})", "finite number"},
  };
  for (const auto& [body, why] : bad) {
    const std::string err = ValidateReport(Json::parse(body), o);
    CHECK_MESSAGE(err.find(why) != std::string::npos, body, " → ", err);
  }
  CHECK(ValidateReport(Json{{"metrics", many}}, o).find("at most 32") != std::string::npos);
  CHECK(ValidateReport(Json{{"metrics", {{std::string(33, 'a'), 1}}}}, o).find("name") != std::string::npos);
}

struct Rig {
  FakeClock clock{60'000 * 1000};  // on a minute boundary of the fake wall clock
  storage::MemKvStore kv;
  HealthFeature f{&kv, &clock};
  mgmt::Output out;
  const TenantId t = TenantId::FromAuthenticated("acme");

  void Report(const char* body, const char* device = "d1") {
    mgmt::DeviceMessage m;
    m.tenant = "acme";
    m.device_id = device;
    m.topic = "health/report";
    m.body = Json::parse(body);
    if (m.body.contains("client_token")) m.client_token = m.body["client_token"];  // as the worker does
    REQUIRE(f.Validate(m.topic, m.body) == "");
    f.OnDeviceMessage(m);
  }
  void Commit() { REQUIRE(f.Commit(&out).ok()); }
  Json History(int64_t from = 0, std::vector<std::string> only = {}, const char* device = "d1") {
    auto h = f.History(t, device, from, clock.WallMs(), only);
    REQUIRE(h.ok());
    return *h;
  }
};

TEST_CASE("health: latest values, and a per-minute history folded within each minute") {
  Rig w;
  w.Report(R"({"cpu_pct":10,"metrics":{"q":1}})");
  w.clock.Advance(5000);
  w.Report(R"({"cpu_pct":30})");  // the same turn: folded into the same slot
  w.Commit();
  w.clock.Advance(5000);
  w.Report(R"({"cpu_pct":20})");  // a later turn, the same minute
  w.Commit();
  auto latest = w.f.Latest(w.t, "d1");
  REQUIRE(latest.ok());
  CHECK((*latest)["values"]["cpu_pct"] == 20);
  CHECK((*latest)["time_ms"] == w.clock.WallMs());
  CHECK(absl::IsNotFound(w.f.Latest(w.t, "d2").status()));
  Json h = w.History();
  REQUIRE(h.size() == 1);
  const Json& cpu = h[0]["metrics"]["cpu_pct"];
  CHECK(cpu["min"] == 10);
  CHECK(cpu["max"] == 30);
  CHECK(cpu["mean"] == 20);
  CHECK(cpu["last"] == 20);
  CHECK(cpu["n"] == 3);
  CHECK(h[0]["metrics"]["m.q"]["n"] == 1);
  // The next minutes are their own; a filter keeps only what is asked.
  w.clock.Advance(60'000);
  w.Report(R"({"cpu_pct":50,"mem_pct":5})");
  w.Commit();
  h = w.History(0, {"mem_pct"});
  REQUIRE(h.size() == 2);
  CHECK(h[0]["metrics"].empty());
  CHECK(h[1]["metrics"]["mem_pct"]["last"] == 5);
  CHECK(h[1]["minute_ms"].get<int64_t>() - h[0]["minute_ms"].get<int64_t>() == 60'000);
  // Another tenant's device of the same id has nothing.
  auto other = w.f.History(TenantId::FromAuthenticated("beta"), "d1", 0, w.clock.WallMs(), {});
  REQUIRE(other.ok());
  CHECK(other->empty());
}

TEST_CASE("health: the ring keeps 24 hours, reusing each minute's slot a day later") {
  Rig w;
  w.Report(R"({"cpu_pct":10})");
  w.Commit();
  w.clock.Advance(24 * 3600'000);  // the same slot, a day later
  w.Report(R"({"cpu_pct":90})");
  w.Commit();
  Json h = w.History();
  REQUIRE(h.size() == 1);
  CHECK(h[0]["metrics"]["cpu_pct"]["n"] == 1);  // yesterday's minute replaced, not folded
  CHECK(h[0]["metrics"]["cpu_pct"]["min"] == 90);
  size_t slots = 0;
  REQUIRE(w.kv.ScanPrefix(storage::Family::kHealth, storage::keys::HealthMinutePrefix(w.t, "d1"),
                          [&](std::string_view, std::string_view) { return ++slots > 0; })
              .ok());
  CHECK(slots == 1);
}

TEST_CASE("health: reports faster than the bound are refused with a reply; a reconnect starts afresh") {
  Rig w;
  // Every 990 ms (a timer's jitter around the 1 s bound): never refused.
  for (int i = 0; i < 20; ++i) {
    w.Report(R"({"cpu_pct":9})");
    w.clock.Advance(990);
  }
  w.Commit();
  CHECK(w.out.sends.empty());
  w.f.OnDisconnected("acme", "d1");
  w.Report(R"({"cpu_pct":10})");
  w.clock.Advance(100);
  w.Report(R"({"cpu_pct":10})");  // a burst of two is allowed
  w.clock.Advance(300);
  w.Report(R"({"cpu_pct":99,"client_token":"t7"})");
  w.Commit();
  REQUIRE(w.out.sends.size() == 1);
  CHECK(w.out.sends[0].suffix == "health/report/rejected");
  Json r = Json::parse(w.out.sends[0].payload);
  CHECK(r["error"]["code"] == "rate_limited");
  CHECK(r["client_token"] == "t7");
  CHECK((*w.f.Latest(w.t, "d1"))["values"]["cpu_pct"] == 10);  // nothing changed
  w.f.OnDisconnected("acme", "d1");
  w.Report(R"({"cpu_pct":11})");
  w.Commit();
  CHECK((*w.f.Latest(w.t, "d1"))["values"]["cpu_pct"] == 11);
  uint64_t limited = 0;
  w.f.Counters([&](const char* n, uint64_t v) {
    if (std::string(n) == "health/rate_limited") limited = v;
  });
  CHECK(limited == 1);
}

TEST_CASE("health: damaged bytes on disk are reported or skipped, never trusted; retirement removes all") {
  Rig w;
  w.Report(R"({"cpu_pct":10})");
  w.Commit();
  storage::WriteBatch b;
  b.Put(storage::Family::kHealth, storage::keys::HealthLatest(w.t, "d1"), "{not json");
  b.Put(storage::Family::kHealth, storage::keys::HealthMinute(w.t, "d1", 5), "\x01\x02");
  // JSON of the wrong shape in this minute's slot and in another one.
  const int64_t minute = w.clock.WallMs() / 60'000;
  const std::string here = storage::keys::HealthMinute(w.t, "d1", static_cast<uint64_t>(minute) % 1440);
  b.Put(storage::Family::kHealth, here,
        Json{{"minute", minute}, {"metrics", {{"cpu_pct", {"a", 1, 2, 3, 4}}, {"x", {1, 2}}}}}.dump());
  b.Put(storage::Family::kHealth, storage::keys::HealthMinute(w.t, "d1", 7), R"({"minute":"x","metrics":[]})");
  REQUIRE(w.kv.Write(b, false).ok());
  CHECK(absl::IsDataLoss(w.f.Latest(w.t, "d1").status()));
  Json h = w.History();
  REQUIRE(h.size() == 1);
  CHECK(h[0]["metrics"].empty());  // this minute's aggregates are damaged: not shown
  w.clock.Advance(2000);
  w.Report(R"({"cpu_pct":12})");  // overwrites the damaged latest, starts the damaged aggregate afresh
  w.Commit();
  CHECK((*w.f.Latest(w.t, "d1"))["values"]["cpu_pct"] == 12);
  h = w.History();
  REQUIRE(h.size() == 1);
  CHECK(h[0]["metrics"]["cpu_pct"]["n"] == 1);
  CHECK(h[0]["metrics"]["cpu_pct"]["min"] == 12);
  w.f.OnDeviceRetired(w.t, "d1");
  w.Commit();
  CHECK(absl::IsNotFound(w.f.Latest(w.t, "d1").status()));
  CHECK(w.History().empty());
}

}  // namespace
}  // namespace fmq::health

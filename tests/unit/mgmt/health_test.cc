// Device health reports: the report schema as a table of good and bad
// bodies, and the feature over an in-memory store on a fake clock — latest
// values, the per-minute history (folding within a minute and across turns,
// the 24-hour ring reusing its slots), the report rate bound, damaged bytes
// on disk, and a retired device's data removed; the fleet roll-ups (sketch
// percentiles, scopes following registry changes, online counts, silence,
// caps, rebuilt from the store after a restart).
#include <doctest/doctest.h>

#include "common/clock.h"
#include "mgmt/health/health_feature.h"
#include "mgmt/health/rollup.h"
#include "storage/keys.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

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

TEST_CASE("health roll-ups: the sketch answers equal values exactly, others within 2.2 %, and forgets") {
  Sketch sk;
  for (int i = 1; i <= 100; ++i) sk.Add(i, +1);
  CHECK(sk.count() == 100);
  CHECK(sk.mean() == doctest::Approx(50.5));
  CHECK(sk.Quantile(0) == 1);
  CHECK(sk.Quantile(1) == doctest::Approx(100).epsilon(0.022));
  CHECK(sk.Quantile(0.5) == doctest::Approx(50.5).epsilon(0.022));
  CHECK(sk.Quantile(0.9) == doctest::Approx(90).epsilon(0.022));
  for (int i = 1; i <= 50; ++i) sk.Add(i, -1);
  CHECK(sk.count() == 50);
  CHECK(sk.Quantile(0) == doctest::Approx(51).epsilon(0.022));
  Sketch neg;  // signs and zero keep their order
  for (double v : {-40.0, -4.5, 0.0, 3.0, 1e12}) neg.Add(v, +1);
  CHECK(neg.Quantile(0) == -40);
  CHECK(neg.Quantile(0.25) == -4.5);
  CHECK(neg.Quantile(0.5) == 0);
  CHECK(neg.Quantile(1) == 1e12);
  for (double v : {-40.0, -4.5, 0.0, 3.0, 1e12}) neg.Add(v, -1);
  CHECK(neg.count() == 0);
  CHECK(neg.buckets() == 0);
}

TEST_CASE("health roll-ups: members, online and reports per scope; moves, silence and caps") {
  Rollups r(RollupOptions{.max_scopes = 2, .max_metrics = 1});
  fb::DeviceT d;
  d.device_id = "d1";
  d.model_id = "m1";
  d.group_ids = {"g1"};
  d.firmware_version = "1.0";
  d.status = fb::DeviceStatus::Active;
  const std::vector<std::string> s1 = ScopesOf(d);
  CHECK(s1 == std::vector<std::string>{"tenant", "group:g1", "model:m1", "firmware:1.0"});
  r.Members("acme", {}, s1);
  d.device_id = "d2";
  r.Members("acme", {}, s1);
  r.Online("acme", s1, +1);
  Rollups::Report a{s1, {{"battery_pct", 80}, {"m.q", 1}, {"m.r", 2}}, 10};
  Rollups::Report b{s1, {{"battery_pct", 20}}, 12};
  r.Reported("acme", nullptr, &a);
  r.Reported("acme", nullptr, &b);
  Json j = r.Summary("acme", "tenant", 13 * 60'000, 60, {});
  CHECK(j["devices"] == 2);
  CHECK(j["online"] == 1);
  CHECK(j["offline"] == 1);
  CHECK(j["reporting"] == 2);
  CHECK(j["never_reported"] == 0);
  CHECK(j["silent"]["devices"] == 1);  // a's minute 10 ended before 13 min - 60 s
  CHECK(j["metrics"]["battery_pct"]["min"] == 20);
  CHECK(j["metrics"]["battery_pct"]["max"] == 80);
  CHECK(j["metrics"]["battery_pct"]["mean"] == 50);
  CHECK(j["metrics"].contains("m.q"));
  CHECK_FALSE(j["metrics"].contains("m.r"));  // past max_metrics: not rolled up, counted
  CHECK(r.stats().metrics_refused == 1);
  // Caps: the tenant scope plus 2; the firmware scope is refused (counted).
  CHECK(j == r.Summary("acme", "tenant", 13 * 60'000, 60, {}));
  CHECK(r.Summary("acme", "firmware:1.0", 0, 60, {})["devices"] == 0);
  CHECK(r.stats().scopes_refused > 0);
  CHECK(r.Summary("acme", "group:g1", 13 * 60'000, 60, {"battery_pct"})["metrics"].size() == 1);
  // A device replacing its report moves its values; a move between groups its membership.
  Rollups::Report b2{s1, {{"battery_pct", 90}}, 13};
  r.Reported("acme", &b, &b2);
  CHECK(r.Summary("acme", "tenant", 13 * 60'000, 60, {})["metrics"]["battery_pct"]["min"] == 80);
  const std::vector<std::string> moved{"tenant", "model:m1"};
  r.Members("acme", s1, moved);
  CHECK(r.Summary("acme", "group:g1", 0, 60, {})["devices"] == 1);
  CHECK(r.Summary("acme", "model:m1", 0, 60, {})["devices"] == 2);
  Json by = r.Breakdown("acme", "model", 10);
  REQUIRE(by.size() == 1);
  CHECK(by[0]["scope"] == "model:m1");
  CHECK(by[0]["online"] == 1);
  // Another tenant sees nothing of it.
  CHECK(r.Summary("beta", "tenant", 0, 60, {})["devices"] == 0);
  CHECK(r.Breakdown("beta", "model", 10).empty());
}

// The feature keeps the roll-ups in step with what it stores, through the
// registry's observer, and rebuilds them after a restart.
TEST_CASE("health roll-ups: the feature follows reports, registry changes and retirement; Recover rebuilds") {
  Rig w;
  storage::Registry reg(&w.kv);
  reg.SetObserver(&w.f);
  auto put = [&](const char* id, const char* group, fb::DeviceStatus st) {
    fb::DeviceT d;
    d.device_id = id;
    d.model_id = "m1";
    if (group[0] != 0) d.group_ids = {group};
    d.status = st;
    storage::WriteBatch b;
    REQUIRE(reg.PutDevice(w.t, d, &b).ok());
    REQUIRE(w.kv.Write(b, true).ok());
  };
  put("d1", "g1", fb::DeviceStatus::Active);
  put("d2", "g1", fb::DeviceStatus::Active);
  put("d3", "", fb::DeviceStatus::Active);
  {  // an unwritten batch changes nothing
    fb::DeviceT d;
    d.device_id = "d4";
    storage::WriteBatch b;
    REQUIRE(reg.PutDevice(w.t, d, &b).ok());
  }
  w.Report(R"({"errors":10,"cpu_pct":10})", "d1");
  w.Report(R"({"cpu_pct":30})", "d2");
  auto sum = [&](const char* scope) { return w.f.rollups().Summary("acme", scope, w.clock.WallMs(), 600, {}); };
  CHECK(sum("tenant")["reporting"] == 0);  // not before the batch is written
  w.Commit();
  CHECK(sum("tenant")["devices"] == 3);
  CHECK(sum("tenant")["reporting"] == 2);
  CHECK(sum("group:g1")["metrics"]["cpu_pct"]["mean"] == 20);
  w.clock.Advance(120'000);
  w.Report(R"({"errors":16,"cpu_pct":50})", "d1");  // 6 errors in 2 minutes
  w.Commit();
  Json g = sum("group:g1");
  CHECK(g["reporting"] == 2);
  CHECK(g["metrics"]["cpu_pct"]["max"] == 50);
  CHECK(g["metrics"]["errors_per_min"]["mean"] == 3);
  auto latest = w.f.Latest(w.t, "d1");
  REQUIRE(latest.ok());
  CHECK((*latest)["values"]["errors_per_min"] == 3);
  // Moved out of g1 into g2: the member at once, its values once the health batch is written.
  put("d2", "g2", fb::DeviceStatus::Active);
  CHECK(sum("group:g1")["devices"] == 1);
  CHECK(sum("group:g2")["devices"] == 1);
  w.Commit();
  CHECK(sum("group:g1")["reporting"] == 1);
  CHECK(sum("group:g1")["metrics"]["cpu_pct"]["mean"] == 50);
  CHECK(sum("group:g2")["reporting"] == 1);
  CHECK(sum("group:g2")["metrics"]["cpu_pct"]["mean"] == 30);
  CHECK(sum("tenant")["reporting"] == 2);  // not counted twice
  // Retired: gone from every count once written.
  put("d1", "g1", fb::DeviceStatus::Decommissioned);
  w.f.OnDeviceRetired(w.t, "d1");
  w.Commit();
  CHECK(sum("tenant")["devices"] == 2);
  CHECK(sum("tenant")["reporting"] == 1);
  CHECK(sum("group:g1")["devices"] == 0);
  CHECK_FALSE(sum("tenant")["metrics"].contains("errors_per_min"));
  const Json before = sum("tenant");
  // A restart: the same figures from the store (online counts start at 0).
  fb::TenantT tr;
  tr.tenant_id = "acme";
  storage::WriteBatch b;
  reg.PutTenant(w.t, tr, &b);
  REQUIRE(w.kv.Write(b, true).ok());
  HealthFeature again(&w.kv, &w.clock);
  REQUIRE(again.Recover().ok());
  CHECK(again.rollups().Summary("acme", "tenant", w.clock.WallMs(), 600, {}) == before);
}

}  // namespace
}  // namespace fmq::health

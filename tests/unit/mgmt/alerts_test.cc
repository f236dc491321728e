// Alert rules (mgmt/health/alerts.h) over an in-memory store on a fake
// clock: rule validation as a table, value rules raised after their window
// and cleared with hysteresis, a window cut short by a good value, offline
// rules armed by disconnects and at start-up, acknowledgement, listing,
// deletion, retirement, tenant isolation, the per-tenant cap, and the
// state back after a restart.
#include "mgmt/health/alerts.h"

#include <doctest/doctest.h>

#include <set>

#include "common/clock.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace fmq::health {
namespace {

using storage::TenantId;

struct Rig {
  FakeClock clock{60'000 * 1000};
  storage::MemKvStore kv;
  storage::Registry reg{&kv};
  std::set<std::string> online;  // the host's connectivity
  AlertFeature::OnlineFn online_fn = [this](const std::string& t, const std::string& d) {
    return online.contains(t + "/" + d);
  };
  std::unique_ptr<AlertFeature> f = std::make_unique<AlertFeature>(&kv, &reg, &clock, online_fn);
  mgmt::Output out;
  const TenantId t = TenantId::FromAuthenticated("acme");

  Rig() {
    for (const char* name : {"acme", "beta"}) {
      storage::WriteBatch b;
      fb::TenantT tr;
      tr.tenant_id = name;
      reg.PutTenant(TenantId::FromAuthenticated(name), tr, &b);
      REQUIRE(kv.Write(b, true).ok());
    }
    for (const char* id : {"d1", "d2", "d3"}) Device("acme", id, std::string(id) == "d3" ? "g2" : "g1");
  }
  void Device(const char* tenant, const char* id, const char* group) {
    fb::DeviceT d;
    d.device_id = id;
    d.model_id = "m1";
    d.group_ids = {group};
    d.status = fb::DeviceStatus::Active;
    storage::WriteBatch b;
    REQUIRE(reg.PutDevice(TenantId::FromAuthenticated(tenant), d, &b).ok());
    REQUIRE(kv.Write(b, true).ok());
  }
  absl::Status Create(Json j, const TenantId& tt) {
    AlertRule r;
    const std::string why = AlertRule::FromJson(j, &r);
    if (!why.empty()) return absl::InvalidArgumentError(why);
    storage::WriteBatch b;
    std::vector<std::function<void()>> done;
    absl::Status s = f->CreateRule(tt, r, &b, &done);
    if (!s.ok()) return s;
    REQUIRE(kv.Write(b, true).ok());
    for (auto& fn : done) fn();
    return s;
  }
  void Connect(const char* d, bool on) {
    if (on) {
      online.insert(std::string("acme/") + d);
      f->OnConnected("acme", d);
    } else {
      online.erase(std::string("acme/") + d);
      f->OnDisconnected("acme", d);
    }
  }
  void Report(const char* device, double battery, std::vector<std::string> scopes = {"tenant", "group:g1"}) {
    f->OnReport("acme", device, scopes, {{"battery_pct", battery}}, clock.WallMs());
  }
  // The events released by the next commit, as "raised:rule:device".
  std::vector<std::string> Events() {
    out = mgmt::Output{};
    REQUIRE(f->Commit(&out).ok());
    std::vector<std::string> ev;
    for (const auto& e : out.events) {
      Json j = Json::parse(e.payload);
      CHECK(e.topic == "$SYS/fleetmq/events/v1/alerts/" + j["rule_id"].get<std::string>());
      ev.push_back(j["event"].get<std::string>() + ":" + j["rule_id"].get<std::string>() + ":" +
                   j["device_id"].get<std::string>());
    }
    return ev;
  }
  Json Raised(bool all = false) {
    Json items;
    std::string next;
    REQUIRE(f->List(t, all, "", "", "", 100, &items, &next).ok());
    return items;
  }
};

using V = std::vector<std::string>;

TEST_CASE("alerts: rules are checked field by field") {
  struct Case {
    const char* json;
    const char* error;  // "" = valid
  };
  const Case cases[] = {
      {R"({"rule_id":"low-bat","metric":"battery_pct","op":"lt","threshold":10})", ""},
      {R"({"rule_id":"err","metric":"errors_per_min","op":"gt","threshold":5,"clear":2,"for_s":300,"scope":"group:g1","severity":"critical"})",
       ""},
      {R"({"rule_id":"off","metric":"offline","for_s":600})", ""},
      {R"({"rule_id":"","metric":"battery_pct","op":"lt","threshold":10})", "rule_id"},
      {R"({"rule_id":"a b","metric":"battery_pct","op":"lt","threshold":10})", "rule_id"},
      {R"({"rule_id":"x","metric":"Battery","op":"lt","threshold":10})", "metric"},
      {R"({"rule_id":"x","metric":"battery_pct","op":"eq","threshold":10})", "op"},
      {R"({"rule_id":"x","metric":"battery_pct","op":"lt"})", "threshold"},
      {R"({"rule_id":"x","metric":"battery_pct","op":"lt","threshold":"10"})", "threshold"},
      {R"({"rule_id":"x","metric":"battery_pct","op":"lt","threshold":1e300})", "threshold"},
      {R"({"rule_id":"x","metric":"battery_pct","op":"lt","threshold":10,"clear":5})", "clear"},
      {R"({"rule_id":"x","metric":"cpu_pct","op":"gt","threshold":90,"clear":95})", "clear"},
      {R"({"rule_id":"x","metric":"cpu_pct","op":"gt","threshold":90,"for_s":-1})", "for_s"},
      {R"({"rule_id":"x","metric":"cpu_pct","op":"gt","threshold":90,"for_s":1.5})", "for_s"},
      {R"({"rule_id":"x","metric":"cpu_pct","op":"gt","threshold":90,"for_s":99999999})", "for_s"},
      {R"({"rule_id":"x","metric":"offline"})", "for_s"},
      {R"({"rule_id":"x","metric":"offline","op":"lt","for_s":60})", "op"},
      {R"({"rule_id":"x","metric":"cpu_pct","op":"gt","threshold":90,"scope":"os:linux"})", "scope"},
      {R"({"rule_id":"x","metric":"cpu_pct","op":"gt","threshold":90,"scope":"group:"})", "scope"},
      {R"({"rule_id":"x","metric":"cpu_pct","op":"gt","threshold":90,"severity":"fatal"})", "severity"},
      {R"([1,2])", "object"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.json);
    AlertRule r;
    const std::string why = AlertRule::FromJson(Json::parse(c.json), &r);
    if (c.error[0] == 0) {
      CHECK(why == "");
      AlertRule back;
      CHECK(AlertRule::FromJson(r.ToJson(), &back) == "");  // stored form reads back
      CHECK(back.ToJson() == r.ToJson());
    } else {
      CHECK(why.find(c.error) != std::string::npos);
    }
  }
}

TEST_CASE("alerts: a value rule raises, holds inside the hysteresis band and clears; audited and acknowledged") {
  Rig w;
  REQUIRE(
      w.Create({{"rule_id", "low-bat"}, {"metric", "battery_pct"}, {"op", "lt"}, {"threshold", 10}, {"clear", 15}}, w.t)
          .ok());
  w.Report("d1", 50);
  CHECK(w.Events().empty());
  w.Report("d1", 8);
  w.Report("d2", 9, {"tenant", "group:g1"});
  CHECK(w.Events() == V{"raised:low-bat:d1", "raised:low-bat:d2"});
  w.Report("d1", 7);   // still low: raised once
  w.Report("d1", 12);  // above the threshold, below clear: stays
  CHECK(w.Events().empty());
  Json raised = w.Raised();
  REQUIRE(raised.size() == 2);
  CHECK(raised[0]["device_id"] == "d1");
  CHECK(raised[0]["value"] == 8);
  CHECK(raised[0]["acked"] == false);
  // Acknowledged: still raised.
  storage::WriteBatch b;
  Json a;
  REQUIRE(w.f->Ack(w.t, "low-bat", "d1", "operator:ops", w.clock.WallMs(), &b, &a).ok());
  REQUIRE(w.kv.Write(b, true).ok());
  CHECK(a["acked_by"] == "operator:ops");
  CHECK(w.Raised()[0]["acked"] == true);
  CHECK(absl::IsNotFound(w.f->Ack(w.t, "low-bat", "d3", "operator:ops", 0, &b, &a)));
  CHECK(absl::IsNotFound(w.f->Ack(w.t, "nope", "d1", "operator:ops", 0, &b, &a)));
  w.Report("d1", 16);
  CHECK(w.Events() == V{"cleared:low-bat:d1"});
  CHECK(w.Raised().size() == 1);
  Json all = w.Raised(true);
  REQUIRE(all.size() == 2);
  CHECK(all[0]["state"] == "cleared");
  CHECK(all[0]["cleared_because"] == "value");
  CHECK(all[0]["acked_by"] == "operator:ops");  // the record keeps who acknowledged it
  // Both transitions of d1 are in its audit history.
  storage::Page<fb::AuditEntryT> audit;
  REQUIRE(w.reg.AuditOfDevice(w.t, "d1", "", 100, &audit).ok());
  V actions;
  for (const auto& e : audit.items) actions.push_back(e.action);
  CHECK(actions == V{"alert.raised", "alert.cleared"});
  uint64_t entries = 0;
  CHECK(w.reg.VerifyAudit(w.t, &entries).ok());
  // Another scope's devices are not its concern; another tenant's neither.
  w.Report("d3", 1, {"tenant", "group:g2"});
  CHECK(w.Events() == V{"raised:low-bat:d3"});
  w.f->OnReport("beta", "d1", {"tenant"}, {{"battery_pct", 1}}, w.clock.WallMs());
  CHECK(w.Events().empty());
}

TEST_CASE("alerts: a window must hold for_s; a good value in it starts it over") {
  Rig w;
  REQUIRE(w.Create({{"rule_id", "err"},
                    {"metric", "errors_per_min"},
                    {"op", "gt"},
                    {"threshold", 5},
                    {"for_s", 300},
                    {"scope", "group:g1"}},
                   w.t)
              .ok());
  auto report = [&](const char* d, double v) {
    w.f->OnReport("acme", d, {"tenant", "group:g1"}, {{"errors_per_min", v}}, w.clock.WallMs());
  };
  report("d1", 9);
  report("d2", 9);
  CHECK(w.f->Pump() == w.clock.WallMs() + 300'000);  // the deadline, not a tick
  w.clock.Advance(120'000);
  report("d2", 1);  // good: d2's window ends
  w.clock.Advance(120'000);
  report("d2", 9);  // bad again: a new window from now
  CHECK(w.Events().empty());
  w.clock.Advance(60'000);
  w.f->Pump();
  CHECK(w.Events() == V{"raised:err:d1"});
  w.clock.Advance(240'000);
  w.f->Pump();
  CHECK(w.Events() == V{"raised:err:d2"});
  // Without a deadline passing, no work.
  CHECK(w.f->Pump() == INT64_MAX);
  report("d1", 5);  // not below the clear bound (= threshold 5, strict)
  CHECK(w.Events().empty());
  report("d1", 4);
  CHECK(w.Events() == V{"cleared:err:d1"});
}

TEST_CASE("alerts: offline rules follow disconnects, connects, start-up and retirement; state survives a restart") {
  Rig w;
  for (const char* d : {"d1", "d2", "d3"}) w.Connect(d, true);
  REQUIRE(w.Create({{"rule_id", "off"}, {"metric", "offline"}, {"for_s", 600}, {"scope", "group:g1"}}, w.t).ok());
  w.Connect("d1", false);
  w.Connect("d3", false);  // not in g1
  w.clock.Advance(599'000);
  w.f->Pump();
  CHECK(w.Events().empty());
  w.clock.Advance(1000);
  w.f->Pump();
  CHECK(w.Events() == V{"raised:off:d1"});
  CHECK(w.Raised()[0]["value"] == 600);  // seconds offline
  w.Connect("d2", false);
  w.clock.Advance(300'000);
  w.Connect("d2", true);  // back inside the window: nothing
  w.Connect("d1", true);
  CHECK(w.Events() == V{"cleared:off:d1"});
  w.clock.Advance(600'000);
  w.f->Pump();
  CHECK(w.Events().empty());
  // Raise d1 again, then restart: the raised alert is back, and every
  // device of the scope is offline until it connects.
  w.Connect("d1", false);
  w.clock.Advance(600'000);
  w.f->Pump();
  CHECK(w.Events() == V{"raised:off:d1"});
  w.online.clear();  // a restart: nobody is connected yet
  w.f = std::make_unique<AlertFeature>(&w.kv, &w.reg, &w.clock, w.online_fn);
  REQUIRE(w.f->Recover().ok());
  CHECK(w.Raised().size() == 1);
  w.Connect("d1", true);
  CHECK(w.Events() == V{"cleared:off:d1"});
  w.clock.Advance(600'000);
  w.f->Pump();
  CHECK(w.Events() == V{"raised:off:d2"});  // never came back after the restart
  // Retired: its alerts go.
  w.f->OnDeviceRetired(w.t, "d2");
  CHECK(w.Events().empty());
  CHECK(w.Raised(true).size() == 1);  // d1's cleared record
  // Deleting the rule removes its records.
  storage::WriteBatch b;
  std::vector<std::function<void()>> done;
  REQUIRE(w.f->DeleteRule(w.t, "off", &b, &done).ok());
  REQUIRE(w.kv.Write(b, true).ok());
  for (auto& fn : done) fn();
  CHECK(w.Raised(true).empty());
  CHECK(w.f->Rules("acme").empty());
  CHECK(absl::IsNotFound(w.f->DeleteRule(w.t, "off", &b, &done)));
}

TEST_CASE(
    "alerts: a device registered or moved into an offline rule's scope while offline is armed; moved out, cleared") {
  Rig w;
  for (const char* d : {"d1", "d2", "d3"}) w.Connect(d, true);
  REQUIRE(w.Create({{"rule_id", "off"}, {"metric", "offline"}, {"for_s", 600}, {"scope", "group:g1"}}, w.t).ok());
  REQUIRE(w.Create({{"rule_id", "bat"}, {"metric", "battery_pct"}, {"op", "lt"}, {"threshold", 10}}, w.t).ok());
  const V g1{"tenant", "group:g1", "model:m1"}, g2{"tenant", "group:g2", "model:m1"};
  // d3 (offline) moves from g2 into g1; d4 is registered offline in g1; d2
  // (connected) moves too: only the offline ones are armed.
  w.Connect("d3", false);
  w.f->OnScopesChanged("acme", "d3", g2, g1);
  w.f->OnScopesChanged("acme", "d4", {}, g1);
  w.f->OnScopesChanged("acme", "d2", g2, g1);
  w.clock.Advance(600'000);
  w.f->Pump();
  CHECK(w.Events() == V{"raised:off:d3", "raised:off:d4"});
  // Moved out of the scope: the raised alert clears; a pending window ends.
  w.Report("d1", 5);  // the value rule (tenant scope) raises at once (for_s 0)
  CHECK(w.Events() == V{"raised:bat:d1"});
  w.f->OnScopesChanged("acme", "d3", g1, g2);
  CHECK(w.Events() == V{"cleared:off:d3"});
  bool found = false;
  for (const Json& a : w.Raised(true)) {
    if (a["device_id"] == "d3" && a["rule_id"] == "off") {
      CHECK(a["cleared_because"] == "out_of_scope");
      found = true;
    }
  }
  CHECK(found);
  w.Connect("d1", false);
  w.f->OnScopesChanged("acme", "d1", g1, g2);  // out of off's scope, still in bat's
  w.clock.Advance(600'000);
  w.f->Pump();
  CHECK(w.Events().empty());
  CHECK(w.Raised().size() == 2);  // d4 offline, d1 battery
}

TEST_CASE("alerts: ids are per tenant, the cap is per tenant, lists page") {
  Rig w;
  AlertOptions o;
  o.max_rules = 2;
  w.f = std::make_unique<AlertFeature>(&w.kv, &w.reg, &w.clock, w.online_fn, o);
  const TenantId beta = TenantId::FromAuthenticated("beta");
  Json rule{{"rule_id", "r1"}, {"metric", "battery_pct"}, {"op", "lt"}, {"threshold", 10}};
  REQUIRE(w.Create(rule, w.t).ok());
  CHECK(absl::IsAlreadyExists(w.Create(rule, w.t)));
  REQUIRE(w.Create(rule, beta).ok());  // the same id in another tenant
  rule["rule_id"] = "r2";
  REQUIRE(w.Create(rule, w.t).ok());
  rule["rule_id"] = "r3";
  CHECK(absl::IsOutOfRange(w.Create(rule, w.t)));
  CHECK(w.f->Rules("acme").size() == 2);
  CHECK(w.f->Rules("beta").size() == 1);
  w.Report("d1", 1);
  w.Report("d2", 1);
  CHECK(w.Events().size() == 4);  // two rules × two devices, all of acme
  Json items;
  std::string next;
  REQUIRE(w.f->List(beta, true, "", "", "", 100, &items, &next).ok());
  CHECK(items.empty());
  // Pages of one.
  std::string cursor;
  size_t seen = 0;
  do {
    REQUIRE(w.f->List(w.t, false, "", "", cursor, 1, &items, &next).ok());
    seen += items.size();
    cursor = next;
  } while (!cursor.empty());
  CHECK(seen == 4);
  REQUIRE(w.f->List(w.t, false, "r2", "d2", "", 10, &items, &next).ok());
  REQUIRE(items.size() == 1);
  CHECK(items[0]["rule_id"] == "r2");
  CHECK(w.f->List(w.t, false, "", "", "zz", 10, &items, &next).code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fmq::health

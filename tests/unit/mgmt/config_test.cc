// Remote configuration: RFC 7386 merge patches (the RFC's own examples),
// diff generation as a property (apply(diff(a, b), a) == b over random
// documents), the canonical hash, document limits, and the feature with the
// job engine over an in-memory store on a fake clock: merge order, patch
// and whole-document delivery, catch-up on subscribe, acknowledgements and
// every bad report, rejection, drift repair, group pushes as config jobs,
// timeouts, and recovery after a restart.
#include <doctest/doctest.h>

#include <map>
#include <random>
#include <set>

#include "common/clock.h"
#include "mgmt/config/config_feature.h"
#include "mgmt/config/document.h"
#include "mgmt/jobs/job_engine.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace fmq::config {
namespace {

using storage::TenantId;

TEST_CASE("config: RFC 7386 appendix A examples") {
  const char* cases[][3] = {
      {R"({"a":"b"})", R"({"a":"c"})", R"({"a":"c"})"},
      {R"({"a":"b"})", R"({"b":"c"})", R"({"a":"b","b":"c"})"},
      {R"({"a":"b"})", R"({"a":null})", R"({})"},
      {R"({"a":"b","b":"c"})", R"({"a":null})", R"({"b":"c"})"},
      {R"({"a":["b"]})", R"({"a":"c"})", R"({"a":"c"})"},
      {R"({"a":"c"})", R"({"a":["b"]})", R"({"a":["b"]})"},
      {R"({"a":{"b":"c"}})", R"({"a":{"b":"d","c":null}})", R"({"a":{"b":"d"}})"},
      {R"({"a":[{"b":"c"}]})", R"({"a":[1]})", R"({"a":[1]})"},
      {R"(["a","b"])", R"(["c","d"])", R"(["c","d"])"},
      {R"({"a":"b"})", R"(["c"])", R"(["c"])"},
      {R"({"a":"foo"})", R"(null)", R"(null)"},
      {R"({"a":"foo"})", R"("bar")", R"("bar")"},
      {R"({"e":null})", R"({"a":1})", R"({"e":null,"a":1})"},
      {R"([1,2])", R"({"a":"b","c":null})", R"({"a":"b"})"},
      {R"({})", R"({"a":{"bb":{"ccc":null}}})", R"({"a":{"bb":{}}})"},
  };
  for (const auto& c : cases) {
    CAPTURE(c[0]);
    CAPTURE(c[1]);
    CHECK(ApplyMergePatch(Json::parse(c[0]), Json::parse(c[1])) == Json::parse(c[2]));
  }
}

// A random document: nested objects (no null members, as every effective
// document), arrays (which may hold nulls), strings, numbers, booleans.
Json RandomValue(std::mt19937& rng, int depth);
Json RandomObject(std::mt19937& rng, int depth) {
  Json o = Json::object();
  const int n = static_cast<int>(rng() % 6);
  for (int i = 0; i < n; ++i) o["k" + std::to_string(rng() % 8)] = RandomValue(rng, depth + 1);
  return o;
}
Json RandomValue(std::mt19937& rng, int depth) {
  switch (rng() % (depth > 3 ? 4 : 6)) {
    case 0:
      return static_cast<int>(rng() % 100);
    case 1:
      return "s" + std::to_string(rng() % 5);
    case 2:
      return rng() % 2 == 0;
    case 3:
      return (rng() % 1000) / 8.0;
    case 4: {
      Json a = Json::array();
      for (unsigned i = 0; i < rng() % 4; ++i) a.push_back(rng() % 5 == 0 ? Json() : RandomValue(rng, depth + 1));
      return a;
    }
    default:
      return RandomObject(rng, depth);
  }
}
// b as a mutation of a, so the pair shares structure (the interesting case).
Json Mutate(std::mt19937& rng, Json a, int depth = 0) {
  Json b = a;
  for (auto it = a.begin(); it != a.end(); ++it) {
    switch (rng() % 5) {
      case 0:
        b.erase(it.key());
        break;
      case 1:
        b[it.key()] = RandomValue(rng, depth + 1);
        break;
      case 2:
        if (it->is_object()) b[it.key()] = Mutate(rng, *it, depth + 1);
        break;
      default:
        break;
    }
  }
  if (rng() % 2 == 0) b["new" + std::to_string(rng() % 4)] = RandomValue(rng, depth + 1);
  return b;
}

TEST_CASE("config: apply(diff(a, b), a) == b over random documents") {
  std::mt19937 rng(20261202);
  int nontrivial = 0;
  for (int i = 0; i < 3000; ++i) {
    const Json a = RandomObject(rng, 0);
    const Json b = i % 3 == 0 ? RandomObject(rng, 0) : Mutate(rng, a);
    const Json d = MergeDiff(a, b);
    CAPTURE(a.dump());
    CAPTURE(b.dump());
    CAPTURE(d.dump());
    REQUIRE(ApplyMergePatch(a, d) == b);
    if (a == b) CHECK(d == Json::object());
    nontrivial += a != b;
  }
  CHECK(nontrivial > 2000);
  // A small change to a large document is a small patch.
  Json big = Json::object();
  for (int i = 0; i < 200; ++i) big["key" + std::to_string(i)] = std::string(20, 'x');
  Json changed = big;
  changed["key7"] = "y";
  CHECK(Canonical(MergeDiff(big, changed)) == R"({"key7":"y"})");
}

TEST_CASE("config: canonical form and hash") {
  // Members sorted, no white space: the same document however written.
  const Json a = Json::parse(R"({ "b": 1, "a": {"y": [1, 2.5, "x"], "x": true} })");
  const Json b = Json::parse(R"({"a":{"x":true,"y":[1,2.5,"x"]},"b":1})");
  CHECK(Canonical(a) == R"({"a":{"x":true,"y":[1,2.5,"x"]},"b":1})");
  CHECK(Hash(a) == Hash(b));
  // SHA-256 of the canonical text (known value of "{}").
  CHECK(Hash(Json::object()) == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
  CHECK(Hash(a) != Hash(Json::parse(R"({"a":{"x":true,"y":[1,2.5,"x"]},"b":2})")));
}

TEST_CASE("config: document limits name the rule") {
  DocLimits lim;
  lim.max_bytes = 100;
  lim.max_depth = 3;
  lim.max_key_bytes = 8;
  CHECK(CheckDocument(Json::parse(R"({"a":{"b":{"c":1}}})"), lim).empty());
  CHECK(CheckDocument(Json::parse(R"({"a":{"b":{"c":{"d":1}}}})"), lim).find("nesting deeper than 3") !=
        std::string::npos);
  CHECK(CheckDocument(Json::parse(R"({"a":[[[[1]]]]})"), lim).find("nesting") != std::string::npos);
  CHECK(CheckDocument(Json::parse(R"({"abcdefghi":1})"), lim).find("key of 9 bytes") != std::string::npos);
  CHECK(CheckDocument(Json{{"a", std::string(200, 'x')}}, lim).find("config.max_document_bytes") != std::string::npos);
  CHECK(CheckDocument(Json::array(), lim).find("JSON object") != std::string::npos);
  CHECK(CheckDocument(Json("x"), lim).find("JSON object") != std::string::npos);
}

// ---- the feature ----

struct Rig {
  FakeClock clock;
  storage::MemKvStore kv;
  storage::Registry reg{&kv};
  std::set<std::string> online;
  std::unique_ptr<jobs::JobEngine> engine;
  std::unique_ptr<ConfigFeature> cfg;
  mgmt::Output out;
  const TenantId t = TenantId::FromAuthenticated("acme");
  Options opts;

  explicit Rig(int n) {
    storage::WriteBatch b;
    for (const char* g : {"g1", "g2"}) {
      fb::DeviceGroupT gr;
      gr.group_id = g;
      reg.PutGroup(t, gr, &b);
    }
    fb::DeviceModelT m;
    m.model_id = "m";
    reg.PutModel(t, m, &b);
    for (int i = 0; i < n; ++i) {
      fb::DeviceT d;
      d.device_id = "d" + std::to_string(i);
      d.tenant_id = "acme";
      d.serial_number = "s" + std::to_string(i);
      d.model_id = "m";
      d.status = fb::DeviceStatus::Active;
      d.group_ids = {"g1"};
      REQUIRE(reg.PutDevice(t, d, &b).ok());
    }
    REQUIRE(reg.Commit(b).ok());
    Restart();
  }
  void Restart() {
    jobs::Host h;
    h.online = [this](const std::string& tenant, std::string_view d) {
      return tenant == "acme" && online.contains(std::string(d));
    };
    cfg.reset();
    engine = std::make_unique<jobs::JobEngine>(&kv, &reg, &clock, h);
    engine->set_index(0);
    cfg = std::make_unique<ConfigFeature>(&kv, &reg, &clock, engine.get(), opts);
    cfg->set_index(1);
    REQUIRE(engine->Recover().ok());
    REQUIRE(cfg->Recover().ok());
  }
  void Pump() {
    engine->Pump();
    cfg->Pump();
    REQUIRE(engine->Commit(&out).ok());
    REQUIRE(cfg->Commit(&out).ok());
  }
  void Connect(const std::string& d) {
    online.insert(d);
    engine->OnConnected("acme", d);
    cfg->OnConnected("acme", d);
    cfg->OnSubscribed("acme", d);
  }
  void Disconnect(const std::string& d) {
    online.erase(d);
    cfg->OnDisconnected("acme", d);
  }
  // A new version of a target's document, committed (what config.set does).
  ConfigFeature::Change Set(ConfigKind kind, const std::string& id, const Json& doc, int priority = 0) {
    storage::WriteBatch b;
    ConfigFeature::Change c;
    if (kind == ConfigKind::kGroup) {
      fb::DeviceGroupT g;
      REQUIRE(reg.GetGroup(t, id, &g).ok());
      auto ch =
          cfg->NewVersion(t, kind, id, Json::parse(g.config_template_json.empty() ? "{}" : g.config_template_json),
                          g.config_version, doc, "operator:test", &b);
      REQUIRE(ch.ok());
      c = *ch;
      g.config_template_json = Canonical(c.doc);
      g.config_version = c.version;
      g.config_rev = c.rev;
      g.config_priority = priority;
      reg.PutGroup(t, g, &b);
    } else if (kind == ConfigKind::kModel) {
      fb::DeviceModelT m;
      REQUIRE(reg.GetModel(t, id, &m).ok());
      auto ch = cfg->NewVersion(t, kind, id, Json::object(), m.config_version, doc, "operator:test", &b);
      REQUIRE(ch.ok());
      c = *ch;
      m.default_config_json = Canonical(c.doc);
      m.config_version = c.version;
      m.config_rev = c.rev;
      reg.PutModel(t, m, &b);
    } else {
      Json cur;
      uint64_t v = 0;
      REQUIRE(cfg->OverrideOf(t, id, &cur, &v).ok());
      auto ch = cfg->NewVersion(t, kind, id, cur, v, doc, "operator:test", &b);
      REQUIRE(ch.ok());
      c = *ch;
      REQUIRE(cfg->SetOverride(t, id, c, &b).ok());
    }
    REQUIRE(reg.Commit(b).ok());
    cfg->Forget(t, kind, id);
    if (kind == ConfigKind::kDevice) cfg->ReconcileNow(t, id, false);
    return c;
  }
  std::string GroupJob(const std::string& group, uint64_t rev, const char* id = "cj1") {
    jobs::JobEngine::NewJob nj;
    nj.job_id = id;
    nj.type = fb::JobType::Config;
    nj.document_json = Json{{"kind", "group"}, {"id", group}, {"rev", rev}}.dump();
    nj.target.has_query = true;
    nj.target.filter.group_id = group;
    storage::WriteBatch b;
    fb::JobT rec;
    REQUIRE(engine->Create(t, nj, &b, &rec).ok());
    REQUIRE(reg.Commit(b).ok());
    engine->Activate(t, rec);
    return rec.job_id;
  }
  // config/desired messages sent since the last call, by device.
  std::map<std::string, std::vector<Json>> Sent() {
    std::map<std::string, std::vector<Json>> m;
    std::vector<mgmt::DeviceSend> keep;
    for (auto& s : out.sends) {
      if (s.suffix == "config/desired") {
        Json j = Json::parse(s.payload);
        j["_token"] = s.token;
        m[s.device_id].push_back(j);
      } else {
        keep.push_back(std::move(s));
      }
    }
    out.sends = std::move(keep);
    return m;
  }
  std::vector<Json> Replies(const std::string& device, const std::string& suffix) {
    std::vector<Json> r;
    for (const auto& s : out.sends) {
      if (s.device_id == device && s.suffix == suffix) r.push_back(Json::parse(s.payload));
    }
    return r;
  }
  void Report(const std::string& d, const Json& body) {
    mgmt::DeviceMessage m;
    m.tenant = "acme";
    m.device_id = d;
    m.topic = "config/report";
    m.body = body;
    REQUIRE(cfg->Validate(m.topic, body).empty());
    cfg->OnDeviceMessage(m);
  }
  // What a device does with a config/desired: apply and acknowledge.
  Json Apply(const std::string& d, const Json& have, const Json& msg) {
    Json next = msg.contains("document") ? msg["document"] : ApplyMergePatch(have, msg["patch"]);
    CHECK(Hash(next) == msg["hash"]);
    cfg->OnOutcome(msg["_token"].get<uint64_t>(), true, "acked");
    Report(d, Json{{"version", msg["version"]}, {"status", "APPLIED"}, {"hash", Hash(next)}});
    return next;
  }
  fb::DeviceConfigT State(const std::string& d) {
    fb::DeviceConfigT dc;
    REQUIRE(cfg->StateOf(t, d, &dc).ok());
    return dc;
  }
  Desired Want(const std::string& d) {
    fb::DeviceT dev;
    REQUIRE(reg.GetDevice(t, d, &dev).ok());
    Desired w;
    REQUIRE(cfg->DesiredOf(t, dev, State(d), &w).ok());
    return w;
  }
};

TEST_CASE("config: the effective document merges model, groups by priority, then the device's own") {
  Rig r(1);
  r.Set(ConfigKind::kModel, "m", Json{{"a", 1}, {"b", 1}, {"keep", "model"}});
  r.Set(ConfigKind::kGroup, "g2", Json{{"c", "g2"}, {"b", "g2"}}, 5);
  r.Set(ConfigKind::kGroup, "g1", Json{{"b", "g1"}, {"c", "g1"}, {"nested", {{"x", 1}, {"y", 1}}}}, 1);
  fb::DeviceT d;
  REQUIRE(r.reg.GetDevice(r.t, "d0", &d).ok());
  d.group_ids = {"g1", "g2"};
  storage::WriteBatch b;
  REQUIRE(r.reg.PutDevice(r.t, d, &b).ok());
  REQUIRE(r.reg.Commit(b).ok());
  r.cfg->OnDeviceJoined(r.t, d);
  // The device's own document deletes an inherited key with null.
  const auto own = r.Set(ConfigKind::kDevice, "d0", Json{{"a", nullptr}, {"nested", {{"y", 2}}}, {"d", true}});
  const Desired w = r.Want("d0");
  // g1 (priority 1) before g2 (priority 5): g2 wins "b" and "c".
  CHECK(w.doc->doc == Json{{"b", "g2"}, {"c", "g2"}, {"keep", "model"}, {"nested", {{"x", 1}, {"y", 2}}}, {"d", true}});
  REQUIRE(w.inputs.size() == 4);
  CHECK(w.inputs[0]["kind"] == "model");
  CHECK(w.inputs[1]["id"] == "g1");
  CHECK(w.inputs[2]["id"] == "g2");
  CHECK(w.inputs[3]["kind"] == "device");
  CHECK(w.version == own.rev);  // the greatest revision among its inputs
  // Priorities swapped: g1 wins.
  r.Set(ConfigKind::kGroup, "g1", Json{{"b", "g1"}, {"c", "g1"}, {"nested", {{"x", 1}, {"y", 1}}}}, 9);
  const Desired w2 = r.Want("d0");
  CHECK(w2.doc->doc["b"] == "g1");
  CHECK(w2.version > w.version);
}

TEST_CASE("config: a device change goes out at once; the next one as a patch on what it applied") {
  Rig r(1);
  r.Connect("d0");
  r.Pump();
  CHECK(r.Sent().empty());  // nothing to have yet: in sync with {}
  const Json doc1{{"rate", 10}, {"mode", "eco"}, {"servers", {"a", "b"}}, {"blob", std::string(300, 'x')}};
  r.Set(ConfigKind::kDevice, "d0", doc1);
  r.Pump();
  auto sent = r.Sent();
  REQUIRE(sent["d0"].size() == 1);
  Json m1 = sent["d0"][0];
  CHECK(m1.contains("document"));  // from {}: the whole document is no larger than a patch
  Json have = r.Apply("d0", Json::object(), m1);
  r.Pump();
  CHECK(r.Replies("d0", "config/report/accepted").size() == 1);
  fb::DeviceConfigT st = r.State("d0");
  CHECK(st.applied_version == m1["version"].get<uint64_t>());
  CHECK(st.applied_hash == Hash(doc1));
  CHECK(ConfigFeature::Shown(st, r.Want("d0")) == fb::ConfigState::Applied);

  r.Set(ConfigKind::kDevice, "d0",
        Json{{"rate", 20}, {"mode", "eco"}, {"servers", {"a", "b"}}, {"blob", std::string(300, 'x')}});
  r.Pump();
  sent = r.Sent();
  REQUIRE(sent["d0"].size() == 1);
  Json m2 = sent["d0"][0];
  REQUIRE(m2.contains("patch"));
  CHECK(m2["patch"] == Json{{"rate", 20}});
  CHECK(m2["base_version"] == m1["version"]);
  CHECK(m2["base_hash"] == Hash(doc1));
  have = r.Apply("d0", have, m2);
  r.Pump();
  CHECK(r.State("d0").applied_version == m2["version"].get<uint64_t>());
  CHECK(r.cfg->stats().patches == 1);
}

TEST_CASE("config: five changes while offline arrive as one message when the device subscribes") {
  Rig r(1);
  for (int i = 1; i <= 5; ++i) r.Set(ConfigKind::kDevice, "d0", Json{{"n", i}, {"history", Json::array({i})}});
  r.Pump();
  CHECK(r.Sent().empty());  // offline: nothing sent
  r.Connect("d0");
  r.Pump();
  auto sent = r.Sent();
  REQUIRE(sent["d0"].size() == 1);
  const Json& m = sent["d0"][0];
  CHECK(m["version"] == r.Want("d0").version);
  Json have = m.contains("document") ? m["document"] : ApplyMergePatch(Json::object(), m["patch"]);
  CHECK(have == Json{{"n", 5}, {"history", Json::array({5})}});
  r.Apply("d0", Json::object(), m);
  r.Pump();
  // Reconnecting in sync sends nothing.
  r.Disconnect("d0");
  r.Connect("d0");
  r.Pump();
  CHECK(r.Sent().empty());
}

TEST_CASE("config: bad reports are refused with a code and change nothing") {
  Rig r(1);
  r.Connect("d0");
  r.Set(ConfigKind::kDevice, "d0", Json{{"a", 1}});
  r.Pump();
  Json m = r.Sent()["d0"].at(0);
  const uint64_t v = m["version"].get<uint64_t>();
  const fb::DeviceConfigT before = r.State("d0");
  auto code = [&](const Json& body) {
    r.out.sends.clear();
    r.Report("d0", body);
    r.Pump();
    auto rej = r.Replies("d0", "config/report/rejected");
    return rej.empty() ? std::string("none") : rej[0]["error"]["code"].get<std::string>();
  };
  CHECK(code(Json{{"version", v + 100}, {"status", "APPLIED"}, {"hash", Hash(Json{{"a", 1}})}}) == "unknown_version");
  CHECK(code(Json{{"version", v - 1}, {"status", "APPLIED"}, {"hash", Hash(Json{{"a", 1}})}}) == "stale_version");
  CHECK(r.Sent().empty());  // the desired version is in flight already: not sent twice
  CHECK(r.State("d0").applied_version == before.applied_version);
  CHECK(r.cfg->stats().reports_refused == 2);
  // Schema: each a bad_request on the worker (Validate), never reaching the feature.
  for (const char* bad : {R"({"status":"APPLIED","hash":"00"})", R"({"version":1,"status":"DONE"})",
                          R"({"version":1,"status":"APPLIED"})", R"({"version":1,"status":"APPLIED","hash":"XYZ"})",
                          R"({"version":-1,"status":"REJECTED"})", R"({"version":1,"status":"REJECTED","x":1})"}) {
    CAPTURE(bad);
    CHECK_FALSE(r.cfg->Validate("config/report", Json::parse(bad)).empty());
  }
  CHECK_FALSE(
      r.cfg->Validate("config/report", Json{{"version", 1}, {"status", "REJECTED"}, {"reason", std::string(300, 'r')}})
          .empty());
  CHECK_FALSE(r.cfg->Validate("config/get", Json{{"full", true}}).empty());
  CHECK(r.cfg->Validate("config/get", Json::object()).empty());
  // Wrong hash: drift, repaired by the whole document once; a second wrong hash is REJECTED.
  CHECK(code(Json{{"version", v}, {"status", "APPLIED"}, {"hash", std::string(64, 'a')}}) == "hash_mismatch");
  auto resent = r.Sent();
  REQUIRE(resent["d0"].size() == 1);
  CHECK(resent["d0"][0].contains("document"));
  CHECK(r.cfg->stats().drift_repairs == 1);
  CHECK(code(Json{{"version", v}, {"status", "APPLIED"}, {"hash", std::string(64, 'b')}}) == "hash_mismatch");
  CHECK(r.State("d0").state == fb::ConfigState::Rejected);
  CHECK(r.State("d0").applied_version == before.applied_version);
  // The right hash still applies it.
  CHECK(code(Json{{"version", v}, {"status", "APPLIED"}, {"hash", Hash(Json{{"a", 1}})}}) == "none");
  CHECK(r.State("d0").applied_version == v);
}

TEST_CASE("config: a rejection keeps the device's reason and is not resent for that version") {
  Rig r(1);
  r.Connect("d0");
  r.Set(ConfigKind::kDevice, "d0", Json{{"mode", "turbo"}});
  r.Pump();
  Json m = r.Sent()["d0"].at(0);
  r.Report("d0", Json{{"version", m["version"]}, {"status", "REJECTED"}, {"reason", "mode turbo unsupported"}});
  r.Pump();
  const fb::DeviceConfigT st = r.State("d0");
  CHECK(st.state == fb::ConfigState::Rejected);
  CHECK(st.reason == "mode turbo unsupported");
  CHECK(ConfigFeature::Shown(st, r.Want("d0")) == fb::ConfigState::Rejected);
  r.Disconnect("d0");
  r.Connect("d0");
  r.Pump();
  CHECK(r.Sent().empty());
  // A new version goes out again.
  r.Set(ConfigKind::kDevice, "d0", Json{{"mode", "eco"}});
  r.Pump();
  CHECK(r.Sent()["d0"].size() == 1);
}

TEST_CASE("config: a group change is a config job; offline devices get it when they subscribe") {
  Rig r(10);
  for (int i = 0; i < 9; ++i) r.Connect("d" + std::to_string(i));  // d9 offline
  r.Pump();
  r.Sent();
  const auto c = r.Set(ConfigKind::kGroup, "g1", Json{{"interval_s", 30}});
  const std::string job = r.GroupJob("g1", c.rev);
  for (int turn = 0; turn < 5; ++turn) r.Pump();
  auto sent = r.Sent();
  CHECK(sent.size() == 9);
  for (auto& [dev, msgs] : sent) {
    REQUIRE(msgs.size() == 1);
    r.Apply(dev, Json::object(), msgs[0]);
  }
  r.Pump();
  auto d = r.engine->Describe(r.t, job);
  REQUIRE(d.ok());
  CHECK((*d)["type"] == "config");
  CHECK((*d)["counts"]["SUCCEEDED"] == 9);
  CHECK((*d)["status"] == "IN_PROGRESS");
  // Devices were not told about the job on the jobs topics.
  for (const auto& s : r.out.sends) CHECK(s.suffix != "jobs/notify");
  r.Connect("d9");
  r.Pump();
  auto late = r.Sent();
  REQUIRE(late["d9"].size() == 1);
  r.Apply("d9", Json::object(), late["d9"][0]);
  r.Pump();
  r.Pump();
  d = r.engine->Describe(r.t, job);
  CHECK((*d)["counts"]["SUCCEEDED"] == 10);
  CHECK((*d)["status"] == "COMPLETED");
  // One audit entry per acknowledgement, none per job execution.
  storage::Page<fb::AuditEntryT> page;
  REQUIRE(r.reg.AuditOfDevice(r.t, "d3", "", 100, &page).ok());
  int applied = 0;
  for (const auto& e : page.items) {
    applied += e.action == "config.applied";
    CHECK(e.action != "job.execution");
  }
  CHECK(applied == 1);
}

TEST_CASE("config: a second change while the first is in flight: the device ends on the latest, both jobs succeed") {
  Rig r(3);
  for (int i = 0; i < 3; ++i) r.Connect("d" + std::to_string(i));
  r.Pump();
  r.Sent();
  const auto c1 = r.Set(ConfigKind::kGroup, "g1", Json{{"v", 1}});
  r.GroupJob("g1", c1.rev, "cj1");
  r.Pump();
  r.Pump();  // resolved in the first turn, started in the next
  auto first = r.Sent();
  REQUIRE(first.size() == 3);
  const auto c2 = r.Set(ConfigKind::kGroup, "g1", Json{{"v", 2}});
  r.GroupJob("g1", c2.rev, "cj2");
  r.Pump();
  r.Pump();
  // cj2 starts: the latest version goes out at once, the first still unanswered.
  auto second = r.Sent();
  REQUIRE(second.size() == 3);
  // The devices acknowledge the first version: stale, nothing more is sent.
  for (auto& [dev, msgs] : first) {
    r.cfg->OnOutcome(msgs[0]["_token"].get<uint64_t>(), true, "acked");
    r.Report(dev, Json{{"version", msgs[0]["version"]}, {"status", "APPLIED"}, {"hash", msgs[0]["hash"]}});
  }
  r.Pump();
  CHECK(r.Replies("d0", "config/report/rejected").at(0)["error"]["code"] == "stale_version");
  CHECK(r.Sent().empty());
  for (auto& [dev, msgs] : second) {
    REQUIRE(msgs.size() == 1);
    CHECK(msgs[0]["version"] == c2.rev);
    Json have = r.Apply(dev, Json::object(), msgs[0]);
    CHECK(have == Json{{"v", 2}});
  }
  for (int i = 0; i < 3; ++i) r.Pump();
  for (const char* j : {"cj1", "cj2"}) {
    auto d = r.engine->Describe(r.t, j);
    CAPTURE(j);
    CHECK((*d)["counts"]["SUCCEEDED"] == 3);
    CHECK((*d)["status"] == "COMPLETED");
  }
}

TEST_CASE("config: no answer within the timeout is TIMED_OUT, and sent again on the next subscribe") {
  Rig r(1);
  r.opts.ack_timeout_ms = 5000;
  r.Restart();
  r.Connect("d0");
  r.Set(ConfigKind::kDevice, "d0", Json{{"a", 1}});
  r.Pump();
  REQUIRE(r.Sent()["d0"].size() == 1);
  r.clock.Advance(5001);
  r.Pump();
  fb::DeviceConfigT st = r.State("d0");
  CHECK(st.state == fb::ConfigState::TimedOut);
  CHECK(ConfigFeature::Shown(st, r.Want("d0")) == fb::ConfigState::TimedOut);
  r.Disconnect("d0");
  r.Connect("d0");
  r.Pump();
  CHECK(r.Sent()["d0"].size() == 1);
}

TEST_CASE("config: DELIVERED is shown at once and written only when no answer came within a second") {
  Rig r(2);
  r.Connect("d0");
  r.Connect("d1");
  r.Set(ConfigKind::kDevice, "d0", Json{{"a", 1}});
  r.Set(ConfigKind::kDevice, "d1", Json{{"a", 2}});
  r.Pump();
  auto sent = r.Sent();
  for (const char* d : {"d0", "d1"}) r.cfg->OnOutcome(sent[d].at(0)["_token"].get<uint64_t>(), true, "acked");
  const uint64_t v0 = sent["d0"][0]["version"].get<uint64_t>();
  r.Report("d1", Json{{"version", sent["d1"][0]["version"]}, {"status", "APPLIED"}, {"hash", Hash(Json{{"a", 2}})}});
  r.Pump();
  CHECK(r.State("d0").delivered_version == v0);  // shown from memory
  CHECK(ConfigFeature::Shown(r.State("d0"), r.Want("d0")) == fb::ConfigState::Delivered);
  fb::DeviceConfigT stored;
  REQUIRE(r.reg.GetDeviceConfig(r.t, "d0", &stored).ok());
  CHECK(stored.delivered_version == 0);  // not written yet
  r.clock.Advance(1001);
  r.Pump();
  REQUIRE(r.reg.GetDeviceConfig(r.t, "d0", &stored).ok());
  CHECK(stored.delivered_version == v0);
  CHECK(stored.state == fb::ConfigState::Delivered);
  // d1 answered within the second: its record says APPLIED, never DELIVERED.
  REQUIRE(r.reg.GetDeviceConfig(r.t, "d1", &stored).ok());
  CHECK(stored.state == fb::ConfigState::Applied);
}

TEST_CASE("config: with audit_applied off, APPLIED answers write no audit entry; rejections still do") {
  Rig r(2);
  r.opts.audit_applied = false;
  r.Restart();
  r.Connect("d0");
  r.Connect("d1");
  r.Set(ConfigKind::kDevice, "d0", Json{{"a", 1}});
  r.Set(ConfigKind::kDevice, "d1", Json{{"a", 2}});
  r.Pump();
  auto sent = r.Sent();
  r.Apply("d0", Json::object(), sent["d0"].at(0));
  r.Report("d1", Json{{"version", sent["d1"].at(0)["version"]}, {"status", "REJECTED"}, {"reason", "no"}});
  r.Pump();
  CHECK(r.State("d0").state == fb::ConfigState::Applied);
  auto actions = [&](const char* d) {
    std::multiset<std::string> a;
    storage::Page<fb::AuditEntryT> page;
    REQUIRE(r.reg.AuditOfDevice(r.t, d, "", 100, &page).ok());
    for (const auto& e : page.items) a.insert(e.action);
    return a;
  };
  CHECK(actions("d0").count("config.applied") == 0);
  CHECK(actions("d1").count("config.rejected") == 1);
}

TEST_CASE("config: the audit chain stays whole when the job engine's commit fails in the same turn") {
  Rig r(2);
  r.Connect("d0");
  r.Connect("d1");
  // A command job's execution of d1 ends this turn (an audit entry in the engine's batch) ...
  jobs::JobEngine::NewJob nj;
  nj.job_id = "cmd";
  nj.document_json = R"({"command":"x"})";
  nj.target.device_ids = {"d1"};
  storage::WriteBatch b;
  fb::JobT rec;
  REQUIRE(r.engine->Create(r.t, nj, &b, &rec).ok());
  REQUIRE(r.reg.Commit(b).ok());
  r.engine->Activate(r.t, rec);
  r.Set(ConfigKind::kDevice, "d0", Json{{"a", 1}});
  r.Pump();
  uint32_t attempt = 0;
  for (const auto& s : r.out.sends) {
    if (s.suffix == "jobs/notify") attempt = Json::parse(s.payload)["attempt"].get<uint32_t>();
  }
  REQUIRE(attempt == 1);
  auto sent = r.Sent();
  jobs::Report rep;
  rep.tenant = "acme";
  rep.device_id = "d1";
  rep.job_id = "cmd";
  rep.attempt = attempt;
  rep.status = jobs::ExecState::Succeeded;
  r.engine->OnReport(rep);
  // ... and d0's configuration answer (an audit entry of the config feature).
  r.Apply("d0", Json::object(), sent["d0"].at(0));
  r.engine->Pump();
  r.kv.FailWrites(absl::UnavailableError("disk"));
  CHECK_FALSE(r.engine->Commit(&r.out).ok());
  r.kv.FailWrites(absl::OkStatus());
  REQUIRE(r.cfg->Commit(&r.out).ok());
  uint64_t n = 0;
  absl::Status v = r.reg.VerifyAudit(r.t, &n);
  CHECK_MESSAGE(v.ok(), v.message());
  CHECK(n >= 1);
}

TEST_CASE("config: after a restart a group push resumes and every device ends APPLIED on the latest") {
  Rig r(20);
  for (int i = 0; i < 20; ++i) r.Connect("d" + std::to_string(i));
  r.Pump();
  r.Sent();
  const auto c = r.Set(ConfigKind::kGroup, "g1", Json{{"x", "y"}});
  r.GroupJob("g1", c.rev);
  r.Pump();
  r.Pump();
  auto sent = r.Sent();
  int n = 0;
  for (auto& [dev, msgs] : sent) {
    if (n++ < 7) r.Apply(dev, Json::object(), msgs[0]);  // 7 answer before the crash
  }
  r.Pump();
  // kill -9: what is in memory is gone; devices reconnect.
  r.online.clear();
  r.Restart();
  for (int i = 0; i < 20; ++i) r.Connect("d" + std::to_string(i));
  for (int i = 0; i < 3; ++i) r.Pump();
  auto again = r.Sent();
  CHECK(again.size() == 13);  // only those that had not applied
  for (auto& [dev, msgs] : again) r.Apply(dev, Json::object(), msgs.back());
  for (int i = 0; i < 3; ++i) r.Pump();
  for (int i = 0; i < 20; ++i) {
    const std::string d = "d" + std::to_string(i);
    CAPTURE(d);
    CHECK(r.State(d).applied_version == r.Want(d).version);
    CHECK(r.State(d).applied_hash == Hash(Json{{"x", "y"}}));
  }
  auto d = r.engine->Describe(r.t, "cj1");
  CHECK((*d)["counts"]["SUCCEEDED"] == 20);
  CHECK((*d)["status"] == "COMPLETED");
}

}  // namespace
}  // namespace fmq::config

// The management module on a fake clock, with the real management thread
// over an in-memory store: denied connects refused and audited once per
// window, the window's count written when it ends, and the module's
// periodic duties running while requests keep arriving.
#include "broker/modules/admin_module.h"

#include <doctest/doctest.h>
#include <stdlib.h>

#include <chrono>
#include <thread>

#include "common/clock.h"
#include "mgmt/pki/pki_dir.h"
#include "storage/kv_store.h"

namespace fmq {
namespace {

using storage::TenantId;

struct World {
  FakeClock clock;
  storage::MemKvStore kv;
  std::string dir;
  std::unique_ptr<admin::Service> svc;
  std::unique_ptr<AdminModule> mod;

  explicit World(AdminModuleOptions o = {}) {
    char tmpl[] = "/tmp/fmq-module-XXXXXX";
    dir = mkdtemp(tmpl);
    REQUIRE(pki::EnsurePki(dir + "/pki", "acme", "localhost", clock.WallMs()).ok());
    admin::ServiceOptions so;
    so.pki_dir = dir + "/pki";
    svc = std::make_unique<admin::Service>(&kv, &clock, so);
    mod = std::make_unique<AdminModule>(svc.get(), &kv, &clock, o);
    REQUIRE(mod->Start().ok());
  }
  ~World() {
    mod->Stop();
    (void)system(("rm -rf " + dir).c_str());
  }

  // Audit entries of acme whose action is `action`, read beside the thread.
  std::vector<fb::AuditEntryT> Audit(const std::string& action) {
    storage::Registry reader(&kv);
    storage::Page<fb::AuditEntryT> page;
    std::vector<fb::AuditEntryT> out;
    if (!reader.AuditInRange(TenantId::FromAuthenticated("acme"), 0, INT64_MAX, "", 1000, &page).ok()) return out;
    for (auto& e : page.items) {
      if (e.action == action) out.push_back(std::move(e));
    }
    return out;
  }
  template <class F>
  static bool Eventually(F&& cond) {  // the thread runs in real time
    for (int i = 0; i < 300; ++i) {
      if (cond()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return cond();
  }
};

TEST_CASE("AdminModule: a retired device's CONNECTs are refused and audited once per window") {
  AdminModuleOptions o;
  o.denied_audit_window_ms = 60'000;
  World w(o);
  PeerIdentity id{"acme", "dev-1", true, false, "abcd", {}};
  ClientInfo info;
  info.client_id = "dev-1";
  info.tenant = "acme";
  info.identity = &id;
  mqtt::Connect ck;
  // A retired (decommissioned) device is kept out by the module's own gate
  // (no TLS context here), as Init reports it after a restart.
  admin::Actor op{"acme", "alice", admin::Role::kOperator, "op"};
  admin::Effects fx;
  auto run = [&](const std::string& cmd) { return w.svc->Handle(op, R"({"commands":[)" + cmd + "]}", &fx); };
  // Stop the thread while we use the service directly, then restart it.
  w.mod->Stop();
  run(R"({"command":"model.create","model_id":"m1"})");
  run(R"({"command":"device.register","serial_number":"s1","model_id":"m1","device_id":"dev-1"})");
  run(R"({"command":"device.decommission","device_id":"dev-1"})");
  w.mod = std::make_unique<AdminModule>(w.svc.get(), &w.kv, &w.clock, o);
  REQUIRE(w.mod->Start().ok());  // Init reports the suspended device: blocked

  for (int i = 0; i < 5; ++i) CHECK(w.mod->Authenticate(ck, info) == mqtt::ReasonCode::kBanned);
  CHECK(w.mod->counters().blocked_connects.load() == 5);
  REQUIRE(World::Eventually([&] { return w.Audit("device.connect").size() == 1; }));
  // Within the window nothing more is written, whatever the rate.
  for (int i = 0; i < 20; ++i) w.mod->Authenticate(ck, info);
  w.clock.Advance(30'000);
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));  // a duty round passes
  CHECK(w.Audit("device.connect").size() == 1);
  // The window ends: one entry with the count of the others.
  w.clock.Advance(31'000);
  REQUIRE(World::Eventually([&] { return w.Audit("device.connect").size() == 2; }));
  const auto entries = w.Audit("device.connect");
  CHECK(entries[0].result.find("suspended or retired") != std::string::npos);
  CHECK(entries[1].result.find("(24 more attempts within 60 s)") != std::string::npos);
  // After the window a new denial is audited at once again.
  w.mod->Authenticate(ck, info);
  CHECK(World::Eventually([&] { return w.Audit("device.connect").size() == 3; }));
  // The tracking bound: beyond it denials are counted, not audited.
  CHECK(w.mod->counters().denied_unaudited.load() == 0);
}

TEST_CASE("AdminModule: the denial tracking bound counts what it cannot audit") {
  AdminModuleOptions o;
  o.max_denied_tracked = 1;
  World w(o);
  // Devices on the control topic: denied (and audited) through Deny.
  Message m;
  m.topic = "$T/acme/$SYS/fleetmq/control/v1";
  for (const char* dev : {"d1", "d2", "d3"}) {
    PeerIdentity id{"acme", dev, true, false, "", {}};
    ClientInfo info;
    info.client_id = dev;
    info.tenant = "acme";
    info.identity = &id;
    CHECK(w.mod->OnControlPublish(info, m) == mqtt::ReasonCode::kNotAuthorized);
  }
  CHECK(w.mod->counters().denied_unaudited.load() == 2);  // d2 and d3: over the bound of 1
  CHECK(World::Eventually([&] { return w.Audit("request").size() == 1; }));
}

}  // namespace
}  // namespace fmq

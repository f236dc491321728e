// The admin control plane's executor against an in-memory store and a real
// PKI in a temporary directory: the lifecycle transition table, role and
// tenant isolation for every command, bad requests, audit, effects.
#include <doctest/doctest.h>
#include <mbedtls/x509_csr.h>
#include <stdlib.h>

#include <fstream>
#include <set>
#include <sstream>

#include "common/clock.h"
#include "mgmt/admin/commands.h"
#include "mgmt/admin/service.h"
#include "mgmt/pki/pki_dir.h"
#include "storage/kv_store.h"

namespace fmq::admin {
namespace {

std::string MakeCsr(pki::Rng& rng, const std::string& cn) {
  auto key = pki::Key::Generate(rng);
  mbedtls_x509write_csr w;
  mbedtls_x509write_csr_init(&w);
  mbedtls_x509write_csr_set_key(&w, key->pk());
  mbedtls_x509write_csr_set_md_alg(&w, MBEDTLS_MD_SHA256);
  mbedtls_x509write_csr_set_subject_name(&w, ("CN=" + cn).c_str());
  unsigned char buf[4096];
  REQUIRE(mbedtls_x509write_csr_pem(&w, buf, sizeof buf, pki::Rng::Fill, &rng) == 0);
  mbedtls_x509write_csr_free(&w);
  return reinterpret_cast<char*>(buf);
}

struct World {
  FakeClock clock;
  storage::MemKvStore kv;
  std::string dir;
  std::unique_ptr<Service> svc;
  Actor admin{pki::kPlatformTenant, "root", Role::kAdmin, "a1"};
  Actor acme{"acme", "alice", Role::kOperator, "op1"};
  Actor beta{"beta", "bob", Role::kOperator, "op2"};
  Actor device{"acme", "dev-1", Role::kDevice, "dev-1"};
  pki::Rng rng;

  World() {
    char tmpl[] = "/tmp/fmq-admin-XXXXXX";
    dir = mkdtemp(tmpl);
    REQUIRE(pki::EnsurePki(dir + "/pki", "acme", "localhost", clock.WallMs()).ok());
    ServiceOptions o;
    o.pki_dir = dir + "/pki";
    svc = std::make_unique<Service>(&kv, &clock, o);
    Effects fx;
    REQUIRE(svc->Init(&fx).ok());
    CHECK(Ok(Run(admin, R"({"command":"tenant.create","tenant_id":"beta"})")));
  }
  ~World() { (void)system(("rm -rf " + dir).c_str()); }

  Json Request(const Actor& who, const std::string& text, Effects* fx = nullptr) {
    Effects local;
    return Json::parse(svc->Handle(who, text, fx ? fx : &local));
  }
  Json Run(const Actor& who, const std::string& cmd, Effects* fx = nullptr) {
    Json r = Request(who, R"({"commands":[)" + cmd + "]}", fx);
    REQUIRE(r.contains("responses"));
    return r["responses"][0];
  }
  Json Run(const Actor& who, const char* cmd, Effects* fx = nullptr) { return Run(who, std::string(cmd), fx); }
  Json Run(const Actor& who, const Json& cmd, Effects* fx = nullptr) { return Run(who, cmd.dump(), fx); }
  static bool Ok(const Json& r) { return r.value("status", "") == "ok"; }
  static std::string Code(const Json& r) { return r.contains("error") ? r["error"].value("code", "") : ""; }

  void Setup(const Actor& who) {
    REQUIRE(Ok(Run(who, R"({"command":"model.create","model_id":"m1"})")));
    REQUIRE(Ok(Run(who, R"({"command":"group.create","group_id":"g1"})")));
  }
  // Registers `id`, provisioned when `csr`.
  Json Register(const Actor& who, const std::string& id, bool csr = true) {
    Json c{{"command", "device.register"},
           {"serial_number", "SN-" + id},
           {"model_id", "m1"},
           {"group_ids", {"g1"}},
           {"device_id", id}};
    if (csr) c["csr"] = MakeCsr(rng, id);
    return Run(who, c);
  }
  std::string Status(const Actor& who, const std::string& id) {
    Json r = Run(who, Json{{"command", "device.get"}, {"device_id", id}});
    return Ok(r) ? r["data"]["status"].get<std::string>() : Code(r);
  }
};

TEST_CASE("admin: register returns a certificate chaining to the tenant CA") {
  World w;
  w.Setup(w.acme);
  Json r = w.Register(w.acme, "dev-1");
  REQUIRE(World::Ok(r));
  CHECK(r["data"]["status"] == "provisioned");
  CHECK(r["data"]["certificate_pem"].get<std::string>().find("BEGIN CERTIFICATE") != std::string::npos);
  CHECK(r["data"]["ca_chain_pem"].get<std::string>().size() > 500);
  CHECK(r["data"]["mqtt_endpoint"] == "mqtts://127.0.0.1:8883");
  // Same serial number twice: refused, nothing written.
  Json again = w.Run(w.acme, Json{{"command", "device.register"}, {"serial_number", "SN-dev-1"}, {"model_id", "m1"}});
  CHECK(World::Code(again) == "already_exists");
  // A CSR with a foreign CN is refused and leaves no device.
  Json bad = w.Run(w.acme, Json{{"command", "device.register"},
                                {"serial_number", "SN-x"},
                                {"model_id", "m1"},
                                {"device_id", "dev-x"},
                                {"csr", MakeCsr(w.rng, "someone-else")}});
  CHECK(World::Code(bad) == "invalid_argument");
  CHECK(w.Status(w.acme, "dev-x") == "not_found");
  // Unknown model and group.
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.register","serial_number":"q","model_id":"nope"})")) ==
        "not_found");
  CHECK(World::Code(
            w.Run(w.acme, R"({"command":"device.register","serial_number":"q","model_id":"m1","group_ids":["zz"]})")) ==
        "not_found");
}

TEST_CASE("admin: lifecycle transition table") {
  // action → states it is allowed from (everything else: invalid_transition).
  const std::vector<std::pair<std::string, std::vector<std::string>>> table = {
      {"device.activate", {"provisioned"}},
      {"device.suspend", {"provisioned", "active"}},
      {"device.resume", {"suspended"}},
      {"device.decommission", {"registered", "provisioned", "active", "suspended"}},
  };
  const std::vector<std::string> states = {"registered", "provisioned",    "active",
                                           "suspended",  "decommissioned", "replaced"};
  for (const auto& [action, allowed] : table) {
    for (const std::string& from : states) {
      CAPTURE(action);
      CAPTURE(from);
      World w;
      w.Setup(w.acme);
      REQUIRE(World::Ok(w.Register(w.acme, "d", from != "registered")));
      auto run = [&](const char* a) { return w.Run(w.acme, Json{{"command", a}, {"device_id", "d"}}); };
      if (from == "active" || from == "suspended") REQUIRE(World::Ok(run("device.activate")));
      if (from == "suspended") REQUIRE(World::Ok(run("device.suspend")));
      if (from == "decommissioned") REQUIRE(World::Ok(run("device.decommission")));
      if (from == "replaced") {
        REQUIRE(World::Ok(w.Register(w.acme, "n", false)));
        REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.replace","device_id":"d","new_device_id":"n"})")));
      }
      REQUIRE(w.Status(w.acme, "d") == from);
      Json r = run(action.c_str());
      const bool ok = std::find(allowed.begin(), allowed.end(), from) != allowed.end();
      CHECK(World::Ok(r) == ok);
      if (!ok) {
        CHECK(World::Code(r) == "invalid_transition");
        CHECK(r["error"]["message"].get<std::string>().find(from) != std::string::npos);  // names the state
        CHECK(w.Status(w.acme, "d") == from);
      }
    }
  }
}

TEST_CASE("admin: suspend and decommission tell the broker to act") {
  World w;
  w.Setup(w.acme);
  Json reg = w.Register(w.acme, "dev-1");
  const std::string serial = reg["data"]["certificate_serial"];
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.activate","device_id":"dev-1"})")));
  Effects fx;
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.suspend","device_id":"dev-1"})", &fx)));
  REQUIRE(fx.blocks.size() == 1);
  CHECK(fx.blocks[0].blocked);
  REQUIRE(fx.kicks.size() == 1);
  CHECK(fx.kicks[0].device_id == "dev-1");
  CHECK(fx.revoked.empty());
  Effects fx2;
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.decommission","device_id":"dev-1"})", &fx2)));
  REQUIRE(fx2.revoked.size() == 1);
  CHECK(fx2.revoked[0] == std::make_pair(std::string("acme"), serial));
  REQUIRE(fx2.publishes.size() == 1);  // the re-signed CRL
  CHECK(fx2.publishes[0].topic == "$SYS/fleetmq/crl/v1");
  CHECK(fx2.publishes[0].retain);
  Json certs = w.Run(w.acme, R"({"command":"cert.list","device_id":"dev-1"})");
  CHECK(certs["data"]["certificates"][0]["revoked_at_ms"].get<int64_t>() > 0);
}

TEST_CASE("admin: set_groups replaces the membership and tells the broker old and new") {
  World w;
  w.Setup(w.acme);
  REQUIRE(World::Ok(w.Register(w.acme, "dev-1")));  // in g1
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"group.create","group_id":"g2"})")));
  Effects fx;
  Json r = w.Run(w.acme, R"({"command":"device.set_groups","device_id":"dev-1","group_ids":["g2","g2"]})", &fx);
  REQUIRE(World::Ok(r));
  CHECK(r["data"]["group_ids"] == Json::array({"g2"}));
  REQUIRE(fx.regroups.size() == 1);
  CHECK(fx.regroups[0].old_groups == std::vector<std::string>{"g1"});
  CHECK(fx.regroups[0].groups == std::vector<std::string>{"g2"});
  CHECK(w.Run(w.acme, R"({"command":"device.list","group_id":"g1"})")["data"]["devices"].empty());
  Effects none;
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.set_groups","device_id":"dev-1","group_ids":["zz"]})",
                          &none)) == "not_found");
  CHECK(none.regroups.empty());
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.set_groups","device_id":"dev-1"})")) == "missing_argument");
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.decommission","device_id":"dev-1"})")));
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.set_groups","device_id":"dev-1","group_ids":[]})")) ==
        "invalid_transition");
}

TEST_CASE("admin: replace moves groups and configuration to the newcomer") {
  World w;
  w.Setup(w.acme);
  REQUIRE(World::Ok(w.Register(w.acme, "old")));
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.activate","device_id":"old"})")));
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"group.create","group_id":"g2"})")));
  REQUIRE(World::Ok(
      w.Run(w.acme, R"({"command":"device.register","serial_number":"N","model_id":"m1","device_id":"new"})")));
  Effects fx;
  Json r = w.Run(w.acme, R"({"command":"device.replace","device_id":"old","new_device_id":"new"})", &fx);
  REQUIRE(World::Ok(r));
  CHECK(r["data"]["old"]["status"] == "replaced");
  CHECK(r["data"]["old"]["replaced_by"] == "new");
  CHECK(r["data"]["new"]["group_ids"] == Json::array({"g1"}));
  CHECK(r["data"]["old"]["group_ids"] == Json::array());  // moved, not copied
  CHECK(fx.revoked.size() == 1);
  Json members = w.Run(w.acme, R"({"command":"device.list","group_id":"g1"})");
  REQUIRE(members["data"]["devices"].size() == 1);
  CHECK(members["data"]["devices"][0]["device_id"] == "new");
  // The replace is in both devices' histories, and the chain still verifies.
  for (const char* id : {"old", "new"}) {
    CAPTURE(id);
    Json h = w.Run(w.acme, std::string(R"({"command":"audit.query","device_id":")") + id + R"("})");
    bool found = false;
    for (const Json& e : h["data"]["entries"]) found |= e["action"] == "device.replace";
    CHECK(found);
  }
  CHECK(w.Run(w.acme, R"({"command":"audit.verify"})")["data"]["valid"] == true);
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.replace","device_id":"new","new_device_id":"new"})")) ==
        "invalid_argument");
}

TEST_CASE("admin: every command is refused to the wrong role, and tenants never see each other") {
  World w;
  w.Setup(w.acme);
  REQUIRE(World::Ok(w.Register(w.acme, "dev-1")));
  const std::string serial =
      w.Run(w.acme, R"({"command":"cert.list","device_id":"dev-1"})")["data"]["certificates"][0]["serial"];
  for (const CommandSpec& c : Commands()) {
    CAPTURE(c.name);
    Json cmd{{"command", c.name}};
    for (const auto& a : c.args) {
      if (!a.required) continue;
      switch (a.type) {
        case ArgType::kString:
          cmd[a.name] = std::string(a.name) == "serial" ? serial : std::string("dev-1");
          break;
        case ArgType::kInt:
          cmd[a.name] = 1;
          break;
        case ArgType::kBool:
          cmd[a.name] = true;
          break;
        case ArgType::kStringList:
          cmd[a.name] = Json::array({"g1"});
          break;
        case ArgType::kObject:
          cmd[a.name] = Json::object();
          break;
        case ArgType::kNumber:
          cmd[a.name] = 1.5;
          break;
      }
    }
    if (std::string(c.name) == "device.register") cmd["model_id"] = "m1";
    // Devices may run nothing.
    CHECK(World::Code(w.Run(w.device, cmd)) == "forbidden");
    if (c.role == Role::kAdmin) {
      CHECK(World::Code(w.Run(w.beta, cmd)) == "forbidden");
      continue;
    }
    CHECK(World::Code(w.Run(w.admin, cmd)) == "forbidden");
    // Another tenant's operator, naming acme's device, model, group and
    // certificate: it only ever reaches its own (empty) tenant.
    Json r = w.Run(w.beta, cmd);
    if (World::Ok(r)) {
      // What beta sees is its own: its own records (beta may well create a
      // group named "dev-1") and its own audit log (which holds beta's own
      // requests, arguments included). Nothing of acme's: not its device's
      // serial number, not an entry by acme's operator, and, outside beta's
      // audit entries of its own requests, not acme's certificate serial.
      const std::string dump = r.dump();
      CHECK(dump.find("SN-dev-1") == std::string::npos);
      CHECK(dump.find("operator:alice") == std::string::npos);
      if (std::string(c.name).rfind("audit.", 0) == 0) {
        const Json& entries = r["data"]["entries"];  // a count for audit.verify
        if (entries.is_array()) {
          for (const Json& e : entries) CHECK((e["actor"] == "operator:bob" || e["actor"] == "admin:root"));
        }
      } else {
        CHECK(dump.find(serial) == std::string::npos);
      }
    } else {
      CHECK((World::Code(r) == "not_found" || World::Code(r) == "invalid_argument"));
    }
  }
  // acme's device is untouched and beta's audit log shows the attempts.
  CHECK(w.Status(w.acme, "dev-1") == "provisioned");
  Json audit = w.Run(w.acme, R"({"command":"audit.query","limit":1000})");
  bool denied_logged = false;
  for (const auto& e : audit["data"]["entries"]) {
    if (e["actor"] == "device:dev-1" && e["result"].get<std::string>().rfind("denied", 0) == 0) denied_logged = true;
  }
  CHECK(denied_logged);
  CHECK(World::Ok(w.Run(w.acme, R"({"command":"audit.verify"})")));
  CHECK(World::Ok(w.Run(w.beta, R"({"command":"audit.verify"})")));
}

TEST_CASE("admin: bad requests get a clear error and write nothing") {
  World w;
  w.Setup(w.acme);
  auto top = [&](const std::string& text) { return World::Code(w.Request(w.acme, text)); };
  CHECK(top("{not json") == "bad_request");
  CHECK(top("[1,2]") == "bad_request");
  CHECK(top("{}") == "bad_request");
  CHECK(top(R"({"commands":[]})") == "bad_request");
  CHECK(top(R"({"commands":)" + std::string(40, '[') + std::string(40, ']') + "}") == "bad_request");
  CHECK(top(std::string(257 * 1024, ' ')) == "too_large");
  std::string many = R"({"commands":[)";
  for (int i = 0; i < 101; ++i) many += std::string(i ? "," : "") + R"({"command":"model.list"})";
  CHECK(top(many + "]}") == "too_large");
  CHECK(World::Code(w.Run(w.acme, R"(7)")) == "bad_request");
  CHECK(World::Code(w.Run(w.acme, R"({"nocommand":1})")) == "bad_request");
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.explode"})")) == "unknown_command");
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.get"})")) == "missing_argument");
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.get","device_id":5})")) == "invalid_argument");
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.get","device_id":"a","tenant":"beta"})")) ==
        "invalid_argument");
  CHECK(World::Code(w.Run(w.acme, R"({"command":"group.create","group_id":"a/b"})")) == "invalid_argument");
  CHECK(World::Code(w.Run(w.acme, R"({"command":"group.create","group_id":"_x"})")) == "invalid_argument");
  CHECK(World::Code(w.Run(w.acme, R"({"command":"device.list","status":"sleepy"})")) == "invalid_argument");
  CHECK(World::Code(w.Run(w.admin, R"({"command":"tenant.create","tenant_id":"Bad_Id"})")) == "invalid_argument");
  // Several commands in one request: each answered, in order, with its id.
  Json r = w.Request(w.acme, R"({"commands":[{"command":"model.list","id":1},{"command":"nope","id":"x"}]})");
  REQUIRE(r["responses"].size() == 2);
  CHECK(r["responses"][0]["status"] == "ok");
  CHECK(r["responses"][0]["id"] == 1);
  CHECK(r["responses"][1]["id"] == "x");
  Json list = w.Run(w.acme, R"({"command":"device.list"})");
  CHECK(list["data"]["devices"].empty());
}

TEST_CASE("admin: a failed commit leaves no change and the audit chain intact") {
  World w;
  w.Setup(w.acme);
  w.kv.FailWrites(absl::UnavailableError("disk on fire"));
  Json r = w.Register(w.acme, "dev-1", false);
  CHECK(World::Code(r) == "storage_error");
  w.kv.FailWrites(absl::OkStatus());
  CHECK(w.Status(w.acme, "dev-1") == "not_found");
  REQUIRE(World::Ok(w.Register(w.acme, "dev-1", false)));
  CHECK(World::Ok(w.Run(w.acme, R"({"command":"audit.verify"})")));
}

TEST_CASE("admin: an offline rule covers devices registered or moved into its scope after it was made") {
  World w;
  w.Setup(w.acme);
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"group.create","group_id":"g2"})")));
  REQUIRE(World::Ok(w.Run(
      w.acme, R"({"command":"alert.rule.create","rule_id":"off","metric":"offline","for_s":60,"scope":"group:g2"})")));
  REQUIRE(World::Ok(w.Register(w.acme, "late", false)));  // in g1: not the rule's
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.set_groups","device_id":"late","group_ids":["g2"]})")));
  w.clock.Advance(61'000);
  Effects fx;
  w.svc->Pump(&fx);
  w.svc->Pump(&fx);  // the raise is committed
  Json alerts = w.Run(w.acme, R"({"command":"alert.list"})")["data"]["alerts"];
  REQUIRE(alerts.size() == 1);
  CHECK(alerts[0]["device_id"] == "late");
  CHECK(alerts[0]["rule_id"] == "off");
}

TEST_CASE("admin: connectivity activates on first connect and is shown live") {
  World w;
  w.Setup(w.acme);
  REQUIRE(World::Ok(w.Register(w.acme, "dev-1")));
  w.svc->OnConnectivity({ConnEvent{"acme", "dev-1", "", "127.0.0.1:1", true, w.clock.WallMs(), "", false, {}, ""}});
  Json d = w.Run(w.acme, R"({"command":"device.get","device_id":"dev-1"})")["data"];
  CHECK(d["status"] == "active");
  CHECK(d["online"] == true);
  CHECK(d["first_seen_at_ms"] == w.clock.WallMs());
  Json online = w.Run(w.acme, R"({"command":"device.list","online":true})")["data"]["devices"];
  CHECK(online.size() == 1);
  w.clock.Advance(2000);
  // The connection's counters, reported while it is open: no audit entry.
  ConnEvent counters;
  counters.tenant = "acme";
  counters.device_id = "dev-1";
  counters.wall_ms = w.clock.WallMs();
  counters.counters_only = true;
  counters.counters.publish_in = 7;
  counters.counters.denied = 1;
  w.svc->OnConnectivity({counters});
  w.clock.Advance(3000);
  ConnEvent gone{"acme", "dev-1", "keepalive_timeout", "127.0.0.1:1", false, w.clock.WallMs(), "", false, {}, ""};
  gone.counters.publish_in = 1;
  w.svc->OnConnectivity({gone});
  Effects fx;
  w.svc->Pump(&fx);  // the features commit
  Json link = w.Run(w.acme, R"({"command":"health.get","device_id":"dev-1"})")["data"]["link"];
  CHECK(link["connects"] == 1);
  CHECK(link["publish_in"] == 8);
  CHECK(link["denied"] == 1);
  CHECK(link["disconnects"]["keepalive_timeout"] == 1);
  CHECK(link["last_error"]["reason"] == "keepalive_timeout");
  CHECK(link["uptime"]["1h"] == 1.0);  // connected all the 5 s it has been known
  d = w.Run(w.acme, R"({"command":"device.get","device_id":"dev-1"})")["data"];
  CHECK(d["online"] == false);
  CHECK(d["last_disconnect_reason"] == "keepalive_timeout");
  CHECK(d["last_seen_at_ms"] == w.clock.WallMs());
  CHECK(w.Run(w.acme, R"({"command":"device.list","online":true})")["data"]["devices"].empty());
  Json audit = w.Run(w.acme, R"({"command":"audit.query","device_id":"dev-1"})")["data"]["entries"];
  REQUIRE(audit.size() == 3);  // register, connected, disconnected
  CHECK(audit[1]["action"] == "device.connected");
  CHECK(audit[2]["details"]["reason"] == "keepalive_timeout");
}

TEST_CASE("admin: device.list pages with no duplicates or gaps") {
  World w;
  w.Setup(w.acme);
  for (int i = 0; i < 57; ++i) REQUIRE(World::Ok(w.Register(w.acme, "d" + std::to_string(100 + i), false)));
  std::set<std::string> seen;
  std::string cursor;
  int pages = 0;
  do {
    Json c{{"command", "device.list"}, {"limit", 10}, {"group_id", "g1"}};
    if (!cursor.empty()) c["cursor"] = cursor;
    Json r = w.Run(w.acme, c);
    REQUIRE(World::Ok(r));
    for (const auto& d : r["data"]["devices"]) CHECK(seen.insert(d["device_id"].get<std::string>()).second);
    cursor = r["data"]["next_cursor"];
    ++pages;
  } while (!cursor.empty());
  CHECK(seen.size() == 57);
  CHECK(pages == 6);
}

TEST_CASE("admin: 100k devices listed page by page while devices are added: no duplicates, no gaps") {
  World w;
  w.Setup(w.acme);
  storage::Registry reg(&w.kv);
  const auto t = storage::TenantId::FromAuthenticated("acme");
  auto put = [&](const std::string& id) {
    fb::DeviceT d;
    d.device_id = id;
    d.tenant_id = "acme";
    d.serial_number = "SN-" + id;
    d.model_id = "m1";
    d.group_ids = {"g1"};
    storage::WriteBatch b;
    REQUIRE(reg.PutDevice(t, d, &b).ok());
    REQUIRE(reg.Commit(b).ok());
  };
  char id[32];
  for (int i = 0; i < 100'000; ++i) {
    std::snprintf(id, sizeof id, "d%06d", i * 10);  // gaps between ids for the newcomers
    put(id);
  }
  std::set<std::string> seen;
  std::string cursor;
  int pages = 0, added = 0;
  do {
    Json c{{"command", "device.list"}, {"limit", 1000}};
    if (!cursor.empty()) c["cursor"] = cursor;
    Json r = w.Run(w.acme, c);
    REQUIRE(World::Ok(r));
    for (const auto& d : r["data"]["devices"]) REQUIRE(seen.insert(d["device_id"].get<std::string>()).second);
    cursor = r["data"]["next_cursor"];
    // Devices registered meanwhile, before and after the cursor.
    for (int k = 0; k < 10; ++k) {
      std::snprintf(id, sizeof id, "d%06d", (added * 7919 % 100'000) * 10 + 5);
      put(id);
      ++added;
    }
    ++pages;
  } while (!cursor.empty());
  for (int i = 0; i < 100'000; ++i) {
    std::snprintf(id, sizeof id, "d%06d", i * 10);
    REQUIRE(seen.count(id) == 1);  // every device present from the start: exactly once
  }
  CHECK(pages >= 100);
  CHECK(seen.size() >= 100'000);
}

TEST_CASE("admin: doc/admin-api.md lists the command table") {
  std::ifstream in(std::string(FMQ_SOURCE_DIR) + "/doc/admin-api.md");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  const std::string begin = "<!-- commands:begin -->\n", end = "<!-- commands:end -->";
  const size_t b = doc.find(begin), e = doc.find(end);
  REQUIRE(b != std::string::npos);
  REQUIRE(e != std::string::npos);
  // Regenerate with: tools/regen_docs.py
  CHECK(doc.substr(b + begin.size(), e - b - begin.size()) == CommandsMarkdown());
}

}  // namespace
}  // namespace fmq::admin

namespace fmq::admin {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A restarted Service over the same store and PKI directory.
Effects Restart(World& w) {
  ServiceOptions o;
  o.pki_dir = w.dir + "/pki";
  w.svc = std::make_unique<Service>(&w.kv, &w.clock, o);
  Effects fx;
  REQUIRE(w.svc->Init(&fx).ok());
  return fx;
}

TEST_CASE("admin: start-up keeps current CRLs and re-signs only stale or due ones") {
  World w;
  w.Setup(w.acme);
  Json reg = w.Register(w.acme, "dev-1");
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.decommission","device_id":"dev-1"})")));
  const std::string acme = w.dir + "/pki/tenants/acme/crl.der", beta = w.dir + "/pki/tenants/beta/crl.der";
  const std::string acme_crl = Slurp(acme), beta_crl = Slurp(beta);
  auto info = pki::ReadCrl(acme_crl);
  REQUIRE(info.ok());
  CHECK(info->serials == std::vector<std::string>{reg["data"]["certificate_serial"].get<std::string>()});

  // A restart a second later: nothing signed, the same CRLs published.
  w.clock.Advance(1000);
  Effects fx = Restart(w);
  CHECK(Slurp(acme) == acme_crl);
  CHECK(Slurp(beta) == beta_crl);
  size_t published = 0;
  for (const auto& p : fx.publishes) {
    if (p.topic != "$SYS/fleetmq/crl/v1") continue;
    ++published;
    CHECK(p.payload == (p.tenant == "acme" ? acme_crl : beta_crl));
  }
  CHECK(published == 2);

  // A CRL that does not list every revoked serial (a revocation committed
  // but its CRL never written) is re-signed; so is an unreadable one.
  REQUIRE(World::Ok(w.Register(w.acme, "dev-2")));
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.decommission","device_id":"dev-2"})")));
  REQUIRE(pki::WriteFileAtomic(acme, acme_crl, 0644).ok());  // the older one, one serial short
  REQUIRE(pki::WriteFileAtomic(beta, "garbage", 0644).ok());
  w.clock.Advance(1000);
  Restart(w);
  auto fixed = pki::ReadCrl(Slurp(acme));
  REQUIRE(fixed.ok());
  CHECK(fixed->serials.size() == 2);
  CHECK(pki::ReadCrl(Slurp(beta)).ok());

  // Past half its validity a CRL is due: re-signed at start-up.
  const std::string before = Slurp(beta);
  w.clock.Advance(ServiceOptions{}.crl_validity_ms / 2 + 1000);
  Restart(w);
  CHECK(Slurp(beta) != before);
  CHECK(pki::ReadCrl(Slurp(beta))->this_update_ms / 1000 == w.clock.WallMs() / 1000);
}

}  // namespace
}  // namespace fmq::admin

namespace fmq::admin {
namespace {

TEST_CASE("admin: Tick re-signs a CRL past half its validity, not before") {
  World w;
  const std::string path = w.dir + "/pki/tenants/acme/crl.der";
  const std::string first = Slurp(path);
  const int64_t half = ServiceOptions{}.crl_validity_ms / 2;
  Effects fx;
  w.clock.Advance(half - 120'000);  // still current (Tick checks once a minute)
  w.svc->Tick(&fx);
  CHECK(fx.publishes.empty());
  CHECK(Slurp(path) == first);
  w.clock.Advance(180'000);  // past half: re-signed, published, later nextUpdate
  w.svc->Tick(&fx);
  bool published = false;
  for (const auto& p : fx.publishes) published |= p.tenant == "acme" && p.topic == "$SYS/fleetmq/crl/v1";
  CHECK(published);
  auto before = pki::ReadCrl(first), after = pki::ReadCrl(Slurp(path));
  REQUIRE(before.ok());
  REQUIRE(after.ok());
  CHECK(after->next_update_ms > before->next_update_ms);
  CHECK(after->next_update_ms - w.clock.WallMs() > half);
}

TEST_CASE("admin: audit.verify answers data_loss after the log was tampered with") {
  World w;
  w.Setup(w.acme);
  REQUIRE(World::Ok(w.Register(w.acme, "dev-1")));
  REQUIRE(w.Run(w.acme, R"({"command":"audit.verify"})")["data"]["valid"] == true);
  // Rewrite entry 2's result in place (a valid record, the chain broken).
  const auto t = storage::TenantId::FromAuthenticated("acme");
  auto raw = w.kv.Get(storage::Family::kAudit, storage::keys::Audit(t, 2));
  REQUIRE(raw.ok());
  fb::AuditEntryT e;
  REQUIRE(storage::DecodeRecord<fb::AuditEntry>(storage::Family::kAudit, "", *raw, &e).ok());
  e.result = "ok (edited)";
  w.kv.Poke(storage::Family::kAudit, storage::keys::Audit(t, 2), storage::EncodeRecord<fb::AuditEntry>(e));
  Json r = w.Run(w.acme, R"({"command":"audit.verify"})");
  CHECK(World::Code(r) == "data_loss");
  CHECK(r["error"]["message"].get<std::string>().find("2") != std::string::npos);  // names the entry
  // The other tenant's chain is untouched.
  CHECK(w.Run(w.beta, R"({"command":"audit.verify"})")["data"]["valid"] == true);
}

TEST_CASE("admin: configuration commands version documents, make group changes jobs and audit the diff") {
  World w;
  w.Setup(w.acme);
  REQUIRE(World::Ok(w.Register(w.acme, "dev-1")));
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"device.set_groups","device_id":"dev-1","group_ids":["g1"]})")));
  // A group created with a template has version 1 of it, and no job.
  Json g2 = w.Run(w.acme, R"({"command":"group.create","group_id":"g2","config_template":{"a":1}})");
  REQUIRE(World::Ok(g2));
  CHECK(g2["data"]["config_version"] == 1);
  // A change of g1: version 1, a config job over its members.
  Json r = w.Run(w.acme, R"({"command":"config.set","group_id":"g1","document":{"rate":5,"mode":"eco"},"priority":3})");
  REQUIRE(World::Ok(r));
  CHECK(r["data"]["version"] == 1);
  CHECK(r["data"]["hash"] == config::Hash(Json{{"rate", 5}, {"mode", "eco"}}));
  const std::string job = r["data"]["job_id"].get<std::string>();
  Json j = w.Run(w.acme, Json{{"command", "job.get"}, {"job_id", job}});
  REQUIRE(World::Ok(j));
  CHECK(j["data"]["type"] == "config");
  // A patch; if_version guards it.
  CHECK(World::Code(w.Run(w.acme, R"({"command":"config.set","group_id":"g1","patch":{"rate":6},"if_version":7})")) ==
        "version_conflict");
  Json p = w.Run(w.acme, R"({"command":"config.set","group_id":"g1","patch":{"rate":6,"mode":null},"if_version":1})");
  REQUIRE(World::Ok(p));
  CHECK(p["data"]["version"] == 2);
  CHECK(p["data"]["diff"] == Json{{"rate", 6}, {"mode", nullptr}});
  // group.update config_template is a change too (version 3, a job).
  Json u = w.Run(w.acme, R"({"command":"group.update","group_id":"g1","config_template":{"rate":7}})");
  REQUIRE(World::Ok(u));
  CHECK(u["data"]["config"]["version"] == 3);
  CHECK(u["data"]["config"].contains("job_id"));
  Json h = w.Run(w.acme, R"({"command":"config.history","group_id":"g1","limit":2})");
  REQUIRE(World::Ok(h));
  REQUIRE(h["data"]["versions"].size() == 2);
  CHECK(h["data"]["versions"][0]["version"] == 3);
  CHECK(h["data"]["versions"][1]["change"] == Json{{"rate", 6}, {"mode", nullptr}});
  Json h2 =
      w.Run(w.acme, Json{{"command", "config.history"}, {"group_id", "g1"}, {"cursor", h["data"]["next_cursor"]}});
  REQUIRE(h2["data"]["versions"].size() == 1);
  CHECK(h2["data"]["versions"][0]["version"] == 1);
  // The device's view: desired from g1 (priority 3) and its own document.
  REQUIRE(World::Ok(w.Run(w.acme, R"({"command":"config.set","device_id":"dev-1","document":{"own":true}})")));
  Json v = w.Run(w.acme, R"({"command":"config.get","device_id":"dev-1","diff":true})");
  REQUIRE(World::Ok(v));
  CHECK(v["data"]["desired"]["document"] == Json{{"rate", 7}, {"own", true}});
  CHECK(v["data"]["state"] == "PENDING");
  CHECK(v["data"]["diff"] == Json{{"rate", 7}, {"own", true}});
  CHECK(v["data"]["inputs"].size() == 2);
  Json st = w.Run(w.acme, R"({"command":"config.status","group_id":"g1"})");
  REQUIRE(World::Ok(st));
  CHECK(st["data"]["counts"]["PENDING"] == 1);
  CHECK(st["data"]["non_compliant"][0]["device_id"] == "dev-1");
  // The change is in the audit log with its diff.
  Json a = w.Run(w.acme, R"({"command":"audit.query","device_id":"dev-1"})");
  bool found = false;
  for (const Json& e : a["data"]["entries"]) {
    if (e["action"] == "config.set") found = e["details"]["change"] == Json{{"own", true}};
  }
  CHECK(found);
  // Another tenant sees none of it.
  CHECK(World::Code(w.Run(w.beta, R"({"command":"config.get","device_id":"dev-1"})")) == "not_found");
  CHECK(World::Code(w.Run(w.beta, R"({"command":"config.set","group_id":"g1","document":{}})")) == "not_found");
  CHECK(w.Run(w.acme, R"({"command":"audit.verify"})")["data"]["valid"] == true);
}

}  // namespace
}  // namespace fmq::admin

namespace fmq::admin {
namespace {

TEST_CASE("admin: a tenant's time zone is checked, updated, audited, and the zone of its job windows") {
  World w;
  CHECK(World::Code(w.Run(w.admin, R"({"command":"tenant.create","tenant_id":"gamma","time_zone":"Nowhere/City"})")) ==
        "invalid_argument");
  CHECK(World::Code(w.Run(w.admin, R"({"command":"tenant.update","tenant_id":"gamma"})")) == "not_found");
  REQUIRE(World::Ok(w.Run(w.admin, R"({"command":"tenant.create","tenant_id":"gamma","time_zone":"Asia/Tokyo"})")));
  Json list = w.Run(w.admin, R"({"command":"tenant.list"})");
  bool seen = false;
  for (const Json& t : list["data"]["tenants"]) {
    if (t["tenant_id"] == "gamma") seen = t["time_zone"] == "Asia/Tokyo";
    if (t["tenant_id"] == "beta") CHECK(t["time_zone"] == "UTC");
  }
  CHECK(seen);
  // Only the platform admin changes tenants; a bad zone changes nothing.
  CHECK(World::Code(w.Run(w.beta, R"({"command":"tenant.update","tenant_id":"beta","time_zone":"UTC"})")) ==
        "forbidden");
  CHECK(World::Code(w.Run(w.admin, R"({"command":"tenant.update","tenant_id":"beta","time_zone":"Europe/Nope"})")) ==
        "invalid_argument");
  Effects fx;
  Json u = w.Run(w.admin, R"({"command":"tenant.update","tenant_id":"beta","time_zone":"Europe/Berlin",
                              "max_connections":50})",
                 &fx);
  REQUIRE(World::Ok(u));
  CHECK(u["data"]["time_zone"] == "Europe/Berlin");
  REQUIRE(fx.quotas.size() == 1);
  CHECK(fx.quotas[0].max_connections == 50);
  CHECK(World::Code(w.Run(w.admin, R"({"command":"tenant.update","tenant_id":"beta","server_keepalive":70000})")) ==
        "invalid_argument");
  Effects ka;
  REQUIRE(World::Ok(w.Run(w.admin, R"({"command":"tenant.update","tenant_id":"beta","server_keepalive":9})", &ka)));
  REQUIRE(ka.quotas.size() == 1);
  CHECK(ka.quotas[0].server_keepalive == 9);
  CHECK(ka.quotas[0].max_connections == 50);  // the rest kept
  // The tenant's own audit chain says what changed.
  Json a = w.Run(w.beta, R"({"command":"audit.query","from_ms":0})");
  bool audited = false;
  for (const Json& e : a["data"]["entries"]) {
    if (e["action"] == "tenant.update") {
      audited = audited || e.dump().find("Europe/Berlin") != std::string::npos;
    }
  }
  CHECK(audited);
  // A job window without a zone is in the tenant's.
  w.Setup(w.beta);
  Json j = w.Run(w.beta, R"({"command":"job.create","document":{"command":"reboot"},"group_id":"g1",
                             "rollout":{"window":{"start":"01:00","end":"05:00"}}})");
  REQUIRE_MESSAGE(World::Ok(j), j.dump());
  Json g = w.Run(w.beta, Json{{"command", "job.get"}, {"job_id", j["data"]["job_id"]}});
  CHECK(g["data"]["options"]["rollout"]["window"]["time_zone"] == "Europe/Berlin");
  CHECK(World::Code(w.Run(w.beta, R"({"command":"job.create","document":{"command":"reboot"},"group_id":"g1",
                             "rollout":{"window":{"start":"01:00","end":"1:00"}}})")) == "invalid_argument");
}
}  // namespace
}  // namespace fmq::admin

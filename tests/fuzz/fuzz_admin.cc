// libFuzzer target: an admin request (the payload of a PUBLISH to the
// control topic) from an operator, a platform admin and a device, executed
// against an in-memory registry. Every input gets a JSON reply with a status
// or an error code; nothing crashes; devices change nothing; and nothing
// crosses tenants: a second tenant holds a device whose id and serial number
// no input can guess, which acme's operator never sees in a reply, whose
// record no input changes, and acme's effects only ever name acme.
#include <stdlib.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/clock.h"
#include "mgmt/admin/service.h"
#include "mgmt/pki/pki_dir.h"
#include "storage/kv_store.h"

namespace {

struct World {
  fmq::FakeClock clock;
  fmq::storage::MemKvStore kv;
  std::unique_ptr<fmq::admin::Service> svc;
  World() {
    char tmpl[] = "/tmp/fmq-fuzz-admin-XXXXXX";
    std::string dir = mkdtemp(tmpl);
    if (!fmq::pki::EnsurePki(dir + "/pki", "acme", "localhost", clock.WallMs()).ok()) std::abort();
    fmq::admin::ServiceOptions o;
    o.pki_dir = dir + "/pki";
    svc = std::make_unique<fmq::admin::Service>(&kv, &clock, o);
    fmq::admin::Effects fx;
    if (!svc->Init(&fx).ok()) std::abort();
    const fmq::admin::Actor admin{"_platform", "root", fmq::admin::Role::kAdmin, "adm"};
    Must(admin, R"({"commands":[{"command":"tenant.create","tenant_id":"beta"}]})");
    Must(beta, R"({"commands":[{"command":"model.create","model_id":"bm"}]})");
    Must(beta, std::string(R"({"commands":[{"command":"device.register","model_id":"bm","device_id":")") + kSecretId +
                   R"(","serial_number":")" + kSecretSerial + R"("}]})");
    beta_device = BetaDevice();
  }
  static constexpr const char* kSecretId = "beta-dev-5f0c83a1d9e2";
  static constexpr const char* kSecretSerial = "beta-sn-7a41c09e66b3";
  const fmq::admin::Actor beta{"beta", "bob", fmq::admin::Role::kOperator, "op-b"};
  std::string beta_device;

  void Must(const fmq::admin::Actor& who, const std::string& req) {
    fmq::admin::Effects fx;
    auto j = fmq::admin::Json::parse(svc->Handle(who, req, &fx), nullptr, false);
    if (j.is_discarded() || j["responses"][0]["status"] != "ok") std::abort();
  }
  std::string BetaDevice() {
    fmq::admin::Effects fx;
    return svc->Handle(
        beta, std::string(R"({"commands":[{"command":"device.get","device_id":")") + kSecretId + R"("}]})", &fx);
  }
};

bool NamesOnlyAcme(const fmq::admin::Effects& fx) {
  for (const auto& k : fx.kicks)
    if (k.tenant != "acme") return false;
  for (const auto& r : fx.revoked)
    if (r.first != "acme") return false;
  for (const auto& b : fx.blocks)
    if (b.tenant != "acme") return false;
  for (const auto& g : fx.regroups)
    if (g.tenant != "acme") return false;
  for (const auto& q : fx.quotas)
    if (q.tenant != "acme") return false;
  for (const auto& p : fx.publishes)
    if (p.tenant != "acme") return false;
  return fx.trusted_cas.empty();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = new World();  // PKI generation is too slow to repeat per input
  const std::string req(reinterpret_cast<const char*>(data), size);
  using fmq::admin::Role;
  for (const fmq::admin::Actor& who : {fmq::admin::Actor{"acme", "alice", Role::kOperator, "op"},
                                       fmq::admin::Actor{"_platform", "root", Role::kAdmin, "adm"},
                                       fmq::admin::Actor{"acme", "dev-1", Role::kDevice, "dev-1"}}) {
    fmq::admin::Effects fx;
    std::string reply = w->svc->Handle(who, req, &fx);
    auto j = fmq::admin::Json::parse(reply, nullptr, false);
    if (j.is_discarded() || !j.is_object()) std::abort();        // always a JSON object
    if (who.role == Role::kDevice && !fx.empty()) std::abort();  // devices change nothing
    if (who.role == Role::kOperator) {
      if (reply.find(World::kSecretId) != std::string::npos || reply.find(World::kSecretSerial) != std::string::npos) {
        std::abort();  // another tenant's device in acme's reply
      }
      if (!NamesOnlyAcme(fx)) std::abort();
    }
  }
  if (w->BetaDevice() != w->beta_device) std::abort();  // the other tenant's record is untouched
  w->clock.Advance(1);
  return 0;
}

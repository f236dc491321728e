// libFuzzer target: an admin request (the payload of a PUBLISH to the
// control topic) from an operator, a platform admin and a device, executed
// against an in-memory registry. Every input gets a JSON reply with a status
// or an error code; nothing crashes, nothing leaks between tenants.
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
  }
};

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
    if (j.is_discarded() || !j.is_object()) std::abort();  // always a JSON object
    if (who.role == Role::kDevice && !fx.empty()) std::abort();  // devices change nothing
  }
  w->clock.Advance(1);
  return 0;
}

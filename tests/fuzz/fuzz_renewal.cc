// libFuzzer target: a device's answer to a certificate renewal (certs/csr,
// mgmt/certs/renewal.h). The input is the body a device could send; when
// the schema accepts it, it is delivered as the answer to a renewal the
// broker asked of device d1 of tenant acme (the job id and attempt made
// to match, so the CSR path runs). It must never crash, and whatever the
// CSR says, a certificate it yields names d1 of acme and nobody else.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "common/clock.h"
#include "mgmt/certs/renewal.h"
#include "storage/kv_store.h"
#include "tests/fuzz/fuzz_util.h"

using fmq::certs::Json;
namespace pki = fmq::pki;

namespace {

struct Pki {
  pki::Rng rng;
  std::unique_ptr<pki::CertificateAuthority> root, ca;
  Pki() {
    auto r = pki::CertificateAuthority::CreateRoot(rng, "root", 1'700'000'000'000);
    if (!r.ok()) std::abort();
    root = std::make_unique<pki::CertificateAuthority>(std::move(*r));
    auto c = root->CreateTenantCa(rng, "acme", 1'700'000'000'000);
    if (!c.ok()) std::abort();
    ca = std::make_unique<pki::CertificateAuthority>(std::move(*c));
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Pki* p = new Pki();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (!fmq::fuzz::Shallow(text)) return 0;
  Json body = Json::parse(text, nullptr, false);
  if (body.is_discarded()) return 0;
  fmq::FakeClock clock;
  fmq::storage::MemKvStore kv;
  fmq::storage::Registry reg(&kv);
  fmq::jobs::Host host;
  host.online = [](const std::string&, std::string_view) { return true; };
  fmq::jobs::JobEngine engine(&kv, &reg, &clock, host);
  fmq::certs::RenewalHost rh;
  rh.issue = [&](const std::string& tenant, const std::string& device,
                 std::string_view csr) -> absl::StatusOr<fmq::certs::Issued> {
    auto c = p->ca->IssueFromCsr(p->rng, csr, pki::Subject{tenant, device, pki::Role::kDevice}, clock.WallMs());
    if (!c.ok()) return absl::InvalidArgumentError(std::string(c.status().message()));
    return fmq::certs::Issued{std::move(*c), p->ca->cert().pem};
  };
  rh.serial_of = [](const std::string&, const std::string&) { return std::string(); };
  fmq::certs::RenewalFeature f(&kv, &reg, &clock, &engine, rh);
  if (!f.Validate("certs/csr", body).empty()) return 0;
  const auto t = fmq::storage::TenantId::FromAuthenticated("acme");
  fmq::storage::WriteBatch b;
  fmq::fb::TenantT tr;
  tr.tenant_id = "acme";
  reg.PutTenant(t, tr, &b);
  fmq::fb::DeviceT d;
  d.device_id = "d1";
  d.tenant_id = "acme";
  d.status = fmq::fb::DeviceStatus::Active;
  if (!reg.PutDevice(t, d, &b).ok() || !reg.Commit(b).ok()) std::abort();
  b.Clear();
  fmq::jobs::JobEngine::NewJob nj;
  nj.job_id = "rn";
  nj.type = fmq::fb::JobType::Renew;
  nj.target.device_ids = {"d1"};
  fmq::fb::JobT rec;
  if (!engine.Create(t, nj, &b, &rec).ok() || !reg.Commit(b).ok()) std::abort();
  engine.Activate(t, rec);
  fmq::mgmt::Output out;
  engine.Pump();
  if (!engine.Commit(&out).ok() || !f.Commit(&out).ok()) std::abort();
  fmq::mgmt::DeviceMessage m;
  m.tenant = "acme";
  m.device_id = "d1";
  m.topic = "certs/csr";
  m.body = body;
  m.body["job_id"] = "rn";
  m.body["attempt"] = 1;
  f.OnDeviceMessage(m);
  out = {};
  if (!engine.Commit(&out).ok() || !f.Commit(&out).ok()) std::abort();
  for (const auto& s : out.sends) {
    if (s.device_id != "d1" || s.tenant != "acme") std::abort();
    if (s.suffix != "certs/csr/accepted") continue;
    Json a = Json::parse(s.payload);
    const std::string pem = a["certificate_pem"].get<std::string>();
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    if (mbedtls_x509_crt_parse(&crt, reinterpret_cast<const unsigned char*>(pem.c_str()), pem.size() + 1) != 0) {
      std::abort();
    }
    auto id = pki::IdentityOf(crt);
    mbedtls_x509_crt_free(&crt);
    if (!id.ok() || id->name != "d1" || id->tenant != "acme" || id->role != pki::Role::kDevice) std::abort();
  }
  return 0;
}

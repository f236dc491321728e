// libFuzzer target: a CSR (PEM or DER) from an untrusted client goes to
// IssueFromCsr of a tenant CA. It must issue or refuse with a status;
// never crash, never read out of bounds.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "mgmt/pki/pki.h"

namespace {

struct World {
  fmq::pki::Rng rng;
  fmq::pki::CertificateAuthority root = *fmq::pki::CertificateAuthority::CreateRoot(rng, "root", 1'700'000'000'000);
  fmq::pki::CertificateAuthority ca = *root.CreateTenantCa(rng, "default", 1'700'000'000'000);
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = new World();  // key generation is too slow to repeat per input
  std::string csr(reinterpret_cast<const char*>(data), size);
  auto cert = w->ca.IssueFromCsr(w->rng, csr, {"default", "dev-1", fmq::pki::Role::kDevice}, 1'700'000'000'000);
  if (cert.ok() && cert->der.empty()) std::abort();
  return 0;
}

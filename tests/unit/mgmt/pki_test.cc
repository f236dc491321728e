// The PKI: root -> tenant CA -> device from CSR, verified by mbedTLS's own
// chain verification; CSR refusals; CRLs that revoke.
#include "mgmt/pki/pki.h"

#include <doctest/doctest.h>
#include <mbedtls/oid.h>
#include <mbedtls/x509_crl.h>
#include <mbedtls/x509_csr.h>

#include <ctime>

namespace fmq::pki {
namespace {

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)) * 1000; }

std::string MakeCsr(Rng& rng, Key& key, const char* subject, mbedtls_md_type_t md = MBEDTLS_MD_SHA256) {
  mbedtls_x509write_csr req;
  mbedtls_x509write_csr_init(&req);
  mbedtls_x509write_csr_set_md_alg(&req, md);
  mbedtls_x509write_csr_set_key(&req, key.pk());
  REQUIRE(mbedtls_x509write_csr_set_subject_name(&req, subject) == 0);
  unsigned char buf[4096];
  REQUIRE(mbedtls_x509write_csr_pem(&req, buf, sizeof buf, Rng::Fill, &rng) == 0);
  mbedtls_x509write_csr_free(&req);
  return reinterpret_cast<char*>(buf);
}

// Verifies `leaf` <- tenant CA <- root, optionally against a CRL; returns flags.
uint32_t Verify(const std::string& leaf_pem, const CertificateAuthority& tenant, const CertificateAuthority& root,
                const std::string* crl_der = nullptr) {
  mbedtls_x509_crt chain, trust;
  mbedtls_x509_crt_init(&chain);
  mbedtls_x509_crt_init(&trust);
  mbedtls_x509_crl crl;
  mbedtls_x509_crl_init(&crl);
  REQUIRE(mbedtls_x509_crt_parse(&chain, reinterpret_cast<const unsigned char*>(leaf_pem.c_str()),
                                 leaf_pem.size() + 1) == 0);
  REQUIRE(mbedtls_x509_crt_parse_der(&chain, reinterpret_cast<const unsigned char*>(tenant.cert().der.data()),
                                     tenant.cert().der.size()) == 0);
  REQUIRE(mbedtls_x509_crt_parse_der(&trust, reinterpret_cast<const unsigned char*>(root.cert().der.data()),
                                     root.cert().der.size()) == 0);
  if (crl_der) {
    REQUIRE(mbedtls_x509_crl_parse_der(&crl, reinterpret_cast<const unsigned char*>(crl_der->data()),
                                       crl_der->size()) == 0);
  }
  uint32_t flags = 0;
  mbedtls_x509_crt_verify(&chain, &trust, crl_der ? &crl : nullptr, nullptr, &flags, nullptr, nullptr);
  mbedtls_x509_crt_free(&chain);
  mbedtls_x509_crt_free(&trust);
  mbedtls_x509_crl_free(&crl);
  return flags;
}

struct Pki {
  Pki()
      : root(*CertificateAuthority::CreateRoot(rng, "fleetmq-root", Now())),
        acme(*root.CreateTenantCa(rng, "acme", Now())),
        other(*root.CreateTenantCa(rng, "other", Now())) {}
  Rng rng;
  CertificateAuthority root;
  CertificateAuthority acme;
  CertificateAuthority other;
};

TEST_CASE("device certificate from a CSR chains to the root and carries the identity") {
  Pki p;
  auto key = Key::Generate(p.rng);
  REQUIRE(key.ok());
  std::string csr = MakeCsr(p.rng, *key, "CN=dev-1,O=acme");
  auto cert = p.acme.IssueFromCsr(p.rng, csr, {"acme", "dev-1", Role::kDevice}, Now());
  REQUIRE_MESSAGE(cert.ok(), cert.status().message());
  CHECK(Verify(cert->pem, p.acme, p.root) == 0);
  CHECK(cert->serial.size() == 32);
  CHECK(cert->not_after_ms - cert->not_before_ms >= kDeviceValidity);
  mbedtls_x509_crt crt;
  mbedtls_x509_crt_init(&crt);
  REQUIRE(mbedtls_x509_crt_parse_der(&crt, reinterpret_cast<const unsigned char*>(cert->der.data()),
                                     cert->der.size()) == 0);
  auto id = IdentityOf(crt);
  REQUIRE(id.ok());
  CHECK(id->tenant == "acme");
  CHECK(id->name == "dev-1");
  CHECK(id->role == Role::kDevice);
  CHECK(SerialHex(crt) == cert->serial);
  CHECK_FALSE(crt.ca_istrue);
  CHECK((crt.key_usage & MBEDTLS_X509_KU_DIGITAL_SIGNATURE) != 0);
  CHECK(mbedtls_x509_crt_check_extended_key_usage(&crt, MBEDTLS_OID_CLIENT_AUTH,
                                                  MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)) == 0);
  CHECK(mbedtls_x509_crt_check_extended_key_usage(&crt, MBEDTLS_OID_SERVER_AUTH,
                                                  MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)) != 0);
  mbedtls_x509_crt_free(&crt);
  // A CSR without subject fields is fine too: the CA sets them.
  auto bare = p.acme.IssueFromCsr(p.rng, MakeCsr(p.rng, *key, "C=DE"), {"acme", "dev-2", Role::kDevice}, Now());
  CHECK(bare.ok());
}

TEST_CASE("CSR refusals: bad signature, wrong key, other device, other tenant, wrong CA, garbage") {
  Pki p;
  auto key = Key::Generate(p.rng);
  REQUIRE(key.ok());
  Subject dev{"acme", "dev-1", Role::kDevice};
  std::string good = MakeCsr(p.rng, *key, "CN=dev-1,O=acme");

  // Corrupt the signature: flip a byte near the end of the DER.
  mbedtls_x509_csr parsed;
  mbedtls_x509_csr_init(&parsed);
  REQUIRE(mbedtls_x509_csr_parse(&parsed, reinterpret_cast<const unsigned char*>(good.c_str()), good.size() + 1) == 0);
  std::string der(reinterpret_cast<const char*>(parsed.raw.p), parsed.raw.len);
  mbedtls_x509_csr_free(&parsed);
  der[der.size() - 5] ^= 0x01;
  auto s = p.acme.IssueFromCsr(p.rng, der, dev, Now());
  CHECK_FALSE(s.ok());
  CHECK(std::string(s.status().message()).find("signature") != std::string::npos);

  s = p.acme.IssueFromCsr(p.rng, MakeCsr(p.rng, *key, "CN=dev-9,O=acme"), dev, Now());
  CHECK(absl::IsPermissionDenied(s.status()));
  s = p.acme.IssueFromCsr(p.rng, MakeCsr(p.rng, *key, "CN=dev-1,O=other"), dev, Now());
  CHECK(absl::IsPermissionDenied(s.status()));
  s = p.other.IssueFromCsr(p.rng, good, dev, Now());  // acme's device at other's CA
  CHECK(absl::IsPermissionDenied(s.status()));
  s = p.acme.IssueFromCsr(p.rng, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", dev,
                          Now());
  CHECK(absl::IsInvalidArgument(s.status()));
  s = p.acme.IssueFromCsr(p.rng, std::string("\x30\x82\xff\xff", 4), dev, Now());
  CHECK(absl::IsInvalidArgument(s.status()));
  s = p.acme.IssueFromCsr(p.rng, good, {"acme", "bad,CN=x", Role::kDevice}, Now());
  CHECK(absl::IsInvalidArgument(s.status()));
  s = p.acme.IssueFromCsr(p.rng, good, {"acme", "dev-1", Role::kTenantCa}, Now());
  CHECK(absl::IsInvalidArgument(s.status()));

  // A P-384 key is refused: the profile is P-256.
  mbedtls_pk_context k384;
  mbedtls_pk_init(&k384);
  REQUIRE(mbedtls_pk_setup(&k384, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) == 0);
  REQUIRE(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP384R1, mbedtls_pk_ec(k384), Rng::Fill, &p.rng) == 0);
  mbedtls_x509write_csr req;
  mbedtls_x509write_csr_init(&req);
  mbedtls_x509write_csr_set_md_alg(&req, MBEDTLS_MD_SHA256);
  mbedtls_x509write_csr_set_key(&req, &k384);
  REQUIRE(mbedtls_x509write_csr_set_subject_name(&req, "CN=dev-1") == 0);
  unsigned char buf[4096];
  REQUIRE(mbedtls_x509write_csr_pem(&req, buf, sizeof buf, Rng::Fill, &p.rng) == 0);
  mbedtls_x509write_csr_free(&req);
  mbedtls_pk_free(&k384);
  s = p.acme.IssueFromCsr(p.rng, reinterpret_cast<char*>(buf), dev, Now());
  CHECK(std::string(s.status().message()).find("P-256") != std::string::npos);
}

TEST_CASE("a tenant's certificate does not verify under another tenant's CA") {
  Pki p;
  std::string key_pem;
  auto cert = p.other.IssueWithNewKey(p.rng, {"other", "dev-1", Role::kDevice}, Now(), kDeviceValidity, &key_pem);
  REQUIRE(cert.ok());
  CHECK(Verify(cert->pem, p.other, p.root) == 0);
  CHECK(Verify(cert->pem, p.acme, p.root) != 0);
}

TEST_CASE("CRL: revoked certificates are rejected, others pass, the CRL verifies") {
  Pki p;
  std::string k1, k2;
  auto a = p.acme.IssueWithNewKey(p.rng, {"acme", "dev-a", Role::kDevice}, Now(), kDeviceValidity, &k1);
  auto b = p.acme.IssueWithNewKey(p.rng, {"acme", "dev-b", Role::kDevice}, Now(), kDeviceValidity, &k2);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  auto crl = p.acme.WriteCrl(p.rng, {{a->serial, Now() - 1000}, {"1f", Now()}}, 7, Now(), Now() + 7 * kDay);
  REQUIRE_MESSAGE(crl.ok(), crl.status().message());
  CHECK((Verify(a->pem, p.acme, p.root, &*crl) & MBEDTLS_X509_BADCERT_REVOKED) != 0);
  CHECK(Verify(b->pem, p.acme, p.root, &*crl) == 0);
  mbedtls_x509_crl parsed;
  mbedtls_x509_crl_init(&parsed);
  REQUIRE(mbedtls_x509_crl_parse_der(&parsed, reinterpret_cast<const unsigned char*>(crl->data()), crl->size()) == 0);
  CHECK(parsed.version == 2);
  int entries = 0;
  for (const mbedtls_x509_crl_entry* e = &parsed.entry; e != nullptr && e->raw.p != nullptr; e = e->next) ++entries;
  CHECK(entries == 2);
  mbedtls_x509_crl_free(&parsed);
  auto empty = p.acme.WriteCrl(p.rng, {}, 8, Now(), Now() + kDay);
  REQUIRE(empty.ok());
  CHECK(Verify(a->pem, p.acme, p.root, &*empty) == 0);
}

TEST_CASE("CAs reload from PEM; a key that does not match its certificate is refused") {
  Pki p;
  auto key = p.acme.key_pem();
  REQUIRE(key.ok());
  auto again = CertificateAuthority::Load(p.acme.cert().pem, *key);
  REQUIRE(again.ok());
  CHECK(again->tenant() == "acme");
  auto other_key = p.other.key_pem();
  REQUIRE(other_key.ok());
  CHECK_FALSE(CertificateAuthority::Load(p.acme.cert().pem, *other_key).ok());
  CHECK_FALSE(CertificateAuthority::Load("not a cert", *key).ok());
  std::string leaf_key;
  auto leaf = p.acme.IssueWithNewKey(p.rng, {"acme", "d", Role::kDevice}, Now(), kDay, &leaf_key);
  REQUIRE(leaf.ok());
  CHECK_FALSE(CertificateAuthority::Load(leaf->pem, leaf_key).ok());  // not a CA
}

}  // namespace
}  // namespace fmq::pki

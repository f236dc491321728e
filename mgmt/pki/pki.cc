#include "mgmt/pki/pki.h"

#include <mbedtls/asn1write.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/sha1.h>
#include <mbedtls/x509_csr.h>

#include <cstring>
#include <ctime>

#include "common/hex.h"

namespace fmq::pki {
namespace {

absl::Status Fail(std::string_view what, int rc) {
  return absl::InternalError(std::string(what) + ": " + MbedError(rc));
}

std::string Dn(const Subject& s) {
  std::string dn = "CN=" + s.name + ",OU=" + std::string(RoleName(s.role));
  if (!s.tenant.empty()) dn += ",O=" + s.tenant;
  return dn;
}

std::string TimeString(int64_t ms, const char* fmt) {
  time_t t = static_cast<time_t>(ms / 1000);
  tm g;
  gmtime_r(&t, &g);
  char buf[32];
  std::strftime(buf, sizeof buf, fmt, &g);
  return buf;
}

// DER of an extension value, written backwards by the ASN.1 writer.
class Der {
 public:
  Der() : p_(buf_ + sizeof buf_) {}
  unsigned char** p() { return &p_; }
  unsigned char* start() { return buf_; }
  std::string bytes() const { return std::string(reinterpret_cast<const char*>(p_), buf_ + sizeof buf_ - p_); }

 private:
  unsigned char buf_[4096] = {};
  unsigned char* p_;
};

#define CHK(expr)                         \
  do {                                    \
    int rc_ = (expr);                     \
    if (rc_ < 0) return Fail(#expr, rc_); \
    len += static_cast<size_t>(rc_);      \
  } while (0)

absl::StatusOr<std::string> ExtKeyUsage(Role role) {
  Der d;
  size_t len = 0;
  const char* oid = role == Role::kServer   ? MBEDTLS_OID_SERVER_AUTH
                    : role == Role::kSigner ? MBEDTLS_OID_CODE_SIGNING
                                            : MBEDTLS_OID_CLIENT_AUTH;
  CHK(mbedtls_asn1_write_oid(d.p(), d.start(), oid, MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)));
  CHK(mbedtls_asn1_write_len(d.p(), d.start(), len));
  CHK(mbedtls_asn1_write_tag(d.p(), d.start(), MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
  return d.bytes();
}

// One GeneralName: [tag] IMPLICIT IA5String (2 = dNSName, 6 = URI).
absl::Status WriteGeneralName(Der& d, unsigned char tag, const std::string& value, size_t* len) {
  size_t n = 0;
  int rc = mbedtls_asn1_write_raw_buffer(d.p(), d.start(), reinterpret_cast<const unsigned char*>(value.data()),
                                         value.size());
  if (rc < 0) return Fail("subject alternative name", rc);
  n += static_cast<size_t>(rc);
  if ((rc = mbedtls_asn1_write_len(d.p(), d.start(), n)) < 0) return Fail("subject alternative name", rc);
  n += static_cast<size_t>(rc);
  if ((rc = mbedtls_asn1_write_tag(d.p(), d.start(), MBEDTLS_ASN1_CONTEXT_SPECIFIC | tag)) < 0) {
    return Fail("subject alternative name", rc);
  }
  *len += n + static_cast<size_t>(rc);
  return absl::OkStatus();
}

absl::StatusOr<std::string> SubjectAltName(const Subject& who, const std::vector<std::string>& dns) {
  Der d;
  size_t len = 0;
  // Written backwards: the URI ends up last, after the DNS names.
  const std::string uri = "urn:fleetmq:" + who.tenant + ":" + std::string(RoleName(who.role)) + ":" + who.name;
  if (auto s = WriteGeneralName(d, 6, uri, &len); !s.ok()) return s;
  for (auto it = dns.rbegin(); it != dns.rend(); ++it) {
    if (auto s = WriteGeneralName(d, 2, *it, &len); !s.ok()) return s;
  }
  CHK(mbedtls_asn1_write_len(d.p(), d.start(), len));
  CHK(mbedtls_asn1_write_tag(d.p(), d.start(), MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
  return d.bytes();
}

std::string Hex(const unsigned char* p, size_t n) {
  const std::string out = HexOf(p, n);
  size_t nz = out.find_first_not_of('0');
  return nz == std::string::npos ? "0" : out.substr(nz);
}

absl::StatusOr<Certificate> ToCertificate(const unsigned char* der, size_t der_len) {
  Certificate c;
  c.der.assign(reinterpret_cast<const char*>(der), der_len);
  mbedtls_x509_crt crt;
  mbedtls_x509_crt_init(&crt);
  int rc = mbedtls_x509_crt_parse_der(&crt, der, der_len);
  if (rc != 0) {
    mbedtls_x509_crt_free(&crt);
    return Fail("parse issued certificate", rc);
  }
  c.serial = SerialHex(crt);
  mbedtls_x509_crt_free(&crt);
  // PEM wrapping of the DER.
  static const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string b64;
  for (size_t i = 0; i < der_len; i += 3) {
    uint32_t v = uint32_t{der[i]} << 16;
    if (i + 1 < der_len) v |= uint32_t{der[i + 1]} << 8;
    if (i + 2 < der_len) v |= der[i + 2];
    b64 += kB64[(v >> 18) & 63];
    b64 += kB64[(v >> 12) & 63];
    b64 += i + 1 < der_len ? kB64[(v >> 6) & 63] : '=';
    b64 += i + 2 < der_len ? kB64[v & 63] : '=';
  }
  c.pem = "-----BEGIN CERTIFICATE-----\n";
  for (size_t i = 0; i < b64.size(); i += 64) c.pem += b64.substr(i, 64) + "\n";
  c.pem += "-----END CERTIFICATE-----\n";
  return c;
}

}  // namespace

std::string MbedError(int rc) {
  char buf[160];
  mbedtls_strerror(rc, buf, sizeof buf);
  char out[200];
  std::snprintf(out, sizeof out, "%s (-0x%04x)", buf, static_cast<unsigned>(-rc));
  return out;
}

std::string_view RoleName(Role r) {
  switch (r) {
    case Role::kDevice:
      return "device";
    case Role::kOperator:
      return "operator";
    case Role::kServer:
      return "server";
    case Role::kTenantCa:
      return "tenant-ca";
    case Role::kRootCa:
      return "root-ca";
    case Role::kAdmin:
      return "admin";
    case Role::kSigner:
      return "signer";
  }
  return "unknown";
}

std::string SerialHex(const mbedtls_x509_crt& crt) { return Hex(crt.serial.p, crt.serial.len); }
std::string SerialHex(const mbedtls_x509_buf& serial) { return Hex(serial.p, serial.len); }

// Names go into a DN string parsed by mbedtls_x509_string_to_names; only a
// safe alphabet is allowed, so nothing needs escaping and nothing can
// smuggle in another attribute.
bool SafeName(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':' || c == '@'))
      return false;
  }
  return true;
}

Rng::Rng() {
  mbedtls_entropy_init(&entropy_);
  mbedtls_ctr_drbg_init(&drbg_);
  static const char kPers[] = "fleetmq-pki";
  int rc = mbedtls_ctr_drbg_seed(&drbg_, mbedtls_entropy_func, &entropy_, reinterpret_cast<const unsigned char*>(kPers),
                                 sizeof kPers - 1);
  if (rc != 0) status_ = Fail("seed the random generator", rc);
}

Rng::~Rng() {
  mbedtls_ctr_drbg_free(&drbg_);
  mbedtls_entropy_free(&entropy_);
}

int Rng::Fill(void* self, unsigned char* out, size_t len) {
  return mbedtls_ctr_drbg_random(&static_cast<Rng*>(self)->drbg_, out, len);
}

Key::Key() = default;
Key::~Key() {
  if (pk_) mbedtls_pk_free(pk_.get());
}
Key::Key(Key&& o) noexcept : pk_(std::move(o.pk_)) {}
Key& Key::operator=(Key&& o) noexcept {
  if (this != &o) {
    if (pk_) mbedtls_pk_free(pk_.get());
    pk_ = std::move(o.pk_);
  }
  return *this;
}

absl::StatusOr<Key> Key::Generate(Rng& rng) {
  Key k;
  k.pk_ = std::make_unique<mbedtls_pk_context>();
  mbedtls_pk_init(k.pk_.get());
  int rc = mbedtls_pk_setup(k.pk_.get(), mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
  if (rc != 0) return Fail("key setup", rc);
  rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*k.pk_), Rng::Fill, &rng);
  if (rc != 0) return Fail("generate EC P-256 key", rc);
  return k;
}

absl::StatusOr<Key> Key::FromPem(std::string_view pem) {
  Key k;
  k.pk_ = std::make_unique<mbedtls_pk_context>();
  mbedtls_pk_init(k.pk_.get());
  std::string z(pem);
  int rc =
      mbedtls_pk_parse_key(k.pk_.get(), reinterpret_cast<const unsigned char*>(z.c_str()), z.size() + 1, nullptr, 0);
  if (rc != 0) return absl::InvalidArgumentError("bad private key: " + MbedError(rc));
  return k;
}

absl::StatusOr<std::string> Key::ToPem() const {
  unsigned char buf[1024];
  int rc = mbedtls_pk_write_key_pem(pk_.get(), buf, sizeof buf);
  if (rc != 0) return Fail("write key", rc);
  return std::string(reinterpret_cast<char*>(buf));
}

absl::StatusOr<Certificate> CertificateAuthority::Sign(Rng& rng, mbedtls_pk_context* subject_key, const Subject& who,
                                                       int64_t now_ms, int64_t validity_ms,
                                                       const std::vector<std::string>& dns_names) {
  if (!SafeName(who.name) || (!who.tenant.empty() && !SafeName(who.tenant))) {
    return absl::InvalidArgumentError("names may use letters, digits and - _ . : @ (1..128 characters)");
  }
  mbedtls_x509write_cert w;
  mbedtls_x509write_crt_init(&w);
  mbedtls_mpi serial;
  mbedtls_mpi_init(&serial);
  struct Cleanup {
    mbedtls_x509write_cert* w;
    mbedtls_mpi* s;
    ~Cleanup() {
      mbedtls_x509write_crt_free(w);
      mbedtls_mpi_free(s);
    }
  } cleanup{&w, &serial};

  unsigned char rnd[16];
  Rng::Fill(&rng, rnd, sizeof rnd);
  rnd[0] &= 0x7F;  // a positive INTEGER
  rnd[0] |= 0x40;  // and always 16 bytes long
  int rc = mbedtls_mpi_read_binary(&serial, rnd, sizeof rnd);
  if (rc == 0) rc = mbedtls_x509write_crt_set_serial(&w, &serial);
  if (rc != 0) return Fail("serial", rc);
  mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
  const int64_t not_before = now_ms - 60'000;  // tolerate small clock skew
  const int64_t not_after = now_ms + validity_ms;
  rc = mbedtls_x509write_crt_set_validity(&w, TimeString(not_before, "%Y%m%d%H%M%S").c_str(),
                                          TimeString(not_after, "%Y%m%d%H%M%S").c_str());
  if (rc != 0) return Fail("validity", rc);
  const std::string subject = Dn(who);
  if ((rc = mbedtls_x509write_crt_set_subject_name(&w, subject.c_str())) != 0) return Fail("subject", rc);
  const std::string issuer = who.role == Role::kRootCa ? subject : subject_dn_;
  if ((rc = mbedtls_x509write_crt_set_issuer_name(&w, issuer.c_str())) != 0) return Fail("issuer", rc);
  mbedtls_x509write_crt_set_subject_key(&w, subject_key);
  mbedtls_x509write_crt_set_issuer_key(&w, key_.pk());
  mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
  const bool ca = who.role == Role::kRootCa || who.role == Role::kTenantCa;
  rc = mbedtls_x509write_crt_set_basic_constraints(&w, ca ? 1 : 0, who.role == Role::kRootCa ? 1 : ca ? 0 : -1);
  if (rc == 0) rc = mbedtls_x509write_crt_set_subject_key_identifier(&w);
  if (rc == 0) rc = mbedtls_x509write_crt_set_authority_key_identifier(&w);
  if (rc == 0) {
    rc = mbedtls_x509write_crt_set_key_usage(
        &w, ca ? (MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN) : MBEDTLS_X509_KU_DIGITAL_SIGNATURE);
  }
  if (rc != 0) return Fail("extensions", rc);
  if (!ca) {
    auto eku = ExtKeyUsage(who.role);
    if (!eku.ok()) return eku.status();
    rc = mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_EXTENDED_KEY_USAGE,
                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0,
                                             reinterpret_cast<const unsigned char*>(eku->data()), eku->size());
    if (rc != 0) return Fail("extended key usage", rc);
    auto san = SubjectAltName(who, dns_names);
    if (!san.ok()) return san.status();
    rc = mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0,
                                             reinterpret_cast<const unsigned char*>(san->data()), san->size());
    if (rc != 0) return Fail("subject alternative name", rc);
  }
  unsigned char der[4096];
  rc = mbedtls_x509write_crt_der(&w, der, sizeof der, Rng::Fill, &rng);
  if (rc < 0) return Fail("sign certificate", rc);
  auto cert = ToCertificate(der + sizeof der - rc, static_cast<size_t>(rc));
  if (!cert.ok()) return cert.status();
  cert->not_before_ms = not_before / 1000 * 1000;
  cert->not_after_ms = not_after / 1000 * 1000;
  return cert;
}

absl::StatusOr<CertificateAuthority> CertificateAuthority::CreateRoot(Rng& rng, std::string_view name, int64_t now_ms) {
  auto key = Key::Generate(rng);
  if (!key.ok()) return key.status();
  CertificateAuthority ca;
  ca.key_ = std::move(*key);
  Subject who{"", std::string(name), Role::kRootCa};
  ca.subject_dn_ = Dn(who);
  auto cert = ca.Sign(rng, ca.key_.pk(), who, now_ms, 20 * 365 * kDay, {});
  if (!cert.ok()) return cert.status();
  auto pem = ca.key_.ToPem();
  if (!pem.ok()) return pem.status();
  return Load(cert->pem, *pem);
}

absl::StatusOr<CertificateAuthority> CertificateAuthority::Load(std::string_view cert_pem, std::string_view key_pem) {
  CertificateAuthority ca;
  auto key = Key::FromPem(key_pem);
  if (!key.ok()) return key.status();
  ca.key_ = std::move(*key);
  ca.parsed_.reset(new mbedtls_x509_crt);
  mbedtls_x509_crt_init(ca.parsed_.get());
  std::string z(cert_pem);
  int rc = mbedtls_x509_crt_parse(ca.parsed_.get(), reinterpret_cast<const unsigned char*>(z.c_str()), z.size() + 1);
  if (rc != 0) return absl::InvalidArgumentError("bad CA certificate: " + MbedError(rc));
  if (!ca.parsed_->ca_istrue) return absl::InvalidArgumentError("not a CA certificate");
  if (mbedtls_pk_check_pair(&ca.parsed_->pk, ca.key_.pk()) != 0) {
    return absl::InvalidArgumentError("the CA key does not match the CA certificate");
  }
  auto id = IdentityOf(*ca.parsed_);
  if (!id.ok()) return id.status();
  ca.tenant_ = id->tenant;
  ca.subject_dn_ = Dn(Subject{id->tenant, id->name, id->role});
  auto cert = ToCertificate(ca.parsed_->raw.p, ca.parsed_->raw.len);
  if (!cert.ok()) return cert.status();
  ca.cert_ = std::move(*cert);
  return ca;
}

absl::StatusOr<CertificateAuthority> CertificateAuthority::CreateTenantCa(Rng& rng, std::string_view tenant,
                                                                          int64_t now_ms) {
  auto key = Key::Generate(rng);
  if (!key.ok()) return key.status();
  Subject who{std::string(tenant), std::string(tenant) + "-ca", Role::kTenantCa};
  auto cert = Sign(rng, key->pk(), who, now_ms, 10 * 365 * kDay, {});
  if (!cert.ok()) return cert.status();
  auto pem = key->ToPem();
  if (!pem.ok()) return pem.status();
  return Load(cert->pem, *pem);
}

absl::StatusOr<Certificate> CertificateAuthority::IssueWithNewKey(Rng& rng, const Subject& who, int64_t now_ms,
                                                                  int64_t validity_ms, std::string* key_pem,
                                                                  const std::vector<std::string>& dns_names) {
  auto key = Key::Generate(rng);
  if (!key.ok()) return key.status();
  auto pem = key->ToPem();
  if (!pem.ok()) return pem.status();
  *key_pem = *pem;
  return Sign(rng, key->pk(), who, now_ms, validity_ms, dns_names);
}

absl::StatusOr<Certificate> CertificateAuthority::IssueFromCsr(Rng& rng, std::string_view csr_text, const Subject& who,
                                                               int64_t now_ms, int64_t validity_ms) {
  if (who.role != Role::kDevice && who.role != Role::kOperator) {
    return absl::InvalidArgumentError("only device and operator certificates are issued from CSRs");
  }
  if (!SafeName(who.name) || !SafeName(who.tenant)) {
    return absl::InvalidArgumentError("names may use letters, digits and - _ . : @ (1..128 characters)");
  }
  if (who.tenant != tenant_) return absl::PermissionDeniedError("this CA belongs to tenant '" + tenant_ + "'");
  mbedtls_x509_csr csr;
  mbedtls_x509_csr_init(&csr);
  struct Free {
    mbedtls_x509_csr* c;
    ~Free() { mbedtls_x509_csr_free(c); }
  } free_csr{&csr};
  std::string z(csr_text);
  const bool pem = z.find("-----BEGIN") != std::string::npos;
  int rc =
      mbedtls_x509_csr_parse(&csr, reinterpret_cast<const unsigned char*>(z.c_str()), pem ? z.size() + 1 : z.size());
  if (rc != 0) return absl::InvalidArgumentError("malformed CSR: " + MbedError(rc));
  // mbedTLS 2.28 parses but does not verify the CSR's self-signature.
  const mbedtls_md_info_t* md = mbedtls_md_info_from_type(csr.sig_md);
  unsigned char hash[MBEDTLS_MD_MAX_SIZE];
  if (md == nullptr || mbedtls_md(md, csr.cri.p, csr.cri.len, hash) != 0 ||
      mbedtls_pk_verify_ext(csr.sig_pk, csr.sig_opts, &csr.pk, csr.sig_md, hash, mbedtls_md_get_size(md), csr.sig.p,
                            csr.sig.len) != 0) {
    return absl::InvalidArgumentError("CSR signature does not verify");
  }
  if (mbedtls_pk_get_type(&csr.pk) != MBEDTLS_PK_ECKEY || mbedtls_pk_ec(csr.pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1) {
    return absl::InvalidArgumentError("CSR key must be EC P-256");
  }
  for (const mbedtls_x509_name* n = &csr.subject; n != nullptr; n = n->next) {
    if (n->oid.p == nullptr) continue;
    std::string_view v(reinterpret_cast<const char*>(n->val.p), n->val.len);
    if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0 && v != who.name) {
      return absl::PermissionDeniedError("CSR subject CN '" + std::string(v) + "' is not '" + who.name + "'");
    }
    if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_ORGANIZATION, &n->oid) == 0 && v != who.tenant) {
      return absl::PermissionDeniedError("CSR subject O '" + std::string(v) + "' claims another tenant");
    }
  }
  return Sign(rng, &csr.pk, who, now_ms, validity_ms, {});
}

absl::StatusOr<Identity> IdentityOf(const mbedtls_x509_crt& crt) {
  Identity id;
  std::string role;
  for (const mbedtls_x509_name* n = &crt.subject; n != nullptr; n = n->next) {
    if (n->oid.p == nullptr) continue;
    std::string v(reinterpret_cast<const char*>(n->val.p), n->val.len);
    if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0)
      id.name = v;
    else if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_ORG_UNIT, &n->oid) == 0)
      role = v;
    else if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_ORGANIZATION, &n->oid) == 0)
      id.tenant = v;
  }
  for (Role r :
       {Role::kDevice, Role::kOperator, Role::kServer, Role::kTenantCa, Role::kRootCa, Role::kAdmin, Role::kSigner}) {
    if (role == RoleName(r)) {
      id.role = r;
      if (id.name.empty()) return absl::InvalidArgumentError("certificate subject has no CN");
      if (id.tenant.empty() && r != Role::kRootCa)
        return absl::InvalidArgumentError("certificate subject has no O (tenant)");
      return id;
    }
  }
  return absl::InvalidArgumentError("certificate subject OU '" + role + "' is not a fleetmq role");
}

absl::StatusOr<std::string> SignData(Rng& rng, Key& key, std::string_view data) {
  unsigned char hash[32];
  int rc = mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), reinterpret_cast<const unsigned char*>(data.data()),
                      data.size(), hash);
  if (rc != 0) return Fail("hash", rc);
  unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
  size_t len = 0;
  rc = mbedtls_pk_sign(key.pk(), MBEDTLS_MD_SHA256, hash, sizeof hash, sig, &len, Rng::Fill, &rng);
  if (rc != 0) return Fail("sign", rc);
  return std::string(reinterpret_cast<const char*>(sig), len);
}

absl::Status VerifySigned(mbedtls_x509_crt* trust, std::string_view chain_pem, std::string_view tenant,
                          std::string_view data, std::string_view sig_der) {
  mbedtls_x509_crt chain;
  mbedtls_x509_crt_init(&chain);
  struct Free {
    mbedtls_x509_crt* c;
    ~Free() { mbedtls_x509_crt_free(c); }
  } free_chain{&chain};
  std::string z(chain_pem);
  int rc = mbedtls_x509_crt_parse(&chain, reinterpret_cast<const unsigned char*>(z.c_str()), z.size() + 1);
  if (rc != 0) return absl::InvalidArgumentError("signer chain does not parse: " + MbedError(rc));
  uint32_t flags = 0;
  rc = mbedtls_x509_crt_verify(&chain, trust, nullptr, nullptr, &flags, nullptr, nullptr);
  if (rc != 0) {
    char buf[256];
    mbedtls_x509_crt_verify_info(buf, sizeof buf, "", flags);
    return absl::PermissionDeniedError("signer certificate does not verify: " + std::string(buf));
  }
  auto id = IdentityOf(chain);
  if (!id.ok() || id->role != Role::kSigner) return absl::PermissionDeniedError("certificate is not a firmware signer");
  if (id->tenant != tenant) return absl::PermissionDeniedError("signer belongs to tenant '" + id->tenant + "'");
  if (chain.next == nullptr) return absl::PermissionDeniedError("signer chain lacks its tenant CA");
  auto ca = IdentityOf(*chain.next);
  if (!ca.ok() || ca->role != Role::kTenantCa || ca->tenant != tenant) {
    return absl::PermissionDeniedError("signer is not issued by the tenant's CA");
  }
  if (mbedtls_x509_crt_check_extended_key_usage(&chain, MBEDTLS_OID_CODE_SIGNING,
                                                MBEDTLS_OID_SIZE(MBEDTLS_OID_CODE_SIGNING)) != 0) {
    return absl::PermissionDeniedError("signer certificate lacks the codeSigning key usage");
  }
  unsigned char hash[32];
  rc = mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), reinterpret_cast<const unsigned char*>(data.data()),
                  data.size(), hash);
  if (rc == 0) {
    rc = mbedtls_pk_verify(&chain.pk, MBEDTLS_MD_SHA256, hash, sizeof hash,
                           reinterpret_cast<const unsigned char*>(sig_der.data()), sig_der.size());
  }
  if (rc != 0) return absl::PermissionDeniedError("signature does not verify");
  return absl::OkStatus();
}

}  // namespace fmq::pki

// The private PKI: a platform root CA, one intermediate CA per tenant,
// device certificates issued from device CSRs (signature and key checked),
// server and operator certificates, and DER CRLs signed by a tenant CA
// (mbedTLS 2.28 has no CRL writer; crl.cc encodes it with the ASN.1
// writer). ECDSA P-256 with SHA-256 throughout. The certificate profile is
// in doc/certificate-profile.md. Objects are not shared between threads.
#pragma once

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fmq::pki {

// A seeded CTR-DRBG; one per thread that signs.
class Rng {
 public:
  Rng();
  ~Rng();
  Rng(const Rng&) = delete;
  Rng& operator=(const Rng&) = delete;
  absl::Status status() const { return status_; }
  static int Fill(void* self, unsigned char* out, size_t len);

 private:
  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context drbg_;
  absl::Status status_;
};

// An EC P-256 key pair.
class Key {
 public:
  Key();
  ~Key();
  Key(Key&& o) noexcept;
  Key& operator=(Key&& o) noexcept;
  Key(const Key&) = delete;
  static absl::StatusOr<Key> Generate(Rng& rng);
  static absl::StatusOr<Key> FromPem(std::string_view pem);
  absl::StatusOr<std::string> ToPem() const;
  mbedtls_pk_context* pk() { return pk_.get(); }

 private:
  std::unique_ptr<mbedtls_pk_context> pk_;
};

// kAdmin: a platform administrator (tenant commands), issued by the root CA
// with O=_platform (tenant ids never start with '_').
// kSigner: a tenant's firmware signer (doc/ota.md), issued by the tenant CA
// with EKU codeSigning; never accepted as a TLS client.
enum class Role : uint8_t { kDevice, kOperator, kServer, kTenantCa, kRootCa, kAdmin, kSigner };
inline constexpr const char* kPlatformTenant = "_platform";
std::string_view RoleName(Role r);

// Who a certificate is for. The DN is CN=<name>, OU=<role>, O=<tenant>.
struct Subject {
  std::string tenant;  // empty for the root CA
  std::string name;    // device id, operator name, server host, CA name
  Role role = Role::kDevice;
};

struct Certificate {
  std::string pem;
  std::string der;
  std::string serial;  // lowercase hex, no leading zeros
  int64_t not_before_ms = 0;
  int64_t not_after_ms = 0;
};

struct Revoked {
  std::string serial;  // lowercase hex
  int64_t revoked_at_ms = 0;
};

inline constexpr int64_t kDay = 24LL * 3600 * 1000;
inline constexpr int64_t kDeviceValidity = 730 * kDay;  // 2 years [seed]

class CertificateAuthority {
 public:
  // A new self-signed platform root (20 years).
  static absl::StatusOr<CertificateAuthority> CreateRoot(Rng& rng, std::string_view name, int64_t now_ms);
  static absl::StatusOr<CertificateAuthority> Load(std::string_view cert_pem, std::string_view key_pem);

  // A tenant's intermediate CA (10 years, path length 0), signed by this CA.
  absl::StatusOr<CertificateAuthority> CreateTenantCa(Rng& rng, std::string_view tenant, int64_t now_ms);

  // Issues a certificate for `who` from a CSR (PEM or DER). The CSR's
  // signature must verify and its key must be EC P-256; a CN or O in the
  // CSR must match `who` (a CSR cannot claim another device or tenant).
  absl::StatusOr<Certificate> IssueFromCsr(Rng& rng, std::string_view csr, const Subject& who, int64_t now_ms,
                                           int64_t validity_ms = kDeviceValidity);
  // Issues with a freshly generated key (server, operator and platform
  // admin certificates made at first run; admins only from the root). `dns_names` go into the SAN of server
  // certificates.
  absl::StatusOr<Certificate> IssueWithNewKey(Rng& rng, const Subject& who, int64_t now_ms, int64_t validity_ms,
                                              std::string* key_pem, const std::vector<std::string>& dns_names = {});

  // A DER X.509 v2 CRL signed by this CA, with CRL number and authority key
  // identifier extensions.
  absl::StatusOr<std::string> WriteCrl(Rng& rng, const std::vector<Revoked>& revoked, uint64_t crl_number,
                                       int64_t this_update_ms, int64_t next_update_ms);

  const Certificate& cert() const { return cert_; }
  absl::StatusOr<std::string> key_pem() const { return key_.ToPem(); }
  const std::string& tenant() const { return tenant_; }

  CertificateAuthority(CertificateAuthority&&) = default;

 private:
  CertificateAuthority() = default;
  absl::StatusOr<Certificate> Sign(Rng& rng, mbedtls_pk_context* subject_key, const Subject& who, int64_t now_ms,
                                   int64_t validity_ms, const std::vector<std::string>& dns_names);

  Certificate cert_;
  Key key_;
  std::string tenant_;
  std::string subject_dn_;  // as written in issued certificates' issuer field
  struct CrtFree {
    void operator()(mbedtls_x509_crt* c) const {
      mbedtls_x509_crt_free(c);  // the parser's allocations, then the struct
      delete c;
    }
  };
  std::unique_ptr<mbedtls_x509_crt, CrtFree> parsed_;  // for subject_raw and the key id
};

// What a DER CRL says, read without checking its signature (for our own
// CRL files in the data dir: whatever cannot be read is simply re-signed).
struct CrlInfo {
  int64_t this_update_ms = 0;
  int64_t next_update_ms = 0;
  std::vector<std::string> serials;  // SerialHex of each entry, sorted
};
absl::StatusOr<CrlInfo> ReadCrl(std::string_view der);

// The identity a verified leaf certificate carries (subject fields).
struct Identity {
  std::string tenant;
  std::string name;
  Role role = Role::kDevice;
};
absl::StatusOr<Identity> IdentityOf(const mbedtls_x509_crt& crt);

// Serial of a parsed certificate (or of any serial field, e.g. a CRL
// entry's), lowercase hex without leading zeros.
std::string SerialHex(const mbedtls_x509_crt& crt);
std::string SerialHex(const mbedtls_x509_buf& serial);

// Names in certificates (CN, O): letters, digits and - _ . : @, 1..128
// characters, so nothing needs escaping in a DN or a topic level.
bool SafeName(std::string_view s);

// Firmware manifests (doc/ota.md, "The signed manifest"): an ECDSA-SHA256
// signature (DER) over `data`, and its check by a device. VerifySigned
// parses `chain_pem` (the signer's certificate, then its tenant CA), checks
// it chains to `trust` (the platform root the device holds), that the
// signer is OU=signer of `tenant` with EKU codeSigning under that tenant's
// CA, and that `sig_der` verifies over `data` with the signer's key.
absl::StatusOr<std::string> SignData(Rng& rng, Key& key, std::string_view data);
absl::Status VerifySigned(mbedtls_x509_crt* trust, std::string_view chain_pem, std::string_view tenant,
                          std::string_view data, std::string_view sig_der);

// "DNNAME" validity strings and small helpers exposed for tests.
std::string MbedError(int rc);

}  // namespace fmq::pki

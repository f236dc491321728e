// The PKI's files in the data dir: DATA_DIR/pki/{root,server,operator,admin}.{crt,key}
// and DATA_DIR/pki/tenants/<tenant>/{ca.crt,ca.key,chain.pem}. EnsurePki
// creates whatever is missing (keys mode 0600) and keeps what exists; the
// broker calls it on first run, and so does `fleetmq-pki init`. Main thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fmq::pki {

struct PkiFiles {
  std::string dir;
  std::string root_crt;
  std::string server_crt;  // server certificate followed by its tenant CA
  std::string server_key;
  std::string operator_crt;
  std::string operator_key;
  std::string admin_crt;  // platform admin (root-issued)
  std::string admin_key;
  std::vector<std::string> tenant_cas;  // every DATA_DIR/pki/tenants/*/ca.crt
};

absl::StatusOr<PkiFiles> EnsurePki(const std::string& pki_dir, const std::string& tenant,
                                   const std::string& server_name, int64_t now_ms);

// The root and every tenant CA, concatenated (the TLS trust list).
absl::StatusOr<std::string> TrustBundle(const PkiFiles& files);

std::string ReadFile(const std::string& path);

// Writes through a temporary file and rename(2): readers see the old or the
// new content, never a part.
absl::Status WriteFileAtomic(const std::string& path, const std::string& data, mode_t mode);

// DATA_DIR/pki/tenants/<tenant>/{ca.crt,ca.key,chain.pem}, created from the
// root if missing (tenant.create). Returns the CA certificate (PEM).
absl::StatusOr<std::string> EnsureTenantCa(const std::string& pki_dir, const std::string& tenant, int64_t now_ms);

// DATA_DIR/pki/tenants/<tenant>/{signer.crt,signer.key}: the tenant's
// firmware signer (OU=signer, EKU codeSigning, 5 years), issued by its CA
// when missing. `chain_pem` gets the signer certificate then the tenant CA.
struct Signer {
  std::string chain_pem, key_pem;
};
absl::StatusOr<Signer> EnsureTenantSigner(const std::string& pki_dir, const std::string& tenant, int64_t now_ms);

}  // namespace fmq::pki

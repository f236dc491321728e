// What the connections of one TLS client share: mbedTLS's client
// configuration with its trust anchors, its certificate and key (TLS 1.2,
// the server verified, session tickets on). The bench, the admin CLI, the
// device agent, the TLS memory probe and the tests all set up clients
// through it. Immutable after Create; mbedTLS only reads a configuration, so
// sessions share one on its thread (on several threads too: the RNG given
// must then be thread-safe, as pki::Rng is).
#pragma once

#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "mgmt/pki/pki.h"

namespace fmq::tls {

class TlsClientConfig {
 public:
  // PEM texts. Empty `cert_pem` and `key_pem`: no client certificate.
  static absl::StatusOr<std::unique_ptr<TlsClientConfig>> Create(std::string_view trust_pem, std::string_view cert_pem,
                                                                 std::string_view key_pem, pki::Rng* rng);
  // The same, trusting `shared_trust` (parsed once for many clients, e.g.
  // the device agent's thousands of devices); it must outlive this.
  static absl::StatusOr<std::unique_ptr<TlsClientConfig>> WithTrust(const mbedtls_x509_crt* shared_trust,
                                                                    std::string_view cert_pem, std::string_view key_pem,
                                                                    pki::Rng* rng);
  // PEM files; an error names the file that could not be read or parsed.
  static absl::StatusOr<std::unique_ptr<TlsClientConfig>> FromFiles(const std::string& ca_path,
                                                                    const std::string& cert_path,
                                                                    const std::string& key_path, pki::Rng* rng);
  ~TlsClientConfig();
  TlsClientConfig(const TlsClientConfig&) = delete;
  TlsClientConfig& operator=(const TlsClientConfig&) = delete;

  mbedtls_ssl_config* conf() { return &conf_; }
  // The client's own chain (leaf first); empty without a certificate.
  const mbedtls_x509_crt& chain() const { return chain_; }

 private:
  TlsClientConfig();
  absl::Status Setup(const mbedtls_x509_crt* trust, std::string_view cert_pem, std::string_view key_pem, pki::Rng* rng);

  mbedtls_ssl_config conf_;
  mbedtls_x509_crt trust_;  // when not shared
  mbedtls_x509_crt chain_;
  mbedtls_pk_context key_;
};

}  // namespace fmq::tls

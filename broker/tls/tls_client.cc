#include "broker/tls/tls_client.h"

#include <fstream>
#include <iterator>

namespace fmq::tls {
namespace {

const unsigned char* Bytes(const std::string& s) { return reinterpret_cast<const unsigned char*>(s.c_str()); }

std::string ReadFile(const std::string& path, bool* ok) {
  std::ifstream f(path, std::ios::binary);
  *ok = static_cast<bool>(f);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

}  // namespace

TlsClientConfig::TlsClientConfig() {
  mbedtls_ssl_config_init(&conf_);
  mbedtls_x509_crt_init(&trust_);
  mbedtls_x509_crt_init(&chain_);
  mbedtls_pk_init(&key_);
}

TlsClientConfig::~TlsClientConfig() {
  mbedtls_ssl_config_free(&conf_);
  mbedtls_x509_crt_free(&trust_);
  mbedtls_x509_crt_free(&chain_);
  mbedtls_pk_free(&key_);
}

absl::Status TlsClientConfig::Setup(const mbedtls_x509_crt* trust, std::string_view cert_pem, std::string_view key_pem,
                                    pki::Rng* rng) {
  int rc = mbedtls_ssl_config_defaults(&conf_, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                       MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc != 0) return absl::InternalError("TLS client config: " + pki::MbedError(rc));
  mbedtls_ssl_conf_rng(&conf_, pki::Rng::Fill, rng);
  mbedtls_ssl_conf_authmode(&conf_, MBEDTLS_SSL_VERIFY_REQUIRED);
  // mbedTLS keeps a non-const pointer but only reads the chain.
  mbedtls_ssl_conf_ca_chain(&conf_, const_cast<mbedtls_x509_crt*>(trust), nullptr);
  mbedtls_ssl_conf_session_tickets(&conf_, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
  if (cert_pem.empty() && key_pem.empty()) return absl::OkStatus();
  const std::string cert(cert_pem), key(key_pem);  // mbedTLS wants the NUL counted
  if ((rc = mbedtls_x509_crt_parse(&chain_, Bytes(cert), cert.size() + 1)) != 0) {
    return absl::InvalidArgumentError("client certificate: " + pki::MbedError(rc));
  }
  if ((rc = mbedtls_pk_parse_key(&key_, Bytes(key), key.size() + 1, nullptr, 0)) != 0) {
    return absl::InvalidArgumentError("client key: " + pki::MbedError(rc));
  }
  if ((rc = mbedtls_ssl_conf_own_cert(&conf_, &chain_, &key_)) != 0) {
    return absl::InvalidArgumentError("client certificate and key: " + pki::MbedError(rc));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TlsClientConfig>> TlsClientConfig::Create(std::string_view trust_pem,
                                                                         std::string_view cert_pem,
                                                                         std::string_view key_pem, pki::Rng* rng) {
  std::unique_ptr<TlsClientConfig> c(new TlsClientConfig());
  const std::string trust(trust_pem);
  if (const int rc = mbedtls_x509_crt_parse(&c->trust_, Bytes(trust), trust.size() + 1); rc != 0) {
    return absl::InvalidArgumentError("trusted CA: " + pki::MbedError(rc));
  }
  if (absl::Status st = c->Setup(&c->trust_, cert_pem, key_pem, rng); !st.ok()) return st;
  return c;
}

absl::StatusOr<std::unique_ptr<TlsClientConfig>> TlsClientConfig::WithTrust(const mbedtls_x509_crt* shared_trust,
                                                                            std::string_view cert_pem,
                                                                            std::string_view key_pem, pki::Rng* rng) {
  std::unique_ptr<TlsClientConfig> c(new TlsClientConfig());
  if (absl::Status st = c->Setup(shared_trust, cert_pem, key_pem, rng); !st.ok()) return st;
  return c;
}

absl::StatusOr<std::unique_ptr<TlsClientConfig>> TlsClientConfig::FromFiles(const std::string& ca_path,
                                                                            const std::string& cert_path,
                                                                            const std::string& key_path,
                                                                            pki::Rng* rng) {
  bool ok_ca = false, ok_cert = false, ok_key = false;
  const std::string ca = ReadFile(ca_path, &ok_ca), cert = ReadFile(cert_path, &ok_cert),
                    key = ReadFile(key_path, &ok_key);
  if (!ok_ca || ca.empty()) return absl::InvalidArgumentError("cannot read CA file " + ca_path);
  if (!ok_cert || cert.empty()) return absl::InvalidArgumentError("cannot read certificate " + cert_path);
  if (!ok_key || key.empty()) return absl::InvalidArgumentError("cannot read key " + key_path);
  auto c = Create(ca, cert, key, rng);
  if (!c.ok()) {
    return absl::InvalidArgumentError(std::string(c.status().message()) + " (" + ca_path + ", " + cert_path + ", " +
                                      key_path + ")");
  }
  return c;
}

}  // namespace fmq::tls

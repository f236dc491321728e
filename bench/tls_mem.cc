// fleetmq-tls-mem: heap held by one idle server-side TLS connection.
// Completes N mutual-TLS handshakes in memory (no sockets), frees the
// client sides, and reports the growth of the malloc heap (glibc
// mallinfo2) divided by N, plus the handshake rate. One JSON line.
#include <malloc.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <vector>

#include "broker/tls/tls.h"
#include "broker/tls/tls_client.h"

using namespace fmq;

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1000;
  const int64_t now = static_cast<int64_t>(std::time(nullptr)) * 1000;
  pki::Rng rng;
  auto root = pki::CertificateAuthority::CreateRoot(rng, "root", now);
  auto ca = root->CreateTenantCa(rng, "acme", now);
  std::string skey, dkey;
  auto scert =
      ca->IssueWithNewKey(rng, {"acme", "localhost", pki::Role::kServer}, now, pki::kDay, &skey, {"localhost"});
  auto dcert = ca->IssueWithNewKey(rng, {"acme", "dev", pki::Role::kDevice}, now, pki::kDay, &dkey);
  auto ctx = tls::TlsServerContext::Create(scert->pem + ca->cert().pem, skey, root->cert().pem + ca->cert().pem);
  if (!ctx.ok()) return 1;
  auto client_conf = tls::TlsClientConfig::Create(root->cert().pem, dcert->pem + ca->cert().pem, dkey, &rng);
  if (!client_conf.ok()) return 1;
  mbedtls_ssl_config& conf = *(*client_conf)->conf();

  std::vector<std::unique_ptr<tls::TlsSession>> servers;
  servers.reserve(static_cast<size_t>(n));
  const size_t heap0 = mallinfo2().uordblks;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    auto client = std::make_unique<tls::TlsSession>(&conf, "localhost");
    auto server = std::make_unique<tls::TlsSession>(ctx->get());
    client->OnCiphertext("");
    for (int k = 0; k < 20; ++k) {
      std::string a = client->TakeCiphertext(), b = server->TakeCiphertext();
      if (a.empty() && b.empty()) break;
      if (!a.empty()) server->OnCiphertext(a);
      if (!b.empty()) client->OnCiphertext(b);
    }
    if (server->state() != tls::TlsSession::State::kOpen) {
      std::fprintf(stderr, "handshake %d failed: %s\n", i, server->error().c_str());
      return 1;
    }
    servers.push_back(std::move(server));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const size_t heap1 = mallinfo2().uordblks;
  std::printf(
      "{\"sessions\":%d,\"heap_bytes_per_idle_tls_session\":%.0f,\"full_handshakes_per_s_both_sides_one_core\":%.0f}\n",
      n, static_cast<double>(heap1 - heap0) / n, n / secs);
  servers.clear();
  return 0;
}

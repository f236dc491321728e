// Mutual TLS entirely in memory: a client and a server TlsSession pass
// ciphertext to each other; no socket. Covers the full and resumed
// handshakes and every refusal the security issue lists.
#include "broker/tls/tls.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>

#include "broker/tls/tls_client.h"

namespace fmq::tls {
namespace {

using pki::CertificateAuthority;
using pki::Role;

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)) * 1000; }

struct Creds {
  std::string chain;  // leaf + issuing CA
  std::string key;
};

struct World {
  World()
      : root(*CertificateAuthority::CreateRoot(rng, "root", Now())),
        acme(*root.CreateTenantCa(rng, "acme", Now())),
        other(*root.CreateTenantCa(rng, "other", Now())) {
    server = Issue(acme, {"acme", "localhost", Role::kServer});
    server_ctx = NewContext();
  }
  // Another server context from the same files: the broker after a restart.
  std::unique_ptr<TlsServerContext> NewContext() {
    auto ctx = TlsServerContext::Create(server.chain, server.key, root.cert().pem + acme.cert().pem + other.cert().pem);
    REQUIRE_MESSAGE(ctx.ok(), ctx.status().message());
    return std::move(*ctx);
  }
  Creds Issue(CertificateAuthority& ca, pki::Subject who, int64_t now = Now(),
              int64_t validity = pki::kDeviceValidity) {
    Creds c;
    auto cert = ca.IssueWithNewKey(rng, who, now, validity, &c.key, {"localhost"});
    REQUIRE(cert.ok());
    c.chain = cert->pem + ca.cert().pem;
    return c;
  }
  pki::Rng rng;
  CertificateAuthority root, acme, other;
  Creds server;
  std::unique_ptr<TlsServerContext> server_ctx;
};

// A client-side mbedTLS config for one set of credentials (none: no
// client certificate).
struct ClientConf {
  ClientConf(World& w, const Creds* creds, const std::string& trust_pem) {
    auto c = TlsClientConfig::Create(trust_pem, creds ? creds->chain : "", creds ? creds->key : "", &w.rng);
    REQUIRE_MESSAGE(c.ok(), c.status().message());
    client = std::move(*c);
  }
  mbedtls_ssl_config* conf() { return client->conf(); }
  std::unique_ptr<TlsClientConfig> client;
};

// Moves bytes both ways until neither side has anything to say.
void Pump(TlsSession& client, TlsSession& server) {
  for (int i = 0; i < 50; ++i) {
    std::string c2s = client.TakeCiphertext();
    std::string s2c = server.TakeCiphertext();
    if (c2s.empty() && s2c.empty() && i > 0) return;
    if (!c2s.empty()) server.OnCiphertext(c2s);
    if (!s2c.empty()) client.OnCiphertext(s2c);
    if (i == 0) client.OnCiphertext("");  // starts the client's ClientHello
  }
}

TEST_CASE("mutual TLS handshake in memory, identity, data both ways, then resumption with a ticket") {
  World w;
  Creds dev = w.Issue(w.acme, {"acme", "dev-1", Role::kDevice});
  ClientConf cc(w, &dev, w.root.cert().pem);
  TlsSession client(cc.conf(), "localhost");
  TlsSession server(w.server_ctx.get());
  client.Write("CONNECT bytes");
  Pump(client, server);
  REQUIRE_MESSAGE(server.state() == TlsSession::State::kOpen, server.error());
  REQUIRE_MESSAGE(client.state() == TlsSession::State::kOpen, client.error());
  CHECK_FALSE(server.resumed());
  CHECK(server.identity().tenant == "acme");
  CHECK(server.identity().name == "dev-1");
  CHECK(server.identity().role == Role::kDevice);
  CHECK(server.TakePlaintext() == "CONNECT bytes");
  server.Write("CONNACK bytes");
  Pump(client, server);
  CHECK(client.TakePlaintext() == "CONNACK bytes");

  mbedtls_ssl_session saved;
  mbedtls_ssl_session_init(&saved);
  REQUIRE(client.SaveSession(&saved).ok());
  TlsSession client2(cc.conf(), "localhost");
  REQUIRE(client2.SetSession(&saved).ok());
  TlsSession server2(w.server_ctx.get());
  Pump(client2, server2);
  REQUIRE_MESSAGE(server2.state() == TlsSession::State::kOpen, server2.error());
  CHECK(server2.resumed());
  CHECK(server2.identity().name == "dev-1");
  CHECK(w.server_ctx->counters().resumed == 1);

  // Revoked while away: the resumed handshake, which skips the chain
  // verification, is refused too.
  w.server_ctx->Revoke("acme", server2.peer_serial());
  TlsSession client3(cc.conf(), "localhost");
  REQUIRE(client3.SetSession(&saved).ok());
  TlsSession server3(w.server_ctx.get());
  Pump(client3, server3);
  CHECK(server3.state() == TlsSession::State::kFailed);
  CHECK(server3.error().find("revoked") != std::string::npos);
  // And a full handshake with the same certificate.
  TlsSession client4(cc.conf(), "localhost");
  TlsSession server4(w.server_ctx.get());
  Pump(client4, server4);
  CHECK(server4.state() == TlsSession::State::kFailed);
  CHECK(w.server_ctx->counters().revoked_refused == 2);
  mbedtls_ssl_session_free(&saved);
}

// A full handshake with `server_ctx`; the session the client may resume.
void SessionFrom(TlsServerContext* server_ctx, ClientConf& cc, mbedtls_ssl_session* saved) {
  TlsSession client(cc.conf(), "localhost");
  TlsSession server(server_ctx);
  Pump(client, server);
  REQUIRE_MESSAGE(server.state() == TlsSession::State::kOpen, server.error());
  CHECK_FALSE(server.resumed());
  REQUIRE(client.SaveSession(saved).ok());
}

// Resumes `saved` against `server_ctx`; the server side's state.
struct Resumed {
  TlsSession::State state;
  bool resumed;
  std::string error;
  std::string serial;
};
Resumed Resume(TlsServerContext* server_ctx, ClientConf& cc, const mbedtls_ssl_session* saved) {
  TlsSession client(cc.conf(), "localhost");
  REQUIRE(client.SetSession(saved).ok());
  TlsSession server(server_ctx);
  Pump(client, server);
  return {server.state(), server.resumed(), server.error(), server.peer_serial()};
}

TEST_CASE("tickets sealed with keys on disk resume after a restart; an expired certificate does not resume") {
  World w;
  char tmpl[] = "/tmp/fmq-tls-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  SystemClock clock;  // certificate validity is checked on the real clock
  REQUIRE(w.server_ctx->UseTicketKeys(dir + "/ticket-keys", {}, &clock).ok());
  Creds dev = w.Issue(w.acme, {"acme", "dev-1", Role::kDevice});
  ClientConf cc(w, &dev, w.root.cert().pem);
  mbedtls_ssl_session saved;
  mbedtls_ssl_session_init(&saved);
  SessionFrom(w.server_ctx.get(), cc, &saved);
  CHECK(w.server_ctx->ticket_keys()->counters().sealed == 1);

  // The broker restarts: a new context over the same key file.
  w.server_ctx.reset();
  auto restarted = w.NewContext();
  REQUIRE(restarted->UseTicketKeys(dir + "/ticket-keys", {}, &clock).ok());
  Resumed r = Resume(restarted.get(), cc, &saved);
  CHECK_MESSAGE(r.state == TlsSession::State::kOpen, r.error);
  CHECK(r.resumed);
  CHECK(restarted->counters().resumed == 1);
  CHECK(restarted->ticket_keys()->counters().opened == 1);
  // Revocation still applies to the resumed session.
  restarted->Revoke("acme", r.serial);
  r = Resume(restarted.get(), cc, &saved);
  CHECK(r.state == TlsSession::State::kFailed);
  CHECK(r.error.find("revoked") != std::string::npos);

  // A broker with other keys cannot open the ticket: a full handshake.
  auto stranger = w.NewContext();
  REQUIRE(stranger->UseTicketKeys(dir + "/other-keys", {}, &clock).ok());
  r = Resume(stranger.get(), cc, &saved);
  CHECK_MESSAGE(r.state == TlsSession::State::kOpen, r.error);
  CHECK_FALSE(r.resumed);
  CHECK(stranger->ticket_keys()->counters().refused_unknown_key == 1);
  mbedtls_ssl_session_free(&saved);

  // Tickets off: nothing to resume with.
  auto off = w.NewContext();
  TicketOptions none;
  none.lifetime_s = 0;
  REQUIRE(off->UseTicketKeys(dir + "/unused", none, &clock).ok());
  CHECK(off->ticket_keys() == nullptr);
  mbedtls_ssl_session_init(&saved);
  SessionFrom(off.get(), cc, &saved);
  r = Resume(off.get(), cc, &saved);
  CHECK(r.state == TlsSession::State::kOpen);
  CHECK_FALSE(r.resumed);
  mbedtls_ssl_session_free(&saved);

  // A certificate that expires while its ticket is still good: a full
  // handshake would refuse it, and so does the resumption.
  const int64_t day = 86'400'000;
  Creds brief = w.Issue(w.acme, {"acme", "dev-2", Role::kDevice}, Now() - day, day + 2000);
  ClientConf bc(w, &brief, w.root.cert().pem);
  mbedtls_ssl_session_init(&saved);
  SessionFrom(restarted.get(), bc, &saved);
  CHECK(Resume(restarted.get(), bc, &saved).resumed);
  usleep(3'500'000);
  r = Resume(restarted.get(), bc, &saved);
  CHECK(r.state == TlsSession::State::kFailed);
  CHECK(r.error.find("validity") != std::string::npos);
  mbedtls_ssl_session_free(&saved);
  std::system(("rm -rf " + dir).c_str());
}

void ExpectRefused(World& w, const Creds* creds, const std::string& trust, const char* why) {
  CAPTURE(why);
  ClientConf cc(w, creds, trust);
  TlsSession client(cc.conf(), "localhost");
  TlsSession server(w.server_ctx.get());
  Pump(client, server);
  CHECK(server.state() != TlsSession::State::kOpen);
  CHECK_FALSE(server.error().empty());
}

TEST_CASE("refused: other tenant claim, unknown CA, expired, not yet valid, wrong role, no certificate") {
  World w;
  const std::string trust = w.root.cert().pem;
  Creds claim = w.Issue(w.acme, {"other", "dev-1", Role::kDevice});  // acme's CA, O=other
  ExpectRefused(w, &claim, trust, "tenant A's CA vouching for tenant B");

  pki::Rng rng2;
  auto foreign_root = CertificateAuthority::CreateRoot(rng2, "root", Now());
  auto foreign_ca = foreign_root->CreateTenantCa(rng2, "acme", Now());
  Creds foreign = w.Issue(*foreign_ca, {"acme", "dev-1", Role::kDevice});
  ExpectRefused(w, &foreign, trust, "unknown CA");

  Creds expired = w.Issue(w.acme, {"acme", "old", Role::kDevice}, Now() - 10 * pki::kDay, pki::kDay);
  ExpectRefused(w, &expired, trust, "expired");
  Creds future = w.Issue(w.acme, {"acme", "new", Role::kDevice}, Now() + 10 * pki::kDay, pki::kDay);
  ExpectRefused(w, &future, trust, "not yet valid");
  Creds server_cert = w.Issue(w.acme, {"acme", "localhost", Role::kServer});
  ExpectRefused(w, &server_cert, trust, "serverAuth certificate used as a client");
  ExpectRefused(w, nullptr, trust, "no client certificate");
  CHECK(w.server_ctx->counters().handshakes == 0);
  CHECK(w.server_ctx->counters().failed >= 6);
}

TEST_CASE("large records flow after the record buffers are trimmed; identity outlives the peer certificate") {
  World w;
  Creds dev = w.Issue(w.acme, {"acme", "dev-1", Role::kDevice});
  ClientConf cc(w, &dev, w.root.cert().pem);
  TlsSession client(cc.conf(), "localhost");
  TlsSession server(w.server_ctx.get());
  server.set_trim_interval_ms(0);
  Pump(client, server);
  REQUIRE(server.state() == TlsSession::State::kOpen);
  CHECK(server.trims() == 0);                // handshake records are small
  CHECK(server.identity().name == "dev-1");  // kept, though the certificate is gone
  pki::Rng rng;
  for (int round = 0; round < 4; ++round) {
    CAPTURE(round);
    std::string up(16384 + round, '\0'), down(16000 - round, '\0');
    pki::Rng::Fill(&rng, reinterpret_cast<unsigned char*>(up.data()), up.size());
    pki::Rng::Fill(&rng, reinterpret_cast<unsigned char*>(down.data()), down.size());
    client.Write(up);
    Pump(client, server);
    CHECK(server.TakePlaintext() == up);
    server.Write(down);
    Pump(client, server);
    CHECK(client.TakePlaintext() == down);
    // Small records between the big ones still decrypt with the counters
    // the trim kept.
    client.Write("ping");
    server.Write("pong");
    Pump(client, server);
    CHECK(server.TakePlaintext() == "ping");
    CHECK(client.TakePlaintext() == "pong");
  }
  CHECK(server.trims() >= 4);
  CHECK(server.state() == TlsSession::State::kOpen);
}

TEST_CASE("garbage instead of a ClientHello fails that session only") {
  World w;
  TlsSession server(w.server_ctx.get());
  server.OnCiphertext(std::string("\x16\x03\x01\x00\x05hello", 10));
  server.OnCiphertext("GET / HTTP/1.1\r\n\r\n");
  CHECK(server.state() == TlsSession::State::kFailed);
  Creds dev = w.Issue(w.acme, {"acme", "dev-1", Role::kDevice});
  ClientConf cc(w, &dev, w.root.cert().pem);
  TlsSession client(cc.conf(), "localhost");
  TlsSession ok(w.server_ctx.get());
  Pump(client, ok);
  CHECK(ok.state() == TlsSession::State::kOpen);
}

}  // namespace
}  // namespace fmq::tls

namespace fmq::tls {

TEST_CASE("TLS client configuration: bad trust, certificate, key and missing files are named") {
  World w;
  Creds dev = w.Issue(w.acme, {"acme", "dev-1", Role::kDevice});
  const std::string root = w.root.cert().pem;
  auto why = [](const absl::StatusOr<std::unique_ptr<TlsClientConfig>>& c) {
    return c.ok() ? std::string("ok") : std::string(c.status().message());
  };
  CHECK(why(TlsClientConfig::Create("not a PEM", dev.chain, dev.key, &w.rng)).find("trusted CA") == 0);
  CHECK(why(TlsClientConfig::Create(root, "garbage", dev.key, &w.rng)).find("client certificate") == 0);
  CHECK(why(TlsClientConfig::Create(root, dev.chain, "garbage", &w.rng)).find("client key") == 0);
  CHECK(why(TlsClientConfig::Create(root, "", "", &w.rng)) == "ok");  // no client certificate
  CHECK(why(TlsClientConfig::FromFiles("/nonexistent/ca.pem", "/x", "/y", &w.rng)) ==
        "cannot read CA file /nonexistent/ca.pem");
  // One parsed trust chain shared by several clients: each completes a
  // mutual handshake.
  mbedtls_x509_crt trust;
  mbedtls_x509_crt_init(&trust);
  REQUIRE(mbedtls_x509_crt_parse(&trust, reinterpret_cast<const unsigned char*>(root.c_str()), root.size() + 1) == 0);
  for (int i = 0; i < 2; ++i) {
    auto c = TlsClientConfig::WithTrust(&trust, dev.chain, dev.key, &w.rng);
    REQUIRE(c.ok());
    CHECK(pki::IdentityOf((*c)->chain())->name == "dev-1");
    TlsSession client((*c)->conf(), "localhost");
    TlsSession server(w.server_ctx.get());
    Pump(client, server);
    CHECK_MESSAGE(server.state() == TlsSession::State::kOpen, server.error());
  }
  mbedtls_x509_crt_free(&trust);
}

}  // namespace fmq::tls

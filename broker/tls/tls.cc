#include "broker/tls/tls.h"

#include <malloc.h>
#include <mbedtls/error.h>
#include <mbedtls/platform.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <ctime>

namespace fmq::tls {
namespace {

// TLS 1.2, ECDHE-ECDSA with AEAD ciphers only, AES-GCM first.
const int kCiphersuites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    0,
};

absl::Status MbedFail(std::string_view what, int rc) {
  return absl::InvalidArgumentError(std::string(what) + ": " + pki::MbedError(rc));
}

// A record this large touches pages of the record buffers past the first.
constexpr size_t kBigRecord = 3072;
// Kept when a record buffer is trimmed: the record counter, header and IV
// sit in its first bytes; only what follows is record data.
constexpr size_t kKeepHead = 64;
// TlsSession::in_ keeps at most this much capacity once drained.
constexpr size_t kKeepInput = 4096;

int64_t CoarseMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// MADV_DONTNEED on the whole pages inside [p, p + len): they read as zeros
// when next touched.
void DiscardPages(unsigned char* p, size_t len) {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + len) & ~(page - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

std::string Key(std::string_view tenant, std::string_view serial) {
  std::string k(tenant);
  k.push_back('\0');
  k.append(serial);
  return k;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsServerContext>> TlsServerContext::Create(std::string_view chain_pem,
                                                                           std::string_view key_pem,
                                                                           std::string_view trust_pem) {
  std::unique_ptr<TlsServerContext> c(new TlsServerContext());
  mbedtls_entropy_init(&c->entropy_);
  mbedtls_ctr_drbg_init(&c->drbg_);
  mbedtls_ssl_config_init(&c->conf_);
  mbedtls_ssl_ticket_init(&c->ticket_);
  mbedtls_x509_crt_init(&c->own_chain_);
  mbedtls_x509_crt_init(&c->trust_);
  mbedtls_pk_init(&c->own_key_);
  c->ready_ = true;
  static const char kPers[] = "fleetmq-tls";
  int rc = mbedtls_ctr_drbg_seed(&c->drbg_, mbedtls_entropy_func, &c->entropy_,
                                 reinterpret_cast<const unsigned char*>(kPers), sizeof kPers - 1);
  if (rc != 0) return MbedFail("seed", rc);
  std::string chain(chain_pem), key(key_pem), trust(trust_pem);
  if ((rc = mbedtls_x509_crt_parse(&c->own_chain_, reinterpret_cast<const unsigned char*>(chain.c_str()),
                                   chain.size() + 1)) != 0) {
    return MbedFail("server certificate", rc);
  }
  if ((rc = mbedtls_pk_parse_key(&c->own_key_, reinterpret_cast<const unsigned char*>(key.c_str()), key.size() + 1,
                                 nullptr, 0)) != 0) {
    return MbedFail("server key", rc);
  }
  if ((rc = mbedtls_x509_crt_parse(&c->trust_, reinterpret_cast<const unsigned char*>(trust.c_str()),
                                   trust.size() + 1)) != 0) {
    return MbedFail("trusted CAs", rc);
  }
  rc = mbedtls_ssl_config_defaults(&c->conf_, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                   MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc != 0) return MbedFail("config", rc);
  mbedtls_ssl_conf_rng(&c->conf_, mbedtls_ctr_drbg_random, &c->drbg_);
  mbedtls_ssl_conf_min_version(&c->conf_, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_ciphersuites(&c->conf_, kCiphersuites);
  mbedtls_ssl_conf_authmode(&c->conf_, MBEDTLS_SSL_VERIFY_REQUIRED);
  mbedtls_ssl_conf_ca_chain(&c->conf_, &c->trust_, nullptr);
  if ((rc = mbedtls_ssl_conf_own_cert(&c->conf_, &c->own_chain_, &c->own_key_)) != 0) return MbedFail("own cert", rc);
  // Session tickets: resumed connections skip the certificate exchange, so
  // revocation is checked again on the session's stored peer certificate.
  rc = mbedtls_ssl_ticket_setup(&c->ticket_, mbedtls_ctr_drbg_random, &c->drbg_, MBEDTLS_CIPHER_AES_256_GCM, 86400);
  if (rc != 0) return MbedFail("tickets", rc);
  mbedtls_ssl_conf_session_tickets_cb(&c->conf_, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse, &c->ticket_);
  return c;
}

absl::Status TlsServerContext::UseTicketKeys(std::string path, TicketOptions opts, const Clock* clock) {
  if (opts.lifetime_s == 0) {
    tickets_.reset();
    mbedtls_ssl_conf_session_tickets_cb(&conf_, nullptr, nullptr, nullptr);
    return absl::OkStatus();
  }
  tickets_ = std::make_unique<TicketKeys>(std::move(path), opts, clock, mbedtls_ctr_drbg_random, &drbg_);
  absl::Status st = tickets_->Open();
  if (tickets_->key_count() == 0) return st;  // no key at all: keep the in-memory ones
  mbedtls_ssl_conf_session_tickets_cb(&conf_, TicketKeys::Seal, TicketKeys::Unseal, tickets_.get());
  return st;
}

TlsServerContext::~TlsServerContext() {
  if (!ready_) return;
  mbedtls_ssl_ticket_free(&ticket_);
  mbedtls_ssl_config_free(&conf_);
  mbedtls_x509_crt_free(&own_chain_);
  mbedtls_x509_crt_free(&trust_);
  mbedtls_pk_free(&own_key_);
  mbedtls_ctr_drbg_free(&drbg_);
  mbedtls_entropy_free(&entropy_);
}

const mbedtls_x509_crt* TlsServerContext::FindTrustedIssuer(const mbedtls_x509_buf& issuer_raw) const {
  // Nodes are never freed or moved before the context dies: the pointer
  // stays valid after the lock is released.
  std::shared_lock<std::shared_mutex> l(mu_);
  for (const mbedtls_x509_crt* c = &trust_; c != nullptr && c->raw.p != nullptr; c = c->next) {
    if (c->subject_raw.len == issuer_raw.len && std::memcmp(c->subject_raw.p, issuer_raw.p, issuer_raw.len) == 0) {
      return c;
    }
  }
  return nullptr;
}

absl::Status TlsServerContext::AddTrustedCa(std::string_view ca_pem) {
  std::string pem(ca_pem);  // mbedTLS wants the terminating NUL counted
  std::unique_lock<std::shared_mutex> l(mu_);
  int rc = mbedtls_x509_crt_parse(&trust_, reinterpret_cast<const unsigned char*>(pem.c_str()), pem.size() + 1);
  if (rc != 0) return absl::InvalidArgumentError("CA certificate: " + pki::MbedError(rc));
  return absl::OkStatus();
}

void TlsServerContext::Revoke(std::string_view tenant, std::string_view serial) {
  std::unique_lock<std::shared_mutex> l(mu_);
  revoked_.insert(Key(tenant, serial));
}
void TlsServerContext::Unrevoke(std::string_view tenant, std::string_view serial) {
  std::unique_lock<std::shared_mutex> l(mu_);
  revoked_.erase(Key(tenant, serial));
}
bool TlsServerContext::IsRevoked(std::string_view tenant, std::string_view serial) const {
  const std::string k = Key(tenant, serial);
  std::shared_lock<std::shared_mutex> l(mu_);
  return revoked_.contains(k) || external_revoked_.contains(k);
}

TlsSession::TlsSession(TlsServerContext* ctx) : server_(ctx) {
  mbedtls_ssl_init(&ssl_);
  int rc = mbedtls_ssl_setup(&ssl_, ctx->config());
  if (rc != 0) {
    Fail("setup: " + pki::MbedError(rc));
    return;
  }
  mbedtls_ssl_set_bio(&ssl_, this, Send, Recv, nullptr);
  mbedtls_ssl_set_verify(&ssl_, OnVerify, this);
}

int TlsSession::OnVerify(void* self, mbedtls_x509_crt*, int, uint32_t*) {
  static_cast<TlsSession*>(self)->chain_verified_ = true;
  return 0;  // the chain result itself is mbedTLS's; we only note it ran
}

TlsSession::TlsSession(mbedtls_ssl_config* client_conf, const char* hostname) {
  mbedtls_ssl_init(&ssl_);
  int rc = mbedtls_ssl_setup(&ssl_, client_conf);
  if (rc == 0 && hostname != nullptr) rc = mbedtls_ssl_set_hostname(&ssl_, hostname);
  if (rc != 0) {
    Fail("setup: " + pki::MbedError(rc));
    return;
  }
  mbedtls_ssl_set_bio(&ssl_, this, Send, Recv, nullptr);
}

TlsSession::~TlsSession() { mbedtls_ssl_free(&ssl_); }

int TlsSession::Send(void* self, const unsigned char* buf, size_t len) {
  auto* s = static_cast<TlsSession*>(self);
  if (len > kBigRecord) s->big_record_ = true;  // mbedTLS sends one record per call
  s->out_.append(reinterpret_cast<const char*>(buf), len);
  return static_cast<int>(len);
}

int TlsSession::Recv(void* self, unsigned char* buf, size_t len) {
  auto* s = static_cast<TlsSession*>(self);
  const size_t avail = s->in_.size() - s->in_pos_;
  if (avail == 0) return MBEDTLS_ERR_SSL_WANT_READ;
  if (len > kBigRecord) s->big_record_ = true;  // mbedTLS asks for a record's body at once
  const size_t n = len < avail ? len : avail;
  std::memcpy(buf, s->in_.data() + s->in_pos_, n);
  s->in_pos_ += n;
  if (s->in_pos_ == s->in_.size()) {
    if (s->in_.capacity() > kKeepInput) {
      std::string().swap(s->in_);  // a large read is not kept for good
    } else {
      s->in_.clear();
    }
    s->in_pos_ = 0;
  }
  return static_cast<int>(n);
}

void TlsSession::Fail(std::string why) {
  if (state_ == State::kFailed) return;
  state_ = State::kFailed;
  error_ = std::move(why);
  if (server_ != nullptr) server_->counters().failed++;
}

bool TlsSession::CheckPeer() {
  const mbedtls_x509_crt* peer = mbedtls_ssl_get_peer_cert(&ssl_);
  if (peer == nullptr) {
    Fail("no client certificate");
    return false;
  }
  auto id = pki::IdentityOf(*peer);
  if (!id.ok()) {
    Fail("client certificate: " + std::string(id.status().message()));
    return false;
  }
  if (id->role != pki::Role::kDevice && id->role != pki::Role::kOperator && id->role != pki::Role::kAdmin) {
    Fail("client certificate role '" + std::string(pki::RoleName(id->role)) + "' may not connect");
    return false;
  }
  peer_serial_ = pki::SerialHex(*peer);
  // A full handshake checked the validity period with the chain; a resumed
  // one (its ticket may be a day old, and from before a restart) checks it
  // here.
  if (resumed_ && (mbedtls_x509_time_is_past(&peer->valid_to) || mbedtls_x509_time_is_future(&peer->valid_from))) {
    Fail("certificate " + peer_serial_ + " is outside its validity period (resumed session)");
    return false;
  }
  // The tenant comes from the issuing CA and must agree with the subject.
  const mbedtls_x509_crt* issuer = server_->FindTrustedIssuer(peer->issuer_raw);
  auto issuer_id =
      issuer ? pki::IdentityOf(*issuer) : absl::StatusOr<pki::Identity>(absl::NotFoundError("unknown issuer"));
  // A platform admin is issued by the root itself, under the reserved tenant.
  const bool issuer_ok =
      issuer_id.ok() &&
      (id->role == pki::Role::kAdmin ? issuer_id->role == pki::Role::kRootCa && id->tenant == pki::kPlatformTenant
                                     : issuer_id->role == pki::Role::kTenantCa && issuer_id->tenant == id->tenant);
  if (!issuer_ok) {
    Fail("certificate of tenant '" + id->tenant + "' is not issued by that tenant's CA");
    return false;
  }
  // Checked on every handshake: a resumed session never ran the chain
  // verification, so this is where a revoked device is stopped.
  if (server_->IsRevoked(id->tenant, peer_serial_)) {
    server_->counters().revoked_refused++;
    server_->ObserveRefusal(*id, peer_serial_, "certificate revoked");
    Fail("certificate " + peer_serial_ + " of tenant '" + id->tenant + "' is revoked");
    return false;
  }
  identity_ = std::move(*id);
  return true;
}

void TlsSession::Step() {
  if (state_ == State::kHandshake) {
    int rc;
    if (server_ != nullptr) {
      std::shared_lock<std::shared_mutex> l(server_->trust_mutex());
      rc = mbedtls_ssl_handshake(&ssl_);
    } else {
      rc = mbedtls_ssl_handshake(&ssl_);
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return;
    if (rc != 0) {
      Fail("handshake: " + pki::MbedError(rc));
      return;
    }
    if (server_ != nullptr) {
      resumed_ = !chain_verified_;
      if (!CheckPeer()) return;
      ForgetPeerCertificate();
      server_->counters().handshakes++;
      if (resumed_) server_->counters().resumed++;
    }
    state_ = State::kOpen;
    if (!pending_plain_out_.empty()) {
      std::string p;
      p.swap(pending_plain_out_);
      Write(p);
    }
  }
  while (state_ == State::kOpen) {
    unsigned char buf[16 * 1024];
    int n = mbedtls_ssl_read(&ssl_, buf, sizeof buf);
    if (n > 0) {
      plain_in_.append(reinterpret_cast<char*>(buf), static_cast<size_t>(n));
      continue;
    }
    if (n == MBEDTLS_ERR_SSL_WANT_READ || n == MBEDTLS_ERR_SSL_WANT_WRITE) {
      MaybeTrim();
      return;
    }
    if (n == 0 || n == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
      state_ = State::kClosed;
      return;
    }
    Fail("read: " + pki::MbedError(n));
    return;
  }
}

void TlsSession::OnCiphertext(std::string_view bytes) {
  if (state_ == State::kFailed || state_ == State::kClosed) return;
  in_.append(bytes);
  Step();
}

void TlsSession::Write(std::string_view plain) {
  if (state_ == State::kHandshake) {
    pending_plain_out_.append(plain);
    return;
  }
  if (state_ != State::kOpen) return;
  while (!plain.empty()) {
    int n = mbedtls_ssl_write(&ssl_, reinterpret_cast<const unsigned char*>(plain.data()), plain.size());
    if (n < 0) {
      Fail("write: " + pki::MbedError(n));
      return;
    }
    plain.remove_prefix(static_cast<size_t>(n));
  }
  MaybeTrim();
}

void TlsSession::ForgetPeerCertificate() {
  // Identity and serial are copied out, the ticket (which carries the
  // certificate) has been sent, and there is no renegotiation: the parsed
  // certificate, its key and the curve tables its verification built are
  // dead weight for the life of the connection.
  mbedtls_ssl_session* s = ssl_.session;
  if (s == nullptr || s->peer_cert == nullptr) return;
  mbedtls_x509_crt_free(s->peer_cert);
  mbedtls_free(s->peer_cert);
  s->peer_cert = nullptr;
}

void TlsSession::MaybeTrim() {
  if (!big_record_ || state_ != State::kOpen) return;
  // Nothing half-read, undelivered or unsent may be in the buffers.
  if (ssl_.in_left != 0 || ssl_.out_left != 0 || mbedtls_ssl_check_pending(&ssl_) != 0) return;
  const int64_t now = CoarseMs();
  if (now - last_trim_ms_ < trim_every_ms_) return;
  last_trim_ms_ = now;
  ++trims_;
  big_record_ = false;
  // Up to the allocation's usable end: jemalloc rounds the ~16.7 KB
  // buffers up to a 20 KiB size class, so their last partly used page is
  // theirs alone too.
  for (unsigned char* buf : {ssl_.in_buf, ssl_.out_buf}) {
    if (buf == nullptr) continue;
    const size_t usable = malloc_usable_size(buf);
    if (usable > kKeepHead) DiscardPages(buf + kKeepHead, usable - kKeepHead);
  }
}

void TlsSession::Close() {
  if (state_ == State::kOpen) mbedtls_ssl_close_notify(&ssl_);
  if (state_ != State::kFailed) state_ = State::kClosed;
}

std::string TlsSession::TakePlaintext() {
  std::string p;
  p.swap(plain_in_);
  return p;
}

std::string TlsSession::TakeCiphertext() {
  std::string c;
  c.swap(out_);
  return c;
}

absl::Status TlsSession::SaveSession(mbedtls_ssl_session* out) {
  int rc = mbedtls_ssl_get_session(&ssl_, out);
  return rc == 0 ? absl::OkStatus() : MbedFail("get session", rc);
}

absl::Status TlsSession::SetSession(const mbedtls_ssl_session* s) {
  int rc = mbedtls_ssl_set_session(&ssl_, s);
  return rc == 0 ? absl::OkStatus() : MbedFail("set session", rc);
}

}  // namespace fmq::tls

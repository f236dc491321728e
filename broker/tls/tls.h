// TLS as a byte transformer, I/O-free: ciphertext in, plaintext out and the
// reverse, through mbedTLS memory BIOs (mbedtls_ssl_set_bio with callbacks
// over std::string buffers), so a full mutual-TLS handshake runs in a unit
// test with no socket. TlsServerContext holds what all connections share
// (certificates, trust anchors, session-ticket keys, the revoked-serial
// set); one per process, shared by every worker thread. TlsSession is one connection's state, owned
// by its transport on the worker thread.
#pragma once

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "broker/tls/ticket_keys.h"
#include "common/clock.h"
#include "mgmt/pki/pki.h"

namespace fmq::tls {

struct TlsCounters {  // bumped by every worker's handshakes
  std::atomic<uint64_t> handshakes{0};
  std::atomic<uint64_t> resumed{0};
  std::atomic<uint64_t> failed{0};
  std::atomic<uint64_t> revoked_refused{0};
};

class TlsServerContext {
 public:
  // `server_chain_pem`: the server certificate followed by its CA.
  // `trust_pem`: the root and every tenant CA (client chains end there).
  static absl::StatusOr<std::unique_ptr<TlsServerContext>> Create(std::string_view server_chain_pem,
                                                                  std::string_view server_key_pem,
                                                                  std::string_view trust_pem);
  ~TlsServerContext();

  // Revocation, checked on every handshake (full or resumed) by an O(1)
  // lookup of (tenant, serial).
  void Revoke(std::string_view tenant, std::string_view serial_hex);
  void Unrevoke(std::string_view tenant, std::string_view serial_hex);
  bool IsRevoked(std::string_view tenant, std::string_view serial_hex) const;
  // Serials from external CRL files ("tenant\0serial"), replaced whole on
  // each reload (CrlDir).
  void SetExternalRevoked(absl::flat_hash_set<std::string> s) {
    std::unique_lock<std::shared_mutex> l(mu_);
    external_revoked_ = std::move(s);
  }
  // Held (shared) by a server-side handshake step: the trusted chain it
  // verifies against is only extended under the exclusive lock.
  std::shared_mutex& trust_mutex() const { return mu_; }

  // Trusts one more tenant CA (a tenant created at run time). Appends to the
  // chain the config already points at; handshakes in progress keep theirs.
  absl::Status AddTrustedCa(std::string_view ca_pem);

  // The trusted CA whose subject is `issuer_raw` (a certificate's or a
  // CRL's issuer field), or null.
  const mbedtls_x509_crt* FindTrustedIssuer(const mbedtls_x509_buf& issuer_raw) const;

  // Called (on the handshaking worker's thread) when a verified certificate
  // is refused because it is revoked, so the refusal can be audited. Set
  // before any handshake runs.
  using RefusalObserver = std::function<void(const pki::Identity&, std::string_view serial, std::string_view why)>;
  void SetRefusalObserver(RefusalObserver fn) { refusal_observer_ = std::move(fn); }
  void ObserveRefusal(const pki::Identity& id, std::string_view serial, std::string_view why) const {
    if (refusal_observer_) refusal_observer_(id, serial, why);
  }

  // Session tickets sealed with keys kept in `path` (see TicketKeys), so
  // they resume across restarts; replaces the in-memory keys Create sets
  // up. `opts.lifetime_s == 0` issues no tickets at all. Before any
  // handshake runs. An error (the file cannot be written) leaves tickets
  // working until the next restart.
  absl::Status UseTicketKeys(std::string path, TicketOptions opts, const Clock* clock);
  // Null until UseTicketKeys (or when tickets are off).
  TicketKeys* ticket_keys() { return tickets_.get(); }

  TlsCounters& counters() { return counters_; }
  mbedtls_ssl_config* config() { return &conf_; }

 private:
  TlsServerContext() = default;

  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context drbg_;
  mbedtls_ssl_config conf_;
  mbedtls_ssl_ticket_context ticket_;  // in-memory keys, until UseTicketKeys
  std::unique_ptr<TicketKeys> tickets_;
  mbedtls_x509_crt own_chain_;
  mbedtls_x509_crt trust_;
  mbedtls_pk_context own_key_;
  // Used by every worker thread: the revocation sets and the trusted chain
  // are read under a shared lock, changed under an exclusive one (never on
  // the per-message path). The mbedTLS config, RNG (MBEDTLS_THREADING_C)
  // and ticket keys are safe to share.
  mutable std::shared_mutex mu_;
  absl::flat_hash_set<std::string> revoked_;  // tenant + '\0' + serial
  absl::flat_hash_set<std::string> external_revoked_;
  TlsCounters counters_;
  RefusalObserver refusal_observer_;
  bool ready_ = false;
};

// One connection. Feed ciphertext with OnCiphertext; plaintext comes out of
// TakePlaintext; Write encrypts; TakeCiphertext is what goes to the socket.
class TlsSession {
 public:
  // Server side over a shared context.
  explicit TlsSession(TlsServerContext* ctx);
  // Client side (tests and the bench) over a caller-owned config.
  explicit TlsSession(mbedtls_ssl_config* client_conf, const char* hostname);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  enum class State : uint8_t { kHandshake, kOpen, kClosed, kFailed };

  // Ciphertext from the peer. Drives the handshake and decrypts.
  void OnCiphertext(std::string_view bytes);
  // Plaintext for the peer; buffered until the handshake completes.
  void Write(std::string_view plaintext);
  // Sends close_notify.
  void Close();

  std::string TakePlaintext();
  std::string TakeCiphertext();
  bool HasCiphertext() const { return !out_.empty(); }

  State state() const { return state_; }
  bool resumed() const { return resumed_; }
  // Record-buffer trims so far (MaybeTrim); the interval between them (ms,
  // default 1000; tests set 0).
  uint64_t trims() const { return trims_; }
  void set_trim_interval_ms(int64_t ms) { trim_every_ms_ = ms; }
  const std::string& error() const { return error_; }
  // After the handshake: the verified client identity (server side).
  const pki::Identity& identity() const { return identity_; }
  const std::string& peer_serial() const { return peer_serial_; }
  // Client side: the session to resume a later connection with.
  absl::Status SaveSession(mbedtls_ssl_session* out);
  absl::Status SetSession(const mbedtls_ssl_session* s);

 private:
  static int Send(void* self, const unsigned char* buf, size_t len);
  static int Recv(void* self, unsigned char* buf, size_t len);
  // Per-connection verify callback: only runs on a full handshake, which is
  // how a resumed session is told apart.
  static int OnVerify(void* self, mbedtls_x509_crt* crt, int depth, uint32_t* flags);
  void Step();
  // Gives the pages of mbedTLS's record buffers past the first back to the
  // kernel once a large record has gone through and nothing is buffered:
  // they hold no state then (the record counters live in the first bytes),
  // and an idle connection otherwise keeps ~33 KB resident for good after
  // one 16 KiB record. At most once per trim interval (a busy bulk stream
  // does not pay a syscall per record); the next small record (a PINGREQ)
  // trims what a burst left.
  void MaybeTrim();
  // After the handshake (server side): frees the peer's certificate.
  void ForgetPeerCertificate();
  void Fail(std::string why);
  bool CheckPeer();

  TlsServerContext* server_ = nullptr;
  mbedtls_ssl_context ssl_;
  State state_ = State::kHandshake;
  bool resumed_ = false;
  bool chain_verified_ = false;
  std::string in_;  // ciphertext not yet consumed by mbedTLS
  size_t in_pos_ = 0;
  bool big_record_ = false;  // a record larger than a page since the last trim
  int64_t last_trim_ms_ = 0;
  int64_t trim_every_ms_ = 1000;
  uint64_t trims_ = 0;
  std::string out_;  // ciphertext for the socket
  std::string plain_in_;
  std::string pending_plain_out_;
  std::string error_;
  pki::Identity identity_;
  std::string peer_serial_;
};

}  // namespace fmq::tls

// Session-ticket keys that outlive the process, so a fleet holding tickets
// resumes after a broker restart (kill -9 included) instead of paying a full
// mutual handshake each. Keys live in one file in the PKI directory (mode
// 0600, written through fsync and rename before a key seals anything); a new
// key seals tickets every `rotation_s`, and the keys before it keep opening
// the tickets they sealed until those expire. Seal and Open are mbedTLS's
// ticket callbacks and run on any worker thread (keys under a shared lock,
// one GCM context per call); Open/Rotate belong to the thread that owns the
// file (start-up, then the main loop's tick). The file and ticket formats are
// in doc/storage-format.md ("Session-ticket keys").
#pragma once

#include <mbedtls/ssl.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/clock.h"

namespace fmq::tls {

struct TicketOptions {
  // Seconds one key seals new tickets before the next takes over (12 h: a
  // stolen key file exposes at most that much sealing, plus the lifetime).
  int64_t rotation_s = 12 * 3600;
  // Seconds a ticket resumes a session, sent to clients as the lifetime
  // hint (24 h, mbedTLS's own default). 0 turns tickets off.
  int64_t lifetime_s = 24 * 3600;
};

struct TicketCounters {  // bumped from every worker; read for $SYS
  std::atomic<uint64_t> sealed{0};
  std::atomic<uint64_t> opened{0};
  std::atomic<uint64_t> refused_unknown_key{0};  // sealed by a key dropped or never ours
  std::atomic<uint64_t> refused_forged{0};       // failed authentication, or malformed
  std::atomic<uint64_t> refused_expired{0};
  std::atomic<uint64_t> refused_unloadable{0};  // authentic, but this mbedTLS cannot load the session
  std::atomic<uint64_t> rotations{0};
  std::atomic<uint64_t> write_errors{0};  // key file not written: the new key is not used
};

class TicketKeys {
 public:
  static constexpr size_t kNameBytes = 8;
  static constexpr size_t kSecretBytes = 32;  // AES-256-GCM
  static constexpr size_t kMaxKeys = 16;
  struct Key {
    std::array<unsigned char, kNameBytes> name{};
    int64_t created_s = 0;  // wall clock, Unix seconds
    std::array<unsigned char, kSecretBytes> secret{};
  };
  // The key file: text, one key per line, oldest first. Decode refuses
  // anything else whole (a damaged file is never half trusted).
  static std::string Encode(const std::vector<Key>& keys);
  static absl::StatusOr<std::vector<Key>> Decode(std::string_view text);

  using RandomFn = int (*)(void* ctx, unsigned char* out, size_t len);
  TicketKeys(std::string path, TicketOptions opts, const Clock* clock, RandomFn rng, void* rng_ctx);
  TicketKeys(const TicketKeys&) = delete;
  TicketKeys& operator=(const TicketKeys&) = delete;

  // Loads the file, or creates it. A damaged file is moved aside to
  // `path.damaged` (tickets it sealed fall back to a full handshake) and
  // replaced. Then rotates if the newest key is due. An error means the
  // keys could not be written: they work, but only until the next restart.
  absl::Status Open();
  // A new key when the newest is `rotation_s` old (or there is none), and
  // keys whose tickets have all expired dropped; written to disk before the
  // new key seals anything. Returns true when the key set changed.
  bool Rotate();

  // mbedTLS's f_ticket_write / f_ticket_parse (p_ticket = this).
  static int Seal(void* self, const mbedtls_ssl_session* session, unsigned char* start, const unsigned char* end,
                  size_t* tlen, uint32_t* lifetime);
  static int Unseal(void* self, mbedtls_ssl_session* session, unsigned char* buf, size_t len);

  const TicketCounters& counters() const { return counters_; }
  const TicketOptions& options() const { return opts_; }
  size_t key_count() const;
  const std::string& path() const { return path_; }

 private:
  int64_t NowS() const { return clock_->WallMs() / 1000; }
  absl::Status Persist(const std::vector<Key>& keys);
  bool NewKey(int64_t now_s, Key* out);
  // Keys whose every ticket has expired (all but the newest).
  void DropExpired(std::vector<Key>* keys, int64_t now_s) const;

  const std::string path_;
  const TicketOptions opts_;
  const Clock* clock_;
  RandomFn rng_;
  void* rng_ctx_;
  mutable std::shared_mutex mu_;
  std::vector<Key> keys_;  // oldest first; the last one seals
  bool write_failing_ = false;
  TicketCounters counters_;
};

}  // namespace fmq::tls

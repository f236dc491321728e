// Externally supplied CRLs: every *.crl / *.pem / *.der file in a directory,
// DER or PEM, each verified against the tenant CA that signed it, merged
// into the TLS context's revocation set. Reloaded when the directory's
// files change (polled) or on SIGHUP, without touching the TLS
// configuration, so handshakes in progress and new connections never see a
// half-loaded state (the set is swapped whole). A file that cannot be read,
// parsed or verified is logged and counted, and the serials it contributed
// before stay in force. Loop thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "broker/tls/tls.h"

namespace fmq::tls {

class CrlDir {
 public:
  // `on_revoked`, when given, is called after a reload with the serials
  // ("tenant\0serial") that were not revoked before it, so connections
  // still using them can be closed.
  using OnRevoked = std::function<void(std::vector<std::string>)>;
  CrlDir(std::string dir, TlsServerContext* ctx, OnRevoked on_revoked = nullptr)
      : dir_(std::move(dir)), ctx_(ctx), on_revoked_(std::move(on_revoked)) {}

  // Reloads when the files changed since the last call (or `force`).
  // Returns true when the revocation set was replaced.
  bool Poll(bool force = false);

  uint64_t errors() const { return errors_; }
  size_t files() const { return by_file_.size(); }
  size_t revoked() const { return revoked_; }

 private:
  // Serials ("tenant\0serial") of one file, or an error message.
  bool LoadFile(const std::string& path, absl::flat_hash_set<std::string>* out, std::string* why);

  std::string dir_;
  TlsServerContext* ctx_;
  OnRevoked on_revoked_;
  absl::flat_hash_set<std::string> all_;  // the last set handed to ctx_
  std::string signature_;                 // names, sizes and mtimes of the last load
  absl::flat_hash_map<std::string, absl::flat_hash_set<std::string>> by_file_;
  uint64_t errors_ = 0;
  size_t revoked_ = 0;
};

}  // namespace fmq::tls

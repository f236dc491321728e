// The key-value interface everything persistent goes through: one column
// family per record kind, atomic write batches, ordered scans. Two
// implementations: RocksDB on disk (rocks_kv_store.cc) and an in-memory one
// for unit tests (with write-failure injection). Implementations are
// thread-safe: the storage thread writes while workers read.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fmq::storage {

// Column families. Append only; names are on disk (FamilyName).
enum class Family : uint8_t {
  kMeta = 0,         // format version and other store-wide facts
  kSessions,         // MQTT sessions (subscriptions, expiry, QoS 2 ids)
  kSessionMessages,  // queued and inflight QoS 1/2 messages per session
  kRetained,         // retained messages
  kTenants,
  kDevices,
  kModels,
  kGroups,
  kConfigs,
  kCerts,
  kJobs,
  kJobDevices,
  kAudit,
  kIndex,           // secondary indexes (values empty or small)
  kSessionQos2,     // inbound QoS 2 packet ids awaiting PUBREL, per session
  kDeviceConfigs,   // per device: desired, delivered and applied configuration
  kConfigBlobs,     // effective configuration documents by their hash (what devices applied)
  kFirmware,        // firmware artifacts (metadata, signed manifest) and uploads in progress
  kFirmwareChunks,  // artifact bytes in 64 KiB chunks by content hash (RocksDB blob files)
  kDeviceFirmware,  // per device: the version it reports, the one before, the campaign that changed it
  kHealth,          // per device: the latest health report and a per-minute ring of the last 24 hours
  kCount,
};
std::string_view FamilyName(Family f);

class WriteBatch {
 public:
  struct Op {
    Family family;
    bool del;
    std::string key;
    std::string value;
  };
  void Put(Family f, std::string key, std::string value) {
    bytes_ += key.size() + value.size();
    ops_.push_back({f, false, std::move(key), std::move(value)});
  }
  void Delete(Family f, std::string key) {
    bytes_ += key.size();
    ops_.push_back({f, true, std::move(key), {}});
  }
  void Append(WriteBatch&& other) {
    bytes_ += other.bytes_;
    for (auto& op : other.ops_) ops_.push_back(std::move(op));
    for (auto& h : other.committed_) committed_.push_back(std::move(h));
    other.Clear();
  }
  void Clear() {
    ops_.clear();
    committed_.clear();
    bytes_ = 0;
  }
  // Runs `fn` once the batch is written (KvStore::Write succeeded); dropped
  // with the batch when it is cleared unwritten. For in-memory state that
  // mirrors stored records (e.g. the health roll-ups' device counts).
  void OnCommitted(std::function<void()> fn) { committed_.push_back(std::move(fn)); }
  // Called by KvStore::Write after a successful write: each hook runs once.
  void RunCommitted() const {
    std::vector<std::function<void()>> hooks;
    hooks.swap(committed_);
    for (auto& h : hooks) h();
  }
  const std::vector<Op>& ops() const { return ops_; }
  bool empty() const { return ops_.empty(); }
  size_t bytes() const { return bytes_; }

 private:
  std::vector<Op> ops_;
  mutable std::vector<std::function<void()>> committed_;
  size_t bytes_ = 0;
};

// Called with each (key, value) in key order; return false to stop.
using ScanFn = std::function<bool(std::string_view key, std::string_view value)>;

class KvStore {
 public:
  virtual ~KvStore() = default;
  // Applies the whole batch atomically; `sync` waits for the disk.
  virtual absl::Status Write(const WriteBatch& batch, bool sync) = 0;
  // NotFound when absent.
  virtual absl::StatusOr<std::string> Get(Family f, std::string_view key) = 0;
  // Keys in [start, limit) in order; an empty limit means "to the end".
  virtual absl::Status Scan(Family f, std::string_view start, std::string_view limit, const ScanFn& fn) = 0;
  // Scans every key starting with `prefix`.
  absl::Status ScanPrefix(Family f, std::string_view prefix, const ScanFn& fn);
};

// In-memory store for unit tests.
class MemKvStore : public KvStore {
 public:
  MemKvStore();
  ~MemKvStore() override;
  absl::Status Write(const WriteBatch& batch, bool sync) override;
  absl::StatusOr<std::string> Get(Family f, std::string_view key) override;
  absl::Status Scan(Family f, std::string_view start, std::string_view limit, const ScanFn& fn) override;
  // Fault injection: while set, every Write fails with this status.
  void FailWrites(absl::Status s);
  // Overwrites a stored value behind the schema's back (corruption tests).
  void Poke(Family f, std::string key, std::string value);
  size_t writes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct RocksOptions {
  // Block cache for reads, bytes.
  size_t block_cache_bytes = 256ull << 20;
  // Total memtable budget across column families, bytes.
  size_t write_buffer_bytes = 128ull << 20;
  // Writes are refused (Unavailable) while the filesystem has less free
  // space than this, so RocksDB itself never runs out of space mid-write
  // (its WAL cannot recover cleanly from ENOSPC). 0 disables the check.
  uint64_t min_free_bytes = 64ull << 20;
};

// Opens (creating if needed) a RocksDB store with every column family.
absl::StatusOr<std::unique_ptr<KvStore>> OpenRocksKvStore(const std::string& dir, const RocksOptions& opts = {});

// The smallest key greater than every key starting with `prefix` ("" if none).
std::string PrefixEnd(std::string_view prefix);

}  // namespace fmq::storage

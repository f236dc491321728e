// Group commit: one storage thread takes write batches from the workers,
// merges whatever has accumulated into one RocksDB write (synced per the
// SyncMode) and hands completion callbacks back to the worker, woken by
// `notify` (a uv_async_send). A failed write is kept and retried every
// retry_interval_ms, in order, ahead of newer batches; while it fails the
// writer reports unhealthy. Submit/RunCompletions: worker thread; the rest
// is internal to the storage thread.
//
// Writers of one process share one StorageHealth: they write to one
// database on one disk, so while any of them has a failed write pending,
// every worker refuses QoS 1/2 (a worker whose writer had nothing to write
// yet must not accept what it could not store).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "storage/kv_store.h"

namespace fmq {

enum class SyncMode : uint8_t {
  kAlways,   // every write is fsync'ed before its acks go out (slowest, safest)
  kBatched,  // writes are gathered for up to sync_interval_ms, then one fsync
  kNone,     // written to RocksDB's WAL without fsync: survives a process
             // crash, not a power loss
};

struct WriterOptions {
  SyncMode mode = SyncMode::kBatched;
  uint32_t sync_interval_ms = 5;
  uint32_t retry_interval_ms = 1000;
  // Unwritable changes kept for retry before they are dropped (and logged).
  uint64_t max_retry_bytes = 256ull << 20;
};

struct WriterStats {
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> batches{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> dropped_bytes{0};
};

// How many writers currently hold a failed write. Shared by the writers of
// one database; read on any thread.
class StorageHealth {
 public:
  bool healthy() const { return failing_.load(std::memory_order_relaxed) == 0; }

 private:
  friend class StorageWriter;
  std::atomic<uint32_t> failing_{0};
};

class StorageWriter {
 public:
  using Done = std::function<void(bool ok)>;
  // `health` may be shared with the other writers of the same database;
  // null gives this writer its own.
  StorageWriter(storage::KvStore* kv, WriterOptions opts, std::function<void()> notify,
                std::shared_ptr<StorageHealth> health = nullptr);
  // Writes what is pending (one last attempt) and joins the thread.
  ~StorageWriter();

  void Submit(storage::WriteBatch batch, Done done);
  // Runs finished callbacks on the calling (worker) thread.
  void RunCompletions();
  // Blocks until everything submitted so far was attempted (shutdown, tests).
  void Drain();
  // False while this or any writer sharing its StorageHealth has a failed
  // write pending.
  bool healthy() const { return health_->healthy(); }
  const WriterStats& stats() const { return stats_; }

 private:
  struct Item {
    storage::WriteBatch batch;
    Done done;
  };
  void Loop();

  storage::KvStore* kv_;
  WriterOptions opts_;
  std::function<void()> notify_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable drained_cv_;
  std::deque<Item> pending_;
  std::vector<std::pair<Done, bool>> completions_;
  bool stop_ = false;
  bool busy_ = false;
  std::shared_ptr<StorageHealth> health_;
  bool failing_ = false;  // storage thread only
  WriterStats stats_;
  std::thread thread_;
};

}  // namespace fmq

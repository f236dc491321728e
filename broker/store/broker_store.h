// The broker's Persistence on top of storage/: turns the engine's change
// descriptions into write batches (one batch per flush) and, at start-up,
// reads every stored session, message and retained message back into a
// Broker. Keys start with the session's tenant (storage::TenantId; the
// anonymous plain-TCP namespace is the empty tenant); retained messages are
// keyed by the tenant their mounted topic belongs to. Worker thread only.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "broker/core/broker.h"
#include "broker/core/persistence.h"
#include "broker/store/storage_writer.h"
#include "storage/keys.h"
#include "storage/records.h"

namespace fmq {

struct LoadStats {
  uint64_t sessions = 0;
  uint64_t messages = 0;
  uint64_t retained = 0;
  uint64_t skipped_corrupt = 0;  // unreadable records: logged and left in place
};

class BrokerStore final : public Persistence {
 public:
  explicit BrokerStore(const Clock* clock) : clock_(clock) {}
  // Set before the first Flush (the writer needs the loop's notifier, and
  // the loop needs this store: see broker/main.cc).
  void set_writer(StorageWriter* w) { writer_ = w; }

  void SaveSession(const Session& s) override;
  void DeleteSession(const Session& s) override;
  void SaveDelivery(const Session& s, const Delivery& d, DeliveryState st, uint16_t packet_id) override;
  void DeleteDelivery(const Session& s, uint64_t seq) override;
  void SaveInboundQos2(const Session& s, uint16_t packet_id, bool present) override;
  void SaveRetained(const Message& m) override;
  bool dirty() const override { return !batch_.empty(); }
  void Flush(std::function<void(bool ok)> done) override;
  bool healthy() const override { return writer_ == nullptr || writer_->healthy(); }
  PersistenceStats stats() const override {
    PersistenceStats s;
    if (writer_ == nullptr) return s;
    s.healthy = writer_->healthy();
    s.writes = writer_->stats().writes;
    s.bytes = writer_->stats().bytes;
    s.errors = writer_->stats().errors;
    s.dropped_bytes = writer_->stats().dropped_bytes;
    return s;
  }

  // Hands pending changes to the writer with no one waiting (end of a loop turn).
  void FlushIfDirty() {
    if (dirty()) Flush(nullptr);
  }

  // Reads all stored MQTT state into `broker`. Corrupt records are logged,
  // counted and skipped; they never stop the broker.
  // Several workers: each session goes to its home worker (Cluster::HomeOf),
  // every retained message to every worker.
  absl::Status Load(storage::KvStore& kv, const std::vector<Broker*>& workers, LoadStats* stats);
  absl::Status Load(storage::KvStore& kv, Broker& broker, LoadStats* stats);

 private:
  int64_t ToWall(int64_t mono) const { return mono - clock_->NowMs() + clock_->WallMs(); }
  int64_t ToMono(int64_t wall) const { return wall - clock_->WallMs() + clock_->NowMs(); }
  std::unique_ptr<fb::MessageRecT> ToRecord(const Message& m) const;
  MessagePtr FromRecord(const fb::MessageRecT& r) const;

  StorageWriter* writer_ = nullptr;
  const Clock* clock_;
  storage::WriteBatch batch_;
};

}  // namespace fmq

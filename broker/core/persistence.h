// What the protocol engine tells durable storage. Calls describe changes in
// the order they happen; Flush() asks for all of them to become durable and
// reports back on the worker thread. The engine never waits: it defers the
// publisher's PUBACK/PUBREC until its Flush completes. Implemented by
// broker/store (RocksDB through a group-commit thread) and by fakes in unit
// tests. Called on the owning worker's thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "broker/core/session.h"

namespace fmq {

enum class DeliveryState : uint8_t { kQueued = 0, kSent = 1, kReleased = 2 };

// Published under $SYS/broker/storage/.
struct PersistenceStats {
  bool healthy = true;
  uint64_t writes = 0;
  uint64_t bytes = 0;
  uint64_t errors = 0;
  uint64_t dropped_bytes = 0;
};

class Persistence {
 public:
  virtual ~Persistence() = default;
  // Subscriptions, expiry, version, will, disconnected_at.
  virtual void SaveSession(const Session& s) = 0;
  // The session with all its messages and QoS 2 ids.
  virtual void DeleteSession(const Session& s) = 0;
  // One QoS 1/2 message of a session (keyed by d.seq).
  virtual void SaveDelivery(const Session& s, const Delivery& d, DeliveryState st, uint16_t packet_id) = 0;
  virtual void DeleteDelivery(const Session& s, uint64_t seq) = 0;
  virtual void SaveInboundQos2(const Session& s, uint16_t packet_id, bool present) = 0;
  // A retained message; an empty payload deletes the topic's entry.
  virtual void SaveRetained(const Message& m) = 0;
  // True when changes were described since the last Flush.
  virtual bool dirty() const = 0;
  // Makes every change so far durable; done(ok) runs on the worker thread.
  virtual void Flush(std::function<void(bool ok)> done) = 0;
  // False while writes fail (disk full, I/O error); the engine then refuses
  // QoS 1/2 publishes until a retry succeeds.
  virtual bool healthy() const = 0;
  virtual PersistenceStats stats() const { return {}; }
};

}  // namespace fmq

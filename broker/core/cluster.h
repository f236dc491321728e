// What the workers of one broker process share (see doc/architecture.md,
// "Threading model"). Each worker runs its own Broker on its own loop; this
// object is the only state they touch together, and none of it is on the
// per-message path except one relaxed atomic load per matched shared group:
//  - the home worker of every session (tenant, client id), so a session
//    lives on exactly one worker and takeover is always local;
//  - which workers hold members of each shared subscription group;
//  - the tenants' connection counts (quotas are per tenant, not per worker);
//  - statistics snapshots summed for $SYS;
//  - the link to the net layer that carries messages and work between
//    workers (batched queues woken by uv_async; broker/net/workers.h).
// I/O-free and thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "broker/core/message.h"
#include "broker/core/session.h"
#include "broker/core/stats.h"
#include "common/string_map.h"

namespace fmq {

class Broker;

// The durability of one QoS 1/2 PUBLISH routed to several workers. Each
// worker stores what it queued for the message with its own writer (a
// durable subscriber's copy lives on the subscriber's home worker), so the
// publisher's PUBACK/PUBREC waits until every worker has released the
// barrier: the worker the PUBLISH arrived on once its own write is durable,
// every other worker once it has routed the message and, if that changed
// anything, its write is durable. The last release acknowledges, on the
// origin worker (Link::Acknowledge). Released from worker threads only.
struct AckBarrier {
  AckBarrier(uint32_t origin_worker, uint64_t conn, uint64_t t, uint32_t parties)
      : origin(origin_worker), conn_id(conn), ticket(t), pending(parties) {}
  // True for the caller whose release was the last one.
  bool Release(bool ok) {
    if (!ok) failed.store(true, std::memory_order_relaxed);
    return pending.fetch_sub(1, std::memory_order_acq_rel) == 1;
  }
  bool ok() const { return !failed.load(std::memory_order_relaxed); }

  const uint32_t origin;   // the worker holding the publisher's connection
  const uint64_t conn_id;  // the connection and its pending ack's ticket
  const uint64_t ticket;
  std::atomic<uint32_t> pending;
  std::atomic<bool> failed{false};
};
using AckBarrierPtr = std::shared_ptr<AckBarrier>;

// Which workers hold members of one shared subscription group, as a history:
// each membership change is recorded with a stamp taken under the lock, and
// a message is delivered by the worker PickWorker chooses from the mask in
// force at the message's stamp. Every worker evaluating the same message
// sees the same mask: a change it did not see carries a later stamp than
// the message (taken after the evaluation released the lock), so it does not
// apply to that message either. Thread-safe.
class SharedMask {
 public:
  uint64_t At(uint64_t stamp) const;
  uint64_t Now() const { return At(std::numeric_limits<uint64_t>::max()); }
  // Sets or clears `worker`'s bit; returns the change's stamp.
  uint64_t Change(uint32_t worker, bool member);

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<uint64_t, uint64_t>> history_;  // (from stamp, mask), ascending
};

// Monotonic ns shifted left by 6, `worker` in the low bits: the stamp of a
// message routed now (Message::stamp); 63 marks a membership change.
uint64_t StampNow(uint32_t worker);
// The stamp `seconds` before `stamp` (0 if that is before the clock's start).
uint64_t StampBefore(uint64_t stamp, uint64_t seconds);

class Cluster {
 public:
  static constexpr uint32_t kMaxWorkers = 64;  // one bit per worker in shared-group masks

  // Carries work between workers; implemented by the net layer (or inline
  // in unit tests). Both calls may be made from any worker thread.
  class Link {
   public:
    virtual ~Link() = default;
    // Every worker except `from` routes `m` (batched, FIFO per pair of
    // workers) and then releases `ack` (may be null: nothing waits).
    virtual void Forward(uint32_t from, const MessagePtr& m, const AckBarrierPtr& ack) = 0;
    // Worker `from` released the last part of a barrier of worker `to`:
    // `to` runs Broker::OnDurable(conn_id, ticket, ok) (batched like Forward).
    virtual void Acknowledge(uint32_t from, uint32_t to, uint64_t conn_id, uint64_t ticket, bool ok) = 0;
    // Runs `fn` on worker `to`'s thread, after what was forwarded before.
    virtual void Post(uint32_t to, std::function<void(Broker&)> fn) = 0;
  };

  explicit Cluster(uint32_t workers);
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  uint32_t size() const { return workers_; }
  void set_link(Link* link) { link_ = link; }
  Link* link() const { return link_; }

  // The worker that owns the session of (tenant, client id). Stable for the
  // life of the process; every worker computes the same answer.
  uint32_t HomeOf(std::string_view tenant, std::string_view client_id) const;

  // The tenant names every worker's sessions share.
  TenantNames& tenant_names() { return tenant_names_; }

  // Runs fn on every worker (its own thread each).
  void PostAll(const std::function<void(Broker&)>& fn);

  // Shared subscription groups ("group\0mounted filter"): a bit per worker
  // holding at least one member. The pointer stays valid for the life of
  // the Cluster.
  SharedMask* JoinShared(std::string_view key, uint32_t worker);
  // Returns the stamp of the leave: messages stamped before it may still
  // pick this worker (Broker::RouteLocal redirects them to a member).
  uint64_t LeaveShared(SharedMask* mask, uint32_t worker);

  // Tenant connection counts (CONNECT and close only). AddConnection
  // refuses when `max` (0 = no limit) is reached.
  bool AddConnection(const std::string& tenant, uint32_t max);
  void RemoveConnection(const std::string& tenant);
  uint32_t Connections(std::string_view tenant) const;

  // Each worker reports its counters at its tick; $SYS shows the sum.
  void Report(uint32_t worker, const BrokerStats& s, uint64_t sessions);
  BrokerStats Sum(uint64_t* sessions) const;
  BrokerStats Snapshot(uint32_t worker) const;

 private:
  TenantNames tenant_names_;
  const uint32_t workers_;
  Link* link_ = nullptr;
  mutable std::mutex mu_;
  StringMap<std::unique_ptr<SharedMask>> shared_;
  StringMap<uint32_t> connections_;
  std::vector<BrokerStats> stats_;
  std::vector<uint64_t> sessions_;
};

// Which worker of `mask` delivers a shared-group message stamped `stamp`:
// the same answer on every worker that reads the same mask.
uint32_t PickWorker(uint64_t mask, uint64_t stamp);

}  // namespace fmq

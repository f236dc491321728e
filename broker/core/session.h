// MQTT session state [MQTT-4.1]: subscriptions, outbound QoS 1/2 messages
// in flight, the queue of messages waiting for delivery, inbound QoS 2 ids
// awaiting PUBREL, and the pending will. Owned by the Broker of one worker;
// touched only on that worker's thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_set.h"
#include "absl/hash/hash.h"
#include "broker/core/message.h"
#include "broker/mqtt/packet.h"
#include "common/small_queue.h"
#include "common/string_map.h"

namespace fmq {

class Connection;

struct SubOptions {
  uint8_t qos = 0;
  bool no_local = false;
  bool retain_as_published = false;
  uint8_t retain_handling = 0;
  uint32_t subscription_id = 0;  // 0 = none
};

// One message on its way to one session.
struct Delivery {
  MessagePtr msg;
  uint64_t seq = 0;  // order within the session; the storage key of durable ones
  uint8_t qos = 0;
  bool retain = false;
  std::vector<uint32_t> subscription_ids;
  // Non-zero: a device-channel message of the management plane
  // (Broker::SendToDevice) whose outcome is reported to the hooks. Never
  // stored: the management plane resends what was not acknowledged.
  uint64_t token = 0;
};

struct Inflight {
  Delivery d;             // d.seq orders redelivery [MQTT-4.6.0-1]
  bool released = false;  // QoS 2: PUBREC received, PUBREL sent
};

// The platform admin's tenant (mgmt/pki/pki.h kPlatformTenant): it sees
// every tenant's statistics.
inline constexpr std::string_view kPlatformTenantName = "_platform";

// Internal topic prefix of a tenant: "$T/<tenant>/" ("" when anonymous).
// Clients never see it; a tenant cannot name another tenant's topics
// because client topics starting with '$' are refused before mounting.
inline std::string MountOf(std::string_view tenant) {
  return tenant.empty() ? std::string() : "$T/" + std::string(tenant) + "/";
}
// Sessions are keyed by tenant and client id (tenants have no NUL).
inline std::string SessionKey(std::string_view tenant, std::string_view client_id) {
  std::string k(tenant);
  k.push_back('\0');
  k.append(client_id);
  return k;
}

// The one copy of each tenant name, shared by every session of the tenant
// (tenants are few and never forgotten while the process runs). One per
// process: the Cluster owns it for every worker (a lone Broker owns its own).
// Thread-safe; the anonymous (empty) name needs no lock.
class TenantNames {
 public:
  const std::string* Intern(std::string_view tenant);
  static const std::string* None();  // the anonymous namespace

 private:
  std::mutex mu_;
  absl::node_hash_set<std::string> names_;
};

// Packet ids of inbound QoS 2 messages awaiting PUBREL: at most Receive
// Maximum of them and usually none, so one pointer (8 bytes; null when
// empty) to a block holding the count, the capacity and the sorted ids.
class PacketIdSet {
 public:
  bool contains(uint16_t id) const { return std::binary_search(begin(), end(), id); }
  bool insert(uint16_t id) {
    const uint16_t* it = std::lower_bound(begin(), end(), id);
    if (it != end() && *it == id) return false;
    const size_t at = static_cast<size_t>(it - begin());
    const size_t n = size();
    if (n == capacity()) Grow();
    uint16_t* ids = block_.get() + 2;
    std::copy_backward(ids + at, ids + n, ids + n + 1);
    ids[at] = id;
    block_[0] = static_cast<uint16_t>(n + 1);
    return true;
  }
  size_t erase(uint16_t id) {
    const uint16_t* it = std::lower_bound(begin(), end(), id);
    if (it == end() || *it != id) return 0;
    uint16_t* ids = block_.get() + 2;
    const size_t at = static_cast<size_t>(it - begin());
    std::copy(ids + at + 1, ids + size(), ids + at);
    if (--block_[0] == 0) block_.reset();
    return 1;
  }
  size_t size() const { return block_ ? block_[0] : 0; }
  bool empty() const { return size() == 0; }
  const uint16_t* begin() const { return block_ ? block_.get() + 2 : nullptr; }
  const uint16_t* end() const { return begin() + size(); }

 private:
  size_t capacity() const { return block_ ? block_[1] : 0; }
  void Grow() {
    // 65,535 ids at most (16-bit packet ids, 0 is never used).
    const size_t cap = std::min<size_t>(capacity() == 0 ? 4 : capacity() * 2, 65535);
    std::unique_ptr<uint16_t[]> b(new uint16_t[cap + 2]);
    b[0] = static_cast<uint16_t>(size());
    b[1] = static_cast<uint16_t>(cap);
    std::copy(begin(), end(), b.get() + 2);
    block_ = std::move(b);
  }
  std::unique_ptr<uint16_t[]> block_;
};

// Field order packs the small fields: an idle session's size is a target
// (doc/performance.md, memory).
struct Session {
  uint64_t id = 0;
  std::string client_id;
  // The tenant from the client's certificate; empty for the anonymous
  // (plain TCP) namespace. Its topics live under MountOf(tenant). Interned:
  // one copy per tenant, not per session.
  const std::string& tenant() const { return *tenant_; }
  void set_tenant(const std::string* interned) { tenant_ = interned; }  // from TenantNames::Intern
  Connection* conn = nullptr;                                           // set while a connection is attached

  StringMap<SubOptions> subscriptions;  // full filter text

  absl::flat_hash_map<uint16_t, Inflight> inflight;
  uint64_t next_seq = 1;
  SmallQueue<Delivery> queue;
  uint64_t queued_bytes = 0;

  PacketIdSet inbound_qos2;  // received, PUBREL pending

  std::unique_ptr<mqtt::Will> will;  // by pointer: most sessions have none
  int64_t will_at_ms = 0;            // when a delayed will is due (while offline)
  int64_t disconnected_at_ms = 0;    // monotonic; when it went offline
  // Seconds the session outlives its connection; 0 ends it at disconnect,
  // 0xFFFFFFFF never expires.
  const std::string* tenant_ = TenantNames::None();
  uint32_t expiry_s = 0;
  // Messages lost at this session's bounds (stops at 2^32-1).
  uint32_t dropped = 0;
  uint16_t next_packet_id = 1;
  mqtt::Version version = mqtt::Version::kV5;
  bool will_pending = false;
  bool persisted = false;  // has a stored copy to delete when it ends

  // When an offline session with a finite expiry ends.
  int64_t expire_at_ms() const { return disconnected_at_ms + int64_t{expiry_s} * 1000; }

  // Durable sessions outlive their connection and are persisted.
  bool durable() const { return expiry_s > 0; }
};

// The sessions of one worker, owned and found by (tenant, client id). The
// key is read from the session itself: an 8-byte slot per session and no
// copy of the client id (an idle connection's size is a target).
class SessionTable {
 public:
  Session* Find(std::string_view tenant, std::string_view client_id) const {
    auto it = set_.find(Name{tenant, client_id});
    return it == set_.end() ? nullptr : it->get();
  }
  // Takes `s`; a session of the same name is replaced (and destroyed).
  Session* Insert(std::unique_ptr<Session> s) {
    Session* raw = s.get();
    auto it = set_.find(Name{raw->tenant(), raw->client_id});
    if (it != set_.end()) set_.erase(it);
    set_.insert(std::move(s));
    return raw;
  }
  // Destroys `s`.
  void Erase(const Session& s) {
    auto it = set_.find(Name{s.tenant(), s.client_id});
    if (it != set_.end()) set_.erase(it);
  }
  size_t size() const { return set_.size(); }

 private:
  struct Name {
    std::string_view tenant;
    std::string_view client_id;
  };
  static Name NameOf(const std::unique_ptr<Session>& s) { return {s->tenant(), s->client_id}; }
  struct Hash {
    using is_transparent = void;
    size_t operator()(const Name& n) const {
      return absl::Hash<std::pair<std::string_view, std::string_view>>{}({n.tenant, n.client_id});
    }
    size_t operator()(const std::unique_ptr<Session>& s) const { return (*this)(NameOf(s)); }
  };
  struct Eq {
    using is_transparent = void;
    static bool Same(const Name& a, const Name& b) { return a.tenant == b.tenant && a.client_id == b.client_id; }
    bool operator()(const Name& a, const Name& b) const { return Same(a, b); }
    bool operator()(const std::unique_ptr<Session>& a, const Name& b) const { return Same(NameOf(a), b); }
    bool operator()(const Name& a, const std::unique_ptr<Session>& b) const { return Same(a, NameOf(b)); }
    bool operator()(const std::unique_ptr<Session>& a, const std::unique_ptr<Session>& b) const {
      return Same(NameOf(a), NameOf(b));
    }
  };
  absl::flat_hash_set<std::unique_ptr<Session>, Hash, Eq> set_;
};

}  // namespace fmq

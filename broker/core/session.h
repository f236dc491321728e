// MQTT session state [MQTT-4.1]: subscriptions, outbound QoS 1/2 messages
// in flight, the queue of messages waiting for delivery, inbound QoS 2 ids
// awaiting PUBREL, and the pending will. Owned by the Broker of one worker;
// touched only on that worker's thread.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/small_queue.h"
#include "common/string_map.h"
#include "absl/container/flat_hash_set.h"
#include "broker/core/message.h"
#include "broker/mqtt/packet.h"

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
};

struct Inflight {
  Delivery d;                 // d.seq orders redelivery [MQTT-4.6.0-1]
  bool released = false;      // QoS 2: PUBREC received, PUBREL sent
};

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

struct Session {
  uint64_t id = 0;
  std::string client_id;
  // The tenant from the client's certificate; empty for the anonymous
  // (plain TCP) namespace. Its topics live under MountOf(tenant).
  std::string tenant;
  mqtt::Version version = mqtt::Version::kV5;
  // Seconds the session outlives its connection; 0 ends it at disconnect,
  // 0xFFFFFFFF never expires.
  uint32_t expiry_s = 0;
  Connection* conn = nullptr;  // set while a connection is attached

  StringMap<SubOptions> subscriptions;  // full filter text

  absl::flat_hash_map<uint16_t, Inflight> inflight;
  uint64_t next_seq = 1;
  uint16_t next_packet_id = 1;
  SmallQueue<Delivery> queue;
  uint64_t queued_bytes = 0;
  uint64_t dropped = 0;  // messages lost at this session's bounds

  absl::flat_hash_set<uint16_t> inbound_qos2;  // received, PUBREL pending

  std::unique_ptr<mqtt::Will> will;  // by pointer: most sessions have none
  int64_t will_at_ms = 0;  // when a delayed will is due (while offline)
  bool will_pending = false;
  int64_t expire_at_ms = 0;  // when offline with a finite expiry
  int64_t disconnected_at_ms = 0;  // monotonic; when it went offline
  bool persisted = false;  // has a stored copy to delete when it ends

  // Durable sessions outlive their connection and are persisted.
  bool durable() const { return expiry_s > 0; }
};

}  // namespace fmq

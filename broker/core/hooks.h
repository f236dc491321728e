// The small interface management modules plug into: authentication of a
// CONNECT, connect/disconnect events, publishes to the reserved control
// prefix and a periodic tick. Called on the worker thread that owns the
// connection (with several workers, from several threads at once: shared
// state needs locking); implementations must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "broker/core/message.h"
#include "broker/mqtt/packet.h"
#include "common/link_counters.h"

namespace fmq {

class Broker;

// Why a network connection ended; reported to hooks and logs.
enum class DisconnectReason : uint8_t {
  kClean,             // DISCONNECT 0x00 (or 0x04) from the client
  kKeepAliveTimeout,  // no packet within 1.5 x keep alive
  kProtocolError,     // malformed packet or protocol violation
  kTakeover,          // same client id connected again
  kServerShutdown,
  kTransportClosed,  // socket closed or failed without DISCONNECT
  kConnectTimeout,   // no CONNECT in time
  kAdministrative,   // closed by a management action
};
std::string_view DisconnectReasonName(DisconnectReason r);

// What became of a message the management plane sent to a device.
enum class DeviceOutcome : uint8_t {
  kAcked,      // the device acknowledged it (PUBACK)
  kSentQos0,   // written to the device, which subscribed at QoS 0: no acknowledgement will come
  kOffline,    // no connected session (or not subscribed to its channel)
  kQueueFull,  // the session's queue is full (limits.max_queued_*)
  kTooLarge,   // over the device's Maximum Packet Size
};
std::string_view DeviceOutcomeName(DeviceOutcome o);

// Who a TLS client proved to be (from its verified certificate).
struct PeerIdentity {
  std::string tenant;
  std::string name;  // device id or operator name
  bool device = true;
  bool admin = false;               // platform admin (tenant commands); never a device
  std::string serial;               // certificate serial, lowercase hex (live revocation)
  std::vector<std::string> groups;  // device groups (ACL %g), from ResolveIdentity
};

struct ClientInfo {
  uint64_t connection_id = 0;
  std::string_view client_id;
  std::string_view username;
  std::string_view peer;  // "ip:port"
  mqtt::Version version = mqtt::Version::kV5;
  std::string_view tenant;                 // empty: anonymous (plain TCP)
  const PeerIdentity* identity = nullptr;  // null: anonymous (plain TCP)
  // The broker of the worker calling the hook (the one to publish through
  // from inside a hook: hooks run on that worker's thread).
  Broker* broker = nullptr;
  // At OnDisconnected and OnLinkCounters: what the connection carried since
  // it last reported (counted at O(1) per packet on its worker; else null), and at OnDisconnected for a protocol
  // error the rule it broke.
  const LinkCounters* counters = nullptr;
  std::string_view error;
};

class BrokerHooks {
 public:
  virtual ~BrokerHooks() = default;
  // Decides a CONNECT; return kSuccess to accept, or the reason to refuse.
  // `info` carries the certificate identity and the client id as it will be
  // used (bound to the certificate for devices).
  virtual mqtt::ReasonCode Authenticate(const mqtt::Connect&, const ClientInfo& /*info*/) {
    return mqtt::ReasonCode::kSuccess;
  }
  // Completes a certificate identity at CONNECT, before ACLs use it (the
  // management module adds the device's groups).
  virtual void ResolveIdentity(PeerIdentity&) {}
  virtual void OnConnected(const ClientInfo&) {}
  virtual void OnDisconnected(const ClientInfo&, DisconnectReason) {}
  // A connected client's counters since it last reported (info.counters),
  // at most every BrokerOptions::link_stats_interval_ms, on its traffic.
  virtual void OnLinkCounters(const ClientInfo&) {}
  // A device was granted a subscription in its own channel (after its
  // SUBACK was queued): the management plane may send to it now.
  virtual void OnChannelSubscribed(const ClientInfo&) {}
  // A client published under BrokerOptions::control_prefix. Returns the
  // reason for the publisher's PUBACK (kSuccess, or kNotAuthorized, ...).
  virtual mqtt::ReasonCode OnControlPublish(const ClientInfo&, const Message&) {
    return mqtt::ReasonCode::kNotAuthorized;
  }
  // A client published under topics::kDeviceRoot (the device channel).
  // Returns the reason for the publisher's PUBACK.
  virtual mqtt::ReasonCode OnDevicePublish(const ClientInfo&, const Message&) {
    return mqtt::ReasonCode::kNotAuthorized;
  }
  // What became of a message sent with Broker::SendToDevice (called on the
  // worker owning the device's session).
  virtual void OnDeviceOutcome(std::string_view /*tenant*/, std::string_view /*device_id*/, uint64_t /*token*/,
                               DeviceOutcome) {}
  virtual void OnTick(int64_t /*now_ms*/) {}
  // Counters of the module for $SYS/broker/<name> (the first worker, every
  // sys_interval).
  virtual void SysCounters(const std::function<void(const char*, uint64_t)>& /*pub*/) {}
};

}  // namespace fmq

// Broker-wide counters published under $SYS/broker/. Owned by one worker's
// Broker; read on that worker's thread only.
#pragma once

#include <cstdint>

namespace fmq {

struct BrokerStats {
  uint64_t connections_accepted = 0;
  uint64_t clients_connected = 0;  // gauge
  uint64_t clients_maximum = 0;
  uint64_t messages_received = 0;  // every control packet in
  uint64_t messages_sent = 0;      // every control packet out
  uint64_t publish_received = 0;
  uint64_t publish_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t bytes_sent = 0;
  uint64_t publish_dropped_queue_full = 0;  // QoS 1/2 dropped at a session bound
  uint64_t publish_dropped_qos0 = 0;        // QoS 0 dropped (slow reader, offline)
  uint64_t publish_dropped_too_large = 0;   // over the client's Maximum Packet Size
  uint64_t publish_expired = 0;             // message expiry passed before delivery
  uint64_t publish_denied = 0;              // refused by the authorizer or $SYS
  uint64_t publish_refused_storage = 0;     // QoS 1/2 refused: storage unhealthy
  uint64_t storage_ack_failures = 0;        // publishes whose durable write failed
  uint64_t protocol_errors = 0;             // connections closed for bad input
  uint64_t connect_timeouts = 0;
  uint64_t keepalive_timeouts = 0;
  uint64_t connects_refused = 0;  // CONNACK with an error
  uint64_t takeovers = 0;
  uint64_t reads_paused = 0;
  uint64_t reads_paused_peers = 0;         // a publisher paused: another worker's inbox was full
  uint64_t tls_refused = 0;                // failed or refused TLS handshakes
  uint64_t quota_connections_refused = 0;  // CONNACK 0x97: tenant at max_connections
  uint64_t quota_publish_refused = 0;      // PUBLISH over the tenant's max_publish_rate
  uint64_t admin_disconnects = 0;          // closed by a management action (revoke, suspend)
  uint64_t wills_published = 0;
  uint64_t sessions_expired = 0;
  uint64_t subscriptions = 0;    // gauge
  uint64_t queued_messages = 0;  // gauge
};

}  // namespace fmq

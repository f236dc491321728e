// Protocol-level limits and behaviour switches of one broker, with their
// defaults and the reason for each. Filled from flags and the config file
// (broker/config.cc), validated once at start-up, then read-only and shared
// by every worker.
#pragma once

#include <cstdint>
#include <string>

#include "broker/mqtt/topic.h"
#include "common/mgmt_topics.h"

namespace fmq {

struct BrokerOptions {
  // Largest packet we accept, fixed header included; announced to v5 clients
  // as Maximum Packet Size. 1 MiB fits config documents and firmware chunks
  // while capping the memory one connection can pin in its framer.
  uint32_t max_packet_size = 1 << 20;
  // QoS 1/2 PUBLISHes a client may have unacknowledged towards us (our
  // Receive Maximum); exceeding it is DISCONNECT 0x93 [MQTT-3.3.4-9].
  uint16_t receive_maximum = 100;
  // Cap on QoS 1/2 messages in flight towards one client, whatever the
  // client's own Receive Maximum says (mosquitto's max_inflight_messages).
  uint16_t max_inflight = 100;
  // Per-session queue bounds for messages waiting for an offline client or
  // for a free inflight slot. At the bound the new message is dropped for
  // that session, counted per client and in $SYS, and logged.
  uint32_t max_queued_messages = 1000;
  uint64_t max_queued_bytes = 16ull << 20;
  // Queue QoS 0 messages for offline persistent sessions (the spec allows
  // either; off by default, like mosquitto).
  bool queue_qos0 = false;
  // Topic aliases a v5 client may use towards us (Topic Alias Maximum).
  uint16_t topic_alias_maximum = 64;
  // Server keep alive: the largest keep alive we accept, seconds. A v5 client
  // asking for more (or for 0) is told this value; a 3.1.1 client asking for
  // more (or 0) is refused with return code 2, as mosquitto does.
  // 65535 disables the check.
  uint16_t max_keepalive = 65535;
  // Server keep alive told to every v5 client asking for more (or for 0),
  // seconds; 0: v5 clients keep theirs. The default, 18, shows a silent
  // device offline after 1.5 × 18 = 27 s (plus the 250 ms tick): within the
  // 30 s the fleet needs. 3.1.1 clients cannot be told: they are cut at 1.5 ×
  // what they asked (doc/configuration.md). Per tenant: tenant.update
  // server_keepalive=N.
  uint16_t server_keepalive = 18;
  // Time allowed between TCP accept and a complete CONNECT.
  uint32_t connect_timeout_ms = 10'000;
  // Longest session expiry we grant, seconds (0xFFFFFFFF = never expires).
  // 3.1.1 persistent sessions get this value.
  uint32_t max_session_expiry = 0xFFFFFFFF;
  uint32_t max_client_id_length = 256;
  mqtt::TopicLimits topic_limits;
  uint32_t max_subscriptions_per_session = 1000;
  // Unsent bytes allowed to pile up for one connection (a slow reader);
  // beyond it QoS 0 messages to it are dropped and QoS 1/2 wait in the
  // session queue.
  uint64_t max_output_buffer = 8ull << 20;
  // How often a connected client's counters (bytes, packets, denials) go
  // to the hooks, at most; checked on its traffic (no per-tick scan), and
  // what is left is reported when it disconnects.
  uint32_t link_stats_interval_ms = 300'000;
  // $SYS/broker statistics interval, seconds (0 disables).
  uint32_t sys_interval_s = 10;
  // Prefix for server-assigned client identifiers.
  std::string assigned_id_prefix = "fmq-";
  // Topic prefix reserved for management commands; PUBLISHes under it go to
  // the management hooks, never to subscribers.
  std::string control_prefix = std::string(topics::kControlPrefix);
  // Default per-tenant quotas (0 = unlimited); see Broker::TenantQuota.
  uint32_t quota_max_connections = 0;
  uint32_t quota_max_publish_rate = 0;
};

}  // namespace fmq

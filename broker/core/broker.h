// The protocol engine of one worker: sessions, the subscription tree, the
// retained store, the deadline wheel and the statistics, driven by the
// Connections it accepts. I/O-free (time from an injected Clock, bytes
// through Transports), so every behaviour is unit-testable without sockets.
// Single-threaded: one Broker per worker loop. With several workers, the
// Cluster (cluster.h) says which worker owns each session, and every
// message routed here is also forwarded to the other workers, which route
// it against their own subscriptions (doc/architecture.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "broker/core/acl.h"
#include "broker/core/cluster.h"
#include "broker/core/connection.h"
#include "broker/core/hooks.h"
#include "broker/core/message.h"
#include "broker/core/options.h"
#include "broker/core/persistence.h"
#include "broker/core/retained_store.h"
#include "broker/core/session.h"
#include "broker/core/stats.h"
#include "broker/core/timer_wheel.h"
#include "broker/core/topic_tree.h"
#include "common/clock.h"
#include "common/string_map.h"

namespace fmq {

class Broker {
 public:
  // `persistence` may be null (nothing is stored; unit tests of the protocol).
  Broker(const BrokerOptions& opts, const Clock* clock, BrokerHooks* hooks, Persistence* persistence = nullptr);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // A new network connection; the caller owns `c` and keeps it alive until
  // after OnTransportClosed(). Arms the connect timeout.
  void Accept(Connection* c);

  // Joins a multi-worker broker as worker `index` (before any connection,
  // session or subscription). Without it the broker is the only worker.
  void SetCluster(Cluster* cluster, uint32_t index);
  Cluster* cluster() const { return cluster_; }
  uint32_t worker_index() const { return index_; }
  // A message another worker routed (Cluster::Link::Forward): delivered to
  // this worker's subscribers; its retained copy updated here too. `ack`
  // (may be null) is released once what the message changed here is
  // durable; call FlushPeerWrites() after a batch of them.
  void RouteFromPeer(const MessagePtr& msg, const AckBarrierPtr& ack = nullptr);
  void FlushPeerWrites();
  // The last part of one of this worker's AckBarriers was released on
  // another worker (Cluster::Link::Acknowledge).
  void OnPeerDurable(uint64_t conn_id, uint64_t ticket, bool ok) { OnDurable(conn_id, ticket, ok); }
  // The net layer hands a connection that has not sent its CONNECT yet to
  // its session's home worker: forget it here without a trace (no close,
  // no hooks, not counted); the home worker Accepts it again.
  void Detach(Connection& c);
  // The client id the broker would give a CONNECT with an empty one, chosen
  // so that its session is homed on this worker.
  std::string AssignClientId(std::string_view tenant);

  // Periodic duties, called by the worker every ~250 ms:
  //  1. advance the deadline wheel: connect timeouts, keep alive (1.5x),
  //     delayed wills, session expiry;
  //  2. publish $SYS/broker statistics every sys_interval_s;
  //  3. the hooks' OnTick (management modules).
  void Tick();

  // Closes every connection with DISCONNECT 0x8B (v5) and publishes wills.
  void Shutdown();

  // Routes a message from the broker itself (e.g. $SYS, management replies).
  // Returns the number of sessions it matched.
  size_t PublishInternal(std::string topic, std::string payload, bool retain, uint8_t qos = 0);

  // A reply to a request/response client (management replies): QoS 1,
  // content type application/json, the request's correlation data.
  size_t PublishReply(std::string topic, std::string payload, std::string_view correlation);

  // Start-up: a session read back from storage (offline for `offline_ms`),
  // with its subscriptions, inflight and queued messages and QoS 2 ids.
  void RestoreSession(std::unique_ptr<Session> s, int64_t offline_ms);
  void RestoreRetained(MessagePtr m);

  // Topic ACLs for clients with a certificate identity (default: the
  // default device policy). The policy must outlive the broker.
  void SetAcl(const AclPolicy* acl) { acl_ = acl; }

  // Management actions (loop thread). Closes the connection of (tenant,
  // client id) with DISCONNECT 0x98 (v5). Returns whether one was closed.
  bool Kick(std::string_view tenant, std::string_view client_id);
  // Closes every connection of `tenant` that authenticated with `serial`,
  // whether it has sent CONNECT or not (a revoked certificate keeps no
  // connection). O(1) per connection closed: connections with a certificate
  // are indexed by (tenant, serial) from the handshake on.
  size_t KickSerial(std::string_view tenant, std::string_view serial);
  // Connection::set_identity: index an accepted connection by its serial.
  void IndexSerial(Connection& c);
  // A device's groups changed (management): its live connection's identity
  // is updated, and its session (connected or not) loses the subscriptions
  // only the old groups allowed (ACL %g), so a removed member stops reading
  // the group's topics at once.
  void SetDeviceGroups(std::string_view tenant, std::string_view device_id, const std::vector<std::string>& old_groups,
                       const std::vector<std::string>& groups);
  // The management plane's downlink (loop thread of the worker that owns
  // the device's session): `topic` (as the device sees it, under its
  // device channel) goes to the connected device (tenant, device id) if it
  // subscribed to it, at the QoS of its subscription (at most 1), and
  // hooks->OnDeviceOutcome(token) says what became of it: acked, offline,
  // queue full, too large.
  struct DeviceMessage {
    std::string tenant, device_id, topic, payload;
    uint64_t token = 0;
    bool binary = false;  // application/octet-stream (else application/json)
  };
  void SendToDevice(const DeviceMessage& m);
  // Monotonic ms of the last packet of the connected (tenant, client id),
  // or -1 when it is not connected.
  int64_t LastActivityMs(std::string_view tenant, std::string_view client_id) const;

  // Per-tenant quotas (0 = unlimited). BrokerOptions' quota_* apply to
  // tenants without their own. Connections over max_connections get CONNACK 0x97;
  // PUBLISHes over max_publish_rate (a token bucket with one second of
  // burst) get PUBACK/PUBREC 0x97 (v5) or are dropped (3.1.1, QoS 0).
  struct TenantQuota {
    uint32_t max_connections = 0;
    uint32_t max_publish_rate = 0;  // messages per second
    // Server keep alive for the tenant's v5 clients, seconds (0: the node's
    // limits.server_keepalive).
    uint16_t server_keepalive = 0;
  };
  void SetTenantQuota(const std::string& tenant, TenantQuota q);
  uint32_t TenantConnections(std::string_view tenant) const;

  const BrokerStats& stats() const { return stats_; }
  // The net layer stopped reading a connection whose output is not draining.
  void CountReadPause() { stats_.reads_paused++; }
  void CountPeerPause() { stats_.reads_paused_peers++; }
  void CountTlsRefused() { stats_.tls_refused++; }
  const BrokerOptions& options() const { return opts_; }
  size_t session_count() const { return sessions_.size(); }
  size_t retained_count() const { return retained_.size(); }
  size_t timer_count() const { return wheel_.size(); }
  const Session* FindSession(std::string_view tenant, std::string_view client_id) const;
  // The one shared copy of a tenant's name (TenantNames of the cluster).
  const std::string* InternTenant(std::string_view tenant);
  int64_t NowMs() const { return clock_->NowMs(); }

 private:
  friend class Connection;
  // Shared groups whose last member here left: messages stamped before the
  // leave that pick this worker are redirected to a member elsewhere.
  struct Departed {
    std::string filter;  // mounted, no $share prefix
    std::string group;
    SharedMask* mask;
    uint64_t left;  // stamp of the leave
  };
  enum TimerKind : uint8_t { kConnectTimeout, kKeepAlive, kWillDelay, kSessionExpiry };

  // Connection entry points.
  void OnPacket(Connection& c, mqtt::Packet& p);
  void OnDecodeError(Connection& c, const mqtt::Error& e);
  void OnTransportClosed(Connection& c);
  void CountIn(Connection& c, size_t bytes);
  // Hands the connection's counters to the hooks and starts new ones.
  void ReportLink(Connection& c, int64_t now);
  // Forgets a connection that is closed or leaves this worker.
  void Unregister(Connection& c);

  // Lifecycle (broker.cc).
  void HandleConnect(Connection& c, mqtt::Connect& ck);
  void RefuseConnect(Connection& c, mqtt::ReasonCode rc, const char* rule);
  void HandleDisconnect(Connection& c, const mqtt::Disconnect& d);
  void Close(Connection& c, DisconnectReason why, mqtt::ReasonCode rc, const char* rule);
  void SessionOffline(Session& s, bool publish_will);
  void EndSession(Session& s);
  void PublishWill(Session& s);
  void ResumeSession(Session& s, Connection& c);
  void FireTimer(const TimerWheel::Entry& e, int64_t now);
  ClientInfo InfoOf(const Connection& c) const;

  // Publish path (publish.cc).
  void HandlePublish(Connection& c, mqtt::Publish& p);
  void HandleAck(Connection& c, const mqtt::Ack& a);
  void SendAck(Connection& c, mqtt::PacketType t, uint16_t id, mqtt::ReasonCode rc);
  // Acknowledges a PUBLISH once whatever it changed is durable, in order;
  // with `barrier`, also once every other worker released it.
  // `record_after`: a QoS 2 PUBREC whose dedupe record is written once the
  // barrier completes, before the PUBREC goes out.
  void AckWhenDurable(Connection& c, mqtt::Packet ack, const AckBarrierPtr& barrier = nullptr,
                      bool record_after = false);
  void ReleaseBarrier(const AckBarrierPtr& b, bool ok);
  void OnDurable(uint64_t conn_id, uint64_t ticket, bool ok);
  void DrainAcks(Connection& c);
  // Routes a message originating on this worker: here, then (several
  // workers) on every other worker. Returns the local matches.
  size_t Route(const MessagePtr& msg, const AckBarrierPtr& ack = nullptr);
  size_t RouteLocal(const MessagePtr& msg, bool from_peer);
  bool MultiWorker() const { return cluster_ != nullptr && cluster_->size() > 1; }
  // Origin stamp of a message routed now: monotonic ns, worker in the low bits.
  uint64_t StampNow() const;
  void Deliver(Session& s, Delivery&& d);
  // One member of `g` gets `msg` (round robin, an online member with room
  // in its window first) [MQTT-4.8.2].
  void DeliverToGroup(TopicTree::SharedGroup& g, const MessagePtr& msg);
  // A message picked this worker for a group it has no member of any more:
  // handed to a worker that has (at most one hop per worker).
  void Redirect(const Departed& d, const MessagePtr& msg, uint32_t hops);
  void DeliverRedirected(const std::string& filter, const std::string& group, const MessagePtr& msg, uint32_t hops);
  void Enqueue(Session& s, Delivery&& d);
  void ReportOutcome(const Session& s, const Delivery& d, DeviceOutcome o);
  void SendNew(Session& s, Connection& c, Delivery&& d);
  void PumpQueue(Session& s);
  bool SendPublish(Connection& c, const Delivery& d, uint16_t packet_id, bool dup);
  uint16_t AllocPacketId(Session& s);

  // Subscriptions (subscribe.cc).
  void HandleSubscribe(Connection& c, const mqtt::Subscribe& sub);
  void HandleUnsubscribe(Connection& c, const mqtt::Unsubscribe& u);
  void RemoveAllSubscriptions(Session& s);
  // Removes the subscriptions `now` may not read (null: anonymous) and, when
  // `before` is given, `before` could; returns how many.
  size_t DropRevokedSubscriptions(Session& s, const PeerIdentity* before, const PeerIdentity* now,
                                  std::string_view username);

  // $SYS (sys.cc).
  void PublishSys(int64_t now);
  void PublishDrops();

  struct TenantState {
    TenantQuota quota;
    uint32_t connections = 0;
    double tokens = 0;
    int64_t refill_ms = 0;
  };
  TenantState& StateOf(const std::string& tenant);
  double RateOf(const TenantQuota& q) const;   // this worker's share of the rate, per second
  double BurstOf(const TenantQuota& q) const;  // this worker's bucket size
  bool TakePublishToken(TenantState& t);
  // Counts a connection of `tenant` unless `max` (0 = none) is reached.
  bool CountConnection(TenantState& t, const std::string& tenant, uint32_t max);
  void UncountConnection(TenantState& t, const std::string& tenant);
  void OnSharedGroup(TopicTree::SharedGroup& g, std::string_view filter, bool joined);

  BrokerOptions opts_;
  const Clock* clock_;
  Cluster* cluster_ = nullptr;
  uint32_t index_ = 0;
  TenantQuota default_quota_;
  TenantNames own_names_;  // without a cluster
  StringMap<std::unique_ptr<TenantState>> tenants_;
  Persistence* persistence_;
  AclPolicy default_acl_;
  const AclPolicy* acl_ = &default_acl_;
  uint64_t next_ticket_ = 1;
  std::vector<AckBarrierPtr> peer_barriers_;
  std::vector<Departed> departed_;  // routed from peers, waiting for FlushPeerWrites
  BrokerHooks* hooks_;
  BrokerHooks default_hooks_;
  int64_t start_ms_;
  int64_t last_sys_ms_;
  uint64_t next_session_id_ = 1;
  uint64_t assigned_ids_ = 0;

  absl::flat_hash_map<uint64_t, Connection*> conns_;
  // Connections with a certificate, by "tenant\0serial" (usually one each).
  absl::flat_hash_map<std::string, std::vector<Connection*>> by_serial_;
  SessionTable sessions_;
  absl::flat_hash_map<uint64_t, Session*> sessions_by_id_;
  TopicTree tree_;
  RetainedStore retained_;
  TimerWheel wheel_;
  BrokerStats stats_;
  absl::flat_hash_set<uint64_t> drops_changed_;  // sessions whose drop count moved

  // Scratch reused per publish to avoid allocations on the hot path.
  struct Match {
    Session* session;
    SubOptions opts;
  };
  std::vector<Match> matches_;
  std::vector<TopicTree::SharedGroup*> groups_;
  std::string scratch_;
};

}  // namespace fmq

// Connection lifecycle: CONNECT/CONNACK, takeover, DISCONNECT, closing with
// a reason, wills, session expiry and the timer wheel.
#include "broker/core/broker.h"

#include <algorithm>
#include <mutex>

#include "absl/container/node_hash_set.h"
#include "broker/mqtt/utf8.h"
#include "common/log.h"

namespace fmq {

using mqtt::PacketType;
using mqtt::PropertyId;
using mqtt::ReasonCode;
using mqtt::Version;

std::string_view DisconnectReasonName(DisconnectReason r) {
  switch (r) {
    case DisconnectReason::kClean:
      return "clean";
    case DisconnectReason::kKeepAliveTimeout:
      return "keepalive_timeout";
    case DisconnectReason::kProtocolError:
      return "protocol_error";
    case DisconnectReason::kTakeover:
      return "takeover";
    case DisconnectReason::kServerShutdown:
      return "server_shutdown";
    case DisconnectReason::kTransportClosed:
      return "connection_lost";
    case DisconnectReason::kConnectTimeout:
      return "connect_timeout";
    case DisconnectReason::kAdministrative:
      return "administrative";
  }
  return "unknown";
}

std::string_view DeviceOutcomeName(DeviceOutcome o) {
  switch (o) {
    case DeviceOutcome::kAcked:
      return "acked";
    case DeviceOutcome::kSentQos0:
      return "sent_qos0";
    case DeviceOutcome::kOffline:
      return "offline";
    case DeviceOutcome::kQueueFull:
      return "queue_full";
    case DeviceOutcome::kTooLarge:
      return "too_large";
  }
  return "unknown";
}

Broker::Broker(const BrokerOptions& opts, const Clock* clock, BrokerHooks* hooks, Persistence* persistence)
    : opts_(opts),
      clock_(clock),
      default_quota_{opts.quota_max_connections, opts.quota_max_publish_rate},
      persistence_(persistence),
      hooks_(hooks != nullptr ? hooks : &default_hooks_),
      start_ms_(clock->NowMs()),
      last_sys_ms_(clock->NowMs()),
      wheel_(clock->NowMs()) {}

Broker::~Broker() = default;

const std::string* TenantNames::None() {
  static const std::string kAnonymous;
  return &kAnonymous;
}

const std::string* TenantNames::Intern(std::string_view tenant) {
  if (tenant.empty()) return None();  // most sessions on plain TCP: no lock
  std::lock_guard<std::mutex> l(mu_);
  return &*names_.emplace(tenant).first;
}

const std::string* Broker::InternTenant(std::string_view tenant) {
  return cluster_ != nullptr ? cluster_->tenant_names().Intern(tenant) : own_names_.Intern(tenant);
}

void Broker::SetCluster(Cluster* cluster, uint32_t index) {
  cluster_ = cluster;
  index_ = index;
  // Session ids are compared across workers (No Local): give each worker
  // its own range, below 2^54 like connection ids (deadline wheel keys
  // have 56 bits).
  next_session_id_ = (uint64_t{index} << 48) + 1;
  tree_.set_group_observer(
      [this](TopicTree::SharedGroup& g, std::string_view filter, bool joined) { OnSharedGroup(g, filter, joined); });
}

void Broker::OnSharedGroup(TopicTree::SharedGroup& g, std::string_view filter, bool joined) {
  if (!MultiWorker()) return;
  if (joined) {
    std::string key = g.name;
    key.push_back('\0');
    key.append(filter);
    g.workers = cluster_->JoinShared(key, index_);
  } else if (g.workers != nullptr) {
    // Messages stamped before the leave may still pick this worker: for a
    // while it redirects them to a worker that has members (RouteLocal).
    const uint64_t left = cluster_->LeaveShared(g.workers, index_);
    departed_.push_back(Departed{std::string(filter), g.name, g.workers, left});
  }
}

void Broker::Detach(Connection& c) {
  Unregister(c);
  stats_.connections_accepted--;
  c.state_ = Connection::State::kClosed;
  c.transport_ = nullptr;
}

std::string Broker::AssignClientId(std::string_view tenant) {
  while (true) {
    std::string id = opts_.assigned_id_prefix + std::to_string(NowMs()) + "-" + std::to_string(++assigned_ids_);
    if (!MultiWorker() || cluster_->HomeOf(tenant, id) == index_) return id;
  }
}

bool Broker::CountConnection(TenantState& t, const std::string& tenant, uint32_t max) {
  if (MultiWorker()) return cluster_->AddConnection(tenant, max);
  if (max != 0 && t.connections >= max) return false;
  t.connections++;
  return true;
}

void Broker::UncountConnection(TenantState& t, const std::string& tenant) {
  if (MultiWorker()) {
    cluster_->RemoveConnection(tenant);
  } else {
    t.connections--;
  }
}

ClientInfo Broker::InfoOf(const Connection& c) const {
  return ClientInfo{c.id(),       c.client_id(),
                    c.username(), c.peer(),
                    c.version(),  c.tenant(),
                    c.identity(), const_cast<Broker*>(this),
                    nullptr,      {}};
}

const Session* Broker::FindSession(std::string_view tenant, std::string_view client_id) const {
  return sessions_.Find(tenant, client_id);
}

Broker::TenantState& Broker::StateOf(const std::string& tenant) {
  auto& slot = tenants_[tenant];
  if (!slot) {
    slot = std::make_unique<TenantState>();
    slot->quota = default_quota_;
    slot->tokens = BurstOf(slot->quota);  // a new tenant starts with a full second of burst
    slot->refill_ms = NowMs();
  }
  return *slot;
}

double Broker::RateOf(const TenantQuota& q) const {
  // Several workers: each admits its share (a tenant's clients are spread
  // over the workers by the hash of their client ids).
  return static_cast<double>(q.max_publish_rate) / (MultiWorker() ? cluster_->size() : 1);
}

double Broker::BurstOf(const TenantQuota& q) const { return std::max(RateOf(q), 1.0); }

void Broker::SetTenantQuota(const std::string& tenant, TenantQuota q) {
  TenantState& t = StateOf(tenant);
  // A tenant that had no rate limit starts its new one with a full bucket;
  // one that had a limit keeps what it has left (no new burst by changing it).
  const bool was_unlimited = t.quota.max_publish_rate == 0;
  t.quota = q;
  t.tokens = was_unlimited ? BurstOf(q) : std::min(t.tokens, BurstOf(q));
  t.refill_ms = NowMs();
}

uint32_t Broker::TenantConnections(std::string_view tenant) const {
  if (MultiWorker()) return cluster_->Connections(tenant);
  auto it = tenants_.find(tenant);
  return it == tenants_.end() ? 0 : it->second->connections;
}

bool Broker::TakePublishToken(TenantState& t) {
  if (t.quota.max_publish_rate == 0) return true;
  const int64_t now = NowMs();
  if (now > t.refill_ms) {
    t.tokens = std::min(BurstOf(t.quota), t.tokens + (now - t.refill_ms) * (RateOf(t.quota) / 1000.0));
    t.refill_ms = now;
  }
  if (t.tokens < 1.0) return false;
  t.tokens -= 1.0;
  return true;
}

bool Broker::Kick(std::string_view tenant, std::string_view client_id) {
  Session* found = sessions_.Find(tenant, client_id);
  if (found == nullptr || found->conn == nullptr) return false;
  Close(*found->conn, DisconnectReason::kAdministrative, ReasonCode::kAdministrativeAction,
        "administrative action (device suspended or retired)");
  return true;
}

size_t Broker::KickSerial(std::string_view tenant, std::string_view serial) {
  auto it = by_serial_.find(SessionKey(tenant, serial));
  if (it == by_serial_.end()) return 0;
  const std::vector<Connection*> hit = it->second;  // Close() edits the index
  for (Connection* c : hit) {
    // Before CONNECT (handshake done, nothing sent yet) Close sends no
    // DISCONNECT [MQTT-3.14.0-1]: the socket is simply closed.
    Close(*c, DisconnectReason::kAdministrative, ReasonCode::kAdministrativeAction,
          "administrative action (certificate revoked)");
  }
  return hit.size();
}

void Broker::IndexSerial(Connection& c) {
  const PeerIdentity* who = c.identity();
  if (c.serial_indexed_ || who == nullptr || who->serial.empty() || !conns_.contains(c.id())) return;
  by_serial_[SessionKey(who->tenant, who->serial)].push_back(&c);
  c.serial_indexed_ = true;
}

void Broker::Unregister(Connection& c) {
  conns_.erase(c.id());
  if (!c.serial_indexed_) return;
  c.serial_indexed_ = false;
  auto it = by_serial_.find(SessionKey(c.identity()->tenant, c.identity()->serial));
  if (it == by_serial_.end()) return;
  std::vector<Connection*>& v = it->second;
  v.erase(std::remove(v.begin(), v.end(), &c), v.end());
  if (v.empty()) by_serial_.erase(it);
}

int64_t Broker::LastActivityMs(std::string_view tenant, std::string_view client_id) const {
  Session* found = sessions_.Find(tenant, client_id);
  if (found == nullptr || found->conn == nullptr) return -1;
  return found->conn->last_rx_ms_;
}

void Broker::Accept(Connection* c) {
  conns_[c->id()] = c;
  IndexSerial(*c);  // a connection handed over with its identity
  stats_.connections_accepted++;
  c->last_rx_ms_ = NowMs();
  wheel_.Schedule(NowMs() + opts_.connect_timeout_ms, c->id(), kConnectTimeout);
}

void Broker::CountIn(Connection& c, size_t bytes) {
  stats_.bytes_received += bytes;
  c.link_.bytes_in += bytes;
}

void Broker::ReportLink(Connection& c, int64_t now) {
  ClientInfo info = InfoOf(c);
  info.counters = &c.link_;
  hooks_->OnLinkCounters(info);
  c.link_ = LinkCounters{};
  c.link_from_ms_ = now;
}

void Broker::OnPacket(Connection& c, mqtt::Packet& p) {
  stats_.messages_received++;
  const PacketType t = mqtt::TypeOf(p);
  c.link_.packets_in++;
  if (t == PacketType::kPublish) c.link_.publish_in++;
  const int64_t now = NowMs();
  c.last_rx_ms_ = now;  // keep alive counts whole packets [MQTT-3.1.2-22]
  if (c.state_ == Connection::State::kConnected && now - c.link_from_ms_ >= opts_.link_stats_interval_ms) {
    ReportLink(c, now);
  }
  if (c.state_ == Connection::State::kAwaitConnect) {
    if (t != PacketType::kConnect) {
      Close(c, DisconnectReason::kProtocolError, ReasonCode::kProtocolError,
            "MQTT-3.1.0-1 first packet is not CONNECT");
      return;
    }
    HandleConnect(c, std::get<mqtt::Connect>(p));
    return;
  }
  switch (t) {
    case PacketType::kPublish:
      HandlePublish(c, std::get<mqtt::Publish>(p));
      return;
    case PacketType::kPuback:
    case PacketType::kPubrec:
    case PacketType::kPubrel:
    case PacketType::kPubcomp:
      HandleAck(c, std::get<mqtt::Ack>(p));
      return;
    case PacketType::kSubscribe:
      HandleSubscribe(c, std::get<mqtt::Subscribe>(p));
      return;
    case PacketType::kUnsubscribe:
      HandleUnsubscribe(c, std::get<mqtt::Unsubscribe>(p));
      return;
    case PacketType::kPingreq:
      c.Write(mqtt::Pingresp{});
      return;
    case PacketType::kDisconnect:
      HandleDisconnect(c, std::get<mqtt::Disconnect>(p));
      return;
    case PacketType::kConnect:
      Close(c, DisconnectReason::kProtocolError, ReasonCode::kProtocolError, "MQTT-3.1.0-2 second CONNECT");
      return;
    case PacketType::kAuth:
      Close(c, DisconnectReason::kProtocolError, ReasonCode::kProtocolError,
            "MQTT-4.12.0-1 AUTH without an authentication method");
      return;
    default:
      Close(c, DisconnectReason::kProtocolError, ReasonCode::kProtocolError,
            "MQTT-2.1.2 packet type only a server may send");
      return;
  }
}

void Broker::OnDecodeError(Connection& c, const mqtt::Error& e) {
  if (c.state_ == Connection::State::kAwaitConnect && e.code == ReasonCode::kUnsupportedProtocolVersion) {
    c.version_ = Version::kV311;  // answer in the 3.1.1 form [MQTT-3.1.2-2]
    RefuseConnect(c, e.code, e.rule);
    return;
  }
  Close(c, DisconnectReason::kProtocolError, e.code, e.rule);
}

void Broker::OnTransportClosed(Connection& c) {
  if (c.state_ != Connection::State::kClosed) {
    Close(c, DisconnectReason::kTransportClosed, ReasonCode::kUnspecifiedError, "");
  }
  c.transport_ = nullptr;
}

void Broker::RefuseConnect(Connection& c, ReasonCode rc, const char* rule) {
  stats_.connects_refused++;
  FMQ_LOG_WARN("client '%s' from %s refused: %s (%s)", c.client_id_.c_str(), c.peer_.c_str(),
               std::string(mqtt::ReasonName(rc)).c_str(), rule);
  mqtt::Connack ack;
  ack.reason = rc;
  if (c.version_ == Version::kV5 && c.problem_info_ && rule[0] != '\0') {
    ack.props.reason_string = rule;
    ack.props.Mark(PropertyId::kReasonString);
  }
  c.Write(ack);
  c.state_ = Connection::State::kClosed;
  Unregister(c);
  if (c.transport_ != nullptr) c.transport_->Close();
}

void Broker::HandleConnect(Connection& c, mqtt::Connect& ck) {
  c.version_ = ck.version;
  c.client_id_ = ck.client_id;
  if (ck.username) c.extras().username = *ck.username;
  const bool v5 = ck.version == Version::kV5;
  if (v5) c.problem_info_ = ck.props.request_problem_info != 0;

  bool assigned = false;
  if (ck.client_id.empty()) {
    if (!v5 && !ck.clean_start) {
      RefuseConnect(c, ReasonCode::kClientIdentifierNotValid, "MQTT-3.1.3-8 empty client id with clean session 0");
      return;
    }
    c.client_id_ = AssignClientId(c.tenant());
    assigned = true;
  } else if (ck.client_id.size() > opts_.max_client_id_length) {
    RefuseConnect(c, ReasonCode::kClientIdentifierNotValid, "limit client id longer than max_client_id_length");
    return;
  }
  if (const PeerIdentity* id = c.identity(); id != nullptr && id->device) {
    // A device is bound to its certificate: it connects as itself or is
    // given its own id, never another's.
    if (assigned || ck.client_id.empty()) {
      c.client_id_ = id->name;
      assigned = v5;
    } else if (ck.client_id != id->name) {
      RefuseConnect(c, ReasonCode::kClientIdentifierNotValid, "auth client id must be the certificate's device id");
      return;
    }
  }
  if (v5 && ck.props.Has(PropertyId::kAuthenticationMethod)) {
    RefuseConnect(c, ReasonCode::kBadAuthenticationMethod, "MQTT-4.12 enhanced authentication is not supported");
    return;
  }
  if (ck.will) {
    mqtt::Error e = mqtt::ValidateTopicName(ck.will->topic, opts_.topic_limits);
    if (!e.ok()) {
      RefuseConnect(c, ReasonCode::kTopicNameInvalid, e.rule);
      return;
    }
    if (ck.will->topic[0] == '$') {
      RefuseConnect(c, ReasonCode::kNotAuthorized, "acl will topic under '$' is reserved");
      return;
    }
    if (ck.will->props.payload_format == 1 && !mqtt::IsValidUtf8(ck.will->payload)) {
      RefuseConnect(c, ReasonCode::kPayloadFormatInvalid,
                    "MQTT-3.1.3.2 will payload format 1 with a non UTF-8 payload");
      return;
    }
  }
  uint16_t keep_alive = ck.keep_alive;
  bool server_keep_alive = false;
  if (opts_.max_keepalive != 65535 && (keep_alive == 0 || keep_alive > opts_.max_keepalive)) {
    if (!v5) {
      RefuseConnect(c, ReasonCode::kClientIdentifierNotValid,
                    "limit keep alive 0 or above max_keepalive (3.1.1 cannot be told)");
      return;
    }
    keep_alive = opts_.max_keepalive;  // [MQTT-3.2.2-21] the client must use it
    server_keep_alive = true;
  }
  if (c.identity_ != nullptr) hooks_->ResolveIdentity(*c.identity_);
  ReasonCode auth = hooks_->Authenticate(ck, InfoOf(c));
  if (auth != ReasonCode::kSuccess) {
    RefuseConnect(c, auth, "auth refused by the authentication hook");
    return;
  }

  uint32_t expiry = v5 ? ck.props.session_expiry : (ck.clean_start ? 0 : 0xFFFFFFFF);
  expiry = std::min(expiry, opts_.max_session_expiry);

  if (ck.will && !acl_->CanPublish(c.identity(), c.client_id_, c.username(), ck.will->topic)) {
    RefuseConnect(c, ReasonCode::kNotAuthorized, "acl will topic not writable by this client");
    return;
  }
  if (ck.will) ck.will->topic = c.mount_ + ck.will->topic;  // the tenant's namespace
  TenantState* ts = c.identity() != nullptr ? &StateOf(c.tenant()) : nullptr;
  if (ts != nullptr) {
    const Session* existing = sessions_.Find(c.tenant(), c.client_id_);
    const bool takeover = existing != nullptr && existing->conn != nullptr;
    // A takeover frees the slot it takes (the old connection closes below).
    if (!CountConnection(*ts, c.tenant(), takeover ? 0 : ts->quota.max_connections)) {
      stats_.quota_connections_refused++;
      FMQ_LOG_WARN("client '%s' of tenant '%s' refused: tenant at max_connections %u", c.client_id_.c_str(),
                   c.tenant().c_str(), ts->quota.max_connections);
      RefuseConnect(c, ReasonCode::kQuotaExceeded, "quota tenant max_connections reached");
      return;
    }
    c.tenant_state_ = ts;  // counted from here: Close uncounts
  }
  if (v5) {
    const uint16_t cap =
        ts != nullptr && ts->quota.server_keepalive != 0 ? ts->quota.server_keepalive : opts_.server_keepalive;
    if (cap != 0 && (keep_alive == 0 || keep_alive > cap)) {
      keep_alive = cap;  // [MQTT-3.2.2-21] the client must use it
      server_keep_alive = true;
    }
  }
  // Takeover [MQTT-3.1.4-3]: the existing connection is closed first.
  if (Session* old = sessions_.Find(c.tenant(), c.client_id_); old != nullptr && old->conn) {
    stats_.takeovers++;
    Close(*old->conn, DisconnectReason::kTakeover, ReasonCode::kSessionTakenOver,
          "MQTT-3.1.4-3 session taken over by a new connection");
  }
  Session* s = nullptr;
  if (Session* old = sessions_.Find(c.tenant(), c.client_id_); old != nullptr) {
    if (ck.clean_start) {
      EndSession(*old);  // [MQTT-3.1.2-4] discard the old session
    } else {
      s = old;
    }
  }
  const bool present = s != nullptr;
  const bool was_persisted = s != nullptr && s->persisted;
  if (s == nullptr) {
    auto owned = std::make_unique<Session>();
    s = owned.get();
    s->id = next_session_id_++;
    s->client_id = c.client_id_;
    s->set_tenant(InternTenant(c.tenant()));
    sessions_by_id_[s->id] = s;
    sessions_.Insert(std::move(owned));
  }
  // A pending delayed will is cancelled by the reconnect [MQTT-3.1.3-9].
  s->will_pending = false;
  s->will = ck.will ? std::make_unique<mqtt::Will>(std::move(*ck.will)) : nullptr;
  s->version = ck.version;
  s->expiry_s = expiry;
  s->conn = &c;
  // A resumed session keeps only what the client may read now (its groups
  // or the rules may have changed while it was away).
  if (present) DropRevokedSubscriptions(*s, nullptr, c.identity(), c.username());
  if (persistence_ != nullptr) {
    if (s->durable()) {
      persistence_->SaveSession(*s);
      s->persisted = true;
    } else if (was_persisted) {
      persistence_->DeleteSession(*s);  // resumed with expiry 0: no longer stored
      s->persisted = false;
    }
  }
  c.session_ = s;
  c.state_ = Connection::State::kConnected;
  c.keep_alive_s_ = keep_alive;
  c.send_quota_ = std::min<uint16_t>(v5 ? ck.props.receive_maximum : 65535, opts_.max_inflight);
  c.client_max_packet_ = v5 ? ck.props.maximum_packet_size : 0;
  c.client_alias_max_ = v5 ? ck.props.topic_alias_maximum : 0;

  mqtt::Connack ack;
  ack.session_present = present;  // [MQTT-3.2.2-2]
  if (v5) {
    auto& p = ack.props;
    if (assigned) {
      p.assigned_client_id = c.client_id_;
      p.Mark(PropertyId::kAssignedClientIdentifier);
    }
    p.receive_maximum = opts_.receive_maximum;
    p.Mark(PropertyId::kReceiveMaximum);
    p.maximum_packet_size = opts_.max_packet_size;
    p.Mark(PropertyId::kMaximumPacketSize);
    p.topic_alias_maximum = opts_.topic_alias_maximum;
    p.Mark(PropertyId::kTopicAliasMaximum);
    if (server_keep_alive) {
      p.server_keep_alive = keep_alive;
      p.Mark(PropertyId::kServerKeepAlive);
    }
    if (expiry != ck.props.session_expiry) {
      p.session_expiry = expiry;
      p.Mark(PropertyId::kSessionExpiryInterval);
    }
  }
  c.Write(ack);
  stats_.clients_connected++;
  stats_.clients_maximum = std::max(stats_.clients_maximum, stats_.clients_connected);
  if (keep_alive > 0) {
    wheel_.Schedule(NowMs() + keep_alive * 1500LL, c.id(), kKeepAlive);
  }
  FMQ_LOG_DEBUG("client '%s' connected from %s (v%d, clean=%d, keepalive=%u, present=%d)", c.client_id_.c_str(),
                c.peer_.c_str(), static_cast<int>(ck.version), ck.clean_start, keep_alive, present);
  c.link_from_ms_ = NowMs();
  hooks_->OnConnected(InfoOf(c));
  if (present) ResumeSession(*s, c);
}

void Broker::ResumeSession(Session& s, Connection& c) {
  // Resend unacknowledged messages in their original order [MQTT-4.4.0-1],
  // [MQTT-4.6.0-1].
  std::vector<std::pair<uint64_t, uint16_t>> order;
  order.reserve(s.inflight.size());
  for (const auto& [id, in] : s.inflight) order.emplace_back(in.d.seq, id);
  std::sort(order.begin(), order.end());
  for (const auto& [seq, id] : order) {
    Inflight& in = s.inflight[id];
    if (in.released) {
      SendAck(c, PacketType::kPubrel, id, ReasonCode::kSuccess);
    } else if (!SendPublish(c, in.d, id, true)) {
      if (persistence_ && s.persisted) persistence_->DeleteDelivery(s, in.d.seq);
      s.inflight.erase(id);
    }
  }
  PumpQueue(s);
}

void Broker::HandleDisconnect(Connection& c, const mqtt::Disconnect& d) {
  Session& s = *c.session_;
  if (c.version_ == Version::kV5 && d.props.Has(PropertyId::kSessionExpiryInterval)) {
    if (s.expiry_s == 0 && d.props.session_expiry != 0) {
      Close(c, DisconnectReason::kProtocolError, ReasonCode::kProtocolError,
            "MQTT-3.14.2-2 session expiry set on DISCONNECT after 0 on CONNECT");
      return;
    }
    s.expiry_s = std::min(d.props.session_expiry, opts_.max_session_expiry);
  }
  // [MQTT-3.1.2-10] a normal DISCONNECT discards the will; 0x04 keeps it.
  c.will_on_close_ = d.reason == ReasonCode::kDisconnectWithWill;
  Close(c, DisconnectReason::kClean, ReasonCode::kSuccess, "");
}

void Broker::Close(Connection& c, DisconnectReason why, ReasonCode rc, const char* rule) {
  if (c.state_ == Connection::State::kClosed) return;
  const bool connected = c.state_ == Connection::State::kConnected;
  if (why == DisconnectReason::kProtocolError) {
    stats_.protocol_errors++;
    FMQ_LOG_WARN("client '%s' from %s closed: %s (%s)", c.client_id_.c_str(), c.peer_.c_str(),
                 std::string(mqtt::ReasonName(rc)).c_str(), rule);
  } else if (why != DisconnectReason::kClean && why != DisconnectReason::kTransportClosed) {
    FMQ_LOG_INFO("client '%s' from %s closed: %s", c.client_id_.c_str(), c.peer_.c_str(),
                 std::string(DisconnectReasonName(why)).c_str());
  }
  const bool send_disconnect = connected && c.version_ == Version::kV5 && why != DisconnectReason::kClean &&
                               why != DisconnectReason::kTransportClosed && why != DisconnectReason::kConnectTimeout;
  if (send_disconnect) {
    mqtt::Disconnect d;
    d.reason = rc;
    // A reason string always: it tells operators why, and some clients
    // (paho 1.6) only read the reason code when more bytes follow it.
    d.props.reason_string = rule[0] != '\0' ? std::string(rule) : std::string(mqtt::ReasonName(rc));
    d.props.Mark(PropertyId::kReasonString);
    c.Write(d);
  }
  c.state_ = Connection::State::kClosed;
  Unregister(c);
  if (connected) {
    stats_.clients_connected--;
    if (c.tenant_state_ != nullptr) {
      UncountConnection(*static_cast<TenantState*>(c.tenant_state_), c.tenant());
      c.tenant_state_ = nullptr;
    }
    if (why == DisconnectReason::kAdministrative) stats_.admin_disconnects++;
    Session* s = c.session_;
    s->conn = nullptr;
    c.session_ = nullptr;
    FMQ_LOG_DEBUG("client '%s' disconnected: %s", c.client_id_.c_str(), std::string(DisconnectReasonName(why)).c_str());
    ClientInfo info = InfoOf(c);
    info.counters = &c.link_;
    if (why == DisconnectReason::kProtocolError) info.error = rule;
    hooks_->OnDisconnected(info, why);
    SessionOffline(*s, why != DisconnectReason::kClean || c.will_on_close_);
  }
  if (c.transport_ != nullptr) c.transport_->Close();
}

void Broker::SessionOffline(Session& s, bool publish_will) {
  const int64_t now = NowMs();
  s.disconnected_at_ms = now;
  if (!publish_will) s.will.reset();
  if (s.expiry_s == 0) {
    EndSession(s);  // publishes the will, if any
    return;
  }
  if (s.will) {
    uint32_t delay = std::min(s.will->props.will_delay, s.expiry_s);
    if (delay == 0) {
      PublishWill(s);
    } else {
      s.will_pending = true;
      s.will_at_ms = now + int64_t{delay} * 1000;
      wheel_.Schedule(s.will_at_ms, s.id, kWillDelay);
    }
  }
  if (s.expiry_s != 0xFFFFFFFF) {
    wheel_.Schedule(s.expire_at_ms(), s.id, kSessionExpiry);
  }
  if (persistence_ != nullptr) {
    persistence_->SaveSession(s);  // expiry, disconnect time, pending will
    s.persisted = true;
  }
}

void Broker::PublishWill(Session& s) {
  if (!s.will) return;
  mqtt::Will w = std::move(*s.will);
  s.will.reset();
  s.will_pending = false;
  auto m = std::make_shared<Message>();
  m->topic = std::move(w.topic);
  m->payload = std::move(w.payload);
  m->qos = w.qos;
  m->retain = w.retain;
  m->origin_session = s.id;
  if (w.props.Has(PropertyId::kMessageExpiryInterval)) {
    m->has_expiry = true;
    m->expiry_at_ms = NowMs() + int64_t{w.props.message_expiry} * 1000;
  }
  w.props.Clear(PropertyId::kMessageExpiryInterval);
  w.props.Clear(PropertyId::kWillDelayInterval);
  m->props = std::move(w.props);
  SealMessage(m.get());
  stats_.wills_published++;
  Route(m);
}

void Broker::EndSession(Session& s) {
  if (s.will) PublishWill(s);
  if (persistence_ != nullptr && s.persisted) persistence_->DeleteSession(s);
  RemoveAllSubscriptions(s);
  stats_.queued_messages -= s.queue.size();
  drops_changed_.erase(s.id);
  sessions_by_id_.erase(s.id);
  sessions_.Erase(s);  // destroys s
}

void Broker::Shutdown() {
  std::vector<Connection*> all;
  all.reserve(conns_.size());
  for (auto& [id, c] : conns_) all.push_back(c);
  for (Connection* c : all) {
    Close(*c, DisconnectReason::kServerShutdown, ReasonCode::kServerShuttingDown, "");
  }
}

void Broker::FireTimer(const TimerWheel::Entry& e, int64_t now) {
  switch (e.kind) {
    case kConnectTimeout: {
      auto it = conns_.find(e.key);
      if (it == conns_.end() || it->second->state_ != Connection::State::kAwaitConnect) return;
      stats_.connect_timeouts++;
      Close(*it->second, DisconnectReason::kConnectTimeout, ReasonCode::kMaximumConnectTime,
            "limit no CONNECT within connect_timeout");
      return;
    }
    case kKeepAlive: {
      auto it = conns_.find(e.key);
      if (it == conns_.end()) return;
      Connection& c = *it->second;
      if (c.state_ != Connection::State::kConnected || c.keep_alive_s_ == 0) return;
      const int64_t deadline = c.last_rx_ms_ + c.keep_alive_s_ * 1500LL;
      if (now >= deadline) {
        stats_.keepalive_timeouts++;  // [MQTT-3.1.2-22]
        Close(c, DisconnectReason::kKeepAliveTimeout, ReasonCode::kKeepAliveTimeout,
              "MQTT-3.1.2-22 no packet within 1.5 x keep alive");
      } else {
        wheel_.Schedule(deadline, c.id(), kKeepAlive);
      }
      return;
    }
    case kWillDelay: {
      auto it = sessions_by_id_.find(e.key);
      if (it == sessions_by_id_.end()) return;
      Session& s = *it->second;
      if (s.conn || !s.will_pending || e.deadline_ms != s.will_at_ms) return;  // stale
      if (now < s.will_at_ms) {
        wheel_.Schedule(s.will_at_ms, s.id, kWillDelay);
      } else {
        PublishWill(s);
        if (persistence_ != nullptr && s.persisted) persistence_->SaveSession(s);
      }
      return;
    }
    case kSessionExpiry: {
      auto it = sessions_by_id_.find(e.key);
      if (it == sessions_by_id_.end()) return;
      Session& s = *it->second;
      if (s.conn || s.expiry_s == 0xFFFFFFFF || e.deadline_ms != s.expire_at_ms()) return;  // stale
      if (now < s.expire_at_ms()) {
        wheel_.Schedule(s.expire_at_ms(), s.id, kSessionExpiry);
      } else {
        stats_.sessions_expired++;
        EndSession(s);
      }
      return;
    }
    default:
      return;
  }
}

void Broker::RestoreSession(std::unique_ptr<Session> owned, int64_t offline_ms) {
  Session& s = *owned;
  const int64_t now = NowMs();
  s.id = next_session_id_++;
  s.conn = nullptr;
  s.persisted = true;
  s.disconnected_at_ms = now - offline_ms;
  for (const auto& [filter, o] : s.subscriptions) {
    mqtt::SharedFilter sf;
    mqtt::ParseShared(filter, &sf);
    if (tree_.Add(sf.shared ? sf.filter : std::string_view(filter), sf.group, &s, o)) stats_.subscriptions++;
  }
  s.queued_bytes = 0;
  for (const Delivery& d : s.queue) s.queued_bytes += d.msg->Footprint();
  stats_.queued_messages += s.queue.size();
  sessions_by_id_[s.id] = &s;
  sessions_.Insert(std::move(owned));
  if (s.will) {
    const uint32_t delay = std::min(s.will->props.will_delay, s.expiry_s);
    s.will_pending = true;
    s.will_at_ms = std::max(now, s.disconnected_at_ms + int64_t{delay} * 1000);
    wheel_.Schedule(s.will_at_ms, s.id, kWillDelay);
  }
  if (s.expiry_s != 0xFFFFFFFF) {
    if (s.expire_at_ms() <= now) {
      stats_.sessions_expired++;
      EndSession(s);  // expired while the broker was down
      return;
    }
    wheel_.Schedule(s.expire_at_ms(), s.id, kSessionExpiry);
  }
}

void Broker::RestoreRetained(MessagePtr m) {
  if (!m->Expired(NowMs())) retained_.Set(m);
}

void Broker::Tick() {
  const int64_t now = NowMs();
  wheel_.Advance(now, [&](const TimerWheel::Entry& e) { FireTimer(e, now); });
  if (opts_.sys_interval_s > 0 && now - last_sys_ms_ >= int64_t{opts_.sys_interval_s} * 1000) {
    last_sys_ms_ = now;
    PublishSys(now);
  }
  if (MultiWorker()) {
    cluster_->Report(index_, stats_, sessions_.size());
    const uint64_t stamp = StampNow();
    // Departed groups are kept while a message stamped before the leave can
    // still be travelling (10 s; inboxes are bounded).
    const uint64_t departed_from = StampBefore(stamp, 10);
    std::erase_if(departed_, [departed_from](const Departed& d) { return d.left < departed_from; });
    // Retained tombstones outlive any message still between workers.
    retained_.PruneTombstones(StampBefore(stamp, 60));
  }
  hooks_->OnTick(now);
}

}  // namespace fmq

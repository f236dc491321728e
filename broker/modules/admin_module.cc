#include "broker/modules/admin_module.h"

#include <nlohmann/json.hpp>

#include "broker/mqtt/topic.h"
#include "common/log.h"

namespace fmq {

using mqtt::ReasonCode;

static_assert(kPlatformTenantName == pki::kPlatformTenant, "one name for the platform admin's tenant");

namespace {

admin::Role RoleOf(const PeerIdentity& id) {
  if (id.device) return admin::Role::kDevice;
  return id.admin ? admin::Role::kAdmin : admin::Role::kOperator;
}

admin::Actor ActorOf(const ClientInfo& info) {
  admin::Actor a;
  a.tenant = info.identity->tenant;
  a.name = info.identity->name;
  a.role = RoleOf(*info.identity);
  a.client_id = std::string(info.client_id);
  return a;
}

}  // namespace

AdminModule::AdminModule(admin::Service* svc, storage::KvStore* kv, const Clock* clock, const AdminModuleOptions& opts)
    : svc_(svc), reader_(kv), clock_(clock), opts_(opts) {}

AdminModule::~AdminModule() { Stop(); }

void AdminModule::Attach(Broker* broker, Cluster* cluster, tls::TlsServerContext* tls, std::function<void()> wake) {
  broker_ = broker;
  cluster_ = cluster;
  tls_ = tls;
  wake_ = std::move(wake);
  if (tls_ != nullptr) {
    tls_->SetRefusalObserver([this](const pki::Identity& id, std::string_view serial, std::string_view why) {
      OnTlsRefused(id, serial, why);
    });
  }
}

absl::Status AdminModule::Start() {
  admin::Effects fx;
  if (absl::Status s = svc_->Init(&fx); !s.ok()) return s;
  Apply(fx);
  thread_ = std::thread([this] { ThreadMain(); });
  return absl::OkStatus();
}

void AdminModule::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::string AdminModule::BlockKey(std::string_view tenant, std::string_view device) {
  std::string k(tenant);
  k.push_back('\0');
  k.append(device);
  return k;
}

void AdminModule::Deny(Denied d) {
  std::string key = BlockKey(d.actor.tenant, d.actor.name);
  key.push_back('\0');
  key += d.why;
  std::lock_guard<std::mutex> l(mu_);
  if (auto it = denied_.find(key); it != denied_.end()) {
    it->second.more++;  // written as one entry when the window ends
    return;
  }
  if (denied_.size() >= opts_.max_denied_tracked) {
    counters_.denied_unaudited.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  denied_.emplace(std::move(key), DeniedWindow{d, 0, clock_->NowMs() + opts_.denied_audit_window_ms});
  jobs_.push_back(std::move(d));
  cv_.notify_one();
}

std::vector<AdminModule::Denied> AdminModule::TakeEndedDenials(int64_t now_ms) {
  std::vector<Denied> out;
  for (auto it = denied_.begin(); it != denied_.end();) {
    if (it->second.ends_ms > now_ms) {
      ++it;
      continue;
    }
    if (it->second.more > 0) {
      Denied d = std::move(it->second.first);
      d.why += " (" + std::to_string(it->second.more) + " more attempt" + (it->second.more == 1 ? "" : "s") +
               " within " + std::to_string(opts_.denied_audit_window_ms / 1000) + " s)";
      out.push_back(std::move(d));
    }
    denied_.erase(it++);
  }
  return out;
}

bool AdminModule::IsBlocked(std::string_view tenant, std::string_view device) const {
  std::lock_guard<std::mutex> l(gate_mu_);
  return blocked_.contains(BlockKey(tenant, device));
}

bool AdminModule::HasInput() const {
  return !jobs_.empty() || !events_.empty() || !coalesced_.empty() || !subscribed_.empty() || !device_msgs_.empty() ||
         !outcomes_.empty();
}

// The management loop: sleeps until input arrives, the next second's duties
// or the earliest deadline the features asked for (job timeouts, retries,
// rollout pacing), whichever is first — so deadlines fire under any load.
// Each turn takes everything queued, in this order: connectivity (a device
// is online before its messages are read), delivery outcomes, device
// messages, admin requests, denials; then the features pump and commit once
// (one group commit per turn) and their output goes to the loop thread.
void AdminModule::ThreadMain() {
  std::unique_lock<std::mutex> l(mu_);
  int64_t next_duties_ms = clock_->NowMs() + 1000;
  int64_t next_pump_wall = 0;
  while (true) {
    if (!stop_ && !HasInput()) {
      int64_t wait_ms = next_duties_ms - clock_->NowMs();
      if (next_pump_wall != INT64_MAX) wait_ms = std::min(wait_ms, next_pump_wall - clock_->WallMs());
      if (wait_ms > 0) cv_.wait_for(l, std::chrono::milliseconds(wait_ms));
    }
    if (stop_) return;
    std::vector<Denied> ended;
    bool duties = false;
    if (const int64_t now = clock_->NowMs(); now >= next_duties_ms) {
      next_duties_ms = now + 1000;
      ended = TakeEndedDenials(now);
      duties = true;
    }
    std::deque<Job> work;
    work.swap(jobs_);
    queued_requests_ = 0;
    std::vector<admin::ConnEvent> events;
    events.swap(events_);
    for (auto& [key, ev] : coalesced_) events.push_back(std::move(ev));
    coalesced_.clear();
    std::vector<std::pair<std::string, std::string>> subs;
    subs.reserve(subscribed_.size());
    for (auto& [key, s] : subscribed_) subs.push_back(std::move(s));
    subscribed_.clear();
    std::vector<mgmt::DeviceMessage> msgs;
    msgs.swap(device_msgs_);
    std::vector<Outcome> outcomes;
    outcomes.swap(outcomes_);
    l.unlock();

    for (const Denied& d : ended) svc_->AuditDenied(d.actor, d.action, d.device_id, d.why);
    Completion side;  // effects of everything but requests
    if (duties) svc_->Tick(&side.fx);
    for (size_t i = 0; i < events.size(); i += 4096) {
      const size_t n = std::min<size_t>(4096, events.size() - i);
      svc_->OnConnectivity(std::vector<admin::ConnEvent>(std::make_move_iterator(events.begin() + i),
                                                         std::make_move_iterator(events.begin() + i + n)));
    }
    for (const auto& [tenant, device] : subs) svc_->OnSubscribed(tenant, device);
    for (const Outcome& o : outcomes) {
      svc_->OnDeliveryOutcome(o.token, o.what == DeviceOutcome::kAcked || o.what == DeviceOutcome::kSentQos0,
                              DeviceOutcomeName(o.what));
    }
    for (const mgmt::DeviceMessage& m : msgs) svc_->OnDeviceMessage(m);
    for (Job& job : work) {
      if (auto* r = std::get_if<Request>(&job)) {
        Completion c;
        c.tenant = r->actor.tenant;
        c.reply_topic = r->reply_topic;
        c.correlation = r->correlation;
        c.payload = svc_->Handle(r->actor, r->payload, &c.fx);
        Post(std::move(c));
      } else if (auto* d = std::get_if<Denied>(&job)) {
        svc_->AuditDenied(d->actor, d->action, d->device_id, d->why);
      }
    }
    next_pump_wall = svc_->Pump(&side.fx);
    {
      std::vector<std::pair<std::string, uint64_t>> fc;
      svc_->FeatureCounters([&](const char* name, uint64_t n) { fc.emplace_back(name, n); });
      std::lock_guard<std::mutex> fl(feature_counters_mu_);
      feature_counters_.swap(fc);
    }
    if (!side.fx.empty()) Post(std::move(side));
    l.lock();
  }
}

void AdminModule::Post(Completion c) {
  {
    std::lock_guard<std::mutex> l(mu_);
    done_.push_back(std::move(c));
  }
  if (wake_) wake_();
}

void AdminModule::RunCompletions() {
  std::vector<Completion> done;
  {
    std::lock_guard<std::mutex> l(mu_);
    done.swap(done_);
  }
  for (Completion& c : done) {
    Apply(c.fx);
    if (!c.reply_topic.empty() && broker_ != nullptr) {
      broker_->PublishReply(MountOf(c.tenant) + c.reply_topic, std::move(c.payload), c.correlation);
    }
  }
}

void AdminModule::Apply(admin::Effects& fx) {
  for (const std::string& pem : fx.trusted_cas) {
    if (tls_ != nullptr) {
      if (absl::Status s = tls_->AddTrustedCa(pem); !s.ok()) {
        FMQ_LOG_ERROR("new tenant CA not trusted: %s", std::string(s.message()).c_str());
      }
    }
  }
  // Revocations before kicks: the kicked device's reconnect already fails.
  for (const auto& [tenant, serial] : fx.revoked) {
    if (tls_ != nullptr) tls_->Revoke(tenant, serial);
  }
  {
    std::lock_guard<std::mutex> l(gate_mu_);
    for (const auto& b : fx.blocks) {
      if (b.blocked)
        blocked_.insert(BlockKey(b.tenant, b.device_id));
      else
        blocked_.erase(BlockKey(b.tenant, b.device_id));
    }
  }
  if (broker_ == nullptr) return;
  for (const auto& q : fx.quotas) {
    // 0 in the tenant record: the broker-wide default applies.
    const BrokerOptions& o = broker_->options();
    const Broker::TenantQuota quota{q.max_connections != 0 ? q.max_connections : o.quota_max_connections,
                                    q.max_publish_rate != 0 ? q.max_publish_rate : o.quota_max_publish_rate,
                                    q.server_keepalive};
    if (cluster_ == nullptr) {
      broker_->SetTenantQuota(q.tenant, quota);
    } else {
      cluster_->PostAll([tenant = q.tenant, quota](Broker& b) { b.SetTenantQuota(tenant, quota); });
    }
  }
  // Every connection using a revoked certificate, connected or still before
  // its CONNECT, on every worker (a certificate may be used by several
  // connections; a CONNECT still in flight is refused by Authenticate).
  if (!fx.revoked.empty()) {
    auto sweep = [revoked = fx.revoked](Broker& b) {
      for (const auto& [tenant, serial] : revoked) {
        if (const size_t n = b.KickSerial(tenant, serial); n > 0) {
          FMQ_LOG_INFO("tenant '%s': closed %zu connection%s of revoked certificate %s", tenant.c_str(), n,
                       n == 1 ? "" : "s", serial.c_str());
        }
      }
    };
    if (cluster_ == nullptr) {
      sweep(*broker_);
    } else {
      cluster_->PostAll(sweep);
    }
  }
  for (const auto& g : fx.regroups) {
    auto regroup = [g](Broker& b) { b.SetDeviceGroups(g.tenant, g.device_id, g.old_groups, g.groups); };
    if (cluster_ == nullptr) {
      regroup(*broker_);
    } else {
      cluster_->link()->Post(cluster_->HomeOf(g.tenant, g.device_id), regroup);
    }
  }
  for (const auto& k : fx.kicks) {
    // A device's session is on its home worker.
    auto kick = [k](Broker& b) {
      if (b.Kick(k.tenant, k.device_id)) {
        FMQ_LOG_INFO("tenant '%s': closed the connection of '%s' (administrative action)", k.tenant.c_str(),
                     k.device_id.c_str());
      }
    };
    if (cluster_ == nullptr) {
      kick(*broker_);
    } else {
      cluster_->link()->Post(cluster_->HomeOf(k.tenant, k.device_id), kick);
    }
  }
  for (auto& p : fx.publishes) {
    broker_->PublishInternal(MountOf(p.tenant) + p.topic, std::move(p.payload), p.retain);
  }
  ApplyFeatures(fx.features);
}

void AdminModule::ApplyFeatures(mgmt::Output& out) {
  if (broker_ == nullptr) return;
  for (auto& e : out.events) {
    broker_->PublishInternal(MountOf(e.tenant) + e.topic, std::move(e.payload), e.retain);
  }
  if (out.sends.empty()) return;
  auto convert = [](mgmt::DeviceSend& m) {
    Broker::DeviceMessage d;
    d.topic = topics::DeviceChannel(m.device_id) + m.suffix;
    d.tenant = std::move(m.tenant);
    d.device_id = std::move(m.device_id);
    d.payload = std::move(m.payload);
    d.token = m.token;
    return d;
  };
  if (cluster_ == nullptr || cluster_->size() == 1) {
    for (auto& m : out.sends) broker_->SendToDevice(convert(m));
    return;
  }
  // One batch per worker: a device's session lives on its home worker.
  std::vector<std::vector<Broker::DeviceMessage>> per(cluster_->size());
  for (auto& m : out.sends) {
    const uint32_t home = cluster_->HomeOf(m.tenant, m.device_id);
    per[home].push_back(convert(m));
  }
  for (uint32_t w = 0; w < per.size(); ++w) {
    if (per[w].empty()) continue;
    auto batch = std::make_shared<std::vector<Broker::DeviceMessage>>(std::move(per[w]));
    cluster_->link()->Post(w, [batch](Broker& b) {
      for (const auto& m : *batch) b.SendToDevice(m);
    });
  }
}

void AdminModule::ResolveIdentity(PeerIdentity& id) {
  if (!id.device) return;
  // One point read per device CONNECT (from RocksDB's block cache; small
  // beside the TLS handshake that preceded it). Unregistered devices (a
  // certificate from fleetmq-pki) simply have no groups.
  fb::DeviceT d;
  if (reader_.GetDevice(storage::TenantId::FromAuthenticated(id.tenant), id.name, &d).ok()) id.groups = d.group_ids;
}

mqtt::ReasonCode AdminModule::Authenticate(const mqtt::Connect&, const ClientInfo& info) {
  if (info.identity == nullptr) return ReasonCode::kSuccess;
  const PeerIdentity& who = *info.identity;
  // A certificate revoked after this connection's handshake (the sweep in
  // Apply closes such connections; this catches a CONNECT that raced it or
  // came with a hand-over between workers).
  if (tls_ != nullptr && !who.serial.empty() && tls_->IsRevoked(who.tenant, who.serial)) {
    counters_.revoked_connects.fetch_add(1, std::memory_order_relaxed);
    FMQ_LOG_INFO("'%s' of tenant '%s' refused: certificate %s is revoked", who.name.c_str(), who.tenant.c_str(),
                 who.serial.c_str());
    Deny(Denied{ActorOf(info), "device.connect", who.device ? who.name : "", "certificate " + who.serial + " revoked"});
    return ReasonCode::kBanned;
  }
  if (!who.device) {
    // Operators choose their client id, but never a device's: that would
    // take over the device's session.
    fb::DeviceT d;
    if (reader_.GetDevice(storage::TenantId::FromAuthenticated(who.tenant), info.client_id, &d).ok()) {
      FMQ_LOG_INFO("operator '%s' of tenant '%s' refused: client id '%.*s' is a device's", who.name.c_str(),
                   who.tenant.c_str(), static_cast<int>(info.client_id.size()), info.client_id.data());
      return ReasonCode::kClientIdentifierNotValid;
    }
    return ReasonCode::kSuccess;
  }
  if (!IsBlocked(who.tenant, who.name)) return ReasonCode::kSuccess;
  counters_.blocked_connects.fetch_add(1, std::memory_order_relaxed);
  FMQ_LOG_INFO("device '%s' of tenant '%s' refused: suspended or retired", who.name.c_str(), who.tenant.c_str());
  Deny(Denied{ActorOf(info), "device.connect", who.name, "device is suspended or retired"});
  return ReasonCode::kBanned;
}

void AdminModule::OnTlsRefused(const pki::Identity& id, std::string_view serial, std::string_view why) {
  admin::Actor a;
  a.tenant = id.tenant;
  a.name = id.name;
  a.role = id.role == pki::Role::kDevice  ? admin::Role::kDevice
           : id.role == pki::Role::kAdmin ? admin::Role::kAdmin
                                          : admin::Role::kOperator;
  Deny(Denied{std::move(a), "device.connect", id.role == pki::Role::kDevice ? id.name : "",
              "TLS handshake refused: " + std::string(why) + " (certificate " + std::string(serial) + ")"});
}

void AdminModule::Event(const ClientInfo& info, bool connected, std::string_view reason) {
  if (info.identity == nullptr || !info.identity->device) return;
  const int64_t now = clock_->WallMs();
  const std::string& tenant = info.identity->tenant;
  uint64_t seq;
  {
    std::lock_guard<std::mutex> l(mu_);
    seq = ++event_seq_[tenant];
  }
  nlohmann::json ev{{"seq", seq},
                    {"time_ms", now},
                    {"device_id", info.identity->name},
                    {"event", connected ? "connected" : "disconnected"},
                    {"peer", std::string(info.peer)}};
  if (!connected) ev["reason"] = std::string(reason);
  // Published by the worker the device is on (this thread), which forwards
  // it to the others.
  if (Broker* b = info.broker != nullptr ? info.broker : broker_; b != nullptr) {
    std::string topic = MountOf(tenant);
    topic += topics::kConnectivityPrefix;
    topic += info.identity->name;
    b->PublishInternal(std::move(topic), ev.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), false);
  }
  // Handed over at once, so an admin request that follows sees it; the
  // thread writes every event of a turn in one batch. Beyond the bound a
  // device's events are merged into its latest one (never dropped: the
  // device's online state stays right).
  admin::ConnEvent ev2;
  ev2.tenant = tenant;
  ev2.device_id = info.identity->name;
  ev2.reason = std::string(reason);
  ev2.peer = std::string(info.peer);
  ev2.connected = connected;
  ev2.wall_ms = now;
  ev2.serial = info.identity->serial;
  if (info.counters != nullptr) ev2.counters = *info.counters;
  ev2.error = std::string(info.error);
  Enqueue(std::move(ev2));
}

void AdminModule::Enqueue(admin::ConnEvent ev) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (events_.size() < opts_.max_queued_events) {
      events_.push_back(std::move(ev));
    } else {
      if (counters_.events_coalesced.fetch_add(1, std::memory_order_relaxed) % 10000 == 0) {
        FMQ_LOG_WARN("connectivity events coalesced per device: the management thread is %zu events behind",
                     events_.size());
      }
      // The device's latest state wins; counters are summed, never lost.
      std::string key = BlockKey(ev.tenant, ev.device_id);
      auto it = coalesced_.find(key);
      if (it == coalesced_.end()) {
        coalesced_.emplace(std::move(key), std::move(ev));
      } else if (ev.counters_only) {
        it->second.counters += ev.counters;
        if (it->second.counters_only) it->second.wall_ms = ev.wall_ms;
      } else {
        ev.counters += it->second.counters;
        it->second = std::move(ev);
      }
    }
  }
  cv_.notify_one();
}

void AdminModule::OnLinkCounters(const ClientInfo& info) {
  if (info.identity == nullptr || !info.identity->device || info.counters == nullptr) return;
  admin::ConnEvent ev;
  ev.tenant = info.identity->tenant;
  ev.device_id = info.identity->name;
  ev.wall_ms = clock_->WallMs();
  ev.counters_only = true;
  ev.counters = *info.counters;
  Enqueue(std::move(ev));
}

void AdminModule::OnConnected(const ClientInfo& info) { Event(info, true, ""); }

void AdminModule::OnChannelSubscribed(const ClientInfo& info) {
  if (info.identity == nullptr || !info.identity->device) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    subscribed_.insert_or_assign(BlockKey(info.identity->tenant, info.identity->name),
                                 std::make_pair(info.identity->tenant, info.identity->name));
  }
  cv_.notify_one();
}

void AdminModule::OnDisconnected(const ClientInfo& info, DisconnectReason why) {
  Event(info, false, DisconnectReasonName(why));
}

mqtt::ReasonCode AdminModule::OnControlPublish(const ClientInfo& info, const Message& m) {
  if (info.identity == nullptr) return ReasonCode::kNotAuthorized;  // anonymous: no tenant, no admin
  const std::string mount = MountOf(info.identity->tenant);
  std::string_view topic(m.topic);
  if (topic.substr(0, mount.size()) == mount) topic.remove_prefix(mount.size());
  admin::Actor actor = ActorOf(info);
  if (topic != topics::kControlRequest) {
    counters_.refused_role.fetch_add(1, std::memory_order_relaxed);
    return ReasonCode::kTopicNameInvalid;
  }
  if (actor.role == admin::Role::kDevice) {
    counters_.refused_role.fetch_add(1, std::memory_order_relaxed);
    FMQ_LOG_INFO("device '%s' of tenant '%s' sent an admin request: denied", actor.name.c_str(), actor.tenant.c_str());
    Deny(Denied{std::move(actor), "request", "", "devices may not use the control topic"});
    return ReasonCode::kNotAuthorized;
  }
  Request r;
  r.actor = std::move(actor);
  r.payload = m.payload;
  r.correlation = m.props.Has(mqtt::PropertyId::kCorrelationData) ? m.props.correlation_data : std::string();
  std::string own_reply = std::string(topics::kControlReplyPrefix) + std::string(info.client_id);
  if (info.version == mqtt::Version::kV5 && m.props.Has(mqtt::PropertyId::kResponseTopic)) {
    const std::string& rt = m.props.response_topic;
    // A reply may go anywhere in the tenant's own tree, but under '$' only
    // to the requester's reply topic.
    if (rt[0] == '$' && rt != own_reply) return ReasonCode::kTopicNameInvalid;
    r.reply_topic = rt;
  } else {
    r.reply_topic = std::move(own_reply);
  }
  if (!mqtt::ValidateTopicName(r.reply_topic, {}).ok()) return ReasonCode::kTopicNameInvalid;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (queued_requests_ >= opts_.max_queued_requests) {
      counters_.refused_busy.fetch_add(1, std::memory_order_relaxed);
      return ReasonCode::kQuotaExceeded;
    }
    ++queued_requests_;
    jobs_.push_back(std::move(r));
  }
  counters_.requests.fetch_add(1, std::memory_order_relaxed);
  cv_.notify_one();
  return ReasonCode::kSuccess;
}

namespace {

// Reads the JSON object of a device message; "" or an error message.
std::string ParseObject(std::string_view payload, bool empty_ok, nlohmann::json* out) {
  if (payload.empty() && empty_ok) {
    *out = nlohmann::json::object();
    return "";
  }
  *out = nlohmann::json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (out->is_discarded()) return "payload is not valid JSON";
  if (!out->is_object()) return "payload must be a JSON object";
  return "";
}

// The client token every reply echoes: a string of at most 64 bytes.
std::string ClientToken(const nlohmann::json& j, std::string* err) {
  auto it = j.find("client_token");
  if (it == j.end()) return "";
  if (!it->is_string() || it->get_ref<const std::string&>().size() > 64) {
    *err = "client_token must be a string of at most 64 bytes";
    return "";
  }
  return it->get<std::string>();
}

}  // namespace

void AdminModule::DeviceError(const ClientInfo& info, std::string_view topic, std::string_view code,
                              const std::string& msg, const std::string& client_token, bool rejected) {
  if (rejected) counters_.device_rejected.fetch_add(1, std::memory_order_relaxed);
  FMQ_LOG_DEBUG("device '%s' of tenant '%s': %.*s: %s", info.identity->name.c_str(), info.identity->tenant.c_str(),
                static_cast<int>(topic.size()), topic.data(), msg.c_str());
  nlohmann::json body{{"code", code}, {"message", msg}, {"topic", std::string(topic)}};
  if (!client_token.empty()) body["client_token"] = client_token;
  Broker* b = info.broker != nullptr ? info.broker : broker_;
  if (b == nullptr) return;
  Broker::DeviceMessage m;
  m.tenant = info.identity->tenant;
  m.device_id = info.identity->name;
  m.topic = topics::DeviceChannel(m.device_id) + "errors";
  m.payload = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  b->SendToDevice(m);
}

mqtt::ReasonCode AdminModule::OnDevicePublish(const ClientInfo& info, const Message& m) {
  if (info.identity == nullptr || !info.identity->device) {
    counters_.device_rejected.fetch_add(1, std::memory_order_relaxed);
    return ReasonCode::kNotAuthorized;  // only devices, each on its own channel
  }
  const PeerIdentity& who = *info.identity;
  std::string_view topic(m.topic);
  const std::string mount = MountOf(who.tenant);
  if (topic.substr(0, mount.size()) == mount) topic.remove_prefix(mount.size());
  const std::string own = topics::DeviceChannel(who.name);
  if (!topics::Under(topic, own)) {
    counters_.device_rejected.fetch_add(1, std::memory_order_relaxed);
    FMQ_LOG_INFO("device '%s' of tenant '%s' published to another device's channel: denied", who.name.c_str(),
                 who.tenant.c_str());
    return ReasonCode::kNotAuthorized;
  }
  const std::string_view what = topic.substr(own.size());
  if (m.payload.size() > opts_.max_device_message_bytes) {
    DeviceError(info, what, "too_large",
                "message of " + std::to_string(m.payload.size()) + " bytes exceeds the limit of " +
                    std::to_string(opts_.max_device_message_bytes),
                "");
    return ReasonCode::kPayloadFormatInvalid;
  }
  // The feature reading this topic checks its schema here, on the worker.
  const mgmt::Feature* owner = svc_->runtime().OwnerOf(what);
  if (owner == nullptr) {
    DeviceError(info, what, "unknown_topic", "no such device-channel topic (doc/device-api.md)", "");
    return ReasonCode::kTopicNameInvalid;
  }
  mgmt::DeviceMessage dm;
  dm.tenant = who.tenant;
  dm.device_id = who.name;
  dm.topic = std::string(what);
  // An empty payload is an empty object (e.g. jobs/get).
  std::string err = ParseObject(m.payload, true, &dm.body);
  if (err.empty()) dm.client_token = ClientToken(dm.body, &err);
  if (err.empty()) err = owner->Validate(what, dm.body);
  if (!err.empty()) {
    DeviceError(info, what, "bad_request", err, dm.client_token);
    return ReasonCode::kPayloadFormatInvalid;
  }
  // Answered here, on the worker owning the session (e.g. firmware blocks
  // read from the store): the management thread never sees it.
  if (std::vector<mgmt::WorkerReply> replies; owner->Serve(dm, &replies)) {
    Broker* b = info.broker != nullptr ? info.broker : broker_;
    counters_.device_served.fetch_add(1, std::memory_order_relaxed);
    for (mgmt::WorkerReply& r : replies) {
      if (b == nullptr) break;
      Broker::DeviceMessage out;
      out.tenant = who.tenant;
      out.device_id = who.name;
      out.topic = own + r.suffix;
      out.payload = std::move(r.payload);
      out.binary = r.binary;
      b->SendToDevice(out);
    }
    return ReasonCode::kSuccess;
  }
  bool busy = true;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (device_msgs_.size() < opts_.max_queued_device_messages) {
      device_msgs_.push_back(std::move(dm));
      busy = false;
    }
  }
  if (busy) {
    // PUBACK 0x97, and for 3.1.1 devices (no reason codes) an error naming it.
    counters_.device_busy.fetch_add(1, std::memory_order_relaxed);
    DeviceError(info, what, "busy", "the broker is busy: send it again in a second", dm.client_token, false);
    return ReasonCode::kQuotaExceeded;
  }
  counters_.device_messages.fetch_add(1, std::memory_order_relaxed);
  cv_.notify_one();
  return ReasonCode::kSuccess;
}

void AdminModule::OnDeviceOutcome(std::string_view, std::string_view, uint64_t token, DeviceOutcome o) {
  {
    std::lock_guard<std::mutex> l(mu_);
    outcomes_.push_back(Outcome{token, o});
  }
  counters_.outcomes.fetch_add(1, std::memory_order_relaxed);
  cv_.notify_one();
}

void AdminModule::SysCounters(const std::function<void(const char*, uint64_t)>& pub) {
  auto v = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  pub("management/requests", v(counters_.requests));
  pub("management/requests_refused_busy", v(counters_.refused_busy));
  pub("management/requests_refused_role", v(counters_.refused_role));
  pub("management/events_coalesced", v(counters_.events_coalesced));
  pub("management/device_messages", v(counters_.device_messages));
  pub("management/device_messages_served", v(counters_.device_served));
  pub("management/device_messages_rejected", v(counters_.device_rejected));
  pub("management/device_messages_refused_busy", v(counters_.device_busy));
  pub("management/delivery_outcomes", v(counters_.outcomes));
  pub("management/connects_blocked", v(counters_.blocked_connects));
  pub("management/connects_revoked", v(counters_.revoked_connects));
  pub("management/denied_unaudited", v(counters_.denied_unaudited));
  if (tls_ != nullptr) {
    const tls::TlsCounters& t = tls_->counters();
    pub("tls/handshakes", v(t.handshakes));
    pub("tls/resumed", v(t.resumed));
    pub("tls/failed", v(t.failed));
    pub("tls/revoked_refused", v(t.revoked_refused));
    if (const tls::TicketKeys* k = tls_->ticket_keys(); k != nullptr) {
      const tls::TicketCounters& c = k->counters();
      pub("tls/tickets/keys", k->key_count());
      pub("tls/tickets/sealed", v(c.sealed));
      pub("tls/tickets/opened", v(c.opened));
      pub("tls/tickets/refused_unknown_key", v(c.refused_unknown_key));
      pub("tls/tickets/refused_forged", v(c.refused_forged));
      pub("tls/tickets/refused_expired", v(c.refused_expired));
      pub("tls/tickets/refused_unloadable", v(c.refused_unloadable));
      pub("tls/tickets/rotations", v(c.rotations));
      pub("tls/tickets/write_errors", v(c.write_errors));
    }
  }
  std::lock_guard<std::mutex> l(feature_counters_mu_);
  for (const auto& [name, n] : feature_counters_) pub(("management/" + name).c_str(), n);
}

}  // namespace fmq

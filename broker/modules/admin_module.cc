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

void AdminModule::ThreadMain() {
  std::unique_lock<std::mutex> l(mu_);
  int64_t next_duties_ms = clock_->NowMs() + 1000;
  while (true) {
    cv_.wait_for(l, std::chrono::seconds(1), [this] { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    // Periodic duties, once a second whatever the load: denial windows that
    // ended, then the service's own (CRL re-signing).
    if (const int64_t now = clock_->NowMs(); now >= next_duties_ms) {
      next_duties_ms = now + 1000;
      std::vector<Denied> ended = TakeEndedDenials(now);
      l.unlock();
      for (const Denied& d : ended) svc_->AuditDenied(d.actor, d.action, d.device_id, d.why);
      Completion c;
      svc_->Tick(&c.fx);
      if (!c.fx.empty()) Post(std::move(c));
      l.lock();
      continue;
    }
    if (jobs_.empty()) continue;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    if (std::holds_alternative<Request>(job)) --queued_requests_;
    if (auto* ev = std::get_if<std::vector<admin::ConnEvent>>(&job)) {
      // Coalesce a run of event jobs (a reconnect storm) into one batch.
      while (!jobs_.empty() && ev->size() < 4096) {
        auto* next = std::get_if<std::vector<admin::ConnEvent>>(&jobs_.front());
        if (next == nullptr) break;
        ev->insert(ev->end(), std::make_move_iterator(next->begin()), std::make_move_iterator(next->end()));
        jobs_.pop_front();
      }
      queued_events_ -= ev->size();
    }
    l.unlock();
    if (auto* r = std::get_if<Request>(&job)) {
      Completion c;
      c.tenant = r->actor.tenant;
      c.reply_topic = r->reply_topic;
      c.correlation = r->correlation;
      c.payload = svc_->Handle(r->actor, r->payload, &c.fx);
      Post(std::move(c));
    } else if (auto* ev = std::get_if<std::vector<admin::ConnEvent>>(&job)) {
      svc_->OnConnectivity(*ev);
    } else if (auto* d = std::get_if<Denied>(&job)) {
      svc_->AuditDenied(d->actor, d->action, d->device_id, d->why);
    }
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
    // 0/0 in the tenant record: the broker-wide default applies.
    if (q.max_connections != 0 || q.max_publish_rate != 0) {
      const Broker::TenantQuota quota{q.max_connections, q.max_publish_rate};
      if (cluster_ == nullptr) {
        broker_->SetTenantQuota(q.tenant, quota);
      } else {
        cluster_->PostAll([tenant = q.tenant, quota](Broker& b) { b.SetTenantQuota(tenant, quota); });
      }
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
  // thread coalesces runs of event jobs into one write batch.
  {
    std::lock_guard<std::mutex> l(mu_);
    if (queued_events_ >= opts_.max_queued_events) {
      if (counters_.events_dropped.fetch_add(1, std::memory_order_relaxed) % 10000 == 0) {
        FMQ_LOG_WARN("connectivity events dropped: the management thread is %zu events behind", queued_events_);
      }
      return;
    }
    ++queued_events_;
    jobs_.push_back(std::vector<admin::ConnEvent>{
        admin::ConnEvent{tenant, info.identity->name, std::string(reason), std::string(info.peer), connected, now}});
  }
  cv_.notify_one();
}

void AdminModule::OnConnected(const ClientInfo& info) { Event(info, true, ""); }

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

}  // namespace fmq

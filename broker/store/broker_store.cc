#include "broker/store/broker_store.h"

#include <map>

#include "common/log.h"

namespace fmq {

using storage::Family;
namespace keys = storage::keys;
using mqtt::PropertyId;

namespace {

storage::TenantId TenantOf(const Session& s) { return storage::TenantId::FromAuthenticated(s.tenant()); }

// "$T/<tenant>/<topic>" -> (tenant, topic); anything else is anonymous.
std::pair<std::string, std::string> SplitMount(const std::string& topic) {
  if (topic.rfind("$T/", 0) == 0) {
    size_t slash = topic.find('/', 3);
    if (slash != std::string::npos) return {topic.substr(3, slash - 3), topic.substr(slash + 1)};
  }
  return {"", topic};
}

}  // namespace

std::unique_ptr<fb::MessageRecT> BrokerStore::ToRecord(const Message& m) const {
  auto r = std::make_unique<fb::MessageRecT>();
  r->topic = m.topic;
  r->payload.assign(m.payload.begin(), m.payload.end());
  r->qos = m.qos;
  r->retain = m.retain;
  const auto& p = m.props;
  r->has_payload_format = p.Has(PropertyId::kPayloadFormatIndicator);
  r->payload_format = p.payload_format;
  if (p.Has(PropertyId::kContentType)) r->content_type = p.content_type;
  if (p.Has(PropertyId::kResponseTopic)) r->response_topic = p.response_topic;
  if (p.Has(PropertyId::kCorrelationData))
    r->correlation_data.assign(p.correlation_data.begin(), p.correlation_data.end());
  for (const auto& [k, v] : p.user_properties) {
    auto up = std::make_unique<fb::UserPropertyT>();
    up->key = k;
    up->value = v;
    r->user_properties.push_back(std::move(up));
  }
  r->expiry_at_ms = m.has_expiry ? ToWall(m.expiry_at_ms) : 0;
  return r;
}

MessagePtr BrokerStore::FromRecord(const fb::MessageRecT& r) const {
  auto m = std::make_shared<Message>();
  m->topic = r.topic;
  m->payload.assign(r.payload.begin(), r.payload.end());
  m->qos = r.qos;
  m->retain = r.retain;
  auto& p = m->props;
  if (r.has_payload_format) {
    p.payload_format = r.payload_format;
    p.Mark(PropertyId::kPayloadFormatIndicator);
  }
  if (!r.content_type.empty()) {
    p.content_type = r.content_type;
    p.Mark(PropertyId::kContentType);
  }
  if (!r.response_topic.empty()) {
    p.response_topic = r.response_topic;
    p.Mark(PropertyId::kResponseTopic);
  }
  if (!r.correlation_data.empty()) {
    p.correlation_data.assign(r.correlation_data.begin(), r.correlation_data.end());
    p.Mark(PropertyId::kCorrelationData);
  }
  for (const auto& up : r.user_properties) {
    if (up) p.user_properties.emplace_back(up->key, up->value);
  }
  if (!p.user_properties.empty()) p.Mark(PropertyId::kUserProperty);
  if (r.expiry_at_ms != 0) {
    m->has_expiry = true;
    m->expiry_at_ms = ToMono(r.expiry_at_ms);
  }
  SealMessage(m.get());
  return m;
}

void BrokerStore::SaveSession(const Session& s) {
  fb::SessionT r;
  r.client_id = s.client_id;
  r.version = static_cast<uint8_t>(s.version);
  r.expiry_s = s.expiry_s;
  r.disconnected_at_ms = s.conn == nullptr ? ToWall(s.disconnected_at_ms) : 0;
  r.next_seq = s.next_seq;
  for (const auto& [filter, o] : s.subscriptions) {
    auto sub = std::make_unique<fb::SubscriptionT>();
    sub->filter = filter;
    sub->qos = o.qos;
    sub->no_local = o.no_local;
    sub->retain_as_published = o.retain_as_published;
    sub->retain_handling = o.retain_handling;
    sub->subscription_id = o.subscription_id;
    r.subscriptions.push_back(std::move(sub));
  }
  if (s.will) {
    Message wm;
    wm.topic = s.will->topic;
    wm.payload = s.will->payload;
    wm.qos = s.will->qos;
    wm.retain = s.will->retain;
    wm.props = s.will->props;
    wm.props.Clear(PropertyId::kMessageExpiryInterval);
    wm.props.Clear(PropertyId::kWillDelayInterval);
    r.will = ToRecord(wm);
    r.has_will_expiry = s.will->props.Has(PropertyId::kMessageExpiryInterval);
    r.will_expiry_s = s.will->props.message_expiry;
    r.will_delay_s = s.will->props.will_delay;
  }
  batch_.Put(Family::kSessions, keys::Session(TenantOf(s), s.client_id), storage::EncodeRecord<fb::Session>(r));
}

void BrokerStore::DeleteSession(const Session& s) {
  batch_.Delete(Family::kSessions, keys::Session(TenantOf(s), s.client_id));
  for (const auto& [id, in] : s.inflight) {
    batch_.Delete(Family::kSessionMessages, keys::SessionMessage(TenantOf(s), s.client_id, in.d.seq));
  }
  for (const Delivery& d : s.queue) {
    batch_.Delete(Family::kSessionMessages, keys::SessionMessage(TenantOf(s), s.client_id, d.seq));
  }
  for (uint16_t id : s.inbound_qos2) {
    batch_.Delete(Family::kSessionQos2, keys::SessionQos2(TenantOf(s), s.client_id, id));
  }
}

void BrokerStore::SaveDelivery(const Session& s, const Delivery& d, DeliveryState st, uint16_t packet_id) {
  fb::SessionMessageT r;
  if (d.msg) r.message = ToRecord(*d.msg);
  r.qos = d.qos;
  r.retain = d.retain;
  r.subscription_ids = d.subscription_ids;
  r.state = static_cast<fb::DeliveryState>(st);
  r.packet_id = packet_id;
  batch_.Put(Family::kSessionMessages, keys::SessionMessage(TenantOf(s), s.client_id, d.seq),
             storage::EncodeRecord<fb::SessionMessage>(r));
}

void BrokerStore::DeleteDelivery(const Session& s, uint64_t seq) {
  batch_.Delete(Family::kSessionMessages, keys::SessionMessage(TenantOf(s), s.client_id, seq));
}

void BrokerStore::SaveInboundQos2(const Session& s, uint16_t packet_id, bool present) {
  std::string key = keys::SessionQos2(TenantOf(s), s.client_id, packet_id);
  if (present) {
    fb::InboundQos2T r;
    r.packet_id = packet_id;
    batch_.Put(Family::kSessionQos2, std::move(key), storage::EncodeRecord<fb::InboundQos2>(r));
  } else {
    batch_.Delete(Family::kSessionQos2, std::move(key));
  }
}

void BrokerStore::SaveRetained(const Message& m) {
  auto [tenant, topic] = SplitMount(m.topic);
  std::string key = keys::Retained(storage::TenantId::FromAuthenticated(tenant), topic);
  if (m.payload.empty()) {
    batch_.Delete(Family::kRetained, std::move(key));
    return;
  }
  fb::RetainedT r;
  r.message = ToRecord(m);
  r.message->topic = topic;  // the tenant is in the key
  batch_.Put(Family::kRetained, std::move(key), storage::EncodeRecord<fb::Retained>(r));
}

void BrokerStore::Flush(std::function<void(bool ok)> done) {
  storage::WriteBatch b;
  std::swap(b, batch_);
  writer_->Submit(std::move(b), std::move(done));
}

absl::Status BrokerStore::Load(storage::KvStore& kv, Broker& broker, LoadStats* st) {
  return Load(kv, std::vector<Broker*>{&broker}, st);
}

absl::Status BrokerStore::Load(storage::KvStore& kv, const std::vector<Broker*>& workers, LoadStats* st) {
  const std::string prefix;  // every tenant
  auto corrupt = [&](const absl::Status& s) {
    st->skipped_corrupt++;
    FMQ_LOG_ERROR("storage: skipping unreadable record: %s", std::string(s.message()).c_str());
  };
  // Sessions.
  std::map<std::string, std::unique_ptr<Session>> sessions;  // by SessionKey
  std::map<std::string, int64_t> offline;
  const int64_t wall_now = clock_->WallMs();
  absl::Status s = kv.ScanPrefix(Family::kSessions, prefix, [&](std::string_view k, std::string_view v) {
    fb::SessionT r;
    absl::Status d = storage::DecodeRecord<fb::Session>(Family::kSessions, k, v, &r);
    if (!d.ok()) {
      corrupt(d);
      return true;
    }
    storage::KeyReader kr(k);
    std::string tenant;
    if (!kr.Str(&tenant)) {
      corrupt(storage::CorruptRecord(Family::kSessions, k, "bad key"));
      return true;
    }
    auto sess = std::make_unique<Session>();
    sess->client_id = r.client_id;
    sess->set_tenant(workers[0]->InternTenant(tenant));  // one TenantNames for every worker
    sess->version = r.version == 4 ? mqtt::Version::kV311 : mqtt::Version::kV5;
    sess->expiry_s = r.expiry_s;
    sess->next_seq = std::max<uint64_t>(r.next_seq, 1);
    for (const auto& sub : r.subscriptions) {
      if (!sub) continue;
      SubOptions o;
      o.qos = sub->qos;
      o.no_local = sub->no_local;
      o.retain_as_published = sub->retain_as_published;
      o.retain_handling = sub->retain_handling;
      o.subscription_id = sub->subscription_id;
      sess->subscriptions[sub->filter] = o;
    }
    if (r.will) {
      mqtt::Will w;
      MessagePtr wm = FromRecord(*r.will);
      w.topic = wm->topic;
      w.payload = wm->payload;
      w.qos = wm->qos;
      w.retain = wm->retain;
      w.props = wm->props;
      if (r.has_will_expiry) {
        w.props.message_expiry = r.will_expiry_s;
        w.props.Mark(PropertyId::kMessageExpiryInterval);
      }
      w.props.will_delay = r.will_delay_s;
      if (r.will_delay_s) w.props.Mark(PropertyId::kWillDelayInterval);
      sess->will = std::make_unique<mqtt::Will>(std::move(w));
    }
    const std::string skey = SessionKey(tenant, r.client_id);
    offline[skey] = r.disconnected_at_ms > 0 ? std::max<int64_t>(0, wall_now - r.disconnected_at_ms) : 0;
    sessions[skey] = std::move(sess);
    return true;
  });
  if (!s.ok()) return s;
  // Their messages, in seq order per session.
  s = kv.ScanPrefix(Family::kSessionMessages, prefix, [&](std::string_view k, std::string_view v) {
    storage::KeyReader kr(k);
    std::string tenant, client;
    uint64_t seq;
    if (!kr.Str(&tenant) || !kr.Str(&client) || !kr.U64(&seq)) {
      corrupt(storage::CorruptRecord(Family::kSessionMessages, k, "bad key"));
      return true;
    }
    auto it = sessions.find(SessionKey(tenant, client));
    if (it == sessions.end()) return true;  // orphan of a deleted session
    fb::SessionMessageT r;
    absl::Status d = storage::DecodeRecord<fb::SessionMessage>(Family::kSessionMessages, k, v, &r);
    if (!d.ok()) {
      corrupt(d);
      return true;
    }
    Session& sess = *it->second;
    Delivery dl;
    dl.seq = seq;
    dl.qos = r.qos;
    dl.retain = r.retain;
    dl.subscription_ids = r.subscription_ids;
    if (r.message) dl.msg = FromRecord(*r.message);
    sess.next_seq = std::max(sess.next_seq, seq + 1);
    if (r.state == fb::DeliveryState::Queued) {
      if (!dl.msg) return true;
      sess.queue.push_back(std::move(dl));
    } else {
      Inflight& in = sess.inflight[r.packet_id];
      in.released = r.state == fb::DeliveryState::Released;
      in.d = std::move(dl);
    }
    st->messages++;
    return true;
  });
  if (!s.ok()) return s;
  s = kv.ScanPrefix(Family::kSessionQos2, prefix, [&](std::string_view k, std::string_view) {
    storage::KeyReader kr(k);
    std::string tenant, client;
    uint64_t id;
    if (kr.Str(&tenant) && kr.Str(&client) && kr.U64(&id)) {
      auto it = sessions.find(SessionKey(tenant, client));
      if (it != sessions.end()) it->second->inbound_qos2.insert(static_cast<uint16_t>(id));
    }
    return true;
  });
  if (!s.ok()) return s;
  const Cluster* cluster = workers.size() > 1 ? workers[0]->cluster() : nullptr;
  for (auto& [id, sess] : sessions) {
    st->sessions++;
    Broker* home = cluster != nullptr ? workers[cluster->HomeOf(sess->tenant(), sess->client_id)] : workers[0];
    home->RestoreSession(std::move(sess), offline[id]);
  }
  // Retained messages.
  return kv.ScanPrefix(Family::kRetained, prefix, [&](std::string_view k, std::string_view v) {
    fb::RetainedT r;
    absl::Status d = storage::DecodeRecord<fb::Retained>(Family::kRetained, k, v, &r);
    storage::KeyReader kr(k);
    std::string tenant;
    if (!d.ok() || !r.message || !kr.Str(&tenant)) {
      corrupt(d.ok() ? storage::CorruptRecord(Family::kRetained, k, "no message or bad key") : d);
      return true;
    }
    MessagePtr m = FromRecord(*r.message);
    if (!tenant.empty()) {
      auto mounted = std::make_shared<Message>(*m);
      mounted->topic = MountOf(tenant) + mounted->topic;
      m = std::move(mounted);
    }
    for (Broker* b : workers) b->RestoreRetained(m);  // every worker answers SUBSCRIBEs
    st->retained++;
    return true;
  });
}

}  // namespace fmq

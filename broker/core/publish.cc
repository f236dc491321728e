// The publish path: inbound PUBLISH and its QoS flows, routing through the
// subscription tree, per-session delivery with inflight windows and bounded
// queues, and the outbound PUBLISH encoder.
#include <algorithm>
#include <chrono>

#include "broker/core/broker.h"
#include "broker/mqtt/utf8.h"
#include "common/log.h"
#include "common/mgmt_topics.h"

namespace fmq {

using mqtt::PacketType;
using mqtt::PropertyId;
using mqtt::ReasonCode;
using mqtt::Version;

namespace {

// Properties forwarded unchanged to subscribers [MQTT-3.3.2-15..20].
constexpr uint64_t kForwarded =
    mqtt::Properties::Bit(PropertyId::kPayloadFormatIndicator) | mqtt::Properties::Bit(PropertyId::kContentType) |
    mqtt::Properties::Bit(PropertyId::kResponseTopic) | mqtt::Properties::Bit(PropertyId::kCorrelationData) |
    mqtt::Properties::Bit(PropertyId::kUserProperty);

}  // namespace

void SealMessage(Message* m) {
  m->wire_props.clear();
  if (m->props.present == 0) return;
  std::string block;
  mqtt::Writer bw(&block);
  mqtt::EncodeProperties(m->props, bw);
  mqtt::Reader r(block);
  uint32_t len = 0;
  mqtt::Error err;
  r.Varint(&len, &err);  // drop the length prefix
  m->wire_props.assign(r.Rest());
}

void Broker::SendAck(Connection& c, PacketType t, uint16_t id, ReasonCode rc) {
  mqtt::Ack a;
  a.type = t;
  a.packet_id = id;
  a.reason = rc;
  c.Write(a);
}

void Broker::AckWhenDurable(Connection& c, mqtt::Packet ack, const AckBarrierPtr& barrier, bool record_after) {
  if (barrier != nullptr) {
    // Routed to every worker: acknowledged when the last one is durable.
    c.pending_acks_.push_back(Connection::PendingAck{std::move(ack), barrier->ticket, false, record_after});
    if (persistence_ != nullptr && persistence_->dirty()) {
      persistence_->Flush([this, barrier](bool ok) { ReleaseBarrier(barrier, ok); });
    } else {
      ReleaseBarrier(barrier, true);
    }
    return;
  }
  if (persistence_ != nullptr && persistence_->dirty()) {
    const uint64_t ticket = next_ticket_++;
    c.pending_acks_.push_back(Connection::PendingAck{std::move(ack), ticket, false});
    const uint64_t conn_id = c.id();
    persistence_->Flush([this, conn_id, ticket](bool ok) { OnDurable(conn_id, ticket, ok); });
    return;
  }
  if (!c.pending_acks_.empty()) {
    c.pending_acks_.push_back(Connection::PendingAck{std::move(ack), 0, true});  // keeps PUBLISH order
    return;
  }
  c.Write(ack);
}

void Broker::ReleaseBarrier(const AckBarrierPtr& b, bool ok) {
  if (!b->Release(ok)) return;
  if (b->origin == index_) {
    OnDurable(b->conn_id, b->ticket, b->ok());
  } else {
    cluster_->link()->Acknowledge(index_, b->origin, b->conn_id, b->ticket, b->ok());
  }
}

void Broker::OnDurable(uint64_t conn_id, uint64_t ticket, bool ok) {
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;  // gone; the client will resend unacknowledged messages
  Connection& c = *it->second;
  for (auto& pa : c.pending_acks_) {
    if (pa.ticket != ticket) continue;
    if (ok && pa.record_after) {
      // Every copy is durable: now the dedupe record, then the PUBREC.
      pa.record_after = false;
      const auto* a = std::get_if<mqtt::Ack>(&pa.ack);
      if (a != nullptr && persistence_ != nullptr && c.session_ != nullptr) {
        persistence_->SaveInboundQos2(*c.session_, a->packet_id, true);
        pa.ticket = next_ticket_++;
        persistence_->Flush([this, conn_id, t = pa.ticket](bool done) { OnDurable(conn_id, t, done); });
        return;
      }
    }
    pa.ready = true;
    if (!ok) {
      if (auto* a = std::get_if<mqtt::Ack>(&pa.ack)) {
        stats_.storage_ack_failures++;
        if (c.version_ != Version::kV5) {
          // 3.1.1 cannot refuse a PUBLISH: close without acking so the
          // client sends it again later.
          Close(c, DisconnectReason::kServerShutdown, ReasonCode::kImplementationSpecificError, "storage write failed");
          return;
        }
        a->reason = ReasonCode::kImplementationSpecificError;
        a->props.reason_string = "storage write failed";
        a->props.Mark(PropertyId::kReasonString);
        if (a->type == PacketType::kPubrec) c.session_->inbound_qos2.erase(a->packet_id);
      }
    }
    break;
  }
  DrainAcks(c);
}

void Broker::DrainAcks(Connection& c) {
  while (!c.pending_acks_.empty() && c.pending_acks_.front().ready) {
    c.Write(c.pending_acks_.front().ack);
    c.pending_acks_.pop_front();
  }
}

void Broker::HandlePublish(Connection& c, mqtt::Publish& p) {
  stats_.publish_received++;
  Session& s = *c.session_;
  const bool v5 = c.version_ == Version::kV5;
  std::string_view topic = p.topic;
  if (v5 && p.props.Has(PropertyId::kTopicAlias)) {
    const uint16_t alias = p.props.topic_alias;
    if (alias > opts_.topic_alias_maximum) {
      Close(c, DisconnectReason::kProtocolError, ReasonCode::kTopicAliasInvalid,
            "MQTT-3.3.2-9 topic alias above our Topic Alias Maximum");
      return;
    }
    std::vector<std::string>& aliases = c.extras().in_aliases;
    if (aliases.size() <= alias) aliases.resize(opts_.topic_alias_maximum + 1u);
    if (!topic.empty()) {
      aliases[alias].assign(topic);
    } else if (aliases[alias].empty()) {
      Close(c, DisconnectReason::kProtocolError, ReasonCode::kProtocolError,
            "MQTT-3.3.2-8 topic alias used before it was set");
      return;
    } else {
      topic = aliases[alias];
    }
  }
  if (v5 && p.props.Has(PropertyId::kSubscriptionIdentifier)) {
    Close(c, DisconnectReason::kProtocolError, ReasonCode::kProtocolError,
          "MQTT-3.3.4-6 PUBLISH from a client carries a subscription identifier");
    return;
  }
  mqtt::Error e = mqtt::ValidateTopicName(topic, opts_.topic_limits);
  if (!e.ok()) {
    Close(c, DisconnectReason::kProtocolError, e.code, e.rule);
    return;
  }
  const PacketType ack_type = p.qos == 2 ? PacketType::kPubrec : PacketType::kPuback;
  if (p.qos == 2) {
    if (s.inbound_qos2.contains(p.packet_id)) {
      // A retransmission of a message we already own [MQTT-4.3.3-9]: do not
      // route it again, just repeat PUBREC.
      SendAck(c, ack_type, p.packet_id, ReasonCode::kSuccess);
      return;
    }
    if (s.inbound_qos2.size() + c.pending_acks_.size() >= opts_.receive_maximum) {
      Close(c, DisconnectReason::kProtocolError, ReasonCode::kReceiveMaximumExceeded,
            "MQTT-3.3.4-9 more unacknowledged QoS 2 PUBLISHes than our Receive Maximum");
      return;
    }
  }
  // Set when a QoS 1/2 message goes to the other workers: its ack then
  // also waits for their writes (AckBarrier).
  AckBarrierPtr barrier;
  auto reply = [&](ReasonCode rc) {
    if (p.qos == 0) return;
    if (!v5 && mqtt::IsError(rc)) rc = ReasonCode::kSuccess;  // 3.1.1: ack and drop
    // The QoS 2 dedupe record: with one worker it commits atomically with
    // the message's copies (one batch). With several, the copies are written
    // by several workers, so it is written only after all of them are
    // durable: a crash in between can make a resent PUBLISH a duplicate,
    // never lose an acknowledged one (doc/architecture.md).
    bool record_after = false;
    if (p.qos == 2 && !mqtt::IsError(rc)) {
      s.inbound_qos2.insert(p.packet_id);
      if (persistence_ != nullptr && s.durable()) {
        if (barrier != nullptr) {
          record_after = true;
        } else {
          persistence_->SaveInboundQos2(s, p.packet_id, true);
        }
      }
    }
    mqtt::Ack a;
    a.type = ack_type;
    a.packet_id = p.packet_id;
    a.reason = rc;
    AckWhenDurable(c, std::move(a), barrier, record_after);  // [MQTT-4.3.2-2] acked once stored
  };
  if (c.tenant_state_ != nullptr && !TakePublishToken(*static_cast<TenantState*>(c.tenant_state_))) {
    stats_.quota_publish_refused++;
    FMQ_LOG_DEBUG("client '%s' publish refused: tenant over max_publish_rate", c.client_id_.c_str());
    reply(ReasonCode::kQuotaExceeded);  // 3.1.1: acknowledged and dropped
    return;
  }
  if (p.qos > 0 && persistence_ != nullptr && !persistence_->healthy()) {
    stats_.publish_refused_storage++;
    if (!v5) {
      Close(c, DisconnectReason::kServerShutdown, ReasonCode::kImplementationSpecificError,
            "storage unavailable: QoS 1/2 refused");
      return;
    }
    mqtt::Ack a;
    a.type = ack_type;
    a.packet_id = p.packet_id;
    a.reason = ReasonCode::kImplementationSpecificError;
    a.props.reason_string = "storage unavailable";
    a.props.Mark(PropertyId::kReasonString);
    AckWhenDurable(c, std::move(a));
    return;
  }
  if (v5 && p.props.payload_format == 1 && !mqtt::IsValidUtf8(p.payload)) {
    stats_.publish_denied++;
    c.link_.denied++;
    reply(ReasonCode::kPayloadFormatInvalid);  // [MQTT-3.3.2-4]
    return;
  }
  auto m = std::make_shared<Message>();
  m->topic = c.mount_;  // the tenant's namespace, invisible to clients
  m->topic.append(topic);
  m->payload.assign(p.payload);
  m->qos = p.qos;
  m->retain = p.retain;
  m->origin_session = s.id;
  if (v5) {
    if (p.props.Has(PropertyId::kMessageExpiryInterval)) {
      m->has_expiry = true;
      m->expiry_at_ms = NowMs() + int64_t{p.props.message_expiry} * 1000;
    }
    p.props.present &= kForwarded;
    p.props.subscription_ids.clear();
    m->props = std::move(p.props);
    SealMessage(m.get());
  }
  if (topic.substr(0, opts_.control_prefix.size()) == opts_.control_prefix) {
    reply(hooks_->OnControlPublish(InfoOf(c), *m));
    return;
  }
  if (topics::Under(topic, topics::kDeviceRoot)) {
    const ReasonCode rc = hooks_->OnDevicePublish(InfoOf(c), *m);
    if (rc != ReasonCode::kSuccess) {
      stats_.publish_denied++;
      c.link_.denied++;
    }
    reply(rc);
    return;
  }
  if (!acl_->CanPublish(c.identity(), c.client_id_, c.username(), topic)) {
    stats_.publish_denied++;
    c.link_.denied++;
    FMQ_LOG_DEBUG("client '%s' publish to '%.*s' denied by ACL", c.client_id_.c_str(), static_cast<int>(topic.size()),
                  topic.data());
    reply(ReasonCode::kNotAuthorized);  // 3.1.1: acknowledged and dropped
    return;
  }
  if (topic[0] == '$') {
    stats_.publish_denied++;  // clients may not publish into $SYS and kin
    c.link_.denied++;
    FMQ_LOG_DEBUG("client '%s' publish to '%s' denied: reserved '$' topic", c.client_id_.c_str(), m->topic.c_str());
    reply(ReasonCode::kNotAuthorized);
    return;
  }
  if (p.qos > 0 && MultiWorker())
    barrier = std::make_shared<AckBarrier>(index_, c.id(), next_ticket_++, cluster_->size());
  size_t matched = Route(m, barrier);
  // With several workers the others' matches are not known here: 0x10 is
  // only said when this is the only worker.
  reply(matched == 0 && v5 && !MultiWorker() ? ReasonCode::kNoMatchingSubscribers : ReasonCode::kSuccess);
}

void Broker::HandleAck(Connection& c, const mqtt::Ack& a) {
  Session& s = *c.session_;
  switch (a.type) {
    case PacketType::kPuback: {
      auto it = s.inflight.find(a.packet_id);
      if (it != s.inflight.end() && it->second.d.qos == 1) {
        if (it->second.d.token != 0) {
          ReportOutcome(s, it->second.d, DeviceOutcome::kAcked);
        } else if (persistence_ != nullptr && s.persisted) {
          persistence_->DeleteDelivery(s, it->second.d.seq);
        }
        s.inflight.erase(it);
        PumpQueue(s);
      }
      return;
    }
    case PacketType::kPubrec: {
      auto it = s.inflight.find(a.packet_id);
      if (it == s.inflight.end() || it->second.d.qos != 2) {
        SendAck(c, PacketType::kPubrel, a.packet_id, ReasonCode::kPacketIdentifierNotFound);
        return;
      }
      if (mqtt::IsError(a.reason)) {  // the receiver refused it [MQTT-4.3.3]
        if (persistence_ != nullptr && s.persisted) persistence_->DeleteDelivery(s, it->second.d.seq);
        s.inflight.erase(it);
        PumpQueue(s);
        return;
      }
      it->second.released = true;
      if (persistence_ != nullptr && s.persisted) {
        persistence_->SaveDelivery(s, it->second.d, DeliveryState::kReleased, a.packet_id);
      }
      it->second.d.msg.reset();  // the payload is no longer needed
      SendAck(c, PacketType::kPubrel, a.packet_id, ReasonCode::kSuccess);
      return;
    }
    case PacketType::kPubrel: {
      bool known = s.inbound_qos2.erase(a.packet_id) > 0;
      if (known && persistence_ != nullptr && s.persisted) persistence_->SaveInboundQos2(s, a.packet_id, false);
      SendAck(c, PacketType::kPubcomp, a.packet_id,
              known ? ReasonCode::kSuccess : ReasonCode::kPacketIdentifierNotFound);
      return;
    }
    case PacketType::kPubcomp: {
      auto it = s.inflight.find(a.packet_id);
      if (it != s.inflight.end() && it->second.released) {
        if (persistence_ != nullptr && s.persisted) persistence_->DeleteDelivery(s, it->second.d.seq);
        s.inflight.erase(it);
        PumpQueue(s);
      }
      return;
    }
    default:
      return;
  }
}

size_t Broker::PublishInternal(std::string topic, std::string payload, bool retain, uint8_t qos) {
  auto m = std::make_shared<Message>();
  m->topic = std::move(topic);
  m->payload = std::move(payload);
  m->retain = retain;
  m->qos = qos;
  return Route(m);
}

size_t Broker::PublishReply(std::string topic, std::string payload, std::string_view correlation) {
  auto m = std::make_shared<Message>();
  m->topic = std::move(topic);
  m->payload = std::move(payload);
  m->qos = 1;
  m->props.content_type = "application/json";
  m->props.Mark(PropertyId::kContentType);
  if (!correlation.empty()) {
    m->props.correlation_data.assign(correlation);
    m->props.Mark(PropertyId::kCorrelationData);
  }
  SealMessage(m.get());
  return Route(m);
}

uint64_t Broker::StampNow() const { return ::fmq::StampNow(index_); }

size_t Broker::Route(const MessagePtr& msg, const AckBarrierPtr& ack) {
  if (!MultiWorker()) return RouteLocal(msg, false);
  msg->stamp = StampNow();
  const size_t n = RouteLocal(msg, false);
  cluster_->link()->Forward(index_, msg, ack);
  return n;
}

void Broker::RouteFromPeer(const MessagePtr& msg, const AckBarrierPtr& ack) {
  RouteLocal(msg, true);
  if (ack == nullptr) return;
  if (persistence_ != nullptr && persistence_->dirty()) {
    peer_barriers_.push_back(ack);  // released when this batch's write is durable
  } else {
    ReleaseBarrier(ack, true);  // nothing stored here for it
  }
}

void Broker::FlushPeerWrites() {
  if (peer_barriers_.empty()) return;
  persistence_->Flush([this, waiting = std::move(peer_barriers_)](bool ok) {
    for (const AckBarrierPtr& b : waiting) ReleaseBarrier(b, ok);
  });
  peer_barriers_.clear();
}

size_t Broker::RouteLocal(const MessagePtr& msg, bool from_peer) {
  if (msg->retain) {
    // Every worker keeps the retained messages (a SUBSCRIBE is answered
    // locally), newest stamp wins. One worker stores each topic: its owner
    // (a hash of the topic), which applies the updates in stamp order too,
    // so what it writes last is the newest, also after a restart; the
    // publisher's PUBACK waits for the owner's write (AckBarrier).
    const bool current = retained_.Set(msg);
    const bool stores = MultiWorker() ? cluster_->HomeOf({}, msg->topic) == index_ : !from_peer;
    if (current && stores && persistence_ != nullptr) persistence_->SaveRetained(*msg);
  }
  matches_.clear();
  groups_.clear();
  tree_.Match(
      msg->topic,
      [&](const TopicTree::Subscriber& sub) {
        if (sub.opts.no_local && sub.session->id == msg->origin_session) return;  // [MQTT-3.8.3-3]
        matches_.push_back({sub.session, sub.opts});
      },
      [&](TopicTree::SharedGroup& g) { groups_.push_back(&g); });
  std::vector<Match> matches;
  matches.swap(matches_);
  std::vector<TopicTree::SharedGroup*> groups;
  groups.swap(groups_);
  size_t delivered = 0;
  // Overlapping subscriptions of one session yield one message with the
  // highest QoS and every subscription identifier [MQTT-3.3.4-2], [MQTT-3.3.4-3].
  if (matches.size() > 1) {
    std::sort(matches.begin(), matches.end(), [](const Match& a, const Match& b) { return a.session < b.session; });
  }
  for (size_t i = 0; i < matches.size();) {
    Delivery d;
    d.msg = msg;
    Session* s = matches[i].session;
    bool rap = false;
    for (; i < matches.size() && matches[i].session == s; ++i) {
      const SubOptions& o = matches[i].opts;
      d.qos = std::max(d.qos, std::min(msg->qos, o.qos));
      rap |= o.retain_as_published;
      if (o.subscription_id) d.subscription_ids.push_back(o.subscription_id);
    }
    d.retain = rap && msg->retain;  // [MQTT-3.3.1-12], [MQTT-3.3.1-13]
    Deliver(*s, std::move(d));
    ++delivered;
  }
  // Shared subscriptions: one member per group [MQTT-4.8.2]. Several
  // workers with members: the mask in force at the message's stamp picks
  // one, the same on each (SharedMask).
  for (TopicTree::SharedGroup* g : groups) {
    if (g->members.empty()) continue;
    if (g->workers != nullptr && PickWorker(g->workers->At(msg->stamp), msg->stamp) != index_) continue;
    DeliverToGroup(*g, msg);
    ++delivered;
  }
  // Groups whose last member here left after this message was stamped: if
  // the message picked this worker, no one else delivers it.
  for (const Departed& d : departed_) {
    if (msg->stamp < d.left && PickWorker(d.mask->At(msg->stamp), msg->stamp) == index_ &&
        mqtt::TopicMatches(d.filter, msg->topic)) {
      Redirect(d, msg, 0);
    }
  }
  matches.clear();
  matches.swap(matches_);
  groups.clear();
  groups.swap(groups_);
  return delivered;
}

void Broker::DeliverToGroup(TopicTree::SharedGroup& g, const MessagePtr& msg) {
  const size_t n = g.members.size();
  size_t pick = g.next % n;
  for (size_t k = 0; k < n; ++k) {
    size_t idx = (g.next + k) % n;
    Session* s = g.members[idx].session;
    if (s->conn && s->queue.empty() && s->inflight.size() < s->conn->send_quota_) {
      pick = idx;
      break;
    }
  }
  g.next = pick + 1;
  const TopicTree::Subscriber& m = g.members[pick];
  Delivery d;
  d.msg = msg;
  d.qos = std::min(msg->qos, m.opts.qos);
  d.retain = m.opts.retain_as_published && msg->retain;
  if (m.opts.subscription_id) d.subscription_ids.push_back(m.opts.subscription_id);
  Deliver(*m.session, std::move(d));
}

void Broker::Redirect(const Departed& d, const MessagePtr& msg, uint32_t hops) {
  const uint64_t now = d.mask->Now() & ~(uint64_t{1} << index_);
  if (now == 0 || hops >= cluster_->size()) {
    stats_.publish_dropped_queue_full++;  // no member left anywhere: nobody to deliver to
    return;
  }
  const uint32_t to = PickWorker(now, msg->stamp);
  cluster_->link()->Post(to, [filter = d.filter, group = d.group, msg, hops](Broker& b) {
    b.DeliverRedirected(filter, group, msg, hops + 1);
  });
}

void Broker::DeliverRedirected(const std::string& filter, const std::string& group, const MessagePtr& msg,
                               uint32_t hops) {
  if (TopicTree::SharedGroup* g = tree_.FindGroup(filter, group); g != nullptr && !g->members.empty()) {
    DeliverToGroup(*g, msg);
    return;
  }
  for (const Departed& d : departed_) {  // left here too meanwhile: on to the next
    if (d.filter == filter && d.group == group) {
      Redirect(d, msg, hops);
      return;
    }
  }
  stats_.publish_dropped_queue_full++;
}

void Broker::Deliver(Session& s, Delivery&& d) {
  if (d.msg->Expired(NowMs())) {
    stats_.publish_expired++;  // [MQTT-3.3.2-5]
    return;
  }
  Connection* c = s.conn;
  if (d.qos == 0) {
    if (c != nullptr) {
      size_t backlog = c->out_.size() + (c->transport_ ? c->transport_->Backlog() : 0);
      if (backlog < opts_.max_output_buffer) {
        SendPublish(*c, d, 0, false);
        return;
      }
    } else if (opts_.queue_qos0) {
      Enqueue(s, std::move(d));
      return;
    }
    stats_.publish_dropped_qos0++;
    return;
  }
  d.seq = s.next_seq++;
  if (c != nullptr && s.queue.empty() && s.inflight.size() < c->send_quota_) {
    SendNew(s, *c, std::move(d));
    return;
  }
  Enqueue(s, std::move(d));
}

void Broker::Enqueue(Session& s, Delivery&& d) {
  const size_t bytes = d.msg->Footprint();
  if (s.queue.size() >= opts_.max_queued_messages || s.queued_bytes + bytes > opts_.max_queued_bytes) {
    // The documented bound: the new message is dropped for this session,
    // counted per client (published under $SYS) and logged.
    if (s.dropped != UINT32_MAX) s.dropped++;
    drops_changed_.insert(s.id);
    if (d.qos == 0) {
      stats_.publish_dropped_qos0++;
    } else {
      stats_.publish_dropped_queue_full++;
    }
    if (s.dropped == 1 || s.dropped % 1000 == 0) {
      FMQ_LOG_WARN("client '%s' queue full (%zu messages, %llu bytes): dropped %llu so far", s.client_id.c_str(),
                   s.queue.size(), static_cast<unsigned long long>(s.queued_bytes),
                   static_cast<unsigned long long>(s.dropped));
    }
    ReportOutcome(s, d, DeviceOutcome::kQueueFull);
    return;
  }
  s.queued_bytes += bytes;
  stats_.queued_messages++;
  if (persistence_ != nullptr && d.qos > 0 && s.durable() && d.token == 0) {
    persistence_->SaveDelivery(s, d, DeliveryState::kQueued, 0);
    s.persisted = true;
  }
  s.queue.push_back(std::move(d));
}

uint16_t Broker::AllocPacketId(Session& s) {
  while (true) {
    uint16_t id = s.next_packet_id++;
    if (s.next_packet_id == 0) s.next_packet_id = 1;
    if (id != 0 && !s.inflight.contains(id)) return id;
  }
}

void Broker::SendNew(Session& s, Connection& c, Delivery&& d) {
  const uint16_t id = AllocPacketId(s);
  const bool stored = persistence_ != nullptr && s.durable() && d.token == 0;
  if (!SendPublish(c, d, id, false)) {
    if (stored) persistence_->DeleteDelivery(s, d.seq);  // it may have been queued
    ReportOutcome(s, d, DeviceOutcome::kTooLarge);
    return;
  }
  if (stored) {
    persistence_->SaveDelivery(s, d, DeliveryState::kSent, id);
    s.persisted = true;
  }
  s.inflight[id].d = std::move(d);
}

void Broker::PumpQueue(Session& s) {
  Connection* c = s.conn;
  while (c != nullptr && !s.queue.empty() && s.inflight.size() < c->send_quota_) {
    Delivery d = std::move(s.queue.front());
    s.queue.pop_front();
    s.queued_bytes -= d.msg->Footprint();
    stats_.queued_messages--;
    if (d.msg->Expired(NowMs())) {
      stats_.publish_expired++;
      if (persistence_ != nullptr && s.persisted && d.qos > 0) persistence_->DeleteDelivery(s, d.seq);
      continue;
    }
    if (d.qos == 0) {
      SendPublish(*c, d, 0, false);
    } else {
      SendNew(s, *c, std::move(d));
    }
  }
}

void Broker::ReportOutcome(const Session& s, const Delivery& d, DeviceOutcome o) {
  if (d.token != 0) hooks_->OnDeviceOutcome(s.tenant(), s.client_id, d.token, o);
}

void Broker::SendToDevice(const DeviceMessage& dm) {
  Session* s = sessions_.Find(dm.tenant, dm.device_id);
  // Delivered only along the device's own subscription to its channel (at
  // its QoS, at most 1): the device said it listens there.
  const SubOptions* sub = nullptr;
  if (s != nullptr && s->conn != nullptr) {
    const std::string mount = MountOf(dm.tenant);
    for (const auto& [filter, opts] : s->subscriptions) {
      if (filter.size() > mount.size() && filter.compare(0, mount.size(), mount) == 0 &&
          mqtt::TopicMatches(std::string_view(filter).substr(mount.size()), dm.topic)) {
        sub = &opts;
        break;
      }
    }
  }
  if (sub == nullptr) {
    if (dm.token != 0) hooks_->OnDeviceOutcome(dm.tenant, dm.device_id, dm.token, DeviceOutcome::kOffline);
    return;
  }
  auto m = std::make_shared<Message>();
  m->topic = MountOf(dm.tenant) + dm.topic;
  m->payload = dm.payload;
  m->qos = 1;
  m->props.content_type = dm.binary ? "application/octet-stream" : "application/json";
  m->props.Mark(PropertyId::kContentType);
  SealMessage(m.get());
  Delivery d;
  d.msg = std::move(m);
  d.qos = std::min<uint8_t>(1, sub->qos);
  d.token = dm.token;
  if (sub->subscription_id) d.subscription_ids.push_back(sub->subscription_id);
  const bool qos0 = d.qos == 0;
  const uint64_t token = d.token;
  Deliver(*s, std::move(d));
  if (qos0 && token != 0) hooks_->OnDeviceOutcome(dm.tenant, dm.device_id, token, DeviceOutcome::kSentQos0);
}

bool Broker::SendPublish(Connection& c, const Delivery& d, uint16_t packet_id, bool dup) {
  const Message& m = *d.msg;
  const bool v5 = c.version_ == Version::kV5;
  std::string_view client_topic = m.topic;  // without the tenant mount
  if (!c.mount_.empty()) {
    if (client_topic.substr(0, c.mount_.size()) != c.mount_) return false;  // never crosses tenants
    client_topic.remove_prefix(c.mount_.size());
  }
  std::string_view topic = client_topic;
  uint16_t alias = 0;
  bool new_alias = false;
  std::string& props = scratch_;
  props.clear();
  uint32_t props_len = 0;
  if (v5) {
    // Assign or reuse a topic alias towards the client [MQTT-3.3.2-10].
    if (c.client_alias_max_ > 0) {
      StringMap<uint16_t>& aliases = c.extras().out_aliases;
      auto it = aliases.find(client_topic);
      if (it != aliases.end()) {
        alias = it->second;
        topic = {};
      } else if (aliases.size() < c.client_alias_max_) {
        alias = static_cast<uint16_t>(aliases.size() + 1);
        new_alias = true;
      }
    }
    mqtt::Writer w(&props);
    auto id = [&](PropertyId i) { w.U8(static_cast<uint8_t>(i)); };
    if (m.has_expiry) {
      // The remaining lifetime, rounded up [MQTT-3.3.2-6].
      int64_t left_ms = m.expiry_at_ms - NowMs();
      id(PropertyId::kMessageExpiryInterval);
      w.U32(static_cast<uint32_t>((left_ms + 999) / 1000));
    }
    if (alias != 0) {
      id(PropertyId::kTopicAlias);
      w.U16(alias);
    }
    for (uint32_t sid : d.subscription_ids) {
      id(PropertyId::kSubscriptionIdentifier);
      w.Varint(sid);
    }
    w.Raw(m.wire_props);
    props_len = static_cast<uint32_t>(props.size());
  }
  uint32_t body = static_cast<uint32_t>(2 + topic.size() + (d.qos > 0 ? 2 : 0) + m.payload.size());
  if (v5) body += static_cast<uint32_t>(mqtt::VarintSize(props_len)) + props_len;
  const uint32_t total = 1 + static_cast<uint32_t>(mqtt::VarintSize(body)) + body;
  if (c.client_max_packet_ != 0 && total > c.client_max_packet_) {
    stats_.publish_dropped_too_large++;  // [MQTT-3.1.2-25] discard it
    return false;
  }
  if (new_alias) c.extras().out_aliases.emplace(std::string(client_topic), alias);
  const bool was_empty = c.out_.empty();
  std::string& out = c.out_;
  out.reserve(out.size() + total);
  const uint8_t first = static_cast<uint8_t>(0x30 | (dup ? 0x08 : 0) | (d.qos << 1) | (d.retain ? 1 : 0));
  mqtt::WriteFixedHeader(first, body, &out);
  mqtt::Writer w(&out);
  w.Binary(topic);
  if (d.qos > 0) w.U16(packet_id);
  if (v5) {
    w.Varint(props_len);
    w.Raw(props);
  }
  w.Raw(m.payload);
  stats_.messages_sent++;
  stats_.publish_sent++;
  stats_.bytes_sent += total;
  c.link_.packets_out++;
  c.link_.publish_out++;
  c.link_.bytes_out += total;
  if (was_empty && c.transport_ != nullptr) c.transport_->RequestFlush();
  return true;
}

}  // namespace fmq

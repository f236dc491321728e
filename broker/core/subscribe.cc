// SUBSCRIBE / UNSUBSCRIBE: validation per filter, the subscription tree, and
// retained messages sent on subscribe per Retain Handling.
#include "broker/core/broker.h"
#include "common/log.h"
#include "common/mgmt_topics.h"

namespace fmq {

using mqtt::PacketType;
using mqtt::ReasonCode;
using mqtt::Version;

namespace {

// The filter as stored and matched: inside the tenant's mount point, with
// any $share/{group}/ prefix kept in front. Returns false when the filter
// reaches outside what the client may read.
bool InternalFilter(const Connection& c, const std::string& filter, std::string* out) {
  mqtt::SharedFilter sf;
  mqtt::ParseShared(filter, &sf);
  std::string_view inner = sf.shared ? sf.filter : std::string_view(filter);
  if (!inner.empty() && inner[0] == '$') {
    // Tenants read no broker-wide '$' topics; anonymous clients may read
    // $SYS but never a tenant's mount. A tenant's operators may read the
    // tenant's own management topics (events, CRL, statistics) and their own control
    // replies, all inside the tenant's mount (doc/admin-api.md).
    if (inner.substr(0, 3) == "$T/") return false;
    if (topics::Under(inner, topics::kDeviceRoot)) {
      // The device channel: a device reads its own, nobody else reads any.
      const PeerIdentity* who = c.identity();
      if (who == nullptr || !who->device || sf.shared) return false;
      if (!topics::Under(inner, topics::DeviceChannel(who->name))) return false;
    } else if (!c.mount().empty()) {
      const PeerIdentity* who = c.identity();
      if (who == nullptr || who->device) return false;
      const std::string own_reply = std::string(topics::kControlReplyPrefix) + c.client_id();
      const bool ok = topics::Under(inner, topics::kEventsPrefix) || topics::Under(inner, topics::kCrlPrefix) ||
                      topics::Under(inner, topics::kStatsPrefix) || inner == own_reply;
      if (!ok || sf.shared) return false;
    }
  }
  if (sf.shared) {
    *out = "$share/" + std::string(sf.group) + "/" + c.mount() + std::string(inner);
  } else {
    *out = c.mount() + filter;
  }
  return true;
}

}  // namespace

void Broker::HandleSubscribe(Connection& c, const mqtt::Subscribe& sub) {
  Session& s = *c.session_;
  const uint32_t sub_id = sub.props.subscription_ids.empty() ? 0 : sub.props.subscription_ids[0];
  mqtt::SubAck ack;
  ack.type = PacketType::kSuback;
  ack.packet_id = sub.packet_id;
  ack.codes.reserve(sub.entries.size());
  std::vector<std::pair<std::string, SubOptions>> want_retained;
  bool channel_granted = false;
  for (const mqtt::SubscribeEntry& e : sub.entries) {
    mqtt::Error err = mqtt::ValidateTopicFilter(e.filter, opts_.topic_limits);
    if (!err.ok()) {
      FMQ_LOG_DEBUG("client '%s' subscribe '%s' refused: %s", c.client_id_.c_str(), e.filter.c_str(), err.rule);
      ack.codes.push_back(ReasonCode::kTopicFilterInvalid);
      continue;
    }
    std::string filter;
    mqtt::SharedFilter raw_sf;
    mqtt::ParseShared(e.filter, &raw_sf);
    const std::string_view raw_inner = raw_sf.shared ? raw_sf.filter : std::string_view(e.filter);
    // Anonymous clients may always read $SYS (broker statistics; the '$'
    // rules of InternalFilter apply); the rules cover their topics.
    const bool anon_sys = c.identity() == nullptr && !raw_inner.empty() && raw_inner[0] == '$';
    // The device channel is not the ACL's to grant: InternalFilter's rules.
    const bool channel = topics::Under(raw_inner, topics::kDeviceRoot);
    const bool acl_ok = anon_sys || channel || acl_->CanSubscribe(c.identity(), c.client_id_, c.username(), raw_inner);
    if (!acl_ok || !InternalFilter(c, e.filter, &filter)) {
      stats_.publish_denied++;
      c.link_.denied++;
      ack.codes.push_back(ReasonCode::kNotAuthorized);
      continue;
    }
    mqtt::SharedFilter sf;
    mqtt::ParseShared(filter, &sf);
    if (sf.shared && e.no_local()) {
      Close(c, DisconnectReason::kProtocolError, ReasonCode::kProtocolError,
            "MQTT-3.8.3-4 No Local on a shared subscription");
      return;
    }
    const bool existed = s.subscriptions.contains(filter);
    if (!existed && s.subscriptions.size() >= opts_.max_subscriptions_per_session) {
      ack.codes.push_back(ReasonCode::kQuotaExceeded);
      continue;
    }
    SubOptions o;
    o.qos = e.qos();
    o.no_local = e.no_local();
    o.retain_as_published = e.retain_as_published();
    o.retain_handling = e.retain_handling();
    o.subscription_id = sub_id;
    s.subscriptions[filter] = o;
    if (tree_.Add(sf.shared ? sf.filter : std::string_view(filter), sf.group, &s, o)) {
      stats_.subscriptions++;
    }
    ack.codes.push_back(static_cast<ReasonCode>(o.qos));
    channel_granted = channel_granted || channel;
    // Retained messages on subscribe [MQTT-3.3.1-9..11]; never for shared
    // subscriptions (MQTT 5.0 section 4.8.2: a shared subscription gets no
    // retained messages when it is made; it has no normative identifier).
    if (!sf.shared && (o.retain_handling == 0 || (o.retain_handling == 1 && !existed))) {
      want_retained.emplace_back(filter, o);
    }
  }
  if (persistence_ != nullptr && s.durable()) {
    persistence_->SaveSession(s);
    s.persisted = true;
  }
  AckWhenDurable(c, ack);  // SUBACK goes before the retained messages it unlocks
  if (channel_granted) hooks_->OnChannelSubscribed(InfoOf(c));
  const int64_t now = NowMs();
  for (const auto& want : want_retained) {
    const SubOptions& o = want.second;
    retained_.Match(want.first, now, [&](const MessagePtr& m) {
      Delivery d;
      d.msg = m;
      d.qos = std::min(m->qos, o.qos);
      d.retain = true;  // [MQTT-3.3.1-8]
      if (o.subscription_id) d.subscription_ids.push_back(o.subscription_id);
      Deliver(s, std::move(d));
    });
  }
}

void Broker::HandleUnsubscribe(Connection& c, const mqtt::Unsubscribe& u) {
  Session& s = *c.session_;
  mqtt::SubAck ack;
  ack.type = PacketType::kUnsuback;
  ack.packet_id = u.packet_id;
  for (const std::string& raw : u.filters) {
    std::string f;
    if (!InternalFilter(c, raw, &f)) {
      ack.codes.push_back(ReasonCode::kNoSubscriptionExisted);
      continue;
    }
    auto it = s.subscriptions.find(f);
    if (it == s.subscriptions.end()) {
      ack.codes.push_back(ReasonCode::kNoSubscriptionExisted);
      continue;
    }
    s.subscriptions.erase(it);
    mqtt::SharedFilter sf;
    mqtt::ParseShared(f, &sf);
    if (tree_.Remove(sf.shared ? sf.filter : std::string_view(f), sf.group, &s)) {
      stats_.subscriptions--;
    }
    ack.codes.push_back(ReasonCode::kSuccess);
  }
  if (persistence_ != nullptr && s.durable()) persistence_->SaveSession(s);
  AckWhenDurable(c, ack);
}

size_t Broker::DropRevokedSubscriptions(Session& s, const PeerIdentity* before, const PeerIdentity* now,
                                        std::string_view username) {
  const std::string mount = MountOf(s.tenant());
  std::vector<std::string> gone;
  for (const auto& [f, o] : s.subscriptions) {
    mqtt::SharedFilter sf;
    mqtt::ParseShared(f, &sf);
    std::string_view client = sf.shared ? sf.filter : std::string_view(f);
    if (client.substr(0, mount.size()) != mount) continue;
    client.remove_prefix(mount.size());
    if (!client.empty() && client[0] == '$') continue;  // management topics: InternalFilter's rules, not the ACL
    if (acl_->CanSubscribe(now, s.client_id, username, client)) continue;
    if (before != nullptr && !acl_->CanSubscribe(before, s.client_id, username, client)) continue;
    gone.push_back(f);
  }
  for (const std::string& f : gone) {
    mqtt::SharedFilter sf;
    mqtt::ParseShared(f, &sf);
    if (tree_.Remove(sf.shared ? sf.filter : std::string_view(f), sf.group, &s)) stats_.subscriptions--;
    s.subscriptions.erase(f);
    FMQ_LOG_INFO("client '%s': subscription '%s' removed: no longer allowed by the ACL", s.client_id.c_str(),
                 f.c_str());
  }
  return gone.size();
}

void Broker::SetDeviceGroups(std::string_view tenant, std::string_view device_id,
                             const std::vector<std::string>& old_groups, const std::vector<std::string>& groups) {
  Session* s = sessions_.Find(tenant, device_id);
  if (s == nullptr) return;
  PeerIdentity before{std::string(tenant), std::string(device_id), true, false, "", old_groups};
  PeerIdentity now = before;
  now.groups = groups;
  std::string_view username;
  if (s->conn != nullptr && s->conn->identity_ != nullptr && s->conn->identity_->device) {
    s->conn->identity_->groups = groups;  // publishes and new subscriptions see it at once
    username = s->conn->username();
  }
  if (DropRevokedSubscriptions(*s, &before, &now, username) > 0 && persistence_ != nullptr && s->durable()) {
    persistence_->SaveSession(*s);
  }
}

void Broker::RemoveAllSubscriptions(Session& s) {
  for (const auto& [f, o] : s.subscriptions) {
    mqtt::SharedFilter sf;
    mqtt::ParseShared(f, &sf);
    if (tree_.Remove(sf.shared ? sf.filter : std::string_view(f), sf.group, &s)) {
      stats_.subscriptions--;
    }
  }
  s.subscriptions.clear();
}

}  // namespace fmq

// $SYS/broker statistics, in the topic layout mosquitto users know,
// published as retained messages every sys_interval_s.
#include <string>

#include "broker/core/broker.h"
#include "common/mgmt_topics.h"

namespace fmq {

void Broker::PublishSys(int64_t now) {
  auto pub = [&](const char* name, uint64_t v) {
    PublishInternal(std::string("$SYS/broker/") + name, std::to_string(v), true);
  };
  // Several workers: the first publishes the sum of every worker's last
  // report (at most one tick old); each publishes its own clients' drops.
  BrokerStats st = stats_;
  uint64_t total = sessions_.size();
  if (MultiWorker()) {
    if (index_ != 0) {
      PublishDrops();
      return;
    }
    cluster_->Report(index_, stats_, sessions_.size());
    st = cluster_->Sum(&total);
  }
  PublishInternal("$SYS/broker/version", std::string("fleetmq ") + FMQ_VERSION, true);
  PublishInternal("$SYS/broker/uptime", std::to_string((now - start_ms_) / 1000) + " seconds", true);
  pub("clients/connected", st.clients_connected);
  pub("clients/total", total);
  pub("clients/disconnected", total - st.clients_connected);
  pub("clients/maximum", st.clients_maximum);
  pub("clients/expired", st.sessions_expired);
  pub("connections/accepted", st.connections_accepted);
  pub("connections/refused", st.connects_refused);
  pub("connections/takeovers", st.takeovers);
  pub("connections/reads_paused", st.reads_paused);
  pub("connections/reads_paused_peers", st.reads_paused_peers);
  pub("connections/tls_refused", st.tls_refused);
  pub("connections/quota_refused", st.quota_connections_refused);
  pub("connections/admin_disconnects", st.admin_disconnects);
  pub("publish/messages/quota_refused", st.quota_publish_refused);
  pub("connections/connect_timeouts", st.connect_timeouts);
  pub("connections/keepalive_timeouts", st.keepalive_timeouts);
  pub("errors/protocol", st.protocol_errors);
  pub("messages/received", st.messages_received);
  pub("messages/sent", st.messages_sent);
  pub("publish/messages/received", st.publish_received);
  pub("publish/messages/sent", st.publish_sent);
  pub("publish/messages/dropped",
      st.publish_dropped_queue_full + st.publish_dropped_qos0 + st.publish_dropped_too_large);
  pub("publish/messages/dropped/queue_full", st.publish_dropped_queue_full);
  pub("publish/messages/dropped/qos0", st.publish_dropped_qos0);
  pub("publish/messages/dropped/too_large", st.publish_dropped_too_large);
  pub("publish/messages/expired", st.publish_expired);
  pub("publish/messages/denied", st.publish_denied);
  pub("publish/wills", st.wills_published);
  pub("bytes/received", st.bytes_received);
  pub("bytes/sent", st.bytes_sent);
  pub("subscriptions/count", st.subscriptions);
  pub("retained messages/count", retained_.size());
  pub("store/messages/count", st.queued_messages);
  if (MultiWorker()) {
    // How the kernel and the session homes spread the load.
    for (uint32_t w = 0; w < cluster_->size(); ++w) {
      const BrokerStats ws = cluster_->Snapshot(w);
      const std::string prefix = "workers/" + std::to_string(w) + "/";
      pub((prefix + "clients/connected").c_str(), ws.clients_connected);
      pub((prefix + "publish/messages/received").c_str(), ws.publish_received);
      pub((prefix + "publish/messages/sent").c_str(), ws.publish_sent);
    }
  }
  if (persistence_ != nullptr) {
    const PersistenceStats ps = persistence_->stats();
    pub("storage/healthy", ps.healthy ? 1 : 0);
    pub("storage/writes", ps.writes);
    pub("storage/bytes", ps.bytes);
    pub("storage/errors", ps.errors);
    pub("storage/dropped_bytes", ps.dropped_bytes);
    pub("publish/messages/refused_storage", st.publish_refused_storage);
    pub("publish/messages/storage_failed", st.storage_ack_failures);
  }
  hooks_->SysCounters(pub);
  PublishDrops();
}

void Broker::PublishDrops() {
  // Per-client drop counters, only for sessions whose count moved. A
  // tenant's clients are counted inside the tenant (its operators read
  // $SYS/fleetmq/stats/v1/clients/<id>/dropped) and for the platform admin
  // ($SYS/fleetmq/stats/v1/tenants/<tenant>/clients/<id>/dropped), never in
  // the anonymous $SYS tree, which only shows anonymous clients.
  for (uint64_t id : drops_changed_) {
    auto it = sessions_by_id_.find(id);
    if (it == sessions_by_id_.end()) continue;
    const Session& s = *it->second;
    const std::string value = std::to_string(s.dropped);
    if (s.tenant().empty()) {
      std::string topic = "$SYS/broker/clients/" + s.client_id + "/dropped";
      if (mqtt::ValidateTopicName(topic, opts_.topic_limits).ok()) PublishInternal(std::move(topic), value, true);
      continue;
    }
    const std::string tail = "clients/" + s.client_id + "/dropped";
    if (!mqtt::ValidateTopicName(tail, opts_.topic_limits).ok()) continue;
    PublishInternal(MountOf(s.tenant()) + std::string(topics::kStatsPrefix) + tail, value, true);
    if (s.tenant() != kPlatformTenantName) {
      PublishInternal(
          MountOf(kPlatformTenantName) + std::string(topics::kStatsPrefix) + "tenants/" + s.tenant() + "/" + tail,
          value, true);
    }
  }
  drops_changed_.clear();
}

}  // namespace fmq

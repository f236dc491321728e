// $SYS/broker statistics, in the topic layout mosquitto users know,
// published as retained messages every sys_interval_s.
#include <string>

#include "broker/core/broker.h"

namespace fmq {

void Broker::PublishSys(int64_t now) {
  auto pub = [&](const char* name, uint64_t v) {
    PublishInternal(std::string("$SYS/broker/") + name, std::to_string(v), true);
  };
  PublishInternal("$SYS/broker/version", std::string("fleetmq ") + FMQ_VERSION, true);
  PublishInternal("$SYS/broker/uptime", std::to_string((now - start_ms_) / 1000) + " seconds", true);
  const uint64_t total = sessions_.size();
  pub("clients/connected", stats_.clients_connected);
  pub("clients/total", total);
  pub("clients/disconnected", total - stats_.clients_connected);
  pub("clients/maximum", stats_.clients_maximum);
  pub("clients/expired", stats_.sessions_expired);
  pub("connections/accepted", stats_.connections_accepted);
  pub("connections/refused", stats_.connects_refused);
  pub("connections/takeovers", stats_.takeovers);
  pub("connections/reads_paused", stats_.reads_paused);
  pub("connections/tls_refused", stats_.tls_refused);
  pub("connections/quota_refused", stats_.quota_connections_refused);
  pub("connections/admin_disconnects", stats_.admin_disconnects);
  pub("publish/messages/quota_refused", stats_.quota_publish_refused);
  pub("connections/connect_timeouts", stats_.connect_timeouts);
  pub("connections/keepalive_timeouts", stats_.keepalive_timeouts);
  pub("errors/protocol", stats_.protocol_errors);
  pub("messages/received", stats_.messages_received);
  pub("messages/sent", stats_.messages_sent);
  pub("publish/messages/received", stats_.publish_received);
  pub("publish/messages/sent", stats_.publish_sent);
  pub("publish/messages/dropped", stats_.publish_dropped_queue_full + stats_.publish_dropped_qos0 +
                                      stats_.publish_dropped_too_large);
  pub("publish/messages/dropped/queue_full", stats_.publish_dropped_queue_full);
  pub("publish/messages/dropped/qos0", stats_.publish_dropped_qos0);
  pub("publish/messages/dropped/too_large", stats_.publish_dropped_too_large);
  pub("publish/messages/expired", stats_.publish_expired);
  pub("publish/messages/denied", stats_.publish_denied);
  pub("publish/wills", stats_.wills_published);
  pub("bytes/received", stats_.bytes_received);
  pub("bytes/sent", stats_.bytes_sent);
  pub("subscriptions/count", stats_.subscriptions);
  pub("retained messages/count", retained_.size());
  pub("store/messages/count", stats_.queued_messages);
  if (persistence_ != nullptr) {
    const PersistenceStats ps = persistence_->stats();
    pub("storage/healthy", ps.healthy ? 1 : 0);
    pub("storage/writes", ps.writes);
    pub("storage/bytes", ps.bytes);
    pub("storage/errors", ps.errors);
    pub("storage/dropped_bytes", ps.dropped_bytes);
    pub("publish/messages/refused_storage", stats_.publish_refused_storage);
    pub("publish/messages/storage_failed", stats_.storage_ack_failures);
  }
  // Per-client drop counters, only for sessions whose count moved.
  for (uint64_t id : drops_changed_) {
    auto it = sessions_by_id_.find(id);
    if (it == sessions_by_id_.end()) continue;
    const Session& s = *it->second;
    std::string topic = "$SYS/broker/clients/" + s.client_id + "/dropped";
    if (!mqtt::ValidateTopicName(topic, opts_.topic_limits).ok()) continue;
    PublishInternal(std::move(topic), std::to_string(s.dropped), true);
  }
  drops_changed_.clear();
}

}  // namespace fmq

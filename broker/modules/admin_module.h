// The management module plugged into the broker's hooks: the admin control
// topic, connectivity events, and the device gate at CONNECT. The hooks run
// on the worker threads (several at once) and never block: requests and connectivity events go
// to one management thread (admin::Service: registry, PKI, audit), whose
// replies and effects come back through a queue drained on worker 0's loop
// when the server's uv_async wakes it. Topic names: doc/admin-api.md.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "broker/core/broker.h"
#include "broker/core/hooks.h"
#include "broker/modules/admin_options.h"
#include "broker/tls/tls.h"
#include "common/clock.h"
#include "common/mgmt_topics.h"
#include "common/string_map.h"
#include "mgmt/admin/service.h"

namespace fmq {

class AdminModule : public BrokerHooks {
 public:
  // `kv`: read-only device lookups from every worker's thread (groups and the
  // operator-id check at CONNECT; Registry reads are thread-safe).
  AdminModule(admin::Service* svc, storage::KvStore* kv, const Clock* clock, const AdminModuleOptions& opts = {});
  ~AdminModule() override;

  // Before the loop runs: the broker whose loop runs the completions (the
  // first worker's), the cluster that routes effects to the worker owning a
  // connection (null: `broker` is the only one), the TLS context, and a
  // thread-safe function that wakes that loop to call RunCompletions().
  void Attach(Broker* broker, Cluster* cluster, tls::TlsServerContext* tls, std::function<void()> wake);
  // Runs Service::Init here (start-up, single-threaded), applies what it
  // returns, then starts the management thread.
  absl::Status Start();
  void Stop();
  // Loop thread: replies and effects of finished work.
  void RunCompletions();

  void ResolveIdentity(PeerIdentity& id) override;
  mqtt::ReasonCode Authenticate(const mqtt::Connect&, const ClientInfo& info) override;
  void OnConnected(const ClientInfo& info) override;
  void OnDisconnected(const ClientInfo& info, DisconnectReason why) override;
  void OnLinkCounters(const ClientInfo& info) override;
  void OnChannelSubscribed(const ClientInfo& info) override;
  mqtt::ReasonCode OnControlPublish(const ClientInfo& info, const Message& m) override;
  // The device channel (doc/device-api.md): validated here, on the worker
  // thread (schema, sizes, the device's own topic), then queued for the
  // management thread; a bad message gets an error on the device's errors
  // topic and a PUBACK reason code, and changes nothing.
  mqtt::ReasonCode OnDevicePublish(const ClientInfo& info, const Message& m) override;
  void OnDeviceOutcome(std::string_view tenant, std::string_view device_id, uint64_t token, DeviceOutcome o) override;
  void SysCounters(const std::function<void(const char*, uint64_t)>& pub) override;
  // A worker's TLS handshake refused a certificate that verified but is
  // revoked: audited like a denied CONNECT (aggregated).
  void OnTlsRefused(const pki::Identity& id, std::string_view serial, std::string_view why);

  struct Counters {  // bumped by hooks on any worker thread
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> refused_busy{0};
    std::atomic<uint64_t> refused_role{0};
    std::atomic<uint64_t> events_coalesced{0};  // connectivity events merged into a device's latest state
    std::atomic<uint64_t> device_messages{0};   // device-channel messages accepted
    std::atomic<uint64_t> device_served{0};     // answered on the worker (Feature::Serve)
    std::atomic<uint64_t> device_rejected{0};   // malformed, oversized, unknown topic, not the device's own
    std::atomic<uint64_t> device_busy{0};       // over max_queued_device_messages: PUBACK 0x97
    std::atomic<uint64_t> outcomes{0};          // delivery outcomes reported to the features
    std::atomic<uint64_t> blocked_connects{0};
    std::atomic<uint64_t> revoked_connects{0};  // CONNECT with a certificate revoked after its handshake
    std::atomic<uint64_t> denied_unaudited{0};  // over max_denied_tracked
  };
  const Counters& counters() const { return counters_; }
  bool IsBlocked(std::string_view tenant, std::string_view device) const;

 private:
  struct Request {
    admin::Actor actor;
    std::string payload;
    std::string reply_topic;  // client-visible
    std::string correlation;
  };
  struct Denied {
    admin::Actor actor;
    std::string action, device_id, why;
  };
  // A denial audited at the start of its window, and how many more came.
  struct DeniedWindow {
    Denied first;
    uint64_t more = 0;
    int64_t ends_ms = 0;
  };
  using Job = std::variant<Request, Denied>;
  struct Outcome {
    uint64_t token;
    DeviceOutcome what;
  };
  struct Completion {
    std::string tenant;
    std::string reply_topic;  // empty: effects only
    std::string correlation;
    std::string payload;
    admin::Effects fx;
  };

  void ThreadMain();
  void Post(Completion c);
  void Apply(admin::Effects& fx);
  void Event(const ClientInfo& info, bool connected, std::string_view reason);
  // Queues a connectivity event for the management thread (bounded: beyond
  // max_queued_events a device's events are merged into one).
  void Enqueue(admin::ConnEvent ev);
  // Worker thread: an error reply on the device's errors topic.
  void DeviceError(const ClientInfo& info, std::string_view topic, std::string_view code, const std::string& msg,
                   const std::string& client_token, bool rejected = true);
  // Applies what the features released: device messages to each device's
  // home worker, in one batch per worker; events on the tenant's topics.
  void ApplyFeatures(mgmt::Output& out);
  // Management thread, mu_ held: whether there is input to process.
  bool HasInput() const;
  // Any thread: audits a denied attempt, aggregated per window (above).
  void Deny(Denied d);
  // Management thread, mu_ held: the windows that ended, as audit jobs.
  std::vector<Denied> TakeEndedDenials(int64_t now_ms);
  static std::string BlockKey(std::string_view tenant, std::string_view device);

  admin::Service* svc_;
  storage::Registry reader_;  // every worker thread: point reads only
  const Clock* clock_;
  AdminModuleOptions opts_;
  Broker* broker_ = nullptr;
  Cluster* cluster_ = nullptr;
  tls::TlsServerContext* tls_ = nullptr;
  std::function<void()> wake_;

  // Read by every worker's Authenticate, written by RunCompletions.
  mutable std::mutex gate_mu_;
  absl::flat_hash_set<std::string> blocked_;  // tenant \0 device
  Counters counters_;
  // The features' counters as of the management thread's last turn (it
  // writes them, SysCounters on worker 0 reads them).
  mutable std::mutex feature_counters_mu_;
  std::vector<std::pair<std::string, uint64_t>> feature_counters_;

  // Shared with the management thread and every worker (hooks).
  StringMap<uint64_t> event_seq_;  // tenant → last sequence number
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  size_t queued_requests_ = 0;
  std::vector<admin::ConnEvent> events_;   // in order, up to max_queued_events
  StringMap<admin::ConnEvent> coalesced_;  // beyond: tenant \0 device → its latest event
  // Devices that subscribed to their channel since the last turn (one entry
  // per device: bounded by the devices connected).
  StringMap<std::pair<std::string, std::string>> subscribed_;
  std::vector<mgmt::DeviceMessage> device_msgs_;
  std::vector<Outcome> outcomes_;
  StringMap<DeniedWindow> denied_;  // tenant \0 identity \0 reason
  std::vector<Completion> done_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace fmq

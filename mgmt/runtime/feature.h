// The management runtime's contract with its features (doc/architecture.md,
// "The management runtime"): jobs now; configuration, firmware, health and
// certificates next. A feature owns some device-channel topics (with their
// schema, checked on the worker that received the message), reacts to
// connectivity, device messages, delivery outcomes and registry changes,
// runs its own deadlines (Pump returns the next one), recovers its state
// after a crash (Recover) and commits once per turn of the management loop
// (Commit releases what must wait for the store: device messages, events).
// Everything but Validate and DeviceTopics runs on the management thread.
// Its operator commands live in its own file of the command table
// (mgmt/admin/*_commands.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "storage/keys.h"
#include "storage/records.h"

namespace fmq::mgmt {

using Json = nlohmann::json;

// Two ids joined by a NUL (neither holds one): the key of the features'
// in-memory maps, e.g. tenant\0device.
inline std::string JoinKey(std::string_view a, std::string_view b) {
  std::string k(a);
  k.push_back('\0');
  k.append(b);
  return k;
}

// A message to a device's channel (`suffix` is the topic below
// "$fleetmq/v1/devices/<id>/"). token != 0: the broker reports its outcome
// (Feature::OnOutcome of the feature whose index is in the token's top byte).
struct DeviceSend {
  std::string tenant, device_id, suffix, payload;
  uint64_t token = 0;
};
// A message on a tenant topic (as the tenant sees it), e.g. progress events.
struct Event {
  std::string tenant, topic, payload;
  bool retain = true;
};
struct Output {
  std::vector<DeviceSend> sends;
  std::vector<Event> events;
  // Certificates revoked (tenant, serial), committed: the host closes what
  // uses them and re-signs the tenant's CRL.
  std::vector<std::pair<std::string, std::string>> revoked;
  bool empty() const { return sends.empty() && events.empty() && revoked.empty(); }
};

// An answer a feature gives on the worker that received the device's
// message (Feature::Serve): published on the device's channel at once.
struct WorkerReply {
  std::string suffix, payload;
  bool binary = false;  // application/octet-stream (else application/json)
};

// A device-channel message, valid for its feature's schema.
struct DeviceMessage {
  std::string tenant, device_id;
  std::string topic;         // below the channel root, e.g. "jobs/update"
  std::string client_token;  // optional in every uplink message: echoed in replies
  Json body;                 // a JSON object
};

class Feature {
 public:
  virtual ~Feature() = default;
  virtual std::string_view name() const = 0;

  // The device-channel topics it reads (below the channel root). Any thread.
  virtual std::vector<std::string> DeviceTopics() const { return {}; }
  // Checks a message for one of its topics: "" when valid, else what is
  // wrong (the device gets it as a bad_request error). Any thread; pure.
  virtual std::string Validate(std::string_view /*topic*/, const Json& /*body*/) const { return ""; }
  // Answers a valid message on the worker thread that received it, without
  // the management thread (reads from the store only, e.g. firmware blocks):
  // true when answered here (`out` is published to the device), false to
  // queue it for OnDeviceMessage. Any thread; thread-safe.
  virtual bool Serve(const DeviceMessage& /*m*/, std::vector<WorkerReply>* /*out*/) const { return false; }

  // Start-up, before any input: its state back from the store.
  virtual absl::Status Recover() { return absl::OkStatus(); }
  virtual void OnConnected(const std::string& /*tenant*/, const std::string& /*device_id*/) {}
  virtual void OnDisconnected(const std::string& /*tenant*/, const std::string& /*device_id*/) {}
  // The device subscribed to (part of) its channel: it can be sent to now.
  virtual void OnSubscribed(const std::string& /*tenant*/, const std::string& /*device_id*/) {}
  virtual void OnDeviceMessage(const DeviceMessage& /*m*/) {}
  virtual void OnOutcome(uint64_t /*token*/, bool /*acked*/, std::string_view /*why*/) {}
  // Registry changes made by commands, once committed.
  virtual void OnDeviceJoined(const storage::TenantId& /*t*/, const fb::DeviceT& /*d*/) {}
  virtual void OnDeviceRetired(const storage::TenantId& /*t*/, const std::string& /*device_id*/) {}
  // Deadlines and pending work; returns the wall ms to run again (INT64_MAX: only on input).
  virtual int64_t Pump() { return INT64_MAX; }
  // Writes what changed; on success appends what it releases to `out`.
  virtual absl::Status Commit(Output* /*out*/) { return absl::OkStatus(); }
  // Its counters, by name below $SYS/broker/management/ (e.g.
  // "config/reports_refused"); copied out after every turn.
  virtual void Counters(const std::function<void(const char*, uint64_t)>& /*pub*/) const {}

  // Set when the runtime adds it; tokens it hands out carry it.
  void set_index(uint8_t i) { index_ = i; }
  static uint8_t IndexOf(uint64_t token) { return static_cast<uint8_t>(token >> 56); }

 protected:
  uint64_t TokenOf(uint64_t n) const { return (uint64_t{index_} << 56) | (n & ((uint64_t{1} << 56) - 1)); }

 private:
  uint8_t index_ = 0;
};

// The features of a node, in order. Filled at start-up; read-only after,
// so worker threads may look up the owner of a topic.
class Runtime {
 public:
  void Add(Feature* f) {
    f->set_index(static_cast<uint8_t>(features_.size()));
    features_.push_back(f);
    for (std::string& t : f->DeviceTopics()) topics_.emplace_back(std::move(t), f);
  }
  const std::vector<Feature*>& features() const { return features_; }
  // The feature reading `topic` (below the channel root), or null.
  Feature* OwnerOf(std::string_view topic) const {
    for (const auto& [t, f] : topics_) {
      if (t == topic) return f;
    }
    return nullptr;
  }
  Feature* ByToken(uint64_t token) const {
    const uint8_t i = Feature::IndexOf(token);
    return i < features_.size() ? features_[i] : nullptr;
  }

 private:
  std::vector<Feature*> features_;
  std::vector<std::pair<std::string, Feature*>> topics_;
};

}  // namespace fmq::mgmt

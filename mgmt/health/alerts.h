// Alert rules over device health (doc/health.md, "Alerts"). A rule is data
// (alert.rule.create): a metric of the device's health reports compared
// with a threshold ("battery_pct lt 10", "errors_per_min gt 5 for 300 s"),
// or "offline" for longer than for_s, in one scope (tenant, group, model,
// firmware). Per rule and device an alert is raised when the condition
// has held for for_s, and cleared when the value passes the clear bound
// (hysteresis: gt clears below `clear`, lt above it; default the
// threshold) or the device comes back. Raising and clearing are events on
// the tenant's $SYS/fleetmq/events/v1/alerts/<rule id>, stored alert
// records (alert.list, alert.ack) and audit entries.
//
// Evaluation is incremental: a report is checked against the rules of its
// scopes only; a condition waiting out for_s is a deadline in a heap; an
// offline rule arms a deadline when its device disconnects (and, at
// start-up and when the rule is made, for every device of its scope not
// connected). Nothing scans the fleet per tick. Management thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <queue>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/string_map.h"
#include "mgmt/runtime/feature.h"
#include "storage/registry.h"

namespace fmq::health {

using Json = nlohmann::json;

struct AlertRule {
  std::string rule_id, metric, op;  // op: "gt" or "lt" (offline: "gt")
  double threshold = 0, clear = 0;  // clear: the hysteresis bound
  int64_t for_ms = 0;
  std::string scope = "tenant", severity = "warning";
  bool offline() const { return metric == "offline"; }
  Json ToJson() const;
  // From arguments or stored JSON; "" when valid, else what is wrong.
  static std::string FromJson(const Json& j, AlertRule* out);
};

struct AlertOptions {
  size_t max_rules = 100;             // per tenant
  size_t max_raises_per_turn = 2000;  // raised from deadlines per management turn (the rest next turn: ~70 ms a turn)
};

class AlertFeature : public mgmt::Feature {
 public:
  // online(tenant, device): connected now (the host's connectivity, so no
  // second copy of it is kept here).
  using OnlineFn = std::function<bool(const std::string& tenant, const std::string& device)>;
  AlertFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, OnlineFn online,
               const AlertOptions& o = {});

  std::string_view name() const override { return "alerts"; }
  // Rules and raised alerts from the store; offline rules armed for every
  // device of their scope (none is connected yet).
  absl::Status Recover() override;
  void OnConnected(const std::string& tenant, const std::string& device_id) override;
  void OnDisconnected(const std::string& tenant, const std::string& device_id) override;
  void OnDeviceRetired(const storage::TenantId& t, const std::string& device_id) override;
  int64_t Pump() override;
  absl::Status Commit(mgmt::Output* out) override;
  void Counters(const std::function<void(const char*, uint64_t)>& pub) const override;

  // A device registered or moved between scopes, committed (HealthFeature's
  // listener): offline rules arm it when it enters their scope while not
  // connected; leaving a rule's scope ends its pending window and clears
  // what the rule raised for it.
  void OnScopesChanged(const std::string& tenant, const std::string& device, const std::vector<std::string>& before,
                       const std::vector<std::string>& after);
  // A stored health report (HealthFeature's listener).
  void OnReport(const std::string& tenant, const std::string& device, const std::vector<std::string>& scopes,
                const std::map<std::string, double>& values, int64_t time_ms);

  // Commands. Create/delete write into `b` (the command's batch, audited
  // with it); `on_commit` gets what to change in memory once it is written.
  absl::Status CreateRule(const storage::TenantId& t, const AlertRule& r, storage::WriteBatch* b,
                          std::vector<std::function<void()>>* on_commit);
  absl::Status DeleteRule(const storage::TenantId& t, const std::string& rule_id, storage::WriteBatch* b,
                          std::vector<std::function<void()>>* on_commit);
  std::vector<AlertRule> Rules(const std::string& tenant) const;
  // alert.list: alerts of the tenant (raised only unless `all`), optionally
  // of one rule or device, from `cursor`, at most `limit`.
  absl::Status List(const storage::TenantId& t, bool all, const std::string& rule_id, const std::string& device_id,
                    const std::string& cursor, size_t limit, Json* items, std::string* next_cursor) const;
  // alert.ack: the raised alert of (rule, device) acknowledged by `actor`.
  absl::Status Ack(const storage::TenantId& t, const std::string& rule_id, const std::string& device_id,
                   const std::string& actor, int64_t now, storage::WriteBatch* b, Json* alert);

 private:
  struct Raised {  // what a raised alert's record holds beyond its rule (~80 bytes)
    int64_t raised_ms = 0;
    double value = 0;
    int64_t acked_ms = 0;  // 0: not acknowledged
    std::string acked_by;
  };
  struct Tenant {
    std::map<std::string, AlertRule> rules;         // by id
    StringMap<Raised> raised;                       // rule\0device
    StringMap<std::pair<int64_t, double>> pending;  // rule\0device → (since, last value)
  };
  static Json Record(const AlertRule& r, const std::string& device, const Raised& a);
  // Raise or clear, written in batch_ with its audit entry and event.
  void Raise(const std::string& tenant, const AlertRule& r, const std::string& device, double value, int64_t now);
  void Clear(const std::string& tenant, const AlertRule& r, const std::string& device, double value, int64_t now,
             const char* why);
  // The audit entry (alert.<event>) and the event of a raise or clear.
  void Announce(const std::string& tenant, const AlertRule& r, const std::string& device, Json ev, int64_t now);
  void Arm(const std::string& tenant, const AlertRule& r, const std::string& device, int64_t since, double value);
  // Arms the offline rule for every device of its scope not connected.
  absl::Status ArmOffline(const std::string& tenant, const AlertRule& r, int64_t since);
  std::vector<std::string> ScopesOfDevice(const std::string& tenant, const std::string& device) const;

  storage::KvStore* kv_;
  storage::Registry* reg_;
  const Clock* clock_;
  AlertOptions opts_;
  StringMap<Tenant> tenants_;
  OnlineFn online_;
  // (due wall ms, tenant, rule\0device): a pending condition's for_s ends.
  using Due = std::tuple<int64_t, std::string, std::string>;
  std::priority_queue<Due, std::vector<Due>, std::greater<>> due_;
  storage::WriteBatch batch_;
  std::vector<std::string> audited_;  // tenants with audit entries in batch_
  mgmt::Output pending_out_;
  size_t turn_budget_ = 0;
  struct Stats {
    uint64_t raised = 0, cleared = 0, acked = 0, commits_failed = 0, deferred = 0;
  } stats_;
};

}  // namespace fmq::health

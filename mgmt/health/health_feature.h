// Device health reported by the device (doc/device-api.md, "Health"): each
// report on `health/report` is checked on the worker (schema, names, ranges,
// a bounded number of metrics), then kept on the management thread as the
// device's latest values and folded into a per-minute history of the last
// 24 hours (min, max, mean, last per metric), in RocksDB under tenant-first
// keys. The history is a ring of one slot per minute of the day, so a
// device's storage is bounded (at most `history_minutes` slots) without any
// deletion pass. Nothing is kept in memory per device but its report
// budget while it is connected (one report per min_interval on average,
// bursts of two).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/string_map.h"
#include "mgmt/health/link.h"
#include "mgmt/health/rollup.h"
#include "mgmt/runtime/feature.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace fmq::health {

using Json = nlohmann::json;

struct Options {
  size_t max_metrics = 32;             // free-form metrics per report
  size_t max_name = 32;                // bytes of a metric name
  int64_t min_interval_ms = 1000;      // one report per this on average (a burst of 2); more: rate_limited
  uint32_t history_minutes = 24 * 60;  // per-minute slots kept per device
  RollupOptions rollup;
};

// The values of a valid report, flattened: built-ins by their name
// ("cpu_pct"), free-form metrics as "m.<name>".
using Values = std::map<std::string, double>;
// A metric name: 1..max of [a-z0-9_.-] (reports' free-form names, alert rules).
bool ValidMetricName(std::string_view n, size_t max);
// "" when `body` is a valid health/report, else what is wrong. Pure.
std::string ValidateReport(const Json& body, const Options& o, Values* out = nullptr);

// Also the registry's device observer: the roll-ups follow devices that
// are added, moved between groups, updated or retired.
class HealthFeature : public mgmt::Feature, public storage::DeviceObserver {
 public:
  HealthFeature(storage::KvStore* kv, const Clock* clock, const Options& o = {});

  std::string_view name() const override { return "health"; }
  std::vector<std::string> DeviceTopics() const override { return {"health/report"}; }
  std::string Validate(std::string_view topic, const Json& body) const override;
  void OnDeviceMessage(const mgmt::DeviceMessage& m) override;
  void OnDisconnected(const std::string& tenant, const std::string& device_id) override;
  void OnDeviceRetired(const storage::TenantId& t, const std::string& device_id) override;
  absl::Status Recover() override;
  void OnDevicePut(const storage::TenantId& t, const fb::DeviceT* old, const fb::DeviceT& rec,
                   storage::WriteBatch* b) override;
  // A device came online (+1) or went offline (-1), counted in `scopes`
  // (ScopesOf its record when it connected).
  void OnlineChanged(const std::string& tenant, const std::vector<std::string>& scopes, int delta) {
    rollups_.Online(tenant, scopes, delta);
  }
  const Rollups& rollups() const { return rollups_; }
  // What the broker observed of a registered device's connection (its
  // connect, counter reports and disconnect, in order); a record is started
  // only by a connect.
  void OnLink(const storage::TenantId& t, const std::string& device_id, const LinkEvent& e);
  // The device's link record (a default one when it never connected).
  absl::StatusOr<LinkRecord> Link(const storage::TenantId& t, std::string_view device) const;
  // Told of every report once it is stored (alert rules), with the scopes it
  // counts in and its values (derived ones included).
  using ReportFn = std::function<void(const std::string& tenant, const std::string& device,
                                      const std::vector<std::string>& scopes, const Values& values, int64_t time_ms)>;
  void SetReportListener(ReportFn fn) { report_listener_ = std::move(fn); }
  // Told once a registry change that moves a device between scopes (or
  // adds it) is committed (alert rules arm or drop it).
  using ScopesFn = std::function<void(const std::string& tenant, const std::string& device,
                                      const std::vector<std::string>& before, const std::vector<std::string>& after)>;
  void SetScopesListener(ScopesFn fn) { scopes_listener_ = std::move(fn); }
  absl::Status Commit(mgmt::Output* out) override;
  void Counters(const std::function<void(const char*, uint64_t)>& pub) const override;

  // health.get: {"time_ms", "values"} of the last report, or NotFound.
  absl::StatusOr<Json> Latest(const storage::TenantId& t, std::string_view device) const;
  // health.history: the minutes in [from_ms, to_ms] (at most the last
  // history_minutes), oldest first: [{"minute_ms", "metrics": {name:
  // {"min","max","mean","last","n"}}}], only `metrics` when not empty.
  absl::StatusOr<Json> History(const storage::TenantId& t, std::string_view device, int64_t from_ms, int64_t to_ms,
                               const std::vector<std::string>& metrics) const;

 private:
  Json Bucket(const storage::TenantId& t, std::string_view device, uint64_t slot) const;
  // The device's latest report as counted in the roll-ups (this turn's, or
  // the stored one); time_ms 0 and no scopes when none is counted.
  struct Prev {
    Rollups::Report r;
    int64_t time_ms = 0;
  };
  static std::string LatestBytes(const Prev& p);  // the stored form of a latest report
  Prev Previous(const storage::TenantId& t, const std::string& id, std::string_view device) const;

  storage::KvStore* kv_;
  const Clock* clock_;
  Options opts_;
  storage::WriteBatch batch_;
  // Written this turn, not yet in the store: the same minute's next report
  // folds into these (key → bucket).
  StringMap<Json> pending_;
  StringMap<Prev> pending_latest_;      // tenant\0device → its report written this turn
  StringMap<LinkRecord> pending_link_;  // tenant\0device → its link record written this turn
  storage::Registry reg_;               // reads the device's record (its scopes)
  Rollups rollups_;
  ReportFn report_listener_;
  ScopesFn scopes_listener_;
  struct Budget {
    int64_t at_ms;  // last report seen
    double tokens;  // reports it may send now (at most 2)
  };
  StringMap<Budget> budget_;  // tenant\0device → its report budget (connected devices)
  std::vector<mgmt::DeviceSend> replies_;
  struct Stats {
    uint64_t accepted = 0, rate_limited = 0, commits_failed = 0, bytes_written = 0, link_events = 0;
  } stats_;
  mutable uint64_t link_damaged_ = 0;  // found by reads (health.get) too
};

}  // namespace fmq::health

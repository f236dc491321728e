// Fleet health roll-ups (doc/health.md, "Roll-ups"): per tenant and per
// scope — the whole tenant, each group, model and firmware version — the
// number of devices, how many are online, how many report, how long since
// each last reported, and a histogram of every reported value. All of it
// is kept up to date as things change (a device added, moved or retired;
// connected or disconnected; a report replacing the previous one), so
// `health.summary` costs O(scopes × buckets), never a pass over the fleet.
// Nothing here is kept per device: what a device contributes is stored with
// its latest report (the scopes it was counted in) and its registry record.
// In memory only; rebuilt from the store at start-up (Recover).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "common/string_map.h"
#include "storage/records_generated.h"

namespace fmq::health {

using Json = nlohmann::json;

// The scopes a device counts in: "tenant", "group:<id>" for each group,
// "model:<id>" and "firmware:<version>" when set; none when retired.
std::vector<std::string> ScopesOf(const fb::DeviceT& d);
// A scope name as operators write it: "tenant", or "group:", "model:" or
// "firmware:" followed by a non-empty id.
bool ValidScope(std::string_view scope);

// A histogram of values in logarithmic buckets, 32 per power of two (values
// within 2.2 % of each other share one), with the sum of each bucket so a
// bucket of equal values answers them exactly. Values may be added and
// removed; |v| < 1e-9 counts as 0.
class Sketch {
 public:
  void Add(double v, int64_t n);  // n = +1 adds, -1 removes
  int64_t count() const { return n_; }
  double mean() const { return n_ > 0 ? sum_ / static_cast<double>(n_) : 0; }
  // The mean of the bucket holding the value of rank q·(count-1), q in [0, 1].
  double Quantile(double q) const;
  size_t buckets() const { return buckets_.size(); }

 private:
  struct Bucket {
    int32_t key;  // log bucket of the value: ordered like the values
    int64_t n;
    double sum;
  };
  // Sorted by key; a flat vector (24 bytes a bucket, binary search): a scope
  // holds at most a few hundred buckets per value in practice.
  std::vector<Bucket> buckets_;
  int64_t n_ = 0;
  double sum_ = 0;
};

struct RollupOptions {
  size_t max_scopes = 10'000;  // per tenant: groups, models and firmware versions beyond are not rolled up
  size_t max_metrics = 64;     // per tenant: distinct free-form metric names rolled up (built-ins always)
};

class Rollups {
 public:
  explicit Rollups(const RollupOptions& o = {}) : opts_(o) {}

  // What a device's latest report contributes.
  struct Report {
    std::vector<std::string> scopes;
    std::map<std::string, double> values;
    int64_t minute = 0;  // wall minute of the report
  };

  // A device joined, moved between or left scopes (registry change).
  void Members(const std::string& tenant, const std::vector<std::string>& before,
               const std::vector<std::string>& after);
  // A device came online (+1) or went offline (-1) in these scopes.
  void Online(const std::string& tenant, const std::vector<std::string>& scopes, int delta);
  // A device's latest report replaced `before` (null: none counted) by
  // `after` (null: the device's reports are gone).
  void Reported(const std::string& tenant, const Report* before, const Report* after);

  // health.summary of one scope: {"scope", "devices", "online", "offline",
  // "reporting", "never_reported", "silent": {"over_s", "devices"},
  // "metrics": {name: {"devices", "mean", "min", "p50", "p90", "p99", "max"}}}.
  // `metrics` empty: all. An unknown scope answers zeros.
  Json Summary(const std::string& tenant, std::string_view scope, int64_t now_ms, int64_t silent_over_s,
               const std::vector<std::string>& metrics) const;
  // The scopes of a kind ("group", "model", "firmware") with devices,
  // most devices first (then by name), at most `limit`:
  // [{"scope", "devices", "online", "offline"}].
  Json Breakdown(const std::string& tenant, std::string_view kind, size_t limit) const;

  struct Stats {
    uint64_t scopes_refused = 0;   // a scope past max_scopes (not rolled up)
    uint64_t metrics_refused = 0;  // a free-form name past max_metrics (not rolled up)
    uint64_t scopes = 0;           // held, over all tenants
  };
  const Stats& stats() const { return stats_; }

 private:
  struct Scope {
    int64_t devices = 0, online = 0, reporting = 0;
    std::map<int64_t, int64_t> last_minute;  // minute of the latest report → devices
    StringMap<Sketch> metrics;
  };
  struct Tenant {
    StringMap<Scope> scopes;                        // never erased: admitted scopes stay (bounded by max_scopes)
    absl::flat_hash_set<std::string> metric_names;  // free-form names admitted
  };
  // The scope, created while the tenant has room; null past the cap.
  Scope* Find(Tenant& t, const std::string& scope);
  bool Admit(Tenant& t, const std::string& metric);
  void Apply(const std::string& tenant, const Report& r, int64_t n);

  RollupOptions opts_;
  StringMap<Tenant> tenants_;
  Stats stats_;
};

}  // namespace fmq::health

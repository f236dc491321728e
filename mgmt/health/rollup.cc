#include "mgmt/health/rollup.h"

#include <algorithm>
#include <cmath>

namespace fmq::health {
namespace {

constexpr int kPerOctave = 32;
constexpr double kZero = 1e-9;
constexpr int32_t kOffset = 2000;  // log2(1e-9)·32 ≈ -957: keys of nonzero values stay ≥ 1

int32_t KeyOf(double v) {
  const double a = std::fabs(v);
  if (!(a >= kZero)) return 0;  // also NaN (never stored: reports are checked)
  const int32_t k = static_cast<int32_t>(std::floor(std::log2(a) * kPerOctave)) + kOffset;
  return v < 0 ? -k : k;
}

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

bool ValidScope(std::string_view s) {
  if (s == "tenant") return true;
  for (std::string_view kind : {"group:", "model:", "firmware:"}) {
    if (StartsWith(s, kind)) return s.size() > kind.size();
  }
  return false;
}

std::vector<std::string> ScopesOf(const fb::DeviceT& d) {
  if (d.status == fb::DeviceStatus::Decommissioned || d.status == fb::DeviceStatus::Replaced) return {};
  std::vector<std::string> s{"tenant"};
  for (const std::string& g : d.group_ids) s.push_back("group:" + g);
  if (!d.model_id.empty()) s.push_back("model:" + d.model_id);
  if (!d.firmware_version.empty()) s.push_back("firmware:" + d.firmware_version);
  return s;
}

void Sketch::Add(double v, int64_t n) {
  const int32_t k = KeyOf(v);
  auto it =
      std::lower_bound(buckets_.begin(), buckets_.end(), k, [](const Bucket& b, int32_t key) { return b.key < key; });
  if (it == buckets_.end() || it->key != k) it = buckets_.insert(it, Bucket{k, 0, 0});
  it->n += n;
  it->sum += v * static_cast<double>(n);
  n_ += n;
  sum_ += v * static_cast<double>(n);
  if (it->n <= 0) buckets_.erase(it);
  if (n_ <= 0) {  // empty: drop the rounding left in the sums
    n_ = 0;
    sum_ = 0;
    buckets_.clear();
  }
}

double Sketch::Quantile(double q) const {
  if (n_ <= 0 || buckets_.empty()) return 0;
  const auto rank = static_cast<int64_t>(std::llround(std::clamp(q, 0.0, 1.0) * static_cast<double>(n_ - 1)));
  int64_t seen = 0;
  for (const Bucket& b : buckets_) {
    seen += b.n;
    if (seen > rank) return b.sum / static_cast<double>(b.n);
  }
  return buckets_.back().sum / static_cast<double>(buckets_.back().n);
}

Rollups::Scope* Rollups::Find(Tenant& t, const std::string& scope) {
  auto it = t.scopes.find(scope);
  if (it != t.scopes.end()) return &it->second;
  if (t.scopes.size() >= opts_.max_scopes + 1) {  // + the tenant scope
    stats_.scopes_refused++;
    return nullptr;
  }
  stats_.scopes++;
  return &t.scopes[scope];
}

bool Rollups::Admit(Tenant& t, const std::string& metric) {
  if (!StartsWith(metric, "m.")) return true;  // a built-in
  if (t.metric_names.contains(metric)) return true;
  if (t.metric_names.size() >= opts_.max_metrics) {
    stats_.metrics_refused++;
    return false;
  }
  t.metric_names.insert(metric);
  return true;
}

void Rollups::Members(const std::string& tenant, const std::vector<std::string>& before,
                      const std::vector<std::string>& after) {
  if (before == after) return;
  Tenant& t = tenants_[tenant];
  for (const std::string& s : before) {
    if (std::find(after.begin(), after.end(), s) != after.end()) continue;
    if (Scope* sc = Find(t, s); sc != nullptr) sc->devices = std::max<int64_t>(0, sc->devices - 1);
  }
  for (const std::string& s : after) {
    if (std::find(before.begin(), before.end(), s) != before.end()) continue;
    if (Scope* sc = Find(t, s); sc != nullptr) sc->devices++;
  }
}

void Rollups::Online(const std::string& tenant, const std::vector<std::string>& scopes, int delta) {
  if (scopes.empty()) return;
  Tenant& t = tenants_[tenant];
  for (const std::string& s : scopes) {
    if (Scope* sc = Find(t, s); sc != nullptr) sc->online = std::max<int64_t>(0, sc->online + delta);
  }
}

void Rollups::Apply(const std::string& tenant, const Report& r, int64_t n) {
  if (r.scopes.empty()) return;
  Tenant& t = tenants_[tenant];
  std::vector<const std::pair<const std::string, double>*> values;
  for (const auto& kv : r.values) {
    if (Admit(t, kv.first)) values.push_back(&kv);
  }
  for (const std::string& s : r.scopes) {
    Scope* sc = Find(t, s);
    if (sc == nullptr) continue;
    sc->reporting = std::max<int64_t>(0, sc->reporting + n);
    auto [m, fresh] = sc->last_minute.try_emplace(r.minute, 0);
    m->second += n;
    if (m->second <= 0) sc->last_minute.erase(m);
    for (const auto* kv : values) {
      auto it = sc->metrics.try_emplace(kv->first).first;
      it->second.Add(kv->second, n);
      if (it->second.count() == 0) sc->metrics.erase(it);
    }
  }
}

void Rollups::Reported(const std::string& tenant, const Report* before, const Report* after) {
  if (before != nullptr) Apply(tenant, *before, -1);
  if (after != nullptr) Apply(tenant, *after, +1);
}

Json Rollups::Summary(const std::string& tenant, std::string_view scope, int64_t now_ms, int64_t silent_over_s,
                      const std::vector<std::string>& metrics) const {
  Json j{{"scope", scope},
         {"devices", 0},
         {"online", 0},
         {"offline", 0},
         {"reporting", 0},
         {"never_reported", 0},
         {"silent", Json{{"over_s", silent_over_s}, {"devices", 0}}},
         {"metrics", Json::object()}};
  auto t = tenants_.find(tenant);
  if (t == tenants_.end()) return j;
  auto it = t->second.scopes.find(scope);
  if (it == t->second.scopes.end()) return j;
  const Scope& s = it->second;
  j["devices"] = s.devices;
  j["online"] = std::min(s.online, s.devices);
  j["offline"] = std::max<int64_t>(0, s.devices - s.online);
  j["reporting"] = s.reporting;
  j["never_reported"] = std::max<int64_t>(0, s.devices - s.reporting);
  // Silent: the latest report's minute ends before now - over_s.
  const int64_t cutoff_min = (now_ms - silent_over_s * 1000) / 60'000;
  int64_t silent = 0;
  for (auto m = s.last_minute.begin(); m != s.last_minute.end() && m->first < cutoff_min; ++m) silent += m->second;
  j["silent"]["devices"] = silent;
  std::vector<std::string> names;
  for (const auto& [name, sk] : s.metrics) {
    if (metrics.empty() || std::find(metrics.begin(), metrics.end(), name) != metrics.end()) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  Json& out = j["metrics"];
  for (const std::string& name : names) {
    const Sketch& sk = s.metrics.find(name)->second;
    out[name] =
        Json{{"devices", sk.count()},   {"mean", sk.mean()},        {"min", sk.Quantile(0)}, {"p50", sk.Quantile(0.5)},
             {"p90", sk.Quantile(0.9)}, {"p99", sk.Quantile(0.99)}, {"max", sk.Quantile(1)}};
  }
  return j;
}

Json Rollups::Breakdown(const std::string& tenant, std::string_view kind, size_t limit) const {
  Json out = Json::array();
  auto t = tenants_.find(tenant);
  if (t == tenants_.end()) return out;
  const std::string prefix = std::string(kind) + ":";
  std::vector<std::pair<int64_t, std::string>> rows;
  for (const auto& [name, s] : t->second.scopes) {
    if (s.devices > 0 && StartsWith(name, prefix)) rows.emplace_back(-s.devices, name);
  }
  std::sort(rows.begin(), rows.end());
  if (rows.size() > limit) rows.resize(limit);
  for (const auto& [neg, name] : rows) {
    const Scope& s = t->second.scopes.find(name)->second;
    out.push_back(Json{{"scope", name},
                       {"devices", s.devices},
                       {"online", std::min(s.online, s.devices)},
                       {"offline", std::max<int64_t>(0, s.devices - s.online)}});
  }
  return out;
}

}  // namespace fmq::health

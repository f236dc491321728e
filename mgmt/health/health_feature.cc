#include "mgmt/health/health_feature.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/log.h"
#include "storage/keys.h"

namespace fmq::health {
namespace {

using storage::Family;
using storage::TenantId;

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// The built-in values and their ranges (doc/device-api.md, "Health").
struct Builtin {
  const char* name;
  double lo, hi;
  bool integer;
};
constexpr Builtin kBuiltins[] = {
    {"uptime_s", 0, 20.0 * 365 * 86400, true},
    {"cpu_pct", 0, 100, false},
    {"mem_pct", 0, 100, false},
    {"storage_pct", 0, 100, false},
    {"battery_pct", 0, 100, false},
    {"temperature_c", -100, 200, false},
    {"errors", 0, 1e15, true},
    {"rssi_dbm", -200, 0, false},
};
constexpr double kMetricAbs = 1e15;

}  // namespace

bool ValidMetricName(std::string_view n, size_t max) {
  if (n.empty() || n.size() > max) return false;
  for (char c : n) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-')) return false;
  }
  return true;
}

namespace {

// A minute slot as OnDeviceMessage writes it: {"minute": M, "metrics": {name:
// [min, max, sum, last, n]}}. Stored bytes that parse but do not have this
// shape are damaged: replaced on the next report, skipped when read.
bool ValidSlot(const Json& b) {
  if (!b.is_object()) return false;
  auto m = b.find("minute"), ms = b.find("metrics");
  return m != b.end() && m->is_number_integer() && ms != b.end() && ms->is_object();
}
bool ValidAggregate(const Json& a) {
  if (!a.is_array() || a.size() != 5) return false;
  for (const Json& x : a) {
    if (!x.is_number()) return false;
  }
  return a[4].get<double>() >= 1;
}

// A stored latest report: {"time_ms", "values": {name: number}, "scopes":
// [...]} (no "scopes": written before roll-ups, never counted). False when
// damaged (then it is replaced by the next report, and counts nowhere).
bool ParseLatest(std::string_view bytes, Rollups::Report* r, int64_t* time_ms) {
  Json j = Json::parse(bytes, nullptr, false);
  if (!j.is_object()) return false;
  auto t = j.find("time_ms"), v = j.find("values"), sc = j.find("scopes");
  if (t == j.end() || !t->is_number_integer() || v == j.end() || !v->is_object()) return false;
  *time_ms = t->get<int64_t>();
  r->minute = *time_ms / 60'000;
  for (auto it = v->begin(); it != v->end(); ++it) {
    if (it->is_number()) r->values[it.key()] = it->get<double>();
  }
  if (sc != j.end() && sc->is_array()) {
    for (const Json& x : *sc) {
      if (x.is_string()) r->scopes.push_back(x.get<std::string>());
    }
  }
  return true;
}

}  // namespace

std::string ValidateReport(const Json& body, const Options& o, Values* out) {
  if (!body.is_object()) return "a health report is a JSON object";
  Values v;
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& k = it.key();
    if (k == "client_token") continue;
    if (k == "metrics") {
      if (!it->is_object()) return "metrics must be an object {name: number}";
      if (it->size() > o.max_metrics) {
        return "metrics: " + std::to_string(it->size()) + " entries, at most " + std::to_string(o.max_metrics);
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!ValidMetricName(m.key(), o.max_name)) {
          return "metrics: name '" + m.key().substr(0, 40) + "' must be 1.." + std::to_string(o.max_name) +
                 " of a-z 0-9 _ . -";
        }
        if (!m->is_number() || !std::isfinite(m->get<double>()) || std::fabs(m->get<double>()) > kMetricAbs) {
          return "metrics." + m.key() + " must be a finite number of magnitude at most 1e15";
        }
        v["m." + m.key()] = m->get<double>();
      }
      continue;
    }
    const Builtin* b = nullptr;
    for (const Builtin& x : kBuiltins) {
      if (k == x.name) b = &x;
    }
    if (b == nullptr) return "unknown field '" + k.substr(0, 40) + "' (free-form values go under metrics)";
    if (!it->is_number() || (b->integer && !it->is_number_integer() && !it->is_number_unsigned())) {
      return k + (b->integer ? " must be an integer" : " must be a number");
    }
    const double d = it->get<double>();
    if (!std::isfinite(d) || d < b->lo || d > b->hi) {
      char why[96];
      std::snprintf(why, sizeof why, " must be within %g..%g", b->lo, b->hi);
      return k + why;
    }
    v[k] = d;
  }
  if (v.empty()) return "a health report needs at least one value";
  if (out != nullptr) *out = std::move(v);
  return "";
}

HealthFeature::HealthFeature(storage::KvStore* kv, const Clock* clock, const Options& o)
    : kv_(kv), clock_(clock), opts_(o), reg_(kv), rollups_(o.rollup) {}

std::string HealthFeature::LatestBytes(const Prev& p) {
  Json values = Json::object();
  for (const auto& [k, d] : p.r.values) values[k] = d;
  return Dump(Json{{"time_ms", p.time_ms}, {"values", values}, {"scopes", p.r.scopes}});
}

HealthFeature::Prev HealthFeature::Previous(const TenantId& t, const std::string& id, std::string_view device) const {
  if (auto p = pending_latest_.find(id); p != pending_latest_.end()) return p->second;
  Prev out;
  auto got = kv_->Get(Family::kHealth, storage::keys::HealthLatest(t, device));
  if (got.ok() && !ParseLatest(*got, &out.r, &out.time_ms)) out = Prev{};
  return out;
}

std::string HealthFeature::Validate(std::string_view /*topic*/, const Json& body) const {
  return ValidateReport(body, opts_);
}

void HealthFeature::OnDeviceMessage(const mgmt::DeviceMessage& m) {
  Values v;
  if (!ValidateReport(m.body, opts_, &v).empty()) return;  // checked on the worker
  const int64_t now = clock_->WallMs();
  const std::string id = mgmt::JoinKey(m.tenant, m.device_id);
  // A token bucket per connected device: one report per min_interval on
  // average, a burst of two (a device reporting exactly at the bound is
  // never refused for its timer's jitter).
  Budget& b = budget_.try_emplace(id, Budget{now, 2.0}).first->second;
  if (opts_.min_interval_ms > 0) {
    b.tokens =
        std::min(2.0, b.tokens + static_cast<double>(now - b.at_ms) / static_cast<double>(opts_.min_interval_ms));
  } else {
    b.tokens = 2.0;
  }
  b.at_ms = now;
  if (b.tokens < 1.0) {
    stats_.rate_limited++;
    Json err{{"code", "rate_limited"},
             {"message", "health reports at most every " + std::to_string(opts_.min_interval_ms) + " ms"}};
    Json body{{"error", err}};
    if (!m.client_token.empty()) body["client_token"] = m.client_token;
    replies_.push_back({m.tenant, m.device_id, "health/report/rejected", Dump(body), 0});
    return;
  }
  b.tokens -= 1.0;
  stats_.accepted++;
  const TenantId t = TenantId::FromAuthenticated(m.tenant);
  Prev prev = Previous(t, id, m.device_id);
  // Derived: the error counter's rate since the previous report (not when
  // the counter went back, e.g. after a reboot).
  if (auto e = v.find("errors"); e != v.end() && prev.time_ms > 0 && now > prev.time_ms) {
    if (auto pe = prev.r.values.find("errors"); pe != prev.r.values.end() && e->second >= pe->second) {
      v["errors_per_min"] = (e->second - pe->second) * 60'000.0 / static_cast<double>(now - prev.time_ms);
    }
  }
  // The roll-up scopes the report counts in: the device's record now.
  Prev cur;
  cur.time_ms = now;
  cur.r.minute = now / 60'000;
  cur.r.values = v;
  if (fb::DeviceT d; reg_.GetDevice(t, m.device_id, &d).ok()) cur.r.scopes = ScopesOf(d);
  std::string latest = LatestBytes(cur);
  // The roll-ups follow what is stored: applied once this batch is written.
  batch_.OnCommitted([this, tenant = m.tenant, device = m.device_id, now, before = std::move(prev.r), after = cur.r] {
    rollups_.Reported(tenant, &before, &after);
    if (report_listener_) report_listener_(tenant, device, after.scopes, after.values, now);
  });
  pending_latest_[id] = std::move(cur);
  // The minute's slot: folded into what this minute holds, replaced when the
  // slot holds an older day's minute.
  const int64_t minute = now / 60'000;
  const uint64_t slot = static_cast<uint64_t>(minute) % opts_.history_minutes;
  const std::string key = storage::keys::HealthMinute(t, m.device_id, slot);
  Json bucket;  // the minute's aggregate
  if (auto p = pending_.find(key); p != pending_.end()) {
    bucket = std::move(p->second);
  } else {
    bucket = Bucket(t, m.device_id, slot);
  }
  if (!ValidSlot(bucket) || bucket["minute"].get<int64_t>() != minute) {
    bucket = Json{{"minute", minute}, {"metrics", Json::object()}};
  }
  Json& ms = bucket["metrics"];
  for (const auto& [k, d] : v) {
    auto it = ms.find(k);
    if (it == ms.end() || !ValidAggregate(*it)) {
      ms[k] = Json::array({d, d, d, d, 1});  // min, max, sum, last, n
      continue;
    }
    Json& a = *it;
    a[0] = std::min(a[0].get<double>(), d);
    a[1] = std::max(a[1].get<double>(), d);
    a[2] = a[2].get<double>() + d;
    a[3] = d;
    a[4] = a[4].get<uint64_t>() + 1;
  }
  std::string bytes = Dump(bucket);
  stats_.bytes_written += latest.size() + bytes.size() + 2 * key.size();
  batch_.Put(Family::kHealth, storage::keys::HealthLatest(t, m.device_id), std::move(latest));
  batch_.Put(Family::kHealth, key, std::move(bytes));
  pending_[key] = std::move(bucket);
}

Json HealthFeature::Bucket(const TenantId& t, std::string_view device, uint64_t slot) const {
  auto got = kv_->Get(Family::kHealth, storage::keys::HealthMinute(t, device, slot));
  if (!got.ok()) return Json();
  Json b = Json::parse(*got, nullptr, false);
  return b.is_discarded() ? Json() : b;  // damaged: replaced, never trusted
}

void HealthFeature::OnDisconnected(const std::string& tenant, const std::string& device_id) {
  const std::string id = mgmt::JoinKey(tenant, device_id);
  budget_.erase(id);
}

void HealthFeature::OnDeviceRetired(const TenantId& t, const std::string& device_id) {
  const std::string id = mgmt::JoinKey(t.str(), device_id);
  Prev prev = Previous(t, id, device_id);
  if (!prev.r.scopes.empty()) {
    batch_.OnCommitted(
        [this, tenant = t.str(), before = std::move(prev.r)] { rollups_.Reported(tenant, &before, nullptr); });
  }
  pending_latest_[id] = Prev{};
  pending_link_[id] = LinkRecord{};  // read this turn instead of the stored one deleted here
  batch_.Delete(Family::kHealth, storage::keys::HealthLatest(t, device_id));
  batch_.Delete(Family::kHealth, storage::keys::HealthLink(t, device_id));
  std::vector<std::string> slots;
  (void)kv_->ScanPrefix(Family::kHealth, storage::keys::HealthMinutePrefix(t, device_id),
                        [&](std::string_view k, std::string_view) {
                          slots.emplace_back(k);
                          return true;
                        });
  for (std::string& k : slots) batch_.Delete(Family::kHealth, std::move(k));
}

absl::Status HealthFeature::Commit(mgmt::Output* out) {
  absl::Status s = absl::OkStatus();
  if (!batch_.empty()) {
    // Telemetry: not synced (a crash loses at most the last moments of it).
    s = kv_->Write(batch_, false);
    batch_.Clear();
    if (!s.ok()) {
      stats_.commits_failed++;
      FMQ_LOG_ERROR("health reports not written (%s)", std::string(s.message()).c_str());
    }
  }
  pending_.clear();
  pending_latest_.clear();
  pending_link_.clear();
  for (auto& r : replies_) out->sends.push_back(std::move(r));
  replies_.clear();
  return s;
}

void HealthFeature::OnDevicePut(const TenantId& t, const fb::DeviceT* old, const fb::DeviceT& rec,
                                storage::WriteBatch* b) {
  std::vector<std::string> before = old != nullptr ? ScopesOf(*old) : std::vector<std::string>{};
  std::vector<std::string> after = ScopesOf(rec);
  if (before == after) return;
  b->OnCommitted([this, tenant = t.str(), device = rec.device_id, before, after] {
    rollups_.Members(tenant, before, after);
    if (scopes_listener_) scopes_listener_(tenant, device, before, after);
  });
  // The device's latest report moves with it (retirement removes it:
  // OnDeviceRetired), so a scope's values are its members' values.
  if (after.empty()) return;
  const std::string id = mgmt::JoinKey(t.str(), rec.device_id);
  Prev prev = Previous(t, id, rec.device_id);
  if (prev.time_ms == 0 || prev.r.scopes.empty() || prev.r.scopes == after) return;
  Prev cur = prev;
  cur.r.scopes = std::move(after);
  batch_.Put(Family::kHealth, storage::keys::HealthLatest(t, rec.device_id), LatestBytes(cur));
  batch_.OnCommitted([this, tenant = t.str(), before = std::move(prev.r), moved = cur.r] {
    rollups_.Reported(tenant, &before, &moved);
  });
  pending_latest_[id] = std::move(cur);
}

absl::Status HealthFeature::Recover() {
  // The roll-ups from the store: every device's scopes (its record), every
  // latest report (the scopes it was counted in). Online counts start at
  // zero: devices come back as they connect.
  std::string tc;
  do {
    storage::Page<fb::TenantT> tenants;
    if (absl::Status s = reg_.ListTenants(tc, 1000, &tenants); !s.ok()) return s;
    for (const fb::TenantT& tr : tenants.items) {
      const TenantId t = TenantId::FromAuthenticated(tr.tenant_id);
      std::string dc;
      do {
        storage::Page<fb::DeviceT> page;
        if (absl::Status s = reg_.ListDevices(t, {}, dc, 1000, &page); !s.ok()) return s;
        for (const fb::DeviceT& d : page.items) rollups_.Members(tr.tenant_id, {}, ScopesOf(d));
        dc = page.next_cursor;
      } while (!dc.empty());
      absl::Status s = kv_->ScanPrefix(Family::kHealth, storage::keys::HealthLatestPrefix(t),
                                       [&](std::string_view, std::string_view v) {
                                         Rollups::Report r;
                                         int64_t time_ms = 0;
                                         if (ParseLatest(v, &r, &time_ms) && !r.scopes.empty()) {
                                           rollups_.Reported(tr.tenant_id, nullptr, &r);
                                         }
                                         return true;
                                       });
      if (!s.ok()) return s;
    }
    tc = tenants.next_cursor;
  } while (!tc.empty());
  return absl::OkStatus();
}

void HealthFeature::Counters(const std::function<void(const char*, uint64_t)>& pub) const {
  pub("health/reports", stats_.accepted);
  pub("health/rate_limited", stats_.rate_limited);
  pub("health/commits_failed", stats_.commits_failed);
  pub("health/bytes_written", stats_.bytes_written);
  pub("health/link_events", stats_.link_events);
  pub("health/link_records_damaged", link_damaged_);
  const Rollups::Stats& r = rollups_.stats();
  pub("health/rollup_scopes", r.scopes);
  pub("health/rollup_scopes_refused", r.scopes_refused);
  pub("health/rollup_metrics_refused", r.metrics_refused);
}

void HealthFeature::OnLink(const TenantId& t, const std::string& device_id, const LinkEvent& e) {
  const std::string id = mgmt::JoinKey(t.str(), device_id);
  auto it = pending_link_.find(id);
  if (it == pending_link_.end()) {
    auto got = Link(t, device_id);
    if (!got.ok()) {
      FMQ_LOG_ERROR("link record of '%s' not read: %s", device_id.c_str(), std::string(got.status().message()).c_str());
      return;
    }
    it = pending_link_.emplace(id, std::move(*got)).first;
  }
  // A record is started by a connect: counters or a disconnect of a device
  // whose connect was not recorded (not registered, or retired since) are
  // not kept.
  if (e.kind != LinkEvent::Kind::kConnected && it->second.connects() == 0) return;
  it->second.Apply(e);
  stats_.link_events++;
  std::string bytes = it->second.Encode();
  stats_.bytes_written += bytes.size();
  batch_.Put(Family::kHealth, storage::keys::HealthLink(t, device_id), std::move(bytes));
}

absl::StatusOr<LinkRecord> HealthFeature::Link(const TenantId& t, std::string_view device) const {
  if (auto it = pending_link_.find(mgmt::JoinKey(t.str(), device)); it != pending_link_.end()) return it->second;
  LinkRecord r;
  auto got = kv_->Get(Family::kHealth, storage::keys::HealthLink(t, device));
  if (absl::IsNotFound(got.status())) return r;
  if (!got.ok()) return got.status();
  if (!LinkRecord::Decode(*got, &r)) {
    // Damaged bytes: started afresh (and replaced by the next event).
    link_damaged_++;
    FMQ_LOG_WARN("link record of '%.*s' is damaged: started afresh", static_cast<int>(device.size()), device.data());
    return LinkRecord{};
  }
  return r;
}

absl::StatusOr<Json> HealthFeature::Latest(const TenantId& t, std::string_view device) const {
  auto got = kv_->Get(Family::kHealth, storage::keys::HealthLatest(t, device));
  if (!got.ok()) return got.status();
  Json j = Json::parse(*got, nullptr, false);
  if (!j.is_object()) return absl::DataLossError("stored health report of '" + std::string(device) + "' is damaged");
  return j;
}

absl::StatusOr<Json> HealthFeature::History(const TenantId& t, std::string_view device, int64_t from_ms, int64_t to_ms,
                                            const std::vector<std::string>& metrics) const {
  const int64_t now_min = clock_->WallMs() / 60'000;
  const int64_t oldest = now_min - static_cast<int64_t>(opts_.history_minutes) + 1;
  const int64_t first = std::max(oldest, from_ms / 60'000), last = std::min(now_min, to_ms / 60'000);
  // One pass over the device's slots (at most history_minutes), then in
  // time order.
  std::map<int64_t, Json> found;
  absl::Status s = kv_->ScanPrefix(Family::kHealth, storage::keys::HealthMinutePrefix(t, device),
                                   [&](std::string_view, std::string_view v) {
                                     Json b = Json::parse(v, nullptr, false);
                                     if (!ValidSlot(b)) return true;
                                     const int64_t m = b["minute"].get<int64_t>();
                                     if (m >= first && m <= last) found.emplace(m, std::move(b));
                                     return true;
                                   });
  if (!s.ok()) return s;
  Json out = Json::array();
  for (auto& [minute, b] : found) {
    Json ms = Json::object();
    for (auto it = b["metrics"].begin(); it != b["metrics"].end(); ++it) {
      if (!metrics.empty() && std::find(metrics.begin(), metrics.end(), it.key()) == metrics.end()) continue;
      const Json& a = *it;
      if (!ValidAggregate(a)) continue;
      ms[it.key()] = Json{
          {"min", a[0]}, {"max", a[1]}, {"mean", a[2].get<double>() / a[4].get<double>()}, {"last", a[3]}, {"n", a[4]}};
    }
    out.push_back(Json{{"minute_ms", minute * 60'000}, {"metrics", std::move(ms)}});
  }
  return out;
}

}  // namespace fmq::health

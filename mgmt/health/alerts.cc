#include "mgmt/health/alerts.h"

#include <algorithm>
#include <cmath>

#include "common/hex.h"
#include "common/log.h"
#include "common/mgmt_topics.h"
#include "mgmt/health/health_feature.h"
#include "mgmt/health/rollup.h"

namespace fmq::health {
namespace {

using storage::Family;
using storage::TenantId;
namespace keys = storage::keys;

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string RuleOfKey(const std::string& k) { return k.substr(0, k.find('\0')); }
std::string DeviceOfKey(const std::string& k) { return k.substr(k.find('\0') + 1); }

bool Id(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '-';
  });
}

bool InScope(const std::vector<std::string>& scopes, const std::string& scope) {
  return std::find(scopes.begin(), scopes.end(), scope) != scopes.end();
}

}  // namespace

Json AlertRule::ToJson() const {
  Json j{{"rule_id", rule_id}, {"metric", metric},       {"op", op},       {"threshold", threshold},
         {"clear", clear},     {"for_s", for_ms / 1000}, {"scope", scope}, {"severity", severity}};
  return j;
}

std::string AlertRule::FromJson(const Json& j, AlertRule* out) {
  if (!j.is_object()) return "a rule is a JSON object";
  AlertRule r;
  auto str = [&](const char* k, std::string* v) {
    auto it = j.find(k);
    if (it == j.end()) return true;
    if (!it->is_string()) return false;
    *v = it->get<std::string>();
    return true;
  };
  if (!str("rule_id", &r.rule_id) || !Id(r.rule_id)) return "rule_id: 1..64 of [A-Za-z0-9_.-]";
  if (!str("metric", &r.metric) || !ValidMetricName(r.metric, 40)) {
    return "metric: a health value (e.g. battery_pct, errors_per_min, m.queue_depth) or offline: 1..40 of "
           "lower-case letters, digits, _ . -";
  }
  if (!str("op", &r.op)) return "op: gt or lt";
  if (r.offline()) {
    if (r.op.empty()) r.op = "gt";
    if (r.op != "gt") return "op: an offline rule is gt (offline for longer than for_s)";
  } else if (r.op != "gt" && r.op != "lt") {
    return "op: gt or lt";
  }
  auto num = [&](const char* k, double* v, bool* present) {
    auto it = j.find(k);
    *present = it != j.end();
    if (!*present) return true;
    if (!it->is_number()) return false;
    *v = it->get<double>();
    return std::isfinite(*v) && std::fabs(*v) <= 1e15;
  };
  bool has_threshold = false, has_clear = false, has_for = false;
  if (!num("threshold", &r.threshold, &has_threshold)) return "threshold: a number, |x| <= 1e15";
  if (!r.offline() && !has_threshold) return "threshold: required (the value compared with)";
  r.clear = r.threshold;
  if (!num("clear", &r.clear, &has_clear)) return "clear: a number, |x| <= 1e15";
  if (!r.offline() && ((r.op == "gt" && r.clear > r.threshold) || (r.op == "lt" && r.clear < r.threshold))) {
    return "clear: on the other side of the threshold (gt: clear <= threshold; lt: clear >= threshold)";
  }
  double for_s = 0;
  if (!num("for_s", &for_s, &has_for) || for_s < 0 || for_s > 7 * 86400 || for_s != std::floor(for_s)) {
    return "for_s: whole seconds, 0..604800";
  }
  if (r.offline() && for_s < 1) return "for_s: an offline rule needs for_s >= 1 (offline for longer than it)";
  r.for_ms = static_cast<int64_t>(for_s) * 1000;
  if (!str("scope", &r.scope)) return "scope: tenant, group:<id>, model:<id> or firmware:<version>";
  if (!ValidScope(r.scope) || r.scope.size() > 200) {
    return "scope: tenant, group:<id>, model:<id> or firmware:<version>";
  }
  if (!str("severity", &r.severity) || (r.severity != "info" && r.severity != "warning" && r.severity != "critical")) {
    return "severity: info, warning or critical";
  }
  *out = std::move(r);
  return "";
}

Json AlertFeature::Record(const AlertRule& r, const std::string& device, const Raised& a) {
  Json j{{"rule_id", r.rule_id},     {"device_id", device}, {"metric", r.metric},      {"op", r.op},
         {"threshold", r.threshold}, {"scope", r.scope},    {"severity", r.severity},  {"state", "raised"},
         {"raised_ms", a.raised_ms}, {"value", a.value},    {"acked", a.acked_ms != 0}};
  if (a.acked_ms != 0) {
    j["acked_ms"] = a.acked_ms;
    j["acked_by"] = a.acked_by;
  }
  return j;
}

AlertFeature::AlertFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, OnlineFn online,
                           const AlertOptions& o)
    : kv_(kv), reg_(reg), clock_(clock), opts_(o), online_(std::move(online)) {}

std::vector<std::string> AlertFeature::ScopesOfDevice(const std::string& tenant, const std::string& device) const {
  fb::DeviceT d;
  if (!reg_->GetDevice(TenantId::FromAuthenticated(tenant), device, &d).ok()) return {};
  return ScopesOf(d);
}

absl::Status AlertFeature::Recover() {
  const int64_t now = clock_->WallMs();
  std::string tc;
  do {
    storage::Page<fb::TenantT> tenants;
    if (absl::Status s = reg_->ListTenants(tc, 1000, &tenants); !s.ok()) return s;
    for (const fb::TenantT& tr : tenants.items) {
      const TenantId t = TenantId::FromAuthenticated(tr.tenant_id);
      Tenant* ten = nullptr;
      absl::Status s =
          kv_->ScanPrefix(Family::kHealth, keys::AlertRulePrefix(t), [&](std::string_view, std::string_view v) {
            AlertRule r;
            const std::string why = AlertRule::FromJson(Json::parse(v, nullptr, false), &r);
            if (!why.empty()) {
              FMQ_LOG_WARN("alert rule of tenant '%s' skipped: %s", tr.tenant_id.c_str(), why.c_str());
              return true;
            }
            if (ten == nullptr) ten = &tenants_[tr.tenant_id];
            ten->rules[r.rule_id] = std::move(r);
            return true;
          });
      if (!s.ok()) return s;
      if (ten == nullptr) continue;
      s = kv_->ScanPrefix(Family::kHealth, keys::AlertPrefix(t), [&](std::string_view, std::string_view v) {
        Json a = Json::parse(v, nullptr, false);
        if (!a.is_object() || a.value("state", "") != "raised" || !a.contains("rule_id") || !a.contains("device_id") ||
            !a["rule_id"].is_string() || !a["device_id"].is_string()) {
          return true;
        }
        const std::string rule = a["rule_id"].get<std::string>();
        if (!ten->rules.contains(rule)) return true;
        Raised r;
        r.raised_ms = a.value("raised_ms", int64_t{0});
        r.value = a.value("value", 0.0);
        r.acked_ms = a.value("acked_ms", int64_t{0});
        r.acked_by = a.value("acked_by", "");
        ten->raised[mgmt::JoinKey(rule, a["device_id"].get<std::string>())] = std::move(r);
        return true;
      });
      if (!s.ok()) return s;
      for (const auto& [id, r] : ten->rules) {
        if (!r.offline()) continue;
        if (absl::Status a = ArmOffline(tr.tenant_id, r, now); !a.ok()) return a;
      }
    }
    tc = tenants.next_cursor;
  } while (!tc.empty());
  return absl::OkStatus();
}

absl::Status AlertFeature::ArmOffline(const std::string& tenant, const AlertRule& r, int64_t since) {
  const TenantId t = TenantId::FromAuthenticated(tenant);
  storage::DeviceFilter f;
  if (r.scope.rfind("group:", 0) == 0) f.group_id = r.scope.substr(6);
  if (r.scope.rfind("model:", 0) == 0) f.model_id = r.scope.substr(6);
  if (r.scope.rfind("firmware:", 0) == 0) f.firmware_version = r.scope.substr(9);
  std::string cursor;
  do {
    storage::Page<fb::DeviceT> page;
    if (absl::Status s = reg_->ListDevices(t, f, cursor, 1000, &page); !s.ok()) return s;
    for (const fb::DeviceT& d : page.items) {
      if (!InScope(ScopesOf(d), r.scope)) continue;  // retired
      if (online_ && online_(tenant, d.device_id)) continue;
      Arm(tenant, r, d.device_id, since, 0);
    }
    cursor = page.next_cursor;
  } while (!cursor.empty());
  return absl::OkStatus();
}

void AlertFeature::Arm(const std::string& tenant, const AlertRule& r, const std::string& device, int64_t since,
                       double value) {
  Tenant& ten = tenants_[tenant];
  const std::string key = mgmt::JoinKey(r.rule_id, device);
  if (ten.raised.contains(key)) return;
  auto [it, fresh] = ten.pending.try_emplace(key, since, value);
  if (!fresh) {
    it->second.second = value;  // waiting already: keep its start
    return;
  }
  due_.emplace(since + r.for_ms, tenant, key);
}

void AlertFeature::Announce(const std::string& tenant, const AlertRule& r, const std::string& device, Json ev,
                            int64_t now) {
  ev["rule_id"] = r.rule_id;
  ev["device_id"] = device;
  ev["metric"] = r.metric;
  ev["severity"] = r.severity;
  ev["time_ms"] = now;
  fb::AuditEntryT e;
  e.time_ms = now;
  e.actor = "broker";
  e.action = "alert." + ev["event"].get<std::string>();
  e.device_id = device;
  e.details_json = Dump(ev);
  e.result = "ok";
  if (reg_->AppendAudit(TenantId::FromAuthenticated(tenant), std::move(e), &batch_).ok()) audited_.push_back(tenant);
  pending_out_.events.push_back(
      mgmt::Event{tenant, std::string(topics::kAlertEventsPrefix) + r.rule_id, Dump(ev), false});
}

void AlertFeature::Raise(const std::string& tenant, const AlertRule& r, const std::string& device, double value,
                         int64_t now) {
  Tenant& ten = tenants_[tenant];
  const std::string key = mgmt::JoinKey(r.rule_id, device);
  ten.pending.erase(key);
  Raised a;
  a.raised_ms = now;
  a.value = value;
  const TenantId t = TenantId::FromAuthenticated(tenant);
  batch_.Put(Family::kHealth, keys::Alert(t, r.rule_id, device), Dump(Record(r, device, a)));
  Announce(tenant, r, device, Json{{"event", "raised"}, {"value", value}}, now);
  ten.raised[key] = std::move(a);
  stats_.raised++;
  turn_budget_++;
}

void AlertFeature::Clear(const std::string& tenant, const AlertRule& r, const std::string& device, double value,
                         int64_t now, const char* why) {
  Tenant& ten = tenants_[tenant];
  auto it = ten.raised.find(mgmt::JoinKey(r.rule_id, device));
  if (it == ten.raised.end()) return;
  Json a = Record(r, device, it->second);
  ten.raised.erase(it);
  a["state"] = "cleared";
  a["cleared_ms"] = now;
  a["clear_value"] = value;
  a["cleared_because"] = why;
  const TenantId t = TenantId::FromAuthenticated(tenant);
  batch_.Put(Family::kHealth, keys::Alert(t, r.rule_id, device), Dump(a));
  Announce(tenant, r, device, Json{{"event", "cleared"}, {"value", value}, {"because", why}}, now);
  stats_.cleared++;
  turn_budget_++;
}

void AlertFeature::OnReport(const std::string& tenant, const std::string& device,
                            const std::vector<std::string>& scopes, const std::map<std::string, double>& values,
                            int64_t time_ms) {
  auto ti = tenants_.find(tenant);
  if (ti == tenants_.end()) return;
  for (const auto& [id, r] : ti->second.rules) {
    if (r.offline() || !InScope(scopes, r.scope)) continue;
    auto v = values.find(r.metric);
    if (v == values.end()) continue;  // not reported: the state stays
    const double x = v->second;
    const std::string key = mgmt::JoinKey(id, device);
    const bool holds = r.op == "gt" ? x > r.threshold : x < r.threshold;
    if (ti->second.raised.contains(key)) {
      if (r.op == "gt" ? x < r.clear : x > r.clear) Clear(tenant, r, device, x, time_ms, "value");
      continue;
    }
    if (!holds) {
      ti->second.pending.erase(key);
    } else if (r.for_ms == 0) {
      Raise(tenant, r, device, x, time_ms);
    } else {
      Arm(tenant, r, device, time_ms, x);
      auto p = ti->second.pending.find(key);
      if (p != ti->second.pending.end() && time_ms - p->second.first >= r.for_ms) Raise(tenant, r, device, x, time_ms);
    }
  }
}

void AlertFeature::OnConnected(const std::string& tenant, const std::string& device_id) {
  auto ti = tenants_.find(tenant);
  if (ti == tenants_.end()) return;
  const int64_t now = clock_->WallMs();
  for (const auto& [id, r] : ti->second.rules) {
    if (!r.offline()) continue;
    const std::string key = mgmt::JoinKey(id, device_id);
    ti->second.pending.erase(key);
    Clear(tenant, r, device_id, 0, now, "connected");
  }
}

void AlertFeature::OnDisconnected(const std::string& tenant, const std::string& device_id) {
  auto ti = tenants_.find(tenant);
  if (ti == tenants_.end()) return;
  std::vector<std::string> scopes;
  bool looked = false;
  const int64_t now = clock_->WallMs();
  for (const auto& [id, r] : ti->second.rules) {
    if (!r.offline()) continue;
    if (!looked) {
      scopes = ScopesOfDevice(tenant, device_id);
      looked = true;
    }
    if (InScope(scopes, r.scope)) Arm(tenant, r, device_id, now, 0);
  }
}

void AlertFeature::OnScopesChanged(const std::string& tenant, const std::string& device,
                                   const std::vector<std::string>& before, const std::vector<std::string>& after) {
  if (after.empty()) return;  // retired: OnDeviceRetired
  auto ti = tenants_.find(tenant);
  if (ti == tenants_.end()) return;
  const int64_t now = clock_->WallMs();
  bool online = false, looked = false;
  for (const auto& [id, r] : ti->second.rules) {
    const bool was = InScope(before, r.scope), is = InScope(after, r.scope);
    if (was == is) continue;
    if (is) {
      if (!r.offline()) continue;  // value rules start with its next report
      if (!looked) {
        online = online_ && online_(tenant, device);
        looked = true;
      }
      if (!online) Arm(tenant, r, device, now, 0);
      continue;
    }
    ti->second.pending.erase(mgmt::JoinKey(id, device));
    Clear(tenant, r, device, 0, now, "out_of_scope");
  }
}

void AlertFeature::OnDeviceRetired(const TenantId& t, const std::string& device_id) {
  auto ti = tenants_.find(t.str());
  if (ti == tenants_.end()) return;
  for (const auto& [id, r] : ti->second.rules) {
    const std::string key = mgmt::JoinKey(id, device_id);
    ti->second.pending.erase(key);
    ti->second.raised.erase(key);
    batch_.Delete(Family::kHealth, keys::Alert(t, id, device_id));
  }
}

int64_t AlertFeature::Pump() {
  const int64_t now = clock_->WallMs();
  while (!due_.empty() && std::get<0>(due_.top()) <= now) {
    if (turn_budget_ >= opts_.max_raises_per_turn) {
      stats_.deferred++;
      return now + 1;
    }
    auto [at, tenant, key] = due_.top();
    due_.pop();
    auto ti = tenants_.find(tenant);
    if (ti == tenants_.end()) continue;
    auto p = ti->second.pending.find(key);
    if (p == ti->second.pending.end()) continue;  // cleared meanwhile
    auto r = ti->second.rules.find(RuleOfKey(key));
    if (r == ti->second.rules.end()) {
      ti->second.pending.erase(p);
      continue;
    }
    if (p->second.first + r->second.for_ms > now) continue;  // re-armed later: its own entry
    const double value = r->second.offline() ? static_cast<double>(now - p->second.first) / 1000.0 : p->second.second;
    Raise(tenant, r->second, DeviceOfKey(key), value, now);
  }
  return due_.empty() ? INT64_MAX : std::max(std::get<0>(due_.top()), now + 1);
}

absl::Status AlertFeature::Commit(mgmt::Output* out) {
  turn_budget_ = 0;
  absl::Status s = absl::OkStatus();
  if (!batch_.empty()) {
    s = reg_->Commit(batch_, true);
    batch_.Clear();
  }
  if (!s.ok()) {
    stats_.commits_failed++;
    for (const std::string& t : audited_) reg_->ForgetAuditHead(TenantId::FromAuthenticated(t));
    audited_.clear();
    pending_out_ = mgmt::Output{};
    FMQ_LOG_ERROR("alerts not written (%s): their events are dropped", std::string(s.message()).c_str());
    return s;
  }
  audited_.clear();
  for (auto& e : pending_out_.events) out->events.push_back(std::move(e));
  pending_out_ = mgmt::Output{};
  return s;
}

void AlertFeature::Counters(const std::function<void(const char*, uint64_t)>& pub) const {
  uint64_t rules = 0, active = 0, waiting = 0;
  for (const auto& [t, ten] : tenants_) {
    rules += ten.rules.size();
    active += ten.raised.size();
    waiting += ten.pending.size();
  }
  pub("alerts/rules", rules);
  pub("alerts/active", active);
  pub("alerts/pending", waiting);
  pub("alerts/raised", stats_.raised);
  pub("alerts/cleared", stats_.cleared);
  pub("alerts/acked", stats_.acked);
  pub("alerts/deferred", stats_.deferred);
  pub("alerts/commits_failed", stats_.commits_failed);
}

absl::Status AlertFeature::CreateRule(const TenantId& t, const AlertRule& r, storage::WriteBatch* b,
                                      std::vector<std::function<void()>>* on_commit) {
  auto ti = tenants_.find(t.str());
  if (ti != tenants_.end()) {
    if (ti->second.rules.contains(r.rule_id)) return absl::AlreadyExistsError("alert rule '" + r.rule_id + "' exists");
    if (ti->second.rules.size() >= opts_.max_rules) {
      return absl::OutOfRangeError("at most " + std::to_string(opts_.max_rules) + " alert rules per tenant");
    }
  }
  b->Put(Family::kHealth, keys::AlertRule(t, r.rule_id), Dump(r.ToJson()));
  on_commit->push_back([this, tenant = t.str(), r] {
    tenants_[tenant].rules[r.rule_id] = r;
    if (r.offline()) {
      if (absl::Status s = ArmOffline(tenant, r, clock_->WallMs()); !s.ok()) {
        FMQ_LOG_ERROR("offline rule '%s' not armed for every device: %s", r.rule_id.c_str(),
                      std::string(s.message()).c_str());
      }
    }
  });
  return absl::OkStatus();
}

absl::Status AlertFeature::DeleteRule(const TenantId& t, const std::string& rule_id, storage::WriteBatch* b,
                                      std::vector<std::function<void()>>* on_commit) {
  auto ti = tenants_.find(t.str());
  if (ti == tenants_.end() || !ti->second.rules.contains(rule_id)) {
    return absl::NotFoundError("no alert rule '" + rule_id + "'");
  }
  b->Delete(Family::kHealth, keys::AlertRule(t, rule_id));
  std::vector<std::string> gone;
  absl::Status s =
      kv_->ScanPrefix(Family::kHealth, keys::AlertPrefix(t, rule_id), [&](std::string_view k, std::string_view) {
        gone.emplace_back(k);
        return true;
      });
  if (!s.ok()) return s;
  for (const std::string& k : gone) b->Delete(Family::kHealth, k);
  on_commit->push_back([this, tenant = t.str(), rule_id] {
    Tenant& ten = tenants_[tenant];
    ten.rules.erase(rule_id);
    const std::string prefix = rule_id + std::string(1, '\0');
    absl::erase_if(ten.raised, [&](const auto& kv) { return kv.first.rfind(prefix, 0) == 0; });
    absl::erase_if(ten.pending, [&](const auto& kv) { return kv.first.rfind(prefix, 0) == 0; });
  });
  return absl::OkStatus();
}

std::vector<AlertRule> AlertFeature::Rules(const std::string& tenant) const {
  std::vector<AlertRule> out;
  if (auto ti = tenants_.find(tenant); ti != tenants_.end()) {
    for (const auto& [id, r] : ti->second.rules) out.push_back(r);
  }
  return out;
}

absl::Status AlertFeature::List(const TenantId& t, bool all, const std::string& rule_id, const std::string& device_id,
                                const std::string& cursor, size_t limit, Json* items, std::string* next_cursor) const {
  *items = Json::array();
  next_cursor->clear();
  const std::string prefix = rule_id.empty() ? keys::AlertPrefix(t) : keys::AlertPrefix(t, rule_id);
  std::string start = prefix;
  if (!cursor.empty()) {
    std::string k;
    if (!FromHex(cursor, &k) || k.rfind(prefix, 0) != 0)
      return absl::InvalidArgumentError("cursor: not from this list");
    start = k;
    start.push_back('\0');  // after it
  }
  std::string limit_key = prefix;
  limit_key.push_back('\xFF');
  size_t scanned = 0;
  std::string last;
  bool more = false;
  absl::Status s = kv_->Scan(Family::kHealth, start, limit_key, [&](std::string_view k, std::string_view v) {
    if (k.substr(0, prefix.size()) != prefix) return false;
    if (items->size() >= limit || scanned >= 100'000) {
      more = true;
      return false;
    }
    scanned++;
    last.assign(k);
    Json a = Json::parse(v, nullptr, false);
    if (!a.is_object()) return true;  // damaged: skipped
    if (!all && a.value("state", "") != "raised") return true;
    if (!device_id.empty() && a.value("device_id", "") != device_id) return true;
    items->push_back(std::move(a));
    return true;
  });
  if (!s.ok()) return s;
  if (more) *next_cursor = HexOf(last);
  return absl::OkStatus();
}

absl::Status AlertFeature::Ack(const TenantId& t, const std::string& rule_id, const std::string& device_id,
                               const std::string& actor, int64_t now, storage::WriteBatch* b, Json* alert) {
  auto ti = tenants_.find(t.str());
  if (ti == tenants_.end()) return absl::NotFoundError("no raised alert of rule '" + rule_id + "' for that device");
  auto it = ti->second.raised.find(mgmt::JoinKey(rule_id, device_id));
  if (it == ti->second.raised.end()) {
    return absl::NotFoundError("no raised alert of rule '" + rule_id + "' for device '" + device_id + "'");
  }
  // Acknowledged in memory at once (the management thread runs the command
  // and its commit back to back; a failed commit leaves the store as it was
  // and the next change of the alert writes the whole record again).
  if (it->second.acked_ms == 0) {
    it->second.acked_ms = now;
    it->second.acked_by = actor;
    stats_.acked++;
  }
  *alert = Record(ti->second.rules.at(rule_id), device_id, it->second);
  b->Put(Family::kHealth, keys::Alert(t, rule_id, device_id), Dump(*alert));
  return absl::OkStatus();
}

}  // namespace fmq::health

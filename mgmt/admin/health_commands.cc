// The health commands (doc/health.md): a device's connectivity as the
// broker saw it with its latest reported values, and its per-minute
// history. The feature (mgmt/health/health_feature.h) keeps the reports.
#include "mgmt/admin/commands.h"
#include "storage/records.h"

namespace fmq::admin {
namespace {

using Status = absl::Status;

Status RequireDevice(Service::Ctx& ctx, const std::string& id) {
  fb::DeviceT d;
  Status s = ctx.reg().GetDevice(ctx.tenant(), id, &d);
  if (absl::IsNotFound(s)) return absl::NotFoundError("no device '" + id + "'");
  return s;
}

Status HealthGet(Service::Ctx& ctx) {
  const std::string id = ctx.Str("device_id");
  if (Status s = RequireDevice(ctx, id); !s.ok()) return s;
  Json j{{"device_id", id}, {"online", false}};
  if (const Connectivity* c = ctx.ConnectivityOf(id); c != nullptr) {
    j["online"] = c->online;
    if (c->online) j["connected_since_ms"] = c->connected_since_ms;
    j["last_seen_ms"] = c->last_seen_ms;
    if (!c->last_disconnect_reason.empty()) j["last_disconnect_reason"] = c->last_disconnect_reason;
  }
  // What the broker observed (counted up to the connection's last report).
  auto link = ctx.health().Link(ctx.tenant(), id);
  if (!link.ok()) return link.status();
  j["link"] = link->ToJson(ctx.now_ms, j["online"].get<bool>());
  auto r = ctx.health().Latest(ctx.tenant(), id);
  if (r.ok()) {
    j["report"] = *r;
  } else if (absl::IsNotFound(r.status())) {
    j["report"] = nullptr;
  } else {
    return r.status();
  }
  ctx.data = std::move(j);
  return absl::OkStatus();
}

Status HealthHistory(Service::Ctx& ctx) {
  const std::string id = ctx.Str("device_id");
  if (Status s = RequireDevice(ctx, id); !s.ok()) return s;
  const int64_t to = ctx.Int("to_ms", ctx.now_ms), from = ctx.Int("from_ms", to - 3'600'000);
  if (from < 0 || to < from) return absl::InvalidArgumentError("from_ms and to_ms: unix ms, from_ms <= to_ms");
  std::vector<std::string> metrics = ctx.List("metrics");
  if (metrics.size() > 64) return absl::InvalidArgumentError("metrics: at most 64 names");
  auto h = ctx.health().History(ctx.tenant(), id, from, to, metrics);
  if (!h.ok()) return h.status();
  ctx.data = Json{{"device_id", id}, {"resolution_s", 60}, {"minutes", std::move(*h)}};
  return absl::OkStatus();
}

Status HealthSummary(Service::Ctx& ctx) {
  std::string scope = ctx.Str("scope");
  if (scope.empty()) scope = "tenant";
  if (!health::ValidScope(scope)) {
    return absl::InvalidArgumentError("scope: tenant, group:<id>, model:<id> or firmware:<version>");
  }
  const int64_t silent = ctx.Int("silent_over_s", 600);
  if (silent < 0 || silent > 400LL * 86400) return absl::InvalidArgumentError("silent_over_s: 0..34560000");
  std::vector<std::string> metrics = ctx.List("metrics");
  if (metrics.size() > 64) return absl::InvalidArgumentError("metrics: at most 64 names");
  const std::string tenant = ctx.tenant().str();
  Json j = ctx.health().rollups().Summary(tenant, scope, ctx.now_ms, silent, metrics);
  const std::string by = ctx.Str("by");
  if (!by.empty()) {
    if (by != "group" && by != "model" && by != "firmware") {
      return absl::InvalidArgumentError("by: group, model or firmware");
    }
    const int64_t limit = ctx.Int("limit", 100);
    if (limit < 1 || limit > 1000) return absl::InvalidArgumentError("limit: 1..1000");
    j["by"] = ctx.health().rollups().Breakdown(tenant, by, static_cast<size_t>(limit));
  }
  j["as_of_ms"] = ctx.now_ms;
  ctx.data = std::move(j);
  return absl::OkStatus();
}

Status AlertRuleCreate(Service::Ctx& ctx) {
  Json j = Json::object();
  for (const char* k : {"rule_id", "metric", "op", "scope", "severity"}) {
    if (ctx.Has(k)) j[k] = ctx.Str(k);
  }
  for (const char* k : {"threshold", "clear", "for_s"}) {
    if (ctx.Has(k)) j[k] = ctx.args[k];
  }
  health::AlertRule r;
  if (const std::string why = health::AlertRule::FromJson(j, &r); !why.empty()) {
    return absl::InvalidArgumentError(why);
  }
  if (Status s = ctx.alerts().CreateRule(ctx.tenant(), r, &ctx.batch, &ctx.on_commit); !s.ok()) return s;
  ctx.data = r.ToJson();
  return absl::OkStatus();
}

Status AlertRuleList(Service::Ctx& ctx) {
  Json items = Json::array();
  for (const health::AlertRule& r : ctx.alerts().Rules(ctx.actor.tenant)) items.push_back(r.ToJson());
  ctx.data = Json{{"rules", items}};
  return absl::OkStatus();
}

Status AlertRuleDelete(Service::Ctx& ctx) {
  const std::string id = ctx.Str("rule_id");
  if (Status s = ctx.alerts().DeleteRule(ctx.tenant(), id, &ctx.batch, &ctx.on_commit); !s.ok()) return s;
  ctx.data = Json{{"rule_id", id}, {"deleted", true}};
  return absl::OkStatus();
}

Status AlertList(Service::Ctx& ctx) {
  const std::string state = ctx.Str("state", "raised");
  if (state != "raised" && state != "all") return absl::InvalidArgumentError("state: raised (default) or all");
  Json items;
  std::string next;
  if (Status s = ctx.alerts().List(ctx.tenant(), state == "all", ctx.Str("rule_id"), ctx.Str("device_id"),
                                   ctx.Str("cursor"), PageLimit(ctx, ctx.opts().max_page), &items, &next);
      !s.ok()) {
    return s;
  }
  ctx.data = Json{{"alerts", items}, {"next_cursor", next}};
  return absl::OkStatus();
}

Status AlertAck(Service::Ctx& ctx) {
  ctx.device_id = ctx.Str("device_id");
  Json a;
  if (Status s = ctx.alerts().Ack(ctx.tenant(), ctx.Str("rule_id"), ctx.device_id, ctx.actor.Label(), ctx.now_ms,
                                  &ctx.batch, &a);
      !s.ok()) {
    return s;
  }
  ctx.data = std::move(a);
  return absl::OkStatus();
}

}  // namespace

std::vector<CommandSpec> HealthCommands() {
  using namespace table;
  const ArgSpec device{"device_id", S, true, "the device"};
  return {
      {"health.get",
       kOp,
       false,
       "A device's connectivity and traffic as the broker saw it (link: counters, disconnects by reason, last "
       "error, uptime over 1 h, 24 h and 7 d) and its latest health report",
       {device},
       HealthGet},
      {"health.history",
       kOp,
       false,
       "A device's reported values per minute (min, max, mean, last, n) over the last 24 hours at most",
       {device,
        {"from_ms", I, false, "unix ms (default: to_ms - 1 hour)"},
        {"to_ms", I, false, "unix ms (default: now)"},
        {"metrics", L, false, "only these values (e.g. cpu_pct,m.queue_depth)"}},
       HealthHistory},
      {"health.summary",
       kOp,
       false,
       "Fleet roll-up of a scope: devices, online, offline, silent, and per value its mean and percentiles",
       {{"scope", S, false, "tenant (default), group:<id>, model:<id> or firmware:<version>"},
        {"silent_over_s", I, false, "count reporting devices whose last report is older than this (default 600)"},
        {"metrics", L, false, "only these values (e.g. battery_pct,errors_per_min)"},
        {"by", S, false, "also list the scopes of a kind: group, model or firmware (most devices first)"},
        {"limit", I, false, "rows of `by` (default 100, at most 1000)"}},
       HealthSummary},
      {"alert.rule.create",
       kOp,
       true,
       "An alert rule: a health value against a threshold (or offline) for a time, in a scope",
       {{"rule_id", S, true, "1..64 of [A-Za-z0-9_.-]"},
        {"metric", S, true, "a health value (battery_pct, errors_per_min, m.queue_depth, ...) or offline"},
        {"op", S, false, "gt or lt (offline: gt)"},
        {"threshold", N, false, "the value compared with (required but for offline)"},
        {"clear", N, false, "hysteresis: gt clears below it, lt above it (default: the threshold)"},
        {"for_s", I, false, "the condition must hold this long (offline: required, >= 1)"},
        {"scope", S, false, "tenant (default), group:<id>, model:<id> or firmware:<version>"},
        {"severity", S, false, "info, warning (default) or critical"}},
       AlertRuleCreate},
      {"alert.rule.list", kOp, false, "The tenant's alert rules", {}, AlertRuleList},
      {"alert.rule.delete",
       kOp,
       true,
       "Deletes a rule and its alerts",
       {{"rule_id", S, true, "the rule"}},
       AlertRuleDelete},
      {"alert.list",
       kOp,
       false,
       "Alerts raised (or all, cleared ones too), by rule and device",
       {{"state", S, false, "raised (default) or all"},
        {"rule_id", S, false, "only this rule's"},
        {"device_id", S, false, "only this device's"},
        kCursorArg,
        kLimitArg},
       AlertList},
      {"alert.ack",
       kOp,
       true,
       "Acknowledges a raised alert (it stays raised until its condition clears)",
       {{"rule_id", S, true, "the rule"}, {"device_id", S, true, "the device"}},
       AlertAck},
  };
}

}  // namespace fmq::admin

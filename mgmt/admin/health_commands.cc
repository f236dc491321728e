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
  const bool known = scope == "tenant" || scope.rfind("group:", 0) == 0 || scope.rfind("model:", 0) == 0 ||
                     scope.rfind("firmware:", 0) == 0;
  if (!known || (scope != "tenant" && scope.back() == ':')) {
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

}  // namespace

std::vector<CommandSpec> HealthCommands() {
  using namespace table;
  const ArgSpec device{"device_id", S, true, "the device"};
  return {
      {"health.get",
       kOp,
       false,
       "A device's connectivity (as the broker saw it) and its latest health report",
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
  };
}

}  // namespace fmq::admin

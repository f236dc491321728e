// The job commands (doc/jobs.md): create, inspect and steer bulk jobs. The
// engine (mgmt/jobs/job_engine.h) validates and stores; the in-memory job
// starts or changes only once the command's batch (with its audit entry)
// committed (ctx.on_commit).
#include <random>

#include "mgmt/admin/commands.h"

namespace fmq::admin {
namespace {

using Status = absl::Status;
using jobs::JobEngine;

constexpr size_t kMaxDocumentBytes = 16 * 1024;
constexpr size_t kMaxDeviceIds = 10'000;

std::string NewJobId(int64_t now_ms) {
  static std::mt19937_64 rng{std::random_device{}()};
  char buf[48];
  std::snprintf(buf, sizeof buf, "job-%lld-%04x", static_cast<long long>(now_ms),
                static_cast<unsigned>(rng() & 0xffff));
  return buf;
}

Json Arg(Service::Ctx& ctx, const char* name) { return ctx.Has(name) ? ctx.args[name] : Json(); }

}  // namespace

Status ParseJobTarget(Service::Ctx& ctx, JobEngine::Target* t) {
  const bool query = ctx.Has("group_id") || ctx.Has("model_id") || ctx.Has("firmware_version") || ctx.Has("status") ||
                     ctx.Has("online");
  if (ctx.Has("device_ids") == query) {
    return absl::InvalidArgumentError(
        "a job needs one target: device_ids, or a query (group_id, model_id, firmware_version, status, online)");
  }
  if (ctx.Has("device_ids")) {
    t->device_ids = ctx.List("device_ids");
    if (t->device_ids.empty()) return absl::InvalidArgumentError("device_ids is empty");
    if (t->device_ids.size() > kMaxDeviceIds) {
      return absl::InvalidArgumentError("at most " + std::to_string(kMaxDeviceIds) +
                                        " device_ids; target more devices with a group or a query");
    }
    for (const auto& id : t->device_ids) {
      if (Status s = CheckId("each device id", id); !s.ok()) return s;
    }
  } else {
    t->has_query = true;
    t->filter.group_id = ctx.Str("group_id");
    t->filter.model_id = ctx.Str("model_id");
    t->filter.firmware_version = ctx.Str("firmware_version");
    for (const char* k : {"group_id", "model_id"}) {
      if (ctx.Has(k)) {
        if (Status s = CheckId(k, ctx.Str(k)); !s.ok()) return s;
      }
    }
    if (ctx.Has("status")) {
      fb::DeviceStatus st;
      if (!ParseDeviceStatus(ctx.Str("status"), &st)) {
        return absl::InvalidArgumentError(
            "status must be registered, provisioned, active, suspended, decommissioned or replaced");
      }
      t->filter.status = st;
    }
    if (ctx.Has("online")) t->online = ctx.Bool("online") ? 1 : 0;
  }
  t->continuous = ctx.Bool("continuous");
  return absl::OkStatus();
}

namespace {

Status JobCreate(Service::Ctx& ctx) {
  JobEngine::NewJob nj;
  nj.job_id = ctx.Has("job_id") ? ctx.Str("job_id") : NewJobId(ctx.now_ms);
  if (Status s = CheckId("job_id", nj.job_id); !s.ok()) return s;
  if (ctx.Str("type", "command") != "command") {
    return absl::InvalidArgumentError(
        "type must be \"command\" (configuration, firmware and renewal jobs come "
        "with their own commands)");
  }
  nj.document_json = ctx.args["document"].dump(-1, ' ', false, Json::error_handler_t::replace);
  if (nj.document_json.size() > kMaxDocumentBytes) {
    return absl::InvalidArgumentError("document of " + std::to_string(nj.document_json.size()) +
                                      " bytes exceeds the limit of " + std::to_string(kMaxDocumentBytes));
  }
  nj.created_by = ctx.actor.Label();
  nj.start_at_ms = ctx.Int("start_at_ms", 0);
  if (nj.start_at_ms < 0) return absl::InvalidArgumentError("start_at_ms must be a unix time in ms");
  if (Status s = ParseJobTarget(ctx, &nj.target); !s.ok()) return s;
  auto spec = jobs::ParseSpec(Arg(ctx, "rollout"), Arg(ctx, "timeouts"), Arg(ctx, "retry"), Arg(ctx, "abort"),
                              ctx.TenantZone());
  if (!spec.ok()) return spec.status();
  nj.spec = *spec;
  fb::JobT rec;
  if (Status s = ctx.jobs().Create(ctx.tenant(), nj, &ctx.batch, &rec); !s.ok()) return s;
  ctx.on_commit.push_back([&jobs = ctx.jobs(), t = ctx.tenant(), rec] { jobs.Activate(t, rec); });
  ctx.data = Json{{"job_id", rec.job_id},
                  {"status", jobs::JobName(rec.status)},
                  {"total", rec.total_count},
                  {"resolved", rec.resolved},
                  {"options", Json::parse(rec.options_json)}};
  return absl::OkStatus();
}

Status JobGet(Service::Ctx& ctx) {
  auto d = ctx.jobs().Describe(ctx.tenant(), ctx.Str("job_id"));
  if (!d.ok()) return d.status();
  ctx.data = std::move(*d);
  return absl::OkStatus();
}

Status JobList(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  jobs::JobStatus want{};
  const bool filter = ctx.Has("status");
  if (filter && !jobs::ParseJob(ctx.Str("status"), &want)) {
    return absl::InvalidArgumentError("status must be SCHEDULED, IN_PROGRESS, PAUSED, COMPLETED, CANCELED or ABORTED");
  }
  const size_t limit = PageLimit(ctx, ctx.opts().max_page);
  Json items = Json::array();
  std::string cursor = ctx.Str("cursor");
  bool more = true;
  // Filtered pages: read on until the page is full (bounded per request).
  for (size_t read = 0; items.size() < limit && more && read < 100'000;) {
    storage::Page<fb::JobT> page;
    if (Status s = ctx.reg().ListJobs(ctx.tenant(), cursor, limit, &page); !s.ok()) return s;
    read += page.items.size();
    more = !page.next_cursor.empty();
    for (const auto& j : page.items) {
      cursor = j.job_id;
      auto d = ctx.jobs().Describe(ctx.tenant(), j.job_id);
      if (!d.ok()) return d.status();
      if (filter && (*d)["status"] != jobs::JobName(want)) continue;
      d->erase("document");
      d->erase("options");
      items.push_back(std::move(*d));
      if (items.size() == limit) break;
    }
  }
  ctx.data = Json{{"jobs", items}, {"next_cursor", items.size() == limit || more ? cursor : ""}};
  return absl::OkStatus();
}

Status JobExecutions(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  const std::string id = ctx.Str("job_id");
  fb::JobT rec;
  if (Status s = ctx.reg().GetJob(ctx.tenant(), id, &rec); !s.ok()) {
    return absl::IsNotFound(s) ? absl::NotFoundError("job '" + id + "' not found") : s;
  }
  jobs::ExecState want{};
  const bool filter = ctx.Has("state");
  if (filter && !jobs::ParseExec(ctx.Str("state"), &want)) {
    return absl::InvalidArgumentError(
        "state must be QUEUED, SENT, DELIVERED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELED or "
        "REMOVED");
  }
  const size_t limit = PageLimit(ctx, ctx.opts().max_page);
  Json items = Json::array();
  std::string cursor = ctx.Str("cursor");
  bool more = true;
  for (size_t read = 0; items.size() < limit && more && read < 100'000;) {
    storage::Page<fb::JobDeviceT> page;
    if (Status s = ctx.reg().ListJobDevices(ctx.tenant(), id, cursor, 1000, &page); !s.ok()) return s;
    read += page.items.size();
    more = !page.next_cursor.empty();
    for (const auto& e : page.items) {
      cursor = e.device_id;
      if (filter && e.state != want) continue;
      Json x{{"device_id", e.device_id},
             {"state", jobs::ExecName(e.state)},
             {"attempt", e.attempts},
             {"updated_at_ms", e.updated_at_ms}};
      if (!e.detail.empty()) {
        Json d = Json::parse(e.detail, nullptr, false);
        x["details"] = d.is_discarded() ? Json(e.detail) : d;
      }
      if (e.not_before_ms) x["retry_at_ms"] = e.not_before_ms;
      items.push_back(std::move(x));
      if (items.size() == limit) break;
    }
  }
  ctx.data = Json{{"executions", items}, {"next_cursor", items.size() == limit || more ? cursor : ""}};
  return absl::OkStatus();
}

Status Control(Service::Ctx& ctx, JobEngine::Action a) {
  const std::string id = ctx.Str("job_id");
  const bool force = ctx.Bool("force");
  fb::JobT rec;
  if (Status s = ctx.jobs().Control(ctx.tenant(), id, a, force, ctx.actor.Label(), &ctx.batch, &rec); !s.ok()) {
    return s;
  }
  ctx.on_commit.push_back(
      [&jobs = ctx.jobs(), t = ctx.tenant(), rec, a, force] { jobs.ApplyControl(t, rec, a, force); });
  ctx.data = Json{{"job_id", id}, {"status", jobs::JobName(rec.status)}};
  return absl::OkStatus();
}

Status JobCancel(Service::Ctx& ctx) { return Control(ctx, JobEngine::Action::kCancel); }
Status JobPause(Service::Ctx& ctx) { return Control(ctx, JobEngine::Action::kPause); }
Status JobResume(Service::Ctx& ctx) { return Control(ctx, JobEngine::Action::kResume); }

using namespace table;  // NOLINT(build/namespaces): the table's shorthands
const ArgSpec kJob{"job_id", S, true, "the job"};
const ArgSpec& kCursor = kCursorArg;
const ArgSpec& kLimit = kLimitArg;

}  // namespace

std::vector<ArgSpec> WithTargetArgs(std::vector<ArgSpec> before, const std::vector<ArgSpec>& after) {
  using namespace table;  // NOLINT(build/namespaces): the table's shorthands
  const std::vector<ArgSpec> target = {
      {"device_ids", L, false, "target: these registered devices (at most 10000)"},
      {"group_id", S, false, "target query: members of this group"},
      {"model_id", S, false, "target query: devices of this model"},
      {"firmware_version", S, false, "target query: devices running this firmware"},
      {"status", S, false, "target query: devices in this lifecycle status"},
      {"online", B, false, "target query: only devices connected (true) or not (false) at resolution"},
      {"continuous", B, false,
       "with a query: devices that match it later (registered into the group, added to it) get the job too; "
       "the job runs until canceled"},
  };
  before.insert(before.end(), target.begin(), target.end());
  before.insert(before.end(), after.begin(), after.end());
  return before;
}

std::vector<CommandSpec> JobCommands() {
  return {
      {"job.create", kOp, true,
       "Create a command job: a JSON document executed by every targeted device, rolled out at a rate, followed "
       "per device (doc/jobs.md)",
       WithTargetArgs(
           {{"document", O, true, "what the devices execute (at most 16 KiB), e.g. {\"command\":\"reboot\"}"},
            {"job_id", S, false, "id to use (default: generated)"},
            {"type", S, false, "command (the default and only type of this command)"}},
           {{"rollout", O, false,
             "{rate_per_s, ramp_factor, ramp_every, max_rate, max_in_flight, waves, success_gate_pct, "
             "window: {start, end, time_zone}}"},
            {"timeouts", O, false, "{step_s, in_progress_s}"},
            {"retry", O, false, "{max_attempts, backoff_ms, on: [FAILED, TIMED_OUT]}"},
            {"abort", O, false,
             "{threshold_pct, min_executed, on: [FAILED, TIMED_OUT, REJECTED], action: abort|pause}"},
            {"start_at_ms", I, false, "unix ms: scheduled start (default: now)"}}),
       JobCreate},
      {"job.get", kOp, false, "A job with its counts per execution state, rate and ETA", {kJob}, JobGet},
      {"job.list",
       kOp,
       false,
       "List jobs",
       {{"status", S, false, "SCHEDULED|IN_PROGRESS|PAUSED|COMPLETED|CANCELED|ABORTED"}, kCursor, kLimit},
       JobList},
      {"job.executions",
       kOp,
       false,
       "A job's per-device executions (device order)",
       {kJob, {"state", S, false, "only executions in this state"}, kCursor, kLimit},
       JobExecutions},
      {"job.cancel",
       kOp,
       true,
       "Cancel a job: QUEUED executions are canceled; with force, those in flight too (their devices are told)",
       {kJob, {"force", B, false, "cancel executions in flight as well"}},
       JobCancel},
      {"job.pause", kOp, true, "Pause a job: nothing new is sent; executions in flight go on", {kJob}, JobPause},
      {"job.resume", kOp, true, "Resume a paused job", {kJob}, JobResume},
  };
}

}  // namespace fmq::admin

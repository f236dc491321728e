// The configuration commands (doc/configuration-management.md): versioned
// documents per device, group and model, what each device has, history,
// compliance and re-sending. The feature (mgmt/config/config_feature.h)
// validates, versions and reconciles; a group or model change becomes a job
// of type "config" of the one job engine, created in the same batch.
#include <random>

#include "mgmt/admin/commands.h"

namespace fmq::admin {
namespace {

using Status = absl::Status;
using config::ConfigFeature;
using storage::ConfigKind;

Json Arg(Service::Ctx& ctx, const char* name) { return ctx.Has(name) ? ctx.args[name] : Json(); }

Json ParsedDoc(const std::string& text) {
  if (text.empty()) return Json::object();
  Json j = Json::parse(text, nullptr, false);
  return j.is_object() ? j : Json::object();
}

// Which target a command names: exactly one of device_id, group_id, model_id.
Status TargetOf(Service::Ctx& ctx, ConfigKind* kind, std::string* id) {
  int n = 0;
  for (const char* k : {"device_id", "group_id", "model_id"}) n += ctx.Has(k) ? 1 : 0;
  if (n != 1) return absl::InvalidArgumentError("name one target: device_id, group_id or model_id");
  *kind = ctx.Has("device_id") ? ConfigKind::kDevice : ctx.Has("group_id") ? ConfigKind::kGroup : ConfigKind::kModel;
  *id = ctx.Str(ctx.Has("device_id") ? "device_id" : ctx.Has("group_id") ? "group_id" : "model_id");
  return CheckId(*kind == ConfigKind::kDevice  ? "device_id"
                 : *kind == ConfigKind::kGroup ? "group_id"
                                               : "model_id",
                 *id);
}

std::string NewJobId(const std::string& kind, const std::string& id, uint64_t version) {
  static std::mt19937_64 rng{std::random_device{}()};
  char buf[40];
  std::snprintf(buf, sizeof buf, "-v%llu-%04x", static_cast<unsigned long long>(version),
                static_cast<unsigned>(rng() & 0xffff));
  std::string j = "config-" + kind.substr(0, 1) + "-" + id.substr(0, 64) + buf;
  return j;
}

// A job of type config over a group's members or a model's devices: its
// executions succeed once each device applied a version at least `rev`
// (`full`: the whole document is sent again, in sync or not).
Status PushJob(Service::Ctx& ctx, ConfigKind kind, const std::string& id, uint64_t rev, uint64_t version, bool full,
               std::string* job_id) {
  jobs::JobEngine::NewJob nj;
  nj.type = fb::JobType::Config;
  nj.job_id = ctx.Has("job_id") ? ctx.Str("job_id") : NewJobId(std::string(config::KindName(kind)), id, version);
  if (Status s = CheckId("job_id", nj.job_id); !s.ok()) return s;
  nj.created_by = ctx.actor.Label();
  Json doc{{"kind", config::KindName(kind)}, {"id", id}, {"version", version}, {"rev", rev}};
  if (full) doc["full"] = true;
  nj.document_json = doc.dump();
  nj.target.has_query = true;
  (kind == ConfigKind::kGroup ? nj.target.filter.group_id : nj.target.filter.model_id) = id;
  auto spec = jobs::ParseSpec(Arg(ctx, "rollout"), Arg(ctx, "timeouts"), Arg(ctx, "retry"), Arg(ctx, "abort"),
                              ctx.TenantZone());
  if (!spec.ok()) return spec.status();
  nj.spec = *spec;
  fb::JobT rec;
  if (Status s = ctx.jobs().Create(ctx.tenant(), nj, &ctx.batch, &rec); !s.ok()) return s;
  ctx.on_commit.push_back([&jobs = ctx.jobs(), t = ctx.tenant(), rec] { jobs.Activate(t, rec); });
  *job_id = rec.job_id;
  return absl::OkStatus();
}

// The next document of a target from the command's document or patch.
Status NextDocument(Service::Ctx& ctx, const Json& current, uint64_t current_version, Json* next) {
  if (ctx.Has("if_version") && ctx.Int("if_version") != static_cast<int64_t>(current_version)) {
    return absl::AbortedError("the document is at version " + std::to_string(current_version) + ", not " +
                              std::to_string(ctx.Int("if_version")) + " (if_version)");
  }
  if (ctx.Has("document") == ctx.Has("patch")) {
    return absl::InvalidArgumentError("give the whole document or a merge patch (patch), not both or neither");
  }
  if (ctx.Has("document")) {
    *next = ctx.args["document"];
  } else {
    *next = config::ApplyMergePatch(current, ctx.args["patch"]);
  }
  return absl::OkStatus();
}

Json ChangeJson(ConfigKind kind, const std::string& id, const ConfigFeature::Change& c) {
  return Json{{"kind", config::KindName(kind)},
              {"id", id},
              {"version", c.version},
              {"rev", c.rev},
              {"hash", c.hash},
              {"diff", c.patch}};
}

// A group's or model's document changes (config.set; group.create,
// group.update, model.create): a new version in the record; its devices get
// it through a job unless the record is new (`stored` false: no devices yet).
template <class Rec>
Status ChangeDocument(Service::Ctx& ctx, ConfigKind kind, Rec* r, const std::string& id, std::string Rec::*doc,
                      const Json& next, bool stored, Json* out) {
  ConfigFeature& cf = ctx.config();
  auto c =
      cf.NewVersion(ctx.tenant(), kind, id, ParsedDoc(r->*doc), r->config_version, next, ctx.actor.Label(), &ctx.batch);
  if (!c.ok()) return c.status();
  r->*doc = config::Canonical(c->doc);
  r->config_version = c->version;
  r->config_rev = c->rev;
  *out = ChangeJson(kind, id, *c);
  ctx.audit_change = c->patch;
  ctx.on_commit.push_back([&cf, t = ctx.tenant(), kind, id] { cf.Forget(t, kind, id); });
  if (!stored) return absl::OkStatus();
  std::string job;
  if (Status s = PushJob(ctx, kind, id, c->rev, c->version, false, &job); !s.ok()) return s;
  (*out)["job_id"] = job;
  return absl::OkStatus();
}

}  // namespace

Status ChangeGroupDocument(Service::Ctx& ctx, fb::DeviceGroupT* g, const Json& next, bool stored, Json* out) {
  return ChangeDocument(ctx, ConfigKind::kGroup, g, g->group_id, &fb::DeviceGroupT::config_template_json, next, stored,
                        out);
}

Status ChangeModelDocument(Service::Ctx& ctx, fb::DeviceModelT* m, const Json& next, bool stored, Json* out) {
  return ChangeDocument(ctx, ConfigKind::kModel, m, m->model_id, &fb::DeviceModelT::default_config_json, next, stored,
                        out);
}

namespace {

Status LoadDevice(Service::Ctx& ctx, const std::string& id, fb::DeviceT* d) {
  Status s = ctx.reg().GetDevice(ctx.tenant(), id, d);
  if (absl::IsNotFound(s)) return absl::NotFoundError("device '" + id + "' not found");
  return s;
}

Status ConfigSet(Service::Ctx& ctx) {
  ConfigKind kind;
  std::string id;
  if (Status s = TargetOf(ctx, &kind, &id); !s.ok()) return s;
  if (ctx.Has("priority") && kind != ConfigKind::kGroup) {
    return absl::InvalidArgumentError("priority is a group's merge order: only with group_id");
  }
  Json next;
  if (kind == ConfigKind::kGroup) {
    fb::DeviceGroupT g;
    Status st = ctx.reg().GetGroup(ctx.tenant(), id, &g);
    if (absl::IsNotFound(st)) return absl::NotFoundError("group '" + id + "' not found");
    if (!st.ok()) return st;
    if (Status s = NextDocument(ctx, ParsedDoc(g.config_template_json), g.config_version, &next); !s.ok()) return s;
    if (ctx.Has("priority")) {
      const int64_t p = ctx.Int("priority");
      if (p < -1'000'000 || p > 1'000'000) return absl::InvalidArgumentError("priority must be in -1000000..1000000");
      g.config_priority = static_cast<int32_t>(p);
    }
    if (Status s = ChangeGroupDocument(ctx, &g, next, true, &ctx.data); !s.ok()) return s;
    ctx.reg().PutGroup(ctx.tenant(), g, &ctx.batch);
    return absl::OkStatus();
  }
  if (kind == ConfigKind::kModel) {
    fb::DeviceModelT m;
    Status st = ctx.reg().GetModel(ctx.tenant(), id, &m);
    if (absl::IsNotFound(st)) return absl::NotFoundError("model '" + id + "' not found");
    if (!st.ok()) return st;
    if (Status s = NextDocument(ctx, ParsedDoc(m.default_config_json), m.config_version, &next); !s.ok()) return s;
    if (Status s = ChangeModelDocument(ctx, &m, next, true, &ctx.data); !s.ok()) return s;
    ctx.reg().PutModel(ctx.tenant(), m, &ctx.batch);
    return absl::OkStatus();
  }
  fb::DeviceT d;
  if (Status s = LoadDevice(ctx, id, &d); !s.ok()) return s;
  if (storage::IsRetired(d.status)) {
    return absl::FailedPreconditionError("device '" + id + "' is retired");
  }
  ConfigFeature& cf = ctx.config();
  Json cur;
  uint64_t cur_version = 0;
  if (Status s = cf.OverrideOf(ctx.tenant(), id, &cur, &cur_version); !s.ok()) return s;
  if (Status s = NextDocument(ctx, cur, cur_version, &next); !s.ok()) return s;
  auto c = cf.NewVersion(ctx.tenant(), ConfigKind::kDevice, id, cur, cur_version, next, ctx.actor.Label(), &ctx.batch);
  if (!c.ok()) return c.status();
  if (Status s = cf.SetOverride(ctx.tenant(), id, *c, &ctx.batch); !s.ok()) return s;
  ctx.device_id = id;
  ctx.audit_change = c->patch;
  ctx.data = ChangeJson(kind, id, *c);
  // One device: out at once, no job.
  ctx.on_commit.push_back([&cf, t = ctx.tenant(), id] { cf.ReconcileNow(t, id, false); });
  return absl::OkStatus();
}

Status DeviceView(Service::Ctx& ctx, const std::string& id, Json* out) {
  fb::DeviceT d;
  if (Status s = LoadDevice(ctx, id, &d); !s.ok()) return s;
  ConfigFeature& cf = ctx.config();
  fb::DeviceConfigT dc;
  if (Status s = cf.StateOf(ctx.tenant(), id, &dc); !s.ok()) return s;
  config::Desired want;
  if (Status s = cf.DesiredOf(ctx.tenant(), d, dc, &want); !s.ok()) return s;
  *out = Json{{"device_id", id},
              {"state", config::StateName(ConfigFeature::Shown(dc, want))},
              {"desired", Json{{"version", want.version}, {"hash", want.doc->hash}, {"document", want.doc->doc}}},
              {"applied", Json{{"version", dc.applied_version}, {"hash", dc.applied_hash}}},
              {"delivered_version", dc.delivered_version},
              {"inputs", want.inputs},
              {"updated_at_ms", dc.updated_at_ms}};
  if (!dc.reason.empty()) (*out)["reason"] = dc.reason;
  if (dc.override_version) (*out)["own_version"] = dc.override_version;
  const std::string applied_hash = dc.applied_hash.empty() ? config::Hash(Json::object()) : dc.applied_hash;
  auto blob = cf.Blob(ctx.tenant(), applied_hash);
  if (blob.ok()) {
    (*out)["applied"]["document"] = (*blob)->doc;
    if (ctx.Bool("diff")) (*out)["diff"] = config::MergeDiff((*blob)->doc, want.doc->doc);
  }
  return absl::OkStatus();
}

Status ReadVersion(Service::Ctx& ctx, ConfigKind kind, const std::string& id, uint64_t version,
                   fb::ConfigurationT* out) {
  Status s = ctx.reg().GetConfig(ctx.tenant(), kind, id, version, out);
  if (absl::IsNotFound(s)) {
    return absl::NotFoundError(std::string(config::KindName(kind)) + " '" + id + "' has no configuration" +
                               (version ? " version " + std::to_string(version) : std::string()));
  }
  return s;
}

Status ConfigGet(Service::Ctx& ctx) {
  ConfigKind kind;
  std::string id;
  if (Status s = TargetOf(ctx, &kind, &id); !s.ok()) return s;
  for (const char* k : {"version", "diff_from", "diff_to"}) {
    if (ctx.Has(k) && ctx.Int(k) < 0) return absl::InvalidArgumentError(std::string(k) + " must be at least 0");
  }
  if (ctx.Has("diff_from") || ctx.Has("diff_to")) {
    // Between two versions of the target's own document (0: empty).
    Json docs[2];
    const char* names[2] = {"diff_from", "diff_to"};
    for (int i = 0; i < 2; ++i) {
      const uint64_t v = static_cast<uint64_t>(ctx.Int(names[i]));
      docs[i] = Json::object();
      if (v == 0) continue;
      fb::ConfigurationT c;
      if (Status s = ReadVersion(ctx, kind, id, v, &c); !s.ok()) return s;
      docs[i] = ParsedDoc(c.config_json);
    }
    ctx.data = Json{{"kind", config::KindName(kind)},
                    {"id", id},
                    {"from", ctx.Int("diff_from")},
                    {"to", ctx.Int("diff_to")},
                    {"diff", config::MergeDiff(docs[0], docs[1])}};
    return absl::OkStatus();
  }
  if (kind == ConfigKind::kDevice && !ctx.Has("version")) return DeviceView(ctx, id, &ctx.data);
  fb::ConfigurationT c;
  if (Status s = ReadVersion(ctx, kind, id, static_cast<uint64_t>(ctx.Int("version")), &c); !s.ok()) return s;
  ctx.data = Json{{"kind", config::KindName(kind)},
                  {"id", id},
                  {"version", c.version},
                  {"rev", c.rev},
                  {"document", ParsedDoc(c.config_json)},
                  {"hash", config::Hash(ParsedDoc(c.config_json))},
                  {"created_by", c.created_by},
                  {"created_at_ms", c.created_at_ms}};
  return absl::OkStatus();
}

Status ConfigHistory(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  ConfigKind kind;
  std::string id;
  if (Status s = TargetOf(ctx, &kind, &id); !s.ok()) return s;
  uint64_t before = 0;
  if (ctx.Has("cursor") && !ctx.Str("cursor").empty()) {
    before = std::strtoull(ctx.Str("cursor").c_str(), nullptr, 10);
    if (before == 0) return absl::InvalidArgumentError("cursor must be a next_cursor of config.history");
  }
  const size_t limit = PageLimit(ctx, ctx.opts().max_page);
  std::vector<fb::ConfigurationT> versions;
  if (Status s = ctx.reg().ListConfigs(ctx.tenant(), kind, id, before, limit + 1, &versions); !s.ok()) return s;
  Json items = Json::array();
  for (size_t i = 0; i < versions.size() && i < limit; ++i) {
    const auto& c = versions[i];
    items.push_back(Json{{"version", c.version},
                         {"rev", c.rev},
                         {"created_by", c.created_by},
                         {"created_at_ms", c.created_at_ms},
                         {"change", c.patch_json.empty() ? Json() : ParsedDoc(c.patch_json)}});
  }
  std::string next = versions.size() > limit ? std::to_string(versions[limit - 1].version) : "";
  ctx.data = Json{{"kind", config::KindName(kind)}, {"id", id}, {"versions", items}, {"next_cursor", next}};
  return absl::OkStatus();
}

// Compliance of a group, a model's devices, or listed devices: counts per
// state over what this page read (bounded), and the devices not APPLIED.
Status ConfigStatus(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  const bool listed = ctx.Has("device_ids");
  if (listed == (ctx.Has("group_id") || ctx.Has("model_id"))) {
    return absl::InvalidArgumentError("name the devices: group_id, model_id or device_ids");
  }
  const size_t limit = PageLimit(ctx, ctx.opts().max_page);
  const size_t scan = static_cast<size_t>(std::clamp<int64_t>(ctx.Int("scan", 100'000), 1, 1'000'000));
  ConfigFeature& cf = ctx.config();
  Json counts = Json::object();
  for (auto s : {fb::ConfigState::None, fb::ConfigState::Pending, fb::ConfigState::Delivered, fb::ConfigState::Applied,
                 fb::ConfigState::Rejected, fb::ConfigState::TimedOut}) {
    counts[std::string(config::StateName(s))] = 0;
  }
  Json bad = Json::array();
  size_t read = 0;
  std::string cursor = ctx.Str("cursor");
  auto visit = [&](const fb::DeviceT& d) -> Status {
    ++read;
    cursor = d.device_id;
    if (storage::IsRetired(d.status)) return absl::OkStatus();
    fb::DeviceConfigT dc;
    if (Status s = cf.StateOf(ctx.tenant(), d.device_id, &dc); !s.ok()) return s;
    config::Desired want;
    if (Status s = cf.DesiredOf(ctx.tenant(), d, dc, &want); !s.ok()) return s;
    const fb::ConfigState st = ConfigFeature::Shown(dc, want);
    counts[std::string(config::StateName(st))] = counts[std::string(config::StateName(st))].get<uint64_t>() + 1;
    if (st != fb::ConfigState::Applied && st != fb::ConfigState::None && bad.size() < limit) {
      Json x{{"device_id", d.device_id},
             {"state", config::StateName(st)},
             {"desired_version", want.version},
             {"applied_version", dc.applied_version}};
      if (!dc.reason.empty() && dc.state_version == want.version) x["reason"] = dc.reason;
      bad.push_back(std::move(x));
    }
    return absl::OkStatus();
  };
  bool more = false;
  if (listed) {
    for (const std::string& id : ctx.List("device_ids")) {
      fb::DeviceT d;
      if (Status s = LoadDevice(ctx, id, &d); !s.ok()) return s;
      if (Status s = visit(d); !s.ok()) return s;
    }
    cursor.clear();
  } else {
    storage::DeviceFilter f;
    f.group_id = ctx.Str("group_id");
    f.model_id = ctx.Str("model_id");
    more = true;
    while (more && read < scan && bad.size() < limit) {
      storage::Page<fb::DeviceT> page;
      if (Status s = ctx.reg().ListDevices(ctx.tenant(), f, cursor, std::min<size_t>(1000, scan - read), &page);
          !s.ok()) {
        return s;
      }
      more = !page.next_cursor.empty();
      for (const auto& d : page.items) {
        if (Status s = visit(d); !s.ok()) return s;
      }
    }
  }
  ctx.data = Json{{"counts", counts},
                  {"devices_read", read},
                  {"non_compliant", bad},
                  {"next_cursor", more ? cursor : std::string()}};
  return absl::OkStatus();
}

Status ConfigPush(Service::Ctx& ctx) {
  ConfigKind kind;
  std::string id;
  if (Status s = TargetOf(ctx, &kind, &id); !s.ok()) return s;
  ConfigFeature& cf = ctx.config();
  if (kind == ConfigKind::kDevice) {
    fb::DeviceT d;
    if (Status s = LoadDevice(ctx, id, &d); !s.ok()) return s;
    ctx.device_id = id;
    const Connectivity* c = ctx.ConnectivityOf(id);
    ctx.data = Json{{"device_id", id}, {"online", c != nullptr && c->online}};
    ctx.on_commit.push_back([&cf, t = ctx.tenant(), id] { cf.ReconcileNow(t, id, true); });
    return absl::OkStatus();
  }
  uint64_t version = 0;
  if (kind == ConfigKind::kGroup) {
    fb::DeviceGroupT g;
    Status st = ctx.reg().GetGroup(ctx.tenant(), id, &g);
    if (absl::IsNotFound(st)) return absl::NotFoundError("group '" + id + "' not found");
    if (!st.ok()) return st;
    version = g.config_version;
  } else {
    fb::DeviceModelT m;
    Status st = ctx.reg().GetModel(ctx.tenant(), id, &m);
    if (absl::IsNotFound(st)) return absl::NotFoundError("model '" + id + "' not found");
    if (!st.ok()) return st;
    version = m.config_version;
  }
  std::string job;
  if (Status s = PushJob(ctx, kind, id, 0, version, true, &job); !s.ok()) return s;
  ctx.data = Json{{"kind", config::KindName(kind)}, {"id", id}, {"job_id", job}};
  return absl::OkStatus();
}

using namespace table;  // NOLINT(build/namespaces): the table's shorthands
const ArgSpec kDev{"device_id", S, false, "target: this device's own document"};
const ArgSpec kGroup{"group_id", S, false, "target: this group's template"};
const ArgSpec kModel{"model_id", S, false, "target: this model's default"};

}  // namespace

std::vector<CommandSpec> ConfigCommands() {
  return {
      {"config.set",
       kOp,
       true,
       "Change a device's, group's or model's configuration document (a new version); a group or model change "
       "goes to the devices as a config job (doc/configuration-management.md)",
       {kDev,
        kGroup,
        kModel,
        {"document", O, false, "the whole new document (a JSON object)"},
        {"patch", O, false, "or a JSON merge patch (RFC 7386) applied to the current document"},
        {"if_version", I, false, "refuse unless the document is at this version (optimistic concurrency)"},
        {"priority", I, false, "group only: merge order (groups apply in ascending priority, then id)"},
        {"job_id", S, false, "id of the config job (default: generated)"},
        {"rollout", O, false, "the job's rollout options (as job.create: rates, waves, window)"},
        {"timeouts", O, false, "the job's {step_s, in_progress_s}"},
        {"retry", O, false, "the job's {max_attempts, backoff_ms, on}"},
        {"abort", O, false, "the job's {threshold_pct, min_executed, on, action}"}},
       ConfigSet},
      {"config.get",
       kOp,
       false,
       "A device's desired, applied and effective configuration and state; or a version of a group's, model's or "
       "device's own document; or the diff between two versions",
       {kDev,
        kGroup,
        kModel,
        {"version", I, false, "that version of the target's own document (default: a device's view, else latest)"},
        {"diff", B, false, "device view: also the merge patch from the applied to the desired document"},
        {"diff_from", I, false, "the merge patch from this version (0: empty) ..."},
        {"diff_to", I, false, "... to this version"}},
       ConfigGet},
      {"config.history",
       kOp,
       false,
       "Versions of a target's document, newest first, with author, time and change",
       {kDev, kGroup, kModel, kCursorArg, kLimitArg},
       ConfigHistory},
      {"config.status",
       kOp,
       false,
       "Compliance: devices per configuration state and those not APPLIED (paginated over the devices)",
       {{"group_id", S, false, "members of this group"},
        {"model_id", S, false, "devices of this model"},
        {"device_ids", L, false, "these devices"},
        {"scan", I, false, "devices read per request (default 100000)"},
        kCursorArg,
        kLimitArg},
       ConfigStatus},
      {"config.push",
       kOp,
       true,
       "Send the whole desired document again: to a device at once, or to a group's or model's devices as a job",
       {kDev,
        kGroup,
        kModel,
        {"job_id", S, false, "id of the config job"},
        {"rollout", O, false, "the job's rollout"},
        {"timeouts", O, false, "the job's timeouts"},
        {"retry", O, false, "the job's retry policy"},
        {"abort", O, false, "the job's abort criteria"}},
       ConfigPush},
  };
}

}  // namespace fmq::admin

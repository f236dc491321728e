// The firmware commands (doc/ota.md): artifacts uploaded in chunks,
// listed, read with their signed manifest and deleted; campaigns created
// as jobs of type "ota" of the one job engine, and rolled back. The feature
// (mgmt/ota/ota_feature.h) stores, signs and delivers.
#include <mbedtls/base64.h>

#include <random>

#include "mgmt/admin/commands.h"
#include "storage/records.h"

namespace fmq::admin {
namespace {

using Status = absl::Status;

Json Arg(Service::Ctx& ctx, const char* name) { return ctx.Has(name) ? ctx.args[name] : Json(); }

// Versions are topic-safe names too: the certificate name alphabet.
Status CheckVersion(const std::string& v) {
  if (v.empty() || v.size() > 64 || !pki::SafeName(v)) {
    return absl::InvalidArgumentError("version must be 1..64 of letters, digits and - _ . : @");
  }
  return absl::OkStatus();
}

Json Summary(const fb::FirmwareT& f) {
  Json j{{"model_id", f.model_id},    {"version", f.version}, {"size", f.size},
         {"sha256", f.sha256},        {"notes", f.notes},     {"created_at_ms", f.created_at_ms},
         {"created_by", f.created_by}};
  if (!f.url.empty()) j["url"] = f.url;
  return j;
}

Status UploadBegin(Service::Ctx& ctx) {
  fb::FirmwareUploadT u;
  u.model_id = ctx.Str("model_id");
  u.version = ctx.Str("version");
  u.sha256 = ctx.Str("sha256");
  u.notes = ctx.Str("notes");
  u.url = ctx.Str("url");
  if (Status s = CheckId("model_id", u.model_id); !s.ok()) return s;
  if (Status s = CheckVersion(u.version); !s.ok()) return s;
  if (u.notes.size() > 4096) return absl::InvalidArgumentError("notes must be at most 4096 bytes");
  if (u.url.size() > 1024 || (!u.url.empty() && u.url.rfind("https://", 0) != 0 && u.url.rfind("http://", 0) != 0)) {
    return absl::InvalidArgumentError("url must be an http:// or https:// URL of at most 1024 bytes");
  }
  const int64_t size = ctx.Int("size");
  if (size <= 0) return absl::InvalidArgumentError("size must be at least 1 byte");
  u.size = static_cast<uint64_t>(size);
  u.started_at_ms = ctx.now_ms;
  u.started_by = ctx.actor.Label();
  fb::DeviceModelT m;
  if (Status s = ctx.reg().GetModel(ctx.tenant(), u.model_id, &m); !s.ok()) {
    return absl::IsNotFound(s) ? absl::NotFoundError("model '" + u.model_id + "' not found (model.create it first)")
                               : s;
  }
  auto st = ctx.ota().BeginUpload(ctx.tenant(), u, &ctx.batch);
  if (!st.ok()) return st.status();
  ctx.data = Json{{"sha256", u.sha256},
                  {"received", st->received},
                  {"size", st->size},
                  {"chunk_bytes", ctx.ota().options().chunk_bytes},
                  {"resumed", st->resumed}};
  return absl::OkStatus();
}

// Not audited one by one (an image is thousands of chunks): begin, commit
// and abort are. The chunk commits its own batch.
Status UploadChunk(Service::Ctx& ctx) {
  const std::string& b64 = ctx.args["data"].get_ref<const std::string&>();
  size_t n = 0;
  mbedtls_base64_decode(nullptr, 0, &n, reinterpret_cast<const unsigned char*>(b64.data()), b64.size());
  std::string bytes(n, '\0');
  if (mbedtls_base64_decode(reinterpret_cast<unsigned char*>(bytes.data()), bytes.size(), &n,
                            reinterpret_cast<const unsigned char*>(b64.data()), b64.size()) != 0) {
    return absl::InvalidArgumentError("data must be base64");
  }
  bytes.resize(n);
  const int64_t offset = ctx.Int("offset");
  if (offset < 0) return absl::InvalidArgumentError("offset must be >= 0");
  auto st = ctx.ota().PutChunk(ctx.tenant(), ctx.Str("sha256"), static_cast<uint64_t>(offset), bytes, &ctx.batch);
  if (!st.ok()) return st.status();
  if (Status s = ctx.reg().Commit(ctx.batch); !s.ok()) return s;
  ctx.batch.Clear();
  ctx.data = Json{{"received", st->received}, {"size", st->size}};
  return absl::OkStatus();
}

Status UploadCommit(Service::Ctx& ctx) {
  auto f = ctx.ota().FinishUpload(ctx.tenant(), ctx.Str("sha256"), ctx.actor.Label(), ctx.now_ms, &ctx.batch);
  if (!f.ok()) return f.status();
  ctx.data = Summary(*f);
  return absl::OkStatus();
}

Status UploadAbort(Service::Ctx& ctx) {
  if (Status s = ctx.ota().AbortUpload(ctx.tenant(), ctx.Str("sha256")); !s.ok()) return s;
  ctx.data = Json{{"sha256", ctx.Str("sha256")}, {"aborted", true}};
  return absl::OkStatus();
}

Status FirmwareList(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  const size_t limit = PageLimit(ctx, ctx.opts().max_page);
  const std::string model = ctx.Str("model_id"), cursor = ctx.Str("cursor");
  Json items = Json::array();
  std::string last;
  const storage::TenantId t = ctx.tenant();
  const std::string prefix = storage::keys::FirmwarePrefix(t);
  // The cursor is "model/version" of the last item.
  std::string start = prefix;
  if (!cursor.empty()) {
    const size_t slash = cursor.find('/');
    if (slash == std::string::npos) return absl::InvalidArgumentError("cursor is not a next_cursor");
    start = storage::keys::Firmware(t, cursor.substr(0, slash), cursor.substr(slash + 1)) + std::string(1, '\0');
  }
  bool more = false;
  Status err = absl::OkStatus();
  Status s = ctx.kv().Scan(storage::Family::kFirmware, start, storage::PrefixEnd(prefix),
                           [&](std::string_view k, std::string_view v) {
                             fb::FirmwareT f;
                             err = storage::DecodeRecord<fb::Firmware>(storage::Family::kFirmware, k, v, &f);
                             if (!err.ok()) return false;
                             if (!model.empty() && f.model_id != model) return true;
                             if (items.size() == limit) {
                               more = true;
                               return false;
                             }
                             last = f.model_id + "/" + f.version;
                             items.push_back(Summary(f));
                             return true;
                           });
  if (!s.ok()) return s;
  if (!err.ok()) return err;
  ctx.data = Json{{"firmware", items}, {"next_cursor", more ? last : ""}};
  return absl::OkStatus();
}

Status FirmwareGet(Service::Ctx& ctx) {
  auto a = ctx.ota().Get(ctx.tenant(), ctx.Str("model_id"), ctx.Str("version"));
  if (!a.ok()) return a.status();
  ctx.data = Summary(a->rec);
  ctx.data["manifest"] = a->rec.manifest;
  ctx.data["signature"] = a->rec.signature;
  ctx.data["signer"] = a->signer_chain;
  ctx.data["in_use"] = ctx.ota().InUse(ctx.actor.tenant, a->rec.model_id, a->rec.version);
  return absl::OkStatus();
}

Status FirmwareDelete(Service::Ctx& ctx) {
  if (Status s = ctx.ota().Delete(ctx.tenant(), ctx.Str("model_id"), ctx.Str("version"), &ctx.batch); !s.ok()) return s;
  ctx.data = Json{{"model_id", ctx.Str("model_id")}, {"version", ctx.Str("version")}, {"deleted", true}};
  return absl::OkStatus();
}

std::string NewCampaignId(const std::string& model, const std::string& version) {
  static std::mt19937_64 rng{std::random_device{}()};
  char buf[16];
  std::snprintf(buf, sizeof buf, "-%04x", static_cast<unsigned>(rng() & 0xffff));
  return "ota-" + model.substr(0, 48) + "-" + version.substr(0, 48) + buf;
}

// {step_s, download_s, install_s, reboot_s}: the step timeout is the
// engine's; the phase deadlines go into the campaign's document.
Status OtaTimeouts(Service::Ctx& ctx, Json* engine, Json* phases) {
  const Json t = Arg(ctx, "timeouts");
  *engine = Json::object();
  *phases = Json::object();
  const auto& o = ctx.ota().options();
  double dl = o.download_timeout_ms / 1000.0, in = o.install_timeout_ms / 1000.0, rb = o.reboot_timeout_ms / 1000.0;
  if (!t.is_null()) {
    for (auto it = t.begin(); it != t.end(); ++it) {
      const std::string& k = it.key();
      if (k != "step_s" && k != "download_s" && k != "install_s" && k != "reboot_s") {
        return absl::InvalidArgumentError("unknown option 'timeouts." + k + "'");
      }
      if (!it->is_number() || it->get<double>() < 1 || it->get<double>() > 30 * 86400) {
        return absl::InvalidArgumentError("timeouts." + k + " must be within 1..2592000 seconds");
      }
    }
    dl = t.value("download_s", dl);
    in = t.value("install_s", in);
    rb = t.value("reboot_s", rb);
    if (t.contains("step_s")) (*engine)["step_s"] = t["step_s"];
  }
  // The engine's in-progress deadline is the longest phase; each phase then
  // sets its own (doc/ota.md).
  (*engine)["in_progress_s"] = std::max({dl, in, rb});
  *phases = Json{{"download_s", dl}, {"install_s", in}, {"reboot_s", rb}};
  return absl::OkStatus();
}

Status OtaCreate(Service::Ctx& ctx) {
  const std::string model = ctx.Str("model_id"), version = ctx.Str("version");
  auto art = ctx.ota().Get(ctx.tenant(), model, version);
  if (!art.ok()) return art.status();
  jobs::JobEngine::NewJob nj;
  nj.type = fb::JobType::Ota;
  nj.job_id = ctx.Has("job_id") ? ctx.Str("job_id") : NewCampaignId(model, version);
  if (Status s = CheckId("job_id", nj.job_id); !s.ok()) return s;
  nj.created_by = ctx.actor.Label();
  nj.start_at_ms = ctx.Int("start_at_ms", 0);
  if (nj.start_at_ms < 0) return absl::InvalidArgumentError("start_at_ms must be a unix time in ms");
  const bool query = ctx.Has("group_id") || ctx.Has("firmware_version") || ctx.Has("all");
  if (ctx.Has("device_ids") == query) {
    return absl::InvalidArgumentError(
        "a campaign needs one target: device_ids, or group_id / firmware_version / all=true (always within the "
        "artifact's model)");
  }
  if (ctx.Has("device_ids")) {
    nj.target.device_ids = ctx.List("device_ids");
    if (nj.target.device_ids.empty()) return absl::InvalidArgumentError("device_ids is empty");
    for (const auto& id : nj.target.device_ids) {
      if (Status s = CheckId("each device id", id); !s.ok()) return s;
      fb::DeviceT d;
      if (Status s = ctx.reg().GetDevice(ctx.tenant(), id, &d); !s.ok()) {
        return absl::IsNotFound(s) ? absl::NotFoundError("device '" + id + "' is not registered") : s;
      }
      if (d.model_id != model) {
        return absl::FailedPreconditionError("device '" + id + "' is a '" + d.model_id + "', not a '" + model +
                                             "': incompatible with this firmware");
      }
    }
  } else {
    nj.target.has_query = true;
    nj.target.filter.group_id = ctx.Str("group_id");
    nj.target.filter.model_id = model;  // only devices of the artifact's model
    nj.target.filter.firmware_version = ctx.Str("firmware_version");
    if (ctx.Has("group_id")) {
      if (Status s = CheckId("group_id", nj.target.filter.group_id); !s.ok()) return s;
    }
    nj.target.continuous = ctx.Bool("continuous");
  }
  Json engine_to, phases;
  if (Status s = OtaTimeouts(ctx, &engine_to, &phases); !s.ok()) return s;
  auto spec = jobs::ParseSpec(Arg(ctx, "rollout"), engine_to, Arg(ctx, "retry"), Arg(ctx, "abort"), ctx.TenantZone());
  if (!spec.ok()) return spec.status();
  nj.spec = *spec;
  nj.document_json =
      Json{{"model_id", model}, {"version", version}, {"sha256", art->rec.sha256}, {"timeouts", phases}}.dump();
  fb::JobT rec;
  if (Status s = ctx.jobs().Create(ctx.tenant(), nj, &ctx.batch, &rec); !s.ok()) return s;
  ctx.on_commit.push_back([&jobs = ctx.jobs(), t = ctx.tenant(), rec] { jobs.Activate(t, rec); });
  ctx.data = Json{{"job_id", rec.job_id},          {"status", jobs::JobName(rec.status)},
                  {"total", rec.total_count},      {"resolved", rec.resolved},
                  {"firmware", Summary(art->rec)}, {"options", Json::parse(rec.options_json)}};
  return absl::OkStatus();
}

Status OtaRollback(Service::Ctx& ctx) {
  const std::string campaign = ctx.Str("job_id");
  fb::JobT c;
  if (Status s = ctx.reg().GetJob(ctx.tenant(), campaign, &c); !s.ok()) {
    return absl::IsNotFound(s) ? absl::NotFoundError("job '" + campaign + "' not found") : s;
  }
  if (c.type != fb::JobType::Ota) return absl::FailedPreconditionError("job '" + campaign + "' is not a campaign");
  jobs::JobEngine::NewJob nj;
  nj.type = fb::JobType::Ota;
  nj.job_id = ctx.Has("rollback_id") ? ctx.Str("rollback_id") : campaign + "-rollback";
  if (Status s = CheckId("rollback_id", nj.job_id); !s.ok()) return s;
  nj.created_by = ctx.actor.Label();
  if (Status s = ctx.ota().RollbackTargets(ctx.tenant(), campaign, &nj.target.device_ids); !s.ok()) return s;
  if (nj.target.device_ids.empty()) {
    return absl::FailedPreconditionError("campaign '" + campaign + "' moved no device to a new version");
  }
  Json doc = Json::parse(c.document_json, nullptr, false);
  Json next{{"rollback_of", campaign}};
  if (doc.is_object() && doc.contains("timeouts")) next["timeouts"] = doc["timeouts"];
  nj.document_json = next.dump();
  auto spec = jobs::ParseSpec(Arg(ctx, "rollout"), Json(), Arg(ctx, "retry"), Json(), ctx.TenantZone());
  if (!spec.ok()) return spec.status();
  nj.spec = *spec;
  auto old = jobs::SpecFromJson(Json::parse(c.options_json, nullptr, false));
  if (old.ok()) {
    nj.spec.step_timeout_ms = old->step_timeout_ms;
    nj.spec.in_progress_timeout_ms = old->in_progress_timeout_ms;
  }
  fb::JobT rec;
  if (Status s = ctx.jobs().Create(ctx.tenant(), nj, &ctx.batch, &rec); !s.ok()) return s;
  ctx.on_commit.push_back([&jobs = ctx.jobs(), t = ctx.tenant(), rec] { jobs.Activate(t, rec); });
  ctx.data = Json{{"job_id", rec.job_id}, {"rollback_of", campaign}, {"total", rec.total_count}};
  return absl::OkStatus();
}

}  // namespace

Status GroupFirmwareTarget(Service::Ctx& ctx, const fb::DeviceGroupT& g, Json* out) {
  const storage::TenantId t = ctx.tenant();
  const std::string prefix = "fwt-" + g.group_id + "-";
  *out = Json{{"canceled", Json::array()}, {"campaigns", Json::array()}};
  // The group's previous target campaigns end (what they updated stays).
  std::vector<std::string> old;
  ctx.jobs().ForEachActive(ctx.actor.tenant, [&](const fb::JobT& j) {
    if (j.type == fb::JobType::Ota && j.job_id.rfind(prefix, 0) == 0) old.push_back(j.job_id);
  });
  for (const std::string& id : old) {
    fb::JobT rec;
    if (Status s =
            ctx.jobs().Control(t, id, jobs::JobEngine::Action::kCancel, false, ctx.actor.Label(), &ctx.batch, &rec);
        !s.ok()) {
      return s;
    }
    ctx.on_commit.push_back(
        [&jobs = ctx.jobs(), t, rec] { jobs.ApplyControl(t, rec, jobs::JobEngine::Action::kCancel, false); });
    (*out)["canceled"].push_back(id);
  }
  if (g.firmware_target_version.empty()) return absl::OkStatus();
  if (Status s = CheckVersion(g.firmware_target_version); !s.ok()) return s;
  // One continuous campaign per model with an artifact of that version: the
  // group's devices of that model, now and whenever they join.
  std::vector<fb::FirmwareT> arts;
  Status err = absl::OkStatus();
  const std::string fp = storage::keys::FirmwarePrefix(t);
  Status s = ctx.kv().ScanPrefix(storage::Family::kFirmware, fp, [&](std::string_view k, std::string_view v) {
    fb::FirmwareT f;
    err = storage::DecodeRecord<fb::Firmware>(storage::Family::kFirmware, k, v, &f);
    if (err.ok() && f.version == g.firmware_target_version) arts.push_back(std::move(f));
    return err.ok();
  });
  if (!s.ok()) return s;
  if (!err.ok()) return err;
  if (arts.empty()) {
    // The target is recorded all the same (a plan before its image exists);
    // no campaign starts until one is created for an uploaded artifact.
    (*out)["note"] = "no firmware " + g.firmware_target_version + " uploaded for any model: no campaign started";
    return absl::OkStatus();
  }
  for (const fb::FirmwareT& f : arts) {
    jobs::JobEngine::NewJob nj;
    nj.type = fb::JobType::Ota;
    nj.job_id = prefix + f.model_id + "-" + f.version + NewCampaignId("", "").substr(5);
    nj.created_by = ctx.actor.Label();
    nj.target.has_query = true;
    nj.target.continuous = true;
    nj.target.filter.group_id = g.group_id;
    nj.target.filter.model_id = f.model_id;
    Json engine_to, phases;
    if (Status st = OtaTimeouts(ctx, &engine_to, &phases); !st.ok()) return st;
    auto spec = jobs::ParseSpec(Arg(ctx, "firmware_rollout"), engine_to, Json(), Json(), ctx.TenantZone());
    if (!spec.ok()) return spec.status();
    nj.spec = *spec;
    nj.document_json =
        Json{{"model_id", f.model_id}, {"version", f.version}, {"sha256", f.sha256}, {"timeouts", phases}}.dump();
    fb::JobT rec;
    if (Status st = ctx.jobs().Create(t, nj, &ctx.batch, &rec); !st.ok()) return st;
    ctx.on_commit.push_back([&jobs = ctx.jobs(), t, rec] { jobs.Activate(t, rec); });
    (*out)["campaigns"].push_back(rec.job_id);
  }
  return absl::OkStatus();
}

std::vector<CommandSpec> OtaCommands() {
  using namespace table;
  const ArgSpec model{"model_id", S, true, "the device model the image is for"};
  const ArgSpec version{"version", S, true, "the firmware version"};
  const ArgSpec sha{"sha256", S, true, "SHA-256 of the whole image (64 lowercase hex digits)"};
  return {
      {"firmware.upload.begin",
       kOp,
       true,
       "Start (or resume) uploading a firmware image; fleetmq-admin firmware.upload file=@IMAGE does all the steps",
       {model,
        version,
        {"size", I, true, "bytes of the whole image (at most ota.max_artifact_bytes)"},
        sha,
        {"notes", S, false, "release notes (at most 4096 bytes)"},
        {"url", S, false, "where devices may fetch the image instead of in-band (put in the signed manifest)"}},
       UploadBegin},
      {"firmware.upload.chunk",
       kOp,
       false,
       "The next chunk of an upload (chunk_bytes of the begin reply; the last one shorter); not audited by itself",
       {sha,
        {"offset", I, true, "the byte it starts at: the upload's received count"},
        {"data", S, true, "the bytes, base64"}},
       UploadChunk},
      {"firmware.upload.commit",
       kOp,
       true,
       "Check the whole image against its sha256 and store it signed (a mismatch discards the upload)",
       {sha},
       UploadCommit},
      {"firmware.upload.abort", kOp, true, "Discard an upload in progress and its bytes", {sha}, UploadAbort},
      {"firmware.list",
       kOp,
       false,
       "Firmware artifacts of the tenant, by model then version",
       {{"model_id", S, false, "only this model's"}, kCursorArg, kLimitArg},
       FirmwareList},
      {"firmware.get",
       kOp,
       false,
       "An artifact with its signed manifest, signature and signer chain",
       {model, version},
       FirmwareGet},
      {"firmware.delete",
       kOp,
       true,
       "Delete an artifact (refused while a campaign not ended offers it)",
       {model, version},
       FirmwareDelete},
      {"ota.create",
       kOp,
       true,
       "A firmware campaign: a job of type ota updating the target's devices of the artifact's model in waves "
       "(doc/ota.md)",
       {model,
        version,
        {"job_id", S, false, "campaign id (default: generated)"},
        {"device_ids", L, false, "explicit devices (each of the artifact's model)"},
        {"group_id", S, false, "or the group's devices of the artifact's model"},
        {"firmware_version", S, false, "or (and) only devices running this version"},
        {"all", B, false, "or every device of the model"},
        {"continuous", B, false, "query targets: devices that join later are updated too"},
        {"start_at_ms", I, false, "not before this unix time (ms)"},
        {"rollout", O, false,
         "{rate_per_s, max_in_flight, waves: [{count|percent, rate_per_s}], success_gate_pct, ramp_*, "
         "window: {start, end, time_zone} (daily, default zone: the tenant's)}"},
        {"timeouts", O, false, "{step_s, download_s, install_s, reboot_s}"},
        {"retry", O, false, "{max_attempts, backoff_ms, on}"},
        {"abort", O, false, "{threshold_pct, min_executed, on, action: abort|pause|rollback}"}},
       OtaCreate},
      {"ota.rollback",
       kOp,
       true,
       "Return every device a campaign updated to the version it had before (a job of type ota)",
       {{"job_id", S, true, "the campaign"},
        {"rollback_id", S, false, "id of the rollback job (default: <job_id>-rollback)"},
        {"rollout", O, false, "{rate_per_s, max_in_flight}"},
        {"retry", O, false, "{max_attempts, backoff_ms, on}"}},
       OtaRollback},
  };
}

}  // namespace fmq::admin

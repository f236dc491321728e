#include "mgmt/jobs/job_engine.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>

#include "common/log.h"
#include "common/mgmt_topics.h"

namespace fmq::jobs {

using storage::TenantId;

// An execution the device has (SENT, DELIVERED, IN_PROGRESS).
struct JobEngine::Inflight {
  ExecState state = ExecState::Sent;
  uint32_t attempt = 0;
  int64_t deadline = 0;  // wall ms: step or in-progress timeout
  uint64_t token = 0;    // the notification whose outcome is awaited (0: none)
  std::string trail;     // this attempt's states: ["SENT",ms],["DELIVERED",ms],...
};

// A QUEUED execution on its way to being started.
struct JobEngine::Candidate {
  std::string device;
  uint32_t attempts = 0;      // attempts started so far
  bool same_attempt = false;  // recovered SENT/DELIVERED: resent as the same attempt
  std::string trail;          // and the trail it had
};

struct JobEngine::Active {
  std::string tenant;
  fb::JobT rec;
  Spec spec;
  Pacer pacer{Spec{}};
  Target target;
  Counts counts{};
  absl::flat_hash_map<std::string, Inflight> inflight;
  absl::flat_hash_map<std::string, Candidate> waiting;  // QUEUED, device offline when its turn came
  std::deque<Candidate> ready;                          // next to start (reconnected, retry due, recovered)
  std::deque<Candidate> scanned;                        // read from the store by the cursor
  absl::flat_hash_set<std::string> removed;             // retired devices still in ready/scanned
  // Enrolment jobs: devices taken again after an earlier execution ended →
  // the attempts before (retries and backoff count from there).
  absl::flat_hash_map<std::string, uint32_t> base;
  std::string cursor;  // last execution read by the dispatch cursor
  bool cursor_end = false;
  bool throttled = false;    // candidates left, held back by the rate
  bool held = false;         // candidates left, held back for the next wave
  int64_t window_opens = 0;  // > now: outside the maintenance window until then
  bool dirty = true;         // progress changed since the last event
  bool cancel_pending = false;
  bool cancel_force = false;
  bool remove = false;  // ended and drained: dropped at the next Sweep
  int64_t last_progress_ms = 0;
  int64_t started_ms = 0;
  uint64_t done_at_start = 0;
  uint64_t retries = 0;
  uint64_t started = 0;  // executions whose first attempt started (waves count these)
  uint64_t open = 0;     // of those, not yet in a terminal state

  TenantId tid() const { return TenantId::FromAuthenticated(tenant); }
  uint64_t Done() const {
    uint64_t n = 0;
    for (size_t i = 0; i < kExecStates; ++i) {
      if (IsTerminal(static_cast<ExecState>(i))) n += counts[i];
    }
    return n;
  }
  uint64_t& Count(ExecState s) { return counts[static_cast<size_t>(s)]; }
  uint64_t Count(ExecState s) const { return counts[static_cast<size_t>(s)]; }
  bool Ended() const { return IsEnded(rec.status); }
};

namespace {

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

Json TargetJson(const JobEngine::Target& t) {
  Json j = Json::object();
  if (!t.has_query) {
    j["device_ids"] = t.device_ids.size();
    if (t.continuous) j["continuous"] = true;  // enrolled one by one (Enroll)
    return j;
  }
  if (!t.filter.group_id.empty()) j["group_id"] = t.filter.group_id;
  if (!t.filter.model_id.empty()) j["model_id"] = t.filter.model_id;
  if (!t.filter.firmware_version.empty()) j["firmware_version"] = t.filter.firmware_version;
  if (t.filter.status) j["status"] = static_cast<int>(*t.filter.status);
  if (t.online >= 0) j["online"] = t.online == 1;
  if (t.continuous) j["continuous"] = true;
  return j;
}

JobEngine::Target TargetFromJson(const std::string& text) {
  JobEngine::Target t;
  Json j = Json::parse(text, nullptr, false);
  if (!j.is_object()) return t;
  if (j.contains("device_ids")) {
    t.continuous = j.value("continuous", false);
    return t;
  }
  t.has_query = true;
  auto str = [&](const char* k) { return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : ""; };
  t.filter.group_id = str("group_id");
  t.filter.model_id = str("model_id");
  t.filter.firmware_version = str("firmware_version");
  if (j.contains("status") && j["status"].is_number_integer()) {
    t.filter.status = static_cast<fb::DeviceStatus>(j["status"].get<int>());
  }
  if (j.contains("online") && j["online"].is_boolean()) t.online = j["online"].get<bool>() ? 1 : 0;
  t.continuous = j.value("continuous", false);
  return t;
}

}  // namespace

std::string_view JobTypeName(fb::JobType t) {
  switch (t) {
    case fb::JobType::Ota:
      return "ota";
    case fb::JobType::Config:
      return "config";
    case fb::JobType::Command:
      return "command";
    case fb::JobType::Renew:
      return "renew";
  }
  return "?";
}

JobEngine::JobEngine(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, Host host,
                     const EngineOptions& opts)
    : kv_(kv), reg_(reg), clock_(clock), host_(std::move(host)), opts_(opts) {}

JobEngine::~JobEngine() = default;

std::vector<std::string> JobEngine::DeviceTopics() const { return {"jobs/update", "jobs/get"}; }

std::string JobEngine::Validate(std::string_view topic, const Json& j) const {
  if (topic == "jobs/get") return "";  // {} or {"client_token"}: checked by the runtime
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (k != "job_id" && k != "attempt" && k != "status" && k != "details" && k != "client_token") {
      return "unknown field '" + k + "'";
    }
  }
  auto id = j.find("job_id");
  auto at = j.find("attempt");
  auto st = j.find("status");
  auto det = j.find("details");
  ExecState status;
  if (id == j.end() || !id->is_string() || id->get_ref<const std::string&>().empty() ||
      id->get_ref<const std::string&>().size() > 128) {
    return "job_id must be a string of 1..128 bytes";
  }
  if (at == j.end() || !at->is_number_unsigned() || at->get<uint64_t>() < 1 || at->get<uint64_t>() > 1'000'000) {
    return "attempt must be an integer of at least 1";
  }
  if (st == j.end() || !st->is_string() || !ParseExec(st->get<std::string>(), &status) ||
      !(status == ExecState::InProgress || status == ExecState::Succeeded || status == ExecState::Failed ||
        status == ExecState::Rejected)) {
    return "status must be IN_PROGRESS, SUCCEEDED, FAILED or REJECTED";
  }
  if (det != j.end()) {
    if (!det->is_object()) return "details must be a JSON object";
    if (det->dump(-1, ' ', false, Json::error_handler_t::replace).size() > opts_.max_detail_bytes) {
      return "details exceed " + std::to_string(opts_.max_detail_bytes) + " bytes";
    }
  }
  return "";
}

void JobEngine::OnDeviceMessage(const mgmt::DeviceMessage& m) {
  if (m.topic == "jobs/get") {
    OnGetPending(m.tenant, m.device_id, m.client_token);
    return;
  }
  // jobs/update, valid (Validate ran on the worker).
  Report r;
  r.tenant = m.tenant;
  r.device_id = m.device_id;
  r.client_token = m.client_token;
  r.job_id = m.body["job_id"].get<std::string>();
  r.attempt = static_cast<uint32_t>(m.body["attempt"].get<uint64_t>());
  ParseExec(m.body["status"].get<std::string>(), &r.status);
  if (auto det = m.body.find("details"); det != m.body.end()) r.details = Dump(*det);
  OnReport(r);
}

TypeHandler* JobEngine::HandlerOf(const Active& j) const {
  const auto i = static_cast<size_t>(j.rec.type);
  return i < std::size(handlers_) ? handlers_[i] : nullptr;
}

bool JobEngine::Advance(const std::string& tenant, std::string_view job_id, const std::string& device, ExecState to,
                        std::string_view detail) {
  Active* j = Find(tenant, job_id);
  if (j == nullptr) return false;
  auto f = j->inflight.find(device);
  if (f == j->inflight.end()) return false;
  if (to == ExecState::Delivered) {
    if (f->second.state != ExecState::Sent) return false;
    Record(*j, device, ExecState::Sent, ExecState::Delivered, f->second.attempt, "", &f->second.trail);
    f->second.state = ExecState::Delivered;
    return true;
  }
  if (to == ExecState::InProgress) {
    Record(*j, device, f->second.state, ExecState::InProgress, f->second.attempt, detail, &f->second.trail);
    f->second.state = ExecState::InProgress;
    return true;
  }
  if (!IsTerminal(to)) return false;
  Finish(*j, device, to, detail, true);
  return true;
}

bool JobEngine::Extend(const std::string& tenant, std::string_view job_id, const std::string& device,
                       int64_t deadline_ms) {
  Active* j = Find(tenant, job_id);
  if (j == nullptr) return false;
  auto f = j->inflight.find(device);
  if (f == j->inflight.end()) return false;
  f->second.deadline = deadline_ms;
  timeouts_.push(Due{deadline_ms, Ref{j->tenant, j->rec.job_id, device, f->second.attempt}});
  return true;
}

uint32_t JobEngine::AttemptOf(const std::string& tenant, std::string_view job_id, const std::string& device) {
  Active* j = Find(tenant, job_id);
  if (j == nullptr) return 0;
  auto f = j->inflight.find(device);
  return f == j->inflight.end() ? 0 : f->second.attempt;
}

void JobEngine::ForEachActive(const std::string& tenant, const std::function<void(const fb::JobT&)>& fn) const {
  auto t = active_.find(tenant);
  if (t == active_.end()) return;
  for (const auto& [id, j] : t->second) {
    if (!j->remove && !j->Ended()) fn(j->rec);
  }
}

JobEngine::Active* JobEngine::Find(const std::string& tenant, std::string_view job_id) {
  auto t = active_.find(tenant);
  if (t == active_.end()) return nullptr;
  auto j = t->second.find(job_id);
  return j == t->second.end() || j->second->remove ? nullptr : j->second.get();
}

absl::Status JobEngine::Recover() {
  std::vector<std::pair<std::string, fb::JobT>> open;
  absl::Status s = reg_->ForEachJob([&](const TenantId& t, fb::JobT&& rec) {
    // ended_at_ms is set once a job ended and its last execution in flight
    // finished: before that it is still followed.
    if (!IsEnded(rec.status) || rec.ended_at_ms == 0) open.emplace_back(t.str(), std::move(rec));
  });
  if (!s.ok()) return s;
  for (auto& [tenant, rec] : open) {
    const std::string id = rec.job_id;
    if (absl::Status l = Load(TenantId::FromAuthenticated(tenant), std::move(rec)); !l.ok()) {
      FMQ_LOG_ERROR("job '%s' of tenant '%s' not resumed: %s", id.c_str(), tenant.c_str(),
                    std::string(l.message()).c_str());
      continue;
    }
    FMQ_LOG_INFO("job '%s' of tenant '%s' resumed", id.c_str(), tenant.c_str());
  }
  return absl::OkStatus();
}

absl::Status JobEngine::Load(const TenantId& t, fb::JobT rec) {
  Json opts = Json::parse(rec.options_json, nullptr, false);
  auto spec = SpecFromJson(opts);
  if (!spec.ok()) return spec.status();
  auto j = std::make_unique<Active>();
  j->tenant = t.str();
  j->spec = *spec;
  j->pacer = Pacer(*spec);
  j->target = TargetFromJson(rec.target_query_json);
  j->rec = std::move(rec);
  const int64_t now = clock_->WallMs();
  // Every execution once: counts, and what the device may hold.
  absl::Status err = absl::OkStatus();
  uint64_t started = 0;
  absl::Status s = kv_->ScanPrefix(storage::Family::kJobDevices, storage::keys::JobDevicePrefix(t, j->rec.job_id),
                                   [&](std::string_view k, std::string_view v) {
                                     fb::JobDeviceT e;
                                     err = storage::DecodeRecord<fb::JobDevice>(storage::Family::kJobDevices, k, v, &e);
                                     if (!err.ok()) return false;
                                     if (e.attempts > 0) {
                                       ++started;
                                       if (!IsTerminal(e.state)) ++j->open;
                                     }
                                     LoadExecution(*j, std::move(e), now);
                                     return true;
                                   });
  if (!s.ok()) return s;
  if (!err.ok()) return err;
  j->started = started;
  StartWave(*j, now);
  j->pacer.set_started(started);
  j->pacer.Start(now);
  j->started_ms = now;
  j->done_at_start = j->Done();
  if (j->Ended()) {
    // Draining: only executions in flight are followed; QUEUED ones left by
    // a crash between the cancel and its sweep are canceled now.
    j->cursor_end = true;
    j->rec.resolved = true;
    j->cancel_pending = j->Count(ExecState::Pending) > 0;
  }
  auto& slot = active_[j->tenant][j->rec.job_id];
  if (!slot) ++active_count_;
  slot = std::move(j);
  return absl::OkStatus();
}

void JobEngine::LoadExecution(Active& j, fb::JobDeviceT&& e, int64_t now) {
  if (e.first_attempt > 0 && !IsTerminal(e.state)) j.base[e.device_id] = e.first_attempt;
  auto follow = [&](ExecState st, int64_t timeout_ms) {
    j.Count(st)++;
    Inflight f{st, e.attempts, now + timeout_ms, 0, std::move(e.trail)};
    timeouts_.push(Due{f.deadline, Ref{j.tenant, j.rec.job_id, e.device_id, e.attempts}});
    j.inflight.emplace(std::move(e.device_id), std::move(f));
  };
  switch (e.state) {
    case ExecState::Sent:
    case ExecState::Delivered:
      if (j.Ended()) {  // a canceled job's execution left running: followed to its end
        follow(e.state, j.spec.step_timeout_ms);
        return;
      }
      // Sent before the crash, maybe never received: again, as the same
      // attempt (the device recognises it by job id and attempt).
      j.Count(ExecState::Pending)++;
      j.ready.push_back(Candidate{std::move(e.device_id), e.attempts, true, std::move(e.trail)});
      return;
    case ExecState::InProgress: {
      const std::string device = e.device_id;
      const uint32_t attempt = e.attempts;
      follow(ExecState::InProgress, j.spec.in_progress_timeout_ms);
      if (TypeHandler* h = HandlerOf(j); h != nullptr)
        h->OnResumed(TypeHandler::Exec{j.tenant, j.rec, device, attempt});
      return;
    }
    default:
      j.Count(e.state)++;
  }
}

absl::Status JobEngine::Create(const TenantId& t, const NewJob& nj, storage::WriteBatch* b, fb::JobT* out) {
  if (active_count_ >= opts_.max_active_jobs) {
    return absl::ResourceExhaustedError("too many jobs not ended on this node (jobs.max_active " +
                                        std::to_string(opts_.max_active_jobs) + ")");
  }
  fb::JobT existing;
  if (absl::Status g = reg_->GetJob(t, nj.job_id, &existing); g.ok()) {
    return absl::AlreadyExistsError("job '" + nj.job_id + "' exists");
  } else if (!absl::IsNotFound(g)) {
    return g;
  }
  if (nj.target.continuous && !nj.target.has_query && !nj.target.device_ids.empty()) {
    return absl::InvalidArgumentError("continuous needs a query target (group_id, model_id, ...), not device_ids");
  }
  if (nj.spec.abort_rolls_back) {
    const TypeHandler* h = handlers_[static_cast<size_t>(nj.type)];
    if (h == nullptr || !h->supports_rollback()) {
      return absl::InvalidArgumentError("abort.action \"rollback\" is for firmware campaigns (ota.create) only");
    }
  }
  const int64_t now = clock_->WallMs();
  fb::JobT rec;
  rec.job_id = nj.job_id;
  rec.type = nj.type;
  rec.document_json = nj.document_json;
  rec.created_by = nj.created_by;
  rec.created_at_ms = now;
  rec.options_json = Dump(nj.spec.ToJson());
  rec.start_at_ms = nj.start_at_ms;
  rec.status = nj.start_at_ms > now ? JobStatus::Pending : JobStatus::Running;
  rec.target_query_json = Dump(TargetJson(nj.target));
  if (!nj.target.has_query) {
    std::vector<std::string> ids = nj.target.device_ids;
    std::sort(ids.begin(), ids.end());
    if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) {
      return absl::InvalidArgumentError("device_ids lists a device twice");
    }
    for (const std::string& id : ids) {
      fb::DeviceT d;
      absl::Status g = reg_->GetDevice(t, id, &d);
      if (absl::IsNotFound(g)) return absl::NotFoundError("device '" + id + "' is not registered");
      if (!g.ok()) return g;
      if (storage::IsRetired(d.status)) {
        return absl::FailedPreconditionError("device '" + id + "' is " +
                                             (d.status == fb::DeviceStatus::Replaced ? "replaced" : "decommissioned"));
      }
      fb::JobDeviceT e;
      e.device_id = id;
      e.state = ExecState::Pending;
      e.updated_at_ms = now;
      reg_->PutJobDevice(t, rec.job_id, e, b);
    }
    rec.total_count = ids.size();
    rec.resolved = true;
  } else {
    if (!nj.target.filter.group_id.empty()) {
      fb::DeviceGroupT g;
      if (absl::Status s = reg_->GetGroup(t, nj.target.filter.group_id, &g); !s.ok()) {
        return absl::IsNotFound(s) ? absl::NotFoundError("group '" + nj.target.filter.group_id + "' not found") : s;
      }
    }
    if (!nj.target.filter.model_id.empty()) {
      fb::DeviceModelT m;
      if (absl::Status s = reg_->GetModel(t, nj.target.filter.model_id, &m); !s.ok()) {
        return absl::IsNotFound(s) ? absl::NotFoundError("model '" + nj.target.filter.model_id + "' not found") : s;
      }
    }
  }
  reg_->PutJob(t, rec, b);
  *out = rec;
  return absl::OkStatus();
}

void JobEngine::Activate(const TenantId& t, fb::JobT rec) {
  const std::string id = rec.job_id;
  if (absl::Status s = Load(t, std::move(rec)); !s.ok()) {
    FMQ_LOG_ERROR("job '%s' of tenant '%s' stored but not started: %s", id.c_str(), t.str().c_str(),
                  std::string(s.message()).c_str());
  }
}

absl::Status JobEngine::Control(const TenantId& t, std::string_view job_id, Action a, bool /*force*/,
                                const std::string& by, storage::WriteBatch* b, fb::JobT* out) {
  fb::JobT rec;
  if (Active* j = Find(t.str(), job_id); j != nullptr) {
    rec = j->rec;
  } else if (absl::Status g = reg_->GetJob(t, job_id, &rec); !g.ok()) {
    return absl::IsNotFound(g) ? absl::NotFoundError("job '" + std::string(job_id) + "' not found") : g;
  }
  const JobStatus to = a == Action::kPause    ? JobStatus::Paused
                       : a == Action::kResume ? JobStatus::Running
                                              : JobStatus::Canceled;
  if (!JobMayMove(rec.status, to)) {
    return absl::FailedPreconditionError("job '" + rec.job_id + "' is " + std::string(JobName(rec.status)) +
                                         ": cannot " +
                                         (a == Action::kPause    ? "pause"
                                          : a == Action::kResume ? "resume"
                                                                 : "cancel") +
                                         " it");
  }
  rec.status = to;
  rec.reason = a == Action::kPause ? "paused by " + by : a == Action::kResume ? "" : "canceled by " + by;
  reg_->PutJob(t, rec, b);
  *out = rec;
  return absl::OkStatus();
}

void JobEngine::ApplyControl(const TenantId& t, const fb::JobT& rec, Action a, bool force) {
  Active* j = Find(t.str(), rec.job_id);
  if (j == nullptr) return;
  const int64_t now = clock_->WallMs();
  switch (a) {
    case Action::kPause:
      j->rec.status = JobStatus::Paused;
      j->rec.reason = rec.reason;
      break;
    case Action::kResume:
      j->rec.status = JobStatus::Running;
      j->rec.reason.clear();
      j->pacer.Start(now);
      break;
    case Action::kCancel:
      EndJob(*j, JobStatus::Canceled, rec.reason, force);
      break;
  }
  j->dirty = true;
}

void JobEngine::SaveJob(Active& j) {
  j.rec.counts.assign(j.counts.begin(), j.counts.end());
  j.rec.completed_count = j.Count(ExecState::Succeeded);
  j.rec.failed_count = j.Count(ExecState::Failed) + j.Count(ExecState::TimedOut) + j.Count(ExecState::Rejected);
  reg_->PutJob(j.tid(), j.rec, &batch_);
  j.dirty = true;
}

void JobEngine::Record(Active& j, const std::string& device, ExecState from, ExecState to, uint32_t attempt,
                       std::string_view detail, std::string* trail, int64_t not_before) {
  j.Count(from)--;
  j.Count(to)++;
  j.dirty = true;
  if (attempt > 0 && IsTerminal(to) && !IsTerminal(from) && j.open > 0) j.open--;
  const int64_t now = clock_->WallMs();
  std::string own;
  std::string& tr = trail != nullptr ? *trail : own;
  if (!tr.empty()) tr.push_back(',');
  tr += "[\"";
  tr += ExecName(to);
  tr += "\",";
  tr += std::to_string(now);
  tr += "]";
  Unsynced& u = unsynced_[UnsyncedKey(j, device)];
  if (u.tenant.empty()) {
    u.tenant = j.tenant;
    u.job_id = j.rec.job_id;
  }
  u.rec.device_id = device;
  u.rec.state = to;
  u.rec.attempts = attempt;
  if (auto b = j.base.find(device); b != j.base.end()) {
    u.rec.first_attempt = b->second;
    if (IsTerminal(to)) j.base.erase(b);
  }
  u.rec.updated_at_ms = now;
  u.rec.detail = std::string(detail);
  u.rec.not_before_ms = not_before;
  const bool ends = IsTerminal(to) || to == ExecState::Pending;
  u.rec.trail = ends ? std::string() : tr;
  // SENT and DELIVERED need not be durable at once: after a crash an
  // execution stored QUEUED with n attempts is sent as attempt n+1 — the
  // attempt the device already has. Written when something else changes or
  // a second later, they cost no write for a device that answers quickly.
  if (to == ExecState::Sent || to == ExecState::Delivered) {
    if (u.lazy_since == 0) u.lazy_since = now;
  } else {
    u.lazy_since = 0;
  }
  if (!ends || !opts_.audit_executions) return;
  if (const TypeHandler* h = HandlerOf(j); h != nullptr && !h->engine_audits()) return;
  fb::AuditEntryT a;
  a.time_ms = now;
  a.actor = "broker";
  a.action = "job.execution";
  a.device_id = device;
  a.details_json = "{\"job_id\":\"" + j.rec.job_id + "\",\"attempt\":" + std::to_string(attempt) + ",\"to\":\"" +
                   std::string(ExecName(to)) + "\",\"trail\":[" + tr + "]";
  if (!detail.empty() && detail.size() <= 1024) a.details_json += ",\"details\":" + std::string(detail);
  a.details_json += "}";
  a.result = "ok";
  if (absl::Status s = reg_->AppendAudit(j.tid(), std::move(a), &batch_); !s.ok()) {
    FMQ_LOG_ERROR("audit of job '%s' execution of '%s' not written: %s", j.rec.job_id.c_str(), device.c_str(),
                  std::string(s.message()).c_str());
  }
  if (touched_tenants_.empty() || touched_tenants_.back() != j.tenant) touched_tenants_.push_back(j.tenant);
}

void JobEngine::FlushRecords(bool all) {
  const int64_t now = clock_->WallMs();
  for (auto it = unsynced_.begin(); it != unsynced_.end();) {
    const Unsynced& u = it->second;
    if (!all && u.lazy_since != 0 && now - u.lazy_since < kLazyMs) {
      ++it;
      continue;
    }
    reg_->PutJobDevice(TenantId::FromAuthenticated(u.tenant), u.job_id, u.rec, &batch_);
    unsynced_.erase(it++);
  }
}

std::string JobEngine::UnsyncedKey(const Active& j, std::string_view device) {
  std::string k = j.tenant;
  k.push_back('\0');
  k += j.rec.job_id;
  k.push_back('\0');
  k.append(device);
  return k;
}

bool JobEngine::Lookup(Active& j, const std::string& device, fb::JobDeviceT* out) {
  if (auto it = unsynced_.find(UnsyncedKey(j, device)); it != unsynced_.end()) {
    *out = it->second.rec;
    return true;
  }
  return reg_->GetJobDevice(j.tid(), j.rec.job_id, device, out).ok();
}

void JobEngine::Resolve(Active& j, int64_t now) {
  const TenantId t = j.tid();
  // Up to 100 pages (100,000 devices) or 50 ms per turn: the management
  // loop stays responsive while a million devices resolve.
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
  for (int step = 0; step < 100 && !j.rec.resolved && std::chrono::steady_clock::now() < until; ++step) {
    storage::Page<fb::DeviceT> page;
    if (absl::Status s = reg_->ListDevices(t, j.target.filter, j.rec.resolve_cursor, opts_.resolve_batch, &page);
        !s.ok()) {
      FMQ_LOG_ERROR("job '%s': target not resolved: %s", j.rec.job_id.c_str(), std::string(s.message()).c_str());
      return;
    }
    for (const fb::DeviceT& d : page.items) {
      j.rec.resolve_cursor = d.device_id;
      if (!j.target.filter.status && storage::IsRetired(d.status)) continue;
      if (j.target.online >= 0 && host_.online(j.tenant, d.device_id) != (j.target.online == 1)) continue;
      fb::JobDeviceT existing;  // a continuous job may have met it already (it joined meanwhile)
      if (j.target.continuous && Lookup(j, d.device_id, &existing)) continue;
      fb::JobDeviceT e;
      e.device_id = d.device_id;
      e.state = ExecState::Pending;
      e.updated_at_ms = now;
      reg_->PutJobDevice(t, j.rec.job_id, e, &batch_);
      j.Count(ExecState::Pending)++;
      j.rec.total_count++;
    }
    if (page.next_cursor.empty()) j.rec.resolved = true;
    SaveJob(j);
  }
}

bool JobEngine::NextCandidate(Active& j, int64_t now, Candidate* c) {
  bool scanned_once = false;
  while (true) {
    if (!j.ready.empty()) {
      *c = std::move(j.ready.front());
      j.ready.pop_front();
    } else if (!j.scanned.empty()) {
      *c = std::move(j.scanned.front());
      j.scanned.pop_front();
    } else if (!j.cursor_end && !scanned_once) {
      scanned_once = true;
      storage::Page<fb::JobDeviceT> page;
      if (absl::Status s = reg_->ListJobDevices(j.tid(), j.rec.job_id, j.cursor, opts_.dispatch_scan, &page); !s.ok()) {
        FMQ_LOG_ERROR("job '%s': executions not read: %s", j.rec.job_id.c_str(), std::string(s.message()).c_str());
        return false;
      }
      for (fb::JobDeviceT& e : page.items) {
        j.cursor = e.device_id;
        if (e.state != ExecState::Pending) continue;
        if (e.first_attempt > 0) j.base[e.device_id] = e.first_attempt;
        if (e.not_before_ms > now) {
          retries_.push(Due{e.not_before_ms, Ref{j.tenant, j.rec.job_id, e.device_id, e.attempts}});
          continue;
        }
        j.scanned.push_back(Candidate{std::move(e.device_id), e.attempts, false, {}});
      }
      if (page.next_cursor.empty() && j.rec.resolved) j.cursor_end = true;
      continue;
    } else {
      return false;
    }
    if (!j.removed.empty() && j.removed.erase(c->device) > 0) continue;
    if (j.inflight.contains(c->device)) continue;
    return true;
  }
}

void JobEngine::Dispatch(Active& j, int64_t now) {
  j.throttled = false;
  j.held = false;
  j.pacer.Refill(now);
  Candidate c;
  while (j.inflight.size() < j.spec.max_in_flight && NextCandidate(j, now, &c)) {
    if (!host_.online(j.tenant, c.device)) {
      std::string dev = c.device;
      j.waiting.insert_or_assign(std::move(dev), std::move(c));
      continue;
    }
    const bool first = c.attempts == 0 && !c.same_attempt;
    if (first && j.started >= WaveCap(j)) {
      j.ready.push_front(std::move(c));  // the next wave's: after the gate
      j.held = true;
      return;
    }
    if (!j.pacer.Take()) {
      j.ready.push_front(std::move(c));
      j.throttled = true;
      return;
    }
    j.waiting.erase(c.device);
    if (first) {
      j.started++;
      j.open++;
    }
    StartExecution(j, c, now);
  }
}

uint64_t JobEngine::WaveCap(const Active& j) const {
  const auto& w = j.spec.waves;
  if (w.empty() || j.rec.wave + 1 >= w.size()) return UINT64_MAX;  // the last wave takes the rest
  if (!j.rec.resolved) {
    for (size_t i = 0; i <= j.rec.wave; ++i) {
      if (w[i].percent > 0) return 0;  // a share of a total not known yet
    }
  }
  uint64_t cap = 0;
  double pct = 0;
  for (size_t i = 0; i <= j.rec.wave && i < w.size(); ++i) {
    cap += w[i].count;
    pct += w[i].percent;
  }
  if (pct > 0) cap += static_cast<uint64_t>(std::ceil(pct * static_cast<double>(j.rec.total_count) / 100.0 - 1e-9));
  return std::max<uint64_t>(cap, 1);
}

void JobEngine::StartWave(Active& j, int64_t now) {
  Spec s = j.spec;
  if (j.rec.wave < s.waves.size() && s.waves[j.rec.wave].rate_per_s > 0) {
    s.rate_per_s = s.waves[j.rec.wave].rate_per_s;
    s.ramp_factor = 1;
    s.max_rate = 0;
  }
  const uint64_t started = j.pacer.started();
  j.pacer = Pacer(s);
  j.pacer.set_started(started);
  j.pacer.Start(now);
}

void JobEngine::CheckWave(Active& j) {
  const auto& w = j.spec.waves;
  if (j.rec.status != JobStatus::Running || w.empty() || j.rec.wave + 1 >= w.size()) return;
  const uint64_t cap = WaveCap(j);
  // The wave is over when its executions all started and all ended — or
  // when nothing is left to start (a smaller target than the waves).
  const bool nothing_left = j.rec.resolved && j.Count(ExecState::Pending) == 0 && j.ready.empty();
  if ((j.started < cap && !nothing_left) || j.open > 0 || j.started == 0) return;
  const uint64_t ok = j.Count(ExecState::Succeeded);
  const double pct = 100.0 * static_cast<double>(ok) / static_cast<double>(j.started);
  const uint32_t done_wave = j.rec.wave + 1;
  j.rec.wave++;
  StartWave(j, clock_->WallMs());
  if (j.spec.success_gate_pct > 0 && pct + 1e-9 < j.spec.success_gate_pct) {
    char why[200];
    std::snprintf(why, sizeof why,
                  "wave %u of %zu: %llu of %llu started succeeded (%.1f%%), under the gate of %g%%: paused before "
                  "wave %u (job.resume starts it)",
                  done_wave, w.size(), static_cast<unsigned long long>(ok), static_cast<unsigned long long>(j.started),
                  pct, j.spec.success_gate_pct, done_wave + 1);
    FMQ_LOG_WARN("job '%s' of tenant '%s': %s", j.rec.job_id.c_str(), j.tenant.c_str(), why);
    j.rec.status = JobStatus::Paused;
    j.rec.reason = why;
  }
  SaveJob(j);
}

void JobEngine::StartExecution(Active& j, const Candidate& c, int64_t now) {
  const uint32_t attempt = c.same_attempt ? c.attempts : c.attempts + 1;
  Inflight& f = j.inflight[c.device];
  f = Inflight{ExecState::Sent, attempt, now + j.spec.step_timeout_ms, 0, c.same_attempt ? c.trail : std::string()};
  Record(j, c.device, ExecState::Pending, ExecState::Sent, attempt, "", &f.trail);
  timeouts_.push(Due{f.deadline, Ref{j.tenant, j.rec.job_id, c.device, attempt}});
  if (TypeHandler* h = HandlerOf(j); h != nullptr) {
    TypeHandler::Started st = h->OnStart(TypeHandler::Exec{j.tenant, j.rec, c.device, attempt});
    if (st.kind == TypeHandler::Started::kDone) Finish(j, c.device, st.state, st.detail, true);
    return;
  }
  Notify(j, c.device, f);
}

void JobEngine::Notify(Active& j, const std::string& device, Inflight& f) {
  if (f.token != 0) tokens_.erase(f.token);
  f.token = TokenOf(next_token_++);
  tokens_.emplace(f.token, Ref{j.tenant, j.rec.job_id, device, f.attempt});
  std::string p = "{\"job_id\":\"" + j.rec.job_id + "\",\"attempt\":" + std::to_string(f.attempt) +
                  ",\"type\":\"command\",\"status\":\"" + std::string(ExecName(f.state)) + "\",\"document\":";
  p += j.rec.document_json.empty() ? "{}" : j.rec.document_json;
  p += ",\"step_timeout_s\":" + std::to_string(j.spec.step_timeout_ms / 1000) +
       ",\"in_progress_timeout_s\":" + std::to_string(j.spec.in_progress_timeout_ms / 1000) + "}";
  pending_.sends.push_back(DeviceSend{j.tenant, device, "jobs/notify", std::move(p), f.token});
}

void JobEngine::Reply(const std::string& tenant, const std::string& device, std::string_view suffix, const Json& body) {
  pending_.sends.push_back(DeviceSend{tenant, device, std::string(suffix), Dump(body), 0});
}

void JobEngine::OnOutcome(uint64_t token, bool acked, std::string_view why) {
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return;
  const Ref r = std::move(it->second);
  tokens_.erase(it);
  Active* j = Find(r);
  if (j == nullptr) return;
  auto f = j->inflight.find(r.device);
  if (f == j->inflight.end() || f->second.token != token) return;
  f->second.token = 0;
  if (acked) {
    if (f->second.state == ExecState::Sent) {
      Record(*j, r.device, ExecState::Sent, ExecState::Delivered, r.attempt, "", &f->second.trail);
      f->second.state = ExecState::Delivered;
    }
    return;
  }
  if (why == "too_large") {
    Finish(*j, r.device, ExecState::Failed, "{\"error\":\"the job document is larger than the device accepts\"}",
           false);
    return;
  }
  if (f->second.state != ExecState::Sent) return;  // the device had it already (a resend)
  // Never reached the device: back in line, the attempt not spent.
  const uint32_t attempts = r.attempt - 1;
  Record(*j, r.device, ExecState::Sent, ExecState::Pending, attempts, "", &f->second.trail);
  j->inflight.erase(f);
  const int64_t now = clock_->WallMs();
  if (why == "queue_full") {
    retries_.push(Due{now + 1000, Ref{j->tenant, j->rec.job_id, r.device, attempts}});
  } else {
    j->waiting.insert_or_assign(r.device, Candidate{r.device, attempts, false, {}});
  }
}

void JobEngine::OnReport(const Report& r) {
  Json base{{"job_id", r.job_id}, {"attempt", r.attempt}};
  if (!r.client_token.empty()) base["client_token"] = r.client_token;
  auto reject = [&](const char* code, const std::string& msg) {
    stats_.reports_rejected++;
    Json body = base;
    body["error"] = Json{{"code", code}, {"message", msg}};
    Reply(r.tenant, r.device_id, "jobs/update/rejected", body);
  };
  Active* j = Find(r.tenant, r.job_id);
  if (j == nullptr) {
    fb::JobT rec;
    if (reg_->GetJob(TenantId::FromAuthenticated(r.tenant), r.job_id, &rec).ok()) {
      reject("terminal", "job '" + r.job_id + "' is " + std::string(JobName(rec.status)));
    } else {
      reject("unknown_job", "no job '" + r.job_id + "'");
    }
    return;
  }
  if (HandlerOf(*j) != nullptr) {
    reject("not_found", "job '" + r.job_id + "' is a " + std::string(JobTypeName(j->rec.type)) +
                            " job: its devices answer on their own topics (doc/device-api.md)");
    return;
  }
  auto f = j->inflight.find(r.device_id);
  if (f == j->inflight.end()) {
    fb::JobDeviceT e;
    if (!Lookup(*j, r.device_id, &e)) {
      reject("not_found", "job '" + r.job_id + "' has no execution for this device");
    } else if (IsTerminal(e.state)) {
      reject("terminal", "the execution is " + std::string(ExecName(e.state)));
    } else {
      reject("not_started", "the execution is not started (attempt " + std::to_string(e.attempts) + " ended)");
    }
    return;
  }
  Inflight& fl = f->second;
  if (r.attempt != fl.attempt) {
    reject("stale_attempt",
           "attempt " + std::to_string(r.attempt) + " is not the current attempt " + std::to_string(fl.attempt));
    return;
  }
  if (!DeviceMayReport(fl.state, r.status)) {
    reject("invalid_transition",
           std::string(ExecName(fl.state)) + " cannot move to " + std::string(ExecName(r.status)));
    return;
  }
  const int64_t now = clock_->WallMs();
  if (r.status == ExecState::InProgress) {
    const bool first = fl.state != ExecState::InProgress;
    Record(*j, r.device_id, fl.state, ExecState::InProgress, fl.attempt, r.details, &fl.trail);
    fl.state = ExecState::InProgress;
    if (first) {
      fl.deadline = now + j->spec.in_progress_timeout_ms;
      timeouts_.push(Due{fl.deadline, Ref{j->tenant, j->rec.job_id, r.device_id, fl.attempt}});
    }
  } else {
    Finish(*j, r.device_id, r.status, r.details, true);
  }
  Json body = base;
  body["status"] = ExecName(r.status);
  Reply(r.tenant, r.device_id, "jobs/update/accepted", body);
}

void JobEngine::Finish(Active& j, const std::string& device, ExecState to, std::string_view detail, bool may_retry) {
  auto it = j.inflight.find(device);
  if (it == j.inflight.end()) return;
  Inflight f = std::move(it->second);
  if (f.token != 0) tokens_.erase(f.token);
  j.inflight.erase(it);
  if (TypeHandler* h = HandlerOf(j); h != nullptr)
    h->OnEnded(TypeHandler::Exec{j.tenant, j.rec, device, f.attempt}, to);
  const bool retryable =
      (to == ExecState::Failed && j.spec.retry_failed) || (to == ExecState::TimedOut && j.spec.retry_timed_out);
  auto b = j.base.find(device);
  const uint32_t tries = f.attempt - (b == j.base.end() ? 0 : std::min(b->second, f.attempt));
  if (may_retry && retryable && tries < j.spec.max_attempts && !j.Ended()) {
    // The attempt ended `to` and the execution waits for the next one: one
    // record and one audit entry, the trail showing both.
    const int64_t now = clock_->WallMs();
    f.trail += ",[\"" + std::string(ExecName(to)) + "\"," + std::to_string(now) + "]";
    const int64_t at = now + BackoffMs(j.spec, tries);
    Record(j, device, f.state, ExecState::Pending, f.attempt, detail, &f.trail, at);
    retries_.push(Due{at, Ref{j.tenant, j.rec.job_id, device, f.attempt}});
    j.retries++;
    return;
  }
  Record(j, device, f.state, to, f.attempt, detail, &f.trail);
  CheckAbort(j);
}

void JobEngine::CheckAbort(Active& j) {
  if (j.spec.abort_threshold_pct <= 0 || j.rec.status != JobStatus::Running) return;
  const uint64_t executed = j.Count(ExecState::Succeeded) + j.Count(ExecState::Failed) + j.Count(ExecState::TimedOut) +
                            j.Count(ExecState::Rejected) + j.Count(ExecState::RolledBack);
  // A device-side rollback is a failed update.
  const uint64_t bad = (j.spec.abort_on_failed ? j.Count(ExecState::Failed) + j.Count(ExecState::RolledBack) : 0) +
                       (j.spec.abort_on_timed_out ? j.Count(ExecState::TimedOut) : 0) +
                       (j.spec.abort_on_rejected ? j.Count(ExecState::Rejected) : 0);
  if (executed < j.spec.abort_min_executed || static_cast<double>(bad) * 100 < j.spec.abort_threshold_pct * executed) {
    return;
  }
  char why[160];
  std::snprintf(why, sizeof why, "abort criteria met: %llu of %llu executed ended in an abort state (threshold %g%%)",
                static_cast<unsigned long long>(bad), static_cast<unsigned long long>(executed),
                j.spec.abort_threshold_pct);
  FMQ_LOG_WARN("job '%s' of tenant '%s': %s", j.rec.job_id.c_str(), j.tenant.c_str(), why);
  if (j.spec.abort_pauses) {
    j.rec.status = JobStatus::Paused;
    j.rec.reason = why;
    SaveJob(j);
    return;
  }
  const TypeHandler* h = HandlerOf(j);
  EndJob(j, JobStatus::Aborted, why, h == nullptr || h->cancel_in_flight_on_abort());
}

void JobEngine::EndJob(Active& j, JobStatus status, std::string reason, bool force) {
  j.rec.status = status;
  j.rec.reason = std::move(reason);
  if (status != JobStatus::Completed) {
    j.cancel_pending = true;
    j.cancel_force = force;
    CancelRemaining(j, force);
  }
  SaveJob(j);
  MaybeComplete(j);
}

void JobEngine::CancelRemaining(Active& j, bool force) {
  // The store must hold every change made so far: the scan below reads it.
  FlushRecords(true);
  if (!batch_.empty()) {
    if (absl::Status s = reg_->Commit(batch_, true); !s.ok()) {
      FMQ_LOG_ERROR("job '%s': cancel postponed, store not written: %s", j.rec.job_id.c_str(),
                    std::string(s.message()).c_str());
      return;  // retried by the next Pump
    }
    batch_.Clear();
    touched_tenants_.clear();
  }
  const TenantId t = j.tid();
  const char* why =
      j.rec.status == JobStatus::Aborted ? "{\"reason\":\"job aborted\"}" : "{\"reason\":\"job canceled\"}";
  std::vector<std::pair<std::string, uint32_t>> queued;
  absl::Status err = absl::OkStatus();
  absl::Status s = kv_->ScanPrefix(storage::Family::kJobDevices, storage::keys::JobDevicePrefix(t, j.rec.job_id),
                                   [&](std::string_view k, std::string_view v) {
                                     fb::JobDeviceT e;
                                     err = storage::DecodeRecord<fb::JobDevice>(storage::Family::kJobDevices, k, v, &e);
                                     if (!err.ok()) return false;
                                     if (!IsTerminal(e.state) && !j.inflight.contains(e.device_id)) {
                                       queued.emplace_back(std::move(e.device_id), e.attempts);
                                     }
                                     return true;
                                   });
  if (!s.ok() || !err.ok()) {
    FMQ_LOG_ERROR("job '%s': cancel postponed, executions not read: %s", j.rec.job_id.c_str(),
                  std::string((s.ok() ? err : s).message()).c_str());
    return;
  }
  for (const auto& [device, attempts] : queued)
    Record(j, device, ExecState::Pending, ExecState::Canceled, attempts, why, nullptr);
  if (force) {
    std::vector<std::string> held;
    for (const auto& [device, f] : j.inflight) held.push_back(device);
    for (const std::string& device : held) {
      const uint32_t attempt = j.inflight[device].attempt;
      Finish(j, device, ExecState::Canceled, why, false);
      if (HandlerOf(j) == nullptr) {
        Reply(j.tenant, device, "jobs/cancel", Json{{"job_id", j.rec.job_id}, {"attempt", attempt}});
      }
    }
  }
  j.ready.clear();
  j.scanned.clear();
  j.waiting.clear();
  j.removed.clear();
  j.cursor_end = true;
  j.rec.resolved = true;
  j.cancel_pending = false;
}

void JobEngine::MaybeComplete(Active& j) {
  if (j.remove) return;
  if (j.rec.status == JobStatus::Running && j.rec.resolved && j.Done() == j.rec.total_count && !j.target.continuous) {
    j.rec.status = JobStatus::Completed;
  }
  if (j.Ended() && j.inflight.empty() && !j.cancel_pending) {
    j.remove = true;  // dropped from memory once its last progress event is out
    j.rec.ended_at_ms = clock_->WallMs();
    SaveJob(j);
    if (TypeHandler* h = HandlerOf(j); h != nullptr) {
      h->OnJobEnded(j.tenant, j.rec, j.rec.status == JobStatus::Aborted && j.spec.abort_rolls_back);
    }
  }
}

void JobEngine::OnConnected(const std::string& tenant, const std::string& device_id) {
  auto t = active_.find(tenant);
  if (t == active_.end()) return;
  for (auto& [id, j] : t->second) {
    if (j->remove) continue;
    if (auto w = j->waiting.find(device_id); w != j->waiting.end()) {
      j->ready.push_back(std::move(w->second));
      j->waiting.erase(w);
    } else if (auto f = j->inflight.find(device_id); f != j->inflight.end() && HandlerOf(*j) == nullptr) {
      Notify(*j, device_id, f->second);  // it may have been lost with the old connection
    }
  }
}

void JobEngine::OnGetPending(const std::string& tenant, const std::string& device_id, const std::string& client_token) {
  Json list = Json::array();
  if (auto t = active_.find(tenant); t != active_.end()) {
    for (auto& [id, j] : t->second) {
      if (j->remove) continue;
      const bool own = HandlerOf(*j) == nullptr;  // other types are not the device's jobs to list
      if (auto w = j->waiting.find(device_id); w != j->waiting.end()) {
        j->ready.push_back(std::move(w->second));
        j->waiting.erase(w);
        if (own) list.push_back(Json{{"job_id", id}, {"status", "QUEUED"}});
      } else if (auto f = j->inflight.find(device_id); f != j->inflight.end() && own) {
        Notify(*j, device_id, f->second);
        list.push_back(Json{{"job_id", id}, {"attempt", f->second.attempt}, {"status", ExecName(f->second.state)}});
      }
    }
  }
  Json body{{"executions", list}};
  if (!client_token.empty()) body["client_token"] = client_token;
  Reply(tenant, device_id, "jobs/pending", body);
}

void JobEngine::OnDeviceJoined(const TenantId& t, const fb::DeviceT& d) {
  auto tj = active_.find(t.str());
  if (tj == active_.end() || storage::IsRetired(d.status)) return;
  for (auto& [id, j] : tj->second) {
    const Target& q = j->target;
    if (j->remove || j->Ended() || !q.continuous || !q.has_query) continue;
    const bool match = (q.filter.group_id.empty() ||
                        std::find(d.group_ids.begin(), d.group_ids.end(), q.filter.group_id) != d.group_ids.end()) &&
                       (q.filter.model_id.empty() || q.filter.model_id == d.model_id) &&
                       (q.filter.firmware_version.empty() || q.filter.firmware_version == d.firmware_version) &&
                       (!q.filter.status || *q.filter.status == d.status);
    if (match) AddExecution(*j, d.device_id, false);
  }
}

bool JobEngine::AddExecution(Active& j, const std::string& device, bool rearm) {
  fb::JobDeviceT e;
  uint32_t attempts = 0;
  if (Lookup(j, device, &e)) {
    // One execution per device and job; an enrolment job takes a device
    // again once its execution ended (a certificate renewed two years ago),
    // numbering its attempts on, so the device's (job, attempt) stays new.
    if (!rearm || !IsTerminal(e.state) || e.state == ExecState::Removed) return false;
    j.Count(e.state)--;
    j.rec.total_count--;
    attempts = e.attempts;
    j.base[device] = attempts;
  }
  Unsynced& u = unsynced_[UnsyncedKey(j, device)];
  u.tenant = j.tenant;
  u.job_id = j.rec.job_id;
  u.rec = fb::JobDeviceT{};
  u.rec.device_id = device;
  u.rec.state = ExecState::Pending;
  u.rec.attempts = attempts;
  u.rec.first_attempt = attempts;
  u.rec.updated_at_ms = clock_->WallMs();
  u.lazy_since = 0;
  j.Count(ExecState::Pending)++;
  j.rec.total_count++;
  SaveJob(j);
  j.ready.push_back(Candidate{device, attempts, false, {}});
  return true;
}

absl::StatusOr<bool> JobEngine::Enroll(const std::string& tenant, std::string_view job_id, const std::string& device) {
  Active* j = Find(tenant, job_id);
  if (j == nullptr || j->remove || j->Ended()) return absl::NotFoundError("job not running");
  if (!j->target.continuous || j->target.has_query) {
    return absl::FailedPreconditionError("job '" + std::string(job_id) + "' does not take enrolments");
  }
  return AddExecution(*j, device, true);
}

void JobEngine::OnDeviceRetired(const TenantId& t, const std::string& device_id) {
  auto tj = active_.find(t.str());
  if (tj == active_.end()) return;
  for (auto& [id, j] : tj->second) {
    if (j->remove) continue;
    if (j->inflight.contains(device_id)) {
      Finish(*j, device_id, ExecState::Removed, "{\"reason\":\"device retired\"}", false);
      continue;
    }
    fb::JobDeviceT e;
    if (!Lookup(*j, device_id, &e) || IsTerminal(e.state)) continue;
    Record(*j, device_id, ExecState::Pending, ExecState::Removed, e.attempts, "{\"reason\":\"device retired\"}",
           nullptr);
    j->waiting.erase(device_id);
    j->removed.insert(device_id);
    MaybeComplete(*j);
  }
}

void JobEngine::Expire(int64_t now) {
  while (!timeouts_.empty() && timeouts_.top().at <= now) {
    const Due d = timeouts_.top();
    timeouts_.pop();
    Active* j = Find(d.ref);
    if (j == nullptr) continue;
    auto f = j->inflight.find(d.ref.device);
    if (f == j->inflight.end() || f->second.attempt != d.ref.attempt || f->second.deadline > now) continue;
    const bool running = f->second.state == ExecState::InProgress;
    std::string why;
    if (TypeHandler* h = HandlerOf(*j); h != nullptr) {
      why = h->TimeoutDetail(TypeHandler::Exec{j->tenant, j->rec, d.ref.device, f->second.attempt});
    }
    if (why.empty()) why = running ? "{\"reason\":\"in_progress timeout\"}" : "{\"reason\":\"step timeout\"}";
    Finish(*j, d.ref.device, ExecState::TimedOut, why, true);
  }
}

void JobEngine::Retry(int64_t now) {
  while (!retries_.empty() && retries_.top().at <= now) {
    const Due d = retries_.top();
    retries_.pop();
    Active* j = Find(d.ref);
    if (j == nullptr || j->Ended() || j->inflight.contains(d.ref.device)) continue;
    j->ready.push_back(Candidate{d.ref.device, d.ref.attempt, false, {}});
  }
}

int64_t JobEngine::Pump() {
  const int64_t now = clock_->WallMs();
  Expire(now);
  Retry(now);
  int64_t next = INT64_MAX;
  for (auto& [tenant, jobs] : active_) {
    for (auto& [id, jp] : jobs) {
      Active& j = *jp;
      if (j.remove) continue;
      if (j.cancel_pending) CancelRemaining(j, j.cancel_force);
      if (j.rec.status == JobStatus::Pending) {
        if (j.rec.start_at_ms > now) {
          next = std::min(next, j.rec.start_at_ms);
          continue;
        }
        j.rec.status = JobStatus::Running;
        j.pacer.Start(now);
        j.started_ms = now;
        SaveJob(j);
      }
      // Dispatch reads the store, so it runs before resolution adds to the
      // batch: what is resolved now is started at the next turn.
      const bool resolving = !j.Ended() && !j.rec.resolved;
      if (j.rec.status == JobStatus::Running && j.spec.window.set()) {
        const int64_t opens = j.spec.window.NextOpen(now);
        if ((opens > now) != (j.window_opens > now)) j.dirty = true;  // closed or opened: say so
        j.window_opens = opens;
        if (opens > now) next = std::min(next, opens);
      }
      if (j.rec.status == JobStatus::Running && j.window_opens <= now) {
        Dispatch(j, now);
        if (j.throttled) {
          const double r = j.pacer.rate();
          next = std::min<int64_t>(next, now + std::max<int64_t>(1, r > 0 ? static_cast<int64_t>(1000 / r) : 1));
        } else if (!j.held && j.inflight.size() < j.spec.max_in_flight && (!j.scanned.empty() || !j.ready.empty())) {
          next = now;
        }
      }
      if (resolving) {
        Resolve(j, now);
        next = now;  // more to resolve, or the new executions to start
      }
      const uint32_t wave = j.rec.wave;
      CheckWave(j);
      if (j.rec.wave != wave && j.rec.status == JobStatus::Running) next = now;
      MaybeComplete(j);
      if (j.dirty) next = std::min(next, j.last_progress_ms + opts_.progress_interval_ms);
    }
  }
  ProgressEvents(now);
  if (!timeouts_.empty()) next = std::min(next, timeouts_.top().at);
  if (!retries_.empty()) next = std::min(next, retries_.top().at);
  return next;
}

Json JobEngine::ProgressJson(const Active& j, int64_t now) const {
  Json counts = Json::object();
  for (size_t i = 0; i < kExecStates; ++i) {
    const auto s = static_cast<ExecState>(i);
    if (s == ExecState::Acknowledged) continue;
    counts[std::string(ExecName(s))] = j.counts[i];
  }
  const uint64_t done = j.Done();
  Json p{{"job_id", j.rec.job_id},
         {"status", JobName(j.rec.status)},
         {"total", j.rec.total_count},
         {"resolved", j.rec.resolved},
         {"done", done},
         {"counts", counts},
         {"in_flight", j.inflight.size()},
         {"waiting_offline", j.waiting.size()},
         {"retries", j.retries},
         {"time_ms", now}};
  if (!j.spec.waves.empty()) {
    p["wave"] = Json{{"current", j.rec.wave + 1}, {"of", j.spec.waves.size()}, {"started", j.started}};
    if (const uint64_t cap = WaveCap(j); cap != UINT64_MAX) p["wave"]["ends_at"] = cap;
  }
  const double secs = static_cast<double>(now - j.started_ms) / 1000.0;
  if (secs > 0 && done > j.done_at_start) {
    const double rate = static_cast<double>(done - j.done_at_start) / secs;
    p["rate_per_s"] = rate;
    if (j.rec.resolved && !j.Ended()) p["eta_s"] = static_cast<double>(j.rec.total_count - done) / rate;
  }
  if (j.spec.window.set()) {
    const DailyWindow& w = j.spec.window;
    p["window"] = Json{{"start", w.start()}, {"end", w.end()}, {"time_zone", w.zone_name()}, {"open", w.Open(now)}};
    if (!w.Open(now)) p["window"]["opens_at_ms"] = w.NextOpen(now);
  }
  if (!j.rec.reason.empty()) p["reason"] = j.rec.reason;
  return p;
}

void JobEngine::ProgressEvents(int64_t now) {
  for (auto& [tenant, jobs] : active_) {
    for (auto& [id, j] : jobs) {
      if (!j->dirty || (now - j->last_progress_ms < opts_.progress_interval_ms && !j->remove)) continue;
      j->dirty = false;
      j->last_progress_ms = now;
      pending_.events.push_back(
          mgmt::Event{tenant, std::string(topics::kJobEventsPrefix) + id, Dump(ProgressJson(*j, now)), true});
    }
  }
}

void JobEngine::Sweep() {
  for (auto t = active_.begin(); t != active_.end();) {
    for (auto j = t->second.begin(); j != t->second.end();) {
      if (j->second->remove && !j->second->dirty) {
        t->second.erase(j++);
        --active_count_;
      } else {
        ++j;
      }
    }
    if (t->second.empty()) {
      active_.erase(t++);
    } else {
      ++t;
    }
  }
}

absl::Status JobEngine::Commit(Output* out) {
  absl::Status s = absl::OkStatus();
  FlushRecords(false);
  if (!batch_.empty()) {
    s = reg_->Commit(batch_, true);
    batch_.Clear();
  }
  if (!s.ok()) {
    stats_.commits_failed++;
    for (const std::string& t : touched_tenants_) reg_->ForgetAuditHead(TenantId::FromAuthenticated(t));
    FMQ_LOG_ERROR("job state not written (%s): %zu device messages withheld", std::string(s.message()).c_str(),
                  pending_.sends.size());
    pending_ = Output{};
  } else {
    for (auto& m : pending_.sends) out->sends.push_back(std::move(m));
    for (auto& e : pending_.events) out->events.push_back(std::move(e));
    pending_ = Output{};
  }
  touched_tenants_.clear();
  Sweep();
  return s;
}

absl::StatusOr<Json> JobEngine::Describe(const TenantId& t, std::string_view job_id) {
  const int64_t now = clock_->WallMs();
  fb::JobT rec;
  Json p;
  if (Active* j = Find(t.str(), job_id); j != nullptr) {
    rec = j->rec;
    p = ProgressJson(*j, now);
  } else {
    if (absl::Status g = reg_->GetJob(t, job_id, &rec); !g.ok()) {
      return absl::IsNotFound(g) ? absl::NotFoundError("job '" + std::string(job_id) + "' not found") : g;
    }
    Json counts = Json::object();
    uint64_t done = 0;
    for (size_t i = 0; i < rec.counts.size() && i < kExecStates; ++i) {
      const auto s = static_cast<ExecState>(i);
      if (s == ExecState::Acknowledged) continue;
      counts[std::string(ExecName(s))] = rec.counts[i];
      if (IsTerminal(s)) done += rec.counts[i];
    }
    p = Json{{"job_id", rec.job_id},
             {"status", JobName(rec.status)},
             {"total", rec.total_count},
             {"resolved", rec.resolved},
             {"done", done},
             {"counts", counts}};
    if (!rec.reason.empty()) p["reason"] = rec.reason;
  }
  p["type"] = JobTypeName(rec.type);
  p["document"] = Json::parse(rec.document_json.empty() ? "{}" : rec.document_json, nullptr, false);
  p["target"] = Json::parse(rec.target_query_json.empty() ? "{}" : rec.target_query_json, nullptr, false);
  p["options"] = Json::parse(rec.options_json.empty() ? "{}" : rec.options_json, nullptr, false);
  p["created_by"] = rec.created_by;
  p["created_at_ms"] = rec.created_at_ms;
  if (rec.start_at_ms) p["start_at_ms"] = rec.start_at_ms;
  if (rec.ended_at_ms) p["ended_at_ms"] = rec.ended_at_ms;
  return p;
}

}  // namespace fmq::jobs

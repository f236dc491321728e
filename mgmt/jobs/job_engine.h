// The one job engine (doc/jobs.md): every bulk operation — commands now,
// configuration, firmware and certificate renewal later — is a job whose
// target resolves into one stored execution per device, dispatched at the
// job's rollout rate to connected devices over the device channel
// (doc/device-api.md), followed through the execution state machine
// (job_state.h) by the device's reports, timeouts and retries, and ended by
// completion, cancellation or the abort criteria.
//
// Runs on the management thread only (admin::Service owns it). Every state
// change goes into the engine's write batch; Commit() writes it (one group
// commit per pump of the management loop) and only then releases what the
// changes must cause (notifications to devices, replies, progress events):
// a device is never told about a state the store does not have. After a
// crash, Recover() rebuilds the in-memory state from the executions.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/string_map.h"
#include "mgmt/jobs/job_state.h"
#include "mgmt/runtime/feature.h"
#include "storage/registry.h"

namespace fmq::jobs {

using mgmt::DeviceSend;
using mgmt::Output;

// What the engine needs from its host.
struct Host {
  // Whether the device is connected now (the management thread's view).
  std::function<bool(const std::string& tenant, std::string_view device_id)> online;
};

// A job type whose executions another feature delivers and settles
// (configuration now; firmware and renewal next): the engine keeps the
// rollout, in-flight bound, timeouts, retries, abort criteria, progress and
// durability; the handler decides what the device is sent and when the
// attempt ended, through JobEngine::Advance. Management thread only.
class TypeHandler {
 public:
  virtual ~TypeHandler() = default;
  struct Exec {
    const std::string& tenant;
    const fb::JobT& job;
    const std::string& device;
    uint32_t attempt;
  };
  // An attempt starts (the execution is SENT): the handler sends what it
  // must and returns kWait, or returns kDone with the attempt's final state
  // (e.g. SUCCEEDED: the device has it already).
  struct Started {
    enum Kind : uint8_t { kWait, kDone } kind = kWait;
    ExecState state = ExecState::Succeeded;
    std::string detail;  // JSON object text, or empty
  };
  virtual Started OnStart(const Exec& e) = 0;
  // The attempt ended by the engine (timeout, cancel, removal).
  virtual void OnEnded(const Exec& /*e*/, ExecState /*to*/) {}
  // After a restart: an execution the device was running (IN_PROGRESS) is
  // followed again; the handler re-arms what it needs (Extend, its state).
  virtual void OnResumed(const Exec& /*e*/) {}
  // The detail an attempt that timed out is stored with (JSON object text;
  // empty: the engine's own). The handler knows which phase it was in.
  virtual std::string TimeoutDetail(const Exec& /*e*/) { return ""; }
  // The job ended (completed, canceled, aborted) and its last execution in
  // flight settled; `rollback`: aborted by its criteria with the "rollback"
  // action — the handler undoes what it did.
  virtual void OnJobEnded(const std::string& /*tenant*/, const fb::JobT& /*job*/, bool /*rollback*/) {}
  // Whether the abort criteria cancel executions in flight (commands: yes);
  // false: they run to their end (a device mid-install cannot stop), only
  // the queued ones are canceled.
  virtual bool cancel_in_flight_on_abort() const { return true; }
  virtual bool supports_rollback() const { return false; }
  // Whether the engine writes an audit entry per attempt (jobs.audit_executions);
  // false: the handler's own entries say what happened.
  virtual bool engine_audits() const { return true; }
};

// "command", "config", "ota", "renew" as stored and shown.
std::string_view JobTypeName(fb::JobType t);

struct EngineOptions {
  size_t resolve_batch = 1000;     // devices resolved per pump step
  size_t dispatch_scan = 1000;     // executions read per cursor step
  size_t max_active_jobs = 1000;   // per node: jobs not yet ended (SCHEDULED, IN_PROGRESS, PAUSED)
  size_t max_detail_bytes = 1024;  // a device's status details
  int64_t progress_interval_ms = 1000;
  bool audit_executions = true;  // an audit entry per execution state change
};

// A device's report on the device channel, validated (schema, sizes) by the
// caller.
struct Report {
  std::string tenant, device_id, job_id, client_token;
  uint32_t attempt = 0;
  ExecState status = ExecState::InProgress;
  std::string details;  // JSON text, bounded
};

class JobEngine : public mgmt::Feature {
 public:
  JobEngine(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, Host host,
            const EngineOptions& opts = {});
  ~JobEngine() override;

  // --- The feature (mgmt/runtime/feature.h).
  std::string_view name() const override { return "jobs"; }
  // jobs/update and jobs/get (doc/device-api.md).
  std::vector<std::string> DeviceTopics() const override;
  std::string Validate(std::string_view topic, const Json& body) const override;
  void OnDeviceMessage(const mgmt::DeviceMessage& m) override;
  // Start-up: every job not ended is loaded and its executions read back.
  absl::Status Recover() override;

  // --- Commands (admin command table). Each writes to `b` (committed by the
  // caller with the audit entry) and returns the change to apply once that
  // committed (Activate / Apply below); nothing in memory changes before.
  struct Target {
    std::vector<std::string> device_ids;  // explicit (each must be registered)
    storage::DeviceFilter filter;         // or a query (group, model, firmware, status)
    bool has_query = false;
    int online = -1;  // -1 any, 0 offline only, 1 online only (at resolution)
    // A query job that never completes by itself: devices that come to match
    // it later (registered into the group, added to it) get an execution too.
    // With no query and no device_ids: an enrolment job, whose devices are
    // added one by one by a feature (Enroll; automatic certificate renewal).
    bool continuous = false;
  };
  struct NewJob {
    std::string job_id, created_by, document_json;
    fb::JobType type = fb::JobType::Command;
    Target target;
    Spec spec;
    int64_t start_at_ms = 0;
  };
  // Validates and stores the job (and the executions of explicit ids).
  absl::Status Create(const storage::TenantId& t, const NewJob& j, storage::WriteBatch* b, fb::JobT* out);
  void Activate(const storage::TenantId& t, fb::JobT rec);
  // pause / resume / cancel (force: executions in flight are canceled and
  // their devices told).
  enum class Action { kPause, kResume, kCancel };
  absl::Status Control(const storage::TenantId& t, std::string_view job_id, Action a, bool force, const std::string& by,
                       storage::WriteBatch* b, fb::JobT* out);
  void ApplyControl(const storage::TenantId& t, const fb::JobT& rec, Action a, bool force);
  // Delivery of executions of `type` by another feature (above).
  void SetTypeHandler(fb::JobType type, TypeHandler* h) { handlers_[static_cast<size_t>(type)] = h; }
  // A handler moves the current attempt of an execution of one of its jobs:
  // DELIVERED, or a final state. False when the execution is not in flight.
  // IN_PROGRESS (again: a progress update, `detail` kept) is allowed too.
  bool Advance(const std::string& tenant, std::string_view job_id, const std::string& device, ExecState to,
               std::string_view detail);
  // Moves the deadline of an execution in flight (a handler's phase timeout,
  // e.g. download, install, reboot). False when it is not in flight.
  bool Extend(const std::string& tenant, std::string_view job_id, const std::string& device, int64_t deadline_ms);
  // Adds an execution for `device` to an enrolment job (Target above) once
  // its batch commits: true when added, false when the job has one in
  // progress already (one that ended is started again, its attempts numbered on).
  absl::StatusOr<bool> Enroll(const std::string& tenant, std::string_view job_id, const std::string& device);
  // The execution's current attempt, or 0 when it is not in flight.
  uint32_t AttemptOf(const std::string& tenant, std::string_view job_id, const std::string& device);
  // job.get: the record with live counts, rate and ETA.
  absl::StatusOr<Json> Describe(const storage::TenantId& t, std::string_view job_id);
  size_t active_jobs() const { return active_count_; }
  // Whether the device is connected (the host's view), for the type handlers.
  bool Online(const std::string& tenant, std::string_view device) const { return host_.online(tenant, device); }
  // Every job of the tenant not ended (e.g. to refuse deleting what one uses).
  void ForEachActive(const std::string& tenant, const std::function<void(const fb::JobT&)>& fn) const;

  // --- Events (management thread).
  void OnConnected(const std::string& tenant, const std::string& device_id) override;
  // A device report; the reply (accepted / rejected) goes out after Commit.
  void OnReport(const Report& r);
  // The device asked for its pending executions (after a reconnect).
  void OnGetPending(const std::string& tenant, const std::string& device_id, const std::string& client_token);
  void OnOutcome(uint64_t token, bool acked, std::string_view why) override;
  // A device was registered or its groups changed: continuous jobs whose
  // query it now matches get an execution for it (once per job).
  void OnDeviceJoined(const storage::TenantId& t, const fb::DeviceT& d) override;
  // The device was decommissioned or replaced: its executions not ended are REMOVED.
  void OnDeviceRetired(const storage::TenantId& t, const std::string& device_id) override;

  // Timeouts, retries, resolution and dispatch up to now. Returns the next
  // wall ms it needs to run again (or INT64_MAX).
  int64_t Pump() override;
  // Writes the batch; on success moves what it releases into `out`.
  absl::Status Commit(Output* out) override;

  struct Stats {
    uint64_t reports_rejected = 0;  // unknown job, stale attempt, terminal, invalid transition
    uint64_t commits_failed = 0;
  };
  void Counters(const std::function<void(const char*, uint64_t)>& pub) const override {
    pub("jobs/reports_rejected", stats_.reports_rejected);
    pub("jobs/commits_failed", stats_.commits_failed);
  }
  const Stats& stats() const { return stats_; }

 private:
  struct Active;
  struct Inflight;
  struct Candidate;
  // Where an execution is referred to from outside its job (tokens, timers).
  struct Ref {
    std::string tenant, job_id, device;
    uint32_t attempt = 0;
  };
  struct Due {
    int64_t at;
    Ref ref;
    bool operator>(const Due& o) const { return at > o.at; }
  };
  using DueQueue = std::priority_queue<Due, std::vector<Due>, std::greater<Due>>;

  Active* Find(const std::string& tenant, std::string_view job_id);
  Active* Find(const Ref& r) { return Find(r.tenant, r.job_id); }
  absl::Status Load(const storage::TenantId& t, fb::JobT rec);
  void LoadExecution(Active& j, fb::JobDeviceT&& e, int64_t now);
  void Resolve(Active& j, int64_t now);
  void Dispatch(Active& j, int64_t now);
  bool NextCandidate(Active& j, int64_t now, Candidate* c);
  void StartExecution(Active& j, const Candidate& c, int64_t now);
  void Expire(int64_t now);
  void Retry(int64_t now);
  // Moves an execution from `from` to `to`: counts, the stored record (one
  // write per execution per commit) with the attempt's trail of states
  // (`trail`, appended to; null: a trail of its own), and when the attempt
  // ends (a terminal state, or back to QUEUED) its audit entry with the
  // whole trail (audit_executions).
  void Record(Active& j, const std::string& device, ExecState from, ExecState to, uint32_t attempt,
              std::string_view detail, std::string* trail, int64_t not_before = 0);
  // Writes the execution records changed since the last flush into batch_;
  // SENT and DELIVERED ones only once they are kLazyMs old (or with `all`).
  void FlushRecords(bool all);
  // An execution in flight reached a terminal state (or a retry).
  void Finish(Active& j, const std::string& device, ExecState to, std::string_view detail, bool may_retry);
  bool AddExecution(Active& j, const std::string& device, bool rearm);
  void CheckAbort(Active& j);
  // Waves: how many executions may have started by the end of the current
  // wave, and the gate between waves once they all ended.
  uint64_t WaveCap(const Active& j) const;
  void CheckWave(Active& j);
  void StartWave(Active& j, int64_t now);
  void EndJob(Active& j, JobStatus status, std::string reason, bool force);
  void CancelRemaining(Active& j, bool force);
  void MaybeComplete(Active& j);
  void Notify(Active& j, const std::string& device, Inflight& f);
  void Reply(const std::string& tenant, const std::string& device, std::string_view suffix, const Json& body);
  void ProgressEvents(int64_t now);
  Json ProgressJson(const Active& j, int64_t now) const;
  void SaveJob(Active& j);
  void Sweep();
  // An execution's state: written in the batch not yet committed, else stored.
  bool Lookup(Active& j, const std::string& device, fb::JobDeviceT* out);
  static std::string UnsyncedKey(const Active& j, std::string_view device);

  storage::KvStore* kv_;
  storage::Registry* reg_;
  const Clock* clock_;
  Host host_;
  EngineOptions opts_;
  StringMap<StringMap<std::unique_ptr<Active>>> active_;  // tenant → job id → job not ended (or draining)
  size_t active_count_ = 0;
  absl::flat_hash_map<uint64_t, Ref> tokens_;  // notifications waiting for their outcome
  uint64_t next_token_ = 1;
  DueQueue timeouts_, retries_;
  storage::WriteBatch batch_;
  // Executions changed since the last commit (tenant \0 job \0 device →
  // the record to write), written by FlushRecords: one write each.
  struct Unsynced {
    std::string tenant, job_id;
    fb::JobDeviceT rec;
    int64_t lazy_since = 0;  // SENT/DELIVERED: not needed for recovery, written late (0: write now)
  };
  absl::flat_hash_map<std::string, Unsynced> unsynced_;
  static constexpr int64_t kLazyMs = 1000;
  Output pending_;
  std::vector<std::string> touched_tenants_;  // audit heads to forget if the commit fails
  Stats stats_;
  TypeHandler* handlers_[4] = {nullptr, nullptr, nullptr, nullptr};
  TypeHandler* HandlerOf(const Active& j) const;
};

}  // namespace fmq::jobs

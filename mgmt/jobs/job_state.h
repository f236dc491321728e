// The job engine's pure parts (doc/jobs.md): the execution and job state
// names and transitions, a job's options (rollout, timeouts, retries, abort
// criteria) parsed and checked, and the rollout pacer. No I/O, no clock of
// its own: unit-tested as tables and on a fake clock (tests/unit/mgmt/).
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "mgmt/jobs/window.h"
#include "storage/records.h"

namespace fmq::jobs {

using Json = nlohmann::json;
using ExecState = fb::JobDeviceState;
using JobStatus = fb::JobStatus;

inline constexpr size_t kExecStates = static_cast<size_t>(ExecState::RolledBack) + 1;
using Counts = std::array<uint64_t, kExecStates>;

// "QUEUED", "SENT", ... as operators and devices see them.
std::string_view ExecName(ExecState s);
bool ParseExec(std::string_view name, ExecState* out);
std::string_view JobName(JobStatus s);
bool ParseJob(std::string_view name, JobStatus* out);

// SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELED, REMOVED, ROLLED_BACK.
bool IsTerminal(ExecState s);
// SENT, DELIVERED, IN_PROGRESS: the device has it.
bool IsInFlight(ExecState s);
// COMPLETED, CANCELED, ABORTED.
bool IsEnded(JobStatus s);

// Whether a device holding an execution in `from` may report `to`
// (IN_PROGRESS, SUCCEEDED, FAILED, REJECTED). `from` must be in flight;
// IN_PROGRESS → IN_PROGRESS is a progress update.
bool DeviceMayReport(ExecState from, ExecState to);

// Whether an operator action may move a job from `from` to `to`.
bool JobMayMove(JobStatus from, JobStatus to);

// A rollout wave (doc/jobs.md, "Waves"): how many executions it starts —
// `count`, or `percent` of the job's total — and at what rate (0: the job's).
struct Wave {
  uint64_t count = 0;
  double percent = 0;
  double rate_per_s = 0;
};

// A job's options, as given to job.create (every field has a default).
struct Spec {
  // Rollout: executions started per second (0 = as fast as max_in_flight
  // allows); with ramp_factor > 1, the rate is multiplied by it each time
  // ramp_every more executions were started, up to max_rate (0 = no cap).
  double rate_per_s = 0;
  double ramp_factor = 1;
  uint64_t ramp_every = 0;
  double max_rate = 0;
  uint32_t max_in_flight = 10000;  // SENT + DELIVERED + IN_PROGRESS at once
  // Waves: executions are started wave by wave; the next wave starts once
  // every execution started so far ended and at least success_gate_pct of
  // them SUCCEEDED, else the job pauses before it (resume starts it). The
  // last wave takes everything left. Empty: one wave of everything.
  std::vector<Wave> waves;
  double success_gate_pct = 0;
  // A daily maintenance window (rollout.window): executions start only
  // inside it, in its time zone (the tenant's unless given); those started
  // run to their end after it closed. Unset: any time.
  DailyWindow window;
  // Timeouts: from SENT to the device's first report (IN_PROGRESS or a
  // terminal state), and from IN_PROGRESS to a terminal state.
  int64_t step_timeout_ms = 60'000;
  int64_t in_progress_timeout_ms = 600'000;
  // Retries: attempts in all (1 = none), backoff doubling from backoff_ms.
  uint32_t max_attempts = 1;
  int64_t backoff_ms = 1000;
  bool retry_failed = true;
  bool retry_timed_out = true;
  // Abort criteria: when at least abort_min_executed executions ended and
  // the share of them that ended in one of the abort states is at least
  // abort_threshold_pct, the job is aborted (or paused).
  double abort_threshold_pct = 0;  // 0 = never
  uint64_t abort_min_executed = 1;
  bool abort_on_failed = true;
  bool abort_on_timed_out = true;
  bool abort_on_rejected = false;
  bool abort_pauses = false;  // pause instead of abort
  // Abort, then undo: the job type's handler returns the devices this job
  // changed to what they had (firmware campaigns; refused for other types).
  bool abort_rolls_back = false;

  // Every option back as JSON (stored with the job, shown by job.get).
  Json ToJson() const;
};

// Parses the option objects of job.create (each may be null: defaults).
// Rejects unknown keys, wrong types and out-of-range values with a message
// naming the option.
// `zone`: the time zone of a rollout.window that names none (the tenant's).
absl::StatusOr<Spec> ParseSpec(const Json& rollout, const Json& timeouts, const Json& retry, const Json& abort,
                               std::string_view zone = "UTC");
// The stored form (Spec::ToJson) back; a stored value that no longer parses
// is reported, never trusted.
absl::StatusOr<Spec> SpecFromJson(const Json& stored);

// How soon the next attempt after `attempt` failed may start.
int64_t BackoffMs(const Spec& s, uint32_t attempt);

// The rollout's token bucket: Refill at each pump, Take per execution
// started. Holds at most 100 ms worth of tokens (at least 1), so a paused or
// idle job does not burst later.
class Pacer {
 public:
  explicit Pacer(const Spec& s) : spec_(s) {}
  void Start(int64_t now_ms);
  void Refill(int64_t now_ms);
  bool Take();
  double rate() const;  // current executions/s (0 = unlimited)
  uint64_t started() const { return started_; }
  void set_started(uint64_t n) { started_ = n; }

 private:
  Spec spec_;
  double tokens_ = 0;
  int64_t last_ms_ = 0;
  uint64_t started_ = 0;
};

}  // namespace fmq::jobs

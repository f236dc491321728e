#include "mgmt/jobs/job_state.h"

#include <algorithm>
#include <cmath>

namespace fmq::jobs {
namespace {

constexpr std::array<std::pair<ExecState, std::string_view>, kExecStates> kExecNames{{
    {ExecState::Pending, "QUEUED"},
    {ExecState::Delivered, "DELIVERED"},
    {ExecState::Acknowledged, "ACKNOWLEDGED"},
    {ExecState::Failed, "FAILED"},
    {ExecState::TimedOut, "TIMED_OUT"},
    {ExecState::Sent, "SENT"},
    {ExecState::InProgress, "IN_PROGRESS"},
    {ExecState::Succeeded, "SUCCEEDED"},
    {ExecState::Rejected, "REJECTED"},
    {ExecState::Canceled, "CANCELED"},
    {ExecState::Removed, "REMOVED"},
    {ExecState::RolledBack, "ROLLED_BACK"},
}};

constexpr std::array<std::pair<JobStatus, std::string_view>, 7> kJobNames{{
    {JobStatus::Pending, "SCHEDULED"},
    {JobStatus::Running, "IN_PROGRESS"},
    {JobStatus::Paused, "PAUSED"},
    {JobStatus::Completed, "COMPLETED"},
    {JobStatus::Aborted, "ABORTED"},
    {JobStatus::Failed, "FAILED"},
    {JobStatus::Canceled, "CANCELED"},
}};

absl::Status Bad(const std::string& what) { return absl::InvalidArgumentError(what); }

// Reads the keys of one option object; unknown keys and wrong types fail.
class Reader {
 public:
  Reader(const Json& obj, const char* name) : obj_(obj), name_(name) {}

  absl::Status Check(std::initializer_list<std::string_view> known) const {
    if (obj_.is_null()) return absl::OkStatus();
    if (!obj_.is_object()) return Bad(std::string(name_) + " must be an object");
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
      if (std::find(known.begin(), known.end(), it.key()) == known.end()) {
        return Bad("unknown option '" + std::string(name_) + "." + it.key() + "'");
      }
    }
    return absl::OkStatus();
  }
  absl::Status Num(const char* key, double lo, double hi, double* out) const {
    if (!obj_.is_object() || !obj_.contains(key)) return absl::OkStatus();
    const Json& v = obj_[key];
    if (!v.is_number()) return Bad(Name(key) + " must be a number");
    const double d = v.get<double>();
    if (!std::isfinite(d) || d < lo || d > hi) {
      return Bad(Name(key) + " must be within " + Fmt(lo) + ".." + Fmt(hi));
    }
    *out = d;
    return absl::OkStatus();
  }
  template <class T>
  absl::Status Int(const char* key, int64_t lo, int64_t hi, T* out) const {
    if (!obj_.is_object() || !obj_.contains(key)) return absl::OkStatus();
    const Json& v = obj_[key];
    if (!v.is_number_integer()) return Bad(Name(key) + " must be an integer");
    const int64_t i = v.get<int64_t>();
    if (i < lo || i > hi) return Bad(Name(key) + " must be within " + std::to_string(lo) + ".." + std::to_string(hi));
    *out = static_cast<T>(i);
    return absl::OkStatus();
  }
  absl::Status Bool(const char* key, bool* out) const {
    if (!obj_.is_object() || !obj_.contains(key)) return absl::OkStatus();
    if (!obj_[key].is_boolean()) return Bad(Name(key) + " must be true or false");
    *out = obj_[key].get<bool>();
    return absl::OkStatus();
  }
  // A list of execution state names, each one of `allowed`.
  absl::Status States(const char* key, std::initializer_list<ExecState> allowed, std::vector<ExecState>* out,
                      bool* given) const {
    *given = false;
    if (!obj_.is_object() || !obj_.contains(key)) return absl::OkStatus();
    const Json& v = obj_[key];
    if (!v.is_array() || v.empty()) return Bad(Name(key) + " must be a non-empty list of states");
    for (const Json& e : v) {
      ExecState s;
      if (!e.is_string() || !ParseExec(e.get<std::string>(), &s) ||
          std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
        std::string names;
        for (ExecState a : allowed) names += (names.empty() ? "" : ", ") + std::string(ExecName(a));
        return Bad(Name(key) + " may list only " + names);
      }
      out->push_back(s);
    }
    *given = true;
    return absl::OkStatus();
  }

 private:
  std::string Name(const char* key) const { return std::string(name_) + "." + key; }
  static std::string Fmt(double d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", d);
    return buf;
  }
  const Json& obj_;
  const char* name_;
};

bool Has(const std::vector<ExecState>& v, ExecState s) { return std::find(v.begin(), v.end(), s) != v.end(); }

// The name tables above, both ways. `unused` is a stored value never written
// (kept by the schema's evolution rule): shown if read, never parsed.
template <class Table, class E>
std::string_view NameIn(const Table& t, E v) {
  for (const auto& [st, name] : t) {
    if (st == v) return name;
  }
  return "UNKNOWN";
}
template <class Table, class E>
bool ParseIn(const Table& t, std::string_view name, E unused, E* out) {
  for (const auto& [st, n] : t) {
    if (n == name && st != unused) {
      *out = st;
      return true;
    }
  }
  return false;
}

}  // namespace

std::string_view ExecName(ExecState s) { return NameIn(kExecNames, s); }
bool ParseExec(std::string_view name, ExecState* out) {
  return ParseIn(kExecNames, name, ExecState::Acknowledged, out);
}
std::string_view JobName(JobStatus s) { return NameIn(kJobNames, s); }
bool ParseJob(std::string_view name, JobStatus* out) { return ParseIn(kJobNames, name, JobStatus::Failed, out); }

bool IsTerminal(ExecState s) {
  switch (s) {
    case ExecState::Succeeded:
    case ExecState::Failed:
    case ExecState::Rejected:
    case ExecState::TimedOut:
    case ExecState::Canceled:
    case ExecState::Removed:
    case ExecState::RolledBack:
    case ExecState::Acknowledged:  // never written; terminal if ever read
      return true;
    default:
      return false;
  }
}

bool IsInFlight(ExecState s) { return s == ExecState::Sent || s == ExecState::Delivered || s == ExecState::InProgress; }

bool IsEnded(JobStatus s) {
  return s == JobStatus::Completed || s == JobStatus::Canceled || s == JobStatus::Aborted || s == JobStatus::Failed;
}

bool DeviceMayReport(ExecState from, ExecState to) {
  if (!IsInFlight(from)) return false;
  return to == ExecState::InProgress || to == ExecState::Succeeded || to == ExecState::Failed ||
         to == ExecState::Rejected;
}

bool JobMayMove(JobStatus from, JobStatus to) {
  if (IsEnded(from)) return false;
  switch (to) {
    case JobStatus::Paused:
      return from == JobStatus::Running || from == JobStatus::Pending;
    case JobStatus::Running:  // resume
      return from == JobStatus::Paused;
    case JobStatus::Canceled:
    case JobStatus::Aborted:
    case JobStatus::Completed:
      return true;
    default:
      return false;
  }
}

Json Spec::ToJson() const {
  // Options at "none" are left out, so the stored form parses back as given.
  auto states = [](bool f, bool t, bool r) {
    Json a = Json::array();
    if (f) a.push_back(ExecName(ExecState::Failed));
    if (t) a.push_back(ExecName(ExecState::TimedOut));
    if (r) a.push_back(ExecName(ExecState::Rejected));
    return a;
  };
  Json rollout{{"max_in_flight", max_in_flight}};
  if (rate_per_s > 0) rollout["rate_per_s"] = rate_per_s;
  if (ramp_factor > 1) {
    rollout["ramp_factor"] = ramp_factor;
    rollout["ramp_every"] = ramp_every;
  }
  if (max_rate > 0) rollout["max_rate"] = max_rate;
  if (!waves.empty()) {
    Json w = Json::array();
    for (const Wave& v : waves) {
      Json e = v.count > 0 ? Json{{"count", v.count}} : Json{{"percent", v.percent}};
      if (v.rate_per_s > 0) e["rate_per_s"] = v.rate_per_s;
      w.push_back(std::move(e));
    }
    rollout["waves"] = std::move(w);
  }
  if (success_gate_pct > 0) rollout["success_gate_pct"] = success_gate_pct;
  if (window.set()) {
    rollout["window"] = Json{{"start", window.start()}, {"end", window.end()}, {"time_zone", window.zone_name()}};
  }
  Json abort{{"min_executed", abort_min_executed},
             {"on", states(abort_on_failed, abort_on_timed_out, abort_on_rejected)},
             {"action", abort_rolls_back ? "rollback"
                        : abort_pauses   ? "pause"
                                         : "abort"}};
  if (abort_threshold_pct > 0) abort["threshold_pct"] = abort_threshold_pct;
  return Json{
      {"rollout", rollout},
      {"timeouts", {{"step_s", step_timeout_ms / 1000.0}, {"in_progress_s", in_progress_timeout_ms / 1000.0}}},
      {"retry",
       {{"max_attempts", max_attempts},
        {"backoff_ms", backoff_ms},
        {"on", states(retry_failed, retry_timed_out, false)}}},
      {"abort", abort},
  };
}

absl::StatusOr<Spec> ParseSpec(const Json& rollout, const Json& timeouts, const Json& retry, const Json& abort,
                               std::string_view zone) {
  Spec s;
  const Reader ro(rollout, "rollout"), to(timeouts, "timeouts"), re(retry, "retry"), ab(abort, "abort");
  for (absl::Status st : {ro.Check({"rate_per_s", "ramp_factor", "ramp_every", "max_rate", "max_in_flight", "waves",
                                    "success_gate_pct", "window"}),
                          to.Check({"step_s", "in_progress_s"}), re.Check({"max_attempts", "backoff_ms", "on"}),
                          ab.Check({"threshold_pct", "min_executed", "on", "action"})}) {
    if (!st.ok()) return st;
  }
  double step_s = s.step_timeout_ms / 1000.0, prog_s = s.in_progress_timeout_ms / 1000.0;
  std::vector<ExecState> retry_on, abort_on;
  bool retry_given = false, abort_given = false;
  for (absl::Status st : {
           ro.Num("rate_per_s", 0.001, 10'000'000, &s.rate_per_s),
           ro.Num("ramp_factor", 1, 100, &s.ramp_factor),
           ro.Int("ramp_every", 1, int64_t{1} << 40, &s.ramp_every),
           ro.Num("max_rate", 0.001, 10'000'000, &s.max_rate),
           ro.Int("max_in_flight", 1, 1'000'000, &s.max_in_flight),
           ro.Num("success_gate_pct", 0, 100, &s.success_gate_pct),
           to.Num("step_s", 0.1, 7 * 86400, &step_s),
           to.Num("in_progress_s", 0.1, 30 * 86400, &prog_s),
           re.Int("max_attempts", 1, 100, &s.max_attempts),
           re.Int("backoff_ms", 0, 86'400'000, &s.backoff_ms),
           re.States("on", {ExecState::Failed, ExecState::TimedOut}, &retry_on, &retry_given),
           ab.Num("threshold_pct", 0.01, 100, &s.abort_threshold_pct),
           ab.Int("min_executed", 1, int64_t{1} << 40, &s.abort_min_executed),
           ab.States("on", {ExecState::Failed, ExecState::TimedOut, ExecState::Rejected}, &abort_on, &abort_given),
       }) {
    if (!st.ok()) return st;
  }
  if (rollout.is_object() && rollout.contains("waves")) {
    const Json& w = rollout["waves"];
    if (!w.is_array() || w.empty() || w.size() > 20) return Bad("rollout.waves must be a list of 1..20 waves");
    double pct = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      const std::string name = "rollout.waves[" + std::to_string(i) + "]";
      const Reader wr(w[i], name.c_str());
      if (!w[i].is_object()) return Bad(name + " must be an object");
      if (absl::Status st = wr.Check({"count", "percent", "rate_per_s"}); !st.ok()) return st;
      Wave v;
      for (absl::Status st : {wr.Int("count", 1, int64_t{1} << 40, &v.count), wr.Num("percent", 0.001, 100, &v.percent),
                              wr.Num("rate_per_s", 0.001, 10'000'000, &v.rate_per_s)}) {
        if (!st.ok()) return st;
      }
      if ((v.count > 0) == (v.percent > 0)) return Bad(name + " needs one of count or percent");
      pct += v.percent;
      s.waves.push_back(v);
    }
    if (pct > 100.0001) return Bad("rollout.waves: the percents add up to more than 100");
  }
  if (rollout.is_object() && rollout.contains("window")) {
    const Json& w = rollout["window"];
    const Reader wr(w, "rollout.window");
    if (!w.is_object()) return Bad("rollout.window must be an object {start, end, time_zone}");
    if (absl::Status st = wr.Check({"start", "end", "time_zone"}); !st.ok()) return st;
    for (const char* k : {"start", "end", "time_zone"}) {
      if (w.contains(k) && !w[k].is_string()) return Bad("rollout.window." + std::string(k) + " must be a string");
    }
    auto str = [&](const char* k, std::string_view def) {
      return w.contains(k) ? w[k].get<std::string>() : std::string(def);
    };
    if (absl::Status st = DailyWindow::Parse(str("start", ""), str("end", ""), str("time_zone", zone), &s.window);
        !st.ok()) {
      return st;
    }
  }
  if (s.success_gate_pct > 0 && s.waves.size() < 2) return Bad("rollout.success_gate_pct needs two or more waves");
  if (s.ramp_factor > 1 && s.ramp_every == 0) return Bad("rollout.ramp_factor needs rollout.ramp_every");
  if (s.ramp_factor > 1 && s.rate_per_s == 0)
    return Bad("rollout.ramp_factor needs rollout.rate_per_s (the base rate)");
  if (s.max_rate > 0 && s.rate_per_s > s.max_rate) return Bad("rollout.rate_per_s must not exceed rollout.max_rate");
  s.step_timeout_ms = static_cast<int64_t>(step_s * 1000);
  s.in_progress_timeout_ms = static_cast<int64_t>(prog_s * 1000);
  if (retry_given) {
    s.retry_failed = Has(retry_on, ExecState::Failed);
    s.retry_timed_out = Has(retry_on, ExecState::TimedOut);
  }
  if (abort_given) {
    s.abort_on_failed = Has(abort_on, ExecState::Failed);
    s.abort_on_timed_out = Has(abort_on, ExecState::TimedOut);
    s.abort_on_rejected = Has(abort_on, ExecState::Rejected);
  }
  if (abort.is_object() && abort.contains("action")) {
    const Json& a = abort["action"];
    if (!a.is_string() || (a != "abort" && a != "pause" && a != "rollback")) {
      return Bad("abort.action must be \"abort\", \"pause\" or \"rollback\"");
    }
    s.abort_pauses = a == "pause";
    s.abort_rolls_back = a == "rollback";
  }
  return s;
}

absl::StatusOr<Spec> SpecFromJson(const Json& stored) {
  if (!stored.is_object()) return absl::DataLossError("stored job options are not an object");
  auto part = [&](const char* k) { return stored.contains(k) ? stored[k] : Json(); };
  auto s = ParseSpec(part("rollout"), part("timeouts"), part("retry"), part("abort"));
  if (!s.ok()) return absl::DataLossError("stored job options: " + std::string(s.status().message()));
  return s;
}

int64_t BackoffMs(const Spec& s, uint32_t attempt) {
  const uint32_t doublings = std::min<uint32_t>(attempt > 0 ? attempt - 1 : 0, 20);
  return std::min<int64_t>(s.backoff_ms << doublings, 3'600'000);
}

void Pacer::Start(int64_t now_ms) {
  last_ms_ = now_ms;
  tokens_ = 1;
}

double Pacer::rate() const {
  if (spec_.rate_per_s <= 0) return 0;
  double r = spec_.rate_per_s;
  if (spec_.ramp_factor > 1 && spec_.ramp_every > 0) {
    const double steps = static_cast<double>(started_ / spec_.ramp_every);
    r *= std::pow(spec_.ramp_factor, std::min(steps, 200.0));
  }
  if (spec_.max_rate > 0) r = std::min(r, spec_.max_rate);
  return r;
}

void Pacer::Refill(int64_t now_ms) {
  const double r = rate();
  if (r <= 0) return;
  if (now_ms > last_ms_) tokens_ += r * static_cast<double>(now_ms - last_ms_) / 1000.0;
  last_ms_ = std::max(last_ms_, now_ms);
  tokens_ = std::min(tokens_, std::max(1.0, r / 10));
}

bool Pacer::Take() {
  if (spec_.rate_per_s > 0) {
    if (tokens_ < 1) return false;
    tokens_ -= 1;
  }
  ++started_;
  return true;
}

}  // namespace fmq::jobs

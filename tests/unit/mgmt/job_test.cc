// The job engine: the execution and job state machines as tables, options
// parsing, rollout pacing and ramps on a fake clock, and the engine itself
// over an in-memory store — dispatch to online devices only, reports,
// timeouts, retries, abort thresholds, cancel, recovery from each persisted
// state, bad device reports, and maintenance windows in a time zone.
#include <doctest/doctest.h>

#include <map>
#include <set>

#include "absl/time/civil_time.h"
#include "common/clock.h"
#include "mgmt/jobs/job_engine.h"
#include "mgmt/jobs/job_state.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace fmq::jobs {
namespace {

using storage::TenantId;
constexpr ExecState kAllExec[] = {ExecState::Pending,   ExecState::Sent,   ExecState::Delivered, ExecState::InProgress,
                                  ExecState::Succeeded, ExecState::Failed, ExecState::Rejected,  ExecState::TimedOut,
                                  ExecState::Canceled,  ExecState::Removed};

TEST_CASE("jobs: execution state names, terminal and in-flight sets") {
  std::set<std::string> names;
  for (ExecState s : kAllExec) {
    ExecState back;
    REQUIRE(ParseExec(ExecName(s), &back));
    CHECK(back == s);
    names.insert(std::string(ExecName(s)));
  }
  CHECK(names.size() == 10);
  ExecState x;
  CHECK_FALSE(ParseExec("ACKNOWLEDGED", &x));  // the unused legacy value
  CHECK_FALSE(ParseExec("succeeded", &x));
  const std::set<ExecState> terminal{ExecState::Succeeded, ExecState::Failed,   ExecState::Rejected,
                                     ExecState::TimedOut,  ExecState::Canceled, ExecState::Removed};
  const std::set<ExecState> flight{ExecState::Sent, ExecState::Delivered, ExecState::InProgress};
  for (ExecState s : kAllExec) {
    CHECK(IsTerminal(s) == terminal.contains(s));
    CHECK(IsInFlight(s) == flight.contains(s));
  }
}

TEST_CASE("jobs: what a device may report, from each state (table)") {
  const std::set<ExecState> reportable{ExecState::InProgress, ExecState::Succeeded, ExecState::Failed,
                                       ExecState::Rejected};
  for (ExecState from : kAllExec) {
    for (ExecState to : kAllExec) {
      const bool expect = IsInFlight(from) && reportable.contains(to);
      CHECK_MESSAGE(DeviceMayReport(from, to) == expect, ExecName(from), " -> ", ExecName(to));
    }
  }
}

TEST_CASE("jobs: job status moves (table)") {
  using J = JobStatus;
  const J all[] = {J::Pending, J::Running, J::Paused, J::Completed, J::Aborted, J::Canceled};
  std::map<std::pair<J, J>, bool> allowed{
      {{J::Running, J::Paused}, true},    {{J::Pending, J::Paused}, true},    {{J::Paused, J::Running}, true},
      {{J::Pending, J::Canceled}, true},  {{J::Running, J::Canceled}, true},  {{J::Paused, J::Canceled}, true},
      {{J::Pending, J::Aborted}, true},   {{J::Running, J::Aborted}, true},   {{J::Paused, J::Aborted}, true},
      {{J::Pending, J::Completed}, true}, {{J::Running, J::Completed}, true}, {{J::Paused, J::Completed}, true},
  };
  for (J from : all) {
    for (J to : all) {
      const bool expect = allowed[std::make_pair(from, to)];
      CHECK_MESSAGE(JobMayMove(from, to) == expect, JobName(from), " -> ", JobName(to));
    }
    JobStatus back;
    REQUIRE(ParseJob(JobName(from), &back));
    CHECK(back == from);
  }
}

TEST_CASE("jobs: options are checked and round-trip") {
  auto ok = ParseSpec(Json(), Json(), Json(), Json());
  REQUIRE(ok.ok());
  CHECK(ok->rate_per_s == 0);
  CHECK(ok->max_attempts == 1);
  auto bad = [](Json r, Json t, Json re, Json a) { return std::string(ParseSpec(r, t, re, a).status().message()); };
  CHECK(bad(Json{{"rate_per_s", 0}}, {}, {}, {}).find("rollout.rate_per_s") != std::string::npos);
  CHECK(bad(Json{{"rate_per_s", -5}}, {}, {}, {}).find("within") != std::string::npos);
  CHECK(bad(Json{{"rate_per_s", 1e12}}, {}, {}, {}).find("within") != std::string::npos);
  CHECK(bad(Json{{"rate_per_s", "fast"}}, {}, {}, {}).find("number") != std::string::npos);
  CHECK(bad(Json{{"speed", 1}}, {}, {}, {}).find("unknown option 'rollout.speed'") != std::string::npos);
  CHECK(bad(Json{{"ramp_factor", 2}, {"rate_per_s", 1}}, {}, {}, {}).find("ramp_every") != std::string::npos);
  CHECK(bad(Json{{"rate_per_s", 10}, {"max_rate", 5}}, {}, {}, {}).find("max_rate") != std::string::npos);
  CHECK(bad(Json{{"max_in_flight", 0}}, {}, {}, {}).find("max_in_flight") != std::string::npos);
  CHECK(bad({}, Json{{"step_s", 0}}, {}, {}).find("step_s") != std::string::npos);
  CHECK(bad({}, {}, Json{{"on", Json::array({"SUCCEEDED"})}}, {}).find("may list only") != std::string::npos);
  CHECK(bad({}, {}, Json{{"max_attempts", 1000}}, {}).find("max_attempts") != std::string::npos);
  CHECK(bad({}, {}, {}, Json{{"action", "explode"}}).find("abort.action") != std::string::npos);
  CHECK(bad({}, {}, {}, Json::array()).find("object") != std::string::npos);

  auto full = ParseSpec(
      Json{{"rate_per_s", 5}, {"ramp_factor", 2}, {"ramp_every", 10}, {"max_rate", 40}, {"max_in_flight", 7}},
      Json{{"step_s", 3}, {"in_progress_s", 9.5}},
      Json{{"max_attempts", 4}, {"backoff_ms", 250}, {"on", Json::array({"TIMED_OUT"})}},
      Json{{"threshold_pct", 12.5}, {"min_executed", 8}, {"on", Json::array({"REJECTED"})}, {"action", "pause"}});
  REQUIRE(full.ok());
  auto back = SpecFromJson(full->ToJson());
  REQUIRE(back.ok());
  CHECK(back->ToJson() == full->ToJson());
  CHECK(back->in_progress_timeout_ms == 9500);
  CHECK_FALSE(back->retry_failed);
  CHECK(back->retry_timed_out);
  CHECK(back->abort_pauses);
  CHECK(back->abort_on_rejected);
  CHECK_FALSE(back->abort_on_failed);
  CHECK(SpecFromJson(Json{{"rollout", Json{{"rate_per_s", -1}}}}).status().code() == absl::StatusCode::kDataLoss);
}

TEST_CASE("jobs: backoff doubles per attempt and is capped") {
  Spec s;
  s.backoff_ms = 100;
  CHECK(BackoffMs(s, 1) == 100);
  CHECK(BackoffMs(s, 2) == 200);
  CHECK(BackoffMs(s, 4) == 800);
  CHECK(BackoffMs(s, 60) == 3'600'000);
}

TEST_CASE("jobs: pacer holds the rate, ramps, caps, and does not burst after idling") {
  Spec s;
  s.rate_per_s = 10;
  Pacer p(s);
  int64_t t = 0;
  p.Start(t);
  int taken = 0;
  for (int ms = 0; ms <= 2000; ms += 10) {
    p.Refill(t + ms);
    while (p.Take()) ++taken;
  }
  CHECK(taken >= 19);  // 1 to start, 10/s for 2 s (float steps)
  CHECK(taken <= 22);
  // Idle for a minute: at most max(1, rate/10) tokens wait.
  p.Refill(t + 62'000);
  int burst = 0;
  while (p.Take()) ++burst;
  CHECK(burst == 1);

  Spec r;
  r.rate_per_s = 10;
  r.ramp_factor = 2;
  r.ramp_every = 10;
  r.max_rate = 50;
  Pacer q(r);
  CHECK(q.rate() == 10);
  q.set_started(10);
  CHECK(q.rate() == 20);
  q.set_started(25);
  CHECK(q.rate() == 40);
  q.set_started(1000);
  CHECK(q.rate() == 50);

  Spec unlimited;
  Pacer u(unlimited);
  u.Start(0);
  for (int i = 0; i < 100000; ++i) REQUIRE(u.Take());
}

// An engine over an in-memory registry with `n` registered devices d0..d<n-1>.
struct Rig {
  FakeClock clock;
  storage::MemKvStore kv;
  storage::Registry reg{&kv};
  std::set<std::string> online;
  std::unique_ptr<JobEngine> engine;
  Output out;
  const TenantId t = TenantId::FromAuthenticated("acme");

  explicit Rig(int n, bool all_online = true) {
    storage::WriteBatch b;
    fb::DeviceGroupT g;
    g.group_id = "g1";
    reg.PutGroup(t, g, &b);
    for (int i = 0; i < n; ++i) {
      fb::DeviceT d;
      d.device_id = "d" + std::to_string(i);
      d.tenant_id = "acme";
      d.serial_number = "s" + std::to_string(i);
      d.model_id = "m";
      d.status = fb::DeviceStatus::Active;
      if (i % 2 == 0) d.group_ids = {"g1"};
      REQUIRE(reg.PutDevice(t, d, &b).ok());
      if (all_online) online.insert(d.device_id);
    }
    REQUIRE(reg.Commit(b).ok());
    Restart();
  }
  void Restart() {
    Host h;
    h.online = [this](const std::string& tenant, std::string_view d) {
      return tenant == "acme" && online.contains(std::string(d));
    };
    engine = std::make_unique<JobEngine>(&kv, &reg, &clock, h);
    REQUIRE(engine->Recover().ok());
  }
  std::string Create(JobEngine::NewJob j) {
    if (j.job_id.empty()) j.job_id = "j1";
    if (j.document_json.empty()) j.document_json = R"({"command":"reboot"})";
    storage::WriteBatch b;
    fb::JobT rec;
    absl::Status s = engine->Create(t, j, &b, &rec);
    REQUIRE_MESSAGE(s.ok(), s.message());
    REQUIRE(reg.Commit(b).ok());
    engine->Activate(t, rec);
    return rec.job_id;
  }
  std::vector<std::string> Ids(int n) {
    std::vector<std::string> v;
    for (int i = 0; i < n; ++i) v.push_back("d" + std::to_string(i));
    return v;
  }
  // One turn of the management loop.
  void Pump() {
    engine->Pump();
    REQUIRE(engine->Commit(&out).ok());
  }
  // Notifications sent in the last turns (device → (attempt, token)), cleared.
  std::map<std::string, std::pair<uint32_t, uint64_t>> TakeNotifies() {
    std::map<std::string, std::pair<uint32_t, uint64_t>> n;
    for (const auto& s : out.sends) {
      if (s.suffix != "jobs/notify") continue;
      Json j = Json::parse(s.payload);
      n[s.device_id] = {j["attempt"].get<uint32_t>(), s.token};
    }
    out.sends.clear();
    return n;
  }
  std::vector<Json> Replies(const std::string& suffix) {
    std::vector<Json> r;
    for (const auto& s : out.sends) {
      if (s.suffix == suffix) r.push_back(Json::parse(s.payload));
    }
    return r;
  }
  void Report(const std::string& dev, uint32_t attempt, ExecState st, const std::string& job = "j1") {
    jobs::Report r;
    r.tenant = "acme";
    r.device_id = dev;
    r.job_id = job;
    r.attempt = attempt;
    r.status = st;
    engine->OnReport(r);
  }
  Json Get(const std::string& job = "j1") {
    auto d = engine->Describe(t, job);
    REQUIRE(d.ok());
    return *d;
  }
  uint64_t Count(const char* state, const std::string& job = "j1") { return Get(job)["counts"][state]; }
  ExecState Stored(const std::string& dev, const std::string& job = "j1") {
    fb::JobDeviceT e;
    REQUIRE(reg.GetJobDevice(t, job, dev, &e).ok());
    return e.state;
  }
};

TEST_CASE("jobs: a job runs to COMPLETED through every execution state, all stored") {
  Rig w(5);
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(5);
  w.Create(j);
  w.Pump();
  auto n = w.TakeNotifies();
  REQUIRE(n.size() == 5);
  CHECK(w.Count("SENT") == 5);
  // SENT is written lazily: after a crash before it, the execution is QUEUED
  // with no attempt spent and goes out again as attempt 1 — the same one.
  CHECK(w.Stored("d0") == ExecState::Pending);
  for (auto& [dev, at] : n) w.engine->OnOutcome(at.second, true, "acked");
  CHECK(w.Count("DELIVERED") == 5);
  w.clock.Advance(1000);
  w.Pump();
  CHECK(w.Stored("d0") == ExecState::Delivered);
  for (auto& [dev, at] : n) w.Report(dev, at.first, ExecState::InProgress);
  w.Pump();
  CHECK(w.Replies("jobs/update/accepted").size() == 5);
  CHECK(w.Stored("d3") == ExecState::InProgress);
  for (auto& [dev, at] : n) w.Report(dev, at.first, ExecState::Succeeded);
  w.Pump();
  w.Pump();
  Json g = w.Get();
  CHECK(g["status"] == "COMPLETED");
  CHECK(g["counts"]["SUCCEEDED"] == 5);
  CHECK(w.Stored("d4") == ExecState::Succeeded);
  CHECK(w.engine->active_jobs() == 0);
  // Each execution's history is in the audit log, per device.
  storage::Page<fb::AuditEntryT> page;
  REQUIRE(w.reg.AuditOfDevice(w.t, "d2", "", 100, &page).ok());
  // One entry per attempt, with every state it went through.
  REQUIRE(page.items.size() == 1);
  Json a = Json::parse(page.items[0].details_json);
  CHECK(a["to"] == "SUCCEEDED");
  std::vector<std::string> trail;
  for (const auto& st : a["trail"]) trail.push_back(st[0]);
  CHECK(trail == std::vector<std::string>{"SENT", "DELIVERED", "IN_PROGRESS", "SUCCEEDED"});
  uint64_t entries = 0;
  CHECK(w.reg.VerifyAudit(w.t, &entries).ok());
}

TEST_CASE("jobs: offline devices wait without spending the rate and go out when they connect") {
  Rig w(4, false);
  w.online = {"d0"};
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(4);
  j.spec.rate_per_s = 1;  // one token: only the online device may use it
  w.Create(j);
  w.Pump();
  auto n = w.TakeNotifies();
  CHECK(n.size() == 1);
  CHECK(n.contains("d0"));
  CHECK(w.Get()["waiting_offline"] == 3);
  w.online.insert("d2");
  w.engine->OnConnected("acme", "d2");
  w.clock.Advance(1000);
  w.Pump();
  n = w.TakeNotifies();
  CHECK(n.size() == 1);
  CHECK(n.contains("d2"));
  // A notification the broker could not deliver (gone offline meanwhile)
  // goes back in line with its attempt unspent.
  w.online.erase("d2");
  w.engine->OnOutcome(n["d2"].second, false, "offline");
  CHECK(w.Count("QUEUED") == 3);
  w.online.insert("d2");
  w.engine->OnConnected("acme", "d2");
  w.clock.Advance(1000);
  w.Pump();
  n = w.TakeNotifies();
  REQUIRE(n.contains("d2"));
  CHECK(n["d2"].first == 1);
}

TEST_CASE("jobs: the rollout rate and the in-flight bound pace dispatch") {
  Rig w(100);
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(100);
  j.spec.rate_per_s = 10;
  w.Create(j);
  w.Pump();
  CHECK(w.TakeNotifies().size() == 1);
  size_t sent = 0;
  for (int i = 0; i < 10; ++i) {
    w.clock.Advance(100);
    w.Pump();
    sent += w.TakeNotifies().size();
  }
  CHECK(sent >= 9);
  CHECK(sent <= 11);

  Rig v(50);
  JobEngine::NewJob k;
  k.target.device_ids = v.Ids(50);
  k.spec.max_in_flight = 7;
  v.Create(k);
  v.Pump();
  auto n = v.TakeNotifies();
  CHECK(n.size() == 7);
  for (auto& [dev, at] : n) v.Report(dev, at.first, ExecState::Succeeded);
  v.Pump();
  CHECK(v.TakeNotifies().size() == 7);
}

TEST_CASE("jobs: step and in-progress timeouts, retries with backoff up to the limit") {
  Rig w(2);
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(2);
  j.spec.step_timeout_ms = 1000;
  j.spec.in_progress_timeout_ms = 5000;
  j.spec.max_attempts = 2;
  j.spec.backoff_ms = 500;
  w.Create(j);
  w.Pump();
  auto n = w.TakeNotifies();
  w.Report("d1", 1, ExecState::InProgress);  // d1 starts; d0 stays silent
  w.clock.Advance(1001);
  w.Pump();
  CHECK(w.Count("QUEUED") == 1);  // d0 timed out, waits for its retry
  CHECK(w.Stored("d0") == ExecState::Pending);
  w.clock.Advance(499);
  w.Pump();
  CHECK(w.TakeNotifies().empty());
  w.clock.Advance(1);
  w.Pump();
  n = w.TakeNotifies();
  REQUIRE(n.contains("d0"));
  CHECK(n["d0"].first == 2);
  w.clock.Advance(1001);  // attempt 2 silent too: the last attempt
  w.Pump();
  CHECK(w.Count("TIMED_OUT") == 1);
  w.clock.Advance(3000);  // d1: past its in-progress timeout, retried
  w.Pump();
  w.clock.Advance(500);
  w.Pump();
  n = w.TakeNotifies();
  REQUIRE(n.contains("d1"));
  CHECK(n["d1"].first == 2);
  CHECK(w.Get()["retries"] == 2);
  storage::Page<fb::AuditEntryT> hist;
  REQUIRE(w.reg.AuditOfDevice(w.t, "d0", "", 100, &hist).ok());
  REQUIRE(hist.items.size() == 2);  // attempt 1 (timed out, queued again), attempt 2 (timed out)
  Json first = Json::parse(hist.items[0].details_json);
  CHECK(first["to"] == "QUEUED");
  CHECK(first["trail"].size() == 3);  // SENT, TIMED_OUT, QUEUED
  CHECK(first["trail"][1][0] == "TIMED_OUT");
  w.Report("d1", 2, ExecState::Failed);  // the last attempt failed
  w.Pump();
  w.Pump();
  Json g = w.Get();
  CHECK(g["status"] == "COMPLETED");
  CHECK(g["counts"]["FAILED"] == 1);
  CHECK(g["counts"]["TIMED_OUT"] == 1);
}

TEST_CASE("jobs: abort criteria end the job, cancel what is queued and stop what runs") {
  Rig w(20);
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(20);
  j.spec.max_in_flight = 10;
  j.spec.abort_threshold_pct = 50;
  j.spec.abort_min_executed = 4;
  w.Create(j);
  w.Pump();
  auto n = w.TakeNotifies();
  REQUIRE(n.size() == 10);
  std::vector<std::string> held;
  for (auto& [dev, at] : n) held.push_back(dev);
  w.Report(held[0], 1, ExecState::Failed);
  w.Report(held[1], 1, ExecState::Failed);
  w.Report(held[2], 1, ExecState::Succeeded);
  CHECK(w.Get()["status"] == "IN_PROGRESS");  // 3 executed: under the minimum
  w.Report(held[3], 1, ExecState::Failed);    // 3 of 4 failed
  w.Pump();
  w.Pump();
  Json g = w.Get();
  CHECK(g["status"] == "ABORTED");
  CHECK(g["counts"]["CANCELED"] == 16);  // 10 queued + 6 in flight
  CHECK(w.Replies("jobs/cancel").size() == 6);
  CHECK(w.Stored("d9") == ExecState::Canceled);     // never sent
  CHECK(w.Stored(held[9]) == ExecState::Canceled);  // stopped
  CHECK(w.engine->active_jobs() == 0);

  Rig p(10);
  JobEngine::NewJob k;
  k.target.device_ids = p.Ids(10);
  k.spec.max_in_flight = 2;
  k.spec.abort_threshold_pct = 50;
  k.spec.abort_min_executed = 2;
  k.spec.abort_pauses = true;
  p.Create(k);
  p.Pump();
  n = p.TakeNotifies();
  for (auto& [dev, at] : n) p.Report(dev, at.first, ExecState::Rejected);
  p.Pump();
  CHECK(p.Get()["status"] == "IN_PROGRESS");  // REJECTED is not an abort state by default
}

TEST_CASE("jobs: bad device reports are refused with a code and change nothing") {
  Rig w(3);
  JobEngine::NewJob j;
  j.target.device_ids = {"d0", "d1"};
  w.Create(j);
  w.Pump();
  w.TakeNotifies();
  const uint64_t before = w.engine->stats().reports_rejected;
  w.Report("d0", 1, ExecState::Succeeded, "nope");  // unknown job
  w.Report("d2", 1, ExecState::Succeeded);          // not targeted
  w.Report("d0", 7, ExecState::Succeeded);          // stale attempt
  w.Report("d1", 1, ExecState::Succeeded);
  w.Report("d1", 1, ExecState::Failed);  // terminal already
  w.Pump();
  auto rej = w.Replies("jobs/update/rejected");
  REQUIRE(rej.size() == 4);
  std::vector<std::string> codes;
  for (auto& r : rej) codes.push_back(r["error"]["code"]);
  CHECK(codes == std::vector<std::string>{"unknown_job", "not_found", "stale_attempt", "terminal"});
  CHECK(w.engine->stats().reports_rejected == before + 4);
  CHECK(w.Count("SENT") == 1);
  CHECK(w.Stored("d1") == ExecState::Succeeded);
  // A report for a job of another tenant with the same id is that tenant's
  // business: this tenant has no such job.
  Report other;
  other.tenant = "globex";
  other.device_id = "d0";
  other.job_id = "j1";
  other.attempt = 1;
  other.status = ExecState::Succeeded;
  w.engine->OnReport(other);
  w.Pump();
  CHECK(w.Count("SENT") == 1);
}

TEST_CASE("jobs: cancel with and without force; pause and resume") {
  Rig w(6);
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(6);
  j.spec.max_in_flight = 2;
  w.Create(j);
  w.Pump();
  auto n = w.TakeNotifies();
  REQUIRE(n.size() == 2);
  storage::WriteBatch b;
  fb::JobT rec;
  REQUIRE(w.engine->Control(w.t, "j1", JobEngine::Action::kPause, false, "operator:o", &b, &rec).ok());
  REQUIRE(w.reg.Commit(b).ok());
  w.engine->ApplyControl(w.t, rec, JobEngine::Action::kPause, false);
  for (auto& [dev, at] : n) w.Report(dev, at.first, ExecState::Succeeded);
  w.Pump();
  CHECK(w.TakeNotifies().empty());  // paused: nothing new
  CHECK(w.Get()["status"] == "PAUSED");
  b.Clear();
  REQUIRE(w.engine->Control(w.t, "j1", JobEngine::Action::kResume, false, "operator:o", &b, &rec).ok());
  w.engine->ApplyControl(w.t, rec, JobEngine::Action::kResume, false);
  w.Pump();
  n = w.TakeNotifies();
  REQUIRE(n.size() == 2);
  b.Clear();
  REQUIRE(w.engine->Control(w.t, "j1", JobEngine::Action::kCancel, false, "operator:o", &b, &rec).ok());
  REQUIRE(w.reg.Commit(b).ok());
  w.engine->ApplyControl(w.t, rec, JobEngine::Action::kCancel, false);
  w.Pump();
  CHECK(w.Count("CANCELED") == 2);  // the queued ones
  CHECK(w.Count("SENT") == 2);      // those in flight go on
  for (auto& [dev, at] : n) w.Report(dev, at.first, ExecState::Succeeded);
  w.Pump();
  w.Pump();
  CHECK(w.Get()["status"] == "CANCELED");
  CHECK(w.Get()["counts"]["SUCCEEDED"] == 4);
  CHECK(w.engine->active_jobs() == 0);
  b.Clear();
  CHECK(w.engine->Control(w.t, "j1", JobEngine::Action::kCancel, true, "operator:o", &b, &rec).code() ==
        absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("jobs: a query target resolves by group, without retired devices") {
  Rig w(10);
  storage::WriteBatch b;
  fb::DeviceT d;
  REQUIRE(w.reg.GetDevice(w.t, "d4", &d).ok());
  d.status = fb::DeviceStatus::Decommissioned;
  REQUIRE(w.reg.PutDevice(w.t, d, &b).ok());
  REQUIRE(w.reg.Commit(b).ok());
  JobEngine::NewJob j;
  j.target.has_query = true;
  j.target.filter.group_id = "g1";
  w.Create(j);
  w.Pump();
  w.Pump();
  Json g = w.Get();
  CHECK(g["total"] == 4);  // d0 d2 d6 d8
  CHECK(g["resolved"] == true);
  auto n = w.TakeNotifies();
  CHECK(n.size() == 4);
  CHECK_FALSE(n.contains("d4"));
  // An unknown group or model is refused at creation.
  JobEngine::NewJob bad;
  bad.job_id = "j2";
  bad.target.has_query = true;
  bad.target.filter.group_id = "nope";
  storage::WriteBatch b2;
  fb::JobT rec;
  CHECK(w.engine->Create(w.t, bad, &b2, &rec).code() == absl::StatusCode::kNotFound);
  bad.target = {};
  bad.target.device_ids = {"d1", "zz"};
  CHECK(w.engine->Create(w.t, bad, &b2, &rec).code() == absl::StatusCode::kNotFound);
  bad.target.device_ids = {"d4"};
  CHECK(w.engine->Create(w.t, bad, &b2, &rec).code() == absl::StatusCode::kFailedPrecondition);
  bad.target.device_ids = {"d1", "d1"};
  CHECK(w.engine->Create(w.t, bad, &b2, &rec).code() == absl::StatusCode::kInvalidArgument);
  bad.job_id = "j1";
  bad.target.device_ids = {"d1"};
  CHECK(w.engine->Create(w.t, bad, &b2, &rec).code() == absl::StatusCode::kAlreadyExists);
}

TEST_CASE("jobs: recovery resumes from every persisted execution state") {
  Rig w(6);
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(6);
  j.spec.max_in_flight = 5;
  w.Create(j);
  w.Pump();
  auto n = w.TakeNotifies();
  REQUIRE(n.size() == 5);
  // d0 SUCCEEDED, d1 IN_PROGRESS, d2 DELIVERED, d3 SENT, d4 FAILED; d5 QUEUED.
  w.Report("d0", 1, ExecState::Succeeded);
  w.Report("d1", 1, ExecState::InProgress);
  w.engine->OnOutcome(n["d2"].second, true, "acked");
  w.Report("d4", 1, ExecState::Failed);
  w.Pump();
  w.clock.Advance(1000);  // SENT and DELIVERED reach the store too
  w.Pump();
  CHECK(w.Stored("d2") == ExecState::Delivered);
  CHECK(w.Stored("d3") == ExecState::Sent);
  w.out = {};
  w.Restart();  // a crash: the engine reads its state back
  Json g = w.Get();
  CHECK(g["status"] == "IN_PROGRESS");
  CHECK(g["counts"]["SUCCEEDED"] == 1);
  CHECK(g["counts"]["FAILED"] == 1);
  CHECK(g["counts"]["IN_PROGRESS"] == 1);
  CHECK(g["counts"]["QUEUED"] == 3);  // d2, d3 to resend; d5 never sent
  w.Pump();
  n = w.TakeNotifies();
  CHECK(n.size() == 3);
  CHECK(n["d2"].first == 1);  // the same attempt: the device recognises it
  CHECK(n["d3"].first == 1);
  CHECK(n["d5"].first == 1);
  w.engine->OnConnected("acme", "d1");  // reconnects: its running execution is told again
  w.Pump();
  n = w.TakeNotifies();
  REQUIRE(n.contains("d1"));
  for (const char* d : {"d1", "d2", "d3", "d5"}) w.Report(d, 1, ExecState::Succeeded);
  w.Pump();
  w.Pump();
  g = w.Get();
  CHECK(g["status"] == "COMPLETED");
  CHECK(g["counts"]["SUCCEEDED"] == 5);
  CHECK(g["counts"]["FAILED"] == 1);
}

TEST_CASE("jobs: a failed commit withholds what it would have released") {
  Rig w(2);
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(2);
  w.Create(j);
  w.Pump();
  auto n = w.TakeNotifies();
  REQUIRE(n.size() == 2);
  w.kv.FailWrites(absl::UnavailableError("disk full"));
  w.Report("d0", 1, ExecState::Succeeded);
  w.engine->Pump();
  Output o;
  CHECK_FALSE(w.engine->Commit(&o).ok());
  CHECK(o.sends.empty());  // no "accepted" for a report the store does not have
  CHECK(w.engine->stats().commits_failed == 1);
  w.kv.FailWrites(absl::OkStatus());
  CHECK(w.Stored("d0") != ExecState::Succeeded);
}

TEST_CASE("jobs: a retired device's execution is REMOVED") {
  Rig w(3, false);
  w.online = {"d0"};
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(3);
  w.Create(j);
  w.Pump();
  auto n = w.TakeNotifies();
  w.engine->OnDeviceRetired(w.t, "d0");  // in flight
  w.engine->OnDeviceRetired(w.t, "d1");  // waiting offline
  w.Pump();
  CHECK(w.Count("REMOVED") == 2);
  w.online.insert("d2");
  w.engine->OnConnected("acme", "d2");
  w.Pump();
  n = w.TakeNotifies();
  REQUIRE(n.size() == 1);
  w.Report("d2", 1, ExecState::Succeeded);
  w.Pump();
  w.Pump();
  CHECK(w.Get()["status"] == "COMPLETED");
}

TEST_CASE("jobs: a continuous job reaches devices that join its group later and runs until canceled") {
  Rig w(6);
  JobEngine::NewJob j;
  j.target.has_query = true;
  j.target.filter.group_id = "g1";
  j.target.continuous = true;
  w.Create(j);
  w.Pump();
  w.Pump();
  auto n = w.TakeNotifies();
  REQUIRE(n.size() == 3);  // d0 d2 d4
  for (auto& [dev, at] : n) w.Report(dev, at.first, ExecState::Succeeded);
  w.Pump();
  CHECK(w.Get()["status"] == "IN_PROGRESS");  // continuous: not COMPLETED
  fb::DeviceT d;
  REQUIRE(w.reg.GetDevice(w.t, "d1", &d).ok());
  d.group_ids = {"g1"};
  w.engine->OnDeviceJoined(w.t, d);
  w.engine->OnDeviceJoined(w.t, d);  // once per device and job
  fb::DeviceT other;
  REQUIRE(w.reg.GetDevice(w.t, "d3", &other).ok());
  w.engine->OnDeviceJoined(w.t, other);  // not in the group: nothing
  w.Pump();
  n = w.TakeNotifies();
  REQUIRE(n.size() == 1);
  CHECK(n.contains("d1"));
  CHECK(w.Get()["total"] == 4);
  w.Report("d1", 1, ExecState::Succeeded);
  w.Pump();
  CHECK(w.Get()["status"] == "IN_PROGRESS");
  storage::WriteBatch b;
  fb::JobT rec;
  REQUIRE(w.engine->Control(w.t, "j1", JobEngine::Action::kCancel, false, "operator:o", &b, &rec).ok());
  REQUIRE(w.reg.Commit(b).ok());
  w.engine->ApplyControl(w.t, rec, JobEngine::Action::kCancel, false);
  w.Pump();
  w.Pump();
  CHECK(w.Get()["status"] == "CANCELED");
  CHECK(w.Get()["counts"]["SUCCEEDED"] == 4);
  // device_ids cannot be continuous.
  JobEngine::NewJob bad;
  bad.job_id = "j2";
  bad.target.device_ids = {"d0"};
  bad.target.continuous = true;
  storage::WriteBatch b2;
  CHECK(w.engine->Create(w.t, bad, &b2, &rec).code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("jobs: waves start wave by wave; a wave under its success gate pauses the job before the next") {
  Rig w(10);
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(10);
  auto spec = jobs::ParseSpec(Json::parse(R"({"waves":[{"count":2},{"percent":30},{"percent":50}],
                                              "success_gate_pct":100})"),
                              Json(), Json(), Json());
  REQUIRE(spec.ok());
  j.spec = *spec;
  w.Create(j);
  w.Pump();
  auto n1 = w.TakeNotifies();
  REQUIRE(n1.size() == 2);  // wave 1: 2 devices
  for (auto& [dev, at] : n1) w.Report(dev, at.first, ExecState::Succeeded);
  w.Pump();
  w.Pump();
  Json g = w.Get();
  CHECK(g["wave"]["current"] == 2);  // all succeeded: wave 2 started
  CHECK(g["status"] == "IN_PROGRESS");
  auto n2 = w.TakeNotifies();
  REQUIRE(n2.size() == 3);  // 30 % of 10
  size_t i = 0;
  for (auto& [dev, at] : n2) w.Report(dev, at.first, ++i == 1 ? ExecState::Failed : ExecState::Succeeded);
  w.Pump();
  w.Pump();
  CHECK(w.TakeNotifies().empty());  // 4 of 5 < 100 %: nothing of wave 3
  g = w.Get();
  CHECK(g["status"] == "PAUSED");
  CHECK(g["wave"]["current"] == 3);
  CHECK(g["reason"].get<std::string>().find("wave 2 of 3") != std::string::npos);
  CHECK(w.Count("QUEUED") == 5);
  // The wave survives a restart; resume starts the last wave (the rest).
  w.Restart();
  CHECK(w.Get()["wave"]["current"] == 3);
  storage::WriteBatch b;
  fb::JobT rec;
  REQUIRE(w.engine->Control(w.t, "j1", JobEngine::Action::kResume, false, "op", &b, &rec).ok());
  REQUIRE(w.reg.Commit(b).ok());
  w.engine->ApplyControl(w.t, rec, JobEngine::Action::kResume, false);
  w.Pump();
  auto n = w.TakeNotifies();
  CHECK(n.size() == 5);
  for (auto& [dev, at] : n) w.Report(dev, at.first, ExecState::Succeeded);
  w.Pump();
  w.Pump();
  CHECK(w.Get()["status"] == "COMPLETED");
  CHECK(w.Count("SUCCEEDED") == 9);
}

TEST_CASE("jobs: wave and rollback options are checked") {
  for (const char* bad : {R"({"waves":[]})", R"({"waves":[{"count":1,"percent":5}]})", R"({"waves":[{}]})",
                          R"({"waves":[{"percent":70},{"percent":40}]})", R"({"waves":[{"count":0}]})",
                          R"({"waves":[{"count":2,"x":1}]})", R"({"success_gate_pct":90})",
                          R"({"waves":[{"count":2}],"success_gate_pct":101})"}) {
    CHECK_MESSAGE(!jobs::ParseSpec(Json::parse(bad), Json(), Json(), Json()).ok(), bad);
  }
  auto s =
      jobs::ParseSpec(Json::parse(R"({"waves":[{"count":5,"rate_per_s":2},{"percent":100}],"success_gate_pct":95})"),
                      Json(), Json(), Json::parse(R"({"threshold_pct":10,"action":"rollback"})"));
  REQUIRE(s.ok());
  CHECK(s->abort_rolls_back);
  auto back = jobs::SpecFromJson(s->ToJson());
  REQUIRE(back.ok());
  CHECK(back->ToJson() == s->ToJson());
  CHECK(back->waves.size() == 2);
  // A command job cannot roll back (no handler knows how).
  Rig w(1);
  JobEngine::NewJob j;
  j.job_id = "r";
  j.document_json = "{}";
  j.target.device_ids = w.Ids(1);
  j.spec = *s;
  storage::WriteBatch b;
  fb::JobT rec;
  CHECK(absl::IsInvalidArgument(w.engine->Create(w.t, j, &b, &rec)));
}

TEST_CASE("jobs: a maintenance window holds new executions outside it; started ones run to their end") {
  // The fake wall clock starts at 2023-11-14 22:30 UTC.
  Rig w(4);
  JobEngine::NewJob j;
  j.target.device_ids = w.Ids(4);
  auto spec = jobs::ParseSpec(Json::parse(R"({"window":{"start":"23:00","end":"01:00"},"max_in_flight":2})"),
                              Json::parse(R"({"step_s":10800})"), Json(), Json(), "UTC");
  REQUIRE(spec.ok());
  j.spec = *spec;
  w.Create(j);
  w.Pump();
  w.Pump();
  CHECK(w.TakeNotifies().empty());
  Json g = w.Get();
  CHECK(g["status"] == "IN_PROGRESS");
  CHECK(g["window"]["open"] == false);
  CHECK(g["window"]["opens_at_ms"] == FakeClock::kWallOffset + 1'000'000 + 30 * 60'000);
  CHECK(g["window"]["time_zone"] == "UTC");
  // It survives a restart (stored with the job's options).
  w.Restart();
  w.Pump();
  CHECK(w.TakeNotifies().empty());
  w.clock.Advance(30 * 60'000);  // 23:00: open
  w.Pump();
  auto n = w.TakeNotifies();
  REQUIRE(n.size() == 2);  // max_in_flight
  CHECK(w.Get()["window"]["open"] == true);
  w.clock.Advance(2 * 3600'000);  // 01:00: closed again, two in flight
  w.Pump();
  for (auto& [dev, at] : n) w.Report(dev, at.first, ExecState::Succeeded);
  w.Pump();
  w.Pump();
  CHECK(w.Count("SUCCEEDED") == 2);  // the started ones ended after the window
  CHECK(w.TakeNotifies().empty());   // the rest waits for the next night
  CHECK(w.Get()["window"]["opens_at_ms"] == FakeClock::kWallOffset + 1'000'000 + (30 + 24 * 60) * 60'000);
  w.clock.Advance(22 * 3600'000);  // 23:00 the next day
  w.Pump();
  CHECK(w.TakeNotifies().size() == 2);
}

TEST_CASE("jobs: maintenance window options are checked") {
  for (const char* bad :
       {R"({"window":{"start":"25:00","end":"01:00"}})", R"({"window":{"start":"9:00","end":"17:00"}})",
        R"({"window":{"start":"09:00","end":"09:00"}})", R"({"window":{"start":"09:00"}})",
        R"({"window":{"start":"09:00","end":"17:00","time_zone":"Mars/Olympus"}})",
        R"({"window":{"start":"09:00","end":"17:00","time_zone":"../../etc/passwd"}})",
        R"({"window":{"start":"09:00","end":"17:00","time_zone":5}})", R"({"window":"09:00-17:00"})",
        R"({"window":{"start":"09:00","end":"17:00","days":[1]}})"}) {
    CHECK_MESSAGE(!jobs::ParseSpec(Json::parse(bad), Json(), Json(), Json()).ok(), bad);
  }
  // The tenant's zone when none is named, and the stored form parses back.
  auto s = jobs::ParseSpec(Json::parse(R"({"window":{"start":"22:00","end":"04:00"}})"), Json(), Json(), Json(),
                           "Europe/Berlin");
  REQUIRE(s.ok());
  CHECK(s->window.zone_name() == "Europe/Berlin");
  auto back = jobs::SpecFromJson(s->ToJson());
  REQUIRE(back.ok());
  CHECK(back->ToJson() == s->ToJson());
}

TEST_CASE("jobs: a daily window follows its time zone across midnight and daylight saving time") {
  auto at = [](int y, int mo, int d, int h, int mi) {
    return absl::ToUnixMillis(absl::FromCivil(absl::CivilMinute(y, mo, d, h, mi), absl::UTCTimeZone()));
  };
  DailyWindow w;
  REQUIRE(DailyWindow::Parse("09:00", "17:00", "Europe/Berlin", &w).ok());
  // Winter (CET, UTC+1) and summer (CEST, UTC+2).
  CHECK(!w.Open(at(2026, 1, 15, 7, 30)));
  CHECK(w.NextOpen(at(2026, 1, 15, 7, 30)) == at(2026, 1, 15, 8, 0));
  CHECK(w.Open(at(2026, 1, 15, 15, 59)));
  CHECK(!w.Open(at(2026, 1, 15, 16, 0)));
  CHECK(w.NextOpen(at(2026, 1, 15, 16, 0)) == at(2026, 1, 16, 8, 0));
  CHECK(w.NextOpen(at(2026, 7, 15, 6, 30)) == at(2026, 7, 15, 7, 0));
  CHECK(w.Open(at(2026, 7, 15, 14, 59)));
  CHECK(!w.Open(at(2026, 7, 15, 15, 0)));
  // Across midnight.
  DailyWindow night;
  REQUIRE(DailyWindow::Parse("22:00", "04:00", "UTC", &night).ok());
  CHECK(night.Open(at(2026, 1, 15, 23, 0)));
  CHECK(night.Open(at(2026, 1, 16, 3, 59)));
  CHECK(!night.Open(at(2026, 1, 16, 4, 0)));
  CHECK(night.NextOpen(at(2026, 1, 16, 4, 0)) == at(2026, 1, 16, 22, 0));
  CHECK(night.NextOpen(at(2026, 1, 16, 23, 0)) == at(2026, 1, 16, 23, 0));
  // A start skipped by the spring jump (Berlin, 2026-03-29 02:00 → 03:00)
  // opens at the jump.
  DailyWindow gap;
  REQUIRE(DailyWindow::Parse("02:30", "05:00", "Europe/Berlin", &gap).ok());
  CHECK(gap.NextOpen(at(2026, 3, 28, 23, 0)) == at(2026, 3, 29, 1, 0));
  CHECK(gap.Open(at(2026, 3, 29, 1, 0)));  // 03:00 CEST
  CHECK(gap.start() == "02:30");
  CHECK(gap.end() == "05:00");
  absl::TimeZone tz;
  CHECK(LoadZone("America/New_York", &tz).ok());
  CHECK(!LoadZone("", &tz).ok());
  CHECK(!LoadZone("/etc/localtime", &tz).ok());
}
}  // namespace
}  // namespace fmq::jobs

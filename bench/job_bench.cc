// fleetmq-job-bench: the job engine at fleet scale, in-process, on RocksDB on
// disk. Registers N devices (one group), creates one command job over the
// group, and plays every device: each notification is acknowledged (the
// PUBACK outcome) and answered SUCCEEDED (with --in-progress, IN_PROGRESS
// first). Reports the time per phase and the totals as one JSON line:
//   register_s        registering the devices (not part of the job)
//   resolve_s         job creation until the target is resolved
//   first_done_s      until the first execution ended
//   total_s           job creation until every execution is SUCCEEDED and committed
//   pump_s / commit_s / device_s   time in dispatch, in RocksDB commits (state
//                     writes, audit), in handling the devices' acks and reports
//
//   fleetmq-job-bench --dir DIR [--devices 1000000] [--in-progress] [--no-audit]
//       [--max-in-flight 10000]
// Crash runs (bench/job_crash.py): --resume reopens DIR and resumes the job
// without registering; --crash-after-ms N kills the process (SIGKILL) N ms
// after the job started or resumed; --verify checks that the job completed
// and every execution is SUCCEEDED at attempt 1, exit 0 or 1.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "bench/fleet.h"
#include "common/clock.h"
#include "common/log.h"
#include "mgmt/jobs/job_engine.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace {

using Steady = std::chrono::steady_clock;
using namespace fmq;

double Secs(Steady::time_point a, Steady::time_point b) { return std::chrono::duration<double>(b - a).count(); }

struct Options {
  std::string dir;
  long devices = 1'000'000;
  bool in_progress = false, audit = true, resume = false, verify = false;
  long crash_after_ms = 0;
  long max_in_flight = 10'000;
};

int Verify(storage::KvStore* kv, storage::Registry& reg, const storage::TenantId& t, long devices) {
  fb::JobT job;
  if (!reg.GetJob(t, "bench", &job).ok()) {
    std::fprintf(stderr, "no job\n");
    return 1;
  }
  long ok = 0, bad = 0;
  absl::Status err = absl::OkStatus();
  absl::Status s = kv->ScanPrefix(storage::Family::kJobDevices, storage::keys::JobDevicePrefix(t, "bench"),
                                  [&](std::string_view k, std::string_view v) {
                                    fb::JobDeviceT e;
                                    err = storage::DecodeRecord<fb::JobDevice>(storage::Family::kJobDevices, k, v, &e);
                                    if (!err.ok()) return false;
                                    if (e.state == jobs::ExecState::Succeeded && e.attempts == 1) {
                                      ++ok;
                                    } else if (bad++ < 5) {
                                      std::fprintf(stderr, "%s: %s attempt %u\n", e.device_id.c_str(),
                                                   std::string(jobs::ExecName(e.state)).c_str(), e.attempts);
                                    }
                                    return true;
                                  });
  std::printf("{\"verify\":true,\"status\":\"%s\",\"total\":%llu,\"succeeded\":%ld,\"other\":%ld}\n",
              std::string(jobs::JobName(job.status)).c_str(), static_cast<unsigned long long>(job.total_count), ok,
              bad);
  return s.ok() && err.ok() && job.status == jobs::JobStatus::Completed && ok == devices && bad == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto num = [&]() { return i + 1 < argc ? std::atol(argv[++i]) : 0L; };
    if (a == "--dir" && i + 1 < argc)
      o.dir = argv[++i];
    else if (a == "--devices")
      o.devices = num();
    else if (a == "--in-progress")
      o.in_progress = true;
    else if (a == "--no-audit")
      o.audit = false;
    else if (a == "--resume")
      o.resume = true;
    else if (a == "--verify")
      o.verify = true;
    else if (a == "--crash-after-ms")
      o.crash_after_ms = num();
    else if (a == "--max-in-flight")
      o.max_in_flight = num();
    else {
      std::fprintf(stderr,
                   "usage: fleetmq-job-bench --dir DIR [--devices N] [--in-progress] [--no-audit] "
                   "[--max-in-flight N] [--resume] [--crash-after-ms N] [--verify]\n");
      return 2;
    }
  }
  if (o.dir.empty() || o.devices < 1) return 2;
  SetLogLevel(LogLevel::kWarning);
  auto kv = storage::OpenRocksKvStore(o.dir);
  if (!kv.ok()) {
    std::fprintf(stderr, "%s\n", std::string(kv.status().message()).c_str());
    return 1;
  }
  storage::Registry reg(kv->get());
  const auto t = storage::TenantId::FromAuthenticated("bench");
  if (o.verify) return Verify(kv->get(), reg, t, o.devices);
  SystemClock clock;
  const auto t0 = Steady::now();
  if (!o.resume && !bench::RegisterFleet(reg, t, o.devices, "all")) return 1;
  const auto t_registered = Steady::now();
  jobs::Host host;
  host.online = [](const std::string&, std::string_view) { return true; };
  jobs::EngineOptions eo;
  eo.audit_executions = o.audit;
  eo.max_active_jobs = 10;
  jobs::JobEngine engine(kv->get(), &reg, &clock, host, eo);
  if (!engine.Recover().ok()) return 1;
  const auto t_start = Steady::now();
  if (!o.resume) {
    jobs::JobEngine::NewJob nj;
    nj.job_id = "bench";
    nj.document_json = R"({"command":"reboot"})";
    nj.target.has_query = true;
    nj.target.filter.group_id = "all";
    nj.spec.max_in_flight = static_cast<uint32_t>(o.max_in_flight);
    nj.spec.step_timeout_ms = 600'000;
    storage::WriteBatch b;
    fb::JobT rec;
    if (absl::Status s = engine.Create(t, nj, &b, &rec); !s.ok() || !reg.Commit(b).ok()) return 1;
    engine.Activate(t, rec);
  }
  double pump_s = 0, commit_s = 0, device_s = 0, resolve_s = -1, first_done_s = -1;
  uint64_t turns = 0, sends = 0;
  while (true) {
    if (o.crash_after_ms > 0 && Secs(t_start, Steady::now()) * 1000 >= o.crash_after_ms) kill(getpid(), SIGKILL);
    auto a = Steady::now();
    engine.Pump();
    auto b = Steady::now();
    jobs::Output out;
    if (!engine.Commit(&out).ok()) return 1;
    auto c = Steady::now();
    pump_s += Secs(a, b);
    commit_s += Secs(b, c);
    ++turns;
    auto d = engine.Describe(t, "bench");
    if (!d.ok()) return 1;
    if (resolve_s < 0 && (*d)["resolved"] == true) resolve_s = Secs(t_start, c);
    if (first_done_s < 0 && (*d)["done"].get<uint64_t>() > 0) first_done_s = Secs(t_start, c);
    if ((*d)["status"] == "COMPLETED" && engine.active_jobs() == 0) break;
    // The devices: PUBACK, then their reports.
    for (const auto& s : out.sends) {
      if (s.suffix != "jobs/notify") continue;
      ++sends;
      const size_t at = s.payload.find("\"attempt\":");
      const uint32_t attempt = static_cast<uint32_t>(std::strtoul(s.payload.c_str() + at + 10, nullptr, 10));
      engine.OnOutcome(s.token, true, "acked");
      jobs::Report r;
      r.tenant = s.tenant;
      r.device_id = s.device_id;
      r.job_id = "bench";
      r.attempt = attempt;
      if (o.in_progress) {
        r.status = jobs::ExecState::InProgress;
        engine.OnReport(r);
      }
      r.status = jobs::ExecState::Succeeded;
      r.details = R"({"result":"ok"})";
      engine.OnReport(r);
    }
    device_s += Secs(c, Steady::now());
  }
  const auto t_end = Steady::now();
  std::printf(
      "{\"devices\":%ld,\"register_s\":%.2f,\"resolve_s\":%.2f,\"first_done_s\":%.2f,\"total_s\":%.2f,"
      "\"devices_per_s\":%.0f,\"pump_s\":%.2f,\"commit_s\":%.2f,\"device_s\":%.2f,\"turns\":%llu,"
      "\"notifications\":%llu,\"audit\":%s,\"in_progress\":%s,\"resumed\":%s}\n",
      o.devices, Secs(t0, t_registered), resolve_s, first_done_s, Secs(t_start, t_end),
      static_cast<double>(o.devices) / Secs(t_start, t_end), pump_s, commit_s, device_s,
      static_cast<unsigned long long>(turns), static_cast<unsigned long long>(sends), o.audit ? "true" : "false",
      o.in_progress ? "true" : "false", o.resume ? "true" : "false");
  return 0;
}

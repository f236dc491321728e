// fleetmq-config-bench: the seed's "configuration push to 1 million devices"
// in-process, on RocksDB on disk. Registers N devices in one group, has
// every one subscribed to its channel, then changes the group's template
// twice: first a whole ~5 KB document (each device gets the whole document),
// then a change of a few keys (each device gets a merge patch on what it
// applied). Each change is a config job of the job engine, as config.set
// makes it; the simulated devices acknowledge every message (PUBACK) and
// report APPLIED with the document's hash. Per push, one JSON line:
//   total_s    from the change's commit until every device is APPLIED, the
//              job COMPLETED and both committed (fsync)
//   pump_s / commit_s / device_s   time in the engine and the feature's
//              pumps, in RocksDB commits, in handling the devices' acks and
//              reports (the broker side of them: state, audit, job settles)
//   sim_s      the simulated devices' own work (not the broker's)
//   bytes      payload bytes sent to devices
//
//   fleetmq-config-bench --dir DIR [--devices 1000000] [--doc-kb 5] [--max-in-flight 10000] [--no-audit]
// (--no-audit: config.audit_applied=false)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>

#include "bench/fleet.h"
#include "common/clock.h"
#include "common/log.h"
#include "mgmt/config/config_feature.h"
#include "mgmt/config/document.h"
#include "mgmt/jobs/job_engine.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace {

using Steady = std::chrono::steady_clock;
using namespace fmq;
using config::Json;

double Secs(Steady::time_point a, Steady::time_point b) { return std::chrono::duration<double>(b - a).count(); }

struct Options {
  std::string dir;
  long devices = 1'000'000;
  long doc_kb = 5;
  long max_in_flight = 10'000;
  bool audit = true;
};

Json Document(long kb, int variant) {
  Json d{{"telemetry", {{"interval_s", 30}, {"topics", {"temp", "rpm", "volt"}}}},
         {"mode", variant == 0 ? "eco" : "sport"},
         {"limits", {{"max_rpm", 4000 + variant}, {"min_volt", 11.5}}}};
  Json cal = Json::object();
  for (long i = 0; i < kb * 1024 / 14; ++i) cal["c" + std::to_string(i)] = i * 0.25;
  if (variant != 0) cal["c7"] = "recalibrated";
  d["calibration"] = cal;
  return d;
}

struct Bench {
  storage::KvStore* kv;
  storage::Registry& reg;
  SystemClock clock;
  jobs::JobEngine engine;
  config::ConfigFeature cfg;
  const storage::TenantId t = storage::TenantId::FromAuthenticated("bench");
  // The simulated devices' view: payload → (version, hash of the result).
  std::unordered_map<std::string, std::pair<uint64_t, std::string>> results;

  Bench(storage::KvStore* k, storage::Registry& r, const jobs::EngineOptions& eo, const config::Options& co)
      : kv(k),
        reg(r),
        engine(k, &r, &clock, jobs::Host{[](const std::string&, std::string_view) { return true; }}, eo),
        cfg(k, &r, &clock, &engine, co) {
    engine.set_index(0);
    cfg.set_index(1);
  }

  bool Push(const Json& doc, const std::string& job_id, long max_in_flight, long devices, const char* label) {
    // What config.set group_id=all does: a new version in the group record
    // and a config job in one batch.
    storage::WriteBatch b;
    fb::DeviceGroupT g;
    if (!reg.GetGroup(t, "all", &g).ok()) return false;
    Json cur = g.config_template_json.empty() ? Json::object() : Json::parse(g.config_template_json);
    auto c = cfg.NewVersion(t, storage::ConfigKind::kGroup, "all", cur, g.config_version, doc, "operator:bench", &b);
    if (!c.ok()) return false;
    g.config_template_json = config::Canonical(c->doc);
    g.config_version = c->version;
    g.config_rev = c->rev;
    reg.PutGroup(t, g, &b);
    jobs::JobEngine::NewJob nj;
    nj.job_id = job_id;
    nj.type = fb::JobType::Config;
    nj.document_json = Json{{"kind", "group"}, {"id", "all"}, {"rev", c->rev}}.dump();
    nj.target.has_query = true;
    nj.target.filter.group_id = "all";
    nj.spec.max_in_flight = static_cast<uint32_t>(max_in_flight);
    nj.spec.step_timeout_ms = 600'000;
    fb::JobT rec;
    if (!engine.Create(t, nj, &b, &rec).ok() || !reg.Commit(b).ok()) return false;
    cfg.Forget(t, storage::ConfigKind::kGroup, "all");
    engine.Activate(t, rec);
    const auto t0 = Steady::now();
    double pump_s = 0, commit_s = 0, device_s = 0, sim_s = 0;
    uint64_t turns = 0, sends = 0, bytes = 0, patches = cfg.stats().patches;
    while (true) {
      auto a = Steady::now();
      engine.Pump();
      cfg.Pump();
      auto bb = Steady::now();
      mgmt::Output out;
      if (!engine.Commit(&out).ok() || !cfg.Commit(&out).ok()) return false;
      auto cc = Steady::now();
      pump_s += Secs(a, bb);
      commit_s += Secs(bb, cc);
      ++turns;
      auto d = engine.Describe(t, job_id);
      if (!d.ok()) return false;
      if ((*d)["status"] == "COMPLETED" && engine.active_jobs() == 0) break;
      for (const auto& s : out.sends) {
        if (s.suffix != "config/desired") continue;
        ++sends;
        bytes += s.payload.size();
        const auto s0 = Steady::now();
        auto it = results.find(s.payload);
        if (it == results.end()) {
          // A device applies it: the patch on its document (all devices
          // share it here), or the whole document.
          Json m = Json::parse(s.payload);
          Json next = m.contains("document") ? m["document"] : config::ApplyMergePatch(cur, m["patch"]);
          it = results.emplace(s.payload, std::make_pair(m["version"].get<uint64_t>(), config::Hash(next))).first;
        }
        mgmt::DeviceMessage rep;
        rep.tenant = s.tenant;
        rep.device_id = s.device_id;
        rep.topic = "config/report";
        rep.body = Json{{"version", it->second.first}, {"status", "APPLIED"}, {"hash", it->second.second}};
        const auto s1 = Steady::now();
        sim_s += Secs(s0, s1);
        cfg.OnOutcome(s.token, true, "acked");
        cfg.OnDeviceMessage(rep);
        device_s += Secs(s1, Steady::now());
      }
    }
    const double total = Secs(t0, Steady::now());
    auto d = engine.Describe(t, job_id);
    std::printf(
        "{\"push\":\"%s\",\"devices\":%ld,\"doc_bytes\":%zu,\"total_s\":%.2f,\"devices_per_s\":%.0f,"
        "\"pump_s\":%.2f,\"commit_s\":%.2f,\"device_s\":%.2f,\"sim_s\":%.2f,\"turns\":%llu,\"messages\":%llu,"
        "\"patches\":%llu,\"bytes\":%llu,\"succeeded\":%llu}\n",
        label, devices, config::Canonical(doc).size(), total, static_cast<double>(devices) / total, pump_s, commit_s,
        device_s, sim_s, static_cast<unsigned long long>(turns), static_cast<unsigned long long>(sends),
        static_cast<unsigned long long>(cfg.stats().patches - patches), static_cast<unsigned long long>(bytes),
        static_cast<unsigned long long>((*d)["counts"]["SUCCEEDED"].get<uint64_t>()));
    std::fflush(stdout);
    return (*d)["counts"]["SUCCEEDED"].get<long>() == devices;
  }
};

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
    else if (a == "--doc-kb")
      o.doc_kb = num();
    else if (a == "--max-in-flight")
      o.max_in_flight = num();
    else if (a == "--no-audit")
      o.audit = false;
    else {
      std::fprintf(
          stderr,
          "usage: fleetmq-config-bench --dir DIR [--devices N] [--doc-kb 5] [--max-in-flight N] [--no-audit]\n");
      return 2;
    }
  }
  if (o.dir.empty() || o.devices < 1 || o.doc_kb < 1) return 2;
  SetLogLevel(LogLevel::kWarning);
  auto kv = storage::OpenRocksKvStore(o.dir);
  if (!kv.ok()) {
    std::fprintf(stderr, "%s\n", std::string(kv.status().message()).c_str());
    return 1;
  }
  storage::Registry reg(kv->get());
  const auto t = storage::TenantId::FromAuthenticated("bench");
  const auto t0 = Steady::now();
  if (!bench::RegisterFleet(reg, t, o.devices, "all")) return 1;
  jobs::EngineOptions eo;
  eo.max_active_jobs = 10;
  config::Options co;
  co.audit_applied = o.audit;
  Bench bench(kv->get(), reg, eo, co);
  if (!bench.engine.Recover().ok() || !bench.cfg.Recover().ok()) return 1;
  const auto t1 = Steady::now();
  // Every device connected and subscribed (in sync with {}: nothing sent).
  for (long i = 0; i < o.devices; ++i) bench.cfg.OnSubscribed("bench", "dev-" + std::to_string(i));
  mgmt::Output none;
  if (!bench.cfg.Commit(&none).ok()) return 1;
  const auto t2 = Steady::now();
  std::fprintf(stderr, "registered %ld devices in %.1f s, subscribed in %.1f s\n", o.devices, Secs(t0, t1),
               Secs(t1, t2));
  const Json first = Document(o.doc_kb, 0), second = Document(o.doc_kb, 1);
  if (!bench.Push(first, "push-1", o.max_in_flight, o.devices, "whole document")) return 1;
  if (!bench.Push(second, "push-2", o.max_in_flight, o.devices, "change (merge patch)")) return 1;
  return 0;
}

// fleetmq-health-bench: fleet health roll-ups at the seed's scale,
// in-process, on RocksDB on disk. Registers N devices spread over groups,
// models and firmware versions (device i: group g-(i % groups), model
// m-(i % 10), firmware fw-(i % 5)), then:
//   report    every device sends one health report of the reference agent's
//             nine values (through HealthFeature, committed every 10,000):
//             reports/s, and what the roll-ups hold (scopes, resident memory)
//   summary   health.summary of the tenant, of one group, and of the tenant
//             with by=group (limit 100), each repeated: µs per call
//   move      10,000 devices moved to another group (registry writes; the
//             roll-ups follow, the latest reports are rewritten): moves/s
//   link      what the broker observes: every device connects, reports its
//             counters and disconnects (three passes, committed every
//             10,000): events/s, bytes written per event, a device's link
//             read as health.get shows it (µs)
//   recover   a new HealthFeature over the same store (what a restart does):
//             seconds, and whether it answers exactly as before
//   alerts    an offline rule over every device, none connected: windows
//             armed, every alert raised (record, audit entry, event), then
//             every device back (cleared): seconds, rates, memory
// One JSON line per phase on stdout. --recover-only opens a store an earlier
// run left and only rebuilds (in a fresh process, with an 8 MiB block cache,
// so the growth of resident memory is the roll-ups' own plus that cache).
//
//   fleetmq-health-bench --dir DIR [--devices 1000000] [--groups 1000] [--recover-only]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/clock.h"
#include "common/log.h"
#include "mgmt/health/alerts.h"
#include "mgmt/health/health_feature.h"
#include "mgmt/health/rollup.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace {

using Steady = std::chrono::steady_clock;
using namespace fmq;
using health::Json;

double Secs(Steady::time_point a, Steady::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Resident set size in MB (/proc/self/statm).
double RssMb() {
  long pages = 0, rss = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
    std::fclose(f);
  }
  return static_cast<double>(rss) * 4096.0 / 1e6;
}

uint64_t Counter(const health::HealthFeature& f, std::string_view name) {
  uint64_t v = 0;
  f.Counters([&](const char* n, uint64_t x) {
    if (name == n) v = x;
  });
  return v;
}

fb::DeviceT Device(long i, long groups, long group_offset = 0) {
  fb::DeviceT d;
  d.device_id = "dev-" + std::to_string(i);
  d.tenant_id = "bench";
  d.serial_number = "sn-" + std::to_string(i);
  d.model_id = "m-" + std::to_string(i % 10);
  d.firmware_version = "fw-" + std::to_string(i % 5);
  d.group_ids = {"g-" + std::to_string((i + group_offset) % groups)};
  d.status = fb::DeviceStatus::Active;
  return d;
}

// Times `fn` over `n` calls: µs per call.
template <typename F>
double PerCallUs(int n, F&& fn) {
  const auto a = Steady::now();
  for (int i = 0; i < n; ++i) fn();
  return Secs(a, Steady::now()) * 1e6 / n;
}

// Two summaries agree: counts exactly, values within 1e-9 relative (sums of
// doubles added and removed in another order differ in their last bits).
bool Same(const Json& a, const Json& b) {
  if (a.is_number_float() || b.is_number_float()) {
    if (!a.is_number() || !b.is_number()) return false;
    const double x = a.get<double>(), y = b.get<double>();
    return std::abs(x - y) <= 1e-9 * std::max(1.0, std::max(std::abs(x), std::abs(y)));
  }
  if (a.is_object() && b.is_object()) {
    if (a.size() != b.size()) return false;
    for (auto it = a.begin(); it != a.end(); ++it) {
      auto o = b.find(it.key());
      if (o == b.end() || !Same(*it, *o)) {
        std::fprintf(stderr, "differs at %s: %s vs %s\n", it.key().c_str(), it->dump().c_str(),
                     o == b.end() ? "none" : o->dump().c_str());
        return false;
      }
    }
    return true;
  }
  return a == b;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  long devices = 1'000'000, groups = 1000;
  bool recover_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else if (a == "--devices" && i + 1 < argc) {
      devices = std::atol(argv[++i]);
    } else if (a == "--groups" && i + 1 < argc) {
      groups = std::atol(argv[++i]);
    } else if (a == "--recover-only") {
      recover_only = true;
    } else {
      std::fprintf(stderr,
                   "usage: fleetmq-health-bench --dir DIR [--devices 1000000] [--groups 1000] [--recover-only]\n");
      return 2;
    }
  }
  if (dir.empty() || devices < 10'000 || groups < 2) {
    std::fprintf(stderr, "--dir is required; --devices at least 10000, --groups at least 2\n");
    return 2;
  }
  SetLogLevel(LogLevel::kWarning);
  storage::RocksOptions ro;
  if (recover_only) ro.block_cache_bytes = 8u << 20;  // so that the growth measured is the roll-ups'
  auto kv = storage::OpenRocksKvStore(dir, ro);
  if (!kv.ok()) {
    std::fprintf(stderr, "%s\n", std::string(kv.status().message()).c_str());
    return 1;
  }
  FakeClock clock;
  health::Options ho;
  ho.min_interval_ms = 0;
  if (recover_only) {
    const double before = RssMb();
    const auto a = Steady::now();
    health::HealthFeature f(kv->get(), &clock, ho);
    if (!f.Recover().ok()) return 1;
    const Json j = f.rollups().Summary("bench", "tenant", clock.WallMs(), 600, {});
    std::printf(
        "{\"phase\":\"recover-only\",\"devices\":%lld,\"reporting\":%lld,\"scopes\":%llu,\"s\":%.2f,"
        "\"rss_mb_growth\":%.1f}\n",
        static_cast<long long>(j["devices"].get<int64_t>()), static_cast<long long>(j["reporting"].get<int64_t>()),
        static_cast<unsigned long long>(f.rollups().stats().scopes), Secs(a, Steady::now()), RssMb() - before);
    return 0;
  }
  auto f = std::make_unique<health::HealthFeature>(kv->get(), &clock, ho);
  storage::Registry reg(kv->get());
  reg.SetObserver(f.get());
  const auto t = storage::TenantId::FromAuthenticated("bench");
  const std::string tenant = t.str();
  const double rss0 = RssMb();

  // Register (the roll-ups count members as each batch is written).
  auto a = Steady::now();
  {
    storage::WriteBatch b;
    fb::TenantT tr;
    tr.tenant_id = tenant;
    reg.PutTenant(t, tr, &b);
    for (long i = 0; i < devices; ++i) {
      if (!reg.PutDevice(t, Device(i, groups), &b).ok()) return 1;
      if (b.ops().size() >= 20'000) {
        if (!reg.Commit(b, false).ok()) return 1;
        b.Clear();
      }
    }
    if (!reg.Commit(b, true).ok()) return 1;
  }
  std::printf("{\"phase\":\"register\",\"devices\":%ld,\"s\":%.2f}\n", devices, Secs(a, Steady::now()));

  // One report per device, spread over the last 20 minutes of the fake clock.
  mgmt::Output out;
  a = Steady::now();
  for (long i = 0; i < devices; ++i) {
    if (i % (devices / 20) == 0) clock.Advance(60'000);
    mgmt::DeviceMessage m;
    m.tenant = tenant;
    m.device_id = "dev-" + std::to_string(i);
    m.topic = "health/report";
    m.body = Json{{"uptime_s", 3600 + i % 7200},
                  {"cpu_pct", static_cast<double>(i % 97)},
                  {"mem_pct", 30.0 + static_cast<double>(i % 41)},
                  {"storage_pct", 50.0 + static_cast<double>(i % 13)},
                  {"battery_pct", static_cast<double>(i % 101)},
                  {"temperature_c", 20.0 + static_cast<double>(i % 300) / 10.0},
                  {"rssi_dbm", -40 - static_cast<int>(i % 60)},
                  {"errors", i % 3},
                  {"metrics", {{"queue_depth", i % 17}}}};
    if (i == 0) {
      if (const std::string why = f->Validate(m.topic, m.body); !why.empty()) {
        std::fprintf(stderr, "report refused: %s\n", why.c_str());
        return 1;
      }
    }
    f->OnDeviceMessage(m);
    f->OnDisconnected(tenant, m.device_id);  // drops the report budget: this is not what is measured
    if ((i + 1) % 10'000 == 0 && !f->Commit(&out).ok()) return 1;
    out.sends.clear();
  }
  if (!f->Commit(&out).ok()) return 1;
  const double report_s = Secs(a, Steady::now());
  std::printf(
      "{\"phase\":\"report\",\"reports\":%ld,\"s\":%.2f,\"reports_per_s\":%.0f,\"scopes\":%llu,"
      "\"rss_mb_registry_and_rollups\":%.1f}\n",
      devices, report_s, static_cast<double>(devices) / report_s,
      static_cast<unsigned long long>(f->rollups().stats().scopes), RssMb() - rss0);

  const int64_t now = clock.WallMs();
  const Json whole = f->rollups().Summary(tenant, "tenant", now, 600, {});
  if (whole["devices"] != devices || whole["reporting"] != devices) {
    std::fprintf(stderr, "summary disagrees: %s\n", whole.dump().c_str());
    return 1;
  }
  const double tenant_us = PerCallUs(200, [&] { (void)f->rollups().Summary(tenant, "tenant", now, 600, {}); });
  const double group_us = PerCallUs(200, [&] { (void)f->rollups().Summary(tenant, "group:g-7", now, 600, {}); });
  const double by_us = PerCallUs(50, [&] { (void)f->rollups().Breakdown(tenant, "group", 100); });
  std::printf(
      "{\"phase\":\"summary\",\"tenant_us\":%.0f,\"group_us\":%.0f,\"by_group_us\":%.0f,\"silent_600s\":%lld,"
      "\"battery_p50\":%.1f}\n",
      tenant_us, group_us, by_us, static_cast<long long>(whole["silent"]["devices"].get<int64_t>()),
      whole["metrics"]["battery_pct"]["p50"].get<double>());

  // Move 10,000 devices to the next group.
  a = Steady::now();
  {
    storage::WriteBatch b;
    for (long i = 0; i < 10'000; ++i) {
      if (!reg.PutDevice(t, Device(i, groups, 1), &b).ok()) return 1;
    }
    if (!reg.Commit(b, true).ok()) return 1;
    if (!f->Commit(&out).ok()) return 1;
  }
  const double move_s = Secs(a, Steady::now());
  std::printf("{\"phase\":\"move\",\"devices\":10000,\"s\":%.3f,\"moves_per_s\":%.0f}\n", move_s, 10'000 / move_s);

  // What the broker observes (health/link.h): every device connects, reports
  // its counters a minute later and disconnects a minute after that, each
  // pass over the fleet in its own turns (a record read from the store,
  // changed and written per event, as in a broker).
  {
    const uint64_t written0 = Counter(*f, "health/bytes_written");
    using K = health::LinkEvent::Kind;
    LinkCounters d;
    d.packets_in = d.packets_out = 30;
    d.publish_in = d.publish_out = 10;
    d.bytes_in = 4000;
    d.bytes_out = 900;
    a = Steady::now();
    for (K k : {K::kConnected, K::kCounters, K::kDisconnected}) {
      clock.Advance(60'000);
      const int64_t at = clock.WallMs();
      for (long i = 0; i < devices; ++i) {
        f->OnLink(t, "dev-" + std::to_string(i), {k, at, d, k == K::kDisconnected ? "keepalive_timeout" : "", ""});
        if ((i + 1) % 10'000 == 0 && !f->Commit(&out).ok()) return 1;
      }
      if (!f->Commit(&out).ok()) return 1;
    }
    const double link_s = Secs(a, Steady::now());
    const uint64_t written = Counter(*f, "health/bytes_written") - written0;
    const int64_t at = clock.WallMs();
    long probe = 0;
    const double get_us = PerCallUs(2000, [&] {
      auto r = f->Link(t, "dev-" + std::to_string((probe++ * 7919) % devices));
      if (r.ok()) (void)r->ToJson(at, false);
    });
    auto one = f->Link(t, "dev-1");
    if (!one.ok() || one->connects() != 1 || one->totals().publish_in != 30) return 1;
    std::printf(
        "{\"phase\":\"link\",\"events\":%ld,\"s\":%.2f,\"events_per_s\":%.0f,\"bytes_per_event\":%.0f,"
        "\"get_us\":%.1f,\"uptime_24h\":%.4f}\n",
        3 * devices, link_s, 3.0 * static_cast<double>(devices) / link_s,
        static_cast<double>(written) / (3.0 * static_cast<double>(devices)), get_us,
        one->Uptime(at, 24 * 3'600'000LL, false));
  }

  // A restart: rebuilt from the store.
  const Json before = f->rollups().Summary(tenant, "tenant", now, 600, {});
  const Json before_g = f->rollups().Summary(tenant, "group:g-1", now, 600, {});
  f.reset();
  const double rss1 = RssMb();
  a = Steady::now();
  health::HealthFeature again(kv->get(), &clock, ho);
  if (!again.Recover().ok()) return 1;
  const double recover_s = Secs(a, Steady::now());
  const bool same = Same(again.rollups().Summary(tenant, "tenant", now, 600, {}), before) &&
                    Same(again.rollups().Summary(tenant, "group:g-1", now, 600, {}), before_g);
  std::printf("{\"phase\":\"recover\",\"devices\":%ld,\"s\":%.2f,\"same_answers\":%s,\"rss_mb_delta\":%.1f}\n", devices,
              recover_s, same ? "true" : "false", RssMb() - rss1);
  if (!same) return 1;

  // Alerts at fleet scale: an offline rule over the whole tenant while no
  // device is connected (what a site outage, or a restart, looks like):
  // every device's window armed, then every alert raised (each one a
  // record, an audit entry and an event, 10,000 per turn, each turn one
  // synced commit), then every device back (every alert cleared).
  health::AlertFeature alerts(kv->get(), &reg, &clock, nullptr);
  if (!alerts.Recover().ok()) return 1;
  const double rss2 = RssMb();
  a = Steady::now();
  {
    health::AlertRule r;
    if (!health::AlertRule::FromJson(Json{{"rule_id", "gone"}, {"metric", "offline"}, {"for_s", 60}}, &r).empty()) {
      return 1;
    }
    storage::WriteBatch b;
    std::vector<std::function<void()>> done;
    if (!alerts.CreateRule(t, r, &b, &done).ok() || !reg.Commit(b, true).ok()) return 1;
    for (auto& fn : done) fn();
  }
  const double arm_s = Secs(a, Steady::now());
  const double rss_armed = RssMb();
  clock.Advance(61'000);
  uint64_t events = 0, turns = 0;
  a = Steady::now();
  for (;;) {
    const int64_t next = alerts.Pump();
    mgmt::Output o;
    if (!alerts.Commit(&o).ok()) return 1;
    events += o.events.size();
    ++turns;
    if (next > clock.WallMs() + 1) break;  // now + 1: the turn's budget was spent, more is due
  }
  const double raise_s = Secs(a, Steady::now());
  const double rss_raised = RssMb();
  a = Steady::now();
  for (long i = 0; i < devices; ++i) {
    alerts.OnConnected(tenant, "dev-" + std::to_string(i));
    if ((i + 1) % 10'000 == 0) {
      mgmt::Output o;
      if (!alerts.Commit(&o).ok()) return 1;
      events += o.events.size();
    }
  }
  mgmt::Output last;
  if (!alerts.Commit(&last).ok()) return 1;
  events += last.events.size();
  const double clear_s = Secs(a, Steady::now());
  std::printf(
      "{\"phase\":\"alerts\",\"devices\":%ld,\"arm_s\":%.2f,\"armed_rss_mb\":%.1f,\"raise_s\":%.2f,"
      "\"raises_per_s\":%.0f,\"turns\":%llu,\"raised_rss_mb\":%.1f,\"clear_s\":%.2f,\"clears_per_s\":%.0f,"
      "\"events\":%llu}\n",
      devices, arm_s, rss_armed - rss2, raise_s, static_cast<double>(devices) / raise_s,
      static_cast<unsigned long long>(turns), rss_raised - rss2, clear_s, static_cast<double>(devices) / clear_s,
      static_cast<unsigned long long>(events));
  return events == static_cast<uint64_t>(2 * devices) ? 0 : 1;
}

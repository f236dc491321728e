// fleetmq-tenant-bench: the management start-up cost with many tenants.
// Creates a PKI with N tenant CAs (unless --skip-fill) and a RocksDB store in
// DIR, then times admin::Service::Init twice: cold (no CRL on disk: every
// tenant's CRL is signed) and warm (a restart: CRLs still current are read
// and published, none signed). Prints one JSON line.
//   fleetmq-tenant-bench --dir DIR [--tenants 10000] [--skip-fill]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/clock.h"
#include "common/log.h"
#include "mgmt/admin/service.h"
#include "mgmt/pki/pki_dir.h"
#include "storage/kv_store.h"

namespace {

using Steady = std::chrono::steady_clock;

double Ms(Steady::time_point a, Steady::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  long tenants = 10'000;
  bool fill = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc)
      dir = argv[++i];
    else if (a == "--tenants" && i + 1 < argc)
      tenants = std::atol(argv[++i]);
    else if (a == "--skip-fill")
      fill = false;
    else {
      std::fprintf(stderr, "usage: fleetmq-tenant-bench --dir DIR [--tenants N] [--skip-fill]\n");
      return 2;
    }
  }
  if (dir.empty() || tenants < 1) return 2;
  fmq::SetLogLevel(fmq::LogLevel::kWarning);
  fmq::SystemClock clock;
  const std::string pki = dir + "/pki";
  double fill_ms = 0;
  if (fill) {
    const auto t0 = Steady::now();
    if (auto f = fmq::pki::EnsurePki(pki, "t-0", "localhost", clock.WallMs()); !f.ok()) {
      std::fprintf(stderr, "pki: %s\n", std::string(f.status().message()).c_str());
      return 1;
    }
    for (long n = 1; n < tenants; ++n) {
      if (auto ca = fmq::pki::EnsureTenantCa(pki, "t-" + std::to_string(n), clock.WallMs()); !ca.ok()) {
        std::fprintf(stderr, "tenant CA: %s\n", std::string(ca.status().message()).c_str());
        return 1;
      }
    }
    fill_ms = Ms(t0, Steady::now());
  }
  auto kv = fmq::storage::OpenRocksKvStore(dir + "/db");
  if (!kv.ok()) {
    std::fprintf(stderr, "%s\n", std::string(kv.status().message()).c_str());
    return 1;
  }
  double init_ms[2];
  size_t published[2];
  for (int run = 0; run < 2; ++run) {
    fmq::admin::ServiceOptions o;
    o.pki_dir = pki;
    fmq::admin::Service svc(kv->get(), &clock, o);
    fmq::admin::Effects fx;
    const auto t0 = Steady::now();
    if (absl::Status s = svc.Init(&fx); !s.ok()) {
      std::fprintf(stderr, "init: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    init_ms[run] = Ms(t0, Steady::now());
    published[run] = fx.publishes.size();
  }
  std::printf(
      "{\"tenants\":%ld,\"create_cas_ms\":%.0f,\"init_cold_ms\":%.0f,\"init_warm_ms\":%.0f,"
      "\"crls_published\":[%zu,%zu]}\n",
      tenants, fill_ms, init_ms[0], init_ms[1], published[0], published[1]);
  return 0;
}

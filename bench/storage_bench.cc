// fleetmq-storage-bench: fills a RocksDB data dir with a device registry
// (N devices in G groups, with every index) and S persistent MQTT sessions,
// then measures what the storage issue asks for: the time to read every
// session back into a broker (the start-up cost), and filtered registry
// queries (group + firmware, first page). Prints one JSON line.
//   fleetmq-storage-bench --dir DIR [--devices 1000000] [--groups 1000]
//                         [--sessions 100000] [--skip-fill]
// The broker binary can then be started on DIR's parent to time a real
// start-up: fleetmq --data_dir=PARENT (the store lives in PARENT/db).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "broker/core/broker.h"
#include "broker/store/broker_store.h"
#include "common/log.h"
#include "storage/registry.h"

namespace {

using namespace fmq;
using Steady = std::chrono::steady_clock;

double Ms(Steady::time_point a, Steady::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

const char* kFirmware[] = {"1.0.0", "1.1.0", "1.2.0", "2.0.0", "2.1.0"};

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  long devices = 1'000'000, groups = 1000, sessions = 100'000;
  bool fill = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) std::exit(2);
      return argv[++i];
    };
    if (a == "--dir")
      dir = next();
    else if (a == "--devices")
      devices = std::atol(next());
    else if (a == "--groups")
      groups = std::atol(next());
    else if (a == "--sessions")
      sessions = std::atol(next());
    else if (a == "--skip-fill")
      fill = false;
    else {
      std::fprintf(stderr,
                   "usage: fleetmq-storage-bench --dir DIR [--devices N] [--groups G] [--sessions S] [--skip-fill]\n");
      return 2;
    }
  }
  if (dir.empty() || groups < 1) return 2;
  SetLogLevel(LogLevel::kWarning);
  auto t = storage::TenantId::FromAuthenticated("bench");
  double fill_ms = 0;
  {
    auto kv = storage::OpenRocksKvStore(dir);
    if (!kv.ok()) {
      std::fprintf(stderr, "%s\n", std::string(kv.status().message()).c_str());
      return 1;
    }
    if (fill) {
      auto t0 = Steady::now();
      storage::Registry reg(kv->get());
      storage::WriteBatch b;
      for (long i = 0; i < devices; ++i) {
        fb::DeviceT d;
        char id[32];
        std::snprintf(id, sizeof id, "dev-%07ld", i);
        d.device_id = id;
        d.tenant_id = "bench";
        d.serial_number = std::string("SN") + id;
        d.model_id = "model-" + std::to_string(i % 10);
        d.group_ids = {"g-" + std::to_string(i % groups)};
        d.firmware_version = kFirmware[(i / groups) % 5];
        d.status = fb::DeviceStatus::Active;
        if (!reg.PutDevice(t, d, &b).ok()) return 1;
        if (b.ops().size() >= 6000) {
          if (!reg.Commit(b, false).ok()) return 1;
          b.Clear();
        }
      }
      if (!b.empty() && !reg.Commit(b, false).ok()) return 1;
      // Persistent sessions, written the way the broker writes them.
      SystemClock clock;
      BrokerStore store(&clock);
      WriterOptions wo;
      wo.mode = SyncMode::kNone;
      StorageWriter writer(kv->get(), wo, nullptr);
      store.set_writer(&writer);
      for (long i = 0; i < sessions; ++i) {
        Session s;
        s.client_id = "dev-" + std::to_string(i);
        s.expiry_s = 0xFFFFFFFF;
        s.subscriptions["dev/" + s.client_id + "/cmd"] = SubOptions{1, false, false, 0, 0};
        store.SaveSession(s);
        if (i % 1000 == 999) store.FlushIfDirty();
      }
      store.FlushIfDirty();
      writer.Drain();
      fill_ms = Ms(t0, Steady::now());
    }
  }
  // Reopen: what the broker does at start-up.
  auto t1 = Steady::now();
  auto kv = storage::OpenRocksKvStore(dir);
  if (!kv.ok()) return 1;
  auto t2 = Steady::now();
  SystemClock clock;
  BrokerStore store(&clock);
  BrokerOptions bo;
  bo.sys_interval_s = 0;
  Broker broker(bo, &clock, nullptr, &store);
  LoadStats st;
  if (!store.Load(**kv, broker, &st).ok()) return 1;
  auto t3 = Steady::now();
  // Queries: group + firmware, first page of 100, over several groups.
  storage::Registry reg(kv->get());
  std::vector<double> q;
  size_t found = 0;
  for (int k = 0; k < 20; ++k) {
    storage::DeviceFilter f;
    f.group_id = "g-" + std::to_string((k * 37) % groups);
    f.firmware_version = kFirmware[k % 5];
    storage::Page<fb::DeviceT> page;
    auto a = Steady::now();
    if (!reg.ListDevices(t, f, "", 100, &page).ok()) return 1;
    q.push_back(Ms(a, Steady::now()));
    found += page.items.size();
  }
  std::sort(q.begin(), q.end());
  std::printf(
      "{\"devices\":%ld,\"groups\":%ld,\"sessions\":%ld,\"fill_ms\":%.0f,\"open_ms\":%.1f,"
      "\"load_sessions_ms\":%.1f,\"sessions_loaded\":%llu,\"query_first_page_ms_median\":%.2f,"
      "\"query_first_page_ms_max\":%.2f,\"query_rows\":%zu}\n",
      devices, groups, sessions, fill_ms, Ms(t1, t2), Ms(t2, t3), static_cast<unsigned long long>(st.sessions),
      q[q.size() / 2], q.back(), found);
  return 0;
}

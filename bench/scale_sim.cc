// fleetmq-scale-sim: the protocol engine at a scale this machine's 20,000
// file descriptors cannot reach over sockets. N connections are created
// in-process over a null transport with a fake clock; each CONNECTs (v5,
// keep alive K) and subscribes to its own topic, as devices do. Then:
//   - memory: RSS growth per connection (engine only: Connection, Session,
//     subscription; the socket layer adds a uv_tcp_t per connection), after
//     connecting and again after the heartbeat rounds (steady state);
//   - heartbeats: every connection sends PINGREQ each round while the clock
//     advances through several keep-alive periods; cost per PINGREQ and the
//     deadline wheel's cost per tick, with zero false timeouts;
//   - offline detection: half the devices go silent; all of them and only
//     them are closed within 1.5 x keep alive.
// Prints one JSON line.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "broker/core/broker.h"
#include "broker/mqtt/codec.h"
#include "common/log.h"

namespace {

using namespace fmq;
using Steady = std::chrono::steady_clock;

class NullTransport final : public Transport {
 public:
  void RequestFlush() override {}
  void Close() override {}
  size_t Backlog() const override { return 0; }
};

long RssBytes() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, rss = 0;
  f >> pages >> rss;
  return rss * sysconf(_SC_PAGESIZE);
}

double Secs(Steady::time_point a, Steady::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

int main(int argc, char** argv) {
  long n = 1'000'000;
  int keepalive = 60, server_keepalive = -1;  // -1: the broker's default
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--connections" && i + 1 < argc)
      n = std::atol(argv[++i]);
    else if (a == "--keepalive" && i + 1 < argc)
      keepalive = std::atoi(argv[++i]);
    else if (a == "--server-keepalive" && i + 1 < argc)
      server_keepalive = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: fleetmq-scale-sim [--connections N] [--keepalive S] [--server-keepalive S]\n");
      return 2;
    }
  }
  SetLogLevel(LogLevel::kError);
  FakeClock clock;
  BrokerOptions opts;
  opts.sys_interval_s = 0;
  if (server_keepalive >= 0) opts.server_keepalive = static_cast<uint16_t>(server_keepalive);
  // The devices ask for --keepalive and use what the broker grants (v5
  // Server Keep Alive), as the contract asks: pings and the offline check
  // follow the granted value.
  const int asked = keepalive;
  if (opts.server_keepalive != 0 && keepalive > opts.server_keepalive) keepalive = opts.server_keepalive;
  Broker broker(opts, &clock, nullptr);
  NullTransport transport;
  std::vector<std::unique_ptr<Connection>> conns;
  conns.reserve(static_cast<size_t>(n));

  const long rss0 = RssBytes();
  auto t0 = Steady::now();
  std::string bytes;
  for (long i = 0; i < n; ++i) {
    auto c = std::make_unique<Connection>(&broker, &transport, static_cast<uint64_t>(i + 1), "127.0.0.1:40000");
    broker.Accept(c.get());
    bytes.clear();
    mqtt::Connect ck;
    ck.version = mqtt::Version::kV5;
    ck.client_id = "dev-" + std::to_string(i);
    ck.keep_alive = static_cast<uint16_t>(asked);
    mqtt::Encode(ck, mqtt::Version::kV5, &bytes);
    mqtt::Subscribe s;
    s.packet_id = 1;
    s.entries.push_back({"dev/" + std::to_string(i) + "/cmd", 1});
    mqtt::Encode(s, mqtt::Version::kV5, &bytes);
    c->OnBytes(bytes);
    c->TakeOutput();
    conns.push_back(std::move(c));
  }
  const double connect_s = Secs(t0, Steady::now());
  const long rss1 = RssBytes();

  // Heartbeats: 4 keep-alive periods, everyone pings once per period.
  const std::string ping("\xC0\x00", 2);
  double ping_s = 0, tick_s = 0;
  uint64_t pings = 0, ticks = 0;
  for (int round = 0; round < 4; ++round) {
    auto a = Steady::now();
    for (auto& c : conns) {
      c->OnBytes(ping);
      c->TakeOutput();
    }
    ping_s += Secs(a, Steady::now());
    pings += static_cast<uint64_t>(n);
    for (int step = 0; step < keepalive * 4; ++step) {  // 250 ms ticks
      clock.Advance(250);
      auto b = Steady::now();
      broker.Tick();
      tick_s += Secs(b, Steady::now());
      ++ticks;
    }
  }
  const uint64_t false_timeouts = broker.stats().keepalive_timeouts;
  const long rss2 = RssBytes();  // steady state: after 4 keep-alive periods

  // Offline detection: odd devices stop; even ones keep pinging. Their last
  // packet was the PINGREQ of the last round, one keep-alive period ago.
  const int64_t silent_since = clock.NowMs() - int64_t{keepalive} * 1000;
  int64_t detected_all_ms = -1;
  for (int step = 0; step < keepalive * 8 && detected_all_ms < 0; ++step) {
    clock.Advance(250);
    if (step % (keepalive * 2) == 0) {
      for (long i = 0; i < n; i += 2) {
        conns[static_cast<size_t>(i)]->OnBytes(ping);
        conns[static_cast<size_t>(i)]->TakeOutput();
      }
    }
    broker.Tick();
    if (broker.stats().keepalive_timeouts - false_timeouts >= static_cast<uint64_t>(n / 2)) {
      detected_all_ms = clock.NowMs() - silent_since;
    }
  }
  const uint64_t offline = broker.stats().keepalive_timeouts - false_timeouts;
  std::printf(
      "{\"connections\":%ld,\"keepalive_s\":%d,\"connect_subscribe_per_s\":%.0f,"
      "\"rss_bytes_per_connection\":%.0f,\"rss_bytes_per_connection_after_heartbeats\":%.0f,\"pingreq_ns\":%.1f,"
      "\"pingreq_per_s\":%.0f,"
      "\"tick_us_avg\":%.1f,\"false_timeouts\":%llu,\"went_offline\":%llu,\"offline_expected\":%ld,"
      "\"all_offline_detected_ms_after_last_packet\":%lld,\"bound_ms\":%d,\"timers\":%zu}\n",
      n, keepalive, static_cast<double>(n) / connect_s, static_cast<double>(rss1 - rss0) / static_cast<double>(n),
      static_cast<double>(rss2 - rss0) / static_cast<double>(n), ping_s * 1e9 / static_cast<double>(pings),
      static_cast<double>(pings) / ping_s, tick_s * 1e6 / static_cast<double>(ticks),
      static_cast<unsigned long long>(false_timeouts), static_cast<unsigned long long>(offline), n / 2,
      static_cast<long long>(detected_all_ms), keepalive * 1500, broker.timer_count());
  for (auto& c : conns) c->OnTransportClosed();
  return 0;
}

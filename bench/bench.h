// What the scenarios of fleetmq-bench share: the options, the clocks and
// process probes, and the libuv helpers for loopback clients. Each scenario
// runs on its own single libuv loop (one thread).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace fmq::bench {

struct Options {
  std::string host = "127.0.0.1";
  int port = 1883;
  std::string scenario = "fanin";
  int pubs = 4;
  int subs = 1;
  int qos = 0;
  int size = 64;
  int window = 100;
  double duration = 10;
  double warmup = 1;
  int version = 5;
  int broker_pid = 0;
  bool persistent = false;    // subscribers hold durable sessions: every message is stored
  double rate = 0;            // fanin/fanout: fixed total messages/s (0 = closed loop)
  int conns = 1000;           // conn: connections to hold; tls: parallel loops
  bool subscribe = false;     // conn: each connection subscribes to its own topic
  bool resume = false;        // tls: resumed handshakes (session tickets)
  std::string ca, cert, key;  // tls: trust and client credentials (PEM files)
};

// The q-quantile of sorted samples (0 when there are none).
inline unsigned Percentile(const std::vector<uint32_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1, static_cast<size_t>(q * static_cast<double>(sorted.size())))];
}

// Resident set of a process, bytes (0 when unknown).
inline int64_t RssBytes(int pid) {
  if (pid <= 0) return 0;
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return 0;
}

// Binds `tcp` (created with uv_tcp_init_ex) to a loopback source address,
// leaving the port to connect() (IP_BIND_ADDRESS_NO_PORT): ports are then
// shared across destinations, so back-to-back runs are not slowed by the
// previous run's TIME_WAIT sockets holding bound ports.
inline void BindSource(uv_tcp_t* tcp, int i) {
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(tcp), &fd) == 0) {
    const int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  }
  sockaddr_in src;
  uv_ip4_addr(("127.0.0." + std::to_string(1 + i % 8)).c_str(), 0, &src);
  uv_tcp_bind(tcp, reinterpret_cast<sockaddr*>(&src), 0);
}

inline int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

inline double BrokerCpuSeconds(int pid) {
  if (pid <= 0) return 0;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t rp = s.rfind(')');
  if (rp == std::string::npos) return 0;
  std::vector<std::string> fields;
  size_t i = rp + 2;
  while (i < s.size()) {
    size_t j = s.find(' ', i);
    fields.push_back(s.substr(i, j - i));
    if (j == std::string::npos) break;
    i = j + 1;
  }
  if (fields.size() < 13) return 0;
  return (std::stod(fields[11]) + std::stod(fields[12])) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Starts reading a connection (its handle's data is a T with a `bench`
// owning one read buffer for the whole loop: reads never overlap).
template <class T>
void StartReading(uv_tcp_t* tcp, uv_read_cb on_read) {
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(tcp),
      [](uv_handle_t* h, size_t, uv_buf_t* b) { *b = static_cast<T*>(h->data)->bench->ReadBuffer(); }, on_read);
}

// Closes every handle of `loop` and the loop itself, so a scenario (and
// LeakSanitizer) ends clean.
inline void CloseLoop(uv_loop_t* loop) {
  uv_walk(
      loop,
      [](uv_handle_t* h, void*) {
        if (!uv_is_closing(h)) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
}

// Writes `bytes` to `tcp`, owning them until the write completes (a write
// that cannot start is dropped: the read side reports the error).
inline void WriteOwned(uv_tcp_t* tcp, std::string bytes) {
  if (bytes.empty()) return;
  struct Req {
    uv_write_t w;
    std::string data;
  };
  auto* r = new Req;
  r->data = std::move(bytes);
  uv_buf_t b = uv_buf_init(r->data.data(), static_cast<unsigned>(r->data.size()));
  r->w.data = r;
  if (uv_write(&r->w, reinterpret_cast<uv_stream_t*>(tcp), &b, 1,
               [](uv_write_t* w, int) { delete static_cast<Req*>(w->data); }) != 0) {
    delete r;
  }
}

// The TLS scenarios (tls_bench.cc): repeated handshakes, and the reconnect
// storm after a broker restart.
int RunTls(const Options& o);
int RunStorm(const Options& o);

}  // namespace fmq::bench

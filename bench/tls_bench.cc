// fleetmq-bench's TLS scenarios (see bench.cc for the list): `tls`, one
// handshake after another on --conns parallel loops, and `storm`, --conns
// connections held, dropped by a broker restart and all brought back. One
// libuv loop; mbedTLS client sessions over TlsClientConfig.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "broker/mqtt/codec.h"
#include "broker/mqtt/framer.h"
#include "broker/tls/tls.h"
#include "broker/tls/tls_client.h"
#include "mgmt/pki/pki.h"

namespace fmq::bench {
namespace {

// A new TCP connection from a loopback source (`source` spreads them) to
// --host:--port; `tcp->data` and `req->data` are set by the caller.
void ConnectTcp(uv_loop_t* loop, const Options& o, uv_tcp_t* tcp, uv_connect_t* req, int source, uv_connect_cb cb) {
  uv_tcp_init_ex(loop, tcp, AF_INET);
  uv_tcp_nodelay(tcp, 1);
  BindSource(tcp, source);
  sockaddr_in addr;
  uv_ip4_addr(o.host.c_str(), o.port, &addr);
  uv_tcp_connect(req, tcp, reinterpret_cast<sockaddr*>(&addr), cb);
}

// Queues an MQTT 5 CONNECT (sent once the handshake is done) and starts
// the handshake with the ClientHello.
void StartMqtt(tls::TlsSession* tls, const std::string& client_id) {
  mqtt::Connect ck;
  ck.version = mqtt::Version::kV5;
  ck.client_id = client_id;
  ck.keep_alive = 60;
  std::string plain;
  mqtt::Encode(ck, ck.version, &plain);
  tls->Write(plain);
  tls->OnCiphertext("");
}

// tls: --conns loops, each connecting, handshaking, sending CONNECT and
// closing at CONNACK, then starting over.
class TlsBench {
 public:
  explicit TlsBench(Options o) : o_(std::move(o)) { uv_loop_init(&loop_); }
  uv_buf_t ReadBuffer() { return uv_buf_init(read_buf_, sizeof read_buf_); }

  int Run() {
    if (!LoadCredentials()) return 1;
    mbedtls_ssl_session_init(&saved_);
    uv_timer_init(&loop_, &timer_);
    timer_.data = this;
    uv_timer_start(&timer_, OnTimer, 100, 100);
    start_ns_ = NowNs();
    for (int i = 0; i < o_.conns; ++i) Start(new Conn(this, i));
    uv_run(&loop_, UV_RUN_DEFAULT);
    Report();
    CloseLoop(&loop_);
    mbedtls_ssl_session_free(&saved_);
    return failures_ == 0 ? 0 : 1;
  }

 private:
  struct Conn {
    Conn(TlsBench* b, int i) : bench(b), index(i) {}
    TlsBench* bench;
    int index;
    uv_tcp_t tcp;
    uv_connect_t req;
    std::unique_ptr<tls::TlsSession> tls;
    mqtt::Framer framer{1u << 20};
    int64_t t0 = 0;
    bool done = false;
  };

  bool LoadCredentials() {
    auto c = tls::TlsClientConfig::FromFiles(o_.ca, o_.cert, o_.key, &rng_);
    if (!c.ok()) {
      std::fprintf(stderr, "fleetmq-bench: tls: %s\n", std::string(c.status().message()).c_str());
      return false;
    }
    client_ = std::move(*c);
    return true;
  }

  void Start(Conn* c) {
    if (stopping_) {
      delete c;
      return;
    }
    c->tcp.data = c;
    c->req.data = c;
    c->t0 = NowNs();
    c->done = false;
    c->framer = mqtt::Framer(1u << 20);
    c->tls = std::make_unique<tls::TlsSession>(client_->conf(), "localhost");
    if (o_.resume && have_saved_ && !c->tls->SetSession(&saved_).ok()) have_saved_ = false;
    ConnectTcp(&loop_, o_, &c->tcp, &c->req, next_src_++, OnConnect);
  }

  void Send(Conn* c) { WriteOwned(&c->tcp, c->tls->TakeCiphertext()); }

  static void OnConnect(uv_connect_t* req, int status) {
    auto* c = static_cast<Conn*>(req->data);
    TlsBench* b = c->bench;
    if (status != 0) {
      std::fprintf(stderr, "fleetmq-bench: connect: %s\n", uv_strerror(status));
      std::exit(1);
    }
    StartMqtt(c->tls.get(), "bench-tls-" + std::to_string(c->index));
    b->Send(c);
    StartReading<Conn>(&c->tcp, OnRead);
  }

  static void OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* c = static_cast<Conn*>(s->data);
    TlsBench* b = c->bench;
    if (n < 0) {
      if (!c->done) b->Fail(c, std::string("connection closed before CONNACK: ") + uv_strerror(static_cast<int>(n)));
      return;
    }
    c->tls->OnCiphertext(std::string_view(buf->base, static_cast<size_t>(n)));
    if (c->tls->state() == tls::TlsSession::State::kFailed) {
      b->Fail(c, "handshake: " + c->tls->error());
      return;
    }
    b->Send(c);
    std::string plain = c->tls->TakePlaintext();
    bool connack = false;
    c->framer.Feed(plain, [&](uint8_t first, std::string_view) {
      if (static_cast<mqtt::PacketType>(first >> 4) == mqtt::PacketType::kConnack) connack = true;
      return true;
    });
    if (!connack || c->done) return;
    c->done = true;
    const int64_t took = NowNs() - c->t0;
    if (b->measuring_) {
      ++b->count_;
      b->latencies_.push_back(static_cast<uint32_t>(took / 1000));
    }
    if (b->o_.resume && !b->have_saved_ && c->tls->SaveSession(&b->saved_).ok()) b->have_saved_ = true;
    uv_read_stop(s);
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), [](uv_handle_t* h) {
      auto* cl = static_cast<Conn*>(h->data);
      cl->tls.reset();
      cl->bench->Start(cl);  // the next connection of this loop
    });
  }

  void Fail(Conn* c, const std::string& why) {
    if (failures_++ < 5) std::fprintf(stderr, "\nfleetmq-bench: tls connection %d: %s\n", c->index, why.c_str());
    c->done = true;
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), [](uv_handle_t* h) {
      auto* cl = static_cast<Conn*>(h->data);
      cl->tls.reset();
      if (cl->bench->failures_ > 100) {
        std::fprintf(stderr, "fleetmq-bench: too many failed TLS connections\n");
        std::exit(1);
      }
      cl->bench->Start(cl);
    });
  }

  static void OnTimer(uv_timer_t* t) {
    auto* b = static_cast<TlsBench*>(t->data);
    const double elapsed = static_cast<double>(NowNs() - b->start_ns_) / 1e9;
    if (!b->measuring_ && elapsed >= b->o_.warmup) {
      b->measuring_ = true;
      b->measure_start_ns_ = NowNs();
      b->cpu_start_ = BrokerCpuSeconds(b->o_.broker_pid);
    }
    if (!b->measuring_) return;
    const double m = static_cast<double>(NowNs() - b->measure_start_ns_) / 1e9;
    std::fprintf(stderr, "\r%.1fs handshakes %llu (%.0f/s)   ", m, static_cast<unsigned long long>(b->count_),
                 m > 0 ? b->count_ / m : 0);
    if (m >= b->o_.duration) {
      b->measure_ns_ = NowNs() - b->measure_start_ns_;
      b->cpu_end_ = BrokerCpuSeconds(b->o_.broker_pid);
      b->stopping_ = true;
      uv_stop(&b->loop_);
    }
  }

  void Report() {
    std::fprintf(stderr, "\n");
    std::sort(latencies_.begin(), latencies_.end());
    auto pct = [&](double q) { return Percentile(latencies_, q); };
    const double secs = static_cast<double>(measure_ns_) / 1e9;
    const double cpu = cpu_end_ - cpu_start_;
    std::printf(
        "{\"scenario\":\"tls\",\"resume\":%s,\"conns\":%d,\"seconds\":%.2f,\"handshakes\":%llu,"
        "\"handshakes_per_s\":%.0f,\"p50_us\":%u,\"p99_us\":%u,\"failures\":%llu,"
        "\"broker_cpu_s\":%.3f,\"broker_cpu_us_per_handshake\":%.1f}\n",
        o_.resume ? "true" : "false", o_.conns, secs, static_cast<unsigned long long>(count_),
        static_cast<double>(count_) / secs, pct(0.5), pct(0.99), static_cast<unsigned long long>(failures_), cpu,
        count_ ? cpu * 1e6 / static_cast<double>(count_) : 0.0);
  }

  Options o_;
  uv_loop_t loop_;
  uv_timer_t timer_;
  pki::Rng rng_;
  std::unique_ptr<tls::TlsClientConfig> client_;
  mbedtls_ssl_session saved_;
  bool have_saved_ = false;
  bool measuring_ = false, stopping_ = false;
  int next_src_ = 0;
  uint64_t count_ = 0, failures_ = 0;
  int64_t start_ns_ = 0, measure_start_ns_ = 0, measure_ns_ = 1;
  double cpu_start_ = 0, cpu_end_ = 0;
  std::vector<uint32_t> latencies_;
  char read_buf_[64 * 1024] = {};
};
// storm: --conns connections held open (set up quickly: the first does a
// full handshake, the rest resume its ticket), then, once the broker drops
// them all (the driver kills and restarts it), each comes back: resuming
// the ticket from before the restart with --resume, a full handshake
// without. Refused connects and handshakes are retried after 50 ms, at most
// --window in progress. Reports the seconds from the first drop, and from
// the first reconnect the broker accepted, to the last CONNACK.
class StormBench {
 public:
  explicit StormBench(Options o) : o_(std::move(o)) { uv_loop_init(&loop_); }
  uv_buf_t ReadBuffer() { return uv_buf_init(read_buf_, sizeof read_buf_); }

  int Run() {
    auto c = tls::TlsClientConfig::FromFiles(o_.ca, o_.cert, o_.key, &rng_);
    if (!c.ok()) {
      std::fprintf(stderr, "fleetmq-bench: storm: %s\n", std::string(c.status().message()).c_str());
      return 1;
    }
    client_ = std::move(*c);
    mbedtls_ssl_session_init(&saved_);
    conns_.reserve(static_cast<size_t>(o_.conns));
    for (int i = 0; i < o_.conns; ++i) conns_.push_back(std::make_unique<Conn>(this, i));
    // The first alone: its ticket is what every other connection offers.
    queue_.push_back(0);
    uv_timer_init(&loop_, &timer_);
    timer_.data = this;
    uv_timer_start(&timer_, OnTimer, 10, 10);
    phase_start_ns_ = NowNs();
    rss0_ = RssBytes(o_.broker_pid);
    uv_run(&loop_, UV_RUN_DEFAULT);
    const int rc = Report();
    CloseLoop(&loop_);
    mbedtls_ssl_session_free(&saved_);
    return rc;
  }

 private:
  // storm: kHolding, kWaitingForDrop, kReconnecting, kDone. tlsmem:
  // kHolding, kSettleIdle, kTraffic, kSettleAfter, kDone.
  enum class Phase { kHolding, kWaitingForDrop, kReconnecting, kDone, kSettleIdle, kTraffic, kSettleAfter };
  enum class State { kIdle, kConnecting, kUp };
  struct Conn {
    Conn(StormBench* b, int i) : bench(b), index(i) {}
    StormBench* bench;
    int index;
    State state = State::kIdle;
    uv_tcp_t tcp;
    uv_connect_t req;
    std::unique_ptr<tls::TlsSession> tls;
    mqtt::Framer framer{1u << 20};
    int64_t retry_at_ns = 0;
    bool back = false;                       // reconnected after the drop
    bool echo_sent = false, echoed = false;  // tlsmem
  };

  void Start(Conn* c) {
    c->state = State::kConnecting;
    ++in_progress_;
    c->tcp.data = c;
    c->req.data = c;
    c->framer = mqtt::Framer(1u << 20);
    c->tls = std::make_unique<tls::TlsSession>(client_->conf(), "localhost");
    // While holding, everyone resumes the first ticket (a quick set-up);
    // after the drop, only with --resume.
    const bool offer = have_saved_ && (phase_ == Phase::kHolding || o_.resume);
    if (offer && !c->tls->SetSession(&saved_).ok()) have_saved_ = false;
    ConnectTcp(&loop_, o_, &c->tcp, &c->req, c->index, OnConnect);
  }

  void Send(Conn* c) { WriteOwned(&c->tcp, c->tls->TakeCiphertext()); }

  static void OnConnect(uv_connect_t* req, int status) {
    auto* c = static_cast<Conn*>(req->data);
    StormBench* b = c->bench;
    if (status != 0) {  // the broker is not listening (yet)
      b->Dropped(c);
      return;
    }
    if (b->phase_ == Phase::kReconnecting && b->first_accept_ns_ == 0) b->first_accept_ns_ = NowNs();
    StartMqtt(c->tls.get(), "storm-" + std::to_string(c->index));  // pinged every 9 s (OnTimer)
    b->Send(c);
    StartReading<Conn>(&c->tcp, OnRead);
  }

  static void OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* c = static_cast<Conn*>(s->data);
    StormBench* b = c->bench;
    if (n < 0) {
      b->Dropped(c);
      return;
    }
    c->tls->OnCiphertext(std::string_view(buf->base, static_cast<size_t>(n)));
    if (c->tls->state() == tls::TlsSession::State::kFailed) {
      if (b->handshake_errors_++ < 3) std::fprintf(stderr, "\nfleetmq-bench: storm: %s\n", c->tls->error().c_str());
      b->Dropped(c);
      return;
    }
    b->Send(c);
    if (c->state == State::kUp) {
      std::string plain = c->tls->TakePlaintext();
      if (b->mem_ && c->echo_sent && !c->echoed) {
        bool echo = false;
        c->framer.Feed(plain, [&](uint8_t first, std::string_view) {
          if (static_cast<mqtt::PacketType>(first >> 4) == mqtt::PacketType::kPublish) echo = true;
          return true;
        });
        if (echo) b->Echoed(c);
      }
      return;
    }
    bool connack = false;
    c->framer.Feed(c->tls->TakePlaintext(), [&](uint8_t first, std::string_view body) {
      if (static_cast<mqtt::PacketType>(first >> 4) == mqtt::PacketType::kConnack && body.size() >= 2 && body[1] == 0) {
        connack = true;
      }
      return true;
    });
    if (connack) b->Up(c);
  }

  void Up(Conn* c) {
    c->state = State::kUp;
    --in_progress_;
    if (phase_ == Phase::kHolding) {
      if (!have_saved_ && c->tls->SaveSession(&saved_).ok()) have_saved_ = true;
      if (c->index == 0) {
        for (int i = 1; i < o_.conns; ++i) queue_.push_back(i);
      }
      if (++up_ == o_.conns) {
        hold_s_ = static_cast<double>(NowNs() - phase_start_ns_) / 1e9;
        phase_start_ns_ = NowNs();
        if (mem_) {
          phase_ = Phase::kSettleIdle;
          return;
        }
        phase_ = Phase::kWaitingForDrop;
        std::printf("held %d\n", up_);  // the driver's cue to restart the broker
        std::fflush(stdout);
      }
      return;
    }
    if (phase_ == Phase::kReconnecting && !c->back) {
      c->back = true;
      last_up_ns_ = NowNs();
      if (++back_ == o_.conns) {
        phase_ = Phase::kDone;
        uv_stop(&loop_);
      }
    }
  }

  // tlsmem: each connection subscribes to its own topic and publishes
  // --size bytes there (one record each way through the broker's TLS).
  void SendEcho(Conn* c) {
    c->echo_sent = true;
    ++echo_in_flight_;
    const std::string topic = "tlsmem/" + std::to_string(c->index);
    mqtt::Subscribe sub;
    sub.packet_id = 1;
    sub.entries.push_back({topic, 0});
    const std::string payload(static_cast<size_t>(o_.size), 'x');
    mqtt::Publish pub;
    pub.topic = topic;
    pub.payload = payload;
    std::string plain;
    mqtt::Encode(sub, mqtt::Version::kV5, &plain);
    mqtt::Encode(pub, mqtt::Version::kV5, &plain);
    c->tls->Write(plain);
    Send(c);
  }

  void Echoed(Conn* c) {
    c->echoed = true;
    --echo_in_flight_;
    if (++echoed_ == o_.conns) {
      traffic_s_ = static_cast<double>(NowNs() - phase_start_ns_) / 1e9;
      phase_ = Phase::kSettleAfter;
      phase_start_ns_ = NowNs();
    }
  }

  // The connection closed, or never opened (broker gone or not listening
  // yet, handshake refused or failed): closed here, reconnected after 50 ms.
  void Dropped(Conn* c) {
    if (c->state == State::kUp) {
      --up_;
      if (phase_ == Phase::kWaitingForDrop) {
        phase_ = Phase::kReconnecting;
        first_drop_ns_ = NowNs();
        phase_start_ns_ = first_drop_ns_;
      }
      if (c->back) {  // dropped again after coming back: it must return again
        c->back = false;
        --back_;
      }
    } else {
      --in_progress_;
      ++retries_;
    }
    c->state = State::kIdle;
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&c->tcp));
    uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), [](uv_handle_t* h) {
      auto* cl = static_cast<Conn*>(h->data);
      cl->tls.reset();
      cl->retry_at_ns = NowNs() + 50'000'000;
      cl->bench->queue_.push_back(cl->index);
    });
  }

  static void OnTimer(uv_timer_t* t) {
    auto* b = static_cast<StormBench*>(t->data);
    const int64_t now = NowNs();
    // Connections due, at most --window in progress (the queue is in
    // retry order: everyone waits the same 50 ms).
    while (!b->queue_.empty() && b->in_progress_ < b->o_.window) {
      Conn* c = b->conns_[static_cast<size_t>(b->queue_.front())].get();
      if (c->retry_at_ns > now) break;
      b->queue_.pop_front();
      b->Start(c);
    }
    b->MemoryPhases(now);
    if (now - b->last_ping_ns_ >= 9'000'000'000) {
      // The broker may impose its server keep alive (default 18 s) on
      // these idle clients: ping inside it.
      b->last_ping_ns_ = now;
      for (auto& c : b->conns_) {
        if (c->state != State::kUp) continue;
        c->tls->Write(std::string_view("\xc0\x00", 2));  // PINGREQ
        b->Send(c.get());
      }
    }
    if (now - b->last_print_ns_ >= 1'000'000'000) {
      b->last_print_ns_ = now;
      static const char* kNames[] = {
          "holding", "waiting for the broker to drop them", "reconnecting", "done", "settling", "echoing", "settling"};
      std::fprintf(stderr, "\r%s: up %d, back %d, echoed %d, retries %llu   ", kNames[static_cast<int>(b->phase_)],
                   b->up_, b->back_, b->echoed_, static_cast<unsigned long long>(b->retries_));
    }
    if (static_cast<double>(now - b->phase_start_ns_) / 1e9 > b->o_.duration) {
      std::fprintf(stderr, "\nfleetmq-bench: storm: phase not done within --duration %.0f s\n", b->o_.duration);
      uv_stop(&b->loop_);
    }
  }

  // tlsmem: the broker's resident memory once the connections have been
  // idle --warmup seconds, then the echoes (at most --window in flight),
  // then again --warmup seconds after the last (allocators return freed
  // pages late: jemalloc's dirty-page decay is 10 s).
  void MemoryPhases(int64_t now) {
    const int64_t settled = now - phase_start_ns_, settle = static_cast<int64_t>(o_.warmup * 1e9);
    if (phase_ == Phase::kSettleIdle && settled >= settle) {
      rss_idle_ = RssBytes(o_.broker_pid);
      phase_ = Phase::kTraffic;
      phase_start_ns_ = now;
    }
    while (phase_ == Phase::kTraffic && echo_in_flight_ < o_.window && next_echo_ < o_.conns) {
      SendEcho(conns_[static_cast<size_t>(next_echo_++)].get());
    }
    if (phase_ == Phase::kSettleAfter && settled >= settle) {
      rss_after_ = RssBytes(o_.broker_pid);
      phase_ = Phase::kDone;
      uv_stop(&loop_);
    }
  }

  int Report() {
    std::fprintf(stderr, "\n");
    if (mem_) {
      const bool ok = phase_ == Phase::kDone;
      const double n = o_.conns;
      std::printf(
          "{\"scenario\":\"tlsmem\",\"conns\":%d,\"done\":%s,\"record_bytes\":%d,\"hold_s\":%.2f,"
          "\"traffic_s\":%.2f,\"broker_rss_before\":%lld,\"broker_rss_idle\":%lld,\"broker_rss_after_traffic\":%lld,"
          "\"rss_per_conn_idle\":%.0f,\"rss_per_conn_after_traffic\":%.0f}\n",
          o_.conns, ok ? "true" : "false", o_.size, hold_s_, traffic_s_, static_cast<long long>(rss0_),
          static_cast<long long>(rss_idle_), static_cast<long long>(rss_after_),
          static_cast<double>(rss_idle_ - rss0_) / n, static_cast<double>(rss_after_ - rss0_) / n);
      std::fflush(stdout);
      return ok ? 0 : 1;
    }
    const bool done = phase_ == Phase::kDone;
    const double from_drop = done ? static_cast<double>(last_up_ns_ - first_drop_ns_) / 1e9 : 0;
    const double from_accept = done ? static_cast<double>(last_up_ns_ - first_accept_ns_) / 1e9 : 0;
    std::printf(
        "{\"scenario\":\"storm\",\"resume\":%s,\"conns\":%d,\"done\":%s,\"hold_s\":%.2f,\"back\":%d,"
        "\"seconds_from_drop\":%.3f,\"seconds_from_first_accept\":%.3f,\"reconnects_per_s\":%.0f,"
        "\"retries\":%llu,\"handshake_errors\":%llu}\n",
        o_.resume ? "true" : "false", o_.conns, done ? "true" : "false", hold_s_, back_, from_drop, from_accept,
        from_accept > 0 ? o_.conns / from_accept : 0.0, static_cast<unsigned long long>(retries_),
        static_cast<unsigned long long>(handshake_errors_));
    std::fflush(stdout);
    return done ? 0 : 1;
  }

  Options o_;
  uv_loop_t loop_;
  uv_timer_t timer_;
  pki::Rng rng_;
  std::unique_ptr<tls::TlsClientConfig> client_;
  mbedtls_ssl_session saved_;
  bool have_saved_ = false;
  std::vector<std::unique_ptr<Conn>> conns_;
  std::deque<int> queue_;  // connections waiting to (re)connect
  Phase phase_ = Phase::kHolding;
  int in_progress_ = 0, up_ = 0, back_ = 0;
  uint64_t retries_ = 0, handshake_errors_ = 0;
  int64_t phase_start_ns_ = 0, first_drop_ns_ = 0, first_accept_ns_ = 0, last_up_ns_ = 0, last_print_ns_ = 0,
          last_ping_ns_ = 0;
  double hold_s_ = 0;
  // tlsmem
  const bool mem_ = o_.scenario == "tlsmem";
  int echo_in_flight_ = 0, echoed_ = 0, next_echo_ = 0;
  int64_t rss0_ = 0, rss_idle_ = 0, rss_after_ = 0;
  double traffic_s_ = 0;
  char read_buf_[64 * 1024] = {};
};

}  // namespace

int RunTls(const Options& o) {
  TlsBench t(o);
  return t.Run();
}

int RunStorm(const Options& o) {
  StormBench s(o);
  return s.Run();
}

}  // namespace fmq::bench

// fleetmq-bench: an MQTT load generator on libuv, using fleetmq's own codec.
// Scenarios:
//   fanin  : P publishers -> S subscribers on bench/# (every subscriber gets
//            every message); closed loop: each publisher keeps at most
//            --window messages in flight end to end (counted at subscriber 0)
//   fanout : 1 publisher -> S subscribers on one topic (same closed loop)
//   push   : S devices, each subscribed (QoS 1) to its own topic push/<i>; one
//            dispatcher publishes one QoS 1 message to every device (at most
//            --window unacknowledged by the broker); reports the time until
//            every device received (and acknowledged) it, as devices/s — the
//            seed's config push. Devices connect --window at a time, from
//            source addresses spread over 127.0.0.1-127.0.0.8.
//   conn   : hold --conns N idle connections (--window connecting at a time,
//            from 127.0.0.1-127.0.0.8; --subscribe: each subscribes to its own
//            topic); reports the connect rate and, with --broker-pid, the
//            broker's resident memory per connection (VmRSS before and after).
//   tls    : mutual-TLS connections, one after another on --conns parallel
//            loops: TCP connect, handshake, CONNECT, CONNACK, close. Full
//            handshakes, or resumed ones (session ticket) with --resume.
//            Client certificate from --cert/--key, trust from --ca.
//   storm  : --conns mutual-TLS connections held (--window connecting at a
//            time), "held N" printed, then dropped by a broker restart (the
//            driver's kill -9, bench/reconnect_storm.py) and all brought
//            back: resuming their tickets with --resume, full handshakes
//            without; reports the seconds until the last is back.
//            --duration bounds each phase.
//   tlsmem : --conns mutual-TLS connections held; with --broker-pid, the
//            broker's resident memory per connection idle, then after each
//            connection sent itself one --size-byte message through the
//            broker (a TLS record each way; 16 KiB fills mbedTLS's buffers).
// fanin/fanout run closed loop (--window), or at a fixed total --rate
// messages/s (the window then only caps what may be outstanding).
// Payloads carry a send timestamp: end-to-end latency percentiles are
// measured. Bounded by --duration; loopback only (the target host must be
// 127.0.0.0/8). Prints a live line every second and a final JSON line.
#include "bench/bench.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "broker/mqtt/codec.h"
#include "broker/mqtt/framer.h"

namespace {

using namespace fmq;
using namespace fmq::bench;

class Bench;

struct Client {
  Bench* bench;
  int index;
  bool publisher;
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  mqtt::Framer framer{1u << 28};
  mqtt::Version version;
  bool ready = false;
  int inflight = 0;  // publishers: end-to-end outstanding
  uint16_t next_id = 1;
  std::string topic;
  std::string out;
};

class Bench {
 public:
  explicit Bench(Options o) : o_(std::move(o)) { uv_loop_init(&loop_); }

  int Run() {
    if (o_.scenario == "fanout" || push()) o_.pubs = 1;
    if (conn()) {
      o_.subs = o_.conns;
      rss_before_ = RssBytes(o_.broker_pid);
      for (int i = 0; i < std::min(o_.subs, o_.window); ++i) Add(false, i);  // paced connects
      next_sub_ = std::min(o_.subs, o_.window);
    } else if (push()) {
      o_.qos = 1;
      for (int i = 0; i < std::min(o_.subs, o_.window); ++i) Add(false, i);  // paced connects
      next_sub_ = std::min(o_.subs, o_.window);
    } else {
      for (int i = 0; i < o_.subs; ++i) Add(false, i);
    }
    uv_timer_init(&loop_, &timer_);
    timer_.data = this;
    uv_timer_start(&timer_, OnTimer, 100, 100);
    start_ns_ = NowNs();
    uv_run(&loop_, UV_RUN_DEFAULT);
    int rc = Report();
    CloseLoop(&loop_);
    return rc;
  }

  uv_buf_t ReadBuffer() { return uv_buf_init(read_buf_, sizeof read_buf_); }
  bool push() const { return o_.scenario == "push"; }
  bool conn() const { return o_.scenario == "conn"; }

  void OnReady(Client* c) {
    if (conn()) {
      if (next_sub_ < o_.subs) Add(false, next_sub_++);
      if (++ready_ == o_.subs) {
        connected_ns_ = NowNs();
        measure_ns_ = connected_ns_ - start_ns_;
      }
      return;
    }
    if (push() && !c->publisher && next_sub_ < o_.subs) Add(false, next_sub_++);
    if (push() && c->publisher) {
      push_start_ns_ = NowNs();
      cpu_start_ = BrokerCpuSeconds(o_.broker_pid);
      PumpPush(c);
      return;
    }
    ++ready_;
    if (ready_ == o_.subs && !pubs_started_) {
      pubs_started_ = true;
      for (int i = 0; i < o_.pubs; ++i) Add(true, i);
    }
    if (c->publisher && o_.rate <= 0) Pump(c);
    if (c->publisher && o_.rate > 0 && ++pubs_ready_ == o_.pubs) {
      rate_start_ns_ = NowNs();
      uv_timer_init(&loop_, &rate_timer_);
      rate_timer_.data = this;
      uv_timer_start(&rate_timer_, OnRateTimer, 1, 1);
    }
  }

  // Fixed rate: every millisecond, the messages due since the start, round
  // robin over the publishers; a publisher with --window messages
  // outstanding skips its turn (counted: the broker is not keeping up).
  static void OnRateTimer(uv_timer_t* t) {
    auto* b = static_cast<Bench*>(t->data);
    if (b->stopping_) return;
    const auto due = static_cast<uint64_t>(static_cast<double>(NowNs() - b->rate_start_ns_) * b->o_.rate / 1e9);
    while (b->rate_sent_ < due) {
      Client* c = b->pubs_[b->rate_sent_ % b->pubs_.size()];
      ++b->rate_sent_;
      if (c->inflight >= b->o_.window) {
        ++b->rate_skipped_;
        continue;
      }
      b->EncodeOne(c);
    }
    for (Client* c : b->pubs_) b->Flush(c);
  }

  // push: the dispatcher keeps --window messages unacknowledged by the broker.
  void PumpPush(Client* c) {
    while (c->inflight < o_.window && next_target_ < o_.subs) {
      mqtt::Publish p;
      const std::string topic = "push/" + std::to_string(next_target_++);
      p.topic = topic;
      p.qos = 1;
      p.packet_id = c->next_id++;
      if (c->next_id == 0) c->next_id = 1;
      p.payload = "{\"config_version\":2}";
      mqtt::Encode(p, c->version, &c->out);
      ++c->inflight;
      ++sent_;
    }
    Flush(c);
  }

  void OnPushAck(Client* c) {
    --c->inflight;
    PumpPush(c);
  }

  void OnPublishReceived(Client* sub, const mqtt::Publish& p) {
    if (push()) {
      if (++received_ == static_cast<uint64_t>(o_.subs)) {
        measure_ns_ = NowNs() - push_start_ns_;
        cpu_end_ = BrokerCpuSeconds(o_.broker_pid);
        Flush(sub);  // its PUBACK
        stopping_ = true;
        uv_stop(&loop_);
      }
      return;
    }
    if (p.payload.size() < 12) return;
    int64_t sent;
    uint32_t pub_index;
    std::memcpy(&sent, p.payload.data(), 8);
    std::memcpy(&pub_index, p.payload.data() + 8, 4);
    if (measuring_) {
      ++received_;
      if (latencies_.size() < 20'000'000) latencies_.push_back(static_cast<uint32_t>((NowNs() - sent) / 1000));
    }
    if (sub->index == 0 && pub_index < clients_.size()) {
      Client* pub = pubs_[pub_index];
      --pub->inflight;
      Pump(pub);
    }
  }

  void Pump(Client* c) {
    if (stopping_ || o_.rate > 0) return;
    while (c->inflight < o_.window) EncodeOne(c);
    Flush(c);
  }

  void EncodeOne(Client* c) {
    {
      mqtt::Publish p;
      p.topic = c->topic;
      p.qos = static_cast<uint8_t>(o_.qos);
      if (o_.qos) {
        p.packet_id = c->next_id++;
        if (c->next_id == 0) c->next_id = 1;
      }
      std::string payload(static_cast<size_t>(std::max(o_.size, 12)), 'x');
      int64_t now = NowNs();
      uint32_t idx = static_cast<uint32_t>(c->index);
      std::memcpy(payload.data(), &now, 8);
      std::memcpy(payload.data() + 8, &idx, 4);
      p.payload = payload;
      mqtt::Encode(p, c->version, &c->out);
      ++c->inflight;
      if (measuring_) ++sent_;
    }
  }

  void Flush(Client* c) {
    if (c->out.empty()) return;
    struct Req {
      uv_write_t w;
      std::string data;
    };
    auto* r = new Req;
    r->data.swap(c->out);
    uv_buf_t b = uv_buf_init(r->data.data(), static_cast<unsigned>(r->data.size()));
    r->w.data = r;
    if (uv_write(&r->w, reinterpret_cast<uv_stream_t*>(&c->tcp), &b, 1,
                 [](uv_write_t* w, int) { delete static_cast<Req*>(w->data); }) != 0) {
      delete r;
    }
  }

 private:
  void Add(bool publisher, int i) {
    auto c = std::make_unique<Client>();
    c->bench = this;
    c->index = i;
    c->publisher = publisher;
    c->version = o_.version == 5 ? mqtt::Version::kV5 : mqtt::Version::kV311;
    c->topic = o_.scenario == "fanout" ? "bench/all"
               : push()                ? "push/" + std::to_string(i)
                                       : "bench/" + std::to_string(i);
    uv_tcp_init_ex(&loop_, &c->tcp, AF_INET);
    uv_tcp_nodelay(&c->tcp, 1);
    if (push() || conn()) BindSource(&c->tcp, i);  // spread over 127.0.0.1-8
    c->tcp.data = c.get();
    c->connect_req.data = c.get();
    sockaddr_in addr;
    uv_ip4_addr(o_.host.c_str(), o_.port, &addr);
    uv_tcp_connect(&c->connect_req, &c->tcp, reinterpret_cast<sockaddr*>(&addr), OnConnect);
    if (publisher) {
      if (pubs_.size() <= static_cast<size_t>(i)) pubs_.resize(static_cast<size_t>(i) + 1);
      pubs_[static_cast<size_t>(i)] = c.get();
    }
    clients_.push_back(std::move(c));
  }

  static void OnConnect(uv_connect_t* req, int status) {
    auto* c = static_cast<Client*>(req->data);
    if (status != 0) {
      std::fprintf(stderr, "fleetmq-bench: connect: %s\n", uv_strerror(status));
      std::exit(1);
    }
    mqtt::Connect ck;
    ck.version = c->version;
    ck.client_id = std::string(c->publisher ? "bench-pub-" : "bench-sub-") + std::to_string(c->index);
    ck.keep_alive = 60;
    if (c->bench->o_.persistent && !c->publisher) {
      ck.clean_start = false;
      if (c->version == mqtt::Version::kV5) {
        ck.props.session_expiry = 3600;
        ck.props.Mark(mqtt::PropertyId::kSessionExpiryInterval);
      }
    }
    mqtt::Encode(ck, c->version, &c->out);
    if (!c->publisher && (!c->bench->conn() || c->bench->o_.subscribe)) {
      mqtt::Subscribe s;
      s.packet_id = 1;
      s.entries.push_back({c->bench->o_.scenario == "fanout" ? "bench/all"
                           : c->bench->push()                ? c->topic
                                                             : std::string("bench/#"),
                           static_cast<uint8_t>(c->bench->o_.qos)});
      mqtt::Encode(s, c->version, &c->out);
    }
    c->bench->Flush(c);
    StartReading<Client>(&c->tcp, OnRead);
  }

  static void OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* c = static_cast<Client*>(s->data);
    Bench* b = c->bench;
    if (n < 0) {
      if (!b->stopping_) {
        std::fprintf(stderr, "fleetmq-bench: connection lost: %s\n", uv_strerror(static_cast<int>(n)));
        std::exit(1);
      }
      return;
    }
    mqtt::Error e =
        c->framer.Feed(std::string_view(buf->base, static_cast<size_t>(n)), [&](uint8_t first, std::string_view body) {
          auto type = static_cast<mqtt::PacketType>(first >> 4);
          if (type == mqtt::PacketType::kPublish) {
            mqtt::Packet p;
            if (!mqtt::Decode(first, body, c->version, &p).ok()) return false;
            auto& pub = std::get<mqtt::Publish>(p);
            if (pub.qos == 1) {
              mqtt::Ack a;
              a.type = mqtt::PacketType::kPuback;
              a.packet_id = pub.packet_id;
              mqtt::Encode(a, c->version, &c->out);
            }
            b->OnPublishReceived(c, pub);
          } else if (type == mqtt::PacketType::kPuback && c->publisher && b->push()) {
            b->OnPushAck(c);
          } else if (type == mqtt::PacketType::kConnack && (c->publisher || (b->conn() && !b->o_.subscribe))) {
            c->ready = true;
            b->OnReady(c);
          } else if (type == mqtt::PacketType::kSuback) {
            c->ready = true;
            b->OnReady(c);
          }
          return true;
        });
    if (!e.ok()) {
      std::fprintf(stderr, "fleetmq-bench: bad packet from broker: %s\n", e.rule);
      std::exit(1);
    }
    b->Flush(c);
  }

  static void OnTimer(uv_timer_t* t) {
    auto* b = static_cast<Bench*>(t->data);
    const double elapsed = static_cast<double>(NowNs() - b->start_ns_) / 1e9;
    // Keep alive: a PINGREQ every 9 s from every connected client, under the
    // broker's default Server Keep Alive of 18 s (idle subscribers and held
    // connections send nothing else).
    if (NowNs() - b->last_ping_ns_ >= 9'000'000'000) {
      b->last_ping_ns_ = NowNs();
      for (auto& c : b->clients_) {
        if (!c->ready) continue;
        mqtt::Encode(mqtt::Pingreq{}, c->version, &c->out);
        b->Flush(c.get());
      }
    }
    if (b->conn()) {
      if (b->connected_ns_ == 0) {
        std::fprintf(stderr, "\r%.1fs connected %d/%d   ", elapsed, b->ready_, b->o_.subs);
        if (elapsed > 120) {
          std::fprintf(stderr, "\nfleetmq-bench: connections did not complete in time\n");
          std::exit(1);
        }
        return;
      }
      // Idle for a second (the broker's allocator settles), then measured;
      // held until --duration has passed since everything connected.
      const double held = static_cast<double>(NowNs() - b->connected_ns_) / 1e9;
      if (b->rss_after_ == 0 && held >= 1.0) b->rss_after_ = RssBytes(b->o_.broker_pid);
      if (b->rss_after_ != 0 && held >= std::max(1.0, b->o_.duration)) {
        b->stopping_ = true;
        uv_stop(&b->loop_);
      }
      return;
    }
    if (b->push()) {
      std::fprintf(stderr, "\r%.1fs connected %d/%d, delivered %llu   ", elapsed, b->ready_, b->o_.subs,
                   static_cast<unsigned long long>(b->received_));
      if (elapsed > b->o_.duration + 60) {
        std::fprintf(stderr, "\nfleetmq-bench: push did not finish in time\n");
        std::exit(1);
      }
      return;
    }
    if (!b->measuring_ && b->pubs_started_ && elapsed >= b->o_.warmup) {
      b->measuring_ = true;
      b->measure_start_ns_ = NowNs();
      b->cpu_start_ = BrokerCpuSeconds(b->o_.broker_pid);
    }
    if (b->measuring_) {
      const double m = static_cast<double>(NowNs() - b->measure_start_ns_) / 1e9;
      if (static_cast<int>(m * 10) % 10 == 0) {
        std::fprintf(stderr, "\r%.0fs received %llu (%.0f msg/s)   ", m, static_cast<unsigned long long>(b->received_),
                     m > 0 ? b->received_ / m : 0);
      }
      if (m >= b->o_.duration) {
        b->measure_ns_ = NowNs() - b->measure_start_ns_;
        b->cpu_end_ = BrokerCpuSeconds(b->o_.broker_pid);
        b->stopping_ = true;
        uv_stop(&b->loop_);
      }
    }
    if (elapsed > b->o_.warmup + b->o_.duration + 30) {
      std::fprintf(stderr, "fleetmq-bench: did not finish in time\n");
      std::exit(1);
    }
  }

  int Report() {
    std::fprintf(stderr, "\n");
    if (conn()) {
      const double secs = static_cast<double>(measure_ns_) / 1e9;
      std::printf(
          "{\"scenario\":\"conn\",\"conns\":%d,\"subscribe\":%s,\"mqtt\":%d,\"connect_s\":%.3f,"
          "\"connects_per_s\":%.0f,\"broker_rss_before\":%lld,\"broker_rss_after\":%lld,"
          "\"broker_rss_per_conn\":%.0f}\n",
          o_.subs, o_.subscribe ? "true" : "false", o_.version, secs, o_.subs / secs,
          static_cast<long long>(rss_before_), static_cast<long long>(rss_after_),
          rss_after_ > 0 ? static_cast<double>(rss_after_ - rss_before_) / o_.subs : 0.0);
      return 0;
    }
    if (push()) {
      const double secs = static_cast<double>(measure_ns_) / 1e9;
      const double cpu = cpu_end_ - cpu_start_;
      std::printf(
          "{\"scenario\":\"push\",\"devices\":%d,\"window\":%d,\"mqtt\":%d,\"seconds\":%.3f,"
          "\"devices_per_s\":%.0f,\"broker_cpu_s\":%.3f,\"broker_cpu_us_per_device\":%.3f}\n",
          o_.subs, o_.window, o_.version, secs, o_.subs / secs, cpu, cpu * 1e6 / o_.subs);
      return 0;
    }
    std::sort(latencies_.begin(), latencies_.end());
    auto pct = [&](double q) { return Percentile(latencies_, q); };
    const double secs = static_cast<double>(measure_ns_) / 1e9;
    const double cpu = cpu_end_ - cpu_start_;
    std::printf(
        "{\"scenario\":\"%s\",\"pubs\":%d,\"subs\":%d,\"qos\":%d,\"size\":%d,\"window\":%d,"
        "\"mqtt\":%d,\"persistent\":%s,\"seconds\":%.2f,\"sent\":%llu,\"received\":%llu,\"msgs_per_s\":%.0f,"
        "\"p50_us\":%u,\"p99_us\":%u,\"p999_us\":%u,\"broker_cpu_s\":%.3f,\"broker_cpu_us_per_msg\":%.3f,"
        "\"rate\":%.0f,\"rate_skipped\":%llu}\n",
        o_.scenario.c_str(), o_.pubs, o_.subs, o_.qos, o_.size, o_.window, o_.version, o_.persistent ? "true" : "false",
        secs, static_cast<unsigned long long>(sent_), static_cast<unsigned long long>(received_),
        static_cast<double>(received_) / secs, pct(0.5), pct(0.99), pct(0.999), cpu,
        received_ ? cpu * 1e6 / static_cast<double>(received_) : 0.0, o_.rate,
        static_cast<unsigned long long>(rate_skipped_));
    return 0;
  }

  Options o_;
  uv_loop_t loop_;
  uv_timer_t timer_;
  std::vector<std::unique_ptr<Client>> clients_;
  uint64_t last_ping_ns_ = NowNs();
  std::vector<Client*> pubs_;
  int ready_ = 0;
  int next_sub_ = 0;     // push: next device to connect
  int next_target_ = 0;  // push: next device to publish to
  int64_t push_start_ns_ = 0;
  int64_t connected_ns_ = 0;  // conn: when the last CONNACK arrived
  int64_t rss_before_ = 0, rss_after_ = 0;
  uv_timer_t rate_timer_;
  int pubs_ready_ = 0;
  int64_t rate_start_ns_ = 0;
  uint64_t rate_sent_ = 0, rate_skipped_ = 0;
  bool pubs_started_ = false;
  bool measuring_ = false;
  bool stopping_ = false;
  int64_t start_ns_ = 0, measure_start_ns_ = 0, measure_ns_ = 1;
  uint64_t sent_ = 0, received_ = 0;
  double cpu_start_ = 0, cpu_end_ = 0;
  std::vector<uint32_t> latencies_;
  char read_buf_[256 * 1024] = {};
};

void Usage() {
  std::fprintf(
      stderr,
      "usage: fleetmq-bench [--scenario fanin|fanout|push|conn|tls|storm|tlsmem] [--host 127.0.0.1] [--port 1883]\n"
      "  [--pubs P] [--subs S] [--qos 0|1] [--size BYTES] [--window N] [--rate MSG_PER_S]\n"
      "  [--duration S] [--warmup S] [--mqtt 4|5] [--broker-pid PID] [--persistent]\n"
      "  [--conns N] [--subscribe] [--resume] [--ca PEM] [--cert PEM] [--key PEM]\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--scenario")
      o.scenario = next();
    else if (a == "--host")
      o.host = next();
    else if (a == "--port")
      o.port = std::atoi(next().c_str());
    else if (a == "--pubs")
      o.pubs = std::atoi(next().c_str());
    else if (a == "--subs")
      o.subs = std::atoi(next().c_str());
    else if (a == "--qos")
      o.qos = std::atoi(next().c_str());
    else if (a == "--size")
      o.size = std::atoi(next().c_str());
    else if (a == "--window")
      o.window = std::atoi(next().c_str());
    else if (a == "--duration")
      o.duration = std::atof(next().c_str());
    else if (a == "--warmup")
      o.warmup = std::atof(next().c_str());
    else if (a == "--mqtt")
      o.version = std::atoi(next().c_str());
    else if (a == "--broker-pid")
      o.broker_pid = std::atoi(next().c_str());
    else if (a == "--persistent")
      o.persistent = true;
    else if (a == "--rate")
      o.rate = std::atof(next().c_str());
    else if (a == "--conns")
      o.conns = std::atoi(next().c_str());
    else if (a == "--subscribe")
      o.subscribe = true;
    else if (a == "--resume")
      o.resume = true;
    else if (a == "--ca")
      o.ca = next();
    else if (a == "--cert")
      o.cert = next();
    else if (a == "--key")
      o.key = next();
    else {
      Usage();
      return 2;
    }
  }
  if (o.pubs < 1 || o.subs < 1 || o.qos < 0 || o.qos > 1 || o.window < 1 || o.duration <= 0 ||
      (o.version != 4 && o.version != 5) || o.conns < 1 || o.conns > 60000 || o.rate < 0) {
    Usage();
    return 2;
  }
  // Checked before any libuv state exists.
  if (o.host.rfind("127.", 0) != 0) {
    std::fprintf(stderr, "fleetmq-bench: targets loopback (127.0.0.0/8) only\n");
    return 2;
  }
  if (o.scenario != "fanin" && o.scenario != "fanout" && o.scenario != "push" && o.scenario != "conn" &&
      o.scenario != "tls" && o.scenario != "storm" && o.scenario != "tlsmem") {
    std::fprintf(stderr, "fleetmq-bench: unknown scenario %s\n", o.scenario.c_str());
    return 2;
  }
  if (o.scenario == "tls") return RunTls(o);
  if (o.scenario == "storm" || o.scenario == "tlsmem") return RunStorm(o);
  Bench b(o);
  return b.Run();
}

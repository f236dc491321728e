// fleetmq-device: the reference device agent of doc/device-api.md, for N
// simulated devices at once on one libuv loop. Each device connects over
// mutual TLS with its own certificate (DIR/<id>.crt, DIR/<id>.key), subscribes
// to its device channel, asks for its pending job executions, and executes
// job notifications: IN_PROGRESS, then SUCCEEDED (or FAILED / REJECTED /
// nothing, by the knobs below), deduplicating by (job id, attempt) as the
// contract asks. It applies configuration (config/desired: a merge patch on
// the version it has, or the whole document), checks the result against the
// broker's hash and reports APPLIED with it, or asks for the whole document
// when its base does not match. It reconnects after any disconnect, keeping
// its configuration (as a device keeps it in flash) and offering the TLS
// session ticket of its last connection, so a reconnect (after a broker
// restart too) skips the full handshake.
//
//   fleetmq-device --port P --ca root.crt --certs DIR --count N [--prefix dev-]
//       [--start 0] [--fail-pct 0] [--reject-pct 0] [--silent-pct 0]
//       [--drop-pct 0] [--slow-ms 0] [--version 5|4] [--window 64]
//       [--duration 0] [--idle-exit 0] [--log FILE] [--seed 1] [--no-progress]
//       [--config-reject-pct 0] [--config-drift-pct 0] [--firmware 1.0.0]
//       [--block 32768] [--ota-window 4] [--ota-corrupt-pct 0]
//       [--ota-fail-pct 0] [--ota-rollback-pct 0] [--ota-never-pct 0]
//       [--ota-drop-pct 0] [--health-s 0] [--health-error-pct 0]
//       [--health-silent-pct 0] [--renew-fail-pct 0]
//
// Knobs (deterministic per device, job and attempt with --seed): --fail-pct
// of attempts report FAILED; --reject-pct of executions report REJECTED;
// --silent-pct of executions are never answered (acknowledged at the MQTT
// level only); --drop-pct of notifications make the device drop its
// connection before answering (it reconnects and gets it again); --slow-ms
// between IN_PROGRESS and the final status; --no-progress reports the final
// status only. --log writes one JSON line per
// final status reported ({"device","job_id","attempt","status"}) and per
// configuration report ({"device","config_version","status","hash"}).
// --config-reject-pct of configuration versions are REJECTED; with
// --config-drift-pct the device's applied document is corrupted before it
// reports (a wrong hash: the broker sends the whole document, which is then
// applied correctly).
// Firmware (ota/notify, doc/device-api.md "Firmware"): it checks the signed
// manifest against the platform root (--ca) and its own tenant, pulls the
// image in --block byte blocks with --ota-window requests outstanding,
// resumes at the byte it has after a disconnect, checks the SHA-256,
// reports installing, and "reboots" (disconnects, comes back reporting the
// new version on ota/version). Knobs: --ota-corrupt-pct of images arrive
// corrupted (hash mismatch: FAILED), --ota-fail-pct fail to install,
// --ota-rollback-pct come back on the old version with rolled_back (an A/B
// device's own rollback), --ota-never-pct never come back, --ota-drop-pct
// drop the connection once halfway through the download. The knobs spare
// offers that return a device to its previous version (rollback jobs).
// Health (doc/device-api.md "Health"): with --health-s N each device reports
// plausible values (uptime since its first connect, CPU, memory, storage,
// battery, temperature, an error counter and two free-form metrics, each a
// random walk) every N seconds on health/report, the first at a random
// point of the first interval (no fleet-wide burst); --health-error-pct of
// reports carry an error burst (+20 errors), --health-silent-pct of devices
// never report.
// Certificate renewal (doc/device-api.md "Certificate renewal"): on
// certs/renew it makes a new EC P-256 key, sends a CSR for its own subject
// on certs/csr, checks the certificate it gets (its key, its chain to --ca),
// stores it over DIR/<id>.crt and .key (atomically, as a device writes
// flash), and reconnects with it. --renew-fail-pct of requests are answered
// with an error instead (a device that cannot make a key).
// Prints one status line a second on stderr and a JSON summary on exit
// (SIGINT/SIGTERM, --duration, or --idle-exit seconds without a notification
// once every device connected). Loopback only.
#include <mbedtls/base64.h>
#include <mbedtls/sha256.h>
#include <mbedtls/x509_csr.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <queue>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/mqtt/codec.h"
#include "broker/mqtt/framer.h"
#include "broker/tls/tls.h"
#include "broker/tls/tls_client.h"
#include "common/hex.h"
#include "mgmt/config/document.h"
#include "mgmt/pki/pki.h"
#include "mgmt/pki/pki_dir.h"

namespace {

using namespace fmq;
using Json = nlohmann::json;

struct Options {
  std::string host = "127.0.0.1";
  int port = 8883;
  std::string ca, certs, prefix = "dev-", log;
  int count = 1, start = 0, window = 64, version = 5;
  double fail_pct = 0, reject_pct = 0, silent_pct = 0, drop_pct = 0;
  double config_reject_pct = 0, config_drift_pct = 0;
  std::string firmware = "1.0.0";
  int block = 32768, ota_window = 4;
  double ota_corrupt_pct = 0, ota_fail_pct = 0, ota_rollback_pct = 0, ota_never_pct = 0, ota_drop_pct = 0;
  double health_s = 0, health_error_pct = 0, health_silent_pct = 0;
  double renew_fail_pct = 0;
  int slow_ms = 0;
  bool progress = true;  // report IN_PROGRESS before the final status
  double duration = 0, idle_exit = 0;
  uint64_t seed = 1;
};

int64_t NowMs() { return static_cast<int64_t>(uv_hrtime() / 1'000'000); }

// A deterministic number in [0, 100) for (seed, device, key).
double Roll(uint64_t seed, const std::string& device, const std::string& key) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (char c : device + "\x1f" + key) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return static_cast<double>(h % 1'000'000) / 10'000.0;
}

class Agent;

struct Device {
  Agent* agent = nullptr;
  std::string id, channel;
  std::unique_ptr<tls::TlsClientConfig> tls_conf;
  // The broker's session ticket from the last connection, offered on the
  // next one (doc/device-api.md "Reconnect behaviour"); dropped with the
  // credentials it was made for, or when a handshake fails.
  mbedtls_ssl_session ticket;
  bool has_ticket = false;
  uv_tcp_t* tcp = nullptr;
  std::unique_ptr<tls::TlsSession> tls;
  mqtt::Framer framer{1u << 20};
  bool connected = false, ever = false, connecting = false;
  uint16_t next_id = 1;
  // Executions seen: job id → (attempt, final status reported or "").
  std::unordered_map<std::string, std::pair<uint32_t, std::string>> seen;
  // Uplink messages not yet acknowledged: packet id → (topic suffix, payload);
  // PUBACK 0x97 (the broker is busy) sends them again a second later.
  std::unordered_map<uint16_t, std::pair<std::string, std::string>> unacked;
  // Configuration: the version applied and its document (version 0: {}).
  uint64_t cfg_version = 0;
  Json cfg_doc = Json::object();
  std::string cfg_hash = config::Hash(Json::object());
  // Firmware: what it runs, and the update it is downloading (kept across
  // reconnects, as a device keeps the partial image in flash).
  std::string tenant;
  std::string fw_version;
  bool rolled_back = false, dead = false;
  struct Ota {
    std::string job_id, sha256, version, from;
    uint32_t attempt = 0;
    uint64_t size = 0, have = 0, next = 0;  // bytes hashed; next offset requested
    int outstanding = 0;
    bool dropped = false, corrupt = false, installing = false;
    bool rollback = false;  // an offer to return to the old version: the knobs spare it (the old image is good)
    uint64_t reported = 0;
    std::unique_ptr<mbedtls_sha256_context> hash;
  } ota;
  // Renewal: the key made for the CSR in flight (PEM), and the renewal
  // answered (job id and attempt: each once); `renewed`: a new certificate
  // and key stored, used from the next connection.
  struct Renewal {
    std::string job_id, key_pem;
    uint32_t attempt = 0;
    bool renewed = false;
  } renewal;
  struct Health {
    double cpu = 20, mem = 40, storage = 30, battery = 100, temp = 35, queue = 0;
    uint64_t errors = 0, reports = 0;
    int64_t boot_ms = 0;
    bool scheduled = false;
  } health;
};

struct Retry {
  int64_t at;
  int device;
  std::string suffix, payload;
  bool operator>(const Retry& o) const { return at > o.at; }
};

struct Answer {
  int64_t at;
  int device;
  std::string job_id, status;
  uint32_t attempt;
  bool operator>(const Answer& o) const { return at > o.at; }
};

class Agent {
 public:
  explicit Agent(Options o) : o_(std::move(o)) {
    uv_loop_init(&loop_);
    mbedtls_x509_crt_init(&trust_);
  }

  int Run() {
    // Signals first: a SIGTERM while the certificates load (slow on a busy
    // machine) must still end with the summary, not kill the process.
    for (int sig : {SIGINT, SIGTERM}) {
      auto* s = new uv_signal_t;
      uv_signal_init(&loop_, s);
      s->data = this;
      uv_signal_start(
          s, [](uv_signal_t* h, int) { static_cast<Agent*>(h->data)->stop_ = true; }, sig);
      uv_unref(reinterpret_cast<uv_handle_t*>(s));
    }
    if (!Load()) return 1;
    if (!o_.log.empty()) {
      log_ = std::fopen(o_.log.c_str(), "a");
      if (log_ == nullptr) {
        std::fprintf(stderr, "fleetmq-device: cannot open %s\n", o_.log.c_str());
        return 1;
      }
      setvbuf(log_, nullptr, _IOLBF, 0);
    }
    uv_timer_init(&loop_, &tick_);
    tick_.data = this;
    uv_timer_start(&tick_, OnTick, 10, 10);
    start_ms_ = last_notify_ms_ = NowMs();
    Pump();
    uv_run(&loop_, UV_RUN_DEFAULT);
    Summary();
    std::fflush(stdout);  // before anything at exit (a sanitizer's report) can end the process
    if (log_ != nullptr) std::fclose(log_);
    Free();
    return 0;
  }

  ~Agent() { Free(); }

  void OnPlain(Device& d, std::string_view bytes);
  void Closed(Device& d);
  // Closes every handle and frees the TLS material (once).
  void Free() {
    if (freed_) return;
    freed_ = true;
    uv_walk(
        &loop_,
        [](uv_handle_t* h, void*) {
          if (uv_is_closing(h)) return;
          if (h->type == UV_SIGNAL) {
            uv_close(h, [](uv_handle_t* x) { delete reinterpret_cast<uv_signal_t*>(x); });
          } else if (h->type == UV_TCP) {
            uv_close(h, [](uv_handle_t* x) { delete reinterpret_cast<uv_tcp_t*>(x); });
          } else {
            uv_close(h, nullptr);
          }
        },
        nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
    for (Device& d : devices_) {
      d.tls.reset();
      d.tls_conf.reset();
      mbedtls_ssl_session_free(&d.ticket);
    }
    mbedtls_x509_crt_free(&trust_);
  }
  void Send(Device& d);

 private:
  bool Load() {
    auto read = [](const std::string& p) {
      std::ifstream f(p);
      return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    };
    const std::string ca = read(o_.ca);
    devices_.resize(o_.count);
    for (Device& d : devices_) mbedtls_ssl_session_init(&d.ticket);  // Free() releases them whatever fails below
    auto bytes = [](const std::string& s) { return reinterpret_cast<const unsigned char*>(s.c_str()); };
    if (ca.empty() || mbedtls_x509_crt_parse(&trust_, bytes(ca), ca.size() + 1) != 0) {
      std::fprintf(stderr, "fleetmq-device: --ca must be a readable PEM CA certificate\n");
      return false;
    }
    for (int i = 0; i < o_.count; ++i) {
      Device& d = devices_[i];
      d.agent = this;
      d.id = o_.prefix + std::to_string(o_.start + i);
      d.channel = "$fleetmq/v1/devices/" + d.id + "/";
      if (!SetCredentials(d)) {
        std::fprintf(stderr, "fleetmq-device: %s: needs %s/%s.crt and .key (PEM)\n", d.id.c_str(), o_.certs.c_str(),
                     d.id.c_str());
        return false;
      }
      d.fw_version = o_.firmware;
      if (auto id = pki::IdentityOf(d.tls_conf->chain()); id.ok()) d.tenant = id->tenant;
    }
    for (int i = 0; i < o_.count; ++i) to_connect_.push(i);
    return true;
  }

  // (Re)loads the device's certificate and key from DIR and sets up its TLS
  // configuration with them (no session may be using the old one).
  bool SetCredentials(Device& d) {
    auto read = [](const std::string& p) {
      std::ifstream f(p);
      return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    };
    DropTicket(d);  // it carries the certificate it was made for
    d.tls_conf.reset();
    const std::string cert = read(o_.certs + "/" + d.id + ".crt"), key = read(o_.certs + "/" + d.id + ".key");
    if (cert.empty() || key.empty()) return false;
    auto conf = tls::TlsClientConfig::WithTrust(&trust_, cert, key, &rng_);
    if (!conf.ok()) return false;
    d.tls_conf = std::move(*conf);
    return true;
  }

  static void DropTicket(Device& d) {
    mbedtls_ssl_session_free(&d.ticket);
    mbedtls_ssl_session_init(&d.ticket);
    d.has_ticket = false;
  }

  // Starts connections, at most --window in progress.
  void Pump() {
    const int64_t now = NowMs();
    while (!stop_ && connecting_ < o_.window && !to_connect_.empty()) {
      auto [at, idx] = to_connect_.top_pair();
      if (at > now) break;
      to_connect_.pop();
      Connect(devices_[idx]);
    }
  }

  void Connect(Device& d) {
    d.tls.reset();
    if (d.renewal.renewed) {  // the new certificate from this connection on
      d.renewal.renewed = false;
      if (!SetCredentials(d)) {
        std::fprintf(stderr, "fleetmq-device: %s: renewed certificate unreadable\n", d.id.c_str());
        d.dead = true;  // never connects again
        return;
      }
    }
    d.connecting = true;
    ++connecting_;
    d.tcp = new uv_tcp_t;
    uv_tcp_init(&loop_, d.tcp);
    uv_tcp_nodelay(d.tcp, 1);
    d.tcp->data = &d;
    d.framer = mqtt::Framer(1u << 20);
    d.tls = std::make_unique<tls::TlsSession>(d.tls_conf->conf(), "localhost");
    if (d.has_ticket && !d.tls->SetSession(&d.ticket).ok()) DropTicket(d);
    auto* req = new uv_connect_t;
    req->data = &d;
    sockaddr_in addr;
    uv_ip4_addr(o_.host.c_str(), o_.port, &addr);
    uv_tcp_connect(req, d.tcp, reinterpret_cast<sockaddr*>(&addr), OnConnect);
  }

  static void OnConnect(uv_connect_t* req, int status) {
    auto* d = static_cast<Device*>(req->data);
    delete req;
    Agent* a = d->agent;
    if (status != 0) {
      a->Closed(*d);
      return;
    }
    mqtt::Connect ck;
    ck.version = a->Version();
    ck.client_id = d->id;
    ck.keep_alive = 60;
    std::string plain;
    mqtt::Encode(ck, ck.version, &plain);
    d->tls->Write(plain);  // held until the handshake is done
    d->tls->OnCiphertext("");
    a->Send(*d);
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(d->tcp),
        [](uv_handle_t* h, size_t, uv_buf_t* b) {
          auto* dev = static_cast<Device*>(h->data);
          *b = uv_buf_init(dev->agent->read_buf_, sizeof dev->agent->read_buf_);
        },
        OnRead);
  }

  static void OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* d = static_cast<Device*>(s->data);
    Agent* a = d->agent;
    if (n < 0) {
      a->Closed(*d);
      return;
    }
    d->tls->OnCiphertext(std::string_view(buf->base, static_cast<size_t>(n)));
    if (d->tls->state() == tls::TlsSession::State::kFailed) {
      if (a->tls_errors_++ < 5)
        std::fprintf(stderr, "fleetmq-device: %s: TLS: %s\n", d->id.c_str(), d->tls->error().c_str());
      DropTicket(*d);  // the next attempt is a full handshake
      a->Closed(*d);
      return;
    }
    a->Send(*d);
    const std::string plain = d->tls->TakePlaintext();
    if (!plain.empty()) a->OnPlain(*d, plain);
  }

  static void OnTick(uv_timer_t* t) {
    auto* a = static_cast<Agent*>(t->data);
    a->Tick();
  }

  void Tick();
  void Write(Device& d, const mqtt::Packet& p) {
    std::string out;
    mqtt::Encode(p, Version(), &out);
    d.tls->Write(out);
    Send(d);
  }
  void Publish(Device& d, const std::string& suffix, const std::string& payload) {
    mqtt::Publish p;
    p.qos = 1;
    const std::string topic = d.channel + suffix;
    p.topic = topic;
    p.packet_id = d.next_id++;
    if (d.next_id == 0) d.next_id = 1;
    p.payload = payload;
    if (Version() == mqtt::Version::kV5) d.unacked[p.packet_id] = {suffix, payload};
    Write(d, p);
  }
  void Report(Device& d, const std::string& job, uint32_t attempt, const std::string& status, const Json& details) {
    Json j{{"job_id", job}, {"attempt", attempt}, {"status", status}};
    if (!details.is_null()) j["details"] = details;
    Publish(d, "jobs/update", j.dump());
    reports_++;
  }
  void OnNotify(Device& d, std::string_view payload);
  void OnRenew(Device& d, std::string_view payload);
  void OnRenewed(Device& d, std::string_view payload);
  void OnDesired(Device& d, std::string_view payload);
  void OnOta(Device& d, std::string_view payload);
  void OnBlock(Device& d, uint64_t offset, std::string_view bytes);
  void OnBlockRejected(Device& d, std::string_view payload);
  void Reboot(Device& d);
  void RequestBlocks(Device& d);
  void OtaReport(Device& d, const char* phase, const std::string& reason);
  void ScheduleHealth(Device& d);
  void HealthReport(Device& d, int64_t now);
  void OtaLog(Device& d, const char* status, const std::string& reason);
  void ConfigReport(Device& d, uint64_t version, const char* status, const std::string& hash, const char* reason);
  mqtt::Version Version() const { return o_.version == 4 ? mqtt::Version::kV311 : mqtt::Version::kV5; }
  void Summary();

  // Devices to (re)connect, by time.
  struct ConnectQueue {
    std::priority_queue<std::pair<int64_t, int>, std::vector<std::pair<int64_t, int>>, std::greater<>> q;
    void push(int i, int64_t at = 0) { q.push({at, i}); }
    bool empty() const { return q.empty(); }
    std::pair<int64_t, int> top_pair() const { return q.top(); }
    void pop() { q.pop(); }
  };

  Options o_;
  uv_loop_t loop_;
  uv_timer_t tick_;
  mbedtls_x509_crt trust_;
  pki::Rng rng_;
  std::vector<Device> devices_;
  ConnectQueue to_connect_;
  // Health reports due: (monotonic ms, device index), earliest first.
  std::priority_queue<std::pair<int64_t, int>, std::vector<std::pair<int64_t, int>>, std::greater<>> health_due_;
  uint64_t health_reports_ = 0, health_rejected_ = 0, health_silent_ = 0;
  uint64_t renew_requests_ = 0, renewed_ = 0, renew_refused_ = 0;
  std::priority_queue<Answer, std::vector<Answer>, std::greater<Answer>> answers_;
  std::priority_queue<Retry, std::vector<Retry>, std::greater<Retry>> retries_;
  char read_buf_[64 * 1024];
  FILE* log_ = nullptr;
  bool stop_ = false;
  bool freed_ = false;
  int connecting_ = 0, connected_ = 0, tls_errors_ = 0;
  int64_t ping_every_ms_ = 30'000;
  int64_t start_ms_ = 0, last_ping_ms_ = 0, last_notify_ms_ = 0, last_line_ms_ = 0, all_connected_ms_ = 0;
  uint64_t notifications_ = 0, duplicates_ = 0, reports_ = 0, accepted_ = 0, rejected_ = 0, errors_ = 0, cancels_ = 0,
           connects_ = 0, disconnects_ = 0, succeeded_ = 0, failed_ = 0, rejected_jobs_ = 0, silent_ = 0, drops_ = 0,
           refused_ = 0, busy_ = 0, cfg_desired_ = 0, cfg_patches_ = 0, cfg_full_ = 0, cfg_applied_ = 0,
           cfg_rejected_ = 0, cfg_gets_ = 0, cfg_accepted_ = 0, cfg_refused_ = 0, cfg_drifts_ = 0, ota_offers_ = 0,
           ota_blocks_ = 0, ota_bytes_ = 0, ota_busy_ = 0, ota_installed_ = 0, ota_failed_ = 0, ota_bad_manifest_ = 0,
           ota_resumed_ = 0, ota_rolled_back_ = 0, ota_never_ = 0;

  friend struct Device;
};

void Agent::Send(Device& d) {
  std::string bytes = d.tls->TakeCiphertext();
  if (bytes.empty() || d.tcp == nullptr) return;
  struct Req {
    uv_write_t w;
    std::string data;
  };
  auto* r = new Req;
  r->data.swap(bytes);
  uv_buf_t b = uv_buf_init(r->data.data(), static_cast<unsigned>(r->data.size()));
  r->w.data = r;
  if (uv_write(&r->w, reinterpret_cast<uv_stream_t*>(d.tcp), &b, 1,
               [](uv_write_t* w, int) { delete static_cast<Req*>(w->data); }) != 0) {
    delete r;
  }
}

void Agent::Closed(Device& d) {
  if (d.tcp == nullptr) return;
  d.unacked.clear();  // lost with the connection: jobs/get after the reconnect brings the work back
  if (d.connecting) {
    d.connecting = false;
    --connecting_;
  }
  if (d.connected) {
    d.connected = false;
    --connected_;
    ++disconnects_;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(d.tcp), [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
  d.tcp = nullptr;
  d.ota.outstanding = 0;  // requests in flight are lost with the connection
  d.ota.next = d.ota.have;
  if (!stop_ && !d.dead) to_connect_.push(static_cast<int>(&d - devices_.data()), NowMs() + 500 + (std::rand() % 1000));
}

void Agent::OnPlain(Device& d, std::string_view bytes) {
  mqtt::Error ferr = d.framer.Feed(bytes, [&](uint8_t first, std::string_view body) {
    mqtt::Packet p;
    if (!mqtt::Decode(first, body, Version(), &p).ok()) return false;
    if (auto* ca = std::get_if<mqtt::Connack>(&p)) {
      d.connecting = false;
      --connecting_;
      if (ca->reason != mqtt::ReasonCode::kSuccess) {
        ++refused_;
        return false;
      }
      // The broker's keep alive (v5 Server Keep Alive) sets how often we ping.
      if (ca->props.Has(mqtt::PropertyId::kServerKeepAlive) && ca->props.server_keep_alive > 0) {
        ping_every_ms_ = std::min<int64_t>(ping_every_ms_, int64_t{ca->props.server_keep_alive} * 500);
      }
      d.connected = true;
      d.ever = true;
      d.has_ticket = d.tls->SaveSession(&d.ticket).ok();
      ++connected_;
      ++connects_;
      mqtt::Subscribe sub;
      sub.packet_id = d.next_id++;
      sub.entries.push_back({d.channel + "#", 1});
      Write(d, sub);
    } else if (auto* ack = std::get_if<mqtt::Ack>(&p); ack != nullptr && ack->type == mqtt::PacketType::kPuback) {
      auto it = d.unacked.find(ack->packet_id);
      if (it != d.unacked.end()) {
        if (ack->reason == mqtt::ReasonCode::kQuotaExceeded) {  // busy: the contract says retry after a second
          ++busy_;
          retries_.push(Retry{NowMs() + 1000, static_cast<int>(&d - devices_.data()), std::move(it->second.first),
                              std::move(it->second.second)});
        }
        d.unacked.erase(it);
      }
    } else if (std::get_if<mqtt::SubAck>(&p) != nullptr) {
      Publish(d, "jobs/get", "{}");  // what is pending for me (the contract's reconnect step)
      ScheduleHealth(d);
      Json v{{"version", d.fw_version}};
      if (d.rolled_back) v["rolled_back"] = true;
      Publish(d, "ota/version", v.dump());                   // what I run (the firmware section's reconnect step)
      if (d.ota.installing) OtaReport(d, "installing", "");  // its answer never came: again
    } else if (auto* pub = std::get_if<mqtt::Publish>(&p)) {
      if (pub->qos == 1) {
        mqtt::Ack ack;
        ack.type = mqtt::PacketType::kPuback;
        ack.packet_id = pub->packet_id;
        // Dropping before the answer: the device goes away with the
        // notification acknowledged and unanswered.
        Write(d, ack);
      }
      std::string_view topic = pub->topic;
      if (topic.substr(0, d.channel.size()) != d.channel) return true;
      topic.remove_prefix(d.channel.size());
      if (topic.substr(0, 9) == "ota/data/") {
        OnBlock(d, std::strtoull(std::string(topic.substr(9)).c_str(), nullptr, 10), pub->payload);
      } else if (topic == "ota/notify") {
        OnOta(d, pub->payload);
      } else if (topic == "ota/block/rejected") {
        OnBlockRejected(d, pub->payload);
      } else if (topic == "ota/report/accepted") {
        Json j = Json::parse(pub->payload, nullptr, false);
        if (j.is_object() && j.value("phase", "") == "installing") Reboot(d);
      } else if (topic == "ota/cancel") {
        d.ota = Device::Ota{};
      } else if (topic == "certs/renew") {
        OnRenew(d, pub->payload);
      } else if (topic == "certs/csr/accepted") {
        OnRenewed(d, pub->payload);
      } else if (topic == "certs/csr/rejected") {
        ++renew_refused_;
        if (errors_++ < 5) {
          std::fprintf(stderr, "fleetmq-device: %s: CSR refused: %.*s\n", d.id.c_str(),
                       static_cast<int>(pub->payload.size()), pub->payload.data());
        }
      } else if (topic == "jobs/notify") {
        OnNotify(d, pub->payload);
      } else if (topic == "config/desired") {
        OnDesired(d, pub->payload);
      } else if (topic == "health/report/rejected") {
        ++health_rejected_;
      } else if (topic == "config/report/accepted") {
        ++cfg_accepted_;
      } else if (topic == "config/report/rejected") {
        ++cfg_refused_;
      } else if (topic == "jobs/update/accepted") {
        ++accepted_;
      } else if (topic == "jobs/update/rejected") {
        ++rejected_;
      } else if (topic == "jobs/cancel") {
        ++cancels_;
        Json j = Json::parse(pub->payload, nullptr, false);
        if (j.is_object() && j.contains("job_id") && j["job_id"].is_string()) {
          d.seen[j["job_id"].get<std::string>()].second = "CANCELED";
        }
      } else if (topic == "errors") {
        if (errors_++ < 5) {
          std::fprintf(stderr, "fleetmq-device: %s: error: %.*s\n", d.id.c_str(), static_cast<int>(pub->payload.size()),
                       pub->payload.data());
        }
      }
    }
    return true;
  });
  (void)ferr;
  if (!d.connected && !d.connecting && d.tcp != nullptr) Closed(d);
}

void Agent::ScheduleHealth(Device& d) {
  const int64_t now = NowMs();
  if (d.health.boot_ms == 0) {
    d.health.boot_ms = now;
    if (o_.health_s > 0 && Roll(o_.seed, d.id, "health-silent") < o_.health_silent_pct) ++health_silent_;
  }
  if (o_.health_s <= 0 || d.health.scheduled || Roll(o_.seed, d.id, "health-silent") < o_.health_silent_pct) return;
  const auto every = static_cast<int64_t>(o_.health_s * 1000);
  d.health.scheduled = true;
  health_due_.push({now + std::rand() % std::max<int64_t>(every, 1), static_cast<int>(&d - devices_.data())});
}

void Agent::HealthReport(Device& d, int64_t now) {
  Device::Health& h = d.health;
  auto walk = [](double v, double step, double lo, double hi) {
    v += step * (static_cast<double>(std::rand() % 2001) / 1000.0 - 1.0);
    return std::min(hi, std::max(lo, v));
  };
  h.cpu = walk(h.cpu, 8, 1, 99);
  h.mem = walk(h.mem, 2, 10, 95);
  h.storage = std::min(99.0, h.storage + 0.01);
  h.battery = std::max(0.0, h.battery - 0.05);
  h.temp = walk(h.temp, 1, -20, 90);
  h.queue = walk(h.queue, 3, 0, 1000);
  if (Roll(o_.seed, d.id, "health-errors-" + std::to_string(h.reports)) < o_.health_error_pct) {
    h.errors += 20;
  } else if (std::rand() % 50 == 0) {
    h.errors += 1;
  }
  ++h.reports;
  auto r1 = [](double v) { return static_cast<double>(static_cast<int64_t>(v * 10)) / 10.0; };
  Json j{{"uptime_s", (now - h.boot_ms) / 1000},
         {"cpu_pct", r1(h.cpu)},
         {"mem_pct", r1(h.mem)},
         {"storage_pct", r1(h.storage)},
         {"battery_pct", r1(h.battery)},
         {"temperature_c", r1(h.temp)},
         {"errors", h.errors},
         {"metrics", {{"queue_depth", static_cast<int64_t>(h.queue)}, {"reports", h.reports}}}};
  Publish(d, "health/report", j.dump());
  ++health_reports_;
}

void Agent::OnNotify(Device& d, std::string_view payload) {
  Json j = Json::parse(payload, nullptr, false);
  if (!j.is_object() || !j.contains("job_id") || !j.contains("attempt")) return;
  const std::string job = j["job_id"].get<std::string>();
  const uint32_t attempt = j["attempt"].get<uint32_t>();
  last_notify_ms_ = NowMs();
  ++notifications_;
  auto& seen = d.seen[job];
  if (seen.first == attempt) {
    // The same attempt again (a resend after a reconnect or a restart):
    // answered already → the final status again; running → nothing new.
    ++duplicates_;
    if (!seen.second.empty() && seen.second != "CANCELED" && seen.second != "SILENT") {
      Report(d, job, attempt, seen.second, Json{{"result", "repeated"}});
    }
    return;
  }
  seen = {attempt, ""};
  if (Roll(o_.seed, d.id, job + "/silent") < o_.silent_pct) {
    seen.second = "SILENT";
    ++silent_;
    return;
  }
  if (Roll(o_.seed, d.id, job + "/" + std::to_string(attempt) + "/drop") < o_.drop_pct) {
    ++drops_;
    seen.first = 0;  // not executed: it comes again after the reconnect
    if (d.tcp != nullptr) Closed(d);
    return;
  }
  std::string status = "SUCCEEDED";
  if (Roll(o_.seed, d.id, job + "/reject") < o_.reject_pct) {
    status = "REJECTED";
  } else if (Roll(o_.seed, d.id, job + "/" + std::to_string(attempt) + "/fail") < o_.fail_pct) {
    status = "FAILED";
  }
  if (status != "REJECTED" && o_.progress) Report(d, job, attempt, "IN_PROGRESS", Json());
  answers_.push(Answer{NowMs() + o_.slow_ms, static_cast<int>(&d - devices_.data()), job, status, attempt});
  if (o_.slow_ms == 0) Tick();
}

void Agent::ConfigReport(Device& d, uint64_t version, const char* status, const std::string& hash, const char* reason) {
  Json j{{"version", version}, {"status", status}};
  if (!hash.empty()) j["hash"] = hash;
  if (reason != nullptr) j["reason"] = reason;
  Publish(d, "config/report", j.dump());
  if (log_ != nullptr) {
    std::fprintf(
        log_, "%s\n",
        Json{{"device", d.id}, {"config_version", version}, {"status", status}, {"hash", hash}}.dump().c_str());
  }
}

// config/desired (doc/device-api.md, "Configuration"): apply, check, report.
void Agent::OnDesired(Device& d, std::string_view payload) {
  Json j = Json::parse(payload, nullptr, false);
  if (!j.is_object() || !j.contains("version") || !j["version"].is_number_unsigned() || !j.contains("hash") ||
      !j["hash"].is_string()) {
    return;
  }
  ++cfg_desired_;
  last_notify_ms_ = NowMs();
  const uint64_t version = j["version"].get<uint64_t>();
  const std::string want = j["hash"].get<std::string>();
  Json next;
  if (auto doc = j.find("document"); doc != j.end() && doc->is_object()) {
    ++cfg_full_;
    next = *doc;
  } else if (auto patch = j.find("patch"); patch != j.end() && patch->is_object()) {
    ++cfg_patches_;
    if (j.value("base_version", uint64_t{0}) != d.cfg_version || j.value("base_hash", std::string()) != d.cfg_hash) {
      ++cfg_gets_;  // not on the base it was made for: the whole document, please
      Publish(d, "config/get", "{}");
      return;
    }
    next = config::ApplyMergePatch(d.cfg_doc, *patch);
  } else {
    return;
  }
  const std::string key = "config/" + std::to_string(version);
  if (Roll(o_.seed, d.id, key + "/reject") < o_.config_reject_pct) {
    ++cfg_rejected_;
    ConfigReport(d, version, "REJECTED", "", "simulated rejection");
    return;
  }
  std::string hash = config::Hash(next);
  if (hash != want) {
    ++cfg_gets_;  // the result is not what the broker computed: start from the whole document
    Publish(d, "config/get", "{}");
    return;
  }
  if (j.contains("patch") && Roll(o_.seed, d.id, key + "/drift") < o_.config_drift_pct) {
    // A device whose stored document went wrong (and does not check): it
    // reports the hash of what it holds; the broker repairs it.
    ++cfg_drifts_;
    next["_drift"] = true;
    hash = config::Hash(next);
  }
  d.cfg_version = version;
  d.cfg_doc = std::move(next);
  d.cfg_hash = hash;
  ++cfg_applied_;
  ConfigReport(d, version, "APPLIED", hash, nullptr);
}

void Agent::OtaLog(Device& d, const char* status, const std::string& reason) {
  if (log_ == nullptr) return;
  std::fprintf(log_, "%s\n",
               Json{{"device", d.id},
                    {"ota", d.ota.job_id},
                    {"attempt", d.ota.attempt},
                    {"status", status},
                    {"version", d.fw_version},
                    {"reason", reason},
                    {"wall_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count()}}
                   .dump()
                   .c_str());
}

void Agent::OtaReport(Device& d, const char* phase, const std::string& reason) {
  Json j{{"job_id", d.ota.job_id}, {"attempt", d.ota.attempt}, {"phase", phase}};
  if (std::string_view(phase) == "downloading") j["offset"] = d.ota.have;
  if (!reason.empty()) j["reason"] = reason;
  Publish(d, "ota/report", j.dump());
}

// ota/notify: check the manifest, then download (or resume).
void Agent::OnOta(Device& d, std::string_view payload) {
  Json j = Json::parse(payload, nullptr, false);
  if (!j.is_object() || !j.contains("job_id") || !j.contains("attempt") || !j.contains("sha256")) return;
  last_notify_ms_ = NowMs();
  ++ota_offers_;
  const std::string job = j.value("job_id", ""), sha = j.value("sha256", "");
  const uint32_t attempt = j.value("attempt", 0u);
  Device::Ota& o = d.ota;
  if (o.job_id == job && o.attempt == attempt && o.sha256 == sha && o.hash) {
    ++ota_resumed_;  // the same offer again after a reconnect: carry on from the bytes held
    RequestBlocks(d);
    return;
  }
  o = Device::Ota{};
  o.job_id = job;
  o.attempt = attempt;
  o.sha256 = sha;
  o.version = j.value("version", "");
  o.from = d.fw_version;
  o.size = j.value("size", uint64_t{0});
  // The manifest: signed by this tenant's firmware signer under the root it trusts.
  const std::string manifest = j.value("manifest", ""), sig64 = j.value("signature", "");
  std::string sig(sig64.size(), '\0');
  size_t n = 0;
  bool ok = mbedtls_base64_decode(reinterpret_cast<unsigned char*>(sig.data()), sig.size(), &n,
                                  reinterpret_cast<const unsigned char*>(sig64.data()), sig64.size()) == 0;
  sig.resize(n);
  std::string why;
  if (ok) {
    absl::Status v = pki::VerifySigned(&trust_, j.value("signer", ""), d.tenant, manifest, sig);
    if (!v.ok()) why = "signature: " + std::string(v.message());
  } else {
    why = "signature: not base64";
  }
  if (why.empty()) {
    Json m = Json::parse(manifest, nullptr, false);
    if (!m.is_object() || m.value("tenant", "") != d.tenant || m.value("sha256", "") != sha ||
        m.value("version", "") != o.version || m.value("size", uint64_t{0}) != o.size) {
      why = "manifest does not match the offer";
    }
  }
  if (!why.empty() || o.size == 0) {
    ++ota_bad_manifest_;
    ++ota_failed_;
    OtaReport(d, "failed", why.empty() ? "empty image" : why);
    OtaLog(d, "FAILED", why);
    o = Device::Ota{};
    return;
  }
  o.hash = std::make_unique<mbedtls_sha256_context>();
  mbedtls_sha256_init(o.hash.get());
  mbedtls_sha256_starts_ret(o.hash.get(), 0);
  o.rollback = j.contains("rollback_of");
  o.corrupt = !o.rollback && Roll(o_.seed, d.id, job + "/ota-corrupt") < o_.ota_corrupt_pct;
  OtaReport(d, "downloading", "");
  RequestBlocks(d);
}

void Agent::RequestBlocks(Device& d) {
  Device::Ota& o = d.ota;
  if (!o.hash || !d.connected) return;
  while (o.outstanding < o_.ota_window && o.next < o.size) {
    const uint64_t len = std::min<uint64_t>(static_cast<uint64_t>(o_.block), o.size - o.next);
    Publish(d, "ota/block", Json{{"sha256", o.sha256}, {"offset", o.next}, {"length", len}}.dump());
    o.next += len;
    ++o.outstanding;
  }
}

void Agent::OnBlockRejected(Device& d, std::string_view payload) {
  Json j = Json::parse(payload, nullptr, false);
  if (!j.is_object() || !d.ota.hash) return;
  Device::Ota& o = d.ota;
  const std::string code = j.contains("error") ? j["error"].value("code", "") : "";
  if (o.outstanding > 0) --o.outstanding;
  if (code == "busy") {
    // Over the budget: that block again after the time the broker says.
    ++ota_busy_;
    const uint64_t off = j.value("offset", o.have);
    const uint64_t len = std::min<uint64_t>(static_cast<uint64_t>(o_.block), o.size - off);
    ++o.outstanding;
    retries_.push(Retry{NowMs() + std::max<int64_t>(1, j.value("retry_after_ms", int64_t{100})),
                        static_cast<int>(&d - devices_.data()), "ota/block",
                        Json{{"sha256", o.sha256}, {"offset", off}, {"length", len}}.dump()});
    return;
  }
  ++ota_failed_;
  OtaReport(d, "failed", "block refused: " + code);
  OtaLog(d, "FAILED", code);
  o = Device::Ota{};
}

void Agent::OnBlock(Device& d, uint64_t offset, std::string_view bytes) {
  Device::Ota& o = d.ota;
  if (!o.hash) return;
  last_notify_ms_ = NowMs();
  if (o.outstanding > 0) --o.outstanding;
  if (offset != o.have || bytes.empty()) {  // not the next bytes (an old request): ask again from where it is
    o.next = o.have;
    o.outstanding = 0;
    RequestBlocks(d);
    return;
  }
  ++ota_blocks_;
  ota_bytes_ += bytes.size();
  std::string b(bytes);
  if (o.corrupt && offset == 0) b[0] = static_cast<char>(b[0] ^ 0x5a);  // flash went wrong
  mbedtls_sha256_update_ret(o.hash.get(), reinterpret_cast<const unsigned char*>(b.data()), b.size());
  o.have += b.size();
  if (o.have < o.size) {
    if (o.have * 4 / o.size > o.reported * 4 / o.size) {  // progress every quarter
      o.reported = o.have;
      OtaReport(d, "downloading", "");
    }
    if (!o.dropped && o.have * 2 >= o.size && Roll(o_.seed, d.id, o.job_id + "/ota-drop") < o_.ota_drop_pct) {
      o.dropped = true;  // once, halfway: the download resumes after the reconnect
      Closed(d);
      return;
    }
    RequestBlocks(d);
    return;
  }
  unsigned char digest[32];
  mbedtls_sha256_finish_ret(o.hash.get(), digest);
  const std::string hex = HexOf(digest, sizeof digest);
  if (hex != o.sha256) {
    ++ota_failed_;
    OtaReport(d, "failed", "hash_mismatch");
    OtaLog(d, "FAILED", "hash_mismatch");
    o = Device::Ota{};
    return;
  }
  if (!o.rollback && Roll(o_.seed, d.id, o.job_id + "/ota-fail") < o_.ota_fail_pct) {
    ++ota_failed_;
    OtaReport(d, "failed", "install failed (simulated)");
    OtaLog(d, "FAILED", "install");
    o = Device::Ota{};
    return;
  }
  // Installed: it reboots once the broker stored this report (Reboot).
  o.installing = true;
  OtaReport(d, "installing", "");
}

void Agent::Reboot(Device& d) {
  Device::Ota& o = d.ota;
  if (!o.installing) return;
  // The new version (or, rolled back by its bootloader, the old one), or
  // never again.
  ++ota_installed_;
  if (!o.rollback && Roll(o_.seed, d.id, o.job_id + "/ota-never") < o_.ota_never_pct) {
    ++ota_never_;
    d.dead = true;
    OtaLog(d, "NEVER_BACK", "");
  } else if (!o.rollback && Roll(o_.seed, d.id, o.job_id + "/ota-rollback") < o_.ota_rollback_pct) {
    ++ota_rolled_back_;
    d.rolled_back = true;
    OtaLog(d, "ROLLED_BACK", "");
  } else {
    d.fw_version = o.version;
    d.rolled_back = false;
    OtaLog(d, "INSTALLED", "");
  }
  o = Device::Ota{};
  Closed(d);
}

void Agent::OnRenew(Device& d, std::string_view payload) {
  Json j = Json::parse(payload, nullptr, false);
  if (!j.is_object() || !j.contains("job_id") || !j["job_id"].is_string() || !j.contains("attempt") ||
      !j["attempt"].is_number_unsigned()) {
    return;
  }
  const std::string job = j["job_id"].get<std::string>();
  const auto attempt = j["attempt"].get<uint32_t>();
  Json reply{{"job_id", job}, {"attempt", attempt}};
  if (d.renewal.job_id == job && d.renewal.attempt == attempt && !d.renewal.key_pem.empty()) {
    ++duplicates_;  // asked again (a reconnect): the same CSR's key, a new CSR
  } else if (Roll(o_.seed, d.id, job + "/" + std::to_string(attempt) + "/renew-fail") < o_.renew_fail_pct) {
    reply["error"] = "key generation failed";
    Publish(d, "certs/csr", reply.dump());
    return;
  } else {
    auto key = pki::Key::Generate(rng_);
    if (!key.ok()) return;
    d.renewal = Device::Renewal{job, *key->ToPem(), attempt, false};
  }
  auto key = pki::Key::FromPem(d.renewal.key_pem);
  if (!key.ok()) return;
  mbedtls_x509write_csr req;
  mbedtls_x509write_csr_init(&req);
  mbedtls_x509write_csr_set_md_alg(&req, MBEDTLS_MD_SHA256);
  mbedtls_x509write_csr_set_key(&req, key->pk());
  const std::string subject = "CN=" + d.id + ",OU=device,O=" + d.tenant;
  unsigned char buf[4096];
  const bool ok = mbedtls_x509write_csr_set_subject_name(&req, subject.c_str()) == 0 &&
                  mbedtls_x509write_csr_pem(&req, buf, sizeof buf, pki::Rng::Fill, &rng_) == 0;
  mbedtls_x509write_csr_free(&req);
  if (!ok) return;
  reply["csr"] = std::string(reinterpret_cast<const char*>(buf));
  ++renew_requests_;
  Publish(d, "certs/csr", reply.dump());
}

void Agent::OnRenewed(Device& d, std::string_view payload) {
  Json j = Json::parse(payload, nullptr, false);
  if (!j.is_object() || j.value("job_id", "") != d.renewal.job_id || d.renewal.key_pem.empty() ||
      !j.contains("certificate_pem") || !j["certificate_pem"].is_string()) {
    return;
  }
  // Checked before it replaces anything: it chains to the root we trust,
  // names this device, and belongs to the key we made.
  const std::string pem = j["certificate_pem"].get<std::string>() + j.value("ca_chain_pem", "");
  mbedtls_x509_crt crt;
  mbedtls_x509_crt_init(&crt);
  auto key = pki::Key::FromPem(d.renewal.key_pem);
  uint32_t flags = 0;
  bool ok = key.ok() &&
            mbedtls_x509_crt_parse(&crt, reinterpret_cast<const unsigned char*>(pem.c_str()), pem.size() + 1) == 0 &&
            mbedtls_x509_crt_verify(&crt, &trust_, nullptr, nullptr, &flags, nullptr, nullptr) == 0 &&
            mbedtls_pk_check_pair(&crt.pk, key->pk()) == 0;
  if (ok) {
    auto id = pki::IdentityOf(crt);
    ok = id.ok() && id->name == d.id && id->tenant == d.tenant;
  }
  mbedtls_x509_crt_free(&crt);
  if (!ok) {
    ++renew_refused_;
    std::fprintf(stderr, "fleetmq-device: %s: the renewed certificate does not check out (flags %x)\n", d.id.c_str(),
                 flags);
    return;
  }
  const std::string base = o_.certs + "/" + d.id;
  // The key first: a crash between the two leaves the old pair's certificate
  // with a key it does not match, which a real device avoids with A/B slots;
  // here both are written through rename.
  if (!pki::WriteFileAtomic(base + ".key", d.renewal.key_pem, 0600).ok() ||
      !pki::WriteFileAtomic(base + ".crt", pem, 0644).ok()) {
    std::fprintf(stderr, "fleetmq-device: %s: cannot store the renewed certificate\n", d.id.c_str());
    return;
  }
  ++renewed_;
  if (log_ != nullptr) {
    std::fprintf(
        log_, "%s\n",
        Json{{"device", d.id}, {"renewed", j.value("serial", "")}, {"job_id", d.renewal.job_id}}.dump().c_str());
  }
  d.renewal.key_pem.clear();
  d.renewal.renewed = true;
  Closed(d);  // and back with the new certificate
}

void Agent::Tick() {
  const int64_t now = NowMs();
  while (!retries_.empty() && retries_.top().at <= now) {
    Retry r = retries_.top();
    retries_.pop();
    Device& d = devices_[r.device];
    if (d.connected) Publish(d, r.suffix, r.payload);  // else: the reconnect's jobs/get brings it back
  }
  while (!answers_.empty() && answers_.top().at <= now) {
    Answer a = answers_.top();
    answers_.pop();
    Device& d = devices_[a.device];
    auto& seen = d.seen[a.job_id];
    if (seen.first != a.attempt || !seen.second.empty()) continue;  // canceled or superseded
    seen.second = a.status;
    if (!d.connected) {
      seen.second.clear();  // answered after the reconnect, when notified again
      seen.first = 0;
      continue;
    }
    const Json details = a.status == "SUCCEEDED" ? Json{{"result", "ok"}} : Json{{"error", "simulated " + a.status}};
    Report(d, a.job_id, a.attempt, a.status, details);
    (a.status == "SUCCEEDED" ? succeeded_ : a.status == "FAILED" ? failed_ : rejected_jobs_)++;
    if (log_ != nullptr) {
      std::fprintf(
          log_, "%s\n",
          Json{{"device", d.id}, {"job_id", a.job_id}, {"attempt", a.attempt}, {"status", a.status}}.dump().c_str());
    }
  }
  Pump();
  if (connected_ == o_.count && all_connected_ms_ == 0) all_connected_ms_ = now;
  while (!health_due_.empty() && health_due_.top().first <= now) {
    const int idx = health_due_.top().second;
    health_due_.pop();
    Device& d = devices_[static_cast<size_t>(idx)];
    d.health.scheduled = false;
    if (!d.connected || d.dead) continue;  // again after its next subscription
    HealthReport(d, now);
    d.health.scheduled = true;
    health_due_.push({now + static_cast<int64_t>(o_.health_s * 1000), idx});
  }
  if (now - last_ping_ms_ >= ping_every_ms_) {  // half the keep alive (60 s asked)
    last_ping_ms_ = now;
    for (Device& d : devices_) {
      if (d.connected) Write(d, mqtt::Pingreq{});
    }
  }
  if (now - last_line_ms_ >= 1000) {
    last_line_ms_ = now;
    std::fprintf(stderr,
                 "fleetmq-device: %d/%d connected, %llu notified (%llu again), %llu succeeded, %llu failed, %llu "
                 "rejected, %llu accepted, %llu refused replies, %llu errors\n",
                 connected_, o_.count, static_cast<unsigned long long>(notifications_),
                 static_cast<unsigned long long>(duplicates_), static_cast<unsigned long long>(succeeded_),
                 static_cast<unsigned long long>(failed_), static_cast<unsigned long long>(rejected_jobs_),
                 static_cast<unsigned long long>(accepted_), static_cast<unsigned long long>(rejected_),
                 static_cast<unsigned long long>(errors_));
  }
  const bool timeout = o_.duration > 0 && now - start_ms_ >= o_.duration * 1000;
  const bool idle = o_.idle_exit > 0 && all_connected_ms_ != 0 &&
                    now - std::max(last_notify_ms_, all_connected_ms_) >= o_.idle_exit * 1000;
  if (stop_ || timeout || idle) {
    stop_ = true;
    uv_timer_stop(&tick_);
    for (Device& d : devices_) {
      if (d.tcp != nullptr) {
        if (d.connected) Write(d, mqtt::Disconnect{});
        uv_close(reinterpret_cast<uv_handle_t*>(d.tcp), [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
        d.tcp = nullptr;
      }
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&tick_), nullptr);
  }
}

void Agent::Summary() {
  Json s{{"devices", o_.count},
         {"connects", connects_},
         {"disconnects", disconnects_},
         {"refused", refused_},
         {"notifications", notifications_},
         {"duplicates", duplicates_},
         {"reports", reports_},
         {"succeeded", succeeded_},
         {"failed", failed_},
         {"rejected", rejected_jobs_},
         {"silent", silent_},
         {"drops", drops_},
         {"accepted", accepted_},
         {"rejected_replies", rejected_},
         {"cancels", cancels_},
         {"errors", errors_},
         {"busy", busy_},
         {"config", Json{{"desired", cfg_desired_},
                         {"patches", cfg_patches_},
                         {"full", cfg_full_},
                         {"applied", cfg_applied_},
                         {"rejected", cfg_rejected_},
                         {"gets", cfg_gets_},
                         {"accepted", cfg_accepted_},
                         {"refused", cfg_refused_},
                         {"drifts", cfg_drifts_}}},
         {"ota", Json{{"offers", ota_offers_},
                      {"blocks", ota_blocks_},
                      {"bytes", ota_bytes_},
                      {"busy", ota_busy_},
                      {"installed", ota_installed_},
                      {"failed", ota_failed_},
                      {"bad_manifest", ota_bad_manifest_},
                      {"resumed", ota_resumed_},
                      {"rolled_back", ota_rolled_back_},
                      {"never_back", ota_never_}}},
         {"health", Json{{"reports", health_reports_}, {"rejected", health_rejected_}, {"silent", health_silent_}}},
         {"renewal", Json{{"csrs", renew_requests_}, {"renewed", renewed_}, {"refused", renew_refused_}}},
         {"seconds", (NowMs() - start_ms_) / 1000.0}};
  std::printf("%s\n", s.dump().c_str());
}

void Usage() {
  std::fprintf(stderr,
               "usage: fleetmq-device --port P --ca FILE --certs DIR --count N [--prefix dev-] [--start 0]\n"
               "  [--host 127.0.0.1] [--fail-pct X] [--reject-pct X] [--silent-pct X] [--drop-pct X] [--slow-ms N]\n"
               "  [--version 5|4] [--window 64] [--duration S] [--idle-exit S] [--log FILE] [--seed N]\n"
               "  [--no-progress] [--config-reject-pct X] [--config-drift-pct X] [--firmware V]\n"
               "  [--block N] [--ota-window N] [--ota-corrupt-pct X] [--ota-fail-pct X] [--ota-rollback-pct X]\n"
               "  [--ota-never-pct X] [--ota-drop-pct X] [--health-s S] [--health-error-pct X]\n"
               "  [--health-silent-pct X] [--renew-fail-pct X]\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--host")
      o.host = val();
    else if (a == "--port")
      o.port = std::atoi(val().c_str());
    else if (a == "--ca")
      o.ca = val();
    else if (a == "--certs")
      o.certs = val();
    else if (a == "--count")
      o.count = std::atoi(val().c_str());
    else if (a == "--start")
      o.start = std::atoi(val().c_str());
    else if (a == "--prefix")
      o.prefix = val();
    else if (a == "--fail-pct")
      o.fail_pct = std::atof(val().c_str());
    else if (a == "--reject-pct")
      o.reject_pct = std::atof(val().c_str());
    else if (a == "--silent-pct")
      o.silent_pct = std::atof(val().c_str());
    else if (a == "--drop-pct")
      o.drop_pct = std::atof(val().c_str());
    else if (a == "--slow-ms")
      o.slow_ms = std::atoi(val().c_str());
    else if (a == "--version")
      o.version = std::atoi(val().c_str());
    else if (a == "--window")
      o.window = std::atoi(val().c_str());
    else if (a == "--duration")
      o.duration = std::atof(val().c_str());
    else if (a == "--idle-exit")
      o.idle_exit = std::atof(val().c_str());
    else if (a == "--log")
      o.log = val();
    else if (a == "--seed")
      o.seed = std::strtoull(val().c_str(), nullptr, 10);
    else if (a == "--no-progress")
      o.progress = false;
    else if (a == "--config-reject-pct")
      o.config_reject_pct = std::atof(val().c_str());
    else if (a == "--config-drift-pct")
      o.config_drift_pct = std::atof(val().c_str());
    else if (a == "--firmware")
      o.firmware = val();
    else if (a == "--block")
      o.block = std::atoi(val().c_str());
    else if (a == "--ota-window")
      o.ota_window = std::atoi(val().c_str());
    else if (a == "--ota-corrupt-pct")
      o.ota_corrupt_pct = std::atof(val().c_str());
    else if (a == "--ota-fail-pct")
      o.ota_fail_pct = std::atof(val().c_str());
    else if (a == "--ota-rollback-pct")
      o.ota_rollback_pct = std::atof(val().c_str());
    else if (a == "--ota-never-pct")
      o.ota_never_pct = std::atof(val().c_str());
    else if (a == "--ota-drop-pct")
      o.ota_drop_pct = std::atof(val().c_str());
    else if (a == "--health-s")
      o.health_s = std::atof(val().c_str());
    else if (a == "--health-error-pct")
      o.health_error_pct = std::atof(val().c_str());
    else if (a == "--health-silent-pct")
      o.health_silent_pct = std::atof(val().c_str());
    else if (a == "--renew-fail-pct")
      o.renew_fail_pct = std::atof(val().c_str());
    else {
      Usage();
      return 2;
    }
  }
  if (o.ca.empty() || o.certs.empty() || o.count < 1 || o.port <= 0 || (o.version != 4 && o.version != 5) ||
      o.window < 1 || o.block < 1 || o.block > 1048576 || o.ota_window < 1) {
    Usage();
    return 2;
  }
  sockaddr_in addr;
  if (uv_ip4_addr(o.host.c_str(), o.port, &addr) != 0 || (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
    std::fprintf(stderr, "fleetmq-device: loopback only (127.0.0.0/8)\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);  // a write to a connection the broker closed is an error, not the end
  return Agent(o).Run();
}

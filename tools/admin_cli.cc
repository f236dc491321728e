// fleetmq-admin: the operators' command line. Speaks the admin control
// protocol (doc/admin-api.md) over MQTT 5 / mutual TLS with an operator (or
// platform admin) certificate; defaults come from the data dir of the
// embedded default, so it works right after `tools/dev.sh run`. Help is
// generated from the command table the broker dispatches with.
//
//   fleetmq-admin [options] <command> [name=value ...]
//   fleetmq-admin help [command]
#include <arpa/inet.h>
#include <mbedtls/base64.h>
#include <mbedtls/sha256.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "broker/mqtt/codec.h"
#include "broker/mqtt/framer.h"
#include "broker/tls/tls.h"
#include "broker/tls/tls_client.h"
#include "common/hex.h"
#include "common/mgmt_topics.h"
#include "mgmt/admin/commands.h"
#include "mgmt/pki/pki.h"
#include "mgmt/pki/pki_dir.h"

namespace {

using fmq::admin::ArgType;
using fmq::admin::CommandSpec;
using Json = nlohmann::json;
namespace mqtt = fmq::mqtt;

struct Options {
  std::string data_dir = "./data";
  std::string host = "127.0.0.1";
  int port = 8883;
  std::string server_name = "localhost";
  std::string cafile, cert, key;
  bool json = false;
  int timeout_s = 10;
  std::string raw;  // --raw: send this request text as is
};

[[noreturn]] void Die(int code, const std::string& msg) {
  std::fprintf(stderr, "fleetmq-admin: %s\n", msg.c_str());
  std::exit(code);
}

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: fleetmq-admin [options] <command> [name=value ...]\n"
               "       fleetmq-admin help [command]\n\n"
               "options:\n"
               "  --data_dir DIR     data dir of the broker (default ./data): certificates from DIR/pki\n"
               "  --host H --port P  broker TLS listener (default 127.0.0.1:8883)\n"
               "  --server_name N    name in the broker's certificate (default localhost)\n"
               "  --cafile F --cert F --key F   override the certificates (default: operator.crt,\n"
               "                     or admin.crt for platform commands, and root.crt)\n"
               "  --json             print the server's JSON reply (for scripts)\n"
               "  --timeout S        seconds to wait for the reply (default 10)\n"
               "  --raw JSON         send JSON as the request body, unchanged (@FILE: read it from FILE)\n\n"
               "values: strings as is, integers, true/false, lists comma-separated, objects as JSON;\n"
               "name=@FILE reads the value from FILE (e.g. csr=@device.csr).\n\ncommands:\n");
  for (const CommandSpec& c : fmq::admin::Commands()) std::fprintf(out, "  %-22s %s\n", c.name, c.summary);
  std::fprintf(out, "  %-22s %s\n", "job.watch",
               "Follow a job live (job_id=X [until_paused=true]): a progress bar until it ends (or pauses); exit 0 if "
               "COMPLETED, 3 otherwise");
}

void CommandHelp(const CommandSpec& c) {
  std::printf("%s — %s\nrole: %s\n", c.name, c.summary, std::string(fmq::admin::RoleName(c.role)).c_str());
  for (const auto& a : c.args) {
    std::printf("  %s=<%s>%s  %s\n", a.name, std::string(fmq::admin::ArgTypeName(a.type)).c_str(),
                a.required ? " (required)" : "", a.help);
  }
}

Json ParseValue(const fmq::admin::ArgSpec& a, std::string v) {
  if (!v.empty() && v[0] == '@') {
    std::ifstream in(v.substr(1), std::ios::binary);
    if (!in) Die(2, "cannot read " + v.substr(1));
    v.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  switch (a.type) {
    case ArgType::kString:
      return v;
    case ArgType::kInt: {
      char* end = nullptr;
      long long n = std::strtoll(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0') Die(2, std::string(a.name) + ": '" + v + "' is not an integer");
      return n;
    }
    case ArgType::kBool:
      if (v == "true" || v == "1") return true;
      if (v == "false" || v == "0") return false;
      Die(2, std::string(a.name) + ": '" + v + "' is not true/false");
    case ArgType::kStringList: {
      Json list = Json::array();
      std::stringstream ss(v);
      std::string item;
      while (std::getline(ss, item, ',')) {
        if (!item.empty()) list.push_back(item);
      }
      return list;
    }
    case ArgType::kNumber: {
      char* end = nullptr;
      const double d = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0') Die(2, std::string(a.name) + ": '" + v + "' is not a number");
      if (d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
      return d;
    }
    case ArgType::kObject: {
      Json j = Json::parse(v, nullptr, false);
      if (j.is_discarded() || !j.is_object()) Die(2, std::string(a.name) + ": not a JSON object");
      return j;
    }
  }
  return v;
}

// A blocking MQTT 5 client over mutual TLS, just enough for one request.
class Client {
 public:
  Client(const Options& o) : opts_(o), framer_(16 * 1024 * 1024) {}
  ~Client() {
    if (fd_ >= 0) close(fd_);
  }

  void Connect(const std::string& client_id) {
    if (!rng_.status().ok()) Die(2, "no entropy");
    auto conf = fmq::tls::TlsClientConfig::FromFiles(opts_.cafile, opts_.cert, opts_.key, &rng_);
    if (!conf.ok()) Die(2, std::string(conf.status().message()));
    client_ = std::move(*conf);

    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(opts_.host.c_str(), std::to_string(opts_.port).c_str(), &hints, &res) != 0 || res == nullptr) {
      Die(2, "cannot resolve " + opts_.host);
    }
    fd_ = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd_ < 0 || connect(fd_, res->ai_addr, res->ai_addrlen) != 0) {
      freeaddrinfo(res);
      Die(2, "cannot connect to " + opts_.host + ":" + std::to_string(opts_.port) + ": " + std::strerror(errno));
    }
    freeaddrinfo(res);
    tls_ = std::make_unique<fmq::tls::TlsSession>(client_->conf(), opts_.server_name.c_str());
    tls_->OnCiphertext("");
    mqtt::Connect c;
    c.client_id = client_id;
    c.keep_alive = 60;
    Send(c);
    mqtt::Packet p = Receive();
    auto* ack = std::get_if<mqtt::Connack>(&p);
    if (ack == nullptr) Die(2, "expected CONNACK");
    if (ack->reason != mqtt::ReasonCode::kSuccess) {
      Die(2, "broker refused the connection: " + std::string(mqtt::ReasonName(ack->reason)));
    }
    // A long wait (job.watch) pings at half the keep alive the broker set.
    if (ack->props.Has(mqtt::PropertyId::kServerKeepAlive) && ack->props.server_keep_alive > 0) {
      ping_every_ms_ = int64_t{ack->props.server_keep_alive} * 500;
    }
  }

  void Send(const mqtt::Packet& p) {
    std::string bytes;
    mqtt::Encode(p, mqtt::Version::kV5, &bytes);
    tls_->Write(bytes);
    last_sent_ms_ = NowMs();
    Pump(false);
  }

  mqtt::Packet Receive() {
    while (true) {
      if (!queue_.empty()) {
        mqtt::Packet p = std::move(queue_.front());
        queue_.erase(queue_.begin());
        return p;
      }
      Pump(true);
    }
  }

 private:
  void Pump(bool wait) {
    std::string out = tls_->TakeCiphertext();
    size_t off = 0;
    while (off < out.size()) {
      ssize_t n = write(fd_, out.data() + off, out.size() - off);
      if (n <= 0) Die(2, "connection lost while writing");
      off += static_cast<size_t>(n);
    }
    if (!wait) return;
    pollfd pfd{fd_, POLLIN, 0};
    while (true) {
      const int64_t now = NowMs();
      const int64_t left_ms = deadline_ms_ - now, ping_in = last_sent_ms_ + ping_every_ms_ - now;
      if (left_ms <= 0) Die(2, "no reply within " + std::to_string(opts_.timeout_s) + " s");
      if (ping_in <= 0) {
        Send(mqtt::Pingreq{});
        continue;
      }
      const int r = poll(&pfd, 1, static_cast<int>(std::min(left_ms, ping_in)));
      if (r > 0) break;
      if (r < 0 && errno != EINTR) Die(2, std::string("poll: ") + std::strerror(errno));
    }
    char buf[64 * 1024];
    ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) {
      Die(2, tls_->state() == fmq::tls::TlsSession::State::kHandshake
                 ? "TLS handshake refused by the broker (certificate revoked, unknown or of another tenant?)"
                 : "connection closed by the broker");
    }
    tls_->OnCiphertext(std::string_view(buf, static_cast<size_t>(n)));
    if (tls_->state() == fmq::tls::TlsSession::State::kFailed) Die(2, "TLS: " + tls_->error());
    std::string plain = tls_->TakePlaintext();
    mqtt::Error e = framer_.Feed(plain, [&](uint8_t first, std::string_view body) {
      mqtt::Packet p;
      mqtt::Error d = mqtt::Decode(first, body, mqtt::Version::kV5, &p);
      if (!d.ok()) Die(2, std::string("bad packet from the broker: ") + d.rule);
      if (std::holds_alternative<mqtt::Pingresp>(p)) return true;
      // Publish keeps views into `body`: copy its topic and payload.
      if (auto* pub = std::get_if<mqtt::Publish>(&p)) {
        topics_.emplace_back(pub->topic);
        payloads_.emplace_back(pub->payload);
        pub->topic = topics_.back();
        pub->payload = payloads_.back();
      }
      queue_.push_back(std::move(p));
      return true;
    });
    if (!e.ok()) Die(2, std::string("bad stream from the broker: ") + e.rule);
    Pump(false);
  }

 public:
  static int64_t NowMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  int64_t deadline_ms_ = NowMs() + 10'000;
  int64_t ping_every_ms_ = 30'000, last_sent_ms_ = NowMs();

 private:
  const Options& opts_;
  fmq::pki::Rng rng_;
  std::unique_ptr<fmq::tls::TlsClientConfig> client_;
  int fd_ = -1;
  std::unique_ptr<fmq::tls::TlsSession> tls_;
  mqtt::Framer framer_;
  std::vector<mqtt::Packet> queue_;
  std::deque<std::string> topics_, payloads_;
};

// Sends one request, returns the reply JSON.
std::string Thousands(uint64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

// One progress line: "[#####.....] 750,000 / 1,000,000 devices ...".
void PrintProgress(const Json& e, bool tty) {
  const uint64_t total = e.value("total", uint64_t{0}), done = e.value("done", uint64_t{0});
  const Json c = e.value("counts", Json::object());
  const int width = 30;
  const int fill = total == 0 ? 0 : static_cast<int>(static_cast<double>(done) / static_cast<double>(total) * width);
  std::string bar(static_cast<size_t>(fill), '#');
  bar.resize(width, '.');
  char line[512];
  std::snprintf(line, sizeof line, "[%s] %s / %s devices  %s  ok %s  failed %s  timed out %s  in flight %s",
                bar.c_str(), Thousands(done).c_str(), Thousands(total).c_str(),
                e.value("status", std::string("?")).c_str(), Thousands(c.value("SUCCEEDED", uint64_t{0})).c_str(),
                Thousands(c.value("FAILED", uint64_t{0}) + c.value("REJECTED", uint64_t{0})).c_str(),
                Thousands(c.value("TIMED_OUT", uint64_t{0})).c_str(),
                Thousands(e.value("in_flight", uint64_t{0})).c_str());
  std::string s = line;
  if (e.contains("rate_per_s")) s += "  " + Thousands(static_cast<uint64_t>(e["rate_per_s"].get<double>())) + "/s";
  if (e.contains("eta_s")) s += "  ETA " + std::to_string(static_cast<int64_t>(e["eta_s"].get<double>())) + " s";
  if (e.contains("reason")) s += "  (" + e["reason"].get<std::string>() + ")";
  std::printf(tty ? "\r%s\x1b[K" : "%s\n", s.c_str());
  std::fflush(stdout);
}

Json Request(Client& cl, const std::string& client_id, const std::string& body);

// job.watch: the job's retained progress events ($SYS/fleetmq/events/v1/
// jobs/<id>, doc/jobs.md) until it ends (or pauses: until_paused, for
// scripts waiting on a wave's gate).
int Watch(Client& cl, const std::string& client_id, const std::string& job_id, bool json, bool until_paused) {
  // The job must exist (and be this tenant's): job.get first.
  Json reply =
      Request(cl, client_id, Json{{"commands", Json::array({{{"command", "job.get"}, {"job_id", job_id}}})}}.dump());
  const Json& r = reply["responses"][0];
  if (r.value("status", "") != "ok") {
    const Json err = r.value("error", Json::object());
    std::fprintf(stderr, "error %s: %s\n", err.value("code", "?").c_str(), err.value("message", "").c_str());
    return 1;
  }
  auto ended = [&](const std::string& st) {
    return st == "COMPLETED" || st == "CANCELED" || st == "ABORTED" || (until_paused && st == "PAUSED");
  };
  const bool tty = !json && isatty(1) != 0;
  Json last = r["data"];
  if (json)
    std::printf("%s\n", last.dump().c_str());
  else
    PrintProgress(last, tty);
  const std::string topic = std::string(fmq::topics::kJobEventsPrefix) + job_id;
  mqtt::Subscribe sub;
  sub.packet_id = 3;
  sub.entries.push_back({topic, 1});
  cl.Send(sub);
  while (!ended(last.value("status", std::string()))) {
    cl.deadline_ms_ = Client::NowMs() + 86'400'000;  // a job may run for long
    mqtt::Packet p = cl.Receive();
    auto* pub = std::get_if<mqtt::Publish>(&p);
    if (pub == nullptr) continue;
    if (pub->qos > 0) {
      mqtt::Ack ack;
      ack.type = mqtt::PacketType::kPuback;
      ack.packet_id = pub->packet_id;
      cl.Send(ack);
    }
    if (pub->topic != topic) continue;
    Json e = Json::parse(pub->payload, nullptr, false);
    if (!e.is_object()) continue;
    last = std::move(e);
    if (json)
      std::printf("%s\n", last.dump().c_str());
    else
      PrintProgress(last, tty);
  }
  if (tty) std::printf("\n");
  std::fflush(stdout);
  return last.value("status", std::string()) == "COMPLETED" ? 0 : 3;
}

Json Request(Client& cl, const std::string& client_id, const std::string& body) {
  const std::string reply_topic = std::string(fmq::topics::kControlReplyPrefix) + client_id;
  mqtt::Subscribe sub;
  sub.packet_id = 1;
  sub.entries.push_back({reply_topic, 1});
  cl.Send(sub);
  while (true) {
    mqtt::Packet p = cl.Receive();
    if (auto* sa = std::get_if<mqtt::SubAck>(&p)) {
      if (sa->codes.empty() || mqtt::IsError(sa->codes[0])) Die(2, "the broker refused the reply subscription");
      break;
    }
  }
  mqtt::Publish pub;
  pub.qos = 1;
  pub.packet_id = 2;
  pub.topic = fmq::topics::kControlRequest;  // a view: the constant outlives the packet
  pub.payload = body;
  pub.props.response_topic = reply_topic;
  pub.props.Mark(mqtt::PropertyId::kResponseTopic);
  pub.props.correlation_data = "fleetmq-admin-" + std::to_string(getpid());
  pub.props.Mark(mqtt::PropertyId::kCorrelationData);
  cl.Send(pub);
  while (true) {
    mqtt::Packet p = cl.Receive();
    if (auto* a = std::get_if<mqtt::Ack>(&p);
        a != nullptr && a->type == mqtt::PacketType::kPuback && a->packet_id == 2) {
      if (mqtt::IsError(a->reason)) {
        Die(1, "request refused: " + std::string(mqtt::ReasonName(a->reason)) +
                   (a->props.reason_string.empty() ? "" : " (" + a->props.reason_string + ")"));
      }
    } else if (auto* r = std::get_if<mqtt::Publish>(&p)) {
      if (r->qos > 0) {
        mqtt::Ack ack;
        ack.type = mqtt::PacketType::kPuback;
        ack.packet_id = r->packet_id;
        cl.Send(ack);
      }
      if (r->topic != reply_topic) continue;
      Json j = Json::parse(r->payload, nullptr, false);
      if (j.is_discarded()) Die(2, "reply is not JSON");
      return j;
    }
  }
}

std::string Cell(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  if (v.is_array() && std::all_of(v.begin(), v.end(), [](const Json& e) { return e.is_string(); })) {
    std::string s;
    for (const auto& e : v) s += (s.empty() ? "" : ",") + e.get<std::string>();
    return s;
  }
  return v.dump();
}

void PrintTable(const Json& rows) {
  if (rows.empty()) {
    std::printf("(none)\n");
    return;
  }
  std::vector<std::string> cols;
  for (auto it = rows[0].begin(); it != rows[0].end(); ++it) {
    if (it.key().find("_pem") == std::string::npos && it.key() != "hash") cols.push_back(it.key());
  }
  std::vector<size_t> w(cols.size());
  for (size_t i = 0; i < cols.size(); ++i) {
    w[i] = cols[i].size();
    for (const auto& r : rows) w[i] = std::max(w[i], std::min<size_t>(40, Cell(r.value(cols[i], Json())).size()));
  }
  for (size_t i = 0; i < cols.size(); ++i) std::printf("%-*s  ", static_cast<int>(w[i]), cols[i].c_str());
  std::printf("\n");
  for (const auto& r : rows) {
    for (size_t i = 0; i < cols.size(); ++i) {
      std::string c = Cell(r.value(cols[i], Json()));
      if (c.size() > 40) c.replace(37, std::string::npos, "...");
      std::printf("%-*s  ", static_cast<int>(w[i]), c.c_str());
    }
    std::printf("\n");
  }
}

void PrintHuman(const Json& data) {
  for (auto it = data.begin(); it != data.end(); ++it) {
    if (it.value().is_array() && !it.value().empty() && it.value()[0].is_object()) {
      PrintTable(it.value());
    } else if (it.value().is_array() && it.value().empty() && it.key() != "group_ids") {
      std::printf("(none)\n");
    }
  }
  for (auto it = data.begin(); it != data.end(); ++it) {
    if (it.value().is_array() && (it.value().empty() || it.value()[0].is_object()) && it.key() != "group_ids") continue;
    if (it.key() == "next_cursor") {
      if (!it.value().get<std::string>().empty())
        std::printf("next_cursor: %s\n", it.value().get<std::string>().c_str());
      continue;
    }
    if (it.value().is_string() && it.value().get<std::string>().find('\n') != std::string::npos) {
      std::printf("%s:\n%s", it.key().c_str(), it.value().get<std::string>().c_str());
    } else if (it.value().is_object() && (it.key() == "old" || it.key() == "new")) {
      std::printf("[%s]\n", it.key().c_str());
      PrintHuman(it.value());
    } else {
      std::printf("%s: %s\n", it.key().c_str(), Cell(it.value()).c_str());
    }
  }
}

}  // namespace

// The embedded default's files for what was not given: the root, and the
// operator's (or the platform admin's) certificate and key.
void DefaultCredentials(Options& o, bool admin) {
  const std::string pki = o.data_dir + "/pki";
  if (o.cafile.empty()) o.cafile = pki + "/root.crt";
  if (o.cert.empty()) o.cert = pki + (admin ? "/admin.crt" : "/operator.crt");
  if (o.key.empty()) o.key = pki + (admin ? "/admin.key" : "/operator.key");
}

// firmware.upload model_id=M version=V file=@IMAGE [notes=...] [url=...]:
// begin (or resume where the broker's copy ends), the chunks, commit.
int Upload(Options& o, const std::vector<std::string>& rest) {
  std::map<std::string, std::string> args;
  for (size_t i = 1; i < rest.size(); ++i) {
    const size_t eq = rest[i].find('=');
    if (eq == std::string::npos) Die(2, "'" + rest[i] + "' is not name=value");
    args[rest[i].substr(0, eq)] = rest[i].substr(eq + 1);
  }
  for (const auto& [k, v] : args) {
    if (k != "model_id" && k != "version" && k != "file" && k != "notes" && k != "url") {
      Die(2, "firmware.upload takes model_id, version, file=@IMAGE, notes, url");
    }
  }
  if (!args.count("model_id") || !args.count("version") || !args.count("file") || args["file"].empty() ||
      args["file"][0] != '@') {
    Die(2, "firmware.upload needs model_id=M version=V file=@IMAGE");
  }
  std::ifstream in(args["file"].substr(1), std::ios::binary);
  if (!in) Die(2, "cannot read " + args["file"].substr(1));
  const std::string image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (image.empty()) Die(2, "the image is empty");
  unsigned char digest[32];
  mbedtls_sha256_ret(reinterpret_cast<const unsigned char*>(image.data()), image.size(), digest, 0);
  const std::string sha = fmq::HexOf(digest, sizeof digest);
  DefaultCredentials(o, false);
  const std::string client_id = "fleetmq-admin-" + std::to_string(getpid());
  Client cl(o);
  cl.deadline_ms_ = Client::NowMs() + o.timeout_s * 1000LL;
  cl.Connect(client_id);
  auto call = [&](const Json& cmd) {
    cl.deadline_ms_ = Client::NowMs() + o.timeout_s * 1000LL;
    Json reply = Request(cl, client_id, Json{{"commands", Json::array({cmd})}}.dump());
    const Json r = reply.contains("responses") ? reply["responses"][0] : reply;
    if (r.value("status", "") != "ok") {
      const Json err = r.value("error", Json::object());
      std::fprintf(stderr, "error %s: %s\n", err.value("code", "?").c_str(), err.value("message", "").c_str());
      std::exit(1);
    }
    return r["data"];
  };
  Json begin{{"command", "firmware.upload.begin"},
             {"model_id", args["model_id"]},
             {"version", args["version"]},
             {"size", image.size()},
             {"sha256", sha}};
  if (args.count("notes")) begin["notes"] = args["notes"];
  if (args.count("url")) begin["url"] = args["url"];
  const Json b = call(begin);
  uint64_t at = b.value("received", uint64_t{0});
  const uint64_t chunk = b.value("chunk_bytes", uint64_t{65536});
  if (at > 0) std::fprintf(stderr, "fleetmq-admin: resuming at byte %llu\n", static_cast<unsigned long long>(at));
  while (at < image.size()) {
    const size_t n = std::min<uint64_t>(chunk, image.size() - at);
    size_t len = 0;
    std::string b64(4 * ((n + 2) / 3) + 1, '\0');
    mbedtls_base64_encode(reinterpret_cast<unsigned char*>(b64.data()), b64.size(), &len,
                          reinterpret_cast<const unsigned char*>(image.data() + at), n);
    b64.resize(len);
    const Json r = call(Json{{"command", "firmware.upload.chunk"}, {"sha256", sha}, {"offset", at}, {"data", b64}});
    at = r.value("received", at + n);
  }
  const Json done = call(Json{{"command", "firmware.upload.commit"}, {"sha256", sha}});
  if (o.json) {
    std::printf("%s\n", Json{{"command", "firmware.upload"}, {"status", "ok"}, {"data", done}}.dump(2).c_str());
  } else {
    PrintHuman(done);
  }
  return 0;
}

int main(int argc, char** argv) {
  Options o;
  std::vector<std::string> rest;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](std::string* out) {
      size_t eq = a.find('=');
      if (eq != std::string::npos) {
        *out = a.substr(eq + 1);
      } else if (i + 1 < argc) {
        *out = argv[++i];
      } else {
        Die(2, a + " needs a value");
      }
    };
    auto is = [&](const char* name) { return a == name || a.rfind(std::string(name) + "=", 0) == 0; };
    std::string v;
    if (is("--data_dir"))
      val(&o.data_dir);
    else if (is("--host"))
      val(&o.host);
    else if (is("--port")) {
      val(&v);
      o.port = std::atoi(v.c_str());
    } else if (is("--server_name"))
      val(&o.server_name);
    else if (is("--cafile"))
      val(&o.cafile);
    else if (is("--cert"))
      val(&o.cert);
    else if (is("--key"))
      val(&o.key);
    else if (is("--timeout")) {
      val(&v);
      o.timeout_s = std::atoi(v.c_str());
    } else if (is("--raw"))
      val(&o.raw);
    else if (a == "--json")
      o.json = true;
    else if (a == "-h" || a == "--help") {
      Usage(stdout);
      return 0;
    } else if (a == "--help-markdown") {
      std::fputs(fmq::admin::CommandsMarkdown().c_str(), stdout);
      return 0;
    } else if (a.rfind("--", 0) == 0)
      Die(2, "unknown option " + a);
    else
      rest.push_back(a);
  }
  if (!o.raw.empty() && o.raw[0] == '@') {  // a request larger than one argument may be (128 KiB)
    std::ifstream in(o.raw.substr(1), std::ios::binary);
    if (!in) Die(2, "cannot read " + o.raw.substr(1));
    o.raw.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (rest.empty() && o.raw.empty()) {
    Usage(stderr);
    return 2;
  }
  if (!rest.empty() && rest[0] == "help") {
    if (rest.size() == 1) {
      Usage(stdout);
      return 0;
    }
    const CommandSpec* c = fmq::admin::FindCommand(rest[1]);
    if (c == nullptr) Die(2, "unknown command '" + rest[1] + "'");
    CommandHelp(*c);
    return 0;
  }
  if (!rest.empty() && rest[0] == "job.watch") {
    std::string job_id;
    bool until_paused = false;
    for (size_t i = 1; i < rest.size(); ++i) {
      if (rest[i].rfind("job_id=", 0) == 0)
        job_id = rest[i].substr(7);
      else if (rest[i] == "until_paused=true")
        until_paused = true;
      else
        Die(2, "job.watch takes job_id=X [until_paused=true] only");
    }
    if (job_id.empty()) Die(2, "job.watch needs job_id=X");
    DefaultCredentials(o, false);
    const std::string client_id = "fleetmq-admin-" + std::to_string(getpid());
    Client cl(o);
    cl.deadline_ms_ = Client::NowMs() + o.timeout_s * 1000LL;
    cl.Connect(client_id);
    return Watch(cl, client_id, job_id, o.json, until_paused);
  }
  if (!rest.empty() && rest[0] == "firmware.upload") return Upload(o, rest);
  const CommandSpec* spec = rest.empty() ? nullptr : fmq::admin::FindCommand(rest[0]);
  if (!rest.empty() && spec == nullptr) Die(2, "unknown command '" + rest[0] + "' (fleetmq-admin help)");
  Json cmd;
  if (spec != nullptr) {
    cmd["command"] = spec->name;
    for (size_t i = 1; i < rest.size(); ++i) {
      size_t eq = rest[i].find('=');
      if (eq == std::string::npos) Die(2, "'" + rest[i] + "' is not name=value");
      std::string name = rest[i].substr(0, eq);
      const fmq::admin::ArgSpec* a = nullptr;
      for (const auto& s : spec->args) {
        if (name == s.name) a = &s;
      }
      if (a == nullptr)
        Die(2, "unknown argument '" + name + "' for " + spec->name + " (fleetmq-admin help " + spec->name + ")");
      cmd[name] = ParseValue(*a, rest[i].substr(eq + 1));
    }
  }
  DefaultCredentials(o, spec != nullptr && spec->role == fmq::admin::Role::kAdmin);

  const std::string client_id = "fleetmq-admin-" + std::to_string(getpid());
  Client cl(o);
  cl.deadline_ms_ = Client::NowMs() + o.timeout_s * 1000LL;
  cl.Connect(client_id);
  const bool export_lines = spec != nullptr && std::string(spec->name) == "audit.export";
  int rc = 0;
  while (true) {
    std::string body = o.raw.empty() ? Json{{"commands", Json::array({cmd})}}.dump() : o.raw;
    Json reply = Request(cl, client_id, body);
    if (reply.value("status", "") == "error" || !reply.contains("responses")) {
      if (o.json) std::printf("%s\n", reply.dump(2).c_str());
      const Json err = reply.value("error", Json::object());
      std::fprintf(stderr, "error %s: %s\n", err.value("code", "?").c_str(), err.value("message", "").c_str());
      return 1;
    }
    for (const Json& r : reply["responses"]) {
      if (r.value("status", "") != "ok") {
        const Json err = r.value("error", Json::object());
        std::fprintf(stderr, "error %s: %s\n", err.value("code", "?").c_str(), err.value("message", "").c_str());
        rc = 1;
      }
    }
    if (export_lines && rc == 0) {
      const Json& data = reply["responses"][0]["data"];
      for (const Json& e : data["entries"]) std::printf("%s\n", e.dump().c_str());
      std::string next = data.value("next_cursor", "");
      if (next.empty()) break;
      cmd["cursor"] = next;
      continue;
    }
    if (o.json) {
      std::printf("%s\n",
                  (o.raw.empty() && reply["responses"].size() == 1 ? reply["responses"][0] : reply).dump(2).c_str());
    } else if (rc == 0) {
      for (const Json& r : reply["responses"]) PrintHuman(r.value("data", Json::object()));
    }
    break;
  }
  return rc;
}

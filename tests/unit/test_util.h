// Helpers shared by the unit tests: hex decoding, the conformance vector
// file, and a fake client driving a Connection with no socket.
#pragma once

#include <deque>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "broker/core/broker.h"
#include "broker/core/persistence.h"
#include "broker/mqtt/codec.h"
#include "broker/mqtt/framer.h"

namespace fmq::test {

inline std::string Hex(std::string_view hex) {
  std::string out;
  int hi = -1;
  for (char ch : hex) {
    int v;
    if (ch >= '0' && ch <= '9')
      v = ch - '0';
    else if (ch >= 'a' && ch <= 'f')
      v = ch - 'a' + 10;
    else if (ch >= 'A' && ch <= 'F')
      v = ch - 'A' + 10;
    else
      continue;
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(static_cast<char>(hi * 16 + v));
      hi = -1;
    }
  }
  return out;
}

struct Vector {
  std::string rule;
  mqtt::Version version;
  uint8_t reason;
  std::string bytes;
};

inline std::vector<Vector> LoadVectors(const std::string& path) {
  std::vector<Vector> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    Vector v;
    int ver;
    std::string reason;
    ls >> v.rule >> ver >> reason;
    v.version = static_cast<mqtt::Version>(ver);
    v.reason = static_cast<uint8_t>(std::stoi(reason, nullptr, 16));
    std::string rest;
    std::getline(ls, rest);
    v.bytes = Hex(rest);
    out.push_back(v);
  }
  return out;
}

// Runs framer + decoder over one whole packet.
inline mqtt::Error DecodeWhole(const std::string& bytes, mqtt::Version v, mqtt::Packet* out, size_t* frames = nullptr) {
  mqtt::Framer f(1 << 20);
  mqtt::Error derr;
  size_t n = 0;
  mqtt::Error ferr = f.Feed(bytes, [&](uint8_t first, std::string_view body) {
    ++n;
    derr = mqtt::Decode(first, body, v, out);
    return derr.ok();
  });
  if (frames) *frames = n;
  if (!ferr.ok()) return ferr;
  if (n == 0) return mqtt::Error::Malformed("incomplete");
  return derr;
}

// Records calls; Flush callbacks run when the test says so.
class FakePersistence : public Persistence {
 public:
  void SaveSession(const Session&) override { ++changes; }
  void DeleteSession(const Session&) override { ++changes; }
  void SaveDelivery(const Session&, const Delivery&, DeliveryState, uint16_t) override { ++changes; }
  void DeleteDelivery(const Session&, uint64_t) override { ++changes; }
  void SaveInboundQos2(const Session&, uint16_t, bool) override { ++changes; }
  void SaveRetained(const Message& m) override {
    ++changes;
    retained_writes.emplace_back(m.topic, m.payload);
  }
  bool dirty() const override { return changes > flushed; }
  void Flush(std::function<void(bool)> done) override {
    flushed = changes;
    waiting.push_back(std::move(done));
  }
  bool healthy() const override { return is_healthy; }
  void Complete(bool ok) {
    auto w = std::move(waiting);
    waiting.clear();
    for (auto& d : w) d(ok);
  }
  int changes = 0, flushed = 0;
  std::vector<std::pair<std::string, std::string>> retained_writes;  // (topic, payload), in order
  bool is_healthy = true;
  std::vector<std::function<void(bool)>> waiting;
};

class FakeTransport : public Transport {
 public:
  void RequestFlush() override { ++flush_requests; }
  void Close() override { closed = true; }
  size_t Backlog() const override { return backlog; }
  int flush_requests = 0;
  bool closed = false;
  size_t backlog = 0;
};

// A client talking to a Broker through a Connection, with no socket.
class Client {
 public:
  Client(Broker& b, mqtt::Version v, uint64_t id)
      : version(v), conn(&b, &transport, id, "127.0.0.1:" + std::to_string(id)) {
    b.Accept(&conn);
  }
  ~Client() { conn.OnTransportClosed(); }

  void Send(const mqtt::Packet& p) {
    std::string s;
    mqtt::Encode(p, version, &s);
    conn.OnBytes(s);
  }
  void SendRaw(const std::string& bytes) { conn.OnBytes(bytes); }

  // Decodes everything the broker wrote since the last call.
  std::vector<mqtt::Packet> Recv() {
    std::vector<mqtt::Packet> out;
    out.swap(backlog_);
    std::string bytes = conn.TakeOutput();
    pending_ += bytes;
    mqtt::Framer f(1u << 28);
    f.Feed(pending_, [&](uint8_t first, std::string_view body) {
      // Decoded views must outlive this call: keep every frame's bytes.
      frames_.emplace_back(body);
      mqtt::Packet p;
      mqtt::Error e = mqtt::Decode(first, frames_.back(), version, &p);
      REQUIRE_MESSAGE(e.ok(), e.rule);
      out.push_back(std::move(p));
      return true;
    });
    pending_.clear();
    return out;
  }

  // Sends CONNECT and returns the CONNACK.
  mqtt::Connack Connect(mqtt::Connect ck) {
    ck.version = version;
    Send(ck);
    auto pk = Recv();
    REQUIRE(!pk.empty());
    REQUIRE(std::holds_alternative<mqtt::Connack>(pk[0]));
    // Whatever followed the CONNACK (resent or queued messages) is kept for
    // the next Recv().
    backlog_.assign(pk.begin() + 1, pk.end());
    return std::get<mqtt::Connack>(pk[0]);
  }
  mqtt::Connack Connect(const std::string& id, bool clean = true, uint16_t keep_alive = 60) {
    mqtt::Connect ck;
    ck.client_id = id;
    ck.clean_start = clean;
    ck.keep_alive = keep_alive;
    return Connect(ck);
  }

  mqtt::Version version;
  FakeTransport transport;
  Connection conn;

 private:
  std::string pending_;
  std::deque<std::string> frames_;
  std::vector<mqtt::Packet> backlog_;
};

// A PUBLISH to send; the packet id is dropped for QoS 0.
inline mqtt::Publish Pub(std::string_view topic, std::string_view payload, uint8_t qos, uint16_t id = 0,
                         bool retain = false) {
  mqtt::Publish p;
  p.topic = topic;
  p.payload = payload;
  p.qos = qos;
  p.packet_id = qos ? id : 0;
  p.retain = retain;
  return p;
}

template <class T>
std::vector<T> Only(const std::vector<mqtt::Packet>& pk) {
  std::vector<T> out;
  for (const auto& p : pk) {
    if (auto* t = std::get_if<T>(&p)) out.push_back(*t);
  }
  return out;
}

}  // namespace fmq::test

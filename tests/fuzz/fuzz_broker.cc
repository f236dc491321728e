// libFuzzer target: the whole protocol engine. Arbitrary bytes are fed to
// one connection of a broker that has a connected bystander, with the fake
// clock advancing between chunks; the engine must never crash and the
// bystander must keep being served. First byte: version and chunk size.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "broker/core/broker.h"
#include "broker/mqtt/codec.h"
#include "common/log.h"

namespace {

class NullTransport : public fmq::Transport {
 public:
  void RequestFlush() override {}
  void Close() override { closed = true; }
  size_t Backlog() const override { return 0; }
  bool closed = false;
};

std::string Encoded(const fmq::mqtt::Packet& p, fmq::mqtt::Version v) {
  std::string s;
  fmq::mqtt::Encode(p, v, &s);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fmq;
  if (size < 1) return 0;
  SetLogLevel(LogLevel::kNone);
  FakeClock clock;
  BrokerOptions opts;
  opts.max_packet_size = 1 << 16;
  opts.sys_interval_s = 1;
  opts.server_keepalive = 0;  // the bystander asks for no keep alive and sends nothing: it must stay
  Broker broker(opts, &clock, nullptr);

  NullTransport t1, t2;
  Connection bystander(&broker, &t1, 1, "by");
  broker.Accept(&bystander);
  mqtt::Connect ck;
  ck.client_id = "bystander";
  ck.keep_alive = 0;
  bystander.OnBytes(Encoded(ck, mqtt::Version::kV5));
  mqtt::Subscribe sub;
  sub.packet_id = 1;
  sub.entries.push_back({"#", 2});
  bystander.OnBytes(Encoded(sub, mqtt::Version::kV5));

  Connection fuzzed(&broker, &t2, 2, "fz");
  broker.Accept(&fuzzed);
  const size_t chunk = 1 + (data[0] >> 1);
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  for (size_t i = 0; i < in.size(); i += chunk) {
    fuzzed.OnBytes(in.substr(i, chunk));
    fuzzed.TakeOutput();
    clock.Advance(700);
    broker.Tick();
  }
  // The bystander is still served.
  if (bystander.state() != Connection::State::kConnected) std::abort();
  fuzzed.OnTransportClosed();
  bystander.OnTransportClosed();
  return 0;
}

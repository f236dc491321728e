// libFuzzer target: framer + decoder over arbitrary bytes, with a
// decode -> encode -> decode oracle for every packet that decodes. The
// first input byte picks the protocol version. Built with clang
// (-Dfuzzing=true) or replayed over the seed corpus under gcc.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "broker/mqtt/codec.h"
#include "broker/mqtt/framer.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fmq::mqtt;
  if (size < 1) return 0;
  const Version v = (data[0] & 1) ? Version::kV5 : Version::kV311;
  Framer framer(1 << 16);
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  framer.Feed(in, [&](uint8_t first, std::string_view body) {
    Packet p;
    Error e = Decode(first, body, v, &p);
    if (!e.ok()) {
      Check(IsError(e.code) && e.rule != nullptr && e.rule[0] != '\0');
      return true;
    }
    std::string wire;
    Encode(p, v, &wire);
    Check(wire.size() == EncodedSize(p, v));
    Framer again(1u << 28);
    int frames = 0;
    Error fe = again.Feed(wire, [&](uint8_t f2, std::string_view b2) {
      ++frames;
      Packet q;
      Check(Decode(f2, b2, v, &q).ok());
      Check(q == p);
      return true;
    });
    Check(fe.ok() && frames == 1);
    return true;
  });
  return 0;
}

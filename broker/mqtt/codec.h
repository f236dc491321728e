// Decode and encode of every MQTT control packet, both protocol versions.
// I/O-free and stateless: a frame in, a struct out (or the reverse). Safe
// from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "broker/mqtt/bytes.h"
#include "broker/mqtt/packet.h"

namespace fmq::mqtt {

// Decodes one frame (`first_byte` is the fixed header's first byte, `body`
// the bytes after the remaining length). `version` is the connection's
// negotiated version; CONNECT carries its own. Every malformed input yields
// an Error naming the rule; `out` is then unspecified.
Error Decode(uint8_t first_byte, std::string_view body, Version version, Packet* out);

// Appends the wire form of `p` for `version` to `out`.
void Encode(const Packet& p, Version version, std::string* out);

// Encoded size of `p` (fixed header included).
size_t EncodedSize(const Packet& p, Version version);

// Maps a reason code to the 3.1.1 CONNACK return code [MQTT-3.2.2.3].
uint8_t ToV3ConnackCode(ReasonCode rc);

// Appends a fixed header for a packet whose body is `body_len` bytes.
void WriteFixedHeader(uint8_t first_byte, uint32_t body_len, std::string* out);

}  // namespace fmq::mqtt

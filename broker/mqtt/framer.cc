#include "broker/mqtt/framer.h"

namespace fmq::mqtt {

bool Framer::ParseHeader(std::string_view& data, Error* err) {
  while (!data.empty()) {
    header_[header_len_++] = static_cast<uint8_t>(data[0]);
    data.remove_prefix(1);
    if (header_len_ == 1) continue;
    uint8_t b = header_[header_len_ - 1];
    if (b & 0x80) {
      if (header_len_ == 5) {
        *err = Error::Malformed("MQTT-2.2.3 remaining length longer than 4 bytes");
        return false;
      }
      continue;
    }
    if (header_len_ > 2 && b == 0) {
      *err = Error::Malformed("MQTT-1.5.5-1 remaining length not minimally encoded");
      return false;
    }
    uint32_t len = 0;
    for (int i = 1; i < header_len_; ++i) len |= uint32_t{header_[i] & 0x7Fu} << (7 * (i - 1));
    uint64_t total = uint64_t{header_len_} + len;
    if (total > max_packet_size_) {
      *err = {ReasonCode::kPacketTooLarge, "MQTT-4.13.1 packet exceeds the server Maximum Packet Size"};
      return false;
    }
    body_len_ = len;
    have_header_ = true;
    return true;
  }
  return false;
}

}  // namespace fmq::mqtt

// Incremental MQTT framer: splits a byte stream, in any chunking, into
// (first byte, body) frames [MQTT-2.1]. The packet size is checked against
// the limit from the fixed header alone, before any body byte is buffered.
// I/O-free; one thread at a time per object.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "broker/mqtt/bytes.h"

namespace fmq::mqtt {

class Framer {
 public:
  explicit Framer(uint32_t max_packet_size) : max_packet_size_(max_packet_size) {}

  // Feeds `data`; calls `on_frame(uint8_t first_byte, std::string_view body)`
  // for each complete frame, in order. `on_frame` returns false to stop (the
  // rest of `data` is then ignored). Returns an error for a malformed
  // remaining length or an oversize packet; the framer is then unusable.
  template <class F>
  Error Feed(std::string_view data, F&& on_frame);

  // Bytes held for an incomplete frame (for memory accounting).
  size_t buffered() const { return body_.size(); }

 private:
  // Parses header bytes from `data`; returns false when more input is needed.
  bool ParseHeader(std::string_view& data, Error* err);

  uint32_t max_packet_size_;
  uint8_t header_[5] = {};
  uint8_t header_len_ = 0;
  bool have_header_ = false;
  uint32_t body_len_ = 0;
  std::string body_;
};

template <class F>
Error Framer::Feed(std::string_view data, F&& on_frame) {
  while (true) {
    if (!have_header_) {
      if (data.empty()) return kOk;
      Error err;
      if (!ParseHeader(data, &err)) {
        if (!err.ok()) return err;
        return kOk;  // need more bytes
      }
    }
    if (body_.empty() && data.size() >= body_len_) {
      // Fast path: the whole body is in this chunk; no copy.
      std::string_view body = data.substr(0, body_len_);
      data.remove_prefix(body_len_);
      have_header_ = false;
      header_len_ = 0;
      if (!on_frame(header_[0], body)) return kOk;
      continue;
    }
    if (data.empty()) return kOk;
    size_t need = body_len_ - body_.size();
    size_t take = need < data.size() ? need : data.size();
    if (body_.empty()) body_.reserve(body_len_);
    body_.append(data.data(), take);
    data.remove_prefix(take);
    if (body_.size() == body_len_) {
      have_header_ = false;
      header_len_ = 0;
      std::string frame;
      frame.swap(body_);
      if (!on_frame(header_[0], std::string_view(frame))) return kOk;
    }
  }
}

}  // namespace fmq::mqtt

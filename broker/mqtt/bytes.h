// Bounds-checked cursor over untrusted bytes (Reader) and an appending
// encoder (Writer) for MQTT's wire types. Header-only, I/O-free, no state
// beyond the object; one thread at a time per object.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "broker/mqtt/protocol.h"

namespace fmq::mqtt {

// An error found while decoding: the reason code to answer with and the
// spec rule it violates (a static string, e.g. "MQTT-3.3.1-4 QoS 3").
struct Error {
  ReasonCode code = ReasonCode::kSuccess;
  const char* rule = "";
  bool ok() const { return code == ReasonCode::kSuccess; }
  static Error Malformed(const char* rule) { return {ReasonCode::kMalformedPacket, rule}; }
  static Error Protocol(const char* rule) { return {ReasonCode::kProtocolError, rule}; }
};
inline const Error kOk{};

// Encodes `v` as a variable byte integer [MQTT-1.5.5]; returns bytes written.
inline int EncodeVarint(uint32_t v, uint8_t out[4]) {
  int n = 0;
  do {
    uint8_t b = v & 0x7F;
    v >>= 7;
    if (v) b |= 0x80;
    out[n++] = b;
  } while (v && n < 4);
  return n;
}
inline int VarintSize(uint32_t v) { return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4; }

class Reader {
 public:
  explicit Reader(std::string_view data) : p_(data.data()), end_(data.data() + data.size()) {}

  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  bool empty() const { return p_ == end_; }
  const char* pos() const { return p_; }

  bool U8(uint8_t* v) {
    if (remaining() < 1) return false;
    *v = static_cast<uint8_t>(*p_++);
    return true;
  }
  bool U16(uint16_t* v) {
    if (remaining() < 2) return false;
    *v = static_cast<uint16_t>((static_cast<uint8_t>(p_[0]) << 8) | static_cast<uint8_t>(p_[1]));
    p_ += 2;
    return true;
  }
  bool U32(uint32_t* v) {
    if (remaining() < 4) return false;
    const auto* u = reinterpret_cast<const uint8_t*>(p_);
    *v = (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | u[3];
    p_ += 4;
    return true;
  }
  // Variable byte integer; rejects more than 4 bytes and non-minimal forms
  // [MQTT-1.5.5-1].
  bool Varint(uint32_t* v, Error* err) {
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      uint8_t b;
      if (!U8(&b)) {
        *err = Error::Malformed("MQTT-1.5.5 truncated variable byte integer");
        return false;
      }
      value |= uint32_t{static_cast<uint8_t>(b & 0x7F)} << (7 * i);
      if (!(b & 0x80)) {
        if (i > 0 && b == 0) {
          *err = Error::Malformed("MQTT-1.5.5-1 variable byte integer not minimal");
          return false;
        }
        *v = value;
        return true;
      }
    }
    *err = Error::Malformed("MQTT-1.5.5 variable byte integer longer than 4 bytes");
    return false;
  }
  // Two-byte length prefixed bytes [MQTT-1.5.6]; the view aliases the input.
  bool Binary(std::string_view* out) {
    uint16_t len;
    if (!U16(&len) || remaining() < len) return false;
    *out = std::string_view(p_, len);
    p_ += len;
    return true;
  }
  bool Take(size_t n, std::string_view* out) {
    if (remaining() < n) return false;
    *out = std::string_view(p_, n);
    p_ += n;
    return true;
  }
  std::string_view Rest() {
    std::string_view r(p_, remaining());
    p_ = end_;
    return r;
  }

 private:
  const char* p_;
  const char* end_;
};

class Writer {
 public:
  explicit Writer(std::string* out) : out_(out) {}
  void U8(uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void U16(uint16_t v) {
    char b[2] = {static_cast<char>(v >> 8), static_cast<char>(v)};
    out_->append(b, 2);
  }
  void U32(uint32_t v) {
    char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                 static_cast<char>(v)};
    out_->append(b, 4);
  }
  void Varint(uint32_t v) {
    uint8_t b[4];
    int n = EncodeVarint(v, b);
    out_->append(reinterpret_cast<char*>(b), static_cast<size_t>(n));
  }
  void Binary(std::string_view s) {
    U16(static_cast<uint16_t>(s.size()));
    out_->append(s);
  }
  void Raw(std::string_view s) { out_->append(s); }
  size_t size() const { return out_->size(); }
  std::string* buffer() { return out_; }

 private:
  std::string* out_;
};

}  // namespace fmq::mqtt

// Lowercase hex of bytes (hashes, serials, ids, opaque cursors), and back.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace fmq {

inline std::string HexOf(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}
inline std::string HexOf(const unsigned char* p, size_t n) {
  return HexOf(std::string_view(reinterpret_cast<const char*>(p), n));
}

// False (and `out` unspecified) unless `hex` is an even number of lowercase
// hex digits.
inline bool FromHex(std::string_view hex, std::string* out) {
  if (hex.size() % 2 != 0) return false;
  auto nib = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
  out->clear();
  out->reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nib(hex[i]), lo = nib(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
  }
  return true;
}

}  // namespace fmq

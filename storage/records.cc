#include "storage/records.h"

#include <array>
#include <cstring>

namespace fmq::storage {

std::string PrintableKey(std::string_view key) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char c : key) {
    auto u = static_cast<unsigned char>(c);
    if (u == 0) {
      out += '|';
    } else if (u >= 0x20 && u < 0x7F && c != '\\') {
      out += c;
    } else {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

namespace {

uint32_t Crc32cTable(std::string_view data) {
  static const auto kTable = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  for (char ch : data) crc = kTable[(crc ^ static_cast<uint8_t>(ch)) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

#if defined(__x86_64__)
// The same CRC with the SSE 4.2 instruction (8 bytes per step), where the
// CPU has it: every stored record is checksummed on write and read.
[[gnu::target("sse4.2")]] uint32_t Crc32cHw(std::string_view data) {
  uint64_t crc = 0xFFFFFFFFu;
  size_t i = 0;
  for (; i + 8 <= data.size(); i += 8) {
    uint64_t v = 0;  // little-endian load (one instruction once optimised)
    for (size_t k = 0; k < 8; ++k) v |= static_cast<uint64_t>(static_cast<unsigned char>(data[i + k])) << (8 * k);
    crc = __builtin_ia32_crc32di(crc, v);
  }
  auto c = static_cast<uint32_t>(crc);
  for (; i < data.size(); ++i) c = __builtin_ia32_crc32qi(c, static_cast<unsigned char>(data[i]));
  return c ^ 0xFFFFFFFFu;
}
#endif

}  // namespace

uint32_t Crc32c(std::string_view data) {
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return Crc32cHw(data);
#endif
  return Crc32cTable(data);
}

absl::Status CorruptRecord(Family f, std::string_view key, std::string_view why) {
  return absl::DataLossError("corrupt record in " + std::string(FamilyName(f)) + " at key '" + PrintableKey(key) +
                             "': " + std::string(why));
}

}  // namespace fmq::storage

#include "storage/records.h"

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

absl::Status CorruptRecord(Family f, std::string_view key, std::string_view why) {
  return absl::DataLossError("corrupt record in " + std::string(FamilyName(f)) + " at key '" +
                             PrintableKey(key) + "': " + std::string(why));
}

}  // namespace fmq::storage

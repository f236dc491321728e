// Hex of bytes and back (common/hex.h).
#include "common/hex.h"

#include <doctest/doctest.h>

namespace fmq {
namespace {

TEST_CASE("hex: every byte round-trips; odd lengths, capitals and other characters are refused") {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  const std::string hex = HexOf(all);
  CHECK(hex.size() == 512);
  CHECK(hex.substr(0, 8) == "00010203");
  CHECK(hex.substr(504) == "fcfdfeff");
  std::string back;
  REQUIRE(FromHex(hex, &back));
  CHECK(back == all);
  CHECK(FromHex("", &back));
  CHECK(back.empty());
  for (const char* bad : {"0", "abc", "0G", "AB", "zz", "0 ", "-1"}) CHECK_MESSAGE(!FromHex(bad, &back), bad);
  const unsigned char d[] = {0xde, 0xad, 0x00};
  CHECK(HexOf(d, sizeof d) == "dead00");
}

}  // namespace
}  // namespace fmq

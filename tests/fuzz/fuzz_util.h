// Shared by the fuzz targets that parse JSON.
#pragma once

#include <string_view>

namespace fmq::fuzz {

// Deeper than any limit allows is refused before parsing (as the admin
// executor and the device channel do), so the parser's depth stays bounded.
inline bool Shallow(std::string_view s, int max_depth = 64) {
  int depth = 0;
  for (char c : s) {
    if (c == '{' || c == '[') {
      if (++depth > max_depth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

}  // namespace fmq::fuzz

// Hash maps keyed by std::string that can be probed with std::string_view
// without a copy. Debian's abseil is built with its own absl::string_view
// (ABSL_OPTION_USE_STD_STRING_VIEW 0), so its default heterogeneous lookup
// does not accept std::string_view; these functors bridge that. Stateless.
#pragma once

#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"

namespace fmq {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const {
    return absl::Hash<absl::string_view>{}(absl::string_view(s.data(), s.size()));
  }
};
struct StringEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const { return a == b; }
};

template <class V>
using StringMap = absl::flat_hash_map<std::string, V, StringHash, StringEq>;

}  // namespace fmq

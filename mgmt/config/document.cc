#include "mgmt/config/document.h"

#include <mbedtls/sha256.h>

#include <vector>

#include "common/hex.h"

namespace fmq::config {
namespace {

// Depth and key checks without recursion on the native stack beyond the
// document's own depth (bounded by max_depth before descending further).
std::string CheckNode(const Json& j, size_t depth, const DocLimits& lim) {
  if (!j.is_structured()) return "";
  if (depth > lim.max_depth) return "nesting deeper than " + std::to_string(lim.max_depth) + " levels";
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key().size() > lim.max_key_bytes) {
        return "key of " + std::to_string(it.key().size()) + " bytes (at most " + std::to_string(lim.max_key_bytes) +
               ")";
      }
      if (std::string e = CheckNode(it.value(), depth + 1, lim); !e.empty()) return e;
    }
  } else {
    for (const Json& e : j) {
      if (std::string s = CheckNode(e, depth + 1, lim); !s.empty()) return s;
    }
  }
  return "";
}

}  // namespace

std::string CheckDocument(const Json& doc, const DocLimits& lim, const char* what) {
  if (!doc.is_object()) return std::string(what) + " must be a JSON object";
  if (std::string e = CheckNode(doc, 1, lim); !e.empty()) return std::string(what) + ": " + e;
  const size_t n = Canonical(doc).size();
  if (n > lim.max_bytes) {
    return std::string(what) + " of " + std::to_string(n) + " bytes exceeds the limit of " +
           std::to_string(lim.max_bytes) + " (config.max_document_bytes)";
  }
  return "";
}

Json ApplyMergePatch(Json target, const Json& patch) {
  target.merge_patch(patch);  // nlohmann's implementation of RFC 7386 section 2
  return target;
}

Json MergeDiff(const Json& from, const Json& to) {
  if (!from.is_object() || !to.is_object()) return to;
  Json p = Json::object();
  for (auto it = from.begin(); it != from.end(); ++it) {
    if (!to.contains(it.key())) p[it.key()] = nullptr;
  }
  for (auto it = to.begin(); it != to.end(); ++it) {
    auto f = from.find(it.key());
    if (f == from.end()) {
      p[it.key()] = it.value();
    } else if (*f != it.value()) {
      // Both objects: only what changed inside; otherwise the whole value.
      p[it.key()] = f->is_object() && it->is_object() ? MergeDiff(*f, it.value()) : it.value();
    }
  }
  return p;
}

std::string Canonical(const Json& doc) { return doc.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string HashText(const std::string& canonical) {
  unsigned char out[32];
  mbedtls_sha256_ret(reinterpret_cast<const unsigned char*>(canonical.data()), canonical.size(), out, 0);
  return HexOf(out, sizeof out);
}

std::string Hash(const Json& doc) { return HashText(Canonical(doc)); }

}  // namespace fmq::config

// Configuration documents as pure functions (doc/configuration-management.md):
// RFC 7386 JSON Merge Patch application and generation, the canonical form
// and its SHA-256 (what a device acknowledges), and the document limits.
// No state; any thread.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>

namespace fmq::config {

using Json = nlohmann::json;

struct DocLimits {
  size_t max_bytes = 64 * 1024;  // canonical form of a document (and of an effective document)
  size_t max_depth = 16;         // nesting of objects and arrays
  size_t max_key_bytes = 128;    // one object member name
};

// "" when `doc` is a JSON object within the limits, else the rule it
// breaks ("nesting deeper than 16 levels", ...). `what` names it.
std::string CheckDocument(const Json& doc, const DocLimits& lim, const char* what = "document");

// RFC 7386 section 2: `patch` applied to `target` (null members delete).
Json ApplyMergePatch(Json target, const Json& patch);

// A merge patch p with ApplyMergePatch(from, p) == to, for documents whose
// object members are never null (every effective document: merge patches
// remove nulls). Arrays and scalars that differ are replaced whole; keys
// only in `from` become null. Equal documents give {}.
Json MergeDiff(const Json& from, const Json& to);

// The canonical text: no white space, object members sorted by their
// UTF-8 bytes, strings as nlohmann::json writes them (only '"', '\\' and
// control characters escaped), integers in decimal, other numbers in the
// shortest form that reads back to the same double.
std::string Canonical(const Json& doc);
// Lowercase hex SHA-256 of Canonical(doc).
std::string Hash(const Json& doc);
std::string HashText(const std::string& canonical);

}  // namespace fmq::config

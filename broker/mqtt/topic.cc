#include "broker/mqtt/topic.h"

#include "broker/mqtt/utf8.h"

namespace fmq::mqtt {
namespace {

Error CheckCommon(std::string_view s, const TopicLimits& limits, ReasonCode code) {
  if (s.empty()) return {code, "MQTT-4.7.3-1 topic must be at least one character"};
  if (s.size() > limits.max_length) return {code, "limit topic longer than max_topic_length"};
  if (!IsValidMqttUtf8(s)) return {code, "MQTT-4.7.3-2 topic is not valid UTF-8"};
  uint32_t levels = 1;
  for (char c : s) levels += (c == '/');
  if (levels > limits.max_levels) return {code, "limit topic deeper than max_topic_levels"};
  return kOk;
}

}  // namespace

Error ValidateTopicName(std::string_view topic, const TopicLimits& limits) {
  Error e = CheckCommon(topic, limits, ReasonCode::kTopicNameInvalid);
  if (!e.ok()) return e;
  for (char c : topic) {
    if (c == '+' || c == '#') {
      return {ReasonCode::kTopicNameInvalid, "MQTT-3.3.2-2 topic name contains a wildcard"};
    }
  }
  return kOk;
}

bool ParseShared(std::string_view filter, SharedFilter* out) {
  constexpr std::string_view kPrefix = "$share/";
  *out = {};
  if (filter.substr(0, kPrefix.size()) != kPrefix) return true;
  std::string_view rest = filter.substr(kPrefix.size());
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash == 0) return false;  // [MQTT-4.8.2-1]
  std::string_view group = rest.substr(0, slash);
  for (char c : group) {
    if (c == '+' || c == '#') return false;  // [MQTT-4.8.2-2]
  }
  std::string_view inner = rest.substr(slash + 1);
  if (inner.empty()) return false;  // [MQTT-4.8.2-1]
  out->shared = true;
  out->group = group;
  out->filter = inner;
  return true;
}

Error ValidateTopicFilter(std::string_view filter, const TopicLimits& limits) {
  Error e = CheckCommon(filter, limits, ReasonCode::kTopicFilterInvalid);
  if (!e.ok()) return e;
  SharedFilter sf;
  if (!ParseShared(filter, &sf)) {
    return {ReasonCode::kTopicFilterInvalid, "MQTT-4.8.2-1 ill-formed $share/{ShareName}/{filter}"};
  }
  std::string_view f = sf.shared ? sf.filter : filter;
  for (size_t i = 0; i < f.size(); ++i) {
    char c = f[i];
    bool starts_level = (i == 0 || f[i - 1] == '/');
    bool ends_level = (i + 1 == f.size() || f[i + 1] == '/');
    if (c == '#') {
      if (!starts_level || i + 1 != f.size()) {
        return {ReasonCode::kTopicFilterInvalid, "MQTT-4.7.1-1 '#' must be last and occupy a whole level"};
      }
    } else if (c == '+') {
      if (!starts_level || !ends_level) {
        return {ReasonCode::kTopicFilterInvalid, "MQTT-4.7.1-2 '+' must occupy a whole level"};
      }
    }
  }
  return kOk;
}

bool TopicMatches(std::string_view filter, std::string_view topic) {
  // [MQTT-4.7.2-1] a filter starting with a wildcard does not match '$' topics.
  if (!topic.empty() && topic[0] == '$' && !filter.empty() && (filter[0] == '+' || filter[0] == '#')) {
    return false;
  }
  size_t fi = 0, ti = 0;
  while (true) {
    size_t fe = filter.find('/', fi);
    std::string_view flevel = filter.substr(fi, fe == std::string_view::npos ? fe : fe - fi);
    if (flevel == "#") return true;  // matches parent and all children
    if (ti > topic.size()) return false;
    size_t te = topic.find('/', ti);
    std::string_view tlevel = topic.substr(ti, te == std::string_view::npos ? te : te - ti);
    if (flevel != "+" && flevel != tlevel) return false;
    bool fend = fe == std::string_view::npos;
    bool tend = te == std::string_view::npos;
    if (fend && tend) return true;
    if (tend) {
      // "a/#" matches "a": the remaining filter must be exactly "/#".
      return !fend && filter.substr(fe + 1) == "#";
    }
    if (fend) return false;
    fi = fe + 1;
    ti = te + 1;
  }
}

}  // namespace fmq::mqtt

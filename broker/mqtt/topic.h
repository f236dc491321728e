// Topic name and topic filter rules [MQTT-4.7], shared subscription
// parsing [MQTT-4.8.2], and a plain reference matcher. Pure functions, safe
// from any thread.
#pragma once

#include <cstdint>
#include <string_view>

#include "broker/mqtt/bytes.h"

namespace fmq::mqtt {

struct TopicLimits {
  uint32_t max_length = 65535;  // bytes
  uint32_t max_levels = 128;    // '/'-separated levels
};

// A PUBLISH topic name: non-empty [MQTT-4.7.3-1], no wildcards
// [MQTT-4.7.0-1], valid UTF-8 [MQTT-4.7.3-2], within limits.
Error ValidateTopicName(std::string_view topic, const TopicLimits& limits);

// A SUBSCRIBE/UNSUBSCRIBE filter, including the `$share/` form.
Error ValidateTopicFilter(std::string_view filter, const TopicLimits& limits);

// `$share/{group}/{filter}` split into its parts [MQTT-4.8.2].
struct SharedFilter {
  bool shared = false;
  std::string_view group;
  std::string_view filter;  // the filter without the $share prefix
};
// Returns false when `filter` starts with `$share/` but is ill-formed
// [MQTT-4.8.2-1], [MQTT-4.8.2-2].
bool ParseShared(std::string_view filter, SharedFilter* out);

// Reference matcher, straight from the spec text: used by tests to check the
// subscription tree, and for retained lookups of single filters.
bool TopicMatches(std::string_view filter, std::string_view topic);

}  // namespace fmq::mqtt

// Validation of MQTT UTF-8 encoded strings [MQTT-1.5.4]. Pure functions,
// safe from any thread.
#pragma once

#include <string_view>

namespace fmq::mqtt {

// True when `s` is well-formed UTF-8 with no surrogates (U+D800..U+DFFF)
// [MQTT-1.5.4-1] and no U+0000 [MQTT-1.5.4-2]. Control characters and
// non-characters are allowed (the spec says a receiver MAY reject them).
bool IsValidMqttUtf8(std::string_view s);

// Plain UTF-8 well-formedness (for payloads with Payload Format Indicator 1,
// where U+0000 is allowed) [MQTT-3.3.2-4].
bool IsValidUtf8(std::string_view s);

}  // namespace fmq::mqtt

// MQTT 5 properties [MQTT-2.2.2]: one struct holding every property, with
// decode (per-packet allowed sets, duplicate and value checks) and encode.
// Plain data; one thread at a time per object.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "broker/mqtt/bytes.h"
#include "broker/mqtt/protocol.h"

namespace fmq::mqtt {

using UserProperties = std::vector<std::pair<std::string, std::string>>;

struct Properties {
  uint64_t present = 0;  // bit (1 << PropertyId) for each property seen/set

  uint8_t payload_format = 0;
  uint32_t message_expiry = 0;
  std::string content_type;
  std::string response_topic;
  std::string correlation_data;
  std::vector<uint32_t> subscription_ids;
  uint32_t session_expiry = 0;
  std::string assigned_client_id;
  uint16_t server_keep_alive = 0;
  std::string auth_method;
  std::string auth_data;
  uint8_t request_problem_info = 1;
  uint32_t will_delay = 0;
  uint8_t request_response_info = 0;
  std::string response_info;
  std::string server_reference;
  std::string reason_string;
  uint16_t receive_maximum = 65535;
  uint16_t topic_alias_maximum = 0;
  uint16_t topic_alias = 0;
  uint8_t maximum_qos = 2;
  uint8_t retain_available = 1;
  UserProperties user_properties;
  uint32_t maximum_packet_size = 0;
  uint8_t wildcard_sub_available = 1;
  uint8_t sub_id_available = 1;
  uint8_t shared_sub_available = 1;

  bool Has(PropertyId id) const { return present & Bit(id); }
  void Mark(PropertyId id) { present |= Bit(id); }
  void Clear(PropertyId id) { present &= ~Bit(id); }
  static constexpr uint64_t Bit(PropertyId id) { return uint64_t{1} << static_cast<uint8_t>(id); }

  bool operator==(const Properties&) const = default;
};

// Decodes a property block (length varint + properties) for `ctx`. A
// property not allowed in `ctx`, a duplicate of a single-valued property or
// an out-of-range value is an error naming the rule.
Error DecodeProperties(Reader& r, PropertyContext ctx, Properties* out);

// Appends the property block (length varint + properties) to `w`. Only the
// properties marked present are written.
void EncodeProperties(const Properties& p, Writer& w);

}  // namespace fmq::mqtt

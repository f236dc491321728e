// Decoded MQTT control packets as plain structs, one per packet type, for
// both protocol versions. Views (std::string_view) alias the frame they were
// decoded from and are valid only while the handler runs. Plain data; one
// thread at a time per object.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "broker/mqtt/properties.h"
#include "broker/mqtt/protocol.h"

namespace fmq::mqtt {

struct Will {
  std::string topic;
  std::string payload;
  uint8_t qos = 0;
  bool retain = false;
  Properties props;  // v5 will properties [MQTT-3.1.3.2]
  bool operator==(const Will&) const = default;
};

struct Connect {
  Version version = Version::kV5;
  bool clean_start = true;  // Clean Session in 3.1.1
  uint16_t keep_alive = 0;
  std::string client_id;
  std::optional<Will> will;
  std::optional<std::string> username;
  std::optional<std::string> password;  // binary data
  Properties props;
  bool operator==(const Connect&) const = default;
};

struct Connack {
  bool session_present = false;
  ReasonCode reason = ReasonCode::kSuccess;  // mapped to a 3.1.1 return code on encode
  Properties props;
  bool operator==(const Connack&) const = default;
};

struct Publish {
  uint8_t qos = 0;
  bool retain = false;
  bool dup = false;
  std::string_view topic;
  uint16_t packet_id = 0;
  Properties props;
  std::string_view payload;
  bool operator==(const Publish&) const = default;
};

// PUBACK, PUBREC, PUBREL, PUBCOMP share one shape [MQTT-3.4 .. 3.7].
struct Ack {
  PacketType type = PacketType::kPuback;
  uint16_t packet_id = 0;
  ReasonCode reason = ReasonCode::kSuccess;
  Properties props;
  bool operator==(const Ack&) const = default;
};

struct SubscribeEntry {
  std::string filter;
  uint8_t options = 0;  // QoS | NL | RAP | RH, as on the wire [MQTT-3.8.3.1]
  uint8_t qos() const { return options & kSubOptQosMask; }
  bool no_local() const { return options & kSubOptNoLocal; }
  bool retain_as_published() const { return options & kSubOptRetainAsPublished; }
  uint8_t retain_handling() const { return (options >> kSubOptRetainHandlingShift) & 0x03; }
  bool operator==(const SubscribeEntry&) const = default;
};

struct Subscribe {
  uint16_t packet_id = 0;
  std::vector<SubscribeEntry> entries;
  Properties props;
  bool operator==(const Subscribe&) const = default;
};

// SUBACK and UNSUBACK [MQTT-3.9, 3.11]. In 3.1.1 SUBACK codes are 0,1,2,0x80
// and UNSUBACK has no payload.
struct SubAck {
  PacketType type = PacketType::kSuback;
  uint16_t packet_id = 0;
  std::vector<ReasonCode> codes;
  Properties props;
  bool operator==(const SubAck&) const = default;
};

struct Unsubscribe {
  uint16_t packet_id = 0;
  std::vector<std::string> filters;
  Properties props;
  bool operator==(const Unsubscribe&) const = default;
};

struct Pingreq {
  bool operator==(const Pingreq&) const = default;
};
struct Pingresp {
  bool operator==(const Pingresp&) const = default;
};

struct Disconnect {
  ReasonCode reason = ReasonCode::kSuccess;
  Properties props;
  bool operator==(const Disconnect&) const = default;
};

struct Auth {
  ReasonCode reason = ReasonCode::kSuccess;
  Properties props;
  bool operator==(const Auth&) const = default;
};

using Packet =
    std::variant<Connect, Connack, Publish, Ack, Subscribe, SubAck, Unsubscribe, Pingreq, Pingresp, Disconnect, Auth>;

PacketType TypeOf(const Packet& p);

}  // namespace fmq::mqtt

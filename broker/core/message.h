// An application message as routed by the broker: immutable once created and
// shared (by reference count, atomic) between the retained store and every
// queue holding it, on every worker it was forwarded to.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "broker/mqtt/properties.h"

namespace fmq {

struct Message {
  std::string topic;
  std::string payload;
  uint8_t qos = 0;
  bool retain = false;
  // Only the properties forwarded unchanged [MQTT-3.3.2]: payload format,
  // content type, response topic, correlation data, user properties.
  mqtt::Properties props;
  // `props` in v5 wire form without the length prefix, encoded once when the
  // message is created (SealMessage) instead of once per delivery.
  std::string wire_props;
  bool has_expiry = false;
  int64_t expiry_at_ms = 0;     // monotonic ms; valid when has_expiry
  uint64_t origin_session = 0;  // for No Local; 0 = the broker itself
  // Several workers: set once by the worker routing it first, before any
  // other thread sees the message (monotonic ns << 6 | worker). Orders
  // retained updates of one topic across workers (newest wins everywhere)
  // and spreads shared-subscription picks. 0 with one worker.
  mutable uint64_t stamp = 0;

  size_t Footprint() const { return sizeof(Message) + topic.size() + payload.size(); }
  bool Expired(int64_t now_ms) const { return has_expiry && now_ms >= expiry_at_ms; }
};

using MessagePtr = std::shared_ptr<const Message>;

// Fills wire_props from props; call once before the message is routed.
void SealMessage(Message* m);

}  // namespace fmq

// What the broker observed on one device connection (doc/health.md,
// "Observed by the broker"): counted by the broker on the connection's
// worker, handed to the management plane as deltas, and summed there into
// the device's link record (mgmt/health/link.h). One type for both sides.
#pragma once

#include <cstdint>

namespace fmq {

struct LinkCounters {
  uint64_t bytes_in = 0, bytes_out = 0;
  // 64 bits: a connection that only receives reports only when it closes.
  uint64_t packets_in = 0, packets_out = 0;  // every control packet
  uint64_t publish_in = 0, publish_out = 0;  // PUBLISH packets
  uint64_t denied = 0;                       // publishes and subscriptions the ACLs refused
  LinkCounters& operator+=(const LinkCounters& o) {
    bytes_in += o.bytes_in;
    bytes_out += o.bytes_out;
    packets_in += o.packets_in;
    packets_out += o.packets_out;
    publish_in += o.publish_in;
    publish_out += o.publish_out;
    denied += o.denied;
    return *this;
  }
};

}  // namespace fmq

// The byte-moving side of a connection as the protocol sees it. Plain TCP
// (broker/net) implements it now, TLS next, a fake in unit tests. The
// protocol appends output to its Connection and calls RequestFlush(); the
// transport drains it in one place per loop iteration. Called on the owning
// worker's thread only.
#pragma once

#include <cstddef>

namespace fmq {

class Transport {
 public:
  virtual ~Transport() = default;
  // The connection has output waiting; drain it soon (once per loop turn).
  virtual void RequestFlush() = 0;
  // Write what is pending, then close. Idempotent. The connection stays
  // valid until the transport reports the close via OnTransportClosed().
  virtual void Close() = 0;
  // Bytes accepted for writing but not yet on the wire (slow-reader check).
  virtual size_t Backlog() const = 0;
};

}  // namespace fmq

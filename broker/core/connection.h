// One network connection's protocol state, I/O-free: bytes in through
// OnBytes(), bytes out through an output buffer drained by the Transport.
// Holds what lives only as long as the connection (framer, negotiated
// limits, topic aliases, keep alive); session state lives in Session.
// Owned by the net layer (or a test); driven on its worker's thread.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "broker/core/hooks.h"
#include "broker/core/session.h"
#include "broker/core/transport.h"
#include "broker/mqtt/codec.h"
#include "broker/mqtt/framer.h"
#include "common/small_queue.h"
#include "common/string_map.h"

namespace fmq {

class Broker;

class Connection {
 public:
  enum class State : uint8_t { kAwaitConnect, kConnected, kClosed };

  Connection(Broker* broker, Transport* transport, uint64_t id, std::string peer);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Network bytes, in any chunking.
  void OnBytes(std::string_view data);
  // The transport closed (peer gone, I/O error, or after Close()).
  void OnTransportClosed();

  // Output waiting for the transport; the caller takes it all.
  std::string TakeOutput();
  bool HasOutput() const { return !out_.empty(); }
  size_t OutputSize() const { return out_.size(); }

  uint64_t id() const { return id_; }
  State state() const { return state_; }
  const std::string& peer() const { return peer_; }
  void set_peer(std::string peer) { peer_ = std::move(peer); }
  // Set by a TLS transport after the handshake, before any MQTT byte. An
  // accepted connection is indexed by its certificate at once, so a
  // revocation reaches it before it has sent CONNECT (Broker::KickSerial).
  void set_identity(PeerIdentity id);
  const std::string& tenant() const {
    static const std::string kNone;
    return identity_ ? identity_->tenant : kNone;
  }
  // Internal topic prefix of this connection's tenant ("" when anonymous).
  const std::string& mount() const { return mount_; }
  const PeerIdentity* identity() const { return identity_.get(); }
  const std::string& client_id() const { return client_id_; }
  const std::string& username() const {
    static const std::string kNone;
    return extras_ ? extras_->username : kNone;
  }
  mqtt::Version version() const { return version_; }
  Session* session() const { return session_; }
  Transport* transport() const { return transport_; }

 private:
  friend class Broker;

  bool HandleFrame(uint8_t first_byte, std::string_view body);
  void Write(const mqtt::Packet& p);

  Broker* broker_;
  Transport* transport_;
  uint64_t id_;
  std::string peer_;
  mqtt::Framer framer_;
  std::string out_;

  // Negotiated at CONNECT. (Small fields together: an idle connection's
  // size is a target, doc/performance.md.)
  std::string client_id_;
  std::unique_ptr<PeerIdentity> identity_;  // null on plain TCP
  std::string mount_;
  void* tenant_state_ = nullptr;  // Broker::TenantState while connected (not anonymous)
  Session* session_ = nullptr;
  int64_t last_rx_ms_ = 0;
  // Observed traffic since the hooks were last told (OnLinkCounters), and
  // when that was (monotonic ms).
  LinkCounters link_;
  int64_t link_from_ms_ = 0;
  uint32_t client_max_packet_ = 0;  // 0 = no limit
  uint16_t keep_alive_s_ = 0;
  uint16_t send_quota_ = 65535;    // min(client Receive Maximum, max_inflight)
  uint16_t client_alias_max_ = 0;  // aliases we may use towards the client
  State state_ = State::kAwaitConnect;
  mqtt::Version version_ = mqtt::Version::kV5;
  bool problem_info_ = true;  // Request Problem Information
  bool will_on_close_ = true;
  bool serial_indexed_ = false;  // in Broker::by_serial_
  bool first_byte_seen_ = false;
  // What most connections never use, allocated on first use.
  struct Extras {
    std::string username;
    StringMap<uint16_t> out_aliases;
    std::vector<std::string> in_aliases;  // index = alias
  };
  std::unique_ptr<Extras> extras_;
  Extras& extras() {
    if (!extras_) extras_ = std::make_unique<Extras>();
    return *extras_;
  }
  // Acks waiting for durability, in PUBLISH order [MQTT-4.6.0-2].
  struct PendingAck {
    mqtt::Packet ack;  // PUBACK, PUBREC or SUBACK
    uint64_t ticket = 0;
    bool ready = false;
    // A PUBREC whose QoS 2 dedupe record is written only once the message
    // is durable on every worker (Broker::OnDurable).
    bool record_after = false;
  };
  SmallQueue<PendingAck> pending_acks_;
};

}  // namespace fmq

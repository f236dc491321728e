#include "broker/core/connection.h"

#include "broker/core/broker.h"

namespace fmq {

Connection::Connection(Broker* broker, Transport* transport, uint64_t id, std::string peer)
    : broker_(broker),
      transport_(transport),
      id_(id),
      peer_(std::move(peer)),
      framer_(broker->options().max_packet_size) {}

Connection::~Connection() = default;

void Connection::set_identity(PeerIdentity id) {
  mount_ = MountOf(id.tenant);
  identity_ = std::make_unique<PeerIdentity>(std::move(id));
  if (broker_ != nullptr && state_ != State::kClosed) broker_->IndexSerial(*this);
}

void Connection::OnBytes(std::string_view data) {
  if (state_ == State::kClosed) return;
  broker_->CountIn(*this, data.size());
  if (!first_byte_seen_ && !data.empty()) {
    first_byte_seen_ = true;
    // The first byte decides [MQTT-3.1.0-1]: anything but CONNECT (an HTTP
    // request on the MQTT port, TLS to the plain port) is closed at once,
    // not after waiting for a frame its length byte made up.
    if (static_cast<uint8_t>(data[0]) != 0x10) {
      broker_->OnDecodeError(*this, mqtt::Error::Protocol("MQTT-3.1.0-1 first packet is not CONNECT"));
      return;
    }
  }
  mqtt::Error err =
      framer_.Feed(data, [this](uint8_t first, std::string_view body) { return HandleFrame(first, body); });
  if (!err.ok() && state_ != State::kClosed) broker_->OnDecodeError(*this, err);
}

bool Connection::HandleFrame(uint8_t first_byte, std::string_view body) {
  mqtt::Packet p;
  mqtt::Error err = mqtt::Decode(first_byte, body, version_, &p);
  if (!err.ok()) {
    broker_->OnDecodeError(*this, err);
    return false;
  }
  broker_->OnPacket(*this, p);
  return state_ != State::kClosed;
}

void Connection::OnTransportClosed() { broker_->OnTransportClosed(*this); }

std::string Connection::TakeOutput() {
  std::string o;
  o.swap(out_);
  return o;
}

void Connection::Write(const mqtt::Packet& p) {
  const bool was_empty = out_.empty();
  const size_t before = out_.size();
  mqtt::Encode(p, version_, &out_);
  broker_->stats_.messages_sent++;
  broker_->stats_.bytes_sent += out_.size() - before;
  link_.packets_out++;
  link_.bytes_out += out_.size() - before;
  if (was_empty && transport_ != nullptr) transport_->RequestFlush();
}

}  // namespace fmq

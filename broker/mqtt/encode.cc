// Encoding of every packet type, and the one place where reason codes are
// turned into 3.1.1 wire values.
#include <type_traits>

#include "broker/mqtt/codec.h"

namespace fmq::mqtt {
namespace {

bool IsV5(Version v) { return v == Version::kV5; }

uint8_t First(PacketType t, uint8_t flags = 0) { return static_cast<uint8_t>((static_cast<uint8_t>(t) << 4) | flags); }

// 3.1.1 SUBACK return codes: granted QoS or 0x80 [MQTT-3.9.3].
uint8_t ToV3SubackCode(ReasonCode rc) {
  uint8_t v = static_cast<uint8_t>(rc);
  return v <= 2 ? v : 0x80;
}

void BodyConnect(const Connect& c, std::string* b) {
  Writer w(b);
  w.Binary("MQTT");
  w.U8(static_cast<uint8_t>(c.version));
  uint8_t flags = 0;
  if (c.clean_start) flags |= 0x02;
  if (c.will) flags |= static_cast<uint8_t>(0x04 | (c.will->qos << 3) | (c.will->retain ? 0x20 : 0));
  if (c.password) flags |= 0x40;
  if (c.username) flags |= 0x80;
  w.U8(flags);
  w.U16(c.keep_alive);
  if (IsV5(c.version)) EncodeProperties(c.props, w);
  w.Binary(c.client_id);
  if (c.will) {
    if (IsV5(c.version)) EncodeProperties(c.will->props, w);
    w.Binary(c.will->topic);
    w.Binary(c.will->payload);
  }
  if (c.username) w.Binary(*c.username);
  if (c.password) w.Binary(*c.password);
}

void BodyConnack(const Connack& c, Version v, std::string* b) {
  Writer w(b);
  w.U8(c.session_present ? 1 : 0);
  if (IsV5(v)) {
    w.U8(static_cast<uint8_t>(c.reason));
    EncodeProperties(c.props, w);
  } else {
    w.U8(ToV3ConnackCode(c.reason));
  }
}

void BodyPublish(const Publish& p, Version v, std::string* b) {
  Writer w(b);
  w.Binary(p.topic);
  if (p.qos > 0) w.U16(p.packet_id);
  if (IsV5(v)) EncodeProperties(p.props, w);
  w.Raw(p.payload);
}

void BodyAck(const Ack& a, Version v, std::string* b) {
  Writer w(b);
  w.U16(a.packet_id);
  if (!IsV5(v)) return;
  // [MQTT-3.4.2.1] reason and properties may be omitted when 0x00 and empty.
  if (a.reason == ReasonCode::kSuccess && a.props.present == 0) return;
  w.U8(static_cast<uint8_t>(a.reason));
  if (a.props.present != 0) EncodeProperties(a.props, w);
}

void BodySubscribe(const Subscribe& s, Version v, std::string* b) {
  Writer w(b);
  w.U16(s.packet_id);
  if (IsV5(v)) EncodeProperties(s.props, w);
  for (const auto& e : s.entries) {
    w.Binary(e.filter);
    w.U8(e.options);
  }
}

void BodySubAck(const SubAck& s, Version v, std::string* b) {
  Writer w(b);
  w.U16(s.packet_id);
  if (IsV5(v)) {
    EncodeProperties(s.props, w);
    for (ReasonCode rc : s.codes) w.U8(static_cast<uint8_t>(rc));
  } else if (s.type == PacketType::kSuback) {
    for (ReasonCode rc : s.codes) w.U8(ToV3SubackCode(rc));
  }
}

void BodyUnsubscribe(const Unsubscribe& u, Version v, std::string* b) {
  Writer w(b);
  w.U16(u.packet_id);
  if (IsV5(v)) EncodeProperties(u.props, w);
  for (const auto& f : u.filters) w.Binary(f);
}

void BodyReasonProps(ReasonCode rc, const Properties& props, Version v, std::string* b) {
  if (!IsV5(v)) return;
  if (rc == ReasonCode::kSuccess && props.present == 0) return;  // [MQTT-3.14.2.1]
  Writer w(b);
  w.U8(static_cast<uint8_t>(rc));
  if (props.present != 0) EncodeProperties(props, w);
}

// Returns the first byte and fills the body.
uint8_t Body(const Packet& p, Version v, std::string* b) {
  return std::visit(
      [&](const auto& pk) -> uint8_t {
        using T = std::decay_t<decltype(pk)>;
        if constexpr (std::is_same_v<T, Connect>) {
          BodyConnect(pk, b);
          return First(PacketType::kConnect);
        } else if constexpr (std::is_same_v<T, Connack>) {
          BodyConnack(pk, v, b);
          return First(PacketType::kConnack);
        } else if constexpr (std::is_same_v<T, Publish>) {
          BodyPublish(pk, v, b);
          return First(PacketType::kPublish,
                       static_cast<uint8_t>((pk.dup ? 8 : 0) | (pk.qos << 1) | (pk.retain ? 1 : 0)));
        } else if constexpr (std::is_same_v<T, Ack>) {
          BodyAck(pk, v, b);
          return First(pk.type, pk.type == PacketType::kPubrel ? 2 : 0);
        } else if constexpr (std::is_same_v<T, Subscribe>) {
          BodySubscribe(pk, v, b);
          return First(PacketType::kSubscribe, 2);
        } else if constexpr (std::is_same_v<T, SubAck>) {
          BodySubAck(pk, v, b);
          return First(pk.type);
        } else if constexpr (std::is_same_v<T, Unsubscribe>) {
          BodyUnsubscribe(pk, v, b);
          return First(PacketType::kUnsubscribe, 2);
        } else if constexpr (std::is_same_v<T, Pingreq>) {
          return First(PacketType::kPingreq);
        } else if constexpr (std::is_same_v<T, Pingresp>) {
          return First(PacketType::kPingresp);
        } else if constexpr (std::is_same_v<T, Disconnect>) {
          BodyReasonProps(pk.reason, pk.props, v, b);
          return First(PacketType::kDisconnect);
        } else {
          static_assert(std::is_same_v<T, Auth>);
          BodyReasonProps(pk.reason, pk.props, v, b);
          return First(PacketType::kAuth);
        }
      },
      p);
}

}  // namespace

uint8_t ToV3ConnackCode(ReasonCode rc) {
  switch (rc) {
    case ReasonCode::kSuccess:
      return 0;
    case ReasonCode::kUnsupportedProtocolVersion:
      return 1;
    case ReasonCode::kClientIdentifierNotValid:
      return 2;
    case ReasonCode::kBadUserNameOrPassword:
      return 4;
    case ReasonCode::kNotAuthorized:
    case ReasonCode::kBanned:
      return 5;
    default:
      return 3;  // server unavailable
  }
}

void WriteFixedHeader(uint8_t first_byte, uint32_t body_len, std::string* out) {
  Writer w(out);
  w.U8(first_byte);
  w.Varint(body_len);
}

void Encode(const Packet& p, Version version, std::string* out) {
  std::string body;
  uint8_t first = Body(p, version, &body);
  WriteFixedHeader(first, static_cast<uint32_t>(body.size()), out);
  out->append(body);
}

size_t EncodedSize(const Packet& p, Version version) {
  std::string body;
  Body(p, version, &body);
  return 1 + static_cast<size_t>(VarintSize(static_cast<uint32_t>(body.size()))) + body.size();
}

PacketType TypeOf(const Packet& p) {
  return std::visit(
      [](const auto& pk) -> PacketType {
        using T = std::decay_t<decltype(pk)>;
        if constexpr (std::is_same_v<T, Connect>)
          return PacketType::kConnect;
        else if constexpr (std::is_same_v<T, Connack>)
          return PacketType::kConnack;
        else if constexpr (std::is_same_v<T, Publish>)
          return PacketType::kPublish;
        else if constexpr (std::is_same_v<T, Ack>)
          return pk.type;
        else if constexpr (std::is_same_v<T, Subscribe>)
          return PacketType::kSubscribe;
        else if constexpr (std::is_same_v<T, SubAck>)
          return pk.type;
        else if constexpr (std::is_same_v<T, Unsubscribe>)
          return PacketType::kUnsubscribe;
        else if constexpr (std::is_same_v<T, Pingreq>)
          return PacketType::kPingreq;
        else if constexpr (std::is_same_v<T, Pingresp>)
          return PacketType::kPingresp;
        else if constexpr (std::is_same_v<T, Disconnect>)
          return PacketType::kDisconnect;
        else
          return PacketType::kAuth;
      },
      p);
}

std::string_view PacketTypeName(PacketType t) {
  static constexpr std::string_view kNames[] = {
      "RESERVED",  "CONNECT", "CONNACK",     "PUBLISH",  "PUBACK",  "PUBREC",   "PUBREL",     "PUBCOMP",
      "SUBSCRIBE", "SUBACK",  "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"};
  return kNames[static_cast<uint8_t>(t) & 0x0F];
}

std::string_view ReasonName(ReasonCode rc) {
  switch (rc) {
    case ReasonCode::kSuccess:
      return "success";
    case ReasonCode::kGrantedQos1:
      return "granted QoS 1";
    case ReasonCode::kGrantedQos2:
      return "granted QoS 2";
    case ReasonCode::kDisconnectWithWill:
      return "disconnect with will";
    case ReasonCode::kNoMatchingSubscribers:
      return "no matching subscribers";
    case ReasonCode::kNoSubscriptionExisted:
      return "no subscription existed";
    case ReasonCode::kContinueAuthentication:
      return "continue authentication";
    case ReasonCode::kReauthenticate:
      return "re-authenticate";
    case ReasonCode::kUnspecifiedError:
      return "unspecified error";
    case ReasonCode::kMalformedPacket:
      return "malformed packet";
    case ReasonCode::kProtocolError:
      return "protocol error";
    case ReasonCode::kImplementationSpecificError:
      return "implementation specific error";
    case ReasonCode::kUnsupportedProtocolVersion:
      return "unsupported protocol version";
    case ReasonCode::kClientIdentifierNotValid:
      return "client identifier not valid";
    case ReasonCode::kBadUserNameOrPassword:
      return "bad user name or password";
    case ReasonCode::kNotAuthorized:
      return "not authorized";
    case ReasonCode::kServerUnavailable:
      return "server unavailable";
    case ReasonCode::kServerBusy:
      return "server busy";
    case ReasonCode::kBanned:
      return "banned";
    case ReasonCode::kServerShuttingDown:
      return "server shutting down";
    case ReasonCode::kBadAuthenticationMethod:
      return "bad authentication method";
    case ReasonCode::kKeepAliveTimeout:
      return "keep alive timeout";
    case ReasonCode::kSessionTakenOver:
      return "session taken over";
    case ReasonCode::kTopicFilterInvalid:
      return "topic filter invalid";
    case ReasonCode::kTopicNameInvalid:
      return "topic name invalid";
    case ReasonCode::kPacketIdentifierInUse:
      return "packet identifier in use";
    case ReasonCode::kPacketIdentifierNotFound:
      return "packet identifier not found";
    case ReasonCode::kReceiveMaximumExceeded:
      return "receive maximum exceeded";
    case ReasonCode::kTopicAliasInvalid:
      return "topic alias invalid";
    case ReasonCode::kPacketTooLarge:
      return "packet too large";
    case ReasonCode::kMessageRateTooHigh:
      return "message rate too high";
    case ReasonCode::kQuotaExceeded:
      return "quota exceeded";
    case ReasonCode::kAdministrativeAction:
      return "administrative action";
    case ReasonCode::kPayloadFormatInvalid:
      return "payload format invalid";
    case ReasonCode::kRetainNotSupported:
      return "retain not supported";
    case ReasonCode::kQosNotSupported:
      return "QoS not supported";
    case ReasonCode::kUseAnotherServer:
      return "use another server";
    case ReasonCode::kServerMoved:
      return "server moved";
    case ReasonCode::kSharedSubscriptionsNotSupported:
      return "shared subscriptions not supported";
    case ReasonCode::kConnectionRateExceeded:
      return "connection rate exceeded";
    case ReasonCode::kMaximumConnectTime:
      return "maximum connect time";
    case ReasonCode::kSubscriptionIdentifiersNotSupported:
      return "subscription identifiers not supported";
    case ReasonCode::kWildcardSubscriptionsNotSupported:
      return "wildcard subscriptions not supported";
  }
  return "unknown reason";
}

}  // namespace fmq::mqtt

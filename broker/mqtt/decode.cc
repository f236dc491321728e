// Decoding of every packet type. Each function reads from a bounded Reader
// and names the violated rule on failure.
#include "broker/mqtt/codec.h"
#include "broker/mqtt/utf8.h"

namespace fmq::mqtt {
namespace {

bool IsV5(Version v) { return v == Version::kV5; }

Error Truncated(const char* rule) { return Error::Malformed(rule); }

Error DecodeConnect(uint8_t flags, Reader& r, Connect* c) {
  if (flags != 0) return Error::Malformed("MQTT-2.1.3-1 CONNECT fixed header flags must be 0");
  std::string_view name;
  if (!r.Binary(&name)) return Truncated("MQTT-3.1.2.1 truncated protocol name");
  uint8_t level;
  if (!r.U8(&level)) return Truncated("MQTT-3.1.2.2 truncated protocol level");
  if (name != "MQTT") {
    return {ReasonCode::kUnsupportedProtocolVersion, "MQTT-3.1.2-1 protocol name is not MQTT"};
  }
  if (level != 4 && level != 5) {
    return {ReasonCode::kUnsupportedProtocolVersion, "MQTT-3.1.2-2 unsupported protocol level"};
  }
  c->version = static_cast<Version>(level);
  const bool v5 = IsV5(c->version);
  uint8_t cf;
  if (!r.U8(&cf)) return Truncated("MQTT-3.1.2.3 truncated connect flags");
  if (cf & 0x01) return Error::Malformed("MQTT-3.1.2-3 reserved connect flag is set");
  c->clean_start = cf & 0x02;
  const bool will = cf & 0x04;
  const uint8_t will_qos = (cf >> 3) & 0x03;
  const bool will_retain = cf & 0x20;
  const bool has_password = cf & 0x40;
  const bool has_username = cf & 0x80;
  if (!will && will_qos != 0) return Error::Malformed("MQTT-3.1.2-11 will QoS set without will flag");
  if (!will && will_retain) return Error::Malformed("MQTT-3.1.2-13 will retain set without will flag");
  if (will_qos == 3) return Error::Malformed("MQTT-3.1.2-12 will QoS 3");
  if (!v5 && has_password && !has_username) {
    return Error::Malformed("MQTT-3.1.2-22 password flag set without user name flag");
  }
  if (!r.U16(&c->keep_alive)) return Truncated("MQTT-3.1.2.10 truncated keep alive");
  if (v5) {
    Error e = DecodeProperties(r, PropertyContext::kConnect, &c->props);
    if (!e.ok()) return e;
  }
  std::string_view id;
  if (!r.Binary(&id)) return Truncated("MQTT-3.1.3-3 truncated client identifier");
  if (!IsValidMqttUtf8(id)) return Error::Malformed("MQTT-3.1.3-4 client identifier is not UTF-8");
  c->client_id.assign(id);
  if (will) {
    Will w;
    w.qos = will_qos;
    w.retain = will_retain;
    if (v5) {
      Error e = DecodeProperties(r, PropertyContext::kWill, &w.props);
      if (!e.ok()) return e;
    }
    std::string_view topic, payload;
    if (!r.Binary(&topic)) return Truncated("MQTT-3.1.3.3 truncated will topic");
    if (!IsValidMqttUtf8(topic)) return Error::Malformed("MQTT-3.1.3-11 will topic is not UTF-8");
    if (!r.Binary(&payload)) return Truncated("MQTT-3.1.3.4 truncated will payload");
    w.topic.assign(topic);
    w.payload.assign(payload);
    c->will = std::move(w);
  }
  if (has_username) {
    std::string_view u;
    if (!r.Binary(&u)) return Truncated("MQTT-3.1.3.5 truncated user name");
    if (!IsValidMqttUtf8(u)) return Error::Malformed("MQTT-3.1.3-12 user name is not UTF-8");
    c->username.emplace(u);
  }
  if (has_password) {
    std::string_view p;
    if (!r.Binary(&p)) return Truncated("MQTT-3.1.3.6 truncated password");
    c->password.emplace(p);
  }
  if (!r.empty()) return Error::Malformed("MQTT-3.1.3 bytes after the CONNECT payload");
  return kOk;
}

Error DecodeConnack(uint8_t flags, Reader& r, Version v, Connack* c) {
  if (flags != 0) return Error::Malformed("MQTT-2.1.3-1 CONNACK fixed header flags must be 0");
  uint8_t af, rc;
  if (!r.U8(&af) || !r.U8(&rc)) return Truncated("MQTT-3.2.2 truncated CONNACK");
  if (af & 0xFE) return Error::Malformed("MQTT-3.2.2-1 reserved acknowledge flags set");
  c->session_present = af & 1;
  if (IsV5(v)) {
    c->reason = static_cast<ReasonCode>(rc);
    Error e = DecodeProperties(r, PropertyContext::kConnack, &c->props);
    if (!e.ok()) return e;
  } else {
    static constexpr ReasonCode kMap[] = {
        ReasonCode::kSuccess,           ReasonCode::kUnsupportedProtocolVersion, ReasonCode::kClientIdentifierNotValid,
        ReasonCode::kServerUnavailable, ReasonCode::kBadUserNameOrPassword,      ReasonCode::kNotAuthorized};
    if (rc > 5) return Error::Malformed("MQTT-3.2.2.3 unknown CONNACK return code");
    c->reason = kMap[rc];
  }
  if (!r.empty()) return Error::Malformed("MQTT-3.2 bytes after CONNACK");
  return kOk;
}

Error DecodePublish(uint8_t flags, Reader& r, Version v, Publish* p) {
  p->qos = (flags >> 1) & 0x03;
  p->dup = flags & 0x08;
  p->retain = flags & 0x01;
  if (p->qos == 3) return Error::Malformed("MQTT-3.3.1-4 PUBLISH with QoS 3");
  if (p->dup && p->qos == 0) return Error::Malformed("MQTT-3.3.1-2 DUP set on a QoS 0 PUBLISH");
  if (!r.Binary(&p->topic)) return Truncated("MQTT-3.3.2.1 truncated topic name");
  if (!IsValidMqttUtf8(p->topic)) return Error::Malformed("MQTT-3.3.2-1 topic name is not UTF-8");
  for (char ch : p->topic) {
    if (ch == '+' || ch == '#') {
      return {ReasonCode::kTopicNameInvalid, "MQTT-3.3.2-2 topic name contains a wildcard"};
    }
  }
  if (p->qos > 0) {
    if (!r.U16(&p->packet_id)) return Truncated("MQTT-3.3.2.2 truncated packet identifier");
    if (p->packet_id == 0) return Error::Protocol("MQTT-2.2.1-3 packet identifier 0");
  }
  if (IsV5(v)) {
    Error e = DecodeProperties(r, PropertyContext::kPublish, &p->props);
    if (!e.ok()) return e;
    if (p->topic.empty() && !p->props.Has(PropertyId::kTopicAlias)) {
      return Error::Protocol("MQTT-3.3.2-1 empty topic name without a topic alias");
    }
  } else if (p->topic.empty()) {
    return {ReasonCode::kTopicNameInvalid, "MQTT-4.7.3-1 empty topic name"};
  }
  p->payload = r.Rest();
  return kOk;
}

bool AckReasonAllowed(PacketType t, uint8_t rc) {
  if (t == PacketType::kPubrel || t == PacketType::kPubcomp) return rc == 0x00 || rc == 0x92;
  switch (rc) {
    case 0x00:
    case 0x10:
    case 0x80:
    case 0x83:
    case 0x87:
    case 0x90:
    case 0x91:
    case 0x97:
    case 0x99:
      return true;
    default:
      return false;
  }
}

Error DecodeAck(PacketType t, uint8_t flags, Reader& r, Version v, Ack* a) {
  const uint8_t want = t == PacketType::kPubrel ? 0x02 : 0x00;
  if (flags != want) return Error::Malformed("MQTT-2.2.2-2 wrong fixed header flags on an ack (PUBREL needs 2)");
  a->type = t;
  if (!r.U16(&a->packet_id)) return Truncated("MQTT-3.4.2 truncated packet identifier");
  if (a->packet_id == 0) return Error::Protocol("MQTT-2.2.1-3 packet identifier 0");
  if (IsV5(v) && !r.empty()) {
    uint8_t rc;
    r.U8(&rc);
    if (!AckReasonAllowed(t, rc)) return Error::Protocol("MQTT-3.4.2-1 reason code not allowed");
    a->reason = static_cast<ReasonCode>(rc);
    if (!r.empty()) {
      Error e = DecodeProperties(r, PropertyContext::kPubAck, &a->props);
      if (!e.ok()) return e;
    }
  }
  if (!r.empty()) return Error::Malformed("MQTT-3.4.2 bytes after the ack");
  return kOk;
}

Error DecodeSubscribe(uint8_t flags, Reader& r, Version v, Subscribe* s) {
  if (flags != 0x02) return Error::Malformed("MQTT-3.8.1-1 SUBSCRIBE fixed header flags must be 2");
  if (!r.U16(&s->packet_id)) return Truncated("MQTT-3.8.2 truncated packet identifier");
  if (s->packet_id == 0) return Error::Protocol("MQTT-2.2.1-3 packet identifier 0");
  if (IsV5(v)) {
    Error e = DecodeProperties(r, PropertyContext::kSubscribe, &s->props);
    if (!e.ok()) return e;
  }
  while (!r.empty()) {
    std::string_view f;
    uint8_t opts;
    if (!r.Binary(&f)) return Truncated("MQTT-3.8.3 truncated topic filter");
    if (!IsValidMqttUtf8(f)) return Error::Malformed("MQTT-3.8.3-1 topic filter is not UTF-8");
    if (!r.U8(&opts)) return Truncated("MQTT-3.8.3 missing subscription options");
    if (IsV5(v)) {
      if (opts & kSubOptReservedMask) return Error::Malformed("MQTT-3.8.3-5 reserved subscription option bits set");
      if (((opts >> kSubOptRetainHandlingShift) & 3) == 3) return Error::Protocol("MQTT-3.8.3.1 retain handling 3");
    } else if (opts & 0xFC) {
      // "MQTT-3-8.3-4" is how the 3.1.1 specification itself numbers this rule.
      return Error::Malformed("MQTT-3-8.3-4 reserved bits of requested QoS set");
    }
    if ((opts & kSubOptQosMask) == 3) return Error::Malformed("MQTT-3.8.3-4 requested QoS 3");
    s->entries.push_back({std::string(f), opts});
  }
  if (s->entries.empty()) return Error::Protocol("MQTT-3.8.3-3 SUBSCRIBE without a topic filter");
  return kOk;
}

bool SubAckCodeAllowed(PacketType t, Version v, uint8_t rc) {
  if (!IsV5(v)) return rc <= 2 || rc == 0x80;
  if (t == PacketType::kSuback) {
    switch (rc) {
      case 0x00:
      case 0x01:
      case 0x02:
      case 0x80:
      case 0x83:
      case 0x87:
      case 0x8F:
      case 0x91:
      case 0x97:
      case 0x9E:
      case 0xA1:
      case 0xA2:
        return true;
      default:
        return false;
    }
  }
  switch (rc) {
    case 0x00:
    case 0x11:
    case 0x80:
    case 0x83:
    case 0x87:
    case 0x8F:
    case 0x91:
      return true;
    default:
      return false;
  }
}

Error DecodeSubAck(PacketType t, uint8_t flags, Reader& r, Version v, SubAck* s) {
  if (flags != 0) return Error::Malformed("MQTT-2.1.3-1 SUBACK/UNSUBACK flags must be 0");
  s->type = t;
  if (!r.U16(&s->packet_id)) return Truncated("MQTT-3.9.2 truncated packet identifier");
  if (IsV5(v)) {
    Error e = DecodeProperties(r, t == PacketType::kSuback ? PropertyContext::kSuback : PropertyContext::kUnsuback,
                               &s->props);
    if (!e.ok()) return e;
  } else if (t == PacketType::kUnsuback) {
    if (!r.empty()) return Error::Malformed("MQTT-3.11.3 UNSUBACK has no payload in 3.1.1");
    return kOk;
  }
  uint8_t rc;
  while (r.U8(&rc)) {
    if (!SubAckCodeAllowed(t, v, rc)) return Error::Protocol("MQTT-3.9.3-2 reason code not allowed in SUBACK/UNSUBACK");
    s->codes.push_back(static_cast<ReasonCode>(rc));
  }
  return kOk;
}

Error DecodeUnsubscribe(uint8_t flags, Reader& r, Version v, Unsubscribe* u) {
  if (flags != 0x02) return Error::Malformed("MQTT-3.10.1-1 UNSUBSCRIBE fixed header flags must be 2");
  if (!r.U16(&u->packet_id)) return Truncated("MQTT-3.10.2 truncated packet identifier");
  if (u->packet_id == 0) return Error::Protocol("MQTT-2.2.1-3 packet identifier 0");
  if (IsV5(v)) {
    Error e = DecodeProperties(r, PropertyContext::kUnsubscribe, &u->props);
    if (!e.ok()) return e;
  }
  while (!r.empty()) {
    std::string_view f;
    if (!r.Binary(&f)) return Truncated("MQTT-3.10.3 truncated topic filter");
    if (!IsValidMqttUtf8(f)) return Error::Malformed("MQTT-3.10.3-1 topic filter is not UTF-8");
    u->filters.emplace_back(f);
  }
  if (u->filters.empty()) return Error::Protocol("MQTT-3.10.3-2 UNSUBSCRIBE without a topic filter");
  return kOk;
}

Error DecodeDisconnect(uint8_t flags, Reader& r, Version v, Disconnect* d) {
  if (flags != 0) return Error::Malformed("MQTT-3.14.1-1 DISCONNECT fixed header flags must be 0");
  if (IsV5(v) && !r.empty()) {
    uint8_t rc;
    r.U8(&rc);
    d->reason = static_cast<ReasonCode>(rc);
    if (!r.empty()) {
      Error e = DecodeProperties(r, PropertyContext::kDisconnect, &d->props);
      if (!e.ok()) return e;
    }
  }
  if (!r.empty()) return Error::Malformed("MQTT-3.14 bytes after DISCONNECT");
  return kOk;
}

Error DecodeAuth(uint8_t flags, Reader& r, Auth* a) {
  if (flags != 0) return Error::Malformed("MQTT-3.15.1-1 AUTH fixed header flags must be 0");
  if (!r.empty()) {
    uint8_t rc;
    r.U8(&rc);
    if (rc != 0x00 && rc != 0x18 && rc != 0x19) return Error::Malformed("MQTT-3.15.2-1 invalid AUTH reason code");
    a->reason = static_cast<ReasonCode>(rc);
    if (!r.empty()) {
      Error e = DecodeProperties(r, PropertyContext::kAuth, &a->props);
      if (!e.ok()) return e;
    }
  }
  if (!r.empty()) return Error::Malformed("MQTT-3.15 bytes after AUTH");
  return kOk;
}

Error DecodeEmpty(uint8_t flags, Reader& r) {
  if (flags != 0) return Error::Malformed("MQTT-2.1.3-1 fixed header flags must be 0");
  if (!r.empty()) return Error::Malformed("MQTT-3.12.1 PINGREQ/PINGRESP has no body");
  return kOk;
}

}  // namespace

Error Decode(uint8_t first_byte, std::string_view body, Version version, Packet* out) {
  const auto type = static_cast<PacketType>(first_byte >> 4);
  const uint8_t flags = first_byte & 0x0F;
  Reader r(body);
  switch (type) {
    case PacketType::kConnect:
      return DecodeConnect(flags, r, &out->emplace<Connect>());
    case PacketType::kConnack:
      return DecodeConnack(flags, r, version, &out->emplace<Connack>());
    case PacketType::kPublish:
      return DecodePublish(flags, r, version, &out->emplace<Publish>());
    case PacketType::kPuback:
    case PacketType::kPubrec:
    case PacketType::kPubrel:
    case PacketType::kPubcomp:
      return DecodeAck(type, flags, r, version, &out->emplace<Ack>());
    case PacketType::kSubscribe:
      return DecodeSubscribe(flags, r, version, &out->emplace<Subscribe>());
    case PacketType::kSuback:
    case PacketType::kUnsuback:
      return DecodeSubAck(type, flags, r, version, &out->emplace<SubAck>());
    case PacketType::kUnsubscribe:
      return DecodeUnsubscribe(flags, r, version, &out->emplace<Unsubscribe>());
    case PacketType::kPingreq:
      out->emplace<Pingreq>();
      return DecodeEmpty(flags, r);
    case PacketType::kPingresp:
      out->emplace<Pingresp>();
      return DecodeEmpty(flags, r);
    case PacketType::kDisconnect:
      return DecodeDisconnect(flags, r, version, &out->emplace<Disconnect>());
    case PacketType::kAuth:
      if (!IsV5(version)) return Error::Malformed("MQTT-2.2.1 packet type 15 is reserved in 3.1.1");
      return DecodeAuth(flags, r, &out->emplace<Auth>());
    case PacketType::kReserved:
      break;
  }
  return Error::Malformed("MQTT-2.1.2 reserved packet type 0");
}

}  // namespace fmq::mqtt

#include "broker/mqtt/properties.h"

#include "broker/mqtt/utf8.h"

namespace fmq::mqtt {
namespace {

using P = PropertyId;
constexpr uint64_t B(P id) { return uint64_t{1} << static_cast<uint8_t>(id); }

constexpr uint64_t kWillLike = B(P::kPayloadFormatIndicator) | B(P::kMessageExpiryInterval) | B(P::kContentType) |
                               B(P::kResponseTopic) | B(P::kCorrelationData) | B(P::kUserProperty);

// Allowed property set per packet [MQTT-2.2.2.2 table].
uint64_t Allowed(PropertyContext ctx) {
  switch (ctx) {
    case PropertyContext::kConnect:
      return B(P::kSessionExpiryInterval) | B(P::kAuthenticationMethod) | B(P::kAuthenticationData) |
             B(P::kRequestProblemInformation) | B(P::kRequestResponseInformation) | B(P::kReceiveMaximum) |
             B(P::kTopicAliasMaximum) | B(P::kUserProperty) | B(P::kMaximumPacketSize);
    case PropertyContext::kConnack:
      return B(P::kSessionExpiryInterval) | B(P::kAssignedClientIdentifier) | B(P::kServerKeepAlive) |
             B(P::kAuthenticationMethod) | B(P::kAuthenticationData) | B(P::kResponseInformation) |
             B(P::kServerReference) | B(P::kReasonString) | B(P::kReceiveMaximum) | B(P::kTopicAliasMaximum) |
             B(P::kMaximumQos) | B(P::kRetainAvailable) | B(P::kUserProperty) | B(P::kMaximumPacketSize) |
             B(P::kWildcardSubscriptionAvailable) | B(P::kSubscriptionIdentifierAvailable) |
             B(P::kSharedSubscriptionAvailable);
    case PropertyContext::kPublish:
      return kWillLike | B(P::kSubscriptionIdentifier) | B(P::kTopicAlias);
    case PropertyContext::kWill:
      return kWillLike | B(P::kWillDelayInterval);
    case PropertyContext::kPubAck:
    case PropertyContext::kSuback:
    case PropertyContext::kUnsuback:
      return B(P::kReasonString) | B(P::kUserProperty);
    case PropertyContext::kSubscribe:
      return B(P::kSubscriptionIdentifier) | B(P::kUserProperty);
    case PropertyContext::kUnsubscribe:
      return B(P::kUserProperty);
    case PropertyContext::kDisconnect:
      return B(P::kSessionExpiryInterval) | B(P::kServerReference) | B(P::kReasonString) | B(P::kUserProperty);
    case PropertyContext::kAuth:
      return B(P::kAuthenticationMethod) | B(P::kAuthenticationData) | B(P::kReasonString) | B(P::kUserProperty);
  }
  return 0;
}

bool ReadString(Reader& r, std::string* out, Error* err) {
  std::string_view v;
  if (!r.Binary(&v)) {
    *err = Error::Malformed("MQTT-1.5.4 truncated UTF-8 string property");
    return false;
  }
  if (!IsValidMqttUtf8(v)) {
    *err = Error::Malformed("MQTT-1.5.4-1 property string is not valid UTF-8");
    return false;
  }
  out->assign(v);
  return true;
}

bool ReadBinary(Reader& r, std::string* out, Error* err) {
  std::string_view v;
  if (!r.Binary(&v)) {
    *err = Error::Malformed("MQTT-1.5.6 truncated binary property");
    return false;
  }
  out->assign(v);
  return true;
}

bool ReadByte(Reader& r, uint8_t* out, uint8_t max, Error* err) {
  if (!r.U8(out)) {
    *err = Error::Malformed("MQTT-2.2.2 truncated byte property");
    return false;
  }
  if (*out > max) {
    *err = Error::Protocol("MQTT-3 property byte value out of range");
    return false;
  }
  return true;
}

bool ReadU16(Reader& r, uint16_t* out, bool nonzero, Error* err) {
  if (!r.U16(out)) {
    *err = Error::Malformed("MQTT-2.2.2 truncated two byte property");
    return false;
  }
  if (nonzero && *out == 0) {
    *err = Error::Protocol("MQTT-3 property value 0 is a protocol error");
    return false;
  }
  return true;
}

bool ReadU32(Reader& r, uint32_t* out, bool nonzero, Error* err) {
  if (!r.U32(out)) {
    *err = Error::Malformed("MQTT-2.2.2 truncated four byte property");
    return false;
  }
  if (nonzero && *out == 0) {
    *err = Error::Protocol("MQTT-3 property value 0 is a protocol error");
    return false;
  }
  return true;
}

// Reads one property's value; the id was already checked against the set.
bool ReadOne(Reader& r, P id, PropertyContext ctx, Properties* p, Error* err) {
  switch (id) {
    case P::kPayloadFormatIndicator:
      return ReadByte(r, &p->payload_format, 1, err);
    case P::kMessageExpiryInterval:
      return ReadU32(r, &p->message_expiry, false, err);
    case P::kContentType:
      return ReadString(r, &p->content_type, err);
    case P::kResponseTopic: {
      if (!ReadString(r, &p->response_topic, err)) return false;
      for (char c : p->response_topic) {
        if (c == '+' || c == '#') {  // [MQTT-3.3.2-14] it is a topic name
          *err = Error::Protocol("MQTT-3.3.2-14 response topic contains a wildcard");
          return false;
        }
      }
      if (p->response_topic.empty()) {
        *err = Error::Protocol("MQTT-3.3.2-13 response topic is empty");
        return false;
      }
      return true;
    }
    case P::kCorrelationData:
      return ReadBinary(r, &p->correlation_data, err);
    case P::kSubscriptionIdentifier: {
      uint32_t v;
      if (!r.Varint(&v, err)) return false;
      if (v == 0) {
        *err = Error::Protocol("MQTT-3.8.2.1.2 subscription identifier 0");
        return false;
      }
      if (ctx == PropertyContext::kSubscribe && !p->subscription_ids.empty()) {
        *err = Error::Protocol("MQTT-3.8.2.1.2 more than one subscription identifier");
        return false;
      }
      p->subscription_ids.push_back(v);
      return true;
    }
    case P::kSessionExpiryInterval:
      return ReadU32(r, &p->session_expiry, false, err);
    case P::kAssignedClientIdentifier:
      return ReadString(r, &p->assigned_client_id, err);
    case P::kServerKeepAlive:
      return ReadU16(r, &p->server_keep_alive, false, err);
    case P::kAuthenticationMethod:
      return ReadString(r, &p->auth_method, err);
    case P::kAuthenticationData:
      return ReadBinary(r, &p->auth_data, err);
    case P::kRequestProblemInformation:
      return ReadByte(r, &p->request_problem_info, 1, err);
    case P::kWillDelayInterval:
      return ReadU32(r, &p->will_delay, false, err);
    case P::kRequestResponseInformation:
      return ReadByte(r, &p->request_response_info, 1, err);
    case P::kResponseInformation:
      return ReadString(r, &p->response_info, err);
    case P::kServerReference:
      return ReadString(r, &p->server_reference, err);
    case P::kReasonString:
      return ReadString(r, &p->reason_string, err);
    case P::kReceiveMaximum:
      return ReadU16(r, &p->receive_maximum, true, err);
    case P::kTopicAliasMaximum:
      return ReadU16(r, &p->topic_alias_maximum, false, err);
    case P::kTopicAlias:
      return ReadU16(r, &p->topic_alias, true, err);
    case P::kMaximumQos:
      return ReadByte(r, &p->maximum_qos, 1, err);
    case P::kRetainAvailable:
      return ReadByte(r, &p->retain_available, 1, err);
    case P::kUserProperty: {
      std::string k, v;
      if (!ReadString(r, &k, err) || !ReadString(r, &v, err)) return false;
      p->user_properties.emplace_back(std::move(k), std::move(v));
      return true;
    }
    case P::kMaximumPacketSize:
      return ReadU32(r, &p->maximum_packet_size, true, err);
    case P::kWildcardSubscriptionAvailable:
      return ReadByte(r, &p->wildcard_sub_available, 1, err);
    case P::kSubscriptionIdentifierAvailable:
      return ReadByte(r, &p->sub_id_available, 1, err);
    case P::kSharedSubscriptionAvailable:
      return ReadByte(r, &p->shared_sub_available, 1, err);
  }
  *err = Error::Malformed("MQTT-2.2.2.2 unknown property identifier");
  return false;
}

}  // namespace

Error DecodeProperties(Reader& r, PropertyContext ctx, Properties* out) {
  Error err;
  uint32_t len;
  if (!r.Varint(&len, &err)) return err;
  std::string_view block;
  if (!r.Take(len, &block)) return Error::Malformed("MQTT-2.2.2.1 property length beyond packet");
  Reader pr(block);
  const uint64_t allowed = Allowed(ctx);
  while (!pr.empty()) {
    uint32_t raw_id;
    // [MQTT-2.2.2.2] the identifier is a variable byte integer.
    if (!pr.Varint(&raw_id, &err)) return err;
    if (raw_id > 63 || !(allowed & (uint64_t{1} << raw_id))) {
      return Error::Malformed("MQTT-2.2.2.2 property not allowed in this packet");
    }
    auto id = static_cast<P>(raw_id);
    bool multi = id == P::kUserProperty || (id == P::kSubscriptionIdentifier && ctx == PropertyContext::kPublish);
    if (!multi && out->Has(id)) {
      return Error::Protocol("MQTT-2.2.2.2 property included more than once");
    }
    if (!ReadOne(pr, id, ctx, out, &err)) return err;
    out->Mark(id);
  }
  return kOk;
}

namespace {

void WriteBody(const Properties& p, Writer& w) {
  auto id = [&](P i) { w.U8(static_cast<uint8_t>(i)); };
  if (p.Has(P::kPayloadFormatIndicator)) {
    id(P::kPayloadFormatIndicator);
    w.U8(p.payload_format);
  }
  if (p.Has(P::kMessageExpiryInterval)) {
    id(P::kMessageExpiryInterval);
    w.U32(p.message_expiry);
  }
  if (p.Has(P::kContentType)) {
    id(P::kContentType);
    w.Binary(p.content_type);
  }
  if (p.Has(P::kResponseTopic)) {
    id(P::kResponseTopic);
    w.Binary(p.response_topic);
  }
  if (p.Has(P::kCorrelationData)) {
    id(P::kCorrelationData);
    w.Binary(p.correlation_data);
  }
  if (p.Has(P::kSubscriptionIdentifier)) {
    for (uint32_t s : p.subscription_ids) {
      id(P::kSubscriptionIdentifier);
      w.Varint(s);
    }
  }
  if (p.Has(P::kSessionExpiryInterval)) {
    id(P::kSessionExpiryInterval);
    w.U32(p.session_expiry);
  }
  if (p.Has(P::kAssignedClientIdentifier)) {
    id(P::kAssignedClientIdentifier);
    w.Binary(p.assigned_client_id);
  }
  if (p.Has(P::kServerKeepAlive)) {
    id(P::kServerKeepAlive);
    w.U16(p.server_keep_alive);
  }
  if (p.Has(P::kAuthenticationMethod)) {
    id(P::kAuthenticationMethod);
    w.Binary(p.auth_method);
  }
  if (p.Has(P::kAuthenticationData)) {
    id(P::kAuthenticationData);
    w.Binary(p.auth_data);
  }
  if (p.Has(P::kRequestProblemInformation)) {
    id(P::kRequestProblemInformation);
    w.U8(p.request_problem_info);
  }
  if (p.Has(P::kWillDelayInterval)) {
    id(P::kWillDelayInterval);
    w.U32(p.will_delay);
  }
  if (p.Has(P::kRequestResponseInformation)) {
    id(P::kRequestResponseInformation);
    w.U8(p.request_response_info);
  }
  if (p.Has(P::kResponseInformation)) {
    id(P::kResponseInformation);
    w.Binary(p.response_info);
  }
  if (p.Has(P::kServerReference)) {
    id(P::kServerReference);
    w.Binary(p.server_reference);
  }
  if (p.Has(P::kReasonString)) {
    id(P::kReasonString);
    w.Binary(p.reason_string);
  }
  if (p.Has(P::kReceiveMaximum)) {
    id(P::kReceiveMaximum);
    w.U16(p.receive_maximum);
  }
  if (p.Has(P::kTopicAliasMaximum)) {
    id(P::kTopicAliasMaximum);
    w.U16(p.topic_alias_maximum);
  }
  if (p.Has(P::kTopicAlias)) {
    id(P::kTopicAlias);
    w.U16(p.topic_alias);
  }
  if (p.Has(P::kMaximumQos)) {
    id(P::kMaximumQos);
    w.U8(p.maximum_qos);
  }
  if (p.Has(P::kRetainAvailable)) {
    id(P::kRetainAvailable);
    w.U8(p.retain_available);
  }
  if (p.Has(P::kUserProperty)) {
    for (const auto& [k, v] : p.user_properties) {
      id(P::kUserProperty);
      w.Binary(k);
      w.Binary(v);
    }
  }
  if (p.Has(P::kMaximumPacketSize)) {
    id(P::kMaximumPacketSize);
    w.U32(p.maximum_packet_size);
  }
  if (p.Has(P::kWildcardSubscriptionAvailable)) {
    id(P::kWildcardSubscriptionAvailable);
    w.U8(p.wildcard_sub_available);
  }
  if (p.Has(P::kSubscriptionIdentifierAvailable)) {
    id(P::kSubscriptionIdentifierAvailable);
    w.U8(p.sub_id_available);
  }
  if (p.Has(P::kSharedSubscriptionAvailable)) {
    id(P::kSharedSubscriptionAvailable);
    w.U8(p.shared_sub_available);
  }
}

}  // namespace

void EncodeProperties(const Properties& p, Writer& w) {
  if (p.present == 0) {
    w.U8(0);
    return;
  }
  std::string body;
  Writer bw(&body);
  WriteBody(p, bw);
  w.Varint(static_cast<uint32_t>(body.size()));
  w.Raw(body);
}

}  // namespace fmq::mqtt

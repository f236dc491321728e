// Codec: round trip of every packet type in both versions, any chunking,
// truncation at every length, and the conformance vectors.
#include "broker/mqtt/codec.h"

#include <doctest/doctest.h>

#include "broker/mqtt/framer.h"
#include "tests/unit/test_util.h"

namespace fmq::mqtt {
namespace {

using test::DecodeWhole;

Properties FullPublishProps() {
  Properties p;
  p.payload_format = 1;
  p.Mark(PropertyId::kPayloadFormatIndicator);
  p.message_expiry = 30;
  p.Mark(PropertyId::kMessageExpiryInterval);
  p.content_type = "application/json";
  p.Mark(PropertyId::kContentType);
  p.response_topic = "reply/to";
  p.Mark(PropertyId::kResponseTopic);
  p.correlation_data = std::string("\x00\x01\xff", 3);
  p.Mark(PropertyId::kCorrelationData);
  p.subscription_ids = {1, 268435455};
  p.Mark(PropertyId::kSubscriptionIdentifier);
  p.topic_alias = 7;
  p.Mark(PropertyId::kTopicAlias);
  p.user_properties = {{"k", "v"}, {"k", "v2"}};
  p.Mark(PropertyId::kUserProperty);
  return p;
}

std::vector<Packet> Samples(Version v) {
  const bool v5 = v == Version::kV5;
  std::vector<Packet> out;
  Connect c;
  c.version = v;
  c.clean_start = false;
  c.keep_alive = 30;
  c.client_id = "dev-1";
  c.username = "user";
  c.password = std::string("p\x00w", 3);
  Will w;
  w.topic = "will/t";
  w.payload = "bye";
  w.qos = 1;
  w.retain = true;
  if (v5) {
    w.props.will_delay = 5;
    w.props.Mark(PropertyId::kWillDelayInterval);
    w.props.content_type = "text";
    w.props.Mark(PropertyId::kContentType);
    c.props.session_expiry = 3600;
    c.props.Mark(PropertyId::kSessionExpiryInterval);
    c.props.receive_maximum = 10;
    c.props.Mark(PropertyId::kReceiveMaximum);
    c.props.maximum_packet_size = 4096;
    c.props.Mark(PropertyId::kMaximumPacketSize);
    c.props.topic_alias_maximum = 5;
    c.props.Mark(PropertyId::kTopicAliasMaximum);
    c.props.request_problem_info = 0;
    c.props.Mark(PropertyId::kRequestProblemInformation);
    c.props.request_response_info = 1;
    c.props.Mark(PropertyId::kRequestResponseInformation);
    c.props.user_properties = {{"a", "b"}};
    c.props.Mark(PropertyId::kUserProperty);
    c.props.auth_method = "m";
    c.props.Mark(PropertyId::kAuthenticationMethod);
    c.props.auth_data = "d";
    c.props.Mark(PropertyId::kAuthenticationData);
  }
  c.will = w;
  out.push_back(c);
  Connect minimal;
  minimal.version = v;
  out.push_back(minimal);

  Connack ca;
  ca.session_present = true;
  ca.reason = v5 ? ReasonCode::kSuccess : ReasonCode::kNotAuthorized;
  if (v5) {
    auto& p = ca.props;
    p.assigned_client_id = "x";
    p.Mark(PropertyId::kAssignedClientIdentifier);
    p.server_keep_alive = 20;
    p.Mark(PropertyId::kServerKeepAlive);
    p.receive_maximum = 100;
    p.Mark(PropertyId::kReceiveMaximum);
    p.topic_alias_maximum = 10;
    p.Mark(PropertyId::kTopicAliasMaximum);
    p.maximum_qos = 1;
    p.Mark(PropertyId::kMaximumQos);
    p.retain_available = 0;
    p.Mark(PropertyId::kRetainAvailable);
    p.maximum_packet_size = 1000;
    p.Mark(PropertyId::kMaximumPacketSize);
    p.wildcard_sub_available = 0;
    p.Mark(PropertyId::kWildcardSubscriptionAvailable);
    p.sub_id_available = 0;
    p.Mark(PropertyId::kSubscriptionIdentifierAvailable);
    p.shared_sub_available = 0;
    p.Mark(PropertyId::kSharedSubscriptionAvailable);
    p.response_info = "ri";
    p.Mark(PropertyId::kResponseInformation);
    p.server_reference = "other";
    p.Mark(PropertyId::kServerReference);
    p.reason_string = "why";
    p.Mark(PropertyId::kReasonString);
    p.session_expiry = 9;
    p.Mark(PropertyId::kSessionExpiryInterval);
  }
  out.push_back(ca);

  for (uint8_t qos = 0; qos <= 2; ++qos) {
    Publish p;
    p.qos = qos;
    p.retain = qos == 1;
    p.dup = qos == 2;
    p.topic = "a/b/c";
    p.packet_id = qos ? 513 : 0;
    p.payload = std::string_view("\x00payload\xff", 9);
    if (v5) p.props = FullPublishProps();
    out.push_back(p);
  }
  for (PacketType t : {PacketType::kPuback, PacketType::kPubrec, PacketType::kPubrel, PacketType::kPubcomp}) {
    Ack a;
    a.type = t;
    a.packet_id = 65535;
    out.push_back(a);
    if (v5) {
      a.reason = t == PacketType::kPubrel || t == PacketType::kPubcomp ? ReasonCode::kPacketIdentifierNotFound
                                                                       : ReasonCode::kQuotaExceeded;
      out.push_back(a);
      a.props.reason_string = "r";
      a.props.Mark(PropertyId::kReasonString);
      out.push_back(a);
    }
  }
  Subscribe s;
  s.packet_id = 9;
  s.entries = {{"a/+", 1}, {"$share/g/b/#", 2}};
  if (v5) {
    s.entries.push_back({"c", static_cast<uint8_t>(0x04 | 0x08 | 0x20 | 1)});
    s.props.subscription_ids = {42};
    s.props.Mark(PropertyId::kSubscriptionIdentifier);
  }
  out.push_back(s);
  SubAck sa;
  sa.packet_id = 9;
  sa.codes = {ReasonCode::kGrantedQos1, ReasonCode::kSuccess, ReasonCode::kGrantedQos2};
  if (v5) sa.codes.push_back(ReasonCode::kTopicFilterInvalid);
  out.push_back(sa);
  Unsubscribe u;
  u.packet_id = 10;
  u.filters = {"a/+", "b"};
  out.push_back(u);
  SubAck ua;
  ua.type = PacketType::kUnsuback;
  ua.packet_id = 10;
  if (v5) ua.codes = {ReasonCode::kSuccess, ReasonCode::kNoSubscriptionExisted};
  out.push_back(ua);
  out.push_back(Pingreq{});
  out.push_back(Pingresp{});
  out.push_back(Disconnect{});
  if (v5) {
    Disconnect d;
    d.reason = ReasonCode::kDisconnectWithWill;
    d.props.session_expiry = 0;
    d.props.Mark(PropertyId::kSessionExpiryInterval);
    d.props.reason_string = "bye";
    d.props.Mark(PropertyId::kReasonString);
    out.push_back(d);
    Auth a;
    a.reason = ReasonCode::kContinueAuthentication;
    a.props.auth_method = "SCRAM";
    a.props.Mark(PropertyId::kAuthenticationMethod);
    out.push_back(a);
  }
  return out;
}

TEST_CASE("every packet type round-trips in both versions") {
  for (Version v : {Version::kV311, Version::kV5}) {
    for (const Packet& p : Samples(v)) {
      CAPTURE(static_cast<int>(v));
      CAPTURE(PacketTypeName(TypeOf(p)));
      std::string wire;
      Encode(p, v, &wire);
      CHECK(wire.size() == EncodedSize(p, v));
      Packet back;
      Error e = DecodeWhole(wire, v, &back);
      REQUIRE_MESSAGE(e.ok(), e.rule);
      CHECK(back == p);
    }
  }
}

TEST_CASE("framer accepts any chunking, including one byte at a time") {
  for (Version v : {Version::kV311, Version::kV5}) {
    std::string stream;
    auto samples = Samples(v);
    for (const Packet& p : samples) Encode(p, v, &stream);
    for (size_t chunk : {size_t{1}, size_t{2}, size_t{3}, size_t{7}, size_t{64}, stream.size()}) {
      Framer f(1 << 20);
      std::vector<std::string> frames;
      for (size_t i = 0; i < stream.size(); i += chunk) {
        Error e = f.Feed(std::string_view(stream).substr(i, chunk), [&](uint8_t first, std::string_view body) {
          frames.push_back(std::string(1, static_cast<char>(first)) + std::string(body));
          return true;
        });
        REQUIRE(e.ok());
      }
      REQUIRE(frames.size() == samples.size());
      for (size_t i = 0; i < frames.size(); ++i) {
        Packet back;
        Error e = Decode(static_cast<uint8_t>(frames[i][0]), std::string_view(frames[i]).substr(1), v, &back);
        REQUIRE(e.ok());
        CHECK(back == samples[i]);
      }
    }
  }
}

TEST_CASE("a valid packet truncated at every length fails cleanly") {
  for (Version v : {Version::kV311, Version::kV5}) {
    for (const Packet& p : Samples(v)) {
      std::string wire;
      Encode(p, v, &wire);
      // Truncating the body while keeping a consistent remaining length: the
      // decoder sees a short body and must reject it or decode a valid
      // prefix, never read past the end (ASan checks that).
      for (size_t len = 0; len < wire.size(); ++len) {
        size_t frames = 0;
        Packet out;
        DecodeWhole(wire.substr(0, len), v, &out, &frames);
        CHECK(frames == 0);  // incomplete: nothing delivered
      }
      // Body-level truncation, decoded directly.
      Reader r(wire);
      uint8_t first = 0;
      REQUIRE(r.U8(&first));
      uint32_t len;
      Error e;
      REQUIRE(r.Varint(&len, &e));
      std::string body(r.Rest());
      for (size_t cut = 0; cut < body.size(); ++cut) {
        Packet out;
        Error d = Decode(first, std::string_view(body).substr(0, cut), v, &out);
        if (!d.ok()) {
          CHECK(IsError(d.code));
          continue;
        }
        // A prefix that decodes must be a packet in its own right: the same
        // bytes as its own encoding (a PUBLISH with a shorter payload, a v5
        // ack or DISCONNECT without reason code, a SUBSCRIBE with fewer
        // entries), or a v5 reason code with no properties after it, which
        // the encoder writes only for a non-success code.
        CAPTURE(cut);
        std::string again;
        Encode(out, v, &again);
        Reader rr(again);
        uint8_t first2 = 0;
        uint32_t len2 = 0;
        Error e2;
        REQUIRE(rr.U8(&first2));
        REQUIRE(rr.Varint(&len2, &e2));
        const bool same = first2 == first && rr.Rest() == std::string_view(body).substr(0, cut);
        const PacketType t = TypeOf(out);
        const size_t reason_at = t == PacketType::kDisconnect || t == PacketType::kAuth ? 0 : 2;
        const bool reason_only = v == Version::kV5 && cut == reason_at + 1 &&
                                 (t == PacketType::kPuback || t == PacketType::kPubrec || t == PacketType::kPubrel ||
                                  t == PacketType::kPubcomp || t == PacketType::kDisconnect || t == PacketType::kAuth);
        CHECK_MESSAGE((same || reason_only), PacketTypeName(t));
      }
    }
  }
}

TEST_CASE("conformance vectors: each malformed packet yields its reason and names its rule") {
  auto vectors = test::LoadVectors(FMQ_TEST_DATA_DIR "/malformed.txt");
  REQUIRE(vectors.size() >= 40);
  for (const auto& vec : vectors) {
    CAPTURE(vec.rule);
    Packet out;
    Error e = DecodeWhole(vec.bytes, vec.version, &out);
    CHECK_FALSE(e.ok());
    CHECK(static_cast<int>(e.code) == vec.reason);
    CHECK(std::string(e.rule).find(vec.rule) != std::string::npos);
  }
}

TEST_CASE("framer refuses an oversize packet from its header alone") {
  Framer f(100);
  bool called = false;
  // PUBLISH announcing 200 bytes; only the header is fed.
  std::string hdr = test::Hex("30 c8 01");
  Error e = f.Feed(hdr, [&](uint8_t, std::string_view) { return called = true; });
  CHECK(e.code == ReasonCode::kPacketTooLarge);
  CHECK_FALSE(called);
  CHECK(f.buffered() == 0);
}

TEST_CASE("variable byte integers: boundaries and minimal encoding") {
  for (uint32_t v : {0u, 127u, 128u, 16383u, 16384u, 2097151u, 2097152u, 268435455u}) {
    std::string s;
    Writer w(&s);
    w.Varint(v);
    CHECK(s.size() == static_cast<size_t>(VarintSize(v)));
    Reader r(s);
    uint32_t back;
    Error e;
    REQUIRE(r.Varint(&back, &e));
    CHECK(back == v);
  }
  const std::string non_minimal = test::Hex("80 00");
  Reader r(non_minimal);
  uint32_t x;
  Error e;
  CHECK_FALSE(r.Varint(&x, &e));
  CHECK(std::string(e.rule).find("MQTT-1.5.5-1") != std::string::npos);
}

TEST_CASE("v3.1.1 CONNACK return codes come from one mapping") {
  CHECK(ToV3ConnackCode(ReasonCode::kSuccess) == 0);
  CHECK(ToV3ConnackCode(ReasonCode::kUnsupportedProtocolVersion) == 1);
  CHECK(ToV3ConnackCode(ReasonCode::kClientIdentifierNotValid) == 2);
  CHECK(ToV3ConnackCode(ReasonCode::kServerBusy) == 3);
  CHECK(ToV3ConnackCode(ReasonCode::kBadUserNameOrPassword) == 4);
  CHECK(ToV3ConnackCode(ReasonCode::kNotAuthorized) == 5);
}

}  // namespace
}  // namespace fmq::mqtt

// The protocol engine driven by bytes and a fake clock: QoS flows, sessions,
// wills, expiry, keep alive, takeover, flow control, aliases, retained,
// shared subscriptions and bad input. No sockets.
#include "broker/core/broker.h"

#include <doctest/doctest.h>

#include "tests/unit/test_util.h"

namespace fmq {
namespace {

using mqtt::Connect;
using mqtt::Packet;
using mqtt::PacketType;
using mqtt::PropertyId;
using mqtt::ReasonCode;
using mqtt::Version;
using test::Client;
using test::Only;
using test::Pub;

constexpr Version V5 = Version::kV5;
constexpr Version V3 = Version::kV311;

struct Fixture {
  explicit Fixture(BrokerOptions o = {}) : broker(Options(o), &clock, nullptr) {}
  static BrokerOptions Options(BrokerOptions o) {
    o.sys_interval_s = o.sys_interval_s == 10 ? 0 : o.sys_interval_s;
    return o;
  }
  std::unique_ptr<Client> NewClient(Version v) { return std::make_unique<Client>(broker, v, next_id++); }
  void Advance(int64_t ms) {
    // Tick in 250 ms steps as the worker does.
    for (int64_t t = 0; t < ms; t += 250) {
      clock.Advance(std::min<int64_t>(250, ms - t));
      broker.Tick();
    }
  }
  FakeClock clock;
  Broker broker;
  uint64_t next_id = 1;
};

mqtt::Subscribe Sub(std::string filter, uint8_t options, uint16_t id = 1, uint32_t sub_id = 0) {
  mqtt::Subscribe s;
  s.packet_id = id;
  s.entries.push_back({std::move(filter), options});
  if (sub_id) {
    s.props.subscription_ids = {sub_id};
    s.props.Mark(PropertyId::kSubscriptionIdentifier);
  }
  return s;
}

mqtt::Ack AckOf(PacketType t, uint16_t id) {
  mqtt::Ack a;
  a.type = t;
  a.packet_id = id;
  return a;
}

// Subscribes and consumes the SUBACK.
void Subscribe(Client& c, const std::string& filter, uint8_t options, uint32_t sub_id = 0) {
  c.Send(Sub(filter, options, 1, sub_id));
  auto acks = Only<mqtt::SubAck>(c.Recv());
  REQUIRE(acks.size() == 1);
  REQUIRE(!mqtt::IsError(acks[0].codes[0]));
}

TEST_CASE("CONNECT v5: assigned client id and the limits we announce") {
  Fixture f;
  auto c = f.NewClient(V5);
  auto ack = c->Connect("");
  CHECK(ack.reason == ReasonCode::kSuccess);
  CHECK_FALSE(ack.session_present);
  CHECK(ack.props.Has(PropertyId::kAssignedClientIdentifier));
  CHECK(ack.props.assigned_client_id.rfind("fmq-", 0) == 0);
  CHECK(ack.props.receive_maximum == 100);
  CHECK(ack.props.maximum_packet_size == 1u << 20);
  CHECK(ack.props.topic_alias_maximum == 64);
  CHECK(f.broker.stats().clients_connected == 1);
}

TEST_CASE("CONNECT v3.1.1: empty client id needs clean session [MQTT-3.1.3-8]") {
  Fixture f;
  auto c = f.NewClient(V3);
  auto ack = c->Connect("", false);
  CHECK(ack.reason == ReasonCode::kClientIdentifierNotValid);
  CHECK(c->transport.closed);
  CHECK(f.broker.stats().connects_refused == 1);
}

TEST_CASE("unsupported protocol level gets a 3.1.1 CONNACK with code 1") {
  Fixture f;
  auto c = f.NewClient(V3);
  c->SendRaw(test::Hex("10 0d 00 04 4d 51 54 54 03 02 00 3c 00 01 61"));
  CHECK(c->conn.TakeOutput() == test::Hex("20 02 00 01"));
  CHECK(c->transport.closed);
}

TEST_CASE("first packet must be CONNECT [MQTT-3.1.0-1]; a second CONNECT is a protocol error") {
  Fixture f;
  auto c = f.NewClient(V5);
  c->Send(mqtt::Pingreq{});
  CHECK(c->transport.closed);
  CHECK(c->conn.TakeOutput().empty());
  auto d = f.NewClient(V5);
  d->Connect("d");
  mqtt::Connect again;
  again.client_id = "d";
  d->Send(again);
  auto pk = Only<mqtt::Disconnect>(d->Recv());
  REQUIRE(pk.size() == 1);
  CHECK(pk[0].reason == ReasonCode::kProtocolError);
  CHECK(f.broker.stats().protocol_errors == 2);
  // The first byte alone decides: an HTTP request is not waited on for the
  // frame its second byte would announce (' ' = 32 bytes).
  auto h = f.NewClient(V5);
  h->SendRaw("G");
  CHECK(h->transport.closed);
  CHECK(h->conn.TakeOutput().empty());
  CHECK(f.broker.stats().protocol_errors == 3);
}

TEST_CASE("QoS 0, 1 and 2 delivery with full acknowledgement flows") {
  for (Version v : {V3, V5}) {
    Fixture f;
    auto sub = f.NewClient(v);
    auto pub = f.NewClient(v);
    sub->Connect("sub");
    pub->Connect("pub");
    Subscribe(*sub, "t/#", 2);

    pub->Send(Pub("t/0", "zero", 0));
    pub->Send(Pub("t/1", "one", 1, 11));
    pub->Send(Pub("t/2", "two", 2, 12));
    auto acks = Only<mqtt::Ack>(pub->Recv());
    REQUIRE(acks.size() == 2);
    CHECK(acks[0].type == PacketType::kPuback);
    CHECK(acks[0].packet_id == 11);
    CHECK(acks[1].type == PacketType::kPubrec);
    pub->Send(AckOf(PacketType::kPubrel, 12));
    acks = Only<mqtt::Ack>(pub->Recv());
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].type == PacketType::kPubcomp);
    CHECK(acks[0].reason == ReasonCode::kSuccess);

    auto got = Only<mqtt::Publish>(sub->Recv());
    REQUIRE(got.size() == 3);
    CHECK(got[0].qos == 0);
    CHECK(got[0].payload == "zero");
    CHECK(got[1].qos == 1);
    CHECK(got[2].qos == 2);
    sub->Send(AckOf(PacketType::kPuback, got[1].packet_id));
    sub->Send(AckOf(PacketType::kPubrec, got[2].packet_id));
    acks = Only<mqtt::Ack>(sub->Recv());
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].type == PacketType::kPubrel);
    sub->Send(AckOf(PacketType::kPubcomp, got[2].packet_id));
    CHECK(f.broker.FindSession("", "sub")->inflight.empty());
  }
}

TEST_CASE("a retransmitted QoS 2 PUBLISH is not delivered twice [MQTT-4.3.3]") {
  Fixture f;
  auto sub = f.NewClient(V5);
  auto pub = f.NewClient(V5);
  sub->Connect("sub");
  pub->Connect("pub");
  Subscribe(*sub, "t", 2);
  pub->Send(Pub("t", "x", 2, 5));
  auto dup = Pub("t", "x", 2, 5);
  dup.dup = true;
  pub->Send(dup);
  CHECK(Only<mqtt::Ack>(pub->Recv()).size() == 2);  // two PUBRECs
  CHECK(Only<mqtt::Publish>(sub->Recv()).size() == 1);
  pub->Send(AckOf(PacketType::kPubrel, 5));
  pub->Send(AckOf(PacketType::kPubrel, 5));  // unknown now: 0x92
  auto comps = Only<mqtt::Ack>(pub->Recv());
  REQUIRE(comps.size() == 2);
  CHECK(comps[1].reason == ReasonCode::kPacketIdentifierNotFound);
}

TEST_CASE("keep alive is enforced at 1.5x; the will is published [MQTT-3.1.2-22]") {
  Fixture f;
  auto watcher = f.NewClient(V5);
  watcher->Connect("w", true, 0);
  Subscribe(*watcher, "wills/#", 1);
  auto c = f.NewClient(V5);
  Connect ck;
  ck.client_id = "dev";
  ck.keep_alive = 10;
  ck.will = mqtt::Will{"wills/dev", "gone", 1, false, {}};
  c->Connect(ck);
  f.Advance(9000);
  c->Send(mqtt::Pingreq{});
  CHECK(Only<mqtt::Pingresp>(c->Recv()).size() == 1);
  f.Advance(14'500);  // 14.5 s after the last packet
  CHECK_FALSE(c->transport.closed);
  f.Advance(1'000);
  CHECK(c->transport.closed);
  auto d = Only<mqtt::Disconnect>(c->Recv());
  REQUIRE(d.size() == 1);
  CHECK(d[0].reason == ReasonCode::kKeepAliveTimeout);
  CHECK(f.broker.stats().keepalive_timeouts == 1);
  auto w = Only<mqtt::Publish>(watcher->Recv());
  REQUIRE(w.size() == 1);
  CHECK(w[0].payload == "gone");
}

TEST_CASE("a connection that never sends CONNECT is closed at connect_timeout") {
  BrokerOptions o;
  o.connect_timeout_ms = 2000;
  Fixture f(o);
  auto c = f.NewClient(V5);
  f.Advance(1500);
  CHECK_FALSE(c->transport.closed);
  f.Advance(1000);
  CHECK(c->transport.closed);
  CHECK(f.broker.stats().connect_timeouts == 1);
}

TEST_CASE("wills: published on connection loss and on DISCONNECT 0x04, not on a normal DISCONNECT") {
  Fixture f;
  auto watcher = f.NewClient(V5);
  watcher->Connect("w");
  Subscribe(*watcher, "wills/#", 0);
  auto connect_with_will = [&](Client& c) {
    Connect ck;
    ck.client_id = "dev";
    ck.will = mqtt::Will{"wills/dev", "gone", 0, false, {}};
    c.Connect(ck);
  };
  {
    auto c = f.NewClient(V5);
    connect_with_will(*c);
    c->Send(mqtt::Disconnect{});
  }
  CHECK(Only<mqtt::Publish>(watcher->Recv()).empty());
  {
    auto c = f.NewClient(V5);
    connect_with_will(*c);
    mqtt::Disconnect d;
    d.reason = ReasonCode::kDisconnectWithWill;
    c->Send(d);
  }
  CHECK(Only<mqtt::Publish>(watcher->Recv()).size() == 1);
  {
    auto c = f.NewClient(V5);
    connect_with_will(*c);
  }  // the destructor reports the transport closed
  CHECK(Only<mqtt::Publish>(watcher->Recv()).size() == 1);
  CHECK(f.broker.stats().wills_published == 2);
}

TEST_CASE("will delay: published after the delay, cancelled by a reconnect [MQTT-3.1.3-9]") {
  Fixture f;
  auto watcher = f.NewClient(V5);
  watcher->Connect("w");
  Subscribe(*watcher, "wills/#", 0);
  Connect ck;
  ck.client_id = "dev";
  ck.clean_start = false;
  ck.props.session_expiry = 100;
  ck.props.Mark(PropertyId::kSessionExpiryInterval);
  mqtt::Will will{"wills/dev", "gone", 0, false, {}};
  will.props.will_delay = 5;
  will.props.Mark(PropertyId::kWillDelayInterval);
  ck.will = will;
  {
    auto c = f.NewClient(V5);
    c->Connect(ck);
  }
  f.Advance(4000);
  CHECK(Only<mqtt::Publish>(watcher->Recv()).empty());
  f.Advance(1500);
  CHECK(Only<mqtt::Publish>(watcher->Recv()).size() == 1);

  {
    auto c = f.NewClient(V5);
    c->Connect(ck);
  }
  f.Advance(3000);
  auto again = f.NewClient(V5);
  CHECK(again->Connect(ck).session_present);
  f.Advance(10'000);
  CHECK(Only<mqtt::Publish>(watcher->Recv()).empty());
}

TEST_CASE("session expiry removes an offline session; 3.1.1 persistent sessions stay") {
  Fixture f;
  Connect ck;
  ck.client_id = "v5";
  ck.clean_start = false;
  ck.props.session_expiry = 10;
  ck.props.Mark(PropertyId::kSessionExpiryInterval);
  {
    auto c = f.NewClient(V5);
    c->Connect(ck);
    Subscribe(*c, "x", 1);
  }
  {
    auto c = f.NewClient(V3);
    c->Connect("v3", false);
    Subscribe(*c, "x", 1);
  }
  CHECK(f.broker.session_count() == 2);
  f.Advance(9000);
  CHECK(f.broker.FindSession("", "v5") != nullptr);
  f.Advance(1500);
  CHECK(f.broker.FindSession("", "v5") == nullptr);
  CHECK(f.broker.FindSession("", "v3") != nullptr);
  CHECK(f.broker.stats().sessions_expired == 1);
  CHECK(f.broker.stats().subscriptions == 1);
}

TEST_CASE("DISCONNECT may not turn a session expiry of 0 into non-zero [MQTT-3.14.2-2]") {
  Fixture f;
  auto c = f.NewClient(V5);
  c->Connect("a");
  mqtt::Disconnect d;
  d.props.session_expiry = 60;
  d.props.Mark(PropertyId::kSessionExpiryInterval);
  c->Send(d);
  auto dis = Only<mqtt::Disconnect>(c->Recv());
  REQUIRE(dis.size() == 1);
  CHECK(dis[0].reason == ReasonCode::kProtocolError);
}

TEST_CASE("persistent session: queued messages arrive in order on resume") {
  for (Version v : {V3, V5}) {
    Fixture f;
    Connect ck;
    ck.client_id = "sub";
    ck.clean_start = false;
    if (v == V5) {
      ck.props.session_expiry = 0xFFFFFFFF;
      ck.props.Mark(PropertyId::kSessionExpiryInterval);
    }
    {
      auto s = f.NewClient(v);
      CHECK_FALSE(s->Connect(ck).session_present);
      Subscribe(*s, "q/#", 1);
    }
    auto pub = f.NewClient(v);
    pub->Connect("pub");
    for (int i = 0; i < 5; ++i) pub->Send(Pub("q/x", std::to_string(i), 1, static_cast<uint16_t>(i + 1)));
    pub->Send(Pub("q/x", "qos0-dropped", 0));
    CHECK(f.broker.stats().queued_messages == 5);
    auto s = f.NewClient(v);
    CHECK(s->Connect(ck).session_present);
    auto got = Only<mqtt::Publish>(s->Recv());
    REQUIRE(got.size() == 5);
    for (int i = 0; i < 5; ++i) CHECK(got[i].payload == std::to_string(i));
    CHECK(f.broker.stats().queued_messages == 0);
  }
}

TEST_CASE("unacknowledged messages are resent with DUP on reconnect [MQTT-4.4.0-1]") {
  Fixture f;
  Connect ck;
  ck.client_id = "sub";
  ck.clean_start = false;
  ck.props.session_expiry = 300;
  ck.props.Mark(PropertyId::kSessionExpiryInterval);
  auto pub = f.NewClient(V5);
  pub->Connect("pub");
  uint16_t first_id;
  {
    auto s = f.NewClient(V5);
    s->Connect(ck);
    Subscribe(*s, "r", 2);
    pub->Send(Pub("r", "one", 1, 1));
    pub->Send(Pub("r", "two", 2, 2));
    auto got = Only<mqtt::Publish>(s->Recv());
    REQUIRE(got.size() == 2);
    first_id = got[0].packet_id;
    s->Send(AckOf(PacketType::kPubrec, got[1].packet_id));  // QoS 2 half done
  }
  auto s = f.NewClient(V5);
  CHECK(s->Connect(ck).session_present);
  auto pk = s->Recv();
  auto pubs = Only<mqtt::Publish>(pk);
  auto rels = Only<mqtt::Ack>(pk);
  REQUIRE(pubs.size() == 1);
  CHECK(pubs[0].dup);
  CHECK(pubs[0].packet_id == first_id);
  REQUIRE(rels.size() == 1);
  CHECK(rels[0].type == PacketType::kPubrel);
}

TEST_CASE("message expiry: expired messages are not delivered; the remaining time is sent") {
  Fixture f;
  Connect ck;
  ck.client_id = "sub";
  ck.clean_start = false;
  ck.props.session_expiry = 300;
  ck.props.Mark(PropertyId::kSessionExpiryInterval);
  {
    auto s = f.NewClient(V5);
    s->Connect(ck);
    Subscribe(*s, "e", 1);
  }
  auto pub = f.NewClient(V5);
  pub->Connect("pub");
  auto short_lived = Pub("e", "short", 1, 1);
  short_lived.props.message_expiry = 2;
  short_lived.props.Mark(PropertyId::kMessageExpiryInterval);
  auto long_lived = Pub("e", "long", 1, 2);
  long_lived.props.message_expiry = 10;
  long_lived.props.Mark(PropertyId::kMessageExpiryInterval);
  pub->Send(short_lived);
  pub->Send(long_lived);
  f.Advance(4000);
  auto s = f.NewClient(V5);
  s->Connect(ck);
  auto got = Only<mqtt::Publish>(s->Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].payload == "long");
  CHECK(got[0].props.message_expiry == 6);  // [MQTT-3.3.2-6]
  CHECK(f.broker.stats().publish_expired == 1);
}

TEST_CASE("takeover: the old connection gets DISCONNECT 0x8E and the session moves") {
  Fixture f;
  auto a = f.NewClient(V5);
  Connect ck;
  ck.client_id = "same";
  ck.clean_start = false;
  ck.props.session_expiry = 60;
  ck.props.Mark(PropertyId::kSessionExpiryInterval);
  a->Connect(ck);
  Subscribe(*a, "t", 1);
  auto b = f.NewClient(V5);
  CHECK(b->Connect(ck).session_present);
  auto d = Only<mqtt::Disconnect>(a->Recv());
  REQUIRE(d.size() == 1);
  CHECK(d[0].reason == ReasonCode::kSessionTakenOver);
  CHECK(a->transport.closed);
  CHECK(f.broker.stats().takeovers == 1);
  CHECK(f.broker.stats().clients_connected == 1);
  auto pub = f.NewClient(V5);
  pub->Connect("p");
  pub->Send(Pub("t", "to-b", 0));
  CHECK(Only<mqtt::Publish>(b->Recv()).size() == 1);
  CHECK(Only<mqtt::Publish>(a->Recv()).empty());
}

TEST_CASE("receive maximum: a client exceeding ours is disconnected with 0x93") {
  BrokerOptions o;
  o.receive_maximum = 2;
  Fixture f(o);
  auto c = f.NewClient(V5);
  c->Connect("c");
  c->Send(Pub("t", "1", 2, 1));
  c->Send(Pub("t", "2", 2, 2));
  c->Send(Pub("t", "3", 2, 3));
  auto d = Only<mqtt::Disconnect>(c->Recv());
  REQUIRE(d.size() == 1);
  CHECK(d[0].reason == ReasonCode::kReceiveMaximumExceeded);
}

TEST_CASE("receive maximum: we never exceed the client's") {
  Fixture f;
  auto sub = f.NewClient(V5);
  Connect ck;
  ck.client_id = "sub";
  ck.props.receive_maximum = 2;
  ck.props.Mark(PropertyId::kReceiveMaximum);
  sub->Connect(ck);
  Subscribe(*sub, "t", 1);
  auto pub = f.NewClient(V5);
  pub->Connect("pub");
  for (uint16_t i = 1; i <= 5; ++i) pub->Send(Pub("t", std::to_string(i), 1, i));
  auto got = Only<mqtt::Publish>(sub->Recv());
  REQUIRE(got.size() == 2);
  sub->Send(AckOf(PacketType::kPuback, got[0].packet_id));
  got = Only<mqtt::Publish>(sub->Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].payload == "3");
}

TEST_CASE("topic aliases from the client: set, use, and the errors") {
  Fixture f;
  auto sub = f.NewClient(V5);
  sub->Connect("sub");
  Subscribe(*sub, "long/topic/name", 0);
  auto c = f.NewClient(V5);
  c->Connect("c");
  auto p1 = Pub("long/topic/name", "a", 0);
  p1.props.topic_alias = 3;
  p1.props.Mark(PropertyId::kTopicAlias);
  c->Send(p1);
  auto p2 = Pub("", "b", 0);
  p2.props = p1.props;
  c->Send(p2);
  auto got = Only<mqtt::Publish>(sub->Recv());
  REQUIRE(got.size() == 2);
  CHECK(got[1].topic == "long/topic/name");
  CHECK(got[1].payload == "b");

  auto bad = Pub("", "x", 0);
  bad.props.topic_alias = 4;  // never set
  bad.props.Mark(PropertyId::kTopicAlias);
  c->Send(bad);
  auto d = Only<mqtt::Disconnect>(c->Recv());
  REQUIRE(d.size() == 1);
  CHECK(d[0].reason == ReasonCode::kProtocolError);

  auto c2 = f.NewClient(V5);
  c2->Connect("c2");
  auto over = Pub("t", "x", 0);
  over.props.topic_alias = 65;  // above our maximum of 64
  over.props.Mark(PropertyId::kTopicAlias);
  c2->Send(over);
  d = Only<mqtt::Disconnect>(c2->Recv());
  REQUIRE(d.size() == 1);
  CHECK(d[0].reason == ReasonCode::kTopicAliasInvalid);
}

TEST_CASE("topic aliases towards the client, within its Topic Alias Maximum") {
  Fixture f;
  auto sub = f.NewClient(V5);
  Connect ck;
  ck.client_id = "sub";
  ck.props.topic_alias_maximum = 1;
  ck.props.Mark(PropertyId::kTopicAliasMaximum);
  sub->Connect(ck);
  Subscribe(*sub, "#", 0);
  auto pub = f.NewClient(V5);
  pub->Connect("pub");
  pub->Send(Pub("a/b", "1", 0));
  pub->Send(Pub("a/b", "2", 0));
  pub->Send(Pub("c", "3", 0));
  auto got = Only<mqtt::Publish>(sub->Recv());
  REQUIRE(got.size() == 3);
  CHECK(got[0].topic == "a/b");
  CHECK(got[0].props.topic_alias == 1);
  CHECK(got[1].topic.empty());
  CHECK(got[1].props.topic_alias == 1);
  CHECK(got[2].topic == "c");  // no alias left
  CHECK_FALSE(got[2].props.Has(PropertyId::kTopicAlias));
}

TEST_CASE("maximum packet size in both directions") {
  BrokerOptions o;
  o.max_packet_size = 200;
  Fixture f(o);
  auto sub = f.NewClient(V5);
  Connect ck;
  ck.client_id = "sub";
  ck.props.maximum_packet_size = 40;
  ck.props.Mark(PropertyId::kMaximumPacketSize);
  sub->Connect(ck);
  Subscribe(*sub, "t", 1);
  auto pub = f.NewClient(V5);
  pub->Connect("pub");
  pub->Send(Pub("t", std::string(100, 'x'), 1, 1));
  pub->Send(Pub("t", "small", 1, 2));
  auto got = Only<mqtt::Publish>(sub->Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].payload == "small");
  CHECK(f.broker.stats().publish_dropped_too_large == 1);
  pub->Send(Pub("t", std::string(300, 'x'), 0));
  auto d = Only<mqtt::Disconnect>(pub->Recv());
  REQUIRE(d.size() == 1);
  CHECK(d[0].reason == ReasonCode::kPacketTooLarge);
}

TEST_CASE("retained messages: set, clear, retain handling and retain as published") {
  Fixture f;
  auto pub = f.NewClient(V5);
  pub->Connect("pub");
  pub->Send(Pub("r/1", "one", 1, 1, true));
  pub->Send(Pub("r/2", "two", 0, 0, true));
  CHECK(f.broker.retained_count() == 2);
  auto s = f.NewClient(V5);
  s->Connect("s");
  s->Send(Sub("r/+", 1));
  auto pk = s->Recv();
  REQUIRE(std::holds_alternative<mqtt::SubAck>(pk[0]));  // SUBACK first
  auto got = Only<mqtt::Publish>(pk);
  REQUIRE(got.size() == 2);
  CHECK(got[0].retain);
  // Retain handling 1: only for a new subscription.
  s->Send(Sub("r/+", 1 | (1 << 4)));
  CHECK(Only<mqtt::Publish>(s->Recv()).empty());
  // Retain handling 2: never.
  s->Send(Sub("r/#", 1 | (2 << 4)));
  CHECK(Only<mqtt::Publish>(s->Recv()).empty());
  // Live messages: retain flag cleared unless Retain As Published.
  pub->Send(Pub("r/1", "again", 0, 0, true));
  got = Only<mqtt::Publish>(s->Recv());
  REQUIRE(got.size() == 1);
  CHECK_FALSE(got[0].retain);
  auto rap = f.NewClient(V5);
  rap->Connect("rap");
  Subscribe(*rap, "z", 0 | mqtt::kSubOptRetainAsPublished);
  pub->Send(Pub("z", "keep", 0, 0, true));
  got = Only<mqtt::Publish>(rap->Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].retain);
  // An empty retained payload clears the topic [MQTT-3.3.1-6].
  pub->Send(Pub("r/1", "", 0, 0, true));
  pub->Send(Pub("r/2", "", 0, 0, true));
  pub->Send(Pub("z", "", 0, 0, true));
  CHECK(f.broker.retained_count() == 0);
}

TEST_CASE("'$' topics: not matched by first-level wildcards, not publishable by clients") {
  BrokerOptions o;
  o.sys_interval_s = 1;
  Fixture f(o);
  auto all = f.NewClient(V5);
  all->Connect("all");
  Subscribe(*all, "#", 0);
  auto sys = f.NewClient(V5);
  sys->Connect("sys");
  Subscribe(*sys, "$SYS/broker/clients/+", 0);
  f.Advance(1000);
  CHECK(Only<mqtt::Publish>(all->Recv()).empty());
  auto got = Only<mqtt::Publish>(sys->Recv());
  CHECK(got.size() >= 4);
  auto p = f.NewClient(V5);
  p->Connect("p");
  p->Send(Pub("$SYS/broker/uptime", "fake", 1, 1));
  auto acks = Only<mqtt::Ack>(p->Recv());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].reason == ReasonCode::kNotAuthorized);
  CHECK(f.broker.stats().publish_denied == 1);
}

TEST_CASE("shared subscriptions: each message to one member, round robin, no retained") {
  Fixture f;
  auto pub = f.NewClient(V5);
  pub->Connect("pub");
  pub->Send(Pub("jobs/x", "retained", 0, 0, true));
  auto a = f.NewClient(V5);
  auto b = f.NewClient(V5);
  a->Connect("a");
  b->Connect("b");
  Subscribe(*a, "$share/workers/jobs/+", 1);
  Subscribe(*b, "$share/workers/jobs/+", 1);
  CHECK(Only<mqtt::Publish>(a->Recv()).empty());
  for (uint16_t i = 1; i <= 4; ++i) pub->Send(Pub("jobs/x", std::to_string(i), 0));
  CHECK(Only<mqtt::Publish>(a->Recv()).size() == 2);
  CHECK(Only<mqtt::Publish>(b->Recv()).size() == 2);
  // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
  a->Send(Sub("$share/w/x", 1 | mqtt::kSubOptNoLocal));
  CHECK(a->transport.closed);
}

TEST_CASE("no local, subscription identifiers and overlapping subscriptions") {
  Fixture f;
  auto c = f.NewClient(V5);
  c->Connect("c");
  Subscribe(*c, "self/#", 1 | mqtt::kSubOptNoLocal);
  c->Send(Pub("self/x", "mine", 0));
  CHECK(Only<mqtt::Publish>(c->Recv()).empty());

  auto s = f.NewClient(V5);
  s->Connect("s");
  Subscribe(*s, "o/+", 0, 7);
  Subscribe(*s, "o/#", 2, 9);
  c->Send(Pub("o/x", "both", 2, 1));
  auto got = Only<mqtt::Publish>(s->Recv());
  REQUIRE(got.size() == 1);  // one copy [MQTT-3.3.4-2]
  CHECK(got[0].qos == 2);    // the highest granted QoS
  auto ids = got[0].props.subscription_ids;
  std::sort(ids.begin(), ids.end());
  CHECK(ids == std::vector<uint32_t>{7, 9});
}

TEST_CASE("request/response and user properties pass through unchanged") {
  Fixture f;
  auto s = f.NewClient(V5);
  s->Connect("s");
  Subscribe(*s, "req", 0);
  auto c = f.NewClient(V5);
  c->Connect("c");
  auto p = Pub("req", "{}", 0);
  p.props.response_topic = "resp/c";
  p.props.Mark(PropertyId::kResponseTopic);
  p.props.correlation_data = "corr";
  p.props.Mark(PropertyId::kCorrelationData);
  p.props.content_type = "application/json";
  p.props.Mark(PropertyId::kContentType);
  p.props.payload_format = 1;
  p.props.Mark(PropertyId::kPayloadFormatIndicator);
  p.props.user_properties = {{"a", "1"}, {"a", "2"}};
  p.props.Mark(PropertyId::kUserProperty);
  c->Send(p);
  auto got = Only<mqtt::Publish>(s->Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].props == p.props);
}

TEST_CASE("queue bound: messages over max_queued_messages are dropped, counted per client, shown in $SYS") {
  BrokerOptions o;
  o.max_queued_messages = 2;
  o.sys_interval_s = 1;
  Fixture f(o);
  {
    auto s = f.NewClient(V3);
    s->Connect("slow", false);
    Subscribe(*s, "q", 1);
  }
  auto mon = f.NewClient(V5);
  mon->Connect("mon");
  Subscribe(*mon, "$SYS/broker/clients/slow/dropped", 0);
  auto pub = f.NewClient(V5);
  pub->Connect("pub");
  for (uint16_t i = 1; i <= 5; ++i) pub->Send(Pub("q", std::to_string(i), 1, i));
  CHECK(f.broker.FindSession("", "slow")->dropped == 3);
  CHECK(f.broker.stats().publish_dropped_queue_full == 3);
  f.Advance(1000);
  auto got = Only<mqtt::Publish>(mon->Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].payload == "3");
  auto s = f.NewClient(V3);
  s->Connect("slow", false);
  got = Only<mqtt::Publish>(s->Recv());
  REQUIRE(got.size() == 2);
  CHECK(got[0].payload == "1");
  CHECK(got[1].payload == "2");
}

TEST_CASE("server keep alive caps v5 clients and refuses 3.1.1 clients above it") {
  BrokerOptions o;
  o.max_keepalive = 30;
  o.server_keepalive = 0;  // max_keepalive alone
  Fixture f(o);
  auto c = f.NewClient(V5);
  auto ack = c->Connect("c", true, 60);
  CHECK(ack.reason == ReasonCode::kSuccess);
  CHECK(ack.props.Has(PropertyId::kServerKeepAlive));
  CHECK(ack.props.server_keep_alive == 30);
  f.Advance(46'000);
  CHECK(c->transport.closed);  // enforced at 1.5 x 30 s
  auto z = f.NewClient(V5);
  CHECK(z->Connect("z", true, 0).props.server_keep_alive == 30);
  auto old = f.NewClient(V3);
  CHECK(old->Connect("old", true, 60).reason == ReasonCode::kClientIdentifierNotValid);
}

TEST_CASE("invalid filters get SUBACK failures; UNSUBSCRIBE reports unknown filters") {
  Fixture f;
  auto c5 = f.NewClient(V5);
  c5->Connect("c5");
  c5->Send(Sub("a/#/b", 1));
  auto acks = Only<mqtt::SubAck>(c5->Recv());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].codes[0] == ReasonCode::kTopicFilterInvalid);
  auto c3 = f.NewClient(V3);
  c3->Connect("c3");
  c3->Send(Sub("a+", 1));
  c3->Send(Sub("ok/+", 1));
  acks = Only<mqtt::SubAck>(c3->Recv());
  REQUIRE(acks.size() == 2);
  CHECK(static_cast<int>(acks[0].codes[0]) == 0x80);
  CHECK(static_cast<int>(acks[1].codes[0]) == 1);
  mqtt::Unsubscribe u;
  u.packet_id = 3;
  u.filters = {"ok/+", "never"};
  c5->Send(u);
  acks = Only<mqtt::SubAck>(c5->Recv());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].codes ==
        std::vector<ReasonCode>{ReasonCode::kNoSubscriptionExisted, ReasonCode::kNoSubscriptionExisted});
  c3->Send(u);
  auto pub = f.NewClient(V5);
  pub->Connect("p");
  pub->Send(Pub("ok/x", "gone", 0));
  CHECK(Only<mqtt::Publish>(c3->Recv()).empty());
  CHECK(f.broker.stats().subscriptions == 0);
}

TEST_CASE("payload format indicator 1 with invalid UTF-8 gets PUBACK 0x99") {
  Fixture f;
  auto c = f.NewClient(V5);
  c->Connect("c");
  auto p = Pub("t", "\xff\xfe", 1, 1);
  p.props.payload_format = 1;
  p.props.Mark(PropertyId::kPayloadFormatIndicator);
  c->Send(p);
  auto acks = Only<mqtt::Ack>(c->Recv());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].reason == ReasonCode::kPayloadFormatInvalid);
}

struct DenyHooks : BrokerHooks {
  mqtt::ReasonCode Authenticate(const mqtt::Connect& c, const ClientInfo&) override {
    return c.username && *c.username == "bad" ? ReasonCode::kNotAuthorized : ReasonCode::kSuccess;
  }
  mqtt::ReasonCode OnControlPublish(const ClientInfo& who, const Message& m) override {
    control.push_back(std::string(who.client_id) + ":" + m.payload);
    return ReasonCode::kSuccess;
  }
  void OnConnected(const ClientInfo& c) override { events.push_back("up:" + std::string(c.client_id)); }
  void OnDisconnected(const ClientInfo& c, DisconnectReason r) override {
    events.push_back("down:" + std::string(c.client_id) + ":" + std::string(DisconnectReasonName(r)));
  }
  std::vector<std::string> control, events;
};

TEST_CASE("hooks: authentication, connect/disconnect events with reasons, control publishes") {
  FakeClock clock;
  DenyHooks hooks;
  Broker b({}, &clock, &hooks);
  Client bad(b, V3, 1);
  Connect ck;
  ck.client_id = "x";
  ck.username = "bad";
  CHECK(bad.Connect(ck).reason == ReasonCode::kNotAuthorized);
  {
    Client good(b, V5, 2);
    good.Connect("good");
    good.Send(Pub("$SYS/fleetmq/control/v1", "{\"cmd\":1}", 1, 1));
    auto acks = Only<mqtt::Ack>(good.Recv());
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].reason == ReasonCode::kSuccess);
  }
  CHECK(hooks.control == std::vector<std::string>{"good:{\"cmd\":1}"});
  CHECK(hooks.events == std::vector<std::string>{"up:good", "down:good:connection_lost"});
}

struct LinkHooks : BrokerHooks {
  void OnLinkCounters(const ClientInfo& c) override { reports.push_back(*c.counters); }
  void OnDisconnected(const ClientInfo& c, DisconnectReason r) override {
    last = *c.counters;
    reason = r;
    error = std::string(c.error);
  }
  std::vector<LinkCounters> reports;
  LinkCounters last;
  DisconnectReason reason = DisconnectReason::kClean;
  std::string error;
};

TEST_CASE("hooks: a connection's counters are reported at most every link_stats_interval_ms, the rest at close") {
  FakeClock clock;
  LinkHooks hooks;
  BrokerOptions o;
  o.link_stats_interval_ms = 1000;
  Broker b(o, &clock, &hooks);
  Client c(b, V5, 1);
  c.Connect("dev");
  c.Send(Pub("t", "12345", 1, 1));
  c.Send(Pub("$private", "x", 1, 2));  // denied: clients may not publish under '$'
  (void)c.Recv();
  CHECK(hooks.reports.empty());  // not due yet
  clock.Advance(1000);
  c.Send(Pub("t", "again", 0));
  REQUIRE(hooks.reports.size() == 1);
  const LinkCounters& r = hooks.reports[0];
  CHECK(r.packets_in == 4);  // CONNECT, 3 PUBLISH: the one that made it due counts
  CHECK(r.publish_in == 3);
  CHECK(r.denied == 1);
  CHECK(r.packets_out == 3);  // CONNACK, 2 PUBACK
  CHECK(r.bytes_in > 20);
  CHECK(r.bytes_out > 10);
  c.Send(Pub("t", "more", 0));
  c.SendRaw(std::string("\xf0\x00", 2));  // reserved packet type 15
  CHECK(c.transport.closed);
  CHECK(hooks.reason == DisconnectReason::kProtocolError);
  CHECK(!hooks.error.empty());
  CHECK(hooks.last.publish_in == 1);   // only what came after the report
  CHECK(hooks.last.packets_out == 1);  // the DISCONNECT with its reason
  CHECK(hooks.reports.size() == 1);
}

TEST_CASE("bad input: every conformance vector closes only its own connection, counted") {
  Fixture f;
  auto sub = f.NewClient(V5);
  sub->Connect("bystander-sub");
  Subscribe(*sub, "alive", 0);
  auto pub = f.NewClient(V3);
  pub->Connect("bystander-pub");
  auto vectors = test::LoadVectors(FMQ_TEST_DATA_DIR "/malformed.txt");
  uint64_t errors_before = f.broker.stats().protocol_errors + f.broker.stats().connects_refused;
  size_t n = 0;
  for (const auto& vec : vectors) {
    CAPTURE(vec.rule);
    auto c = f.NewClient(vec.version);
    const bool is_connect = static_cast<uint8_t>(vec.bytes[0]) >> 4 == 1;
    if (!is_connect) c->Connect("bad-" + std::to_string(n));
    c->SendRaw(vec.bytes);
    CHECK(c->transport.closed);
    ++n;
    pub->Send(Pub("alive", std::to_string(n), 0));
    auto got = Only<mqtt::Publish>(sub->Recv());
    REQUIRE(got.size() == 1);
    CHECK(got[0].payload == std::to_string(n));
  }
  CHECK(f.broker.stats().protocol_errors + f.broker.stats().connects_refused == errors_before + n);
  CHECK(f.broker.stats().clients_connected == 2);
}

TEST_CASE("slow reader: QoS 0 is dropped past max_output_buffer, QoS 1 waits in the queue") {
  BrokerOptions o;
  o.max_output_buffer = 4096;
  Fixture f(o);
  auto s = f.NewClient(V5);
  s->Connect("slow");
  Subscribe(*s, "t", 1);
  s->transport.backlog = 10'000;  // the socket is not draining
  auto pub = f.NewClient(V5);
  pub->Connect("pub");
  pub->Send(Pub("t", "q0", 0));
  CHECK(f.broker.stats().publish_dropped_qos0 == 1);
  pub->Send(Pub("t", "q1", 1, 1));
  CHECK(Only<mqtt::Publish>(s->Recv()).size() == 1);  // QoS 1 still goes out within the window
}

}  // namespace
}  // namespace fmq

namespace fmq {
namespace {

std::unique_ptr<Client> TenantClient(Fixture& f, const char* tenant, const char* name, Version v = V5,
                                     bool device = true) {
  auto c = f.NewClient(v);
  c->conn.set_identity(PeerIdentity{tenant, name, device, false, "", {}});
  return c;
}

// Operators may use their whole tenant tree: isolation must hold even then.
std::unique_ptr<Client> TenantOperator(Fixture& f, const char* tenant, const char* name) {
  return TenantClient(f, tenant, name, V5, false);
}

TEST_CASE("tenant isolation: topics, wildcards, retained, $SYS and client ids are per tenant") {
  BrokerOptions o;
  o.sys_interval_s = 1;
  Fixture f(o);
  auto a_sub = TenantOperator(f, "acme", "a-sub");
  auto b_pub = TenantOperator(f, "other", "b-pub");
  auto b_sub = TenantOperator(f, "other", "b-sub");
  auto anon = f.NewClient(V5);
  REQUIRE(a_sub->Connect("a-sub").reason == ReasonCode::kSuccess);
  REQUIRE(b_pub->Connect("b-pub").reason == ReasonCode::kSuccess);
  REQUIRE(b_sub->Connect("b-sub").reason == ReasonCode::kSuccess);
  anon->Connect("anon");
  Subscribe(*a_sub, "#", 1);
  Subscribe(*a_sub, "x/y", 1);
  Subscribe(*b_sub, "x/+", 1);
  Subscribe(*anon, "#", 1);

  b_pub->Send(Pub("x/y", "secret", 1, 1));
  b_pub->Send(Pub("x/r", "retained-secret", 1, 2, true));
  auto got = Only<mqtt::Publish>(b_sub->Recv());
  REQUIRE(got.size() == 2);
  CHECK(got[0].topic == "x/y");  // the mount point is invisible
  CHECK(Only<mqtt::Publish>(a_sub->Recv()).empty());
  CHECK(Only<mqtt::Publish>(anon->Recv()).empty());

  // Retained: visible to the owner tenant only, under its own topic name.
  auto a2 = TenantOperator(f, "acme", "a2");
  a2->Connect("a2");
  a2->Send(Sub("x/#", 1));
  CHECK(Only<mqtt::Publish>(a2->Recv()).empty());
  auto b2 = TenantOperator(f, "other", "b2");
  b2->Connect("b2");
  b2->Send(Sub("x/#", 1));
  auto r = Only<mqtt::Publish>(b2->Recv());
  REQUIRE(r.size() == 1);
  CHECK(r[0].topic == "x/r");

  // Nobody can name a mount point: publishing to $T/... is a '$' topic, and
  // subscribing to it (or, for tenants, to $SYS) is not authorized.
  a_sub->Send(Pub("$T/other/x/y", "inject", 1, 3));
  auto acks = Only<mqtt::Ack>(a_sub->Recv());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].reason == ReasonCode::kNotAuthorized);
  CHECK(Only<mqtt::Publish>(b_sub->Recv()).empty());
  for (auto* c : {anon.get(), a_sub.get()}) {
    c->Send(Sub(c == anon.get() ? "$T/other/#" : "$SYS/#", 0));
    auto subacks = Only<mqtt::SubAck>(c->Recv());
    REQUIRE(subacks.size() == 1);
    CHECK(subacks[0].codes[0] == ReasonCode::kNotAuthorized);
  }
  a_sub->Send(Sub("$share/g/$T/other/#", 0));
  auto shared = Only<mqtt::SubAck>(a_sub->Recv());
  REQUIRE(shared.size() == 1);
  CHECK(shared[0].codes[0] == ReasonCode::kNotAuthorized);
  f.Advance(1000);  // $SYS is published; tenants never see it
  CHECK(Only<mqtt::Publish>(a_sub->Recv()).empty());

  // The same client id in two tenants: two sessions, no takeover.
  auto same_a = TenantClient(f, "acme", "dev-1");
  auto same_b = TenantClient(f, "other", "dev-1");
  same_a->Connect("dev-1");
  same_b->Connect("dev-1");
  CHECK_FALSE(same_a->transport.closed);
  CHECK(f.broker.FindSession("acme", "dev-1") != nullptr);
  CHECK(f.broker.FindSession("other", "dev-1") != nullptr);
  CHECK(f.broker.stats().takeovers == 0);
}

TEST_CASE("a device is bound to its certificate's id") {
  Fixture f;
  auto c = TenantClient(f, "acme", "dev-1");
  CHECK(c->Connect("dev-2").reason == ReasonCode::kClientIdentifierNotValid);
  auto d = TenantClient(f, "acme", "dev-1");
  auto ack = d->Connect("");
  CHECK(ack.reason == ReasonCode::kSuccess);
  CHECK(ack.props.assigned_client_id == "dev-1");
  auto op = f.NewClient(V5);
  op->conn.set_identity(PeerIdentity{"acme", "admin", false, false, "", {}});
  CHECK(op->Connect("any-id").reason == ReasonCode::kSuccess);  // operators choose their id
  auto v3 = TenantClient(f, "acme", "dev-3", V3);
  CHECK(v3->Connect("").reason == ReasonCode::kSuccess);
  CHECK(f.broker.FindSession("acme", "dev-3") != nullptr);
}

}  // namespace
}  // namespace fmq

namespace fmq {
namespace {

TEST_CASE("ACLs on the wire: v5 PUBACK/SUBACK 0x87, 3.1.1 dropped and counted, wills checked at CONNECT") {
  Fixture f;
  auto watcher = TenantClient(f, "acme", "admin");
  watcher->conn.set_identity(PeerIdentity{"acme", "admin", false, false, "", {}});  // operator
  watcher->Connect("ops");
  Subscribe(*watcher, "#", 0);
  auto d5 = TenantClient(f, "acme", "d1");
  d5->Connect("d1");
  d5->Send(Pub("devices/d1/up", "ok", 1, 1));
  d5->Send(Pub("devices/d2/cmd", "forged", 1, 2));
  auto acks = Only<mqtt::Ack>(d5->Recv());
  REQUIRE(acks.size() == 2);
  CHECK(acks[0].reason == ReasonCode::kSuccess);
  CHECK(acks[1].reason == ReasonCode::kNotAuthorized);
  d5->Send(Sub("devices/+/cmd", 1));
  auto subacks = Only<mqtt::SubAck>(d5->Recv());
  REQUIRE(subacks.size() == 1);
  CHECK(subacks[0].codes[0] == ReasonCode::kNotAuthorized);
  auto d3 = TenantClient(f, "acme", "d3", V3);
  d3->Connect("d3");
  d3->Send(Pub("devices/d2/cmd", "forged", 1, 3));
  acks = Only<mqtt::Ack>(d3->Recv());
  REQUIRE(acks.size() == 1);  // 3.1.1 cannot refuse: acked, dropped
  d3->Send(Sub("elsewhere/#", 1));
  subacks = Only<mqtt::SubAck>(d3->Recv());
  REQUIRE(subacks.size() == 1);
  CHECK(static_cast<int>(subacks[0].codes[0]) == 0x80);
  auto got = Only<mqtt::Publish>(watcher->Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].topic == "devices/d1/up");
  CHECK(f.broker.stats().publish_denied >= 4);
  auto w = TenantClient(f, "acme", "d4");
  mqtt::Connect ck;
  ck.client_id = "d4";
  ck.will = mqtt::Will{"devices/d1/status", "gone", 0, false, {}};  // someone else's subtree
  CHECK(w->Connect(ck).reason == ReasonCode::kNotAuthorized);
}

}  // namespace
}  // namespace fmq

namespace fmq {
namespace {

TEST_CASE("tenant management topics: '$' rule inside the mount, operators only, own reply topic only") {
  Fixture f;
  auto op = TenantOperator(f, "acme", "alice");
  op->Connect("ops");
  Subscribe(*op, "#", 0);  // must not see $SYS/... of its tenant [MQTT-4.7.2-1]
  Subscribe(*op, "+/fleetmq/#", 0);
  Subscribe(*op, "$SYS/fleetmq/events/#", 0);
  auto dev = TenantClient(f, "acme", "d1");
  dev->Connect("d1");
  dev->Send(Sub("$SYS/fleetmq/events/#", 0));
  auto sa = Only<mqtt::SubAck>(dev->Recv());
  REQUIRE(sa.size() == 1);
  CHECK(sa[0].codes[0] == ReasonCode::kNotAuthorized);  // devices read no management topics
  op->Send(Sub("$SYS/fleetmq/control/v1/reply/someone-else", 0));
  auto sb = Only<mqtt::SubAck>(op->Recv());
  REQUIRE(sb.size() == 1);
  CHECK(sb[0].codes[0] == ReasonCode::kNotAuthorized);
  op->Send(Sub("$SYS/fleetmq/control/v1/reply/ops", 0));
  auto sc = Only<mqtt::SubAck>(op->Recv());
  REQUIRE(sc.size() == 1);
  CHECK(sc[0].codes[0] == ReasonCode::kSuccess);
  f.broker.PublishInternal(MountOf("acme") + "$SYS/fleetmq/events/v1/connectivity/d1", "{}", false);
  f.broker.PublishInternal(MountOf("acme") + "$SYS/fleetmq/crl/v1", "der", true);
  auto got = Only<mqtt::Publish>(op->Recv());
  REQUIRE(got.size() == 1);  // once, through the explicit $SYS filter only
  CHECK(got[0].topic == "$SYS/fleetmq/events/v1/connectivity/d1");
  // The retained CRL is not sent to '#' or '+/...' subscribers either.
  op->Send(Sub("#", 0));
  CHECK(Only<mqtt::Publish>(op->Recv()).empty());
}

}  // namespace
}  // namespace fmq

namespace fmq {
namespace {

TEST_CASE("tenant quotas: connections get CONNACK 0x97, publishes over the rate PUBACK 0x97, per tenant") {
  BrokerOptions o;
  o.quota_max_publish_rate = 3;  // the default for tenants without their own
  Fixture f(o);
  f.broker.SetTenantQuota("small", {1, 0});
  auto a = TenantOperator(f, "small", "a");
  REQUIRE(a->Connect("a").reason == ReasonCode::kSuccess);
  auto b = TenantOperator(f, "small", "b");
  CHECK(b->Connect("b").reason == ReasonCode::kQuotaExceeded);
  auto again = TenantOperator(f, "small", "a");  // a takeover frees its own slot
  CHECK(again->Connect("a").reason == ReasonCode::kSuccess);
  CHECK(f.broker.TenantConnections("small") == 1);
  CHECK(f.broker.stats().quota_connections_refused == 1);

  auto p = TenantOperator(f, "busy", "p");
  REQUIRE(p->Connect("p").reason == ReasonCode::kSuccess);
  for (uint16_t id = 1; id <= 5; ++id) p->Send(Pub("t", "x", 1, id));
  auto acks = Only<mqtt::Ack>(p->Recv());
  REQUIRE(acks.size() == 5);
  for (int i = 0; i < 5; ++i) {
    CAPTURE(i);
    CHECK((acks[i].reason == ReasonCode::kQuotaExceeded) == (i >= 3));  // one second of burst
  }
  CHECK(f.broker.stats().quota_publish_refused == 2);
  f.Advance(1000);  // refilled
  p->Send(Pub("t", "x", 1, 6));
  auto later = Only<mqtt::Ack>(p->Recv());
  REQUIRE(later.size() == 1);
  CHECK(later[0].reason != ReasonCode::kQuotaExceeded);
  // Another tenant's budget is its own; the tenant with its own quota is unlimited for rate.
  again->Send(Pub("t", "x", 1, 1));
  again->Send(Pub("t", "x", 1, 2));
  again->Send(Pub("t", "x", 1, 3));
  again->Send(Pub("t", "x", 1, 4));
  auto other = Only<mqtt::Ack>(again->Recv());
  REQUIRE(other.size() == 4);  // every one acknowledged, none refused
  for (const auto& k : other) CHECK(k.reason != ReasonCode::kQuotaExceeded);
  // A limit set at run time on a tenant that had none starts with a full
  // second of burst (it used to start empty: everything refused at first).
  auto late = TenantOperator(f, "late", "l");
  REQUIRE(late->Connect("l").reason == ReasonCode::kSuccess);
  late->Send(Pub("t", "x", 1, 1));
  REQUIRE(Only<mqtt::Ack>(late->Recv()).size() == 1);
  f.broker.SetTenantQuota("late", {0, 2});
  for (uint16_t id = 2; id <= 4; ++id) late->Send(Pub("t", "x", 1, id));
  auto late_acks = Only<mqtt::Ack>(late->Recv());
  REQUIRE(late_acks.size() == 3);
  CHECK(late_acks[0].reason != ReasonCode::kQuotaExceeded);
  CHECK(late_acks[1].reason != ReasonCode::kQuotaExceeded);
  CHECK(late_acks[2].reason == ReasonCode::kQuotaExceeded);
}

TEST_CASE("a group membership change reaches live and offline sessions; a resumed session is re-checked") {
  Fixture f;
  auto member = [&](const char* name, std::vector<std::string> groups) {
    auto c = f.NewClient(V5);
    c->conn.set_identity(PeerIdentity{"acme", name, true, false, "", std::move(groups)});
    return c;
  };
  auto op = TenantOperator(f, "acme", "ops");
  REQUIRE(op->Connect("ops").reason == ReasonCode::kSuccess);
  auto live = member("live", {"g1"});
  REQUIRE(live->Connect("live").reason == ReasonCode::kSuccess);
  Subscribe(*live, "groups/g1/#", 1);
  Subscribe(*live, "devices/live/#", 1);
  mqtt::Connect persistent;
  persistent.client_id = "away";
  persistent.clean_start = false;
  persistent.props.session_expiry = 3600;
  persistent.props.Mark(PropertyId::kSessionExpiryInterval);
  auto away = member("away", {"g1"});
  REQUIRE(away->Connect(persistent).reason == ReasonCode::kSuccess);
  Subscribe(*away, "groups/g1/#", 1);
  away.reset();  // offline, session kept

  op->Send(Pub("groups/g1/cfg", "before", 1, 1));
  CHECK(Only<mqtt::Publish>(live->Recv()).size() == 1);  // control: members read the group
  f.broker.SetDeviceGroups("acme", "live", {"g1"}, {"g2"});
  f.broker.SetDeviceGroups("acme", "away", {"g1"}, {});
  op->Send(Pub("groups/g1/cfg", "after", 1, 2));
  op->Send(Pub("devices/live/x", "own", 1, 3));
  auto got = Only<mqtt::Publish>(live->Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].topic == "devices/live/x");  // still connected, own topics kept
  // The new group is readable at once (the live identity changed), the old not.
  live->Send(Sub("groups/g2/#", 1, 5));
  live->Send(Sub("groups/g1/#", 1, 6));
  auto acks = Only<mqtt::SubAck>(live->Recv());
  REQUIRE(acks.size() == 2);
  CHECK(acks[0].codes[0] == ReasonCode::kGrantedQos1);
  CHECK(acks[1].codes[0] == ReasonCode::kNotAuthorized);
  // The offline session queued only what came while it was a member.
  auto back = member("away", {});
  REQUIRE(back->Connect(persistent).session_present);
  auto queued = Only<mqtt::Publish>(back->Recv());
  REQUIRE(queued.size() == 1);
  CHECK(queued[0].payload == "before");
  CHECK(f.broker.FindSession("acme", "away")->subscriptions.empty());

  // Groups changed while the broker could not tell the session (e.g. across a
  // restart): the resumed session keeps only what its identity allows now.
  auto stale = member("stale", {"g3"});
  persistent.client_id = "stale";
  REQUIRE(stale->Connect(persistent).reason == ReasonCode::kSuccess);
  Subscribe(*stale, "groups/g3/#", 1);
  stale.reset();
  auto fresh = member("stale", {});
  REQUIRE(fresh->Connect(persistent).session_present);
  CHECK(f.broker.FindSession("acme", "stale")->subscriptions.empty());
}

}  // namespace
TEST_CASE("the default server keep alive shows a silent v5 device offline within 30 s; tenants set their own") {
  Fixture f;  // defaults: server_keepalive 18, max_keepalive 65535
  auto c = f.NewClient(V5);
  auto ack = c->Connect("c", true, 60);
  CHECK(ack.props.server_keep_alive == 18);
  auto zero = f.NewClient(V5);
  CHECK(zero->Connect("zero", true, 0).props.server_keep_alive == 18);
  auto low = f.NewClient(V5);
  CHECK(!low->Connect("low", true, 10).props.Has(PropertyId::kServerKeepAlive));  // under the cap: its own
  auto old = f.NewClient(V3);
  CHECK(old->Connect("old", true, 60).reason == ReasonCode::kSuccess);  // 3.1.1 cannot be told: 1.5 x 60
  f.Advance(26'500);
  CHECK(!c->transport.closed);
  f.Advance(1'000);  // 27.5 s: past 1.5 x 18 (and the tick)
  CHECK(c->transport.closed);
  CHECK(zero->transport.closed);
  CHECK(!old->transport.closed);
  // A tenant's own value replaces the node's, for its clients only.
  f.broker.SetTenantQuota("slow", {0, 0, 120});
  f.broker.SetTenantQuota("fast", {0, 0, 4});
  auto s = TenantClient(f, "slow", "s1");
  CHECK(s->Connect("s1", true, 300).props.server_keep_alive == 120);
  auto q = TenantClient(f, "fast", "q1");
  CHECK(q->Connect("q1", true, 60).props.server_keep_alive == 4);
  f.Advance(6'500);
  CHECK(q->transport.closed);
  CHECK(!s->transport.closed);
}

}  // namespace fmq

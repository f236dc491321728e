// Persistence seen from the engine (a fake store: acks wait for
// durability, in order; failures and unhealthy storage refuse QoS 1/2) and
// the real BrokerStore + StorageWriter over an in-memory KvStore (state
// written by one broker is read back by the next; write failures recover).
#include <doctest/doctest.h>

#include <thread>

#include "broker/store/broker_store.h"
#include "tests/unit/test_util.h"

namespace fmq {
namespace {

using mqtt::PacketType;
using mqtt::PropertyId;
using mqtt::ReasonCode;
using mqtt::Version;
using test::Client;
using test::FakePersistence;
using test::Only;
using test::Pub;

void Subscribe(Client& c, const std::string& filter, uint8_t qos) {
  mqtt::Subscribe s;
  s.packet_id = 1;
  s.entries.push_back({filter, qos});
  c.Send(s);
}

mqtt::Connect Persistent(const std::string& id) {
  mqtt::Connect ck;
  ck.client_id = id;
  ck.clean_start = false;
  ck.props.session_expiry = 3600;
  ck.props.Mark(PropertyId::kSessionExpiryInterval);
  return ck;
}

TEST_CASE("PUBACK waits until the message is durable, and acks stay in PUBLISH order") {
  FakeClock clock;
  FakePersistence p;
  Broker b({}, &clock, nullptr, &p);
  Client sub(b, Version::kV5, 1);
  sub.Connect(Persistent("sub"));
  Subscribe(sub, "d/#", 1);
  p.Complete(true);  // the subscription is stored: SUBACK goes out
  CHECK(Only<mqtt::SubAck>(sub.Recv()).size() == 1);
  Client pub(b, Version::kV5, 2);
  pub.Connect("pub");
  pub.Send(Pub("d/x", "1", 1, 1));    // stored for the durable subscriber
  pub.Send(Pub("other", "2", 1, 2));  // nothing to store, but must wait its turn
  CHECK(Only<mqtt::Ack>(pub.Recv()).empty());
  p.Complete(true);
  auto acks = Only<mqtt::Ack>(pub.Recv());
  REQUIRE(acks.size() == 2);
  CHECK(acks[0].packet_id == 1);
  CHECK(acks[1].packet_id == 2);
  CHECK(acks[1].reason == ReasonCode::kNoMatchingSubscribers);
}

TEST_CASE("a failed durable write answers 0x83 in v5 and closes a 3.1.1 publisher") {
  FakeClock clock;
  FakePersistence p;
  Broker b({}, &clock, nullptr, &p);
  Client sub(b, Version::kV5, 1);
  sub.Connect(Persistent("sub"));
  Subscribe(sub, "d/#", 1);
  p.Complete(true);
  Client v5(b, Version::kV5, 2);
  v5.Connect("v5");
  v5.Send(Pub("d/x", "1", 1, 7));
  p.Complete(false);
  auto acks = Only<mqtt::Ack>(v5.Recv());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].reason == ReasonCode::kImplementationSpecificError);
  Client v3(b, Version::kV311, 3);
  v3.Connect("v3");
  v3.Send(Pub("d/x", "2", 1, 8));
  p.Complete(false);
  CHECK(Only<mqtt::Ack>(v3.Recv()).empty());
  CHECK(v3.transport.closed);
  CHECK(b.stats().storage_ack_failures == 2);
}

TEST_CASE("while storage is unhealthy QoS 1/2 are refused and QoS 0 still flows") {
  FakeClock clock;
  FakePersistence p;
  Broker b({}, &clock, nullptr, &p);
  Client sub(b, Version::kV5, 1);
  sub.Connect("sub");
  Subscribe(sub, "t", 1);
  sub.Recv();
  p.is_healthy = false;
  Client pub(b, Version::kV5, 2);
  pub.Connect("pub");
  pub.Send(Pub("t", "q1", 1, 1));
  pub.Send(Pub("t", "q0", 0));
  auto acks = Only<mqtt::Ack>(pub.Recv());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].reason == ReasonCode::kImplementationSpecificError);
  auto got = Only<mqtt::Publish>(sub.Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].payload == "q0");
  CHECK(b.stats().publish_refused_storage == 1);
  p.is_healthy = true;  // recovers by itself
  pub.Send(Pub("t", "again", 1, 2));
  acks = Only<mqtt::Ack>(pub.Recv());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].reason == ReasonCode::kSuccess);
}

// A broker wired to the real store over an in-memory KvStore.
struct Stack {
  explicit Stack(storage::MemKvStore* kv, FakeClock* clock)
      : store(clock), broker(Opts(), clock, nullptr, &store), writer(kv, WriterOpts(), nullptr) {
    store.set_writer(&writer);
  }
  static BrokerOptions Opts() {
    BrokerOptions o;
    o.sys_interval_s = 0;
    return o;
  }
  static WriterOptions WriterOpts() {
    WriterOptions w;
    w.mode = SyncMode::kAlways;
    w.retry_interval_ms = 20;
    return w;
  }
  // Writes what is pending and runs completions (the loop's job).
  void Settle() {
    store.FlushIfDirty();
    writer.Drain();
    writer.RunCompletions();
  }
  BrokerStore store;
  Broker broker;
  StorageWriter writer;
};

TEST_CASE("state written by one broker is read back by the next") {
  FakeClock clock;
  storage::MemKvStore kv;
  {
    Stack s(&kv, &clock);
    Client sub(s.broker, Version::kV5, 1);
    mqtt::Connect ck = Persistent("sub");
    ck.will = mqtt::Will{"wills/sub", "gone", 1, false, {}};
    ck.will->props.will_delay = 60;
    ck.will->props.Mark(PropertyId::kWillDelayInterval);
    sub.Connect(ck);
    mqtt::Subscribe sb;
    sb.packet_id = 1;
    sb.entries = {{"a/#", 1}, {"$share/g/b/+", 2}};
    sb.props.subscription_ids = {5};
    sb.props.Mark(PropertyId::kSubscriptionIdentifier);
    sub.Send(sb);
    Client pub(s.broker, Version::kV5, 2);
    pub.Connect("pub");
    auto m = Pub("a/1", "inflight", 1, 1);
    m.props.user_properties = {{"k", "v"}};
    m.props.Mark(PropertyId::kUserProperty);
    m.props.message_expiry = 600;
    m.props.Mark(PropertyId::kMessageExpiryInterval);
    pub.Send(m);                                    // sent to sub, not acked: inflight
    pub.Send(Pub("keep", "retained", 1, 2, true));  // retained
    pub.Send(Pub("in/q2", "x", 2, 9));              // pub's own session is not durable
    s.Settle();
    CHECK(Only<mqtt::Publish>(sub.Recv()).size() == 1);
    sub.transport.closed = true;
  }  // sub's Client goes away: connection lost, will pending, session stored
  {
    Stack s(&kv, &clock);
    // (The previous broker saved the session as offline when its connection
    // dropped; nothing else is needed.)
    LoadStats st;
    REQUIRE(s.store.Load(kv, s.broker, &st).ok());
    CHECK(st.sessions == 1);
    CHECK(st.retained == 1);
    CHECK(st.messages == 1);
    CHECK(st.skipped_corrupt == 0);
    const Session* sess = s.broker.FindSession("", "sub");
    REQUIRE(sess != nullptr);
    CHECK(sess->subscriptions.size() == 2);
    CHECK(sess->subscriptions.at("$share/g/b/+").qos == 2);
    CHECK(sess->subscriptions.at("a/#").subscription_id == 5);
    CHECK(sess->will != nullptr);
    CHECK(sess->inflight.size() == 1);
    CHECK(s.broker.stats().subscriptions == 2);
    // The subscriber comes back: the unacknowledged message is resent with
    // DUP, its properties and remaining expiry intact.
    Client sub(s.broker, Version::kV5, 3);
    CHECK(sub.Connect(Persistent("sub")).session_present);
    auto got = Only<mqtt::Publish>(sub.Recv());
    REQUIRE(got.size() == 1);
    CHECK(got[0].dup);
    CHECK(got[0].payload == "inflight");
    CHECK(got[0].props.user_properties == mqtt::UserProperties{{"k", "v"}});
    CHECK(got[0].props.message_expiry > 590);
    // Retained survived too.
    Client late(s.broker, Version::kV311, 4);
    late.Connect("late");
    Subscribe(late, "keep", 1);
    auto r = Only<mqtt::Publish>(late.Recv());
    REQUIRE(r.size() == 1);
    CHECK(r[0].retain);
    // Acknowledging deletes the stored copy.
    sub.Send(mqtt::Ack{PacketType::kPuback, got[0].packet_id, ReasonCode::kSuccess, {}});
    s.Settle();
    size_t left = 0;
    REQUIRE(kv.Scan(storage::Family::kSessionMessages, "", "", [&](std::string_view, std::string_view) {
                ++left;
                return true;
              }).ok());
    CHECK(left == 0);
  }
}

TEST_CASE("inbound QoS 2 ids survive a restart: no duplicate delivery") {
  FakeClock clock;
  storage::MemKvStore kv;
  {
    Stack s(&kv, &clock);
    Client pub(s.broker, Version::kV5, 1);
    pub.Connect(Persistent("pub"));
    pub.Send(Pub("t", "once", 2, 42));
    s.Settle();
    auto acks = Only<mqtt::Ack>(pub.Recv());
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].type == PacketType::kPubrec);
  }
  Stack s(&kv, &clock);
  LoadStats st;
  REQUIRE(s.store.Load(kv, s.broker, &st).ok());
  Client sub(s.broker, Version::kV5, 2);
  sub.Connect("sub");
  Subscribe(sub, "t", 2);
  sub.Recv();
  Client pub(s.broker, Version::kV5, 3);
  pub.Connect(Persistent("pub"));
  auto again = Pub("t", "once", 2, 42);
  again.dup = true;
  pub.Send(again);  // the retransmission after the crash
  s.Settle();
  CHECK(Only<mqtt::Publish>(sub.Recv()).empty());
  CHECK(Only<mqtt::Ack>(pub.Recv()).size() == 1);  // PUBREC again
}

TEST_CASE("session expiry counts the time the broker was down") {
  FakeClock clock;
  storage::MemKvStore kv;
  {
    Stack s(&kv, &clock);
    Client c(s.broker, Version::kV5, 1);
    mqtt::Connect ck = Persistent("short");
    ck.props.session_expiry = 10;
    c.Connect(ck);
    c.Send(mqtt::Disconnect{});
    s.Settle();
  }
  clock.Advance(11'000);  // down for 11 s
  Stack s(&kv, &clock);
  LoadStats st;
  REQUIRE(s.store.Load(kv, s.broker, &st).ok());
  CHECK(s.broker.FindSession("", "short") == nullptr);
  s.Settle();
  CHECK(absl::IsNotFound(
      kv.Get(storage::Family::kSessions, storage::keys::Session(storage::TenantId::Anonymous(), "short")).status()));
}

TEST_CASE("corrupt stored records are skipped and counted, never fatal") {
  FakeClock clock;
  storage::MemKvStore kv;
  auto t = storage::TenantId::Anonymous();
  kv.Poke(storage::Family::kSessions, storage::keys::Session(t, "bad"), "garbage");
  kv.Poke(storage::Family::kRetained, storage::keys::Retained(t, "x"), std::string("\x01\x02\x03", 3));
  kv.Poke(storage::Family::kSessionMessages, "not a key", "x");
  Stack s(&kv, &clock);
  LoadStats st;
  REQUIRE(s.store.Load(kv, s.broker, &st).ok());
  CHECK(st.skipped_corrupt == 3);  // the session, the retained message, the bad key
  CHECK(st.sessions == 0);
}

// Batched writes that retry a failure every 10 ms.
WriterOptions QuickRetries() {
  WriterOptions o;
  o.mode = SyncMode::kBatched;
  o.sync_interval_ms = 1;
  o.retry_interval_ms = 10;
  return o;
}

TEST_CASE("writer: a failing disk makes the store unhealthy; it recovers by itself") {
  storage::MemKvStore kv;
  const WriterOptions o = QuickRetries();
  StorageWriter w(&kv, o, nullptr);
  kv.FailWrites(absl::UnavailableError("no space left on device"));
  storage::WriteBatch b;
  b.Put(storage::Family::kMeta, "k1", "v1");
  bool result = true;
  w.Submit(std::move(b), [&](bool ok) { result = ok; });
  w.Drain();
  w.RunCompletions();
  CHECK_FALSE(result);
  CHECK_FALSE(w.healthy());
  CHECK(w.stats().errors >= 1);
  kv.FailWrites(absl::OkStatus());
  for (int i = 0; i < 200 && !w.healthy(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(w.healthy());
  CHECK(*kv.Get(storage::Family::kMeta, "k1") == "v1");  // the failed write was retried, not lost
}

TEST_CASE("writer: writers sharing a database share its health") {
  // Worker A's write fails; worker B has written nothing yet and must
  // refuse QoS 1/2 all the same (it is the same disk).
  storage::MemKvStore kv;
  const WriterOptions o = QuickRetries();
  auto health = std::make_shared<StorageHealth>();
  StorageWriter a(&kv, o, nullptr, health);
  StorageWriter b(&kv, o, nullptr, health);
  StorageWriter alone(&kv, o, nullptr);
  kv.FailWrites(absl::UnavailableError("no space left on device"));
  storage::WriteBatch batch;
  batch.Put(storage::Family::kMeta, "a", "1");
  a.Submit(std::move(batch), nullptr);
  a.Drain();
  CHECK_FALSE(a.healthy());
  CHECK_FALSE(b.healthy());
  CHECK(alone.healthy());  // not sharing: it has not seen the failure
  kv.FailWrites(absl::OkStatus());
  for (int i = 0; i < 200 && !b.healthy(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(a.healthy());
  CHECK(b.healthy());
}

TEST_CASE("writer: batches submitted together become one write") {
  storage::MemKvStore kv;
  WriterOptions o;
  o.mode = SyncMode::kBatched;
  o.sync_interval_ms = 50;
  StorageWriter w(&kv, o, nullptr);
  int done = 0;
  for (int i = 0; i < 100; ++i) {
    storage::WriteBatch b;
    b.Put(storage::Family::kMeta, "k" + std::to_string(i), "v");
    w.Submit(std::move(b), [&](bool ok) { done += ok; });
  }
  w.Drain();
  w.RunCompletions();
  CHECK(done == 100);
  CHECK(kv.writes() <= 3);  // group commit
}

}  // namespace
}  // namespace fmq

namespace fmq {
namespace {

TEST_CASE("tenant sessions and retained messages are stored under their tenant and stay isolated after restart") {
  FakeClock clock;
  storage::MemKvStore kv;
  {
    Stack s(&kv, &clock);
    Client a(s.broker, Version::kV5, 1);
    a.conn.set_identity(PeerIdentity{"acme", "dev-1", false, false, "", {}});  // operators: tenant-wide topics
    a.Connect(Persistent("dev-1"));
    Subscribe(a, "cfg/#", 1);
    Client b(s.broker, Version::kV5, 2);
    b.conn.set_identity(PeerIdentity{"other", "dev-1", false, false, "", {}});
    b.Connect(Persistent("dev-1"));
    b.Send(Pub("cfg/x", "other's retained", 1, 1, true));
    s.Settle();
  }
  auto acme = storage::TenantId::FromAuthenticated("acme");
  auto other = storage::TenantId::FromAuthenticated("other");
  CHECK(kv.Get(storage::Family::kSessions, storage::keys::Session(acme, "dev-1")).ok());
  CHECK(kv.Get(storage::Family::kSessions, storage::keys::Session(other, "dev-1")).ok());
  CHECK(kv.Get(storage::Family::kRetained, storage::keys::Retained(other, "cfg/x")).ok());
  Stack s(&kv, &clock);
  LoadStats st;
  REQUIRE(s.store.Load(kv, s.broker, &st).ok());
  CHECK(st.sessions == 2);
  const Session* sa = s.broker.FindSession("acme", "dev-1");
  REQUIRE(sa != nullptr);
  CHECK(sa->subscriptions.contains("$T/acme/cfg/#"));
  Client a(s.broker, Version::kV5, 3);
  a.conn.set_identity(PeerIdentity{"acme", "dev-1", false, false, "", {}});
  CHECK(a.Connect(Persistent("dev-1")).session_present);
  Subscribe(a, "cfg/#", 1);
  CHECK(Only<mqtt::Publish>(a.Recv()).empty());  // other's retained stays other's
  Client b(s.broker, Version::kV5, 4);
  b.conn.set_identity(PeerIdentity{"other", "dev-2", false, false, "", {}});
  b.Connect("dev-2");
  Subscribe(b, "cfg/#", 1);
  auto got = Only<mqtt::Publish>(b.Recv());
  REQUIRE(got.size() == 1);
  CHECK(got[0].topic == "cfg/x");
}

}  // namespace
}  // namespace fmq

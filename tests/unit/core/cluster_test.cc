// Two workers in one test, no sockets: two Brokers joined by a Cluster whose
// link queues forwarded messages and posted work per worker, delivered when
// the test pumps them (as the uv_async of each loop would). Covers what the
// multi-worker broker must keep: every message across workers in order,
// retained and shared subscriptions across workers, global tenant quotas,
// session homes.
#include "broker/core/cluster.h"

#include <doctest/doctest.h>

#include <deque>

#include "broker/core/broker.h"
#include "tests/unit/test_util.h"

namespace fmq {
namespace {

using mqtt::ReasonCode;
using mqtt::Version;
using test::Client;
using test::FakePersistence;
using test::Only;
using test::Pub;

// Queues per destination worker, in the order they were produced, like the
// net layer's inboxes.
struct QueueLink : Cluster::Link {
  std::vector<Broker*> brokers;
  struct Item {
    MessagePtr msg;
    AckBarrierPtr ack;
    std::function<void(Broker&)> fn;
  };
  std::vector<std::deque<Item>> inbox;
  void Forward(uint32_t from, const MessagePtr& m, const AckBarrierPtr& ack) override {
    for (uint32_t w = 0; w < inbox.size(); ++w) {
      if (w != from) inbox[w].push_back({m, ack, nullptr});
    }
  }
  void Acknowledge(uint32_t, uint32_t to, uint64_t conn_id, uint64_t ticket, bool ok) override {
    Post(to, [=](Broker& b) { b.OnPeerDurable(conn_id, ticket, ok); });
  }
  void Post(uint32_t to, std::function<void(Broker&)> fn) override {
    inbox[to].push_back({nullptr, nullptr, std::move(fn)});
  }
  // Delivers queued work, worker `only` alone when given; each worker's
  // batch ends with FlushPeerWrites, as in the net layer.
  void Pump(int only = -1) {
    bool any = true;
    while (any) {
      any = false;
      for (uint32_t w = 0; w < inbox.size(); ++w) {
        if (only >= 0 && w != static_cast<uint32_t>(only)) continue;
        while (!inbox[w].empty()) {
          Item it = std::move(inbox[w].front());
          inbox[w].pop_front();
          any = true;
          if (it.msg) {
            brokers[w]->RouteFromPeer(it.msg, it.ack);
          } else {
            it.fn(*brokers[w]);
          }
        }
        brokers[w]->FlushPeerWrites();
      }
    }
  }
};

struct TwoWorkers {
  // `stores[i]`: worker i's persistence (none by default).
  explicit TwoWorkers(BrokerOptions o = {}, std::vector<Persistence*> stores = {nullptr, nullptr}) : cluster(2) {
    o.sys_interval_s = 0;
    for (uint32_t i = 0; i < 2; ++i) {
      brokers.push_back(std::make_unique<Broker>(o, &clock, nullptr, stores[i]));
      brokers.back()->SetCluster(&cluster, i);
      link.brokers.push_back(brokers.back().get());
    }
    link.inbox.resize(2);
    cluster.set_link(&link);
  }
  // A client id whose session is homed on worker `w` (the net layer hands
  // every connection to its home before the CONNECT is processed).
  std::string IdOn(uint32_t w, const std::string& base, std::string_view tenant = {}) {
    for (int i = 0;; ++i) {
      std::string id = base + std::to_string(i);
      if (cluster.HomeOf(tenant, id) == w) return id;
    }
  }
  std::unique_ptr<Client> On(uint32_t w, Version v = Version::kV5) {
    return std::make_unique<Client>(*brokers[w], v, next_id++);
  }
  // A client connected on worker `w` under a client id homed there.
  std::unique_ptr<Client> Connected(uint32_t w, const std::string& base) {
    auto c = On(w);
    REQUIRE(c->Connect(IdOn(w, base)).reason == ReasonCode::kSuccess);
    return c;
  }
  FakeClock clock;
  Cluster cluster;
  QueueLink link;
  std::vector<std::unique_ptr<Broker>> brokers;
  uint64_t next_id = 1;
};

void Subscribe(Client& c, const std::string& filter, uint8_t qos) {
  mqtt::Subscribe s;
  s.packet_id = 1;
  s.entries.push_back({filter, qos});
  c.Send(s);
  auto acks = Only<mqtt::SubAck>(c.Recv());
  REQUIRE(acks.size() == 1);
  REQUIRE(!mqtt::IsError(acks[0].codes[0]));
}

TEST_CASE("cluster: session homes are stable, spread, and the same for every caller") {
  Cluster c(2);
  int on[2] = {0, 0};
  for (int i = 0; i < 10000; ++i) {
    const uint32_t h = c.HomeOf("acme", "dev-" + std::to_string(i));
    REQUIRE(h < 2);
    CHECK(h == c.HomeOf("acme", "dev-" + std::to_string(i)));
    on[h]++;
  }
  CHECK(on[0] > 4500);
  CHECK(on[1] > 4500);
  // The tenant is part of the key: the same id in two tenants may differ.
  int differ = 0;
  for (int i = 0; i < 100; ++i) differ += c.HomeOf("a", std::to_string(i)) != c.HomeOf("b", std::to_string(i));
  CHECK(differ > 10);
  CHECK(Cluster(1).HomeOf("x", "y") == 0);
}

TEST_CASE("cluster: PickWorker gives one answer per mask and stamp, spread over the members") {
  int count[4] = {0, 0, 0, 0};
  for (uint64_t stamp = 0; stamp < 4000; ++stamp) {
    const uint32_t w = PickWorker(0b1011, stamp);
    REQUIRE((w == 0 || w == 1 || w == 3));
    CHECK(w == PickWorker(0b1011, stamp));
    count[w]++;
  }
  CHECK(count[2] == 0);
  for (int w : {0, 1, 3}) CHECK(count[w] > 1000);
  CHECK(PickWorker(0b100, 12345) == 2);
}

TEST_CASE("cluster: publisher on one worker, subscriber on the other: every message, in order") {
  TwoWorkers t;
  auto sub = t.Connected(1, "sub");
  Subscribe(*sub, "a/#", 1);
  auto pub = t.Connected(0, "pub");
  for (uint16_t i = 1; i <= 200; ++i) {
    pub->Send(Pub("a/b", std::to_string(i), 1, i));
    if (i % 7 == 0) t.link.Pump();  // batches of different sizes
  }
  t.link.Pump();
  auto acks = Only<mqtt::Ack>(pub->Recv());
  CHECK(acks.size() == 200);
  for (const auto& a : acks) CHECK(a.reason == ReasonCode::kSuccess);  // never 0x10 with 2 workers
  std::vector<std::string> got;
  for (int round = 0; round < 10 && got.size() < 200; ++round) {
    for (const auto& p : Only<mqtt::Publish>(sub->Recv())) {
      got.emplace_back(p.payload);
      mqtt::Ack a;
      a.type = mqtt::PacketType::kPuback;
      a.packet_id = p.packet_id;
      sub->Send(a);
    }
  }
  REQUIRE(got.size() == 200);
  for (int i = 0; i < 200; ++i) CHECK(got[i] == std::to_string(i + 1));
  // The local worker delivered nothing twice: worker 0 had no subscriber.
  CHECK(t.brokers[0]->stats().publish_sent == 0);
}

TEST_CASE("cluster: retained messages reach subscribers on every worker, newest wins everywhere") {
  TwoWorkers t;
  auto p0 = t.Connected(0, "p");
  auto p1 = t.Connected(1, "p");
  p0->Send(Pub("cfg/x", "first", 0, 0, true));
  t.clock.Advance(1);
  // Worker 1 publishes the newer value before it has seen worker 0's: each
  // worker applies the two updates in a different order.
  p1->Send(Pub("cfg/x", "second", 0, 0, true));
  t.link.Pump();
  for (uint32_t w = 0; w < 2; ++w) {
    CAPTURE(w);
    auto s = t.Connected(w, "s");
    mqtt::Subscribe sb;
    sb.packet_id = 1;
    sb.entries.push_back({"cfg/#", 0});
    s->Send(sb);
    auto pubs = Only<mqtt::Publish>(s->Recv());
    REQUIRE(pubs.size() == 1);
    CHECK(pubs[0].payload == "second");
    CHECK(t.brokers[w]->retained_count() == 1);
  }
}

TEST_CASE("cluster: a retained delete and an older update racing from two workers leave both with nothing") {
  FakePersistence s0, s1;
  TwoWorkers t({}, {&s0, &s1});
  auto p0 = t.Connected(0, "p");
  auto p1 = t.Connected(1, "p");
  p0->Send(Pub("cfg/x", "v1", 0, 0, true));
  t.link.Pump();
  // Worker 1 updates, worker 0 deletes just after, before either has seen
  // the other's: worker 0 meets the older update after its delete.
  p1->Send(Pub("cfg/x", "v2", 0, 0, true));
  p0->Send(Pub("cfg/x", "", 0, 0, true));
  t.link.Pump();
  s0.Complete(true);
  s1.Complete(true);
  for (uint32_t w = 0; w < 2; ++w) {
    CAPTURE(w);
    CHECK(t.brokers[w]->retained_count() == 0);
    auto s = t.Connected(w, "s");
    mqtt::Subscribe sb;
    sb.packet_id = 1;
    sb.entries.push_back({"cfg/#", 0});
    s->Send(sb);
    s0.Complete(true);
    s1.Complete(true);
    auto got = s->Recv();
    CHECK(Only<mqtt::SubAck>(got).size() == 1);
    CHECK(Only<mqtt::Publish>(got).empty());  // nothing retained left
  }
  // One worker stores the topic (its owner), in stamp order: its last
  // write is the delete, so a restart agrees with what was served.
  FakePersistence& owner = t.cluster.HomeOf({}, "cfg/x") == 0 ? s0 : s1;
  FakePersistence& other = &owner == &s0 ? s1 : s0;
  CHECK(other.retained_writes.empty());
  REQUIRE(!owner.retained_writes.empty());
  CHECK(owner.retained_writes.back() == std::make_pair(std::string("cfg/x"), std::string()));
}

TEST_CASE("cluster: a shared subscription with members on both workers gets each message once") {
  TwoWorkers t;
  std::vector<std::unique_ptr<Client>> members;
  for (uint32_t w = 0; w < 2; ++w) {
    for (int k = 0; k < 2; ++k) {
      members.push_back(t.On(w));
      REQUIRE(members.back()->Connect(t.IdOn(w, "m" + std::to_string(k) + "-")).reason == ReasonCode::kSuccess);
      Subscribe(*members.back(), "$share/g/jobs/#", 0);
    }
  }
  auto pub = t.Connected(0, "pub");
  auto pub1 = t.Connected(1, "pub");
  for (int i = 0; i < 400; ++i) {
    t.clock.Advance(0);
    (i % 2 ? pub1 : pub)->Send(Pub("jobs/1", std::to_string(i), 0));
  }
  t.link.Pump();
  std::vector<int> seen(400, 0);
  size_t per_worker[2] = {0, 0};
  for (size_t m = 0; m < members.size(); ++m) {
    for (const auto& p : Only<mqtt::Publish>(members[m]->Recv())) {
      seen[std::stoi(std::string(p.payload))]++;
      per_worker[m / 2]++;
    }
  }
  for (int i = 0; i < 400; ++i) {
    CAPTURE(i);
    CHECK(seen[i] == 1);
  }
  CHECK(per_worker[0] > 100);
  CHECK(per_worker[1] > 100);
  // When one worker's members all leave, the other worker takes everything.
  members[2].reset();
  members[3].reset();
  for (int i = 0; i < 50; ++i) pub1->Send(Pub("jobs/1", "after", 0));
  t.link.Pump();
  size_t after = Only<mqtt::Publish>(members[0]->Recv()).size() + Only<mqtt::Publish>(members[1]->Recv()).size();
  CHECK(after == 50);
}

// Membership changing on one worker while messages to the group travel: each
// message is delivered exactly once, by the worker the mask in force at its
// stamp picks (a worker that lost its last member since redirects).
TEST_CASE("cluster: shared group membership changing on another worker loses and duplicates nothing") {
  auto unsubscribe = [](Client& c, const std::string& filter) {
    mqtt::Unsubscribe u;
    u.packet_id = 2;
    u.filters.push_back(filter);
    c.Send(u);
    REQUIRE(Only<mqtt::SubAck>(c.Recv()).size() == 1);
  };
  auto count = [](Client& c, std::vector<int>& seen) {
    for (const auto& p : Only<mqtt::Publish>(c.Recv())) seen[std::stoi(std::string(p.payload))]++;
  };
  SUBCASE("a member leaves on worker 1 while messages stamped before are in its inbox") {
    TwoWorkers t;
    auto m0 = t.Connected(0, "m0-");
    auto m1 = t.Connected(1, "m1-");
    Subscribe(*m0, "$share/g/jobs/#", 0);
    Subscribe(*m1, "$share/g/jobs/#", 0);
    auto pub = t.Connected(0, "pub");
    for (int i = 0; i < 200; ++i) pub->Send(Pub("jobs/1", std::to_string(i), 0));
    t.link.Pump(0);  // worker 0 has routed them; worker 1 has not yet
    unsubscribe(*m1, "$share/g/jobs/#");
    t.link.Pump();
    std::vector<int> seen(200, 0);
    count(*m0, seen);
    count(*m1, seen);
    for (int i = 0; i < 200; ++i) {
      CAPTURE(i);
      CHECK(seen[i] == 1);
    }
  }
  SUBCASE("a member joins on worker 1 after the messages were stamped") {
    TwoWorkers t;
    auto m0 = t.Connected(0, "m0-");
    Subscribe(*m0, "$share/g/jobs/#", 0);
    auto pub = t.Connected(0, "pub");
    for (int i = 0; i < 200; ++i) pub->Send(Pub("jobs/1", std::to_string(i), 0));
    auto m1 = t.Connected(1, "m1-");
    Subscribe(*m1, "$share/g/jobs/#", 0);  // joins before worker 1 routes them
    t.link.Pump();
    std::vector<int> seen(200, 0);
    count(*m0, seen);
    const size_t before = std::count(seen.begin(), seen.end(), 1);
    count(*m1, seen);
    CHECK(before == 200);  // worker 0 delivered them all (the mask at their stamps)
    for (int i = 0; i < 200; ++i) {
      CAPTURE(i);
      CHECK(seen[i] == 1);  // and worker 1 none again
    }
  }
}

// The PUBACK of a QoS 1 message promises it is stored for every durable
// subscriber, and a durable subscriber's copy is written by its own worker.
TEST_CASE("cluster: a PUBACK waits until the subscriber's worker has stored the message") {
  FakePersistence store0, store1;
  TwoWorkers w({}, {&store0, &store1});
  auto sub = w.On(1);
  mqtt::Connect ck;
  ck.client_id = w.IdOn(1, "durable");
  ck.clean_start = false;
  ck.props.session_expiry = 3600;
  ck.props.Mark(mqtt::PropertyId::kSessionExpiryInterval);
  REQUIRE(sub->Connect(ck).reason == ReasonCode::kSuccess);
  mqtt::Subscribe sb;
  sb.packet_id = 1;
  sb.entries.push_back({"t/#", 1});
  sub->Send(sb);
  store1.Complete(true);  // the SUBACK waits for the subscription's write
  REQUIRE(Only<mqtt::SubAck>(sub->Recv()).size() == 1);
  auto pub = w.Connected(0, "pub");
  const int flushes_before = static_cast<int>(store1.waiting.size());

  SUBCASE("acked once worker 1's write is durable") {
    pub->Send(Pub("t/1", "x", 1, 7));
    CHECK(Only<mqtt::Ack>(pub->Recv()).empty());  // worker 1 has not routed it yet
    w.link.Pump();
    REQUIRE(store1.waiting.size() == static_cast<size_t>(flushes_before + 1));
    CHECK(Only<mqtt::Publish>(sub->Recv()).size() == 1);
    CHECK(Only<mqtt::Ack>(pub->Recv()).empty());  // routed and sent, not yet durable
    store1.Complete(true);
    w.link.Pump();  // the completion travels back to worker 0
    auto acks = Only<mqtt::Ack>(pub->Recv());
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].packet_id == 7);
    CHECK(acks[0].reason == ReasonCode::kSuccess);
  }
  SUBCASE("a failed write on worker 1 is a failed PUBACK (0x83), as with one worker") {
    pub->Send(Pub("t/1", "x", 1, 8));
    w.link.Pump();
    store1.Complete(false);
    w.link.Pump();
    auto acks = Only<mqtt::Ack>(pub->Recv());
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].reason == ReasonCode::kImplementationSpecificError);
  }
  SUBCASE("a message nobody on worker 1 stores is acked after worker 1 routed it, without a write") {
    pub->Send(Pub("other/1", "x", 1, 9));
    w.link.Pump();
    CHECK(store1.waiting.size() == static_cast<size_t>(flushes_before));
    auto acks = Only<mqtt::Ack>(pub->Recv());
    REQUIRE(acks.size() == 1);
    CHECK(acks[0].packet_id == 9);
  }
  SUBCASE("acks stay in PUBLISH order when a later message needs no write") {
    pub->Send(Pub("t/1", "durable", 1, 10));
    pub->Send(Pub("other/1", "not stored", 1, 11));
    w.link.Pump();
    CHECK(Only<mqtt::Ack>(pub->Recv()).empty());  // 11 is ready, but waits behind 10
    store1.Complete(true);
    w.link.Pump();
    auto acks = Only<mqtt::Ack>(pub->Recv());
    REQUIRE(acks.size() == 2);
    CHECK(acks[0].packet_id == 10);
    CHECK(acks[1].packet_id == 11);
  }
}

TEST_CASE("cluster: tenant connection quota counts connections on every worker") {
  TwoWorkers t;
  for (auto& b : t.brokers) b->SetTenantQuota("small", {2, 0});
  std::vector<std::unique_ptr<Client>> cs;
  auto op = [&](uint32_t w, const std::string& id) {
    cs.push_back(t.On(w));
    cs.back()->conn.set_identity(PeerIdentity{"small", "ops", false, false, "", {}});
    return cs.back()->Connect(id).reason;
  };
  CHECK(op(0, t.IdOn(0, "a", "small")) == ReasonCode::kSuccess);
  CHECK(op(1, t.IdOn(1, "b", "small")) == ReasonCode::kSuccess);
  CHECK(op(0, t.IdOn(0, "c", "small")) == ReasonCode::kQuotaExceeded);
  CHECK(op(1, t.IdOn(1, "d", "small")) == ReasonCode::kQuotaExceeded);
  CHECK(t.brokers[0]->TenantConnections("small") == 2);
  cs[1].reset();  // b leaves: a slot frees on worker 0 too
  CHECK(op(0, t.IdOn(0, "e", "small")) == ReasonCode::kSuccess);
}

TEST_CASE("cluster: assigned client ids are homed where they were assigned; session ids never collide") {
  TwoWorkers t;
  for (uint32_t w = 0; w < 2; ++w) {
    for (int i = 0; i < 20; ++i) {
      auto c = t.On(w);
      auto ack = c->Connect("");
      REQUIRE(ack.props.Has(mqtt::PropertyId::kAssignedClientIdentifier));
      CHECK(t.cluster.HomeOf("", ack.props.assigned_client_id) == w);
    }
  }
  // No Local compares session ids across workers: a subscriber on worker 1
  // with no_local still gets worker 0's messages.
  auto s = t.Connected(1, "nl");
  Subscribe(*s, "x", 0 | 0x04);
  auto p = t.Connected(0, "nl");
  p->Send(Pub("x", "y", 0));
  t.link.Pump();
  CHECK(Only<mqtt::Publish>(s->Recv()).size() == 1);
}

TEST_CASE("cluster: $SYS statistics are the sum of every worker's report") {
  TwoWorkers t;
  auto a = t.Connected(0, "a");
  auto b = t.Connected(1, "b");
  t.clock.Advance(250);
  for (auto& br : t.brokers) br->Tick();
  uint64_t sessions = 0;
  BrokerStats sum = t.cluster.Sum(&sessions);
  CHECK(sum.clients_connected == 2);
  CHECK(sessions == 2);
  CHECK(sum.connections_accepted == 2);
}

}  // namespace
}  // namespace fmq

// Certificate expiry on a fake clock over an in-memory store: the expiry
// index kept by PutCert (revocation leaves it), notices exactly once at
// `notice` before each expiry (audit entry and event), driven by the next due
// time rather than by scans, surviving a restart; certificates sharing an
// expiry kept together past the turn's budget; a short-lived certificate
// issued behind the cursor noticed at once; the index filled once for
// certificates stored before it; cert.expiring's listing and the histogram.
#include <doctest/doctest.h>

#include "common/clock.h"
#include "mgmt/certs/expiry.h"
#include "storage/keys.h"
#include "storage/records.h"
#include "storage/registry.h"

namespace fmq::certs {
namespace {

using storage::TenantId;
constexpr int64_t kDay = 86'400'000;

struct Rig {
  FakeClock clock;
  storage::MemKvStore kv;
  storage::Registry reg{&kv};
  const TenantId t = TenantId::FromAuthenticated("acme");
  Options o;
  std::unique_ptr<ExpiryFeature> f;
  mgmt::Output out;

  Rig() {
    storage::WriteBatch b;
    fb::TenantT rec;
    rec.tenant_id = "acme";
    reg.PutTenant(t, rec, &b);
    REQUIRE(reg.Commit(b).ok());
  }
  int64_t now() const { return clock.WallMs(); }
  void Cert(const std::string& serial, const std::string& dev, int64_t expires, bool revoked = false,
            bool indexed = true) {
    fb::CertificateT c;
    c.serial = serial;
    c.device_id = dev;
    c.issued_at_ms = now();
    c.expires_at_ms = expires;
    c.revoked_at_ms = revoked ? now() : 0;
    storage::WriteBatch b;
    if (indexed) {
      reg.PutCert(t, c, &b);
    } else {  // as stored before the index existed
      b.Put(storage::Family::kCerts, storage::keys::Cert(t, serial), storage::EncodeRecord<fb::Certificate>(c));
    }
    REQUIRE(reg.Commit(b).ok());
  }
  void Start() {
    f = std::make_unique<ExpiryFeature>(&kv, &reg, &clock, o);
    REQUIRE(f->Recover().ok());
  }
  int64_t Turn() {
    const int64_t next = f->Pump();
    REQUIRE(f->Commit(&out).ok());
    return next;
  }
  std::vector<std::string> Noticed() {  // serials of the events since the last call
    std::vector<std::string> v;
    for (const auto& e : out.events) {
      CHECK(e.topic == "$SYS/fleetmq/events/v1/certs/expiring");
      v.push_back(Json::parse(e.payload)["serial"]);
    }
    out.events.clear();
    std::sort(v.begin(), v.end());
    return v;
  }
  size_t Audited(const std::string& dev) {
    storage::Page<fb::AuditEntryT> page;
    REQUIRE(reg.AuditOfDevice(t, dev, "", 100, &page).ok());
    size_t n = 0;
    for (const auto& e : page.items) n += e.action == "cert.expiring";
    return n;
  }
};

TEST_CASE("certs: a notice once per certificate at 30 days before expiry, by due time, across restarts") {
  Rig w;
  const int64_t t0 = w.now();
  w.Cert("a", "d1", t0 + 10 * kDay);
  w.Cert("b", "d2", t0 + 40 * kDay);
  w.Cert("b2", "d3", t0 + 40 * kDay);
  w.Cert("gone", "d4", t0 + 5 * kDay, /*revoked=*/true);
  w.Cert("late", "d5", t0 + 400 * kDay);
  w.Start();
  const int64_t next = w.Turn();
  CHECK(w.Noticed() == std::vector<std::string>{"a"});
  CHECK(w.Audited("d1") == 1);
  CHECK(w.Audited("d4") == 0);    // revoked: no notice
  CHECK(next == t0 + 10 * kDay);  // b's notice time, not a polling interval
  w.Turn();
  CHECK(w.Noticed().empty());
  w.Start();  // a restart: the cursor is stored, nothing twice
  w.Turn();
  CHECK(w.Noticed().empty());
  w.clock.Advance(10 * kDay);
  w.Turn();
  CHECK(w.Noticed() == std::vector<std::string>{"b", "b2"});
  CHECK(w.Audited("d1") == 1);
  // A revoked certificate leaves the index: its notice never comes.
  storage::WriteBatch b;
  REQUIRE(w.reg.RevokeCert(w.t, "late", w.now(), &b).ok());
  REQUIRE(w.reg.Commit(b).ok());
  w.clock.Advance(400 * kDay);
  w.Turn();
  CHECK(w.Noticed().empty());
  uint64_t n = 0;
  w.f->Counters([&](const char* name, uint64_t v) {
    if (std::string(name) == "certs/expiry_notices") n = v;
  });
  CHECK(n == 2);  // counted since the restart (b, b2)
  uint64_t entries = 0;
  CHECK(w.reg.VerifyAudit(w.t, &entries).ok());  // the notices are in the tenant's chain
  CHECK(entries == 3);
}

TEST_CASE("certs: one expiry is never split by the turn's budget; the rest goes out next turn") {
  Rig w;
  w.o.notices_per_turn = 2;
  const int64_t t0 = w.now();
  for (const char* s : {"x1", "x2", "x3"}) w.Cert(s, std::string("d-") + s, t0 + 20 * kDay);  // one expiry
  w.Cert("y", "d-y", t0 + 21 * kDay);
  w.Cert("z", "d-z", t0 + 22 * kDay);
  w.Start();
  w.Turn();
  CHECK(w.Noticed() == std::vector<std::string>{"x1", "x2", "x3"});
  w.Turn();
  CHECK(w.Noticed() == std::vector<std::string>{"y", "z"});
  w.Turn();
  CHECK(w.Noticed().empty());
}

TEST_CASE("certs: a short-lived certificate issued behind the cursor is noticed at once") {
  Rig w;
  const int64_t t0 = w.now();
  w.Cert("long", "d1", t0 + 29 * kDay);
  w.Start();
  w.Turn();
  CHECK(w.Noticed() == std::vector<std::string>{"long"});  // cursor at t0 + 29 d
  w.Cert("short", "d2", t0 + 3 * kDay);
  w.f->OnIssued("acme", "short", "d2", t0 + 3 * kDay);
  w.Cert("far", "d3", t0 + 90 * kDay);
  w.f->OnIssued("acme", "far", "d3", t0 + 90 * kDay);
  const int64_t next = w.Turn();
  CHECK(w.Noticed() == std::vector<std::string>{"short"});
  CHECK(next == t0 + 60 * kDay);
  w.clock.Advance(60 * kDay);
  w.Turn();
  CHECK(w.Noticed() == std::vector<std::string>{"far"});
}

TEST_CASE("certs: certificates stored before the index are indexed once; listing and histogram") {
  Rig w;
  const int64_t t0 = w.now();
  w.Cert("old1", "d1", t0 + 2 * kDay, false, /*indexed=*/false);
  w.Cert("old2", "d2", t0 + 9 * kDay, false, false);
  w.Cert("oldr", "d3", t0 + 9 * kDay, /*revoked=*/true, false);
  w.Cert("new", "d4", t0 + 15 * kDay);
  w.Cert("past", "d5", t0 - kDay);
  w.Start();
  std::vector<ExpiryFeature::Entry> page;
  std::string next;
  REQUIRE(w.f->Expiring(w.t, 30 * kDay, "", 2, &page, &next).ok());
  REQUIRE(page.size() == 2);
  CHECK(page[0].serial == "old1");
  CHECK(page[0].device_id == "d1");
  CHECK(page[1].serial == "old2");
  CHECK(!next.empty());
  page.clear();
  REQUIRE(w.f->Expiring(w.t, 30 * kDay, next, 2, &page, &next).ok());
  REQUIRE(page.size() == 1);
  CHECK(page[0].serial == "new");
  CHECK(next.empty());
  page.clear();
  CHECK(!w.f->Expiring(w.t, 30 * kDay, "garbage", 2, &page, &next).ok());
  // Another tenant sees none of it.
  page.clear();
  REQUIRE(w.f->Expiring(TenantId::FromAuthenticated("beta"), 30 * kDay, "", 10, &page, &next).ok());
  CHECK(page.empty());
  std::vector<uint64_t> weeks;
  uint64_t expired = 0;
  REQUIRE(w.f->Histogram(w.t, 4, &weeks, &expired).ok());
  CHECK(weeks == std::vector<uint64_t>{1, 1, 1, 0});
  CHECK(expired == 1);
  // Indexed once: a second start does not fill it again.
  w.Start();
  w.Turn();
  CHECK(w.Noticed() == std::vector<std::string>{"new", "old1", "old2", "past"});
}

}  // namespace
}  // namespace fmq::certs

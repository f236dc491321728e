// Certificate renewal over MQTT (mgmt/certs/renewal.h) on a fake clock over
// an in-memory store, with a real tenant CA and real CSRs: the state machine
// (asked, delivered, CSR received, issued, new certificate seen, old one
// revoked after the grace — also across a restart), an issued certificate
// never used revoked when its attempt times out, CSRs nobody asked for or
// for another identity refused without issuing, and automatic renewal:
// a certificate inside its notice window enrols its device in the tenant's
// auto-renew job, and two years later the same device is taken again with
// its attempts numbered on.
#include "mgmt/certs/renewal.h"

#include <doctest/doctest.h>
#include <mbedtls/x509_csr.h>

#include <map>

#include "common/clock.h"
#include "mgmt/certs/expiry.h"
#include "storage/registry.h"

namespace fmq::certs {
namespace {

using jobs::ExecState;
using storage::TenantId;
constexpr int64_t kDay = 86'400'000;

std::string Csr(pki::Rng& rng, const std::string& subject, pki::Key* with = nullptr) {
  auto made = pki::Key::Generate(rng);
  REQUIRE(made.ok());
  pki::Key* key = with != nullptr ? with : &*made;
  mbedtls_x509write_csr req;
  mbedtls_x509write_csr_init(&req);
  mbedtls_x509write_csr_set_md_alg(&req, MBEDTLS_MD_SHA256);
  mbedtls_x509write_csr_set_key(&req, key->pk());
  REQUIRE(mbedtls_x509write_csr_set_subject_name(&req, subject.c_str()) == 0);
  unsigned char buf[4096];
  REQUIRE(mbedtls_x509write_csr_pem(&req, buf, sizeof buf, pki::Rng::Fill, &rng) == 0);
  mbedtls_x509write_csr_free(&req);
  return reinterpret_cast<const char*>(buf);
}

struct Rig {
  FakeClock clock{1'700'000'000'000 - FakeClock::kWallOffset};
  storage::MemKvStore kv;
  storage::Registry reg{&kv};
  const TenantId t = TenantId::FromAuthenticated("acme");
  pki::Rng rng;
  std::unique_ptr<pki::CertificateAuthority> root, ca;
  std::map<std::string, std::string> online;  // device → serial of its connection
  RenewalOptions ro;
  Options eo;
  std::unique_ptr<jobs::JobEngine> engine;
  std::unique_ptr<ExpiryFeature> expiry;
  std::unique_ptr<RenewalFeature> renewal;
  mgmt::Output out;

  Rig() {
    ro.grace_ms = 10'000;
    ro.auto_rate_per_s = 0;
    auto r = pki::CertificateAuthority::CreateRoot(rng, "root", clock.WallMs() - kDay);
    REQUIRE(r.ok());
    root = std::make_unique<pki::CertificateAuthority>(std::move(*r));
    auto c = root->CreateTenantCa(rng, "acme", clock.WallMs() - kDay);
    REQUIRE(c.ok());
    ca = std::make_unique<pki::CertificateAuthority>(std::move(*c));
    storage::WriteBatch b;
    fb::TenantT tr;
    tr.tenant_id = "acme";
    reg.PutTenant(t, tr, &b);
    REQUIRE(reg.Commit(b).ok());
  }
  int64_t now() const { return clock.WallMs(); }
  // A device with a certificate (serial, expiry) as its current one.
  void Device(const std::string& id, const std::string& serial, int64_t expires) {
    storage::WriteBatch b;
    fb::DeviceT d;
    d.device_id = id;
    d.tenant_id = "acme";
    d.status = fb::DeviceStatus::Active;
    d.cert_serial = serial;
    REQUIRE(reg.PutDevice(t, d, &b).ok());
    fb::CertificateT c;
    c.serial = serial;
    c.device_id = id;
    c.issued_at_ms = now();
    c.expires_at_ms = expires;
    reg.PutCert(t, c, &b);
    REQUIRE(reg.Commit(b).ok());
  }
  void Start() {
    jobs::Host h;
    h.online = [this](const std::string&, std::string_view d) { return online.count(std::string(d)) > 0; };
    engine = std::make_unique<jobs::JobEngine>(&kv, &reg, &clock, h);
    expiry = std::make_unique<ExpiryFeature>(&kv, &reg, &clock, eo);
    RenewalHost rh;
    rh.issue = [this](const std::string& tenant, const std::string& device,
                      std::string_view csr) -> absl::StatusOr<Issued> {
      auto c = ca->IssueFromCsr(rng, csr, pki::Subject{tenant, device, pki::Role::kDevice}, now());
      if (!c.ok()) return absl::InvalidArgumentError(std::string(c.status().message()));
      return Issued{std::move(*c), ca->cert().pem + root->cert().pem};
    };
    rh.serial_of = [this](const std::string&, const std::string& d) {
      auto it = online.find(d);
      return it == online.end() ? std::string() : it->second;
    };
    rh.issued = [this](const std::string& tn, const std::string& s, const std::string& d, int64_t e) {
      expiry->OnIssued(tn, s, d, e);
    };
    ro.notice_ms = eo.notice_ms;
    renewal = std::make_unique<RenewalFeature>(&kv, &reg, &clock, engine.get(), rh, ro);
    expiry->SetNoticeListener([this](const std::string& tn, const std::string& s, const std::string& d, int64_t e) {
      renewal->OnNotice(tn, s, d, e);
    });
    REQUIRE(engine->Recover().ok());
    REQUIRE(expiry->Recover().ok());
    REQUIRE(renewal->Recover().ok());
  }
  void Turn() {
    for (mgmt::Feature* f : {static_cast<mgmt::Feature*>(engine.get()), static_cast<mgmt::Feature*>(expiry.get()),
                             static_cast<mgmt::Feature*>(renewal.get())}) {
      f->Pump();
      REQUIRE(f->Commit(&out).ok());
    }
  }
  void Job(const std::string& id, const std::vector<std::string>& devices, int64_t in_progress_ms = 600'000) {
    jobs::JobEngine::NewJob nj;
    nj.job_id = id;
    nj.type = fb::JobType::Renew;
    nj.target.device_ids = devices;
    nj.spec.in_progress_timeout_ms = in_progress_ms;
    storage::WriteBatch b;
    fb::JobT rec;
    REQUIRE(engine->Create(t, nj, &b, &rec).ok());
    REQUIRE(reg.Commit(b).ok());
    engine->Activate(t, rec);
  }
  // The messages sent on `suffix` since the last call (bodies), and their tokens.
  std::vector<Json> Sent(const std::string& suffix, std::vector<uint64_t>* tokens = nullptr) {
    std::vector<Json> v;
    std::vector<mgmt::DeviceSend> rest;
    for (auto& s : out.sends) {
      if (s.suffix == suffix) {
        v.push_back(Json::parse(s.payload));
        if (tokens) tokens->push_back(s.token);
      } else {
        rest.push_back(std::move(s));
      }
    }
    out.sends = std::move(rest);
    return v;
  }
  void Answer(const std::string& device, const std::string& job, uint32_t attempt, const std::string& csr) {
    mgmt::DeviceMessage m;
    m.tenant = "acme";
    m.device_id = device;
    m.topic = "certs/csr";
    m.body = Json{{"job_id", job}, {"attempt", attempt}, {"csr", csr}};
    REQUIRE(renewal->Validate(m.topic, m.body).empty());
    renewal->OnDeviceMessage(m);
    Turn();
  }
  void Connect(const std::string& device, const std::string& serial) {
    online[device] = serial;
    for (mgmt::Feature* f : {static_cast<mgmt::Feature*>(engine.get()), static_cast<mgmt::Feature*>(renewal.get())}) {
      f->OnConnected("acme", device);
    }
    renewal->OnSubscribed("acme", device);
    Turn();
  }
  void Disconnect(const std::string& device) {
    online.erase(device);
    engine->OnDisconnected("acme", device);
    renewal->OnDisconnected("acme", device);
  }
  fb::JobDeviceT Exec(const std::string& job, const std::string& device) {
    fb::JobDeviceT e;
    REQUIRE(reg.GetJobDevice(t, job, device, &e).ok());
    return e;
  }
  int64_t Revoked(const std::string& serial) {
    fb::CertificateT c;
    REQUIRE(reg.GetCert(t, serial, &c).ok());
    return c.revoked_at_ms;
  }
};

TEST_CASE("renewal: asked, CSR, issued, used, and the old certificate revoked after the grace (also after a restart)") {
  Rig r;
  r.Device("d1", "a1", r.now() + 400 * kDay);
  r.Start();
  r.Connect("d1", "a1");
  r.Job("rn", {"d1"});
  r.Turn();
  std::vector<uint64_t> tokens;
  auto asked = r.Sent("certs/renew", &tokens);
  REQUIRE(asked.size() == 1);
  CHECK(asked[0]["attempt"] == 1);
  CHECK(asked[0]["serial"] == "a1");
  CHECK(asked[0]["expires_at_ms"] == r.now() + 400 * kDay);
  r.renewal->OnOutcome(tokens[0], true, "");
  r.Turn();
  CHECK((*r.engine->Describe(r.t, "rn"))["counts"]["DELIVERED"] == 1);

  r.Answer("d1", "rn", 1, Csr(r.rng, "CN=d1"));
  auto acc = r.Sent("certs/csr/accepted");
  REQUIRE(acc.size() == 1);
  const std::string fresh = acc[0]["serial"];
  CHECK(acc[0]["certificate_pem"].get<std::string>().find("BEGIN CERTIFICATE") != std::string::npos);
  CHECK(acc[0]["ca_chain_pem"].get<std::string>() == r.ca->cert().pem + r.root->cert().pem);
  CHECK(r.Exec("rn", "d1").state == ExecState::InProgress);
  CHECK(r.Revoked(fresh) == 0);
  // A second CSR for the attempt: refused, nothing more issued.
  r.Answer("d1", "rn", 1, Csr(r.rng, "CN=d1"));
  auto rej = r.Sent("certs/csr/rejected");
  REQUIRE(rej.size() == 1);
  CHECK(rej[0]["error"]["code"] == "already_issued");
  CHECK(r.renewal->stats().issued == 1);

  // Back with the old certificate: still waiting; with the new one: done.
  r.Disconnect("d1");
  r.Connect("d1", "a1");
  CHECK(r.Exec("rn", "d1").state == ExecState::InProgress);
  r.Disconnect("d1");
  r.Connect("d1", fresh);
  const auto e = r.Exec("rn", "d1");
  CHECK(e.state == ExecState::Succeeded);
  CHECK(Json::parse(e.detail)["replaced"] == "a1");
  fb::DeviceT d;
  REQUIRE(r.reg.GetDevice(r.t, "d1", &d).ok());
  CHECK(d.cert_serial == fresh);
  // The grace: 10 s. A restart in between keeps the revocation due.
  r.clock.Advance(5'000);
  r.Turn();
  CHECK(r.Revoked("a1") == 0);
  r.Start();
  r.clock.Advance(6'000);
  r.Turn();
  CHECK(r.Revoked("a1") != 0);
  CHECK(r.Revoked(fresh) == 0);
  REQUIRE(r.out.revoked.size() == 1);
  CHECK(r.out.revoked[0] == std::make_pair(std::string("acme"), std::string("a1")));
  // The transparency log: issued a1, issued fresh, revoked a1.
  std::vector<std::string> log;
  std::string next;
  REQUIRE(r.reg.CertLogPage(r.t, "", 10, &log, &next).ok());
  REQUIRE(log.size() == 3);
  CHECK(Json::parse(log[2])["event"] == "revoked");
  CHECK(Json::parse(log[2])["serial"] == "a1");
  for (const std::string& l : log) {
    const Json e = Json::parse(l);
    if (e["serial"] == fresh) CHECK(e["sha256"].get<std::string>().size() == 64);
  }
}

TEST_CASE("renewal: an issued certificate the device never uses is revoked when the attempt times out") {
  Rig r;
  r.Device("d1", "a1", r.now() + 400 * kDay);
  r.Start();
  r.Connect("d1", "a1");
  r.Job("rn", {"d1"}, 5'000);
  r.Turn();
  REQUIRE(r.Sent("certs/renew").size() == 1);
  r.Answer("d1", "rn", 1, Csr(r.rng, "CN=d1"));
  const std::string fresh = r.Sent("certs/csr/accepted").at(0)["serial"];
  r.clock.Advance(6'000);
  r.Turn();
  r.Turn();
  CHECK(r.Exec("rn", "d1").state == ExecState::TimedOut);
  CHECK(r.Revoked(fresh) != 0);
  CHECK(r.Revoked("a1") == 0);  // the device keeps the certificate it has
  CHECK(r.renewal->stats().unused_revoked == 1);
}

TEST_CASE("renewal: CSRs nobody asked for, of another attempt or another identity issue nothing") {
  Rig r;
  r.Device("d1", "a1", r.now() + 400 * kDay);
  r.Device("d2", "a2", r.now() + 400 * kDay);
  r.Start();
  r.Connect("d1", "a1");
  r.Connect("d2", "a2");
  r.Answer("d2", "rn", 1, Csr(r.rng, "CN=d2"));  // not asked
  CHECK(r.Sent("certs/csr/rejected").at(0)["error"]["code"] == "not_requested");
  r.Job("rn", {"d1"});
  r.Turn();
  REQUIRE(r.Sent("certs/renew").size() == 1);
  r.Answer("d2", "rn", 1, Csr(r.rng, "CN=d2"));  // asked of d1, not of d2
  CHECK(r.Sent("certs/csr/rejected").at(0)["error"]["code"] == "not_requested");
  r.Answer("d1", "rn", 2, Csr(r.rng, "CN=d1"));  // another attempt
  CHECK(r.Sent("certs/csr/rejected").at(0)["error"]["code"] == "not_requested");
  r.Answer("d1", "rn", 1, Csr(r.rng, "CN=d2"));  // another device's name: the attempt fails
  CHECK(r.Sent("certs/csr/rejected").at(0)["error"]["code"] == "bad_csr");
  CHECK(r.Exec("rn", "d1").state == ExecState::Failed);
  CHECK(r.renewal->stats().issued == 0);
  CHECK(r.renewal->stats().csr_refused == 4);
  CHECK(r.renewal->stats().csr_invalid == 1);
  std::vector<fb::CertificateT> certs;
  REQUIRE(r.reg.CertsOfDevice(r.t, "d1", &certs).ok());
  CHECK(certs.size() == 1);
  // Schema: one of csr and error; sizes bounded.
  CHECK(!r.renewal->Validate("certs/csr", Json{{"job_id", "rn"}, {"attempt", 1u}}).empty());
  CHECK(!r.renewal->Validate("certs/csr", Json{{"job_id", "rn"}, {"attempt", 1u}, {"csr", std::string(5000, 'A')}})
             .empty());
  CHECK(!r.renewal->Validate("certs/csr", Json{{"job_id", "rn"}, {"attempt", 0u}, {"csr", "x"}}).empty());
  CHECK(r.renewal->Validate("certs/csr", Json{{"job_id", "rn"}, {"attempt", 1u}, {"error", "no entropy"}}).empty());
}

TEST_CASE("renewal: a CSR for the key of the certificate being replaced is refused") {
  Rig r;
  auto key = pki::Key::Generate(r.rng);
  REQUIRE(key.ok());
  auto cur =
      r.ca->IssueFromCsr(r.rng, Csr(r.rng, "CN=d1", &*key), pki::Subject{"acme", "d1", pki::Role::kDevice}, r.now());
  REQUIRE(cur.ok());
  {
    storage::WriteBatch b;
    fb::DeviceT d;
    d.device_id = "d1";
    d.tenant_id = "acme";
    d.status = fb::DeviceStatus::Active;
    d.cert_serial = cur->serial;
    REQUIRE(r.reg.PutDevice(r.t, d, &b).ok());
    fb::CertificateT c;
    c.serial = cur->serial;
    c.device_id = "d1";
    c.issued_at_ms = cur->not_before_ms;
    c.expires_at_ms = cur->not_after_ms;
    c.der.assign(cur->der.begin(), cur->der.end());
    r.reg.PutCert(r.t, c, &b);
    REQUIRE(r.reg.Commit(b).ok());
  }
  r.Start();
  r.Connect("d1", cur->serial);
  r.Job("rn", {"d1"});
  r.Turn();
  REQUIRE(r.Sent("certs/renew").size() == 1);
  r.Answer("d1", "rn", 1, Csr(r.rng, "CN=d1", &*key));
  CHECK(r.Sent("certs/csr/rejected").at(0)["error"]["code"] == "key_reused");
  CHECK(r.Sent("certs/csr/accepted").empty());
  CHECK(r.Exec("rn", "d1").state == ExecState::Failed);
  std::vector<fb::CertificateT> certs;
  REQUIRE(r.reg.CertsOfDevice(r.t, "d1", &certs).ok());
  CHECK(certs.size() == 1);
}

TEST_CASE("renewal: automatic, from the notice window, offline devices when they connect, and again years later") {
  Rig r;
  r.Device("d1", "a1", r.now() + 10 * kDay);   // inside the 30-day window
  r.Device("d2", "a2", r.now() + 720 * kDay);  // not yet
  r.Start();
  for (int i = 0; i < 4; ++i) r.Turn();  // notice, auto-renew job created, d1 enrolled
  fb::JobT job;
  REQUIRE(r.reg.GetJob(r.t, kAutoRenewJob, &job).ok());
  CHECK(job.type == fb::JobType::Renew);
  CHECK(r.renewal->stats().enrolled == 1);
  CHECK(r.Sent("certs/renew").empty());  // offline: waits
  r.Connect("d1", "a1");
  r.Turn();
  auto asked = r.Sent("certs/renew");
  REQUIRE(asked.size() == 1);
  CHECK(asked[0]["job_id"] == kAutoRenewJob);
  r.Answer("d1", kAutoRenewJob, asked[0]["attempt"], Csr(r.rng, "CN=d1"));
  const std::string fresh = r.Sent("certs/csr/accepted").at(0)["serial"];
  r.Disconnect("d1");
  r.Connect("d1", fresh);
  CHECK(r.Exec(kAutoRenewJob, "d1").state == ExecState::Succeeded);
  // The new certificate is good for 730 days: at its notice, taken again
  // (attempt 2); d2's certificate comes due on the way and is enrolled too.
  r.Connect("d2", "a2");
  r.Turn();
  CHECK(r.Sent("certs/renew").empty());
  r.clock.Advance(705 * kDay);
  for (int i = 0; i < 4; ++i) r.Turn();
  asked = r.Sent("certs/renew");
  REQUIRE(asked.size() == 2);
  for (const Json& a : asked) {
    if (a["serial"] == fresh) CHECK(a["attempt"] == 2);
    if (a["serial"] == "a2") CHECK(a["attempt"] == 1);
  }
  CHECK(r.renewal->stats().enrolled == 3);
}

}  // namespace
}  // namespace fmq::certs

// Firmware: manifest signing and its check as a device does it (the right
// tenant's signer under the root; another tenant's, a changed byte, a
// non-signer certificate refused), the upload (chunk order and size, hash
// checked at the end, a mismatch leaving nothing), and the block server's
// bounds (only the image offered to the device, clipped at its end, budgets)
// over an in-memory store with the job engine on a fake clock.
#include <doctest/doctest.h>
#include <mbedtls/sha256.h>

#include <ctime>
#include <set>

#include "common/clock.h"
#include "common/hex.h"
#include "mgmt/jobs/job_engine.h"
#include "mgmt/ota/ota_feature.h"
#include "mgmt/pki/pki.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace fmq::ota {
namespace {

using storage::TenantId;

std::string Bytes(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + i / 7) & 0xff);
  return s;
}

std::string Sha(const std::string& s) {
  unsigned char d[32];
  mbedtls_sha256_ret(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d, 0);
  const std::string hex = HexOf(d, sizeof d);
  return hex;
}

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)) * 1000; }

// A platform root, two tenant CAs and each tenant's signer.
struct Pki {
  pki::Rng rng;
  std::unique_ptr<pki::CertificateAuthority> root, acme, other;
  pki::Signer acme_signer, other_signer;
  mbedtls_x509_crt trust;
  Pki() {
    mbedtls_x509_crt_init(&trust);
    auto r = pki::CertificateAuthority::CreateRoot(rng, "root", Now());
    REQUIRE(r.ok());
    root = std::make_unique<pki::CertificateAuthority>(std::move(*r));
    for (auto [name, ca, signer] :
         {std::tuple{"acme", &acme, &acme_signer}, std::tuple{"other", &other, &other_signer}}) {
      auto c = root->CreateTenantCa(rng, name, Now());
      REQUIRE(c.ok());
      *ca = std::make_unique<pki::CertificateAuthority>(std::move(*c));
      std::string key;
      auto cert = (*ca)->IssueWithNewKey(rng, pki::Subject{name, "firmware-signer", pki::Role::kSigner}, Now(),
                                         365 * pki::kDay, &key);
      REQUIRE(cert.ok());
      signer->chain_pem = cert->pem + (*ca)->cert().pem;
      signer->key_pem = key;
    }
    const std::string pem = root->cert().pem;
    REQUIRE(mbedtls_x509_crt_parse(&trust, reinterpret_cast<const unsigned char*>(pem.c_str()), pem.size() + 1) == 0);
  }
  ~Pki() { mbedtls_x509_crt_free(&trust); }
};

TEST_CASE("ota: a manifest verifies only with its tenant's signer, unchanged") {
  Pki p;
  auto key = pki::Key::FromPem(p.acme_signer.key_pem);
  REQUIRE(key.ok());
  const std::string manifest = R"({"model":"m","sha256":"ab","size":1,"tenant":"acme","version":"2"})";
  auto sig = pki::SignData(p.rng, *key, manifest);
  REQUIRE(sig.ok());
  CHECK(pki::VerifySigned(&p.trust, p.acme_signer.chain_pem, "acme", manifest, *sig).ok());
  // A device of another tenant refuses it, though both chain to the same root.
  CHECK(absl::IsPermissionDenied(pki::VerifySigned(&p.trust, p.acme_signer.chain_pem, "other", manifest, *sig)));
  // A changed byte, another signature, another tenant's signer for acme's claim.
  std::string changed = manifest;
  changed[10] ^= 1;
  CHECK(!pki::VerifySigned(&p.trust, p.acme_signer.chain_pem, "acme", changed, *sig).ok());
  std::string flipped = *sig;
  flipped[flipped.size() / 2] ^= 0x40;
  CHECK(!pki::VerifySigned(&p.trust, p.acme_signer.chain_pem, "acme", manifest, flipped).ok());
  CHECK(!pki::VerifySigned(&p.trust, p.other_signer.chain_pem, "acme", manifest, *sig).ok());
  // A device certificate of the tenant is not a signer, even with a valid signature by its key.
  std::string dkey;
  auto dev = p.acme->IssueWithNewKey(p.rng, pki::Subject{"acme", "dev1", pki::Role::kDevice}, Now(), pki::kDay, &dkey);
  REQUIRE(dev.ok());
  auto k2 = pki::Key::FromPem(dkey);
  REQUIRE(k2.ok());
  auto sig2 = pki::SignData(p.rng, *k2, manifest);
  REQUIRE(sig2.ok());
  CHECK(absl::IsPermissionDenied(pki::VerifySigned(&p.trust, dev->pem + p.acme->cert().pem, "acme", manifest, *sig2)));
  // Garbage chains and signatures are errors, not crashes.
  CHECK(!pki::VerifySigned(&p.trust, "not pem", "acme", manifest, *sig).ok());
  CHECK(!pki::VerifySigned(&p.trust, p.acme_signer.chain_pem, "acme", manifest, "").ok());
  CHECK(pki::RoleName(pki::Role::kSigner) == "signer");
}

struct Rig {
  FakeClock clock;
  storage::MemKvStore kv;
  storage::Registry reg{&kv};
  std::set<std::string> online;
  Pki pki;
  std::unique_ptr<jobs::JobEngine> engine;
  std::unique_ptr<OtaFeature> ota;
  mgmt::Output out;
  const TenantId t = TenantId::FromAuthenticated("acme");
  Options opts;

  Rig() {
    opts.chunk_bytes = 1000;
    opts.max_block_bytes = 700;
    opts.device_bytes_per_s = 5000;
    opts.tenant_bytes_per_s = 0;
    storage::WriteBatch b;
    fb::DeviceModelT m;
    m.model_id = "m";
    reg.PutModel(t, m, &b);
    for (int i = 0; i < 3; ++i) {
      fb::DeviceT d;
      d.device_id = "d" + std::to_string(i);
      d.tenant_id = "acme";
      d.serial_number = "s" + std::to_string(i);
      d.model_id = i == 2 ? "other-model" : "m";
      d.firmware_version = "1.0";
      d.status = fb::DeviceStatus::Active;
      REQUIRE(reg.PutDevice(t, d, &b).ok());
      online.insert(d.device_id);
    }
    REQUIRE(reg.Commit(b).ok());
    jobs::Host h;
    h.online = [this](const std::string&, std::string_view d) { return online.contains(std::string(d)); };
    engine = std::make_unique<jobs::JobEngine>(&kv, &reg, &clock, h);
    ota = std::make_unique<OtaFeature>(
        &kv, &reg, &clock, engine.get(),
        [this](const std::string& tenant) -> absl::StatusOr<pki::Signer> {
          if (tenant != "acme") return absl::NotFoundError("no such tenant");
          return pki.acme_signer;
        },
        opts);
    engine->set_index(0);
    ota->set_index(1);
  }
  absl::Status Upload(const std::string& version, const std::string& data, const std::string& sha) {
    fb::FirmwareUploadT u;
    u.model_id = "m";
    u.version = version;
    u.size = data.size();
    u.sha256 = sha;
    storage::WriteBatch b;
    auto st = ota->BeginUpload(t, u, &b);
    if (!st.ok()) return st.status();
    if (absl::Status s = reg.Commit(b); !s.ok()) return s;
    for (size_t at = 0; at < data.size(); at += opts.chunk_bytes) {
      storage::WriteBatch c;
      auto p = ota->PutChunk(t, sha, at, std::string_view(data).substr(at, opts.chunk_bytes), &c);
      if (!p.ok()) return p.status();
      if (absl::Status s = reg.Commit(c); !s.ok()) return s;
    }
    storage::WriteBatch f;
    auto done = ota->FinishUpload(t, sha, "operator:op", clock.WallMs(), &f);
    if (!done.ok()) return done.status();
    return reg.Commit(f);
  }
  void Pump() {
    engine->Pump();
    REQUIRE(engine->Commit(&out).ok());
    ota->Pump();
    REQUIRE(ota->Commit(&out).ok());
  }
  std::vector<mgmt::WorkerReply> Block(const std::string& dev, const std::string& sha, uint64_t off, uint64_t len) {
    mgmt::DeviceMessage m;
    m.tenant = "acme";
    m.device_id = dev;
    m.topic = "ota/block";
    m.body = Json{{"sha256", sha}, {"offset", off}, {"length", len}};
    REQUIRE(ota->Validate(m.topic, m.body).empty());
    std::vector<mgmt::WorkerReply> r;
    REQUIRE(ota->Serve(m, &r));
    REQUIRE(r.size() == 1);
    return r;
  }
  std::string Code(const mgmt::WorkerReply& r) {
    REQUIRE(r.suffix == "ota/block/rejected");
    return Json::parse(r.payload)["error"]["code"];
  }
};

TEST_CASE("ota: uploads take chunks in order and of their size; a wrong hash leaves nothing") {
  Rig w;
  const std::string data = Bytes(4500);
  const std::string wrong = Sha("something else");
  absl::Status s = w.Upload("2.0", data, wrong);
  CHECK(absl::IsInvalidArgument(s));
  CHECK(std::string(s.message()).find("discarded") != std::string::npos);
  size_t left = 0;
  REQUIRE(w.kv.ScanPrefix(storage::Family::kFirmwareChunks, "",
                          [&](std::string_view, std::string_view) {
                            ++left;
                            return true;
                          })
              .ok());
  CHECK(left == 0);
  REQUIRE(w.kv.ScanPrefix(storage::Family::kFirmware, "",
                          [&](std::string_view, std::string_view) {
                            ++left;
                            return true;
                          })
              .ok());
  CHECK(left == 0);
  // Out of order and wrongly sized chunks are refused.
  fb::FirmwareUploadT u;
  u.model_id = "m";
  u.version = "2.0";
  u.size = data.size();
  u.sha256 = Sha(data);
  storage::WriteBatch b;
  REQUIRE(w.ota->BeginUpload(w.t, u, &b).ok());
  REQUIRE(w.reg.Commit(b).ok());
  storage::WriteBatch c;
  CHECK(absl::IsFailedPrecondition(w.ota->PutChunk(w.t, u.sha256, 1000, data.substr(1000, 1000), &c).status()));
  CHECK(absl::IsInvalidArgument(w.ota->PutChunk(w.t, u.sha256, 0, data.substr(0, 999), &c).status()));
  CHECK(absl::IsNotFound(w.ota->PutChunk(w.t, Sha("x"), 0, data.substr(0, 1000), &c).status()));
  // Over the size limit, a bad hash string.
  u.size = w.opts.max_artifact_bytes + 1;
  CHECK(absl::IsInvalidArgument(w.ota->BeginUpload(w.t, u, &b).status()));
  u.size = 10;
  u.sha256 = "ABC";
  CHECK(absl::IsInvalidArgument(w.ota->BeginUpload(w.t, u, &b).status()));
}

TEST_CASE("ota: blocks only of the offered image, within its size and the device's budget") {
  Rig w;
  const std::string data = Bytes(4500);
  const std::string sha = Sha(data);
  REQUIRE(w.Upload("2.0", data, sha).ok());
  auto art = w.ota->Get(w.t, "m", "2.0");
  REQUIRE(art.ok());
  CHECK(art->rec.manifest.find("\"sha256\":\"" + sha + "\"") != std::string::npos);
  // Nothing offered yet.
  CHECK(w.Code(w.Block("d0", sha, 0, 100)[0]) == "not_assigned");
  // A campaign for d0 and d1 (d2 is another model: refused at start).
  jobs::JobEngine::NewJob j;
  j.job_id = "c1";
  j.type = fb::JobType::Ota;
  j.document_json = Json{{"model_id", "m"}, {"version", "2.0"}}.dump();
  j.target.device_ids = {"d0", "d1", "d2"};
  storage::WriteBatch b;
  fb::JobT rec;
  REQUIRE(w.engine->Create(w.t, j, &b, &rec).ok());
  REQUIRE(w.reg.Commit(b).ok());
  w.engine->Activate(w.t, rec);
  w.Pump();
  size_t offers = 0;
  for (const auto& s : w.out.sends) offers += s.suffix == "ota/notify";
  CHECK(offers == 2);
  CHECK(w.engine->Describe(w.t, "c1")->at("counts")["REJECTED"] == 1);
  // Crossing a chunk boundary, clipped at the end, past the end.
  auto r = w.Block("d0", sha, 900, 300);
  CHECK(r[0].suffix == "ota/data/900");
  CHECK(r[0].binary);
  CHECK(r[0].payload == data.substr(900, 300));
  r = w.Block("d0", sha, 4300, 700);
  CHECK(r[0].payload == data.substr(4300));
  CHECK(w.Code(w.Block("d0", sha, 4500, 1)[0]) == "out_of_range");
  CHECK(w.Code(w.Block("d0", Sha("another"), 0, 10)[0]) == "not_assigned");
  // Validation bounds: the length at most max_block_bytes, known fields only.
  CHECK(!w.ota->Validate("ota/block", Json{{"sha256", sha}, {"offset", 0}, {"length", 701}}).empty());
  CHECK(!w.ota->Validate("ota/block", Json{{"sha256", sha}, {"offset", -1}, {"length", 1}}).empty());
  CHECK(!w.ota->Validate("ota/block", Json{{"sha256", sha}, {"offset", 0}}).empty());
  CHECK(!w.ota->Validate("ota/report", Json{{"job_id", "c1"}, {"attempt", 1}, {"phase", "done"}}).empty());
  CHECK(!w.ota->Validate("ota/version", Json{{"version", std::string(65, 'v')}}).empty());
  // The device's budget (5000 B/s, 1 s of burst): over it, busy with a time to come back.
  uint64_t served = 0;
  std::string busy;
  for (int i = 0; i < 20 && busy.empty(); ++i) {
    auto x = w.Block("d1", sha, 0, 700);
    if (x[0].suffix == "ota/block/rejected") {
      busy = w.Code(x[0]);
      CHECK(Json::parse(x[0].payload)["retry_after_ms"].get<int64_t>() > 0);
    } else {
      served += x[0].payload.size();
    }
  }
  CHECK(busy == "busy");
  CHECK(served <= 5000);
  w.clock.Advance(1000);
  CHECK(w.Block("d1", sha, 0, 700)[0].suffix == "ota/data/0");
  // A corrupt chunk on disk: refused (unavailable, counted), never served.
  w.kv.Poke(storage::Family::kFirmwareChunks, storage::keys::FirmwareChunk(w.t, sha, 2), "garbage!");
  CHECK(w.Code(w.Block("d0", sha, 2000, 10)[0]) == "unavailable");
  CHECK(w.ota->block_stats().corrupt.load() == 1);
  // The device reports the new version: SUCCEEDED; its assignment is gone.
  mgmt::DeviceMessage v;
  v.tenant = "acme";
  v.device_id = "d0";
  v.topic = "ota/version";
  v.body = Json{{"version", "2.0"}};
  w.ota->OnDeviceMessage(v);
  w.Pump();
  CHECK(w.engine->Describe(w.t, "c1")->at("counts")["SUCCEEDED"] == 1);
  CHECK(w.Code(w.Block("d0", sha, 0, 10)[0]) == "not_assigned");
  fb::DeviceT d;
  REQUIRE(w.reg.GetDevice(w.t, "d0", &d).ok());
  CHECK(d.firmware_version == "2.0");
  // Deleting the artifact is refused while the campaign runs.
  storage::WriteBatch del;
  CHECK(absl::IsFailedPrecondition(w.ota->Delete(w.t, "m", "2.0", &del)));
}

}  // namespace
}  // namespace fmq::ota

// libFuzzer target: what a device sends the firmware feature (mgmt/ota) and
// what a device parses from an offer. The input is a topic selector byte, a
// JSON text, a NUL, and a PEM chain text. The JSON goes through the schema
// of ota/block, ota/report or ota/version; a valid block request is served
// (the device "d0" has an image offered, so offsets and lengths reach the
// store reads), a valid report or version goes to the feature and its
// commit. The chain goes through the device's manifest check
// (pki::VerifySigned) with the same bytes as signature. Nothing may crash;
// served bytes must be within the image.
#include <mbedtls/sha256.h>

#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <string>

#include "common/clock.h"
#include "mgmt/jobs/job_engine.h"
#include "mgmt/ota/ota_feature.h"
#include "mgmt/pki/pki.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace {

using fmq::ota::Json;
namespace fb = fmq::fb;
namespace storage = fmq::storage;

struct World {
  fmq::FakeClock clock;
  storage::MemKvStore kv;
  storage::Registry reg{&kv};
  fmq::pki::Rng rng;
  std::unique_ptr<fmq::pki::CertificateAuthority> root, ca;
  fmq::pki::Signer signer;
  mbedtls_x509_crt trust;
  std::unique_ptr<fmq::jobs::JobEngine> engine;
  std::unique_ptr<fmq::ota::OtaFeature> ota;
  const storage::TenantId t = storage::TenantId::FromAuthenticated("acme");
  std::string image;

  World() {
    const int64_t now = static_cast<int64_t>(std::time(nullptr)) * 1000;
    mbedtls_x509_crt_init(&trust);
    root = std::make_unique<fmq::pki::CertificateAuthority>(
        std::move(*fmq::pki::CertificateAuthority::CreateRoot(rng, "root", now)));
    ca = std::make_unique<fmq::pki::CertificateAuthority>(std::move(*root->CreateTenantCa(rng, "acme", now)));
    auto cert = ca->IssueWithNewKey(rng, fmq::pki::Subject{"acme", "firmware-signer", fmq::pki::Role::kSigner}, now,
                                    fmq::pki::kDay, &signer.key_pem);
    signer.chain_pem = cert->pem + ca->cert().pem;
    const std::string pem = root->cert().pem;
    mbedtls_x509_crt_parse(&trust, reinterpret_cast<const unsigned char*>(pem.c_str()), pem.size() + 1);
    storage::WriteBatch b;
    fb::DeviceT d;
    d.device_id = "d0";
    d.tenant_id = "acme";
    d.serial_number = "s0";
    d.model_id = "m";
    d.firmware_version = "1";
    d.status = fb::DeviceStatus::Active;
    (void)reg.PutDevice(t, d, &b);
    (void)reg.Commit(b);
    fmq::jobs::Host h;
    h.online = [](const std::string&, std::string_view) { return true; };
    engine = std::make_unique<fmq::jobs::JobEngine>(&kv, &reg, &clock, h);
    fmq::ota::Options o;
    o.chunk_bytes = 512;
    o.max_block_bytes = 2048;
    o.device_bytes_per_s = 0;
    ota = std::make_unique<fmq::ota::OtaFeature>(
        &kv, &reg, &clock, engine.get(), [this](const std::string&) { return signer; }, o);
    ota->set_index(1);
    for (int i = 0; i < 3000; ++i) image.push_back(static_cast<char>(i * 7));
    // The image, uploaded, and a campaign offering it to d0.
    fb::FirmwareUploadT u;
    u.model_id = "m";
    u.version = "2";
    u.size = image.size();
    u.sha256 = Sha();
    storage::WriteBatch w;
    (void)ota->BeginUpload(t, u, &w);
    (void)reg.Commit(w);
    for (size_t at = 0; at < image.size(); at += 512) {
      storage::WriteBatch c;
      (void)ota->PutChunk(t, u.sha256, at, std::string_view(image).substr(at, 512), &c);
      (void)reg.Commit(c);
    }
    storage::WriteBatch f;
    if (!ota->FinishUpload(t, u.sha256, "fuzz", now, &f).ok()) std::abort();
    (void)reg.Commit(f);
    fmq::jobs::JobEngine::NewJob j;
    j.job_id = "c";
    j.type = fb::JobType::Ota;
    j.document_json = R"({"model_id":"m","version":"2"})";
    j.target.device_ids = {"d0"};
    storage::WriteBatch jb;
    fb::JobT rec;
    if (!engine->Create(t, j, &jb, &rec).ok()) std::abort();
    (void)reg.Commit(jb);
    engine->Activate(t, rec);
    Turn();
  }
  std::string Sha() const {
    unsigned char dig[32];
    mbedtls_sha256_ret(reinterpret_cast<const unsigned char*>(image.data()), image.size(), dig, 0);
    std::string hex;
    for (unsigned char c : dig) {
      static constexpr char kHex[] = "0123456789abcdef";
      hex += kHex[c >> 4];
      hex += kHex[c & 15];
    }
    return hex;
  }
  void Turn() {
    fmq::mgmt::Output out;
    engine->Pump();
    (void)engine->Commit(&out);
    ota->Pump();
    (void)ota->Commit(&out);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World w;
  if (size < 1) return 0;
  static constexpr const char* kTopics[] = {"ota/block", "ota/report", "ota/version"};
  const char* topic = kTopics[data[0] % 3];
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t cut = in.find('\0');
  std::string_view text = in.substr(0, cut),
                   chain = cut == std::string_view::npos ? std::string_view() : in.substr(cut + 1);
  if (text.size() > 8192) return 0;  // the broker's uplink limit
  int depth = 0;
  for (char c : text) {
    if ((c == '{' || c == '[') && ++depth > 64) return 0;
  }
  (void)fmq::pki::VerifySigned(&w.trust, chain, "acme", text, chain.substr(0, 80));
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return 0;
  if (!w.ota->Validate(topic, j).empty()) return 0;
  fmq::mgmt::DeviceMessage m;
  m.tenant = "acme";
  m.device_id = "d0";
  m.topic = topic;
  m.body = j;
  if (std::string(topic) == "ota/block") {
    std::vector<fmq::mgmt::WorkerReply> out;
    if (!w.ota->Serve(m, &out) || out.size() != 1) std::abort();
    if (out[0].binary) {
      const uint64_t off = j["offset"].get<uint64_t>();
      if (off >= w.image.size() || out[0].payload != w.image.substr(off, out[0].payload.size())) std::abort();
    }
    return 0;
  }
  // A version report that completes the update would end the offer for the
  // runs after it: only reports of other versions go through.
  if (std::string(topic) == "ota/version" && (j["version"] == "2" || j.value("rolled_back", false))) return 0;
  if (std::string(topic) == "ota/report" && (j["phase"] == "failed" || j["phase"] == "rejected")) return 0;
  w.ota->OnDeviceMessage(m);
  w.Turn();
  return 0;
}

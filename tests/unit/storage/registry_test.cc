// The data model: schema round trips, index maintenance, pagination,
// corrupt records, tenant isolation and the audit chain.
#include "storage/registry.h"

#include <doctest/doctest.h>

#include <set>

namespace fmq::storage {
namespace {

TenantId T(const char* id) { return TenantId::FromAuthenticated(id); }

fb::DeviceT Dev(std::string id, std::vector<std::string> groups, std::string fw,
                fb::DeviceStatus st = fb::DeviceStatus::Active, std::string model = "m1") {
  fb::DeviceT d;
  d.device_id = std::move(id);
  d.tenant_id = "acme";
  d.serial_number = "SN-" + d.device_id;
  d.model_id = std::move(model);
  d.group_ids = std::move(groups);
  d.firmware_version = std::move(fw);
  d.status = st;
  d.config_version = 3;
  d.first_seen_at_ms = 1;
  d.last_seen_at_ms = 2;
  return d;
}

DeviceFilter By(std::string group = "", std::string fw = "", std::string model = "",
                std::optional<fb::DeviceStatus> status = std::nullopt) {
  DeviceFilter f;
  f.group_id = std::move(group);
  f.firmware_version = std::move(fw);
  f.model_id = std::move(model);
  f.status = status;
  return f;
}

std::vector<std::string> Ids(const Page<fb::DeviceT>& p) {
  std::vector<std::string> out;
  for (const auto& d : p.items) out.push_back(d.device_id);
  return out;
}

TEST_CASE("every record kind round-trips") {
  MemKvStore kv;
  Registry r(&kv);
  auto t = T("acme");
  WriteBatch b;
  fb::TenantT tenant;
  tenant.tenant_id = "acme";
  tenant.name = "Acme";
  tenant.max_connections = 10;
  r.PutTenant(t, tenant, &b);
  fb::DeviceModelT model;
  model.model_id = "m1";
  model.manufacturer = "Bosch";
  model.supported_protocols = {"mqtt3", "mqtt5"};
  model.default_config_json = "{}";
  r.PutModel(t, model, &b);
  fb::DeviceGroupT group;
  group.group_id = "g1";
  group.name = "Pumps";
  group.firmware_target_version = "2.0";
  r.PutGroup(t, group, &b);
  REQUIRE(r.PutDevice(t, Dev("d1", {"g1", "g2"}, "1.0"), &b).ok());
  fb::ConfigurationT cfg;
  cfg.target_id = "g1";
  cfg.is_group = true;
  cfg.version = 1;
  cfg.config_json = "{\"rate\":1}";
  r.PutConfig(t, cfg, &b);
  cfg.version = 2;
  cfg.config_json = "{\"rate\":2}";
  r.PutConfig(t, cfg, &b);
  fb::CertificateT cert;
  cert.serial = "0a1b";
  cert.device_id = "d1";
  cert.der = {1, 2, 3};
  r.PutCert(t, cert, &b);
  fb::JobT job;
  job.job_id = "j1";
  job.type = fb::JobType::Config;
  job.total_count = 5;
  r.PutJob(t, job, &b);
  fb::JobDeviceT jd;
  jd.device_id = "d1";
  jd.state = fb::JobDeviceState::Delivered;
  r.PutJobDevice(t, "j1", jd, &b);
  REQUIRE(r.Commit(b).ok());

  fb::TenantT t2;
  REQUIRE(r.GetTenant(t, &t2).ok());
  CHECK(t2.name == "Acme");
  fb::DeviceModelT m2;
  REQUIRE(r.GetModel(t, "m1", &m2).ok());
  CHECK(m2.supported_protocols == model.supported_protocols);
  fb::DeviceGroupT g2;
  REQUIRE(r.GetGroup(t, "g1", &g2).ok());
  CHECK(g2.firmware_target_version == "2.0");
  fb::DeviceT d2;
  REQUIRE(r.GetDevice(t, "d1", &d2).ok());
  CHECK(d2.group_ids == std::vector<std::string>{"g1", "g2"});
  CHECK(d2.config_version == 3);
  fb::ConfigurationT c2;
  REQUIRE(r.GetConfig(t, ConfigKind::kGroup, "g1", 0, &c2).ok());
  CHECK(c2.version == 2);
  REQUIRE(r.GetConfig(t, ConfigKind::kGroup, "g1", 1, &c2).ok());
  CHECK(c2.config_json == "{\"rate\":1}");
  std::vector<fb::CertificateT> certs;
  REQUIRE(r.CertsOfDevice(t, "d1", &certs).ok());
  REQUIRE(certs.size() == 1);
  CHECK(certs[0].der == std::vector<uint8_t>{1, 2, 3});
  fb::JobT j2;
  REQUIRE(r.GetJob(t, "j1", &j2).ok());
  CHECK(j2.type == fb::JobType::Config);
  Page<fb::JobDeviceT> jds;
  REQUIRE(r.ListJobDevices(t, "j1", "", 10, &jds).ok());
  REQUIRE(jds.items.size() == 1);
  CHECK(jds.items[0].state == fb::JobDeviceState::Delivered);
}

TEST_CASE("device indexes follow every change in the same batch") {
  MemKvStore kv;
  Registry r(&kv);
  auto t = T("acme");
  WriteBatch b;
  REQUIRE(r.PutDevice(t, Dev("d1", {"g1"}, "1.0"), &b).ok());
  REQUIRE(r.PutDevice(t, Dev("d2", {"g1", "g2"}, "1.0"), &b).ok());
  REQUIRE(r.PutDevice(t, Dev("d3", {"g2"}, "2.0", fb::DeviceStatus::Suspended, "m2"), &b).ok());
  REQUIRE(r.Commit(b).ok());
  Page<fb::DeviceT> p;
  REQUIRE(r.ListDevices(t, By("g1", "", "", std::nullopt), "", 10, &p).ok());
  CHECK(Ids(p) == std::vector<std::string>{"d1", "d2"});
  REQUIRE(r.ListDevices(t, By("g2", "1.0", "", std::nullopt), "", 10, &p).ok());
  CHECK(Ids(p) == std::vector<std::string>{"d2"});
  REQUIRE(r.ListDevices(t, By("", "", "m2", std::nullopt), "", 10, &p).ok());
  CHECK(Ids(p) == std::vector<std::string>{"d3"});
  REQUIRE(r.ListDevices(t, By("", "", "", fb::DeviceStatus::Suspended), "", 10, &p).ok());
  CHECK(Ids(p) == std::vector<std::string>{"d3"});
  REQUIRE(r.ListDevices(t, By("g2", "", "", fb::DeviceStatus::Active), "", 10, &p).ok());
  CHECK(Ids(p) == std::vector<std::string>{"d2"});

  // Move d1 to g2 with new firmware: old entries disappear.
  WriteBatch c;
  REQUIRE(r.PutDevice(t, Dev("d1", {"g2"}, "2.0"), &c).ok());
  REQUIRE(r.Commit(c).ok());
  REQUIRE(r.ListDevices(t, By("g1", "", "", std::nullopt), "", 10, &p).ok());
  CHECK(Ids(p) == std::vector<std::string>{"d2"});
  REQUIRE(r.ListDevices(t, By("", "2.0", "", std::nullopt), "", 10, &p).ok());
  CHECK(Ids(p) == std::vector<std::string>{"d1", "d3"});
  REQUIRE(r.ListDevices(t, By("", "1.0", "", std::nullopt), "", 10, &p).ok());
  CHECK(Ids(p) == std::vector<std::string>{"d2"});
  size_t index_entries = 0;
  REQUIRE(kv.Scan(Family::kIndex, "", "", [&](std::string_view, std::string_view) {
              ++index_entries;
              return true;
            }).ok());
  // d1: g2 + g2/2.0 + status + fw + model + serial = 6; d2: 2 groups x 2 + 4 = 8; d3: 6.
  CHECK(index_entries == 20);
}

TEST_CASE("pagination: stable order, no duplicates, no gaps, with or without a filter") {
  MemKvStore kv;
  Registry r(&kv);
  auto t = T("acme");
  WriteBatch b;
  for (int i = 0; i < 257; ++i) {
    char id[16];
    std::snprintf(id, sizeof id, "dev-%04d", i);
    REQUIRE(r.PutDevice(t, Dev(id, {i % 2 ? "odd" : "even"}, "1.0"), &b).ok());
  }
  REQUIRE(r.Commit(b).ok());
  for (const DeviceFilter& f : {By(), By("odd")}) {
    std::vector<std::string> all;
    std::string cursor;
    int pages = 0;
    do {
      Page<fb::DeviceT> p;
      REQUIRE(r.ListDevices(t, f, cursor, 50, &p).ok());
      for (auto& id : Ids(p)) all.push_back(id);
      cursor = p.next_cursor;
      ++pages;
    } while (!cursor.empty());
    std::set<std::string> unique(all.begin(), all.end());
    CHECK(unique.size() == all.size());
    CHECK(std::is_sorted(all.begin(), all.end()));
    CHECK(all.size() == (f.group_id.empty() ? 257u : 128u));
    CHECK(pages == (f.group_id.empty() ? 6 : 3));
  }
}

TEST_CASE("tenants never see each other's records") {
  MemKvStore kv;
  Registry r(&kv);
  WriteBatch b;
  REQUIRE(r.PutDevice(T("a"), Dev("shared-id", {"g"}, "1.0"), &b).ok());
  REQUIRE(r.Commit(b).ok());
  fb::DeviceT d;
  CHECK(absl::IsNotFound(r.GetDevice(T("b"), "shared-id", &d)));
  Page<fb::DeviceT> p;
  REQUIRE(r.ListDevices(T("b"), {}, "", 10, &p).ok());
  CHECK(p.items.empty());
  REQUIRE(r.ListDevices(T("b"), By("g", "", "", std::nullopt), "", 10, &p).ok());
  CHECK(p.items.empty());
  REQUIRE(r.ListDevices(T("a"), By("g", "", "", std::nullopt), "", 10, &p).ok());
  CHECK(p.items.size() == 1);
}

TEST_CASE("a corrupt record is an error naming its key, never a crash") {
  MemKvStore kv;
  Registry r(&kv);
  auto t = T("acme");
  WriteBatch b;
  REQUIRE(r.PutDevice(t, Dev("d1", {"g"}, "1.0"), &b).ok());
  REQUIRE(r.Commit(b).ok());
  std::string good = *kv.Get(Family::kDevices, keys::Device(t, "d1"));
  for (const std::string& bad : {std::string(), std::string("x"), std::string("garbage\x01"),
                                 good.substr(0, good.size() / 2) + "\x01", good.substr(0, good.size() - 1) + "\x09"}) {
    kv.Poke(Family::kDevices, keys::Device(t, "d1"), bad);
    fb::DeviceT d;
    absl::Status s = r.GetDevice(t, "d1", &d);
    CHECK(absl::IsDataLoss(s));
    CHECK(std::string(s.message()).find("devices") != std::string::npos);
    CHECK(std::string(s.message()).find("d1") != std::string::npos);
    Page<fb::DeviceT> p;
    CHECK(absl::IsDataLoss(r.ListDevices(t, By("g", "", "", std::nullopt), "", 10, &p)));
  }
  // A record written before the checksum (format 1: no CRC) is still read.
  {
    std::string legacy = good.substr(0, good.size() - 5);
    legacy.push_back(static_cast<char>(kRecordFormatNoChecksum));
    kv.Poke(Family::kDevices, keys::Device(t, "d1"), legacy);
    fb::DeviceT d;
    REQUIRE(r.GetDevice(t, "d1", &d).ok());
    CHECK(d.device_id == "d1");
  }
  // Every single-byte corruption of a valid record fails cleanly.
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x5A);
    kv.Poke(Family::kDevices, keys::Device(t, "d1"), bad);
    CAPTURE(i);
    fb::DeviceT d;
    absl::Status s = r.GetDevice(t, "d1", &d);
    // The checksum catches every flip: a clear DataLoss, never another
    // error and never a record with other content.
    CHECK(absl::IsDataLoss(s));
  }
}

TEST_CASE("audit log: append-only chain, queries by device and time, tampering detected") {
  MemKvStore kv;
  Registry r(&kv);
  auto t = T("acme");
  for (int i = 0; i < 30; ++i) {
    WriteBatch b;
    fb::AuditEntryT e;
    e.time_ms = 1000 + i * 10;
    e.actor = "op:alice";
    e.action = "device.activate";
    e.device_id = i % 3 == 0 ? "d0" : "d1";
    e.details_json = "{\"i\":" + std::to_string(i) + "}";
    e.result = "ok";
    REQUIRE(r.AppendAudit(t, e, &b).ok());
    REQUIRE(r.Commit(b).ok());
  }
  uint64_t n = 0;
  REQUIRE(r.VerifyAudit(t, &n).ok());
  CHECK(n == 30);
  Page<fb::AuditEntryT> p;
  REQUIRE(r.AuditOfDevice(t, "d0", "", 4, &p).ok());
  REQUIRE(p.items.size() == 4);
  CHECK(p.items[0].seq == 1);
  CHECK(p.items[3].seq == 10);
  REQUIRE(r.AuditOfDevice(t, "d0", p.next_cursor, 100, &p).ok());
  CHECK(p.items.size() == 6);
  CHECK(p.next_cursor.empty());
  REQUIRE(r.AuditInRange(t, 1050, 1100, "", 3, &p).ok());
  REQUIRE(p.items.size() == 3);
  CHECK(p.items[0].time_ms == 1050);
  REQUIRE(r.AuditInRange(t, 1050, 1100, p.next_cursor, 10, &p).ok());
  CHECK(p.items.size() == 3);  // 1080, 1090, 1100
  CHECK(p.items.back().time_ms == 1100);

  SUBCASE("modified entry") {
    fb::AuditEntryT e;
    REQUIRE(ReadRecord<fb::AuditEntry>(kv, Family::kAudit, keys::Audit(t, 7), &e).ok());
    e.result = "denied";
    kv.Poke(Family::kAudit, keys::Audit(t, 7), EncodeRecord<fb::AuditEntry>(e));
    CHECK(absl::IsDataLoss(r.VerifyAudit(t, &n)));
  }
  SUBCASE("deleted entry") {
    WriteBatch d;
    d.Delete(Family::kAudit, keys::Audit(t, 12));
    REQUIRE(kv.Write(d, true).ok());
    CHECK(absl::IsDataLoss(r.VerifyAudit(t, &n)));
  }
  SUBCASE("reordered entries") {
    std::string a = *kv.Get(Family::kAudit, keys::Audit(t, 3));
    std::string b = *kv.Get(Family::kAudit, keys::Audit(t, 4));
    kv.Poke(Family::kAudit, keys::Audit(t, 3), b);
    kv.Poke(Family::kAudit, keys::Audit(t, 4), a);
    CHECK(absl::IsDataLoss(r.VerifyAudit(t, &n)));
  }
  SUBCASE("truncated tail") {
    WriteBatch d;
    d.Delete(Family::kAudit, keys::Audit(t, 30));
    REQUIRE(kv.Write(d, true).ok());
    CHECK(absl::IsDataLoss(r.VerifyAudit(t, &n)));
  }
}

}  // namespace
}  // namespace fmq::storage

namespace fmq::storage {
namespace {

TEST_CASE("revocations: idempotent, per tenant, listed for the TLS revocation set") {
  MemKvStore kv;
  Registry r(&kv);
  WriteBatch b;
  fb::CertificateT c;
  c.serial = "0a";
  c.device_id = "d1";
  r.PutCert(T("acme"), c, &b);
  REQUIRE(r.Commit(b).ok());
  WriteBatch v;
  REQUIRE(r.RevokeCert(T("acme"), "0a", 1000, &v).ok());
  REQUIRE(r.RevokeCert(T("acme"), "ff", 1000, &v).ok());  // issued outside the registry
  REQUIRE(r.Commit(v).ok());
  WriteBatch again;
  REQUIRE(r.RevokeCert(T("acme"), "0a", 5000, &again).ok());
  REQUIRE(r.Commit(again).ok());
  fb::CertificateT got;
  REQUIRE(r.GetCert(T("acme"), "0a", &got).ok());
  CHECK(got.revoked_at_ms == 1000);  // the first revocation time is kept
  CHECK(got.device_id == "d1");
  std::vector<std::string> all;
  REQUIRE(r.ForEachRevoked([&](std::string_view t, const fb::CertificateT& x) {
             all.push_back(std::string(t) + "/" + x.serial);
           }).ok());
  CHECK(all == std::vector<std::string>{"acme/0a", "acme/ff"});
  auto other = T("other");
  all.clear();
  REQUIRE(r.ForEachRevoked([&](std::string_view, const fb::CertificateT& x) { all.push_back(x.serial); }, &other).ok());
  CHECK(all.empty());
}

}  // namespace
}  // namespace fmq::storage

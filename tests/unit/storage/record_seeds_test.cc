// Keeps the seed corpus of the records fuzzer (tests/fuzz/corpus-records)
// equal to freshly encoded records; FMQ_UPDATE_SEEDS=1 rewrites it.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "storage/records.h"

namespace fmq::storage {
namespace {

std::vector<std::pair<std::string, std::string>> Seeds() {
  std::vector<std::pair<std::string, std::string>> out;
  auto add = [&](const char* name, uint8_t type, std::string rec) {
    out.emplace_back(name, std::string(1, static_cast<char>(type)) + rec);
  };
  fb::SessionT s;
  s.client_id = "dev-1";
  s.version = 5;
  s.expiry_s = 3600;
  auto sub = std::make_unique<fb::SubscriptionT>();
  sub->filter = "a/+";
  sub->qos = 1;
  s.subscriptions.push_back(std::move(sub));
  add("session", 0, EncodeRecord<fb::Session>(s));
  fb::SessionMessageT m;
  m.message = std::make_unique<fb::MessageRecT>();
  m.message->topic = "a/b";
  m.message->payload = {1, 2, 3};
  m.qos = 1;
  m.subscription_ids = {4};
  add("session-message", 1, EncodeRecord<fb::SessionMessage>(m));
  fb::DeviceT d;
  d.device_id = "d1";
  d.group_ids = {"g1", "g2"};
  d.firmware_version = "1.0";
  add("device", 3, EncodeRecord<fb::Device>(d));
  fb::AuditEntryT a;
  a.seq = 1;
  a.action = "device.register";
  a.hash = std::vector<uint8_t>(32, 7);
  add("audit", 8, EncodeRecord<fb::AuditEntry>(a));
  // Every other record type, so each decoder is fuzzed from a valid start.
  fb::RetainedT r;
  r.message = std::make_unique<fb::MessageRecT>();
  r.message->topic = "$T/acme/cfg";
  r.message->payload = {'o', 'n'};
  r.message->retain = true;
  r.message->content_type = "text/plain";
  auto up = std::make_unique<fb::UserPropertyT>();
  up->key = "k";
  up->value = "v";
  r.message->user_properties.push_back(std::move(up));
  add("retained", 2, EncodeRecord<fb::Retained>(r));
  fb::DeviceGroupT g;
  g.group_id = "g1";
  g.name = "lobby";
  g.config_template_json = R"({"rate":5})";
  g.firmware_target_version = "1.2.0";
  g.config_version = 3;
  g.config_priority = -2;
  add("group", 4, EncodeRecord<fb::DeviceGroup>(g));
  fb::ConfigurationT c;
  c.target_id = "g1";
  c.is_group = true;
  c.version = 3;
  c.config_json = R"({"rate":5})";
  c.created_by = "operator:alice";
  c.kind = 1;
  c.rev = 12;
  c.patch_json = R"({"rate":5})";
  add("configuration", 5, EncodeRecord<fb::Configuration>(c));
  fb::CertificateT cert;
  cert.serial = "1a2b";
  cert.device_id = "d1";
  cert.issued_at_ms = 1;
  cert.expires_at_ms = 2;
  cert.der = {0x30, 0x82, 0x01, 0x00};
  add("certificate", 6, EncodeRecord<fb::Certificate>(cert));
  fb::JobT j;
  j.job_id = "j1";
  j.type = fb::JobType::Command;
  j.target_query_json = R"({"group_id":"g1"})";
  j.total_count = 10;
  j.status = fb::JobStatus::Running;
  j.cursor = "d5";
  add("job", 7, EncodeRecord<fb::Job>(j));
  fb::TenantT t;
  t.tenant_id = "acme";
  t.name = "ACME";
  t.max_connections = 5;
  add("tenant", 9, EncodeRecord<fb::Tenant>(t));
  fb::InboundQos2T q;
  q.packet_id = 7;
  add("inbound-qos2", 10, EncodeRecord<fb::InboundQos2>(q));
  fb::DeviceModelT dm;
  dm.model_id = "m1";
  dm.manufacturer = "ACME";
  dm.supported_protocols = {"mqtt5"};
  add("model", 11, EncodeRecord<fb::DeviceModel>(dm));
  fb::JobDeviceT jd;
  jd.device_id = "d1";
  jd.state = fb::JobDeviceState::Acknowledged;
  jd.attempts = 2;
  jd.detail = "ok";
  add("job-device", 12, EncodeRecord<fb::JobDevice>(jd));
  fb::DeviceConfigT dc;
  dc.device_id = "d1";
  dc.override_version = 2;
  dc.membership_rev = 5;
  dc.applied_version = 7;
  dc.applied_hash = std::string(64, 'a');
  dc.state = fb::ConfigState::Rejected;
  dc.state_version = 9;
  dc.reason = "unsupported";
  add("device-config", 13, EncodeRecord<fb::DeviceConfig>(dc));
  return out;
}

TEST_CASE("records fuzzer seeds are current") {
  const std::filesystem::path dir = FMQ_TEST_DATA_DIR "/../fuzz/corpus-records";
  const bool update = std::getenv("FMQ_UPDATE_SEEDS") != nullptr;
  if (update) std::filesystem::create_directories(dir);
  for (const auto& [name, bytes] : Seeds()) {
    if (update) {
      std::ofstream(dir / name, std::ios::binary) << bytes;
      continue;
    }
    std::ifstream in(dir / name, std::ios::binary);
    std::string on_disk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(on_disk == bytes, "run FMQ_UPDATE_SEEDS=1 build/tests/unit_tests -tc='records fuzzer*'");
  }
}

}  // namespace
}  // namespace fmq::storage

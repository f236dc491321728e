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

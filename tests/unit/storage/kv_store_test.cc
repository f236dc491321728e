// Both KvStore implementations behave the same; RocksDB keeps data across
// reopen. Keys preserve order and always start with the tenant.
#include "storage/kv_store.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "storage/keys.h"
#include "storage/records.h"

namespace fmq::storage {
namespace {

std::string TempDir(const char* name) {
  auto p =
      std::filesystem::temp_directory_path() / (std::string("fleetmq-test-") + name + "-" + std::to_string(getpid()));
  std::filesystem::remove_all(p);
  return p.string();
}

void Exercise(KvStore& kv) {
  WriteBatch b;
  b.Put(Family::kDevices, "a/1", "one");
  b.Put(Family::kDevices, "a/2", "two");
  b.Put(Family::kDevices, "b/1", "other");
  b.Put(Family::kGroups, "a/1", "group");
  REQUIRE(kv.Write(b, true).ok());
  CHECK(*kv.Get(Family::kDevices, "a/1") == "one");
  CHECK(*kv.Get(Family::kGroups, "a/1") == "group");  // families are separate
  CHECK(absl::IsNotFound(kv.Get(Family::kDevices, "zz").status()));
  std::vector<std::string> seen;
  REQUIRE(kv.ScanPrefix(Family::kDevices, "a/", [&](std::string_view k, std::string_view v) {
              seen.push_back(std::string(k) + "=" + std::string(v));
              return true;
            }).ok());
  CHECK(seen == std::vector<std::string>{"a/1=one", "a/2=two"});
  seen.clear();
  REQUIRE(kv.Scan(Family::kDevices, "a/2", "", [&](std::string_view k, std::string_view) {
              seen.emplace_back(k);
              return true;
            }).ok());
  CHECK(seen == std::vector<std::string>{"a/2", "b/1"});
  seen.clear();
  REQUIRE(kv.Scan(Family::kDevices, "", "", [&](std::string_view k, std::string_view) {
              seen.emplace_back(k);
              return false;  // stop at once
            }).ok());
  CHECK(seen.size() == 1);
  WriteBatch d;
  d.Delete(Family::kDevices, "a/1");
  d.Put(Family::kDevices, "a/3", std::string("\0bin\xff", 5));
  REQUIRE(kv.Write(d, false).ok());
  CHECK(absl::IsNotFound(kv.Get(Family::kDevices, "a/1").status()));
  CHECK(*kv.Get(Family::kDevices, "a/3") == std::string("\0bin\xff", 5));
}

TEST_CASE("MemKvStore: batches, gets, ordered scans, fault injection") {
  MemKvStore kv;
  Exercise(kv);
  kv.FailWrites(absl::UnavailableError("disk full"));
  WriteBatch b;
  b.Put(Family::kMeta, "k", "v");
  CHECK(absl::IsUnavailable(kv.Write(b, true)));
  CHECK(absl::IsNotFound(kv.Get(Family::kMeta, "k").status()));
  kv.FailWrites(absl::OkStatus());
  CHECK(kv.Write(b, true).ok());
}

TEST_CASE("RocksKvStore: same behaviour, and data survives reopening") {
  std::string dir = TempDir("rocks");
  {
    auto kv = OpenRocksKvStore(dir);
    REQUIRE(kv.ok());
    Exercise(**kv);
  }
  {
    auto kv = OpenRocksKvStore(dir);
    REQUIRE(kv.ok());
    CHECK(*(*kv)->Get(Family::kDevices, "a/2") == "two");
    CHECK(*(*kv)->Get(Family::kGroups, "a/1") == "group");
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("RocksKvStore: opening a path that is not a directory is a clear error") {
  std::string file = TempDir("notadir");
  FILE* f = std::fopen(file.c_str(), "w");
  std::fputs("x", f);
  std::fclose(f);
  auto kv = OpenRocksKvStore(file);
  CHECK_FALSE(kv.ok());
  CHECK(std::string(kv.status().message()).find(file) != std::string::npos);
  std::filesystem::remove(file);
}

TEST_CASE("keys preserve component order and round-trip, escapes included") {
  std::mt19937 rng(7);
  std::vector<std::pair<std::string, uint64_t>> parts;
  for (int i = 0; i < 500; ++i) {
    std::string s;
    int n = static_cast<int>(rng() % 4);
    for (int k = 0; k < n; ++k)
      s.push_back(
          static_cast<char>("\0\x01\xff"
                            "a"[rng() % 4]));
    parts.emplace_back(s, rng() % 4);
  }
  std::sort(parts.begin(), parts.end());
  std::string prev;
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string key = KeyBuilder().Str(parts[i].first).U64(parts[i].second).Take();
    if (i > 0 && parts[i] != parts[i - 1]) CHECK(prev < key);
    KeyReader r(key);
    std::string s;
    uint64_t n;
    REQUIRE(r.Str(&s));
    REQUIRE(r.U64(&n));
    CHECK(r.done());
    CHECK(s == parts[i].first);
    CHECK(n == parts[i].second);
    prev = key;
  }
  CHECK(KeyBuilder().I64(-5).key() < KeyBuilder().I64(3).key());
}

TEST_CASE("every tenant key lies inside the tenant's prefix and outside others'") {
  TenantId a = TenantId::FromAuthenticated("acme");
  TenantId b = TenantId::FromAuthenticated("acme2");
  TenantId c = TenantId::FromAuthenticated(std::string("ac\0me", 5));
  for (const TenantId* t : {&a, &b, &c}) {
    std::string prefix = keys::TenantPrefix(*t);
    for (const std::string& k :
         {keys::Device(*t, "d"), keys::Session(*t, "c"), keys::Retained(*t, "x/y"), keys::Audit(*t, 3),
          keys::DeviceIndexEntry(*t, keys::DeviceIndex::kGroup, "g", "", "d"), keys::Cert(*t, "01"),
          keys::JobDevice(*t, "j", "d"), keys::Config(*t, ConfigKind::kGroup, "g", 2)}) {
      CHECK(k.rfind(prefix, 0) == 0);
      for (const TenantId* o : {&a, &b, &c}) {
        if (o != t) CHECK(k.rfind(keys::TenantPrefix(*o), 0) != 0);
      }
    }
  }
}

TEST_CASE("records: CRC32C matches the standard check values at every length and alignment") {
  CHECK(Crc32c("") == 0);
  CHECK(Crc32c("123456789") == 0xE3069283u);  // RFC 3720 B.4 / the CRC catalogue
  CHECK(Crc32c(std::string(32, '\0')) == 0x8A9136AAu);
  CHECK(Crc32c(std::string(32, '\xff')) == 0x62A8AB43u);
  // Bytewise reference, against the (possibly 8-bytes-a-step) implementation.
  auto ref = [](std::string_view d) {
    uint32_t c = 0xFFFFFFFFu;
    for (unsigned char ch : d) {
      c ^= ch;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
  };
  std::mt19937 rng(7);
  std::string buf(300, '\0');
  for (auto& ch : buf) ch = static_cast<char>(rng());
  for (size_t off = 0; off < 9; ++off) {
    for (size_t len = 0; len + off <= buf.size(); len += 7) {
      const std::string_view v(buf.data() + off, len);
      REQUIRE(Crc32c(v) == ref(v));
    }
  }
}

TEST_CASE("records: decoding into a reused object leaves nothing of the previous record") {
  fb::DeviceT a;
  a.device_id = "a";
  a.group_ids = {"g1", "g2"};
  a.firmware_version = "1.0";
  fb::DeviceT b;
  b.device_id = "b";  // no groups, no firmware
  const std::string ea = EncodeRecord<fb::Device>(a), eb = EncodeRecord<fb::Device>(b);
  fb::DeviceT out;
  REQUIRE(DecodeRecord<fb::Device>(Family::kDevices, "k", ea, &out).ok());
  CHECK(out.group_ids.size() == 2);
  REQUIRE(DecodeRecord<fb::Device>(Family::kDevices, "k", eb, &out).ok());
  CHECK(out.device_id == "b");
  CHECK(out.group_ids.empty());
  CHECK(out.firmware_version.empty());
}

}  // namespace
}  // namespace fmq::storage

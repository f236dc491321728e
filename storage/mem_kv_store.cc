#include <map>
#include <mutex>

#include "storage/kv_store.h"

namespace fmq::storage {

std::string_view FamilyName(Family f) {
  static constexpr std::string_view kNames[] = {"meta",
                                                "sessions",
                                                "session_messages",
                                                "retained",
                                                "tenants",
                                                "devices",
                                                "models",
                                                "groups",
                                                "configs",
                                                "certs",
                                                "jobs",
                                                "job_devices",
                                                "audit",
                                                "index",
                                                "session_qos2",
                                                "device_configs",
                                                "config_blobs",
                                                "firmware",
                                                "firmware_chunks",
                                                "device_firmware",
                                                "health"};
  return kNames[static_cast<size_t>(f)];
}

std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    unsigned char c = static_cast<unsigned char>(end.back());
    if (c != 0xFF) {
      end.back() = static_cast<char>(c + 1);
      return end;
    }
    end.pop_back();
  }
  return end;
}

absl::Status KvStore::ScanPrefix(Family f, std::string_view prefix, const ScanFn& fn) {
  std::string end = PrefixEnd(prefix);
  return Scan(f, prefix, end, fn);
}

struct MemKvStore::Impl {
  std::mutex mu;
  std::map<std::string, std::string, std::less<>> data[static_cast<size_t>(Family::kCount)];
  absl::Status fail = absl::OkStatus();
  size_t writes = 0;
};

MemKvStore::MemKvStore() : impl_(std::make_unique<Impl>()) {}
MemKvStore::~MemKvStore() = default;

absl::Status MemKvStore::Write(const WriteBatch& batch, bool) {
  std::unique_lock<std::mutex> l(impl_->mu);
  if (!impl_->fail.ok()) return impl_->fail;
  for (const auto& op : batch.ops()) {
    auto& m = impl_->data[static_cast<size_t>(op.family)];
    if (op.del) {
      m.erase(op.key);
    } else {
      m[op.key] = op.value;
    }
  }
  ++impl_->writes;
  l.unlock();
  batch.RunCommitted();
  return absl::OkStatus();
}

absl::StatusOr<std::string> MemKvStore::Get(Family f, std::string_view key) {
  std::lock_guard<std::mutex> l(impl_->mu);
  auto& m = impl_->data[static_cast<size_t>(f)];
  auto it = m.find(key);
  if (it == m.end()) return absl::NotFoundError("no such key");
  return it->second;
}

absl::Status MemKvStore::Scan(Family f, std::string_view start, std::string_view limit, const ScanFn& fn) {
  std::vector<std::pair<std::string, std::string>> rows;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    auto& m = impl_->data[static_cast<size_t>(f)];
    for (auto it = m.lower_bound(start); it != m.end(); ++it) {
      if (!limit.empty() && it->first >= limit) break;
      rows.emplace_back(it->first, it->second);
    }
  }
  for (const auto& [k, v] : rows) {
    if (!fn(k, v)) break;
  }
  return absl::OkStatus();
}

void MemKvStore::FailWrites(absl::Status s) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->fail = std::move(s);
}

void MemKvStore::Poke(Family f, std::string key, std::string value) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->data[static_cast<size_t>(f)][std::move(key)] = std::move(value);
}

size_t MemKvStore::writes() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->writes;
}

}  // namespace fmq::storage

#include "broker/core/cluster.h"

#include <bit>
#include <chrono>
#include <cstring>
#include <type_traits>

#include "broker/core/broker.h"

namespace fmq {

namespace {

// FNV-1a then a final mix: cheap, and the same on every worker and run.
uint64_t Mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

uint64_t Fnv(uint64_t h, std::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;

}  // namespace

Cluster::Cluster(uint32_t workers) : workers_(workers == 0 ? 1 : workers), stats_(workers_), sessions_(workers_, 0) {}

uint32_t Cluster::HomeOf(std::string_view tenant, std::string_view client_id) const {
  if (workers_ == 1) return 0;
  uint64_t h = Fnv(kFnvBasis, tenant);
  h = Fnv(h ^ 0xff, client_id);
  return static_cast<uint32_t>(Mix(h) % workers_);
}

void Cluster::PostAll(const std::function<void(Broker&)>& fn) {
  for (uint32_t w = 0; w < workers_; ++w) link_->Post(w, fn);
}

uint64_t StampNow(uint32_t worker) {
  const auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch());
  return (static_cast<uint64_t>(ns.count()) << 6) | worker;
}

uint64_t StampBefore(uint64_t stamp, uint64_t seconds) {
  const uint64_t span = seconds * 1'000'000'000ull << 6;
  return stamp > span ? stamp - span : 0;
}

uint64_t SharedMask::At(uint64_t stamp) const {
  std::lock_guard<std::mutex> l(mu_);
  for (auto it = history_.rbegin(); it != history_.rend(); ++it) {
    if (it->first <= stamp) return it->second;
  }
  return 0;  // before the group existed anywhere
}

uint64_t SharedMask::Change(uint32_t worker, bool member) {
  std::lock_guard<std::mutex> l(mu_);
  const uint64_t stamp = StampNow(63);  // taken under the lock (see the class comment)
  uint64_t mask = history_.empty() ? 0 : history_.back().second;
  mask = member ? mask | (uint64_t{1} << worker) : mask & ~(uint64_t{1} << worker);
  history_.emplace_back(stamp, mask);
  // Entries older than a minute serve no message still travelling; the
  // newest one older than that stays as the base.
  const uint64_t keep_from = StampBefore(stamp, 60);
  size_t drop = 0;
  while (drop + 1 < history_.size() && history_[drop + 1].first < keep_from) ++drop;
  history_.erase(history_.begin(), history_.begin() + static_cast<long>(drop));
  return stamp;
}

SharedMask* Cluster::JoinShared(std::string_view key, uint32_t worker) {
  SharedMask* m;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto& slot = shared_[key];
    if (!slot) slot = std::make_unique<SharedMask>();
    m = slot.get();
  }
  m->Change(worker, true);
  return m;
}

uint64_t Cluster::LeaveShared(SharedMask* mask, uint32_t worker) { return mask->Change(worker, false); }

bool Cluster::AddConnection(const std::string& tenant, uint32_t max) {
  std::lock_guard<std::mutex> l(mu_);
  uint32_t& n = connections_[tenant];
  if (max != 0 && n >= max) return false;
  ++n;
  return true;
}

void Cluster::RemoveConnection(const std::string& tenant) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = connections_.find(tenant);
  if (it != connections_.end() && it->second > 0) --it->second;
}

uint32_t Cluster::Connections(std::string_view tenant) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = connections_.find(tenant);
  return it == connections_.end() ? 0 : it->second;
}

void Cluster::Report(uint32_t worker, const BrokerStats& s, uint64_t sessions) {
  std::lock_guard<std::mutex> l(mu_);
  stats_[worker] = s;
  sessions_[worker] = sessions;
}

BrokerStats Cluster::Sum(uint64_t* sessions) const {
  // BrokerStats is a flat list of uint64_t counters: summed field by field.
  static_assert(std::is_trivially_copyable_v<BrokerStats> && sizeof(BrokerStats) % sizeof(uint64_t) == 0);
  constexpr size_t kFields = sizeof(BrokerStats) / sizeof(uint64_t);
  uint64_t total[kFields] = {};
  uint64_t n = 0;
  std::lock_guard<std::mutex> l(mu_);
  for (uint32_t w = 0; w < workers_; ++w) {
    uint64_t f[kFields];
    std::memcpy(f, &stats_[w], sizeof f);
    for (size_t i = 0; i < kFields; ++i) total[i] += f[i];
    n += sessions_[w];
  }
  BrokerStats out;
  std::memcpy(&out, total, sizeof out);
  if (sessions != nullptr) *sessions = n;
  return out;
}

BrokerStats Cluster::Snapshot(uint32_t worker) const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_[worker];
}

uint32_t PickWorker(uint64_t mask, uint64_t stamp) {
  const int members = std::popcount(mask);
  if (members <= 1) return mask == 0 ? 0 : static_cast<uint32_t>(std::countr_zero(mask));
  int k = static_cast<int>(Mix(stamp) % static_cast<uint64_t>(members));
  while (k-- > 0) mask &= mask - 1;  // drop the lowest set bits
  return static_cast<uint32_t>(std::countr_zero(mask));
}

}  // namespace fmq

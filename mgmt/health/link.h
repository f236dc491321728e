// What the broker observed of a device's connection, at no cost to the
// device (doc/health.md, "Observed by the broker"): connects, disconnects
// by reason, the last error, totals of bytes, packets and publishes in each
// direction and of ACL denials, and the time it was connected, kept per
// minute for the last hour and per hour for the last 7 days so uptime
// ratios over 1 h, 24 h and 7 d are read without any history scan. One
// record per device, updated on its connect, its periodic counter reports
// (BrokerOptions::link_stats_interval_ms) and its disconnect; a pure value
// (no clock, no store): HealthFeature keeps it in RocksDB.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "common/link_counters.h"
#include "nlohmann/json.hpp"

namespace fmq::health {

struct LinkEvent {
  enum class Kind : uint8_t { kConnected, kCounters, kDisconnected };
  Kind kind = Kind::kCounters;
  int64_t wall_ms = 0;
  LinkCounters delta;  // since the connection last reported
  std::string reason;  // kDisconnected: DisconnectReasonName
  std::string error;   // kDisconnected for a protocol error: the rule broken
};

class LinkRecord {
 public:
  static constexpr int kMinutes = 60;  // 1-minute slots: the last hour
  static constexpr int kHours = 168;   // 1-hour slots: the last 7 days

  void Apply(const LinkEvent& e);
  // Fraction of [now - window, now] the device was connected (of the part
  // of the window since it was first seen), or < 0 when there is none.
  // `online`: the connection still open counts up to now (else an interval
  // left open by a broker that stopped ends where it was last accounted).
  double Uptime(int64_t now_ms, int64_t window_ms, bool online) const;
  // health.get's "link" object.
  nlohmann::json ToJson(int64_t now_ms, bool online) const;

  std::string Encode() const;
  // False (and *out untouched) for bytes that are not a record Encode wrote.
  static bool Decode(std::string_view bytes, LinkRecord* out);

  bool open() const { return open_since_ms_ != 0; }
  uint64_t connects() const { return connects_; }
  const LinkCounters& totals() const { return totals_; }
  const std::map<std::string, uint64_t>& disconnects() const { return disconnects_; }

 private:
  template <int N>
  struct Ring {
    std::array<uint32_t, N> ms{};  // connected ms in slot k at ms[k % N]
    int64_t end = -1;              // newest slot written (absolute index)
    void Add(int64_t slot, uint32_t v);
    uint32_t At(int64_t slot) const { return slot > end || slot <= end - N ? 0 : ms[slot % N]; }
  };
  // Counts [from, to) as connected in both rings.
  void AddConnected(int64_t from_ms, int64_t to_ms);
  // Closes the open interval at its last accounting (its end is unknown).
  void CloseStale();
  template <int N>
  static double Sum(const Ring<N>& r, int64_t slot_ms, int64_t first_ms, int64_t from_ms, int64_t to_ms);

  int64_t first_ms_ = 0;       // first connect seen
  int64_t open_since_ms_ = 0;  // connected: since (0: offline)
  int64_t accounted_ms_ = 0;   // connected time counted up to here
  int64_t last_disconnect_ms_ = 0;
  uint64_t connects_ = 0;
  LinkCounters totals_;
  std::map<std::string, uint64_t> disconnects_;  // by reason (a few names)
  int64_t last_error_ms_ = 0;
  std::string last_error_reason_, last_error_;
  Ring<kMinutes> minutes_;
  Ring<kHours> hours_;
};

}  // namespace fmq::health

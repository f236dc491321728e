#include "mgmt/health/link.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace fmq::health {
namespace {

using Json = nlohmann::json;

constexpr int64_t kMinuteMs = 60'000;
constexpr int64_t kHourMs = 3'600'000;

// Disconnect reasons that say something went wrong with the device or its
// network (the last error); clean, takeover, shutdown and administrative
// closes do not.
bool IsError(std::string_view reason) {
  return reason == "protocol_error" || reason == "keepalive_timeout" || reason == "connection_lost";
}

// The delta's fields by their stored and shown names.
template <typename F>
void Fields(LinkCounters& d, F f) {
  f("bytes_in", d.bytes_in);
  f("bytes_out", d.bytes_out);
  f("packets_in", d.packets_in);
  f("packets_out", d.packets_out);
  f("publish_in", d.publish_in);
  f("publish_out", d.publish_out);
  f("denied", d.denied);
}

template <typename T>
bool Read(const Json& j, const char* k, T* out) {
  auto it = j.find(k);
  if (it == j.end() || !it->is_number_integer()) return false;
  if constexpr (std::is_unsigned_v<T>) {
    if (!it->is_number_unsigned() && it->get<int64_t>() < 0) return false;
  }
  *out = it->get<T>();
  return true;
}

template <size_t N>
Json Sparse(const std::array<uint32_t, N>& ms) {
  Json a = Json::array();
  for (size_t i = 0; i < N; ++i) {
    if (ms[i] != 0) a.push_back(Json::array({i, ms[i]}));
  }
  return a;
}

}  // namespace

template <int N>
void LinkRecord::Ring<N>::Add(int64_t slot, uint32_t v) {
  if (slot <= end - N || slot < 0) return;  // older than the ring
  if (slot > end) {
    // Slots skipped since `end` held nothing: zero them (at most N).
    for (int64_t k = std::max(end + 1, slot - N + 1); k <= slot; ++k) ms[k % N] = 0;
    end = slot;
  }
  ms[slot % N] += v;
}

void LinkRecord::AddConnected(int64_t from_ms, int64_t to_ms) {
  if (to_ms <= from_ms) return;
  auto fill = [&](auto& ring, int64_t slot_ms, int n) {
    const int64_t last = (to_ms - 1) / slot_ms;
    for (int64_t k = std::max(from_ms / slot_ms, last - n + 1); k <= last; ++k) {
      const int64_t a = std::max(from_ms, k * slot_ms), b = std::min(to_ms, (k + 1) * slot_ms);
      ring.Add(k, static_cast<uint32_t>(b - a));
    }
  };
  fill(minutes_, kMinuteMs, kMinutes);
  fill(hours_, kHourMs, kHours);
}

void LinkRecord::CloseStale() {
  if (open_since_ms_ == 0) return;
  disconnects_["unrecorded"]++;  // the broker stopped before it saw the end
  last_disconnect_ms_ = accounted_ms_;
  open_since_ms_ = 0;
}

void LinkRecord::Apply(const LinkEvent& e) {
  totals_ += e.delta;
  switch (e.kind) {
    case LinkEvent::Kind::kConnected:
      CloseStale();
      if (first_ms_ == 0) first_ms_ = e.wall_ms;
      open_since_ms_ = accounted_ms_ = std::max<int64_t>(e.wall_ms, 1);
      connects_++;
      break;
    case LinkEvent::Kind::kCounters:
      if (open_since_ms_ != 0 && e.wall_ms > accounted_ms_) {
        AddConnected(accounted_ms_, e.wall_ms);
        accounted_ms_ = e.wall_ms;
      }
      break;
    case LinkEvent::Kind::kDisconnected:
      if (open_since_ms_ != 0) AddConnected(accounted_ms_, e.wall_ms);
      open_since_ms_ = 0;
      last_disconnect_ms_ = e.wall_ms;
      if (!e.reason.empty()) disconnects_[e.reason]++;
      if (IsError(e.reason)) {
        last_error_ms_ = e.wall_ms;
        last_error_reason_ = e.reason;
        last_error_ = e.error;
      }
      break;
  }
}

template <int N>
double LinkRecord::Sum(const Ring<N>& r, int64_t slot_ms, int64_t first_ms, int64_t from_ms, int64_t to_ms) {
  double sum = 0;
  for (int64_t k = std::max<int64_t>(from_ms / slot_ms, 0); k * slot_ms < to_ms; ++k) {
    const uint32_t v = r.At(k);
    if (v == 0) continue;
    // A slot's time is spread evenly over the part of it that is known
    // (since first seen, up to now); the window takes its share of that.
    const int64_t a = std::max(k * slot_ms, first_ms), b = std::min((k + 1) * slot_ms, to_ms);
    const int64_t in = b - std::max(a, from_ms);
    if (b <= a || in <= 0) continue;
    sum += static_cast<double>(v) * static_cast<double>(in) / static_cast<double>(b - a);
  }
  return sum;
}

double LinkRecord::Uptime(int64_t now_ms, int64_t window_ms, bool online) const {
  if (first_ms_ == 0) return -1;
  const int64_t span = std::min(window_ms, now_ms - first_ms_);
  if (span <= 0) return -1;
  LinkRecord r = *this;
  if (online && r.open_since_ms_ != 0) r.AddConnected(r.accounted_ms_, now_ms);
  const bool minutes = window_ms <= kMinutes * kMinuteMs;
  const double up = minutes ? Sum(r.minutes_, kMinuteMs, first_ms_, now_ms - span, now_ms)
                            : Sum(r.hours_, kHourMs, first_ms_, now_ms - span, now_ms);
  return std::clamp(up / static_cast<double>(span), 0.0, 1.0);
}

Json LinkRecord::ToJson(int64_t now_ms, bool online) const {
  if (!online && open_since_ms_ != 0) {
    // Left open by a broker that stopped: shown as the device's next
    // connect will record it.
    LinkRecord closed = *this;
    closed.CloseStale();
    return closed.ToJson(now_ms, false);
  }
  Json j = Json::object();
  j["connects"] = connects_;
  if (first_ms_ != 0) j["first_connected_ms"] = first_ms_;
  if (last_disconnect_ms_ != 0) j["last_disconnect_ms"] = last_disconnect_ms_;
  Json disc = Json::object();
  for (const auto& [why, n] : disconnects_) disc[why] = n;
  j["disconnects"] = std::move(disc);
  auto pe = disconnects_.find("protocol_error");
  j["protocol_errors"] = pe == disconnects_.end() ? 0 : pe->second;
  LinkCounters t = totals_;
  Fields(t, [&](const char* k, uint64_t v) { j[k] = v; });
  j["counted_to_ms"] = open_since_ms_ != 0 ? accounted_ms_ : last_disconnect_ms_;
  Json up = Json::object();
  const std::pair<const char*, int64_t> windows[] = {{"1h", kHourMs}, {"24h", 24 * kHourMs}, {"7d", 7 * 24 * kHourMs}};
  for (const auto& [name, w] : windows) {
    const double r = Uptime(now_ms, w, online);
    up[name] = r < 0 ? Json(nullptr) : Json(std::round(r * 10000) / 10000);
  }
  j["uptime"] = std::move(up);
  if (last_error_ms_ != 0) {
    Json e{{"time_ms", last_error_ms_}, {"reason", last_error_reason_}};
    if (!last_error_.empty()) e["detail"] = last_error_;
    j["last_error"] = std::move(e);
  }
  return j;
}

std::string LinkRecord::Encode() const {
  Json j{{"v", 1},
         {"first", first_ms_},
         {"open", open_since_ms_},
         {"acc", accounted_ms_},
         {"last_disc", last_disconnect_ms_},
         {"connects", connects_},
         {"err_ms", last_error_ms_},
         {"err_reason", last_error_reason_},
         {"err", last_error_},
         {"m_end", minutes_.end},
         {"m", Sparse(minutes_.ms)},
         {"h_end", hours_.end},
         {"h", Sparse(hours_.ms)}};
  LinkCounters t = totals_;
  Fields(t, [&](const char* k, uint64_t v) { j[k] = v; });
  Json disc = Json::object();
  for (const auto& [why, n] : disconnects_) disc[why] = n;
  j["disc"] = std::move(disc);
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

bool LinkRecord::Decode(std::string_view bytes, LinkRecord* out) {
  Json j = Json::parse(bytes, nullptr, false);
  if (!j.is_object() || j.value("v", 0) != 1) return false;
  LinkRecord r;
  bool ok = Read(j, "first", &r.first_ms_) && Read(j, "open", &r.open_since_ms_) && Read(j, "acc", &r.accounted_ms_) &&
            Read(j, "last_disc", &r.last_disconnect_ms_) && Read(j, "connects", &r.connects_) &&
            Read(j, "err_ms", &r.last_error_ms_) && Read(j, "m_end", &r.minutes_.end) &&
            Read(j, "h_end", &r.hours_.end);
  Fields(r.totals_, [&](const char* k, uint64_t& v) { ok = ok && Read(j, k, &v); });
  // Times are unix ms within a sane range (arithmetic on them cannot overflow).
  constexpr int64_t kMaxMs = int64_t{1} << 50;
  for (int64_t t : {r.first_ms_, r.open_since_ms_, r.accounted_ms_, r.last_disconnect_ms_, r.last_error_ms_}) {
    ok = ok && t >= 0 && t < kMaxMs;
  }
  if (!ok || r.minutes_.end < -1 || r.hours_.end < -1 || r.minutes_.end > kMaxMs / kMinuteMs ||
      r.hours_.end > kMaxMs / kHourMs) {
    return false;
  }
  auto str = [&](const char* k, std::string* s) {
    auto it = j.find(k);
    if (it == j.end() || !it->is_string()) return false;
    *s = it->get<std::string>();
    return true;
  };
  if (!str("err_reason", &r.last_error_reason_) || !str("err", &r.last_error_)) return false;
  // A ring is stored sparse: [[index, ms], ...] for the slots not zero.
  auto ring = [&](const char* k, auto* arr, uint32_t max) {
    auto it = j.find(k);
    if (it == j.end() || !it->is_array() || it->size() > arr->size()) return false;
    for (const Json& x : *it) {
      if (!x.is_array() || x.size() != 2 || !x[0].is_number_unsigned() || !x[1].is_number_unsigned()) return false;
      const uint64_t i = x[0].get<uint64_t>(), v = x[1].get<uint64_t>();
      if (i >= arr->size() || v > max) return false;
      (*arr)[i] = static_cast<uint32_t>(v);
    }
    return true;
  };
  if (!ring("m", &r.minutes_.ms, kMinuteMs) || !ring("h", &r.hours_.ms, kHourMs)) return false;
  auto disc = j.find("disc");
  if (disc == j.end() || !disc->is_object() || disc->size() > 32) return false;
  for (auto it = disc->begin(); it != disc->end(); ++it) {
    if (!it->is_number_unsigned()) return false;
    r.disconnects_[it.key()] = it->get<uint64_t>();
  }
  *out = std::move(r);
  return true;
}

}  // namespace fmq::health

// A hashed deadline wheel: O(1) to schedule, O(1) amortized per expiry,
// never a scan over all clients. Entries are (key, kind) pairs; the owner
// checks on expiry whether the entry still applies (the classic lazy
// scheme: a keepalive refresh only stores a timestamp, and the entry is
// re-armed when its slot comes round). Owned by one worker's Broker.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace fmq {

class TimerWheel {
 public:
  // 16 bytes: an idle connection has two (connect timeout, keep alive)
  // and their size is part of the per-connection memory target.
  static constexpr uint64_t kMaxKey = (uint64_t{1} << 56) - 1;
  struct Entry {
    uint64_t key : 56;  // connection and session ids stay below 2^56
    uint64_t kind : 8;
    int64_t deadline_ms;
  };
  static_assert(sizeof(Entry) == 16);

  // `resolution_ms` is the slot width; the wheel spans slots * resolution.
  TimerWheel(int64_t now_ms, int64_t resolution_ms = 250, size_t slots = 4096);

  // Schedules (key, kind) at `deadline_ms`; key <= kMaxKey. A deadline beyond the wheel's
  // span lands in the farthest slot and is handed back early; the owner
  // sees deadline_ms > now and re-schedules it.
  void Schedule(int64_t deadline_ms, uint64_t key, uint8_t kind);

  // Advances to `now_ms`, calling fire(const Entry&) for every entry whose
  // slot has passed. fire may call Schedule.
  template <class F>
  void Advance(int64_t now_ms, F&& fire);

  size_t size() const { return size_; }

 private:
  int64_t SlotTime(int64_t t) const { return t / resolution_; }
  static constexpr size_t kKeepCapacity = 64;

  int64_t resolution_;
  int64_t current_;  // slot time processed up to (exclusive)
  std::vector<std::vector<Entry>> slots_;
  std::vector<Entry> firing_;
  size_t size_ = 0;
};

template <class F>
void TimerWheel::Advance(int64_t now_ms, F&& fire) {
  const int64_t target = SlotTime(now_ms);
  while (current_ <= target) {
    auto& slot = slots_[static_cast<size_t>(current_) % slots_.size()];
    ++current_;
    if (slot.empty()) continue;
    firing_.clear();
    firing_.swap(slot);
    // The slot now holds firing_'s old, emptied buffer. A large one is
    // freed rather than parked: otherwise every slot a big batch passes
    // through keeps that batch's capacity (measured: ~200 bytes per
    // connection at 20k connections).
    if (slot.capacity() > kKeepCapacity) std::vector<Entry>().swap(slot);
    size_ -= firing_.size();
    for (const Entry& e : firing_) fire(e);
  }
}

}  // namespace fmq

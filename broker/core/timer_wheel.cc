#include "broker/core/timer_wheel.h"

#include <cassert>

namespace fmq {

TimerWheel::TimerWheel(int64_t now_ms, int64_t resolution_ms, size_t slots)
    : resolution_(resolution_ms), current_(now_ms / resolution_ms), slots_(slots) {}

void TimerWheel::Schedule(int64_t deadline_ms, uint64_t key, uint8_t kind) {
  assert(key <= kMaxKey);
  int64_t t = SlotTime(deadline_ms);
  // An entry lands in the first slot still to be processed at the earliest,
  // and at most one full turn ahead (then it fires early and is re-armed).
  if (t < current_) t = current_;
  const int64_t last = current_ + static_cast<int64_t>(slots_.size()) - 1;
  if (t > last) t = last;
  slots_[static_cast<size_t>(t) % slots_.size()].push_back({key, kind, deadline_ms});
  ++size_;
}

}  // namespace fmq

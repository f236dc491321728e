// Injected time source. The broker reads time only through Clock so tests
// drive keepalive, expiry and will delays with FakeClock. SystemClock is
// thread-safe; FakeClock belongs to the test thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <ctime>

namespace fmq {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic milliseconds; only differences are meaningful.
  virtual int64_t NowMs() const = 0;
  // Wall-clock milliseconds since the Unix epoch, for times that must
  // survive a restart (stored expiry deadlines).
  virtual int64_t WallMs() const = 0;
};

class SystemClock final : public Clock {
 public:
  int64_t NowMs() const override {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
  }
  int64_t WallMs() const override {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
  }
};

// A clock the test moves. Atomic, so a test may advance it while a thread
// it started (the management thread) reads it.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_ms = 1'000'000) : now_(start_ms) {}
  int64_t NowMs() const override { return now_.load(std::memory_order_relaxed); }
  int64_t WallMs() const override { return NowMs() + kWallOffset; }
  void Advance(int64_t ms) { now_.fetch_add(ms, std::memory_order_relaxed); }
  static constexpr int64_t kWallOffset = 1'700'000'000'000;

 private:
  std::atomic<int64_t> now_;
};

}  // namespace fmq

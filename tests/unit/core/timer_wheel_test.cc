#include <doctest/doctest.h>

#include <map>

#include "broker/core/timer_wheel.h"

namespace fmq {
namespace {

TEST_CASE("deadline wheel fires each entry at or after its deadline, never before its slot") {
  TimerWheel w(0, 100, 16);  // 1.6 s span
  w.Schedule(250, 1, 0);
  w.Schedule(50, 2, 0);
  w.Schedule(10'000, 3, 0);  // beyond the span: handed back early
  std::map<uint64_t, int64_t> fired;
  for (int64_t now = 0; now <= 12'000; now += 50) {
    w.Advance(now, [&](const TimerWheel::Entry& e) {
      if (now < e.deadline_ms) {
        w.Schedule(e.deadline_ms, e.key, e.kind);  // the owner re-arms early entries
        return;
      }
      fired[e.key] = now;
    });
  }
  CHECK(fired.size() == 3);
  CHECK(fired[2] >= 50);
  CHECK(fired[2] < 200);
  CHECK(fired[1] >= 250);
  CHECK(fired[1] < 400);
  CHECK(fired[3] >= 10'000);
  CHECK(fired[3] < 10'200);
  CHECK(w.size() == 0);
}

TEST_CASE("a past deadline fires within one slot") {
  TimerWheel w(1000, 250);
  w.Advance(5000, [](const TimerWheel::Entry&) {});
  w.Schedule(100, 9, 1);
  int n = 0;
  w.Advance(5000, [&](const TimerWheel::Entry& e) { n += e.key == 9; });
  CHECK(n == 0);  // slot 5000..5249 was already processed
  w.Advance(5250, [&](const TimerWheel::Entry& e) { n += e.key == 9; });
  CHECK(n == 1);
}

}  // namespace
}  // namespace fmq

#include "broker/core/timer_wheel.h"

#include <doctest/doctest.h>

#include <map>

namespace fmq {
namespace {

TEST_CASE("deadline wheel hands each entry back in its deadline's slot, never an earlier one") {
  TimerWheel w(0, 100, 16);  // 1.6 s span
  w.Schedule(250, 1, 0);
  w.Schedule(50, 2, 0);
  w.Schedule(10'000, 3, 0);  // beyond the span: handed back early
  std::map<uint64_t, int64_t> fired;
  std::map<uint64_t, int> early;  // handed back before the deadline
  for (int64_t now = 0; now <= 12'000; now += 50) {
    w.Advance(now, [&](const TimerWheel::Entry& e) {
      if (now < e.deadline_ms) {
        // Within the span an entry may come back at the start of its
        // deadline's slot (the owner re-arms it), never in an earlier slot;
        // beyond the span, once per lap.
        if (e.key != 3) CHECK(now >= e.deadline_ms / 100 * 100);
        early[e.key]++;
        w.Schedule(e.deadline_ms, e.key, e.kind);
        return;
      }
      fired[e.key] = now;
    });
  }
  CHECK(early[1] <= 1);
  CHECK(early[2] <= 1);
  CHECK(early[3] >= 1);
  CHECK(early[3] <= 7);  // 10 s over a 1.6 s span
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

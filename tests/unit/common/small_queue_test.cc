#include "common/small_queue.h"

#include <doctest/doctest.h>

#include <deque>
#include <memory>
#include <random>

namespace fmq {
namespace {

TEST_CASE("SmallQueue behaves like std::deque for FIFO use, across growth and wraparound") {
  SmallQueue<std::unique_ptr<int>> q;
  std::deque<int> ref;
  std::mt19937 rng(3);
  for (int step = 0; step < 20000; ++step) {
    if (rng() % 3 != 0 || ref.empty()) {
      q.push_back(std::make_unique<int>(step));
      ref.push_back(step);
    } else {
      REQUIRE(*q.front() == ref.front());
      q.pop_front();
      ref.pop_front();
    }
    REQUIRE(q.size() == ref.size());
    if (step % 997 == 0) {
      size_t i = 0;
      for (const auto& v : q) CHECK(*v == ref[i++]);
      CHECK(i == ref.size());
    }
  }
  q.clear();
  CHECK(q.empty());
}

TEST_CASE("SmallQueue holds no memory while empty") {
  CHECK(sizeof(SmallQueue<std::string>) <= 24);
  SmallQueue<std::string> q;
  CHECK(q.capacity() == 0);
  q.push_back("a");
  CHECK(q.capacity() > 0);
  q.pop_front();
  CHECK(q.empty());
  CHECK(q.capacity() == 0);  // the buffer was released
  q.push_back("b");          // usable again after releasing its buffer
  CHECK(q.front() == "b");
}

}  // namespace
}  // namespace fmq

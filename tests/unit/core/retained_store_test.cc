#include "broker/core/retained_store.h"

#include <doctest/doctest.h>

namespace fmq {
namespace {

MessagePtr Msg(const std::string& topic, const std::string& payload, uint64_t stamp) {
  auto m = std::make_shared<Message>();
  m->topic = topic;
  m->payload = payload;
  m->retain = true;
  m->stamp = stamp;
  return m;
}

size_t Count(RetainedStore& r, const std::string& filter) {
  size_t n = 0;
  r.Match(filter, 0, [&](const MessagePtr&) { ++n; });
  return n;
}

TEST_CASE("retained store: stamped clears leave tombstones that hold off older updates until pruned") {
  RetainedStore r;
  CHECK(r.Set(Msg("a/b", "v1", 10)));
  CHECK(r.Set(Msg("a/b", "", 30)));  // a clear from another worker, newer
  CHECK(r.size() == 0);
  CHECK(r.tombstones() == 1);
  CHECK(Count(r, "#") == 0);                 // a tombstone is never served
  CHECK_FALSE(r.Set(Msg("a/b", "v2", 20)));  // older than the clear: ignored
  CHECK(Count(r, "a/+") == 0);
  CHECK(r.Set(Msg("a/b", "v3", 40)));  // newer: stored
  CHECK(Count(r, "a/b") == 1);
  r.PruneTombstones(100);  // the tombstone was replaced: nothing to drop
  CHECK(Count(r, "a/b") == 1);
  // A clear for a topic never seen still leaves its tombstone.
  CHECK(r.Set(Msg("c/d", "", 50)));
  CHECK_FALSE(r.Set(Msg("c/d", "late", 45)));
  CHECK(r.tombstones() == 1);
  r.PruneTombstones(60);
  CHECK(r.tombstones() == 0);
  // Single worker (stamp 0): a clear removes at once, no tombstone.
  RetainedStore one;
  CHECK(one.Set(Msg("x", "v", 0)));
  CHECK(one.Set(Msg("x", "", 0)));
  CHECK(one.tombstones() == 0);
  CHECK(one.size() == 0);
}

}  // namespace
}  // namespace fmq

// Topic names, filters, shared subscriptions and matching; the subscription
// tree checked against the reference matcher on random topics.
#include "broker/mqtt/topic.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <set>

#include "broker/core/topic_tree.h"
#include "broker/mqtt/utf8.h"

namespace fmq {
namespace {

using mqtt::ReasonCode;
using mqtt::TopicLimits;

TEST_CASE("topic names") {
  TopicLimits l;
  CHECK(mqtt::ValidateTopicName("a/b", l).ok());
  CHECK(mqtt::ValidateTopicName("/", l).ok());
  CHECK(mqtt::ValidateTopicName("$SYS/x", l).ok());
  CHECK(mqtt::ValidateTopicName("", l).code == ReasonCode::kTopicNameInvalid);
  CHECK(mqtt::ValidateTopicName("a/+", l).code == ReasonCode::kTopicNameInvalid);
  CHECK(mqtt::ValidateTopicName("a/#", l).code == ReasonCode::kTopicNameInvalid);
  CHECK(mqtt::ValidateTopicName(std::string("a\0b", 3), l).code == ReasonCode::kTopicNameInvalid);
  TopicLimits small{5, 2};
  CHECK(mqtt::ValidateTopicName("abcdef", small).code == ReasonCode::kTopicNameInvalid);
  CHECK(mqtt::ValidateTopicName("a/b/c", small).code == ReasonCode::kTopicNameInvalid);
  CHECK(mqtt::ValidateTopicName("a/b", small).ok());
}

TEST_CASE("topic filters") {
  TopicLimits l;
  for (const char* ok : {"#", "+", "a/#", "a/+/b", "+/+", "/#", "$share/g/a/#", "$share/g/#", "a//b"}) {
    CHECK_MESSAGE(mqtt::ValidateTopicFilter(ok, l).ok(), ok);
  }
  for (const char* bad :
       {"a#", "a/#/b", "a+", "a/b+", "#/a", "$share/g", "$share//a", "$share/g+/a", "$share/g/", ""}) {
    CHECK_MESSAGE(mqtt::ValidateTopicFilter(bad, l).code == ReasonCode::kTopicFilterInvalid, bad);
  }
  mqtt::SharedFilter sf;
  REQUIRE(mqtt::ParseShared("$share/grp/x/+", &sf));
  CHECK(sf.shared);
  CHECK(sf.group == "grp");
  CHECK(sf.filter == "x/+");
}

TEST_CASE("reference matcher follows the spec examples") {
  using mqtt::TopicMatches;
  CHECK(TopicMatches("sport/tennis/player1/#", "sport/tennis/player1"));
  CHECK(TopicMatches("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
  CHECK(TopicMatches("sport/#", "sport"));
  CHECK(TopicMatches("#", "a/b"));
  CHECK(TopicMatches("sport/+/player1", "sport/tennis/player1"));
  CHECK_FALSE(TopicMatches("sport/+", "sport"));
  CHECK(TopicMatches("sport/+", "sport/"));
  CHECK(TopicMatches("+/+", "/finance"));
  CHECK(TopicMatches("/+", "/finance"));
  CHECK_FALSE(TopicMatches("+", "/finance"));
  CHECK_FALSE(TopicMatches("#", "$SYS/x"));
  CHECK_FALSE(TopicMatches("+/monitor/Clients", "$SYS/monitor/Clients"));
  CHECK(TopicMatches("$SYS/#", "$SYS/monitor/Clients"));
  CHECK(TopicMatches("$SYS/monitor/+", "$SYS/monitor/Clients"));
}

TEST_CASE("UTF-8 rules") {
  CHECK(mqtt::IsValidMqttUtf8("héllo €𝄞"));
  CHECK_FALSE(mqtt::IsValidMqttUtf8(std::string("\0", 1)));
  CHECK(mqtt::IsValidUtf8(std::string("\0", 1)));
  CHECK_FALSE(mqtt::IsValidMqttUtf8("\xed\xa0\x80"));      // surrogate
  CHECK_FALSE(mqtt::IsValidMqttUtf8("\xc0\xaf"));          // overlong
  CHECK_FALSE(mqtt::IsValidMqttUtf8("\xf4\x90\x80\x80"));  // > U+10FFFF
  CHECK_FALSE(mqtt::IsValidMqttUtf8("\xe2\x82"));          // truncated
  CHECK_FALSE(mqtt::IsValidMqttUtf8("\xff"));
}

std::set<std::string> TreeMatches(TopicTree& t, const std::string& topic) {
  std::set<std::string> out;
  t.Match(
      topic, [&](const TopicTree::Subscriber& s) { out.insert(s.session->client_id); },
      [&](TopicTree::SharedGroup& g) { out.insert("group:" + g.name); });
  return out;
}

TEST_CASE("subscription tree agrees with the reference matcher on random input") {
  std::mt19937 rng(12345);
  const std::vector<std::string> words = {"a", "b", "c", "$SYS", "", "dev"};
  auto random_levels = [&](bool filter) {
    int n = 1 + static_cast<int>(rng() % 4);
    std::string s;
    for (int i = 0; i < n; ++i) {
      if (i) s += '/';
      int r = static_cast<int>(rng() % 10);
      if (filter && r == 0)
        s += '+';
      else if (filter && r == 1 && i == n - 1)
        s += '#';
      else
        s += words[rng() % words.size()];
    }
    return s;
  };
  std::vector<std::unique_ptr<Session>> sessions;
  std::vector<std::string> filters;
  TopicTree tree;
  for (int i = 0; i < 300; ++i) {
    std::string f = random_levels(true);
    if (!mqtt::ValidateTopicFilter(f, {}).ok()) continue;
    auto s = std::make_unique<Session>();
    s->client_id = "s" + std::to_string(i);
    tree.Add(f, "", s.get(), {});
    filters.push_back(f);
    sessions.push_back(std::move(s));
  }
  for (int i = 0; i < 2000; ++i) {
    std::string topic = random_levels(false);
    std::set<std::string> want;
    for (size_t k = 0; k < filters.size(); ++k) {
      if (mqtt::TopicMatches(filters[k], topic)) want.insert(sessions[k]->client_id);
    }
    CHECK_MESSAGE(TreeMatches(tree, topic) == want, topic);
  }
  // Removing everything prunes the tree back to its root.
  for (size_t k = 0; k < filters.size(); ++k) CHECK(tree.Remove(filters[k], "", sessions[k].get()));
  CHECK(tree.node_count() == 1);
}

TEST_CASE("shared groups are separate from plain subscriptions") {
  TopicTree tree;
  Session a, b;
  a.client_id = "a";
  b.client_id = "b";
  CHECK(tree.Add("x/+", "g1", &a, {}));
  CHECK(tree.Add("x/+", "g1", &b, {}));
  CHECK_FALSE(tree.Add("x/+", "g1", &b, {}));  // replaced, not added
  CHECK(tree.Add("x/+", "", &a, {}));
  auto m = TreeMatches(tree, "x/y");
  CHECK(m == std::set<std::string>{"a", "group:g1"});
  CHECK(tree.Remove("x/+", "g1", &a));
  CHECK(tree.Remove("x/+", "g1", &b));
  CHECK_FALSE(tree.Remove("x/+", "g1", &b));
  CHECK(TreeMatches(tree, "x/y") == std::set<std::string>{"a"});
}

}  // namespace
}  // namespace fmq

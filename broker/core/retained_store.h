// Retained messages [MQTT-3.3.1.3], one per topic, in a trie over topic
// levels so a SUBSCRIBE with wildcards visits only matching branches.
// Expired messages are dropped when met. Owned by one worker's Broker;
// single-threaded.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "broker/core/message.h"
#include "common/string_map.h"

namespace fmq {

class RetainedStore {
 public:
  RetainedStore();
  ~RetainedStore();

  // Stores `msg` for its topic; an empty payload clears it [MQTT-3.3.1-6].
  // A message older (Message::stamp) than the one held is ignored, so
  // workers applying the same updates in different orders agree. A clear
  // with a stamp (several workers) leaves a tombstone holding its stamp, so
  // an older update that arrives after it is ignored too; tombstones are
  // invisible to Match and size() and are pruned by PruneTombstones.
  // Returns whether it took effect.
  bool Set(const MessagePtr& msg);
  // Drops tombstones whose stamp is below `stamp` (older than any message
  // still travelling between workers).
  void PruneTombstones(uint64_t stamp);
  size_t tombstones() const { return tombstones_.size(); }
  // Calls fn(const MessagePtr&) for each unexpired retained message
  // matching `filter` (already validated, no $share prefix).
  void Match(std::string_view filter, int64_t now_ms, const std::function<void(const MessagePtr&)>& fn);
  size_t size() const { return count_; }

 private:
  struct Node {
    StringMap<std::unique_ptr<Node>> children;
    Node* parent = nullptr;
    std::string level;
    MessagePtr msg;
  };
  void Walk(Node* n, const std::vector<std::string_view>& f, size_t i, int64_t now_ms,
            const std::function<void(const MessagePtr&)>& fn);
  void VisitAll(Node* n, bool skip_dollar, int64_t now_ms, const std::function<void(const MessagePtr&)>& fn);
  bool Take(Node* n, int64_t now_ms, const std::function<void(const MessagePtr&)>& fn);

  void EraseEmptyPath(Node* n);

  std::unique_ptr<Node> root_;
  size_t count_ = 0;
  std::deque<std::pair<uint64_t, std::string>> tombstones_;  // (stamp, topic), stamp order
  std::vector<Node*> expired_;
};

}  // namespace fmq

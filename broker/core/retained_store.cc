#include "broker/core/retained_store.h"

#include "broker/core/topic_tree.h"

namespace fmq {

RetainedStore::RetainedStore() : root_(std::make_unique<Node>()) {}
RetainedStore::~RetainedStore() = default;

bool RetainedStore::Set(const MessagePtr& msg) {
  std::vector<std::string_view> levels;
  SplitLevels(msg->topic, &levels);
  const bool clear = msg->payload.empty();
  const bool tombstone = clear && msg->stamp != 0;
  Node* n = root_.get();
  for (std::string_view level : levels) {
    auto it = n->children.find(level);
    if (it == n->children.end()) {
      if (clear && !tombstone) return true;
      auto child = std::make_unique<Node>();
      child->parent = n;
      child->level.assign(level);
      Node* c = child.get();
      n->children.emplace(std::string(level), std::move(child));
      n = c;
    } else {
      n = it->second.get();
    }
  }
  if (n->msg && n->msg->stamp > msg->stamp) return false;  // an older update, seen late
  if (n->msg && !n->msg->payload.empty()) --count_;
  if (clear) {
    if (tombstone) {
      n->msg = msg;  // remembers the clear's stamp
      tombstones_.emplace_back(msg->stamp, msg->topic);
    } else {
      n->msg.reset();
      EraseEmptyPath(n);
    }
    return true;
  }
  ++count_;
  n->msg = msg;
  return true;
}

void RetainedStore::EraseEmptyPath(Node* n) {
  while (n != root_.get() && !n->msg && n->children.empty()) {
    Node* parent = n->parent;
    parent->children.erase(n->level);
    n = parent;
  }
}

void RetainedStore::PruneTombstones(uint64_t stamp) {
  std::vector<std::string_view> levels;
  while (!tombstones_.empty() && tombstones_.front().first < stamp) {
    const auto [t, topic] = std::move(tombstones_.front());
    tombstones_.pop_front();
    levels.clear();
    SplitLevels(topic, &levels);
    Node* n = root_.get();
    for (std::string_view level : levels) {
      auto it = n->children.find(level);
      if (it == n->children.end()) {
        n = nullptr;
        break;
      }
      n = it->second.get();
    }
    // Still that tombstone (not replaced by a newer message or clear).
    if (n != nullptr && n->msg && n->msg->payload.empty() && n->msg->stamp == t) {
      n->msg.reset();
      EraseEmptyPath(n);
    }
  }
}

bool RetainedStore::Take(Node* n, int64_t now_ms, const std::function<void(const MessagePtr&)>& fn) {
  if (!n->msg || n->msg->payload.empty()) return false;  // none, or a tombstone
  if (n->msg->Expired(now_ms)) {
    expired_.push_back(n);
    return false;
  }
  fn(n->msg);
  return true;
}

void RetainedStore::VisitAll(Node* n, bool skip_dollar, int64_t now_ms,
                             const std::function<void(const MessagePtr&)>& fn) {
  for (auto& [level, child] : n->children) {
    if (skip_dollar && !level.empty() && level[0] == '$') continue;
    Take(child.get(), now_ms, fn);
    VisitAll(child.get(), false, now_ms, fn);
  }
}

void RetainedStore::Walk(Node* n, const std::vector<std::string_view>& f, size_t i, int64_t now_ms,
                         const std::function<void(const MessagePtr&)>& fn) {
  if (i == f.size()) {
    Take(n, now_ms, fn);
    return;
  }
  // The first level a client sees: 0, or 2 inside a tenant mount.
  const bool first = i == 0 || (i == 2 && f[0] == "$T");
  if (f[i] == "#") {
    // "a/#" matches "a" itself and everything below [MQTT-4.7.1-2].
    if (i != 0) Take(n, now_ms, fn);
    VisitAll(n, first, now_ms, fn);
    return;
  }
  if (f[i] == "+") {
    for (auto& [level, child] : n->children) {
      if (first && !level.empty() && level[0] == '$') continue;  // [MQTT-4.7.2-1]
      Walk(child.get(), f, i + 1, now_ms, fn);
    }
    return;
  }
  if (auto it = n->children.find(f[i]); it != n->children.end()) {
    Walk(it->second.get(), f, i + 1, now_ms, fn);
  }
}

void RetainedStore::Match(std::string_view filter, int64_t now_ms, const std::function<void(const MessagePtr&)>& fn) {
  std::vector<std::string_view> levels;
  SplitLevels(filter, &levels);
  Walk(root_.get(), levels, 0, now_ms, fn);
  // Drop expired messages met on the way [MQTT-3.3.2-5]. Directly, not
  // through Set: a clear without a stamp would count as older than the
  // stamped message it clears. (Every worker drops its own copy when it
  // meets it; none needs a tombstone, nothing newer is lost.)
  std::vector<Node*> expired;
  expired.swap(expired_);
  for (Node* n : expired) {
    if (!n->msg) continue;
    n->msg.reset();
    --count_;
    EraseEmptyPath(n);
  }
}

}  // namespace fmq

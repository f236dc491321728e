#include "broker/core/retained_store.h"

#include "broker/core/topic_tree.h"

namespace fmq {

RetainedStore::RetainedStore() : root_(std::make_unique<Node>()) {}
RetainedStore::~RetainedStore() = default;

bool RetainedStore::Set(const MessagePtr& msg) {
  std::vector<std::string_view> levels;
  SplitLevels(msg->topic, &levels);
  const bool clear = msg->payload.empty();
  Node* n = root_.get();
  for (std::string_view level : levels) {
    auto it = n->children.find(level);
    if (it == n->children.end()) {
      if (clear) return true;
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
  if (clear) {
    if (n->msg) --count_;
    n->msg.reset();
    while (n != root_.get() && !n->msg && n->children.empty()) {
      Node* parent = n->parent;
      parent->children.erase(n->level);
      n = parent;
    }
    return true;
  }
  if (!n->msg) ++count_;
  n->msg = msg;
  return true;
}

bool RetainedStore::Take(Node* n, int64_t now_ms, const std::function<void(const MessagePtr&)>& fn) {
  if (!n->msg) return false;
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
  // Drop expired messages met on the way [MQTT-3.3.2-5].
  std::vector<Node*> expired;
  expired.swap(expired_);
  for (Node* n : expired) {
    auto empty = std::make_shared<Message>();
    empty->topic.clear();
    // Rebuild the topic from the path to clear it through Set.
    std::vector<std::string> path;
    for (Node* p = n; p != root_.get(); p = p->parent) path.push_back(p->level);
    std::string topic;
    for (size_t k = path.size(); k-- > 0;) {
      topic += path[k];
      if (k) topic += '/';
    }
    empty->topic = std::move(topic);
    Set(empty);
  }
}

}  // namespace fmq

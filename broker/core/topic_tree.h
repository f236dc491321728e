// The subscription index: a trie over topic levels holding, per filter, the
// sessions subscribed with their options, and the shared-subscription
// groups [MQTT-4.8.2]. Matching a topic costs O(levels x wildcard branches),
// independent of the number of subscribers elsewhere in the tree. Owned by
// one worker's Broker; single-threaded.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "broker/core/session.h"
#include "common/string_map.h"

namespace fmq {

class SharedMask;

class TopicTree {
 public:
  struct Subscriber {
    Session* session;
    SubOptions opts;
  };
  struct SharedGroup {
    std::string name;
    std::vector<Subscriber> members;
    size_t next = 0;  // round-robin cursor
    // Several workers: which of them hold members (Cluster::JoinShared).
    SharedMask* workers = nullptr;
  };
  // Told when a shared group gets its first member here (joined) and just
  // before it loses its last one (left); `filter` without the $share prefix.
  using GroupObserver = std::function<void(SharedGroup&, std::string_view filter, bool joined)>;
  void set_group_observer(GroupObserver o) { observer_ = std::move(o); }

  TopicTree();
  ~TopicTree();

  // Adds or replaces `session`'s subscription to `filter` (already
  // validated, without the $share prefix); `group` is empty when not shared.
  // Returns true when it was new.
  bool Add(std::string_view filter, std::string_view group, Session* session, const SubOptions& opts);
  // Returns true when a subscription existed.
  bool Remove(std::string_view filter, std::string_view group, Session* session);

  // Calls on_sub(const Subscriber&) for each non-shared match and
  // on_group(SharedGroup&) for each shared group matching `topic`.
  template <class S, class G>
  void Match(std::string_view topic, S&& on_sub, G&& on_group);

  size_t node_count() const { return nodes_; }
  // The shared group `group` on `filter` (no $share prefix), or null.
  SharedGroup* FindGroup(std::string_view filter, std::string_view group);

 private:
  struct Node {
    StringMap<std::unique_ptr<Node>> children;
    Node* parent = nullptr;
    std::string level;
    std::vector<Subscriber> subs;
    std::vector<SharedGroup> groups;
    bool Empty() const { return children.empty() && subs.empty() && groups.empty(); }
  };

  Node* Find(std::string_view filter, bool create);
  void Prune(Node* n);
  template <class S, class G>
  void MatchLevel(Node* n, const std::vector<std::string_view>& levels, size_t i, S& on_sub, G& on_group);

  std::unique_ptr<Node> root_;
  GroupObserver observer_;
  size_t nodes_ = 1;
  std::vector<std::string_view> scratch_levels_;
};

void SplitLevels(std::string_view topic, std::vector<std::string_view>* out);

template <class S, class G>
void TopicTree::Match(std::string_view topic, S&& on_sub, G&& on_group) {
  std::vector<std::string_view> levels;
  levels.swap(scratch_levels_);
  SplitLevels(topic, &levels);
  MatchLevel(root_.get(), levels, 0, on_sub, on_group);
  levels.swap(scratch_levels_);
}

template <class S, class G>
void TopicTree::MatchLevel(Node* n, const std::vector<std::string_view>& levels, size_t i, S& on_sub, G& on_group) {
  auto visit = [&](Node* m) {
    for (const Subscriber& s : m->subs) on_sub(s);
    for (SharedGroup& g : m->groups) on_group(g);
  };
  if (n->children.empty() && i < levels.size()) return;
  // [MQTT-4.7.2-1] wildcards at the first level never match '$' topics;
  // inside a tenant mount ("$T/<tenant>/...") the first level the tenant's
  // clients see is level 2, so the rule applies there too.
  const bool dollar =
      i < levels.size() && !levels[i].empty() && levels[i][0] == '$' && (i == 0 || (i == 2 && levels[0] == "$T"));
  if (!dollar) {
    if (auto it = n->children.find("#"); it != n->children.end()) visit(it->second.get());
  }
  if (i == levels.size()) return;
  if (!dollar) {
    if (auto it = n->children.find("+"); it != n->children.end()) {
      Node* c = it->second.get();
      if (i + 1 == levels.size())
        visit(c);
      else
        MatchLevel(c, levels, i + 1, on_sub, on_group);
      if (i + 1 == levels.size()) {
        if (auto h = c->children.find("#"); h != c->children.end()) visit(h->second.get());
      }
    }
  }
  if (auto it = n->children.find(levels[i]); it != n->children.end()) {
    Node* c = it->second.get();
    if (i + 1 == levels.size()) {
      visit(c);
      // "a/#" also matches "a" [MQTT-4.7.1-2].
      if (auto h = c->children.find("#"); h != c->children.end()) visit(h->second.get());
    } else {
      MatchLevel(c, levels, i + 1, on_sub, on_group);
    }
  }
}

}  // namespace fmq

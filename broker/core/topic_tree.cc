#include "broker/core/topic_tree.h"

#include <algorithm>

namespace fmq {

void SplitLevels(std::string_view topic, std::vector<std::string_view>* out) {
  out->clear();
  size_t start = 0;
  while (true) {
    size_t slash = topic.find('/', start);
    if (slash == std::string_view::npos) {
      out->push_back(topic.substr(start));
      return;
    }
    out->push_back(topic.substr(start, slash - start));
    start = slash + 1;
  }
}

TopicTree::TopicTree() : root_(std::make_unique<Node>()) {}
TopicTree::~TopicTree() = default;

TopicTree::Node* TopicTree::Find(std::string_view filter, bool create) {
  std::vector<std::string_view> levels;
  SplitLevels(filter, &levels);
  Node* n = root_.get();
  for (std::string_view level : levels) {
    auto it = n->children.find(level);
    if (it == n->children.end()) {
      if (!create) return nullptr;
      auto child = std::make_unique<Node>();
      child->parent = n;
      child->level.assign(level);
      Node* c = child.get();
      n->children.emplace(std::string(level), std::move(child));
      ++nodes_;
      n = c;
    } else {
      n = it->second.get();
    }
  }
  return n;
}

TopicTree::SharedGroup* TopicTree::FindGroup(std::string_view filter, std::string_view group) {
  Node* n = Find(filter, false);
  if (n == nullptr) return nullptr;
  for (SharedGroup& g : n->groups) {
    if (g.name == group) return &g;
  }
  return nullptr;
}

void TopicTree::Prune(Node* n) {
  while (n != root_.get() && n->Empty()) {
    Node* parent = n->parent;
    parent->children.erase(n->level);
    --nodes_;
    n = parent;
  }
}

bool TopicTree::Add(std::string_view filter, std::string_view group, Session* session, const SubOptions& opts) {
  Node* n = Find(filter, true);
  std::vector<Subscriber>* list = &n->subs;
  if (!group.empty()) {
    auto g = std::find_if(n->groups.begin(), n->groups.end(), [&](const SharedGroup& sg) { return sg.name == group; });
    if (g == n->groups.end()) {
      n->groups.push_back(SharedGroup{std::string(group), {}, 0, nullptr});
      g = n->groups.end() - 1;
      if (observer_) observer_(*g, filter, true);
    }
    list = &g->members;
  }
  for (Subscriber& s : *list) {
    if (s.session == session) {
      s.opts = opts;  // [MQTT-3.8.4-3] replace the existing subscription
      return false;
    }
  }
  list->push_back({session, opts});
  return true;
}

bool TopicTree::Remove(std::string_view filter, std::string_view group, Session* session) {
  Node* n = Find(filter, false);
  if (n == nullptr) return false;
  bool found = false;
  auto drop = [&](std::vector<Subscriber>& list) {
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i].session == session) {
        list[i] = list.back();
        list.pop_back();
        found = true;
        return;
      }
    }
  };
  if (group.empty()) {
    drop(n->subs);
  } else {
    for (size_t i = 0; i < n->groups.size(); ++i) {
      if (n->groups[i].name != group) continue;
      drop(n->groups[i].members);
      if (n->groups[i].members.empty()) {
        if (observer_) observer_(n->groups[i], filter, false);
        n->groups.erase(n->groups.begin() + static_cast<long>(i));
      }
      break;
    }
  }
  Prune(n);
  return found;
}

}  // namespace fmq

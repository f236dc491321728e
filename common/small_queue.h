// A FIFO that costs 16 bytes and no allocation while empty (std::deque
// allocates ~600 bytes up front, which at a million sessions is most of the
// memory). A growable ring buffer; T must be default-constructible and
// movable. Single-threaded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

namespace fmq {

template <class T>
class SmallQueue {
 public:
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  size_t capacity() const { return cap_; }  // 0 while empty: nothing held
  T& front() { return buf_[head_]; }
  const T& front() const { return buf_[head_]; }
  T& operator[](size_t i) { return buf_[(head_ + i) & (cap_ - 1)]; }
  const T& operator[](size_t i) const { return buf_[(head_ + i) & (cap_ - 1)]; }

  void push_back(T v) {
    if (size_ == cap_) Grow();
    buf_[(head_ + size_) & (cap_ - 1)] = std::move(v);
    ++size_;
  }
  void pop_front() {
    buf_[head_] = T{};  // release what the element holds now
    head_ = (head_ + 1) & (cap_ - 1);
    if (--size_ == 0) {
      buf_.reset();  // an idle session holds nothing
      cap_ = head_ = 0;
    }
  }
  void clear() {
    buf_.reset();
    cap_ = head_ = size_ = 0;
  }

  template <class Q, class E>
  class Iter {
   public:
    Iter(Q* q, size_t i) : q_(q), i_(i) {}
    E& operator*() const { return (*q_)[i_]; }
    E* operator->() const { return &(*q_)[i_]; }
    Iter& operator++() {
      ++i_;
      return *this;
    }
    bool operator!=(const Iter& o) const { return i_ != o.i_; }

   private:
    Q* q_;
    size_t i_;
  };
  Iter<SmallQueue, T> begin() { return {this, 0}; }
  Iter<SmallQueue, T> end() { return {this, size_}; }
  Iter<const SmallQueue, const T> begin() const { return {this, 0}; }
  Iter<const SmallQueue, const T> end() const { return {this, size_}; }

 private:
  void Grow() {
    const uint32_t cap = cap_ == 0 ? 4 : cap_ * 2;  // powers of two: masks, not modulo
    std::unique_ptr<T[]> next(new T[cap]);
    for (uint32_t i = 0; i < size_; ++i) next[i] = std::move(buf_[(head_ + i) & (cap_ - 1)]);
    buf_ = std::move(next);
    cap_ = cap;
    head_ = 0;
  }

  std::unique_ptr<T[]> buf_;
  uint32_t cap_ = 0;
  uint32_t head_ = 0;
  uint32_t size_ = 0;
};

}  // namespace fmq

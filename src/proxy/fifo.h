// A first-in first-out queue kept in one vector whose storage stays from request to request:
// std::deque allocates and frees a block as a queue of a few items walks through it.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace sg::proxy {

template <class T> class Fifo {
public:
  bool empty() const { return head_ == items_.size(); }
  size_t size() const { return items_.size() - head_; }
  // Valid until the next push or pop.
  T &front() { return items_[head_]; }
  const T &front() const { return items_[head_]; }
  template <class... A> T &emplace_back(A &&...a) {
    return items_.emplace_back(std::forward<A>(a)...);
  }
  void push_back(T &&v) { items_.push_back(std::move(v)); }
  void pop_back() { items_.pop_back(); } // not empty()
  T &back() { return items_.back(); }    // not empty()
  void pop_front() {
    if (++head_ == items_.size()) {
      clear(); // the usual case: the queue drains at every response
    } else if (head_ >= kCompactAt && head_ * 2 >= items_.size()) {
      // A long pipeline that never drains: drop the consumed front, so memory stays bounded
      // by what is queued and each item moves O(1) times on average.
      items_.erase(items_.begin(), items_.begin() + std::ptrdiff_t(head_));
      head_ = 0;
    }
  }
  void clear() {
    items_.clear(); // keeps the capacity
    head_ = 0;
  }

private:
  static constexpr size_t kCompactAt = 64;
  std::vector<T> items_;
  size_t head_ = 0;
};

} // namespace sg::proxy

#include "executor/merge.h"

#include <algorithm>
#include <utility>

namespace sg::executor {

int compare_rows(const std::vector<SortKey> &keys, const protocol::Row &a,
                 const protocol::Row &b) {
  for (auto &k : keys) {
    const protocol::Field *x = k.column < a.size() ? &a[k.column] : nullptr;
    const protocol::Field *y = k.column < b.size() ? &b[k.column] : nullptr;
    bool xn = !x || !*x, yn = !y || !*y;
    int c;
    if (xn || yn)
      c = xn && yn ? 0 : (xn == k.nulls_first ? -1 : 1);
    else
      c = k.descending ? -compare(k.kind, **x, **y) : compare(k.kind, **x, **y);
    if (c != 0)
      return c;
  }
  return 0;
}

Merge::Merge(size_t inputs, std::vector<SortKey> keys, std::optional<uint64_t> limit,
             uint64_t offset, size_t cap)
    : in_(inputs), ended_(inputs, false), keys_(std::move(keys)), limit_(limit), offset_(offset),
      cap_(cap ? cap : 1) {}

void Merge::push(size_t input, protocol::Row row) { in_.at(input).push_back(std::move(row)); }

void Merge::end(size_t input) { ended_.at(input) = true; }

std::optional<size_t> Merge::next_input() const {
  const size_t n = in_.size();
  if (keys_.empty()) {
    for (size_t i = 0; i < n; ++i)
      if (!in_[(rr_ + i) % n].empty())
        return (rr_ + i) % n;
    return std::nullopt;
  }
  std::optional<size_t> best;
  for (size_t i = 0; i < n; ++i) {
    if (in_[i].empty()) {
      if (!ended_[i])
        return std::nullopt; // its next row could be the smallest
      continue;
    }
    if (!best || compare_rows(keys_, in_[i].front(), in_[*best].front()) < 0)
      best = i;
  }
  return best;
}

std::optional<protocol::Row> Merge::pop() {
  while (!(limit_ && emitted_ >= *limit_)) {
    auto i = next_input();
    if (!i)
      return std::nullopt;
    protocol::Row r = std::move(in_[*i].front());
    in_[*i].pop_front();
    rr_ = (*i + 1) % in_.size();
    if (!distinct_.empty()) {
      if (last_ && compare_rows(distinct_, *last_, r) == 0)
        continue; // not its group's first row
      last_ = r;
    }
    if (skipped_ < offset_) {
      ++skipped_;
      continue;
    }
    ++emitted_;
    return r;
  }
  return std::nullopt;
}

void Merge::distinct_on(size_t prefix) {
  distinct_.assign(keys_.begin(), keys_.begin() + std::min(prefix, keys_.size()));
}

std::optional<size_t> Merge::starved(size_t from) const {
  const size_t n = in_.size();
  for (size_t k = 0; k < n; ++k) {
    size_t i = (from + k) % n;
    if (!ended_[i] && (keys_.empty() ? in_[i].size() < cap_ : in_[i].empty()))
      return i;
  }
  return std::nullopt;
}

bool Merge::wants(size_t input) const {
  return !done() && !ended_.at(input) && in_.at(input).size() < cap_;
}

bool Merge::done() const {
  if (limit_ && emitted_ >= *limit_)
    return true;
  for (size_t i = 0; i < in_.size(); ++i)
    if (!ended_[i] || !in_[i].empty())
      return false;
  return true;
}

} // namespace sg::executor

#include "migrations/moves.h"

#include "router/key.h"

#include <algorithm>
#include <map>
#include <set>
#include <xxhash.h>

namespace sg::migrations {

KeyMoves::KeyMoves(const topology::Topology &t) {
  std::vector<std::string> b, a;
  for (auto &s : t.shards) {
    if (s.in_ring())
      b.push_back(s.name);
    if (s.in_next())
      a.push_back(s.name);
  }
  build(t, b, a);
}

KeyMoves::KeyMoves(const topology::Topology &t, const std::vector<std::string> &before,
                   const std::vector<std::string> &after) {
  build(t, before, after);
}

void KeyMoves::build(const topology::Topology &t, const std::vector<std::string> &before,
                     const std::vector<std::string> &after) {
  std::vector<router::RingMember> b, a;
  auto has = [](const std::vector<std::string> &v, const std::string &n) {
    return std::find(v.begin(), v.end(), n) != v.end();
  };
  for (auto &s : t.shards) {
    bool in_b = has(before, s.name), in_a = has(after, s.name);
    if (in_b) {
      b.push_back({s.name, s.weight});
      before_names_.push_back(s.name);
    }
    if (in_a) {
      a.push_back({s.name, s.weight});
      after_names_.push_back(s.name);
    }
    if (in_b || in_a)
      for (uint64_t i = 0; i < uint64_t(t.vnodes) * s.weight; ++i) {
        std::string label = s.name + "#" + std::to_string(i); // the ring contract's points
        points_.push_back(XXH3_64bits(label.data(), label.size()));
      }
  }
  before_ = router::Ring(b, t.vnodes);
  after_ = router::Ring(a, t.vnodes);
  std::sort(points_.begin(), points_.end());
  points_.erase(std::unique(points_.begin(), points_.end()), points_.end());
}

std::optional<uint64_t> KeyMoves::hash_of(config::KeyType type, std::string_view text) const {
  auto c = router::canonical_from_text(type, text);
  if (!c)
    return std::nullopt;
  return router::hash_key(*c);
}

// Between two consecutive points of either ring, both owners are constant: the owner of an
// interval (prev, p] is the owner of p.
std::vector<Move> KeyMoves::moves() const {
  std::map<std::pair<std::string, std::string>, Move> m;
  if (points_.empty() || before_.empty() || after_.empty())
    return {};
  for (size_t i = 0; i < points_.size(); ++i) {
    uint64_t p = points_[i];
    const std::string &f = before(p), &t = after(p);
    if (f == t)
      continue;
    uint64_t prev = i ? points_[i - 1] : points_.back();
    double width = double(p - prev) / 18446744073709551616.0; // wraps for the first interval
    Move &mv = m[{f, t}];
    mv.from = f;
    mv.to = t;
    if (!mv.ranges.empty() && mv.ranges.back().second == prev)
      mv.ranges.back().second = p;
    else
      mv.ranges.push_back({prev, p});
    mv.fraction += width;
  }
  std::vector<Move> out;
  for (auto &[k, v] : m)
    out.push_back(v);
  return out;
}

double KeyMoves::moving_share(const std::string &shard) const {
  double owned = 0, moving = 0;
  for (size_t i = 0; i < points_.size(); ++i) {
    uint64_t p = points_[i];
    if (before(p) != shard)
      continue;
    uint64_t prev = i ? points_[i - 1] : points_.back();
    double width = double(p - prev);
    owned += width;
    if (after(p) != shard)
      moving += width;
  }
  return owned > 0 ? moving / owned : 0;
}

std::vector<std::string> KeyMoves::sources() const {
  std::set<std::string> s;
  for (auto &m : moves())
    s.insert(m.from);
  return {s.begin(), s.end()};
}

std::vector<std::string> KeyMoves::targets() const {
  std::set<std::string> s;
  for (auto &m : moves())
    s.insert(m.to);
  return {s.begin(), s.end()};
}

} // namespace sg::migrations

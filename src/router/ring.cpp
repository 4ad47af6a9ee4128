// Ring construction and lookup.
#include "router/ring.h"

#include "router/key.h"

#include <xxhash.h>

#include <algorithm>

namespace sg::router {

Ring::Ring(const std::vector<RingMember> &members, uint32_t vnodes) {
  for (uint32_t m = 0; m < members.size(); ++m) {
    uint64_t n = uint64_t(vnodes) * members[m].weight;
    for (uint64_t i = 0; i < n; ++i) {
      std::string label = members[m].name + "#" + std::to_string(i);
      points_.push_back({XXH3_64bits(label.data(), label.size()), m});
    }
  }
  std::sort(points_.begin(), points_.end(), [&](const Point &a, const Point &b) {
    if (a.hash != b.hash)
      return a.hash < b.hash;
    return members[a.member].name < members[b.member].name;
  });
}

std::vector<uint64_t> Ring::point_hashes() const {
  std::vector<uint64_t> v;
  v.reserve(points_.size());
  for (auto &p : points_)
    v.push_back(p.hash);
  return v;
}

size_t Ring::owner(uint64_t hash) const {
  auto it = std::lower_bound(points_.begin(), points_.end(), hash,
                             [](const Point &p, uint64_t h) { return p.hash < h; });
  if (it == points_.end())
    it = points_.begin();
  return it->member;
}

size_t Ring::owner_of_key(std::string_view canonical) const {
  return owner(hash_key(canonical));
}

} // namespace sg::router

// The consistent-hash ring of virtual nodes (see the README's ring contract).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sg::router {

struct RingMember {
  std::string name;
  uint32_t weight = 1;
};

class Ring {
public:
  Ring() = default;
  // Points of member m are XXH3_64("<name>#<i>") for i in [0, vnodes * weight).
  Ring(const std::vector<RingMember> &members, uint32_t vnodes);

  // Index (into the members given) of the owner of a key hash: first point >= hash, with wrap;
  // equal points are won by the lower shard name.
  size_t owner(uint64_t hash) const;
  size_t owner_of_key(std::string_view canonical) const;
  size_t point_count() const { return points_.size(); }
  bool empty() const { return points_.empty(); }
  // The points' hashes, ascending: each ends an arc of keys owned by one member.
  std::vector<uint64_t> point_hashes() const;

private:
  struct Point {
    uint64_t hash;
    uint32_t member;
  };
  std::vector<Point> points_;
};

} // namespace sg::router

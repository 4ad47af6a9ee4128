// Which keys a migration moves: the ring before it (shards in_ring) against the ring after
// it (shards in_next). A key moves when its owner differs; nothing else is copied. Pure code:
// the runner asks it per row, the API reports the moving ranges. No I/O.
#pragma once

#include "router/ring.h"
#include "topology/topology.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sg::migrations {

struct Move {
  std::string from, to;
  std::vector<std::pair<uint64_t, uint64_t>> ranges; // ring intervals (a, b]; adjacent merged
  double fraction = 0;                               // share of the hash space they cover
};

class KeyMoves {
public:
  // The rings over the shards named `before` and `after` (weights from t's shard specs).
  KeyMoves(const topology::Topology &t, const std::vector<std::string> &before,
           const std::vector<std::string> &after);
  // The same from t's shard states: in_ring() before, in_next() after.
  explicit KeyMoves(const topology::Topology &t);
  // Owners of a key hash before and after (shard names).
  const std::string &before(uint64_t hash) const { return before_names_[before_.owner(hash)]; }
  const std::string &after(uint64_t hash) const { return after_names_[after_.owner(hash)]; }
  bool moves(uint64_t hash) const { return before(hash) != after(hash); }
  // The same for a key value in its text form (as PostgreSQL prints it); nullopt when the text
  // is not a valid value of the type.
  std::optional<uint64_t> hash_of(config::KeyType type, std::string_view text) const;
  // Every (from, to) pair with its ranges, ordered by from, to.
  std::vector<Move> moves() const;
  // The share of `shard`'s keys (before) that move away.
  double moving_share(const std::string &shard) const;
  // Shards that lose keys, and shards that gain keys.
  std::vector<std::string> sources() const;
  std::vector<std::string> targets() const;

private:
  void build(const topology::Topology &t, const std::vector<std::string> &before,
             const std::vector<std::string> &after);
  router::Ring before_, after_;
  std::vector<std::string> before_names_, after_names_;
  std::vector<uint64_t> points_; // every point of both rings, sorted
};

} // namespace sg::migrations

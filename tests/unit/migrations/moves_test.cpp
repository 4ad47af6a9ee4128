// KeyMoves against the router: a migration copies exactly the keys whose owner changes, and
// agrees with the proxy on both owners of every key.
#include "migrations/moves.h"
#include "router/router.h"

#include <gtest/gtest.h>

using namespace sg;

namespace {

config::Config ring_config(std::vector<std::string> names) {
  config::Config c;
  for (auto &n : names) {
    config::Shard s;
    s.name = n;
    c.shards.push_back(s);
  }
  c.tables = {{"accounts", "id", config::KeyType::bigint}};
  return c;
}

topology::Topology topo(std::vector<std::pair<std::string, std::string>> shards) {
  topology::Topology t;
  for (auto &[n, st] : shards)
    t.shards.push_back({n, "postgresql://x/y", {}, 1, st});
  t.tables = {{"accounts", "id", config::KeyType::bigint}};
  return t;
}

void expect_agrees(const migrations::KeyMoves &km, const router::Router &before,
                   const router::Router &after, size_t &moved) {
  moved = 0;
  for (int k = 1; k <= 20000; ++k) {
    std::string key = std::to_string(k), err;
    auto h = km.hash_of(config::KeyType::bigint, key);
    ASSERT_TRUE(h);
    std::string b = before.topology().shard_names[*before.locate("accounts", key, err)];
    std::string a = after.topology().shard_names[*after.locate("accounts", key, err)];
    ASSERT_EQ(km.before(*h), b) << key;
    ASSERT_EQ(km.after(*h), a) << key;
    ASSERT_EQ(km.moves(*h), a != b);
    moved += a != b;
  }
}

} // namespace

TEST(KeyMoves, AddingAShardMovesOnlyKeysToIt) {
  auto t = topo({{"s0", "active"}, {"s1", "active"}, {"s2", "active"}, {"s3", "joining"}});
  migrations::KeyMoves km(t);
  router::Router before(ring_config({"s0", "s1", "s2"})), after(ring_config({"s0", "s1", "s2", "s3"}));
  size_t moved = 0;
  expect_agrees(km, before, after, moved);
  EXPECT_GT(moved, 20000 * 0.15);
  EXPECT_LT(moved, 20000 * 0.35); // about 1/4
  EXPECT_EQ(km.targets(), std::vector<std::string>({"s3"}));
  EXPECT_EQ(km.sources(), std::vector<std::string>({"s0", "s1", "s2"}));
  double f = 0;
  for (auto &m : km.moves()) {
    EXPECT_EQ(m.to, "s3");
    EXPECT_FALSE(m.ranges.empty());
    for (auto &[a, b] : m.ranges) { // every key in a range moves from -> to
      uint64_t mid = a < b ? a + (b - a) / 2 : b - 1;
      EXPECT_EQ(km.before(mid), m.from);
      EXPECT_EQ(km.after(mid), m.to);
    }
    f += m.fraction;
  }
  EXPECT_NEAR(f, double(moved) / 20000, 0.03);
}

TEST(KeyMoves, RemovingAShardMovesOnlyItsKeys) {
  auto t = topo({{"s0", "active"}, {"s1", "leaving"}, {"s2", "active"}});
  migrations::KeyMoves km(t);
  router::Router before(ring_config({"s0", "s1", "s2"})), after(ring_config({"s0", "s2"}));
  size_t moved = 0;
  expect_agrees(km, before, after, moved);
  EXPECT_EQ(km.sources(), std::vector<std::string>({"s1"}));
  EXPECT_EQ(km.targets(), std::vector<std::string>({"s0", "s2"}));
  EXPECT_NEAR(km.moving_share("s1"), 1.0, 1e-9);
  EXPECT_EQ(km.moving_share("s0"), 0.0);
}

TEST(KeyMoves, ExplicitSidesMatchStates) {
  auto t = topo({{"s0", "active"}, {"s1", "active"}, {"s3", "active"}});
  migrations::KeyMoves km(t, {"s0", "s1"}, {"s0", "s1", "s3"});
  router::Router before(ring_config({"s0", "s1"})), after(ring_config({"s0", "s1", "s3"}));
  size_t moved = 0;
  expect_agrees(km, before, after, moved);
  EXPECT_GT(moved, 0u);
}

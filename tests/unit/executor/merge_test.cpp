#include "executor/merge.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

using namespace sg::executor;
using sg::protocol::Row;

namespace {

Row row(std::optional<std::string> a, std::string b = "") { return Row{std::move(a), b}; }

std::vector<std::string> drain(Merge &m) {
  std::vector<std::string> out;
  while (auto r = m.pop())
    out.push_back((*r)[0] ? *(*r)[0] : "NULL");
  return out;
}

} // namespace

TEST(Merge, KWayByIntegerWaitsUntilEveryShardHasARow) {
  Merge m(2, {{0, Kind::Integer}});
  m.push(0, row("1"));
  m.push(0, row("5"));
  EXPECT_FALSE(m.pop()) << "shard 1 may still send a smaller row";
  m.push(1, row("3"));
  EXPECT_EQ(drain(m), (std::vector<std::string>{"1", "3"}));
  m.end(1);
  EXPECT_EQ(drain(m), (std::vector<std::string>{"5"}));
  m.end(0);
  EXPECT_TRUE(m.done());
}

TEST(Merge, DescendingWithNullsFirstAsPostgreSQLDefaults) {
  // ORDER BY x DESC puts NULLs first, ASC puts them last.
  Merge desc(2, {{0, Kind::Integer, true, true}});
  desc.push(0, row("9"));
  desc.push(0, row("2"));
  desc.push(1, row(std::nullopt));
  desc.push(1, row("10"));
  desc.end(0);
  desc.end(1);
  EXPECT_EQ(drain(desc), (std::vector<std::string>{"NULL", "10", "9", "2"}));
  Merge asc(2, {{0, Kind::Integer, false, false}});
  asc.push(0, row(std::nullopt));
  asc.push(1, row("-1"));
  asc.end(0);
  asc.end(1);
  EXPECT_EQ(drain(asc), (std::vector<std::string>{"-1", "NULL"}));
}

TEST(Merge, SecondKeyBreaksTies) {
  Merge m(2, {{0, Kind::Integer}, {1, Kind::Bytes, true}});
  m.push(0, row("1", "a"));
  m.push(1, row("1", "b"));
  m.end(0);
  m.end(1);
  auto first = m.pop();
  ASSERT_TRUE(first);
  EXPECT_EQ(*(*first)[1], "b");
}

TEST(Merge, OffsetAndLimitAcrossShards) {
  Merge m(3, {{0, Kind::Integer}}, 3, 2); // OFFSET 2 LIMIT 3
  for (int s = 0; s < 3; ++s) {
    for (int v = s; v < 30; v += 3)
      m.push(size_t(s), row(std::to_string(v)));
    m.end(size_t(s));
  }
  EXPECT_EQ(drain(m), (std::vector<std::string>{"2", "3", "4"}));
  EXPECT_TRUE(m.done()) << "LIMIT reached: the shards can be cancelled";
  EXPECT_FALSE(m.wants(0));
}

TEST(Merge, WithoutKeysRowsFlowAsTheyArriveAndLimitHolds) {
  Merge m(2, {}, 3);
  m.push(1, row("x"));
  EXPECT_EQ(drain(m), (std::vector<std::string>{"x"})) << "no order: a row is final at once";
  m.push(0, row("y"));
  m.push(0, row("z"));
  m.push(1, row("w"));
  EXPECT_EQ(drain(m).size(), 2u);
  EXPECT_TRUE(m.done());
}

TEST(Merge, BackpressureCapsEachShardsBuffer) {
  Merge m(2, {{0, Kind::Integer}}, std::nullopt, 0, 2);
  m.push(0, row("1"));
  m.push(0, row("2"));
  EXPECT_FALSE(m.wants(0)) << "two rows buffered, cap 2";
  EXPECT_TRUE(m.wants(1));
  m.push(1, row("5"));
  EXPECT_EQ(drain(m), (std::vector<std::string>{"1", "2"}));
  EXPECT_TRUE(m.wants(0));
}

TEST(Merge, RandomShardsGiveTheSortedWhole) {
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    size_t n = 1 + rng() % 5;
    std::vector<std::vector<int>> shards(n);
    std::vector<int> all;
    for (int i = 0; i < 200; ++i) {
      int v = int(rng() % 1000) - 500;
      shards[rng() % n].push_back(v);
      all.push_back(v);
    }
    for (auto &s : shards)
      std::sort(s.begin(), s.end());
    std::sort(all.begin(), all.end());
    uint64_t offset = rng() % 20, limit = rng() % 250;
    Merge m(n, {{0, Kind::Integer}}, limit, offset, 4);
    std::vector<size_t> pos(n, 0);
    std::vector<std::string> got;
    while (!m.done()) { // feed in random order, only where wanted
      size_t s = rng() % n;
      if (m.wants(s)) {
        if (pos[s] < shards[s].size())
          m.push(s, row(std::to_string(shards[s][pos[s]++])));
        else
          m.end(s);
      }
      for (auto &v : drain(m))
        got.push_back(v);
    }
    std::vector<std::string> want;
    for (size_t i = offset; i < all.size() && want.size() < limit; ++i)
      want.push_back(std::to_string(all[i]));
    ASSERT_EQ(got, want) << "round " << round;
  }
}

// SELECT DISTINCT ON (a) a, b ... ORDER BY a, b: each shard sends its first row per a; the
// merge keeps the first of each a across shards, then applies OFFSET and LIMIT to the groups.
TEST(Merge, DistinctOnKeepsEachGroupsFirstRowBeforeOffsetAndLimit) {
  auto both = [](std::optional<uint64_t> limit, uint64_t offset) {
    Merge m(2, {{0, Kind::Integer}, {1, Kind::Integer}}, limit, offset);
    m.distinct_on(1);
    for (auto [a, b] : {std::pair{"1", "5"}, {"2", "7"}, {"4", "1"}})
      m.push(0, row(a, b));
    for (auto [a, b] : {std::pair{"1", "3"}, {"2", "9"}, {"3", "2"}})
      m.push(1, row(a, b));
    m.push(1, row(std::nullopt, "0"));
    m.push(0, row(std::nullopt, "4"));
    m.end(0);
    m.end(1);
    std::vector<std::string> out;
    while (auto r = m.pop())
      out.push_back(((*r)[0] ? *(*r)[0] : "NULL") + "/" + *(*r)[1]);
    return out;
  };
  EXPECT_EQ(both(std::nullopt, 0),
            (std::vector<std::string>{"1/3", "2/7", "3/2", "4/1", "NULL/0"}));
  EXPECT_EQ(both(2, 1), (std::vector<std::string>{"2/7", "3/2"}));
}

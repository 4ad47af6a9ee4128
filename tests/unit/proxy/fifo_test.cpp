#include "proxy/fifo.h"

#include <gtest/gtest.h>

#include <deque>
#include <random>
#include <string>

namespace sg::proxy {
namespace {

TEST(Fifo, KeepsOrderAcrossDrains) {
  Fifo<std::string> q;
  EXPECT_TRUE(q.empty());
  q.emplace_back("a");
  q.push_back("b");
  EXPECT_EQ(q.size(), 2u);
  EXPECT_EQ(q.front(), "a");
  q.pop_front();
  EXPECT_EQ(q.front(), "b");
  q.emplace_back("c");
  q.pop_front();
  EXPECT_EQ(q.front(), "c");
  q.pop_front();
  EXPECT_TRUE(q.empty());
  q.emplace_back("d"); // usable again after draining
  EXPECT_EQ(q.front(), "d");
  q.clear();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
}

// A long pipeline that never drains, checked against std::deque step by step: compaction
// must neither lose nor reorder items.
TEST(Fifo, MatchesDequeUnderRandomPushesAndPops) {
  Fifo<std::string> q;
  std::deque<std::string> ref;
  std::mt19937 rng(42);
  int next = 0;
  for (int step = 0; step < 100000; ++step) {
    if (ref.empty() || rng() % 3 != 0) {
      q.emplace_back(std::to_string(next));
      ref.push_back(std::to_string(next));
      ++next;
    } else {
      ASSERT_EQ(q.front(), ref.front()) << "step " << step;
      q.pop_front();
      ref.pop_front();
    }
    ASSERT_EQ(q.size(), ref.size());
  }
  while (!ref.empty()) {
    ASSERT_EQ(q.front(), ref.front());
    q.pop_front();
    ref.pop_front();
  }
  EXPECT_TRUE(q.empty());
}

} // namespace
} // namespace sg::proxy

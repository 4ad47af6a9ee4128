#include "executor/twophase.h"

#include <gtest/gtest.h>

#include <set>

using namespace sg::executor;

TEST(TwoPhase, TxidsAreUniqueAndGidsRoundTrip) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string t = new_txid();
    EXPECT_TRUE(seen.insert(t).second) << t;
    for (size_t n : {size_t(0), size_t(7), size_t(63)}) {
      std::string g = gid(t, n);
      EXPECT_LE(g.size(), 200u); // PostgreSQL's limit for a gid
      auto back = txid_of(g);
      ASSERT_TRUE(back) << g;
      EXPECT_EQ(*back, t);
    }
  }
}

TEST(TwoPhase, OtherNamesAreNotOurs) {
  // A transaction the client prepared itself must never be resolved by recovery.
  for (const char *g : {"", "sg_", "sg__1", "mine", "sg_abc", "sg_abc_", "sg_abc_1x", "SG_abc_1",
                        "sg_ab c_1", "sg_abc'_1", "xsg_abc_1", "sg_ABC_1"})
    EXPECT_FALSE(txid_of(g)) << g;
  EXPECT_EQ(txid_of("sg_3f09x1a_2").value_or(""), "3f09x1a");
}

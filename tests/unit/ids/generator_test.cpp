// shardgate.next_id()'s generator: the bit layout, order within a millisecond, borrowing past
// 4096, a clock that goes back, the floor a leased number starts from, and the lease's end.
#include "ids/generator.h"

#include <gtest/gtest.h>

#include <climits>
#include <set>

using sg::ids::decode;
using sg::ids::Generator;
using sg::ids::kEpochMs;
using sg::ids::kMaxAheadMs;

namespace {

constexpr int64_t kNow = kEpochMs + 1'000'000'000; // some Unix ms after the epoch

int64_t take(Generator &g, int64_t unix_ms, int64_t steady = 0) {
  auto r = g.next(unix_ms, steady);
  EXPECT_EQ(r.status, Generator::Status::ok) << r.why;
  return r.id;
}

} // namespace

TEST(IdGenerator, LayoutIsTimeInstanceSequence) {
  Generator g;
  g.assign(513, 0, LLONG_MAX);
  int64_t a = take(g, kNow), b = take(g, kNow);
  EXPECT_GT(a, 0);
  EXPECT_EQ(a, ((kNow - kEpochMs) << 22) | (int64_t(513) << 12));
  auto d = decode(b);
  EXPECT_EQ(d.unix_ms, kNow);
  EXPECT_EQ(d.instance, 513);
  EXPECT_EQ(d.sequence, 1);
}

TEST(IdGenerator, NothingWithoutAnInstanceOrAfterTheLease) {
  Generator g;
  EXPECT_EQ(g.next(kNow, 0).status, Generator::Status::unavailable);
  g.assign(1, 0, 1000);
  EXPECT_EQ(g.next(kNow, 1000).status, Generator::Status::ok);
  EXPECT_EQ(g.next(kNow, 1001).status, Generator::Status::unavailable); // not renewed in time
  g.extend(2000);
  EXPECT_EQ(g.next(kNow, 1500).status, Generator::Status::ok);
  g.revoke("taken over");
  auto r = g.next(kNow, 1500);
  EXPECT_EQ(r.status, Generator::Status::unavailable);
  EXPECT_EQ(r.why, "taken over");
}

TEST(IdGenerator, BorrowsPast4096ThenWaits) {
  Generator g;
  g.assign(2, 0, LLONG_MAX);
  std::set<int64_t> seen;
  int64_t last = 0;
  // The clock stands still: 4096 per millisecond, then the next milliseconds are borrowed, up
  // to kMaxAheadMs ahead of it.
  for (int64_t i = 0; i < 4096 * (kMaxAheadMs + 1); ++i) {
    int64_t id = take(g, kNow);
    ASSERT_GT(id, last);
    last = id;
    seen.insert(id);
  }
  EXPECT_EQ(decode(last).unix_ms, kNow + kMaxAheadMs);
  auto r = g.next(kNow, 0);
  EXPECT_EQ(r.status, Generator::Status::wait);
  EXPECT_EQ(r.wait_ms, 1);
  EXPECT_GT(take(g, kNow + 1), last); // the clock moved: one more millisecond to borrow
  EXPECT_EQ(seen.size(), size_t(4096 * (kMaxAheadMs + 1)));
}

TEST(IdGenerator, ClockGoingBackNeverRepeats) {
  Generator g;
  g.assign(3, 0, LLONG_MAX);
  int64_t a = take(g, kNow + 5000);
  int64_t b = take(g, kNow); // set back 5 s: counts on from the last millisecond
  int64_t c = take(g, kNow + 1);
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_EQ(decode(c).unix_ms, kNow + 5000);
  EXPECT_EQ(decode(c).sequence, 2);
  EXPECT_EQ(g.high_water_unix_ms(), kNow + 5000);
}

TEST(IdGenerator, FloorFromThePreviousHolder) {
  Generator g;
  g.assign(4, kNow + 60'000, LLONG_MAX); // the last holder used up to a minute ahead of us
  int64_t a = take(g, kNow);
  EXPECT_EQ(decode(a).unix_ms, kNow + 60'000);
  EXPECT_EQ(g.high_water_unix_ms(), kNow + 60'000);
  g.assign(5, 0, LLONG_MAX); // another number: its own sequence
  EXPECT_EQ(decode(take(g, kNow)).instance, 5);
}

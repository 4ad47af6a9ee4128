// The ring contract: golden vectors, balance, and minimal movement when a shard joins.
#include "router/key.h"
#include "router/ring.h"

#include <gtest/gtest.h>

#include <xxhash.h>

#include <algorithm>
#include <limits>

using namespace sg::router;
using sg::config::KeyType;

namespace {

std::string le64(int64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i)
    s[size_t(i)] = char((uint64_t(v) >> (8 * i)) & 0xff);
  return s;
}

// The contract, computed the slow obvious way: the first point >= hash, else the first point;
// ties to the lower name.
size_t reference_owner(const std::vector<RingMember> &m, uint32_t vnodes, uint64_t h) {
  struct P {
    uint64_t h;
    std::string name;
    size_t idx;
  };
  std::vector<P> pts;
  for (size_t i = 0; i < m.size(); ++i)
    for (uint32_t v = 0; v < vnodes * m[i].weight; ++v) {
      std::string label = m[i].name + "#" + std::to_string(v);
      pts.push_back({XXH3_64bits(label.data(), label.size()), m[i].name, i});
    }
  const P *best = nullptr;
  const P *lowest = nullptr;
  for (auto &p : pts) {
    if (!lowest || p.h < lowest->h || (p.h == lowest->h && p.name < lowest->name))
      lowest = &p;
    if (p.h >= h && (!best || p.h < best->h || (p.h == best->h && p.name < best->name)))
      best = &p;
  }
  return (best ? best : lowest)->idx;
}

} // namespace

// Values from the xxhsum CLI (xxhsum -H3), independent of this code.
TEST(RingContract, GoldenHashes) {
  auto h = [](std::string_view s) { return XXH3_64bits(s.data(), s.size()); };
  EXPECT_EQ(h("s0#0"), 0x3ca18f170a220936ULL);
  EXPECT_EQ(h("s0#1"), 0x27a5e70121b11fc5ULL);
  EXPECT_EQ(h("s1#0"), 0x945a002fdff2715eULL);
  EXPECT_EQ(hash_key(*canonical_from_text(KeyType::bigint, "42")), 0xd5a6f8c838df27c8ULL);
  EXPECT_EQ(hash_key(*canonical_from_text(KeyType::text, "alice")), 0x4da10dd61a0116b0ULL);
}

TEST(RingContract, OwnerMatchesReference) {
  std::vector<RingMember> m = {{"s0", 1}, {"s1", 1}, {"s2", 2}};
  Ring ring(m, 20);
  EXPECT_EQ(ring.point_count(), 80u);
  for (int64_t k = -500; k < 500; ++k) {
    uint64_t h = hash_key(le64(k));
    ASSERT_EQ(ring.owner(h), reference_owner(m, 20, h)) << k;
  }
  // Wrap: a hash above every point belongs to the first point's shard.
  EXPECT_EQ(ring.owner(UINT64_MAX), reference_owner(m, 20, UINT64_MAX));
  EXPECT_EQ(ring.owner(0), reference_owner(m, 20, 0));
}

TEST(RingContract, DemoPlacement) {
  // The demo cluster's placement (s0, s1; 150 vnodes), which the README shows.
  Ring ring({{"s0", 1}, {"s1", 1}}, 150);
  std::vector<size_t> expect = {0, 1, 1, 0, 1, 1};
  for (int64_t k = 1; k <= 6; ++k)
    EXPECT_EQ(ring.owner_of_key(le64(k)), expect[size_t(k - 1)]) << k;
}

TEST(RingBalance, FourShardsEachHoldAQuarter) {
  std::vector<RingMember> m = {{"s0", 1}, {"s1", 1}, {"s2", 1}, {"s3", 1}};
  Ring ring(m, 150);
  std::vector<size_t> count(4);
  const int n = 1000000;
  for (int64_t k = 0; k < n; ++k)
    ++count[ring.owner_of_key(le64(k))];
  for (size_t i = 0; i < 4; ++i) {
    double share = 100.0 * double(count[i]) / n;
    EXPECT_NEAR(share, 25.0, 4.0) << "shard " << i;
  }
}

TEST(RingBalance, AddingAFifthShardMovesAboutAFifthAllToIt) {
  Ring four({{"s0", 1}, {"s1", 1}, {"s2", 1}, {"s3", 1}}, 150);
  Ring five({{"s0", 1}, {"s1", 1}, {"s2", 1}, {"s3", 1}, {"s4", 1}}, 150);
  const int n = 1000000;
  int moved = 0;
  for (int64_t k = 0; k < n; ++k) {
    auto key = le64(k);
    size_t a = four.owner_of_key(key), b = five.owner_of_key(key);
    if (a != b) {
      ++moved;
      ASSERT_EQ(b, 4u) << "a key may only move to the new shard";
    }
  }
  double pct = 100.0 * moved / n;
  EXPECT_NEAR(pct, 20.0, 4.0);
}

TEST(CanonicalKey, LiteralTextAndBinaryAgree) {
  auto lit = canonical_from_text(KeyType::bigint, "42");
  EXPECT_EQ(*lit, le64(42));
  EXPECT_EQ(*canonical_from_text(KeyType::bigint, " +42 "), *lit);
  EXPECT_EQ(*canonical_from_binary(KeyType::bigint, std::string("\0\0\0\0\0\0\0\x2a", 8)), *lit);
  EXPECT_EQ(*canonical_from_binary(KeyType::bigint, std::string("\0\0\0\x2a", 4)), *lit);
  EXPECT_EQ(*canonical_from_binary(KeyType::smallint, std::string("\0\x2a", 2)), *lit);
  EXPECT_EQ(*canonical_from_text(KeyType::int_, "-7"),
            *canonical_from_binary(KeyType::int_, std::string("\xff\xff\xff\xf9", 4)));
  EXPECT_FALSE(canonical_from_text(KeyType::smallint, "40000"));
  EXPECT_FALSE(canonical_from_text(KeyType::bigint, "4x"));
  EXPECT_FALSE(canonical_from_text(KeyType::bigint, ""));
  EXPECT_FALSE(canonical_from_binary(KeyType::bigint, "abc"));
}

TEST(CanonicalKey, UuidForms) {
  std::string raw("\xa0\xee\xbc\x99\x9c\x0b\x4e\xf8\xbb\x6d\x6b\xb9\xbd\x38\x0a\x11", 16);
  for (auto s : {"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
                 "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11"})
    EXPECT_EQ(*canonical_from_text(KeyType::uuid, s), raw) << s;
  EXPECT_EQ(*canonical_from_binary(KeyType::uuid, raw), raw);
  EXPECT_FALSE(canonical_from_text(KeyType::uuid, "a0eebc99"));
  EXPECT_FALSE(canonical_from_text(KeyType::uuid, "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
}

// Integer keys hashed without building their bytes (literals, read in place) hash as the
// canonical bytes do.
TEST(CanonicalKey, IntegerFastPathAgreesWithCanonicalBytes) {
  using sg::router::KeyType;
  for (int64_t v : {int64_t(0), int64_t(1), int64_t(-1), int64_t(48213), int64_t(-32768),
                    int64_t(2147483647), std::numeric_limits<int64_t>::max()}) {
    auto canon = sg::router::canonical_from_text(KeyType::bigint, std::to_string(v));
    ASSERT_TRUE(canon);
    EXPECT_EQ(sg::router::hash_int_key(v), sg::router::hash_key(*canon)) << v;
  }
  EXPECT_EQ(sg::router::int_key_from_text(KeyType::smallint, "-32768"), -32768);
  EXPECT_FALSE(sg::router::int_key_from_text(KeyType::smallint, "32768"));
  EXPECT_FALSE(sg::router::int_key_from_text(KeyType::int_, "1.5"));
  EXPECT_EQ(sg::router::int_key_from_text(KeyType::bigint, " +7 "), 7);
}

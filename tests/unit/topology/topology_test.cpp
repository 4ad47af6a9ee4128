#include "topology/topology.h"

#include <gtest/gtest.h>

using namespace sg;

namespace {

config::Config two_shards() {
  auto r = config::load_string(R"(
[[users]]
name = "app"
password = "pw"
[ring]
vnodes = 64
[[shards]]
name = "s0"
primary = "postgresql://app:secret@127.0.0.1:5432/app"
replicas = ["postgresql://app:secret@127.0.0.1:5433/app"]
[[shards]]
name = "s1"
primary = "host=127.0.0.1 port=5434 user=app password='se cret' dbname=app"
weight = 2
[[tables]]
name = "accounts"
key = "id"
key_type = "uuid"
)",
                               "t.toml");
  EXPECT_TRUE(r.config) << (r.diagnostics.empty() ? "" : r.diagnostics[0].to_string());
  return *r.config;
}

} // namespace

TEST(Topology, JsonRoundTripKeepsEverything) {
  auto t = topology::from_config(two_shards());
  t.epoch = 7;
  std::string err;
  auto back = topology::from_json(topology::to_json(t, false), err);
  ASSERT_TRUE(back) << err;
  EXPECT_EQ(back->epoch, 7u);
  EXPECT_TRUE(*back == t);
  EXPECT_EQ(back->vnodes, 64u);
  EXPECT_EQ(back->shards[1].weight, 2u);
  EXPECT_EQ(back->tables[0].key_type, config::KeyType::uuid);
}

TEST(Topology, MaskedJsonHidesEveryPassword) {
  auto t = topology::from_config(two_shards());
  std::string j = topology::to_json(t, true);
  EXPECT_EQ(j.find("secret"), std::string::npos) << j;
  EXPECT_EQ(j.find("se cret"), std::string::npos) << j;
  EXPECT_NE(j.find("postgresql://app:***@127.0.0.1:5432/app"), std::string::npos) << j;
  EXPECT_NE(j.find("password=***"), std::string::npos) << j;
}

TEST(Topology, MaskLeavesUrlsWithoutPasswordAlone) {
  EXPECT_EQ(topology::mask_password("postgresql://app@h:1/db"), "postgresql://app@h:1/db");
  EXPECT_EQ(topology::mask_password("postgresql://h:1/db"), "postgresql://h:1/db");
  EXPECT_EQ(topology::mask_password("postgresql://u:p%40ss@h/db"), "postgresql://u:***@h/db");
}

TEST(Topology, BadJsonIsRefusedWithAReason) {
  std::string err;
  EXPECT_FALSE(topology::from_json("{", err));
  EXPECT_FALSE(err.empty());
  EXPECT_FALSE(topology::from_json(R"({"epoch": 1})", err));
  EXPECT_FALSE(topology::from_json(
      R"({"epoch":1,"ring":{"vnodes":1},"shards":[],"tables":[{"name":"t","key":"k","key_type":"float"}]})",
      err));
}

TEST(Topology, ApplyToReplacesTheConfigsShards) {
  auto c = two_shards();
  auto t = topology::from_config(c);
  t.shards[0].replicas.clear();
  t.shards[1].primary = "postgresql://app:x@127.0.0.1:6000/app";
  std::string err;
  ASSERT_TRUE(topology::apply_to(t, c, err)) << err;
  EXPECT_TRUE(c.shards[0].replicas.empty());
  EXPECT_EQ(c.shards[1].primary.port, 6000);
  EXPECT_TRUE(topology::from_config(c) == t);
  t.shards[0].primary = "postgresql://[bad";
  EXPECT_FALSE(topology::apply_to(t, c, err));
  EXPECT_NE(err.find("s0"), std::string::npos);
}

TEST(Topology, SamePlacementIgnoresUrlsButNotWeights) {
  auto a = topology::from_config(two_shards());
  auto b = a;
  b.shards[0].replicas.clear();
  EXPECT_TRUE(a.same_placement(b));
  EXPECT_FALSE(a == b);
  b.shards[1].weight = 3;
  EXPECT_FALSE(a.same_placement(b));
}

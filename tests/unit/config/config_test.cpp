// Config diagnostics: every problem at once, each with file:line:column and a hint.
#include "config/config.h"

#include <gtest/gtest.h>

using namespace sg::config;

namespace {

const char *kGood = R"([proxy]
listen = "127.0.0.1:6432"
database = "app"
pool_mode = "session"

[[users]]
name = "app"
password = "pw"

[ring]
vnodes = 64

[[shards]]
name = "s0"
primary = "postgresql://app:pw@127.0.0.1:5432/app"
replicas = ["host=127.0.0.1 port=5433 user=app password=pw dbname=app"]
weight = 2

[[tables]]
name = "accounts"
key = "id"
key_type = "bigint"
)";

bool has(const LoadResult &r, uint32_t line, const std::string &needle) {
  for (auto &d : r.diagnostics)
    if (d.line == line && d.message.find(needle) != std::string::npos && !d.hint.empty() &&
        d.column > 0)
      return true;
  return false;
}

std::string dump(const LoadResult &r) {
  std::string s;
  for (auto &d : r.diagnostics)
    s += d.to_string() + "\n";
  return s;
}

} // namespace

TEST(Config, GoodConfigLoads) {
  auto r = load_string(kGood, "good.toml");
  ASSERT_TRUE(r.config) << dump(r);
  const Config &c = *r.config;
  EXPECT_EQ(c.proxy.listen_port, 6432);
  EXPECT_EQ(c.proxy.pool_mode, PoolMode::session);
  EXPECT_EQ(c.ring.vnodes, 64u);
  ASSERT_EQ(c.shards.size(), 1u);
  EXPECT_EQ(c.shards[0].primary.port, 5432);
  EXPECT_EQ(c.shards[0].primary.user, "app");
  EXPECT_EQ(c.shards[0].primary.password, "pw");
  ASSERT_EQ(c.shards[0].replicas.size(), 1u);
  EXPECT_EQ(c.shards[0].replicas[0].port, 5433);
  EXPECT_EQ(c.shards[0].weight, 2u);
  EXPECT_EQ(c.tables[0].key_type, KeyType::bigint);
  EXPECT_EQ(c.proxy.pool_size, 20u) << "defaults fill what the file leaves out";
}

TEST(Config, ReportsEveryProblemAtOnceWithPositions) {
  const char *bad = R"([proxy]
listen = "127.0.0.1:6432"
pool_mod = "transaction"

[[users]]
name = "app"
password = "pw"

[[shards]]
name = "s0"
primary = "postgresql://app:pw@127.0.0.1:5432/app"

[[shards]]
name = "s0"
primary = "postgresql://app:pw@127.0.0.1:notaport/app"

[[tables]]
name = "accounts"
key_type = "float"
)";
  auto r = load_string(bad, "bad.toml");
  EXPECT_FALSE(r.config);
  EXPECT_TRUE(has(r, 3, "unknown key \"pool_mod\"")) << dump(r);
  EXPECT_TRUE(has(r, 14, "duplicate shard name \"s0\"")) << dump(r);
  EXPECT_TRUE(has(r, 15, "bad primary URL")) << dump(r);
  EXPECT_TRUE(has(r, 17, "has no \"key\"")) << dump(r);
  EXPECT_TRUE(has(r, 19, "unknown key_type \"float\"")) << dump(r);
  EXPECT_GE(r.diagnostics.size(), 5u);
  EXPECT_EQ(r.diagnostics[0].to_string().rfind("bad.toml:", 0), 0u) << "file:line:column first";
}

TEST(Config, SyntaxErrorHasPosition) {
  auto r = load_string("[proxy]\nlisten = \n", "syntax.toml");
  ASSERT_FALSE(r.config);
  ASSERT_EQ(r.diagnostics.size(), 1u);
  EXPECT_EQ(r.diagnostics[0].line, 2u);
}

TEST(Config, MissingSectionsAreReported) {
  auto r = load_string("[proxy]\nlisten = \"127.0.0.1:1\"\n", "empty.toml");
  ASSERT_FALSE(r.config);
  std::string all = dump(r);
  EXPECT_NE(all.find("no [[users]]"), std::string::npos) << all;
  EXPECT_NE(all.find("no [[shards]]"), std::string::npos) << all;
}

TEST(Config, BadValuesAreReported) {
  std::string text = std::string(kGood) + "\n";
  text.replace(text.find("pool_mode = \"session\""), 21, "pool_mode = \"statement\"");
  text.replace(text.find("listen = \"127.0.0.1:6432\""), 25, "listen = \"nowhere\"");
  text.replace(text.find("vnodes = 64"), 11, "vnodes = 0");
  auto r = load_string(text, "vals.toml");
  ASSERT_FALSE(r.config);
  EXPECT_TRUE(has(r, 2, "host:port")) << dump(r);
  EXPECT_TRUE(has(r, 4, "unknown pool_mode")) << dump(r);
  EXPECT_TRUE(has(r, 11, "vnodes")) << dump(r);
}

TEST(Config, UnixSocketHostIsRejected) {
  std::string err;
  EXPECT_FALSE(parse_endpoint("host=/var/run/postgresql dbname=app", err));
  EXPECT_NE(err.find("unix-socket"), std::string::npos);
  EXPECT_FALSE(parse_endpoint("postgresql://a@[::1", err));
  auto e = parse_endpoint("postgresql://u:p@10.0.0.1:6000/db", err);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->host, "10.0.0.1");
  EXPECT_EQ(e->dbname, "db");
}

TEST(Config, MissingFileIsADiagnostic) {
  auto r = load_file("/nonexistent/shardgate.toml");
  ASSERT_FALSE(r.config);
  EXPECT_NE(r.diagnostics[0].to_string().find("/nonexistent/shardgate.toml"), std::string::npos);
}

TEST(Config, PackingThresholdsMustNotOverlap) {
  std::string text(kGood);
  text.replace(text.find("pool_mode = \"session\""), 21,
               "pool_mode = \"session\"\nspread_above_percent = 40\npack_below_percent = 50");
  auto r = load_string(text, "pack.toml");
  ASSERT_FALSE(r.config);
  EXPECT_TRUE(has(r, 6, "pack_below_percent must be below spread_above_percent")) << dump(r);

  auto good = load_string(kGood, "good.toml");
  ASSERT_TRUE(good.config) << dump(good);
  EXPECT_EQ(good.config->proxy.pack_interval_ms, 200u) << "packing is on by default";
  EXPECT_LT(good.config->proxy.pack_below_percent, good.config->proxy.spread_above_percent);
}

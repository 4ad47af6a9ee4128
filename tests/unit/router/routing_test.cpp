// Routing decisions, table-driven: SQL text (and Bind parameters) to a target.
#include "router/analyzer.h"
#include "router/router.h"

#include <gtest/gtest.h>

#include <set>

using namespace sg::router;
using sg::config::KeyType;

namespace {

sg::config::Config make_config() {
  sg::config::Config c;
  for (auto n : {"s0", "s1", "s2"}) {
    sg::config::Shard s;
    s.name = n;
    c.shards.push_back(s);
  }
  c.tables = {{"accounts", "id", KeyType::bigint},
              {"users", "name", KeyType::text},
              {"events", "uid", KeyType::uuid},
              {"orders", "account_id", KeyType::int_}};
  return c;
}

const Router &router() {
  static const sg::config::Config cfg = make_config();
  static const Router r(cfg);
  return r;
}

size_t owner(const char *table, const char *key) {
  std::string err;
  auto s = router().locate(table, key, err);
  EXPECT_TRUE(s) << err;
  return s.value_or(99);
}

struct Case {
  const char *sql;
  TargetKind target;
  StmtKind kind;
  const char *table = nullptr; // by_key: expected owner of (table, key)
  const char *key = nullptr;
  const char *sqlstate = nullptr; // error: expected SQLSTATE
};

std::ostream &operator<<(std::ostream &os, const Case &c) {
  return os << c.sql;
}

} // namespace

class Routing : public ::testing::TestWithParam<Case> {};

TEST_P(Routing, Decides) {
  const Case &c = GetParam();
  std::string sql = c.sql;
  PlannedText pt = router().plan(sql);
  ASSERT_EQ(pt.analysis->stmts.size(), 1u);
  const StatementPlan &p = pt.analysis->stmts[0];
  EXPECT_EQ(to_string(p.kind), std::string(to_string(c.kind)));
  Resolved r = router().resolve(p, sql, pt.scan);
  EXPECT_EQ(int(r.kind), int(c.target)) << r.error.message;
  if (c.target == TargetKind::by_key) {
    EXPECT_EQ(r.shard, owner(c.table, c.key));
  }
  if (c.target == TargetKind::error && c.sqlstate) {
    EXPECT_EQ(r.error.sqlstate, c.sqlstate);
    EXPECT_FALSE(r.error.hint.empty()) << "every routing error carries a hint";
  }
}

using TK = TargetKind;
using SK = StmtKind;

INSTANTIATE_TEST_SUITE_P(
    Statements, Routing,
    ::testing::Values(
        // Reads by key
        Case{"SELECT * FROM accounts WHERE id = 42", TK::by_key, SK::read, "accounts", "42"},
        Case{"select balance from accounts where id=7 and balance > 0", TK::by_key, SK::read,
             "accounts", "7"},
        Case{"SELECT * FROM accounts WHERE 7 = id", TK::by_key, SK::read, "accounts", "7"},
        Case{"SELECT * FROM accounts WHERE id = -5", TK::by_key, SK::read, "accounts", "-5"},
        Case{"SELECT * FROM orders WHERE account_id = -2147483648", TK::by_key, SK::read, "orders",
             "-2147483648"},
        Case{"SELECT * FROM accounts WHERE id = -9223372036854775808", TK::by_key, SK::read,
             "accounts", "-9223372036854775808"},
        Case{"SELECT * FROM accounts WHERE id = '42'", TK::by_key, SK::read, "accounts", "42"},
        Case{"SELECT * FROM accounts WHERE id = 42::bigint", TK::by_key, SK::read, "accounts",
             "42"},
        Case{"SELECT * FROM accounts a WHERE a.id = 3", TK::by_key, SK::read, "accounts", "3"},
        Case{"SELECT * FROM public.accounts WHERE accounts.id = 3", TK::by_key, SK::read,
             "accounts", "3"},
        Case{"SELECT * FROM accounts WHERE id IN (3)", TK::by_key, SK::read, "accounts", "3"},
        Case{"SELECT count(*) FROM accounts WHERE id = 9 GROUP BY id", TK::by_key, SK::read,
             "accounts", "9"},
        Case{"SELECT * FROM users WHERE name = 'alice'", TK::by_key, SK::read, "users", "alice"},
        Case{"SELECT * FROM users WHERE name = 'o''brien'", TK::by_key, SK::read, "users",
             "o'brien"},
        Case{"SELECT * FROM users WHERE name = E'tab\\there'", TK::by_key, SK::read, "users",
             "tab\there"},
        Case{"SELECT * FROM users WHERE name = $$dollar$$", TK::by_key, SK::read, "users",
             "dollar"},
        Case{"SELECT * FROM events WHERE uid = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", TK::by_key,
             SK::read, "events", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
        Case{"SELECT * FROM events WHERE uid = uuid 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
             TK::by_key, SK::read, "events", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
        Case{"EXPLAIN SELECT * FROM accounts WHERE id = 1", TK::by_key, SK::read, "accounts", "1"},
        // Writes and locking reads go to the primary, by key
        Case{"SELECT * FROM accounts WHERE id = 1 FOR UPDATE", TK::by_key, SK::write, "accounts",
             "1"},
        Case{"SELECT * FROM accounts WHERE id = 1 FOR SHARE", TK::by_key, SK::write, "accounts",
             "1"},
        Case{"INSERT INTO accounts (id, owner) VALUES (42, 'x')", TK::by_key, SK::write, "accounts",
             "42"},
        Case{"INSERT INTO accounts (owner, id) VALUES ('x', 42) RETURNING id", TK::by_key,
             SK::write, "accounts", "42"},
        Case{"INSERT INTO accounts (id) VALUES (42) ON CONFLICT (id) DO UPDATE SET owner = 'y'",
             TK::by_key, SK::write, "accounts", "42"},
        Case{"UPDATE accounts SET balance = balance + 1 WHERE id = 5", TK::by_key, SK::write,
             "accounts", "5"},
        Case{"DELETE FROM accounts WHERE id = 5", TK::by_key, SK::write, "accounts", "5"},
        Case{"DELETE FROM orders WHERE account_id = 12 AND status = 'x'", TK::by_key, SK::write,
             "orders", "12"},
        Case{"WITH d AS (DELETE FROM accounts WHERE id = 2 RETURNING *) SELECT * FROM d", TK::error,
             SK::write, nullptr, nullptr, "0A000"},
        // No sharded table: the default shard
        Case{"SELECT 1", TK::default_shard, SK::read},
        Case{"SELECT now(), version()", TK::default_shard, SK::read},
        Case{"SELECT nextval('seq')", TK::default_shard, SK::write},
        Case{"SELECT * FROM pg_catalog.pg_type WHERE oid = 23", TK::default_shard, SK::read},
        Case{"SELECT * FROM settings WHERE k = 'a'", TK::default_shard, SK::read},
        Case{"INSERT INTO audit (msg) VALUES ('x')", TK::default_shard, SK::write},
        Case{"SHOW search_path", TK::default_shard, SK::read},
        Case{"SELECT pg_advisory_lock(1)", TK::default_shard, SK::write},
        Case{"CREATE TABLE local_t (a int)", TK::default_shard, SK::ddl},
        // DDL on a sharded table: every primary
        Case{"CREATE TABLE accounts (id bigint primary key)", TK::all_primaries, SK::ddl},
        Case{"ALTER TABLE accounts ADD COLUMN note text", TK::all_primaries, SK::ddl},
        Case{"DROP TABLE IF EXISTS accounts", TK::all_primaries, SK::ddl},
        Case{"TRUNCATE accounts", TK::all_primaries, SK::ddl},
        Case{"CREATE INDEX ON accounts (owner)", TK::all_primaries, SK::ddl},
        // Sharded table without a usable key: a clear error, never a guess
        Case{"SELECT * FROM accounts", TK::error, SK::read, nullptr, nullptr, "0A000"},
        Case{"SELECT * FROM accounts WHERE id > 5", TK::error, SK::read, nullptr, nullptr, "0A000"},
        Case{"SELECT * FROM accounts WHERE id = 1 OR id = 2", TK::error, SK::read, nullptr, nullptr,
             "0A000"},
        Case{"SELECT * FROM accounts WHERE id = 40 + 2", TK::error, SK::read, nullptr, nullptr,
             "0A000"},
        Case{"SELECT * FROM settings WHERE k IN (SELECT owner FROM accounts WHERE id = 1)",
             TK::error, SK::read, nullptr, nullptr, "0A000"},
        Case{"UPDATE accounts SET balance = 0", TK::error, SK::write, nullptr, nullptr, "0A000"},
        Case{"UPDATE accounts SET id = 9 WHERE id = 1", TK::error, SK::write, nullptr, nullptr,
             "0A000"},
        Case{"INSERT INTO accounts VALUES (1, 'x')", TK::error, SK::write, nullptr, nullptr,
             "0A000"},
        Case{"INSERT INTO accounts (id) SELECT 1", TK::error, SK::write, nullptr, nullptr, "0A000"},
        Case{"INSERT INTO accounts (id) VALUES (DEFAULT)", TK::error, SK::write, nullptr, nullptr,
             "0A000"},
        Case{"SELECT * FROM accounts WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8)", TK::error, SK::read,
             nullptr, nullptr, "0A000"},
        Case{"SELECT * FROM accounts WHERE id = 'abc'", TK::error, SK::read, nullptr, nullptr,
             "22P02"},
        Case{"SELECT * FROM orders WHERE account_id = 2147483648", TK::error, SK::read, nullptr,
             nullptr, "22P02"},
        Case{"SELECT * FROM accounts WHERE id = 1.5", TK::error, SK::read, nullptr, nullptr,
             "22P02"},
        Case{"SELECT * FROM accounts WHERE id = 99999999999999999999", TK::error, SK::read, nullptr,
             nullptr, "22P02"},
        // Every shard (scatter), which the extended protocol cannot run: 0A000 there.
        Case{"COPY accounts FROM STDIN", TK::error, SK::write, nullptr, nullptr, "0A000"},
        Case{"COPY accounts (id) FROM STDIN WITH (FORMAT binary)", TK::error, SK::write, nullptr,
             nullptr, "0A000"},
        Case{"COPY accounts (owner) FROM STDIN", TK::error, SK::write, nullptr, nullptr, "0A000"},
        Case{"COPY accounts FROM '/tmp/x'", TK::error, SK::other, nullptr, nullptr, "0A000"},
        // Transaction control and session state: no shard of their own
        Case{"BEGIN", TK::none, SK::begin},
        Case{"START TRANSACTION ISOLATION LEVEL SERIALIZABLE", TK::none, SK::begin},
        Case{"COMMIT", TK::none, SK::commit}, Case{"ROLLBACK", TK::none, SK::rollback},
        Case{"SAVEPOINT a", TK::none, SK::savepoint},
        Case{"SET search_path TO app, public", TK::none, SK::set},
        Case{"SET LOCAL statement_timeout = 100", TK::none, SK::set_local},
        Case{"RESET ALL", TK::none, SK::reset_all}, Case{"DISCARD ALL", TK::none, SK::discard_all},
        // Did not parse: the default shard's primary reports the syntax error
        Case{"SELEC 1", TK::default_shard, SK::write}));

TEST(RoutingParams, TextAndBinaryParamsRouteLikeLiterals) {
  std::string sql = "SELECT * FROM accounts WHERE id = $1";
  PlannedText pt = router().plan(sql);
  const auto &p = pt.analysis->stmts[0];
  std::string bin("\0\0\0\0\0\0\0\x2a", 8);
  Resolved text = router().resolve(p, sql, pt.scan, {{std::string_view("42"), 0}});
  Resolved binary = router().resolve(p, sql, pt.scan, {{std::string_view(bin), 1}});
  ASSERT_EQ(text.kind, TargetKind::by_key);
  EXPECT_EQ(text.shard, owner("accounts", "42"));
  EXPECT_EQ(binary.shard, text.shard);
  Resolved null = router().resolve(p, sql, pt.scan, {{std::nullopt, 0}});
  EXPECT_EQ(null.kind, TargetKind::error);
  Resolved missing = router().resolve(p, sql, pt.scan, {});
  EXPECT_EQ(missing.kind, TargetKind::error);
}

TEST(RoutingParams, MultiRowInsertOnOneShardOrError) {
  // Find two keys on the same shard and one on another.
  int64_t a = 1, same = -1, other = -1;
  for (int64_t k = 2; k < 100 && (same < 0 || other < 0); ++k) {
    bool eq = owner("accounts", std::to_string(k).c_str()) == owner("accounts", "1");
    if (eq && same < 0)
      same = k;
    if (!eq && other < 0)
      other = k;
  }
  std::string ok = "INSERT INTO accounts (id) VALUES (" + std::to_string(a) + "), (" +
                   std::to_string(same) + ")";
  auto pt = router().plan(ok);
  EXPECT_EQ(router().resolve(pt.analysis->stmts[0], ok, pt.scan).kind, TargetKind::by_key);
  std::string bad = "INSERT INTO accounts (id) VALUES ($1), ($2)";
  auto pb = router().plan(bad);
  std::string sa = std::to_string(a), so = std::to_string(other);
  auto r = router().resolve(pb.analysis->stmts[0], bad, pb.scan,
                            {{std::string_view(sa), 0}, {std::string_view(so), 0}});
  EXPECT_EQ(r.kind, TargetKind::error);
  EXPECT_EQ(r.error.sqlstate, "0A000");
}

TEST(RoutingCache, SameShapeDifferentLiteralsReuseThePlan) {
  std::string a = "SELECT * FROM accounts WHERE id = 1", b = "SELECT * FROM accounts WHERE id = 2";
  auto pa = router().plan(a), pb = router().plan(b);
  EXPECT_EQ(pa.analysis.get(), pb.analysis.get());
  EXPECT_EQ(router().resolve(pb.analysis->stmts[0], b, pb.scan).shard, owner("accounts", "2"));
}

TEST(RoutingMulti, SeveralStatementsInOneQuery) {
  std::string sql = "BEGIN; UPDATE accounts SET balance = 1 WHERE id = 3; COMMIT;";
  auto pt = router().plan(sql);
  ASSERT_EQ(pt.analysis->stmts.size(), 3u);
  EXPECT_EQ(pt.analysis->stmts[0].kind, StmtKind::begin);
  EXPECT_EQ(router().resolve(pt.analysis->stmts[1], sql, pt.scan).shard, owner("accounts", "3"));
  EXPECT_EQ(pt.analysis->stmts[2].kind, StmtKind::commit);
}

// SET statements replayed on other backends are rebuilt from the parse tree with E'' quoting,
// so a value means the same whatever standard_conforming_strings the backend has.
TEST(CanonicalSet, RebuildsWithSafeQuoting) {
  EXPECT_EQ(canonical_set("SET search_path TO app, public"),
            "SET search_path TO E'app', E'public'");
  EXPECT_EQ(canonical_set("set Statement_Timeout = 100"), "SET statement_timeout TO 100");
  EXPECT_EQ(canonical_set("SET TIME ZONE 'UTC'"), "SET timezone TO E'UTC'");
  EXPECT_EQ(canonical_set("RESET work_mem"), "RESET work_mem");
  EXPECT_EQ(canonical_set("SET work_mem TO DEFAULT"), "RESET work_mem");
  EXPECT_EQ(canonical_set("SET application_name = 'a''b\\c'"),
            "SET application_name TO E'a''b\\\\c'");
  EXPECT_FALSE(canonical_set("SET LOCAL work_mem = '1MB'")) << "transaction-scoped: not replayed";
  EXPECT_FALSE(canonical_set("SET work_mem FROM CURRENT"));
  EXPECT_FALSE(canonical_set("SELECT 1"));
  EXPECT_EQ(quote_e_literal("x'; DROP TABLE t; --\\"), "E'x''; DROP TABLE t; --\\\\'");
}

// The highest $n a statement refers to: PostgreSQL's parameter count (with the Parse's types).
TEST(Analysis, MaxParamWalksTheWholeTree) {
  auto max_param = [](const char *sql) {
    auto a = sg::router::analyze(sql, {}, {});
    EXPECT_TRUE(a.parsed) << sql;
    return a.max_param;
  };
  EXPECT_EQ(max_param("SELECT 1"), 0);
  EXPECT_EQ(max_param("SELECT $2::int + $1"), 2);
  EXPECT_EQ(max_param("SELECT '$4', $$ $7 $$"), 0); // inside strings: no parameter
  EXPECT_EQ(max_param("INSERT INTO t (a, b) VALUES ($1, $5) ON CONFLICT (a) DO UPDATE SET b = $6"),
            6);
  EXPECT_EQ(max_param("SELECT * FROM t WHERE a IN (SELECT b FROM u WHERE c = lower($3)) "
                      "ORDER BY coalesce($2, 0) LIMIT $4"),
            4);
  EXPECT_EQ(max_param("UPDATE t SET a = a + 1 WHERE id = ANY($9::bigint[])"), 9);
}

// Reads without a key: a scatter plan the simple-query path runs on every shard, or 0A000
// naming what cannot be merged yet; every other caller gets 0A000 either way.
TEST(Scatter, PlansWhatItCanMergeAndRefusesTheRest) {
  auto plan = [](const std::string &sql, PlannedText &pt) -> const StatementPlan & {
    pt = router().plan(sql);
    EXPECT_EQ(pt.analysis->stmts.size(), 1u) << sql;
    return pt.analysis->stmts[0];
  };
  PlannedText pt;
  std::string sql = "SELECT id, balance FROM accounts WHERE balance > 5 "
                    "ORDER BY balance DESC, 1 NULLS FIRST LIMIT 10 OFFSET 3";
  const StatementPlan &p = plan(sql, pt);
  ASSERT_EQ(p.target, TargetKind::scatter) << p.error.message;
  const ScatterSpec &s = *p.scatter;
  ASSERT_EQ(s.order.size(), 2u);
  EXPECT_EQ(s.order[0].name, "balance");
  EXPECT_TRUE(s.order[0].desc);
  EXPECT_TRUE(s.order[0].nulls_first) << "DESC puts NULLs first by default";
  EXPECT_EQ(s.order[1].position, 1);
  EXPECT_FALSE(s.order[1].desc);
  EXPECT_TRUE(s.order[1].nulls_first);
  ASSERT_GE(s.limit_const, 0);
  ASSERT_GE(s.offset_const, 0);
  auto text = [&](int32_t i) {
    const auto &c = pt.scan.consts[size_t(i)];
    return sql.substr(c.start, c.end - c.start);
  };
  EXPECT_EQ(text(s.limit_const), "10");
  EXPECT_EQ(text(s.offset_const), "3");
  EXPECT_TRUE(s.aggs.empty());
  EXPECT_EQ(router().resolve(p, sql, pt.scan, {}, nullptr, true).kind, TargetKind::scatter);
  Resolved other = router().resolve(p, sql, pt.scan);
  EXPECT_EQ(other.kind, TargetKind::error) << "the extended protocol does not scatter yet";
  EXPECT_EQ(other.error.sqlstate, "0A000");

  const StatementPlan &a =
      plan("SELECT count(*), sum(balance), min(id), MAX(owner) FROM accounts", pt);
  ASSERT_EQ(a.target, TargetKind::scatter) << a.error.message;
  using Agg = ScatterSpec::Agg;
  EXPECT_EQ(a.scatter->aggs, (std::vector<Agg>{Agg::count, Agg::sum, Agg::min, Agg::max}));

  const StatementPlan &g =
      plan("SELECT owner AS o, count(*), max(balance) FROM accounts GROUP BY o ORDER BY 2 DESC "
           "LIMIT 3",
           pt);
  ASSERT_EQ(g.target, TargetKind::scatter) << g.error.message;
  EXPECT_TRUE(g.scatter->grouped);
  EXPECT_EQ(g.scatter->aggs, (std::vector<Agg>{Agg::group, Agg::count, Agg::max}));
  EXPECT_EQ(g.scatter->order[0].position, 2);

  // avg(x): the shards run sum(x), count(x) in its place (the argument's text as written:
  // parentheses in a string do not end it), the output keeps its name.
  const std::string avg_sql =
      "SELECT owner, AVG(balance + length(')(')) AS mean, avg(id) FROM accounts GROUP BY owner";
  const StatementPlan &v = plan(avg_sql.c_str(), pt);
  ASSERT_EQ(v.target, TargetKind::scatter) << v.error.message;
  EXPECT_EQ(v.scatter->aggs, (std::vector<Agg>{Agg::group, Agg::avg, Agg::avg}));
  ASSERT_EQ(v.scatter->edits.size(), 2u);
  std::string shard_sql = avg_sql;
  for (auto e = v.scatter->edits.rbegin(); e != v.scatter->edits.rend(); ++e)
    shard_sql.replace(e->start, e->end - e->start, e->text);
  EXPECT_EQ(shard_sql, "SELECT owner, sum(balance + length(')(')), count(balance + length(')(')) "
                       "AS mean, sum(id), count(id) FROM accounts GROUP BY owner");
  EXPECT_EQ(v.scatter->avg_names, (std::vector<std::string>{"", "mean", "avg"}));

  // HAVING: its aggregates and group columns are hidden columns of the shards' list, and the
  // shards get no HAVING; the proxy filters the combined groups.
  const std::string having_sql = "SELECT owner, count(*) FROM accounts GROUP BY owner HAVING "
                                 "(sum(balance) > 10 OR 5 >= count(*)) AND owner IS NOT NULL "
                                 "AND avg(id) < 2.5 ORDER BY 2 LIMIT 3";
  const StatementPlan &h = plan(having_sql.c_str(), pt);
  ASSERT_EQ(h.target, TargetKind::scatter) << h.error.message;
  ASSERT_TRUE(h.scatter->having);
  EXPECT_EQ(h.scatter->hidden, 4u);
  EXPECT_EQ(h.scatter->aggs,
            (std::vector<Agg>{Agg::group, Agg::count, Agg::sum, Agg::count, Agg::group, Agg::avg}));
  std::string h_sql = having_sql;
  auto h_edits = h.scatter->edits;
  std::sort(h_edits.begin(), h_edits.end(), [](auto &a, auto &b) { return a.start > b.start; });
  for (auto &e : h_edits)
    h_sql.replace(e.start, e.end - e.start, e.text);
  EXPECT_EQ(h_sql, "SELECT owner, count(*) , sum(balance), count(*), \"owner\", sum(id), "
                   "count(id) FROM accounts GROUP BY owner  ORDER BY 2 LIMIT 3");
  const auto &root = *h.scatter->having;
  ASSERT_EQ(root.args.size(), 3u); // AND of three
  EXPECT_EQ(root.args[0].args[1].op, 6u) << "5 >= count(*) is count(*) <= 5";
  EXPECT_EQ(root.args[0].args[1].column, 3u);
  EXPECT_EQ(root.args[2].value, "2.5");

  const StatementPlan &d = plan("SELECT DISTINCT owner, balance FROM accounts ORDER BY 2", pt);
  ASSERT_EQ(d.target, TargetKind::scatter) << d.error.message;
  EXPECT_TRUE(d.scatter->grouped);
  EXPECT_EQ(d.scatter->aggs, (std::vector<Agg>{Agg::group, Agg::group}));

  const StatementPlan &c = plan("SELECT name FROM users ORDER BY name COLLATE \"C\"", pt);
  ASSERT_EQ(c.target, TargetKind::scatter) << c.error.message;
  EXPECT_TRUE(c.scatter->order[0].collate_c);

  for (const char *no :
       {"SELECT owner, count(*) FROM accounts GROUP BY owner HAVING count(*) > balance",
        "SELECT owner, count(*) FROM accounts GROUP BY owner HAVING count(*) + 1 > 2",
        "SELECT owner, count(*) FROM accounts GROUP BY owner HAVING balance > 2",
        "SELECT owner, count(*) FROM accounts GROUP BY owner HAVING count(DISTINCT id) > 2",
        "SELECT DISTINCT owner FROM accounts HAVING count(*) > 2",
        "SELECT count(*) FROM accounts GROUP BY owner",
        "SELECT lower(owner), count(*) FROM accounts GROUP BY lower(owner)",
        "SELECT owner, count(*) FROM accounts GROUP BY ROLLUP (owner)",
        "SELECT DISTINCT ON (owner) owner, id FROM accounts",
        "SELECT DISTINCT * FROM accounts",
        "SELECT DISTINCT owner, count(*) FROM accounts GROUP BY owner",
        "SELECT count(DISTINCT owner) FROM accounts",
        "SELECT id, count(*) FROM accounts",
        "SELECT count(*) + 1 FROM accounts",
        "SELECT id FROM accounts ORDER BY balance + 1",
        "SELECT id FROM accounts ORDER BY owner COLLATE \"en_US\"",
        "SELECT id AS balance FROM accounts ORDER BY accounts.balance",
        "SELECT id, row_number() OVER () FROM accounts",
        "SELECT id, array_agg(id) FROM accounts",
        "SELECT * FROM accounts WHERE balance > (SELECT avg(balance) FROM accounts)",
        "SELECT * FROM accounts a JOIN orders o ON o.account_id = a.id",
        "SELECT * FROM accounts FOR UPDATE",
        "SELECT count(*) FROM accounts LIMIT 1",
        "WITH x AS (SELECT * FROM accounts) SELECT * FROM x"}) {
    const StatementPlan &r = plan(no, pt);
    EXPECT_EQ(r.target, TargetKind::error) << no;
    EXPECT_EQ(r.error.sqlstate, "0A000") << no;
    EXPECT_FALSE(r.error.hint.empty()) << no;
  }
}

// An IN list whose keys live on several shards: a read merged from exactly those shards (for
// the simple-protocol caller); a write, or another caller, gets 0A000.
TEST(Scatter, InListOnSeveralShardsReadsOnlyThoseShards) {
  std::vector<std::string> keys;
  std::set<size_t> owners;
  for (int k = 1; owners.size() < 2; ++k) {
    keys.push_back(std::to_string(k));
    owners.insert(owner("accounts", keys.back().c_str()));
  }
  std::string list;
  for (auto &k : keys)
    list += (list.empty() ? "" : ", ") + k;
  std::string sql = "SELECT id, balance FROM accounts WHERE id IN (" + list + ") ORDER BY id";
  PlannedText pt = router().plan(sql);
  const StatementPlan &p = pt.analysis->stmts[0];
  ASSERT_EQ(p.target, TargetKind::by_key);
  ASSERT_TRUE(p.scatter) << "a read with several keys carries its merge";
  Resolved r = router().resolve(p, sql, pt.scan, {}, nullptr, true);
  ASSERT_EQ(r.kind, TargetKind::scatter) << r.error.message;
  uint64_t want = 0;
  for (size_t o : owners)
    want |= uint64_t(1) << o;
  EXPECT_EQ(r.shards, want);
  EXPECT_EQ(router().resolve(p, sql, pt.scan).kind, TargetKind::error);
  std::string upd = "UPDATE accounts SET balance = 0 WHERE id IN (" + list + ")";
  PlannedText pu = router().plan(upd);
  // A write with such a list runs on those shards too (simple protocol callers), and is
  // refused where the caller cannot run it on several (the extended protocol, for now).
  EXPECT_TRUE(pu.analysis->stmts[0].multi_write);
  Resolved w = router().resolve(pu.analysis->stmts[0], upd, pu.scan, {}, nullptr, true);
  EXPECT_EQ(w.kind, TargetKind::scatter);
  EXPECT_EQ(w.shards, want);
  Resolved w2 = router().resolve(pu.analysis->stmts[0], upd, pu.scan, {}, nullptr, false);
  EXPECT_EQ(w2.kind, TargetKind::error);
  EXPECT_EQ(w2.error.sqlstate, "0A000");
  // All keys on one shard: by key, as before.
  std::string one = "SELECT id FROM accounts WHERE id IN (" + keys[0] + ", " + keys[0] + ")";
  PlannedText po = router().plan(one);
  EXPECT_EQ(router().resolve(po.analysis->stmts[0], one, po.scan, {}, nullptr, true).kind,
            TargetKind::by_key);
}

// The planner's walks over the parse tree visit each node once (a Node's oneof members alias one
// pointer: walking all of them revisited each child ~250 times per level, found by fuzzing).
TEST(Scatter, DeepExpressionsPlanInLinearTime) {
  std::string expr = "owner";
  for (int i = 0; i < 60; ++i)
    expr = "lower(" + expr + ")";
  std::string sql = "SELECT " + expr + ", (((((((((((id))))))))))) FROM accounts ORDER BY 2";
  PlannedText pt = router().plan(sql);
  ASSERT_EQ(pt.analysis->stmts.size(), 1u);
  EXPECT_EQ(pt.analysis->stmts[0].target, TargetKind::scatter)
      << pt.analysis->stmts[0].error.message;
}

// UPDATE and DELETE of one sharded table with no usable key run on every shard; anything that
// names another table, a CTE or a placement-dependent function stays refused.
TEST(Scatter, WritesWithoutKeyRunOnEveryShardOnlyWhenSelfContained) {
  auto plan1 = [](const std::string &sql) {
    PlannedText pt = router().plan(sql);
    return pt.analysis->stmts[0];
  };
  for (const char *sql :
       {"UPDATE accounts SET balance = 0", "DELETE FROM accounts WHERE owner = 'x'",
        "UPDATE accounts SET balance = balance + 1 WHERE balance < 0 RETURNING id"}) {
    StatementPlan p = plan1(sql);
    EXPECT_EQ(p.target, TargetKind::scatter) << sql;
    EXPECT_TRUE(p.multi_write) << sql;
    EXPECT_FALSE(p.scatter) << sql; // nothing to merge but rows and counts
  }
  for (const char *sql :
       {"DELETE FROM accounts WHERE id IN (SELECT id FROM accounts WHERE balance < 0)",
        "UPDATE accounts SET balance = o.x FROM other o WHERE o.id = accounts.owner",
        "DELETE FROM accounts USING other WHERE other.id = accounts.owner",
        "WITH x AS (SELECT 1) DELETE FROM accounts", "UPDATE accounts SET balance = nextval('s')",
        "UPDATE accounts SET id = 9"}) {
    StatementPlan p = plan1(sql);
    EXPECT_EQ(p.target, TargetKind::error) << sql;
    EXPECT_FALSE(p.multi_write) << sql;
  }
}

TEST(Scatter, CopyFromStdinReadsItsFormatAndKeyPosition) {
  auto copy_of = [](const std::string &sql) {
    PlannedText pt = router().plan(sql);
    return pt.analysis->stmts[0];
  };
  StatementPlan p = copy_of("COPY accounts (owner, id, balance) FROM STDIN");
  ASSERT_TRUE(p.copy_in);
  EXPECT_EQ(p.target, TargetKind::scatter);
  EXPECT_EQ(p.copy_in->key_field, 1);
  EXPECT_FALSE(p.copy_in->csv);
  EXPECT_EQ(p.copy_in->delimiter, '\t');
  EXPECT_EQ(p.copy_in->null_text, "\\N");
  p = copy_of("COPY accounts FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';', QUOTE '''')");
  ASSERT_TRUE(p.copy_in);
  EXPECT_EQ(p.copy_in->key_field, -1); // no column list: the catalog's order
  EXPECT_TRUE(p.copy_in->csv);
  EXPECT_TRUE(p.copy_in->header);
  EXPECT_EQ(p.copy_in->delimiter, ';');
  EXPECT_EQ(p.copy_in->quote, '\'');
  EXPECT_EQ(p.copy_in->escape, '\''); // ESCAPE defaults to QUOTE
  EXPECT_EQ(p.copy_in->null_text, "");
  p = copy_of("COPY accounts (id) FROM STDIN CSV");
  ASSERT_TRUE(p.copy_in);
  EXPECT_EQ(p.copy_in->delimiter, ',');
  EXPECT_FALSE(copy_of("COPY accounts TO STDOUT").copy_in);
}

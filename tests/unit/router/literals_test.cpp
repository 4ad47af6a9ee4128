// The fast literal scanner against libpg_query's own scanner: the same constants at the same
// byte positions, or a fallback to libpg_query. A mismatch could make two statements share a plan.
#include "router/literals.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace sg::router;

namespace {

const std::vector<std::string> kCorpus = {
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    "SELECT * FROM accounts WHERE id = 42",
    "select * from t1 where c2 = 'x' and c3 = 3.5 and c4 = .5 and c5 = 1e10 and c6 = 2E-3",
    "SELECT * FROM accounts WHERE id = -5",
    "SELECT * FROM users WHERE name = 'o''brien'",
    "SELECT * FROM users WHERE name = E'tab\\there\\' ok'",
    "SELECT * FROM users WHERE name = e'x'",
    "SELECT $$dollar 'quoted' $$, $tag$with $$ inside$tag$, $1, $23",
    "SELECT B'1010', X'1F', N'national', b'0'",
    "SELECT \"weird\"\"ident\", \"col 1\" FROM \"T\" WHERE \"a'b\" = 'v'",
    "SELECT 1 -- comment with 'quote' and 42\n, 2 /* block 'x' /* nested 7 */ 8 */ , 3",
    "INSERT INTO accounts (id, owner) VALUES (1, 'a'), (2, 'b'), ($1, $2)",
    "UPDATE t SET a = a + 1, b = 'x' WHERE id IN (1, 2, 3) RETURNING *",
    "SELECT '2020-01-01'::date, interval '1 day', 10::bigint, t.c1 FROM t",
    "SELECT a.b.c, x$y, _z9 FROM s.t WHERE q = 0 AND r = 00 AND s = 1.",
    "SELECT 'a' 'b'",
    "SELECT 1..2",
    "SELECT U&'d\\0061t\\+000061'",
    "SELECT 'unterminated",
    "SELECT 123abc",
    "SELECT 'x'\n'continued'",
    "SELECT 0x1F",
    "SET application_name = 'app', statement_timeout = 100",
    "SELECT ARRAY[1,2,3], '{1,2}'::int[], col[1:2] FROM t",
    "SELECT ü, 'ünïcode' FROM tåble WHERE 名前 = '値'",
    "",
    ";",
    "SELECT 1; SELECT 'two'; SELECT 3.0",
};

} // namespace

TEST(Literals, FastScannerMatchesLibpgQueryOrFallsBack) {
  for (const std::string &sql : kCorpus) {
    ScanResult fast = scan_constants(sql);
    ScanResult ref = scan_constants_pg(sql);
    if (!ref.ok)
      continue; // the reference itself gives up: the analyzer reports the error
    ASSERT_TRUE(fast.ok) << sql;
    ASSERT_EQ(fast.consts.size(), ref.consts.size()) << sql;
    for (size_t i = 0; i < ref.consts.size(); ++i) {
      EXPECT_EQ(fast.consts[i].start, ref.consts[i].start) << sql << " const " << i;
      EXPECT_EQ(fast.consts[i].end, ref.consts[i].end) << sql << " const " << i;
      EXPECT_EQ(fast.consts[i].is_string, ref.consts[i].is_string) << sql << " const " << i;
    }
    EXPECT_EQ(fast.normalized, ref.normalized) << sql;
  }
}

TEST(Literals, PlaceholdersAreKindTagged) {
  EXPECT_NE(scan_constants("SELECT date '2020-01-01'").normalized,
            scan_constants("SELECT date 5").normalized);
  EXPECT_EQ(scan_constants("SELECT * FROM a WHERE id = 1").normalized,
            scan_constants("SELECT * FROM a WHERE id = 99999").normalized);
  EXPECT_NE(scan_constants("SELECT * FROM t1 WHERE id = 1").normalized,
            scan_constants("SELECT * FROM t2 WHERE id = 1").normalized)
      << "digits inside identifiers are not constants";
}

TEST(Literals, ConstantValues) {
  std::string sql = "SELECT 'it''s', E'a\\\\b\\'c', $q$x$q$, 42";
  auto r = scan_constants(sql);
  ASSERT_EQ(r.consts.size(), 4u);
  EXPECT_EQ(*constant_value(sql, r.consts[0]), "it's");
  EXPECT_EQ(*constant_value(sql, r.consts[1]), "a\\b'c");
  EXPECT_EQ(*constant_value(sql, r.consts[2]), "x");
  EXPECT_EQ(*constant_value(sql, r.consts[3]), "42");
}

namespace {
// Each constant of sql replaced by `with` (numbers) or `with_str` (strings).
std::string replace_consts(const std::string &sql, const std::string &num, const std::string &str) {
  ScanResult r = scan_constants(sql);
  std::string out;
  size_t last = 0;
  for (const auto &t : r.consts) {
    out += sql.substr(last, t.start - last);
    out += t.is_string ? str : num;
    last = t.end;
  }
  return out + sql.substr(last);
}
} // namespace

// same_shape() must say yes only where a full scan gives the very same normalized text and
// constant positions; and it must say yes for the plain case of new values.
TEST(Literals, SameShapeAgreesWithAFullScan) {
  const std::vector<std::pair<std::string, std::string>> values = {
      {"7", "'zz'"},        {"123456789", "'a''b'"}, {"1.5", "E'q\\'x'"}, {"2e3", "$$d$$"},
      {"1'x'", "'x'\n'y'"}, {"-1", "E'"},            {".5", "$t$a$t$"},   {"5a", "'"},
      {"1..", "e'a'"},      {"0", "B'1'"}};
  int hits = 0;
  for (const std::string &a : kCorpus) {
    ScanResult base = scan_constants(a);
    for (const auto &[num, str] : values) {
      for (const std::string &b : {replace_consts(a, num, str), a}) {
        ScanResult prev = base;
        if (!same_shape(b, prev))
          continue;
        ++hits;
        ScanResult full = scan_constants(b);
        ASSERT_TRUE(full.ok) << a << " | " << b;
        EXPECT_EQ(full.normalized, prev.normalized) << a << " | " << b;
        ASSERT_EQ(full.consts.size(), prev.consts.size()) << a << " | " << b;
        for (size_t i = 0; i < full.consts.size(); ++i) {
          EXPECT_EQ(full.consts[i].start, prev.consts[i].start) << a << " | " << b;
          EXPECT_EQ(full.consts[i].end, prev.consts[i].end) << a << " | " << b;
        }
      }
    }
  }
  EXPECT_GT(hits, 100);
  ScanResult prev = scan_constants("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;");
  EXPECT_TRUE(same_shape("SELECT abalance FROM pgbench_accounts WHERE aid = 7;", prev));
  EXPECT_EQ(prev.consts[0].start, 50u);
  EXPECT_EQ(prev.consts[0].end, 51u);
  EXPECT_FALSE(same_shape("SELECT abalance FROM pgbench_accounts WHERE aid = '7';", prev));
  EXPECT_FALSE(same_shape("SELECT abalance FROM pgbench_branches WHERE aid = 7;", prev));
  EXPECT_FALSE(same_shape("SELECT abalance FROM pgbench_accounts WHERE aid = 7", prev));
  EXPECT_FALSE(same_shape("SELECT abalance FROM pgbench_accounts WHERE aid = 7;;", prev));
  prev = scan_constants("SELECT * FROM t WHERE a = 'x' AND b = 1");
  EXPECT_FALSE(same_shape("SELECT * FROM t WHERE a = E'x' AND b = 1", prev)) << "other lead byte";
  EXPECT_FALSE(same_shape("SELECT * FROM t WHERE a = 'x' AND b = 1e", prev));
}

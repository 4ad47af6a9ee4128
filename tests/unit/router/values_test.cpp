#include "router/values.h"

#include <gtest/gtest.h>

#include <string>

using sg::router::values_rows;

namespace {

std::vector<std::string> rows_of(const std::string &sql, size_t n) {
  std::vector<std::string> out;
  for (auto [b, e] : values_rows(sql, n))
    out.push_back(sql.substr(b, e - b));
  return out;
}

} // namespace

TEST(ValuesRows, FindsEachRowOfTheTopLevelValues) {
  EXPECT_EQ(rows_of("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')", 2),
            (std::vector<std::string>{"(1, 'x')", "(2, 'y')"}));
  EXPECT_EQ(rows_of("insert into t(a,b)values(1,2),(3,4) returning a", 2),
            (std::vector<std::string>{"(1,2)", "(3,4)"}));
  // Quotes, comments and nested parentheses that hold what looks like syntax.
  std::string tricky = "INSERT INTO t (a, b) VALUES ((1), 'a(b'), /* (, */ (2, E'c\\')d'),"
                       " -- )\n (3, $$)$$), (4, $q$ ( $q$), (5, \"x(\"), ($1, 'it''s)')"
                       " ON CONFLICT (a) DO NOTHING";
  EXPECT_EQ(rows_of(tricky, 6),
            (std::vector<std::string>{"((1), 'a(b')", "(2, E'c\\')d')", "(3, $$)$$)",
                                      "(4, $q$ ( $q$)", "(5, \"x(\")", "($1, 'it''s)')"}));
  EXPECT_TRUE(rows_of(tricky, 7).empty()); // six rows, not seven
  // VALUES inside a CTE or subquery is not the top-level one; a column named "values" in
  // quotes is not the keyword.
  EXPECT_EQ(rows_of("INSERT INTO t (\"values\", b) VALUES (1, 2), (3, 4)", 2),
            (std::vector<std::string>{"(1, 2)", "(3, 4)"}));
}

TEST(ValuesRows, RefusesWhatItCannotCut) {
  EXPECT_TRUE(rows_of("INSERT INTO t (a) VALUES (1), (2)", 3).empty()); // a different count
  EXPECT_TRUE(rows_of("INSERT INTO t (a) SELECT 1", 1).empty());
  EXPECT_TRUE(rows_of("INSERT INTO t (a) VALUES (1, 'unterminated)", 1).empty());
  EXPECT_TRUE(rows_of("INSERT INTO t (a) VALUES (1 /* open", 1).empty());
}

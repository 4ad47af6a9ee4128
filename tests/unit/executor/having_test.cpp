// HAVING over combined group rows: SQL's three-valued logic, exact numbers, text equality.
#include "executor/having.h"

#include <gtest/gtest.h>

using namespace sg::executor;
using sg::protocol::Row;
using Op = Cond::Op;

namespace {

Cond cmp(Op op, size_t col, std::string v, bool text = false) {
  Cond c;
  c.op = op;
  c.column = col;
  c.value = std::move(v);
  c.value_is_text = text;
  return c;
}

Cond node(Op op, std::vector<Cond> args) {
  Cond c;
  c.op = op;
  c.args = std::move(args);
  return c;
}

std::optional<bool> run(const Cond &c, const Row &row) {
  // columns: count (int8), sum (numeric), name (text), at (timestamptz)
  std::vector<CondType> types = {cond_type(20, 0), cond_type(1700, 0), cond_type(25, 0),
                                 cond_type(1184, 0)};
  std::optional<bool> out;
  std::string error;
  EXPECT_TRUE(eval(c, row, types, out, error)) << error;
  return out;
}

} // namespace

TEST(Having, ComparesExactNumbersWithIntegerAndDecimalConstants) {
  Row r = {std::string("3"), std::string("100.50"), std::string("ab"), std::string("x")};
  EXPECT_EQ(run(cmp(Op::Gt, 0, "1"), r), true);
  EXPECT_EQ(run(cmp(Op::Le, 0, "2.5"), r), false);
  EXPECT_EQ(run(cmp(Op::Eq, 1, "100.5"), r), true); // numeric equality ignores the scale
  EXPECT_EQ(run(cmp(Op::Lt, 1, "-7"), r), false);
  EXPECT_EQ(run(cmp(Op::Ne, 2, "ab", true), r), false);
  EXPECT_EQ(run(cmp(Op::Eq, 2, "ab", true), r), true);
}

TEST(Having, FollowsThreeValuedLogic) {
  Row r = {std::nullopt, std::string("1"), std::nullopt, std::nullopt};
  Cond null_cmp = cmp(Op::Gt, 0, "1");
  EXPECT_EQ(run(null_cmp, r), std::nullopt);
  EXPECT_EQ(run(node(Op::Not, {null_cmp}), r), std::nullopt);
  EXPECT_EQ(run(node(Op::And, {null_cmp, cmp(Op::Eq, 1, "2")}), r), false);
  EXPECT_EQ(run(node(Op::And, {null_cmp, cmp(Op::Eq, 1, "1")}), r), std::nullopt);
  EXPECT_EQ(run(node(Op::Or, {null_cmp, cmp(Op::Eq, 1, "1")}), r), true);
  EXPECT_EQ(run(node(Op::Or, {null_cmp, cmp(Op::Eq, 1, "2")}), r), std::nullopt);
  Cond isnull;
  isnull.op = Op::IsNull;
  isnull.column = 0;
  EXPECT_EQ(run(isnull, r), true);
  isnull.op = Op::NotNull;
  EXPECT_EQ(run(isnull, r), false);
}

TEST(Having, RefusesWhatItCannotCompareExactly) {
  Row r = {std::string("3"), std::string("1"), std::string("ab"), std::string("2024-01-01")};
  std::vector<CondType> types = {CondType::Number, CondType::Number, CondType::Text,
                                 CondType::Other};
  std::optional<bool> out;
  std::string error;
  EXPECT_FALSE(eval(cmp(Op::Lt, 2, "b", true), r, types, out, error)); // text order: collation
  EXPECT_FALSE(eval(cmp(Op::Eq, 3, "2024-01-01", true), r, types, out, error));
  EXPECT_FALSE(eval(cmp(Op::Eq, 0, "x", true), r, types, out, error));
  EXPECT_FALSE(eval(cmp(Op::Eq, 9, "1"), r, types, out, error));
}

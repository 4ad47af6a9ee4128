#include "executor/split.h"

#include <gtest/gtest.h>

using sg::executor::cut_rows;
using sg::executor::ParamRef;

namespace {

// The spans of "$n" tokens in text (for tests only: no strings or comments to skip).
std::vector<ParamRef> refs(std::string_view text) {
  std::vector<ParamRef> out;
  for (size_t i = 0; i < text.size(); ++i)
    if (text[i] == '$') {
      size_t j = i + 1;
      while (j < text.size() && isdigit(static_cast<unsigned char>(text[j])))
        ++j;
      out.push_back({uint32_t(i), uint32_t(j),
                     uint32_t(std::stoul(std::string(text.substr(i + 1, j - i - 1))))});
      i = j - 1;
    }
  return out;
}

std::vector<std::pair<uint32_t, uint32_t>> rows_of(std::string_view text,
                                                   std::initializer_list<std::string_view> rows) {
  std::vector<std::pair<uint32_t, uint32_t>> out;
  size_t from = 0;
  for (auto r : rows) {
    size_t at = text.find(r, from);
    out.emplace_back(uint32_t(at), uint32_t(at + r.size()));
    from = at + r.size();
  }
  return out;
}

TEST(CutRows, KeepsTheChosenRowsAndRenumbersTheirParameters) {
  std::string t = "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $4), ($5, $6) RETURNING id";
  auto rows = rows_of(t, {"($1, $2)", "($3, $4)", "($5, $6)"});
  auto p = cut_rows(t, rows, {false, true, true}, refs(t));
  EXPECT_EQ(p.text, "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $4) RETURNING id");
  EXPECT_EQ(p.params, (std::vector<uint32_t>{3, 4, 5, 6}));
  p = cut_rows(t, rows, {true, false, true}, refs(t));
  EXPECT_EQ(p.text, "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $4) RETURNING id");
  EXPECT_EQ(p.params, (std::vector<uint32_t>{1, 2, 5, 6}));
  p = cut_rows(t, rows, {false, true, false}, refs(t));
  EXPECT_EQ(p.text, "INSERT INTO t (id, v) VALUES ($1, $2) RETURNING id");
  EXPECT_EQ(p.params, (std::vector<uint32_t>{3, 4}));
}

TEST(CutRows, ParametersOutsideTheRowsAndRepeatedOnesAreShared) {
  // The ON CONFLICT clause's $7 goes with every part; a parameter used twice keeps one number.
  std::string t = "INSERT INTO t VALUES ($2, $1), ($3, $1), ($4, 'x$9') ON CONFLICT (id) DO "
                  "UPDATE SET v = $7";
  auto rows = rows_of(t, {"($2, $1)", "($3, $1)", "($4, 'x$9')"});
  auto r = refs(t);
  r.erase(std::remove_if(r.begin(), r.end(), [](auto &x) { return x.number == 9; }), r.end());
  auto p = cut_rows(t, rows, {false, true, true}, r);
  EXPECT_EQ(p.text, "INSERT INTO t VALUES ($2, $1), ($3, 'x$9') ON CONFLICT (id) DO UPDATE SET "
                    "v = $4");
  EXPECT_EQ(p.params, (std::vector<uint32_t>{1, 3, 4, 7}));
}

TEST(CutRows, WithoutParametersTheTextIsCutOnly) {
  std::string t = "INSERT INTO t VALUES (1, 'a'),(2, 'b') ,  (3, 'c')";
  auto rows = rows_of(t, {"(1, 'a')", "(2, 'b')", "(3, 'c')"});
  auto p = cut_rows(t, rows, {true, false, true}, {});
  EXPECT_EQ(p.text, "INSERT INTO t VALUES (1, 'a'), (3, 'c')");
  EXPECT_TRUE(p.params.empty());
  p = cut_rows(t, rows, {false, false, true}, {});
  EXPECT_EQ(p.text, "INSERT INTO t VALUES (3, 'c')");
}

} // namespace

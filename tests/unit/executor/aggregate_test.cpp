// Expected values are PostgreSQL 15's answers to the same aggregates over all the rows at once.
#include "executor/aggregate.h"

#include <gtest/gtest.h>

using namespace sg::executor;
using sg::protocol::Row;

TEST(DecimalAdd, KeepsTheWidestScaleAsPostgreSQLSumDoes) {
  EXPECT_EQ(decimal_add("1.50", "2.2"), "3.70"); // SELECT sum(x) FROM (VALUES (1.50), (2.2))
  EXPECT_EQ(decimal_add("-1.50", "1.5"), "0.00");
  EXPECT_EQ(decimal_add("9223372036854775807", "1"), "9223372036854775808");
  EXPECT_EQ(decimal_add("-0.5", "0.25"), "-0.25");
  EXPECT_EQ(decimal_add("-5", "-7"), "-12");
  EXPECT_EQ(decimal_add("999.99", "0.01"), "1000.00");
  EXPECT_EQ(decimal_add("0", "-0.001"), "-0.001");
}

TEST(DecimalAdd, SpecialsAndGarbage) {
  EXPECT_EQ(decimal_add("NaN", "1"), "NaN");
  EXPECT_EQ(decimal_add("Infinity", "-Infinity"), "NaN");
  EXPECT_EQ(decimal_add("Infinity", "5"), "Infinity");
  EXPECT_EQ(decimal_add("-Infinity", "-Infinity"), "-Infinity");
  EXPECT_FALSE(decimal_add("1e5", "1"));
  EXPECT_FALSE(decimal_add("", "1"));
  EXPECT_FALSE(decimal_add("-", "1"));
}

TEST(Combine, CountSumMinMaxOverShardsWithAnEmptyOne) {
  // count(*), sum(balance numeric), min(id int8), max(name text): shard 2 had no rows.
  std::vector<AggSpec> specs{{Agg::Count, Kind::Integer},
                             {Agg::Sum, Kind::Numeric},
                             {Agg::Min, Kind::Integer},
                             {Agg::Max, Kind::Bytes}};
  std::vector<Row> partials{
      {std::string("3"), std::string("10.5"), std::string("7"), std::string("b")},
      {std::string("2"), std::string("-0.25"), std::string("-4"), std::string("c")},
      {std::string("0"), std::nullopt, std::nullopt, std::nullopt}};
  Row out;
  std::string err;
  ASSERT_TRUE(combine(partials, specs, out, err)) << err;
  EXPECT_EQ(out,
            (Row{std::string("5"), std::string("10.25"), std::string("-4"), std::string("c")}));
}

TEST(Combine, NoRowsAnywhereGivesCountZeroAndNulls) {
  std::vector<AggSpec> specs{
      {Agg::Count, Kind::Integer}, {Agg::Sum, Kind::Integer}, {Agg::Max, Kind::Date}};
  std::vector<Row> partials(3, Row{std::string("0"), std::nullopt, std::nullopt});
  Row out;
  std::string err;
  ASSERT_TRUE(combine(partials, specs, out, err)) << err;
  EXPECT_EQ(out, (Row{std::string("0"), std::nullopt, std::nullopt}));
}

TEST(Groups, CombinesEachGroupAcrossShardsWithEqualValuesByKind) {
  // SELECT g, count(*), sum(n) ... GROUP BY g, from two shards: g numeric, 1.0 = 1.00.
  Groups g({{Agg::Group, Kind::Numeric}, {Agg::Count, Kind::Integer}, {Agg::Sum, Kind::Numeric}});
  std::string err;
  ASSERT_TRUE(g.add({std::string("1.0"), std::string("2"), std::string("5.5")}, err)) << err;
  ASSERT_TRUE(g.add({std::nullopt, std::string("1"), std::string("1")}, err)) << err;
  ASSERT_TRUE(g.add({std::string("-3"), std::string("4"), std::nullopt}, err)) << err;
  ASSERT_TRUE(g.add({std::string("1.00"), std::string("3"), std::string("0.25")}, err)) << err;
  ASSERT_TRUE(g.add({std::nullopt, std::string("2"), std::string("-1")}, err)) << err;
  EXPECT_EQ(g.size(), 3u);
  auto rows = g.take();
  ASSERT_EQ(rows.size(), 3u);
  // Ordered by the group column, NULL first.
  EXPECT_EQ(rows[0], (Row{std::nullopt, std::string("3"), std::string("0")}));
  EXPECT_EQ(rows[1], (Row{std::string("-3"), std::string("4"), std::nullopt}));
  EXPECT_EQ(rows[2], (Row{std::string("1.0"), std::string("5"), std::string("5.75")}));
  EXPECT_FALSE(g.add({std::string("1")}, err)) << "a row of the wrong width";
}

TEST(Combine, RefusesWhatItCannotDoExactly) {
  EXPECT_FALSE(combinable({Agg::Sum, Kind::Float})) << "float rounding depends on the order";
  EXPECT_TRUE(combinable({Agg::Max, Kind::Float}));
  Row out;
  std::string err;
  EXPECT_FALSE(combine({{std::string("1.5")}}, {{Agg::Sum, Kind::Float}}, out, err));
  EXPECT_NE(err.find("cannot combine"), std::string::npos);
  EXPECT_FALSE(
      combine({{std::string("abc")}, {std::string("1")}}, {{Agg::Sum, Kind::Integer}}, out, err));
  EXPECT_FALSE(combine({{std::string("1")}},
                       {{Agg::Count, Kind::Integer}, {Agg::Sum, Kind::Integer}}, out, err))
      << "a shard answered too few columns";
}

TEST(Combine, BinaryCountsAndSumsStayBinaryBigints) {
  auto be8 = [](int64_t v) {
    std::string s(8, '\0');
    uint64_t u = uint64_t(v);
    for (size_t i = 8; i-- > 0; u >>= 8)
      s[i] = char(u & 0xff);
    return s;
  };
  std::vector<AggSpec> specs = {{Agg::Count, Kind::BinaryInteger}, {Agg::Sum, Kind::BinaryInteger}};
  std::vector<Row> partials = {{be8(3), be8(-10)}, {be8(0), std::nullopt}, {be8(4), be8(25)}};
  Row out;
  std::string err;
  ASSERT_TRUE(combine(partials, specs, out, err)) << err;
  EXPECT_EQ(out[0], be8(7));
  EXPECT_EQ(out[1], be8(15));
  // No rows anywhere: count 0 (binary), sum NULL.
  ASSERT_TRUE(combine({{be8(0), std::nullopt}}, specs, out, err)) << err;
  EXPECT_EQ(out[0], be8(0));
  EXPECT_FALSE(out[1]);
  // Overflow is refused, never wrapped.
  EXPECT_FALSE(combine({{be8(1), be8(INT64_MAX)}, {be8(1), be8(1)}}, specs, out, err));
}

// Expected values are PostgreSQL 15's answers to SELECT avg(x) FROM (VALUES ...) v(x); the
// arguments are that query's sum(x) and count(x).
TEST(DecimalAvg, MatchesPostgresNumericDiv) {
  EXPECT_EQ(decimal_avg("3", "2"), "1.5000000000000000");     // (1), (2)
  EXPECT_EQ(decimal_avg("10", "3"), "3.3333333333333333");    // (3), (3), (4)
  EXPECT_EQ(decimal_avg("-3", "2"), "-1.5000000000000000");   // (-1), (-2)
  EXPECT_EQ(decimal_avg("0", "2"), "0.00000000000000000000"); // (0), (0)
  EXPECT_EQ(decimal_avg("123456789019", "2"), "61728394509.50000000");
  EXPECT_EQ(decimal_avg("7.033", "3"), "2.3443333333333333"); // 1.50, 2.2, 3.333
  EXPECT_EQ(decimal_avg("0.00033", "3"), "0.000110000000000000000000");
  EXPECT_EQ(decimal_avg("100000", "2"), "50000.000000000000");          // (99999), (1)
  EXPECT_EQ(decimal_avg("-3", "3"), "-1.00000000000000000000");         // (-5), (2), (0)
  EXPECT_EQ(decimal_avg("76205685", "12345"), "6173.0000000000000000"); // generate_series
  EXPECT_EQ(decimal_avg("18446744073709551615", "3"), "6148914691236517205");
  EXPECT_EQ(decimal_avg("NaN", "2"), "NaN");
  EXPECT_EQ(decimal_avg("1.66666666666666666667", "2"), "0.83333333333333333334");
  EXPECT_EQ(decimal_avg("0.000000000000000000001", "2"),
            "0.0000000000000000000005000000000000000000");
  EXPECT_EQ(decimal_avg("10017", "4"), "2504.2500000000000000"); // 5, 10, 10000, 2
  EXPECT_EQ(decimal_avg("-Infinity", "2"), "-Infinity");
  EXPECT_EQ(decimal_avg("1", "0"), std::nullopt);
  EXPECT_EQ(decimal_avg("x", "1"), std::nullopt);
}

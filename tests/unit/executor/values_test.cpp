// Orders expected here are PostgreSQL 15's own answers to ORDER BY over the same values.
#include "executor/values.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

using namespace sg::executor;

namespace {

std::vector<std::string> sorted(Kind k, std::vector<std::string> v) {
  std::stable_sort(v.begin(), v.end(), [k](const std::string &a, const std::string &b) {
    return compare(k, a, b) < 0;
  });
  return v;
}

} // namespace

TEST(Values, KindsFollowTypeAndFormat) {
  EXPECT_EQ(kind_of(20, 0), Kind::Integer);
  EXPECT_EQ(kind_of(23, 1), Kind::BinaryInteger);
  EXPECT_EQ(kind_of(1700, 0), Kind::Numeric);
  EXPECT_EQ(kind_of(1700, 1), Kind::Unsupported);
  EXPECT_EQ(kind_of(25, 0), Kind::Bytes);
  EXPECT_EQ(kind_of(1184, 0), Kind::TimestampTz);
  EXPECT_EQ(kind_of(114, 0), Kind::Unsupported); // json: no order
}

TEST(Values, IntegersCompareAsNumbersNotText) {
  EXPECT_EQ(sorted(Kind::Integer, {"10", "-3", "9", "0", "-20", "9223372036854775807"}),
            (std::vector<std::string>{"-20", "-3", "0", "9", "10", "9223372036854775807"}));
}

TEST(Values, BinaryIntegersAreBigEndianAndSigned) {
  std::string minus_one("\xff\xff\xff\xff", 4), two("\x00\x00\x00\x02", 4);
  EXPECT_LT(compare(Kind::BinaryInteger, minus_one, two), 0);
  std::string big("\x00\x00\x01\x00\x00\x00\x00\x00", 8),
      small("\x00\x00\x00\x00\x00\x00\x00\x05", 8);
  EXPECT_GT(compare(Kind::BinaryInteger, big, small), 0);
}

TEST(Values, FloatsPutNaNLastAsPostgreSQLDoes) {
  EXPECT_EQ(sorted(Kind::Float, {"NaN", "Infinity", "-Infinity", "1.5", "-2"}),
            (std::vector<std::string>{"-Infinity", "-2", "1.5", "Infinity", "NaN"}));
  EXPECT_EQ(compare(Kind::Float, "NaN", "NaN"), 0);
  EXPECT_LT(compare(Kind::Float, "1e-05", "0.001"), 0);
}

TEST(Values, NumericsAreExactWithScalesAndSpecials) {
  EXPECT_EQ(
      sorted(Kind::Numeric, {"NaN", "Infinity", "-Infinity", "1.50", "-2", "0.000", "-0.5", "10"}),
      (std::vector<std::string>{"-Infinity", "-2", "-0.5", "0.000", "1.50", "10", "Infinity",
                                "NaN"}));
  EXPECT_EQ(compare(Kind::Numeric, "1.50", "1.5"), 0);
  EXPECT_EQ(compare(Kind::Numeric, "0.000", "0"), 0);
  EXPECT_LT(compare(Kind::Numeric, "-10.1", "-10.09"), 0);
  EXPECT_GT(compare(Kind::Numeric, "123456789012345678901234567890.1",
                    "123456789012345678901234567890.09"),
            0);
}

TEST(Values, DatesHandleBCFiveDigitYearsAndInfinity) {
  EXPECT_EQ(
      sorted(Kind::Date, {"0044-03-15 BC", "2024-01-01", "infinity", "-infinity", "12345-01-01"}),
      (std::vector<std::string>{"-infinity", "0044-03-15 BC", "2024-01-01", "12345-01-01",
                                "infinity"}));
}

TEST(Values, TimestampsCompareFractionsByValue) {
  EXPECT_LT(compare(Kind::Timestamp, "2024-01-01 12:00:00.25", "2024-01-01 12:00:00.5"), 0);
  EXPECT_LT(compare(Kind::Timestamp, "2024-01-01 12:00:00", "2024-01-01 12:00:00.000001"), 0);
  EXPECT_GT(compare(Kind::Timestamp, "2024-01-02 00:00:00", "2024-01-01 23:59:59.999999"), 0);
}

TEST(Values, TimestampTzComparesInstantsNotText) {
  // 09:30 UTC against 10:15 UTC, across a daylight-saving change of offset.
  EXPECT_LT(compare(Kind::TimestampTz, "2024-03-10 01:30:00-08", "2024-03-10 03:15:00-07"), 0);
  EXPECT_EQ(compare(Kind::TimestampTz, "2024-01-01 05:30:00+05:30", "2024-01-01 00:00:00+00"), 0);
  EXPECT_GT(compare(Kind::TimestampTz, "2024-01-01 00:00:00-00:00:01", "2024-01-01 00:00:00+00"),
            0);
}

TEST(Values, TextIsByteOrderAndUnparsableValuesSortLast) {
  EXPECT_LT(compare(Kind::Bytes, "B", "a"), 0); // collation "C"
  EXPECT_LT(compare(Kind::Bytes, "ab", "abc"), 0);
  EXPECT_LT(compare(Kind::Integer, "5", "five"), 0);
  EXPECT_GT(compare(Kind::Date, "not a date", "2024-01-01"), 0);
  EXPECT_EQ(compare(Kind::Integer, "x", "x"), 0);
}

namespace {
std::string be(uint64_t v, size_t n) {
  std::string s(n, '\0');
  for (size_t i = n; i-- > 0; v >>= 8)
    s[i] = char(v & 0xff);
  return s;
}
std::string f8(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return be(u, 8);
}
std::string f4(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return be(u, 4);
}
} // namespace

TEST(Values, BinaryFormatsAsDriversRequestThem) {
  // asyncpg asks for every result column in binary.
  EXPECT_EQ(kind_of(701, 1), Kind::BinaryFloat);
  EXPECT_EQ(kind_of(1184, 1), Kind::BinaryInteger); // timestamptz: int64 microseconds, UTC
  EXPECT_EQ(kind_of(1082, 1), Kind::BinaryInteger); // date: int32 days
  EXPECT_EQ(kind_of(2950, 1), Kind::Bytes);         // uuid: 16 bytes, memcmp order
  EXPECT_EQ(kind_of(1700, 1), Kind::Unsupported);   // numeric in binary: not understood
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<std::string> in = {f8(nan), f8(1.5), f8(-inf), f8(-2.0), f8(inf), f8(0.0)};
  std::sort(in.begin(), in.end(),
            [](auto &a, auto &b) { return compare(Kind::BinaryFloat, a, b) < 0; });
  EXPECT_EQ(in, (std::vector<std::string>{f8(-inf), f8(-2.0), f8(0.0), f8(1.5), f8(inf), f8(nan)}));
  EXPECT_EQ(compare(Kind::BinaryFloat, f8(-0.0), f8(0.0)), 0);
  EXPECT_LT(compare(Kind::BinaryFloat, f4(-1.0f), f4(0.25f)), 0);
  // Dates before 2000 are negative days; the infinities are the int32 extremes.
  EXPECT_LT(compare(Kind::BinaryInteger, be(uint32_t(-5), 4), be(3, 4)), 0);
  EXPECT_GT(compare(Kind::BinaryInteger, be(0x7fffffff, 4), be(100000, 4)), 0);
  EXPECT_EQ(binary_int(be(uint64_t(-7), 8)).value_or(0), -7);
}

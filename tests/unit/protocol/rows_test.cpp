#include "protocol/messages.h"

#include <gtest/gtest.h>

using namespace sg::protocol;

TEST(Rows, DataRowRoundTripsWithNullsAndBinary) {
  Row r{std::string("42"), std::nullopt, std::string("a\0b", 3), std::string()};
  Bytes out;
  data_row(out, r);
  ASSERT_EQ(out[0], 'D');
  Row back;
  ASSERT_TRUE(parse_data_row(std::string_view(out).substr(5), back));
  EXPECT_EQ(back, r);
}

TEST(Rows, RowDescriptionRoundTrips) {
  std::vector<RowColumn> cols{{"id", 16384, 1, 20, 8, -1, 0}, {"count", 0, 0, 20, 8, -1, 1}};
  Bytes out;
  row_description(out, cols);
  std::vector<RowColumn> back;
  ASSERT_TRUE(parse_row_description(std::string_view(out).substr(5), back));
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].name, "id");
  EXPECT_EQ(back[0].table_oid, 16384);
  EXPECT_EQ(back[1].type_oid, 20u);
  EXPECT_EQ(back[1].format, 1);
}

TEST(Rows, TruncatedOrLyingBodiesAreRefused) {
  Bytes out;
  data_row(out, Row{std::string("hello")});
  std::string_view body = std::string_view(out).substr(5);
  Row r;
  EXPECT_FALSE(parse_data_row(body.substr(0, body.size() - 1), r));
  std::string bad(body);
  bad[5] = char(0x7f); // field length far past the end
  EXPECT_FALSE(parse_data_row(bad, r));
  EXPECT_FALSE(parse_data_row(std::string(body) + "x", r)) << "trailing bytes";
  std::vector<RowColumn> cols;
  EXPECT_FALSE(parse_row_description(std::string("\x00\x01id", 4), cols));
  EXPECT_FALSE(parse_data_row(std::string("\xff\xff", 2), r)) << "negative count";
}

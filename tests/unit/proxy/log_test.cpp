// The JSON-lines log formatter: one object per line, every string escaped.
#include "proxy/errors.h"

#include <gtest/gtest.h>

using namespace sg::proxy::log;

TEST(Log, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(escape_json("plain"), "plain");
  EXPECT_EQ(escape_json("a\"b\\c"), "a\\\"b\\\\c");
  EXPECT_EQ(escape_json("line\nbreak\ttab\r"), "line\\nbreak\\ttab\\r");
  EXPECT_EQ(escape_json(std::string("nul\0bell\x07", 9)), "nul\\u0000bell\\u0007");
  EXPECT_EQ(escape_json("ünïcode"), "ünïcode") << "UTF-8 passes through";
}

TEST(Log, JsonLineIsOneObjectWithFieldsInOrder) {
  std::string line = format_line("2026-01-01T00:00:00.000Z", Level::warn, "slow_query",
                                 {{"session", "7"}, {"statement", "SELECT \"x\"\n"}}, true);
  EXPECT_EQ(line,
            "{\"ts\":\"2026-01-01T00:00:00.000Z\",\"level\":\"warn\",\"event\":\"slow_query\","
            "\"session\":\"7\",\"statement\":\"SELECT \\\"x\\\"\\n\"}\n");
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "exactly one line";
}

TEST(Log, TextFormat) {
  EXPECT_EQ(format_line("T", Level::info, "started", {{"listen", "127.0.0.1:6432"}}, false),
            "T info started listen=127.0.0.1:6432\n");
}

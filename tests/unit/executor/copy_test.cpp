#include "executor/copy.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace sg::executor;

namespace {

struct Got {
  std::vector<std::string> rows;
  std::vector<std::string> keys; // "<NULL>" for none; "<H>" header, "<END>" \.
};

// Feeds `data` in pieces of `chunk` bytes (every split point is tried by the callers).
Got split(CopyFormat f, const std::string &data, size_t chunk, bool *ok = nullptr) {
  CopySplitter s(f);
  Got g;
  auto on = [&](std::string_view row, const std::optional<std::string> &key,
                CopySplitter::RowKind kind) {
    g.rows.emplace_back(row);
    g.keys.push_back(kind == CopySplitter::RowKind::header       ? "<H>"
                     : kind == CopySplitter::RowKind::end_marker ? "<END>"
                     : key                                       ? *key
                                                                 : "<NULL>");
    return true;
  };
  std::string err;
  bool good = true;
  for (size_t i = 0; i < data.size() && good; i += chunk)
    good = s.feed(std::string_view(data).substr(i, chunk), on);
  if (good)
    good = s.finish(on, err);
  if (ok)
    *ok = good;
  return g;
}

} // namespace

TEST(CopySplitter, TextRowsAndEscapedKeysWhateverTheChunks) {
  CopyFormat f;
  f.key_field = 1;
  std::string data = "a\t7\tx\n"
                     "b\\tc\t\\061\\x32\tq\\\nr\n" // key "12" (octal, hex); \<newline> is data
                     "c\t\\N\tz\n"                 // NULL key
                     "d\tab\\\\c\n"                // key ab\c
                     "last\t99";                   // no newline at the end
  for (size_t chunk = 1; chunk <= data.size(); ++chunk) {
    Got g = split(f, data, chunk);
    ASSERT_EQ(g.keys, (std::vector<std::string>{"7", "12", "<NULL>", "ab\\c", "99"})) << chunk;
    EXPECT_EQ(g.rows[0], "a\t7\tx\n");
    EXPECT_EQ(g.rows[4], "last\t99\n");
  }
}

TEST(CopySplitter, CsvQuotesHoldNewlinesDelimitersAndQuotes) {
  CopyFormat f;
  f.csv = true;
  f.delimiter = ',';
  f.null_text = "";
  f.header = true;
  f.key_field = 0;
  std::string data = "id,note\n"
                     "\"1\",\"multi\nline, with \"\"quotes\"\"\"\n"
                     "2,plain\n"
                     ",empty key is NULL\n"
                     "\"\",quoted empty is a value\n"
                     "\\.\n"
                     "9,after the end marker\n";
  for (size_t chunk = 1; chunk <= data.size(); ++chunk) {
    Got g = split(f, data, chunk);
    ASSERT_EQ(g.keys, (std::vector<std::string>{"<H>", "1", "2", "<NULL>", "", "<END>"})) << chunk;
    EXPECT_EQ(g.rows[1], "\"1\",\"multi\nline, with \"\"quotes\"\"\"\n");
  }
}

TEST(CopySplitter, CsvWithAnEscapeOtherThanTheQuote) {
  CopyFormat f;
  f.csv = true;
  f.delimiter = ',';
  f.null_text = "";
  f.escape = '\\';
  f.key_field = 1;
  std::string data = "x,\"a\\\"b\",y\n\"q\\\\\",5\n";
  for (size_t chunk = 1; chunk <= data.size(); ++chunk) {
    Got g = split(f, data, chunk);
    ASSERT_EQ(g.keys, (std::vector<std::string>{"a\"b", "5"})) << chunk;
  }
}

TEST(CopySplitter, AnUnterminatedQuoteAtTheEndIsAnError) {
  CopyFormat f;
  f.csv = true;
  f.delimiter = ',';
  bool ok = true;
  split(f, "1,\"open\n", 3, &ok);
  EXPECT_FALSE(ok);
}

// COPY ... FROM STDIN into a sharded table: cutting the client's data stream into rows and
// finding each row's shard key, so that each row goes to its owner's COPY. Pure: no I/O.
//
// Text format: a row ends at a newline (data newlines are escaped as \n); fields are split on
// the delimiter, backslash escapes (\t, \n, \\, \ooo, \xhh, \<char>) are undone in the key, and
// the NULL string (\N) is a NULL key. CSV: rows end at a newline outside quotes; a field that
// starts with the quote character is quoted (escape + quote is a quote inside), an unquoted
// field equal to the NULL string ("" by default) is NULL. The "\." end marker ends the data.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace sg::executor {

// One field of COPY's text format with its backslash escapes undone (\b \f \n \r \t \v,
// \ooo octal, \xhh hex, \<char> as itself), as PostgreSQL's COPY FROM reads it.
std::string copy_text_unescape(std::string_view field);

struct CopyFormat {
  bool csv = false;
  char delimiter = '\t';
  std::string null_text = "\\N";
  char quote = '"';
  char escape = '"';
  bool header = false;  // CSV HEADER: the first row is column names
  size_t key_field = 0; // which field holds the shard key (0-based)
};

class CopySplitter {
public:
  enum class RowKind { data, header, end_marker };
  // A complete row (its bytes with the newline, as they go to a shard) and its key (nullopt:
  // NULL, or the row has too few fields). False stops the split.
  using OnRow = std::function<bool(std::string_view row, const std::optional<std::string> &key,
                                   RowKind kind)>;
  explicit CopySplitter(CopyFormat f) : f_(std::move(f)), header_due_(f_.header) {}
  // Feeds the next bytes of the stream. False when on_row said stop.
  bool feed(std::string_view data, const OnRow &on_row);
  // The end of the stream: a last row without a newline, if any. False when on_row said stop,
  // or with `error` when the data ends inside a quoted CSV field.
  bool finish(const OnRow &on_row, std::string &error);

private:
  bool row(std::string_view r, const OnRow &on_row);
  std::optional<std::string> key_text(std::string_view r) const;
  std::optional<std::string> key_csv(std::string_view r) const;

  CopyFormat f_;
  std::string buf_;    // bytes of rows not complete yet
  size_t scanned_ = 0; // how far buf_ has been scanned for a row end
  bool in_quote_ = false;
  bool header_due_;
  bool ended_ = false; // after \. the rest is ignored, as PostgreSQL does
};

} // namespace sg::executor

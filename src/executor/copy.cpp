#include "executor/copy.h"

namespace sg::executor {

namespace {

int hex(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

std::string_view strip_newline(std::string_view r) {
  if (!r.empty() && r.back() == '\n')
    r.remove_suffix(1);
  if (!r.empty() && r.back() == '\r')
    r.remove_suffix(1);
  return r;
}

} // namespace

// COPY text's backslash escapes undone, as PostgreSQL's COPY FROM reads them.
std::string copy_text_unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c != '\\' || i + 1 == s.size()) {
      out.push_back(c);
      continue;
    }
    char n = s[++i];
    switch (n) {
    case 'b':
      out.push_back('\b');
      break;
    case 'f':
      out.push_back('\f');
      break;
    case 'n':
      out.push_back('\n');
      break;
    case 'r':
      out.push_back('\r');
      break;
    case 't':
      out.push_back('\t');
      break;
    case 'v':
      out.push_back('\v');
      break;
    case 'x': {
      int v = 0, k = 0;
      while (k < 2 && i + 1 < s.size() && hex(s[i + 1]) >= 0) {
        v = v * 16 + hex(s[++i]);
        ++k;
      }
      if (k == 0)
        out.push_back('x');
      else
        out.push_back(char(v));
      break;
    }
    default:
      if (n >= '0' && n <= '7') {
        int v = n - '0', k = 1;
        while (k < 3 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7') {
          v = v * 8 + (s[++i] - '0');
          ++k;
        }
        out.push_back(char(v));
      } else {
        out.push_back(n);
      }
    }
  }
  return out;
}

std::optional<std::string> CopySplitter::key_text(std::string_view r) const {
  r = strip_newline(r);
  size_t field = 0, start = 0;
  for (size_t i = 0; i <= r.size(); ++i) {
    if (i < r.size() && r[i] == '\\') {
      ++i; // the escaped byte belongs to the field
      continue;
    }
    if (i == r.size() || r[i] == f_.delimiter) {
      if (field == f_.key_field) {
        std::string_view raw = r.substr(start, i - start);
        if (raw == f_.null_text)
          return std::nullopt;
        return copy_text_unescape(raw);
      }
      ++field;
      start = i + 1;
    }
  }
  return std::nullopt; // too few fields: the shard reports it
}

std::optional<std::string> CopySplitter::key_csv(std::string_view r) const {
  r = strip_newline(r);
  size_t field = 0, i = 0;
  for (;;) {
    std::string value;
    bool quoted = false;
    size_t start = i;
    if (i < r.size() && r[i] == f_.quote) {
      quoted = true;
      ++i;
      for (; i < r.size(); ++i) {
        bool next_special = i + 1 < r.size() && (r[i + 1] == f_.quote || r[i + 1] == f_.escape);
        if (r[i] == f_.escape && next_special) { // "" (or \" with ESCAPE '\'): one character
          value.push_back(r[++i]);
          continue;
        }
        if (r[i] == f_.quote) {
          ++i;
          break;
        }
        value.push_back(r[i]);
      }
      // Anything after the closing quote up to the delimiter is part of the value.
      while (i < r.size() && r[i] != f_.delimiter)
        value.push_back(r[i++]);
    } else {
      while (i < r.size() && r[i] != f_.delimiter)
        ++i;
      value.assign(r.substr(start, i - start));
    }
    if (field == f_.key_field) {
      if (!quoted && value == f_.null_text)
        return std::nullopt;
      return value;
    }
    if (i >= r.size())
      return std::nullopt; // too few fields
    ++i;                   // the delimiter
    ++field;
  }
}

bool CopySplitter::row(std::string_view r, const OnRow &on_row) {
  if (header_due_) {
    header_due_ = false;
    return on_row(r, std::nullopt, RowKind::header);
  }
  if (strip_newline(r) == "\\.") { // the end-of-data marker
    ended_ = true;
    return on_row(r, std::nullopt, RowKind::end_marker);
  }
  return on_row(r, f_.csv ? key_csv(r) : key_text(r), RowKind::data);
}

bool CopySplitter::feed(std::string_view data, const OnRow &on_row) {
  if (ended_)
    return true;
  buf_.append(data);
  size_t begin = 0;
  for (size_t i = scanned_; i < buf_.size(); ++i) {
    char c = buf_[i];
    if (!f_.csv && c == '\\') { // the escaped byte is data, a newline too (as PostgreSQL reads)
      if (i + 1 < buf_.size()) {
        ++i;
        continue;
      }
      scanned_ = i; // wait for the byte after it
      buf_.erase(0, begin);
      scanned_ -= begin;
      return true;
    }
    if (f_.csv) {
      if (in_quote_) {
        if (c == f_.escape && f_.escape != f_.quote && i + 1 < buf_.size() &&
            (buf_[i + 1] == f_.quote || buf_[i + 1] == f_.escape)) {
          ++i;
          continue;
        }
        if (c == f_.escape && f_.escape != f_.quote && i + 1 == buf_.size()) {
          // An escape at the end of what came so far: wait for the next byte.
          scanned_ = i;
          buf_.erase(0, begin);
          scanned_ -= begin;
          return true;
        }
        if (c == f_.quote)
          in_quote_ = false;
        continue;
      }
      if (c == f_.quote) {
        in_quote_ = true;
        continue;
      }
    }
    if (c != '\n')
      continue;
    if (!row(std::string_view(buf_).substr(begin, i + 1 - begin), on_row))
      return false;
    begin = i + 1;
    if (ended_) {
      buf_.clear();
      scanned_ = 0;
      return true;
    }
  }
  buf_.erase(0, begin);
  scanned_ = buf_.size();
  return true;
}

bool CopySplitter::finish(const OnRow &on_row, std::string &error) {
  if (ended_ || buf_.empty())
    return true;
  if (f_.csv && in_quote_) {
    error = "unterminated CSV quoted field";
    return false;
  }
  std::string last = std::move(buf_);
  buf_.clear();
  last.push_back('\n');
  return row(last, on_row);
}

} // namespace sg::executor

#include "router/values.h"

#include <cctype>

namespace sg::router {

namespace {

bool ident_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' ||
         static_cast<unsigned char>(c) >= 0x80;
}

// Reads SQL text token by token, skipping what may hold parentheses or words that are not
// syntax (quotes, comments).
struct Cursor {
  std::string_view s;
  size_t i = 0;

  bool done() const { return i >= s.size(); }

  // Skips blanks and comments; false on an unterminated comment.
  bool skip_space() {
    while (i < s.size()) {
      char c = s[i];
      if (std::isspace(static_cast<unsigned char>(c))) {
        ++i;
      } else if (c == '-' && i + 1 < s.size() && s[i + 1] == '-') {
        while (i < s.size() && s[i] != '\n')
          ++i;
      } else if (c == '/' && i + 1 < s.size() && s[i + 1] == '*') {
        int depth = 0;
        while (i < s.size()) {
          if (s[i] == '/' && i + 1 < s.size() && s[i + 1] == '*') {
            ++depth;
            i += 2;
          } else if (s[i] == '*' && i + 1 < s.size() && s[i + 1] == '/') {
            i += 2;
            if (--depth == 0)
              break;
          } else {
            ++i;
          }
        }
        if (depth != 0)
          return false;
      } else {
        break;
      }
    }
    return true;
  }

  // At a quote, a dollar quote, a word or another character: moves past it. False when the
  // text ends inside a quote.
  bool skip_token() {
    char c = s[i];
    bool escapes = false;
    if ((c == 'e' || c == 'E') && i + 1 < s.size() && s[i + 1] == '\'' &&
        (i == 0 || !ident_char(s[i - 1]))) {
      escapes = true;
      c = s[++i];
    }
    if (c == '\'' || c == '"') {
      char q = c;
      for (++i; i < s.size(); ++i) {
        if (escapes && s[i] == '\\') {
          ++i;
          continue;
        }
        if (s[i] == q) {
          if (i + 1 < s.size() && s[i + 1] == q) {
            ++i;
            continue;
          }
          ++i;
          return true;
        }
      }
      return false;
    }
    if (c == '$' && (i == 0 || !ident_char(s[i - 1]))) {
      size_t j = i + 1;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_'))
        ++j;
      bool digit_first = j > i + 1 && std::isdigit(static_cast<unsigned char>(s[i + 1]));
      if (j < s.size() && s[j] == '$' && !digit_first) {
        std::string_view tag = s.substr(i, j + 1 - i);
        size_t end = s.find(tag, j + 1);
        if (end == std::string_view::npos)
          return false;
        i = end + tag.size();
        return true;
      }
      i = j; // $1: a parameter
      return true;
    }
    if (ident_char(c)) {
      while (i < s.size() && ident_char(s[i]))
        ++i;
      return true;
    }
    ++i;
    return true;
  }
};

bool is_values(std::string_view w) {
  static constexpr std::string_view kw = "values";
  if (w.size() != kw.size())
    return false;
  for (size_t k = 0; k < w.size(); ++k)
    if (std::tolower(static_cast<unsigned char>(w[k])) != kw[k])
      return false;
  return true;
}

} // namespace

std::vector<std::pair<uint32_t, uint32_t>> values_rows(std::string_view stmt, size_t rows) {
  std::vector<std::pair<uint32_t, uint32_t>> out;
  Cursor c{stmt};
  int depth = 0;
  // The top-level VALUES keyword.
  for (;;) {
    if (!c.skip_space() || c.done())
      return {};
    char ch = stmt[c.i];
    if (ch == '(') {
      ++depth;
      ++c.i;
      continue;
    }
    if (ch == ')') {
      --depth;
      ++c.i;
      continue;
    }
    size_t start = c.i;
    if (!c.skip_token())
      return {};
    if (depth == 0 && is_values(stmt.substr(start, c.i - start)))
      break;
  }
  // Its rows: "(" ... ")" separated by commas.
  for (;;) {
    if (!c.skip_space() || c.done() || stmt[c.i] != '(')
      return {};
    size_t begin = c.i;
    depth = 0;
    do {
      char ch = stmt[c.i];
      if (ch == '(') {
        ++depth;
        ++c.i;
      } else if (ch == ')') {
        --depth;
        ++c.i;
      } else if (!c.skip_token()) {
        return {};
      }
      if (depth > 0 && !c.skip_space())
        return {};
    } while (depth > 0 && !c.done());
    if (depth != 0)
      return {};
    out.emplace_back(uint32_t(begin), uint32_t(c.i));
    if (!c.skip_space())
      return {};
    if (c.done() || stmt[c.i] != ',')
      break;
    ++c.i;
  }
  if (out.size() != rows)
    return {};
  return out;
}

} // namespace sg::router

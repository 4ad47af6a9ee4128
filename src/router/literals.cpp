// Scanner-based constant extraction.
#include "router/literals.h"

#include <pg_query.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <pg_query/pg_query.pb-c.h>

namespace sg::router {

namespace {

// ASCII classes (no locale lookups): identifiers may also hold any byte >= 0x80, as in scan.l.
enum : uint8_t { kDigit = 1, kIdentStart = 2, kIdentCont = 4, kPlain = 8 };

// kPlain: a byte the fast scanner steps over without looking further (whitespace, most
// punctuation); every other byte starts a token it has to read.
constexpr std::array<uint8_t, 256> make_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    bool digit = c >= '0' && c <= '9';
    bool alpha = (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
    bool start = alpha || c == '_' || c >= 0x80;
    t[size_t(c)] = uint8_t((digit ? kDigit : 0) | (start ? kIdentStart : 0) |
                           (start || digit || c == '$' ? kIdentCont : 0));
  }
  for (unsigned char c : std::string_view(" \t\n\r\f,;()=<>+*%^|!~#@:[]{}?&"))
    t[c] |= kPlain;
  return t;
}
constexpr std::array<uint8_t, 256> kClass = make_classes();

bool is_digit(unsigned char c) {
  return kClass[c] & kDigit;
}
bool ident_start(unsigned char c) {
  return kClass[c] & kIdentStart;
}
bool ident_cont(unsigned char c) {
  return kClass[c] & kIdentCont;
}

// Appends one constant: the normalized text gets a kind-tagged placeholder ("?n" numbers, "?s"
// strings), so statements whose literals differ in kind never share a plan.
void add_const(ScanResult &r, std::string_view sql, size_t &last, size_t start, size_t end,
               bool is_string) {
  r.normalized.append(sql.substr(last, start - last));
  r.normalized.append(is_string ? "?s" : "?n");
  last = end;
  r.consts.push_back({uint32_t(start), uint32_t(end), is_string, sql[start]});
}

// End of a '...' body starting after the opening quote; '' is a quote. With `escapes`
// (E'...'), a backslash escapes the next byte. npos if unterminated.
size_t quoted_end(std::string_view s, size_t i, bool escapes) {
  while (i < s.size()) {
    char c = s[i];
    if (escapes && c == '\\') {
      i += 2;
      continue;
    }
    if (c == '\'') {
      if (i + 1 < s.size() && s[i + 1] == '\'') {
        i += 2;
        continue;
      }
      return i + 1;
    }
    ++i;
  }
  return std::string_view::npos;
}

// PostgreSQL joins string literals separated by whitespace containing a newline into one
// constant; the fast path leaves that (rare) case to libpg_query's scanner.
bool continues_string(std::string_view s, size_t i) {
  bool newline = false;
  while (i < s.size() &&
         (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == '\f')) {
    newline |= (s[i] == '\n' || s[i] == '\r');
    ++i;
  }
  return newline && i < s.size() && s[i] == '\'';
}

// The constant that starts at s[i] as the fast path reads it (i being where a token starts):
// its end and whether it is a string. npos when s[i] starts no constant, or one the fast path
// leaves to libpg_query. One function for the scan and for same_shape(), so both read a
// constant alike.
struct Lexed {
  size_t end = std::string_view::npos;
  bool is_string = false;
};
Lexed lex_constant(std::string_view s, size_t i) {
  const size_t n = s.size();
  unsigned char c = uint8_t(s[i]);
  if (c == '\'') { // standard string
    size_t e = quoted_end(s, i + 1, false);
    if (e == std::string_view::npos || continues_string(s, e))
      return {};
    return {e, true};
  }
  if (ident_start(c) && i + 1 < n && s[i + 1] == '\'') {
    char p = char(c | 0x20);
    if (p != 'e' && p != 'b' && p != 'x')
      return {};
    // E'..', B'..', X'..': one constant from the prefix; B and X are bit strings (B/XCONST)
    size_t e = quoted_end(s, i + 2, p == 'e');
    if (e == std::string_view::npos || continues_string(s, e))
      return {};
    return {e, p == 'e'};
  }
  if (c == '$') { // $tag$ ... $tag$ ($n parameters are not constants)
    size_t j = i + 1;
    while (j < n && s[j] != '$' && ident_cont(uint8_t(s[j])))
      ++j;
    if (j >= n || s[j] != '$' || (j > i + 1 && is_digit(uint8_t(s[i + 1]))))
      return {};
    std::string_view tag = s.substr(i, j - i + 1);
    size_t e = s.find(tag, j + 1);
    if (e == std::string_view::npos)
      return {};
    return {e + tag.size(), true};
  }
  if (is_digit(c) || (c == '.' && i + 1 < n && is_digit(uint8_t(s[i + 1])))) {
    size_t j = i;
    while (j < n && is_digit(uint8_t(s[j])))
      ++j;
    if (j < n && s[j] == '.' && !(j + 1 < n && s[j + 1] == '.')) {
      ++j;
      while (j < n && is_digit(uint8_t(s[j])))
        ++j;
    }
    if (j < n && (s[j] == 'e' || s[j] == 'E')) {
      size_t k = j + 1;
      if (k < n && (s[k] == '+' || s[k] == '-'))
        ++k;
      if (k < n && is_digit(uint8_t(s[k]))) {
        j = k;
        while (j < n && is_digit(uint8_t(s[j])))
          ++j;
      }
    }
    if (j < n && (ident_start(uint8_t(s[j])) || s[j] == '.'))
      return {}; // trailing junk, 0x.., 1.2.3: the real scanner decides
    return {j, false};
  }
  return {};
}

// Appends the constant lexed at i (see lex_constant); false if there is none.
bool take_constant(ScanResult &r, std::string_view s, size_t &last, size_t &i) {
  Lexed l = lex_constant(s, i);
  if (l.end == std::string_view::npos)
    return false;
  add_const(r, s, last, i, l.end, l.is_string);
  i = l.end;
  return true;
}

// The fast path: PostgreSQL's lexical rules for what matters here (identifiers, quoted
// identifiers, comments, strings of every form, dollar quotes, numbers, parameters). Anything
// unusual returns false and libpg_query's own scanner decides.
bool fast_scan(std::string_view s, ScanResult &r) {
  r.ok = false;
  r.fast = false;
  r.normalized.clear();
  r.consts.clear();
  r.normalized.reserve(s.size() + 8);
  size_t last = 0, i = 0;
  const size_t n = s.size();
  while (i < n) {
    unsigned char c = uint8_t(s[i]);
    if (kClass[c] & kPlain) {
      ++i;
    } else if (c == '-' && i + 1 < n && s[i + 1] == '-') { // -- comment
      size_t e = s.find('\n', i);
      i = e == std::string_view::npos ? n : e + 1;
    } else if (c == '/' && i + 1 < n && s[i + 1] == '*') { // nested /* */ comment
      int depth = 1;
      i += 2;
      while (i < n && depth > 0) {
        if (s[i] == '/' && i + 1 < n && s[i + 1] == '*') {
          ++depth;
          i += 2;
        } else if (s[i] == '*' && i + 1 < n && s[i + 1] == '/') {
          --depth;
          i += 2;
        } else {
          ++i;
        }
      }
      if (depth > 0)
        return false;
    } else if (c == '"') { // quoted identifier
      size_t e = s.find('"', i + 1);
      while (e != std::string_view::npos && e + 1 < n && s[e + 1] == '"')
        e = s.find('"', e + 2);
      if (e == std::string_view::npos)
        return false;
      i = e + 1;
    } else if (c == '\'') {
      if (!take_constant(r, s, last, i))
        return false;
    } else if (ident_start(c)) {
      size_t j = i + 1;
      while (j < n && ident_cont(uint8_t(s[j])))
        ++j;
      if (j == i + 1 && j < n && s[j] == '\'') {
        char p = char(c | 0x20);
        if (p == 'e' || p == 'b' || p == 'x') {
          if (!take_constant(r, s, last, i))
            return false;
          continue;
        }
        if (p == 'u') // U&'..' is written U&, never U'
          return false;
        // N'..': the keyword NCHAR, then an ordinary string (handled on the next turn).
      }
      if (j < n && s[j] == '&' && (c == 'u' || c == 'U') && j == i + 1)
        return false; // U&'..' / U&"..": unicode escapes, left to libpg_query
      i = j;
    } else if (c == '$') {
      if (i + 1 < n && is_digit(uint8_t(s[i + 1]))) { // $n parameter
        i += 2;
        while (i < n && is_digit(uint8_t(s[i])))
          ++i;
        continue;
      }
      if (!take_constant(r, s, last, i))
        return false;
    } else if (is_digit(c) || c == '.') {
      if (c == '.' && !(i + 1 < n && is_digit(uint8_t(s[i + 1])))) {
        ++i;
        continue;
      }
      if (!take_constant(r, s, last, i))
        return false;
    } else if (c == '\\' || c == 0) {
      return false;
    } else {
      ++i;
    }
  }
  r.normalized.append(s.substr(last));
  r.ok = true;
  r.fast = true;
  return true;
}

} // namespace

void scan_constants(std::string_view sql, ScanResult &out) {
  if (!fast_scan(sql, out))
    out = scan_constants_pg(sql);
}

namespace {
// The scanner treats all digits alike and every other byte a constant starts with on its own.
char lead_class(char c) {
  return is_digit(uint8_t(c)) ? '0' : c;
}
} // namespace

bool same_shape(std::string_view s, ScanResult &r) {
  if (!r.ok || !r.fast)
    return false;
  std::string_view norm = r.normalized;
  size_t sp = 0, np = 0, prev_end = 0;
  for (ConstToken &t : r.consts) {
    // The text between constants must be the same bytes; then a constant of the same kind,
    // with a first byte of the same class (so the token before it ends where it did), read
    // the same way.
    size_t seg = t.start - prev_end;
    if (sp + seg >= s.size() || s.compare(sp, seg, norm.substr(np, seg)) != 0 ||
        lead_class(s[sp + seg]) != lead_class(t.lead))
      return false;
    prev_end = t.end;
    sp += seg;
    np += seg + 2; // the placeholder
    Lexed l = lex_constant(s, sp);
    if (l.end == std::string_view::npos || l.is_string != t.is_string)
      return false;
    t.start = uint32_t(sp);
    t.end = uint32_t(l.end);
    sp = l.end;
  }
  return s.substr(sp) == norm.substr(np);
}

ScanResult scan_constants(std::string_view sql) {
  ScanResult r;
  scan_constants(sql, r);
  return r;
}

namespace {

// Calls f(token, start, end) for each of libpg_query's tokens of sql from `from` on (offsets
// into sql) until f returns false. False when the text does not scan.
template <class F> bool scan_tokens(std::string_view sql, uint32_t from, F f) {
  if (from > sql.size())
    return false;
  PgQueryScanResult sr = pg_query_scan(sql.data() + from);
  if (sr.error) {
    pg_query_free_scan_result(sr);
    return false;
  }
  PgQuery__ScanResult *scan = pg_query__scan_result__unpack(
      nullptr, sr.pbuf.len, reinterpret_cast<const uint8_t *>(sr.pbuf.data));
  pg_query_free_scan_result(sr);
  if (!scan)
    return false;
  for (size_t i = 0; i < scan->n_tokens; ++i) {
    const PgQuery__ScanToken *t = scan->tokens[i];
    if (!f(int(t->token), from + uint32_t(t->start), from + uint32_t(t->end)))
      break;
  }
  pg_query__scan_result__free_unpacked(scan, nullptr);
  return true;
}

} // namespace

ScanResult scan_constants_pg(std::string_view sql) {
  ScanResult r;
  r.normalized.reserve(sql.size());
  size_t last = 0;
  bool scanned = scan_tokens(sql, 0, [&](int token, uint32_t start, uint32_t end) {
    bool is_string = false;
    switch (token) {
    case PG_QUERY__TOKEN__SCONST:
    case PG_QUERY__TOKEN__USCONST:
      is_string = true;
      [[fallthrough]];
    case PG_QUERY__TOKEN__ICONST:
    case PG_QUERY__TOKEN__FCONST:
    case PG_QUERY__TOKEN__BCONST:
    case PG_QUERY__TOKEN__XCONST:
      break;
    default:
      return true;
    }
    if (start < last || end > sql.size() || start > end)
      return true;
    add_const(r, sql, last, start, end, is_string);
    return true;
  });
  if (!scanned)
    return ScanResult{};
  r.normalized.append(sql.substr(last));
  r.ok = true;
  return r;
}

bool has_returning(std::string_view sql) {
  return first_token_outside_parens(sql, 0, {PG_QUERY__TOKEN__RETURNING}).has_value();
}

std::optional<std::vector<ParamSpan>> param_spans(std::string_view sql) {
  std::vector<ParamSpan> out;
  bool scanned = scan_tokens(sql, 0, [&](int token, uint32_t start, uint32_t end) {
    if (token == PG_QUERY__TOKEN__PARAM && end > start + 1 && end <= sql.size())
      out.push_back(
          {start, end,
           uint32_t(std::strtoul(std::string(sql.substr(start + 1, end - start - 1)).c_str(),
                                 nullptr, 10))});
    return true;
  });
  if (!scanned)
    return std::nullopt;
  return out;
}

std::optional<std::pair<uint32_t, uint32_t>> parens_span(std::string_view sql, uint32_t from) {
  std::optional<std::pair<uint32_t, uint32_t>> span;
  uint32_t open = 0;
  int depth = 0;
  scan_tokens(sql, from, [&](int token, uint32_t start, uint32_t end) {
    if (token == PG_QUERY__TOKEN__ASCII_40) {
      if (depth++ == 0)
        open = start;
    } else if (token == PG_QUERY__TOKEN__ASCII_41 && depth > 0) {
      if (--depth == 0)
        span = std::make_pair(open, end);
    }
    return !span;
  });
  return span;
}

std::optional<uint32_t> first_token_outside_parens(std::string_view sql, uint32_t from,
                                                   const std::vector<int> &tokens) {
  std::optional<uint32_t> at;
  int depth = 0;
  scan_tokens(sql, from, [&](int token, uint32_t start, uint32_t) {
    if (token == PG_QUERY__TOKEN__ASCII_40)
      ++depth;
    else if (token == PG_QUERY__TOKEN__ASCII_41)
      return --depth >= 0;
    else if (depth == 0 && std::find(tokens.begin(), tokens.end(), token) != tokens.end())
      at = start;
    return !at;
  });
  return at;
}

std::optional<std::string> constant_value(std::string_view sql, const ConstToken &t) {
  std::string_view s = sql.substr(t.start, t.end - t.start);
  if (!t.is_string)
    return std::string(s);
  bool escape = false;
  if (!s.empty() && (s[0] == 'E' || s[0] == 'e')) {
    escape = true;
    s.remove_prefix(1);
  }
  if (s.size() >= 2 && s.front() == '$') {
    // $tag$ ... $tag$
    size_t close = s.find('$', 1);
    if (close == std::string_view::npos)
      return std::nullopt;
    size_t tag_len = close + 1;
    if (s.size() < 2 * tag_len)
      return std::nullopt;
    return std::string(s.substr(tag_len, s.size() - 2 * tag_len));
  }
  if (s.size() < 2 || s.front() != '\'' || s.back() != '\'')
    return std::nullopt; // U&'' and other forms: not decoded, so never routed by guess
  s = s.substr(1, s.size() - 2);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '\'' && i + 1 < s.size() && s[i + 1] == '\'') {
      out.push_back('\'');
      ++i;
    } else if (escape && c == '\\' && i + 1 < s.size()) {
      char n = s[++i];
      switch (n) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case '\\':
      case '\'':
      case '"':
        out.push_back(n);
        break;
      default:
        return std::nullopt; // octal/hex/unicode escapes: not decoded
      }
    } else {
      out.push_back(c);
    }
  }
  return out;
}

} // namespace sg::router

// Scanner-based constant extraction.
#include "router/literals.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

namespace sg::router {

ScanResult scan_constants(std::string_view sql) {
  ScanResult r;
  PgQueryScanResult sr = pg_query_scan(sql.data());
  if (sr.error) {
    pg_query_free_scan_result(sr);
    return r;
  }
  PgQuery__ScanResult *scan = pg_query__scan_result__unpack(
      nullptr, sr.pbuf.len, reinterpret_cast<const uint8_t *>(sr.pbuf.data));
  pg_query_free_scan_result(sr);
  if (!scan)
    return r;
  r.normalized.reserve(sql.size());
  size_t last = 0;
  for (size_t i = 0; i < scan->n_tokens; ++i) {
    const PgQuery__ScanToken *t = scan->tokens[i];
    bool is_string = false;
    switch (t->token) {
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
      continue;
    }
    auto start = uint32_t(t->start), end = uint32_t(t->end);
    if (start < last || end > sql.size() || start > end)
      continue;
    r.normalized.append(sql.substr(last, start - last));
    r.normalized.push_back('?');
    last = end;
    r.consts.push_back({start, end, is_string});
  }
  r.normalized.append(sql.substr(last));
  pg_query__scan_result__free_unpacked(scan, nullptr);
  r.ok = true;
  return r;
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
      case 'n': out.push_back('\n'); break;
      case 't': out.push_back('\t'); break;
      case 'r': out.push_back('\r'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case '\\': case '\'': case '"': out.push_back(n); break;
      default: return std::nullopt; // octal/hex/unicode escapes: not decoded
      }
    } else {
      out.push_back(c);
    }
  }
  return out;
}

} // namespace sg::router

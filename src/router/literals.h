// Constants in SQL text, found with libpg_query's scanner: used to key the plan cache by the
// text with its literals taken out, and to read a literal's value by position at route time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sg::router {

struct ConstToken {
  uint32_t start = 0;
  uint32_t end = 0; // exclusive
  bool is_string = false;
  char lead = 0; // its first byte
};

struct ScanResult {
  bool ok = false;
  bool fast = false;      // read by the fast scanner (not libpg_query's)
  std::string normalized; // the text with every constant replaced by '?'
  std::vector<ConstToken> consts;
};

// sql must be NUL-terminated at sql.size() (libpg_query reads C strings). A fast scanner
// handles ordinary SQL; anything unusual goes to libpg_query's own scanner.
ScanResult scan_constants(std::string_view sql);
// The same into `out`, reusing its buffers (the per-query path).
void scan_constants(std::string_view sql, ScanResult &out);
// True when sql is the statement that `prev` (a scan of the previous statement) describes with
// other constant values: prev.consts then hold this text's constants, exactly as
// scan_constants(sql) would give them, and prev.normalized still applies. False: rescan (prev
// may be changed). Costs a compare of the text between constants instead of a full scan.
bool same_shape(std::string_view sql, ScanResult &prev);
// libpg_query's scanner only (the reference the fast path is tested against).
ScanResult scan_constants_pg(std::string_view sql);

// The parenthesized list that opens at the first "(" token at or after `from` (a function
// call's arguments, say): the offsets of its "(" and just past its ")", by libpg_query's
// scanner, so that parentheses in strings, quoted names and comments do not count. nullopt
// when there is none or it is not closed. sql must be NUL-terminated at sql.size().
std::optional<std::pair<uint32_t, uint32_t>> parens_span(std::string_view sql, uint32_t from);

// The offset of the first token of kind `tokens` (PgQuery__Token values) at or after `from`
// that is not inside parentheses opened after `from`, by libpg_query's scanner; nullopt when
// there is none (or a ")" closes more than opened). sql must be NUL-terminated.
std::optional<uint32_t> first_token_outside_parens(std::string_view sql, uint32_t from,
                                                   const std::vector<int> &tokens);

// Each parameter reference ($n) in sql, in text order, by libpg_query's scanner: its span and
// n. nullopt when sql does not scan. sql must be NUL-terminated at sql.size().
struct ParamSpan {
  uint32_t start = 0, end = 0;
  uint32_t number = 0;
};
std::optional<std::vector<ParamSpan>> param_spans(std::string_view sql);

// Whether sql has a RETURNING clause outside parentheses (a write that returns rows), by
// libpg_query's scanner. sql must be NUL-terminated at sql.size().
bool has_returning(std::string_view sql);

// The value of a constant: numbers as written; strings unquoted ('' -> ', E'' escapes, $$).
std::optional<std::string> constant_value(std::string_view sql, const ConstToken &t);

} // namespace sg::router

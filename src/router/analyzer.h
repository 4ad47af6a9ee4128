// SQL analysis with PostgreSQL's own parser (libpg_query): turns statement text into plans.
// Pure: no sockets, no threads, no caching (the router caches).
#pragma once

#include "config/config.h"
#include "router/literals.h"
#include "router/plan.h"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sg::router {

struct Analysis {
  bool parsed = false;
  std::string parse_error;
  std::vector<StatementPlan> stmts;
  int max_param = 0; // the highest $n the text refers to (0: none)
};

// sql must be NUL-terminated at sql.size(). consts are the text's constants in order (from
// scan_constants), so that literal keys are recorded by position.
Analysis analyze(std::string_view sql, const std::vector<config::Table> &tables,
                 const std::vector<ConstToken> &consts);

// A SQL string literal E'...' with quotes and backslashes doubled: it means the same whatever
// the standard_conforming_strings of the server that reads it.
std::string quote_e_literal(std::string_view v);

// A SET / RESET statement rebuilt from its parse tree, with every value quoted as E'...', so
// that replaying it on another backend means the same whatever that backend's
// standard_conforming_strings. nullopt when it cannot be rebuilt (e.g. SET ... FROM CURRENT).
std::optional<std::string> canonical_set(const std::string &stmt);

} // namespace sg::router

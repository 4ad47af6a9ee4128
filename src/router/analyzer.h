// SQL analysis with PostgreSQL's own parser (libpg_query): turns statement text into plans.
// Pure: no sockets, no threads, no caching (the router caches).
#pragma once

#include "config/config.h"
#include "router/literals.h"
#include "router/plan.h"

#include <string>
#include <string_view>
#include <vector>

namespace sg::router {

struct Analysis {
  bool parsed = false;
  std::string parse_error;
  std::vector<StatementPlan> stmts;
};

// sql must be NUL-terminated at sql.size(). consts are the text's constants in order (from
// scan_constants), so that literal keys are recorded by position.
Analysis analyze(std::string_view sql, const std::vector<config::Table> &tables,
                 const std::vector<ConstToken> &consts);

} // namespace sg::router

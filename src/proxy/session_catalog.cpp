// Client session, part: what the proxy asks a shard's catalog on the client's behalf, on a
// backend the session attached, before the client's statement: whether a function is a
// user-defined aggregate (reads across shards), and where a table's shard key column sits
// among its columns (INSERT without a column list), with the guard that makes sure the
// position is still right when the INSERT runs. See session.h.
#include "proxy/session.h"

#include "router/analyzer.h"

namespace sg::proxy {

namespace {

std::string sql_literal(std::string_view s) {
  std::string out = "'";
  for (char c : s)
    out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

// The number of live columns before `key` in `table`: the key's 0-based position.
std::string key_position_sql(const config::Table &t) {
  return "SELECT count(*) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_attribute k ON "
         "k.attrelid = a.attrelid AND k.attname = " +
         sql_literal(t.key) + " AND NOT k.attisdropped WHERE a.attrelid = pg_catalog.to_regclass(" +
         sql_literal(t.name) + ") AND a.attnum > 0 AND NOT a.attisdropped AND a.attnum < k.attnum";
}

} // namespace

Task<std::optional<std::vector<protocol::Row>>>
Session::catalog_rows(BackendConn &b, const std::string &sql, protocol::ErrorInfo &error) {
  wbuf_.clear();
  prepare_backend(b, wbuf_, false);
  int swallow = int(exp_.size());
  exp_.clear();
  protocol::query(wbuf_, sql);
  b.unnamed_owner = 0;
  ErrorCode ec;
  co_await write_all(b.sock, wbuf_, ec);
  if (ec) {
    on_backend_lost(b);
    co_return std::nullopt;
  }
  std::vector<protocol::Row> rows;
  for (;;) {
    char t = 0;
    std::string body;
    if (!co_await next_frame(b, t, body)) {
      if (!b.broken)
        on_backend_lost(b);
      co_return std::nullopt;
    }
    if (t == 'Z') {
      b.tx_status = body.empty() ? 'I' : body[0];
      if (swallow-- > 0)
        continue;
      break;
    }
    if (swallow > 0)
      continue; // the settings' answers
    if (t == 'D') {
      protocol::Row row;
      if (protocol::parse_data_row(body, row))
        rows.push_back(std::move(row));
    } else if (t == 'E' && error.sqlstate.empty()) {
      error = protocol::parse_error_response(body);
    }
  }
  co_return rows;
}

Task<bool> Session::learn_key_position(int table) {
  const config::Table &t = sh_.cfg.tables[size_t(table)];
  // On the transaction's shard when it holds one (a read in it changes nothing), else on the
  // default shard, outside any transaction: every shard has the table's definition.
  size_t shard = tx_shard_ >= 0 ? size_t(tx_shard_) : w_->place().keys->default_shard;
  BackendConn *b = co_await attach(shard, false);
  if (!b) { // unreachable() said why
    if (in_tx())
      fail_transaction_by_proxy();
    ready();
    co_return false;
  }
  protocol::ErrorInfo err;
  auto rows = co_await catalog_rows(*b, key_position_sql(t), err);
  if (tx_shard_ < 0)
    mark_untracked(*b); // its next user sets it up again
  detach_if_idle();
  if (!rows || !err.sqlstate.empty() || rows->size() != 1 || rows->front().empty() ||
      !rows->front()[0]) {
    error(rows ? (err.sqlstate.empty() ? "XX000" : err.sqlstate) : "08006",
          "cannot read the position of shard key \"" + t.key + "\" in table \"" + t.name +
              "\" from shard \"" + sh_.shard_name(shard) + "\"" +
              (err.message.empty() ? "" : ": " + err.message),
          "list the columns in the INSERT");
    if (in_tx())
      fail_transaction_by_proxy();
    ready();
    co_return false;
  }
  sh_.router.set_key_position(table, std::stoi(*rows->front()[0]));
  co_return true;
}

// A statement run just before the client's INSERTs without a column list, in the same query
// string (so in the same transaction): it fails, and the INSERTs with it, when a key column's
// position is no longer the one they were routed by (a column dropped since, by another
// proxy or a client of the shard itself). Its CommandComplete is swallowed; its error reaches
// the client (40001: retry), and the proxy forgets the positions it knew.
std::string Session::key_guard(const std::vector<int> &tables) const {
  std::string checks;
  for (int table : tables) {
    const config::Table &t = sh_.cfg.tables[size_t(table)];
    checks +=
        "IF (" + key_position_sql(t) + ") <> " + std::to_string(sh_.router.key_position(table)) +
        " THEN RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = " +
        sql_literal("the columns of sharded table \"" + t.name +
                    "\" changed since the proxy read where its shard key \"" + t.key + "\" is") +
        ", HINT = " + sql_literal("retry the statement: the proxy reads the position again") +
        "; END IF; ";
  }
  return "DO $shardgate_guard$BEGIN " + checks + "END$shardgate_guard$;";
}

} // namespace sg::proxy

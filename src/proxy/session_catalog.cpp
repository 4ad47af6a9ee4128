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

// (answer_ready false: an extended-protocol batch, whose caller answers ReadyForQuery at its
// Sync.)
Task<bool> Session::learn_key_position(int table, bool answer_ready) {
  const config::Table &t = sh_.cfg.tables[size_t(table)];
  // On the transaction's shard when it holds one (a read in it changes nothing), else on the
  // default shard, outside any transaction: every shard has the table's definition.
  size_t shard = tx_shard_ >= 0 ? size_t(tx_shard_) : w_->place().keys->default_shard;
  BackendConn *b = co_await attach(shard, false);
  if (!b) { // unreachable() said why
    if (in_tx())
      fail_transaction_by_proxy();
    if (answer_ready)
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
    if (answer_ready)
      ready();
    co_return false;
  }
  sh_.router.set_key_position(table, std::stoi(*rows->front()[0]));
  co_return true;
}

// An extended-protocol batch: the key positions of the INSERTs without a column list that
// it parses or binds, read first (before planning, which has no I/O). False: one could not
// be read, and the client has the error (the batch is answered up to its Sync).
Task<bool> Session::learn_batch_key_positions(const std::vector<Msg> &batch) {
  for (const Msg &m : batch) {
    const router::PlannedText *pt = nullptr;
    router::PlannedText parsed;
    if (m.type == 'P') {
      auto p = protocol::parse_parse(m.body);
      if (!p)
        continue;
      parsed = sh_.router.plan(std::string(p->query));
      pt = &parsed;
    } else if (m.type == 'B') {
      auto b = protocol::parse_bind(m.body);
      auto sit = b ? stmts_.find(std::string(b->statement)) : stmts_.end();
      if (sit == stmts_.end())
        continue;
      pt = &sit->second->planned;
    }
    if (!pt || !pt->analysis->parsed || pt->analysis->stmts.size() != 1)
      continue;
    const router::StatementPlan &sp = pt->analysis->stmts[0];
    if (sp.positional && sp.table >= 0 && sh_.router.key_position(sp.table) < 0) [[unlikely]]
      if (!co_await learn_key_position(sp.table, false))
        co_return false;
  }
  co_return true;
}

// The guard in front of the client's Bind of an INSERT without a column list (extended
// protocol): key_guard() as a statement of the proxy's own, run through a portal of its own,
// every answer swallowed but an error (40001, which fails what follows as PostgreSQL would).
void Session::write_key_guard(BackendConn &b, int table) {
  ClientStmt g;
  g.text = key_guard({table});
  g.set_id(w_->intern_statement(stmt_key(g.text, g.types)));
  ensure_prepared(b, g, wbuf_);
  protocol::Writer(wbuf_, 'B').cstr("sg_guard").cstr(g.server_name).i16(0).i16(0).i16(0).finish();
  exp_.emplace_back(Expect::one, false);
  protocol::Writer(wbuf_, 'E').cstr("sg_guard").i32(0).finish();
  exp_.emplace_back(Expect::execute, false).key_guard = true;
  protocol::close(wbuf_, 'P', "sg_guard");
  exp_.emplace_back(Expect::one, false);
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

// Client session, part: routing a simple Query (route_query(): where each statement of the
// query string goes, decided without I/O; what the proxy answers itself, such as a BEGIN that
// waits for its first statement), and holding writes to keys whose migration cutover is under
// way (may_hold()). See session.h.
#include "proxy/session.h"

#include "proxy/errors.h"
#include "proxy/session_util.h"

namespace sg::proxy {

using detail::count_route;
using detail::synthetic_done;
using detail::trim;

bool Session::may_hold(const router::Resolved &r) {
  // Only while the session holds nothing on a shard: no bound transaction (a BEGIN the proxy
  // answered and has not sent yet is fine), no batch cut by a Flush.
  if (!r.moving || tx_shard_ >= 0 || batch_shard_ >= 0 || implicit_open_ || proxy_failed_)
    return false;
  auto now = std::chrono::steady_clock::now();
  if (hold_since_ == std::chrono::steady_clock::time_point{})
    hold_since_ = now;
  return now - hold_since_ < std::chrono::milliseconds(sh_.cfg.migrations.cutover_pause_ms + 500);
}

Task<void> Session::hold_a_moment() {
  Timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(2));
  ErrorCode ec;
  co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
}

Task<bool> Session::throttle(uint32_t n) {
  auto wait = rate_->take(n);
  if (!wait) {
    sh_.rate_refused.fetch_add(1, std::memory_order_relaxed);
    co_return false;
  }
  if (wait->count() > 0) {
    sh_.rate_delayed.fetch_add(1, std::memory_order_relaxed);
    Timer t(co_await asio::this_coro::executor, *wait);
    ErrorCode ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  }
  co_return true;
}

void Session::over_rate(bool sync) {
  error("53400",
        "user \"" + user_ + "\" is over its query rate (" + std::to_string(rate_->per_second()) +
            " per second, bursts of " + std::to_string(rate_->burst()) + ")",
        "slow down, or raise [[users]] max_queries_per_second or burst for this user; a query "
        "over the rate waits up to max_delay_ms (" +
            std::to_string(rate_->max_delay_ms()) + " ms) before it gets this error");
  if (in_tx())
    fail_transaction_by_proxy();
  if (sync)
    ready();
  else
    skip_until_sync_ = true;
}

// The proxy's own error for a query string: it fails an open transaction, as the server would.
Session::QueryStep Session::refuse(const std::string &sqlstate, const std::string &msg,
                                   const std::string &hint) {
  error(sqlstate, msg, hint);
  if (in_tx())
    fail_transaction_by_proxy();
  ready();
  return QueryStep::answered;
}

Session::QueryStep Session::route_query(const std::string &sql, QueryRun &q) {
  request_error_ = false;
  end_seen_ = false;
  guard_.clear();
  note_routed();
  if (settings_before_) [[unlikely]]
    settings_before_.reset();
  // As in PostgreSQL, a simple Query ends the unnamed statement, and the unnamed portal too
  // unless a failed transaction refuses it before it makes its own.
  if (!stmts_.empty()) [[unlikely]]
    stmts_.erase(std::string());
  if (!portals_.empty() && tx_ != 'E') [[unlikely]] {
    portals_.erase(std::string());
    virtual_portals_.erase(std::string());
  }
  router::PlannedText &planned = query_plan_;
  sh_.router.plan(sql, planned);
  const auto &stmts = planned.analysis->stmts;
  if (stmts.empty()) {
    protocol::Writer(*sink_, 'I').finish(); // EmptyQueryResponse
    ready();
    return QueryStep::answered;
  }
  auto text_of = [&](const router::StatementPlan &p) {
    return trim(std::string_view(sql).substr(p.location, p.length));
  };
  const router::StatementPlan &first = stmts[0];
  bool single = stmts.size() == 1;

  if (proxy_failed_) {
    if (single &&
        (first.kind == router::StmtKind::commit || first.kind == router::StmtKind::rollback)) {
      return QueryStep::end_failed_tx;
    }
    if (!planned.analysis->parsed) // PostgreSQL parses first: a syntax error is reported as such
      error("42601", planned.analysis->parse_error);
    else
      error("25P02",
            "current transaction is aborted, commands ignored until end of transaction block");
    ready();
    return QueryStep::answered;
  }

  if ((tx_ == 'E' || !planned.analysis->parsed) && tx_shard_ >= 0) {
    // A failed transaction on its backend: PostgreSQL answers everything there (25P02, or
    // the end of the transaction); nothing is routed. So does a syntax error in a transaction.
    q.shard = tx_shard_;
    return QueryStep::run;
  }
  if (single && !first.next_id.empty()) [[unlikely]]
    return QueryStep::next_id;

  // Resolve every statement; they must agree on one shard.
  int shard = -1;
  bool all_read = true, none_only = true, broadcast_ddl = false;
  std::vector<int> guarded;               // tables of INSERTs without a column list
  for (const auto &st : stmts) {          // before any statement of the string is noted:
    if (!st.next_id.empty()) [[unlikely]] // (in a string of several)
      return refuse("0A000",
                    "shardgate.next_id() is answered by the proxy only as a statement of its own",
                    "send SELECT shardgate.next_id() alone, not in a string of several");
    if (st.positional && sh_.router.key_position(st.table) < 0) [[unlikely]] {
      learn_table_ = st.table; // read first
      return QueryStep::learn_key;
    }
  }
  for (const auto &st : stmts) {
    if (st.kind == router::StmtKind::begin || st.kind == router::StmtKind::savepoint) [[unlikely]]
      note_tx_statement(st, text_of(st));
    router::Resolved r =
        sh_.router.resolve(st, sql, planned.scan, {}, w_->place().keys.get(), true);
    if (r.needs_key_position) [[unlikely]] {
      learn_table_ = st.table;
      return QueryStep::learn_key; // resolved again once the catalog said
    }
    count_route(w_->stats, r.kind, st);
    if (st.positional && r.kind != router::TargetKind::error) [[unlikely]] {
      // Rows on several shards: scatter_write() cuts it, each shard's part guarded.
      if (r.kind == router::TargetKind::by_key &&
          std::find(guarded.begin(), guarded.end(), st.table) == guarded.end())
        guarded.push_back(st.table);
    }
    if (r.kind == router::TargetKind::error) {
      if (r.moving && may_hold(r)) [[unlikely]]
        return QueryStep::hold;
      return refuse(r.error.sqlstate, r.error.message, r.error.hint);
    }
    if ((r.kind == router::TargetKind::by_key && st.kind != router::StmtKind::read) ||
        r.kind == router::TargetKind::all_primaries) {
      if (auto f = sh_.fenced_write()) {
        return refuse(f->sqlstate, f->message, f->hint);
      }
    }
    if (r.kind == router::TargetKind::scatter && st.copy_in) {
      if (!single || proxy_failed_) {
        return refuse("0A000", "COPY into a sharded table must be sent alone",
                      "send it as its own statement");
      }
      if (auto f = sh_.fenced_write()) {
        return refuse(f->sqlstate, f->message, f->hint);
      }
      return QueryStep::copy_in;
    }
    if (r.kind == router::TargetKind::scatter && st.multi_write) {
      if (auto f = sh_.fenced_write()) {
        return refuse(f->sqlstate, f->message, f->hint);
      }
      if (!single || proxy_failed_) {
        return refuse(
            "0A000",
            "an UPDATE or DELETE of a sharded table without its shard key (or with "
            "keys on several shards) must be sent alone",
            "send it as its own statement; it then runs on every shard concerned, atomically");
      }
      scatter_shards_ = r.shards;
      return QueryStep::scatter_write;
    }
    if (r.kind == router::TargetKind::scatter) {
      if (!single) {
        return refuse(
            "0A000", "a read of a sharded table without its shard key must be sent alone",
            "send it as its own statement (it then runs on every shard), or add the shard key "
            "to its WHERE clause");
      }
      if (in_tx() && !join_refusal(0).empty()) // (savepoints: the only refusal below 64 shards)
        return refuse("0A000",
                      "a read of a sharded table without its shard key cannot run in a "
                      "transaction that made a savepoint",
                      "read it before the savepoint, outside the transaction, or add the shard "
                      "key to its WHERE clause");
      scatter_shards_ = r.shards;
      return QueryStep::scatter;
    }
    if (r.kind == router::TargetKind::all_primaries)
      broadcast_ddl = true;
    if (r.kind == router::TargetKind::default_shard && st.tableless) {
      none_only = false; // SELECT 1, SHOW...: runs wherever the rest goes (or the default)
    } else if (r.kind == router::TargetKind::by_key ||
               r.kind == router::TargetKind::default_shard) {
      none_only = false;
      if (shard < 0)
        shard = int(r.shard);
      else if (shard != int(r.shard)) {
        return refuse(
            "0A000", "this query string touches more than one shard",
            "send statements for different shards separately; cross-shard transactions are "
            "not supported yet");
      }
    }
    if (st.kind != router::StmtKind::read)
      all_read = false;
  }
  if (broadcast_ddl) {
    if (!single || in_tx()) {
      return refuse("0A000", "DDL on a sharded table must be sent alone, outside a transaction",
                    "run it as its own statement in autocommit mode; it is applied to every shard");
    }
    return QueryStep::broadcast;
  }

  bool tx_bound = tx_shard_ >= 0;
  if (tx_bound && (multi_tx() || (shard >= 0 && shard != tx_shard_))) [[unlikely]] {
    // A transaction across shards: what would end or divide it on one shard only is refused.
    for (const auto &st : stmts) {
      if (const char *what = cross_shard_refusal(st, single)) {
        error("0A000", std::string(what) + " are not supported in a transaction across shards",
              "send COMMIT or ROLLBACK as a statement of its own; keep savepoints in "
              "transactions on one shard");
        fail_transaction_by_proxy();
        ready();
        return QueryStep::answered;
      }
    }
  }
  if (single && in_tx() && !tx_bound && first.kind == router::StmtKind::read && first.tableless &&
      (first.pipelinable || first.tag == "SHOW"))
    return QueryStep::side; // SELECT 1, SHOW: chooses no shard for the waiting transaction
  if (single && none_only) {
    // Transaction control and session state with no shard of their own.
    switch (first.kind) {
    case router::StmtKind::begin:
      if (!in_tx()) {
        tx_settings_snapshot_ = settings_;
        deferred_ = text_of(first);
        tx_read_only_ = first.read_only_tx;
        tx_ = 'T';
        synthetic_done(*sink_, first.tag);
        ready();
        return QueryStep::answered;
      }
      if (!tx_bound) {
        already_in_tx();
        synthetic_done(*sink_, first.tag);
        ready();
        return QueryStep::answered;
      }
      break;
    case router::StmtKind::commit:
    case router::StmtKind::rollback:
      if (multi_tx() || mirror_due()) {
        multi_commit_ = first.kind == router::StmtKind::commit && tx_ != 'E';
        return QueryStep::end_multi;
      }
      if (in_tx() && !tx_bound) {
        last_rollback_ = !(first.kind == router::StmtKind::commit && tx_ != 'E');
        apply_tx_end();
        synthetic_done(*sink_, last_rollback_ ? "ROLLBACK" : "COMMIT");
        ready();
        return QueryStep::answered;
      }
      break;
    case router::StmtKind::savepoint:
    case router::StmtKind::set_local:
    case router::StmtKind::set:
    case router::StmtKind::reset_all:
      if (in_tx() && !tx_bound &&
          (first.kind != router::StmtKind::set || can_defer_set(first, text_of(first)))) {
        if (first.kind == router::StmtKind::set)
          defer_set(first, text_of(first));
        else
          deferred_ += ";" + text_of(first);
        if (first.kind == router::StmtKind::reset_all) {
          settings_ = startup_settings_;
          rehash_settings();
        }
        synthetic_done(*sink_, first.tag);
        ready();
        return QueryStep::answered;
      }
      break;
    case router::StmtKind::discard_all:
      if (in_tx()) {
        error("25001", "DISCARD ALL cannot run inside a transaction block");
        fail_transaction_by_proxy();
        ready();
        return QueryStep::answered;
      }
      settings_ = startup_settings_;
      rehash_settings();
      for (auto it = stmts_.begin(); it != stmts_.end();)
        it = it->first.empty() ? std::next(it) : stmts_.erase(it);
      synthetic_done(*sink_, first.tag);
      ready();
      return QueryStep::answered;
    case router::StmtKind::deallocate:
      if (first.set_name.empty()) {
        for (auto it = stmts_.begin(); it != stmts_.end();)
          it = it->first.empty() ? std::next(it) : stmts_.erase(it);
      } else if (!stmts_.erase(first.set_name)) {
        return refuse("26000", "prepared statement \"" + first.set_name + "\" does not exist");
      }
      synthetic_done(*sink_, first.tag);
      ready();
      return QueryStep::answered;
    default:
      break;
    }
  }

  if (shard < 0)
    shard = tx_bound ? tx_shard_ : int(w_->place().keys->default_shard);
  if (tx_bound && shard != tx_shard_ && !(shard < 64 && (tx_shards_ >> shard) & 1)) {
    // The transaction takes this shard on: its backend begins the same transaction first.
    std::string why = join_refusal(size_t(shard));
    if (!why.empty()) {
      error("0A000",
            "transaction touches a second shard (\"" + sh_.shard_name(size_t(shard)) +
                "\" after \"" + sh_.shard_name(size_t(tx_shard_)) + "\"), and " + why,
            "keep savepoints in transactions on one shard");
      fail_transaction_by_proxy();
      ready();
      return QueryStep::answered;
    }
    deferred_ = join_text();
  }
  // Reads outside a transaction, and READ ONLY transactions, may use a replica.
  q.shard = shard;
  q.all_read = all_read;
  q.read = all_read && (!in_tx() || (tx_read_only_ && !tx_bound));
  if (!all_read && single && !in_tx() && first.kind == router::StmtKind::write &&
      w_->place().keys->mirror_source(size_t(shard))) [[unlikely]] {
    if (!guarded.empty())
      return refuse("0A000",
                    "an INSERT without a column list into a sharded table is not supported "
                    "while a migration moves keys of its shard",
                    "list the columns: INSERT INTO t (col, ...) VALUES ...");
    return QueryStep::mirrored_write; // a migration moves keys of this shard: dual-write
  }
  if (!guarded.empty()) [[unlikely]]
    guard_ = key_guard(guarded);
  return QueryStep::run;
}

} // namespace sg::proxy

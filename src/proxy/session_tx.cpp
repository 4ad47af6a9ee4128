// Client session, part: transactions across shards (simple protocol). A transaction whose
// statement goes to a shard it does not hold yet takes that shard on: the shard's backend
// begins a transaction like the first one's (same BEGIN, same settings) and runs the
// statement there. COMMIT then ends it on every shard: shards that only read commit first,
// one writer commits alone, and several writers commit with two-phase commit
// (executor/twophase.h). See session.h.
#include "proxy/session.h"

#include "executor/twophase.h"
#include "proxy/errors.h"
#include "proxy/session_util.h"

#include <cstdlib>

namespace sg::proxy {

namespace {

constexpr uint64_t bit(size_t shard) {
  return uint64_t(1) << shard;
}

std::string quote(const std::string &s) {
  return "'" + s + "'";
} // gid(): [a-z0-9_x] only

// Tests only: SHARDGATE_TEST_2PC_CRASH=after_prepare | after_decision makes the proxy die
// (as kill -9 would) at that point of a two-phase commit, so recovery can be shown to finish
// it.
void crash_point(const char *where) {
  static const char *at = std::getenv("SHARDGATE_TEST_2PC_CRASH");
  if (at && std::string_view(at) == where)
    std::_Exit(137);
}

} // namespace

// The transaction now holds `shard`; the first shard it held is its home (tx_shard_), where
// statements with no shard of their own (SELECT 1, SET) run.
void Session::bind_tx(int shard) {
  if (tx_shard_ < 0)
    tx_shard_ = shard;
  if (shard >= 0 && shard < 64 && !(tx_shards_ & bit(size_t(shard)))) {
    tx_shards_ |= bit(size_t(shard));
    if (multi_tx() && cancel_) { // a CancelRequest reaches whichever shard runs the statement
      std::vector<CancelSlot::Target> targets;
      for (size_t s = 0; s < attached_.size() && s < 64; ++s)
        if ((tx_shards_ & bit(s)) && attached_[s].conn)
          targets.push_back(
              {attached_[s].conn->node, attached_[s].conn->pid, attached_[s].conn->key});
      cancel_->set_many(std::move(targets));
    }
  }
  // A statement failed on one shard of several: the others are not failed, so the proxy
  // answers for the transaction from here on (25P02), and its end rolls every shard back.
  if (tx_ == 'E' && multi_tx())
    proxy_failed_ = true;
}

// A BEGIN, SAVEPOINT or SET TRANSACTION the client sends: remembered for shards the
// transaction takes on later.
void Session::note_tx_statement(const router::StatementPlan &st, std::string_view text) {
  if (st.kind == router::StmtKind::begin) {
    if (!in_tx()) {
      tx_begin_ = std::string(text);
      tx_savepoints_ = false;
    }
  } else if (st.tag == "SET") { // SET TRANSACTION: travels with the BEGIN
    tx_begin_ += (tx_begin_.empty() ? "BEGIN;" : ";") + std::string(text);
  } else {
    tx_savepoints_ = true;
  }
}

// Why the open transaction cannot take `shard` on (empty: it can).
std::string Session::join_refusal(size_t shard) const {
  if (shard >= 64)
    return "a transaction spans at most 64 shards";
  if (tx_savepoints_)
    return "it made a savepoint before it touched a second shard";
  return {};
}

// What a transaction across shards cannot run (it would end or divide the transaction on one
// shard only), or nullptr. `alone`: the statement is its request's only one.
const char *Session::cross_shard_refusal(const router::StatementPlan &st, bool alone) {
  if (st.kind == router::StmtKind::savepoint && st.tag != "SET")
    return "savepoints";
  if (st.prepared_tx)
    return "PREPARE TRANSACTION and COMMIT/ROLLBACK PREPARED";
  if (st.chain)
    return "COMMIT/ROLLBACK AND CHAIN";
  if (st.cursor)
    return "cursors (DECLARE, FETCH, MOVE, CLOSE)";
  if (!alone && (st.kind == router::StmtKind::commit || st.kind == router::StmtKind::rollback))
    return "COMMIT or ROLLBACK in a query string with other statements";
  return nullptr;
}

// What a shard the transaction takes on runs first: the transaction's BEGIN (with SET
// TRANSACTION), then the settings the transaction changed, on top of the settings it began
// with (prepare_backend() sends those first).
std::string Session::join_text() const {
  std::string text = tx_begin_.empty() ? std::string("BEGIN") : tx_begin_;
  bool reset = false;
  for (auto &[k, v] : tx_settings_snapshot_)
    if (!settings_.count(k))
      reset = true;
  if (reset)
    text += ";RESET ALL";
  for (auto &[k, v] : settings_) {
    auto it = tx_settings_snapshot_.find(k);
    if (reset || it == tx_settings_snapshot_.end() || it->second != v)
      text += ";" + v;
  }
  return text;
}

// Sends sqls[i] to bs[i] (all first, then reads each answer through ReadyForQuery). errs[i]
// holds the first error each reported (sqlstate empty: none); a lost connection is 08006.
Task<void> Session::control_all(const std::vector<BackendConn *> &bs,
                                const std::vector<std::string> &sqls,
                                std::vector<protocol::ErrorInfo> &errs) {
  errs.assign(bs.size(), {});
  auto lost = [&](size_t i) {
    errs[i] = {"ERROR", "08006", "lost the connection to shard \"" + bs[i]->node->shard_name + "\"",
               "", ""};
  };
  std::string w;
  for (size_t i = 0; i < bs.size(); ++i) {
    BackendConn &b = *bs[i];
    if (b.broken) {
      lost(i);
      continue;
    }
    w.clear();
    protocol::query(w, sqls[i]);
    b.unnamed_owner = 0; // a simple Query drops the unnamed statement
    ErrorCode ec;
    co_await write_all(b.sock, w, ec);
    if (ec) {
      on_backend_lost(b);
      lost(i);
    }
  }
  for (size_t i = 0; i < bs.size(); ++i) {
    BackendConn &b = *bs[i];
    if (!errs[i].sqlstate.empty())
      continue;
    for (;;) {
      char type = 0;
      std::string body;
      bool ok = co_await next_frame(b, type, body);
      if (!ok) {
        lost(i);
        break;
      }
      if (type == 'E' && errs[i].sqlstate.empty())
        errs[i] = protocol::parse_error_response(body);
      else if (type == 'Z') {
        b.tx_status = body.empty() ? 'I' : body[0];
        break;
      }
    }
  }
}

// Waits, without blocking the worker, for the journal to record the commit of txid.
Task<executor::Outcome> Session::await_decision(const std::string &txid, std::string &error) {
  struct Wait {
    explicit Wait(const Executor &ex) : timer(ex) {}
    Timer timer;
    bool done = false;
    executor::Outcome outcome = executor::Outcome::unknown;
    std::string error;
  };
  Executor ex = co_await asio::this_coro::executor;
  auto w = std::make_shared<Wait>(ex);
  w->timer.expires_after(std::chrono::hours(24));
  sh_.journal.load()->decide(txid, [w, ex](executor::Outcome o, const std::string &e) {
    asio::post(ex, [w, o, e] { // back on the session's worker
      w->done = true;
      w->outcome = o;
      w->error = e;
      w->timer.cancel();
    });
  });
  while (!w->done) {
    ErrorCode ec;
    co_await w->timer.async_wait(asio::redirect_error(use_awaitable, ec));
  }
  error = w->error;
  co_return w->outcome;
}

// COMMIT or ROLLBACK of a transaction that holds more than one shard, or that wrote keys a
// migration moves (their copies are made first: session_mirror.cpp).
Task<void> Session::end_multi_tx(bool commit) {
  std::vector<size_t> mirror_only;
  if (commit && mirror_due())
    co_await mirror_writes(mirror_only);
  std::vector<BackendConn *> readers, writers;
  std::vector<size_t> writer_shards;
  for (size_t s = 0; s < attached_.size() && s < 64; ++s) {
    if (!(tx_shards_ & bit(s)) || !attached_[s].conn)
      continue;
    if (tx_writers_ & bit(s)) {
      writers.push_back(attached_[s].conn.get());
      writer_shards.push_back(s);
    } else {
      readers.push_back(attached_[s].conn.get());
    }
  }
  std::vector<protocol::ErrorInfo> errs;
  protocol::ErrorInfo failure; // sqlstate empty: none
  std::string failed_on;
  auto first_failure = [&](const std::vector<BackendConn *> &bs) {
    for (size_t i = 0; i < bs.size(); ++i)
      if (!errs[i].sqlstate.empty() && failure.sqlstate.empty()) {
        failure = errs[i];
        failed_on = bs[i]->node->shard_name;
      }
    return !failure.sqlstate.empty();
  };
  auto all = [](size_t n, const std::string &sql) { return std::vector<std::string>(n, sql); };
  std::string detail;
  auto &stats = w_->stats;
  if (!commit) {
    std::vector<BackendConn *> every = readers;
    every.insert(every.end(), writers.begin(), writers.end());
    co_await control_all(every, all(every.size(), "ROLLBACK"), errs);
  } else if (!readers.empty() &&
             (co_await control_all(readers, all(readers.size(), "COMMIT"), errs),
              first_failure(readers))) {
    // A shard that only read could not commit (a serialization failure): nothing is committed.
    detail = "the transaction was rolled back on every shard";
  } else if (writers.size() <= 1) {
    if (!writers.empty()) {
      co_await control_all(writers, all(1, "COMMIT"), errs);
      first_failure(writers);
    }
  } else if (!sh_.cfg.transactions.two_phase_commit) {
    // Best effort, as configured: each shard commits in turn; a failure leaves the earlier
    // ones committed (said in the error).
    std::string committed;
    for (size_t i = 0; i < writers.size(); ++i) {
      std::vector<BackendConn *> one(1, writers[i]);
      co_await control_all(one, all(1, failure.sqlstate.empty() ? "COMMIT" : "ROLLBACK"), errs);
      if (failure.sqlstate.empty() && !errs[0].sqlstate.empty()) {
        failure = errs[0];
        failed_on = writers[i]->node->shard_name;
      } else if (failure.sqlstate.empty()) {
        committed += (committed.empty() ? "" : ", ") + writers[i]->node->shard_name;
      }
    }
    if (!failure.sqlstate.empty())
      detail = committed.empty() ? "nothing was committed"
                                 : "[transactions] two_phase_commit is off: it was committed "
                                   "on " +
                                       committed + " and rolled back on the rest";
  } else if (!sh_.journal.load()) {
    failure = {"ERROR", "0A000",
               "a transaction that writes on more than one shard needs two-phase commit, which "
               "needs the metadata database ([metadata] enabled = false)",
               "",
               "enable [metadata], or set [transactions] two_phase_commit = false to commit "
               "each shard in turn (not atomic)"};
    co_await control_all(writers, all(writers.size(), "ROLLBACK"), errs);
    detail = "the transaction was rolled back on every shard";
  } else {
    std::string txid = executor::new_txid();
    std::vector<std::string> gids;
    for (size_t s : writer_shards)
      gids.push_back(executor::gid(txid, s));
    std::vector<std::string> sqls;
    for (auto &g : gids)
      sqls.push_back("PREPARE TRANSACTION " + quote(g));
    co_await control_all(writers, sqls, errs);
    std::vector<protocol::ErrorInfo> prepare_errs = errs;
    if (first_failure(writers)) {
      // Phase one failed: the prepared ones roll back (if this fails, recovery does it).
      std::vector<BackendConn *> undo;
      std::vector<std::string> undo_sql;
      for (size_t i = 0; i < writers.size(); ++i)
        if (prepare_errs[i].sqlstate.empty()) {
          undo.push_back(writers[i]);
          undo_sql.push_back("ROLLBACK PREPARED " + quote(gids[i]));
        }
      co_await control_all(undo, undo_sql, errs);
      detail = "the transaction was rolled back on every shard";
      stats.twophase_aborted.fetch_add(1, std::memory_order_relaxed);
    } else {
      crash_point("after_prepare");
      std::string why;
      executor::Outcome o = co_await await_decision(txid, why);
      if (o == executor::Outcome::committed)
        crash_point("after_decision");
      if (o == executor::Outcome::committed) {
        for (size_t i = 0; i < writers.size(); ++i)
          sqls[i] = "COMMIT PREPARED " + quote(gids[i]);
        co_await control_all(writers, sqls, errs);
        bool all_done = true;
        for (size_t i = 0; i < writers.size(); ++i)
          if (!errs[i].sqlstate.empty()) {
            all_done = false; // the decision stands: recovery commits it
            auto f = log_fields();
            f.insert(f.end(), {{"gid", gids[i]},
                               {"shard", writers[i]->node->shard_name},
                               {"error", errs[i].message}});
            log::warn("twophase_commit_prepared_failed", f);
          }
        if (all_done)
          sh_.journal.load()->forget(txid);
        stats.twophase_committed.fetch_add(1, std::memory_order_relaxed);
      } else if (o == executor::Outcome::aborted) {
        for (size_t i = 0; i < writers.size(); ++i)
          sqls[i] = "ROLLBACK PREPARED " + quote(gids[i]);
        co_await control_all(writers, sqls, errs);
        failure = {"ERROR", "40001", "could not commit a transaction across shards: " + why, "",
                   "retry the transaction"};
        detail = "the transaction was rolled back on every shard";
        stats.twophase_aborted.fetch_add(1, std::memory_order_relaxed);
      } else {
        failure = {"ERROR", "08006",
                   "the commit of a transaction across shards is in doubt: the metadata "
                   "database did not answer (" +
                       why + ")",
                   "",
                   "it is prepared on every shard; recovery commits or rolls it back as the "
                   "metadata database records, once it is reachable"};
        detail = "transaction " + txid;
        stats.twophase_in_doubt.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  // Whatever is still open (a shard that failed to commit or prepare) rolls back.
  std::vector<BackendConn *> open;
  for (size_t s = 0; s < attached_.size() && s < 64; ++s)
    if ((tx_shards_ & bit(s)) && attached_[s].conn && !attached_[s].conn->broken &&
        attached_[s].conn->tx_status != 'I')
      open.push_back(attached_[s].conn.get());
  if (!open.empty())
    co_await control_all(open, all(open.size(), "ROLLBACK"), errs);
  if (!mirror_only.empty())
    co_await mirror_end(mirror_only, commit && failure.sqlstate.empty());

  last_rollback_ = !commit || !failure.sqlstate.empty();
  if (failure.sqlstate.empty()) {
    protocol::command_complete(*sink_, commit ? "COMMIT" : "ROLLBACK");
  } else {
    if (!failed_on.empty())
      detail = "on shard \"" + failed_on + "\"" + (detail.empty() ? "" : "; " + detail);
    if (!failure.detail.empty())
      detail = failure.detail + (detail.empty() ? "" : " (" + detail + ")");
    error(failure.sqlstate, failure.message, failure.hint, detail);
  }
  apply_tx_end();
  detach_if_idle();
  ready();
}

} // namespace sg::proxy

namespace sg::proxy {

// A transaction of the proxy's own around a statement outside a transaction block, begun as a
// client's BEGIN would be (sent with the statement to each shard it reaches).
void Session::open_own_tx() {
  tx_settings_snapshot_ = settings_;
  tx_begin_ = "BEGIN";
  deferred_ = "BEGIN";
  tx_ = 'T';
}

// Commits (or rolls back) the transaction of ours around an extended-protocol request: the
// client hears the commit's error if any, then ReadyForQuery (idle), as after an implicit
// transaction.
Task<void> Session::end_own_tx(bool commit) {
  std::string end;
  sink_ = &end;
  co_await end_multi_tx(commit);
  sink_ = &out_;
  batch_tx_ = false;
  detail::append_frames_except(out_, end, 'C');
}

// The end of one statement that ran on several shards (scatter_write(), copy_in()). After a
// failure the client's transaction fails, or the statement's own rolls back on every shard
// (`undone` says so in the detail), and the client gets the error naming the shard. Without
// one, the statement's own transaction commits. True: the statement's result goes to the
// client now; false: the client has had its answer (the error, then ReadyForQuery).
Task<bool> Session::end_statement_across(bool implicit, const protocol::ErrorInfo &failure,
                                         const std::string &failed_on, const std::string &undone,
                                         bool ready_after) {
  if (!failure.sqlstate.empty()) {
    std::string detail =
        failed_on.empty() || failed_on == "-" ? std::string() : "on shard \"" + failed_on + "\"";
    if (implicit)
      detail += (detail.empty() ? "" : "; ") + undone;
    if (!failure.detail.empty())
      detail = failure.detail + (detail.empty() ? "" : " (" + detail + ")");
    if (implicit) {
      std::string discard;
      sink_ = &discard;
      co_await end_multi_tx(false);
      sink_ = &out_;
    } else {
      fail_transaction_by_proxy();
    }
    error(failure.sqlstate, failure.message, failure.hint, detail);
    if (ready_after)
      ready();
    co_return false;
  }
  if (implicit) {
    std::string end;
    sink_ = &end;
    co_await end_multi_tx(true);
    sink_ = &out_;
    if (!end.empty() && end[0] == 'E') { // the commit failed: nothing was applied
      out_ += end;
      co_return false;
    }
  }
  co_return true;
}

} // namespace sg::proxy

// Client session: its life (run), replies the proxy makes itself, moving between workers, and
// the simple-query loop. The other parts: session_startup.cpp, session_backends.cpp,
// session_state.cpp, session_mux.cpp and extended.cpp. See session.h.
#include "proxy/session.h"

#include "protocol/auth.h"
#include "proxy/errors.h"
#include "proxy/session_util.h"

#include <algorithm>
#include <boost/container/small_vector.hpp>
#include <functional>

namespace sg::proxy {

namespace {

constexpr size_t kMaxBatchMessages = 100000;
std::atomic<uint64_t> g_session_ids{1};

} // namespace

using detail::append_frame;
using detail::count_route;
using detail::kind_of;
using detail::synthetic_done;
using detail::trim;

Session::Session(Worker &w, Stream sock, std::string peer)
    : w_(&w), sh_(w.shared), sock_(std::move(sock)), cbuf_(16 * 1024), peer_(std::move(peer)) {
  attached_.resize(sh_.shard_count()); // grown by attach_now() for shards added later
  ryw_at_.assign(sh_.shard_count(), 0);
  session_mode_ = sh_.cfg.proxy.pool_mode == config::PoolMode::session;
  id_ = g_session_ids++;
}

Session::~Session() {
  detach_all();
  if (counted_)
    w_->stats.clients.fetch_sub(1, std::memory_order_relaxed);
  if (pid_)
    sh_.cancels.remove(pid_, key_);
  if (admitted_)
    sh_.release_client(user_);
}

log::Fields Session::log_fields() const {
  return {{"session", std::to_string(id_)}, {"client", peer_}, {"user", user_}};
}

Task<void> Session::run() {
  try {
    if (co_await startup())
      co_await query_loop();
  } catch (const std::exception &e) {
    auto f = log_fields();
    f.emplace_back("error", e.what());
    log::error("session_exception", f);
  }
  detach_all();
  sock_.close();
}

// ---------------------------------------------------------------- replies made by the proxy

namespace {
// Errors the proxy itself raises: class 08 (connection), 53 (resources), 57 (operator), XX are
// the proxy's or its backends' trouble; everything else answers something the client sent.
ErrorSource source_of(std::string_view sqlstate) {
  std::string_view c = sqlstate.substr(0, 2);
  if (c == "08" && sqlstate != "08P01")
    return ErrorSource::proxy;
  if (c == "53" || c == "57" || c == "XX")
    return ErrorSource::proxy;
  return ErrorSource::client;
}
} // namespace

void Session::error(const std::string &sqlstate, const std::string &msg, const std::string &hint,
                    const std::string &detail) {
  sh_.errors.count(source_of(sqlstate), sqlstate);
  protocol::ErrorInfo e;
  e.sqlstate = sqlstate;
  e.message = msg;
  e.hint = hint;
  e.detail = detail;
  protocol::error_response(*sink_, e);
}

void Session::ready() {
  if (app_check_) [[unlikely]]
    report_app(tx_, tx_);
  protocol::ready_for_query(*sink_, tx_);
}

// application_name as PostgreSQL reports it: at ReadyForQuery (with status `status`), when the
// session's value differs from the one reported last. A backend's own report reaches the client
// only when it tells it something new; the proxy reports what backends cannot: SETs that wait
// with a BEGIN, or a value a pooled backend reported to another client already. A failed
// transaction's value is the one it began with, and a failed implicit one takes back its SETs.
void Session::report_app(char status, char before) {
  app_check_ = false;
  const auto &began = settings_before_ ? *settings_before_ : settings_; // this request's start
  // (The proxy's own bookkeeping of a transaction's end comes after its ReadyForQuery.)
  const std::map<std::string, std::string> *now = &settings_;
  if (status == 'E')
    now = before == 'I' ? &began : &tx_settings_snapshot_;
  else if (status == 'I' && before != 'I' && last_rollback_)
    now = &tx_settings_snapshot_; // rolled back
  else if (status == 'I' && request_error_)
    now = &began; // a failed implicit transaction
  std::string v = app_value(*now);
  if (v != reported_app_) {
    protocol::parameter_status(*sink_, "application_name", v);
    reported_app_ = std::move(v);
  }
}

Task<bool> Session::flush() {
  if (out_.empty())
    co_return true;
  ErrorCode ec;
  std::string_view rest = out_;
  if (!send_now(sock_, rest, ec))
    co_await write_all(sock_, rest, ec);
  out_.clear();
  if (ec)
    closing_ = true; // the client is gone: nothing more is said, and no backend is to blame
  co_return !ec;
}

// Sends a FATAL error and ends the session.
Task<bool> Session::fatal(const std::string &sqlstate, const std::string &msg,
                          const std::string &hint) {
  if (closing_)
    co_return false; // one FATAL per session
  closing_ = true;
  sh_.errors.count(source_of(sqlstate), sqlstate);
  protocol::ErrorInfo e;
  e.severity = "FATAL";
  e.sqlstate = sqlstate;
  e.message = msg;
  e.hint = hint;
  protocol::error_response(out_, e);
  co_await flush();
  auto f = log_fields();
  f.emplace_back("sqlstate", sqlstate);
  f.emplace_back("error", msg);
  log::info("client_rejected", f);
  co_return false;
}

// ---------------------------------------------------------------- query loop

bool Session::movable() const {
  return !session_mode_ && !in_tx() && attached_count_ == 0 && batch_.empty() && exp_.empty() &&
         out_.empty() && deferred_.empty() && batch_shard_ < 0 && tx_shard_ < 0 && !closing_;
}

namespace {
// Suspends the session's stack and resumes it on worker `to`, after `arrive` has run there.
struct Hop {
  Worker *to;
  std::function<void()> arrive;
  asio::detail::awaitable_thread<Executor> *
  operator()(asio::detail::awaitable_frame_base<Executor> *frame) {
    Parked t(frame->detach_thread());
    t.rebind(to->io.get_executor());
    asio::post(to->io, [t = std::move(t), arrive = std::move(arrive)]() mutable {
      arrive();
      t.resume();
    });
    return nullptr;
  }
};
} // namespace

Task<void> Session::move() {
  Worker &from = *w_;
  int want = from.move_out.load(std::memory_order_relaxed);
  Worker *to_w = from.move_to.load(std::memory_order_relaxed);
  if (want <= 0 || !to_w || to_w == &from)
    co_return;
  from.move_out.store(want - 1, std::memory_order_relaxed); // only this thread lowers it
  Worker &to = *to_w;
  int fd = sock_.release(); // out of this worker's set; the other one adds it
  if (counted_)
    from.stats.clients.fetch_sub(1, std::memory_order_relaxed);
  to.sessions.fetch_add(1, std::memory_order_relaxed);
  from.sessions.fetch_sub(1, std::memory_order_relaxed);
  w_ = &to;
  co_await Hop{&to, [this, fd] { arrive(fd); }};
}

// On the new worker's thread, before the session's stack resumes there.
void Session::arrive(int fd) {
  if (fd >= 0) {
    ErrorCode ec;
    uint32_t id = w_->poller.add(fd, ec); // closes fd on failure: the next read ends the session
    if (!ec)
      sock_ = Stream(w_->poller, id);
  }
  if (counted_)
    w_->stats.clients.fetch_add(1, std::memory_order_relaxed);
  w_->stats.moves_in.fetch_add(1, std::memory_order_relaxed);
  // Backend-side names are interned per worker: take this worker's for each named statement.
  for (auto &[name, st] : stmts_)
    if (st->id)
      st->set_id(w_->intern_statement(stmt_key(st->text, st->types)));
}

Task<void> Session::query_loop() {
  for (;;) {
    auto f = protocol::decode_frame(cbuf_.data(), cbuf_.size(), sh_.cfg.proxy.max_message_bytes);
    if (f.status == protocol::DecodeStatus::need_more) {
      if (!out_.empty()) { // inline flush: this is the per-query path
        ErrorCode ec;
        std::string_view rest = out_;
        if (!send_now(sock_, rest, ec))
          co_await write_all(sock_, rest, ec);
        out_.clear();
        if (ec)
          co_return;
      }
      size_t avail = 0;
      uint8_t *p = cbuf_.prepare(read_size(f.frame_len, cbuf_.size()), avail);
      ErrorCode ec;
      size_t n = sock_.try_read(p, avail, ec);
      while (n == 0 && !ec) { // as in relay(): the wait inline
        co_await sock_.wait(Poller::in);
        n = sock_.try_read(p, avail, ec);
      }
      if (ec)
        co_return;
      cbuf_.commit(n);
      continue;
    }
    if (f.status == protocol::DecodeStatus::error) {
      co_await fatal("08P01", std::string("invalid frontend message: ") + f.error,
                     "max_message_bytes in [proxy] caps a single message");
      co_return;
    }
    if (w_->move_out.load(std::memory_order_relaxed) > 0 && movable()) [[unlikely]]
      co_await move(); // the message waits in cbuf_, which comes along
    // The per-query paths: a simple Query (route_query) and a prepared statement's
    // Bind/[Describe]/Execute/Sync (fast_batch) are attached, sent and relayed here, at no
    // coroutine frame per query.
    QueryRun q;
    FastBatch fb;
    bool batch = f.type == 'B' && fast_batch(fb, q);
    if (fb.hold) [[unlikely]] {
      co_await hold_a_moment();
      continue; // the batch is still in cbuf_: routed again
    }
    hold_since_ = {};
    if ((f.type == 'Q' || batch) && rate_) [[unlikely]] {
      if (!co_await throttle(1)) {
        cbuf_.consume(batch ? fb.len : f.frame_len);
        over_rate(true);
        continue;
      }
    }
    if (f.type == 'Q' || batch) {
      if (batch) {
        count_route(w_->stats, fb.route, *fb.sp);
      } else { // the text goes to a buffer that keeps its room
        std::string_view body = f.body_view();
        if (body.empty() || body.back() != '\0') {
          co_await fatal("08P01", "invalid Query message: missing terminator");
          co_return;
        }
        query_.assign(body.data(), body.size() - 1);
        cbuf_.consume(f.frame_len);
        QueryStep step = route_query(query_, q);
        while (step == QueryStep::hold || step == QueryStep::learn_key)
          [[unlikely]] {
            if (step == QueryStep::hold)
              co_await hold_a_moment();
            else if (!co_await learn_key_position(learn_table_))
              break; // answered with its error
            step = route_query(query_, q);
          }
        if (step == QueryStep::learn_key)
          continue;
        hold_since_ = {};
        if (step == QueryStep::end_multi) {
          co_await end_multi_tx(multi_commit_);
          continue;
        }
        if (step == QueryStep::end_failed_tx) {
          co_await end_failed_tx();
          synthetic_done(*sink_, "ROLLBACK");
          ready();
          continue;
        }
        if (step == QueryStep::broadcast) {
          if (!co_await broadcast(query_))
            co_return;
          continue;
        }
        if (step == QueryStep::copy_in) {
          if (!co_await copy_in(query_))
            co_return;
          continue;
        }
        if (step == QueryStep::mirrored_write) {
          if (!co_await mirrored_write(query_, size_t(q.shard)))
            co_return;
          continue;
        }
        if (step == QueryStep::scatter_write) {
          if (!co_await scatter_write(query_plan_, query_))
            co_return;
          continue;
        }
        if (step == QueryStep::scatter) {
          if (!co_await scatter_read(query_plan_, query_))
            co_return;
          continue;
        }
        if (step == QueryStep::answered)
          continue;
        if (step == QueryStep::next_id) [[unlikely]] {
          co_await answer_next_id(query_plan_.analysis->stmts[0].next_id);
          continue;
        }
        if (step == QueryStep::side) {
          if (!co_await side_query())
            co_return;
          continue;
        }
        q.deferred_before = deferred_;
      }
      q.started = w_->poller.now(); // this loop turn's time: see record_query
      q.tx_before = tx_;
      size_t exclude = SIZE_MAX;    // a node that just failed this read
      std::optional<size_t> chosen; // the node picked for it already
      bool shareable = !std::exchange(mux_retry_, false) &&
                       (batch ? pipelinable(q, *fb.sp, fb.st->id != 0)
                              : pipelinable(q, query_plan_.analysis->stmts[0],
                                            query_plan_.analysis->stmts.size() == 1));
      if (shareable) {
        std::optional<size_t> node = choose_node(size_t(q.shard), true, SIZE_MAX);
        if (!node) {
          if (batch)
            cbuf_.consume(fb.len);
          ready();
          continue;
        }
        chosen = node;                      // (a second choice would count a fallback twice)
        if (MuxLane *m = mux_join(*node)) { // see mux.h
          chosen.reset();
          BackendConn *b = m->conn.get();
          if (batch)
            fast_batch_write(fb, *b, false); // cbuf_ keeps the batch until it is answered
          else
            write_query(*b, query_);
          if (!m->queue.empty()) // it goes behind other clients' reads
            w_->stats.pipelined.fetch_add(1, std::memory_order_relaxed);
          bool lost = false;
          m->queue.emplace_back().lost = &lost;
          ErrorCode ec;
          std::string_view rest = wbuf_;
          if (!send_now(b->sock, rest, ec) && !ec) {
            m->writing = true; // nobody joins (or writes) until this query is all out
            co_await write_all(b->sock, rest, ec);
            m->writing = false;
            if (lost && m->queue.empty()) // it broke meanwhile: the connection waited for us
              mux_release(*m);
          }
          if (ec && !lost)
            send_failed(*b); // the front, or this read at its turn, finds the lane broken
          if (!lost && m->queue.front().lost != &lost)
            co_await Poller::hold(m->queue.back().turn); // until the ones in front are done
          if (!lost) {
            if (cancel_)
              cancel_->set(b->node, b->pid, b->key);
            RelayStep st = b->broken ? RelayStep::failed : relay_start(*b); // as below
            while (relay_poll(*b, st))
              co_await b->sock.wait(Poller::in); // as a statement: see read_some in poller.h
            bool ok =
                st == RelayStep::done || (st != RelayStep::failed && co_await relay_more(*b, st));
            if (cancel_)
              cancel_->clear();
            if (ok) {
              if (batch) {
                cbuf_.consume(fb.len);
                fast_batch_done(fb, q, *b);
              } else {
                query_done(q, *b);
              }
              mux_leave(*m, false);
              continue;
            }
            size_t failed_node = b->node->id;
            if (forwarded_any_)
              sh_.health.report_failure(failed_node, now_ms());
            mux_leave(*m, true); // b is gone
            if (closing_)
              co_return;
            if (forwarded_any_) {
              co_await fatal("08006", "lost the connection to shard \"" +
                                          sh_.shard_name(size_t(q.shard)) +
                                          "\" in the middle of a result");
              co_return;
            }
            exclude = failed_node;
          }
          exp_.clear(); // nothing reached the client: the read runs once more, unshared
          if (batch) {
            mux_retry_ = true; // its messages are still in cbuf_: served again from the top
            continue;
          }
          if (exclude == SIZE_MAX)
            exclude = *node;
        }
      }
      std::optional<size_t> slow;
      BackendConn *b = attach_now(size_t(q.shard), q.read, exclude, slow, chosen);
      if (!b && slow)
        b = co_await attach_slow(size_t(q.shard), *slow);
      if (!b) {
        if (batch)
          cbuf_.consume(fb.len);
        if (in_tx())
          fail_transaction_by_proxy();
        ready();
        continue;
      }
      if (batch)
        fast_batch_write(fb, *b);
      else
        write_query(*b, query_);
      ErrorCode ec;
      std::string_view rest = wbuf_;
      if (!send_now(b->sock, rest, ec))
        co_await write_all(b->sock, rest, ec);
      RelayStep st = ec ? send_failed(*b) : relay_start(*b); // relay(), inline
      while (relay_poll(*b, st))
        co_await b->sock.wait(Poller::in); // as a statement: see read_some in poller.h
      bool ok = st == RelayStep::done || (st != RelayStep::failed && co_await relay_more(*b, st));
      if (ok && batch)
        fast_batch_done(fb, q, *b);
      else if (ok)
        query_done(q, *b);
      else if (batch && !co_await batch_lost(*b, q.shard, true))
        co_return;
      else if (!batch && !co_await query_failed(q, b))
        co_return;
      continue;
    }
    Msg m{f.type, {}};
    if (!spare_bodies_.empty()) { // a Bind's body outgrows a string's inline room: reuse one
      m.body = std::move(spare_bodies_.back());
      spare_bodies_.pop_back();
    }
    m.body.assign(f.body_view());
    cbuf_.consume(f.frame_len);
    bool ok = true;
    switch (m.type) {
    case 'P':
    case 'B':
    case 'D':
    case 'E':
    case 'C':
    case 'H':
    case 'S':
      if (skip_until_sync_ && m.type != 'S')
        break;
      if (batch_.size() >= kMaxBatchMessages) {
        co_await fatal("54000", "too many extended-protocol messages without Sync");
        co_return;
      }
      batch_.push_back(std::move(m));
      if (batch_.back().type == 'S' || batch_.back().type == 'H') {
        skip_until_sync_ = false;
        if (rate_) [[unlikely]] {
          auto n = uint32_t(std::count_if(batch_.begin(), batch_.end(),
                                          [](const Msg &x) { return x.type == 'E'; }));
          if (n && !co_await throttle(n)) { // the batch is dropped, as after an error at its start
            bool sync = batch_.back().type == 'S';
            batch_.clear();
            over_rate(sync);
            break;
          }
        }
        ok = co_await on_batch();
      }
      break;
    case 'X':
      co_return;
    case 'F':
      ok = co_await on_function_call(std::move(m));
      break;
    case 'd':
    case 'c':
    case 'f':
      break; // outside COPY these are ignored, as PostgreSQL does
    default:
      co_await fatal("08P01",
                     "invalid frontend message type " + std::to_string(int(uint8_t(m.type))));
      co_return;
    }
    if (!ok)
      co_return;
  }
}

// Query text for the backend, after what the session's state needs first.
void Session::write_query(BackendConn &b, const std::string &sql) {
  wbuf_.clear();
  prepare_backend(b, wbuf_);
  if (!guard_.empty()) [[unlikely]] { // INSERT without a column list: see key_guard()
    protocol::query(wbuf_, guard_ + sql);
    exp_.emplace_back(Expect::query, true);
    exp_.back().skip_done = 1;
    guard_.clear();
  } else {
    protocol::Writer(wbuf_, 'Q').cstr(sql).finish(); // protocol::query(), inline: per query
    exp_.emplace_back(Expect::query, true);
  }
  b.unnamed_owner = 0;
}

// The backend serving query_loop()'s attempt at q broke. A read whose answer had not started
// runs once more on another eligible node; otherwise the client hears what happened.
Task<bool> Session::query_failed(QueryRun &q, BackendConn *b) {
  const std::string &shard_name = sh_.shard_name(size_t(q.shard));
  for (int attempt = 0;; ++attempt) {
    if (closing_ || !b->broken)
      co_return false; // client went away, or the session already ended with a FATAL
    // A pooled connection that died before answering (terminated or restarted server) says
    // nothing about the node; a failure mid-response does.
    if (forwarded_any_)
      sh_.health.report_failure(b->node->id, now_ms());
    bool was_tx = q.tx_before != 'I' && q.deferred_before.empty();
    std::string node_label = b->node->endpoint.label(); // b is gone after detach_if_idle()
    if (q.read && attempt == 0 && !forwarded_any_ && !was_tx) {
      // Nothing reached the client: the read runs once more on another eligible node.
      size_t failed_node = b->node->id;
      deferred_ = q.deferred_before;
      tx_ = q.tx_before;
      detach_if_idle();
      b = co_await attach(size_t(q.shard), q.read, failed_node);
      if (!b) {
        if (in_tx())
          fail_transaction_by_proxy();
        ready();
        co_return true;
      }
      write_query(*b, query_);
      ErrorCode ec;
      co_await write_all(b->sock, wbuf_, ec);
      if (ec)
        send_failed(*b);
      else if (co_await relay(*b)) {
        query_done(q, *b);
        co_return true;
      }
      continue;
    }
    detach_if_idle();
    if (was_tx || forwarded_any_)
      co_return co_await fatal("08006",
                               "lost the connection to shard \"" + shard_name +
                                   (was_tx ? "\" inside a transaction; the transaction is lost"
                                           : "\" in the middle of a result"));
    error("08006",
          "lost the connection to shard \"" + shard_name + "\" (" + node_label +
              ") while running the statement",
          q.read ? "the read was retried once on another node and failed again"
                 : "the statement may or may not have run; writes are never retried blindly");
    tx_ = q.tx_before; // a deferred transaction never reached a server: it fails as a whole
    if (tx_ != 'I')
      fail_transaction_by_proxy();
    ready();
    co_return true;
  }
}

// q ran on b: counters, and the session state its statements changed.
void Session::query_done(const QueryRun &q, BackendConn &b) {
  const std::string &sql = query_;
  const auto &stmts = query_plan_.analysis->stmts;
  auto text_of = [&](const router::StatementPlan &p) {
    return trim(std::string_view(sql).substr(p.location, p.length));
  };
  if (!q.all_read)
    note_write(size_t(q.shard));
  record_query(size_t(q.shard), b, kind_of(stmts), q.started, query_plan_.scan.normalized);
  // Session settings changed by this query string take effect only if it succeeded.
  // (prepare_backend() made the backend's settings the session's, so only a SET or RESET ALL
  // here changes them.)
  if (last_sqlstate_.empty())
    for (const auto &st : stmts)
      if (st.kind == router::StmtKind::set || st.kind == router::StmtKind::reset_all)
        settings_ran(b, st, text_of(st));
  settle_tx(q.shard, q.tx_before);
}

// COMMIT or ROLLBACK of a transaction the proxy failed: the backend holding it, if any, rolls
// back, and the client is told ROLLBACK (as PostgreSQL answers COMMIT in a failed transaction).
Task<void> Session::end_failed_tx() {
  last_rollback_ = true;
  for (size_t s = 0; s < attached_.size(); ++s) { // every shard the transaction holds
    if (!attached_[s].conn || (int(s) != tx_shard_ && !(s < 64 && (tx_shards_ >> s) & 1)))
      continue;
    BackendConn &b = *attached_[s].conn;
    wbuf_.clear();
    protocol::query(wbuf_, "ROLLBACK");
    exp_.emplace_back(Expect::query, false);
    b.unnamed_owner = 0;
    ErrorCode ec;
    co_await write_all(b.sock, wbuf_, ec);
    if (ec || !co_await relay(b))
      b.broken = true;
  }
  apply_tx_end();
  detach_if_idle();
}

// DDL on a sharded table, sent as a simple query: the client sees one result, or an error
// naming each shard that failed.
Task<bool> Session::broadcast(const std::string &sql) {
  sh_.router.forget_key_positions(); // a column may move (INSERT without a column list)
  std::string first, tag;
  if (co_await run_on_all_primaries(sql, first, tag))
    out_ += first;
  else
    ready();
  co_return true;
}

// Runs one DDL statement on every shard's primary, as a simple query. True when every shard
// applied it (`first_capture` then holds the first shard's answer, through ReadyForQuery, and
// `tag` its command tag); otherwise an ErrorResponse naming each shard that failed, and where it
// was applied, is in out_.
Task<BackendConn *> Session::query_captured(size_t shard, const std::string &sql,
                                            std::string &capture, bool &ok) {
  sink_ = &capture;
  BackendConn *b = co_await attach(shard, false);
  ok = false;
  if (b) {
    write_query(*b, sql);
    ErrorCode ec;
    co_await write_all(b->sock, wbuf_, ec);
    ok = !ec && co_await relay(*b);
    if (!ok)
      b->broken = true;
  } else {
    guard_.clear(); // (it was for this statement)
  }
  sink_ = &out_;
  co_return b;
}

Task<bool> Session::run_on_all_primaries(const std::string &sql, std::string &first_capture,
                                         std::string &tag) {
  std::vector<std::string> failed, applied;
  protocol::ErrorInfo first_error;
  std::vector<size_t> shards; // every shard of this epoch (DDL waits while a migration runs)
  {
    const Placement &place = w_->place();
    for (size_t s = 0; s < place.primary.size(); ++s)
      if (place.serves(s))
        shards.push_back(s);
  }
  for (size_t s : shards) {
    const std::string &name = sh_.shard_name(s);
    std::string capture;
    bool ok = false;
    co_await query_captured(s, sql, capture, ok);
    detach_if_idle();
    // Find an ErrorResponse in what this shard answered.
    protocol::ErrorInfo err;
    bool has_error = !ok;
    if (!ok)
      err = {"ERROR", "08006", "shard unreachable or connection lost", "", ""};
    std::string shard_tag;
    for (size_t pos = 0; pos < capture.size();) {
      auto f = protocol::decode_frame(reinterpret_cast<const uint8_t *>(capture.data()) + pos,
                                      capture.size() - pos, 1u << 30);
      if (f.status != protocol::DecodeStatus::ready)
        break;
      std::string_view body = f.body_view();
      if (f.type == 'E' && !has_error) {
        err = protocol::parse_error_response(body);
        has_error = true;
      } else if (f.type == 'C' && !body.empty()) {
        shard_tag.assign(body.data(), body.size() - 1);
      }
      pos += f.frame_len;
    }
    if (has_error) {
      if (failed.empty())
        first_error = err;
      failed.push_back(name + ": " + err.message);
    } else {
      applied.push_back(name);
      if (first_capture.empty()) {
        first_capture = std::move(capture);
        tag = std::move(shard_tag);
      }
    }
  }
  tx_ = 'I';
  if (!failed.empty()) {
    std::string list, ok_list;
    for (auto &f : failed)
      list += (list.empty() ? "" : "; ") + f;
    for (auto &a : applied)
      ok_list += (ok_list.empty() ? "" : ", ") + a;
    error(first_error.sqlstate.empty() ? "XX000" : first_error.sqlstate,
          "DDL failed on " + std::to_string(failed.size()) + " of " +
              std::to_string(shards.size()) + " shards: " + list,
          applied.empty() ? "nothing was changed on any shard"
                          : "it was applied on: " + ok_list +
                                "; fix the cause and re-run it (e.g. with IF [NOT] EXISTS)");
    co_return false;
  }
  co_return true;
}

Task<bool> Session::on_function_call(Msg m) {
  size_t shard = tx_shard_ >= 0 ? size_t(tx_shard_) : w_->place().keys->default_shard;
  BackendConn *b = co_await attach(shard, false);
  if (!b) {
    ready();
    co_return true;
  }
  wbuf_.clear();
  prepare_backend(*b, wbuf_);
  append_frame(wbuf_, 'F', m.body);
  exp_.emplace_back(Expect::sync, true);
  ErrorCode ec;
  co_await write_all(b->sock, wbuf_, ec);
  if (ec || !co_await relay(*b)) {
    if (closing_ || !b->broken)
      co_return false;
    detach_if_idle();
    error("08006", "lost the connection to the backend during a function call");
    ready();
    co_return true;
  }
  if (tx_ == 'I')
    apply_tx_end();
  else
    tx_shard_ = int(shard);
  detach_if_idle();
  co_return true;
}

} // namespace sg::proxy

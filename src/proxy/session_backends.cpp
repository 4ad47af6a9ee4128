// Client session, part: backends (choosing a node, pools, attaching and releasing), preparing
// a backend for the session (settings, statements) and relaying its replies. See session.h.
#include "proxy/session.h"

#include "proxy/errors.h"
#include "proxy/session_util.h"

#include <algorithm>
#include <boost/container/small_vector.hpp>

namespace sg::proxy {

// ---------------------------------------------------------------- backends

// Picks the node for a statement and attaches one of its pooled connections. Reads go
// round-robin over replicas that are serving (lag gate), not banned (breaker) and, after this
// session wrote to the shard, past that write (read-your-writes); else to the primary, counted.
Task<BackendConn *> Session::attach(size_t shard, bool read, size_t exclude_node) {
  std::optional<size_t> slow;
  BackendConn *b = attach_now(shard, read, exclude_node, slow);
  if (!b && slow)
    b = co_await attach_slow(shard, *slow);
  co_return b;
}

// Without suspending: the attached connection or an idle pooled one. Otherwise nullptr, with
// slow_node set to the node attach_slow() must wait for or connect to (unset: error sent).
BackendConn *Session::attach_now(size_t shard, bool read, size_t exclude_node,
                                 std::optional<size_t> &slow_node, std::optional<size_t> chosen) {
  slow_node.reset();
  if (shard >= attached_.size()) [[unlikely]] // a shard added since the session began
    attached_.resize(shard + 1);
  if (attached_[shard].conn)
    return attached_[shard].conn.get();
  auto node = chosen ? chosen : choose_node(shard, read, exclude_node);
  if (!node)
    return nullptr;
  Pool *pool = w_->pool(*node);
  if (auto conn = pool->try_acquire()) {
    sh_.health.report_success(*node);
    return adopt(shard, pool, std::move(conn));
  }
  slow_node = node;
  return nullptr;
}

// The node a statement goes to, or nullopt (with the error sent) when the primary is banned.
std::optional<size_t> Session::choose_node(size_t shard, bool read, size_t exclude_node) {
  HealthBoard &board = sh_.health;
  const Placement &place = w_->place();
  if (!place.serves(shard)) [[unlikely]] { // left the topology since the statement was routed
    unreachable(shard, "40001",
                "it has left the topology (epoch " + std::to_string(place.epoch) +
                    "); retry the transaction");
    return std::nullopt;
  }
  if (shard >= ryw_at_.size()) [[unlikely]] // a shard added since the session began
    ryw_at_.resize(shard + 1, 0);
  const auto &replicas = place.replicas[shard];
  size_t primary = place.primary[shard];
  if (read && !session_mode_) {
    FallbackReason reason = FallbackReason::no_replicas;
    if (!replicas.empty()) {
      bool saw_ryw = false, saw_lag = false;
      Millis ryw = board.policy().read_your_writes ? ryw_at_[shard] : 0;
      uint32_t &rr = w_->replica_rr[shard];
      for (size_t i = 0; i < replicas.size(); ++i) {
        size_t idx = (rr + i) % replicas.size();
        size_t cand = replicas[idx];
        if (cand == exclude_node)
          continue;
        NodeHealth &h = board.node(cand);
        if (!h.serving.load(std::memory_order_relaxed)) {
          saw_lag |= h.up.load(std::memory_order_relaxed);
          continue;
        }
        if (ryw && h.caught_up_at.load(std::memory_order_relaxed) <= ryw) {
          saw_ryw = true;
          continue;
        }
        if (!board.allowed(cand))
          continue;
        rr = uint32_t(idx + 1);
        return cand;
      }
      reason = saw_ryw   ? FallbackReason::read_your_writes
               : saw_lag ? FallbackReason::lag
                         : FallbackReason::down;
    }
    board.count_fallback(shard, reason, sh_.shard_name(shard));
  }
  if (!board.allowed(primary)) {
    // The primary is never silently replaced: fail fast while its breaker is open.
    Millis now = now_ms();
    unreachable(shard, "08006",
                "its primary " + sh_.node(primary).endpoint.label() +
                    " is down (repeated failures; next try in " +
                    std::to_string(std::max<Millis>(0, board.node(primary).banned_until - now)) +
                    " ms)");
    return std::nullopt;
  }
  return primary;
}

BackendConn *Session::adopt(size_t shard, Pool *pool, std::unique_ptr<BackendConn> conn) {
  Attached &a = attached_[shard];
  a.conn = std::move(conn);
  a.pool = pool;
  if (attached_count_++ == 0)
    w_->stats.clients_active.fetch_add(1, std::memory_order_relaxed);
  if (cancel_)
    cancel_->set(a.conn->node, a.conn->pid, a.conn->key);
  return a.conn.get();
}

// Waits for a pooled connection or opens one; a replica that cannot be reached sends the read
// to the primary instead (counted), a primary that cannot be reached is an error.
Task<BackendConn *> Session::attach_slow(size_t shard, size_t node) {
  HealthBoard &board = sh_.health;
  size_t primary = w_->place().primary[shard];
  ConnectError err;
  Pool *pool = w_->pool(node);
  auto waited_from = std::chrono::steady_clock::now();
  w_->stats.clients_waiting.fetch_add(1, std::memory_order_relaxed);
  auto conn = co_await pool->acquire(err);
  w_->stats.clients_waiting.fetch_sub(1, std::memory_order_relaxed);
  w_->stats.pool_waits[shard * 2 + (node == primary ? 0 : 1)].observe(
      uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::steady_clock::now() - waited_from)
                   .count()));
  // Only failing to reach the node counts against it: a full pool or a login the server
  // refused (configuration) says nothing about its health.
  auto node_failed = [&] {
    return err.ec == proxy::make_error_code(errc::backend_refused) ||
           err.ec == proxy::make_error_code(errc::connect_timeout) ||
           err.ec == proxy::make_error_code(errc::backend_closed);
  };
  if (!conn) {
    if (node_failed())
      board.report_failure(node, now_ms());
    if (node != primary) {
      board.count_fallback(shard, FallbackReason::down, sh_.shard_name(shard));
      node = primary;
      if (board.allowed(primary, now_ms())) {
        pool = w_->pool(node);
        conn = co_await pool->acquire(err);
        if (!conn && node_failed())
          board.report_failure(node, now_ms());
      }
    }
  }
  if (!conn) {
    unreachable(shard, err.sqlstate.empty() ? "08006" : err.sqlstate, err.message);
    co_return nullptr;
  }
  board.report_success(node);
  BackendConn *b = adopt(shard, pool, std::move(conn));
  const Placement &now = w_->place();
  if (node == primary && routed_epoch_ != 0 && now.epoch != routed_epoch_ &&
      (routed_in_migration_ || !now.keys->migration.empty())) [[unlikely]] {
    // Routed before a migration's epoch changed and sent only now: the key may have another
    // owner (or be paused for a cutover) by now. Nothing ran: the client retries.
    release(attached_[shard]);
    unreachable(shard, "40001",
                "a migration changed the topology (epoch " + std::to_string(routed_epoch_) +
                    " to " + std::to_string(now.epoch) +
                    ") while the statement waited for a connection; retry it");
    co_return nullptr;
  }
  co_return b;
}

void Session::unreachable(size_t shard, const std::string &sqlstate, const std::string &msg) {
  const std::string &shard_name = sh_.shard_name(shard);
  error(sqlstate, "cannot reach shard \"" + shard_name + "\": " + msg,
        "check that the shard's server is running; the proxy retries with backoff and bans a "
        "failing node for a while");
  auto f = log_fields();
  f.emplace_back("shard", shard_name);
  f.emplace_back("error", msg);
  log::warn("backend_unreachable", f);
}

// One statement (or batch) done on a backend: counters, latency, and the slow-query log, which
// carries the statement's shape (literals taken out), never its values.
void Session::record_query(size_t shard, const BackendConn &b, QueryKind kind,
                           std::chrono::steady_clock::time_point start, std::string_view shape) {
  int role = b.node->role == Role::primary ? 0 : 1;
  // Both ends are loop-turn times (Poller::now), so a latency is exact to within the work of a
  // turn (microseconds), at one clock read per turn rather than two per statement.
  auto ns = uint64_t(
      std::chrono::duration_cast<std::chrono::nanoseconds>(w_->poller.now() - start).count());
  w_->stats.count_query(shard, role, kind);
  w_->stats.durations[shard * 2 + size_t(role)].observe(ns);
  uint32_t slow = sh_.slow_query_ms.load(std::memory_order_relaxed);
  if (slow && ns >= uint64_t(slow) * 1000000) {
    auto f = log_fields();
    f.insert(f.end(), {{"shard", b.node->shard_name},
                       {"node", b.node->endpoint.label()},
                       {"role", to_string(b.node->role)},
                       {"duration_ms", std::to_string(ns / 1000000)},
                       {"sqlstate", last_sqlstate_},
                       {"statement", std::string(shape.substr(0, 300))}});
    log::warn("slow_query", f);
  }
}

// A write reached shard's primary: reads of that shard must see it (read-your-writes) once
// committed; an open transaction stamps at its end.
void Session::note_write(size_t shard) {
  if (tx_ == 'I') {
    ryw_at_[shard] = now_ms();
  } else {
    tx_wrote_ = true;
    if (shard < 64)
      tx_writers_ |= uint64_t(1) << shard;
  }
}

void Session::release(Attached &a) {
  if (!w_->stopping)
    a.pool->release(std::move(a.conn));
  a.conn.reset();
  a.pool = nullptr;
  if (--attached_count_ == 0)
    w_->stats.clients_active.fetch_sub(1, std::memory_order_relaxed);
}

void Session::detach_if_idle() {
  for (size_t i = 0; i < attached_.size(); ++i) {
    Attached &a = attached_[i];
    if (!a.conn || int(i) == batch_shard_)
      continue;
    bool keep = session_mode_ ? !a.conn->broken : (a.conn->tx_status != 'I' && !a.conn->broken);
    if (keep)
      continue;
    release(a);
    if (cancel_)
      cancel_->clear();
  }
}

void Session::detach_all() {
  for (auto &a : attached_)
    if (a.conn)
      release(a); // at shutdown the pools are gone: release() just drops the connection
}

// Settings and deferred transaction statements travel in front of the client's messages.
//
// While a transaction waits for its first statement, the SETs inside it are in settings_ and
// in deferred_: the backend first gets the settings the transaction began with, then deferred_
// inside the transaction, so that a rollback takes them back on the server too. keep_deferred:
// a copy of the waiting transaction (a side connection), deferred_ stays.
// `implicit`: the implicit transaction's waiting SETs (implicit_local_) follow inside it, so
// the backend starts from the settings before them and holds the session's after them (a
// failure takes them back on both: restore_settings).
void Session::prepare_backend(BackendConn &b, std::string &out, bool with_deferred,
                              bool keep_deferred, bool implicit) {
  bool send_deferred = with_deferred && !deferred_.empty();
  const auto &base = send_deferred && in_tx()       ? tx_settings_snapshot_
                     : implicit && settings_before_ ? *settings_before_
                                                    : settings_;
  uint64_t base_hash = &base == &settings_ ? settings_hash_ : hash_settings(base);
  if (b.settings_hash != base_hash) {
    std::string q;
    bool reset = std::any_of(b.settings.begin(), b.settings.end(),
                             [&](auto &kv) { return !base.count(kv.first); });
    if (reset) {
      q = "RESET ALL;";
      b.epoch_tag = 0;
    }
    for (auto &[k, v] : base) {
      auto it = b.settings.find(k);
      if (reset || it == b.settings.end() || it->second != v)
        q += v + ";";
    }
    if (!q.empty()) {
      protocol::query(out, q);
      exp_.emplace_back(Expect::query, false);
      b.unnamed_owner = 0; // a simple Query drops the unnamed statement
    }
    b.settings = base;
    b.settings_hash = base_hash;
  }
  if (implicit && &base != &settings_) {
    b.settings = settings_;
    b.settings_hash = settings_hash_;
  }
  if (routed_in_migration_ && b.node->role == Role::primary) [[unlikely]]
    tag_epoch(b, out);
  if (send_deferred) {
    protocol::query(out, deferred_);
    exp_.emplace_back(Expect::query, false);
    b.unnamed_owner = 0;
    b.settings = settings_;
    b.settings_hash = settings_hash_;
    if (!keep_deferred) {
      deferred_.clear();
    }
  }
}

// While a migration runs, the server refuses a write that a proxy routed before the cutover
// that moved keys off it (its capture trigger compares `shardgate.epoch` with the fence the
// runner sets; migrations/README.md): so b carries the epoch this statement was routed on.
// Set outside a transaction, it stays (cached in b.epoch_tag); set inside one, where a
// rollback would take it back, it is sent again with each statement. Not in the middle of an
// extended-protocol pipeline (a simple Query would commit its implicit transaction early):
// the older tag stays, which can only make the server refuse a write, never accept one.
void Session::tag_epoch(BackendConn &b, std::string &out) {
  if (b.epoch_tag == routed_epoch_ || b.unsynced)
    return;
  protocol::query(out, "SET shardgate.epoch = '" + std::to_string(routed_epoch_) + "'");
  exp_.emplace_back(Expect::query, false);
  b.unnamed_owner = 0; // a simple Query drops the unnamed statement
  b.epoch_tag = b.tx_status == 'I' ? routed_epoch_ : 0;
}

// The client's statement, on b under its backend-side name, before a Bind or Describe of it:
// prepared there first (its success swallowed) when b lacks it.
void Session::ensure_prepared(BackendConn &b, const ClientStmt &st, std::string &out) {
  if (st.id == 0 ? b.unnamed_owner == st.unnamed_tag : b.prepared.count(st.id) > 0)
    return; // the per-query case
  Pending p(Expect::one, false);
  if (st.id == 0) {
    protocol::parse(out, "", st.text, st.types);
    b.unnamed_owner = st.unnamed_tag;
    p.parse_unnamed = true;
  } else {
    protocol::parse(out, st.server_name, st.text, st.types);
    b.prepared.insert(st.id);
    p.parse_id = st.id;
  }
  exp_.push_back(std::move(p));
}

// The backend reported an error for the request at the front of exp_: it now discards every
// message until Sync, and so do the expectations. What the skipped Parses and Closes would
// have changed is undone newest first: each client name holds again what it held before, and
// so does the backend's unnamed statement; a failed Parse of the unnamed statement leaves
// none (PostgreSQL drops the unnamed statement before parsing).
void Session::forget_skipped(BackendConn &b) {
  boost::container::small_vector<Pending, 4> undo;
  bool first = true;
  while (!exp_.empty() && exp_.front().kind != Expect::sync && exp_.front().kind != Expect::query) {
    Pending &p = exp_.front();
    if (p.parse_id)
      b.prepared.erase(p.parse_id); // never created
    if (p.undo || p.parse_unnamed || p.portal_undo) {
      if (first && p.parse_unnamed) {
        p.prev_owner = 0;
        if (p.undo && p.client_name.empty())
          p.prev.reset();
      }
      undo.push_back(std::move(p));
    }
    first = false;
    exp_.pop_front();
  }
  for (auto it = undo.rbegin(); it != undo.rend(); ++it) {
    if (it->parse_unnamed)
      b.unnamed_owner = it->prev_owner;
    if (it->portal_undo) { // a Bind that did not happen: the portal is what it was
      if (it->prev)
        portals_[it->client_name] = std::move(it->prev);
      else
        portals_.erase(it->client_name);
      continue;
    }
    if (!it->undo)
      continue;
    if (it->prev)
      stmts_[it->client_name] = std::move(it->prev);
    else
      stmts_.erase(it->client_name);
  }
}

void Session::on_backend_lost(BackendConn &b) {
  b.broken = true;
  exp_.clear();
  auto f = log_fields();
  f.emplace_back("node", b.node->label());
  log::warn("backend_lost", f);
}

// Forwards backend frames to the client (or the capture sink) until every pending response
// has arrived, swallowing what the proxy injected and adding what it answers itself.
Task<bool> Session::relay(BackendConn &b) {
  return relay_more(b, relay_start(b)); // not a coroutine itself: one frame, relay_more's
}

// The request could not be sent: the connection is as lost as when a read fails. (Left
// unbroken, callers took the failure for the client's and ended the session without a word.)
Session::RelayStep Session::send_failed(BackendConn &b) {
  on_backend_lost(b);
  return RelayStep::failed;
}

// A new request's response: handles what is buffered already.
Session::RelayStep Session::relay_start(BackendConn &b) {
  forwarded_any_ = false;
  last_sqlstate_.clear();
  return relay_some(b);
}

// The I/O around relay_some(): streams what is buffered for the client before waiting on the
// backend, reads, and runs COPY FROM STDIN when the backend asks for it.
Task<bool> Session::relay_more(BackendConn &b, RelayStep st) {
  for (;;) {
    switch (st) {
    case RelayStep::done:
      co_return true;
    case RelayStep::failed:
      co_return false;
    case RelayStep::copy_in:
      if (!co_await pump_copy_in(b))
        co_return false;
      break;
    case RelayStep::need_more:
      if (sink_ == &out_ && !out_.empty() && !co_await flush()) {
        b.broken = true; // the client left mid-response: the backend cannot be reused
        co_return false;
      }
      // Not `while (relay_poll(b, st)) co_await ...` here: inside this switch, GCC 12 built
      // that into a proxy that crashed under the integration tests (see read_some in poller.h).
      for (;;) {
        ReadStep r = read_backend(b);
        if (r == ReadStep::failed)
          co_return false;
        if (r == ReadStep::got)
          break;
        co_await b.sock.wait(Poller::in); // as a statement: see read_some in poller.h
      }
      break;
    }
    st = relay_some(b);
  }
}

// relay() without waiting: reads and handles what the backend has sent while the response is
// incomplete and nothing waits for the client. True: wait for the backend, then call again.
// st is left for relay_more() when it is neither done nor failed.
bool Session::relay_poll(BackendConn &b, RelayStep &st) {
  while (st == RelayStep::need_more && (sink_ != &out_ || out_.empty())) {
    ReadStep r = read_backend(b);
    if (r == ReadStep::nothing)
      return true;
    st = r == ReadStep::failed ? RelayStep::failed : relay_some(b);
  }
  return false;
}

// Reads what the backend has sent into its buffer, without waiting.
Session::ReadStep Session::read_backend(BackendConn &b) {
  size_t avail = 0;
  uint8_t *p = b.rbuf.prepare(read_size(relay_want_, b.rbuf.size()), avail);
  ErrorCode ec;
  size_t n = b.sock.try_read(p, avail, ec);
  if (ec) {
    on_backend_lost(b);
    return ReadStep::failed;
  }
  b.rbuf.commit(n);
  return n ? ReadStep::got : ReadStep::nothing;
}

// Handles the frames buffered from the backend: no I/O, so the per-query path runs it without
// a coroutine frame of its own.
Session::RelayStep Session::relay_some(BackendConn &b) {
  // Forwarded frames that follow each other in b.rbuf go to the sink in one append: `run` is
  // the start of the pending stretch. It stays valid until the buffer is read into again.
  const char *run = nullptr;
  size_t run_len = 0;
  auto flush_run = [&] {
    if (run_len) {
      sink_->append(run, run_len);
      run_len = 0;
    }
  };
  for (;;) {
    if (!exp_.empty() && exp_.front().kind == Expect::synthetic) {
      flush_run();
      while (!exp_.empty() && exp_.front().kind == Expect::synthetic) {
        sink_->append(exp_.front().synthetic);
        exp_.pop_front();
      }
    }
    if (exp_.empty()) {
      flush_run();
      return RelayStep::done;
    }
    auto f = protocol::decode_frame(b.rbuf.data(), b.rbuf.size(), 1u << 30);
    if (f.status == protocol::DecodeStatus::need_more) {
      flush_run();
      relay_want_ = f.frame_len;
      return RelayStep::need_more;
    }
    if (f.status == protocol::DecodeStatus::error) {
      flush_run();
      on_backend_lost(b);
      return RelayStep::failed;
    }
    Pending &h = exp_.front();
    std::string_view body = f.body_view();
    auto forward = [&]() __attribute__((always_inline)) { // per frame: keep it inline
      const char *frame = reinterpret_cast<const char *>(f.body) - 5;
      if (run_len && run + run_len == frame) {
        run_len += f.frame_len;
      } else {
        flush_run();
        run = frame;
        run_len = f.frame_len;
      }
      forwarded_any_ = true;
    };
    bool copy_in = false;
    switch (f.type) {
    case 'E': {
      auto e = protocol::parse_error_response(body);
      if ((e.severity == "FATAL" || e.severity == "PANIC") && !forwarded_any_) {
        // The server is closing this connection before answering anything for this request
        // (terminated or restarted while pooled): a lost connection, which a read may retry.
        flush_run();
        on_backend_lost(b);
        return RelayStep::failed;
      }
      if (h.skip_done || h.key_guard) [[unlikely]] // the guard failed: the positions are stale
        sh_.router.forget_key_positions();
      if (h.fail) {
        // The proxy's own error, raised at this point of the batch: the client sees it in
        // place of the backend's (a poisoning failure shows nothing).
        flush_run();
        if (!h.synthetic.empty()) {
          sink_->append(h.synthetic);
          forwarded_any_ = true;
          last_sqlstate_ =
              protocol::parse_error_response(std::string_view(h.synthetic).substr(5)).sqlstate;
          request_error_ = true;
        }
      } else {
        last_sqlstate_ = e.sqlstate;
        request_error_ = true;
        sh_.errors.count(ErrorSource::backend, e.sqlstate);
        forward(); // errors always reach the client, even for injected statements
      }
      if (h.kind == Expect::one || h.kind == Expect::describe_stmt || h.kind == Expect::execute)
        forget_skipped(b); // h is gone
      break;
    }
    case 'Z':
      b.tx_status = body.empty() ? 'I' : body[0];
      b.unsynced = false;
      if (h.forward) {
        // The client's transaction is elsewhere from a side connection: an error there fails
        // it, as it would have on the server, and the client hears its status.
        if (side_batch_ && !last_sqlstate_.empty() && in_tx())
          fail_transaction_by_proxy();
        if (app_check_) [[unlikely]] { // a change of application_name is reported first
          flush_run();
          report_app(side_batch_ ? tx_ : b.tx_status, tx_);
        }
        forward();
        if (side_batch_) {
          flush_run(); // the status byte below is the sink's last
          sink_->back() = tx_;
        } else
          tx_ = b.tx_status;
      } else if (h.status) {
        tx_ = b.tx_status;
      }
      exp_.pop_front();
      break;
    case 'C':
      if (h.skip_done) [[unlikely]] { // the guard's DO
        flush_run();
        --h.skip_done;
        break;
      }
      if (h.kind == Expect::execute && h.count >= 0) [[unlikely]] {
        exec_counts_[size_t(h.count)].second = true;
        if (h.rerun && h.forward && body.starts_with("SELECT ")) {
          // A portal made again: the count is of this Execute's rows only.
          flush_run();
          uint64_t n = std::strtoull(body.data() + 7, nullptr, 10);
          protocol::command_complete(*sink_, "SELECT " + std::to_string(n - std::min(n, h.rerun)));
          forwarded_any_ = true;
          exp_.pop_front();
          break;
        }
      }
      if (h.forward) {
        forward();
        // The first end of a transaction in a request decides it: a COMMIT after a ROLLBACK
        // in the same batch is one outside a transaction, which changes nothing.
        bool rb = body == std::string_view("ROLLBACK", 9); // with its terminator
        if (rb || body == std::string_view("COMMIT", 7)) {
          if (!end_seen_)
            last_rollback_ = rb;
          if (h.kind == Expect::execute)
            virtual_portals_.clear(); // the transaction's portals that lived on no backend end
          if (rb && !end_seen_ && h.kind == Expect::execute) {
            // The transaction's SETs go now, not at the request's end: SETs later in the
            // same batch run in a new transaction, and stay (on the server too).
            const auto &to = tx_ != 'I'         ? tx_settings_snapshot_
                             : settings_before_ ? *settings_before_
                                                : settings_;
            if (&to != &settings_) {
              settings_ = to;
              rehash_settings();
            }
            b.settings = settings_;
            b.settings_hash = settings_hash_;
            // A new implicit transaction starts here (the session's status changes only at
            // ReadyForQuery): if it fails, its SETs go back to these.
            settings_before_ = settings_;
            last_rollback_ = false; // done: apply_tx_end() has nothing to take back
          }
          end_seen_ = true;
          if (!rb && settings_before_) // committed: a later failure takes none of it back
            settings_before_.reset();
        } else if (!end_seen_) {
          last_rollback_ = false;
        }
      }
      if (body.starts_with("DEALLOCATE ALL") || body.starts_with("DISCARD ALL")) {
        b.prepared.clear(); // the server dropped our statements too
        b.unnamed_owner = 0;
        if (body[1] == 'I')
          b.epoch_tag = 0; // and its settings
      }
      if (h.kind == Expect::execute) {
        if (h.exec) [[unlikely]] { // a statement that may change session state
          if (h.deferred &&
              !(!in_tx() && h.exec->planned.analysis->stmts[0].kind == router::StmtKind::set))
            run_deferred(*h.exec, false);
          else
            track_set(b, *h.exec, h.deferred);
        }
        exp_.pop_front();
      }
      break;
    case 'I':
    case 's':
      if (h.forward)
        forward();
      if (h.kind == Expect::execute)
        exp_.pop_front();
      break;
    case 'D': // DataRow
      if (h.count >= 0) [[unlikely]] {
        if (h.skip) { // a row of a portal made again that the client had already
          --h.skip;
          break;
        }
        ++exec_counts_[size_t(h.count)].first;
      }
      if (h.forward)
        forward();
      break;
    case 'T':
    case 'n':
      if (h.forward)
        forward();
      if (h.kind == Expect::describe_stmt || h.kind == Expect::one)
        exp_.pop_front();
      break;
    case '1':
    case '2':
    case '3':
      if (h.forward)
        forward();
      if (h.count >= 0) [[unlikely]] // a side connection's Bind took place
        exec_counts_[size_t(h.count)].second = true;
      if (h.portal_undo && f.type == '2') [[unlikely]] // the portal lives on this backend now
        virtual_portals_.erase(h.client_name);
      if (h.kind == Expect::one)
        exp_.pop_front();
      break;
    case 'G':
      forward();
      copy_in = true;
      break;
    case 'S': // ParameterStatus
      if (body.starts_with(std::string_view("application_name", 17))) [[unlikely]] {
        std::string_view v = body.substr(17, body.size() > 18 ? body.size() - 18 : 0);
        if (!h.forward) {
          app_check_ = true; // see report_app()
          break;
        }
        app_check_ = false; // the backend's report is this moment's truth
        if (v == reported_app_)
          break;
        reported_app_.assign(v);
      }
      if (h.forward)
        forward();
      break;
    default: // DataRow, ParameterDescription, notices, ParameterStatus, copy-out data...
      if (h.forward)
        forward();
      break;
    }
    b.rbuf.consume(f.frame_len);
    if (copy_in) {
      flush_run();
      return RelayStep::copy_in;
    }
  }
}

// COPY FROM STDIN: client CopyData/CopyDone/CopyFail go to the backend until done or failed.
Task<bool> Session::pump_copy_in(BackendConn &b) {
  if (!co_await flush())
    co_return false;
  std::string out;
  for (;;) {
    auto f = protocol::decode_frame(cbuf_.data(), cbuf_.size(), sh_.cfg.proxy.max_message_bytes);
    if (f.status == protocol::DecodeStatus::need_more) {
      ErrorCode ec;
      if (!out.empty()) {
        co_await write_all(b.sock, out, ec);
        out.clear();
        if (ec) {
          on_backend_lost(b);
          co_return false;
        }
      }
      size_t avail = 0;
      uint8_t *p = cbuf_.prepare(read_size(f.frame_len, cbuf_.size()), avail);
      size_t n = co_await read_some(sock_, p, avail, ec);
      if (ec) {
        b.broken = true;
        co_return false;
      }
      cbuf_.commit(n);
      continue;
    }
    if (f.status == protocol::DecodeStatus::error) {
      b.broken = true;
      co_return co_await fatal("08P01", std::string("invalid message during COPY: ") + f.error);
    }
    char t = f.type;
    if (t == 'd' || t == 'c' || t == 'f')
      out.append(reinterpret_cast<const char *>(f.body) - 5, f.frame_len);
    cbuf_.consume(f.frame_len);
    if (t == 'c' || t == 'f') {
      ErrorCode ec;
      co_await write_all(b.sock, out, ec);
      if (ec) {
        on_backend_lost(b);
        co_return false;
      }
      co_return true;
    }
    if (t != 'd' && t != 'H' && t != 'S') {
      b.broken = true;
      co_return co_await fatal("08P01", "unexpected message type " +
                                            std::to_string(int(uint8_t(t))) + " during COPY");
    }
  }
}

} // namespace sg::proxy

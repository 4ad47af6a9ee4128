// The extended protocol: Parse/Bind/Describe/Execute/Close batches cut at Sync or Flush, the
// per-query Bind/Execute/Sync path, and how client statements and portals map onto backend
// ones in stream order. See session.h.
#include "proxy/batch.h"
#include "proxy/session_util.h"

#include <algorithm>
#include <boost/container/small_vector.hpp>

namespace sg::proxy {

using detail::append_frame;
using detail::count_route;
using detail::kind_of;
using detail::trim;

// Answers a whole extended batch without a backend (deferred BEGIN, COMMIT of an empty
// transaction, Close of a statement...), message for message as the server would.
void Session::synthesize_batch(const std::vector<Msg> &batch, const std::string &tag) {
  for (const Msg &m : batch) {
    switch (m.type) {
    case 'P':
      protocol::parse_complete(*sink_);
      break;
    case 'B':
      protocol::bind_complete(*sink_);
      break;
    case 'D':
      if (!m.body.empty() && m.body[0] == 'S')
        protocol::Writer(*sink_, 't').i16(0).finish(); // ParameterDescription: no parameters
      protocol::no_data(*sink_);
      break;
    case 'E':
      protocol::command_complete(*sink_, tag);
      break;
    case 'C':
      protocol::close_complete(*sink_);
      break;
    case 'S':
      ready();
      break;
    default:
      break;
    }
  }
}

// Bind, [Describe portal,] Execute, Sync of a statement the client prepared earlier, all in
// cbuf_ (the extended protocol's per-query shape), with one read or write statement that
// routes. Decides where it goes without changing anything; false leaves the messages to the
// general path (query_loop's batch and on_batch()), which also reports whatever is wrong.
bool Session::fast_batch(FastBatch &fb, QueryRun &q) {
  if (!batch_.empty() || skip_until_sync_ || proxy_failed_ || batch_shard_ >= 0 || multi_tx() ||
      log::enabled(log::Level::debug)) // on_batch() logs each batch
    return false;
  note_routed();
  const uint8_t *data = cbuf_.data();
  size_t size = cbuf_.size(), off = 0;
  auto next = [&](char type, std::string_view &body) {
    auto f = protocol::decode_frame(data + off, size - off, sh_.cfg.proxy.max_message_bytes);
    if (f.status != protocol::DecodeStatus::ready || f.type != type)
      return false;
    body = f.body_view();
    off += f.frame_len;
    return true;
  };
  std::string_view sync;
  if (!next('B', fb.bind))
    return false;
  if (next('D', fb.describe)) {
    auto t = protocol::parse_target(fb.describe);
    if (!t || t->kind != 'P')
      return false;
  }
  if (!next('E', fb.execute) || !next('S', sync) || !protocol::parse_bind(fb.bind, bind_))
    return false;
  auto sit = stmts_.find(std::string(bind_.statement));
  if (sit == stmts_.end() || sit->second->planned.analysis->stmts.empty())
    return false;
  ClientStmt &st = *sit->second;
  const router::StatementPlan &sp = st.planned.analysis->stmts[0];
  if (sp.kind != router::StmtKind::read && sp.kind != router::StmtKind::write)
    return false;
  if (!sp.next_id.empty()) [[unlikely]]
    return false; // the proxy answers its Execute (next_id_row)
  if (!params_cover_keys(sp, bind_) ||
      (!portals_.empty() && !bind_.portal.empty() && portals_.count(std::string(bind_.portal))))
    return false; // the general path says what is wrong
  bind_params_.clear();
  for (size_t i = 0; i < bind_.params.size(); ++i)
    bind_params_.push_back({bind_.params[i], protocol::bind_param_format(bind_, i)});
  router::Resolved r =
      sh_.router.resolve(sp, st.text, st.planned.scan, bind_params_, w_->place().keys.get());
  if (r.moving && may_hold(r)) [[unlikely]] {
    fb.hold = true;
    return false;
  }
  bool tx_bound = tx_shard_ >= 0;
  if (r.kind == router::TargetKind::by_key ||
      (r.kind == router::TargetKind::default_shard && !sp.tableless))
    q.shard = int(r.shard);
  else if (r.kind == router::TargetKind::default_shard && (tx_bound || !in_tx()))
    // SELECT 1: anywhere; but as the first statement of a waiting transaction it must not
    // bind it (on_batch() runs it on a side connection).
    q.shard = tx_bound ? tx_shard_ : int(w_->place().keys->default_shard);
  else
    return false;
  if (tx_bound && q.shard != tx_shard_)
    return false; // on_batch() says it touches a second shard
  q.all_read = sp.kind == router::StmtKind::read;
  if (!q.all_read && !in_tx() && w_->place().keys->mirror_source(size_t(q.shard))) [[unlikely]]
    return false; // a migration moves keys of this shard: on_batch() dual-writes it
  q.read = q.all_read && (!in_tx() || (tx_read_only_ && !tx_bound));
  fb.len = off;
  fb.st = &st;
  fb.ref = &sit->second;
  fb.sp = &sp;
  fb.route = r.kind;
  return true;
}

// fast_batch()'s messages, for the backend, into wbuf_; then they leave cbuf_.
void Session::fast_batch_write(const FastBatch &fb, BackendConn &b, bool consume) {
  wbuf_.clear();
  prepare_backend(b, wbuf_);
  if (tx_ != 'I') // a portal can outlive the batch only inside a transaction
    portals_[std::string(bind_.portal)] = *fb.ref;
  write_bind(b, *fb.st, bind_, fb.bind);
  if (!fb.describe.empty()) // a Describe body is never empty
    write_passthrough('D', fb.describe, Expect::one);
  write_passthrough('E', fb.execute, Expect::execute);
  write_passthrough('S', {}, Expect::sync);
  if (consume)
    cbuf_.consume(fb.len); // fb's and bind_'s views end here
}

// fast_batch()'s statement ran on b: counters, and the transaction it may have opened or ended.
void Session::fast_batch_done(const FastBatch &fb, const QueryRun &q, BackendConn &b) {
  if (!q.all_read)
    note_write(size_t(q.shard));
  record_query(size_t(q.shard), b, kind_of(fb.sp->kind), q.started, fb.st->planned.scan.normalized);
  settle_tx(q.shard, q.tx_before);
}

// A Bind for the backend, under the statement's backend-side name (prepared there first if
// this backend lacks it).
void Session::write_bind(BackendConn &b, const ClientStmt &st, const protocol::BindMsg &bind,
                         std::string_view body) {
  ensure_prepared(b, st, wbuf_);
  protocol::rewrite_bind(wbuf_, bind, body, st.server_name);
  exp_.emplace_back(Expect::one, true);
}

void Session::write_passthrough(char type, std::string_view body, Expect expect) {
  append_frame(wbuf_, type, body);
  exp_.emplace_back(expect, true);
}

// The backend went away while it ran an extended-protocol batch bound for `shard`.
Task<bool> Session::batch_lost(BackendConn &b, int shard, bool ends_sync) {
  bool was_tx = in_tx() || tx_shard_ >= 0 || batch_shard_ >= 0;
  if (closing_ || !b.broken)
    co_return false;
  if (forwarded_any_)
    sh_.health.report_failure(b.node->id, now_ms());
  batch_shard_ = -1;
  detach_if_idle();
  if (was_tx)
    co_return co_await fatal("08006", "lost the connection to shard \"" +
                                          sh_.shard_name(size_t(shard)) +
                                          "\" inside a transaction; the transaction is lost");
  error("08006",
        "lost the connection to shard \"" + sh_.shard_name(size_t(shard)) +
            "\" while running the statement",
        "the statement may or may not have run; retry if it is safe to");
  if (ends_sync)
    ready();
  else
    skip_until_sync_ = true;
  co_return true;
}

// After a request that reached `shard`: the transaction it opened binds there, one it ended
// settles, and a backend no transaction holds goes back to its pool.
void Session::settle_tx(int shard, char tx_before) {
  if (tx_before == 'I' && tx_ == 'I' && !settings_before_ && !request_error_ && !end_seen_ &&
      portals_.empty()) [[likely]] { // an autocommit request that changed no state
    detach_if_idle();
    return;
  }
  settle_tx_slow(shard, tx_before);
}

void Session::settle_tx_slow(int shard, char tx_before) {
  if (tx_before == 'I' && tx_ != 'I')
    tx_settings_snapshot_ = settings_before_ ? std::move(*settings_before_) : settings_;
  else if (tx_ == 'I' && request_error_ && settings_before_)
    restore_settings(); // the implicit transaction failed: its SETs are undone
  settings_before_.reset();
  request_error_ = false;
  end_seen_ = false;
  if (tx_ == 'I') {
    if (tx_before != 'I')
      apply_tx_end();
    if (!portals_.empty()) [[unlikely]] {
      portals_.clear(); // portals end with their transaction
      virtual_portals_.clear();
    }
  } else {
    bind_tx(shard);
  }
  detach_if_idle();
}

// A simple Query that reads no table and calls no function (SELECT 1, SHOW) inside a
// transaction whose BEGIN waits for its first statement: it runs on a connection of its own,
// in a copy of the waiting transaction rolled back after, so that it chooses no shard.
Task<bool> Session::side_query() {
  size_t shard = w_->place().keys->default_shard;
  BackendConn *b = co_await attach(shard, false);
  if (!b) {
    fail_transaction_by_proxy();
    ready();
    co_return true;
  }
  wbuf_.clear();
  prepare_backend(*b, wbuf_, true, true);
  protocol::query(wbuf_, query_);
  exp_.emplace_back(Expect::query, true);
  protocol::query(wbuf_, "ROLLBACK");
  exp_.emplace_back(Expect::query, false);
  b->unnamed_owner = 0; // a simple Query drops the unnamed statement
  ErrorCode ec;
  co_await write_all(b->sock, wbuf_, ec);
  if (ec)
    send_failed(*b);
  side_batch_ = true;
  bool ok = !ec && co_await relay(*b);
  side_batch_ = false;
  mark_untracked(*b); // the copy rolled back; its next user resets it first
  if (!ok && !b->broken)
    co_return false;
  detach_if_idle();
  if (!ok) {
    error("08006", "lost the connection to the backend while running a statement",
          "the statement reads no table; retry it");
    fail_transaction_by_proxy();
    ready();
  }
  co_return true;
}

// ---------------------------------------------------------------- the general batch path
//
// An extended-protocol batch is cut at Sync (or Flush) and handled in three steps:
//  1. plan_batch() walks its messages in order, as the server will: each Parse, Close and
//     Bind changes the statement and portal names at its turn, so a Bind refers to the
//     statement its name held then, even when a later Parse in the batch redefines it. The
//     first error the proxy raises itself (an unknown or duplicate name, a statement it cannot
//     route) ends the walk, as an error ends the server's.
//  2. on_batch() picks where it runs: on the shard a transaction or a cut batch holds, else on
//     the shard of its first Bind that routes; answered by the proxy itself when it only
//     carries transaction control that waits for the transaction's first statement (BEGIN,
//     SET LOCAL...); or on a side connection that pins no shard, for Parse and Describe and
//     for reads that touch no table.
//  3. Every message goes to that backend in order; the proxy's own error takes its place in the
//     stream as a Parse that fails on purpose, so the backend skips the rest and ends (or
//     fails) the transaction exactly as PostgreSQL would have.

namespace {

// The value PostgreSQL reports in ParameterStatus after a SET that the proxy answers itself:
// only application_name with a plain literal is answered so (its report is that literal).
// Other reported settings (DateStyle, TimeZone, ...) are normalized by the server, so a SET of
// one of them never waits: nullopt. Empty: the setting is not reported, any SET may wait.
std::optional<std::string> app_literal(std::string_view canon);

std::optional<std::string> reported_value(const router::StatementPlan &sp, std::string_view text) {
  static const char *const reported[] = {"client_encoding",
                                         "datestyle",
                                         "default_transaction_read_only",
                                         "in_hot_standby",
                                         "integer_datetimes",
                                         "intervalstyle",
                                         "is_superuser",
                                         "server_encoding",
                                         "server_version",
                                         "session_authorization",
                                         "standard_conforming_strings",
                                         "timezone"};
  if (sp.set_name != "application_name") {
    for (const char *r : reported)
      if (sp.set_name == r)
        return std::nullopt;
    return std::string();
  }
  auto canon = router::canonical_set(trim(text));
  if (!canon)
    return std::nullopt;
  auto v = app_literal(*canon);
  if (!v || v->empty() || v->size() > 63 ||
      std::any_of(v->begin(), v->end(), [](char c) { return c < 32 || c > 126; }))
    return std::nullopt; // (kept simple: what PostgreSQL keeps exactly as given)
  return v;
}

// The value of a canonical `SET application_name TO E'...'` (see router::canonical_set) as
// PostgreSQL keeps it: other than printable ASCII becomes '?', cut to 63 bytes.
std::optional<std::string> app_literal(std::string_view canon) {
  const std::string_view prefix = "SET application_name TO E'";
  if (!canon.starts_with(prefix) || canon.back() != '\'')
    return std::nullopt;
  std::string v;
  std::string_view lit(canon);
  lit = lit.substr(prefix.size(), lit.size() - prefix.size() - 1);
  for (size_t i = 0; i < lit.size(); ++i) {
    char c = lit[i];
    if ((c == '\'' || c == '\\') && i + 1 < lit.size() && lit[i + 1] == c)
      ++i;
    else if (c == '\'' || c == '\\')
      return std::nullopt; // not one literal
    v.push_back(c < 32 || c > 126 ? '?' : c);
  }
  if (v.size() > 63)
    v.resize(63);
  return v;
}

} // namespace

// Transaction control and session state that the proxy can answer itself while no shard is
// chosen: it travels in front of the transaction's first statement.
bool Session::deferrable(const ClientStmt &st) {
  const auto &an = *st.planned.analysis;
  if (!an.parsed || an.stmts.size() != 1 || !st.types.empty())
    return false;
  switch (an.stmts[0].kind) {
  case router::StmtKind::begin:
  case router::StmtKind::commit:
  case router::StmtKind::rollback:
  case router::StmtKind::savepoint:
  case router::StmtKind::set_local:
    return true;
  case router::StmtKind::set:
    return reported_value(an.stmts[0], st.text).has_value();
  default:
    return false;
  }
}

bool Session::changes_settings(const ClientStmt &st) {
  const auto &an = *st.planned.analysis;
  return an.parsed && an.stmts.size() == 1 &&
         (an.stmts[0].kind == router::StmtKind::set ||
          an.stmts[0].kind == router::StmtKind::reset_all);
}

// Whether a Bind gives as many parameters as the statement takes, as far as the proxy can
// tell (PostgreSQL checks that, 08P01, before it refuses a portal name in use): as many as the
// Bind of the same statement that made portal v, or none for transaction control.
bool Session::same_param_count(const protocol::BindMsg &bind, const VirtualPortal &v,
                               const ClientStmt &st) {
  if (deferrable(st))
    return bind.params.empty();
  protocol::BindMsg old;
  return v.st.get() != &st || !protocol::parse_bind(v.bind, old) ||
         old.params.size() == bind.params.size();
}

// COMMIT or ROLLBACK: what a failed transaction still accepts.
bool Session::ends_tx(const ClientStmt &st) {
  const auto &an = *st.planned.analysis;
  return an.parsed && an.stmts.size() == 1 &&
         (an.stmts[0].kind == router::StmtKind::commit ||
          an.stmts[0].kind == router::StmtKind::rollback);
}

// Where a batch that holds no shard and routes to none runs:
//  - synth: the proxy answers every message itself, exactly as the server would: only
//    transaction control and settings that wait for the transaction's first statement, and
//    what names them;
//  - side: a connection of its own that pins no shard (see on_batch), when the batch holds
//    besides only Parse, Describe and Close of anything, and reads of no table that call no
//    function; the waiting statements are then answered in their turn among the server's;
//  - backend: the default shard, which then holds the transaction or cut batch.
// The transaction state walks as the messages would change it.
Session::BatchMode Session::batch_mode(const BatchPlan &bp) const {
  if (tx_ == 'E')
    return BatchMode::backend;
  bool tx = in_tx(), synth = true;
  // A SET outside a transaction block waits only for a BEGIN later in the same implicit
  // transaction, which takes it into the block (implicit_local_); one that no BEGIN follows
  // runs where the batch runs, committed at its Sync as on the server.
  bool set_waits = false;
  boost::container::small_vector<std::string_view, 4> named; // portals bound in the batch
  for (const BatchItem &it : bp.items) {
    if (it.error)
      break; // nothing after it runs
    switch (it.m->type) {
    case 'P':
      if (!it.st->planned.analysis->parsed) // the server fails this Parse: nothing after it runs
        return set_waits ? BatchMode::backend : BatchMode::side;
      synth &= deferrable(*it.st);
      break;
    case 'B':
      if (!it.name.empty()) { // bound twice: the server refuses the second (42P03)
        synth &= std::find(named.begin(), named.end(), it.name) == named.end();
        named.push_back(it.name);
      }
      if (deferrable(*it.st) && it.bind.params.empty())
        break;
      if (!pure_read(*it.st) && it.st->planned.analysis->parsed)
        return BatchMode::backend;
      synth = false;
      break;
    case 'D':
      synth &= it.st && deferrable(*it.st);
      break;
    case 'E':
      if (it.special)
        break;
      if (it.st && deferrable(*it.st) && !it.again) {
        switch (it.st->planned.analysis->stmts[0].kind) {
        case router::StmtKind::begin:
          tx = true; // inside one already: PostgreSQL's warning, then BEGIN
          set_waits = false;
          break;
        case router::StmtKind::commit:
        case router::StmtKind::rollback:
          // (Outside a block it ends the implicit transaction: the SETs that waited in it are
          // taken back or kept in its turn, see run_deferred.)
          set_waits = false;
          tx = false; // outside one: PostgreSQL's warning, then the tag
          break;
        case router::StmtKind::set_local:
          break; // outside one: PostgreSQL's warning; it lasts until Sync (implicit_local_)
        case router::StmtKind::set:
          set_waits |= !tx;
          break;
        default: // SAVEPOINT waits only inside a transaction
          if (!tx)
            return BatchMode::backend;
          break;
        }
        break;
      }
      if (it.st && !pure_read(*it.st))
        return BatchMode::backend;
      // (A portal suspended by its row limit ends with the side connection's batch: see the
      // README's limits.)
      synth = false;
      break;
    default: // Close, Sync, Flush
      break;
    }
  }
  if (set_waits && bp.ends_sync) // else the rest of its implicit transaction takes it along
    return BatchMode::backend;
  return synth ? BatchMode::synth : BatchMode::side;
}

// A SET inside a transaction that no statement bound yet: it waits with the BEGIN, counts for
// the session at once, and its report (application_name) goes out with the next
// ReadyForQuery (see report_app), as PostgreSQL sends it.
bool Session::can_defer_set(const router::StatementPlan &sp, const std::string &text) {
  return reported_value(sp, text).has_value();
}

void Session::defer_set(const router::StatementPlan &sp, const std::string &text) {
  deferred_ += ";" + text;
  set_setting(sp.set_name, text);
}

// application_name in a settings map (as the proxy keeps them), else as the client connected.
std::string Session::app_value(const std::map<std::string, std::string> &settings) const {
  auto it = settings.find("application_name");
  if (it != settings.end())
    if (auto v = app_literal(it->second))
      return *v;
  return reported_at_startup_;
}

// The effect of transaction control or a SET that waits for the transaction's first
// statement, and (reply) the server's answer to it. Without reply, a side connection ran it
// and answered.
void Session::run_deferred(const ClientStmt &st, bool reply) {
  const router::StatementPlan &sp = st.planned.analysis->stmts[0];
  std::string text = trim(st.text), tag = sp.tag;
  std::string ignored, *sink = sink_;
  if (!reply)
    sink_ = &ignored;
  switch (sp.kind) {
  case router::StmtKind::begin:
    if (in_tx()) {
      already_in_tx();
      break;
    }
    tx_settings_snapshot_ = settings_before_ ? *settings_before_ : settings_;
    note_tx_statement(sp, text);
    deferred_ = text;
    for (auto &s : implicit_local_) // the implicit transaction's SET LOCALs go on in the block
      deferred_ += ";" + s;
    tx_read_only_ = sp.read_only_tx;
    tx_ = 'T';
    break;
  case router::StmtKind::commit:
  case router::StmtKind::rollback:
    if (!in_tx()) { // PostgreSQL warns, and answers with the statement's own tag
      protocol::ErrorInfo n;
      n.severity = "WARNING";
      n.sqlstate = "25P01";
      n.message = "there is no transaction in progress";
      protocol::notice_response(*sink_, n);
      tag = sp.kind == router::StmtKind::commit ? "COMMIT" : "ROLLBACK";
      // It ends the implicit transaction: a ROLLBACK takes back the SETs that waited in it
      // (a COMMIT keeps them), and a BEGIN after it takes none of them in.
      if (sp.kind == router::StmtKind::rollback && settings_before_) {
        restore_settings();
        app_check_ = true;
      }
      settings_before_.reset();
      implicit_local_.clear();
      portals_.clear(); // the implicit transaction ends, and its portals
      virtual_portals_.clear();
      break;
    }
    last_rollback_ = !(sp.kind == router::StmtKind::commit && tx_ != 'E');
    tag = last_rollback_ ? "ROLLBACK" : "COMMIT";
    apply_tx_end();
    portals_.clear(); // the transaction's portals end with it
    virtual_portals_.clear();
    break;
  case router::StmtKind::set:
    if (!in_tx()) { // a BEGIN later in this implicit transaction takes it in (batch_mode)
      set_setting(sp.set_name, text);
      implicit_local_.push_back(text);
      app_check_ = true; // reported at ReadyForQuery, if it still holds then
      break;
    }
    defer_set(sp, text);
    break;
  case router::StmtKind::set_local:
    if (!in_tx()) { // PostgreSQL warns, and keeps it until Sync
      protocol::ErrorInfo n;
      n.severity = "WARNING";
      n.sqlstate = "25P01";
      n.message = "SET LOCAL can only be used in transaction blocks";
      protocol::notice_response(*sink_, n);
      implicit_local_.push_back(text);
      break;
    }
    deferred_ += ";" + text;
    break;
  default: // SAVEPOINT
    note_tx_statement(sp, text);
    deferred_ += ";" + text;
    break;
  }
  protocol::command_complete(*sink_, tag);
  sink_ = sink;
}

// Answers bp's messages without a backend (see batch_mode()).
void Session::synthesize_items(BatchPlan &bp) {
  for (BatchItem &it : bp.items) {
    if (it.error) {
      error(it.error->sqlstate, it.error->message, it.error->hint);
      request_error_ = true;
      if (in_tx())
        fail_transaction_by_proxy();
      if (!bp.ends_sync) {
        skip_until_sync_ = true;
        return;
      }
      if (tx_ == 'I' && settings_before_)
        restore_settings(); // the implicit transaction failed: its SETs are undone
      ready();
      if (tx_ == 'I') { // the implicit transaction ends, and its portals
        portals_.clear();
        virtual_portals_.clear();
      }
      return;
    }
    switch (it.m->type) {
    case 'P':
      protocol::parse_complete(*sink_);
      break;
    case 'B':
      protocol::bind_complete(*sink_);
      virtual_portals_[it.name] = VirtualPortal{};
      portals_[it.name] = it.st; // again: a COMMIT or ROLLBACK before it cleared them
      break;
    case 'D':
      if (it.target == 'P' && !virtual_portals_.count(it.name)) {
        // A COMMIT or ROLLBACK earlier in the batch ended the portal.
        it.error = router::RouteError{"34000", "portal \"" + it.name + "\" does not exist", ""};
        error(it.error->sqlstate, it.error->message);
        if (in_tx())
          fail_transaction_by_proxy();
        if (bp.ends_sync)
          ready();
        else
          skip_until_sync_ = true;
        return;
      }
      if (it.target == 'S')
        protocol::Writer(*sink_, 't').i16(0).finish(); // ParameterDescription: no parameters
      protocol::no_data(*sink_);
      break;
    case 'E': {
      if (it.special) {
        sink_->append(it.id_row); // shardgate.next_id()'s row (else empty)
        protocol::command_complete(*sink_, it.tag);
        break;
      }
      run_deferred(*it.st);
      break;
    }
    case 'C':
      protocol::close_complete(*sink_);
      break;
    case 'S':
      if (tx_ == 'I' && request_error_ && settings_before_)
        restore_settings(); // an earlier part of the implicit transaction failed
      ready();
      if (tx_ == 'I') {
        portals_.clear();
        virtual_portals_.clear();
      }
      break;
    default: // Flush
      break;
    }
  }
}

// The client's Parse, always sent (so that its errors, in an aborted transaction too, and its
// effects are the server's): under the statement's backend-side name, or, when the backend has
// that name already (statements with one text share it), under a name of its own closed at
// once (the unnamed statement may hold one of the client's).
void Session::write_parse(BackendConn &b, const BatchItem &it) {
  const ClientStmt &st = *it.st;
  Pending p(Expect::one, true);
  p.undo = true;
  p.client_name = it.name;
  p.prev = it.prev;
  if (st.id == 0) {
    protocol::parse(wbuf_, "", st.text, st.types);
    p.prev_owner = b.unnamed_owner;
    b.unnamed_owner = st.unnamed_tag;
    p.parse_unnamed = true;
  } else if (!b.prepared.count(st.id)) {
    protocol::parse(wbuf_, st.server_name, st.text, st.types);
    b.prepared.insert(st.id);
    p.parse_id = st.id;
  } else { // the backend has it: parsed once more under a name of its own, closed at once
    protocol::parse(wbuf_, "sg_check", st.text, st.types);
    exp_.push_back(std::move(p));
    protocol::close(wbuf_, 'S', "sg_check");
    exp_.emplace_back(Expect::one, false);
    return;
  }
  exp_.push_back(std::move(p));
}

// A Parse that fails on the backend (a syntax error), so that the backend skips to Sync and
// rolls back or fails the transaction where the proxy raised `synthetic`, its own
// ErrorResponse (empty: nothing is shown).
void Session::write_failure(const std::string &synthetic) {
  protocol::parse(wbuf_, "sg_fail", "SHARDGATE FAILS HERE", {});
  Pending p(Expect::one, false);
  p.fail = true;
  p.synthetic = synthetic;
  exp_.push_back(std::move(p));
}

// Step 3: bp's messages for b, in order, into wbuf_.
void Session::write_items(BackendConn &b, BatchPlan &bp, bool side) {
  exec_counts_.clear();
  for (BatchItem &it : bp.items) {
    const Msg &m = *it.m;
    protocol::BindMsg rebind;
    if (!it.rebind.empty() && it.st && protocol::parse_bind(it.rebind, rebind)) {
      // A portal of a read of no table that lives on no backend, made again here from its
      // Bind: to be run, under its own name; to be described, as a copy closed after, so
      // that one already run is not run again from its start.
      ensure_prepared(b, *it.st, wbuf_);
      if (m.type == 'E') {
        protocol::rewrite_bind(wbuf_, rebind, it.rebind, it.st->server_name);
        exp_.emplace_back(Expect::one, false);
        int32_t limit =
            it.max_rows > 0
                ? int32_t(std::min<uint64_t>(uint64_t(it.max_rows) + it.rerun, INT32_MAX))
                : 0;
        protocol::Writer(wbuf_, 'E').cstr(it.name).i32(limit).finish();
        Pending &p = exp_.emplace_back(Expect::execute, true);
        p.skip = p.rerun = it.rerun;
        p.count = int32_t(exec_counts_.size());
        exec_counts_.emplace_back(0, false);
        continue;
      } else {
        std::string_view rest(rebind.after_statement,
                              size_t(it.rebind.data() + it.rebind.size() - rebind.after_statement));
        protocol::Writer(wbuf_, 'B')
            .cstr("sg_describe")
            .cstr(it.st->server_name)
            .raw(rest)
            .finish();
        exp_.emplace_back(Expect::one, false);
        protocol::describe(wbuf_, 'P', "sg_describe");
        exp_.emplace_back(Expect::one, true);
        protocol::close(wbuf_, 'P', "sg_describe");
        exp_.emplace_back(Expect::one, false);
        continue;
      }
    }
    if (it.error) {
      std::string err;
      sink_ = &err;
      error(it.error->sqlstate, it.error->message, it.error->hint);
      sink_ = &out_;
      write_failure(err);
      if (bp.ends_sync) {
        write_passthrough('S', {}, Expect::sync);
      } else if (side) { // the side connection keeps nothing open
        append_frame(wbuf_, 'S', {});
        exp_.emplace_back(Expect::sync, false);
      }
      return;
    }
    switch (m.type) {
    case 'P':
      write_parse(b, it);
      break;
    case 'B': {
      if (it.guard_table >= 0) [[unlikely]] // INSERT without a column list: see key_guard()
        write_key_guard(b, it.guard_table);
      ensure_prepared(b, *it.st, wbuf_);
      protocol::rewrite_bind(wbuf_, it.bind, m.body, it.st->server_name);
      Pending &p = exp_.emplace_back(Expect::one, true);
      p.portal_undo = true;
      p.client_name = it.name;
      p.prev = it.prev_portal;
      if (side) { // whether it took place decides what the portal is later
        p.count = int32_t(exec_counts_.size());
        exec_counts_.emplace_back(0, false);
      }
      break;
    }
    case 'D':
      if (it.target == 'S') {
        ensure_prepared(b, *it.st, wbuf_);
        protocol::describe(wbuf_, 'S', it.st->server_name);
        exp_.emplace_back(Expect::describe_stmt, true);
      } else if (it.st && deferrable(*it.st) && it.virt) {
        Pending s(Expect::synthetic); // a portal the proxy answered for: no rows
        protocol::no_data(s.synthetic);
        exp_.push_back(std::move(s));
      } else {
        write_passthrough('D', m.body, Expect::one);
      }
      break;
    case 'E':
      if (side && it.st && deferrable(*it.st) && !it.again) {
        // It runs on the side connection too, so that what follows there sees it; its effect
        // for the session applies when it completes.
        append_frame(wbuf_, 'E', m.body);
        Pending &p = exp_.emplace_back(Expect::execute, true);
        p.exec = it.st;
        p.deferred = true;
        bp.side_deferred = true;
      } else if (it.special) {
        Pending s(Expect::synthetic);
        s.synthetic = it.id_row; // shardgate.next_id()'s row (else empty)
        protocol::command_complete(s.synthetic, it.tag);
        if (!it.undo_name.empty()) {
          s.undo = true;
          s.client_name = it.undo_name;
          s.prev = it.prev;
        }
        exp_.push_back(std::move(s));
      } else {
        append_frame(wbuf_, 'E', m.body);
        Pending &p = exp_.emplace_back(Expect::execute, true);
        if (it.st && (changes_settings(*it.st) || ends_tx(*it.st)))
          p.exec = it.st; // a SET takes effect for the session when it completes
        if (side) {       // its rows are counted, for a portal made again later
          p.count = int32_t(exec_counts_.size());
          exec_counts_.emplace_back(0, false);
        }
      }
      break;
    case 'C':
      if (it.target == 'S') {
        Pending s(Expect::synthetic);
        protocol::close_complete(s.synthetic); // backend copies stay, shared by name
        s.undo = true;
        s.client_name = it.name;
        s.prev = it.prev;
        exp_.push_back(std::move(s));
      } else {
        write_passthrough('C', m.body, Expect::one);
      }
      break;
    case 'S':
      write_passthrough('S', {}, Expect::sync);
      break;
    case 'H':
      if (side) { // the side connection answers everything now, and keeps nothing open
        append_frame(wbuf_, 'S', {});
        exp_.emplace_back(Expect::sync, false);
      } else {
        append_frame(wbuf_, 'H', {});
      }
      break;
    }
  }
  if (bp.split) { // our own Sync closes the first part; the client hears its status later
    append_frame(wbuf_, 'S', {});
    exp_.emplace_back(Expect::sync, false).status = true;
  }
}

// The SET LOCALs and SETs of the implicit transaction that ran elsewhere (implicit_local_),
// run in the implicit transaction the batch starts on its backend, answers swallowed.
void Session::write_implicit_local() {
  for (auto &s : implicit_local_) {
    protocol::parse(wbuf_, "sg_local", s, {});
    exp_.emplace_back(Expect::one, false);
    protocol::Writer(wbuf_, 'B').cstr("sg_local").cstr("sg_local").i16(0).i16(0).i16(0).finish();
    exp_.emplace_back(Expect::one, false);
    protocol::Writer(wbuf_, 'E').cstr("sg_local").i32(0).finish();
    exp_.emplace_back(Expect::execute, false);
    protocol::close(wbuf_, 'P', "sg_local");
    exp_.emplace_back(Expect::one, false);
    protocol::close(wbuf_, 'S', "sg_local");
    exp_.emplace_back(Expect::one, false);
  }
}

// A SET or RESET the client ran with the extended protocol completed on b.
// `side`: it ran on a side connection, outside a transaction block: a BEGIN later in the same
// implicit transaction takes it into the transaction (implicit_local_), as PostgreSQL does.
void Session::track_set(BackendConn &b, const ClientStmt &st, bool side) {
  const router::StatementPlan &sp = st.planned.analysis->stmts[0];
  if (sp.kind == router::StmtKind::set || sp.kind == router::StmtKind::reset_all) {
    settings_ran(b, sp, trim(st.text));
    if (side)
      implicit_local_.push_back(trim(st.text));
  } else if (sp.kind == router::StmtKind::rollback && !in_tx() && settings_before_) {
    // ROLLBACK outside a transaction block rolls back the implicit transaction, and the SETs
    // the request ran in it.
    restore_settings();
    settings_before_.reset();
  }
}

Task<bool> Session::on_batch() {
  // The batch is taken out of batch_ while it runs, and its storage handed back at the end so
  // that it is allocated once per session, not per batch (message bodies too: spare_bodies_).
  std::vector<Msg> batch;
  batch.swap(batch_);
  struct GiveBack {
    std::vector<Msg> &home, &v;
    std::vector<std::string> &spare;
    ~GiveBack() {
      for (Msg &m : v)
        if (m.body.capacity() > 15 && spare.size() < 16) // beyond the inline room
          spare.push_back(std::move(m.body));
      v.clear();
      if (home.empty())
        home.swap(v);
    }
  } give_back{batch_, batch, spare_bodies_};
  note_routed();
  if (batch_tx_ && !in_tx()) [[unlikely]]
    batch_tx_ = false; // (its session lost the transaction: see batch_lost)

  // A new request, not the rest of one cut by Flush. (Whether the last part left an implicit
  // transaction open is known only now: a COMMIT or ROLLBACK in it may have ended a block.)
  if (batch_shard_ < 0 && !(implicit_open_ && !in_tx())) {
    request_error_ = false;
    end_seen_ = false;
    settings_before_.reset();
    implicit_local_.clear();
  }
  // A migration's cutover: a batch that writes a moving key waits for the flip (may_hold).
  while (w_->place().keys->pause && batch_moves_key(batch))
    [[unlikely]] co_await hold_a_moment();
  hold_since_ = {};
  // INSERTs without a column list: their tables' key positions, read before planning.
  if (!co_await learn_batch_key_positions(batch)) [[unlikely]] {
    if (!batch.empty() && batch.back().type == 'S')
      ready();
    else
      skip_until_sync_ = true;
    co_return true;
  }
  BatchPlan bp;
  if (!plan_batch(batch, bp))
    co_return co_await fatal("08P01", "invalid extended-protocol message");
  implicit_open_ = !bp.ends_sync;
  std::vector<Msg> after; // after a transaction's end (see BatchPlan::split)
  if (bp.split) {
    after.assign(std::make_move_iterator(batch.begin() + std::ptrdiff_t(bp.split)),
                 std::make_move_iterator(batch.end()));
    batch.erase(batch.begin() + std::ptrdiff_t(bp.split), batch.end()); // bp's items stay
    bp.ends_sync = true;
    bool begins = std::any_of(bp.items.begin(), bp.items.end(), [](const BatchItem &it) {
      return it.m->type == 'B' && it.st &&
             it.st->planned.analysis->stmts[0].kind == router::StmtKind::begin;
    });
    if (bp.cross && !in_tx() && !begins) {
      // Statements on several shards before one Sync: PostgreSQL runs them as one implicit
      // transaction, so they run in one of ours, committed at the client's Sync.
      open_own_tx();
      batch_tx_ = true;
    }
  }
  bool ends_sync = bp.ends_sync;

  if (bp.ddl) {
    std::string first, tag;
    bool applied = co_await run_on_all_primaries(bp.ddl->text, first, tag);
    if (!applied) {
      ready();
      co_return true;
    }
    // The client gets the extended protocol's answers, with the first shard's command tag.
    synthesize_batch(batch, tag);
    co_return true;
  }

  if (bp.scatter && !bp.error) {
    // A read on every shard, merged, or a write run on each: the client gets ParseComplete and
    // BindComplete, then the rows as a simple query's scatter makes them.
    const BatchItem &bi = bp.items[bp.scatter_item];
    bool describe = false;
    for (const BatchItem &it : bp.items) {
      if (it.m->type == 'P')
        protocol::parse_complete(*sink_);
      describe |= it.m->type == 'D';
    }
    protocol::bind_complete(*sink_);
    ExtendedRead x{bi.m->body, &bi.bind, &bp.scatter->types, describe};
    scatter_shards_ = bp.scatter_shards;
    StmtRef st = bp.scatter; // (the plan's statement outlives the batch's bookkeeping)
    if (bp.scatter_write) {
      // Maybe the first part of a batch across shards (what follows runs after it, in the
      // same transaction), or its last (it ends the transaction of ours).
      bool more = !after.empty(), failed = false;
      if (!co_await scatter_write(st->planned, st->text, &x, !more && !batch_tx_, &failed))
        co_return false;
      if (!in_tx()) {
        portals_.clear(); // outside a transaction block a portal ends with its Sync
        virtual_portals_.clear();
      }
      if (batch_tx_ && (failed || !more)) {
        co_await end_own_tx(!failed && tx_ == 'T');
        co_return true;
      }
      if (failed) { // the server skips what follows to the client's Sync
        if (more)
          ready();
        co_return true;
      }
      if (!more)
        co_return true;
      batch_ = std::move(after);
      co_return co_await on_batch();
    }
    bool ok = co_await scatter_read(st->planned, st->text, &x);
    portals_.clear(); // outside a transaction block a portal ends with its Sync
    virtual_portals_.clear();
    co_return ok;
  }
  if (bp.end_multi && bp.error) [[unlikely]] {
    // Another message of the batch failed: the transaction across shards rolls back on every
    // shard (never a COMMIT on one of them), and the batch is answered with its error.
    std::string discard;
    sink_ = &discard;
    co_await end_multi_tx(false);
    sink_ = &out_;
    synthesize_items(bp);
    co_return true;
  }
  if (bp.end_multi) {
    // The end of a transaction across shards: run on every shard it holds; the client gets the
    // extended protocol's answers (or the error, then ReadyForQuery).
    bool commit = bp.end_multi->planned.analysis->stmts[0].kind == router::StmtKind::commit;
    std::string capture;
    sink_ = &capture;
    co_await end_multi_tx(commit && tx_ != 'E');
    sink_ = &out_;
    if (!capture.empty() && capture[0] == 'E')
      out_ += capture;
    else
      synthesize_batch(batch, last_rollback_ ? "ROLLBACK" : "COMMIT");
    co_return true;
  }

  // Step 2: where the batch runs.
  int held = tx_shard_ >= 0 ? tx_shard_ : batch_shard_;
  if (proxy_failed_ && held < 0 &&
      std::all_of(bp.items.begin(), bp.items.end(), [](const BatchItem &it) {
        return it.m->type == 'S' || it.m->type == 'H' || it.m->type == 'C';
      })) {
    synthesize_items(bp); // a bare Sync (or Close) of a failed waiting transaction: 'E'
    co_return true;
  }
  bool poison = proxy_failed_; // the proxy failed the transaction: the backend must fail too
  bool side = false;
  int shard;
  if (poison && held < 0 && bp.shard < 0) {
    // A failed transaction that no statement bound: it is failed in a copy on a side
    // connection, where PostgreSQL answers the batch, so that it still binds no shard.
    shard = int(w_->place().keys->default_shard);
    side = true;
  } else if (held >= 0 || poison || bp.shard >= 0) {
    shard = held >= 0 ? held : bp.shard >= 0 ? bp.shard : int(w_->place().keys->default_shard);
    if (tx_shard_ >= 0 && batch_shard_ < 0 && bp.shard >= 0 && !poison && bp.shard != held) {
      shard = bp.shard; // another shard of the transaction, or one it takes in now
      if (!(shard < 64 && (tx_shards_ >> shard) & 1))
        deferred_ = join_text();
    }
  } else {
    BatchMode mode = batch_mode(bp);
    if (mode == BatchMode::synth) {
      synthesize_items(bp);
      if (after.empty() || request_error_)
        co_return true;
      batch_ = std::move(after); // (a BEGIN before statements across shards)
      co_return co_await on_batch();
    }
    // Nothing in the batch needs a shard (Parse and Describe, as asyncpg prepares cut by
    // Flush; reads of no table; transaction control that waits): it runs on a connection of
    // its own, closed with our own Sync (and, inside a transaction whose BEGIN waits, in a
    // copy of it rolled back after), so that it pins no shard; a later Bind routes by its key.
    shard = int(w_->place().keys->default_shard);
    side = mode == BatchMode::side;
  }
  // A side batch runs inside a copy of the waiting BEGIN when it runs anything.
  bool side_tx = side && (in_tx() || !implicit_local_.empty()) && (bp.any_exec || poison);
  if (log::enabled(log::Level::debug)) {
    std::string types;
    for (auto &m : batch)
      types.push_back(m.type);
    auto f = log_fields();
    f.insert(f.end(), {{"messages", types},
                       {"shard", std::to_string(shard)},
                       {"tx", std::string(1, tx_)},
                       {"side", side ? "yes" : "no"}});
    log::debug("batch", f);
  }
  bool read =
      !poison && !side && bp.any_bind && bp.all_read && held < 0 && (!in_tx() || tx_read_only_);
  auto started = w_->poller.now(); // this loop turn's time: see record_query
  std::optional<size_t> slow;
  BackendConn *b = attach_now(size_t(shard), read, SIZE_MAX, slow);
  if (!b && slow)
    b = co_await attach_slow(size_t(shard), *slow);
  if (!b) {
    if (in_tx())
      fail_transaction_by_proxy();
    if (ends_sync)
      ready();
    else
      skip_until_sync_ = true;
    co_return true;
  }
  // A write outside a transaction block to a shard whose keys a migration moves runs in a
  // transaction of its own, so that its copy is made before it commits (session_mirror.cpp):
  // the batch runs after a BEGIN, and its Sync's ReadyForQuery waits for the commit.
  bool own_tx = ends_sync && !side && !poison && held < 0 && !in_tx() && bp.any_bind &&
                !bp.all_read && !bp.error && implicit_local_.empty() && bp.shard == shard &&
                w_->place().keys->mirror_source(size_t(shard)) && plain_statements(bp);
  if (own_tx) [[unlikely]]
    open_own_tx();
  // The last part of a batch across shards, in a transaction of ours: it ends here.
  bool end_own = own_tx || (batch_tx_ && ends_sync && !bp.split && !side);
  char tx_before = tx_;
  wbuf_.clear();
  bool replay = !in_tx() && !implicit_local_.empty() && (side_tx || (!side && held < 0));
  prepare_backend(*b, wbuf_, !side || side_tx, side_tx, replay);
  if (replay)
    write_implicit_local(); // (a BEGIN later in the batch then opens a block as usual)
  if (poison) {
    // Statements the batch names that this backend lacks are prepared before the
    // transaction fails there (a failed transaction refuses a Parse), so that the server
    // answers for them as it would (wrong parameter counts, 25P02).
    size_t n = 0;
    auto prepare = [&](const StmtRef &st) {
      bool here = std::any_of(bp.items.begin(), bp.items.end(), [&](const BatchItem &p) {
        return p.m->type == 'P' && p.st == st; // parsed by this batch: its Parse is the client's
      });
      if (!here && st->planned.analysis->parsed && n++ < 64)
        ensure_prepared(*b, *st, wbuf_);
    };
    for (const BatchItem &it : bp.items) // what the batch names (a later Parse may rename it)
      if (it.st && (it.m->type == 'B' || (it.m->type == 'D' && it.target == 'S')))
        prepare(it.st);
    for (auto &[name, st] : stmts_)
      prepare(st);
    write_failure({});
    append_frame(wbuf_, 'S', {});
    exp_.emplace_back(Expect::sync, false);
  }
  write_items(*b, bp, side);
  if (end_own) { // the client's Sync: its status is the transaction's until the commit
    exp_.back().forward = false;
    exp_.back().status = true;
  }
  // Parse and Describe cut by Flush inside a transaction block (asyncpg prepares so): closed
  // with our own Sync, so that the Bind that follows may run on another shard of the
  // transaction (a transaction block survives a Sync; the client's Sync is answered later).
  bool own_sync = !side && !ends_sync && tx_shard_ >= 0 && batch_shard_ < 0 && !bp.any_bind &&
                  !bp.any_exec && !poison;
  if (own_sync) {
    append_frame(wbuf_, 'S', {});
    exp_.emplace_back(Expect::sync, false);
  }
  if (side_tx || bp.side_deferred) { // the side connection keeps no transaction open
    protocol::query(wbuf_, "ROLLBACK");
    exp_.emplace_back(Expect::query, false);
    b->unnamed_owner = 0; // a simple Query drops the unnamed statement
  }
  if (poison && !side && !multi_tx()) { // the backend holds the failed transaction from here on
    proxy_failed_ = false;
    bind_tx(shard);
  }
  ErrorCode ec;
  std::string_view rest = wbuf_;
  if (!send_now(b->sock, rest, ec))
    co_await write_all(b->sock, rest, ec);
  side_batch_ = side;
  RelayStep st = ec ? send_failed(*b) : relay_start(*b); // relay(), inline
  while (relay_poll(*b, st))
    co_await b->sock.wait(Poller::in); // as a statement: see read_some in poller.h
  bool ok = st == RelayStep::done || (st != RelayStep::failed && co_await relay_more(*b, st));
  side_batch_ = false;
  if (side) {
    if (ends_sync && tx_ == 'I' && request_error_ && settings_before_)
      restore_settings();            // the implicit transaction failed: its SETs are undone
    if (side_tx || bp.side_deferred) // what a copy of a transaction left there is not
      mark_untracked(*b);            // tracked: the next user resets it first
    detach_if_idle();
    if (!ok && !b->broken)
      co_return false;
    if (!ok) {
      error("08006", "lost the connection to the backend while describing a statement");
      if (ends_sync)
        ready();
    }
    if (!ends_sync && (!ok || !last_sqlstate_.empty())) {
      if (in_tx())
        fail_transaction_by_proxy(); // as the server would have failed it
      skip_until_sync_ = true;       // and discarded messages until the client's Sync
    }
    if (ends_sync && tx_ == 'I') {
      portals_.clear();
      virtual_portals_.clear();
    } else {
      // The portals lived on the side connection only: what each gave the client is kept,
      // to make it again where it is used next (see virtual_portals_).
      std::unordered_map<std::string, VirtualPortal> here;
      size_t slot = 0;
      for (const BatchItem &it : bp.items) {
        if (it.error)
          break;
        char t = it.m->type;
        if (t == 'B') {
          if (slot < exec_counts_.size() && !exec_counts_[slot++].second)
            continue; // skipped after an error: the portal is what it was
          here[it.name] = VirtualPortal{pure_read(*it.st) ? it.m->body : std::string(), it.st};
        } else if (t == 'C' && it.target == 'P') {
          here.erase(it.name);
        } else if (t == 'E') {
          bool counted =
              !it.rebind.empty() || (!(it.st && deferrable(*it.st) && !it.again) && !it.special);
          std::pair<uint64_t, bool> rows{0, false};
          if (counted && slot < exec_counts_.size())
            rows = exec_counts_[slot++];
          if (it.st && ends_tx(*it.st)) {
            here.clear(); // the transaction's portals ended with it
            continue;
          }
          if (!it.rebind.empty())
            here[it.name] = VirtualPortal{it.rebind, it.st, it.rerun};
          if (auto h = here.find(it.name); counted && h != here.end()) {
            h->second.sent += rows.first;
            h->second.done |= rows.second;
          }
        }
      }
      // (A COMMIT or ROLLBACK answered in its turn cleared portals_, which the plan had filled
      // for the whole batch: the portals made after it are put back.)
      for (auto &[name, v] : here) {
        if (v.st)
          portals_[name] = v.st;
        virtual_portals_[name] = std::move(v);
      }
    }
    co_return true;
  }
  if (!ok)
    co_return co_await batch_lost(*b, shard, ends_sync);
  if (own_sync) {
    if (!last_sqlstate_.empty())
      skip_until_sync_ = true; // as the server would have, until the client's Sync
    settle_tx(shard, tx_before);
    co_return true;
  }
  if (!ends_sync) {
    b->unsynced = true;   // never pooled in this state: an abandoned write must roll back
    batch_shard_ = shard; // the implicit transaction stays open until Sync
    if (!last_sqlstate_.empty())
      skip_until_sync_ = true;
    co_return true;
  }
  batch_shard_ = -1;
  if (bp.any_bind && !bp.all_read)
    note_write(size_t(shard));
  if (bp.first_bound)
    record_query(size_t(shard), *b, bp.kind, started, bp.first_bound->planned.scan.normalized);
  bool failed = !last_sqlstate_.empty();
  settle_tx(shard, tx_before);
  if (end_own || (failed && batch_tx_)) [[unlikely]] {
    // Commit (copying first) or roll back; the client hears the commit's error if any, then
    // ReadyForQuery (idle), as after an implicit transaction. (A part of a batch across
    // shards that failed ends it too: the server skips what follows to the client's Sync.)
    co_await end_own_tx(!failed && tx_ == 'T');
    if (failed)
      co_return true;
  }
  if (after.empty())
    co_return true;
  if (failed) { // the server skips what follows to the client's Sync
    if (after.back().type == 'S')
      ready();
    else
      skip_until_sync_ = true;
    co_return true;
  }
  batch_ = std::move(after);
  co_return co_await on_batch();
}

} // namespace sg::proxy

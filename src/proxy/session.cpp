// Client session: startup, authentication, and the query loop. See session.h.
#include "proxy/session.h"

#include "protocol/auth.h"
#include "proxy/errors.h"
#include "proxy/session_util.h"

#include <algorithm>
#include <boost/container/small_vector.hpp>
#include <functional>

namespace sg::proxy {

namespace {

constexpr uint32_t kMaxStartupPacket = 10000; // as PostgreSQL's MAX_STARTUP_PACKET_LENGTH
constexpr size_t kMaxBatchMessages = 100000;
std::atomic<uint64_t> g_session_ids{1};

std::string lower(std::string_view s) {
  std::string o(s);
  for (auto &c : o)
    c = char(std::tolower(uint8_t(c)));
  return o;
}

bool safe_guc_name(std::string_view n) {
  return !n.empty() && std::all_of(n.begin(), n.end(), [](char c) {
    return std::isalnum(uint8_t(c)) || c == '_' || c == '.';
  });
}

} // namespace

using detail::append_frame;
using detail::count_route;
using detail::kind_of;
using detail::trim;

Session::Session(Worker &w, Stream sock, std::string peer)
    : w_(&w), sh_(w.shared), sock_(std::move(sock)), cbuf_(16 * 1024), peer_(std::move(peer)) {
  attached_.resize(sh_.cfg.shards.size());
  ryw_at_.assign(sh_.cfg.shards.size(), 0);
  session_mode_ = sh_.cfg.proxy.pool_mode == config::PoolMode::session;
  id_ = g_session_ids++;
}

Session::~Session() {
  detach_all();
  if (counted_)
    w_->stats.clients.fetch_sub(1, std::memory_order_relaxed);
  if (pid_)
    sh_.cancels.remove(pid_, key_);
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

// ---------------------------------------------------------------- startup

Task<bool> Session::startup() {
  auto ex = co_await asio::this_coro::executor;
  Deadline deadline(ex, sh_.cfg.proxy.auth_timeout_ms, [this] { sock_.close(); });
  std::vector<std::pair<std::string, std::string>> params;
  for (;;) {
    auto s = protocol::decode_startup(cbuf_.data(), cbuf_.size(), kMaxStartupPacket);
    if (s.status == protocol::DecodeStatus::need_more) {
      size_t avail = 0;
      uint8_t *p = cbuf_.prepare(1024, avail);
      ErrorCode ec;
      size_t n = co_await read_some(sock_, p, avail, ec);
      if (ec)
        co_return false; // closed before a whole startup packet: nothing to answer
      cbuf_.commit(n);
      continue;
    }
    if (s.status == protocol::DecodeStatus::error)
      co_return co_await fatal("08P01", std::string(s.error),
                               "connect with a PostgreSQL client (protocol 3.0)");
    std::string body(s.body_view());
    uint32_t code = s.code;
    cbuf_.consume(s.frame_len);
    if (code == uint32_t(protocol::StartupCode::ssl_request) ||
        code == uint32_t(protocol::StartupCode::gssenc_request)) {
      ErrorCode ec;
      co_await write_all(sock_, "N", ec); // no TLS / GSSAPI encryption yet
      if (ec)
        co_return false;
      continue;
    }
    if (code == uint32_t(protocol::StartupCode::cancel_request)) {
      co_await handle_cancel(body);
      co_return false;
    }
    if (code != uint32_t(protocol::StartupCode::protocol_v3))
      co_return co_await fatal("0A000",
                               "unsupported frontend protocol " + std::to_string(code >> 16) + "." +
                                   std::to_string(code & 0xffff) + ": server supports 3.0 to 3.0");
    auto parsed = protocol::parse_startup_params(body);
    if (!parsed)
      co_return co_await fatal("08P01", "invalid startup packet layout: expected terminator as "
                                        "last byte");
    params = std::move(*parsed);
    break;
  }
  std::string database;
  for (auto &[k, v] : params) {
    if (k == "user")
      user_ = v;
    else if (k == "database")
      database = v;
  }
  if (user_.empty())
    co_return co_await fatal("28000", "no PostgreSQL user name specified in startup packet");
  if (database.empty())
    database = user_;
  if (!co_await authenticate(user_))
    co_return false;
  if (database != sh_.cfg.proxy.database)
    co_return co_await fatal("3D000", "database \"" + database + "\" does not exist",
                             "this proxy serves database \"" + sh_.cfg.proxy.database + "\"");
  deadline.disarm();

  // Startup parameters become session settings, re-applied on whichever backend serves us.
  for (auto &[k, v] : params) {
    std::string name = lower(k);
    if (name == "user" || name == "database" || name == "replication" || name == "options" ||
        !safe_guc_name(name) || (name == "client_encoding" && lower(v) == "auto"))
      continue;
    settings_[name] = "SET " + name + " TO " + router::quote_e_literal(v);
    startup_params_.emplace_back(name, v);
  }
  startup_settings_ = settings_;
  rehash_settings();

  if (!co_await send_server_params())
    co_return false;
  pid_ = sh_.next_pid++;
  key_ = int32_t(std::hash<std::string>{}(protocol::random_bytes(8)));
  cancel_ = std::make_shared<CancelSlot>();
  sh_.cancels.add(pid_, key_, cancel_);
  protocol::backend_key_data(out_, pid_, key_);
  ready();
  counted_ = true;
  w_->stats.clients.fetch_add(1, std::memory_order_relaxed);
  log::debug("client_connected", log_fields());
  co_return co_await flush();
}

Task<bool> Session::authenticate(const std::string &user) {
  auto creds = sh_.credentials(); // this login's view, whatever a reload does meanwhile
  auto it = creds->scram.find(user);
  bool known = it != creds->scram.end();
  const uint32_t max = 64 * 1024;
  auto failed = [&]() -> Task<bool> {
    co_return co_await fatal("28P01", "password authentication failed for user \"" + user + "\"");
  };
  auto read_password = [&](std::string &body) -> Task<bool> {
    co_await flush();
    ErrorCode ec;
    auto f = co_await read_frame(sock_, cbuf_, max, ec);
    if (f.status != protocol::DecodeStatus::ready)
      co_return false;
    if (f.type != 'p') {
      cbuf_.consume(f.frame_len);
      co_await fatal("08P01", "expected password response, got message type " +
                                  std::to_string(int(uint8_t(f.type))));
      co_return false;
    }
    body.assign(f.body_view());
    cbuf_.consume(f.frame_len);
    co_return true;
  };
  std::string body;
  if (sh_.cfg.proxy.auth == config::AuthMethod::md5) {
    std::string salt = protocol::random_bytes(4);
    protocol::auth_md5(out_, reinterpret_cast<const uint8_t *>(salt.data()));
    if (!co_await read_password(body))
      co_return false;
    protocol::Reader r(body);
    std::string_view got = r.cstr();
    if (!known || !r.ok() ||
        got != protocol::md5_password(user, creds->passwords.at(user), salt))
      co_return co_await failed();
  } else {
    const protocol::ScramSecret &secret = known ? it->second : sh_.mock_secret;
    protocol::auth_sasl(out_, "SCRAM-SHA-256");
    if (!co_await read_password(body))
      co_return false;
    // SASLInitialResponse: String mechanism, Int32 length, Byte[n] client-first-message.
    protocol::Reader r(body);
    std::string_view mech = r.cstr();
    int32_t len = r.i32();
    std::string_view first = len >= 0 ? r.bytes(size_t(len)) : std::string_view{};
    if (!r.ok() || mech != "SCRAM-SHA-256")
      co_return co_await fatal("28000", "client selected an invalid SASL authentication mechanism");
    protocol::ScramServer server(secret);
    auto server_first = server.handle_client_first(first);
    if (!server_first)
      co_return co_await fatal("08P01", "malformed SCRAM message");
    protocol::auth_sasl_continue(out_, *server_first);
    if (!co_await read_password(body))
      co_return false;
    auto server_final = server.handle_client_final(body);
    if (!server_final || !known)
      co_return co_await failed();
    protocol::auth_sasl_final(out_, *server_final);
  }
  protocol::auth_ok(out_);
  co_return true;
}

Task<bool> Session::send_server_params() {
  auto params = sh_.server_params();
  if (!params) {
    // Learn them from the default shard's primary (this also proves it is reachable).
    size_t node = w_->place().primary[sh_.router.default_shard()];
    ConnectError err;
    auto conn = co_await w_->pool(node)->acquire(err);
    if (!conn)
      co_return co_await fatal(err.sqlstate.empty() ? "08006" : err.sqlstate,
                               "cannot reach the default shard: " + err.message,
                               "check that the backend is running and the config's URL is right");
    sh_.set_server_params(conn->server_params);
    params = conn->server_params;
    w_->pool(node)->release(std::move(conn));
  }
  for (auto &[k, v] : *params) {
    std::string value = v;
    std::string lk = lower(k);
    for (auto &[sk, sv] : startup_params_) {
      if (sk == lk && (lk == "application_name" || lk == "datestyle" || lk == "timezone" ||
                       lk == "intervalstyle" || lk == "client_encoding"))
        value = (lk == "client_encoding" &&
                 (lower(sv) == "utf8" || lower(sv) == "utf-8" || lower(sv) == "unicode"))
                    ? "UTF8"
                    : sv;
    }
    protocol::parameter_status(out_, k, value);
    if (lk == "application_name")
      reported_app_ = reported_at_startup_ = value;
  }
  co_return true;
}

// CancelRequest: Int32 pid, Int32 secret key (the proxy's own); forwarded to the backend that
// runs that client's statement.
Task<void> Session::handle_cancel(std::string_view body) {
  protocol::Reader r(body);
  int32_t pid = r.i32(), key = r.i32();
  if (!r.ok())
    co_return;
  auto slot = sh_.cancels.find(pid, key);
  if (!slot)
    co_return;
  const Node *node = slot->node.load(std::memory_order_acquire);
  uint64_t backend = slot->backend.load(std::memory_order_relaxed);
  auto bpid = int32_t(uint32_t(backend >> 32)), bkey = int32_t(uint32_t(backend));
  if (!node)
    co_return;
  auto ex = co_await asio::this_coro::executor;
  Socket s(ex);
  Deadline d(ex, sh_.cfg.proxy.connect_timeout_ms, [&s] {
    ErrorCode ec;
    s.close(ec);
  });
  ErrorCode ec;
  auto addr = asio::ip::make_address(node->endpoint.host, ec);
  if (ec)
    co_return;
  co_await s.async_connect(tcp::endpoint(addr, node->endpoint.port),
                           asio::redirect_error(use_awaitable, ec));
  if (ec)
    co_return;
  std::string out;
  protocol::cancel_request(out, bpid, bkey);
  co_await write_all(s, out, ec);
  log::info("cancel_forwarded", {{"node", node->label()}});
}

// ---------------------------------------------------------------- settings

uint64_t Session::hash_settings(const std::map<std::string, std::string> &s) {
  if (s.empty())
    return 0;
  std::string all;
  for (auto &[k, v] : s)
    all += k + '\n' + v + '\n';
  return std::hash<std::string>{}(all) | 1;
}

void Session::rehash_settings() {
  settings_hash_ = hash_settings(settings_);
  app_check_ = true;
}

// Records a SET the client ran, in canonical form; false when the proxy cannot rebuild it, in
// which case the caller marks the backend it ran on for a reset.
bool Session::set_setting(const std::string &name, const std::string &stmt) {
  auto canon = router::canonical_set(stmt);
  if (!canon)
    return false;
  note_settings_change();
  if (canon->starts_with("RESET ")) {
    // RESET goes back to the value the client connected with, as in PostgreSQL.
    if (auto it = startup_settings_.find(name); it != startup_settings_.end())
      settings_[name] = it->second;
    else
      settings_.erase(name);
  } else {
    settings_[name] = *canon;
  }
  rehash_settings();
  return true;
}

// After a SET, RESET or RESET ALL (sp, text) succeeded on b: the session's settings change,
// and b holds them, except what a RESET gave the server's default where the session has a
// startup value (set again before b serves next).
void Session::settings_ran(BackendConn &b, const router::StatementPlan &sp,
                           const std::string &text) {
  bool untracked = b.settings.count("\x01untracked") > 0;
  if (sp.kind == router::StmtKind::reset_all) {
    note_settings_change();
    settings_ = startup_settings_;
    rehash_settings();
    b.settings.clear(); // the server's defaults, untracked ones too
    b.settings_hash = 0;
    return;
  }
  untracked |= !set_setting(sp.set_name, text);
  b.settings = settings_;
  b.settings_hash = settings_hash_;
  if (sp.tag == "RESET" && startup_settings_.count(sp.set_name)) {
    b.settings.erase(sp.set_name);
    b.settings_hash = 1;
  }
  if (untracked)
    mark_untracked(b);
}

// The backend holds a setting the proxy does not track: the next checkout sends RESET ALL.
void Session::mark_untracked(BackendConn &b) {
  b.settings["\x01untracked"] = "";
  b.settings_hash = 1;
}

std::string Session::stmt_key(const std::string &text, const std::vector<uint32_t> &types) const {
  std::string k = text;
  k.push_back('\0');
  for (uint32_t t : types)
    k.append(reinterpret_cast<const char *>(&t), 4);
  // A prepared statement resolves names with the search_path it was prepared under.
  if (auto it = settings_.find("search_path"); it != settings_.end())
    k += '\0' + it->second;
  return k;
}

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
    board.count_fallback(shard, reason, sh_.cfg.shards[shard].name);
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
      board.count_fallback(shard, FallbackReason::down, sh_.cfg.shards[shard].name);
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
  co_return adopt(shard, pool, std::move(conn));
}

void Session::unreachable(size_t shard, const std::string &sqlstate, const std::string &msg) {
  const std::string &shard_name = sh_.cfg.shards[shard].name;
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
  if (tx_ == 'I')
    ryw_at_[shard] = now_ms();
  else
    tx_wrote_ = true;
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
  const auto &base = send_deferred && in_tx()        ? tx_settings_snapshot_
                     : implicit && settings_before_ ? *settings_before_
                                                     : settings_;
  uint64_t base_hash = &base == &settings_ ? settings_hash_ : hash_settings(base);
  if (b.settings_hash != base_hash) {
    std::string q;
    bool reset = std::any_of(b.settings.begin(), b.settings.end(),
                             [&](auto &kv) { return !base.count(kv.first); });
    if (reset)
      q = "RESET ALL;";
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

// ---------------------------------------------------------------- transactions

void Session::fail_transaction_by_proxy() {
  tx_ = 'E';
  proxy_failed_ = true;
  app_check_ = true; // the failure restores the settings the transaction began with
}

// Before the first settings change of a request that began outside a transaction.
void Session::note_settings_change() {
  if (!in_tx() && !settings_before_)
    settings_before_ = settings_;
}

// The implicit transaction of a request failed: the SETs it ran are undone, on the server too.
// settings_before_ stays as it was: the ReadyForQuery's report still reads it (report_app).
void Session::restore_settings() {
  settings_ = *settings_before_;
  rehash_settings();
  for (auto &a : attached_)
    if (a.conn) {
      a.conn->settings = settings_;
      a.conn->settings_hash = settings_hash_;
    }
}

// BEGIN inside a transaction, answered by the proxy: PostgreSQL's warning comes first.
void Session::already_in_tx() {
  protocol::ErrorInfo n;
  n.severity = "WARNING";
  n.sqlstate = "25001";
  n.message = "there is already a transaction in progress";
  protocol::notice_response(*sink_, n);
}

// The transaction ended (the client was told 'I'): settings roll back with it if it did.
void Session::apply_tx_end() {
  app_check_ = true;
  if (last_rollback_) {
    settings_ = tx_settings_snapshot_;
    rehash_settings();
    for (auto &a : attached_)
      if (a.conn) {
        a.conn->settings = settings_;
        a.conn->settings_hash = settings_hash_;
      }
  }
  if (tx_wrote_ && tx_shard_ >= 0)
    ryw_at_[size_t(tx_shard_)] = now_ms();
  tx_wrote_ = false;
  tx_read_only_ = false;
  tx_ = 'I';
  tx_shard_ = -1;
  deferred_.clear();
  proxy_failed_ = false;
  if (!portals_.empty()) { // portals end with their transaction
    portals_.clear();
    virtual_portals_.clear();
  }
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

// A statement the proxy answers itself, with no backend.
static void synthetic_done(std::string &out, const std::string &tag) {
  protocol::command_complete(out, tag);
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
        if (step == QueryStep::answered)
          continue;
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
                                          sh_.cfg.shards[size_t(q.shard)].name +
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

// Whether q (a routed simple Query) may share a backend connection with other clients' reads
// (see mux.h): a lone plain read in autocommit, from a session that holds no connection of its
// own on that shard. (mux_join() matches the session's settings with the connection's.)
bool Session::pipelinable(const QueryRun &q, const router::StatementPlan &sp, bool alone) const {
  return sh_.cfg.proxy.pipeline_depth > 0 && !session_mode_ && q.read && !in_tx() &&
         tx_shard_ < 0 && batch_shard_ < 0 && deferred_.empty() && exp_.empty() && sink_ == &out_ &&
         alone && sp.pipelinable && !attached_[size_t(q.shard)].conn;
}

// A lane of the node's (see mux.h) that this read may join, or nullptr: the read then takes
// the usual path. It joins only a queue that is short enough and whose front started
// recently, so that a slow read holds up few others; else it opens a lane of its own.
MuxLane *Session::mux_join(size_t node) {
  Mux &mux = w_->muxes[node];
  MuxLane *spare = nullptr;
  for (auto &l : mux.lanes) {
    if (!l->conn) {
      spare = spare ? spare : l.get();
      continue;
    }
    auto waited =
        std::chrono::duration_cast<std::chrono::microseconds>(w_->poller.now() - l->front_since);
    if (!l->writing && !l->conn->broken && l->conn->settings_hash == settings_hash_ &&
        l->queue.size() < sh_.cfg.proxy.pipeline_depth &&
        waited.count() <= int64_t(sh_.cfg.proxy.pipeline_join_us))
      return l.get();
  }
  Pool *pool = w_->pool(node);
  auto conn = pool->try_acquire();
  if (!conn)
    return nullptr;
  sh_.health.report_success(node);
  if (!spare) {
    spare = mux.lanes.emplace_back(std::make_unique<MuxLane>()).get();
    spare->pool = pool;
  }
  spare->conn = std::move(conn); // the request's writer brings its settings in line
  spare->front_since = w_->poller.now();
  return spare;
}

// The front of m's queue is done. Its turn goes to the next; or, if the connection broke
// (`failed`), every read still queued learns it lost its answer and runs again elsewhere.
void Session::mux_leave(MuxLane &m, bool failed) {
  m.queue.pop_front();
  if (failed) {
    m.conn->broken = true;
    while (!m.queue.empty()) {
      *m.queue.front().lost = true;
      w_->poller.pass(m.queue.front().turn);
      m.queue.pop_front();
    }
  } else if (!m.queue.empty()) {
    m.front_since = w_->poller.now();
    w_->poller.pass(m.queue.front().turn);
    return;
  }
  if (!m.writing) // else the writer still sends on it, and releases it after
    mux_release(m);
}

void Session::mux_release(MuxLane &m) {
  if (!w_->stopping)
    m.pool->release(std::move(m.conn));
  m.conn.reset();
}

// A simple Query's routing, with no I/O: answered here (errors, statements the proxy serves
// itself), or what query_loop() must do with it. For `run`, q says where.
Session::QueryStep Session::route_query(const std::string &sql, QueryRun &q) {
  request_error_ = false;
  end_seen_ = false;
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

  // Resolve every statement; they must agree on one shard.
  int shard = -1;
  bool all_read = true, none_only = true, broadcast_ddl = false;
  for (const auto &st : stmts) {
    router::Resolved r = sh_.router.resolve(st, sql, planned.scan);
    count_route(w_->stats, r.kind, st);
    if (r.kind == router::TargetKind::error) {
      error(r.error.sqlstate, r.error.message, r.error.hint);
      if (in_tx())
        fail_transaction_by_proxy();
      ready();
      return QueryStep::answered;
    }
    if ((r.kind == router::TargetKind::by_key && st.kind != router::StmtKind::read) ||
        r.kind == router::TargetKind::all_primaries) {
      if (auto f = sh_.fenced_write()) {
        error(f->sqlstate, f->message, f->hint);
        if (in_tx())
          fail_transaction_by_proxy();
        ready();
        return QueryStep::answered;
      }
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
        error("0A000", "this query string touches more than one shard",
              "send statements for different shards separately; cross-shard transactions are "
              "not supported yet");
        if (in_tx())
          fail_transaction_by_proxy();
        ready();
        return QueryStep::answered;
      }
    }
    if (st.kind != router::StmtKind::read)
      all_read = false;
  }
  if (broadcast_ddl) {
    if (!single || in_tx()) {
      error("0A000", "DDL on a sharded table must be sent alone, outside a transaction",
            "run it as its own statement in autocommit mode; it is applied to every shard");
      if (in_tx())
        fail_transaction_by_proxy();
      ready();
      return QueryStep::answered;
    }
    return QueryStep::broadcast;
  }

  bool tx_bound = tx_shard_ >= 0;
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
        error("26000", "prepared statement \"" + first.set_name + "\" does not exist");
        if (in_tx())
          fail_transaction_by_proxy();
        ready();
        return QueryStep::answered;
      }
      synthetic_done(*sink_, first.tag);
      ready();
      return QueryStep::answered;
    default:
      break;
    }
  }

  if (shard < 0)
    shard = tx_bound ? tx_shard_ : int(sh_.router.default_shard());
  if (tx_bound && shard != tx_shard_) {
    error("0A000",
          "transaction touches a second shard (\"" + sh_.cfg.shards[size_t(shard)].name +
              "\" after \"" + sh_.cfg.shards[size_t(tx_shard_)].name + "\")",
          "keep each transaction on one shard key's shard; cross-shard transactions (2PC) are "
          "not supported yet");
    fail_transaction_by_proxy();
    ready();
    return QueryStep::answered;
  }
  // Reads outside a transaction, and READ ONLY transactions, may use a replica.
  q.shard = shard;
  q.all_read = all_read;
  q.read = all_read && (!in_tx() || (tx_read_only_ && !tx_bound));
  return QueryStep::run;
}

// Query text for the backend, after what the session's state needs first.
void Session::write_query(BackendConn &b, const std::string &sql) {
  wbuf_.clear();
  prepare_backend(b, wbuf_);
  protocol::Writer(wbuf_, 'Q').cstr(sql).finish(); // protocol::query(), inline: per query
  exp_.emplace_back(Expect::query, true);
  b.unnamed_owner = 0;
}

// The backend serving query_loop()'s attempt at q broke. A read whose answer had not started
// runs once more on another eligible node; otherwise the client hears what happened.
Task<bool> Session::query_failed(QueryRun &q, BackendConn *b) {
  const std::string &shard_name = sh_.cfg.shards[size_t(q.shard)].name;
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
  if (tx_shard_ >= 0 && attached_[size_t(tx_shard_)].conn) {
    BackendConn &b = *attached_[size_t(tx_shard_)].conn;
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
Task<bool> Session::run_on_all_primaries(const std::string &sql, std::string &first_capture,
                                         std::string &tag) {
  std::vector<std::string> failed, applied;
  protocol::ErrorInfo first_error;
  for (size_t s = 0; s < sh_.cfg.shards.size(); ++s) {
    const std::string &name = sh_.cfg.shards[s].name;
    std::string capture;
    sink_ = &capture;
    BackendConn *b = co_await attach(s, false);
    bool ok = false;
    if (b) {
      write_query(*b, sql);
      ErrorCode ec;
      co_await write_all(b->sock, wbuf_, ec);
      ok = !ec && co_await relay(*b);
      if (!ok)
        b->broken = true;
    }
    sink_ = &out_;
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
              std::to_string(sh_.cfg.shards.size()) + " shards: " + list,
          applied.empty() ? "nothing was changed on any shard"
                          : "it was applied on: " + ok_list +
                                "; fix the cause and re-run it (e.g. with IF [NOT] EXISTS)");
    co_return false;
  }
  co_return true;
}

Task<bool> Session::on_function_call(Msg m) {
  size_t shard = tx_shard_ >= 0 ? size_t(tx_shard_) : sh_.router.default_shard();
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

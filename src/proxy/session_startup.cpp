// Client session, part: startup, authentication, server parameters and CancelRequest.
// See session.h.
#include "proxy/session.h"

#include "proxy/errors.h"
#include "proxy/session_util.h"

#include <algorithm>
#include "protocol/auth.h"

namespace sg::proxy {

namespace {

constexpr uint32_t kMaxStartupPacket = 10000; // as PostgreSQL's MAX_STARTUP_PACKET_LENGTH

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
  {
    auto creds = sh_.credentials();
    auto cap = creds->max_clients.find(user_);
    uint32_t max = cap == creds->max_clients.end() ? 0 : cap->second;
    if (!sh_.admit_client(user_, max))
      co_return co_await fatal("53300",
                               "too many connections for user \"" + user_ + "\"",
                               "[[users]] max_client_connections is " + std::to_string(max) +
                                   " for this user; close idle connections or raise it");
    admitted_ = true;
    if (auto r = creds->rates.find(user_); r != creds->rates.end())
      rate_ = r->second;
  }
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
    size_t node = w_->place().primary[w_->place().keys->default_shard];
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
  std::vector<CancelSlot::Target> targets = slot->take_many();
  if (targets.empty()) {
    const Node *node = slot->node.load(std::memory_order_acquire);
    uint64_t backend = slot->backend.load(std::memory_order_relaxed);
    if (!node)
      co_return;
    targets.push_back({node, int32_t(uint32_t(backend >> 32)), int32_t(uint32_t(backend))});
  }
  for (auto &t : targets)
    co_await forward_cancel(t.node, t.pid, t.key);
}

// One CancelRequest to a backend node, on a connection of its own.
Task<void> Session::forward_cancel(const Node *node, int32_t bpid, int32_t bkey) {
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

} // namespace sg::proxy

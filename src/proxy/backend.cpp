// Backend connection setup: StartupMessage, authentication, then ParameterStatus and
// BackendKeyData until ReadyForQuery.
#include "proxy/backend.h"

#include "protocol/auth.h"
#include "protocol/messages.h"
#include "proxy/errors.h"

namespace sg::proxy {

namespace {
constexpr uint32_t kMaxStartupFrame = 1 << 20;
}

Task<std::unique_ptr<BackendConn>> connect_backend(Poller &poller, const Node &node,
                                                   uint32_t timeout_ms, ConnectError &err) {
  auto ex = co_await asio::this_coro::executor;
  auto conn = std::make_unique<BackendConn>(node);
  // Asio connects; the connection then moves to the worker's poller for the login and after.
  Socket connecting(ex);
  Stream &sock = conn->sock;
  Deadline deadline(ex, timeout_ms, [&] {
    ErrorCode ignored;
    connecting.close(ignored);
    sock.close();
  });
  ErrorCode ec;
  const auto &ep = node.endpoint;
  tcp::endpoint target;
  auto addr = asio::ip::make_address(ep.host, ec);
  if (!ec) {
    target = tcp::endpoint(addr, ep.port);
  } else {
    Resolver resolver(ex);
    auto results = co_await resolver.async_resolve(ep.host, std::to_string(ep.port),
                                                   asio::redirect_error(use_awaitable, ec));
    if (ec || results.empty()) {
      err = {make_error_code(errc::backend_refused), "cannot resolve host " + ep.host, "08001"};
      co_return nullptr;
    }
    target = *results.begin();
  }
  co_await connecting.async_connect(target, asio::redirect_error(use_awaitable, ec));
  auto fail = [&](errc code, std::string msg, std::string state = "08006") {
    if (deadline.fired()) {
      err = {make_error_code(errc::connect_timeout),
             "timed out after " + std::to_string(timeout_ms) + " ms connecting to " + ep.label(),
             "08001"};
    } else {
      err = {make_error_code(code), std::move(msg), std::move(state)};
    }
  };
  if (ec) {
    fail(errc::backend_refused, "cannot connect to " + ep.label() + ": " + ec.message(), "08001");
    co_return nullptr;
  }
  connecting.set_option(tcp::no_delay(true), ec);
  if (!ec)
    sock = make_stream(poller, connecting, ec);
  if (ec) {
    fail(errc::backend_closed,
         "cannot register the connection to " + ep.label() + ": " + ec.message());
    co_return nullptr;
  }

  std::string out;
  // No application_name of our own: the client's (or none) is applied as a session setting.
  protocol::startup_message(
      out, {{"user", ep.user}, {"database", ep.dbname.empty() ? ep.user : ep.dbname}});
  co_await write_all(sock, out, ec);
  std::unique_ptr<protocol::ScramClient> scram;
  for (;;) {
    if (ec) {
      fail(errc::backend_closed, "lost connection to " + ep.label() + " during login");
      co_return nullptr;
    }
    auto f = co_await read_frame(sock, conn->rbuf, kMaxStartupFrame, ec);
    if (f.status != protocol::DecodeStatus::ready) {
      fail(ec ? errc::backend_closed : errc::backend_protocol,
           "lost connection to " + ep.label() + " during login");
      co_return nullptr;
    }
    std::string_view body = f.body_view();
    out.clear();
    switch (f.type) {
    case 'R': {
      protocol::Reader r(body);
      int32_t code = r.i32();
      if (code == 0) {
        break;
      } else if (code == 3) { // AuthenticationCleartextPassword
        protocol::password_message(out, ep.password);
      } else if (code == 5) { // AuthenticationMD5Password: Byte4 salt
        auto salt = r.bytes(4);
        protocol::password_message(out, protocol::md5_password(ep.user, ep.password, salt));
      } else if (code == 10) { // AuthenticationSASL: mechanism list
        bool has_scram = false;
        for (auto m = r.cstr(); r.ok() && !m.empty(); m = r.cstr())
          has_scram |= (m == "SCRAM-SHA-256");
        if (!has_scram) {
          fail(errc::backend_auth_failed, ep.label() + " offers no SASL mechanism we support",
               "28000");
          co_return nullptr;
        }
        scram = std::make_unique<protocol::ScramClient>(ep.password);
        protocol::sasl_initial_response(out, "SCRAM-SHA-256", scram->client_first());
      } else if (code == 11 && scram) { // AuthenticationSASLContinue
        auto final = scram->handle_server_first(body.substr(4));
        if (!final) {
          fail(errc::backend_auth_failed, ep.label() + " sent a malformed SCRAM message", "08P01");
          co_return nullptr;
        }
        protocol::sasl_response(out, *final);
      } else if (code == 12 && scram) { // AuthenticationSASLFinal
        if (!scram->verify_server_final(body.substr(4))) {
          fail(errc::backend_auth_failed, ep.label() + " failed SCRAM server verification",
               "28000");
          co_return nullptr;
        }
      } else {
        fail(errc::backend_auth_failed,
             ep.label() + " asked for unsupported authentication method " + std::to_string(code),
             "28000");
        co_return nullptr;
      }
      break;
    }
    case 'S': {
      if (auto kv = protocol::parse_parameter_status(body))
        conn->server_params.emplace_back(std::string(kv->first), std::string(kv->second));
      break;
    }
    case 'K': {
      protocol::Reader r(body);
      conn->pid = r.i32();
      conn->key = r.i32();
      break;
    }
    case 'E': {
      auto e = protocol::parse_error_response(body);
      bool auth = e.sqlstate.rfind("28", 0) == 0;
      fail(auth ? errc::backend_auth_failed : errc::backend_refused, ep.label() + ": " + e.message,
           e.sqlstate.empty() ? "08006" : e.sqlstate);
      co_return nullptr;
    }
    case 'Z':
      conn->rbuf.consume(f.frame_len);
      deadline.disarm();
      co_return conn;
    default: // NoticeResponse, NegotiateProtocolVersion: nothing to do
      break;
    }
    conn->rbuf.consume(f.frame_len);
    if (!out.empty())
      co_await write_all(sock, out, ec);
  }
}

} // namespace sg::proxy

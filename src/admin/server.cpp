#include "admin/server.h"

#include "proxy/errors.h"
#include "proxy/listen.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <limits>

#include <sys/socket.h>

namespace sg::admin {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

constexpr size_t kBodyLimit = 1 << 20;

struct Server::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
};

Server::Server(Sources src) : src_(std::move(src)), impl_(std::make_unique<Impl>()) {}

Server::~Server() { stop(); }

bool Server::start(const std::string &host, uint16_t port, std::string &error) {
  if (!proxy::listen_tcp(impl_->acceptor, host, port, "[admin] listen", error))
    return false;
  thread_ = std::thread([this] { serve(); });
  return true;
}

void Server::stop() { proxy::stop_serving(impl_->io, impl_->acceptor, thread_); }

namespace {

void answer(tcp::socket &sock, const Response &r, unsigned version) {
  http::response<http::string_body> res;
  res.version(version ? version : 11);
  res.keep_alive(false);
  res.result(http::status(r.status));
  res.set(http::field::content_type, "application/json");
  res.set(http::field::cache_control, "no-store");
  for (auto &[k, v] : r.headers)
    res.set(k, v);
  res.body() = r.body;
  res.prepare_payload();
  boost::system::error_code ec;
  http::write(sock, res, ec);
}

void serve_one(tcp::socket &sock, const Sources &src) {
  timeval tv{5, 0};
  ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  boost::beast::flat_buffer buf;
  http::request_parser<http::string_body> parser;
  parser.body_limit(std::numeric_limits<uint64_t>::max()); // Content-Length is checked below
  boost::system::error_code ec;
  http::read_header(sock, buf, parser, ec);
  if (ec) {
    if (ec != http::error::end_of_stream)
      answer(sock, error(400, "bad_request", "malformed HTTP request: " + ec.message()), 11);
    return;
  }
  unsigned version = parser.get().version();
  auto len = parser.content_length();
  if (len && *len > kBodyLimit) {
    // Read and drop a body of moderate size first: a client that sends it all before it
    // reads would otherwise get a broken pipe instead of this answer.
    if (*len <= 16 * kBodyLimit) {
      uint64_t left = *len - std::min<uint64_t>(*len, buf.size());
      char sink[16384];
      while (left > 0) {
        size_t n = sock.read_some(asio::buffer(sink, std::min<uint64_t>(left, sizeof sink)), ec);
        if (ec)
          break;
        left -= n;
      }
    }
    answer(sock, error(413, "payload_too_large", "the body is over 1 MiB"), version);
    return;
  }
  parser.body_limit(kBodyLimit); // a chunked body
  http::read(sock, buf, parser, ec);
  if (ec == http::error::body_limit) {
    answer(sock, error(413, "payload_too_large", "the body is over 1 MiB"), version);
    return;
  }
  if (ec) {
    answer(sock, error(400, "bad_request", "malformed HTTP request: " + ec.message()), version);
    return;
  }
  auto &req = parser.get();
  Request r{std::string(req.method_string()), std::string(req.target()),
            std::string(req[http::field::authorization]), std::move(req.body())};
  Response res;
  try {
    res = handle(r, src);
  } catch (const std::exception &e) {
    res = error(500, "internal", e.what());
  }
  proxy::log::info("admin_request", {{"method", r.method},
                                     {"target", r.target},
                                     {"status", std::to_string(res.status)}});
  answer(sock, res, version);
}

} // namespace

void Server::serve() {
  std::function<void()> accept = [&] {
    impl_->acceptor.async_accept([&](boost::system::error_code ec, tcp::socket sock) {
      if (ec)
        return;
      serve_one(sock, src_);
      boost::system::error_code ignored;
      sock.shutdown(tcp::socket::shutdown_both, ignored);
      accept();
    });
  };
  accept();
  impl_->io.run();
}

} // namespace sg::admin

// A listening socket and its serving thread for the proxy's small HTTP endpoints (metrics,
// admin API): open, and stop from another thread. Not the data path's listeners (server.cpp).
#pragma once

#include <boost/asio.hpp>

#include <string>
#include <string_view>
#include <thread>

namespace sg::proxy {

// Opens `a` listening on host:port ("localhost" is 127.0.0.1); false with `error` on failure.
// `what` names the setting in the message ("[metrics] listen").
inline bool listen_tcp(boost::asio::ip::tcp::acceptor &a, const std::string &host, uint16_t port,
                       std::string_view what, std::string &error) {
  namespace asio = boost::asio;
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
  if (ec) {
    error = "bad " + std::string(what) + " host \"" + host + "\"";
    return false;
  }
  asio::ip::tcp::endpoint ep(addr, port);
  a.open(ep.protocol(), ec);
  if (!ec)
    a.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
  if (!ec)
    a.bind(ep, ec);
  if (!ec)
    a.listen(64, ec);
  if (ec) {
    error = "cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message();
    return false;
  }
  return true;
}

// Stops a thread that runs `io` serving `a`: the acceptor closes on io's thread, then io stops
// and the thread is joined. Idempotent.
inline void stop_serving(boost::asio::io_context &io, boost::asio::ip::tcp::acceptor &a,
                         std::thread &t) {
  if (!t.joinable())
    return;
  boost::asio::post(io, [&a] {
    boost::system::error_code ec;
    a.close(ec);
  });
  io.stop();
  t.join();
}

} // namespace sg::proxy

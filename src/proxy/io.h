// Asio aliases and small I/O helpers shared by sessions, backends and pools.
#pragma once

#include "protocol/frame.h"
#include "proxy/buffer.h"

#include <utility>

#include <boost/asio.hpp>

#include <cerrno>
#include <chrono>
#include <functional>
#include <memory>
#include <string_view>

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace sg::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

// Everything on a worker runs on that worker's io_context, so coroutines, sockets and timers
// use its concrete executor type: no type-erased executor to copy and dispatch through on
// every suspension.
using Executor = asio::io_context::executor_type;
template <class T = void> using Task = asio::awaitable<T, Executor>;
inline constexpr asio::use_awaitable_t<Executor> use_awaitable;
using Socket = asio::basic_stream_socket<tcp, Executor>;
using Acceptor = asio::basic_socket_acceptor<tcp, Executor>;
using Resolver = asio::ip::basic_resolver<tcp, Executor>;
using Timer = asio::basic_waitable_timer<std::chrono::steady_clock,
                                         asio::wait_traits<std::chrono::steady_clock>, Executor>;

// Runs on_fire (e.g. closing a socket) if not disarmed within `ms`. Safe to destroy early.
class Deadline {
public:
  Deadline(const Executor &ex, uint32_t ms, std::function<void()> on_fire)
      : timer_(ex), state_(std::make_shared<State>()) {
    state_->on_fire = std::move(on_fire);
    timer_.expires_after(std::chrono::milliseconds(ms));
    timer_.async_wait([s = state_](const ErrorCode &ec) {
      if (!ec && !s->done) {
        s->fired = true;
        s->on_fire();
      }
    });
  }
  ~Deadline() { disarm(); }
  void disarm() {
    state_->done = true;
    timer_.cancel();
  }
  bool fired() const { return state_->fired; }

private:
  struct State {
    bool done = false;
    bool fired = false;
    std::function<void()> on_fire;
  };
  Timer timer_;
  std::shared_ptr<State> state_;
};

// How much room to read into: the rest of a frame whose header is in, or at least 16 KiB.
inline size_t read_size(size_t frame_len, size_t buffered) {
  size_t rest = frame_len > buffered ? frame_len - buffered : 0;
  return rest > 16 * 1024 ? rest : 16 * 1024;
}

// recv() and send() without glibc's wrappers: in a multi-threaded process those are pthread
// cancellation points, which costs two calls around every system call (about 170 instructions
// per query, a few percent of the proxy's user time). The proxy never cancels threads.
inline ssize_t sys_recv(int fd, void *p, size_t n) {
  return ::syscall(SYS_recvfrom, fd, p, n, 0, nullptr, nullptr);
}
inline ssize_t sys_send(int fd, const void *p, size_t n) {
  return ::syscall(SYS_sendto, fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL, nullptr, 0);
}

// Sends what the kernel takes right now, straight to the socket and not through the reactor:
// the usual case for a request or a response, with no handler, queueing or resumption.
// Returns true when all of `data` went or ec is set; false leaves the unsent rest in `data`
// (the socket buffer is full), for write_all(). Callers never have another write in flight on
// the socket.
inline bool send_now(int fd, std::string_view &data, ErrorCode &ec) {
  while (!data.empty()) {
    ssize_t n = sys_send(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(size_t(n));
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return false;
    ec = n < 0 ? ErrorCode(errno, boost::system::system_category())
               : ErrorCode(asio::error::connection_reset);
    return true;
  }
  return true;
}

// For connections that stay on Asio (a forwarded CancelRequest); see poller.h for the rest.
inline Task<void> write_all(Socket &sock, std::string_view data, ErrorCode &ec) {
  if (send_now(sock.native_handle(), data, ec))
    co_return;
  co_await asio::async_write(sock, asio::buffer(data.data(), data.size()),
                             asio::redirect_error(use_awaitable, ec));
}

} // namespace sg::proxy

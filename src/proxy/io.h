// Asio aliases and small I/O helpers shared by sessions, backends and pools.
#pragma once

#include "protocol/frame.h"
#include "proxy/buffer.h"

#include <utility>

#include <boost/asio.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string_view>

namespace sg::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
template <class T = void> using Task = asio::awaitable<T>;
using asio::use_awaitable;
using ErrorCode = boost::system::error_code;

// Runs on_fire (e.g. closing a socket) if not disarmed within `ms`. Safe to destroy early.
class Deadline {
public:
  template <class Executor>
  Deadline(Executor ex, uint32_t ms, std::function<void()> on_fire)
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
  asio::steady_timer timer_;
  std::shared_ptr<State> state_;
};

// How much room to read into: the rest of a frame whose header is in, or at least 16 KiB.
inline size_t read_size(size_t frame_len, size_t buffered) {
  size_t rest = frame_len > buffered ? frame_len - buffered : 0;
  return rest > 16 * 1024 ? rest : 16 * 1024;
}

// Reads until one whole typed frame is buffered. On error, status is error and ec is set
// (ec stays clear for a decode error, whose text is in the view).
inline Task<protocol::FrameView> read_frame(tcp::socket &sock, Buffer &buf, uint32_t max_len,
                                            ErrorCode &ec) {
  for (;;) {
    protocol::FrameView f = protocol::decode_frame(buf.data(), buf.size(), max_len);
    if (f.status != protocol::DecodeStatus::need_more)
      co_return f;
    size_t avail = 0;
    uint8_t *p = buf.prepare(read_size(f.frame_len, buf.size()), avail);
    size_t n = co_await sock.async_read_some(asio::buffer(p, avail),
                                             asio::redirect_error(use_awaitable, ec));
    if (ec) {
      protocol::FrameView e;
      e.status = protocol::DecodeStatus::error;
      e.error = "connection closed";
      co_return e;
    }
    buf.commit(n);
  }
}

inline Task<void> write_all(tcp::socket &sock, std::string_view data, ErrorCode &ec) {
  co_await asio::async_write(sock, asio::buffer(data.data(), data.size()),
                             asio::redirect_error(use_awaitable, ec));
}

} // namespace sg::proxy

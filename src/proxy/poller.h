// Readiness for a worker's client and backend connections, and the worker's event loop: one
// edge-triggered epoll set per worker, which also holds the io_context's own epoll descriptor.
//
// Why the hot sockets are not Asio sockets: Asio tries a read before every wait, and on this
// path the awaited request or response is almost never there yet, so each query paid about 1.4
// failed recv() calls on top of Asio's per-operation queueing. Here a connection is read only
// when it had an event since its last short read, and a wait parks the coroutine's stack,
// which the event resumes directly. Timers, connects, DNS and the listener stay on Asio.
//
// Why the loop is ours and Asio's set sits inside it, not the other way round: a worker then
// blocks in one epoll_wait per batch of events. With our set inside Asio's, each batch cost
// Asio's wait, ours, an epoll_ctl to re-arm the readiness wait and a completion handler.
#pragma once

#include "proxy/io.h"

#include <boost/version.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

namespace sg::proxy {

// A coroutine stack suspended on a connection. A wait goes through Asio's awaitable machinery
// at its lowest level (the frame hook that async_result<use_awaitable_t> itself uses), so that
// it costs no coroutine frame and no completion handler: a per-query allocation otherwise.
// These are internals of Boost.Asio 1.74's impl/awaitable.hpp; recheck them before moving on.
static_assert(BOOST_VERSION / 100 == 1074,
              "Parked relies on Boost.Asio 1.74's awaitable internals");
class Parked : public asio::detail::awaitable_thread<Executor> {
public:
  explicit Parked(asio::detail::awaitable_thread<Executor> *t)
      : asio::detail::awaitable_thread<Executor>(std::move(*t)) {}
  // From now on the stack's handlers (timers, posts, its end) run on ex: for a session moving
  // to another worker. Call it before the stack resumes there.
  void rebind(const Executor &ex) { this->executor_ = ex; }
  // Runs the stack from where it waited until it waits again or ends.
  void resume() {
    this->top_of_stack_->attach_thread(this);
    this->pump();
  }
};

class Poller {
public:
  enum Dir : uint8_t { in = 0, out = 1 };

  Poller();
  ~Poller();
  Poller(const Poller &) = delete;
  Poller &operator=(const Poller &) = delete;

  // Binds the poller to io (the worker's io_context, which then must outlive shutdown()) and
  // adds io's own epoll descriptor to the set.
  void start(asio::io_context &io);
  // The worker's loop: run_once(-1) until io is stopped (io.stop() from any thread ends it).
  void run();
  // One turn: runs io's ready handlers if any are due (they were posted, or a timer, the
  // listener, a connect... is ready), then waits up to timeout_ms (-1: no bound) for events
  // and resumes the coroutines they are for. False once io is stopped.
  bool run_once(int timeout_ms);
  // Ends every coroutine still waiting on a connection. Their stacks go to io, which destroys
  // them when it is destroyed (or runs again). Call it while io is alive and no longer
  // running; idempotent.
  void shutdown();

  // Takes ownership of a connected socket (made non-blocking here); returns its slot. On
  // failure the socket is closed and ec is set.
  uint32_t add(int fd, ErrorCode &ec);
  // Closes the slot's socket. A coroutine waiting on it resumes (later, never inside this call)
  // and finds the connection closed.
  void close(uint32_t id);
  // Takes the slot's socket out of the set without closing it and frees the slot; returns the
  // descriptor (for another worker's poller). No coroutine may be waiting on the slot.
  int release(uint32_t id);
  int fd(uint32_t id) const { return slots_[id].fd; }
  // The time this loop turn began (read once per turn, after the wait): for latencies and
  // idle ages on the per-query path, which need no finer grain than a turn.
  std::chrono::steady_clock::time_point now() const { return now_; }

  // Reads what is there without waiting: > 0 bytes; 0 with ec clear when nothing is there yet;
  // 0 with ec set at end of stream or on an error.
  size_t try_read(uint32_t id, uint8_t *p, size_t n, ErrorCode &ec);

  // `co_await wait(id, d)` returns at the slot's next event in that direction (end of stream
  // and errors count as both) or once the slot is closed. One waiter per slot and direction.
  struct Wait {
    Poller *p;
    uint32_t id;
    Dir d;
    asio::detail::awaitable_thread<Executor> *
    operator()(asio::detail::awaitable_frame_base<Executor> *frame) const {
      p->park(id, d, Parked(frame->detach_thread()));
      return nullptr;
    }
  };
  Wait wait(uint32_t id, Dir d) { return {this, id, d}; }

  // A coroutine waiting for another one on this worker to hand it the turn, not for a socket
  // (see Mux). `co_await hold(slot)` parks it in slot; pass(slot) queues it, and this loop
  // resumes it within the same turn, never inside pass() itself. Whoever owns the slot drops
  // it (and so the stack) at shutdown.
  struct Hold {
    std::optional<Parked> *slot;
    asio::detail::awaitable_thread<Executor> *
    operator()(asio::detail::awaitable_frame_base<Executor> *frame) const {
      slot->emplace(frame->detach_thread());
      return nullptr;
    }
  };
  static Hold hold(std::optional<Parked> &slot) { return {&slot}; }
  void pass(std::optional<Parked> &slot) {
    if (slot) {
      handed_.push_back(std::move(*slot));
      slot.reset();
    }
  }

private:
  struct Slot {
    int fd = -1;
    uint32_t gen = 0;      // bumped on close: stale events for a reused slot are ignored
    bool readable = true;  // an event (or the start) since the last short read
    bool hup = false;      // the peer closed (or the socket failed): reads never wait again
    bool want_out = false; // EPOLLOUT is in the registration (only while a writer waits)
    std::optional<Parked> waiter[2];
  };

  void park(uint32_t id, Dir d, Parked t);
  void resume(uint32_t id, Dir d);
  void set_out_interest(uint32_t id, bool on);
  void run_handed(); // resumes what pass() queued, and what those pass on in turn

  int epfd_ = -1;
  asio::io_context *io_ = nullptr;
  asio::detail::scheduler *sched_ = nullptr; // io's implementation
  bool asio_due_ = true;                     // io may have handlers to run: poll it before waiting
  std::chrono::steady_clock::time_point now_ = std::chrono::steady_clock::now();
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  std::vector<Parked> handed_, handing_; // pass()ed stacks; the batch being resumed
  bool shut_ = false;
};

// A connection registered with a Poller; closes it when destroyed. Move-only.
class Stream {
public:
  Stream() = default;
  Stream(Poller &p, uint32_t id) : p_(&p), id_(id) {}
  Stream(Stream &&o) noexcept : p_(std::exchange(o.p_, nullptr)), id_(o.id_) {}
  Stream &operator=(Stream &&o) noexcept {
    if (this != &o) {
      close();
      p_ = std::exchange(o.p_, nullptr);
      id_ = o.id_;
    }
    return *this;
  }
  ~Stream() { close(); }

  bool is_open() const { return p_ != nullptr; }
  int fd() const { return p_ ? p_->fd(id_) : -1; }
  void close() {
    if (p_)
      std::exchange(p_, nullptr)->close(id_);
  }
  // See Poller::release: the open descriptor, now the caller's; the stream is closed.
  int release() { return p_ ? std::exchange(p_, nullptr)->release(id_) : -1; }
  // See Poller::try_read; a closed stream reads as an error.
  size_t try_read(uint8_t *p, size_t n, ErrorCode &ec) {
    if (!p_) {
      ec = asio::error::bad_descriptor;
      return 0;
    }
    return p_->try_read(id_, p, n, ec);
  }
  // `co_await s.wait(d)`: see Poller::wait. Only on an open stream; afterwards, the stream may
  // have been closed meanwhile (try_read and sends then fail).
  Poller::Wait wait(Poller::Dir d) { return p_->wait(id_, d); }

private:
  Poller *p_ = nullptr;
  uint32_t id_ = 0;
};

// Wraps a connected Asio socket's descriptor (taken from it) in a Stream on p.
Stream make_stream(Poller &p, Socket &sock, ErrorCode &ec);

// Reads what is there, waiting for it if need be: > 0 bytes, or 0 with ec set at end of
// stream, on an error, or when the stream was closed meanwhile.
// (Out of line: GCC 12 gives an inline coroutine's frame a different type in each translation
// unit, which LTO reports as an ODR violation.)
Task<size_t> read_some(Stream &s, uint8_t *p, size_t n, ErrorCode &ec);

// Sends what the kernel takes now (see send_now in io.h); waits for room for the rest.
Task<void> write_all(Stream &s, std::string_view data, ErrorCode &ec);
inline bool send_now(Stream &s, std::string_view &data, ErrorCode &ec) {
  return send_now(s.fd(), data, ec);
}

// Reads until one whole typed frame is buffered. On error, status is error and ec is set (ec
// stays clear for a decode error, whose text is in the view).
Task<protocol::FrameView> read_frame(Stream &s, Buffer &buf, uint32_t max_len, ErrorCode &ec);

} // namespace sg::proxy

// The worker's epoll set for client and backend connections (see poller.h).
#include "proxy/poller.h"

#include <boost/asio/detail/scheduler.hpp>

#include <cerrno>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace sg::proxy {

namespace {
constexpr uint32_t kReadEvents = EPOLLIN | EPOLLRDHUP | EPOLLET;

ErrorCode errno_code() {
  return ErrorCode(errno, boost::system::system_category());
}

uint64_t tag(uint32_t id, uint32_t gen) {
  return uint64_t(gen) << 32 | id;
}
constexpr uint64_t kAsioTag = ~uint64_t(0); // io's own epoll descriptor (no slot has this id)

// --- the io_context's internals that the loop needs (Boost.Asio 1.74, pinned in poller.h) ---
//
// An io_context that is only ever poll()ed believes its reactor task is never blocked, so a
// handler posted from another thread (a client handed over, shutdown, a DNS answer from the
// resolver's thread) would not wake it. Before the loop blocks, it tells the scheduler that its
// task is waiting, as run() would; the next post then interrupts the reactor, whose descriptor
// is in our set. These members are private; an explicit instantiation may name them.
using Scheduler = asio::detail::scheduler;
using Reactor = asio::detail::epoll_reactor;

template <class Tag, auto M> struct Expose {
  friend constexpr auto member(Tag) { return M; }
};
struct SchedMutex {
  friend constexpr auto member(SchedMutex);
};
struct SchedQueue {
  friend constexpr auto member(SchedQueue);
};
struct SchedTaskOp {
  friend constexpr auto member(SchedTaskOp);
};
struct SchedInterrupted {
  friend constexpr auto member(SchedInterrupted);
};
struct ReactorFd {
  friend constexpr auto member(ReactorFd);
};
template struct Expose<SchedMutex, &Scheduler::mutex_>;
template struct Expose<SchedQueue, &Scheduler::op_queue_>;
template struct Expose<SchedTaskOp, &Scheduler::task_operation_>;
template struct Expose<SchedInterrupted, &Scheduler::task_interrupted_>;
template struct Expose<ReactorFd, &Reactor::epoll_fd_>;

int asio_epoll_fd(asio::io_context &io) {
  return asio::use_service<Reactor>(io).*member(ReactorFd{});
}

// Marks io's reactor task as blocked, so that the next handler queued for io interrupts it
// (an epoll_ctl on the reactor's set, which makes its descriptor readable in ours). False when
// handlers are queued already, so the caller must not block.
bool expect_wakeup(Scheduler &s) {
  asio::detail::conditionally_enabled_mutex::scoped_lock lock(s.*member(SchedMutex{}));
  asio::detail::scheduler_operation *front =
      asio::detail::op_queue_access::front(s.*member(SchedQueue{}));
  asio::detail::scheduler_operation *task = &(s.*member(SchedTaskOp{}));
  if (front && (front != task || asio::detail::op_queue_access::next(front)))
    return false;
  s.*member(SchedInterrupted{}) = false;
  return true;
}
} // namespace

Poller::Poller() : epfd_(::epoll_create1(EPOLL_CLOEXEC)) {
  if (epfd_ < 0)
    throw boost::system::system_error(errno_code(), "epoll_create1");
}

Poller::~Poller() {
  shutdown();
  for (uint32_t id = 0; id < slots_.size(); ++id)
    if (slots_[id].fd >= 0)
      ::close(slots_[id].fd);
  ::close(epfd_);
}

void Poller::start(asio::io_context &io) {
  io_ = &io;
  sched_ = &asio::use_service<Scheduler>(io);
  epoll_event ev{};
  ev.events = EPOLLIN; // level-triggered: ready while io's own set has events to collect
  ev.data.u64 = kAsioTag;
  if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, asio_epoll_fd(io), &ev) < 0)
    throw boost::system::system_error(errno_code(), "epoll_ctl(io_context)");
}

void Poller::run() {
  // Coroutines resumed from here run outside io's own handler loop: this context lets their
  // frames and handlers use Asio's per-thread recycled memory all the same.
  asio::detail::thread_context key;
  asio::detail::thread_info_base info;
  asio::detail::thread_context::thread_call_stack::context ctx(&key, info);
  while (run_once(-1)) {
  }
}

bool Poller::run_once(int timeout_ms) {
  if (asio_due_) {
    asio_due_ = false;
    now_ = std::chrono::steady_clock::now();
    io_->poll();
  }
  if (io_->stopped())
    return false;
  run_handed();
  if (!handed_.empty() || !expect_wakeup(*sched_)) {
    timeout_ms = 0; // a handler was queued meanwhile (from another thread): run it next turn
    asio_due_ = true;
  }
  epoll_event evs[64];
  // As recv/send in io.h: the system call itself, not glibc's cancellation-point wrapper.
  int n = int(::syscall(SYS_epoll_wait, epfd_, evs, 64, timeout_ms));
  if (n > 0)
    now_ = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    if (evs[i].data.u64 == kAsioTag) {
      asio_due_ = true;
      continue;
    }
    auto id = uint32_t(evs[i].data.u64);
    auto gen = uint32_t(evs[i].data.u64 >> 32);
    // A coroutine resumed for an earlier event may have closed (and reused) this slot.
    if (id >= slots_.size() || slots_[id].gen != gen || slots_[id].fd < 0)
      continue;
    uint32_t e = evs[i].events;
    if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
      if (slots_[id].want_out)
        set_out_interest(id, false); // or every acknowledged send would report here
      resume(id, out);
    }
    if (slots_[id].gen != gen || slots_[id].fd < 0)
      continue;
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
      slots_[id].readable = true;
      if (e & (EPOLLRDHUP | EPOLLERR | EPOLLHUP))
        slots_[id].hup = true;
      resume(id, in);
    }
  }
  run_handed(); // a response relayed for one client may have handed the turn to the next
  return true;
}

void Poller::run_handed() {
  for (int rounds = 0; !handed_.empty() && !shut_ && rounds < 64; ++rounds) {
    handing_.swap(handed_);
    for (auto &t : handing_)
      t.resume();
    handing_.clear();
  }
}

void Poller::shutdown() {
  shut_ = true;
  handed_.clear();
  // A dropped stack is posted to io for destruction (Asio's awaitable_thread does that); the
  // frames' destructors then close their streams here, so this object must outlive io.
  for (auto &s : slots_)
    for (auto &w : s.waiter)
      w.reset();
}

uint32_t Poller::add(int fd, ErrorCode &ec) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    ec = errno_code();
    ::close(fd);
    return 0;
  }
  uint32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    id = uint32_t(slots_.size());
    slots_.emplace_back();
  }
  Slot &s = slots_[id];
  s.fd = fd;
  s.readable = true;
  s.hup = false;
  s.want_out = false;
  epoll_event ev{};
  ev.events = kReadEvents;
  ev.data.u64 = tag(id, s.gen);
  if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
    ec = errno_code();
    close(id);
  }
  return id;
}

void Poller::close(uint32_t id) {
  Slot &s = slots_[id];
  if (s.fd < 0)
    return;
  ::close(s.fd); // also leaves the epoll set
  s.fd = -1;
  ++s.gen;
  free_.push_back(id);
  for (auto &w : s.waiter) {
    if (!w)
      continue;
    Parked t = std::move(*w);
    w.reset();
    if (shut_ || !io_)
      continue; // shutting down: the waiting coroutine goes with t
    // Resumed from the io_context, not from inside close(): the closer may be anything, even
    // a deadline of the waiting session itself.
    asio::post(*io_, [t = std::move(t)]() mutable { t.resume(); });
  }
}

int Poller::release(uint32_t id) {
  Slot &s = slots_[id];
  int fd = std::exchange(s.fd, -1);
  if (fd < 0)
    return -1;
  ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
  ++s.gen;
  free_.push_back(id);
  return fd;
}

size_t Poller::try_read(uint32_t id, uint8_t *p, size_t n, ErrorCode &ec) {
  Slot &s = slots_[id];
  if (s.fd < 0) {
    ec = asio::error::bad_descriptor;
    return 0;
  }
  while (s.readable) {
    ssize_t got = sys_recv(s.fd, p, n);
    if (got > 0) {
      // A short read emptied the socket's receive queue: edge-triggered epoll reports the next
      // data, so there is no point in reading again before that. Not so after the peer's FIN:
      // its one event may have come with the data just read, and no other will follow.
      if (size_t(got) < n && !s.hup)
        s.readable = false;
      return size_t(got);
    }
    if (got == 0) {
      ec = asio::error::eof;
      return 0;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      ec = errno_code();
      return 0;
    }
    s.readable = false;
    return 0;
  }
  return 0;
}

void Poller::park(uint32_t id, Dir d, Parked t) {
  Slot &s = slots_[id];
  if (s.fd < 0 || shut_) {
    asio::post(*io_, [t = std::move(t)]() mutable { t.resume(); });
    return;
  }
  s.waiter[d].emplace(std::move(t));
  if (d == out && !s.want_out)
    set_out_interest(id, true);
}

void Poller::set_out_interest(uint32_t id, bool on) {
  Slot &s = slots_[id];
  epoll_event ev{};
  ev.events = kReadEvents | (on ? uint32_t(EPOLLOUT) : 0u);
  ev.data.u64 = tag(id, s.gen);
  if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, s.fd, &ev) == 0)
    s.want_out = on;
}

void Poller::resume(uint32_t id, Dir d) {
  auto &w = slots_[id].waiter[d];
  if (!w)
    return;
  Parked t = std::move(*w);
  w.reset();
  t.resume(); // runs the coroutine until its next wait; slots_ may grow meanwhile
}

Stream make_stream(Poller &p, Socket &sock, ErrorCode &ec) {
  int fd = sock.release(ec);
  if (ec)
    return {};
  uint32_t id = p.add(fd, ec);
  if (ec)
    return {};
  return Stream(p, id);
}

Task<size_t> read_some(Stream &s, uint8_t *p, size_t n, ErrorCode &ec) {
  for (;;) {
    size_t got = s.try_read(p, n, ec);
    if (got || ec)
      co_return got;
    co_await s.wait(Poller::in); // as a statement: GCC 12 miscompiles it inside a condition
  }
}

Task<void> write_all(Stream &s, std::string_view data, ErrorCode &ec) {
  while (!send_now(s, data, ec)) // a stream closed meanwhile fails the send
    co_await s.wait(Poller::out);
}

Task<protocol::FrameView> read_frame(Stream &s, Buffer &buf, uint32_t max_len, ErrorCode &ec) {
  for (;;) {
    protocol::FrameView f = protocol::decode_frame(buf.data(), buf.size(), max_len);
    if (f.status != protocol::DecodeStatus::need_more)
      co_return f;
    size_t avail = 0;
    uint8_t *p = buf.prepare(read_size(f.frame_len, buf.size()), avail);
    size_t n = co_await read_some(s, p, avail, ec);
    if (ec) {
      protocol::FrameView e;
      e.status = protocol::DecodeStatus::error;
      e.error = "connection closed";
      co_return e;
    }
    buf.commit(n);
  }
}

} // namespace sg::proxy

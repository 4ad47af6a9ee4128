// Pool checkout/return, connect retries with exponential backoff and jitter.
#include "proxy/pool.h"

#include "proxy/errors.h"

#include <sys/socket.h>

#include <random>

namespace sg::proxy {

namespace {

// Non-blocking peek: EOF, an error, or unprompted bytes (a FATAL) mean the connection is dead.
bool still_alive(const Stream &s) {
  char c;
  ssize_t n = ::recv(s.fd(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

uint32_t backoff_ms(uint32_t attempt) {
  thread_local std::mt19937 rng{std::random_device{}()};
  uint32_t base = 50u << std::min<uint32_t>(attempt, 6); // 50 ms, 100 ms, ... capped at 3.2 s
  std::uniform_int_distribution<uint32_t> jitter(base / 2, base);
  return jitter(rng);
}

} // namespace

Pool::Pool(Poller &poller, const Node &node, size_t share, std::atomic<uint32_t> &budget,
           const config::Proxy &cfg)
    : poller_(poller), node_(node), max_(share), budget_(budget), cfg_(cfg) {}

bool Pool::reserve() {
  uint32_t v = budget_.load(std::memory_order_relaxed);
  while (v < cfg_.pool_size)
    if (budget_.compare_exchange_weak(v, v + 1, std::memory_order_relaxed))
      return true;
  return false;
}

void Pool::closed() {
  --open_;
  budget_.fetch_sub(1, std::memory_order_relaxed);
}

void Pool::close_idle(size_t n) {
  for (; n && !idle_.empty(); --n) {
    idle_.back().conn->sock.close();
    idle_.pop_back();
    closed();
  }
  publish();
}

void Pool::set_share(size_t n) {
  max_ = n;
  close_idle(open_ > max_ ? open_ - max_ : 0);
  wake_one(); // a waiter may now be allowed to connect
}

void Pool::shed_idle() {
  close_idle(idle_.size());
}

std::unique_ptr<BackendConn> Pool::try_acquire() {
  while (!idle_.empty()) {
    Idle it = std::move(idle_.back());
    idle_.pop_back();
    // A connection idle for a while may have been closed or terminated by the server: peek
    // (one syscall) before handing it out. Busy connections skip this; if one died anyway,
    // its FATAL arrives before any answer and the session treats it as a lost connection
    // (reads are retried).
    if (poller_.now() - it.since < std::chrono::seconds(1) || still_alive(it.conn->sock)) {
      publish();
      return std::move(it.conn);
    }
    closed();
  }
  publish();
  return nullptr;
}

Task<std::unique_ptr<BackendConn>> Pool::acquire(ConnectError &err) {
  auto ex = co_await asio::this_coro::executor;
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg_.pool_timeout_ms);
  for (;;) {
    if (auto idle = try_acquire())
      co_return idle;
    bool share_left = open_ < max_;
    if (share_left && reserve()) {
      ++open_;
      publish();
      for (uint32_t attempt = 0;; ++attempt) {
        auto conn = co_await connect_backend(poller_, node_, cfg_.connect_timeout_ms, err);
        if (conn) {
          co_return conn;
        }
        bool retriable = err.ec == make_error_code(errc::backend_refused) ||
                         err.ec == make_error_code(errc::connect_timeout) ||
                         err.ec == make_error_code(errc::backend_closed);
        // 57P03: the database system is starting up / shutting down; worth another try.
        retriable |= err.sqlstate == "57P03";
        if (!retriable || attempt >= cfg_.connect_retries) {
          closed();
          publish();
          wake_one();
          co_return nullptr;
        }
        Timer t(ex, std::chrono::milliseconds(backoff_ms(attempt)));
        ErrorCode ec;
        co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
      }
    }
    // Full: wait for a release, bounded by pool_timeout_ms.
    if (std::chrono::steady_clock::now() >= deadline) {
      err = {make_error_code(errc::pool_timeout),
             "no connection to " + node_.label() + " became free within " +
                 std::to_string(cfg_.pool_timeout_ms) + " ms (pool_size " +
                 std::to_string(cfg_.pool_size) + ")",
             "53300"};
      co_return nullptr;
    }
    // Within this pool's share but not the node's budget: another worker's pool holds the
    // rest, and gives it back as its share shrinks or it sheds; look again shortly.
    auto until =
        share_left
            ? std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(10))
            : deadline;
    Timer t(ex, until);
    waiters_.push_back(&t);
    auto me = std::prev(waiters_.end());
    ErrorCode ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
    if (ec != asio::error::operation_aborted)
      waiters_.erase(me); // timed out; a wake-up (cancel) already removed us
  }
}

void Pool::wake_one() {
  if (!waiters_.empty()) {
    waiters_.front()->cancel();
    waiters_.pop_front();
  }
}

void Pool::release(std::unique_ptr<BackendConn> conn) {
  if (!conn)
    return;
  if (conn->broken || conn->tx_status != 'I' || conn->unsynced || open_ > max_ || retired_) {
    conn->sock.close();
    closed();
  } else {
    idle_.push_back({std::move(conn), poller_.now()});
  }
  publish();
  wake_one();
}

} // namespace sg::proxy

// Per-worker pool of backend connections to one node. Lives on one worker thread: no locks,
// except the node's budget, shared by every worker's pool for that node, which caps their sum
// at pool_size. Each pool also has a share of it, which the server moves between workers as
// sessions are packed onto fewer of them or spread over more (see Server's balancer).
#pragma once

#include "config/config.h"
#include "proxy/backend.h"

#include <atomic>
#include <chrono>
#include <list>
#include <memory>
#include <vector>

namespace sg::proxy {

class Pool {
public:
  Pool(Poller &poller, const Node &node, size_t share, std::atomic<uint32_t> &budget,
       const config::Proxy &cfg);
  // A ready connection, or nullptr with err set (after retries with backoff and jitter).
  Task<std::unique_ptr<BackendConn>> acquire(ConnectError &err);
  // An idle connection right away, or nullptr (then acquire() waits or connects).
  std::unique_ptr<BackendConn> try_acquire();
  // Returns a connection; broken ones are closed and free a slot.
  void release(std::unique_ptr<BackendConn> conn);
  const Node &node() const { return node_; }
  // Readable from other threads (metrics): mirrors of the worker-local counts.
  uint32_t idle_gauge() const { return idle_gauge_.load(std::memory_order_relaxed); }
  uint32_t open_gauge() const { return open_gauge_.load(std::memory_order_relaxed); }
  // The most this pool opens (within the node's budget). A lower share closes idle
  // connections above it now and lent ones as they come back.
  void set_share(size_t n);
  // Closes every idle connection (a worker left without sessions gives its budget back).
  void shed_idle();
  // A node the placement no longer names: idle connections close now, lent ones as they come
  // back. Cleared when it returns.
  void set_retired(bool r) {
    retired_ = r;
    if (r)
      shed_idle();
  }

private:
  struct Idle {
    std::unique_ptr<BackendConn> conn;
    std::chrono::steady_clock::time_point since;
  };
  void wake_one();
  bool reserve();            // one more connection within the node's budget
  void closed();             // one connection fewer
  void close_idle(size_t n); // up to n idle connections, most recently used first

  Poller &poller_;
  const Node &node_;
  size_t max_;
  std::atomic<uint32_t> &budget_; // open connections to the node, over all workers
  const config::Proxy &cfg_;
  std::vector<Idle> idle_;
  size_t open_ = 0; // idle + lent + connecting
  bool retired_ = false;
  std::list<Timer *> waiters_;
  std::atomic<uint32_t> idle_gauge_{0};
  std::atomic<uint32_t> open_gauge_{0};
  void publish() {
    idle_gauge_.store(uint32_t(idle_.size()), std::memory_order_relaxed);
    open_gauge_.store(uint32_t(open_), std::memory_order_relaxed);
  }
};

} // namespace sg::proxy

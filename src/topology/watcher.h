// The control-plane thread of one proxy: keeps a connection to the metadata database, LISTENs
// for topology changes (NOTIFY shardgate_topology), records this proxy's applied epoch with a
// heartbeat, and fences: after [metadata] fence_timeout_ms without the metadata database it
// tells the data path to refuse writes to sharded tables, until the connection is back. It
// reconnects with capped exponential backoff. Blocking libpqxx calls stay on this thread.
#pragma once

#include "config/config.h"
#include "topology/store.h"
#include "topology/topology.h"

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sg::topology {

struct WatchStatus {
  std::string instance;
  bool connected = false;
  bool fenced = false;
  uint64_t applied_epoch = 0; // the epoch the data path runs on
  uint64_t stored_epoch = 0;  // the newest epoch seen in the metadata database
  int64_t disconnected_ms = 0;
  uint64_t reconnects = 0;
  std::string last_error;
  std::vector<ProxyRow> proxies; // as of the last heartbeat (ages brought up to now)
  // When the last complete round (read the newest epoch, apply it, heartbeat) began, in
  // steady-clock ms: what it learnt is at least that fresh. The data path's fence counts from
  // it (a reply delayed by a partition must not make a stale epoch look fresh).
  int64_t round_started_ms = 0;
};

class Watcher {
public:
  struct Hooks {
    std::function<void(bool fenced)> on_fence; // from the watcher thread
    // A newer stored epoch than the applied one; returns the epoch now applied.
    std::function<uint64_t(const Topology &)> on_epoch;
    // After every heartbeat and every failed attempt.
    std::function<void(const WatchStatus &)> on_status;
  };
  Watcher(const config::Config &cfg, std::string instance, std::string address,
          uint64_t applied_epoch, Hooks hooks);
  ~Watcher();
  void start();
  void stop();
  WatchStatus status() const;
  const std::string &instance() const { return instance_; }

private:
  void run();
  bool sleep_for(int ms); // false when stopping
  void check_fence();
  void report();
  config::Endpoint where_;
  config::Metadata policy_;
  std::string instance_, address_;
  Hooks hooks_;
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  WatchStatus st_;
  std::chrono::steady_clock::time_point last_ok_, proxies_at_;
};

// "<hostname>:<port>" unless [metadata] instance is set.
std::string instance_id(const config::Config &c);

} // namespace sg::topology

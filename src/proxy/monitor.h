// The health and lag monitor: one control-plane thread per node, probing with libpqxx every
// health_interval_ms and publishing to the HealthBoard. Never runs on a session thread.
#pragma once

#include "proxy/backend.h"
#include "proxy/health.h"

#include <pqxx/pqxx>

#include <deque>
#include <mutex>
#include <stop_token>
#include <thread>
#include <utility>
#include <vector>

namespace sg::proxy {

struct Shared;

class Monitor {
public:
  Monitor(const Shared &shared, HealthBoard &board);
  ~Monitor(); // stops and joins the probe threads
  void start(); // probes every node of the current placement
  // A node that joined the placement, or left it (control plane's thread).
  void watch(size_t node);
  void unwatch(size_t node);

private:
  void run(std::stop_token st, size_t node);
  void probe_primary(const Node &n, void *conn_slot);
  void probe_replica(const Node &n, void *conn_slot, bool again = true);
  pqxx::row query1(void *conn_slot, const Node &n, const char *sql);

  // Primary insert-LSN samples per shard, (sample time in ns, LSN), newest last. Nanoseconds,
  // so that "taken before this replica probe" never ties within a millisecond.
  struct Samples {
    std::mutex mu;
    std::deque<std::pair<int64_t, uint64_t>> s;
  };
  const Shared &shared_;
  HealthBoard &board_;
  std::vector<std::unique_ptr<Samples>> samples_;
  std::vector<std::jthread> threads_;
};

// "16/B374D848" -> 0x16B374D848
std::optional<uint64_t> parse_lsn(std::string_view s);

} // namespace sg::proxy

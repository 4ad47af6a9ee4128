// Per-worker traffic counters for the metrics layer. Each worker writes only its own block with
// relaxed atomics (no locks, no label strings per query); a scrape sums the workers.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sg::proxy {

enum class QueryKind : uint8_t { read, write, ddl, other };
constexpr size_t kQueryKinds = 4;
enum class RouteStat : uint8_t { single, multi, broadcast, default_shard, error, scatter };
constexpr size_t kRouteStats = 6;
enum class ErrorSource : uint8_t { client, backend, proxy };
constexpr size_t kErrorSources = 3;

// Latency buckets in seconds (upper bounds); a final +Inf bucket is implied.
constexpr std::array<double, 14> kLatencyBuckets = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0};

// The same bounds in nanoseconds, for the per-query observe().
constexpr std::array<uint64_t, kLatencyBuckets.size()> kLatencyBucketsNs = [] {
  std::array<uint64_t, kLatencyBuckets.size()> ns{};
  for (size_t i = 0; i < ns.size(); ++i)
    ns[i] = uint64_t(kLatencyBuckets[i] * 1e9 + 0.5);
  return ns;
}();

struct Histogram {
  std::array<std::atomic<uint64_t>, kLatencyBuckets.size() + 1> buckets{}; // non-cumulative
  std::atomic<uint64_t> count{0};
  std::atomic<uint64_t> sum_ns{0};
  void observe(uint64_t ns) {
    size_t i = 0;
    while (i < kLatencyBucketsNs.size() && ns > kLatencyBucketsNs[i])
      ++i;
    buckets[i].fetch_add(1, std::memory_order_relaxed);
    count.fetch_add(1, std::memory_order_relaxed);
    sum_ns.fetch_add(ns, std::memory_order_relaxed);
  }
};

struct WorkerStats {
  explicit WorkerStats(size_t shards)
      : shards_(shards), queries(shards * 2 * kQueryKinds), durations(shards * 2),
        pool_waits(shards * 2) {}
  size_t shards_;
  std::vector<std::atomic<uint64_t>> queries; // [shard][role][kind]
  std::vector<Histogram> durations;           // [shard][role]
  std::vector<Histogram> pool_waits;          // [shard][role]
  std::array<std::atomic<uint64_t>, kRouteStats> routes{};
  std::atomic<int64_t> clients{0};         // connected, past startup
  std::atomic<int64_t> clients_active{0};  // holding a backend
  std::atomic<int64_t> clients_waiting{0}; // waiting for a pooled connection
  std::atomic<uint64_t> moves_in{0};       // sessions moved here from another worker
  std::atomic<uint64_t> pipelined{0};      // reads queued behind others' on a shared connection
  // Transactions that wrote on several shards, by how two-phase commit ended them.
  std::atomic<uint64_t> twophase_committed{0}, twophase_aborted{0}, twophase_in_doubt{0};
  // Dual-write during a migration (session_mirror.cpp): commits whose writes to moving keys
  // were copied to the other side, and those whose copy failed (left to the change log).
  std::atomic<uint64_t> mirror_copied{0}, mirror_failed{0};

  static size_t qi(size_t shard, int role, QueryKind k) {
    return (shard * 2 + size_t(role)) * kQueryKinds + size_t(k);
  }
  void count_query(size_t shard, int role, QueryKind k) {
    queries[qi(shard, role, k)].fetch_add(1, std::memory_order_relaxed);
  }
  void count_route(RouteStat r) { routes[size_t(r)].fetch_add(1, std::memory_order_relaxed); }
};

// Errors by source and SQLSTATE class: rare, so a small locked map shared by all workers.
class ErrorStats {
public:
  void count(ErrorSource src, std::string_view sqlstate) {
    std::string cls(sqlstate.substr(0, 2));
    if (cls.size() != 2)
      cls = "XX";
    std::lock_guard lock(mu_);
    ++counts_[{int(src), cls}];
  }
  std::map<std::pair<int, std::string>, uint64_t> snapshot() const {
    std::lock_guard lock(mu_);
    return counts_;
  }

private:
  mutable std::mutex mu_;
  std::map<std::pair<int, std::string>, uint64_t> counts_;
};

} // namespace sg::proxy

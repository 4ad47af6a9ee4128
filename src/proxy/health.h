// Node health as the data path sees it: the lag gate (with hysteresis), the circuit breaker,
// and one board that the monitor and sessions write and that sessions (and, later, metrics)
// read. The gate and breaker are pure logic on a caller-supplied clock, so tests fake time.
#pragma once

#include "config/config.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace sg::proxy {

using Millis = int64_t; // monotonic milliseconds
Millis now_ms();

// What one probe of a replica found.
struct ReplicaProbe {
  bool ok = false; // answered within the probe timeout
  bool in_recovery = false;
  bool receiver_running = false;
  uint64_t replay_lsn = 0;
  std::optional<double> replay_age_ms; // how long the primary has been ahead of replay_lsn
};

struct LagReading {
  bool known = false;  // false: the probe failed or timed out, so lag is infinite
  bool broken = false; // not in recovery, or no WAL receiver: a broken replica (never 0 lag)
  uint64_t bytes = 0;
  std::optional<uint64_t> ms;
};

// bytes = primary LSN - replay LSN; ms = how long the primary has been ahead of the replay
// position (from the monitor's own LSN samples), and 0 when nothing is behind.
LagReading measure_lag(const ReplicaProbe &p, std::optional<uint64_t> primary_lsn,
                       bool primary_up = true);

// Ejects a replica above either threshold; re-admits it after `readmit_probes` consecutive
// readings under half of both. A new replica starts ejected until its probes are good.
class LagGate {
public:
  explicit LagGate(const config::Replicas &policy) : policy_(policy) {}
  bool observe(const LagReading &r);
  bool admitted() const { return admitted_; }

private:
  const config::Replicas &policy_;
  bool admitted_ = false;
  bool observed_ = false; // the first good reading admits at once; hysteresis is for re-admission
  uint32_t streak_ = 0;
};

// Repeated failures open the breaker (ban) with capped exponential backoff; after the ban one
// half-open trial decides between closing it and a longer ban.
class Breaker {
public:
  explicit Breaker(const config::Replicas &policy) : policy_(policy) {}
  bool allow(Millis now); // may an attempt go ahead now?
  void success();
  void failure(Millis now);
  Millis banned_until() const { return state_ == State::closed ? 0 : until_; }
  bool is_open(Millis now) const {
    return state_ != State::closed && (now < until_ || state_ == State::half_open);
  }

private:
  enum class State { closed, open, half_open };
  const config::Replicas &policy_;
  State state_ = State::closed;
  uint32_t failures_ = 0;
  uint32_t bans_ = 0;
  Millis until_ = 0;
};

enum class FallbackReason : uint8_t { lag, down, read_your_writes, no_replicas };
constexpr size_t kFallbackReasons = 4;
const char *to_string(FallbackReason r);

// Shared per-node state. Sessions read the atomics without locks; the breaker is locked only
// when a node fails, recovers, or its ban has expired.
struct NodeHealth {
  explicit NodeHealth(const config::Replicas &p) : gate_policy(p), gate(gate_policy), breaker(p) {}
  std::atomic<bool> serving{false};   // replica: admitted by the lag gate
  std::atomic<bool> up{false};        // last probe answered
  std::atomic<int64_t> lag_bytes{-1}; // -1: unknown
  std::atomic<int64_t> lag_ms{-1};
  std::atomic<Millis> caught_up_at{0};  // newest primary sample time whose LSN it replayed
  std::atomic<Millis> banned_until{0};  // 0: breaker closed
  std::atomic<uint64_t> primary_lsn{0}; // primary: last sampled insert LSN
  std::atomic<bool> probed{false};      // the monitor has finished a first probe
  config::Replicas gate_policy;         // monitor thread only: the gate's thresholds
  uint32_t gate_generation = 0;         // monitor thread only: of the board's thresholds
  LagGate gate;                         // monitor thread only
  uint32_t no_receiver_streak = 0;      // monitor thread only
  std::mutex mu;
  Breaker breaker;
};

class HealthBoard {
public:
  HealthBoard(const config::Config &cfg, size_t nodes, size_t shards);
  NodeHealth &node(size_t id) { return *nodes_[id]; }
  const config::Replicas &policy() const { return policy_; }

  // The lag thresholds, changed by a reload (SIGHUP) on another thread; each node's monitor
  // thread copies them into its gate before a probe is judged (sync_gate).
  void set_lag_thresholds(uint64_t max_lag_bytes, uint32_t max_lag_ms);
  void sync_gate(NodeHealth &n) const;
  uint64_t max_lag_bytes() const { return max_lag_bytes_.load(std::memory_order_relaxed); }
  uint32_t max_lag_ms() const { return max_lag_ms_.load(std::memory_order_relaxed); }

  // The breaker: connect or I/O outcomes from sessions and the monitor.
  void report_failure(size_t node, Millis now);
  void report_success(size_t node);
  // "shard/host:port", for logs; set before the node is published (Shared::node_for).
  void set_node_name(size_t node, std::string name);
  // Fast unless the node is banned: may a session use it now? (one half-open trial)
  bool allowed(size_t node, Millis now);
  // The same, reading the clock only for a banned node (the per-query check).
  bool allowed(size_t node) {
    return nodes_[node]->banned_until.load(std::memory_order_relaxed) == 0 ||
           allowed(node, now_ms());
  }

  // Reads that went to the primary instead of a replica, by shard and reason; the first of each
  // kind is logged at warn.
  void count_fallback(size_t shard, FallbackReason r, const std::string &shard_name);
  uint64_t fallbacks(size_t shard, FallbackReason r) const;

private:
  // Counted on every read that has no replica to go to, by every worker: so each thread
  // counts in a row of its own (a cache line per slot and shard), and a scrape sums the rows.
  static constexpr size_t kFallbackSlots = 8;
  struct alignas(64) FallbackRow {
    std::array<std::atomic<uint64_t>, kFallbackReasons> n{};
  };
  config::Replicas policy_;
  std::atomic<uint64_t> max_lag_bytes_;
  std::atomic<uint32_t> max_lag_ms_;
  std::atomic<uint32_t> lag_generation_{0};
  std::vector<std::unique_ptr<NodeHealth>> nodes_;
  size_t shards_;
  std::vector<FallbackRow> fallbacks_;                                  // [slot * shards + shard]
  std::vector<std::array<std::atomic<bool>, kFallbackReasons>> logged_; // [shard]
  std::vector<std::string> names_;
};

} // namespace sg::proxy

// Lag measurement, hysteresis, circuit breaker and the shared health board.
#include "proxy/health.h"

#include "proxy/errors.h"

#include <chrono>

namespace sg::proxy {

Millis now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

const char *to_string(FallbackReason r) {
  switch (r) {
  case FallbackReason::lag:
    return "lag";
  case FallbackReason::down:
    return "down";
  case FallbackReason::read_your_writes:
    return "read_your_writes";
  case FallbackReason::no_replicas:
    return "no_replicas";
  }
  return "?";
}

LagReading measure_lag(const ReplicaProbe &p, std::optional<uint64_t> primary_lsn,
                       bool primary_up) {
  LagReading r;
  if (!p.ok || !primary_lsn)
    return r; // unknown: infinite
  r.known = true;
  // A WAL receiver also stops when the primary dies; then the replica is measured against the
  // primary's last sample, so that reads go on while writes fail.
  r.broken = !p.in_recovery || (!p.receiver_running && primary_up);
  r.bytes = *primary_lsn > p.replay_lsn ? *primary_lsn - p.replay_lsn : 0;
  if (r.bytes == 0)
    r.ms = 0;
  else if (p.replay_age_ms)
    r.ms = uint64_t(std::max(0.0, *p.replay_age_ms));
  return r;
}

bool LagGate::observe(const LagReading &r) {
  bool over = !r.known || r.broken || r.bytes > policy_.max_lag_bytes ||
              (r.ms && *r.ms > policy_.max_lag_ms);
  bool under_half = r.known && !r.broken && r.bytes <= policy_.max_lag_bytes / 2 &&
                    (!r.ms || *r.ms <= policy_.max_lag_ms / 2);
  bool first = !observed_;
  observed_ = true;
  if (over) {
    admitted_ = false;
    streak_ = 0;
  } else if (first) {
    admitted_ = true;
  } else if (!admitted_) {
    streak_ = under_half ? streak_ + 1 : 0;
    if (streak_ >= policy_.readmit_probes)
      admitted_ = true;
  }
  return admitted_;
}

bool Breaker::allow(Millis now) {
  switch (state_) {
  case State::closed:
    return true;
  case State::open:
    if (now < until_)
      return false;
    state_ = State::half_open; // this caller is the single trial
    return true;
  case State::half_open:
    return false;
  }
  return false;
}

void Breaker::success() {
  state_ = State::closed;
  failures_ = 0;
  bans_ = 0;
  until_ = 0;
}

void Breaker::failure(Millis now) {
  if (state_ == State::open && now < until_)
    return; // already banned: only a failure after the ban (the trial) lengthens it
  ++failures_;
  if (state_ != State::closed || failures_ >= policy_.failures_to_ban) {
    uint64_t ban = uint64_t(policy_.ban_base_ms) << std::min<uint32_t>(bans_, 20);
    ban = std::min<uint64_t>(ban, policy_.ban_max_ms);
    ++bans_;
    state_ = State::open;
    until_ = now + Millis(ban);
  }
}

HealthBoard::HealthBoard(const config::Config &cfg, size_t nodes, size_t shards)
    : policy_(cfg.replicas), max_lag_bytes_(cfg.replicas.max_lag_bytes),
      max_lag_ms_(cfg.replicas.max_lag_ms), shards_(shards),
      fallbacks_(kFallbackSlots * shards), logged_(shards) {
  for (size_t i = 0; i < nodes; ++i)
    nodes_.push_back(std::make_unique<NodeHealth>(policy_));
  names_.resize(nodes);
}

void HealthBoard::report_failure(size_t node, Millis now) {
  NodeHealth &n = *nodes_[node];
  Millis before, after;
  {
    std::lock_guard lock(n.mu);
    before = n.breaker.banned_until();
    n.breaker.failure(now);
    after = n.breaker.banned_until();
    n.banned_until = after;
  }
  if (after != before && after != 0)
    log::warn("node_banned", {{"node", names_[node].empty() ? std::to_string(node) : names_[node]},
                              {"ban_ms", std::to_string(after - now)}});
}

void HealthBoard::set_lag_thresholds(uint64_t max_lag_bytes, uint32_t max_lag_ms) {
  max_lag_bytes_.store(max_lag_bytes, std::memory_order_relaxed);
  max_lag_ms_.store(max_lag_ms, std::memory_order_relaxed);
  lag_generation_.fetch_add(1, std::memory_order_release);
}

void HealthBoard::sync_gate(NodeHealth &n) const {
  uint32_t g = lag_generation_.load(std::memory_order_acquire);
  if (g == n.gate_generation)
    return;
  n.gate_generation = g;
  n.gate_policy.max_lag_bytes = max_lag_bytes();
  n.gate_policy.max_lag_ms = max_lag_ms();
}

void HealthBoard::set_node_name(size_t node, std::string name) {
  names_[node] = std::move(name);
}

void HealthBoard::report_success(size_t node) {
  NodeHealth &n = *nodes_[node];
  if (n.banned_until.load(std::memory_order_relaxed) == 0)
    return; // already closed: the common case takes no lock
  std::lock_guard lock(n.mu);
  n.breaker.success();
  n.banned_until = 0;
}

bool HealthBoard::allowed(size_t node, Millis now) {
  NodeHealth &n = *nodes_[node];
  Millis until = n.banned_until.load(std::memory_order_relaxed);
  if (until == 0)
    return true;
  if (now < until)
    return false;
  std::lock_guard lock(n.mu);
  return n.breaker.allow(now);
}

void HealthBoard::count_fallback(size_t shard, FallbackReason r, const std::string &shard_name) {
  static std::atomic<size_t> next_slot{0};
  thread_local size_t slot = next_slot.fetch_add(1, std::memory_order_relaxed) % kFallbackSlots;
  fallbacks_[slot * shards_ + shard].n[size_t(r)].fetch_add(1, std::memory_order_relaxed);
  std::atomic<bool> &logged = logged_[shard][size_t(r)];
  if (!logged.load(std::memory_order_relaxed) && !logged.exchange(true))
    log::warn("read_fallback_to_primary", {{"shard", shard_name}, {"reason", to_string(r)}});
}

uint64_t HealthBoard::fallbacks(size_t shard, FallbackReason r) const {
  uint64_t sum = 0;
  for (size_t slot = 0; slot < kFallbackSlots; ++slot)
    sum += fallbacks_[slot * shards_ + shard].n[size_t(r)].load(std::memory_order_relaxed);
  return sum;
}

} // namespace sg::proxy

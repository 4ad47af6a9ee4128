// The proxy server: worker threads (one io_context each), listeners, and the state all
// sessions share read-only (config, router, nodes, user secrets) plus the cancel registry.
#pragma once

#include "config/config.h"
#include "executor/twophase.h"
#include "ids/generator.h"
#include "protocol/auth.h"
#include "proxy/backend.h"
#include "proxy/health.h"
#include "proxy/mux.h"
#include "proxy/poller.h"
#include "proxy/pool.h"
#include "proxy/stats.h"
#include "router/router.h"

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace sg::proxy {

// Where a client's running query can be cancelled: set while a backend is attached. Written
// by the session's worker on every attach, read by whichever worker gets the CancelRequest,
// so it is two atomics rather than a lock. A cancel racing a re-attach may pair one backend's
// node with the next one's pid and key: it then cancels the session's new statement (same
// node) or matches nothing on the server (PostgreSQL ignores a wrong key), like any late cancel.
struct CancelSlot {
  void set(const Node *n, int32_t pid, int32_t key) {
    backend.store((uint64_t(uint32_t(pid)) << 32) | uint32_t(key), std::memory_order_relaxed);
    node.store(n, std::memory_order_release);
  }
  void clear() { node.store(nullptr, std::memory_order_release); }
  std::atomic<const Node *> node{nullptr};
  std::atomic<uint64_t> backend{0}; // pid << 32 | key

  // A statement running on several backends at once (a read across shards): a cancel goes to
  // each of them. Set and cleared once per such statement; read only by a CancelRequest.
  struct Target {
    const Node *node;
    int32_t pid, key;
  };
  void set_many(std::vector<Target> t) {
    std::lock_guard lk(many_mu);
    many = std::move(t);
  }
  std::vector<Target> take_many() {
    std::lock_guard lk(many_mu);
    return many;
  }
  std::mutex many_mu;
  std::vector<Target> many;
};

class CancelRegistry {
public:
  void add(int32_t pid, int32_t key, std::shared_ptr<CancelSlot> slot);
  void remove(int32_t pid, int32_t key);
  std::shared_ptr<CancelSlot> find(int32_t pid, int32_t key);

private:
  static uint64_t k(int32_t pid, int32_t key) {
    return (uint64_t(uint32_t(pid)) << 32) | uint32_t(key);
  }
  std::mutex mu_;
  std::unordered_map<uint64_t, std::weak_ptr<CancelSlot>> map_;
};

// Which node serves each shard now. Immutable once published: a new topology epoch publishes a
// new one (Shared::apply_placement); sessions read it through their worker (Worker::place()).
struct Placement {
  static constexpr size_t npos = SIZE_MAX;
  uint64_t epoch = 0;
  std::vector<size_t> primary;               // node id per shard index; npos: not in the topology
  std::vector<std::vector<size_t>> replicas; // node ids per shard index
  std::shared_ptr<const router::Topology> keys; // where keys live (the ring), for this epoch
  bool has(size_t node) const;
  bool serves(size_t shard) const { return shard < primary.size() && primary[shard] != npos; }
};

// What a topology epoch asks of the data path (main converts the control plane's topology).
struct PlacementSpec {
  struct ShardSpec {
    config::Shard shard;
    bool in_ring = true; // owns keys now
    bool in_next = true; // owns keys once the running migration's cutover is done
  };
  uint64_t epoch = 0;
  uint32_t vnodes = 150;
  std::vector<ShardSpec> shards;
  std::string migration;           // id of the running migration, or empty
  bool pause = false;              // its cutover: writes to moving keys wait
  std::vector<std::string> mirror; // dual-write: the shards writes are copied to (ring)
  std::string default_shard;       // statements on no sharded table (empty: the TOML's)
};

// The running migration as this proxy last saw it (from its own runner, or the journal), for
// metrics; and the cutover pauses this proxy's runner made.
class MigrationStats {
public:
  struct View {
    std::string id, kind, shard, phase;
    uint64_t rows_copied = 0, rows_estimated = 0, rows_per_second = 0, verify_mismatches = 0,
             verify_repaired = 0, target_write_failures = 0;
  };
  void set(std::optional<View> v) {
    std::lock_guard lk(mu_);
    v_ = std::move(v);
  }
  std::optional<View> get() const {
    std::lock_guard lk(mu_);
    return v_;
  }
  static constexpr std::array<double, 9> kPauseBounds = {0.01, 0.025, 0.05, 0.1, 0.25,
                                                         0.5,  1,     2.5,  5};
  void observe_pause(double seconds) {
    size_t i = 0;
    while (i < kPauseBounds.size() && seconds > kPauseBounds[i])
      ++i;
    pause_buckets[i].fetch_add(1, std::memory_order_relaxed);
    pause_count.fetch_add(1, std::memory_order_relaxed);
    pause_sum_us.fetch_add(uint64_t(seconds * 1e6), std::memory_order_relaxed);
  }
  std::array<std::atomic<uint64_t>, kPauseBounds.size() + 1> pause_buckets{};
  std::atomic<uint64_t> pause_count{0}, pause_sum_us{0};

private:
  mutable std::mutex mu_;
  std::optional<View> v_;
};

// A user's query rate ([[users]] max_queries_per_second, burst): a token bucket shared by the
// user's clients on every worker.
class RateLimit {
public:
  RateLimit(uint32_t per_second, uint32_t burst, uint32_t max_delay_ms);
  // Takes n tokens: how long the caller waits first (zero: at once), or nullopt when that
  // would be over max_delay_ms (nothing taken).
  std::optional<std::chrono::nanoseconds> take(uint32_t n);
  uint32_t per_second() const { return rate_; }
  uint32_t burst() const { return burst_; }
  uint32_t max_delay_ms() const { return max_delay_ms_; }

private:
  std::mutex mu_;
  uint32_t rate_, burst_, max_delay_ms_;
  double tokens_;
  std::chrono::steady_clock::time_point last_;
};

struct Shared {
  explicit Shared(config::Config c);
  config::Config cfg;
  router::Router router;
  // Shard indices: a shard keeps its index for the process's life (the configured shards
  // first, in order; shards added by migrations after them), so per-shard state (a session's
  // backends, counters, health) is indexed by it from any thread. Never reused.
  static constexpr size_t kMaxShards = 64;
  const std::string &shard_name(size_t shard) const { return shard_names_[shard]; }
  size_t shard_count() const { return shard_count_.load(std::memory_order_acquire); }
  // Every node this process has served, by id. Ids are never reused and never move, so pools,
  // health slots and metrics index by them from any thread; a node the placement no longer
  // names gets no new statements. At most kMaxNodes over the process's life.
  static constexpr size_t kMaxNodes = 256;
  const Node &node(size_t id) const { return node_slots_[id]; }
  size_t node_count() const { return node_count_.load(std::memory_order_acquire); }
  // The current placement (a copy of the pointer, under a lock: for the control plane and
  // metrics; sessions use Worker::place()).
  std::shared_ptr<const Placement> placement() const;
  // Bumped on every new placement; workers compare it with theirs once per statement.
  std::atomic<uint64_t> placement_version{1};
  // Publishes a placement: shards (new names get new indices), their nodes (new endpoints get
  // new node ids; nodes that drop out keep theirs and get them back if they return) and the
  // ring. On the control plane's thread. Returns the node ids that joined and left, or false
  // with `error`.
  bool apply_placement(const PlacementSpec &spec, std::vector<size_t> &joined,
                       std::vector<size_t> &left, std::string &error);
  // Who may log in: immutable, replaced as a whole by a reload (SIGHUP). A login holds the
  // snapshot it started with.
  struct Credentials {
    std::unordered_map<std::string, protocol::ScramSecret> scram;      // per configured user
    std::unordered_map<std::string, std::string> passwords;            // md5 needs the password
    std::unordered_map<std::string, uint32_t> max_clients;             // 0: no cap
    std::unordered_map<std::string, std::shared_ptr<RateLimit>> rates; // limited users only
  };
  std::shared_ptr<const Credentials> credentials() const;
  void set_users(const std::vector<config::User> &users);
  // Counts a client of `user` in, unless `cap` (0: none) of them are connected already.
  bool admit_client(const std::string &user, uint32_t cap);
  // Queries that waited for their user's rate, and those refused over it (53400).
  std::atomic<uint64_t> rate_delayed{0}, rate_refused{0};
  void release_client(const std::string &user);
  // [log] slow_query_ms, reloadable.
  std::atomic<uint32_t> slow_query_ms{0};
  protocol::ScramSecret mock_secret; // for unknown users: fail like a bad password
  HealthBoard health;                // node state: monitor and sessions
  ErrorStats errors;                 // errors by source and SQLSTATE class
  CancelRegistry cancels;
  std::atomic<int32_t> next_pid{1000};
  // Set by the control plane while this proxy is cut off from the metadata database for
  // longer than [metadata] fence_timeout_ms: writes to sharded tables are refused (40001), so
  // that a proxy on a stale topology never writes to a key's former owner.
  std::atomic<bool> write_fence{false};
  // The control plane's state, for metrics and /health (written by its thread).
  struct ControlPlane {
    std::atomic<bool> enabled{false}, connected{false};
    std::atomic<uint64_t> applied_epoch{0}, stored_epoch{0}, reconnects{0};
    // When the control plane last completed a round trip with the metadata database (now_ms()),
    // and how long writes may go on without one. The data path checks the age itself, so a
    // control-plane thread stuck on a silent connection cannot keep writes flowing.
    std::atomic<int64_t> ok_at_ms{0};
    uint32_t fence_timeout_ms = 0;
    mutable std::atomic<bool> age_fenced{false}; // that fence is on (logged once per outage)
  };
  ControlPlane control;
  MigrationStats migration;
  ids::Generator ids; // shardgate.next_id(): given its instance number by main (a lease or [ids])
  // Where two-phase commit records its decisions (set by main when the metadata database is
  // on; null: a transaction that writes on several shards cannot commit atomically).
  std::atomic<executor::DecisionJournal *> journal{nullptr};
  // A node as operators see it: "up", "lagging" (a replica the lag gate holds back), "banned"
  // (the circuit breaker is open) or "down" (its last probe failed).
  const char *node_state(size_t id) const;
  // The error a fenced write gets, or nullopt (one relaxed load per write to a sharded table).
  std::optional<router::RouteError> fenced_write() const;
  // Open connections per node over all workers' pools (capped at pool_size), by node id.
  std::unique_ptr<std::atomic<uint32_t>[]> node_budget;

  // ParameterStatus values learnt from the first backend login, reported to clients.
  std::optional<std::vector<std::pair<std::string, std::string>>> server_params() const;
  void set_server_params(const std::vector<std::pair<std::string, std::string>> &p);

private:
  size_t node_for(size_t shard, Role role, const config::Endpoint &e); // control plane only
  size_t shard_slot(const std::string &name);                          // the same
  std::unique_ptr<std::string[]> shard_names_;
  std::atomic<size_t> shard_count_{0};
  mutable std::mutex params_mu_;
  std::optional<std::vector<std::pair<std::string, std::string>>> server_params_;
  std::unique_ptr<Node[]> node_slots_;
  std::atomic<size_t> node_count_{0};
  mutable std::mutex placement_mu_;
  std::shared_ptr<const Placement> placement_;
  mutable std::mutex credentials_mu_;
  std::shared_ptr<const Credentials> credentials_;
  std::mutex clients_mu_;
  std::unordered_map<std::string, uint32_t> clients_; // connected clients per user
};

// One worker thread: its io_context, its pools (one per node) and statement-name interning.
struct Worker {
  Worker(Shared &s, size_t pool_share);
  ~Worker();
  // The first step of teardown (idempotent): sessions parked on a connection end, and the
  // pools close. Call it on every worker before any worker's io is shut down.
  void stop_sessions();
  Shared &shared;
  // Client and backend connections. Declared before io, so that it outlives io's destruction
  // (which ends sessions parked on timers, and they close their connections here).
  Poller poller;
  // Sockets are only ever touched by their own worker thread, so the reactor's per-socket
  // locking is off; the scheduler keeps its lock (shutdown posts here from another thread).
  struct Context : asio::io_context {
    Context() : asio::io_context(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO) {}
    using asio::io_context::shutdown; // destroys every queued handler and parked stack
  };
  Context io;
  // By node id (Shared::kMaxNodes slots), made on first use: see pool(). pool_view mirrors
  // them for other threads (metrics).
  std::vector<std::unique_ptr<Pool>> pools;
  std::unique_ptr<std::atomic<const Pool *>[]> pool_view;
  std::vector<Mux> muxes; // by node id: pipelined reads
  Pool *pool(size_t node) {
    auto &p = pools[node];
    return p ? p.get() : make_pool(node);
  }
  // This worker's view of the placement, refreshed when the shared one has moved on: one
  // atomic load per call. A refresh also closes idle connections to nodes that left.
  const Placement &place() {
    if (placement_version_ != shared.placement_version.load(std::memory_order_acquire)) [[unlikely]]
      refresh_placement();
    return *placement_;
  }
  void refresh_placement();
  std::vector<uint32_t> replica_rr; // per shard
  WorkerStats stats;                // this worker's traffic counters
  std::unique_ptr<Acceptor> acceptor;
  std::unordered_map<std::string, uint32_t> stmt_ids;
  uint32_t next_stmt_id = 1;
  bool stopping = false; // set at shutdown: sessions then drop connections instead of pooling
  // Sessions living on this worker, counted from the moment one is assigned here; accepting
  // workers read it to hand new clients to the least loaded worker.
  std::atomic<int> sessions{0};
  std::atomic<int> tid{0}; // the worker thread's id, once it runs (for the balancer)
  // Packing: how many of this worker's sessions should move to worker move_to. Set by the
  // balancer, lowered by the sessions that move (between transactions, see Session::move).
  alignas(64) std::atomic<int> move_out{0};
  std::atomic<Worker *> move_to{nullptr};
  uint32_t intern_statement(const std::string &key);
  Pool *make_pool(size_t node);
  size_t pool_share_ = 0;
  std::shared_ptr<const Placement> placement_;
  uint64_t placement_version_ = 0;
  // On this worker's thread: each pool's share of pool_size, and whether idle connections go.
  void set_pool_share(size_t share, bool shed);
};

class Monitor;

class Server {
public:
  explicit Server(config::Config cfg);
  ~Server();
  // Runs until SIGINT/SIGTERM; returns the process exit code. on_ready runs once the workers
  // exist and the first health probes are done, before clients are served.
  // on_stop runs after the workers stopped, before their pools are torn down.
  // on_reload runs on SIGHUP (on the signal thread).
  int run(const std::function<void()> &on_ready = {}, const std::function<void()> &on_stop = {},
          const std::function<void()> &on_reload = {});
  // What a reload may change while running: users and passwords, [log] slow_query_ms, the lag
  // thresholds ([replicas] max_lag_bytes, max_lag_ms).
  void reload(const config::Config &next);
  const Shared &shared() const { return *shared_; }
  void set_write_fence(bool on) { shared_->write_fence.store(on, std::memory_order_relaxed); }
  void set_journal(executor::DecisionJournal *j) { shared_->journal.store(j); }
  Shared::ControlPlane &control() { return shared_->control; }
  MigrationStats &migration_stats() { return shared_->migration; }
  ids::Generator &ids() { return shared_->ids; }
  // A new placement (see Shared::apply_placement): the monitor probes the nodes that joined and
  // stops probing those that left; each worker closes its idle connections to those that left.
  bool apply_placement(const PlacementSpec &spec, std::string &error);
  std::vector<const Worker *> workers() const;
  size_t active_workers() const { return active_.load(std::memory_order_relaxed); }

private:
  Task<void> accept_loop(Worker &w);
  static void start_session(Worker &w, int fd, std::string peer);
  // Packs sessions onto as few workers as the load needs; see server.cpp.
  void balance();
  std::atomic<size_t> active_{0}; // workers [0, active_) take new clients
  std::vector<uint64_t> run_ns_;  // per worker thread: time it ran on a core, at the last look
  uint64_t wall_ns_ = 0;
  std::unique_ptr<Shared> shared_;
  std::unique_ptr<Monitor> monitor_;
  std::mutex apply_mu_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

} // namespace sg::proxy

// Server start-up: shared state, worker threads with SO_REUSEPORT listeners, signals, drain.
#include "proxy/server.h"

#include "proxy/errors.h"
#include "proxy/monitor.h"
#include "proxy/session.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>

#include <algorithm>
#include <cstdio>
#include <sys/socket.h>
#include <unistd.h>

namespace sg::proxy {

void CancelRegistry::add(int32_t pid, int32_t key, std::shared_ptr<CancelSlot> slot) {
  std::lock_guard lock(mu_);
  map_[k(pid, key)] = slot;
}
void CancelRegistry::remove(int32_t pid, int32_t key) {
  std::lock_guard lock(mu_);
  map_.erase(k(pid, key));
}
std::shared_ptr<CancelSlot> CancelRegistry::find(int32_t pid, int32_t key) {
  std::lock_guard lock(mu_);
  auto it = map_.find(k(pid, key));
  return it == map_.end() ? nullptr : it->second.lock();
}

bool Placement::has(size_t node) const {
  for (size_t s = 0; s < primary.size(); ++s) {
    if (primary[s] == node && node != npos)
      return true;
    for (size_t r : replicas[s])
      if (r == node)
        return true;
  }
  return false;
}

Shared::Shared(config::Config c)
    : cfg(std::move(c)), router(cfg), health(cfg, kMaxNodes, kMaxShards),
      shard_names_(std::make_unique<std::string[]>(kMaxShards)),
      node_slots_(std::make_unique<Node[]>(kMaxNodes)) {
  std::vector<size_t> joined, left;
  std::string err;
  PlacementSpec spec;
  spec.epoch = router.topology().epoch;
  spec.vnodes = cfg.ring.vnodes;
  for (auto &s : cfg.shards)
    spec.shards.push_back({s});
  if (!apply_placement(spec, joined, left, err))
    throw std::runtime_error(err);
  set_users(cfg.users);
  slow_query_ms = cfg.log.slow_query_ms;
  mock_secret =
      protocol::make_scram_secret(protocol::random_bytes(16), protocol::random_bytes(16), 4096);
  node_budget = std::make_unique<std::atomic<uint32_t>[]>(kMaxNodes);
}

std::shared_ptr<const Shared::Credentials> Shared::credentials() const {
  std::lock_guard lock(credentials_mu_);
  return credentials_;
}

// SCRAM secrets are derived once per user and load (PBKDF2 is slow by design), with a fresh
// salt each time.
void Shared::set_users(const std::vector<config::User> &users) {
  auto c = std::make_shared<Credentials>();
  for (const auto &u : users) {
    c->scram.emplace(u.name,
                     protocol::make_scram_secret(u.password, protocol::random_bytes(16), 4096));
    c->passwords.emplace(u.name, u.password);
    c->max_clients.emplace(u.name, u.max_client_connections);
    if (u.max_queries_per_second)
      c->rates.emplace(
          u.name, std::make_shared<RateLimit>(u.max_queries_per_second, u.burst, u.max_delay_ms));
  }
  std::lock_guard lock(credentials_mu_);
  credentials_ = std::move(c);
}

RateLimit::RateLimit(uint32_t per_second, uint32_t burst, uint32_t max_delay_ms)
    : rate_(per_second), burst_(burst ? burst : per_second), max_delay_ms_(max_delay_ms),
      tokens_(double(burst_)), last_(std::chrono::steady_clock::now()) {}

std::optional<std::chrono::nanoseconds> RateLimit::take(uint32_t n) {
  std::lock_guard lock(mu_);
  auto now = std::chrono::steady_clock::now();
  double refill = std::chrono::duration<double>(now - last_).count() * rate_;
  tokens_ = std::min(double(burst_), tokens_ + refill);
  last_ = now;
  double after = tokens_ - n;
  if (after >= 0) {
    tokens_ = after;
    return std::chrono::nanoseconds(0);
  }
  double wait_s = -after / rate_; // until the tokens this query owes have come in
  if (wait_s * 1000 > max_delay_ms_)
    return std::nullopt;
  tokens_ = after; // reserved: later callers queue behind it
  return std::chrono::nanoseconds(int64_t(wait_s * 1e9));
}

bool Shared::admit_client(const std::string &user, uint32_t cap) {
  std::lock_guard lock(clients_mu_);
  uint32_t &n = clients_[user];
  if (cap && n >= cap)
    return false;
  ++n;
  return true;
}

void Shared::release_client(const std::string &user) {
  std::lock_guard lock(clients_mu_);
  if (auto it = clients_.find(user); it != clients_.end() && it->second > 0 && --it->second == 0)
    clients_.erase(it);
}

std::shared_ptr<const Placement> Shared::placement() const {
  std::lock_guard lock(placement_mu_);
  return placement_;
}

// The id of the node with this role and endpoint in this shard, made if there is none yet.
size_t Shared::node_for(size_t shard, Role role, const config::Endpoint &e) {
  size_t n = node_count();
  for (size_t id = 0; id < n; ++id) {
    const Node &x = node_slots_[id];
    if (x.shard == shard && x.role == role && x.endpoint.label() == e.label() &&
        x.endpoint.raw == e.raw)
      return id;
  }
  if (n == kMaxNodes)
    return kMaxNodes;
  Node &x = node_slots_[n];
  x.id = n;
  x.shard = shard;
  x.role = role;
  x.endpoint = e;
  x.shard_name = shard_names_[shard];
  health.set_node_name(n, x.label());
  node_count_.store(n + 1, std::memory_order_release); // readers see the node whole
  return n;
}

size_t Shared::shard_slot(const std::string &name) {
  size_t n = shard_count();
  for (size_t s = 0; s < n; ++s)
    if (shard_names_[s] == name)
      return s;
  if (n == kMaxShards)
    return kMaxShards;
  shard_names_[n] = name;
  shard_count_.store(n + 1, std::memory_order_release);
  return n;
}

bool Shared::apply_placement(const PlacementSpec &spec, std::vector<size_t> &joined,
                             std::vector<size_t> &left, std::string &error) {
  auto next = std::make_shared<Placement>();
  next->epoch = spec.epoch;
  auto keys = std::make_shared<router::Topology>();
  keys->epoch = spec.epoch;
  keys->migration = spec.migration;
  keys->pause = spec.pause;
  std::vector<router::RingMember> now, then, mirror;
  for (const auto &ss : spec.shards) {
    const config::Shard &sh = ss.shard;
    size_t s = shard_slot(sh.name);
    if (s == kMaxShards) {
      error = "more than " + std::to_string(kMaxShards) + " shards over this process's life";
      return false;
    }
    if (next->primary.size() <= s) {
      next->primary.resize(s + 1, Placement::npos);
      next->replicas.resize(s + 1);
    }
    next->primary[s] = node_for(s, Role::primary, sh.primary);
    for (auto &r : sh.replicas)
      next->replicas[s].push_back(node_for(s, Role::replica, r));
    if (ss.in_ring) {
      now.push_back({sh.name, sh.weight});
      keys->ring_shard.push_back(s);
    }
    if (ss.in_next) {
      then.push_back({sh.name, sh.weight});
      keys->next_shard.push_back(s);
    }
    if (std::find(spec.mirror.begin(), spec.mirror.end(), sh.name) != spec.mirror.end()) {
      mirror.push_back({sh.name, sh.weight});
      keys->mirror_shard.push_back(s);
    }
  }
  if (now.empty() || then.empty()) {
    error = "no shard owns keys";
    return false;
  }
  for (size_t s = 0; s < shard_count(); ++s)
    keys->shard_names.push_back(shard_names_[s]);
  keys->ring = router::Ring(now, spec.vnodes);
  keys->next = router::Ring(then, spec.vnodes);
  if (!mirror.empty()) {
    keys->mirror = router::Ring(mirror, spec.vnodes);
    keys->find_mirror_sources();
  }
  keys->default_shard = router.default_shard();
  if (!spec.default_shard.empty()) {
    size_t d = shard_slot(spec.default_shard);
    if (d == kMaxShards) {
      error = "more than " + std::to_string(kMaxShards) + " shards over this process's life";
      return false;
    }
    keys->default_shard = d;
  }
  if (!next->serves(keys->default_shard)) {
    error = "the default shard \"" + shard_names_[keys->default_shard] + "\" is missing";
    return false;
  }
  next->keys = std::move(keys);
  if (next->has(kMaxNodes)) { // node_for found no free slot
    error = "more than " + std::to_string(kMaxNodes) + " nodes over this process's life";
    return false;
  }
  auto prev = placement();
  joined.clear();
  left.clear();
  for (size_t id = 0; id < node_count(); ++id) {
    bool now = next->has(id), before = prev && prev->has(id);
    if (now && !before)
      joined.push_back(id);
    if (before && !now)
      left.push_back(id);
  }
  {
    std::lock_guard lock(placement_mu_);
    placement_ = std::move(next);
  }
  placement_version.fetch_add(1, std::memory_order_release);
  return true;
}

std::optional<std::vector<std::pair<std::string, std::string>>> Shared::server_params() const {
  std::lock_guard lock(params_mu_);
  return server_params_;
}

void Shared::set_server_params(const std::vector<std::pair<std::string, std::string>> &p) {
  std::lock_guard lock(params_mu_);
  if (!server_params_)
    server_params_ = p;
}

Worker::Worker(Shared &s, size_t pool_share)
    : shared(s), stats(Shared::kMaxShards), pool_share_(pool_share) {
  poller.start(io);
  pools.resize(Shared::kMaxNodes);
  pool_view = std::make_unique<std::atomic<const Pool *>[]>(Shared::kMaxNodes);
  muxes.resize(Shared::kMaxNodes);
  replica_rr.assign(Shared::kMaxShards, 0);
  placement_version_ = s.placement_version.load(std::memory_order_acquire);
  placement_ = s.placement();
}

Pool *Worker::make_pool(size_t node) {
  auto &p = pools[node];
  p = std::make_unique<Pool>(poller, shared.node(node), pool_share_, shared.node_budget[node],
                             shared.cfg.proxy);
  if (!placement_->has(node))
    p->set_retired(true); // a transaction's backend on a node that has just left
  pool_view[node].store(p.get(), std::memory_order_release);
  return p.get();
}

void Worker::refresh_placement() {
  placement_version_ = shared.placement_version.load(std::memory_order_acquire);
  placement_ = shared.placement();
  for (size_t id = 0; id < pools.size(); ++id)
    if (pools[id])
      pools[id]->set_retired(!placement_->has(id));
}

void Worker::set_pool_share(size_t share, bool shed) {
  pool_share_ = share;
  for (auto &p : pools) {
    if (!p)
      continue;
    p->set_share(share);
    if (shed)
      p->shed_idle();
  }
}

// Teardown order: sessions parked on a connection end first, while io and the pools are alive
// (their stacks go to io); then the pools; then (members) the acceptor and io, whose
// destruction ends the remaining sessions, which with `stopping` set do not pool their
// connections; the poller goes last.
Worker::~Worker() {
  stop_sessions();
}

void Worker::stop_sessions() {
  stopping = true;
  poller.shutdown();
  for (auto &m : muxes)
    m.drop();
  for (size_t id = 0; id < pools.size(); ++id)
    pool_view[id].store(nullptr, std::memory_order_release);
  pools.clear();
}

uint32_t Worker::intern_statement(const std::string &key) {
  auto [it, inserted] = stmt_ids.try_emplace(key, next_stmt_id);
  if (inserted)
    ++next_stmt_id;
  return it->second;
}

Server::Server(config::Config cfg) : shared_(std::make_unique<Shared>(std::move(cfg))) {}

void Server::reload(const config::Config &next) {
  shared_->set_users(next.users);
  shared_->slow_query_ms.store(next.log.slow_query_ms, std::memory_order_relaxed);
  shared_->health.set_lag_thresholds(next.replicas.max_lag_bytes, next.replicas.max_lag_ms);
}

bool Server::apply_placement(const PlacementSpec &spec, std::string &error) {
  std::lock_guard lock(apply_mu_); // one change at a time, also against start-up and shutdown
  std::vector<size_t> joined, left;
  uint64_t epoch = spec.epoch;
  if (!shared_->apply_placement(spec, joined, left, error))
    return false;
  auto label = [&](size_t id) { return shared_->node(id).label(); };
  for (size_t id : joined) {
    log::info("node_joined", {{"node", label(id)},
                              {"role", to_string(shared_->node(id).role)},
                              {"epoch", std::to_string(epoch)}});
    if (monitor_)
      monitor_->watch(id);
  }
  for (size_t id : left) {
    log::info("node_left", {{"node", label(id)},
                            {"role", to_string(shared_->node(id).role)},
                            {"epoch", std::to_string(epoch)}});
    if (monitor_)
      monitor_->unwatch(id);
  }
  for (auto &w : workers_) // idle workers too: their idle connections to nodes that left go
    asio::post(w->io, [wk = w.get()] { wk->refresh_placement(); });
  return true;
}

const char *Shared::node_state(size_t id) const {
  auto &h = const_cast<HealthBoard &>(health).node(id);
  Millis banned = h.banned_until.load(std::memory_order_relaxed);
  if (banned != 0 && now_ms() < banned)
    return "banned";
  if (!h.up.load(std::memory_order_relaxed))
    return "down";
  if (node(id).role == Role::replica && !h.serving.load(std::memory_order_relaxed))
    return "lagging";
  return "up";
}

std::optional<router::RouteError> Shared::fenced_write() const {
  if (!write_fence.load(std::memory_order_relaxed)) [[likely]] {
    int64_t ok = control.ok_at_ms.load(std::memory_order_relaxed);
    int64_t age = ok ? now_ms() - ok : 0;
    if (age <= int64_t(control.fence_timeout_ms)) [[likely]]
      return std::nullopt;
    if (!control.age_fenced.exchange(true, std::memory_order_relaxed))
      log::error("metadata_fenced",
                 {{"unreachable_ms", std::to_string(age)},
                  {"detail", "no complete round trip with the metadata database for longer "
                             "than [metadata] fence_timeout_ms"},
                  {"effect", "writes to sharded tables refused (40001)"}});
  }
  return router::RouteError{
      "40001",
      "writes to sharded tables are paused: this proxy has lost the metadata database "
      "(fencing)",
      "retry the transaction; writes resume when the proxy reaches the metadata database again"};
}
Server::~Server() = default;

Task<void> Server::accept_loop(Worker &w) {
  Acceptor &acceptor = *w.acceptor;
  for (;;) {
    ErrorCode ec;
    Socket sock = co_await acceptor.async_accept(asio::redirect_error(use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open())
        co_return;
      continue; // e.g. EMFILE: keep serving the sessions we have
    }
    // The kernel spreads connections over the workers' SO_REUSEPORT listeners by a hash of the
    // addresses, which can leave one worker with many more clients than another (and short
    // of its share of the backend pool). The client goes to the busy worker (see balance())
    // with fewest sessions.
    size_t active = std::max<size_t>(1, active_.load(std::memory_order_relaxed));
    Worker *home = workers_[0].get();
    for (size_t i = 1; i < active && i < workers_.size(); ++i)
      if (workers_[i]->sessions.load(std::memory_order_relaxed) <
          home->sessions.load(std::memory_order_relaxed))
        home = workers_[i].get();
    sock.set_option(tcp::no_delay(true), ec);
    std::string peer;
    if (auto ep = sock.remote_endpoint(ec); !ec)
      peer = ep.address().to_string() + ":" + std::to_string(ep.port());
    int fd = sock.release(ec); // the session's worker registers it with its own poller
    if (ec)
      continue;
    home->sessions.fetch_add(1, std::memory_order_relaxed);
    if (home == &w)
      start_session(w, fd, std::move(peer));
    else
      asio::post(home->io, [home, fd, peer = std::move(peer)]() mutable {
        start_session(*home, fd, std::move(peer));
      });
  }
}

// Runs a client's session on worker w (which has already counted it in w.sessions), over the
// connected socket fd.
void Server::start_session(Worker &w, int fd, std::string peer) {
  ErrorCode ec;
  uint32_t id = w.poller.add(fd, ec);
  if (ec) {
    w.sessions.fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  auto session = std::make_shared<Session>(w, Stream(w.poller, id), std::move(peer));
  asio::co_spawn(
      w.io,
      [session]() -> Task<void> {
        co_await session->run();
        // Where it ended: a session may have moved to another worker meanwhile.
        session->worker().sessions.fetch_sub(1, std::memory_order_relaxed);
      },
      asio::detached);
}

// Worker packing. Each worker thread serves its sessions on one core; a core that serves few
// of them sleeps and wakes more often per query than one that serves many, and the threads it
// wakes (PostgreSQL backends, clients) preempt it more. So while the load is light, the
// sessions gather on the first workers: every pack_interval_ms this looks at how long each
// worker thread ran on a core. When the workers taking clients average above
// spread_above_percent of a core, one more takes clients and a share of the sessions; when
// the whole load would stay below pack_below_percent on one worker fewer, the last of them
// hands its sessions back.
// Sessions move between transactions, holding no backend (Session::move); an idle one moves
// when it next speaks. Each busy worker's pools get an even share of pool_size; the others
// close their idle connections, giving their part of the node budget back.
void Server::balance() {
  const auto &pc = shared_->cfg.proxy;
  size_t n = workers_.size();
  auto wall = uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now().time_since_epoch())
                           .count());
  // Run time only (the first field of the kernel's schedstat), not the time spent waiting for
  // a core as well: a worker waits for a core when every core is busy, and a second worker
  // cannot add one. It only adds sleeps and preemptions (bench/RESULTS.md, sixth session).
  std::vector<double> busy(n, 0.0); // percent of a core since the last look
  run_ns_.resize(n, 0);
  for (size_t i = 0; i < n; ++i) {
    int tid = workers_[i]->tid.load(std::memory_order_relaxed);
    if (!tid)
      continue;
    std::FILE *f =
        std::fopen(("/proc/self/task/" + std::to_string(tid) + "/schedstat").c_str(), "r");
    if (!f)
      continue;
    unsigned long long run = 0;
    int got = std::fscanf(f, "%llu", &run);
    std::fclose(f);
    if (got != 1)
      continue;
    if (wall_ns_ && wall > wall_ns_ && run >= run_ns_[i])
      busy[i] = 100.0 * double(run - run_ns_[i]) / double(wall - wall_ns_);
    run_ns_[i] = run;
  }
  bool first = wall_ns_ == 0;
  wall_ns_ = wall;
  size_t k = active_.load(std::memory_order_relaxed);
  if (!first) {
    double total = 0, active_load = 0;
    for (size_t i = 0; i < n; ++i) {
      total += busy[i];
      if (i < k)
        active_load += busy[i];
    }
    if (k < n && active_load / double(k) > double(pc.spread_above_percent))
      ++k;
    else if (k > 1 && total / double(k - 1) < double(pc.pack_below_percent))
      --k;
  }
  bool changed = k != active_.load(std::memory_order_relaxed);
  active_.store(k, std::memory_order_relaxed);

  // Which sessions go where: those on idle workers to the busy worker with fewest sessions; a
  // busy worker with more than its even part hands the extra to the one with fewest.
  std::vector<int> sess(n);
  int total_sessions = 0;
  for (size_t i = 0; i < n; ++i) {
    sess[i] = workers_[i]->sessions.load(std::memory_order_relaxed);
    total_sessions += sess[i];
  }
  auto fewest = [&] {
    size_t m = 0;
    for (size_t i = 1; i < k; ++i)
      if (sess[i] < sess[m])
        m = i;
    return m;
  };
  int even = (total_sessions + int(k) - 1) / int(k);
  for (size_t i = 0; i < n; ++i) {
    Worker &w = *workers_[i];
    int out = i >= k ? sess[i] : std::max(0, sess[i] - even);
    if (i < k && out < 2)
      out = 0; // close enough: do not move sessions back and forth over one
    size_t to = fewest();
    if (to == i)
      out = 0;
    w.move_to.store(workers_[to].get(), std::memory_order_relaxed);
    w.move_out.store(out, std::memory_order_relaxed);
  }
  size_t share = (pc.pool_size + k - 1) / k;
  size_t idle_share = (pc.pool_size + n - 1) / n; // for sessions not moved yet
  for (size_t i = 0; i < n; ++i) {
    bool busy_worker = i < k;
    if (busy_worker && !changed)
      continue;
    Worker *w = workers_[i].get();
    asio::post(w->io, [w, busy_worker, share, idle_share] {
      w->set_pool_share(busy_worker ? share : idle_share, !busy_worker);
    });
  }
}

std::vector<const Worker *> Server::workers() const {
  std::vector<const Worker *> out;
  for (auto &w : workers_)
    out.push_back(w.get());
  return out;
}

int Server::run(const std::function<void()> &on_ready, const std::function<void()> &on_stop,
                const std::function<void()> &on_reload) {
  const auto &pc = shared_->cfg.proxy;
  size_t nworkers = pc.workers ? pc.workers : std::max(1u, std::thread::hardware_concurrency());
  size_t per_node = std::max<size_t>(1, (pc.pool_size + nworkers - 1) / nworkers);
  // Packing needs sessions that can move: not in session mode, where each keeps its backends.
  bool packing =
      pc.pack_interval_ms > 0 && nworkers > 1 && pc.pool_mode != config::PoolMode::session;
  ErrorCode ec;
  auto addr = asio::ip::make_address(pc.listen_host, ec);
  if (ec) {
    log::error("bad_listen_address", {{"listen", pc.listen_host}});
    return 2;
  }
  tcp::endpoint ep(addr, pc.listen_port);
  active_.store(packing ? 1 : nworkers); // packed: the first worker takes the first clients
  for (size_t i = 0; i < nworkers; ++i) {
    auto w = std::make_unique<Worker>(*shared_, packing && i == 0 ? pc.pool_size : per_node);
    w->acceptor = std::make_unique<Acceptor>(w->io);
    Acceptor &acc = *w->acceptor;
    acc.open(ep.protocol(), ec);
    acc.set_option(Acceptor::reuse_address(true), ec);
    int one = 1;
    ::setsockopt(acc.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    acc.bind(ep, ec);
    if (ec) {
      log::error("listen_failed",
                 {{"listen", pc.listen_host + ":" + std::to_string(pc.listen_port)},
                  {"error", ec.message()}});
      return 1;
    }
    acc.listen(asio::socket_base::max_listen_connections, ec);
    workers_.push_back(std::move(w));
    auto &wk = *workers_.back();
    asio::co_spawn(wk.io, accept_loop(wk), asio::detached);
  }
  // Health first: the first probe round decides which replicas serve from the start.
  monitor_ = std::make_unique<Monitor>(*shared_, shared_->health);
  monitor_->start();
  for (int i = 0; i < 300; ++i) {
    bool all = true;
    for (size_t id = 0; id < shared_->node_count(); ++id)
      all = all && shared_->health.node(id).probed.load();
    if (all)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (on_ready)
    on_ready();
  log::info("started",
            {{"listen", pc.listen_host + ":" + std::to_string(pc.listen_port)},
             {"workers", std::to_string(nworkers)},
             {"shards", std::to_string(shared_->cfg.shards.size())},
             {"pool_mode", pc.pool_mode == config::PoolMode::session ? "session" : "transaction"},
             {"config", shared_->cfg.path}});

  // SIGTERM/SIGINT: stop accepting, let sessions finish for a bounded time, then stop.
  asio::io_context signal_io;
  asio::signal_set signals(signal_io, SIGINT, SIGTERM);
  asio::signal_set hup(signal_io, SIGHUP);
  std::function<void()> hup_wait = [&] {
    hup.async_wait([&](const ErrorCode &ec, int) {
      if (ec)
        return;
      log::info("reload", {{"signal", "SIGHUP"}, {"config", shared_->cfg.path}});
      if (on_reload)
        on_reload();
      hup_wait();
    });
  };
  hup_wait();
  asio::steady_timer balance_timer(signal_io);
  std::vector<std::thread> threads;
  std::function<void()> balance_tick = [&] {
    balance_timer.expires_after(std::chrono::milliseconds(pc.pack_interval_ms));
    balance_timer.async_wait([&](const ErrorCode &ec) {
      if (ec)
        return;
      balance();
      balance_tick();
    });
  };
  signals.async_wait([&](const ErrorCode &, int sig) {
    log::info("shutdown", {{"signal", std::to_string(sig)}});
    balance_timer.cancel();
    ErrorCode ignored;
    hup.cancel(ignored);
    for (auto &w : workers_)
      asio::post(w->io, [&w] {
        ErrorCode ignored;
        w->acceptor->close(ignored); // ends accept_loop; sessions run on until the drain bound
      });
  });
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (auto &w : workers_) {
    guards.push_back(asio::make_work_guard(w->io));
    threads.emplace_back([&w] {
      w->tid.store(int(::gettid()), std::memory_order_relaxed);
      w->poller.run();
    });
  }
  if (packing) {
    balance(); // the first look: times so far
    balance_tick();
  }
  signal_io.run();
  // Drain: wait up to 5 s for sessions to end on their own.
  auto live_sessions = [this] {
    int n = 0;
    for (auto &w : workers_)
      n += w->sessions.load();
    return n;
  };
  for (int i = 0; i < 50 && live_sessions() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (auto &w : workers_)
    w->io.stop();
  for (auto &t : threads)
    t.join();
  int sessions_left = live_sessions(); // still open when the workers stopped
  if (on_stop)
    on_stop();
  // A session that moved holds work on the worker it started on (Asio's co_spawn keeps it), so
  // no worker's io_context goes before every worker's sessions are gone.
  for (auto &w : workers_)
    w->stop_sessions();
  for (auto &w : workers_)
    w->io.shutdown();
  guards.clear();   // they point into the workers' io_contexts: before the workers go (ASan)
  workers_.clear(); // ~Worker ends the remaining sessions in a safe order
  monitor_.reset();
  log::info("stopped", {{"sessions_left", std::to_string(sessions_left)}});
  return 0;
}

} // namespace sg::proxy

// Probes: the primary's pg_current_wal_insert_lsn(); each replica's recovery state, replay LSN,
// replay delay and WAL receiver. See DESIGN "Replicas, lag, read-your-writes".
#include "proxy/monitor.h"

#include "proxy/server.h"

#include "proxy/errors.h"

#include <pqxx/pqxx>

#include <condition_variable>

namespace sg::proxy {

std::optional<uint64_t> parse_lsn(std::string_view s) {
  size_t slash = s.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 >= s.size())
    return std::nullopt;
  auto hex = [](std::string_view h) -> std::optional<uint64_t> {
    if (h.size() > 8)
      return std::nullopt;
    uint64_t v = 0;
    for (char c : h) {
      int d = (c >= '0' && c <= '9')   ? c - '0'
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                       : -1;
      if (d < 0)
        return std::nullopt;
      v = (v << 4) | uint64_t(d);
    }
    return v;
  };
  auto hi = hex(s.substr(0, slash)), lo = hex(s.substr(slash + 1));
  if (!hi || !lo)
    return std::nullopt;
  return (*hi << 32) | *lo;
}

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

using ConnPtr = std::unique_ptr<pqxx::connection>;

std::string conninfo(const Node &n, const config::Replicas &p) {
  uint32_t connect_s = std::max<uint32_t>(2, (p.probe_timeout_ms + 999) / 1000);
  return n.endpoint.conninfo() + " connect_timeout=" + std::to_string(connect_s) +
         " application_name='shardgate-monitor' options='-c statement_timeout=" +
         std::to_string(p.probe_timeout_ms) + "'";
}

pqxx::connection &ensure(ConnPtr &c, const Node &n, const config::Replicas &p) {
  if (!c || !c->is_open())
    c = std::make_unique<pqxx::connection>(conninfo(n, p));
  return *c;
}

} // namespace

// One probe query. A kept connection that fails (the server restarted, or an admin terminated
// it) is retried once on a fresh one, so only an unreachable node counts as a failed probe.
pqxx::row Monitor::query1(void *slot, const Node &n, const char *sql) {
  auto &conn = *static_cast<ConnPtr *>(slot);
  bool had = conn && conn->is_open();
  try {
    pqxx::nontransaction tx(ensure(conn, n, board_.policy()));
    return tx.exec1(sql);
  } catch (const std::exception &) {
    conn.reset();
    if (!had)
      throw;
  }
  pqxx::nontransaction tx(ensure(conn, n, board_.policy()));
  return tx.exec1(sql);
}

Monitor::Monitor(const Shared &shared, HealthBoard &board) : shared_(shared), board_(board) {
  for (size_t i = 0; i < Shared::kMaxShards; ++i)
    samples_.push_back(std::make_unique<Samples>());
  threads_.resize(Shared::kMaxNodes);
}

Monitor::~Monitor() {
  for (auto &t : threads_)
    t.request_stop();
  threads_.clear(); // jthread joins
}

void Monitor::start() {
  auto p = shared_.placement();
  for (size_t id = 0; id < shared_.node_count(); ++id)
    if (p->has(id))
      watch(id);
}

void Monitor::watch(size_t node) {
  if (threads_[node].joinable() && !threads_[node].get_stop_token().stop_requested())
    return;
  // (Move-assigning a jthread stops and joins the one it replaces: a node that left and came
  // back waits here for its old prober to finish its probe.)
  threads_[node] = std::jthread([this, node](std::stop_token st) { run(st, node); });
}

void Monitor::unwatch(size_t node) {
  threads_[node].request_stop();
  NodeHealth &h = board_.node(node);
  h.serving = false; // it serves nothing now; if it comes back, it is probed in again
}

void Monitor::run(std::stop_token st, size_t node) {
  const Node &n = shared_.node(node);
  ConnPtr conn;
  std::mutex mu;
  std::condition_variable_any cv;
  while (!st.stop_requested()) {
    auto next = std::chrono::steady_clock::now() +
                std::chrono::milliseconds(board_.policy().health_interval_ms);
    if (n.role == Role::primary)
      probe_primary(n, &conn);
    else
      probe_replica(n, &conn);
    std::unique_lock lock(mu);
    cv.wait_until(lock, st, next, [] { return false; });
  }
}

void Monitor::probe_primary(const Node &n, void *slot) {
  auto &conn = *static_cast<ConnPtr *>(slot);
  NodeHealth &h = board_.node(n.id);
  int64_t t = now_ns(); // before the query: every commit acknowledged before t is <= the LSN
  bool was_up = h.up.load();
  try {
    auto row = query1(slot, n, "SELECT pg_current_wal_insert_lsn()::text");
    auto lsn = parse_lsn(row[0].c_str());
    if (!lsn)
      throw std::runtime_error("unparsable LSN");
    {
      auto &sm = *samples_[n.shard];
      std::lock_guard lock(sm.mu);
      sm.s.emplace_back(t, *lsn);
      while (sm.s.size() > 256)
        sm.s.pop_front();
    }
    h.primary_lsn = *lsn;
    h.up = true;
    h.probed = true;
    board_.report_success(n.id);
    if (!was_up)
      log::info("backend_up",
                {{"shard", n.shard_name}, {"node", n.endpoint.label()}, {"role", "primary"}});
  } catch (const std::exception &e) {
    conn.reset();
    h.up = false;
    h.probed = true;
    board_.report_failure(n.id, now_ms());
    if (was_up)
      log::warn("backend_down", {{"shard", n.shard_name},
                                 {"node", n.endpoint.label()},
                                 {"role", "primary"},
                                 {"error", e.what()}});
  }
}

void Monitor::probe_replica(const Node &n, void *slot, bool again) {
  auto &conn = *static_cast<ConnPtr *>(slot);
  NodeHealth &h = board_.node(n.id);
  int64_t t0 = now_ns();
  ReplicaProbe p;
  std::string error;
  try {
    auto row =
        query1(slot, n,
               "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, '0/0'), "
               "(SELECT count(*) FROM pg_stat_wal_receiver)");
    p.in_recovery = row[0].as<bool>();
    p.replay_lsn = parse_lsn(row[1].c_str()).value_or(0);
    p.receiver_running = row[2].as<int64_t>() > 0;
    p.ok = true;
  } catch (const std::exception &e) {
    conn.reset();
    error = e.what();
  }
  // The primary's newest sample taken before this probe, and the newest sample this replica has
  // replayed past (for read-your-writes).
  // The time lag is how long ago the primary first got ahead of what the replica has replayed
  // (from our own LSN samples): a commit timestamp would make an idle primary look like lag.
  std::optional<uint64_t> primary_lsn;
  int64_t caught_up_ns = 0, first_ahead_ns = 0;
  {
    auto &sm = *samples_[n.shard];
    std::lock_guard lock(sm.mu);
    for (auto &[t, lsn] : sm.s) {
      if (t >= t0)
        break;
      primary_lsn = lsn;
      if (p.ok && lsn <= p.replay_lsn) {
        caught_up_ns = t;
        first_ahead_ns = 0;
      } else if (p.ok && first_ahead_ns == 0) {
        first_ahead_ns = t;
      }
    }
  }
  p.replay_age_ms.reset();
  if (first_ahead_ns)
    p.replay_age_ms = double(now_ns() - first_ahead_ns) / 1e6;
  const NodeHealth *primary = &board_.node(shared_.placement()->primary[n.shard]);
  // No primary sample taken before this probe: nothing to measure against. If the primary is
  // up (its first sample came just after this probe began), probe again at once; if it has not
  // been probed yet, wait for it; if it is down, the lag is unknown (infinite).
  if (p.ok && !primary_lsn && primary) {
    if (!primary->probed.load())
      return;
    if (primary->up.load() && again)
      return probe_replica(n, slot, false);
  }
  // A WAL receiver also stops when the primary dies, and this probe may see that before the
  // primary's own probe does: a missing receiver counts only on two probes in a row, by which
  // time the primary's state is known (and a dead primary does not eject its replicas).
  if (p.ok && !p.receiver_running) {
    if (++h.no_receiver_streak < 2)
      p.receiver_running = true;
  } else {
    h.no_receiver_streak = 0;
  }
  LagReading r = measure_lag(p, primary_lsn, !primary || primary->up.load());
  board_.sync_gate(h); // thresholds changed by a reload
  bool was_serving = h.serving.load();
  bool serving = h.gate.observe(r);
  h.lag_bytes = r.known ? int64_t(r.bytes) : -1;
  h.lag_ms = r.ms ? int64_t(*r.ms) : -1;
  // Rounded down to ms: read-your-writes compares with `>`, so a tie stays on the primary.
  Millis caught_up = caught_up_ns / 1000000;
  if (caught_up > h.caught_up_at.load())
    h.caught_up_at = caught_up;
  h.up = p.ok;
  if (p.ok)
    board_.report_success(n.id);
  else
    board_.report_failure(n.id, now_ms());
  h.serving = serving;
  h.probed = true;
  if (was_serving != serving) {
    log::Fields f{{"shard", n.shard_name}, {"node", n.endpoint.label()}, {"role", "replica"}};
    if (!serving) {
      f.emplace_back("reason", !r.known   ? "probe failed"
                               : r.broken ? "no WAL receiver / not in recovery"
                                          : "lag");
      f.emplace_back("lag_bytes", r.known ? std::to_string(r.bytes) : "unknown");
      if (!error.empty())
        f.emplace_back("error", error);
      log::warn("replica_ejected", f);
    } else {
      log::info("replica_admitted", f);
    }
  }
}

} // namespace sg::proxy

// Metric families (the names are a user-facing contract; see the README) and the HTTP server.
#include "metrics/exporter.h"

#include "proxy/errors.h"
#include "proxy/listen.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <cmath>
#include <limits>
#include <sys/socket.h>

namespace sg::metrics {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

struct Exporter::Impl {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
};

namespace {

const char *kVersion = "0.1.0";
const char *roles[] = {"primary", "replica"};
const char *kinds[] = {"read", "write", "ddl", "other"};
const char *routes[] = {"single", "multi", "broadcast", "default", "error", "scatter"};
const char *sources[] = {"client", "backend", "proxy"};

MetricFamily family(const char *name, const char *help, MetricType type) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

ClientMetric metric(std::vector<ClientMetric::Label> labels, double value, MetricType type) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter)
    m.counter.value = value;
  else
    m.gauge.value = value;
  return m;
}

// Sums one histogram slot over all workers into Prometheus' cumulative buckets.
ClientMetric histogram(std::vector<ClientMetric::Label> labels,
                       const std::vector<const proxy::Worker *> &workers,
                       const std::vector<proxy::Histogram> proxy::WorkerStats::*which, size_t idx) {
  ClientMetric m;
  m.label = std::move(labels);
  std::vector<uint64_t> counts(proxy::kLatencyBuckets.size() + 1, 0);
  uint64_t count = 0, sum_ns = 0;
  for (auto *w : workers) {
    const proxy::Histogram &h = (w->stats.*which)[idx];
    for (size_t i = 0; i < counts.size(); ++i)
      counts[i] += h.buckets[i].load(std::memory_order_relaxed);
    count += h.count.load(std::memory_order_relaxed);
    sum_ns += h.sum_ns.load(std::memory_order_relaxed);
  }
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    ClientMetric::Bucket b;
    b.cumulative_count = cumulative;
    b.upper_bound = i < proxy::kLatencyBuckets.size() ? proxy::kLatencyBuckets[i]
                                                      : std::numeric_limits<double>::infinity();
    m.histogram.bucket.push_back(b);
  }
  m.histogram.sample_count = count;
  m.histogram.sample_sum = double(sum_ns) * 1e-9;
  return m;
}

} // namespace

Exporter::Exporter(const proxy::Server &server)
    : server_(server), impl_(std::make_unique<Impl>()) {}

Exporter::~Exporter() {
  stop();
}

std::string Exporter::render() const {
  const proxy::Shared &sh = server_.shared();
  auto workers = server_.workers();
  std::vector<std::string> shards; // every shard this process has served, by index
  for (size_t s = 0; s < sh.shard_count(); ++s)
    shards.push_back(sh.shard_name(s));
  std::vector<MetricFamily> out;
  auto sum = [&](auto get) {
    double v = 0;
    for (auto *w : workers)
      v += double(get(w->stats));
    return v;
  };

  auto clients =
      family("shardgate_client_connections", "Client connections by state", MetricType::Gauge);
  double total = sum([](auto &s) { return s.clients.load(); });
  double active = sum([](auto &s) { return s.clients_active.load(); });
  double waiting = sum([](auto &s) { return s.clients_waiting.load(); });
  clients.metric.push_back(metric({{"state", "active"}}, active, MetricType::Gauge));
  clients.metric.push_back(metric({{"state", "waiting"}}, waiting, MetricType::Gauge));
  clients.metric.push_back(
      metric({{"state", "idle"}}, std::max(0.0, total - active - waiting), MetricType::Gauge));
  out.push_back(std::move(clients));

  auto per_worker = family("shardgate_worker_clients",
                           "Client connections served by each worker thread", MetricType::Gauge);
  for (size_t i = 0; i < workers.size(); ++i)
    per_worker.metric.push_back(metric({{"worker", std::to_string(i)}},
                                       double(workers[i]->stats.clients.load()),
                                       MetricType::Gauge));
  out.push_back(std::move(per_worker));
  auto busy = family("shardgate_workers_taking_clients",
                     "Worker threads that new clients go to (worker packing)", MetricType::Gauge);
  busy.metric.push_back(metric({}, double(server_.active_workers()), MetricType::Gauge));
  out.push_back(std::move(busy));
  auto moves =
      family("shardgate_session_moves_total",
             "Sessions moved to another worker thread between transactions", MetricType::Counter);
  moves.metric.push_back(
      metric({}, sum([](auto &s) { return s.moves_in.load(); }), MetricType::Counter));
  out.push_back(std::move(moves));
  auto piped = family("shardgate_pipelined_reads_total",
                      "Plain autocommit reads sent behind other clients' reads on a shared backend "
                      "connection (pipeline_depth in [proxy])",
                      MetricType::Counter);
  piped.metric.push_back(
      metric({}, sum([](auto &s) { return s.pipelined.load(); }), MetricType::Counter));
  out.push_back(std::move(piped));

  auto twophase = family("shardgate_twophase_commits_total",
                         "Transactions that wrote on several shards, by how two-phase commit ended "
                         "them (in_doubt: the metadata database did not answer the decision)",
                         MetricType::Counter);
  twophase.metric.push_back(metric({{"outcome", "committed"}},
                                   sum([](auto &s) { return s.twophase_committed.load(); }),
                                   MetricType::Counter));
  twophase.metric.push_back(metric({{"outcome", "aborted"}},
                                   sum([](auto &s) { return s.twophase_aborted.load(); }),
                                   MetricType::Counter));
  twophase.metric.push_back(metric({{"outcome", "in_doubt"}},
                                   sum([](auto &s) { return s.twophase_in_doubt.load(); }),
                                   MetricType::Counter));
  out.push_back(std::move(twophase));

  if (auto *j = sh.journal.load()) {
    auto rec = j->recovered();
    auto recovered = family("shardgate_twophase_recovered_total",
                            "In-doubt prepared transactions this proxy's recovery resolved",
                            MetricType::Counter);
    recovered.metric.push_back(
        metric({{"outcome", "commit"}}, double(rec.committed), MetricType::Counter));
    recovered.metric.push_back(
        metric({{"outcome", "rollback"}}, double(rec.rolled_back), MetricType::Counter));
    out.push_back(std::move(recovered));
  }

  auto queries =
      family("shardgate_queries_total", "Statements run on backends, by shard, node role and kind",
             MetricType::Counter);
  auto durations =
      family("shardgate_query_duration_seconds",
             "Statement latency seen by the proxy, by shard and role", MetricType::Histogram);
  auto waits =
      family("shardgate_pool_wait_seconds",
             "Time spent waiting for or opening a backend connection", MetricType::Histogram);
  for (size_t s = 0; s < shards.size(); ++s) {
    for (int r = 0; r < 2; ++r) {
      for (size_t k = 0; k < proxy::kQueryKinds; ++k) {
        double v = sum([&](auto &st) {
          return st.queries[proxy::WorkerStats::qi(s, r, proxy::QueryKind(k))].load();
        });
        queries.metric.push_back(
            metric({{"shard", shards[s]}, {"role", roles[r]}, {"kind", kinds[k]}}, v,
                   MetricType::Counter));
      }
      durations.metric.push_back(histogram({{"shard", shards[s]}, {"role", roles[r]}}, workers,
                                           &proxy::WorkerStats::durations, s * 2 + size_t(r)));
      waits.metric.push_back(histogram({{"shard", shards[s]}, {"role", roles[r]}}, workers,
                                       &proxy::WorkerStats::pool_waits, s * 2 + size_t(r)));
    }
  }
  out.push_back(std::move(queries));
  out.push_back(std::move(durations));
  out.push_back(std::move(waits));

  auto route = family("shardgate_routes_total", "Routing decisions", MetricType::Counter);
  for (size_t i = 0; i < proxy::kRouteStats; ++i)
    route.metric.push_back(metric({{"route", routes[i]}},
                                  sum([&](auto &st) { return st.routes[i].load(); }),
                                  MetricType::Counter));
  out.push_back(std::move(route));

  auto conns = family("shardgate_backend_connections", "Backend connections by node and state",
                      MetricType::Gauge);
  auto pool_size =
      family("shardgate_pool_size", "Configured max connections per node", MetricType::Gauge);
  auto up = family("shardgate_backend_up", "1 when the node serves; 0 when down, banned or lagging",
                   MetricType::Gauge);
  auto lag_bytes =
      family("shardgate_replica_lag_bytes",
             "Primary insert LSN minus replica replay LSN (+Inf when unknown)", MetricType::Gauge);
  auto lag_seconds = family("shardgate_replica_lag_seconds",
                            "Replay delay while behind (+Inf when unknown)", MetricType::Gauge);
  proxy::Millis now = proxy::now_ms();
  auto place = sh.placement();
  for (size_t id = 0; id < sh.node_count(); ++id) {
    const proxy::Node &n = sh.node(id);
    if (!place->has(id))
      continue; // a node that left the placement (its pools close)
    std::vector<ClientMetric::Label> l = {
        {"shard", n.shard_name}, {"node", n.endpoint.label()}, {"role", proxy::to_string(n.role)}};
    double idle = 0, open = 0;
    for (auto *w : workers) {
      if (const proxy::Pool *p = w->pool_view[n.id].load(std::memory_order_acquire)) {
        idle += p->idle_gauge();
        open += p->open_gauge();
      }
    }
    double max = sh.cfg.proxy.pool_size; // over all workers: the node's budget
    auto with = [&](const char *state) {
      auto ll = l;
      ll.push_back({"state", state});
      return ll;
    };
    conns.metric.push_back(metric(with("idle"), idle, MetricType::Gauge));
    conns.metric.push_back(metric(with("active"), std::max(0.0, open - idle), MetricType::Gauge));
    pool_size.metric.push_back(metric(l, max, MetricType::Gauge));
    auto &h = const_cast<proxy::HealthBoard &>(sh.health).node(n.id);
    proxy::Millis banned = h.banned_until.load();
    bool not_banned = banned == 0 || now >= banned;
    bool serving =
        n.role == proxy::Role::primary ? h.up.load() && not_banned : h.serving.load() && not_banned;
    up.metric.push_back(metric(l, serving ? 1 : 0, MetricType::Gauge));
    if (n.role == proxy::Role::replica) {
      std::vector<ClientMetric::Label> ln = {{"shard", n.shard_name}, {"node", n.endpoint.label()}};
      int64_t b = h.lag_bytes.load(), ms = h.lag_ms.load();
      double inf = std::numeric_limits<double>::infinity();
      lag_bytes.metric.push_back(metric(ln, b < 0 ? inf : double(b), MetricType::Gauge));
      lag_seconds.metric.push_back(metric(ln,
                                          b < 0    ? inf
                                          : ms < 0 ? 0
                                                   : double(ms) / 1000.0,
                                          MetricType::Gauge));
    }
  }
  out.push_back(std::move(conns));
  out.push_back(std::move(pool_size));
  out.push_back(std::move(up));
  out.push_back(std::move(lag_bytes));
  out.push_back(std::move(lag_seconds));

  auto fallbacks =
      family("shardgate_read_fallbacks_total",
             "Reads sent to the primary instead of a replica, by reason", MetricType::Counter);
  for (size_t s = 0; s < shards.size(); ++s)
    for (size_t r = 0; r < proxy::kFallbackReasons; ++r)
      fallbacks.metric.push_back(
          metric({{"shard", shards[s]}, {"reason", proxy::to_string(proxy::FallbackReason(r))}},
                 double(sh.health.fallbacks(s, proxy::FallbackReason(r))), MetricType::Counter));
  out.push_back(std::move(fallbacks));

  auto errors =
      family("shardgate_errors_total", "Errors by source and SQLSTATE class", MetricType::Counter);
  auto snap = sh.errors.snapshot();
  for (int src = 0; src < int(proxy::kErrorSources); ++src) {
    bool any = false;
    for (auto &[k, v] : snap)
      if (k.first == src) {
        errors.metric.push_back(metric({{"source", sources[src]}, {"sqlstate_class", k.second}},
                                       double(v), MetricType::Counter));
        any = true;
      }
    if (!any) // every source present from the start, so rate() works from the first error
      errors.metric.push_back(
          metric({{"source", sources[src]}, {"sqlstate_class", "00"}}, 0, MetricType::Counter));
  }
  out.push_back(std::move(errors));

  auto limited = family("shardgate_rate_limited_total",
                        "Queries over their user's [[users]] max_queries_per_second: delayed "
                        "(waited for their turn) or refused (53400 after max_delay_ms)",
                        MetricType::Counter);
  limited.metric.push_back(
      metric({{"outcome", "delayed"}}, double(sh.rate_delayed.load()), MetricType::Counter));
  limited.metric.push_back(
      metric({{"outcome", "refused"}}, double(sh.rate_refused.load()), MetricType::Counter));
  out.push_back(std::move(limited));

  auto epoch =
      family("shardgate_ring_epoch", "Topology epoch of the ring in use", MetricType::Gauge);
  epoch.metric.push_back(metric({}, double(sh.placement()->epoch), MetricType::Gauge));
  out.push_back(std::move(epoch));
  auto build = family("shardgate_build_info", "Build information", MetricType::Gauge);
  build.metric.push_back(metric({{"version", kVersion}}, 1, MetricType::Gauge));
  out.push_back(std::move(build));
  auto max_lag = family("shardgate_replica_max_lag_bytes", "Configured [replicas] max_lag_bytes",
                        MetricType::Gauge);
  max_lag.metric.push_back(metric({}, double(sh.health.max_lag_bytes()), MetricType::Gauge));
  out.push_back(std::move(max_lag));
  auto max_lag_s = family("shardgate_replica_max_lag_seconds",
                          "Configured [replicas] max_lag_ms, in seconds", MetricType::Gauge);
  max_lag_s.metric.push_back(
      metric({}, double(sh.health.max_lag_ms()) / 1000.0, MetricType::Gauge));
  out.push_back(std::move(max_lag_s));

  const auto &cp = sh.control;
  if (cp.enabled.load()) {
    // Migrations: the running one (every proxy reads its journal), and the cutover pauses this
    // proxy's runner made.
    static const char *kPhases[] = {
        "PREPARE", "DUAL_WRITE", "BACKFILL", "VERIFY",  "READY", "CUTOVER", "REVERSE_DUAL_WRITE",
        "CLEANUP", "DONE",       "ABORTING", "ABORTED", "FAILED"};
    auto phase = family("shardgate_migration_phase",
                        "The running migration's phase: 1 for the current one (a state set)",
                        MetricType::Gauge);
    auto mg = [&](const char *name, const char *help) {
      return family(name, help, MetricType::Gauge);
    };
    auto copied = mg("shardgate_migration_rows_copied", "Rows backfilled by the running migration");
    auto estimated =
        mg("shardgate_migration_rows_estimated", "Rows the running migration expects to move");
    auto rate = mg("shardgate_migration_rows_per_second", "Backfill rate of the running migration");
    auto mism = mg("shardgate_migration_verify_mismatches",
                   "Rows VERIFY found different on the target (then copied again)");
    auto fails = mg("shardgate_migration_target_write_failures",
                    "Writes to a migration's target that failed (retried from the change log)");
    if (auto v = sh.migration.get()) {
      std::vector<ClientMetric::Label> l = {
          {"migration", v->id}, {"kind", v->kind}, {"shard", v->shard}};
      for (const char *p : kPhases) {
        auto lp = l;
        lp.push_back({"phase", p});
        phase.metric.push_back(metric(lp, v->phase == p ? 1 : 0, MetricType::Gauge));
      }
      copied.metric.push_back(metric(l, double(v->rows_copied), MetricType::Gauge));
      estimated.metric.push_back(metric(l, double(v->rows_estimated), MetricType::Gauge));
      rate.metric.push_back(metric(l, double(v->rows_per_second), MetricType::Gauge));
      mism.metric.push_back(metric(l, double(v->verify_mismatches), MetricType::Gauge));
      fails.metric.push_back(metric(l, double(v->target_write_failures), MetricType::Gauge));
    }
    for (auto *f : {&phase, &copied, &estimated, &rate, &mism, &fails})
      out.push_back(std::move(*f));
    auto pauses = family("shardgate_migration_cutover_pause_seconds",
                         "Write pause on the moving keys of each cutover this proxy ran",
                         MetricType::Histogram);
    {
      const auto &ms = sh.migration;
      ClientMetric m;
      uint64_t cumulative = 0;
      for (size_t i = 0; i < ms.pause_buckets.size(); ++i) {
        cumulative += ms.pause_buckets[i].load(std::memory_order_relaxed);
        ClientMetric::Bucket b;
        b.cumulative_count = cumulative;
        b.upper_bound = i < ms.kPauseBounds.size() ? ms.kPauseBounds[i]
                                                   : std::numeric_limits<double>::infinity();
        m.histogram.bucket.push_back(b);
      }
      m.histogram.sample_count = ms.pause_count.load(std::memory_order_relaxed);
      m.histogram.sample_sum = double(ms.pause_sum_us.load(std::memory_order_relaxed)) * 1e-6;
      pauses.metric.push_back(m);
    }
    out.push_back(std::move(pauses));
    auto mirror = family("shardgate_dual_write_commits_total",
                         "Commits during a migration that wrote moving keys, by whether their row "
                         "images reached the other side at commit (failed: left to the change log, "
                         "which the migration copies within 200 ms)",
                         MetricType::Counter);
    mirror.metric.push_back(metric({{"outcome", "copied"}},
                                   sum([](auto &s) { return s.mirror_copied.load(); }),
                                   MetricType::Counter));
    mirror.metric.push_back(metric({{"outcome", "failed"}},
                                   sum([](auto &s) { return s.mirror_failed.load(); }),
                                   MetricType::Counter));
    out.push_back(std::move(mirror));
    auto gauge = [&](const char *name, const char *help, double v) {
      auto f = family(name, help, MetricType::Gauge);
      f.metric.push_back(metric({}, v, MetricType::Gauge));
      out.push_back(std::move(f));
    };
    gauge("shardgate_metadata_up", "1 while the metadata database is reachable",
          cp.connected.load() ? 1 : 0);
    gauge("shardgate_writes_fenced",
          "1 while writes to sharded tables are refused (metadata database lost too long)",
          sh.fenced_write() ? 1 : 0);
    auto rc = family("shardgate_metadata_reconnects_total",
                     "Reconnections to the metadata database", MetricType::Counter);
    rc.metric.push_back(metric({}, double(cp.reconnects.load()), MetricType::Counter));
    out.push_back(std::move(rc));
    auto ep = family("shardgate_topology_epoch",
                     "Topology epoch this proxy runs on (applied) and the newest it has seen "
                     "in the metadata database (stored)",
                     MetricType::Gauge);
    ep.metric.push_back(
        metric({{"kind", "applied"}}, double(cp.applied_epoch.load()), MetricType::Gauge));
    ep.metric.push_back(
        metric({{"kind", "stored"}}, double(cp.stored_epoch.load()), MetricType::Gauge));
    out.push_back(std::move(ep));
  }

  return prometheus::TextSerializer().Serialize(out);
}

std::pair<int, std::string> Exporter::health() const {
  const proxy::Shared &sh = server_.shared();
  proxy::Millis now = proxy::now_ms();
  bool ok = true;
  auto place = sh.placement();
  std::string body = "{\"shards\":[";
  bool first = true;
  for (size_t s = 0; s < place->primary.size(); ++s) {
    if (!place->serves(s))
      continue;
    auto node_json = [&](size_t id) {
      const proxy::Node &n = sh.node(id);
      auto &h = const_cast<proxy::HealthBoard &>(sh.health).node(id);
      proxy::Millis banned = h.banned_until.load();
      bool not_banned = banned == 0 || now >= banned;
      bool serving = n.role == proxy::Role::primary ? h.up.load() && not_banned
                                                    : h.serving.load() && not_banned;
      std::string j = "{\"node\":\"" + proxy::log::escape_json(n.endpoint.label()) +
                      "\",\"up\":" + (h.up.load() ? "true" : "false") +
                      ",\"serving\":" + (serving ? "true" : "false") +
                      ",\"banned\":" + (not_banned ? "false" : "true");
      if (n.role == proxy::Role::replica)
        j += ",\"lag_bytes\":" + std::to_string(h.lag_bytes.load());
      return std::make_pair(j + "}", serving);
    };
    auto [pj, pserving] = node_json(place->primary[s]);
    ok = ok && pserving;
    body += std::string(first ? "" : ",") + "{\"name\":\"" +
            proxy::log::escape_json(sh.shard_name(s)) + "\",\"primary\":" + pj + ",\"replicas\":[";
    first = false;
    for (size_t i = 0; i < place->replicas[s].size(); ++i)
      body += std::string(i ? "," : "") + node_json(place->replicas[s][i]).first;
    body += "]}";
  }
  std::string meta;
  if (sh.control.enabled.load())
    meta = std::string(",\"metadata\":{\"connected\":") +
           (sh.control.connected.load() ? "true" : "false") +
           ",\"writes_fenced\":" + (sh.fenced_write() ? "true" : "false") +
           ",\"applied_epoch\":" + std::to_string(sh.control.applied_epoch.load()) + "}";
  body = std::string("{\"status\":\"") + (ok ? "ok" : "unavailable") + "\"," + body.substr(1) +
         "]" + meta + "}";
  return {ok ? 200 : 503, body};
}

bool Exporter::start(const std::string &host, uint16_t port, std::string &error) {
  if (!proxy::listen_tcp(impl_->acceptor, host, port, "[metrics] listen", error))
    return false;
  thread_ = std::thread([this] { serve(); });
  return true;
}

void Exporter::stop() {
  proxy::stop_serving(impl_->io, impl_->acceptor, thread_);
}

// One request per connection, answered synchronously on this thread: scrapes are rare and
// small, and a slow client is cut off by a receive timeout.
void Exporter::serve() {
  std::function<void()> accept = [&] {
    impl_->acceptor.async_accept([&](boost::system::error_code ec, tcp::socket sock) {
      if (ec)
        return;
      timeval tv{2, 0};
      ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      ::setsockopt(sock.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      boost::beast::flat_buffer buf;
      http::request<http::string_body> req;
      boost::system::error_code rec;
      http::read(sock, buf, req, rec);
      if (!rec) {
        http::response<http::string_body> res;
        res.version(req.version());
        res.keep_alive(false);
        std::string target(req.target());
        if (req.method() != http::verb::get) {
          res.result(http::status::method_not_allowed);
          res.body() = "GET only\n";
        } else if (target == "/metrics") {
          res.result(http::status::ok);
          res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
          res.body() = render();
        } else if (target == "/health") {
          auto [status, body] = health();
          res.result(http::status(status));
          res.set(http::field::content_type, "application/json");
          res.body() = body;
        } else {
          res.result(http::status::not_found);
          res.body() = "try /metrics or /health\n";
        }
        res.prepare_payload();
        http::write(sock, res, rec);
      }
      boost::system::error_code ignored;
      sock.shutdown(tcp::socket::shutdown_both, ignored);
      accept();
    });
  };
  accept();
  impl_->io.run();
}

} // namespace sg::metrics

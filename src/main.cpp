// shardgate: a PostgreSQL sharding proxy. Thin main: arguments, config, then the server.
#include "admin/server.h"
#include "config/config.h"
#include "executor/journal.h"
#include "ids/lease.h"
#include "metrics/exporter.h"
#include "migrations/runner.h"
#include "proxy/errors.h"
#include "proxy/server.h"
#include "router/router.h"
#include "topology/store.h"
#include "topology/watcher.h"

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>

namespace {

void usage(std::ostream &os) {
  os << "usage: shardgate --config FILE [--check] [--locate TABLE KEY]\n"
        "  --config FILE        TOML config (see README)\n"
        "  --check              validate the config and exit\n"
        "  --locate TABLE KEY   print the shard that owns KEY of sharded TABLE, and exit\n"
        "  --version            print the version\n"
        "  --help               the full manual page\n";
}

// --help: the manual, laid out as a man page.
void manual(std::ostream &os) {
  os << R"(SHARDGATE(8)                    ShardGate manual                    SHARDGATE(8)

NAME
       shardgate - PostgreSQL sharding proxy

SYNOPSIS
       shardgate --config FILE
       shardgate --config FILE --check
       shardgate --config FILE --locate TABLE KEY
       shardgate --version | --help

DESCRIPTION
       shardgate listens for PostgreSQL clients (any driver, SCRAM-SHA-256 or md5) and shows
       them one database. Each statement on a sharded table goes to the shard that owns its
       key on an xxHash consistent-hash ring; reads go to the shard's healthy replicas; reads
       and writes that span shards are run on each shard and merged, with two-phase commit
       for transactions that write on several. Shards are added and removed while clients
       run, through the admin REST API ([admin]; the shardgatectl command).

OPTIONS
       --config FILE
              The TOML configuration. Every problem in it is printed as
              file:line:column: error: message, and shardgate exits with status 2.

       --check
              Validate the configuration and exit (0 when it is valid).

       --locate TABLE KEY
              Print the name of the shard that owns KEY of sharded TABLE under the
              configured ring, and exit.

       --version
              Print the version and exit.

       --help, -h
              Print this manual and exit.

SIGNALS
       SIGHUP Read the configuration file again. Users, passwords, per-user limits, [log]
              and the replica lag thresholds apply at once; other changes are named in a
              warning and need a restart (the topology changes through the admin API). A
              file with errors changes nothing.

       SIGTERM, SIGINT
              Stop accepting clients, let the sessions finish for a bounded time, then exit.

FILES
       /etc/shardgate/shardgate.toml
              The configuration the systemd unit starts with.

       /usr/lib/systemd/system/shardgate.service
              The systemd unit: systemctl enable --now shardgate; systemctl reload
              shardgate sends SIGHUP.

       /usr/share/shardgate/
              An example configuration, the Grafana dashboard and the Prometheus alert rules.

ENVIRONMENT
       SHARDGATE_ADMIN_TOKEN
              The admin API's bearer token, when [admin] names no token_file.

       SHARDGATE_LOG_LEVEL
              debug: log at debug level whatever [log] says.

EXIT STATUS
       0      Success, or a clean shutdown.
       1      --locate could not place the key; or the proxy could not start (a port in
              use, say: the log says why).
       2      A usage error, or an invalid configuration.

SEE ALSO
       shardgatectl --help, psql(1), pgbench(1); /usr/share/doc/shardgate/README.md.
)";
}

namespace log = sg::proxy::log;

void apply_log(const sg::config::Log &lc) {
  log::set_json(lc.format == sg::config::LogFormat::json);
  log::set_level(lc.level == "debug"   ? log::Level::debug
                 : lc.level == "warn"  ? log::Level::warn
                 : lc.level == "error" ? log::Level::error
                                       : log::Level::info);
  if (const char *lvl = std::getenv("SHARDGATE_LOG_LEVEL"); lvl && std::strcmp(lvl, "debug") == 0)
    log::set_level(log::Level::debug);
}

// SIGHUP: reads the file again. Users and passwords, [log] and slow_query_ms take effect now;
// anything else that changed is named in a warning (it needs a restart, or, for the topology,
// the admin API). A bad file changes nothing.
void reload(const std::string &path, const sg::config::Config &started, sg::proxy::Server &server) {
  auto loaded = sg::config::load_file(path);
  if (!loaded.config) {
    for (auto &d : loaded.diagnostics)
      log::error("reload_failed", {{"problem", d.to_string()}});
    return;
  }
  const auto &n = *loaded.config;
  server.reload(n);
  apply_log(n.log);
  std::string restart;
  auto changed = [&](bool same, const char *what) {
    if (!same)
      restart += std::string(restart.empty() ? "" : ", ") + what;
  };
  changed(n.proxy == started.proxy, "[proxy]");
  auto other_replicas = n.replicas; // the lag thresholds reload; the rest does not
  other_replicas.max_lag_bytes = started.replicas.max_lag_bytes;
  other_replicas.max_lag_ms = started.replicas.max_lag_ms;
  changed(other_replicas == started.replicas, "[replicas] (except max_lag_bytes, max_lag_ms)");
  changed(n.metrics == started.metrics, "[metrics]");
  changed(n.metadata == started.metadata, "[metadata]");
  changed(n.migrations == started.migrations, "[migrations]");
  changed(n.transactions == started.transactions, "[transactions]");
  changed(n.admin == started.admin, "[admin]");
  changed(n.shards == started.shards && n.tables == started.tables && n.ring == started.ring,
          "[[shards]]/[[tables]]/[ring] (the topology: change it through the admin API)");
  log::info("reloaded", {{"users", std::to_string(n.users.size())},
                         {"log_level", n.log.level},
                         {"max_lag_bytes", std::to_string(n.replicas.max_lag_bytes)},
                         {"max_lag_ms", std::to_string(n.replicas.max_lag_ms)},
                         {"slow_query_ms", std::to_string(n.log.slow_query_ms)}});
  if (!restart.empty())
    log::warn("reload_needs_restart", {{"changed", restart}});
}

// What a topology epoch asks of the data path. False with `error` when a URL does not parse.
bool placement_spec(const sg::topology::Topology &t, const sg::config::Config &base,
                    sg::proxy::PlacementSpec &spec, std::string &error) {
  sg::config::Config c = base;
  if (!sg::topology::apply_to(t, c, error))
    return false;
  spec = {};
  spec.epoch = t.epoch;
  spec.vnodes = t.vnodes;
  for (size_t i = 0; i < t.shards.size(); ++i)
    spec.shards.push_back({c.shards[i], t.shards[i].in_ring(), t.shards[i].in_next()});
  if (t.migration) {
    spec.migration = t.migration->id;
    spec.pause = t.migration->pause;
    spec.mirror = t.migration->mirror;
  }
  spec.default_shard = t.default_shard;
  return true;
}

// On start the stored topology wins over the TOML's [[shards]], which only seed an empty
// metadata database. Returns the epoch the proxy starts on (0: the metadata database was
// unreachable, so the TOML's topology is used until it is back).
uint64_t load_topology(sg::config::Config &cfg, sg::topology::Topology &running) {
  auto toml = sg::topology::from_config(cfg);
  auto where = sg::topology::metadata_endpoint(cfg);
  try {
    sg::topology::Store store(where, "shardgate-control");
    store.ensure_schema();
    bool seeded = false;
    auto stored = store.seed(toml, seeded);
    running = stored;
    if (seeded) {
      log::info("topology_seeded", {{"epoch", "1"}, {"metadata", where.label()}});
      return 1;
    }
    if (!(stored == toml))
      log::warn("topology_toml_differs",
                {{"epoch", std::to_string(stored.epoch)},
                 {"detail", "the metadata database's topology is used; the TOML's [[shards]] "
                            "and [[tables]] only seed an empty metadata database"}});
    std::string err;
    if (!sg::topology::apply_to(stored, cfg, err)) {
      log::error("topology_stored_invalid",
                 {{"epoch", std::to_string(stored.epoch)}, {"error", err}});
      std::exit(1);
    }
    log::info("topology_loaded", {{"epoch", std::to_string(stored.epoch)},
                                  {"shards", std::to_string(stored.shards.size())},
                                  {"metadata", where.label()}});
    return stored.epoch;
  } catch (const std::exception &e) {
    log::warn("metadata_unreachable_at_start",
              {{"metadata", where.label()},
               {"error", e.what()},
               {"detail", "serving the TOML's topology; writes to sharded tables stop after "
                          "[metadata] fence_timeout_ms unless it comes back"}});
    return 0;
  }
}

} // namespace

int main(int argc, char **argv) {
  std::string config_path, locate_table, locate_key;
  bool check = false, locate = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (a == "--check") {
      check = true;
    } else if (a == "--locate" && i + 2 < argc) {
      locate = true;
      locate_table = argv[++i];
      locate_key = argv[++i];
    } else if (a == "--version") {
      std::cout << "shardgate 0.1.0\n";
      return 0;
    } else if (a == "--help" || a == "-h") {
      manual(std::cout);
      return 0;
    } else {
      std::cerr << "shardgate: unknown or incomplete argument \"" << a << "\"\n";
      usage(std::cerr);
      return 2;
    }
  }
  if (config_path.empty()) {
    usage(std::cerr);
    return 2;
  }
  auto loaded = sg::config::load_file(config_path);
  if (!loaded.config) {
    for (auto &d : loaded.diagnostics)
      std::cerr << d.to_string() << "\n";
    std::cerr << "shardgate: " << loaded.diagnostics.size()
              << " problem(s) in the config; not starting\n";
    return 2;
  }
  if (check) {
    std::cout << "config ok: " << loaded.config->shards.size() << " shards, "
              << loaded.config->tables.size() << " sharded tables\n";
    return 0;
  }
  if (locate) {
    sg::router::Router router(*loaded.config);
    std::string err;
    auto shard = router.locate(locate_table, locate_key, err);
    if (!shard) {
      std::cerr << "shardgate: " << err << "\n";
      return 1;
    }
    std::cout << router.topology().shard_names[*shard] << "\n";
    return 0;
  }
  apply_log(loaded.config->log);
  sg::config::Config &cfg = *loaded.config;
  struct Running { // the topology this proxy runs on (its epoch moves when an equal one is stored)
    std::mutex mu;
    sg::topology::Topology t;
  } running;
  running.t = sg::topology::from_config(cfg);
  uint64_t epoch = cfg.metadata.enabled ? load_topology(cfg, running.t) : 0;
  running.t.epoch = epoch;
  auto metrics_cfg = cfg.metrics;
  auto admin_cfg = cfg.admin;
  auto meta_cfg = cfg;
  auto started_cfg = sg::config::load_file(config_path).config.value_or(cfg); // as written
  std::string instance = sg::topology::instance_id(cfg);
  std::string address = cfg.proxy.listen_host + ":" + std::to_string(cfg.proxy.listen_port);
  sg::proxy::Server server(std::move(cfg));
  std::unique_ptr<sg::metrics::Exporter> exporter;
  std::unique_ptr<sg::topology::Watcher> watcher;
  std::unique_ptr<sg::migrations::Runner> runner;
  std::unique_ptr<sg::executor::Journal> journal;
  std::unique_ptr<sg::admin::Server> admin;
  std::unique_ptr<sg::ids::Lease> id_lease;
  // shardgate.next_id()'s instance number: configured, else leased from the metadata database.
  if (meta_cfg.ids.instance >= 0)
    server.ids().assign(meta_cfg.ids.instance, 0, INT64_MAX);
  else if (!meta_cfg.metadata.enabled)
    server.ids().revoke("no instance number: [ids] instance is not set and [metadata] is off");
  int rc = server.run(
      [&] {
        if (running.t.epoch != 0) { // the stored epoch may have shards off the ring, a migration
          sg::proxy::PlacementSpec spec;
          std::string err;
          if (!placement_spec(running.t, meta_cfg, spec, err) ||
              !server.apply_placement(spec, err)) {
            log::error("topology_stored_invalid",
                       {{"epoch", std::to_string(epoch)}, {"error", err}});
            std::exit(1);
          }
        }
        if (meta_cfg.metadata.enabled) {
          sg::topology::Watcher::Hooks hooks;
          hooks.on_fence = [&](bool on) { server.set_write_fence(on); };
          hooks.on_status = [&](const sg::topology::WatchStatus &s) {
            auto &c = server.control();
            if (s.connected && s.round_started_ms > 0) {
              c.ok_at_ms = s.round_started_ms; // steady ms, as now_ms()
              if (c.age_fenced.exchange(false))
                log::info("metadata_unfenced", {{"effect", "writes to sharded tables flow"}});
            }
            c.connected = s.connected;
            c.applied_epoch = s.applied_epoch;
            c.stored_epoch = s.stored_epoch;
            c.reconnects = s.reconnects;
          };
          server.control().enabled = true;
          server.control().applied_epoch = epoch;
          server.control().fence_timeout_ms = meta_cfg.metadata.fence_timeout_ms;
          server.control().ok_at_ms = sg::proxy::now_ms(); // the fence counts from the start
          hooks.on_epoch = [&](const sg::topology::Topology &t) -> uint64_t {
            std::lock_guard lk(running.mu);
            sg::topology::Topology same = t;
            same.epoch = running.t.epoch;
            if (same == running.t) { // nothing this proxy runs on changed
              running.t.epoch = t.epoch;
              return t.epoch;
            }
            std::string err;
            sg::proxy::PlacementSpec spec;
            if (t.vnodes != running.t.vnodes || !(t.tables == running.t.tables)) {
              err = "its tables or ring parameters differ: that needs a restart";
            } else if (placement_spec(t, meta_cfg, spec, err) &&
                       server.apply_placement(spec, err)) {
              log::info("topology_applied", {{"epoch", std::to_string(t.epoch)},
                                             {"previous", std::to_string(running.t.epoch)}});
              running.t = t;
              return t.epoch;
            }
            log::warn("topology_change_not_applied",
                      {{"stored_epoch", std::to_string(t.epoch)},
                       {"applied_epoch", std::to_string(running.t.epoch)},
                       {"reason", err}});
            return running.t.epoch;
          };
          watcher = std::make_unique<sg::topology::Watcher>(meta_cfg, instance, address, epoch,
                                                            std::move(hooks));
          watcher->start();
          // Every proxy runs a runner; the one holding the metadata lock runs the migration.
          runner = std::make_unique<sg::migrations::Runner>(meta_cfg, instance,
                                                            &server.migration_stats());
          runner->start();
          // Two-phase commit's decisions, and recovery of in-doubt transactions.
          sg::executor::Journal::Options jo;
          jo.metadata = sg::topology::metadata_endpoint(meta_cfg);
          jo.recover_after_ms = meta_cfg.transactions.recover_after_ms;
          jo.interval_ms = meta_cfg.transactions.recovery_interval_ms;
          jo.shards = [&] {
            sg::topology::Topology t;
            {
              std::lock_guard lk(running.mu);
              t = running.t;
            }
            std::vector<sg::config::Endpoint> out;
            sg::config::Config c = meta_cfg;
            std::string err;
            if (sg::topology::apply_to(t, c, err))
              for (auto &s : c.shards)
                out.push_back(s.primary);
            return out;
          };
          journal = std::make_unique<sg::executor::Journal>(std::move(jo));
          journal->start();
          server.set_journal(journal.get());
          if (meta_cfg.ids.instance < 0) {
            id_lease = std::make_unique<sg::ids::Lease>(meta_cfg, instance, server.ids());
            id_lease->start();
          }
        }
        if (admin_cfg.listen_port != 0) {
          sg::admin::Sources src;
          src.token = admin_cfg.token;
          src.topology = [&] {
            std::lock_guard lk(running.mu);
            return running.t;
          };
          src.watch = [&] { return watcher->status(); };
          src.proxy = &server.shared();
          src.openapi = sg::admin::openapi_document();
          src.metadata = sg::topology::metadata_endpoint(meta_cfg);
          admin = std::make_unique<sg::admin::Server>(std::move(src));
          std::string err;
          if (!admin->start(admin_cfg.listen_host, admin_cfg.listen_port, err)) {
            log::error("admin_listen_failed", {{"error", err}});
            std::exit(1);
          }
          log::info("admin_listening", {{"listen", admin_cfg.listen_host + ":" +
                                                       std::to_string(admin_cfg.listen_port)},
                                        {"token", admin_cfg.token.empty() ? "none" : "required"}});
        }
        if (metrics_cfg.listen_port == 0)
          return;
        exporter = std::make_unique<sg::metrics::Exporter>(server);
        std::string err;
        if (!exporter->start(metrics_cfg.listen_host, metrics_cfg.listen_port, err)) {
          log::error("metrics_listen_failed", {{"error", err}});
          std::exit(1);
        }
        log::info("metrics_listening", {{"listen", metrics_cfg.listen_host + ":" +
                                                       std::to_string(metrics_cfg.listen_port)}});
      },
      [&] {
        exporter.reset(); // first: a scrape reads the journal
        admin.reset();
        id_lease.reset();
        server.set_journal(nullptr);
        journal.reset();
        runner.reset();
        watcher.reset();
        exporter.reset();
      },
      [&] { reload(config_path, started_cfg, server); });
  return rc;
}

// shardgate: a PostgreSQL sharding proxy. Thin main: arguments, config, then the server.
#include "config/config.h"
#include "metrics/exporter.h"
#include "proxy/errors.h"
#include "proxy/server.h"
#include "router/router.h"

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>

namespace {

void usage(std::ostream &os) {
  os << "usage: shardgate --config FILE [--check] [--locate TABLE KEY]\n"
        "  --config FILE        TOML config (see README)\n"
        "  --check              validate the config and exit\n"
        "  --locate TABLE KEY   print the shard that owns KEY of sharded TABLE, and exit\n"
        "  --version            print the version\n";
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
      usage(std::cout);
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
  const auto &lc = loaded.config->log;
  namespace log = sg::proxy::log;
  log::set_json(lc.format == sg::config::LogFormat::json);
  log::set_level(lc.level == "debug"   ? log::Level::debug
                 : lc.level == "warn"  ? log::Level::warn
                 : lc.level == "error" ? log::Level::error
                                       : log::Level::info);
  if (const char *lvl = std::getenv("SHARDGATE_LOG_LEVEL"); lvl && std::strcmp(lvl, "debug") == 0)
    log::set_level(log::Level::debug);
  auto metrics_cfg = loaded.config->metrics;
  sg::proxy::Server server(std::move(*loaded.config));
  std::unique_ptr<sg::metrics::Exporter> exporter;
  int rc = server.run(
      [&] {
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
      [&] { exporter.reset(); });
  return rc;
}

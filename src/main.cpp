// shardgate: a PostgreSQL sharding proxy. Thin main: arguments, config, then the server.
#include "config/config.h"
#include "proxy/errors.h"
#include "proxy/server.h"
#include "router/router.h"

#include <cstdlib>
#include <cstring>
#include <iostream>

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
  if (const char *lvl = std::getenv("SHARDGATE_LOG_LEVEL"); lvl && std::strcmp(lvl, "debug") == 0)
    sg::proxy::log::set_level(sg::proxy::log::Level::debug);
  sg::proxy::Server server(std::move(*loaded.config));
  return server.run();
}

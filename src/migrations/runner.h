// The migration runner: moves the rows of an add_shard or remove_shard migration while the
// application keeps writing. Control plane only (libpqxx, its own thread); the data path
// learns what it must do (refuse DDL, pause moving keys, route by the new ring) from the
// topology epochs the runner stores.
//
// One proxy runs a migration: the one holding an advisory lock on the metadata database (a
// session lock, so a proxy that dies loses it at once and another, or the same one restarted,
// takes over). Every phase and every copied page is journaled (shardgate.migrations) before it
// counts, so the new holder resumes where the journal stops. See src/migrations/README.md for
// the phases and the invariants.
#pragma once

#include "config/config.h"
#include "proxy/server.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace sg::migrations {

class Runner {
public:
  // `stats`: where this proxy's metrics read the migration's progress (may be null).
  Runner(const config::Config &cfg, std::string instance, proxy::MigrationStats *stats);
  ~Runner();
  void start();
  void stop();

private:
  void run();
  bool sleep_for(int ms); // false when stopping
  config::Config cfg_;
  std::string instance_;
  proxy::MigrationStats *stats_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> stop_{false};
};

// The advisory lock key of the runner election ("SGMIGR").
constexpr int64_t kRunnerLock = 0x5347'4d49'4752;

} // namespace sg::migrations

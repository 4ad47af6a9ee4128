// The commit-decision journal and in-doubt recovery of one proxy (see twophase.h). Control
// plane: libpqxx on a thread of its own, never on a worker.
//
// decide() requests are batched into one durable transaction on the metadata database. When
// its answer is lost, the journal reconnects and asks again in a way that also settles the
// question (it records `abort` unless an outcome is there, and reads what stands): only when
// that fails too is the outcome `unknown`, and the prepared transactions are left to recovery.
//
// Recovery runs every recovery_interval_ms on every proxy (the steps are idempotent, so
// proxies may race): on each shard's primary it lists the prepared transactions named by
// gid(), resolves those older than recover_after_ms from the journal, and forgets decisions
// no shard holds a prepared transaction for any more.
#pragma once

#include "config/config.h"
#include "executor/twophase.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sg::topology {
class Store;
}

namespace sg::executor {

class Journal : public DecisionJournal {
public:
  struct Options {
    config::Endpoint metadata;
    uint32_t recover_after_ms = 10000;
    uint32_t interval_ms = 1000;
    // The primaries of the shards now (called on the journal's thread).
    std::function<std::vector<config::Endpoint>()> shards;
  };
  struct Stats {
    std::atomic<uint64_t> committed{0}, aborted{0}, unknown{0};
    std::atomic<uint64_t> recovered_commit{0}, recovered_abort{0};
  };
  explicit Journal(Options o);
  ~Journal() override;
  void start();
  void stop();
  void decide(std::string txid, Done done) override;
  void forget(std::string txid) override;
  Recovered recovered() const override {
    return {stats_.recovered_commit.load(), stats_.recovered_abort.load()};
  }
  const Stats &stats() const { return stats_; }

private:
  struct Request {
    std::string txid;
    Done done;
  };
  void run();
  topology::Store &store(); // connects when needed (throws when it cannot)
  void decide_batch(std::vector<Request> &batch);
  void recover();

  Options o_;
  Stats stats_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Request> pending_;
  std::vector<std::string> forgotten_;
  bool stopping_ = false;
  std::thread thread_;
  std::unique_ptr<topology::Store> store_;
  struct Shard;
  std::map<std::string, std::unique_ptr<Shard>> shards_; // by conninfo
  int64_t last_cleanup_ms_ = 0;
};

} // namespace sg::executor

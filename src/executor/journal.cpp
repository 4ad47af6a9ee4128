#include "executor/journal.h"

#include "proxy/errors.h"
#include "topology/store.h"

#include <chrono>
#include <pqxx/pqxx>
#include <set>

namespace sg::executor {

namespace log = proxy::log;

namespace {

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

} // namespace

struct Journal::Shard {
  std::unique_ptr<pqxx::connection> c;
};

Journal::Journal(Options o) : o_(std::move(o)) {}

Journal::~Journal() {
  stop();
}

void Journal::start() {
  thread_ = std::thread([this] { run(); });
}

void Journal::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

void Journal::decide(std::string txid, Done done) {
  {
    std::lock_guard lk(mu_);
    pending_.push_back({std::move(txid), std::move(done)});
  }
  cv_.notify_one();
}

void Journal::forget(std::string txid) {
  {
    std::lock_guard lk(mu_);
    forgotten_.push_back(std::move(txid));
  }
  cv_.notify_one();
}

topology::Store &Journal::store() {
  if (!store_) {
    store_ = std::make_unique<topology::Store>(o_.metadata, "shardgate-2pc");
    store_->ensure_schema();
  }
  return *store_;
}

void Journal::run() {
  int64_t next_recovery = steady_ms() + o_.interval_ms;
  for (;;) {
    std::vector<Request> batch;
    std::vector<std::string> forgotten;
    {
      std::unique_lock lk(mu_);
      cv_.wait_for(lk, std::chrono::milliseconds(std::max<int64_t>(0, next_recovery - steady_ms())),
                   [&] { return stopping_ || !pending_.empty() || !forgotten_.empty(); });
      if (stopping_)
        return; // the workers are going away: nobody waits for an answer any more
      batch.swap(pending_);
      forgotten.swap(forgotten_);
    }
    if (!batch.empty())
      decide_batch(batch);
    if (!forgotten.empty()) {
      try {
        store().forget_decisions(forgotten);
      } catch (const std::exception &) {
        store_.reset(); // recovery forgets them later
      }
    }
    if (steady_ms() >= next_recovery) {
      recover();
      next_recovery = steady_ms() + o_.interval_ms;
    }
  }
}

void Journal::decide_batch(std::vector<Request> &batch) {
  std::vector<std::string> txids;
  for (auto &r : batch)
    txids.push_back(r.txid);
  auto answer = [&](const Request &r, Outcome o, const std::string &error) {
    (o == Outcome::committed ? stats_.committed
     : o == Outcome::aborted ? stats_.aborted
                             : stats_.unknown)
        .fetch_add(1, std::memory_order_relaxed);
    r.done(o, error);
  };
  topology::Store *s = nullptr;
  try {
    s = &store();
  } catch (const std::exception &e) {
    store_.reset();
    for (auto &r : batch) // nothing was written
      answer(r, Outcome::aborted, std::string("cannot reach the metadata database: ") + e.what());
    return;
  }
  std::string lost;
  try {
    auto committed = s->decide_commit(txids);
    std::set<std::string> yes(committed.begin(), committed.end());
    for (auto &r : batch)
      answer(r, yes.count(r.txid) ? Outcome::committed : Outcome::aborted,
             yes.count(r.txid) ? "" : "recovery rolled it back first (it took too long)");
    return;
  } catch (const pqxx::sql_error &e) {
    // The server refused the transaction: nothing of it was recorded.
    store_.reset();
    for (auto &r : batch)
      answer(r, Outcome::aborted, std::string("the metadata database refused it: ") + e.what());
    return;
  } catch (const std::exception &e) {
    lost = e.what(); // the connection broke: the commit may or may not have happened
  }
  store_.reset();
  log::warn("twophase_decision_lost",
            {{"error", lost}, {"transactions", std::to_string(batch.size())}});
  for (auto &r : batch) {
    try {
      bool commit = store().resolve_in_doubt(r.txid);
      answer(r, commit ? Outcome::committed : Outcome::aborted,
             commit ? "" : "the metadata database's connection broke before the decision");
    } catch (const std::exception &e) {
      store_.reset();
      answer(r, Outcome::unknown, e.what());
    }
  }
}

void Journal::recover() {
  std::vector<config::Endpoint> shards = o_.shards ? o_.shards() : std::vector<config::Endpoint>{};
  bool all_seen = true;
  std::set<std::string> live;          // txids still prepared somewhere
  std::map<std::string, bool> outcome; // resolved this round
  for (const auto &ep : shards) {
    std::string ci = ep.conninfo();
    auto &slot = shards_[ci];
    if (!slot)
      slot = std::make_unique<Shard>();
    try {
      if (!slot->c)
        slot->c = std::make_unique<pqxx::connection>(
            ci + " connect_timeout=2 application_name='shardgate-2pc-recovery'");
      pqxx::nontransaction n(*slot->c);
      auto rows = n.exec("SELECT gid, (extract(epoch FROM now() - prepared) * 1000)::bigint "
                         "FROM pg_prepared_xacts WHERE database = current_database() "
                         "AND gid LIKE 'sg\\_%'");
      for (const auto &row : rows) {
        std::string g = row[0].as<std::string>();
        auto txid = txid_of(g);
        if (!txid)
          continue;
        live.insert(*txid);
        if (row[1].as<int64_t>() < int64_t(o_.recover_after_ms))
          continue;
        auto it = outcome.find(*txid);
        if (it == outcome.end())
          it = outcome.emplace(*txid, store().resolve_in_doubt(*txid)).first;
        bool commit = it->second;
        try {
          n.exec(std::string(commit ? "COMMIT PREPARED " : "ROLLBACK PREPARED ") + n.quote(g));
        } catch (const pqxx::sql_error &e) {
          // Gone (its coordinator or another proxy finished it) or busy (being finished now).
          if (e.sqlstate() != "42704" && e.sqlstate() != "55006")
            throw;
          continue;
        }
        (commit ? stats_.recovered_commit : stats_.recovered_abort)
            .fetch_add(1, std::memory_order_relaxed);
        log::info("twophase_recovered",
                  {{"gid", g}, {"node", ep.label()}, {"outcome", commit ? "commit" : "rollback"}});
      }
    } catch (const std::exception &e) {
      all_seen = false;
      slot->c.reset();
      store_.reset(); // if it was the metadata database that failed, connect afresh
      log::warn("twophase_recovery_failed", {{"node", ep.label()}, {"error", e.what()}});
    }
  }
  // Decisions whose transactions no shard holds any more are finished: forget them, now and
  // then, once every shard was seen (a shard that could not be read may still hold one).
  int64_t now = steady_ms();
  if (!all_seen || now - last_cleanup_ms_ < 30000)
    return;
  last_cleanup_ms_ = now;
  try {
    auto old =
        store().decisions_older_than(std::max<int64_t>(60000, 3 * int64_t(o_.recover_after_ms)));
    std::vector<std::string> done;
    for (auto &t : old)
      if (!live.count(t))
        done.push_back(t);
    store().forget_decisions(done);
  } catch (const std::exception &) {
    store_.reset();
  }
}

} // namespace sg::executor

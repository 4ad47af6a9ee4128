#include "migrations/runner.h"

#include "migrations/copier.h"
#include "migrations/moves.h"
#include "proxy/errors.h"
#include "topology/store.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <atomic>
#include <future>
#include <mutex>
#include <set>

namespace sg::migrations {

namespace log = proxy::log;
using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

int64_t ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// For tests and demos: sleep this long after journaling each phase, so that an operator (or a
// test) can act while the migration is in it.
int phase_delay_ms() {
  const char *v = std::getenv("SHARDGATE_TEST_PHASE_DELAY_MS");
  return v ? std::atoi(v) : 0;
}

bool has(const std::vector<std::string> &v, const std::string &n) {
  return std::find(v.begin(), v.end(), n) != v.end();
}

// Stopping, or an operator asked for something that ends the current step.
struct Interrupted {};

// What the metrics show of a journal row.
void publish(proxy::MigrationStats *stats, const topology::MigrationRow &m, const json &p) {
  if (!stats)
    return;
  proxy::MigrationStats::View v;
  v.id = m.id;
  v.kind = m.kind;
  v.shard = m.shard;
  v.phase = m.phase;
  auto num = [&](const json &j, const char *k) {
    auto it = j.find(k);
    return it != j.end() && it->is_number() ? it->get<uint64_t>() : uint64_t(0);
  };
  v.rows_copied = num(p, "rows_copied");
  v.rows_estimated = num(p, "rows_estimated");
  v.rows_per_second = num(p, "rows_per_second");
  v.target_write_failures = num(p, "target_write_failures");
  if (auto it = p.find("verify"); it != p.end() && it->is_object()) {
    v.verify_mismatches = num(*it, "mismatches");
    v.verify_repaired = num(*it, "repaired");
  }
  stats->set(v);
}

// One migration, run by the proxy holding the runner lock, from whatever phase the journal
// says until DONE, ABORTED or FAILED.
class Job {
public:
  Job(const config::Config &cfg, topology::Store &store, topology::MigrationRow row,
      const std::atomic<bool> &stop, proxy::MigrationStats *stats)
      : cfg_(cfg), store_(store), m_(std::move(row)), stop_(stop), stats_(stats) {
    p_ = json::parse(m_.progress.empty() ? "{}" : m_.progress);
    before_ = p_.value("before", std::vector<std::string>{});
    after_ = p_.value("after", std::vector<std::string>{});
    auto t = store_.latest();
    if (!t)
      throw std::runtime_error("no stored topology");
    topo_ = *t;
    moves_ = std::make_unique<KeyMoves>(topo_, before_, after_);
    for (auto &ts : topo_.tables)
      tables_.push_back({ts.name, ts.key, ts.key_type});
    cutover_auto_ = p_.value("cutover", std::string("auto")) == "auto";
    rate_ = p_.value("max_rows_per_second", uint64_t(cfg.migrations.max_rows_per_second));
  }

  void run() {
    while (true) {
      check_stop();
      const std::string ph = m_.phase;
      if (ph == "DONE" || ph == "ABORTED" || ph == "FAILED")
        return;
      if (ph == "ABORTING") {
        abort_now();
        continue;
      }
      if (wants("abort")) {
        if (ph == "REVERSE_DUAL_WRITE") {
          set_phase("ABORTING"); // flips back inside abort_now()
        } else {
          if (topo_.migration && topo_.migration->pause)
            resume_writes();
          set_phase("ABORTING");
        }
        continue;
      }
      if (ph == "PREPARE")
        prepare();
      else if (ph == "DUAL_WRITE")
        dual_write();
      else if (ph == "BACKFILL")
        backfill();
      else if (ph == "VERIFY")
        verify();
      else if (ph == "READY")
        ready();
      else if (ph == "CUTOVER")
        cutover();
      else if (ph == "REVERSE_DUAL_WRITE")
        reverse_dual_write();
      else if (ph == "CLEANUP")
        cleanup();
      else
        throw std::runtime_error("unknown phase " + ph);
    }
  }

private:
  // --- journal and topology -------------------------------------------------------------

  void refresh() { // one metadata query: it runs once per backfill page
    auto a = store_.active_migration();
    m_.request = a && a->id == m_.id ? a->request : "";
  }
  bool wants(const std::string &action) {
    refresh();
    return m_.request == action;
  }
  void check_stop() {
    if (stop_.load())
      throw Interrupted{};
  }

  // Progress within a phase: redoing work after a lost save is safe (pages are idempotent),
  // so it does not wait for the WAL flush. Phases do (set_phase).
  void save(const std::optional<std::string> &error = std::nullopt) {
    store_.journal(m_.id, m_.phase, p_.dump(), error, nullptr, 0, "", false);
    publish(stats_, m_, p_);
  }

  void set_phase(const std::string &phase) {
    m_.phase = phase;
    store_.journal(m_.id, phase, p_.dump(), std::nullopt);
    publish(stats_, m_, p_);
    log::info("migration_phase", {{"migration", m_.id}, {"phase", phase}});
    if (int d = phase_delay_ms())
      sleep_ms(d);
  }

  // Stores `next` as the next epoch together with the phase; retried on a concurrent change.
  void set_phase_and_topology(const std::string &phase, topology::Topology next,
                              const std::string &reason) {
    for (int i = 0; i < 50; ++i) {
      auto cur = store_.latest();
      if (store_.journal(m_.id, phase, p_.dump(), std::nullopt, &next, cur->epoch, reason)) {
        next.epoch = cur->epoch + 1;
        topo_ = next;
        m_.phase = phase;
        publish(stats_, m_, p_);
        log::info("migration_phase", {{"migration", m_.id},
                                      {"phase", phase},
                                      {"epoch", std::to_string(next.epoch)},
                                      {"reason", reason}});
        if (int d = phase_delay_ms())
          sleep_ms(d);
        return;
      }
      if (phase == "CLEANUP" && wants("abort"))
        return; // an abort came first: run() turns it into ABORTING, no CLEANUP
      sleep_ms(20);
    }
    throw std::runtime_error("could not store the topology for phase " + phase);
  }

  // The topology with shard states for one side of the flip: `on_after` (the after ring owns
  // keys) and `pause` (a cutover towards the other side is under way). `mirror`: proxies
  // dual-write, copying each write to a moving key to the other side at its commit.
  topology::Topology placed(bool on_after, bool pause, bool keep_migration = true,
                            bool mirror = true) const {
    topology::Topology t = topo_;
    t.shards.clear();
    for (auto s : topo_.shards) {
      bool b = has(before_, s.name), a = has(after_, s.name);
      if (!b && !a) {
        t.shards.push_back(s);
        continue;
      }
      if (b && a)
        s.state = "active";
      else if (!on_after)
        s.state = b ? "leaving" : "joining"; // before-only owns keys until the flip
      else if (!pause)
        s.state = a ? "active" : "removed";
      else
        s.state = a ? "leaving" : "joining"; // flipping back
      t.shards.push_back(s);
    }
    if (keep_migration)
      t.migration = topology::MigrationRef{
          m_.id, pause, mirror ? (on_after ? before_ : after_) : std::vector<std::string>{}};
    else
      t.migration.reset();
    return t;
  }
  // The final topology: only the shards of one side, all active, no migration.
  topology::Topology settled(bool on_after) const {
    topology::Topology t = topo_;
    t.shards.clear();
    const auto &side = on_after ? after_ : before_;
    for (auto s : topo_.shards)
      if (has(side, s.name) || (!has(before_, s.name) && !has(after_, s.name))) {
        s.state = "active";
        t.shards.push_back(s);
      }
    t.migration.reset();
    return t;
  }

  Copier &copier() {
    if (!copier_) {
      std::map<std::string, std::string> urls;
      for (auto &s : topo_.shards)
        urls[s.name] = s.primary;
      copier_ = std::make_unique<Copier>(urls, tables_, *moves_, cfg_.migrations.batch_rows);
    }
    return *copier_;
  }

  std::vector<std::string> involved() const {
    std::set<std::string> s;
    for (auto &n : moves_->sources())
      s.insert(n);
    for (auto &n : moves_->targets())
      s.insert(n);
    return {s.begin(), s.end()};
  }

  void sleep_ms(int ms) {
    auto until = Clock::now() + std::chrono::milliseconds(ms);
    while (Clock::now() < until) {
      check_stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(ms, 50)));
    }
  }

  // Every proxy with a fresh heartbeat has applied `epoch` (up to `timeout_ms`; 0: forever).
  bool barrier(uint64_t epoch, int64_t timeout_ms) {
    auto t0 = Clock::now();
    // A proxy whose heartbeat is older than this has fenced itself (it refuses writes to
    // sharded tables after fence_timeout_ms without the metadata database, counted from a
    // moment just after its last heartbeat); the margin covers that gap and clock rates.
    int64_t fresh = int64_t(cfg_.metadata.fence_timeout_ms) + cfg_.metadata.heartbeat_ms + 1000;
    while (true) {
      auto late = store_.behind(epoch, fresh);
      if (late.empty())
        return true;
      if (timeout_ms > 0 && ms_since(t0) >= timeout_ms)
        return false;
      if (timeout_ms == 0 && ms_since(t0) > 2000 && ms_since(t0) % 5000 < 60)
        log::warn("migration_waits_for_proxy", {{"migration", m_.id},
                                                {"proxy", late[0].id},
                                                {"applied_epoch",
                                                 std::to_string(late[0].applied_epoch)},
                                                {"epoch", std::to_string(epoch)}});
      check_stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  void count_drain(const Copier::DrainResult &d) {
    p_["rows_synced"] = p_.value("rows_synced", uint64_t(0)) + d.keys_synced;
    p_["target_write_failures"] =
        p_.value("target_write_failures", uint64_t(0)) + d.failures;
  }

  // --- phases ----------------------------------------------------------------------------

  void prepare() {
    // (Tests: PREPARE, journaled by the API, lasts a phase delay too, so a test can act in it.)
    if (int d = phase_delay_ms())
      sleep_ms(d);
    std::string err;
    if (!copier().prepare(moves_->targets(), involved(), m_.kind == "add_shard", err)) {
      // Nothing moved yet: capture goes, and the topology goes back to what it was.
      try {
        copier().uncapture(involved());
      } catch (const std::exception &) {
      }
      set_phase_and_topology("FAILED", settled(false), "migration " + m_.id + " failed");
      store_.journal(m_.id, "FAILED", p_.dump(), err);
      log::error("migration_failed", {{"migration", m_.id}, {"error", err}});
      return;
    }
    p_["rows_estimated"] = copier().estimate(moves_->sources());
    // The targets' tables and the capture exist now: proxies may dual-write.
    set_phase_and_topology("DUAL_WRITE", placed(false, false),
                           "migration " + m_.id + ": dual-write on");
  }

  void dual_write() {
    // Capture is on since PREPARE (it is in the database); dual-write counts as on once every
    // proxy with a fresh heartbeat has applied its epoch (none still runs DDL on sharded
    // tables either). Only then may the backfill start.
    barrier(topo_.epoch, 0);
    set_phase("BACKFILL");
  }

  // Each (table, source) is cut into kWorkers primary-key ranges (Copier::split), copied at
  // once by one worker thread each. A worker reads its pages one ahead: while page N is
  // written to the targets (its source rows still locked), page N+1 is read on the worker's
  // other source connection by a helper thread. Meanwhile this thread saves the journal (at
  // most every 100 ms: a page copied but not journaled is copied again after a restart, and
  // counts once journaled), watches for an abort, and drains the change log bounded by the
  // pages written: it copies no row a worker has not reached, so it never races a page in
  // flight (whose rows stay locked until written).
  static constexpr int kWorkers = 2;

  void backfill() {
    auto t0 = Clock::now();
    std::atomic<uint64_t> copied_here{0};
    copier().open(moves_->sources(), moves_->targets(), kWorkers);
    for (auto &src : moves_->sources())
      for (auto &t : tables_) {
        std::string k = t.name + "@" + src;
        if (!p_["backfill"].is_object())
          p_["backfill"] = json::object();
        json entry = p_["backfill"].value(k, json::object());
        if (!entry.contains("ranges")) {
          json ranges = json::array();
          if (entry.contains("after")) { // journaled before ranges: one range
            ranges.push_back({{"lo", nullptr}, {"hi", nullptr}, {"after", entry["after"]},
                              {"done", entry.value("done", false)}});
          } else {
            json lo = nullptr;
            for (auto &cut : copier().split(src, t, kWorkers)) {
              ranges.push_back({{"lo", lo}, {"hi", json::parse(cut.dump())}, {"after", nullptr},
                                {"done", false}});
              lo = json::parse(cut.dump());
            }
            ranges.push_back({{"lo", lo}, {"hi", nullptr}, {"after", nullptr}, {"done", false}});
          }
          p_["backfill"][k] = {{"ranges", ranges}};
          save();
          log::info("migration_backfill_ranges", {{"migration", m_.id},
                                                  {"table", t.name},
                                                  {"source", src},
                                                  {"ranges", std::to_string(ranges.size())}});
        }
        if (!copy_ranges(src, t, k, t0, copied_here))
          return; // abort asked
      }
    count_drain(copier().drain(involved(), false));
    p_["eta_seconds"] = 0;
    set_phase("VERIFY");
  }

  // Runs the workers of `k`'s unfinished ranges to the end. False when an abort was asked
  // (the workers stop after their current page; pages read ahead roll back).
  bool copy_ranges(const std::string &src, const config::Table &t, const std::string &k,
                   Clock::time_point t0, std::atomic<uint64_t> &copied_here) {
    std::atomic<bool> halt{false};
    std::atomic<int> running{0};
    std::exception_ptr failed;
    std::vector<std::thread> workers;
    json ranges = p_["backfill"][k]["ranges"];
    int open_ranges = 0;
    for (auto &r : ranges)
      open_ranges += r.value("done", false) ? 0 : 1;
    for (size_t r = 0; r < ranges.size(); ++r) {
      if (ranges[r].value("done", false))
        continue;
      int w = int(workers.size());
      ++running;
      workers.emplace_back([&, r, w] {
        try {
          copy_range(src, t, k, r, w, open_ranges, halt, copied_here);
        } catch (...) {
          std::lock_guard<std::mutex> g(p_mu_);
          if (!failed)
            failed = std::current_exception();
          halt = true;
        }
        --running;
      });
    }
    auto last_drain = Clock::now(), last_save = Clock::now(), last_ask = Clock::now();
    bool aborted = false;
    try {
      while (running.load() > 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (stop_.load())
          halt = true;
        if (ms_since(last_ask) >= 100) {
          last_ask = Clock::now();
          if (wants("abort"))
            aborted = halt = true;
        }
        if (ms_since(last_save) >= 100) {
          json snap;
          {
            std::lock_guard<std::mutex> g(p_mu_);
            note_rate(t0, copied_here);
            snap = p_;
          }
          store_.journal(m_.id, m_.phase, snap.dump(), std::nullopt, nullptr, 0, "", false);
          publish(stats_, m_, snap);
          last_save = Clock::now();
        }
        if (ms_since(last_drain) > 200 && !halt) {
          json snap;
          {
            std::lock_guard<std::mutex> g(p_mu_);
            snap = p_["backfill"];
          }
          auto d = copier().drain(involved(), false, false, &snap);
          std::lock_guard<std::mutex> g(p_mu_);
          count_drain(d);
          last_drain = Clock::now();
        }
      }
    } catch (...) {
      halt = true;
      for (auto &w : workers)
        w.join();
      throw;
    }
    for (auto &w : workers)
      w.join();
    if (failed)
      std::rethrow_exception(failed);
    check_stop();
    note_rate(t0, copied_here);
    save();
    return !aborted;
  }

  void note_rate(Clock::time_point t0, const std::atomic<uint64_t> &copied_here) {
    double secs = std::max(0.001, double(ms_since(t0)) / 1000);
    double rate = double(copied_here.load()) / secs;
    p_["rows_per_second"] = uint64_t(rate);
    uint64_t est = p_.value("rows_estimated", uint64_t(0));
    uint64_t done = p_.value("rows_copied", uint64_t(0));
    p_["eta_seconds"] = rate > 0 && est > done ? uint64_t(double(est - done) / rate) : 0;
  }

  // One worker: range r of `k`, page after page, until done or `halt`.
  void copy_range(const std::string &src, const config::Table &t, const std::string &k,
                  size_t r, int w, int workers, const std::atomic<bool> &halt,
                  std::atomic<uint64_t> &copied_here) {
    json range, after;
    {
      std::lock_guard<std::mutex> g(p_mu_);
      range = p_["backfill"][k]["ranges"][r];
      after = range.value("after", json(nullptr));
    }
    auto rng = nlohmann::json::parse(range.dump());
    std::future<Copier::FetchedPtr> ahead;
    int slot = 0;
    auto read_ahead = [&](const json &from) {
      slot ^= 1;
      auto f = nlohmann::json::parse(from.dump());
      ahead = std::async(std::launch::async, [this, &src, &t, rng, f, w, s = slot] {
        return copier().fetch_page(src, t, rng, f, w, s);
      });
    };
    auto start = Clock::now();
    uint64_t mine = 0;
    read_ahead(after);
    while (true) {
      if (halt.load()) {
        try {
          ahead.get(); // its transaction rolls back
        } catch (...) {
        }
        return;
      }
      auto fetched = ahead.get();
      const Copier::Page &next = Copier::page_of(*fetched);
      if (!next.done)
        read_ahead(json::parse(next.last.dump()));
      auto page = copier().write_page(t, *fetched);
      {
        std::lock_guard<std::mutex> g(p_mu_);
        auto &rg = p_["backfill"][k]["ranges"][r];
        rg["after"] = json::parse(page.last.dump());
        rg["done"] = page.done;
        p_["rows_copied"] = p_.value("rows_copied", uint64_t(0)) + page.copied;
      }
      copied_here += page.copied;
      mine += page.copied;
      if (page.done)
        return;
      if (rate_ > 0 && page.copied > 0) { // rate limit: this worker's share of it
        double secs = double(ms_since(start)) / 1000;
        double early = double(mine) * workers / double(rate_) - secs;
        for (int i = 0; i < int(early * 100) && !halt.load(); ++i)
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }

  void verify() {
    count_drain(copier().drain(involved(), false));
    auto v = copier().verify(moves_->sources());
    p_["verify"] = {{"rows_checked", v.rows_checked},
                    {"mismatches", v.mismatches},
                    {"repaired", v.repaired}};
    save();
    set_phase(cutover_auto_ ? "CUTOVER" : "READY");
  }

  void ready() {
    while (!wants("cutover")) {
      if (m_.request == "abort")
        return;
      count_drain(copier().drain(involved(), false));
      sleep_ms(200);
    }
    set_phase("CUTOVER");
  }

  // Whether the keys are on their new owners now (the forward flip is done, and no flip back).
  bool on_after() const {
    for (auto &s : topo_.shards) {
      bool b = has(before_, s.name), a = has(after_, s.name);
      if (a && !b)
        return s.state == "active" || s.state == "leaving";
      if (b && !a)
        return s.state == "removed" || s.state == "joining";
    }
    return false;
  }

  // Writes to moving keys resume on the side that owns them now (a cutover abandoned).
  void resume_writes() {
    set_phase_and_topology(m_.phase, placed(on_after(), false), "cutover abandoned: writes resume");
  }

  // Pause writes to the moving keys, wait for every proxy to see it, lock the tables on the
  // side that owned them so in-flight writers finish, drain the change log, flip. Over
  // cutover_pause_ms: abandon, resume writes, and try again later.
  bool flip(bool to_after, const std::string &next_phase) {
    uint32_t budget = cfg_.migrations.cutover_pause_ms;
    int attempts = 0;
    while (true) {
      check_stop();
      // Catch up first, so that the paused drain has little left to do.
      for (int i = 0; i < 20; ++i)
        if (copier().drain(involved(), !to_after).keys_synced < 50)
          break;
      ++attempts;
      p_["cutover_attempts"] = p_.value("cutover_attempts", 0) + 1;
      set_phase_and_topology(m_.phase, placed(!to_after, true),
                             "cutover of migration " + m_.id + ": writes to moving keys pause");
      auto t0 = Clock::now();
      std::string why;
      bool ok = barrier(topo_.epoch, budget);
      if (!ok)
        why = "a proxy did not apply the pause in time";
      std::unique_ptr<Copier::Freeze> freeze;
      if (ok) {
        // Writers of the moving keys that began before the pause finish (or the lock times out).
        auto owners = to_after ? moves_->sources() : moves_->targets();
        int64_t left = int64_t(budget) - ms_since(t0);
        freeze = left > 0 ? copier().freeze(owners, topo_.epoch, uint32_t(left), why) : nullptr;
        ok = freeze != nullptr;
        if (!ok && why.empty())
          why = "no time left for the final drain";
      }
      if (ok) {
        auto d = copier().drain(involved(), !to_after, true);
        count_drain(d);
        if (ms_since(t0) > int64_t(budget)) {
          ok = false;
          why = "the final drain took longer than cutover_pause_ms";
        }
      }
      if (ok) {
        // The point of no return: the flip and the phase in one metadata transaction.
        auto pause_ms = ms_since(t0);
        p_["cutover_pause_ms"].push_back(pause_ms);
        if (stats_)
          stats_->observe_pause(double(pause_ms) / 1000);
        set_phase_and_topology(next_phase, placed(to_after, false),
                               "migration " + m_.id + ": keys flipped to their " +
                                   (to_after ? "new" : "old") + " owners");
        freeze.reset();
        p_["flipped_at_ms"] = uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::system_clock::now().time_since_epoch())
                                           .count());
        save();
        log::info("migration_cutover", {{"migration", m_.id},
                                        {"pause_ms", std::to_string(pause_ms)},
                                        {"attempts", std::to_string(attempts)}});
        return true;
      }
      freeze.reset();
      set_phase_and_topology(m_.phase, placed(!to_after, false),
                             "cutover of migration " + m_.id + " abandoned: " + why);
      log::warn("migration_cutover_abandoned",
                {{"migration", m_.id}, {"reason", why}, {"attempt", std::to_string(attempts)}});
      save(why);
      if (wants("abort"))
        return false;
      sleep_ms(std::min(5000, 500 * attempts));
    }
  }

  void cutover() {
    if (topo_.migration && topo_.migration->pause) // a runner died inside a pause
      resume_writes();
    flip(true, "REVERSE_DUAL_WRITE");
  }

  void reverse_dual_write() {
    uint64_t flipped = p_.value("flipped_at_ms", uint64_t(0));
    uint64_t after_s = p_.value("cleanup_after_s", uint64_t(300));
    while (true) {
      if (topo_.migration && topo_.migration->pause)
        resume_writes();
      count_drain(copier().drain(involved(), true));
      if (wants("abort"))
        return; // run() turns it into ABORTING
      uint64_t now = uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count());
      if (m_.request == "cleanup" || now >= flipped + after_s * 1000)
        break;
      save();
      sleep_ms(200);
    }
    // Dual-write stops before rows are deleted from the old owners (a proxy still copying
    // writes back would put them there again).
    set_phase_and_topology("CLEANUP", placed(true, false, true, false),
                           "migration " + m_.id + ": dual-write off, cleanup");
  }

  // Every proxy has stopped dual-writing: it applied the epoch that turned it off, and a
  // commit that began copying before that has ended (mirror writes give up on a lock after
  // kMirrorLockTimeoutMs, and commit right after).
  void mirror_stopped() {
    barrier(topo_.epoch, 0);
    sleep_ms(kMirrorGraceMs);
  }
  static constexpr int kMirrorGraceMs = 1500;

  void cleanup() {
    mirror_stopped();
    count_drain(copier().drain(involved(), true));
    // Writes to moved keys go only to the new owners from here: no reverse copy any more.
    copier().uncapture(involved());
    uint64_t deleted = copier().delete_moved(moves_->sources(), /*from_before=*/true);
    p_["rows_cleaned"] = p_.value("rows_cleaned", uint64_t(0)) + deleted;
    set_phase_and_topology("DONE", settled(true), "migration " + m_.id + " done");
  }

  void abort_now() {
    if (on_after() && !flip(false, "ABORTING"))
      return;
    if (topo_.migration && !topo_.migration->mirror.empty())
      set_phase_and_topology("ABORTING", placed(false, false, true, false),
                             "migration " + m_.id + ": dual-write off, abort");
    mirror_stopped();
    copier().uncapture(involved());
    uint64_t deleted = copier().delete_moved(moves_->targets(), /*from_before=*/false);
    p_["rows_cleaned"] = p_.value("rows_cleaned", uint64_t(0)) + deleted;
    set_phase_and_topology("ABORTED", settled(false), "migration " + m_.id + " aborted");
  }

  const config::Config &cfg_;
  topology::Store &store_;
  topology::MigrationRow m_;
  const std::atomic<bool> &stop_;
  proxy::MigrationStats *stats_;
  json p_;
  std::mutex p_mu_; // p_ while backfill workers run
  std::vector<std::string> before_, after_;
  topology::Topology topo_;
  std::unique_ptr<KeyMoves> moves_;
  std::vector<config::Table> tables_;
  std::unique_ptr<Copier> copier_;
  bool cutover_auto_ = true;
  uint64_t rate_ = 0;
};

} // namespace

Runner::Runner(const config::Config &cfg, std::string instance, proxy::MigrationStats *stats)
    : cfg_(cfg), instance_(std::move(instance)), stats_(stats) {}

Runner::~Runner() { stop(); }

void Runner::start() { thread_ = std::thread([this] { run(); }); }

void Runner::stop() {
  stop_ = true;
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

bool Runner::sleep_for(int ms) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, std::chrono::milliseconds(ms), [&] { return stop_.load(); });
  return !stop_.load();
}

void Runner::run() {
  auto where = topology::metadata_endpoint(cfg_);
  int backoff = 200;
  while (!stop_) {
    try {
      topology::Store store(where, "shardgate-migrations");
      while (!stop_) {
        auto m = store.active_migration();
        if (stats_) {
          if (m)
            publish(stats_, *m, json::parse(m->progress, nullptr, false));
          else
            stats_->set(std::nullopt);
        }
        if (!m) {
          if (!sleep_for(300))
            return;
          continue;
        }
        if (!store.try_lock(kRunnerLock)) { // another proxy runs it
          if (!sleep_for(500))
            return;
          continue;
        }
        log::info("migration_runner", {{"migration", m->id}, {"phase", m->phase},
                                       {"instance", instance_}});
        try {
          Job job(cfg_, store, *m, stop_, stats_);
          job.run();
        } catch (const Interrupted &) {
          store.unlock(kRunnerLock);
          return;
        } catch (const std::exception &e) {
          // The journal has everything done so far: release, wait, take it up again.
          log::warn("migration_step_failed", {{"migration", m->id}, {"error", e.what()}});
          try {
            auto rows = store.migrations(m->id);
            if (!rows.empty())
              store.journal(m->id, rows[0].phase, rows[0].progress, std::string(e.what()));
          } catch (...) {
          }
          store.unlock(kRunnerLock);
          if (!sleep_for(1000))
            return;
          continue;
        }
        store.unlock(kRunnerLock);
      }
      backoff = 200;
    } catch (const std::exception &e) {
      log::warn("migration_runner_disconnected", {{"error", e.what()}});
      if (!sleep_for(backoff))
        return;
      backoff = std::min(backoff * 2, 2000);
    }
  }
}

} // namespace sg::migrations

// The runner's hands on the shards' data: schema copy, change capture, backfill pages, the
// change-log drain, verify, the cutover freeze and cleanup. libpqxx to each shard's primary;
// every write the copier makes runs with `shardgate.sync = on`, which the capture trigger
// ignores, so its own copies are never captured again.
//
// Change capture: during a migration, every sharded table on every shard involved has an AFTER
// ROW trigger that appends the shard key of each written row to shardgate.changes, in the
// writer's own transaction (so it is as durable as the write, and also sees writes that
// bypass the proxy). The drain reads the log and copies each changed key's whole row set
// (row images, with the source rows locked FOR SHARE until the target has committed) from the
// side that owns the key now to the other side.
#pragma once

#include "config/config.h"
#include "migrations/moves.h"

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace pqxx {
class transaction_base;
}

namespace sg::migrations {

class Copier {
public:
  struct Conn; // a libpqxx connection (libpqxx stays in copier.cpp)
  // `urls`: each shard's primary by name.
  Copier(std::map<std::string, std::string> urls, std::vector<config::Table> tables,
         const KeyMoves &moves, uint32_t batch_rows);
  ~Copier();

  // Creates each sharded table on the targets from a source's definition (pg_dump
  // --schema-only), checks primary keys (and, when `empty_targets`, that the targets hold no
  // rows), and installs change capture on every shard involved. False with `error`.
  bool prepare(const std::vector<std::string> &targets, const std::vector<std::string> &involved,
               bool empty_targets, std::string &error);
  // Rows expected to move (from the planner's statistics).
  uint64_t estimate(const std::vector<std::string> &sources);

  struct Page {
    nlohmann::json last; // primary key of the page's last row (a JSON array), or null
    bool done = false;
    uint64_t copied = 0;
    int worker = 0;
  };
  // Where to cut `table` on `source` into `parts` ranges of about equal size, on its first
  // primary-key column (text values; none for a small table): one backfill worker each.
  std::vector<nlohmann::json> split(const std::string &source, const config::Table &table,
                                    int parts);
  // One primary-key page of `table` on `source` in `range` ({"lo", "hi"}: the first primary-key
  // column from lo, inclusive, to hi, exclusive; null is open) after `after`, read in a
  // transaction that holds the page FOR SHARE until write_page() has committed every target's
  // copy. Each backfill `worker` has its own connections: two to each source (`slot` 0 or 1),
  // so that the next page can be read while this one is written, and one to each target.
  struct Fetched; // the page's rows and its source transaction (libpqxx stays in copier.cpp)
  struct FetchedDeleter {
    void operator()(Fetched *f) const; // rolls back an unwritten page's transaction
  };
  using FetchedPtr = std::unique_ptr<Fetched, FetchedDeleter>;
  static const Page &page_of(const Fetched &f);
  void open(const std::vector<std::string> &sources, const std::vector<std::string> &targets,
            int workers);
  FetchedPtr fetch_page(const std::string &source, const config::Table &table,
                        const nlohmann::json &range, const nlohmann::json &after, int worker,
                        int slot);
  Page write_page(const config::Table &table, Fetched &f);

  struct DrainResult {
    uint64_t keys_synced = 0;
    uint64_t failures = 0;     // keys whose copy failed (left in the log: retried)
    uint64_t stale_writes = 0; // writes to moved keys on their old owner after the flip
  };
  // Copies the keys in the change logs of `shards` from the side that owns them to the other:
  // before the flip (`reverse` false) from old owners to new ones, after it back. `full`: until
  // the logs are empty; otherwise one pass. `backfill`, while the backfill runs: its progress
  // per "table@source" ({"ranges": [{"lo", "hi", "after", "done"}]}); rows it has not
  // reached are left to it.
  DrainResult drain(const std::vector<std::string> &shards, bool reverse, bool full = false,
                    const nlohmann::ordered_json *backfill = nullptr);

  struct Verify {
    uint64_t rows_checked = 0, mismatches = 0, repaired = 0;
  };
  // Compares every moving row on its source with its copy (md5 of the row image), page by page,
  // and copies again every key that differs.
  Verify verify(const std::vector<std::string> &sources);

  // Fences `shards` at `fence_epoch` (the capture trigger refuses, from now on, writes that a
  // proxy routed on an older epoch), then holds SHARE locks on their sharded tables (writers
  // that began before finish first; new ones wait) until destroyed. nullptr with `why` after
  // `timeout_ms`.
  struct Freeze {
    ~Freeze();
    std::vector<std::unique_ptr<Conn>> conns;
  };
  std::unique_ptr<Freeze> freeze(const std::vector<std::string> &shards, uint64_t fence_epoch,
                                 uint32_t timeout_ms, std::string &why);

  // Removes change capture from `shards`.
  void uncapture(const std::vector<std::string> &shards);
  // Deletes, on each of `shards`, the rows it no longer owns: `from_before` (cleanup after the
  // flip) the rows that moved away from it; otherwise (abort) the copies it received.
  uint64_t delete_moved(const std::vector<std::string> &shards, bool from_before);

private:
  struct TableInfo;
  const TableInfo &info(const config::Table &t);
  // " AND ..." for `range` ({"lo", "hi", "after"}): the rows after `after`, or with
  // `upto_after` up to it; quoted literals, as COPY takes no parameters.
  static std::string range_sql(const TableInfo &ti, const nlohmann::json &range,
                               pqxx::transaction_base &w, bool upto_after);
  Conn &conn(const std::string &shard, int role);
  uint64_t sync_keys(const std::string &from, const std::string &to, const config::Table &t,
                     const std::vector<std::string> &keys,
                     const nlohmann::ordered_json *backfill = nullptr);
  std::map<std::string, std::string> urls_;
  std::vector<config::Table> tables_;
  const KeyMoves &moves_;
  uint32_t batch_;
  std::map<std::string, std::unique_ptr<TableInfo>> info_;
  std::map<std::pair<std::string, int>, std::unique_ptr<Conn>> conns_;
  std::mutex mu_;                 // conns_ (workers and the drain run at once)
  std::recursive_mutex info_mu_;  // info_ (info() opens a connection)
};

} // namespace sg::migrations

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
#include <string>
#include <vector>

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
  };
  // One primary-key page of `table` on `source` (after `after`), read in a transaction that
  // holds the page FOR SHARE until write_page() has committed every target's copy. `slot` (0
  // or 1) picks one of two source connections, so that the next page can be read while this
  // one is written (from another thread: open() first makes every connection it needs).
  struct Fetched; // the page's rows and its source transaction (libpqxx stays in copier.cpp)
  struct FetchedDeleter {
    void operator()(Fetched *f) const; // rolls back an unwritten page's transaction
  };
  using FetchedPtr = std::unique_ptr<Fetched, FetchedDeleter>;
  static const Page &page_of(const Fetched &f);
  void open(const std::vector<std::string> &sources, const std::vector<std::string> &targets);
  FetchedPtr fetch_page(const std::string &source, const config::Table &table,
                        const nlohmann::json &after, int slot);
  Page write_page(const config::Table &table, Fetched &f);
  // Both in one go.
  Page copy_page(const std::string &source, const config::Table &table,
                 const nlohmann::json &after);

  struct DrainResult {
    uint64_t keys_synced = 0;
    uint64_t failures = 0;     // keys whose copy failed (left in the log: retried)
    uint64_t stale_writes = 0; // writes to moved keys on their old owner after the flip
  };
  // Copies the keys in the change logs of `shards` from the side that owns them to the other:
  // before the flip (`reverse` false) from old owners to new ones, after it back. `full`: until
  // the logs are empty; otherwise one pass. `backfill`, while the backfill runs: its journaled
  // progress per "table@source" ({"after", "done"}); rows past it are left to the backfill.
  DrainResult drain(const std::vector<std::string> &shards, bool reverse, bool full = false,
                    const nlohmann::ordered_json *backfill = nullptr);

  struct Verify {
    uint64_t rows_checked = 0, mismatches = 0, repaired = 0;
  };
  // Compares every moving row on its source with its copy (md5 of the row image), page by page,
  // and copies again every key that differs.
  Verify verify(const std::vector<std::string> &sources);

  // Holds SHARE locks on the sharded tables of `shards` (writers that began before finish
  // first; new ones wait) until destroyed. nullptr with `why` after `timeout_ms`.
  struct Freeze {
    ~Freeze();
    std::vector<std::unique_ptr<Conn>> conns;
  };
  std::unique_ptr<Freeze> freeze(const std::vector<std::string> &shards, uint32_t timeout_ms,
                                 std::string &why);

  // Removes change capture from `shards`.
  void uncapture(const std::vector<std::string> &shards);
  // Deletes, on each of `shards`, the rows it no longer owns: `from_before` (cleanup after the
  // flip) the rows that moved away from it; otherwise (abort) the copies it received.
  uint64_t delete_moved(const std::vector<std::string> &shards, bool from_before);

private:
  struct TableInfo;
  const TableInfo &info(const config::Table &t);
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
};

} // namespace sg::migrations

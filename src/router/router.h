// The router: turns statement text (plus literals or Bind parameters) into a target shard.
// Holds the ring and a per-thread plan cache keyed by the text with its literals taken out,
// so libpg_query's full parse is paid once per statement shape, not per query.
#pragma once

#include "config/config.h"
#include "router/analyzer.h"
#include "router/literals.h"
#include "router/plan.h"
#include "router/ring.h"

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sg::router {

// A statement text with its plans and the positions of its constants.
struct PlannedText {
  std::shared_ptr<const Analysis> analysis;
  ScanResult scan; // consts of this very text (normalized is the cache key)
};

// One Bind parameter as it came over the wire.
struct ParamValue {
  std::optional<std::string_view> value; // nullopt: NULL
  int16_t format = 0;                    // 0 text, 1 binary
};

struct Resolved {
  TargetKind kind = TargetKind::default_shard;
  size_t shard = 0; // by_key / default_shard
  RouteError error;
  bool moving = false; // the error: a write to a key whose cutover is under way (it passes)
  uint64_t shards = 0; // scatter: the shards concerned, one bit per index (0: every owner)
  // An INSERT without a column list into a table whose key position is not known yet: the
  // caller reads it from a shard's catalog (set_key_position) and resolves again.
  bool needs_key_position = false;
};

// Placement of keys: the ring and the shard index (slot) each of its members is. Immutable; a
// new topology epoch makes a new one (proxy::Placement holds it). Shard indices are stable for
// the process's life, so a shard that is not on the ring (joining, or left) keeps its index.
struct Topology {
  uint64_t epoch = 1;
  std::vector<std::string> shard_names; // by shard index
  Ring ring;
  std::vector<size_t> ring_shard; // ring member -> shard index
  // While a migration runs: its id (DDL on sharded tables is refused, 55000). During its
  // cutover (`pause`), writes to keys whose owner differs on `next` are refused (40001).
  std::string migration;
  bool pause = false;
  Ring next;
  std::vector<size_t> next_shard;
  // Dual-write (a migration's DUAL_WRITE to REVERSE_DUAL_WRITE): the ring writes are copied
  // to. A write to a key whose mirror owner is not its owner is copied there at its commit
  // (proxy/session_mirror.cpp). mirror_sources: the shards that own such keys (bit per index;
  // 0: no dual-write).
  Ring mirror;
  std::vector<size_t> mirror_shard;
  uint64_t mirror_sources = 0;
  // The shard of statements on no sharded table (the TOML's [proxy] default_shard, unless a
  // migration that removed it chose another).
  size_t default_shard = 0;
  size_t owner(uint64_t hash) const { return ring_shard[ring.owner(hash)]; }
  size_t next_owner(uint64_t hash) const { return next_shard[next.owner(hash)]; }
  size_t mirror_owner(uint64_t hash) const { return mirror_shard[mirror.owner(hash)]; }
  bool mirror_source(size_t shard) const { return shard < 64 && ((mirror_sources >> shard) & 1); }
  // Sets mirror_sources from ring and mirror (each arc between points of either ring has one
  // owner on both).
  void find_mirror_sources();
};

class Router {
public:
  explicit Router(const config::Config &cfg);

  // Plans a NUL-terminated text (simple Query or Parse). Never fails: text that does not
  // parse gets a write plan on the default shard, whose server reports the syntax error.
  PlannedText plan(std::string_view sql) const;
  // The same into `out`, reusing its buffers (the per-query path).
  void plan(std::string_view sql, PlannedText &out) const;

  // Reads the plan's keys from the statement's literals and, for Bind, its parameters.
  // `topo`: the placement to resolve against (the session's current epoch); null: the
  // configured one. `scatter_ok`: the caller runs TargetKind::scatter plans (the simple
  // protocol); for the others they resolve to a 0A000 error.
  Resolved resolve(const StatementPlan &p, std::string_view sql, const ScanResult &scan,
                   const std::vector<ParamValue> &params = {}, const Topology *topo = nullptr,
                   bool scatter_ok = false, std::vector<size_t> *owners = nullptr) const;
  // (owners: each key's shard, in the order of p.keys, for cutting a multi-row INSERT.)

  // The owner under `topo` of table's key written as text (a COPY field, unescaped);
  // nullopt with `error` when it is not a valid key of the table's key type.
  std::optional<size_t> owner_of_text(int table, std::string_view text, const Topology *topo,
                                      std::string &error) const;
  // The hash of table's key written as text (nullopt: not a valid key of its type).
  std::optional<uint64_t> hash_of_text(int table, std::string_view text) const;
  // The index of a sharded table by name, or -1.
  int table_index(std::string_view name) const;
  // Where a key given as text lives (for --locate and tests): shard index or error text.
  std::optional<size_t> locate(std::string_view table, std::string_view key,
                               std::string &error) const;

  // The 0-based position of table's key column among its columns (the catalog's order, for
  // INSERT without a column list), -1 when not known. Shared by every thread; a session sets
  // it from the catalog, and forgets them all after DDL or when a guard finds one stale.
  int key_position(int table) const;
  void set_key_position(int table, int position) const;
  void forget_key_positions() const;

  // The configured default shard (a placement's own may differ: Topology::default_shard).
  size_t default_shard() const { return default_shard_; }
  const Topology &topology() const { return *topology_; }
  const std::vector<config::Table> &tables() const { return tables_; }

private:
  std::vector<config::Table> tables_;
  std::shared_ptr<const Topology> topology_;
  size_t default_shard_ = 0;
  std::shared_ptr<std::atomic<int>[]> key_positions_;
};

} // namespace sg::router

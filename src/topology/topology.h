// The topology as the control plane stores and serves it: one immutable value per epoch
// ({epoch, ring, shards, tables}), with its JSON form (the metadata database keeps it as
// jsonb; the admin API serves it with passwords masked). No I/O here.
#pragma once

#include "config/config.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sg::topology {

// A shard's state: "active" (owns keys), "joining" (the target of a running add: owns keys
// after its cutover), "leaving" (the source of a running remove: owns keys until its
// cutover), "removed" (left the ring; its moved rows are cleaned up, then it goes).
struct ShardSpec {
  std::string name;
  std::string primary;               // a libpq URL or conninfo, as configured
  std::vector<std::string> replicas; // the same
  uint32_t weight = 1;
  std::string state = "active";
  bool in_ring() const { return state == "active" || state == "leaving"; }
  bool in_next() const { return state == "active" || state == "joining"; }
};

// The migration that moves rows now, as every proxy must know it (its journal, in
// shardgate.migrations, has the rest): DDL on sharded tables waits for it, and during its
// cutover (`pause`) writes to the keys that change owner wait.
struct MigrationRef {
  std::string id;
  bool pause = false;
  // Dual-write: the shards of the ring that writes to moving keys are copied to (the ring
  // after the flip before it, the ring before it after), each at its writer's commit. Empty:
  // none (PREPARE, and from the start of CLEANUP or of an abort's delete).
  std::vector<std::string> mirror;
  bool operator==(const MigrationRef &) const = default;
};

struct TableSpec {
  std::string name;
  std::string key;
  config::KeyType key_type = config::KeyType::bigint;
  bool operator==(const TableSpec &) const = default;
};

struct Topology {
  uint64_t epoch = 0; // 0: not stored yet (taken from the TOML)
  uint32_t vnodes = 150;
  std::vector<ShardSpec> shards;
  std::vector<TableSpec> tables;
  std::optional<MigrationRef> migration;
  // The shard that runs statements on no sharded table; empty: the TOML's [proxy]
  // default_shard. Set when a migration removes the default shard (allowed only when no
  // table other than the sharded ones lives there and the metadata database is elsewhere).
  std::string default_shard;

  const ShardSpec *find_shard(std::string_view name) const;
  // What placement depends on (names, weights, vnodes, tables): equal means the same ring.
  bool same_placement(const Topology &o) const;
  bool operator==(const Topology &o) const;
};

// The [[shards]], [[tables]] and [ring] of a config (epoch 0).
Topology from_config(const config::Config &c);
// Puts t's shards, tables and ring into c (on start, the stored topology wins over the TOML's).
// Returns false with `error` when a URL does not parse.
bool apply_to(const Topology &t, config::Config &c, std::string &error);

// JSON text. `masked`: passwords in URLs replaced by "***" (the admin API); else verbatim (the
// metadata database).
std::string to_json(const Topology &t, bool masked);
// Parses what to_json wrote; nullopt with `error` on anything else.
std::optional<Topology> from_json(std::string_view text, std::string &error);

// A URL or conninfo with its password replaced by "***".
std::string mask_password(const std::string &url);

} // namespace sg::topology

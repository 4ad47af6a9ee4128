// Starting a migration: the checks the admin API answers 422 with, and the first epoch and
// journal row (phase PREPARE) of an add_shard or remove_shard. The runner takes it from there.
#pragma once

#include "topology/store.h"
#include "topology/topology.h"

#include <optional>
#include <string>

namespace sg::migrations {

struct Options {
  std::string cutover = "auto"; // or "manual": waits in READY for POST .../cutover
  uint64_t cleanup_after_s = 300;
  uint64_t max_rows_per_second = 0; // 0: [migrations] max_rows_per_second
};

struct Planned {
  topology::Topology next; // store as epoch t.epoch + 1
  topology::MigrationRow row;
};

// `s` joins the ring (state "joining" until the cutover).
Planned plan_add(const topology::Topology &t, topology::ShardSpec s, const Options &o);
// Shard `name` leaves the ring (state "leaving" until the cutover).
Planned plan_remove(const topology::Topology &t, const std::string &name, const Options &o);

// Why a migration cannot start, or nullopt. Connects to the shards: every sharded table must
// exist on the reference shard (the first active one) with a primary key; on a new shard's
// primary, a sharded table that exists already must have the same columns and no rows.
std::optional<std::string> check_tables(const topology::Topology &t,
                                        const topology::ShardSpec *new_shard);
// Tables on `shard` that are not sharded tables (what only the default shard serves).
std::vector<std::string> unsharded_tables(const topology::Topology &t, const std::string &shard);

} // namespace sg::migrations

// The metadata database (schema `shardgate`): the topology of every epoch, the proxy instances
// with their applied epoch and heartbeat. libpqxx, control plane only: never called from a
// thread that runs client sessions.
//
//   shardgate.epochs(epoch bigint PK, topology jsonb, reason text, created_at timestamptz)
//     insert-only: a change is a new row with epoch = newest + 1, so two concurrent changes
//     conflict on the key and the second is refused (the admin API's 409).
//   shardgate.proxies(id text PK, address, applied_epoch, started_at, last_heartbeat)
//   shardgate.migrations(id PK, kind, shard, phase, progress jsonb, error, started_at,
//     updated_at): the migration journal (written by the migration runner, issue 17)
//   shardgate.tx_decisions(txid PK, outcome commit | abort, decided_at): two-phase commit
//     decisions; the first outcome recorded for a txid stands (executor/journal.h)
// Every committed change is followed by NOTIFY shardgate_topology, '<epoch>' (in its
// transaction, so listeners never see a notification before the row).
#pragma once

#include "config/config.h"
#include "topology/topology.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sg::topology {

constexpr const char *kChannel = "shardgate_topology";

struct IdLeaseRow {
  int instance = 0;
  int64_t high_water_ms = 0; // the highest millisecond its holders reported using (Unix ms)
};

struct ProxyRow {
  std::string id;
  std::string address;
  uint64_t applied_epoch = 0;
  std::string started_at;     // RFC 3339, UTC
  std::string last_heartbeat; // RFC 3339, UTC
  int64_t heartbeat_age_ms = 0;
};

struct MigrationRow {
  std::string id, kind, shard, phase;
  std::string progress; // JSON object: moves, rows_copied, verify, ...
  std::optional<std::string> error;
  std::string started_at, updated_at; // RFC 3339, UTC
  std::string request;                // an operator's pending action: abort, cutover, cleanup
};

class Store {
public:
  // Connects (pqxx::broken_connection and friends on failure).
  explicit Store(const config::Endpoint &where, const std::string &application_name);
  ~Store();
  // Creates the schema and tables if missing (serialised by an advisory lock).
  void ensure_schema();
  // The newest stored topology, or nullopt when none is stored yet.
  std::optional<Topology> latest();
  // Stores t as epoch 1 when nothing is stored yet. Returns the newest stored topology and
  // sets `seeded` when it was t.
  Topology seed(Topology t, bool &seeded);
  // Stores next as epoch `expected + 1` and notifies. nullopt: another change took that epoch
  // (or the newest is not `expected`).
  std::optional<Topology> commit(Topology next, uint64_t expected, const std::string &reason);
  // Records this proxy's applied epoch and heartbeat (`first`: it also (re)sets started_at).
  void heartbeat(const std::string &id, const std::string &address, uint64_t applied, bool first);
  std::vector<ProxyRow> proxies();
  // shardgate.next_id()'s instance numbers (src/ids/lease.h): the one `holder` has, else the
  // lowest free one or one not renewed for reclaim_after_ms, taken over; nullopt: all 1024 are
  // held. renew_id_instance() records the holder's high water; false: it holds it no more.
  std::optional<IdLeaseRow> claim_id_instance(const std::string &holder, int64_t reclaim_after_ms);
  bool renew_id_instance(int instance, const std::string &holder, int64_t high_water_ms);
  // Every journaled migration, oldest first, or the one with this id.
  std::vector<MigrationRow> migrations(const std::string &id = "");
  // Starts a migration: its journal row (phase PREPARE) and the epoch `next` (expected + 1), in
  // one transaction. nullopt when the epoch was taken, or when another migration is running
  // (`busy` then names it).
  std::optional<Topology> begin_migration(Topology next, uint64_t expected, const MigrationRow &m,
                                          std::string &busy);
  // Journals a phase and the progress of migration `id`; with `next`, also stores that epoch
  // (expected + 1) in the same transaction, so the journal and the placement never disagree.
  // False when the epoch was taken.
  // `durable` false: progress whose loss costs only redoing work (a backfill page is
  // idempotent), committed without waiting for the WAL flush.
  bool journal(const std::string &id, const std::string &phase, const std::string &progress,
               const std::optional<std::string> &error, const Topology *next = nullptr,
               uint64_t expected = 0, const std::string &reason = "", bool durable = true);
  // Asks the running migration to do something (abort, cutover, cleanup): the runner reads it.
  // False when no migration with this id is in a phase that allows it (`phase` then says where
  // it is).
  bool request(const std::string &id, const std::string &action, std::string &phase);
  // The running migration (not DONE, ABORTED or FAILED), if any.
  std::optional<MigrationRow> active_migration();
  // Session-level advisory lock on this connection (released with it): who runs migrations.
  bool try_lock(int64_t key);
  void unlock(int64_t key);
  // Proxies that heartbeat within `fresh_ms` but have not applied `epoch` yet.
  std::vector<ProxyRow> behind(uint64_t epoch, int64_t fresh_ms);
  // Two-phase commit decisions (shardgate.tx_decisions, txid PK, outcome commit | abort).
  // Records `commit` for each txid unless an outcome is there already (recovery's abort), in
  // one durable transaction; returns the txids whose outcome is commit.
  std::vector<std::string> decide_commit(const std::vector<std::string> &txids);
  // Recovery: records `abort` unless an outcome is there already; true when it is commit.
  bool resolve_in_doubt(const std::string &txid);
  void forget_decisions(const std::vector<std::string> &txids);
  std::vector<std::string> decisions_older_than(int64_t ms);
  // LISTENs on kChannel; then wait() blocks up to `ms` and says whether a notification came.
  // (Notifications only wake the waiter early: the stored epoch is what counts.)
  void listen();
  bool wait(uint32_t ms);

private:
  struct Conn; // libpqxx stays in store.cpp
  std::unique_ptr<Conn> c_;
};

// Connects to a node as the proxy would and asks pg_is_in_recovery(): nullopt with `error`
// when it cannot be reached (the admin API's 422).
std::optional<bool> probe_in_recovery(const config::Endpoint &node, std::string &error);

// Where the metadata lives: [metadata] url, else the default shard's primary.
config::Endpoint metadata_endpoint(const config::Config &c);

} // namespace sg::topology

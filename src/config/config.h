// ShardGate configuration: TOML (toml++) read once into plain structs with defaults.
// Every problem is reported at once, each with file:line:column and a hint.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sg::config {

enum class PoolMode { transaction, session };
enum class KeyType { bigint, int_, smallint, text, uuid };
enum class AuthMethod { scram_sha_256, md5 };

const char *to_string(KeyType t);
std::optional<KeyType> key_type_from_string(std::string_view s);

// A backend node, from a libpq URL or conninfo string.
struct Endpoint {
  std::string raw;
  std::string host = "127.0.0.1";
  uint16_t port = 5432;
  std::string user;
  std::string password;
  std::string dbname;
  std::string label() const { return host + ":" + std::to_string(port); }
  // A libpq conninfo (host, port, user, password, dbname; values quoted) to append options to.
  std::string conninfo() const;
  bool operator==(const Endpoint &) const = default;
};

struct Shard {
  std::string name;
  Endpoint primary;
  std::vector<Endpoint> replicas;
  uint32_t weight = 1;
  bool operator==(const Shard &) const = default;
};

struct Table {
  std::string name;
  std::string key;
  KeyType key_type = KeyType::bigint;
  bool operator==(const Table &) const = default;
};

struct User {
  std::string name;
  std::string password;
  uint32_t max_client_connections = 0; // clients of this user at once (0: no cap)
  // Queries per second over all of the user's clients (0: no limit), with bursts of `burst`
  // (0: one second's worth); a query over the rate waits up to max_delay_ms, then gets 53400.
  uint32_t max_queries_per_second = 0;
  uint32_t burst = 0;
  uint32_t max_delay_ms = 1000;
  bool operator==(const User &) const = default;
};

struct Proxy {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 6432;
  std::string database = "app";
  PoolMode pool_mode = PoolMode::transaction;
  AuthMethod auth = AuthMethod::scram_sha_256;
  std::string default_shard; // empty: the first shard
  uint32_t workers = 0;      // 0: one per core
  uint32_t pool_size = 20;   // max backend connections per node, over all workers
  uint32_t max_message_bytes = 64u << 20;
  uint32_t connect_timeout_ms = 3000;
  uint32_t query_timeout_ms = 0;   // 0: none (backend statement_timeout applies)
  uint32_t pool_timeout_ms = 5000; // waiting for a free backend connection
  uint32_t auth_timeout_ms = 10000;
  uint32_t idle_in_transaction_timeout_ms = 0;
  uint32_t connect_retries = 2;
  // Worker packing (transaction mode): sessions gather on as few workers as the load needs.
  uint32_t pack_interval_ms = 200;    // how often worker load is looked at; 0: no packing
  uint32_t spread_above_percent = 60; // one more worker when the busy ones average above this
  uint32_t pack_below_percent = 45;   // one fewer when the load would stay below this on one fewer
  // Pipelined reads (transaction mode, see proxy/mux.h): how many plain autocommit reads of one
  // worker may share a backend connection (0: off), and for how long after the one in front
  // started new ones may still queue behind it.
  uint32_t pipeline_depth = 8;
  uint32_t pipeline_join_us = 1000;
  bool operator==(const Proxy &) const = default;
};

struct Ring {
  uint32_t vnodes = 150;
  bool operator==(const Ring &) const = default;
};

// Replica health, lag and read-your-writes ([replicas]).
struct Replicas {
  uint32_t health_interval_ms = 500; // probe period per node
  uint64_t max_lag_bytes = 1048576;  // a replica is skipped above this WAL byte lag
  uint32_t max_lag_ms = 5000;        // ... or above this replay delay, when known
  bool read_your_writes = true;      // a session reads its own writes
  uint32_t readmit_probes = 3;       // consecutive probes under half the thresholds to re-admit
  uint32_t probe_timeout_ms = 1000;  // a probe slower than this counts as failed
  uint32_t failures_to_ban = 3;      // consecutive connect/I-O failures that open the breaker
  uint32_t ban_base_ms = 1000;       // first ban; doubles per re-ban
  uint32_t ban_max_ms = 30000;       // ban cap
  bool operator==(const Replicas &) const = default;
};

struct Metrics {
  std::string listen_host; // empty: no metrics endpoint
  uint16_t listen_port = 0;
  bool operator==(const Metrics &) const = default;
};

// The metadata database ([metadata]): topology epochs, proxy instances, migration journals.
struct Metadata {
  bool enabled = true;
  std::string url;                   // empty: the default shard's primary
  uint32_t fence_timeout_ms = 10000; // cut off this long: writes to sharded tables refused
  uint32_t heartbeat_ms = 1000;      // how often this proxy records its applied epoch
  std::string instance;              // this proxy's id; empty: "<hostname>:<listen port>"
  bool operator==(const Metadata &) const = default;
};

// Moving rows between shards ([migrations]).
struct Migrations {
  uint32_t max_rows_per_second = 0; // backfill rate cap; 0: unlimited
  uint32_t cutover_pause_ms = 500;  // longest write pause on moving keys; over it, retry later
  uint32_t batch_rows = 10000;      // rows per backfill, verify and cleanup page
  bool operator==(const Migrations &) const = default;
};

// Transactions that write on more than one shard ([transactions]).
struct Transactions {
  bool two_phase_commit = true;      // false: commit each shard in turn (best effort)
  uint32_t recover_after_ms = 10000; // a prepared transaction this old without a decision: aborted
  uint32_t recovery_interval_ms = 1000; // how often in-doubt transactions are looked for
  bool operator==(const Transactions &) const = default;
};

// The admin REST API ([admin]).
struct Admin {
  std::string listen_host; // empty: no admin API
  uint16_t listen_port = 0;
  std::string token_file;      // read at load; or SHARDGATE_ADMIN_TOKEN
  bool allow_no_token = false; // only with a loopback listen address
  std::string token;           // resolved (never logged)
  bool operator==(const Admin &) const = default;
};

enum class LogFormat { json, text };
struct Log {
  LogFormat format = LogFormat::json;
  std::string level = "info";   // debug | info | warn | error
  uint32_t slow_query_ms = 500; // 0: off
  bool operator==(const Log &) const = default;
};

// shardgate.next_id() ([ids]).
struct Ids {
  int32_t instance = -1; // 0-1023: this proxy's instance number; -1: leased from [metadata]
  bool operator==(const Ids &) const = default;
};

struct Config {
  std::string path;
  Proxy proxy;
  std::vector<User> users;
  Ring ring;
  Replicas replicas;
  Metrics metrics;
  Metadata metadata;
  Migrations migrations;
  Transactions transactions;
  Ids ids;
  Admin admin;
  Log log;
  std::vector<Shard> shards;
  std::vector<Table> tables;
  size_t default_shard_index() const;
  const Table *find_table(std::string_view name) const;
};

struct Diagnostic {
  std::string file;
  uint32_t line = 0;
  uint32_t column = 0;
  std::string message;
  std::string hint;
  std::string to_string() const;
};

struct LoadResult {
  std::optional<Config> config;
  std::vector<Diagnostic> diagnostics;
};

LoadResult load_file(const std::string &path);
LoadResult load_string(std::string_view text, const std::string &path);

// Parses a libpq URL or conninfo with PQconninfoParse; error text on failure.
std::optional<Endpoint> parse_endpoint(const std::string &s, std::string &error);

} // namespace sg::config

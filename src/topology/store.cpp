#include "topology/store.h"

#include <algorithm>

#include <pqxx/pqxx>

namespace sg::topology {

namespace {

const char *kSchema = R"sql(
CREATE SCHEMA IF NOT EXISTS shardgate;
CREATE TABLE IF NOT EXISTS shardgate.epochs(
  epoch bigint PRIMARY KEY,
  topology jsonb NOT NULL,
  reason text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS shardgate.proxies(
  id text PRIMARY KEY,
  address text NOT NULL,
  applied_epoch bigint NOT NULL,
  started_at timestamptz NOT NULL,
  last_heartbeat timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS shardgate.migrations(
  id text PRIMARY KEY,
  kind text NOT NULL CHECK (kind IN ('add_shard', 'remove_shard')),
  shard text NOT NULL,
  phase text NOT NULL,
  progress jsonb NOT NULL DEFAULT '{}',
  error text,
  started_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE shardgate.migrations ADD COLUMN IF NOT EXISTS request text;
-- shardgate.next_id()'s instance numbers, leased to proxies (src/ids/lease.h).
CREATE TABLE IF NOT EXISTS shardgate.id_instances(
  instance int PRIMARY KEY CHECK (instance >= 0 AND instance < 1024),
  holder text NOT NULL UNIQUE,
  high_water_ms bigint NOT NULL DEFAULT 0,
  renewed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS shardgate.tx_decisions(
  txid text PRIMARY KEY,
  outcome text NOT NULL CHECK (outcome IN ('commit', 'abort')),
  decided_at timestamptz NOT NULL DEFAULT now());
)sql";

const char *kActive = "phase NOT IN ('DONE', 'ABORTED', 'FAILED')";

// One key for every schema change of ours (pg_advisory_xact_lock's bigint).
constexpr long long kSchemaLock = 0x5347'4d45'5441; // "SGMETA"

const char *kRfc3339 = R"(to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))";

std::string rfc3339(const char *col) {
  char buf[160];
  std::snprintf(buf, sizeof buf, kRfc3339, col);
  return buf;
}

std::optional<Topology> parse_row(const pqxx::row &r) {
  std::string err;
  auto t = from_json(r[1].c_str(), err);
  if (!t)
    throw std::runtime_error("stored topology of epoch " + std::string(r[0].c_str()) +
                             " does not parse: " + err);
  t->epoch = r[0].as<uint64_t>();
  return t;
}

} // namespace

std::optional<bool> probe_in_recovery(const config::Endpoint &node, std::string &error) {
  try {
    pqxx::connection c(node.conninfo() + " connect_timeout=2 application_name='shardgate-admin'");
    pqxx::nontransaction w(c);
    return w.exec("SELECT pg_is_in_recovery()")[0][0].as<bool>();
  } catch (const std::exception &e) {
    error = e.what();
    while (!error.empty() && error.back() == '\n')
      error.pop_back();
    return std::nullopt;
  }
}

config::Endpoint metadata_endpoint(const config::Config &c) {
  std::string err;
  if (!c.metadata.url.empty())
    if (auto e = config::parse_endpoint(c.metadata.url, err))
      return *e;
  return c.shards[c.default_shard_index()].primary;
}

// Wakes wait() when a notification on kChannel arrives.
struct Receiver : pqxx::notification_receiver {
  Receiver(pqxx::connection_base &c, bool &flag)
      : pqxx::notification_receiver(c, kChannel), hit(flag) {}
  void operator()(const std::string &, int) override { hit = true; }
  bool &hit;
};

struct Store::Conn {
  explicit Conn(const std::string &ci) : c(ci) {}
  pqxx::connection c;
  bool hit = false;
  std::unique_ptr<Receiver> rx;
};

// A silent network partition must end a metadata connection, on both sides: the client's
// keepalives and tcp_user_timeout end our calls, the server's keepalive settings end the
// server's backend (and the migration runner's advisory lock with it) within seconds.
Store::Store(const config::Endpoint &where, const std::string &application_name)
    : c_(std::make_unique<Conn>(
          where.conninfo() + " connect_timeout=2 application_name='" + application_name +
          "' keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=3"
          " tcp_user_timeout=5000 options='-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1"
          " -c tcp_keepalives_count=3 -c tcp_user_timeout=5000'")) {}

std::vector<MigrationRow> Store::migrations(const std::string &id) {
  pqxx::read_transaction w(c_->c);
  auto r = w.exec_params("SELECT id, kind, shard, phase, progress::text, error, " +
                             rfc3339("started_at") + ", " + rfc3339("updated_at") +
                             ", coalesce(request, '') FROM shardgate.migrations "
                             "WHERE $1 = '' OR id = $1 "
                             "ORDER BY started_at, id",
                         id);
  std::vector<MigrationRow> out;
  for (auto row : r)
    out.push_back({row[0].c_str(), row[1].c_str(), row[2].c_str(), row[3].c_str(), row[4].c_str(),
                   row[5].is_null() ? std::optional<std::string>() : row[5].c_str(), row[6].c_str(),
                   row[7].c_str(), row[8].c_str()});
  return out;
}

std::optional<Topology> Store::begin_migration(Topology next, uint64_t expected,
                                               const MigrationRow &m, std::string &busy) {
  pqxx::work w(c_->c);
  w.exec_params("SELECT pg_advisory_xact_lock($1)", kSchemaLock); // one start at a time
  auto a = w.exec(std::string("SELECT id FROM shardgate.migrations WHERE ") + kActive);
  if (!a.empty()) {
    busy = a[0][0].c_str();
    return std::nullopt;
  }
  auto r = w.exec("SELECT max(epoch) FROM shardgate.epochs");
  if (r[0][0].is_null() || r[0][0].as<uint64_t>() != expected)
    return std::nullopt;
  next.epoch = expected + 1;
  w.exec_params("INSERT INTO shardgate.epochs(epoch, topology, reason) VALUES ($1, $2::jsonb, $3)",
                next.epoch, to_json(next, false), m.kind + " " + m.shard + " (" + m.id + ")");
  w.exec_params("INSERT INTO shardgate.migrations(id, kind, shard, phase, progress) "
                "VALUES ($1, $2, $3, $4, $5::jsonb)",
                m.id, m.kind, m.shard, m.phase, m.progress);
  w.exec_params("SELECT pg_notify($1, $2)", kChannel, std::to_string(next.epoch));
  w.commit();
  return next;
}

bool Store::journal(const std::string &id, const std::string &phase, const std::string &progress,
                    const std::optional<std::string> &error, const Topology *next,
                    uint64_t expected, const std::string &reason, bool durable) {
  pqxx::work w(c_->c);
  if (!durable && !next)
    w.exec("SET LOCAL synchronous_commit = off");
  if (next) {
    Topology t = *next;
    t.epoch = expected + 1;
    auto ins = w.exec_params("INSERT INTO shardgate.epochs(epoch, topology, reason) "
                             "SELECT $1, $2::jsonb, $3 WHERE (SELECT max(epoch) FROM "
                             "shardgate.epochs) = $4 ON CONFLICT (epoch) DO NOTHING",
                             t.epoch, to_json(t, false), reason, expected);
    if (ins.affected_rows() != 1)
      return false;
    w.exec_params("SELECT pg_notify($1, $2)", kChannel, std::to_string(t.epoch));
  }
  // A request is for the phase it was made in, except an abort, which stands until the
  // runner acts on it; CLEANUP (after which no abort is accepted) does not begin over one.
  auto up = w.exec_params(
      "UPDATE shardgate.migrations SET phase = $2, progress = $3::jsonb, error = $4, "
      "updated_at = now(), request = CASE WHEN phase = $2 OR (request = 'abort' AND $2 "
      "NOT IN ('CLEANUP', 'DONE')) THEN request END "
      "WHERE id = $1 AND NOT ($2 = 'CLEANUP' AND phase <> 'CLEANUP' AND "
      "coalesce(request, '') = 'abort')",
      id, phase, progress, error);
  if (up.affected_rows() != 1)
    return false; // (rolled back, the epoch with it)
  w.commit();
  return true;
}

bool Store::request(const std::string &id, const std::string &action, std::string &phase) {
  pqxx::work w(c_->c);
  auto r = w.exec_params("SELECT phase FROM shardgate.migrations WHERE id = $1 FOR UPDATE", id);
  if (r.empty()) {
    phase.clear();
    return false;
  }
  phase = r[0][0].c_str();
  static const std::vector<std::string> abortable = {
      "PREPARE", "DUAL_WRITE", "BACKFILL", "VERIFY", "READY", "CUTOVER", "REVERSE_DUAL_WRITE"};
  bool ok = action == "abort"     ? std::count(abortable.begin(), abortable.end(), phase) > 0
            : action == "cutover" ? phase == "READY"
            : action == "cleanup" ? phase == "REVERSE_DUAL_WRITE"
                                  : false;
  if (!ok)
    return false;
  w.exec_params("UPDATE shardgate.migrations SET request = $2, updated_at = now() WHERE id = $1",
                id, action);
  w.commit();
  return true;
}

std::optional<MigrationRow> Store::active_migration() {
  pqxx::read_transaction w(c_->c);
  auto r = w.exec(std::string("SELECT id, kind, shard, phase, progress::text, error, "
                              "coalesce(request, '') FROM shardgate.migrations WHERE ") +
                  kActive + " ORDER BY started_at LIMIT 1");
  if (r.empty())
    return std::nullopt;
  auto row = r[0];
  MigrationRow m{row[0].c_str(),
                 row[1].c_str(),
                 row[2].c_str(),
                 row[3].c_str(),
                 row[4].c_str(),
                 row[5].is_null() ? std::optional<std::string>() : row[5].c_str(),
                 "",
                 "",
                 row[6].c_str()};
  return m;
}

bool Store::try_lock(int64_t key) {
  pqxx::nontransaction w(c_->c);
  return w.exec_params("SELECT pg_try_advisory_lock($1)", key)[0][0].as<bool>();
}

void Store::unlock(int64_t key) {
  pqxx::nontransaction w(c_->c);
  w.exec_params("SELECT pg_advisory_unlock($1)", key);
}

std::vector<ProxyRow> Store::behind(uint64_t epoch, int64_t fresh_ms) {
  std::vector<ProxyRow> out;
  for (auto &p : proxies())
    if (p.heartbeat_age_ms <= fresh_ms && p.applied_epoch < epoch)
      out.push_back(p);
  return out;
}

void Store::listen() {
  c_->rx = std::make_unique<Receiver>(c_->c, c_->hit);
}

bool Store::wait(uint32_t ms) {
  if (!c_->hit)
    c_->c.await_notification(long(ms / 1000), long(ms % 1000) * 1000);
  c_->c.get_notifs();
  bool hit = c_->hit;
  c_->hit = false;
  return hit;
}

Store::~Store() = default;

void Store::ensure_schema() {
  pqxx::work w(c_->c);
  w.exec_params("SELECT pg_advisory_xact_lock($1)", kSchemaLock);
  w.exec(kSchema);
  w.commit();
}

std::optional<Topology> Store::latest() {
  pqxx::read_transaction w(c_->c);
  auto r = w.exec("SELECT epoch, topology::text FROM shardgate.epochs ORDER BY epoch DESC LIMIT 1");
  if (r.empty())
    return std::nullopt;
  return parse_row(r[0]);
}

Topology Store::seed(Topology t, bool &seeded) {
  seeded = false;
  pqxx::work w(c_->c);
  w.exec_params("SELECT pg_advisory_xact_lock($1)", kSchemaLock);
  auto r = w.exec("SELECT epoch, topology::text FROM shardgate.epochs ORDER BY epoch DESC LIMIT 1");
  if (!r.empty())
    return *parse_row(r[0]);
  t.epoch = 1;
  w.exec_params("INSERT INTO shardgate.epochs(epoch, topology, reason) VALUES (1, $1::jsonb, $2)",
                to_json(t, false), "seeded from the TOML config");
  w.exec_params("SELECT pg_notify($1, '1')", kChannel);
  w.commit();
  seeded = true;
  return t;
}

std::optional<Topology> Store::commit(Topology next, uint64_t expected, const std::string &reason) {
  pqxx::work w(c_->c);
  auto r = w.exec("SELECT max(epoch) FROM shardgate.epochs");
  if (r[0][0].is_null() || r[0][0].as<uint64_t>() != expected)
    return std::nullopt;
  next.epoch = expected + 1;
  auto ins = w.exec_params("INSERT INTO shardgate.epochs(epoch, topology, reason) "
                           "VALUES ($1, $2::jsonb, $3) ON CONFLICT (epoch) DO NOTHING",
                           next.epoch, to_json(next, false), reason);
  if (ins.affected_rows() != 1)
    return std::nullopt; // a concurrent change took the epoch
  w.exec_params("SELECT pg_notify($1, $2)", kChannel, std::to_string(next.epoch));
  w.commit();
  return next;
}

std::vector<std::string> Store::decide_commit(const std::vector<std::string> &txids) {
  pqxx::work w(c_->c);
  w.exec("SET LOCAL synchronous_commit = on"); // the decision must survive a crash
  std::vector<std::string> committed;
  for (const auto &t : txids) {
    w.exec_params("INSERT INTO shardgate.tx_decisions(txid, outcome) VALUES ($1, 'commit') "
                  "ON CONFLICT (txid) DO NOTHING",
                  t);
    auto r =
        w.exec_params("SELECT outcome = 'commit' FROM shardgate.tx_decisions WHERE txid = $1", t);
    if (!r.empty() && r[0][0].as<bool>())
      committed.push_back(t);
  }
  w.commit();
  return committed;
}

bool Store::resolve_in_doubt(const std::string &txid) {
  pqxx::work w(c_->c);
  w.exec("SET LOCAL synchronous_commit = on");
  w.exec_params("INSERT INTO shardgate.tx_decisions(txid, outcome) VALUES ($1, 'abort') "
                "ON CONFLICT (txid) DO NOTHING",
                txid);
  auto r =
      w.exec_params("SELECT outcome = 'commit' FROM shardgate.tx_decisions WHERE txid = $1", txid);
  w.commit();
  return !r.empty() && r[0][0].as<bool>();
}

void Store::forget_decisions(const std::vector<std::string> &txids) {
  if (txids.empty())
    return;
  pqxx::work w(c_->c);
  w.exec("SET LOCAL synchronous_commit = off"); // a decision left behind is only clutter
  for (const auto &t : txids)
    w.exec_params("DELETE FROM shardgate.tx_decisions WHERE txid = $1", t);
  w.commit();
}

std::vector<std::string> Store::decisions_older_than(int64_t ms) {
  pqxx::read_transaction w(c_->c);
  auto r = w.exec_params("SELECT txid FROM shardgate.tx_decisions WHERE decided_at < now() - "
                         "make_interval(secs => $1::float8 / 1000)",
                         ms);
  std::vector<std::string> out;
  for (const auto &row : r)
    out.push_back(row[0].as<std::string>());
  return out;
}

void Store::heartbeat(const std::string &id, const std::string &address, uint64_t applied,
                      bool first) {
  pqxx::work w(c_->c);
  w.exec_params("INSERT INTO shardgate.proxies AS p(id, address, applied_epoch, started_at, "
                "last_heartbeat) VALUES ($1, $2, $3, now(), now()) ON CONFLICT (id) DO UPDATE "
                "SET address = $2, applied_epoch = $3, last_heartbeat = now(), started_at = "
                "CASE WHEN $4 THEN now() ELSE p.started_at END",
                id, address, applied, first);
  w.commit();
}

std::optional<IdLeaseRow> Store::claim_id_instance(const std::string &holder,
                                                   int64_t reclaim_after_ms) {
  pqxx::work w(c_->c);
  w.exec_params("SELECT pg_advisory_xact_lock($1)", kSchemaLock + 1);
  auto mine = w.exec_params(
      "SELECT instance, high_water_ms FROM shardgate.id_instances WHERE holder = $1", holder);
  std::optional<IdLeaseRow> out;
  if (!mine.empty()) {
    out = IdLeaseRow{mine[0][0].as<int>(), mine[0][1].as<int64_t>()};
  } else {
    // The lowest free number, or one whose holder has not renewed it for reclaim_after_ms.
    auto r = w.exec_params(
        "SELECT g FROM generate_series(0, 1023) g LEFT JOIN shardgate.id_instances i ON "
        "i.instance = g WHERE i.instance IS NULL OR i.renewed_at < now() - $1 * interval '1 "
        "millisecond' ORDER BY i.instance IS NOT NULL, g LIMIT 1",
        reclaim_after_ms);
    if (!r.empty()) {
      auto got = w.exec_params(
          "INSERT INTO shardgate.id_instances AS i(instance, holder) VALUES ($1, $2) ON CONFLICT "
          "(instance) DO UPDATE SET holder = $2, renewed_at = now() RETURNING high_water_ms",
          r[0][0].as<int>(), holder);
      out = IdLeaseRow{r[0][0].as<int>(), got[0][0].as<int64_t>()};
    }
  }
  if (out)
    w.exec_params("UPDATE shardgate.id_instances SET renewed_at = now() WHERE instance = $1",
                  out->instance);
  w.commit();
  return out;
}

bool Store::renew_id_instance(int instance, const std::string &holder, int64_t high_water_ms) {
  pqxx::work w(c_->c);
  auto r = w.exec_params("UPDATE shardgate.id_instances SET renewed_at = now(), high_water_ms = "
                         "greatest(high_water_ms, $3) WHERE instance = $1 AND holder = $2",
                         instance, holder, high_water_ms);
  w.commit();
  return r.affected_rows() == 1;
}

std::vector<ProxyRow> Store::proxies() {
  pqxx::read_transaction w(c_->c);
  auto r = w.exec("SELECT id, address, applied_epoch, " + rfc3339("started_at") + ", " +
                  rfc3339("last_heartbeat") +
                  ", (extract(epoch FROM clock_timestamp() - last_heartbeat) * 1000)::bigint "
                  "FROM shardgate.proxies ORDER BY id");
  std::vector<ProxyRow> out;
  for (auto row : r)
    out.push_back({row[0].c_str(), row[1].c_str(), row[2].as<uint64_t>(), row[3].c_str(),
                   row[4].c_str(), row[5].as<int64_t>()});
  return out;
}

} // namespace sg::topology

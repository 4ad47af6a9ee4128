#include "migrations/start.h"

#include "migrations/moves.h"

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <chrono>
#include <random>

namespace sg::migrations {

using json = nlohmann::ordered_json;

namespace {

std::string new_id() {
  auto now = std::chrono::system_clock::now();
  std::time_t tt = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  std::random_device rd;
  char tail[8];
  std::snprintf(tail, sizeof tail, "%04x", unsigned(rd() & 0xffff));
  return std::string("mig-") + buf + "-" + tail;
}

Planned plan(const topology::Topology &t, topology::Topology next, const std::string &kind,
             const std::string &shard, const Options &o) {
  Planned p;
  p.row.id = new_id();
  p.row.kind = kind;
  p.row.shard = shard;
  p.row.phase = "PREPARE";
  next.migration = topology::MigrationRef{p.row.id, false, {}};
  std::vector<std::string> before, after;
  for (auto &s : next.shards) {
    if (s.in_ring())
      before.push_back(s.name);
    if (s.in_next())
      after.push_back(s.name);
  }
  KeyMoves km(next, before, after);
  json moves = json::array();
  for (auto &m : km.moves()) {
    json ranges = json::array();
    for (auto &[a, b] : m.ranges) // strings: exact in every JSON parser
      ranges.push_back({std::to_string(a), std::to_string(b)});
    moves.push_back({{"from", m.from},
                     {"to", m.to},
                     {"ranges", ranges},
                     {"fraction", double(int64_t(m.fraction * 1e6)) / 1e6}});
  }
  json prog = {{"moves", moves},
               {"rows_copied", 0},
               {"rows_estimated", 0},
               {"rows_per_second", 0},
               {"eta_seconds", nullptr},
               {"verify", {{"rows_checked", 0}, {"mismatches", 0}, {"repaired", 0}}},
               {"target_write_failures", 0},
               {"cutover", o.cutover},
               {"cleanup_after_s", o.cleanup_after_s},
               {"max_rows_per_second", o.max_rows_per_second},
               {"before", before},
               {"after", after}};
  p.row.progress = prog.dump();
  p.next = std::move(next);
  (void)t;
  return p;
}

std::string conninfo(const std::string &url) {
  std::string err;
  auto e = config::parse_endpoint(url, err);
  if (!e)
    throw std::runtime_error(err);
  return e->conninfo() + " connect_timeout=3 application_name='shardgate-admin'";
}

std::vector<std::pair<std::string, std::string>> columns(pqxx::work &w, const std::string &t) {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto r : w.exec_params("SELECT attname, format_type(atttypid, atttypmod) FROM "
                              "pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND "
                              "NOT attisdropped ORDER BY attnum",
                              t))
    out.emplace_back(r[0].c_str(), r[1].c_str());
  return out;
}

} // namespace

Planned plan_add(const topology::Topology &t, topology::ShardSpec s, const Options &o) {
  topology::Topology next = t;
  s.state = "joining";
  std::string name = s.name;
  next.shards.push_back(std::move(s));
  return plan(t, std::move(next), "add_shard", name, o);
}

Planned plan_remove(const topology::Topology &t, const std::string &name, const Options &o) {
  topology::Topology next = t;
  for (auto &s : next.shards)
    if (s.name == name)
      s.state = "leaving";
  return plan(t, std::move(next), "remove_shard", name, o);
}

std::optional<std::string> check_tables(const topology::Topology &t,
                                        const topology::ShardSpec *new_shard) {
  const topology::ShardSpec *ref = nullptr;
  for (auto &s : t.shards)
    if (s.state == "active" && !ref)
      ref = &s;
  if (!ref)
    return "no active shard";
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> cols;
  try {
    pqxx::connection c(conninfo(ref->primary));
    pqxx::work w(c);
    for (auto &tb : t.tables) {
      if (w.exec_params("SELECT to_regclass($1)", tb.name)[0][0].is_null())
        return "sharded table \"" + tb.name + "\" does not exist on shard \"" + ref->name + "\"";
      if (w.exec_params("SELECT 1 FROM pg_index WHERE indrelid = $1::regclass AND indisprimary",
                        tb.name)
              .empty())
        return "sharded table \"" + tb.name +
               "\" has no primary key: rows are copied and checked by primary key";
      cols[tb.name] = columns(w, tb.name);
    }
  } catch (const std::exception &e) {
    return "cannot read the tables on shard \"" + ref->name + "\": " + e.what();
  }
  if (!new_shard)
    return std::nullopt;
  try {
    pqxx::connection c(conninfo(new_shard->primary));
    pqxx::work w(c);
    for (auto &tb : t.tables) {
      if (w.exec_params("SELECT to_regclass($1)", tb.name)[0][0].is_null())
        continue; // created from the reference's definition in PREPARE
      if (columns(w, tb.name) != cols[tb.name])
        return "table \"" + tb.name + "\" exists on the new shard with other columns than on \"" +
               ref->name + "\"";
      if (!w.exec("SELECT 1 FROM " + w.quote_name(tb.name) + " LIMIT 1").empty())
        return "table \"" + tb.name + "\" on the new shard already has rows";
    }
  } catch (const std::exception &e) {
    return "cannot read the tables on the new shard: " + std::string(e.what());
  }
  return std::nullopt;
}

std::vector<std::string> unsharded_tables(const topology::Topology &t, const std::string &shard) {
  std::vector<std::string> out;
  auto *s = t.find_shard(shard);
  if (!s)
    return out;
  pqxx::connection c(conninfo(s->primary));
  pqxx::work w(c);
  for (auto r : w.exec("SELECT tablename FROM pg_tables WHERE schemaname NOT IN "
                       "('pg_catalog', 'information_schema', 'shardgate') ORDER BY 1")) {
    std::string n = r[0].c_str();
    bool sharded = false;
    for (auto &tb : t.tables)
      sharded |= tb.name == n;
    if (!sharded)
      out.push_back(n);
  }
  return out;
}

} // namespace sg::migrations

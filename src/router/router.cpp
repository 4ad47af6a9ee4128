// Plan caching and key resolution.
#include "router/router.h"

#include "router/key.h"

#include <unordered_map>

namespace sg::router {

namespace {

constexpr size_t kPlanCacheMax = 20000;

// Per-thread: session threads never share or lock it.
std::unordered_map<std::string, std::shared_ptr<const Analysis>> &plan_cache() {
  thread_local std::unordered_map<std::string, std::shared_ptr<const Analysis>> cache;
  return cache;
}

RouteError key_error(std::string sqlstate, std::string msg, std::string hint) {
  return {std::move(sqlstate), std::move(msg), std::move(hint)};
}

} // namespace

Router::Router(const config::Config &cfg) : tables_(cfg.tables) {
  auto topo = std::make_shared<Topology>();
  std::vector<RingMember> members;
  for (auto &s : cfg.shards) {
    topo->ring_shard.push_back(topo->shard_names.size());
    topo->shard_names.push_back(s.name);
    members.push_back({s.name, s.weight});
  }
  topo->ring = Ring(members, cfg.ring.vnodes);
  default_shard_ = cfg.default_shard_index();
  topo->default_shard = default_shard_;
  topology_ = std::move(topo);
  key_positions_.reset(new std::atomic<int>[tables_.size() + 1]);
  forget_key_positions();
}

int Router::key_position(int table) const {
  if (table < 0 || size_t(table) >= tables_.size())
    return -1;
  return key_positions_[size_t(table)].load(std::memory_order_acquire);
}

void Router::set_key_position(int table, int position) const {
  if (table >= 0 && size_t(table) < tables_.size())
    key_positions_[size_t(table)].store(position, std::memory_order_release);
}

void Router::forget_key_positions() const {
  for (size_t i = 0; i < tables_.size(); ++i)
    key_positions_[i].store(-1, std::memory_order_release);
}

PlannedText Router::plan(std::string_view sql) const {
  PlannedText pt;
  plan(sql, pt);
  return pt;
}

void Router::plan(std::string_view sql, PlannedText &pt) const {
  // A session often sends one statement shape over and over: then its plan stands, and only
  // the constants' positions change.
  if (pt.analysis && pt.analysis->parsed && same_shape(sql, pt.scan))
    return;
  scan_constants(sql, pt.scan);
  if (!pt.scan.ok) {
    // The scanner failed (e.g. an unterminated quote): plan without caching.
    pt.analysis = std::make_shared<Analysis>(analyze(sql, tables_, pt.scan.consts));
    return;
  }
  auto &cache = plan_cache();
  if (auto it = cache.find(pt.scan.normalized); it != cache.end()) {
    pt.analysis = it->second;
    return;
  }
  pt.analysis = std::make_shared<Analysis>(analyze(sql, tables_, pt.scan.consts));
  if (!pt.analysis->parsed)
    return; // never cache a failure: another text of the same shape may be valid
  if (cache.size() >= kPlanCacheMax)
    cache.clear();
  cache.emplace(pt.scan.normalized, pt.analysis);
}

namespace {

std::optional<std::string> literal_canonical(const ValueRef &v, const config::Table &t,
                                             std::string_view sql, const ScanResult &scan,
                                             std::string &err) {
  if (v.index < 0 || size_t(v.index) >= scan.consts.size()) {
    err = "a literal that could not be read";
    return std::nullopt;
  }
  auto text = constant_value(sql, scan.consts[size_t(v.index)]);
  if (!text) {
    err = "an undecodable literal";
    return std::nullopt;
  }
  if (v.negate)
    text->insert(text->begin(), '-');
  auto c = canonical_from_text(t.key_type, *text);
  if (!c)
    err = "invalid value \"" + *text + "\"";
  return c;
}

std::optional<std::string> param_canonical(const ValueRef &v, const config::Table &t,
                                           const std::vector<ParamValue> &params,
                                           std::string &err) {
  if (v.index < 1 || size_t(v.index) > params.size()) {
    err = "no value for parameter $" + std::to_string(v.index);
    return std::nullopt;
  }
  const ParamValue &pv = params[size_t(v.index - 1)];
  if (!pv.value) {
    err = "NULL";
    return std::nullopt;
  }
  auto c = pv.format == 1 ? canonical_from_binary(t.key_type, *pv.value)
                          : canonical_from_text(t.key_type, *pv.value);
  if (!c)
    err = pv.format == 1 ? "an invalid binary value"
                         : "invalid value \"" + std::string(*pv.value) + "\"";
  return c;
}

// An integer key written as a plain number literal (most keys): its value, read in place.
// Anything else (and every error) goes the general way, through canonical_from_text.
std::optional<int64_t> int_literal(const ValueRef &v, const config::Table &t, std::string_view sql,
                                   const ScanResult &scan) {
  if (v.is_param || t.key_type == KeyType::text || t.key_type == KeyType::uuid || v.index < 0 ||
      size_t(v.index) >= scan.consts.size())
    return std::nullopt;
  const ConstToken &c = scan.consts[size_t(v.index)];
  if (c.is_string || c.end - c.start > 18)
    return std::nullopt; // '42', and numbers that may not fit, are read the general way
  int64_t n = 0;
  for (uint32_t i = c.start; i < c.end; ++i) {
    auto d = uint8_t(sql[i] - '0');
    if (d > 9)
      return std::nullopt; // 1.5, 1e3: the general way reports them
    n = n * 10 + d;
  }
  if (v.negate)
    n = -n;
  if ((t.key_type == KeyType::smallint && (n < INT16_MIN || n > INT16_MAX)) ||
      (t.key_type == KeyType::int_ && (n < INT32_MIN || n > INT32_MAX)))
    return std::nullopt;
  return n;
}

void set_cross_shard(Resolved &r, const config::Table &t) {
  r.kind = TargetKind::error;
  r.error = key_error("0A000",
                      "statement on sharded table \"" + t.name +
                          "\" has shard keys owned by more than one shard",
                      "this statement cannot be split between shards here; send one "
                      "statement per shard");
}

// While a migration runs, the rows it moves are on two shards (copies on the target until the
// cutover, on the source until CLEANUP): a statement on every shard would see them twice.
void refuse_during_migration(Resolved &r, const Topology &topo) {
  r.kind = TargetKind::error;
  r.error = {"55000",
             "a statement across shards cannot run while migration " + topo.migration +
                 " moves rows between shards (they are on two shards until it ends)",
             "retry when the migration is DONE or ABORTED (GET /api/v1/migrations/" +
                 topo.migration + "), or name the shard key"};
}

} // namespace

Resolved Router::resolve(const StatementPlan &p, std::string_view sql, const ScanResult &scan,
                         const std::vector<ParamValue> &params, const Topology *placement,
                         bool scatter_ok, std::vector<size_t> *owners) const {
  Resolved r;
  const Topology &topo = placement ? *placement : *topology_;
  switch (p.target) {
  case TargetKind::none:
  case TargetKind::default_shard:
    r.kind = p.target;
    r.shard = topo.default_shard;
    return r;
  case TargetKind::all_primaries:
    r.kind = p.target;
    if (!topo.migration.empty()) [[unlikely]] {
      r.kind = TargetKind::error;
      r.error = key_error("55000",
                          "cannot change a sharded table while migration " + topo.migration +
                              " moves rows between shards",
                          "run the statement when the migration is DONE or ABORTED (GET "
                          "/api/v1/migrations/" +
                              topo.migration + ")");
    }
    return r;
  case TargetKind::error:
    r.kind = TargetKind::error;
    r.error = p.error;
    return r;
  case TargetKind::scatter:
    r.kind = TargetKind::scatter;
    if (!topo.migration.empty()) [[unlikely]] {
      refuse_during_migration(r, topo);
    } else if (!scatter_ok) {
      const config::Table &t = tables_[size_t(p.table)];
      r.kind = TargetKind::error;
      r.error = key_error("0A000",
                          std::string(p.multi_write ? "an UPDATE or DELETE" : "a read") +
                              " of sharded table \"" + t.name +
                              "\" without its shard key runs on every shard only as a simple "
                              "query; the extended protocol (prepared statements) cannot yet",
                          "add \"" + t.key +
                              " = <value>\" to the WHERE clause, or send it "
                              "as a simple query in autocommit mode");
    }
    return r;
  case TargetKind::by_key:
    break;
  }
  const std::vector<ValueRef> *keys = &p.keys;
  std::vector<ValueRef> positional;
  if (p.positional) [[unlikely]] {
    const config::Table &t = tables_[size_t(p.table)];
    int pos = key_position(p.table);
    r.kind = TargetKind::error;
    if (!scatter_ok) {
      r.error = key_error("0A000",
                          "INSERT into sharded table \"" + t.name +
                              "\" without a column list runs only as a simple query; the "
                              "extended protocol (prepared statements) cannot yet",
                          "list the columns, e.g. INSERT INTO " + t.name + " (" + t.key +
                              ", ...) VALUES (...)");
      return r;
    }
    if (pos < 0) {
      r.needs_key_position = true;
      r.error = key_error("0A000",
                          "the position of shard key \"" + t.key + "\" in table \"" + t.name +
                              "\" is not known yet",
                          "");
      return r;
    }
    for (const auto &row : p.row_items) {
      if (size_t(pos) >= row.size() || row[size_t(pos)].table < 0) {
        r.error = key_error("0A000",
                            "the shard key \"" + t.key + "\" of table \"" + t.name +
                                "\" must be a literal or a parameter in every VALUES row",
                            "pass the key value explicitly instead of DEFAULT or an expression");
        return r;
      }
      positional.push_back(row[size_t(pos)]);
    }
    r.kind = TargetKind::by_key;
    keys = &positional;
  }
  std::optional<size_t> owner;
  // During a cutover, a write to a key that changes owner waits for the flip (refused here,
  // retriably; reads go on, the old owner stays complete).
  auto moving = [&](uint64_t h, size_t o) {
    if (!topo.pause || p.kind == StmtKind::read || topo.next_owner(h) == o) [[likely]]
      return false;
    r.kind = TargetKind::error;
    r.moving = true;
    r.error = key_error("40001",
                        "the key is moving to shard \"" + topo.shard_names[topo.next_owner(h)] +
                            "\": writes to it pause for migration " + topo.migration + "'s cutover",
                        "retry the transaction; the cutover lasts at most [migrations] "
                        "cutover_pause_ms");
    return true;
  };
  // A read whose keys live on several shards runs on those shards (simple protocol callers),
  // merged like a read without a key: the shards' bits collect in r.shards.
  auto spread = [&](size_t o) {
    if (!scatter_ok || (!p.multi_write && (!p.scatter || p.kind != StmtKind::read)) || o >= 64 ||
        *owner >= 64)
      return false;
    r.shards |= (uint64_t(1) << o) | (uint64_t(1) << *owner);
    return true;
  };
  for (const ValueRef &v : *keys) {
    const config::Table &t = tables_[size_t(v.table)];
    if (auto iv = int_literal(v, t, sql, scan)) { // the common case, without building bytes
      uint64_t h = hash_int_key(*iv);
      size_t o = topo.owner(h);
      if (owners) [[unlikely]]
        owners->push_back(o);
      if (moving(h, o)) [[unlikely]]
        return r;
      if (owner && *owner != o && !spread(o)) {
        set_cross_shard(r, t);
        return r; // one return object throughout: no Resolved (three strings) moved per query
      }
      owner = o;
      continue;
    }
    std::string err;
    std::optional<std::string> canon =
        v.is_param ? param_canonical(v, t, params, err) : literal_canonical(v, t, sql, scan, err);
    if (!canon) {
      r.kind = TargetKind::error;
      r.error = key_error("22P02",
                          "cannot route: " + err + " for shard key \"" + t.key + "\" of table \"" +
                              t.name + "\" (" + config::to_string(t.key_type) + ")",
                          "pass a valid, non-NULL " + std::string(config::to_string(t.key_type)) +
                              " value for the shard key");
      return r;
    }
    uint64_t h = hash_key(*canon);
    size_t o = topo.owner(h);
    if (owners) [[unlikely]]
      owners->push_back(o);
    if (moving(h, o)) [[unlikely]]
      return r;
    if (owner && *owner != o && !spread(o)) {
      set_cross_shard(r, t);
      return r;
    }
    owner = o;
  }
  if (r.shards) { // keys on several shards: a read merged from them
    r.kind = TargetKind::scatter;
    if (!topo.migration.empty()) [[unlikely]]
      refuse_during_migration(r, topo);
    return r;
  }
  r.kind = TargetKind::by_key;
  r.shard = owner.value_or(topo.default_shard);
  return r;
}

std::optional<size_t> Router::owner_of_text(int table, std::string_view text, const Topology *topo,
                                            std::string &error) const {
  const config::Table &t = tables_[size_t(table)];
  auto c = canonical_from_text(t.key_type, text);
  if (!c) {
    error = "invalid " + std::string(config::to_string(t.key_type)) + " value \"" +
            std::string(text) + "\" for shard key \"" + t.key + "\" of table \"" + t.name + "\"";
    return std::nullopt;
  }
  return (topo ? *topo : *topology_).owner(hash_key(*c));
}

std::optional<uint64_t> Router::hash_of_text(int table, std::string_view text) const {
  auto c = canonical_from_text(tables_[size_t(table)].key_type, text);
  if (!c)
    return std::nullopt;
  return hash_key(*c);
}

int Router::table_index(std::string_view name) const {
  for (size_t i = 0; i < tables_.size(); ++i)
    if (tables_[i].name == name)
      return int(i);
  return -1;
}

void Topology::find_mirror_sources() {
  mirror_sources = 0;
  if (mirror.empty() || ring.empty())
    return;
  auto visit = [&](uint64_t h) {
    size_t o = owner(h);
    if (o < 64 && mirror_owner(h) != o)
      mirror_sources |= uint64_t(1) << o;
  };
  for (uint64_t h : ring.point_hashes())
    visit(h);
  for (uint64_t h : mirror.point_hashes())
    visit(h);
}

std::optional<size_t> Router::locate(std::string_view table, std::string_view key,
                                     std::string &error) const {
  for (auto &t : tables_) {
    if (t.name != table)
      continue;
    auto c = canonical_from_text(t.key_type, key);
    if (!c) {
      error = "invalid " + std::string(config::to_string(t.key_type)) + " value \"" +
              std::string(key) + "\"";
      return std::nullopt;
    }
    return topology_->owner(hash_key(*c));
  }
  error = "table \"" + std::string(table) + "\" is not a sharded table in the config";
  return std::nullopt;
}

} // namespace sg::router

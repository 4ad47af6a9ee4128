#include "admin/api.h"

#include "migrations/start.h"
#include "topology/store.h"

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>

namespace sg::admin {

using json = nlohmann::ordered_json;

namespace {

constexpr std::string_view kPrefix = "/api/v1/";

Response ok(int status, const json &j) { return {status, j.dump(), {}}; }

std::vector<std::string> split_path(std::string_view p) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string_view::npos)
      j = p.size();
    if (j > i)
      out.emplace_back(p.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

// A JSON object body whose keys are all in `allowed`; else the 400 to answer.
std::optional<Response> parse_body(const std::string &body, std::initializer_list<const char *> allowed,
                                   json &out) {
  try {
    out = json::parse(body);
  } catch (const json::exception &) {
    return error(400, "bad_request", "the body is not valid JSON");
  }
  if (!out.is_object())
    return error(400, "bad_request", "the body must be a JSON object");
  for (auto &[k, v] : out.items()) {
    bool known = false;
    for (auto a : allowed)
      known |= k == a;
    if (!known)
      return error(400, "bad_request", "unknown field \"" + k + "\"");
  }
  return std::nullopt;
}

std::optional<Response> string_field(const json &j, const char *name, bool required,
                                     std::string &out) {
  auto it = j.find(name);
  if (it == j.end()) {
    if (required)
      return error(400, "bad_request", std::string("missing field \"") + name + "\"");
    return std::nullopt;
  }
  if (!it->is_string() || it->get<std::string>().empty())
    return error(400, "bad_request", std::string("\"") + name + "\" must be a non-empty string");
  out = it->get<std::string>();
  return std::nullopt;
}

// A migration as the API documents it: the journal row with its progress, the runner's
// internal bookkeeping (backfill positions) left out.
json migration_json(const topology::MigrationRow &m) {
  json j = {{"id", m.id}, {"kind", m.kind}, {"shard", m.shard}, {"phase", m.phase}};
  json progress = json::parse(m.progress, nullptr, false);
  if (!progress.is_object())
    progress = json::object();
  for (auto [k, dflt] : std::initializer_list<std::pair<const char *, json>>{
           {"moves", json::array()},
           {"rows_copied", 0},
           {"rows_estimated", 0},
           {"rows_per_second", 0},
           {"eta_seconds", nullptr},
           {"verify", {{"rows_checked", 0}, {"mismatches", 0}, {"repaired", 0}}},
           {"target_write_failures", 0}})
    j[k] = progress.value(k, dflt);
  for (auto &[k, v] : progress.items())
    if (!j.contains(k) && k != "backfill" && k != "updated" && k != "before" && k != "after")
      j[k] = v;
  if (!m.request.empty())
    j["request"] = m.request;
  j["error"] = m.error ? json(*m.error) : json(nullptr);
  j["started_at"] = m.started_at;
  j["updated_at"] = m.updated_at;
  return j;
}

// The journaled migrations (src/topology/store.h), read for every request.
std::optional<std::vector<topology::MigrationRow>> journal(const Sources &src,
                                                           const std::string &id,
                                                           Response &err) {
  if (!src.metadata) {
    err = error(503, "unavailable", "no metadata database: migrations are journaled there");
    return std::nullopt;
  }
  try {
    topology::Store store(*src.metadata, "shardgate-admin");
    return store.migrations(id);
  } catch (const std::exception &e) {
    err = error(503, "unavailable", std::string("the metadata database: ") + e.what());
    return std::nullopt;
  }
}

json status_json(const Sources &src) {
  json proxy_j = json::object(), proxies = json::array(), nodes = json::array();
  if (src.watch) {
    auto w = src.watch();
    proxy_j = {{"id", w.instance},
               {"applied_epoch", w.applied_epoch},
               {"stored_epoch", w.stored_epoch},
               {"metadata", w.connected ? "connected" : "disconnected"},
               // the data path's own fence (it counts the age of the last metadata round trip
               // itself, so it may fence before the control-plane thread says so)
               {"fenced", w.fenced || (src.proxy && src.proxy->fenced_write().has_value())}};
    if (!w.connected)
      proxy_j["metadata_error"] = w.last_error;
    for (auto &p : w.proxies)
      proxies.push_back({{"id", p.id},
                         {"address", p.address},
                         {"applied_epoch", p.applied_epoch},
                         {"started_at", p.started_at},
                         {"last_heartbeat", p.last_heartbeat},
                         {"heartbeat_age_ms", p.heartbeat_age_ms}});
  }
  if (src.proxy) {
    const proxy::Shared &sh = *src.proxy;
    auto place = sh.placement();
    for (size_t id = 0; id < sh.node_count(); ++id) {
      const proxy::Node &n = sh.node(id);
      if (!place->has(id))
        continue;
      auto &h = const_cast<proxy::HealthBoard &>(sh.health).node(n.id);
      json lb = nullptr, lm = nullptr;
      if (n.role == proxy::Role::replica) {
        if (int64_t b = h.lag_bytes.load(); b >= 0)
          lb = b;
        if (int64_t m = h.lag_ms.load(); m >= 0)
          lm = m;
      }
      nodes.push_back({{"shard", n.shard_name},
                       {"url", topology::mask_password(n.endpoint.raw)},
                       {"role", proxy::to_string(n.role)},
                       {"state", sh.node_state(n.id)},
                       {"lag_bytes", lb},
                       {"lag_ms", lm}});
    }
  }
  json open = json::array();
  Response err;
  if (auto rows = src.metadata ? journal(src, "", err) : std::nullopt)
    for (auto &m : *rows)
      if (m.phase != "DONE" && m.phase != "ABORTED" && m.phase != "FAILED")
        open.push_back(migration_json(m));
  return {{"proxy", proxy_j}, {"proxies", proxies}, {"nodes", nodes}, {"migrations", open}};
}

// Starts a migration (the runner of whichever proxy holds the lock runs it): 202, or 409
// while another one runs or another change took the epoch.
Response start_migration(const Sources &src, const topology::Topology &t,
                         const migrations::Planned &pl) {
  try {
    topology::Store store(*src.metadata, "shardgate-admin");
    std::string busy;
    auto next = store.begin_migration(pl.next, t.epoch, pl.row, busy);
    if (!next && !busy.empty())
      return error(409, "conflict",
                   "migration " + busy + " is running; one migration at a time (GET "
                   "/api/v1/migrations/" + busy + ")");
    if (!next)
      return error(409, "conflict",
                   "another topology change was stored first (epoch " +
                       std::to_string(t.epoch + 1) + "); read the topology and try again");
    auto rows = store.migrations(pl.row.id);
    return ok(202, {{"migration", migration_json(rows.at(0))}, {"epoch", next->epoch}});
  } catch (const std::exception &e) {
    return error(503, "unavailable", std::string("the metadata database: ") + e.what());
  }
}

// The body's migration options; else the 400 to answer.
std::optional<Response> migration_options(const json &body, migrations::Options &o) {
  if (body.contains("cutover")) {
    if (!body["cutover"].is_string() ||
        (body["cutover"] != "auto" && body["cutover"] != "manual"))
      return error(400, "bad_request", "\"cutover\" must be \"auto\" or \"manual\"");
    o.cutover = body["cutover"].get<std::string>();
  }
  for (auto [name, out] : {std::pair<const char *, uint64_t *>{"cleanup_after_s", &o.cleanup_after_s},
                           {"max_rows_per_second", &o.max_rows_per_second}})
    if (body.contains(name)) {
      if (!body[name].is_number_unsigned())
        return error(400, "bad_request",
                     std::string("\"") + name + "\" must be a non-negative integer");
      *out = body[name].get<uint64_t>();
    }
  return std::nullopt;
}

// The newest stored topology (changes are planned on it, not on what this proxy runs).
std::optional<topology::Topology> stored(const Sources &src, Response &err) {
  if (!src.metadata) {
    err = error(503, "unavailable", "no metadata database: changes are stored there");
    return std::nullopt;
  }
  try {
    topology::Store store(*src.metadata, "shardgate-admin");
    auto t = store.latest();
    if (!t)
      err = error(503, "unavailable", "the metadata database holds no topology yet");
    return t;
  } catch (const std::exception &e) {
    err = error(503, "unavailable", std::string("the metadata database: ") + e.what());
    return std::nullopt;
  }
}

json shard_json(const topology::ShardSpec &s) {
  json reps = json::array();
  for (auto &r : s.replicas)
    reps.push_back(topology::mask_password(r));
  return {{"name", s.name},
          {"primary", topology::mask_password(s.primary)},
          {"replicas", reps},
          {"weight", s.weight},
          {"state", s.state}};
}

std::string label_of(const std::string &url) {
  std::string err;
  auto e = config::parse_endpoint(url, err);
  return e ? e->label() : url;
}

// One topology change: read the newest stored epoch, check and change `shard` in it
// (`mutate` returns the error to answer, if any), store it as the next epoch and wait (up to
// 2 s) for this proxy to run on it. 503 without the metadata database; 409 when another change
// took the epoch first.
template <class F>
Response change(const Sources &src, const std::string &shard, const std::string &reason,
                int status, F mutate) {
  if (!src.metadata)
    return error(503, "unavailable", "no metadata database: changes are stored there");
  std::optional<topology::Topology> next;
  try {
    topology::Store store(*src.metadata, "shardgate-admin");
    auto t = store.latest();
    if (!t)
      return error(503, "unavailable", "the metadata database holds no topology yet");
    topology::ShardSpec *sp = nullptr;
    for (auto &s : t->shards)
      if (s.name == shard)
        sp = &s;
    if (!sp)
      return error(404, "not_found", "no shard named \"" + shard + "\"");
    if (auto e = mutate(*sp))
      return *e;
    next = store.commit(*t, t->epoch, reason);
    if (!next)
      return error(409, "conflict",
                   "another topology change was stored first (epoch " +
                       std::to_string(t->epoch + 1) + "); read the topology and try again");
  } catch (const std::exception &e) {
    return error(503, "unavailable", std::string("the metadata database: ") + e.what());
  }
  bool applied = false;
  for (int i = 0; i < 200 && src.watch && !applied; ++i) {
    applied = src.watch().applied_epoch >= next->epoch;
    if (!applied)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return ok(status, {{"epoch", next->epoch},
                     {"applied", applied},
                     {"shard", shard_json(*next->find_shard(shard))}});
}

// A node the API is asked to add: reachable, and in recovery (a replica) or not (a primary).
std::optional<Response> probe(const config::Endpoint &e, bool want_replica) {
  std::string err;
  auto rec = topology::probe_in_recovery(e, err);
  if (!rec)
    return error(422, "unprocessable", "cannot reach " + e.label() + ": " + err);
  if (*rec != want_replica)
    return error(422, "unprocessable",
                 e.label() + (want_replica ? " is not in recovery: it is no replica"
                                           : " is still in recovery: promote it first"));
  return std::nullopt;
}

// /api/v1/shards...: the body and the running topology first (400, 404, 409), then the change.
Response shards(const Request &req, const std::vector<std::string> &p, const Sources &src) {
  topology::Topology t = src.topology ? src.topology() : topology::Topology{};
  const topology::ShardSpec *shard = p.size() >= 2 ? t.find_shard(p[1]) : nullptr;
  auto unknown = [&] { return error(404, "not_found", "no shard named \"" + p[1] + "\""); };
  json body;
  if (p.size() == 1) { // /shards
    if (req.method != "POST")
      return error(405, "method_not_allowed", "use POST to add a shard");
    if (auto e = parse_body(req.body,
                            {"name", "primary", "replicas", "weight", "cutover",
                             "cleanup_after_s", "max_rows_per_second"},
                            body))
      return *e;
    std::string name, primary;
    if (auto e = string_field(body, "name", true, name))
      return *e;
    if (auto e = string_field(body, "primary", true, primary))
      return *e;
    topology::ShardSpec spec{name, primary, {}, 1, "joining"};
    if (body.contains("replicas")) {
      if (!body["replicas"].is_array())
        return error(400, "bad_request", "\"replicas\" must be an array of URLs");
      for (auto &r : body["replicas"]) {
        if (!r.is_string())
          return error(400, "bad_request", "\"replicas\" must be an array of URLs");
        spec.replicas.push_back(r.get<std::string>());
      }
    }
    if (body.contains("weight")) {
      if (!body["weight"].is_number_unsigned() || body["weight"].get<uint64_t>() < 1 ||
          body["weight"].get<uint64_t>() > 1000)
        return error(400, "bad_request", "\"weight\" must be an integer from 1 to 1000");
      spec.weight = body["weight"].get<uint32_t>();
    }
    migrations::Options opt;
    if (auto e = migration_options(body, opt))
      return *e;
    if (t.find_shard(name))
      return error(409, "conflict", "a shard named \"" + name + "\" exists already");
    std::string err;
    auto ep = config::parse_endpoint(primary, err);
    if (!ep)
      return error(400, "bad_request", "bad primary URL: " + err);
    for (auto &r : spec.replicas)
      if (!config::parse_endpoint(r, err))
        return error(400, "bad_request", "bad replica URL: " + err);
    Response serr;
    auto cur = stored(src, serr);
    if (!cur)
      return serr;
    if (cur->find_shard(name))
      return error(409, "conflict", "a shard named \"" + name + "\" exists already");
    if (cur->migration)
      return error(409, "conflict", "migration " + cur->migration->id +
                                        " is running; one migration at a time");
    if (auto e = probe(*ep, false))
      return *e;
    for (auto &r : spec.replicas)
      if (auto e = probe(*config::parse_endpoint(r, err), true))
        return *e;
    if (auto why = migrations::check_tables(*cur, &spec))
      return error(422, "unprocessable", *why);
    return start_migration(src, *cur, migrations::plan_add(*cur, spec, opt));
  }
  if (p.size() == 2) { // /shards/{name}
    if (req.method == "DELETE") {
      if (!shard)
        return unknown();
      if (t.shards.size() == 1)
        return error(409, "conflict", "cannot remove the last shard");
      migrations::Options opt;
      if (!req.body.empty()) {
        if (auto e = parse_body(req.body, {"cutover", "cleanup_after_s", "max_rows_per_second"},
                                body))
          return *e;
        if (auto e = migration_options(body, opt))
          return *e;
      }
      Response serr;
      auto cur = stored(src, serr);
      if (!cur)
        return serr;
      const topology::ShardSpec *gone = cur->find_shard(p[1]);
      if (!gone)
        return unknown();
      if (cur->migration)
        return error(409, "conflict", "migration " + cur->migration->id +
                                          " is running; one migration at a time");
      size_t active = 0;
      for (auto &s : cur->shards)
        active += s.state == "active";
      if (active <= 1)
        return error(409, "conflict", "cannot remove the last shard");
      // The default shard may go only when nothing but sharded tables lives there (tables
      // that are not sharded are not moved) and the metadata database is elsewhere; another
      // active shard then becomes the default from the migration's first epoch.
      std::string next_default;
      if (src.proxy &&
          src.proxy->shard_name(src.proxy->placement()->keys->default_shard) == p[1]) {
        std::string list, why;
        try {
          for (auto &n : migrations::unsharded_tables(*cur, p[1]))
            list += (list.empty() ? "" : ", ") + n;
        } catch (const std::exception &e) {
          why = std::string(": cannot list its tables (") + e.what() + ")";
        }
        if (!list.empty() || !why.empty()) {
          std::string what = list.empty() ? why : ", and these tables live only there: " + list;
          return error(422, "unprocessable",
                       "\"" + p[1] + "\" is the default shard: statements on no sharded table " +
                           "run there" + what +
                           "; drop or move them first (tables that are not sharded are not moved)");
        }
        std::string perr;
        auto ep = config::parse_endpoint(gone->primary, perr);
        if (src.metadata && ep && ep->label() == src.metadata->label())
          return error(422, "unprocessable",
                       "\"" + p[1] + "\" is the default shard and the metadata database lives on "
                       "its primary; set [metadata] url to a server of its own first");
        for (auto &s : cur->shards)
          if (s.state == "active" && s.name != p[1] && next_default.empty())
            next_default = s.name;
      }
      if (auto why = migrations::check_tables(*cur, nullptr))
        return error(422, "unprocessable", *why);
      auto planned = migrations::plan_remove(*cur, p[1], opt);
      if (!next_default.empty())
        planned.next.default_shard = next_default;
      return start_migration(src, *cur, planned);
    }
    if (req.method != "PATCH")
      return error(405, "method_not_allowed", "use PATCH or DELETE on a shard");
    if (auto e = parse_body(req.body, {"primary", "weight"}, body))
      return *e;
    if (!shard)
      return unknown();
    if (body.contains("weight"))
      return error(409, "conflict",
                   "a shard's weight moves keys: it changes only through a migration");
    std::string primary;
    if (auto e = string_field(body, "primary", true, primary))
      return *e;
    std::string err;
    auto ep = config::parse_endpoint(primary, err);
    if (!ep)
      return error(400, "bad_request", "bad primary URL: " + err);
    if (!src.metadata)
      return error(503, "unavailable", "no metadata database: changes are stored there");
    if (auto e = probe(*ep, false))
      return *e;
    return change(src, p[1], "primary of " + p[1] + " -> " + ep->label(), 200,
                  [&](topology::ShardSpec &s) -> std::optional<Response> {
                    if (label_of(s.primary) == ep->label())
                      return error(409, "conflict", ep->label() + " is the primary already");
                    // A promoted replica is no replica any more.
                    std::erase_if(s.replicas,
                                  [&](const std::string &r) { return label_of(r) == ep->label(); });
                    s.primary = primary;
                    return std::nullopt;
                  });
  }
  if (p.size() >= 3 && p[2] == "replicas") {
    if (p.size() == 3) {
      if (req.method != "POST")
        return error(405, "method_not_allowed", "use POST to add a replica");
      if (auto e = parse_body(req.body, {"url"}, body))
        return *e;
      std::string url;
      if (auto e = string_field(body, "url", true, url))
        return *e;
      std::string err;
      auto ep = config::parse_endpoint(url, err);
      if (!ep)
        return error(400, "bad_request", "bad replica URL: " + err);
      if (!shard)
        return unknown();
      auto taken = [&](const topology::ShardSpec &s) -> std::optional<Response> {
        for (auto &r : s.replicas)
          if (label_of(r) == ep->label())
            return error(409, "conflict", ep->label() + " is already a replica of " + s.name);
        if (label_of(s.primary) == ep->label())
          return error(409, "conflict", ep->label() + " is the primary of " + s.name);
        return std::nullopt;
      };
      if (auto e = taken(*shard))
        return *e;
      if (!src.metadata)
        return error(503, "unavailable", "no metadata database: changes are stored there");
      if (auto e = probe(*ep, true))
        return *e;
      return change(src, p[1], "replica " + ep->label() + " added to " + p[1], 201,
                    [&](topology::ShardSpec &s) -> std::optional<Response> {
                      if (auto e = taken(s))
                        return e;
                      s.replicas.push_back(url);
                      return std::nullopt;
                    });
    }
    if (p.size() == 4) {
      if (req.method != "DELETE")
        return error(405, "method_not_allowed", "use DELETE to remove a replica");
      if (!shard)
        return unknown();
      auto missing = [&](const topology::ShardSpec &s) {
        return error(404, "not_found", "shard \"" + s.name + "\" has no replica " + p[3]);
      };
      if (std::none_of(shard->replicas.begin(), shard->replicas.end(),
                       [&](const std::string &r) { return label_of(r) == p[3]; }))
        return missing(*shard);
      return change(src, p[1], "replica " + p[3] + " removed from " + p[1], 200,
                    [&](topology::ShardSpec &s) -> std::optional<Response> {
                      size_t before = s.replicas.size();
                      std::erase_if(s.replicas,
                                    [&](const std::string &r) { return label_of(r) == p[3]; });
                      if (s.replicas.size() == before)
                        return missing(s);
                      return std::nullopt;
                    });
    }
  }
  return error(404, "not_found", "no such route: " + req.target);
}

Response migrations(const Request &req, const std::vector<std::string> &p, const Sources &src) {
  static const std::set<std::string> actions{"abort", "cutover", "cleanup"};
  if (p.size() > 3 || (p.size() == 3 && !actions.count(p[2])))
    return error(404, "not_found", "no such route: " + req.target);
  const char *want = p.size() == 3 ? "POST" : "GET";
  if (req.method != want)
    return error(405, "method_not_allowed",
                 std::string("use ") + want + (p.size() == 3 ? " for " + p[2] : std::string()));
  Response err;
  auto rows = journal(src, p.size() >= 2 ? p[1] : "", err);
  if (!rows)
    return err;
  if (p.size() == 1) {
    json list = json::array();
    for (auto &m : *rows)
      list.push_back(migration_json(m));
    return ok(200, {{"migrations", list}});
  }
  if (rows->empty())
    return error(404, "not_found", "no migration \"" + p[1] + "\"");
  if (p.size() == 2)
    return ok(200, migration_json(rows->front()));
  try {
    topology::Store store(*src.metadata, "shardgate-admin");
    std::string phase;
    if (!store.request(p[1], p[2], phase))
      return error(409, "conflict",
                   "migration " + p[1] + " is in phase " + phase + ": " + p[2] +
                       (p[2] == "abort"     ? " is possible only before CLEANUP"
                        : p[2] == "cutover" ? " is possible only in READY (cutover \"manual\")"
                                            : " is possible only in REVERSE_DUAL_WRITE"));
    return ok(202, {{"migration", migration_json(store.migrations(p[1]).at(0))}});
  } catch (const std::exception &e) {
    return error(503, "unavailable", std::string("the metadata database: ") + e.what());
  }
}

} // namespace

Response error(int status, std::string_view code, std::string_view message) {
  json j = {{"error", {{"code", code}, {"message", message}}}};
  return {status, j.dump(), {}};
}

bool token_matches(std::string_view presented, std::string_view expected) {
  unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char *>(presented.data()), presented.size(), a);
  SHA256(reinterpret_cast<const unsigned char *>(expected.data()), expected.size(), b);
  return CRYPTO_memcmp(a, b, sizeof a) == 0;
}

Response handle(const Request &req, const Sources &src) {
  std::string_view path = req.target;
  if (size_t q = path.find('?'); q != std::string_view::npos)
    path = path.substr(0, q);
  if (!path.starts_with(kPrefix) && path != "/api/v1")
    return error(404, "not_found", "the admin API lives under /api/v1/");
  if (!src.token.empty()) {
    std::string_view auth = req.authorization;
    constexpr std::string_view bearer = "Bearer ";
    if (!auth.starts_with(bearer) || !token_matches(auth.substr(bearer.size()), src.token)) {
      Response r = error(401, "unauthorized",
                         auth.empty() ? "missing Authorization: Bearer <token>"
                                      : "wrong admin token");
      r.headers.emplace_back("WWW-Authenticate", "Bearer");
      return r;
    }
  }
  auto p = split_path(path.substr(std::min(path.size(), kPrefix.size())));
  if (p.empty())
    return error(404, "not_found", "try GET /api/v1/openapi.json");
  const std::string &top = p[0];
  bool get = req.method == "GET";
  if (top == "openapi.json" && p.size() == 1) {
    if (!get)
      return error(405, "method_not_allowed", "use GET");
    return {200, std::string(src.openapi), {}};
  }
  if (top == "topology" && p.size() == 1) {
    if (!get)
      return error(405, "method_not_allowed", "use GET");
    topology::Topology t = src.topology ? src.topology() : topology::Topology{};
    return {200, topology::to_json(t, true), {}};
  }
  if (top == "status" && p.size() == 1) {
    if (!get)
      return error(405, "method_not_allowed", "use GET");
    return ok(200, status_json(src));
  }
  if (top == "shards")
    return shards(req, p, src);
  if (top == "migrations")
    return migrations(req, p, src);
  return error(404, "not_found", "no such route: " + std::string(path));
}

} // namespace sg::admin

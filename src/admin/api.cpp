#include "admin/api.h"

#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <set>

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

json status_json(const Sources &src) {
  json proxy_j = json::object(), proxies = json::array(), nodes = json::array();
  if (src.watch) {
    auto w = src.watch();
    proxy_j = {{"id", w.instance},
               {"applied_epoch", w.applied_epoch},
               {"stored_epoch", w.stored_epoch},
               {"metadata", w.connected ? "connected" : "disconnected"},
               {"fenced", w.fenced}};
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
    for (auto &n : sh.nodes) {
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
  return {{"proxy", proxy_j},
          {"proxies", proxies},
          {"nodes", nodes},
          {"migrations", json::array()}};
}

Response not_built(std::string_view what) {
  return error(501, "not_implemented",
               std::string(what) +
                   " is not built yet: the topology is stored and served, but changes through "
                   "the API come with live reconfiguration (see src/admin/README.md)");
}

// /api/v1/shards...: validation first (400, 404, 409), then what the change needs.
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
    if (t.find_shard(name))
      return error(409, "conflict", "a shard named \"" + name + "\" exists already");
    return not_built("adding a shard (an online migration)");
  }
  if (p.size() == 2) { // /shards/{name}
    if (req.method == "DELETE") {
      if (!shard)
        return unknown();
      if (t.shards.size() == 1)
        return error(409, "conflict", "cannot remove the last shard");
      return not_built("removing a shard (an online migration)");
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
    if (!config::parse_endpoint(primary, err))
      return error(400, "bad_request", "bad primary URL: " + err);
    return not_built("switching a shard's primary");
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
      for (auto &r : shard->replicas)
        if (auto have = config::parse_endpoint(r, err); have && have->label() == ep->label())
          return error(409, "conflict", ep->label() + " is already a replica of " + shard->name);
      return not_built("adding a replica");
    }
    if (p.size() == 4) {
      if (req.method != "DELETE")
        return error(405, "method_not_allowed", "use DELETE to remove a replica");
      if (!shard)
        return unknown();
      std::string err;
      bool found = false;
      for (auto &r : shard->replicas)
        if (auto have = config::parse_endpoint(r, err); have && have->label() == p[3])
          found = true;
      if (!found)
        return error(404, "not_found", "shard \"" + shard->name + "\" has no replica " + p[3]);
      return not_built("removing a replica");
    }
  }
  return error(404, "not_found", "no such route: " + req.target);
}

Response migrations(const Request &req, const std::vector<std::string> &p) {
  if (p.size() == 1) {
    if (req.method != "GET")
      return error(405, "method_not_allowed", "use GET to list migrations");
    return ok(200, {{"migrations", json::array()}});
  }
  static const std::set<std::string> actions{"abort", "cutover", "cleanup"};
  if (p.size() == 2 && req.method != "GET")
    return error(405, "method_not_allowed", "use GET to read a migration");
  if (p.size() == 3 && !actions.count(p[2]))
    return error(404, "not_found", "no such route: " + req.target);
  if (p.size() == 3 && req.method != "POST")
    return error(405, "method_not_allowed", "use POST for " + p[2]);
  if (p.size() > 3)
    return error(404, "not_found", "no such route: " + req.target);
  return error(404, "not_found", "no migration \"" + p[1] + "\"");
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
    return migrations(req, p);
  return error(404, "not_found", "no such route: " + std::string(path));
}

} // namespace sg::admin

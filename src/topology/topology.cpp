#include "topology/topology.h"

#include <nlohmann/json.hpp>

#include <regex>

namespace sg::topology {

using json = nlohmann::ordered_json;

const ShardSpec *Topology::find_shard(std::string_view name) const {
  for (auto &s : shards)
    if (s.name == name)
      return &s;
  return nullptr;
}

bool Topology::same_placement(const Topology &o) const {
  if (vnodes != o.vnodes || shards.size() != o.shards.size() || tables.size() != o.tables.size())
    return false;
  for (size_t i = 0; i < shards.size(); ++i)
    if (shards[i].name != o.shards[i].name || shards[i].weight != o.shards[i].weight)
      return false;
  for (size_t i = 0; i < tables.size(); ++i)
    if (tables[i].name != o.tables[i].name || tables[i].key != o.tables[i].key ||
        tables[i].key_type != o.tables[i].key_type)
      return false;
  return true;
}

bool Topology::operator==(const Topology &o) const {
  if (!same_placement(o))
    return false;
  for (size_t i = 0; i < shards.size(); ++i)
    if (shards[i].primary != o.shards[i].primary || shards[i].replicas != o.shards[i].replicas ||
        shards[i].state != o.shards[i].state)
      return false;
  return migration == o.migration && default_shard == o.default_shard;
}

Topology from_config(const config::Config &c) {
  Topology t;
  t.vnodes = c.ring.vnodes;
  for (auto &s : c.shards) {
    ShardSpec sp{s.name, s.primary.raw, {}, s.weight, "active"};
    for (auto &r : s.replicas)
      sp.replicas.push_back(r.raw);
    t.shards.push_back(std::move(sp));
  }
  for (auto &tb : c.tables)
    t.tables.push_back({tb.name, tb.key, tb.key_type});
  return t;
}

bool apply_to(const Topology &t, config::Config &c, std::string &error) {
  std::vector<config::Shard> shards;
  for (auto &s : t.shards) {
    config::Shard cs;
    cs.name = s.name;
    cs.weight = s.weight;
    auto p = config::parse_endpoint(s.primary, error);
    if (!p) {
      error = "shard " + s.name + " primary: " + error;
      return false;
    }
    cs.primary = *p;
    for (auto &r : s.replicas) {
      auto e = config::parse_endpoint(r, error);
      if (!e) {
        error = "shard " + s.name + " replica: " + error;
        return false;
      }
      cs.replicas.push_back(*e);
    }
    shards.push_back(std::move(cs));
  }
  std::vector<config::Table> tables;
  for (auto &tb : t.tables)
    tables.push_back({tb.name, tb.key, tb.key_type});
  c.shards = std::move(shards);
  c.tables = std::move(tables);
  c.ring.vnodes = t.vnodes;
  if (!t.default_shard.empty())
    c.proxy.default_shard = t.default_shard;
  return true;
}

std::string mask_password(const std::string &url) {
  // URL form: scheme://user:password@host...; conninfo form: password=value
  static const std::regex url_pw(R"(^([a-z]+://[^:/@]*:)[^@]*(@))", std::regex::icase);
  static const std::regex kv_pw(R"((^|\s)(password\s*=\s*)('([^'\\]|\\.)*'|\S+))");
  std::string out = std::regex_replace(url, url_pw, "$1***$2");
  return std::regex_replace(out, kv_pw, "$1$2***");
}

std::string to_json(const Topology &t, bool masked) {
  auto url = [&](const std::string &u) { return masked ? mask_password(u) : u; };
  json shards = json::array();
  for (auto &s : t.shards) {
    json reps = json::array();
    for (auto &r : s.replicas)
      reps.push_back(url(r));
    shards.push_back({{"name", s.name},
                      {"primary", url(s.primary)},
                      {"replicas", reps},
                      {"weight", s.weight},
                      {"state", s.state}});
  }
  json tables = json::array();
  for (auto &tb : t.tables)
    tables.push_back(
        {{"name", tb.name}, {"key", tb.key}, {"key_type", config::to_string(tb.key_type)}});
  json j = {{"epoch", t.epoch},
            {"ring", {{"vnodes", t.vnodes}}},
            {"shards", shards},
            {"tables", tables},
            {"migration", nullptr}};
  if (t.migration)
    j["migration"] = {
        {"id", t.migration->id}, {"pause", t.migration->pause}, {"mirror", t.migration->mirror}};
  if (!t.default_shard.empty())
    j["default_shard"] = t.default_shard;
  return j.dump();
}

std::optional<Topology> from_json(std::string_view text, std::string &error) {
  try {
    json j = json::parse(text);
    Topology t;
    t.epoch = j.at("epoch").get<uint64_t>();
    t.vnodes = j.at("ring").at("vnodes").get<uint32_t>();
    for (auto &s : j.at("shards")) {
      ShardSpec sp;
      sp.name = s.at("name").get<std::string>();
      sp.primary = s.at("primary").get<std::string>();
      sp.replicas = s.at("replicas").get<std::vector<std::string>>();
      sp.weight = s.at("weight").get<uint32_t>();
      sp.state = s.value("state", std::string("active"));
      t.shards.push_back(std::move(sp));
    }
    for (auto &tb : j.at("tables")) {
      auto kt = config::key_type_from_string(tb.at("key_type").get<std::string>());
      if (!kt) {
        error = "unknown key_type in stored topology";
        return std::nullopt;
      }
      t.tables.push_back({tb.at("name").get<std::string>(), tb.at("key").get<std::string>(), *kt});
    }
    if (auto m = j.find("migration"); m != j.end() && m->is_object())
      t.migration = MigrationRef{m->at("id").get<std::string>(), m->value("pause", false),
                                 m->value("mirror", std::vector<std::string>{})};
    t.default_shard = j.value("default_shard", std::string());
    return t;
  } catch (const json::exception &e) {
    error = e.what();
    return std::nullopt;
  }
}

} // namespace sg::topology

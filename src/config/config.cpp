// Reads and validates the TOML config; see config.h and the README for the format.
#include "config/config.h"

#include <libpq-fe.h>
#include <toml++/toml.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

namespace sg::config {

const char *to_string(KeyType t) {
  switch (t) {
  case KeyType::bigint:
    return "bigint";
  case KeyType::int_:
    return "int";
  case KeyType::smallint:
    return "smallint";
  case KeyType::text:
    return "text";
  case KeyType::uuid:
    return "uuid";
  }
  return "?";
}

std::optional<KeyType> key_type_from_string(std::string_view s) {
  if (s == "bigint" || s == "int8")
    return KeyType::bigint;
  if (s == "int" || s == "integer" || s == "int4")
    return KeyType::int_;
  if (s == "smallint" || s == "int2")
    return KeyType::smallint;
  if (s == "text" || s == "varchar")
    return KeyType::text;
  if (s == "uuid")
    return KeyType::uuid;
  return std::nullopt;
}

std::string Endpoint::conninfo() const {
  auto q = [](const std::string &v) {
    std::string o = "'";
    for (char c : v) {
      if (c == '\'' || c == '\\')
        o.push_back('\\');
      o.push_back(c);
    }
    return o + "'";
  };
  return "host=" + q(host) + " port=" + std::to_string(port) + " user=" + q(user) +
         " password=" + q(password) + " dbname=" + q(dbname.empty() ? user : dbname);
}

size_t Config::default_shard_index() const {
  for (size_t i = 0; i < shards.size(); ++i)
    if (shards[i].name == proxy.default_shard)
      return i;
  return 0;
}

const Table *Config::find_table(std::string_view name) const {
  for (auto &t : tables)
    if (t.name == name)
      return &t;
  return nullptr;
}

std::string Diagnostic::to_string() const {
  std::ostringstream os;
  os << file << ":" << line << ":" << column << ": error: " << message;
  if (!hint.empty())
    os << "\n  hint: " << hint;
  return os.str();
}

std::optional<Endpoint> parse_endpoint(const std::string &s, std::string &error) {
  char *err = nullptr;
  PQconninfoOption *opts = PQconninfoParse(s.c_str(), &err);
  if (!opts) {
    error = err ? err : "could not parse connection string";
    if (!error.empty() && error.back() == '\n')
      error.pop_back();
    PQfreemem(err);
    return std::nullopt;
  }
  Endpoint e;
  e.raw = s;
  bool ok = true;
  for (PQconninfoOption *o = opts; o->keyword; ++o) {
    if (!o->val)
      continue;
    std::string_view k = o->keyword;
    std::string v = o->val;
    if (k == "host" || (k == "hostaddr" && !v.empty()))
      e.host = v;
    else if (k == "port") {
      try {
        int p = std::stoi(v);
        if (p <= 0 || p > 65535)
          throw std::out_of_range("port");
        e.port = uint16_t(p);
      } catch (...) {
        error = "invalid port \"" + v + "\"";
        ok = false;
      }
    } else if (k == "user")
      e.user = v;
    else if (k == "password")
      e.password = v;
    else if (k == "dbname")
      e.dbname = v;
  }
  PQconninfoFree(opts);
  if (!ok)
    return std::nullopt;
  if (!e.host.empty() && e.host[0] == '/') {
    error = "unix-socket hosts are not supported; use a TCP host";
    return std::nullopt;
  }
  if (e.host.find(',') != std::string::npos) {
    error = "one host per endpoint; list replicas separately";
    return std::nullopt;
  }
  return e;
}

namespace {

bool split_listen(const std::string &listen, std::string &host, uint16_t &port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return false;
  int p = -1;
  try {
    size_t used = 0;
    p = std::stoi(listen.substr(colon + 1), &used);
    if (used != listen.size() - colon - 1)
      return false;
  } catch (...) {
    return false;
  }
  if (p <= 0 || p > 65535)
    return false;
  host = listen.substr(0, colon);
  port = uint16_t(p);
  return true;
}

class Reader {
public:
  Reader(std::string path, std::vector<Diagnostic> &diags) : path_(std::move(path)), d_(diags) {}

  void error(const toml::node *n, std::string msg, std::string hint) {
    Diagnostic d{path_, 0, 0, std::move(msg), std::move(hint)};
    if (n) {
      d.line = n->source().begin.line;
      d.column = n->source().begin.column;
    }
    d_.push_back(std::move(d));
  }

  void unknown_keys(const toml::table &t, std::initializer_list<std::string_view> allowed,
                    std::string_view section) {
    for (auto &[k, v] : t) {
      bool ok = false;
      for (auto a : allowed)
        ok |= (k.str() == a);
      if (!ok) {
        std::string list;
        for (auto a : allowed) {
          if (!list.empty())
            list += ", ";
          list += a;
        }
        Diagnostic d{path_, k.source().begin.line, k.source().begin.column,
                     "unknown key \"" + std::string(k.str()) + "\" in " + std::string(section),
                     "known keys here: " + list};
        d_.push_back(std::move(d));
      }
    }
  }

  template <class T> bool get_string(const toml::table &t, std::string_view key, T &out) {
    const toml::node *n = t.get(key);
    if (!n)
      return false;
    if (auto s = n->value<std::string>()) {
      out = *s;
      return true;
    }
    error(n, "\"" + std::string(key) + "\" must be a string", "quote the value");
    return false;
  }

  template <class T>
  bool get_uint(const toml::table &t, std::string_view key, T &out, int64_t min, int64_t max) {
    const toml::node *n = t.get(key);
    if (!n)
      return false;
    auto v = n->value<int64_t>();
    if (!v || *v < min || *v > max) {
      error(n,
            "\"" + std::string(key) + "\" must be an integer from " + std::to_string(min) + " to " +
                std::to_string(max),
            "write a plain integer in that range, without quotes");
      return false;
    }
    out = T(*v);
    return true;
  }

  bool get_bool(const toml::table &t, std::string_view key, bool &out) {
    const toml::node *n = t.get(key);
    if (!n)
      return false;
    if (auto b = n->value<bool>()) {
      out = *b;
      return true;
    }
    error(n, "\"" + std::string(key) + "\" must be true or false", "write it without quotes");
    return false;
  }

  const toml::table *table(const toml::table &root, std::string_view key) {
    const toml::node *n = root.get(key);
    if (!n)
      return nullptr;
    if (auto *t = n->as_table())
      return t;
    error(n, "\"" + std::string(key) + "\" must be a table",
          "write it as [" + std::string(key) + "]");
    return nullptr;
  }

  // Yields each table in an array of tables ([[key]]).
  template <class F> void each(const toml::table &root, std::string_view key, F f) {
    const toml::node *n = root.get(key);
    if (!n)
      return;
    auto *arr = n->as_array();
    if (!arr) {
      error(n, "\"" + std::string(key) + "\" must be an array of tables",
            "write each entry as [[" + std::string(key) + "]]");
      return;
    }
    for (auto &el : *arr) {
      if (auto *t = el.as_table())
        f(*t);
      else
        error(&el, "each \"" + std::string(key) + "\" entry must be a table",
              "write each entry as [[" + std::string(key) + "]]");
    }
  }

  std::optional<Endpoint> endpoint(const toml::node *n, std::string_view what) {
    auto s = n ? n->value<std::string>() : std::nullopt;
    if (!s) {
      error(n, std::string(what) + " must be a connection URL string",
            "e.g. \"postgresql://app:secret@127.0.0.1:5432/app\"");
      return std::nullopt;
    }
    std::string err;
    auto e = parse_endpoint(*s, err);
    if (!e)
      error(n, "bad " + std::string(what) + " URL: " + err,
            "use postgresql://user:password@host:port/dbname or a libpq conninfo");
    return e;
  }

private:
  std::string path_;
  std::vector<Diagnostic> &d_;
};

} // namespace

LoadResult load_string(std::string_view text, const std::string &path) {
  LoadResult res;
  auto &d = res.diagnostics;
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error &e) {
    d.push_back({path, e.source().begin.line, e.source().begin.column, std::string(e.description()),
                 "fix the TOML syntax"});
    return res;
  }
  Reader r(path, d);
  Config c;
  c.path = path;
  r.unknown_keys(root,
                 {"proxy", "users", "ring", "replicas", "metrics", "metadata", "migrations",
                  "transactions", "ids", "admin", "log", "shards", "tables"},
                 "the top level");

  if (auto *p = r.table(root, "proxy")) {
    r.unknown_keys(*p,
                   {"listen", "database", "pool_mode", "auth", "default_shard", "workers",
                    "pool_size", "max_message_bytes", "connect_timeout_ms", "query_timeout_ms",
                    "pool_timeout_ms", "auth_timeout_ms", "idle_in_transaction_timeout_ms",
                    "connect_retries", "pack_interval_ms", "spread_above_percent",
                    "pack_below_percent", "pipeline_depth", "pipeline_join_us"},
                   "[proxy]");
    std::string listen;
    if (r.get_string(*p, "listen", listen) &&
        !split_listen(listen, c.proxy.listen_host, c.proxy.listen_port))
      r.error(p->get("listen"), "\"listen\" must be host:port", "e.g. \"127.0.0.1:6432\"");
    r.get_string(*p, "database", c.proxy.database);
    std::string mode;
    if (r.get_string(*p, "pool_mode", mode)) {
      if (mode == "transaction")
        c.proxy.pool_mode = PoolMode::transaction;
      else if (mode == "session")
        c.proxy.pool_mode = PoolMode::session;
      else
        r.error(p->get("pool_mode"), "unknown pool_mode \"" + mode + "\"",
                "use \"transaction\" or \"session\"");
    }
    std::string auth;
    if (r.get_string(*p, "auth", auth)) {
      if (auth == "scram-sha-256")
        c.proxy.auth = AuthMethod::scram_sha_256;
      else if (auth == "md5")
        c.proxy.auth = AuthMethod::md5;
      else
        r.error(p->get("auth"), "unknown auth \"" + auth + "\"",
                "use \"scram-sha-256\" or \"md5\"");
    }
    r.get_string(*p, "default_shard", c.proxy.default_shard);
    r.get_uint(*p, "workers", c.proxy.workers, 0, 256);
    r.get_uint(*p, "pool_size", c.proxy.pool_size, 1, 100000);
    r.get_uint(*p, "max_message_bytes", c.proxy.max_message_bytes, 1024, 1 << 30);
    r.get_uint(*p, "connect_timeout_ms", c.proxy.connect_timeout_ms, 1, 600000);
    r.get_uint(*p, "query_timeout_ms", c.proxy.query_timeout_ms, 0, 86400000);
    r.get_uint(*p, "pool_timeout_ms", c.proxy.pool_timeout_ms, 1, 600000);
    r.get_uint(*p, "auth_timeout_ms", c.proxy.auth_timeout_ms, 1, 600000);
    r.get_uint(*p, "idle_in_transaction_timeout_ms", c.proxy.idle_in_transaction_timeout_ms, 0,
               86400000);
    r.get_uint(*p, "connect_retries", c.proxy.connect_retries, 0, 20);
    r.get_uint(*p, "pack_interval_ms", c.proxy.pack_interval_ms, 0, 60000);
    r.get_uint(*p, "spread_above_percent", c.proxy.spread_above_percent, 0, 100);
    r.get_uint(*p, "pack_below_percent", c.proxy.pack_below_percent, 0, 100);
    r.get_uint(*p, "pipeline_depth", c.proxy.pipeline_depth, 0, 1024);
    r.get_uint(*p, "pipeline_join_us", c.proxy.pipeline_join_us, 0, 10000000);
    if (c.proxy.pack_below_percent >= c.proxy.spread_above_percent && c.proxy.pack_below_percent)
      r.error(p->get("pack_below_percent") ? p->get("pack_below_percent")
                                           : p->get("spread_above_percent"),
              "pack_below_percent must be below spread_above_percent",
              "otherwise the number of busy workers would flap; e.g. 60 and 45");
  }

  std::set<std::string> user_names;
  r.each(root, "users", [&](const toml::table &t) {
    r.unknown_keys(t,
                   {"name", "password", "max_client_connections", "max_queries_per_second", "burst",
                    "max_delay_ms"},
                   "[[users]]");
    User u;
    if (!r.get_string(t, "name", u.name) || u.name.empty())
      r.error(&t, "a user needs a \"name\"", "add name = \"app\"");
    if (!r.get_string(t, "password", u.password))
      r.error(&t, "user \"" + u.name + "\" needs a \"password\"",
              "add password = \"...\" (clients authenticate with it)");
    r.get_uint(t, "max_client_connections", u.max_client_connections, 0, 1000000);
    r.get_uint(t, "max_queries_per_second", u.max_queries_per_second, 0, 100000000);
    r.get_uint(t, "burst", u.burst, 0, 100000000);
    r.get_uint(t, "max_delay_ms", u.max_delay_ms, 0, 60000);
    if (!u.name.empty() && !user_names.insert(u.name).second)
      r.error(t.get("name"), "duplicate user \"" + u.name + "\"", "each user once");
    c.users.push_back(std::move(u));
  });
  if (c.users.empty())
    d.push_back({path, 1, 1, "no [[users]] configured", "add at least one [[users]] entry"});

  if (auto *rt = r.table(root, "ring")) {
    r.unknown_keys(*rt, {"vnodes"}, "[ring]");
    r.get_uint(*rt, "vnodes", c.ring.vnodes, 1, 100000);
  }

  if (auto *rp = r.table(root, "replicas")) {
    r.unknown_keys(*rp,
                   {"health_interval_ms", "max_lag_bytes", "max_lag_ms", "read_your_writes",
                    "readmit_probes", "probe_timeout_ms", "failures_to_ban", "ban_base_ms",
                    "ban_max_ms"},
                   "[replicas]");
    auto &rc = c.replicas;
    r.get_uint(*rp, "health_interval_ms", rc.health_interval_ms, 10, 600000);
    r.get_uint(*rp, "max_lag_bytes", rc.max_lag_bytes, 0, int64_t(1) << 50);
    r.get_uint(*rp, "max_lag_ms", rc.max_lag_ms, 0, 86400000);
    r.get_uint(*rp, "readmit_probes", rc.readmit_probes, 1, 1000);
    r.get_uint(*rp, "probe_timeout_ms", rc.probe_timeout_ms, 10, 600000);
    r.get_uint(*rp, "failures_to_ban", rc.failures_to_ban, 1, 1000);
    r.get_uint(*rp, "ban_base_ms", rc.ban_base_ms, 10, 3600000);
    r.get_uint(*rp, "ban_max_ms", rc.ban_max_ms, 10, 86400000);
    if (const toml::node *n = rp->get("read_your_writes")) {
      if (auto b = n->value<bool>())
        rc.read_your_writes = *b;
      else
        r.error(n, "\"read_your_writes\" must be true or false", "write it without quotes");
    }
  }

  if (auto *mt = r.table(root, "metrics")) {
    r.unknown_keys(*mt, {"listen"}, "[metrics]");
    std::string listen;
    if (r.get_string(*mt, "listen", listen)) {
      if (!split_listen(listen, c.metrics.listen_host, c.metrics.listen_port))
        r.error(mt->get("listen"), "\"listen\" must be host:port", "e.g. \"127.0.0.1:9930\"");
    }
  }
  if (auto *md = r.table(root, "metadata")) {
    r.unknown_keys(*md, {"enabled", "url", "fence_timeout_ms", "heartbeat_ms", "instance"},
                   "[metadata]");
    r.get_bool(*md, "enabled", c.metadata.enabled);
    if (r.get_string(*md, "url", c.metadata.url)) {
      std::string err;
      if (!parse_endpoint(c.metadata.url, err))
        r.error(md->get("url"), "bad metadata URL: " + err,
                "use postgresql://user:password@host:port/dbname, or leave it out to use the "
                "default shard's primary");
    }
    r.get_uint(*md, "fence_timeout_ms", c.metadata.fence_timeout_ms, 100, 3600000);
    r.get_uint(*md, "heartbeat_ms", c.metadata.heartbeat_ms, 50, 600000);
    r.get_string(*md, "instance", c.metadata.instance);
    if (c.metadata.heartbeat_ms * 2 > c.metadata.fence_timeout_ms)
      r.error(md->get("heartbeat_ms"), "\"heartbeat_ms\" must be at most half of fence_timeout_ms",
              "a proxy's heartbeat must be fresh well within the fence timeout");
  }
  if (auto *mg = r.table(root, "migrations")) {
    r.unknown_keys(*mg, {"max_rows_per_second", "cutover_pause_ms", "batch_rows"}, "[migrations]");
    r.get_uint(*mg, "max_rows_per_second", c.migrations.max_rows_per_second, 0, 100000000);
    r.get_uint(*mg, "cutover_pause_ms", c.migrations.cutover_pause_ms, 10, 60000);
    r.get_uint(*mg, "batch_rows", c.migrations.batch_rows, 1, 100000);
  }
  if (auto *tx = r.table(root, "transactions")) {
    r.unknown_keys(*tx, {"two_phase_commit", "recover_after_ms", "recovery_interval_ms"},
                   "[transactions]");
    r.get_bool(*tx, "two_phase_commit", c.transactions.two_phase_commit);
    r.get_uint(*tx, "recover_after_ms", c.transactions.recover_after_ms, 100, 3600000);
    r.get_uint(*tx, "recovery_interval_ms", c.transactions.recovery_interval_ms, 50, 600000);
  }
  if (auto *ids = r.table(root, "ids")) {
    r.unknown_keys(*ids, {"instance"}, "[ids]");
    r.get_uint(*ids, "instance", c.ids.instance, 0, 1023);
  }
  if (auto *ad = r.table(root, "admin")) {
    r.unknown_keys(*ad, {"listen", "token_file", "allow_no_token"}, "[admin]");
    std::string listen;
    if (r.get_string(*ad, "listen", listen) &&
        !split_listen(listen, c.admin.listen_host, c.admin.listen_port))
      r.error(ad->get("listen"), "\"listen\" must be host:port", "e.g. \"127.0.0.1:6480\"");
    r.get_bool(*ad, "allow_no_token", c.admin.allow_no_token);
    if (r.get_string(*ad, "token_file", c.admin.token_file)) {
      std::ifstream tf(c.admin.token_file, std::ios::binary);
      std::stringstream ss;
      if (tf)
        ss << tf.rdbuf();
      std::string tok = ss.str();
      while (!tok.empty() && (tok.back() == '\n' || tok.back() == '\r' || tok.back() == ' '))
        tok.pop_back();
      if (!tf)
        r.error(ad->get("token_file"),
                "cannot read the admin token file \"" + c.admin.token_file + "\"",
                "create it (e.g. head -c 24 /dev/urandom | base64 > FILE) or fix the path");
      else if (tok.size() < 16)
        r.error(ad->get("token_file"),
                "the admin token in \"" + c.admin.token_file + "\" is shorter than 16 characters",
                "use a long random token");
      else
        c.admin.token = tok;
    }
    if (c.admin.token.empty())
      if (const char *env = std::getenv("SHARDGATE_ADMIN_TOKEN"); env && *env)
        c.admin.token = env;
    bool loopback = c.admin.listen_host == "127.0.0.1" || c.admin.listen_host == "::1" ||
                    c.admin.listen_host == "localhost";
    if (!c.admin.listen_host.empty() && c.admin.token.empty() &&
        !(loopback && c.admin.allow_no_token))
      r.error(ad->get("listen"), "the admin API has no token",
              "set [admin] token_file or SHARDGATE_ADMIN_TOKEN; only a loopback listen address "
              "may run without one, with allow_no_token = true");
    if (!c.admin.listen_host.empty() && !c.metadata.enabled)
      r.error(ad->get("listen"), "the admin API needs the metadata database",
              "remove [metadata] enabled = false");
  }
  if (auto *lg = r.table(root, "log")) {
    r.unknown_keys(*lg, {"format", "level", "slow_query_ms"}, "[log]");
    std::string format;
    if (r.get_string(*lg, "format", format)) {
      if (format == "json")
        c.log.format = LogFormat::json;
      else if (format == "text")
        c.log.format = LogFormat::text;
      else
        r.error(lg->get("format"), "unknown log format \"" + format + "\"",
                "use \"json\" or \"text\"");
    }
    if (r.get_string(*lg, "level", c.log.level) && c.log.level != "debug" &&
        c.log.level != "info" && c.log.level != "warn" && c.log.level != "error")
      r.error(lg->get("level"), "unknown log level \"" + c.log.level + "\"",
              "use debug, info, warn or error");
    r.get_uint(*lg, "slow_query_ms", c.log.slow_query_ms, 0, 86400000);
  }

  std::set<std::string> shard_names;
  r.each(root, "shards", [&](const toml::table &t) {
    r.unknown_keys(t, {"name", "primary", "replicas", "weight"}, "[[shards]]");
    Shard s;
    if (!r.get_string(t, "name", s.name) || s.name.empty())
      r.error(&t, "a shard needs a \"name\"", "add name = \"s0\"");
    else if (!shard_names.insert(s.name).second)
      r.error(t.get("name"), "duplicate shard name \"" + s.name + "\"",
              "shard names must be unique: they place the shard on the ring");
    if (auto *pn = t.get("primary")) {
      if (auto e = r.endpoint(pn, "primary"))
        s.primary = *e;
    } else {
      r.error(&t, "shard \"" + s.name + "\" has no \"primary\"",
              "add primary = \"postgresql://user:password@host:port/db\"");
    }
    if (auto *rn = t.get("replicas")) {
      if (auto *arr = rn->as_array()) {
        for (auto &el : *arr)
          if (auto e = r.endpoint(&el, "replica"))
            s.replicas.push_back(*e);
      } else {
        r.error(rn, "\"replicas\" must be an array of URLs",
                "e.g. replicas = [\"postgresql://...\"]");
      }
    }
    r.get_uint(t, "weight", s.weight, 1, 1000);
    c.shards.push_back(std::move(s));
  });
  if (c.shards.empty())
    d.push_back({path, 1, 1, "no [[shards]] configured", "add at least one [[shards]] entry"});

  std::set<std::string> table_names;
  r.each(root, "tables", [&](const toml::table &t) {
    r.unknown_keys(t, {"name", "key", "key_type"}, "[[tables]]");
    Table tb;
    if (!r.get_string(t, "name", tb.name) || tb.name.empty())
      r.error(&t, "a table needs a \"name\"", "add name = \"accounts\"");
    else if (!table_names.insert(tb.name).second)
      r.error(t.get("name"), "duplicate table \"" + tb.name + "\"", "each table once");
    if (!r.get_string(t, "key", tb.key) || tb.key.empty())
      r.error(&t, "table \"" + tb.name + "\" has no \"key\"", "add key = \"<shard key column>\"");
    std::string kt = "bigint";
    r.get_string(t, "key_type", kt);
    if (auto k = key_type_from_string(kt))
      tb.key_type = *k;
    else
      r.error(t.get("key_type"), "unknown key_type \"" + kt + "\"",
              "use bigint, int, smallint, text or uuid");
    c.tables.push_back(std::move(tb));
  });

  if (!c.proxy.default_shard.empty() && !shard_names.count(c.proxy.default_shard)) {
    const toml::node *n = nullptr;
    if (auto *p = root.get("proxy"); p && p->as_table())
      n = p->as_table()->get("default_shard");
    r.error(n, "default_shard \"" + c.proxy.default_shard + "\" is not a configured shard",
            "name one of the [[shards]]");
  }

  if (d.empty())
    res.config = std::move(c);
  return res;
}

LoadResult load_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    LoadResult res;
    res.diagnostics.push_back(
        {path, 0, 0, "cannot read the config file", "check the path given to --config"});
    return res;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return load_string(ss.str(), path);
}

} // namespace sg::config

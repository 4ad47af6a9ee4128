#include "migrations/copier.h"

#include "executor/copy.h"

#include "proxy/errors.h"

#include <pqxx/pqxx>
#include <pqxx/tablereader>
#include <pqxx/tablewriter>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>

namespace sg::migrations {

namespace log = proxy::log;
using json = nlohmann::json;

namespace {

// kRead: verify, planning; kSync: the drain's source reads (beside the backfill's pages);
// kWrite: everything else. Each backfill worker has its own: two source connections (one page
// written while the next is read) and one per target.
enum Role { kRead = 0, kWrite = 1, kSync = 3 };
int page_read_role(int worker, int slot) { return 100 + 2 * worker + slot; }
int page_write_role(int worker) { return 200 + worker; }
bool writes(int role) { return role == kWrite || role >= 200; }

constexpr size_t kChunk = 64 * 1024; // bytes of COPY text per data message

const char *kCapture = R"sql(
CREATE SCHEMA IF NOT EXISTS shardgate;
CREATE TABLE IF NOT EXISTS shardgate.changes(
  id bigserial PRIMARY KEY,
  tbl text NOT NULL,
  key text NOT NULL,
  xid bigint DEFAULT txid_current()); -- the writer's: dual-write reads its own keys by it
ALTER TABLE shardgate.changes ADD COLUMN IF NOT EXISTS xid bigint DEFAULT txid_current();
-- The epoch of the last cutover that took keys off this shard (0: none). A sequence, so that a
-- writer sees it set at once, whatever its snapshot; it only rises (Copier::freeze).
CREATE SEQUENCE IF NOT EXISTS shardgate.fence MINVALUE 0 START 0;
CREATE OR REPLACE FUNCTION shardgate.capture() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
  fence bigint;
  tag text;
BEGIN
  IF current_setting('shardgate.sync', true) = 'on' THEN
    RETURN NULL;
  END IF;
  -- A write routed before the cutover's pause (proxies tag their backends with the epoch
  -- they routed on) may be for a key that has moved: refused, retriable.
  SELECT last_value INTO fence FROM shardgate.fence;
  IF fence > 0 THEN
    tag := current_setting('shardgate.epoch', true);
    IF tag IS NULL OR tag !~ '^[0-9]{1,18}$' OR tag::bigint < fence THEN
      RAISE EXCEPTION USING ERRCODE = '40001',
        MESSAGE = format('shardgate: this write was routed on topology epoch %s, but a '
                         'migration moved keys off this shard at epoch %s',
                         coalesce(nullif(tag, ''), '(none)'), fence),
        HINT = 'Retry the transaction: ShardGate routes it to the key''s owner now. While '
               'a migration runs, write sharded tables through ShardGate only.';
    END IF;
  END IF;
  IF TG_OP <> 'INSERT' THEN
    INSERT INTO shardgate.changes(tbl, key) VALUES (TG_TABLE_NAME, to_jsonb(OLD) ->> TG_ARGV[0]);
  END IF;
  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND
      (to_jsonb(NEW) ->> TG_ARGV[0]) IS DISTINCT FROM (to_jsonb(OLD) ->> TG_ARGV[0])) THEN
    INSERT INTO shardgate.changes(tbl, key) VALUES (TG_TABLE_NAME, to_jsonb(NEW) ->> TG_ARGV[0]);
  END IF;
  RETURN NULL;
END $f$;
)sql";

std::string pg_dump_path() {
  const char *v15 = "/usr/lib/postgresql/15/bin/pg_dump";
  return access(v15, X_OK) == 0 ? v15 : "pg_dump";
}

// A shell word in single quotes.
std::string sh_quote(const std::string &s) {
  std::string o = "'";
  for (char c : s)
    o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

std::string trim_error(std::string e) {
  while (!e.empty() && (e.back() == '\n' || e.back() == ' '))
    e.pop_back();
  return e;
}

// Field `want` of one line of COPY text output, unescaped; nullopt for \N (NULL) or a line
// with fewer fields. PostgreSQL escapes the backslash, the delimiter (tab), newline, carriage
// return and the other control characters \b \f \v on output; octal and hex escapes are only
// read on input, but decoded here too.
std::optional<std::string> copy_field(const std::string &line, size_t want) {
  size_t i = 0;
  for (size_t f = 0; f < want; ++f) {
    i = line.find('\t', i);
    if (i == std::string::npos)
      return std::nullopt;
    ++i;
  }
  size_t end = line.find('\t', i);
  if (end == std::string::npos)
    end = line.size();
  if (end - i == 2 && line[i] == '\\' && line[i + 1] == 'N')
    return std::nullopt;
  return executor::copy_text_unescape(std::string_view(line).substr(i, end - i));
}

// Rows in `table`: the planner's estimate, or a count when it has none or the table is small.
double row_count(pqxx::work &w, const std::string &table) {
  auto r = w.exec_params("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = "
                         "$1::regclass",
                         table);
  double n = r.empty() ? 0 : r[0][0].as<double>();
  if (n < 100000) // never analyzed, or small: count
    n = w.exec("SELECT count(*) FROM " + w.quote_name(table))[0][0].as<double>();
  return n;
}

} // namespace

struct Copier::TableInfo {
  std::string name, key, key_type; // quoted identifiers; the key's SQL type
  std::vector<std::string> pk, pk_types, others;
  std::string pk0_name;          // the first primary-key column, unquoted
  std::vector<std::string> cols; // every column, in the source's order
  std::string col_list;          // "a, b, c"
  size_t key_col = 0;            // the key's place in cols
  std::vector<size_t> pk_cols;   // the primary key's places in cols
  std::string pk_list;   // "a, b"
  std::string after;     // "(a, b) > (($1::jsonb->>0)::t0, ...)"
  std::string upto;      // the same with <= and $2
  std::string upto1;     // the same with $1
  std::string pk_json;   // "jsonb_build_array(a, b)::text"
  // The key's text and the primary key as JSON, named so that ORDER BY and WHERE on the key's
  // and primary key's own names mean the columns (an output column "id" would be the text).
  std::string key_pk;
  std::string upsert;    // INSERT ... SELECT * FROM json_populate_recordset ... ON CONFLICT
  std::string upsert_from, upsert_set; // the same from a staging table: from + stage + set
  std::string key_in;    // "key IN (SELECT jsonb_array_elements_text($1::jsonb)::type)"
  std::string pk_in;     // "(a, b) IN (SELECT (e->>0)::t0, ... FROM jsonb_array_elements($1))"
};

Copier::Copier(std::map<std::string, std::string> urls, std::vector<config::Table> tables,
               const KeyMoves &moves, uint32_t batch_rows)
    : urls_(std::move(urls)), tables_(std::move(tables)), moves_(moves), batch_(batch_rows) {}

Copier::~Copier() = default;

struct Copier::Conn : pqxx::connection {
  explicit Conn(const std::string &ci) : pqxx::connection(ci) {}
  std::set<std::string> staged; // temp staging tables made on this connection
};

Copier::Freeze::~Freeze() {
  for (auto &c : conns)
    try {
      pqxx::nontransaction(*c).exec("ROLLBACK");
    } catch (...) {
    }
}

// Backfill workers, their read-ahead helpers and the drain run at once: the map is guarded, and
// each (shard, role) connection is used by one thread at a time.
Copier::Conn &Copier::conn(const std::string &shard, int role) {
  std::unique_ptr<Conn> *slot;
  {
    std::lock_guard<std::mutex> g(mu_);
    slot = &conns_[{shard, role}]; // map entries stay where they are
  }
  auto &c = *slot;
  if (c && !c->is_open())
    c.reset();
  if (!c) {
    auto it = urls_.find(shard);
    if (it == urls_.end())
      throw std::runtime_error("no shard \"" + shard + "\" in the topology");
    std::string err;
    auto e = config::parse_endpoint(it->second, err);
    if (!e)
      throw std::runtime_error("shard " + shard + ": " + err);
    c = std::make_unique<Conn>(e->conninfo() +
                                           " connect_timeout=5 application_name='shardgate-"
                                           "migration'");
    pqxx::nontransaction w(*c);
    // Never wait forever on a client's lock; the copier's own writes are not captured.
    w.exec("SET lock_timeout = '5s'; SET shardgate.sync = 'on'");
    if (!writes(role)) // reads and row locks only: nothing to wait for at commit
      w.exec("SET synchronous_commit = off");
  }
  return *c;
}

const Copier::TableInfo &Copier::info(const config::Table &t) {
  std::lock_guard<std::recursive_mutex> g(info_mu_);
  if (auto it = info_.find(t.name); it != info_.end() && it->second)
    return *it->second;
  auto &slot = info_[t.name];
  // Read from any shard that has the table: the first source's definition is the reference.
  Conn *c = nullptr;
  for (auto &n : moves_.sources()) {
    c = &conn(n, kRead);
    break;
  }
  if (!c)
    throw std::runtime_error("no source shard");
  auto ti = std::make_unique<TableInfo>();
  pqxx::work w(*c);
  ti->name = w.quote_name(t.name);
  ti->key = w.quote_name(t.key);
  ti->key_type = config::to_string(t.key_type);
  auto pk = w.exec_params(
      "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i "
      "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
      "WHERE i.indrelid = $1::regclass AND i.indisprimary "
      "ORDER BY array_position(i.indkey::int2[], a.attnum)",
      t.name);
  if (pk.empty())
    throw std::runtime_error("table \"" + t.name + "\" has no primary key");
  ti->pk0_name = pk[0][0].c_str();
  for (auto r : pk) {
    ti->pk.push_back(w.quote_name(r[0].c_str()));
    ti->pk_types.push_back(r[1].c_str());
  }
  auto cols = w.exec_params("SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
                            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                            t.name);
  for (auto r : cols) {
    std::string q = w.quote_name(r[0].c_str());
    if (std::find(ti->pk.begin(), ti->pk.end(), q) == ti->pk.end())
      ti->others.push_back(q);
    if (q == ti->key)
      ti->key_col = ti->cols.size();
    ti->col_list += (ti->cols.empty() ? "" : ", ") + q;
    ti->cols.push_back(q);
  }
  w.commit();
  for (auto &p : ti->pk)
    ti->pk_cols.push_back(size_t(std::find(ti->cols.begin(), ti->cols.end(), p) - ti->cols.begin()));
  std::string casts1, casts2, elems;
  for (size_t i = 0; i < ti->pk.size(); ++i) {
    std::string sep = i ? ", " : "";
    ti->pk_list += sep + ti->pk[i];
    casts1 += sep + "($1::jsonb->>" + std::to_string(i) + ")::" + ti->pk_types[i];
    casts2 += sep + "($2::jsonb->>" + std::to_string(i) + ")::" + ti->pk_types[i];
    elems += sep + "(e->>" + std::to_string(i) + ")::" + ti->pk_types[i];
  }
  ti->after = "(" + ti->pk_list + ") > (" + casts1 + ")";
  ti->upto = "(" + ti->pk_list + ") <= (" + casts2 + ")";
  ti->upto1 = "(" + ti->pk_list + ") <= (" + casts1 + ")";
  ti->pk_json = "jsonb_build_array(" + ti->pk_list + ")::text";
  ti->key_pk = ti->key + "::text AS sg_key, " + ti->pk_json + " AS sg_pk";
  std::string on_conflict = " ON CONFLICT (" + ti->pk_list + ") DO ";
  if (ti->others.empty()) {
    on_conflict += "NOTHING";
  } else {
    on_conflict += "UPDATE SET ";
    for (size_t i = 0; i < ti->others.size(); ++i)
      on_conflict += (i ? ", " : "") + ti->others[i] + " = EXCLUDED." + ti->others[i];
  }
  ti->upsert = "INSERT INTO " + ti->name + " SELECT * FROM json_populate_recordset(NULL::" +
               ti->name + ", $1::json)" + on_conflict;
  ti->upsert_from = "INSERT INTO " + ti->name + " (" + ti->col_list + ") SELECT " +
                    ti->col_list + " FROM ";
  ti->upsert_set = on_conflict;
  ti->key_in = ti->key + " IN (SELECT jsonb_array_elements_text($1::jsonb)::" + ti->key_type + ")";
  ti->pk_in = "(" + ti->pk_list + ") IN (SELECT " + elems + " FROM jsonb_array_elements($1::jsonb) e)";
  slot = std::move(ti);
  return *slot;
}

bool Copier::prepare(const std::vector<std::string> &targets,
                     const std::vector<std::string> &involved, bool empty_targets,
                     std::string &error) {
  auto sources = moves_.sources();
  if (sources.empty()) {
    error = "no key changes owner";
    return false;
  }
  const std::string &ref = sources.front();
  try {
    for (auto &t : tables_) {
      const TableInfo &ti = info(t); // throws without a primary key
      for (auto &tg : targets) {
        pqxx::work w(conn(tg, kWrite));
        bool exists = !w.exec_params("SELECT to_regclass($1)", t.name)[0][0].is_null();
        if (exists) {
          if (empty_targets &&
              !w.exec("SELECT 1 FROM " + ti.name + " LIMIT 1").empty()) {
            error = "table \"" + t.name + "\" on shard \"" + tg + "\" already has rows";
            return false;
          }
          continue;
        }
        w.commit();
        // The source's definition: columns, primary key, indexes, constraints, owned sequences.
        std::string err;
        auto e = config::parse_endpoint(urls_.at(ref), err);
        std::string cmd = pg_dump_path() + " --schema-only --no-owner --no-privileges --table=" +
                          sh_quote(t.name) + " --dbname=" + sh_quote(e->conninfo()) + " 2>&1";
        FILE *f = popen(cmd.c_str(), "r");
        if (!f) {
          error = "cannot run pg_dump";
          return false;
        }
        std::string ddl;
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
          ddl.append(buf, n);
        int rc = pclose(f);
        if (rc != 0) {
          error = "pg_dump of \"" + t.name + "\" from shard \"" + ref + "\" failed: " +
                  trim_error(ddl);
          return false;
        }
        // psql meta-commands (pg_dump's \restrict/\unrestrict guards) are not SQL.
        std::string sql;
        for (size_t i = 0; i < ddl.size();) {
          size_t j = ddl.find('\n', i);
          if (j == std::string::npos)
            j = ddl.size();
          if (ddl[i] != '\\')
            sql.append(ddl, i, j - i).push_back('\n');
          i = j + 1;
        }
        ddl = std::move(sql);
        // A connection of its own: the dump resets search_path.
        std::string err2;
        auto te = config::parse_endpoint(urls_.at(tg), err2);
        pqxx::connection c(te->conninfo() + " connect_timeout=5");
        pqxx::work dw(c);
        dw.exec(ddl);
        dw.commit();
        log::info("migration_table_created", {{"table", t.name}, {"shard", tg}, {"from", ref}});
      }
    }
    for (auto &s : involved) {
      pqxx::work w(conn(s, kWrite));
      w.exec(kCapture);
      for (auto &t : tables_) {
        const TableInfo &ti = info(t);
        w.exec("DROP TRIGGER IF EXISTS shardgate_capture ON " + ti.name);
        // The WHEN clause skips the copier's own writes before any function call (a bulk
        // COPY into a target would otherwise run the function once per row).
        w.exec("CREATE TRIGGER shardgate_capture AFTER INSERT OR UPDATE OR DELETE ON " +
               ti.name +
               " FOR EACH ROW WHEN (current_setting('shardgate.sync', true) IS DISTINCT FROM "
               "'on') EXECUTE FUNCTION shardgate.capture(" +
               w.quote(t.key) + ")");
      }
      w.commit();
    }
  } catch (const std::exception &e) {
    error = trim_error(e.what());
    return false;
  }
  return true;
}

uint64_t Copier::estimate(const std::vector<std::string> &sources) {
  double rows = 0;
  for (auto &s : sources)
    for (auto &t : tables_) {
      pqxx::work w(conn(s, kRead));
      double n = row_count(w, t.name);
      w.commit();
      rows += n * moves_.moving_share(s);
    }
  return uint64_t(rows);
}

struct Copier::Fetched {
  std::unique_ptr<pqxx::work> src; // holds the page FOR SHARE
  // target -> its rows as COPY text, each line ending in a newline, cut into chunks of about
  // kChunk bytes (one COPY data message each)
  std::map<std::string, std::vector<std::string>> chunks_to;
  Page page;
};

void Copier::FetchedDeleter::operator()(Fetched *f) const { delete f; }

const Copier::Page &Copier::page_of(const Fetched &f) { return f.page; }

void Copier::open(const std::vector<std::string> &sources,
                  const std::vector<std::string> &targets, int workers) {
  for (auto &t : tables_)
    info(t);
  for (int w = 0; w < workers; ++w) {
    for (auto &s : sources) {
      conn(s, page_read_role(w, 0));
      conn(s, page_read_role(w, 1));
    }
    for (auto &t : targets)
      conn(t, page_write_role(w));
  }
}

std::vector<json> Copier::split(const std::string &source, const config::Table &t, int parts) {
  std::vector<json> cuts;
  if (parts < 2)
    return cuts;
  const TableInfo &ti = info(t);
  pqxx::work w(conn(source, kRead));
  double n = row_count(w, t.name);
  if (n < 4.0 * batch_) // a few pages: not worth a second worker
    return cuts;
  // The planner's histogram of the first primary-key column has its quantiles; without one,
  // the index is walked to them.
  auto h = w.exec_params(
      "SELECT a[1 + (array_length(a, 1) - 1) * i / $3] FROM (SELECT s.histogram_bounds::text::"
      "text[] AS a FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename JOIN "
      "pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = s.schemaname WHERE c.oid = "
      "$1::regclass AND s.attname = $2) x, generate_series(1, $3 - 1) i WHERE "
      "array_length(a, 1) > $3 ORDER BY i",
      t.name, ti.pk0_name, parts);
  if (h.size() == size_t(parts - 1)) {
    for (auto row : h)
      cuts.push_back(row[0].c_str());
  } else {
    for (int i = 1; i < parts; ++i) {
      auto q = w.exec("SELECT " + ti.pk[0] + "::text FROM " + ti.name + " ORDER BY " + ti.pk[0] +
                      " OFFSET " + std::to_string(uint64_t(n * i / parts)) + " LIMIT 1");
      if (q.empty())
        break;
      cuts.push_back(q[0][0].c_str());
    }
  }
  w.commit();
  // Equal cuts (a skewed first column) would make empty ranges.
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  return cuts;
}

std::string Copier::range_sql(const TableInfo &ti, const json &range, pqxx::transaction_base &w,
                              bool upto_after) {
  std::string out;
  auto lit = [&](const json &v, size_t i) {
    return w.quote(v.is_string() ? v.get<std::string>() : v.dump()) + "::" + ti.pk_types[i];
  };
  const json lo = range.value("lo", json(nullptr)), hi = range.value("hi", json(nullptr));
  if (!lo.is_null())
    out += " AND " + ti.pk[0] + " >= " + lit(lo, 0);
  if (!hi.is_null())
    out += " AND " + ti.pk[0] + " < " + lit(hi, 0);
  const json after = range.value("after", json(nullptr));
  if (!after.is_null()) {
    std::string tuple;
    for (size_t i = 0; i < ti.pk.size(); ++i)
      tuple += (i ? ", " : "") + lit(after.at(i), i);
    out += " AND (" + ti.pk_list + ") " + (upto_after ? "<=" : ">") + " (" + tuple + ")";
  }
  return out;
}

Copier::FetchedPtr Copier::fetch_page(const std::string &source, const config::Table &t,
                                      const json &range, const json &after, int worker,
                                      int slot) {
  const TableInfo &ti = info(t);
  FetchedPtr f(new Fetched);
  Page &page = f->page;
  // The page stays locked FOR SHARE on the source until every target has committed its copy:
  // a writer of these rows waits, so a target never sees an older image after a newer one.
  // The rows come as COPY text lines (the server escapes them), the moving ones are picked by
  // their key's hash here, and go to their target's COPY unchanged.
  f->src = std::make_unique<pqxx::work>(conn(source, page_read_role(worker, slot)));
  pqxx::work &src = *f->src;
  // COPY takes no parameters: the page's bounds go in as quoted literals.
  json bounds = {{"lo", range.value("lo", json(nullptr))},
                 {"hi", range.value("hi", json(nullptr))},
                 {"after", after}};
  std::string query = "(SELECT " + ti.col_list + " FROM " + ti.name + " WHERE true" +
                      range_sql(ti, bounds, src, false) + " ORDER BY " + ti.pk_list +
                      " LIMIT " + std::to_string(batch_) + " FOR SHARE)";
  auto &chunks_to = f->chunks_to;
  std::string line, last;
  size_t rows = 0;
  {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    pqxx::tablereader rd(src, query); // COPY (query) TO STDOUT
#pragma GCC diagnostic pop
    while (rd.get_raw_line(line)) {
      if (!line.empty() && line.back() == '\n')
        line.pop_back();
      ++rows;
      last = line;
      auto key = copy_field(line, ti.key_col);
      if (!key) // a NULL key has no owner: it stays where it is
        continue;
      auto h = moves_.hash_of(t.key_type, *key);
      if (!h || moves_.before(*h) != source || !moves_.moves(*h))
        continue;
      auto &chunks = chunks_to[moves_.after(*h)];
      if (chunks.empty() || chunks.back().size() >= kChunk) {
        chunks.emplace_back();
        chunks.back().reserve(kChunk + 256);
      }
      chunks.back().append(line).push_back('\n');
      page.copied++;
    }
    rd.complete();
  }
  page.done = rows < batch_;
  if (rows == 0) {
    page.last = after;
  } else {
    page.last = json::array();
    for (size_t c : ti.pk_cols)
      page.last.push_back(copy_field(last, c).value_or(""));
  }
  page.worker = worker;
  return f;
}

Copier::Page Copier::write_page(const config::Table &t, Fetched &f) {
  const TableInfo &ti = info(t);
  for (auto &[target, chunks] : f.chunks_to) {
    Conn &c = conn(target, page_write_role(f.page.worker));
    // Straight into the table. The target holds none of the page's rows, unless a run that
    // died copied this page before its journal said so: then the COPY fails on the primary
    // key (nothing is written), and the page goes again in a new transaction, through a
    // staging table and an upsert. (The drain leaves rows the backfill has not reached alone;
    // see drain().)
    try {
      pqxx::work dst(c);
      {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        pqxx::tablewriter in(dst, ti.name, ti.cols.begin(), ti.cols.end());
#pragma GCC diagnostic pop
        for (auto &c : chunks)
          in.write_raw_line(c); // several lines: its last newline goes, and is added back
        in.complete();
      }
      dst.commit();
      continue;
    } catch (const pqxx::unique_violation &) {
    }
    {
      pqxx::work dst(c);
      size_t idx = 0; // the table's place in the config: a stable, valid identifier
      while (idx + 1 < tables_.size() && tables_[idx].name != t.name)
        ++idx;
      std::string stage = "sg_stage_" + std::to_string(idx);
      if (!c.staged.count(stage)) {
        dst.exec("CREATE TEMP TABLE IF NOT EXISTS " + stage + " (LIKE " + ti.name +
                 ") ON COMMIT DELETE ROWS");
        c.staged.insert(stage);
      }
      {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        pqxx::tablewriter in(dst, stage, ti.cols.begin(), ti.cols.end());
#pragma GCC diagnostic pop
        for (auto &c : chunks)
          in.write_raw_line(c);
        in.complete();
      }
      dst.exec(ti.upsert_from + stage + ti.upsert_set);
      dst.commit();
    }
  }
  f.src->commit(); // the page's locks go only now
  f.src.reset();
  return f.page;
}

uint64_t Copier::sync_keys(const std::string &from, const std::string &to,
                           const config::Table &t, const std::vector<std::string> &keys,
                           const nlohmann::ordered_json *backfill) {
  const TableInfo &ti = info(t);
  std::string karr = json(keys).dump();
  // While the backfill runs, only the rows it has copied already (in each of its ranges, up
  // to the end of the last page written) are copied here; the rest are its to copy, under
  // their page's lock. The target's rows are deleted and written within the same bounds:
  // past them the target may hold a page in flight (its COPY not yet committed) or rows the
  // proxies' dual-write put there, and touching those would make this transaction and the
  // page's wait on each other (a deadlock, while the page keeps its source rows locked).
  pqxx::work src(conn(from, kSync));
  std::string cover;
  if (backfill) {
    json p = json::parse(
        backfill->value(t.name + "@" + from, nlohmann::ordered_json::object()).dump());
    json ranges = p.contains("ranges") ? p["ranges"] : json::array({p});
    std::string terms;
    bool whole = false;
    for (auto &r : ranges) {
      std::string c;
      if (r.value("done", false))
        c = range_sql(ti, {{"lo", r.value("lo", json(nullptr))}, {"hi", r.value("hi", json(nullptr))}},
                      src, true);
      else if (!r.value("after", json(nullptr)).is_null())
        c = range_sql(ti, r, src, true);
      else
        continue; // nothing copied in this range yet
      if (c.empty())
        whole = true;
      terms += std::string(terms.empty() ? "" : " OR ") + "(true" + c + ")";
    }
    if (!whole)
      cover = terms.empty() ? " AND false" : " AND (" + terms + ")";
  }
  std::string q = "SELECT row_to_json(x)::text FROM " + ti.name + " x WHERE " + ti.key_in +
                  cover + " FOR SHARE";
  auto r = src.exec_params(q, karr);
  std::string arr = "[";
  for (auto row : r)
    arr += (arr.size() > 1 ? "," : "") + std::string(row[0].c_str());
  arr += "]";
  pqxx::work dst(conn(to, kWrite));
  dst.exec_params("DELETE FROM " + ti.name + " WHERE " + ti.key_in + cover, karr);
  if (!r.empty())
    dst.exec_params(ti.upsert, arr);
  dst.commit();
  src.commit();
  return keys.size();
}

Copier::DrainResult Copier::drain(const std::vector<std::string> &shards, bool reverse, bool full,
                                  const nlohmann::ordered_json *backfill) {
  DrainResult d;
  // Tests only: SHARDGATE_TEST_NO_DRAIN=1 leaves the change log alone, so that what reaches
  // the other side can only be the proxies' dual-write (or the backfill and VERIFY).
  static const bool off = std::getenv("SHARDGATE_TEST_NO_DRAIN") != nullptr;
  if (off)
    return d;
  while (true) {
    bool any = false;
    for (auto &s : shards) {
      pqxx::result r;
      {
        pqxx::work w(conn(s, kWrite));
        if (w.exec("SELECT to_regclass('shardgate.changes')")[0][0].is_null())
          continue; // capture removed already (a cleanup resumed after it)
        r = w.exec("SELECT id, tbl, key FROM shardgate.changes ORDER BY id LIMIT 5000");
        w.commit();
      }
      if (r.empty())
        continue;
      any = true;
      // key sets per (table, destination)
      std::map<std::pair<size_t, std::string>, std::set<std::string>> todo;
      std::vector<int64_t> ids;
      for (auto row : r) {
        ids.push_back(row[0].as<int64_t>());
        std::string tbl = row[1].c_str();
        size_t ti = tables_.size();
        for (size_t i = 0; i < tables_.size(); ++i)
          if (tables_[i].name == tbl)
            ti = i;
        if (ti == tables_.size() || row[2].is_null())
          continue;
        auto h = moves_.hash_of(tables_[ti].key_type, row[2].c_str());
        if (!h)
          continue;
        const std::string &owner_now = reverse ? moves_.after(*h) : moves_.before(*h);
        const std::string &other = reverse ? moves_.before(*h) : moves_.after(*h);
        if (owner_now == other)
          continue; // a key that does not move
        if (owner_now != s) {
          // A write on the side that does not own the key: after the flip, on its old owner
          // (a proxy that had not seen the flip, or a client bypassing the proxies).
          if (reverse && moves_.before(*h) == s)
            d.stale_writes++;
          continue;
        }
        todo[{ti, other}].insert(row[2].c_str());
      }
      for (auto &[k, keys] : todo) {
        std::vector<std::string> v(keys.begin(), keys.end());
        d.keys_synced += sync_keys(s, k.second, tables_[k.first], v, reverse ? nullptr : backfill);
      }
      pqxx::work w(conn(s, kWrite));
      w.exec_params("DELETE FROM shardgate.changes WHERE id IN (SELECT "
                    "jsonb_array_elements_text($1::jsonb)::bigint)",
                    json(ids).dump());
      w.commit();
    }
    if (!full || !any)
      break;
  }
  if (d.stale_writes)
    log::warn("migration_stale_writes",
              {{"writes", std::to_string(d.stale_writes)},
               {"detail", "writes to moved keys reached their old owner after the cutover (a "
                          "client bypassing the proxies?); they are not copied"}});
  return d;
}

Copier::Verify Copier::verify(const std::vector<std::string> &sources) {
  Verify v;
  for (auto &src : sources)
    for (auto &t : tables_) {
      const TableInfo &ti = info(t);
      json after = nullptr;
      while (true) {
        std::string sql =
            "SELECT " + ti.key_pk + ", md5(row_to_json(x)::text) AS sg_md5 FROM " + ti.name + " x";
        pqxx::result r;
        {
          pqxx::work w(conn(src, kRead));
          if (after.is_null())
            r = w.exec(sql + " ORDER BY " + ti.pk_list + " LIMIT " + std::to_string(batch_));
          else
            r = w.exec_params(sql + " WHERE " + ti.after + " ORDER BY " + ti.pk_list +
                                  " LIMIT " + std::to_string(batch_),
                              after.dump());
          w.commit();
        }
        bool last_page = r.size() < batch_;
        json upto = r.empty() ? json(nullptr) : json::parse(r[r.size() - 1][1].c_str());
        // Expected per target: pk -> (key, md5)
        std::map<std::string, std::map<std::string, std::pair<std::string, std::string>>> want;
        for (auto row : r) {
          auto h = moves_.hash_of(t.key_type, row[0].c_str());
          if (!h || moves_.before(*h) != src || !moves_.moves(*h))
            continue;
          want[moves_.after(*h)][row[1].c_str()] = {row[0].c_str(), row[2].c_str()};
          v.rows_checked++;
        }
        for (auto &tg : moves_.targets()) {
          pqxx::work w(conn(tg, kRead));
          pqxx::result tr;
          std::string q = sql;
          if (!after.is_null() && !last_page)
            tr = w.exec_params(q + " WHERE " + ti.after + " AND " + ti.upto, after.dump(),
                               upto.dump());
          else if (!after.is_null())
            tr = w.exec_params(q + " WHERE " + ti.after, after.dump());
          else if (!last_page)
            tr = w.exec_params(q + " WHERE " + ti.upto1, upto.dump());
          else
            tr = w.exec(q);
          w.commit();
          auto &exp = want[tg];
          std::set<std::string> bad;
          std::set<std::string> seen;
          for (auto row : tr) {
            auto h = moves_.hash_of(t.key_type, row[0].c_str());
            if (!h || moves_.before(*h) != src || moves_.after(*h) != tg)
              continue;
            std::string pk = row[1].c_str();
            seen.insert(pk);
            auto it = exp.find(pk);
            if (it == exp.end() || it->second.second != row[2].c_str())
              bad.insert(row[0].c_str()); // on the target only, or different
          }
          for (auto &[pk, km] : exp)
            if (!seen.count(pk))
              bad.insert(km.first); // missing on the target
          // A pk may appear in the target's range while the source row changed in between:
          // copying the key again is right either way.
          if (!bad.empty()) {
            v.mismatches += bad.size();
            // The page's upto covers ranges past the last source row on the last page only.
            v.repaired += sync_keys(src, tg, t, std::vector<std::string>(bad.begin(), bad.end()));
          }
        }
        if (last_page)
          break;
        after = upto;
      }
    }
  return v;
}

std::unique_ptr<Copier::Freeze> Copier::freeze(const std::vector<std::string> &shards,
                                               uint64_t fence_epoch, uint32_t timeout_ms,
                                               std::string &why) {
  auto f = std::make_unique<Freeze>();
  std::string list;
  for (auto &t : tables_)
    list += (list.empty() ? "" : ", ") + info(t).name;
  try {
    for (auto &s : shards) {
      std::string err;
      auto e = config::parse_endpoint(urls_.at(s), err);
      auto c = std::make_unique<Conn>(e->conninfo() + " connect_timeout=2");
      pqxx::nontransaction w(*c);
      // The fence first (a sequence: in force at once, whatever becomes of this transaction):
      // a write routed before the pause that reaches this shard from now on is refused; one
      // that got here before has its table lock, and the LOCK below waits for it.
      w.exec("SELECT setval('shardgate.fence', greatest(" + std::to_string(fence_epoch) +
             ", last_value)) FROM shardgate.fence");
      w.exec("BEGIN");
      w.exec("SET LOCAL lock_timeout = '" + std::to_string(std::max<uint32_t>(1, timeout_ms)) +
             "ms'");
      w.exec("LOCK TABLE " + list + " IN SHARE MODE");
      f->conns.push_back(std::move(c));
    }
  } catch (const std::exception &e) {
    why = "writers of the moving keys did not finish in time (" + trim_error(e.what()) + ")";
    return nullptr;
  }
  return f;
}

void Copier::uncapture(const std::vector<std::string> &shards) {
  for (auto &s : shards) {
    pqxx::work w(conn(s, kWrite));
    for (auto &t : tables_)
      w.exec("DROP TRIGGER IF EXISTS shardgate_capture ON " + w.quote_name(t.name));
    w.exec("DROP TABLE IF EXISTS shardgate.changes");
    w.exec("DROP FUNCTION IF EXISTS shardgate.capture()");
    w.exec("DROP SEQUENCE IF EXISTS shardgate.fence");
    w.commit();
  }
}

uint64_t Copier::delete_moved(const std::vector<std::string> &shards, bool from_before) {
  uint64_t deleted = 0;
  for (auto &s : shards)
    for (auto &t : tables_) {
      const TableInfo &ti = info(t);
      {
        pqxx::work w(conn(s, kWrite));
        if (w.exec_params("SELECT to_regclass($1)", t.name)[0][0].is_null())
          continue; // an abort in PREPARE, before the table was made there
      }
      json after = nullptr;
      while (true) {
        pqxx::work w(conn(s, kWrite));
        std::string sql = "SELECT " + ti.key_pk + " FROM " + ti.name + " x";
        pqxx::result r =
            after.is_null()
                ? w.exec(sql + " ORDER BY " + ti.pk_list + " LIMIT " + std::to_string(batch_))
                : w.exec_params(sql + " WHERE " + ti.after + " ORDER BY " + ti.pk_list +
                                    " LIMIT " + std::to_string(batch_),
                                after.dump());
        json gone = json::array();
        for (auto row : r) {
          auto h = moves_.hash_of(t.key_type, row[0].c_str());
          if (!h || !moves_.moves(*h))
            continue;
          bool drop = from_before ? moves_.before(*h) == s : moves_.after(*h) == s;
          if (drop)
            gone.push_back(json::parse(row[1].c_str()));
        }
        if (!gone.empty())
          deleted += w.exec_params("DELETE FROM " + ti.name + " WHERE " + ti.pk_in, gone.dump())
                         .affected_rows();
        w.commit();
        if (r.size() < batch_)
          break;
        after = json::parse(r[r.size() - 1][1].c_str());
      }
    }
  return deleted;
}

} // namespace sg::migrations

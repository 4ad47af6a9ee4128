// A read of a sharded table without a usable key (router::TargetKind::scatter): the statement
// runs on every shard that owns keys, at once, and executor::Merge / executor::combine make the
// one answer the client gets. Simple protocol, outside a transaction block.
//
// Each shard's answer is read frame by frame: RowDescription first (they must agree), then
// DataRows as the merge needs them (a shard is read only while the merge wants its rows, so
// memory stays bounded), CommandComplete, ReadyForQuery. Any shard's error ends the statement
// with one ErrorResponse naming that shard; the others are read to their end and discarded.
#include "proxy/session.h"

#include "executor/aggregate.h"
#include "executor/having.h"
#include "executor/merge.h"
#include "proxy/errors.h"
#include "proxy/session_util.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <functional>

namespace sg::proxy {

namespace {

// Text types whose order depends on the collation: merged byte by byte only under COLLATE "C".
bool collated(uint32_t oid) {
  return oid == 25 || oid == 1043 || oid == 1042;
}

std::string lowered(std::string s) {
  for (auto &c : s)
    c = char(std::tolower(uint8_t(c)));
  return s;
}

std::optional<uint64_t> const_uint(std::string_view sql, const router::ScanResult &scan,
                                   int32_t idx) {
  if (idx < 0 || size_t(idx) >= scan.consts.size())
    return std::nullopt;
  const auto &c = scan.consts[size_t(idx)];
  std::string_view t = sql.substr(c.start, c.end - c.start);
  uint64_t v = 0;
  auto r = std::from_chars(t.data(), t.data() + t.size(), v);
  if (r.ec != std::errc() || r.ptr != t.data() + t.size())
    return std::nullopt;
  return v;
}

// A LIMIT or OFFSET parameter's value in the client's Bind: as PostgreSQL reads an integer
// (text with spaces and a sign around its digits; binary int2, int4 or int8). NULL: nullopt
// with `readable` true; something else (a fraction, another type): `readable` false.
std::optional<int64_t> bind_integer(const protocol::BindMsg &b, int32_t number, bool &readable) {
  readable = false;
  if (number < 1 || size_t(number) > b.params.size())
    return std::nullopt;
  const auto &v = b.params[size_t(number - 1)];
  if (!v) {
    readable = true;
    return std::nullopt;
  }
  std::string_view t = *v;
  if (protocol::bind_param_format(b, size_t(number - 1)) == 1) {
    if (t.size() != 2 && t.size() != 4 && t.size() != 8)
      return std::nullopt;
    uint64_t u = 0;
    for (char c : t)
      u = (u << 8) | uint8_t(c);
    int shift = int(64 - 8 * t.size());
    readable = true;
    return shift ? int64_t(u << shift) >> shift : int64_t(u);
  }
  auto space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  while (!t.empty() && space(t.front()))
    t.remove_prefix(1);
  while (!t.empty() && space(t.back()))
    t.remove_suffix(1);
  bool neg = !t.empty() && t.front() == '-';
  if (!t.empty() && (t.front() == '-' || t.front() == '+'))
    t.remove_prefix(1);
  uint64_t u = 0;
  auto r = std::from_chars(t.data(), t.data() + t.size(), u);
  if (t.empty() || r.ec != std::errc() || r.ptr != t.data() + t.size() ||
      u > uint64_t(INT64_MAX) + (neg ? 1 : 0))
    return std::nullopt;
  readable = true;
  return neg ? int64_t(0 - u) : int64_t(u);
}

} // namespace

// One scatter's shards and what each has answered so far.
struct Session::Scatter {
  std::vector<size_t> shards;
  std::vector<BackendConn *> bs;
  std::vector<int> swallow; // settings queries in front of the statement (-1: lost)
  std::vector<bool> at_rfq;
  protocol::ErrorInfo failure; // the first thing that went wrong
  std::string failed_on;       // its shard ("-": the proxy's own refusal)
  char type = 0;               // the last frame read
  std::string body;
  void fail(const std::string &shard, protocol::ErrorInfo e) {
    if (failed_on.empty()) {
      failure = std::move(e);
      failed_on = shard;
    }
  }
};

// Shard i's next frame of the statement's answer (the settings' answers before it are
// swallowed). False when its connection is lost.
Task<bool> Session::scatter_next(Scatter &s, size_t i) {
  for (;;) {
    // co_await as a statement throughout: GCC 12 miscompiles it inside a condition.
    bool got = co_await next_frame(*s.bs[i], s.type, s.body);
    if (!got) {
      s.fail(sh_.shard_name(s.shards[i]),
             {"ERROR", "08006", "connection to the shard lost", "", ""});
      s.at_rfq[i] = true;
      co_return false;
    }
    if (s.type == 'E')
      s.fail(sh_.shard_name(s.shards[i]), protocol::parse_error_response(s.body));
    if (s.type == 'Z')
      s.bs[i]->tx_status = s.body.empty() ? 'I' : s.body[0];
    if (s.swallow[i] > 0) {
      if (s.type == 'Z')
        --s.swallow[i];
      continue;
    }
    if (s.type == 'Z')
      s.at_rfq[i] = true;
    co_return true;
  }
}

// The next whole frame from b, waiting for it. False when the connection is lost.
Task<bool> Session::next_frame(BackendConn &b, char &type, std::string &body) {
  for (;;) {
    auto f = protocol::decode_frame(b.rbuf.data(), b.rbuf.size(), 1u << 30);
    if (f.status == protocol::DecodeStatus::ready) {
      type = char(f.type);
      body.assign(f.body_view());
      b.rbuf.consume(f.frame_len);
      co_return true;
    }
    if (f.status != protocol::DecodeStatus::need_more) {
      on_backend_lost(b);
      co_return false;
    }
    for (;;) {
      ReadStep r = read_backend(b);
      if (r == ReadStep::failed)
        co_return false;
      if (r == ReadStep::got)
        break;
      co_await b.sock.wait(Poller::in); // as a statement: see read_some in poller.h
    }
  }
}

Task<bool> Session::scatter_read(const router::PlannedText &pt, const std::string &sql,
                                 const ExtendedRead *x) {
  const router::StatementPlan &p = pt.analysis->stmts[0];
  const router::ScatterSpec &spec = *p.scatter;
  const Placement &place = w_->place();
  // The shards of the statement's keys, or every shard that owns keys now (not one joining:
  // its rows are copies until the cutover).
  std::vector<size_t> shards;
  if (scatter_shards_) {
    for (size_t b = 0; b < 64; ++b)
      if (scatter_shards_ & (uint64_t(1) << b))
        shards.push_back(b);
  } else {
    shards.assign(place.keys->ring_shard.begin(), place.keys->ring_shard.end());
  }
  std::sort(shards.begin(), shards.end());
  shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
  const size_t n = shards.size();

  // Each shard gets LIMIT n + m and OFFSET 0; the proxy applies both to the merged rows.
  std::optional<uint64_t> limit = const_uint(sql, pt.scan, spec.limit_const);
  uint64_t offset = const_uint(sql, pt.scan, spec.offset_const).value_or(0);
  std::string shard_sql = sql;
  std::vector<router::ScatterSpec::Edit> edits = spec.edits; // avg(x): sum(x), count(x); HAVING
  std::vector<uint32_t> shard_types = x ? *x->types : std::vector<uint32_t>{};
  {
    // Parameters (LIMIT $1 OFFSET $2): their values from the Bind. One the text no longer
    // names is declared bigint in the shards' Parse, as PostgreSQL infers it. A negative
    // value stays a parameter: every shard refuses it as PostgreSQL does. NULL is no limit
    // (LIMIT) or 0 (OFFSET), the same on the shards.
    std::optional<uint64_t> limit_p, offset_p;
    for (auto *pp : {&spec.limit_param, &spec.offset_param}) {
      if (!pp->number)
        continue;
      bool readable = false;
      auto v = x ? bind_integer(*x->bind, pp->number, readable) : std::nullopt;
      if (!readable) {
        error("0A000",
              "cross-shard SELECT with a LIMIT or OFFSET parameter the proxy cannot read as an "
              "integer is not supported",
              "send $" + std::to_string(pp->number) + " as an integer (int2, int4 or int8)");
        if (in_tx())
          fail_transaction_by_proxy();
        ready();
        co_return true;
      }
      if (v && *v >= 0) {
        (pp == &spec.limit_param ? limit_p : offset_p) = uint64_t(*v);
        if (shard_types.size() < size_t(pp->number))
          shard_types.resize(size_t(pp->number), 0);
        if (shard_types[size_t(pp->number - 1)] == 0)
          shard_types[size_t(pp->number - 1)] = 20; // int8
      }
    }
    if (spec.limit_param.number)
      limit = limit_p;
    if (spec.offset_param.number)
      offset = offset_p.value_or(0);
    auto at = [&](int32_t i, std::string text) {
      const auto &c = pt.scan.consts[size_t(i)];
      edits.push_back({c.start, c.end, std::move(text)});
    };
    // Grouped: a shard's first groups are not the first of all, so every group comes back.
    std::string shard_limit =
        spec.grouped || !limit ? std::string("ALL") : std::to_string(*limit + offset);
    if (limit && spec.limit_const >= 0)
      at(spec.limit_const, shard_limit);
    if (limit_p)
      edits.push_back({spec.limit_param.start, spec.limit_param.end, shard_limit});
    if (spec.offset_const >= 0 && const_uint(sql, pt.scan, spec.offset_const))
      at(spec.offset_const, "0");
    if (offset_p)
      edits.push_back({spec.offset_param.start, spec.offset_param.end, "0"});
    std::sort(edits.begin(), edits.end(), [](auto &a, auto &b) { return a.start > b.start; });
    for (auto &e : edits)
      shard_sql.replace(e.start, e.end - e.start, e.text);
  }

  // An IN list of keys: each shard gets only its own items. Parameters ($n) a shard's text
  // no longer names are declared with the key's type in its Parse, as PostgreSQL infers them
  // from the key column.
  std::vector<std::string> shard_sqls(n, shard_sql);
  if (p.in_items.second > p.in_items.first && scatter_shards_) {
    std::vector<size_t> owners;
    std::vector<router::ParamValue> params;
    if (x)
      for (size_t i = 0; i < x->bind->params.size(); ++i)
        params.push_back({x->bind->params[i], protocol::bind_param_format(*x->bind, i)});
    sh_.router.resolve(p, sql, pt.scan, params, w_->place().keys.get(), true, &owners);
    bool any_param = std::any_of(p.keys.begin(), p.keys.end(), [](auto &k) { return k.is_param; });
    if (any_param && !x)
      owners.clear(); // (cannot be: a simple query has no parameters)
    if (owners.size() == p.keys.size() && any_param) {
      static constexpr uint32_t kOid[] = {20, 23, 21, 25, 2950}; // config::KeyType's order
      uint32_t oid = kOid[size_t(sh_.cfg.tables[size_t(p.table)].key_type)];
      for (const auto &k : p.keys) {
        if (!k.is_param)
          continue;
        if (shard_types.size() < size_t(k.index))
          shard_types.resize(size_t(k.index), 0);
        if (shard_types[size_t(k.index - 1)] == 0)
          shard_types[size_t(k.index - 1)] = oid;
      }
    }
    if (owners.size() == p.keys.size()) {
      for (size_t i = 0; i < n; ++i) {
        std::string items;
        for (size_t k = 0; k < owners.size(); ++k)
          if (owners[k] == shards[i]) {
            std::string item;
            if (p.keys[k].is_param) {
              item = "$" + std::to_string(p.keys[k].index);
            } else {
              const auto &c = pt.scan.consts[size_t(p.keys[k].index)];
              item = sql.substr(c.start, c.end - c.start);
            }
            items += (items.empty() ? "" : ", ") + item;
          }
        if (items.empty())
          continue; // (cannot be: only the keys' owners run it)
        std::vector<router::ScatterSpec::Edit> mine = edits;
        mine.push_back({p.in_items.first, p.in_items.second, std::move(items)});
        std::sort(mine.begin(), mine.end(), [](auto &a, auto &b) { return a.start > b.start; });
        shard_sqls[i] = sql;
        for (auto &e : mine)
          shard_sqls[i].replace(e.start, e.end - e.start, e.text);
      }
    }
  }

  auto started = std::chrono::steady_clock::now();
  // Backends, settings, the statement.
  Scatter s;
  s.shards = shards;
  s.bs.assign(n, nullptr);
  s.swallow.assign(n, 0);
  s.at_rfq.assign(n, false);
  auto &bs = s.bs;
  auto &swallow = s.swallow;
  auto &at_rfq = s.at_rfq;
  auto &type = s.type;
  auto &body = s.body;
  exp_.clear();
  // Inside a transaction block the read runs in the transaction, on every shard's primary:
  // a shard it has not touched yet begins it first (as a statement on a new shard does).
  const bool in_tx_read = in_tx();
  for (size_t i = 0; i < n; ++i) {
    bs[i] = co_await attach(shards[i], !in_tx_read);
    if (!bs[i]) { // unreachable() said why; nothing was sent yet
      detach_if_idle();
      if (in_tx_read)
        fail_transaction_by_proxy();
      ready();
      co_return true;
    }
  }
  if (!spec.functions.empty()) {
    // A user-defined aggregate looks like any function to the planner: the first shard's
    // catalog says (its per-shard results would be concatenated, so it is refused).
    std::string names;
    for (auto &f : spec.functions) {
      names += names.empty() ? "'" : ", '";
      for (char c : f)
        names += c == '\'' ? std::string("''") : std::string(1, c);
      names += "'";
    }
    protocol::ErrorInfo err;
    auto rows = co_await catalog_rows(
        *bs[0],
        "SELECT proname FROM pg_proc WHERE prokind = 'a' AND proname IN (" + names + ") LIMIT 1",
        err);
    std::string found;
    bool ok = rows.has_value();
    if (ok && !rows->empty() && !rows->front().empty() && rows->front()[0])
      found = *rows->front()[0];
    if (!ok || !found.empty()) {
      if (ok)
        error("0A000", "cross-shard SELECT with the aggregate " + found + "() is not supported yet",
              "add the shard key to the WHERE clause to run it on one shard; across shards "
              "only count, sum, min, max and avg are combined");
      else
        error("08006", "lost the connection to shard \"" + sh_.shard_name(shards[0]) + "\"");
      detach_if_idle();
      if (in_tx_read)
        fail_transaction_by_proxy();
      ready();
      co_return true;
    }
  }
  if (cancel_) { // a CancelRequest now reaches every shard's backend
    std::vector<CancelSlot::Target> targets;
    for (auto *b : bs)
      targets.push_back({b->node, b->pid, b->key});
    cancel_->set_many(std::move(targets));
  }
  for (size_t i = 0; i < n; ++i) {
    wbuf_.clear();
    if (in_tx_read) {
      size_t sh = shards[i];
      if (tx_shard_ >= 0 && !(tx_shards_ & (uint64_t(1) << sh)))
        deferred_ = join_text();
      prepare_backend(*bs[i], wbuf_); // the transaction's BEGIN first, where it is new
      bind_tx(int(sh));
    } else {
      prepare_backend(*bs[i], wbuf_, false);
    }
    swallow[i] = int(exp_.size());
    exp_.clear();
    if (x) { // the client's Bind, on the statement as each shard runs it (LIMIT n+m)
      protocol::parse(wbuf_, "", shard_sqls[i], shard_types);
      protocol::rewrite_bind(wbuf_, *x->bind, x->bind_body, "");
      protocol::Writer(wbuf_, 'D').u8('P').cstr(x->bind->portal).finish();
      protocol::Writer(wbuf_, 'E').cstr(x->bind->portal).i32(0).finish();
      protocol::Writer(wbuf_, 'S').finish();
    } else {
      protocol::query(wbuf_, shard_sqls[i]);
    }
    bs[i]->unnamed_owner = 0;
    ErrorCode ec;
    co_await write_all(bs[i]->sock, wbuf_, ec);
    if (ec) {
      on_backend_lost(*bs[i]);
      swallow[i] = -1; // nothing to read from it
    }
  }

  // What went wrong first, and on which shard; the rest is read to its end and discarded.
  auto &failure = s.failure;
  auto &failed_on = s.failed_on;
  auto fail = [&](size_t i, protocol::ErrorInfo e) {
    s.fail(sh_.shard_name(shards[i]), std::move(e));
  };
  for (size_t i = 0; i < n; ++i)
    if (swallow[i] < 0) {
      fail(i, {"ERROR", "08006", "connection to the shard lost", "", ""});
      at_rfq[i] = true;
    }

  // Every shard's RowDescription.
  std::vector<std::vector<protocol::RowColumn>> descs(n);
  std::string first_desc;
  for (size_t i = 0; i < n && failed_on.empty(); ++i) {
    while (!at_rfq[i] && failed_on.empty()) {
      bool got = co_await scatter_next(s, i);
      if (!got || type == 'E')
        break;
      if (type == 'T') {
        if (!protocol::parse_row_description(body, descs[i]))
          fail(i, {"ERROR", "08P01", "malformed RowDescription", "", ""});
        if (i == 0 && (!x || x->describe))
          protocol::Writer(first_desc, 'T').raw(body).finish();
        break;
      }
      if (type == 'C' || type == 'Z')
        fail(i, {"ERROR", "XX000", "the statement returned no rows description", "", ""});
    }
  }
  for (size_t i = 1; i < n && failed_on.empty(); ++i) {
    bool same = descs[i].size() == descs[0].size();
    for (size_t c = 0; same && c < descs[0].size(); ++c)
      same =
          descs[i][c].type_oid == descs[0][c].type_oid && descs[i][c].format == descs[0][c].format;
    if (!same)
      fail(i, {"ERROR", "42804",
               "the shards answered with different column types (is the table's definition the "
               "same on every shard?)",
               "", ""});
  }

  auto unsupported = [&](const std::string &msg, const std::string &hint) {
    failure = {"ERROR", "0A000", msg, "", hint};
    failed_on = "-";
  };
  // The client's columns: the shards', except that each avg(x) came as two, its sum and count
  // (shard_col: a client column's first column in the shards' rows).
  const auto &shard_cols = descs[0];
  std::vector<protocol::RowColumn> cols;
  std::vector<size_t> shard_col;
  // reshaped: the shards were sent another SELECT list (avg split in two, HAVING's hidden columns).
  const bool reshaped = !spec.edits.empty();
  if (failed_on.empty()) {
    size_t want = spec.aggs.empty() ? shard_cols.size() : spec.aggs.size();
    for (auto a : spec.aggs)
      want += a == router::ScatterSpec::Agg::avg;
    if (want != shard_cols.size()) {
      unsupported("cross-shard aggregates: the shards answered " +
                      std::to_string(shard_cols.size()) + " columns",
                  "");
    } else if (!reshaped) {
      cols = shard_cols;
      for (size_t c = 0; c < cols.size(); ++c)
        shard_col.push_back(c);
    } else {
      for (size_t c = 0, k = 0; c < spec.aggs.size(); ++c) {
        shard_col.push_back(k);
        if (spec.aggs[c] == router::ScatterSpec::Agg::avg) {
          if (shard_cols[k].format != 0)
            unsupported("cross-shard avg() in binary format is not supported yet",
                        "ask for text results, or add the shard key to the WHERE clause");
          // numeric, as avg of smallint, integer, bigint and numeric is
          cols.push_back({spec.avg_names[c], 0, 0, 1700, -1, -1, shard_cols[k].format});
          k += 2;
        } else {
          cols.push_back(shard_cols[k++]);
        }
      }
      if (!first_desc.empty()) { // the client's columns: without the HAVING's hidden ones
        first_desc.clear();
        protocol::row_description(
            first_desc, std::vector<protocol::RowColumn>(cols.begin(), cols.end() - spec.hidden));
      }
    }
  }
  // The merge's keys, from the client's columns.
  std::vector<executor::SortKey> keys;
  std::vector<executor::AggSpec> aggs; // per column of the shards' rows
  // Values are read as PostgreSQL prints them by default: dates in DateStyle ISO, floats with
  // every digit (extra_float_digits >= 1). A session that changed either cannot merge on them.
  auto setting = [&](const std::string &name) -> std::optional<std::string> {
    if (auto it = settings_.find(name); it != settings_.end())
      return lowered(it->second);
    for (auto &[k, v] : startup_params_)
      if (lowered(k) == name)
        return lowered(v);
    return std::nullopt;
  };
  auto ds = setting("datestyle");
  bool iso_dates = !ds || ds->find("iso") != std::string::npos;
  auto efd = setting("extra_float_digits");
  bool exact_floats = true;
  if (efd) { // "SET extra_float_digits TO E'3'", or the bare value: its last number
    size_t end = efd->find_last_of("0123456789");
    size_t begin = end == std::string::npos ? end : efd->find_last_not_of("0123456789", end);
    begin = begin == std::string::npos ? 0 : begin + 1;
    bool negative = begin > 0 && (*efd)[begin - 1] == '-';
    exact_floats = end != std::string::npos && !negative &&
                   std::stoi(efd->substr(begin, end - begin + 1)) >= 1;
  }
  if (failed_on.empty()) {
    for (auto &o : spec.order) {
      size_t col = SIZE_MAX;
      if (o.position > 0) {
        col = size_t(o.position - 1);
      } else {
        for (size_t c = 0; c + spec.hidden < cols.size(); ++c)
          if (cols[c].name == o.name) {
            if (col != SIZE_MAX) {
              col = SIZE_MAX - 1; // twice: ambiguous
              break;
            }
            col = c;
          }
      }
      if (col >= cols.size()) {
        unsupported("cross-shard ORDER BY \"" + o.name +
                        "\" must name exactly one column of the SELECT list",
                    "select the column you order by");
        break;
      }
      executor::Kind k = executor::kind_of(cols[col].type_oid, cols[col].format);
      if (k == executor::Kind::Unsupported) {
        unsupported("cross-shard ORDER BY on column \"" + cols[col].name + "\" of type oid " +
                        std::to_string(cols[col].type_oid) + " is not supported yet",
                    "order by a number, date, timestamp, uuid, or text with COLLATE \"C\"");
        break;
      }
      bool dates = k == executor::Kind::Date || k == executor::Kind::Timestamp ||
                   k == executor::Kind::TimestampTz;
      if ((dates && !iso_dates) || (k == executor::Kind::Float && !exact_floats)) {
        unsupported("cross-shard ORDER BY on column \"" + cols[col].name +
                        "\" needs DateStyle ISO and extra_float_digits of at least 1 (the "
                        "defaults)",
                    "RESET DateStyle and extra_float_digits for this query, or add the shard key "
                    "to the WHERE clause");
        break;
      }
      if (collated(cols[col].type_oid) && !o.collate_c) {
        unsupported("cross-shard ORDER BY on text column \"" + cols[col].name +
                        "\" needs COLLATE \"C\"",
                    "write ORDER BY " + cols[col].name +
                        " COLLATE \"C\": the proxy merges the shards' rows byte by byte");
        break;
      }
      keys.push_back({col, k, o.desc, o.nulls_first});
    }
    if (failed_on.empty() && !spec.aggs.empty()) {
      {
        for (size_t c = 0; c < spec.aggs.size() && failed_on.empty(); ++c) {
          executor::AggSpec a;
          const auto &sc = shard_cols[shard_col[c]];
          a.kind = executor::kind_of(sc.type_oid, sc.format);
          switch (spec.aggs[c]) {
          case router::ScatterSpec::Agg::count:
            a.agg = executor::Agg::Count;
            break;
          case router::ScatterSpec::Agg::sum:
          case router::ScatterSpec::Agg::avg: // its sum, then its count
            a.agg = executor::Agg::Sum;
            break;
          case router::ScatterSpec::Agg::min:
            a.agg = executor::Agg::Min;
            break;
          case router::ScatterSpec::Agg::max:
            a.agg = executor::Agg::Max;
            break;
          case router::ScatterSpec::Agg::group:
            a.agg = executor::Agg::Group;
            break;
          }
          if (!executor::combinable(a))
            unsupported("cross-shard aggregate in column " + std::to_string(c + 1) + " (type oid " +
                            std::to_string(cols[c].type_oid) + ") cannot be combined exactly",
                        "sum and avg of float values depend on the order of additions; cast "
                        "to numeric, or add a shard key to the WHERE clause");
          aggs.push_back(a);
          if (spec.aggs[c] == router::ScatterSpec::Agg::avg) {
            const auto &cc = shard_cols[shard_col[c] + 1];
            aggs.push_back({executor::Agg::Count, executor::kind_of(cc.type_oid, cc.format)});
          }
        }
      }
    }
  }

  // A combined row, in the shards' columns, as the client's: each avg from its sum and count.
  auto finish = [&](protocol::Row &r) {
    if (!reshaped || !failed_on.empty())
      return;
    protocol::Row o;
    for (size_t c = 0; c < spec.aggs.size(); ++c) {
      size_t k = shard_col[c];
      if (spec.aggs[c] != router::ScatterSpec::Agg::avg) {
        o.push_back(std::move(r[k]));
      } else if (!r[k] || !r[k + 1]) {
        o.push_back(std::nullopt); // no rows: NULL
      } else if (auto v = executor::decimal_avg(*r[k], *r[k + 1])) {
        o.push_back(std::move(*v));
      } else {
        unsupported("cross-shard avg(): cannot divide " + *r[k] + " by " + *r[k + 1], "");
        return;
      }
    }
    r = std::move(o);
  };
  // HAVING, on a finished row: whether it stays; the hidden columns go either way.
  std::optional<executor::Cond> having;
  std::vector<executor::CondType> having_types;
  if (spec.having && failed_on.empty()) {
    std::function<executor::Cond(const router::ScatterSpec::Cond &)> conv =
        [&](const router::ScatterSpec::Cond &c) {
          executor::Cond e;
          e.op = executor::Cond::Op(c.op);
          e.column = c.column;
          e.value = c.value;
          e.value_is_text = c.value_is_text;
          for (auto &a : c.args)
            e.args.push_back(conv(a));
          return e;
        };
    having = conv(*spec.having);
    for (auto &c : cols)
      having_types.push_back(executor::cond_type(c.type_oid, c.format));
  }
  auto keep = [&](protocol::Row &r) {
    bool ok = true;
    if (having && failed_on.empty()) {
      std::optional<bool> v;
      std::string err;
      if (!executor::eval(*having, r, having_types, v, err)) {
        unsupported("cross-shard HAVING: " + err,
                    "compare count, sum, avg, min or max of numbers (or a GROUP BY column) with "
                    "a constant, or add the shard key to the WHERE clause");
        return false;
      }
      ok = v.value_or(false);
    }
    r.resize(r.size() - std::min<size_t>(r.size(), spec.hidden));
    return ok;
  };
  uint64_t sent = 0;
  if (failed_on.empty() && spec.grouped) {
    // Every shard's groups, combined per group, sorted, then OFFSET and LIMIT.
    executor::Groups groups(aggs);
    protocol::Row row;
    std::string err;
    for (size_t i = 0; i < n && failed_on.empty(); ++i) {
      while (!at_rfq[i] && failed_on.empty()) {
        bool got = co_await scatter_next(s, i);
        if (!got)
          break;
        if (type != 'D')
          continue;
        if (!protocol::parse_data_row(body, row))
          fail(i, {"ERROR", "08P01", "malformed DataRow", "", ""});
        else if (!groups.add(std::move(row), err))
          unsupported("cross-shard GROUP BY: " + err, "");
      }
    }
    std::vector<protocol::Row> rows;
    if (failed_on.empty()) {
      rows = groups.take();
      for (auto &r : rows)
        finish(r);
      if (spec.having || spec.hidden) {
        std::vector<protocol::Row> kept;
        for (auto &r : rows)
          if (keep(r))
            kept.push_back(std::move(r));
        rows = std::move(kept);
      }
    }
    if (failed_on.empty()) {
      if (!keys.empty())
        std::stable_sort(rows.begin(), rows.end(), [&](const auto &a, const auto &b) {
          return executor::compare_rows(keys, a, b) < 0;
        });
      sink_->append(first_desc);
      for (size_t r = size_t(std::min<uint64_t>(offset, rows.size()));
           r < rows.size() && (!limit || sent < *limit); ++r) {
        protocol::data_row(*sink_, rows[r]);
        ++sent;
      }
    }
  } else if (failed_on.empty() && !spec.aggs.empty()) {
    // One partial row per shard.
    std::vector<protocol::Row> partials(n);
    for (size_t i = 0; i < n && failed_on.empty(); ++i) {
      while (!at_rfq[i] && failed_on.empty()) {
        bool got = co_await scatter_next(s, i);
        if (!got)
          break;
        if (type == 'D' && !protocol::parse_data_row(body, partials[i]))
          fail(i, {"ERROR", "08P01", "malformed DataRow", "", ""});
      }
    }
    protocol::Row out;
    std::string err;
    if (failed_on.empty() && !executor::combine(partials, aggs, out, err))
      unsupported("cross-shard aggregate: " + err, "");
    finish(out);
    bool kept = keep(out);
    if (failed_on.empty()) {
      sink_->append(first_desc);
      if (kept) {
        protocol::data_row(*sink_, out);
        sent = 1;
      }
    }
  } else if (failed_on.empty()) {
    sink_->append(first_desc);
    executor::Merge m(n, keys, limit, offset);
    if (spec.distinct_on)
      m.distinct_on(spec.distinct_on);
    protocol::Row row;
    size_t turn = 0;
    while (failed_on.empty()) {
      while (auto r = m.pop()) {
        protocol::data_row(*sink_, *r);
        ++sent;
      }
      if (m.done())
        break;
      if (sink_ == &out_ && out_.size() > 64 * 1024) {
        bool sent_out = co_await flush();
        if (!sent_out)
          break;
      }
      auto i = m.starved(turn);
      if (!i)
        break; // (cannot happen: pop() had nothing and not done)
      turn = (*i + 1) % n;
      bool got = co_await scatter_next(s, *i);
      if (!got)
        break;
      if (type == 'D') {
        if (!protocol::parse_data_row(body, row))
          fail(*i, {"ERROR", "08P01", "malformed DataRow", "", ""});
        else
          m.push(*i, std::move(row));
      } else if (type == 'C' || type == 'Z') {
        m.end(*i);
      }
    }
  }
  for (size_t i = 0; i < n; ++i) // read every shard to its ReadyForQuery
    while (!at_rfq[i])
      co_await scatter_next(s, i);
  if (!failed_on.empty()) {
    if (failed_on != "-")
      failure.detail =
          "on shard \"" + failed_on + "\"" + (failure.detail.empty() ? "" : ": " + failure.detail);
    error(failure.sqlstate.empty() ? "XX000" : failure.sqlstate, failure.message, failure.hint,
          failure.detail);
    if (in_tx_read)
      fail_transaction_by_proxy(); // only ROLLBACK is accepted now, for every shard
  } else {
    protocol::command_complete(*sink_, "SELECT " + std::to_string(sent));
  }
  if (cancel_)
    cancel_->set_many({});
  for (size_t i = 0; i < n; ++i) // counted per shard, as the shard's own queries are
    if (swallow[i] >= 0 && !bs[i]->broken)
      record_query(shards[i], *bs[i], QueryKind::read, started, pt.scan.normalized);
  detach_if_idle();
  ready();
  co_return !closing_;
}

} // namespace sg::proxy

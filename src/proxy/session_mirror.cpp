// Client session, part: dual-write while a migration moves keys (from its DUAL_WRITE phase to
// the end of REVERSE_DUAL_WRITE). A transaction that wrote on a shard owning keys that move
// (router::Topology::mirror_sources) ends through end_multi_tx(), which first copies the row
// images of the moving keys it wrote to their other owner (the mirror ring's):
//
//   1. on the source, inside the client's transaction: the keys it wrote, from the change
//      log the migration's trigger fills in the writer's own transaction
//      (shardgate.changes, by txid), kept when their owner on the mirror ring differs;
//   2. on the source: those keys' rows, read FOR SHARE (the rows it wrote are locked by its
//      writes already), as JSON images;
//   3. on the target, in a transaction of its own: the keys' rows deleted and the images
//      inserted, with lock_timeout, so a lock cycle across databases never hangs;
//   4. the client's transaction commits (sources first), then the targets commit, or roll
//      back if it did not.
//
// So the target sees a row's writes in the order the source committed them: each copy is
// made while the source row is locked, and the next writer of that row can only copy after
// this one's source commit, then waits for its target row lock. A copy that fails (the target
// unreachable, a lock wait over the timeout) never fails the client: the change log, written
// atomically with the source's rows, has the keys, and the migration copies them again
// within 200 ms (and VERIFY compares everything). See src/migrations/README.md.
#include "proxy/session.h"

#include "proxy/errors.h"
#include "proxy/session_util.h"

#include <map>

namespace sg::proxy {

namespace {

constexpr uint64_t bit(size_t shard) {
  return uint64_t(1) << shard;
}

// Short: a wait here holds the client's commit (and its source rows), and a lock cycle across
// two databases (a backfill page holding target rows while it waits for this client's source
// rows) ends only on a timeout. Giving up costs nothing but the change log's copy. The runner's
// grace after dual-write stops (1.5 s) is longer.
constexpr int kMirrorLockTimeoutMs = 250;

std::string ident(std::string_view s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"')
      o += '"';
    o += c;
  }
  return o + "\"";
}

// s as a dollar-quoted literal whose tag does not occur in it.
std::string dollar(std::string_view s) {
  std::string tag = "$sg$";
  for (int i = 0; s.find(tag) != std::string_view::npos; ++i)
    tag = "$sg" + std::to_string(i) + "$";
  std::string o;
  o.reserve(s.size() + 2 * tag.size());
  return o.append(tag).append(s).append(tag);
}

std::string json_string(std::string_view s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (uint8_t(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(uint8_t(c)));
      o += buf;
    } else {
      o += c;
    }
  }
  return o + "\"";
}

} // namespace

bool Session::mirror_due() const {
  return (tx_writers_ & w_->place().keys->mirror_sources) != 0;
}

// Runs `queries` simple Queries sent as `w` on b, through the last ReadyForQuery: the rows of
// the statements (DataRows), and the first error. False: the connection was lost.
Task<bool> Session::mirror_query(BackendConn &b, const std::string &w, int queries,
                                 std::vector<protocol::Row> *rows, protocol::ErrorInfo &err) {
  err = {};
  err.sqlstate.clear();
  b.unnamed_owner = 0; // a simple Query drops the unnamed statement
  ErrorCode ec;
  co_await write_all(b.sock, w, ec);
  if (ec) {
    on_backend_lost(b);
    co_return false;
  }
  for (int z = 0; z < queries;) {
    char type = 0;
    std::string body;
    bool ok = co_await next_frame(b, type, body);
    if (!ok)
      co_return false;
    if (type == 'E' && err.sqlstate.empty()) {
      err = protocol::parse_error_response(body);
    } else if (type == 'D' && rows) {
      protocol::Row r;
      if (protocol::parse_data_row(body, r))
        rows->push_back(std::move(r));
    } else if (type == 'Z') {
      b.tx_status = body.empty() ? 'I' : body[0];
      ++z;
    }
  }
  co_return true;
}

// Step 1 to 3 above, for every source the transaction wrote on. `only`: the targets that
// are not in the client's transaction (they commit after it, in mirror_end()).
Task<void> Session::mirror_writes(std::vector<size_t> &only) {
  auto keys = w_->place().keys; // this epoch's rings, whatever happens meanwhile
  uint64_t sources = tx_writers_ & keys->mirror_sources;
  std::map<size_t, bool> target_ok; // mirror-only targets: still fine
  bool failed = false, copied = false;
  auto one = [](const std::string &sql) {
    std::string w;
    protocol::query(w, sql);
    return w;
  };
  for (size_t s = 0; s < attached_.size() && s < 64; ++s) {
    if (!(sources & bit(s)) || !attached_[s].conn)
      continue;
    BackendConn &src = *attached_[s].conn;
    if (src.broken || src.tx_status != 'T')
      continue; // a failed transaction rolls back: nothing to copy
    protocol::ErrorInfo err;
    std::vector<protocol::Row> rows;
    // Inside a savepoint: whatever goes wrong here must not fail the client's transaction.
    auto undo = [&]() -> Task<bool> {
      protocol::ErrorInfo e2;
      co_return co_await mirror_query(
          src, one("ROLLBACK TO SAVEPOINT sg_mirror; RELEASE sg_mirror"), 1, nullptr, e2) &&
          e2.sqlstate.empty();
    };
    bool ok = co_await mirror_query(
        src,
        one("SAVEPOINT sg_mirror; SELECT DISTINCT tbl, key FROM shardgate.changes WHERE xid = "
            "txid_current(); RELEASE sg_mirror"),
        1, &rows, err);
    if (!ok || !err.sqlstate.empty()) {
      failed = true;
      log::warn("dual_write_failed", {{"shard", sh_.shard_name(s)},
                                      {"step", "keys"},
                                      {"error", ok ? err.message : "connection lost"}});
      if (ok)
        co_await undo();
      continue;
    }
    // Keys by (table, target): those this shard owns and the mirror ring gives to another.
    std::map<std::pair<int, size_t>, std::vector<std::string>> groups;
    for (auto &r : rows) {
      if (r.size() != 2 || !r[0] || !r[1])
        continue;
      int t = sh_.router.table_index(*r[0]);
      if (t < 0)
        continue;
      auto h = sh_.router.hash_of_text(t, *r[1]);
      if (!h || keys->owner(*h) != s)
        continue;
      size_t target = keys->mirror_owner(*h);
      if (target != s)
        groups[{t, target}].push_back(*r[1]);
    }
    for (auto &[g, ks] : groups) {
      auto [t, target] = g;
      const config::Table &tb = sh_.router.tables()[size_t(t)];
      std::string karr = "[";
      for (auto &k : ks)
        karr += (karr.size() > 1 ? "," : "") + json_string(k);
      karr += "]";
      std::string where = ident(tb.key) + " IN (SELECT jsonb_array_elements_text(" + dollar(karr) +
                          "::jsonb)::" + config::to_string(tb.key_type) + ")";
      rows.clear();
      ok = co_await mirror_query(src,
                                 one("SAVEPOINT sg_mirror; SELECT row_to_json(x)::text FROM " +
                                     ident(tb.name) + " x WHERE " + where +
                                     " FOR SHARE; RELEASE sg_mirror"),
                                 1, &rows, err);
      if (!ok || !err.sqlstate.empty()) {
        failed = true;
        log::warn("dual_write_failed", {{"shard", sh_.shard_name(s)},
                                        {"step", "images"},
                                        {"error", ok ? err.message : "connection lost"}});
        if (ok)
          co_await undo();
        break;
      }
      std::string images = "[";
      for (auto &r : rows)
        if (!r.empty() && r[0])
          images += (images.size() > 1 ? "," : "") + *r[0];
      images += "]";
      std::string apply = "SET LOCAL lock_timeout = '" + std::to_string(kMirrorLockTimeoutMs) +
                          "ms'; SET LOCAL shardgate.sync = 'on'; DELETE FROM " + ident(tb.name) +
                          " WHERE " + where + "; INSERT INTO " + ident(tb.name) +
                          " SELECT * FROM json_populate_recordset(NULL::" + ident(tb.name) + ", " +
                          dollar(images) + "::json)";
      // The target: in the client's transaction already (it commits with it), or in one of
      // its own (it commits after the client's).
      bool joined = target < 64 && (tx_shards_ & bit(target)) && target < attached_.size() &&
                    attached_[target].conn && attached_[target].conn->tx_status == 'T';
      if (!joined && target_ok.count(target) && !target_ok[target])
        continue;
      BackendConn *dst = nullptr;
      std::string w;
      int queries = 1;
      if (joined) {
        dst = attached_[target].conn.get();
        protocol::query(w, "SAVEPOINT sg_mirror; " + apply + "; RELEASE sg_mirror");
      } else {
        if (!target_ok.count(target)) {
          std::string discard; // (attach() reports an unreachable shard to the client)
          std::string *sink = sink_;
          sink_ = &discard;
          dst = co_await attach(target, false);
          sink_ = sink;
          if (dst && dst->tx_status != 'I')
            dst = nullptr; // (cannot be: a shard the transaction holds is joined above)
          if (dst) {
            // The session's settings (search_path) first, as for its own statements.
            size_t before = exp_.size();
            prepare_backend(*dst, w, false);
            for (size_t n = exp_.size() - before; n > 0; --n, ++queries)
              exp_.pop_back();
            protocol::query(w, "BEGIN; " + apply);
          }
        } else {
          dst = attached_[target].conn.get();
          protocol::query(w, apply);
        }
      }
      ok = dst && co_await mirror_query(*dst, w, queries, nullptr, err);
      bool good = ok && err.sqlstate.empty();
      if (!good) {
        failed = true;
        log::warn("dual_write_failed", {{"shard", sh_.shard_name(target)},
                                        {"step", "target"},
                                        {"error", ok ? err.message : "unreachable"}});
      } else {
        copied = true;
      }
      if (joined) {
        if (ok && !good) {
          protocol::ErrorInfo e2;
          co_await mirror_query(*dst, one("ROLLBACK TO SAVEPOINT sg_mirror; RELEASE sg_mirror"), 1,
                                nullptr, e2);
        }
        if (good)
          tx_writers_ |= bit(target); // it commits with the others (two-phase commit)
      } else {
        if (!target_ok.count(target) && dst)
          only.push_back(target);
        target_ok[target] = good;
      }
    }
  }
  auto &stats = w_->stats;
  if (failed)
    stats.mirror_failed.fetch_add(1, std::memory_order_relaxed);
  else if (copied)
    stats.mirror_copied.fetch_add(1, std::memory_order_relaxed);
}

// Step 4: the targets of mirror_writes() that are not in the client's transaction commit
// once it did (`commit`), or roll back.
Task<void> Session::mirror_end(const std::vector<size_t> &only, bool commit) {
  std::vector<BackendConn *> bs;
  std::vector<std::string> sqls;
  for (size_t t : only)
    if (t < attached_.size() && attached_[t].conn && !attached_[t].conn->broken &&
        attached_[t].conn->tx_status != 'I') {
      bs.push_back(attached_[t].conn.get());
      // A target whose copy failed is in a failed transaction: COMMIT rolls it back.
      sqls.push_back(commit ? "COMMIT" : "ROLLBACK");
    }
  std::vector<protocol::ErrorInfo> errs;
  co_await control_all(bs, sqls, errs);
  for (size_t i = 0; i < bs.size(); ++i)
    if (!errs[i].sqlstate.empty()) {
      w_->stats.mirror_failed.fetch_add(1, std::memory_order_relaxed);
      log::warn(
          "dual_write_failed",
          {{"shard", bs[i]->node->shard_name}, {"step", "commit"}, {"error", errs[i].message}});
    }
}

// A single write outside a transaction block, to a shard whose keys move: it runs in a
// transaction of its own, so that its copy is made while its rows are locked (end_multi_tx()).
// The client gets what the server answered, then ReadyForQuery (idle); a failed commit adds
// its error, as an implicit transaction's would.
Task<bool> Session::mirrored_write(const std::string &sql, size_t shard) {
  open_own_tx();
  std::string capture;
  auto started = w_->poller.now();
  bool ok = false;
  BackendConn *b = co_await query_captured(shard, sql, capture, ok);
  bool wrote = b && ok && b->tx_status == 'T';
  if (b && ok && b->tx_status != 'I') {
    bind_tx(int(shard));
    record_query(shard, *b, QueryKind::write, started, query_plan_.scan.normalized);
  }
  if (wrote)
    tx_writers_ |= bit(shard);
  std::string end;
  sink_ = &end;
  co_await end_multi_tx(wrote); // commits (copying first), or rolls back what failed
  sink_ = &out_;
  // The client gets the server's answer (or attach()'s error) without its ReadyForQuery,
  // then the commit's error if any, and the proxy's ReadyForQuery.
  bool had_error = false;
  detail::append_frames_except(out_, capture, 'Z', false, &had_error);
  if (b && !ok && !had_error)
    error("08006", "lost the connection to shard \"" + sh_.shard_name(shard) + "\"");
  if (wrote)
    ryw_at_[shard] = now_ms();
  detail::append_frames_except(out_, end, 'C');
  co_return true;
}

} // namespace sg::proxy

// The extended protocol, part: planning a batch (plan_batch(): what each message names, where
// each Bind routes, which shard the batch runs on, what the proxy must refuse or answer itself)
// and the checks around it. extended.cpp runs the plan. See batch.h and session.h.
#include "proxy/batch.h"

#include "proxy/errors.h"
#include "proxy/session_util.h"
#include "router/literals.h"

#include <algorithm>
#include <atomic>
#include <boost/container/small_vector.hpp>

namespace sg::proxy {

using detail::count_route;
using detail::kind_of;

namespace {

std::atomic<uint64_t> g_unnamed_tags{1};

std::string missing_statement(std::string_view name) {
  return name.empty() ? std::string("unnamed prepared statement does not exist")
                      : "prepared statement \"" + std::string(name) + "\" does not exist";
}

} // namespace

// Whether a Bind of the batch writes a key that its cutover pauses, and the session may wait
// for it (may_hold). Statements are those the batch parses, else those prepared before. Only
// asked while a cutover pauses writes; plan_batch() makes the real decisions.
bool Session::batch_moves_key(const std::vector<Msg> &batch) {
  std::unordered_map<std::string, std::pair<std::string, router::PlannedText>> parsed;
  std::vector<router::ParamValue> params;
  protocol::BindMsg b;
  for (const Msg &m : batch) {
    if (m.type == 'P') {
      auto p = protocol::parse_parse(m.body);
      if (!p)
        return false;
      auto &slot = parsed[std::string(p->name)];
      slot.first.assign(p->query);
      slot.second = sh_.router.plan(slot.first);
      continue;
    }
    if (m.type != 'B' || !protocol::parse_bind(m.body, b))
      continue;
    const std::string *text = nullptr;
    const router::PlannedText *pt = nullptr;
    if (auto it = parsed.find(std::string(b.statement)); it != parsed.end()) {
      text = &it->second.first;
      pt = &it->second.second;
    } else if (auto st = stmts_.find(std::string(b.statement)); st != stmts_.end()) {
      text = &st->second->text;
      pt = &st->second->planned;
    }
    if (!pt || !pt->analysis || pt->analysis->stmts.empty())
      continue;
    const router::StatementPlan &sp = pt->analysis->stmts[0];
    if (!params_cover_keys(sp, b))
      continue;
    params.clear();
    for (size_t i = 0; i < b.params.size(); ++i)
      params.push_back({b.params[i], protocol::bind_param_format(b, i)});
    router::Resolved r = sh_.router.resolve(sp, *text, pt->scan, params, w_->place().keys.get());
    if (r.moving)
      return may_hold(r);
  }
  return false;
}

// Whether a batch may run as a read on every shard: [Parse] Bind [Describe portal] Execute
// (all rows) Sync, with no batch cut by a Flush held; in a transaction block (which each shard
// joins first) only while it is not failed and made no savepoint.
bool Session::scatter_shape(const std::vector<Msg> &batch) const {
  if (batch_shard_ >= 0 || proxy_failed_ || !implicit_local_.empty() || tx_ == 'E' ||
      (in_tx() && !join_refusal(0).empty()))
    return false;
  std::string types;
  for (const Msg &m : batch)
    types.push_back(m.type);
  if (types != "BES" && types != "BDES" && types != "PBES" && types != "PBDES")
    return false;
  const Msg &e = batch[batch.size() - 2];
  protocol::Reader r(e.body);
  r.cstr();
  int32_t max_rows = r.i32();
  if (!r.ok() || max_rows != 0)
    return false;
  if (types.find('D') != std::string::npos) {
    const Msg &d = batch[batch.size() - 3];
    if (d.body.empty() || d.body[0] != 'P')
      return false;
  }
  return true;
}

namespace {

// A plain read or write: no transaction control or session state.
bool plain(const router::PlannedText &pt) {
  const auto &an = *pt.analysis;
  return an.parsed && an.stmts.size() == 1 &&
         (an.stmts[0].kind == router::StmtKind::read ||
          an.stmts[0].kind == router::StmtKind::write) &&
         !an.stmts[0].cursor && !an.stmts[0].prepared_tx;
}

bool begins(const router::PlannedText &pt) {
  const auto &an = *pt.analysis;
  return an.parsed && an.stmts.size() == 1 && an.stmts[0].kind == router::StmtKind::begin;
}

} // namespace

// Where a batch that ends with Sync may be cut because its statements turn to another shard
// (`shard`, at the Bind planned last): the first message after the last Execute before that
// Bind, so that each part is whole statements ([Parse] Bind [Describe] Execute). 0: no cut
// (the caller refuses the batch, 0A000). Only plain reads and writes, outside a failed
// transaction and a migration, on shards a transaction may take in: the parts then run in one
// transaction across shards, which the proxy opens when the client has none (JDBC's
// executeBatch, asyncpg's executemany, pipelines of drivers that send one Sync).
size_t Session::cross_split_at(const std::vector<Msg> &batch, const BatchPlan &bp, int shard,
                               bool failed_tx) const {
  if (!cut_allowed(bp, failed_tx) || !join_refusal(size_t(shard)).empty() || bp.items.empty())
    return 0;
  size_t cur = bp.items.size() - 1;
  size_t start = cur;
  while (start > 0 && bp.items[start - 1].m->type != 'E')
    --start;
  if (start == 0)
    return 0;
  for (size_t i = start; i < cur; ++i)
    if (bp.items[i].m->type != 'P' && bp.items[i].m->type != 'D')
      return 0;
  // Every statement bound, before the cut and after it, is a plain read or write (no
  // transaction control or session state, which would not survive the cut), but for a BEGIN
  // before it (pgjdbc sends the BEGIN of setAutoCommit(false) with the first statements).
  bool only_begin = true; // (then the first part needs no shard: it is answered by the proxy)
  for (size_t i = 0; i <= cur; ++i)
    if (const BatchItem &x = bp.items[i]; x.m->type == 'B') {
      if (!x.st || !(plain(x.st->planned) || (i < start && begins(x.st->planned))))
        return 0;
      only_begin &= i >= start || begins(x.st->planned);
    }
  if (bp.shard < 0 && !only_begin && !bp.scatter)
    return 0;
  return rest_plain(batch, size_t(bp.items[cur].m - batch.data()) + 1) ? start : 0;
}

// Whether a batch may be cut into parts that run one after the other in one transaction.
bool Session::cut_allowed(const BatchPlan &bp, bool failed_tx) const {
  return bp.ends_sync && !failed_tx && !proxy_failed_ && !bp.error && batch_shard_ < 0 &&
         implicit_local_.empty() && tx_ != 'E' && w_->place().keys->migration.empty() &&
         join_refusal(0).empty() &&
         // writes on several shards must be able to commit
         !(sh_.cfg.transactions.two_phase_commit && !sh_.journal.load());
}

// Whether the Bind at batch[b] (of statement `text`) is a whole statement: then [Describe
// portal] and Execute of all rows (pgjdbc asks for one row of a write in a batch: the same for
// one without RETURNING), as a write across shards runs.
bool Session::whole_statement(const std::vector<Msg> &batch, size_t b, const std::string &text) {
  size_t i = b + 1;
  if (i < batch.size() && batch[i].type == 'D') {
    if (batch[i].body.empty() || batch[i].body[0] != 'P')
      return false;
    ++i;
  }
  if (i >= batch.size() || batch[i].type != 'E')
    return false;
  protocol::Reader r(batch[i].body);
  r.cstr();
  int32_t max_rows = r.i32();
  return r.ok() && (max_rows == 0 || !router::has_returning(text));
}

// Whether every statement the messages from batch[from] on bind is a plain read or write, and
// they hold nothing but Parse, Bind, Describe, Execute and the Sync.
bool Session::rest_plain(const std::vector<Msg> &batch, size_t from) const {
  std::unordered_map<std::string, router::PlannedText> parsed; // later Parses, by name
  for (size_t i = from; i < batch.size(); ++i) {
    const Msg &m = batch[i];
    if (m.type == 'P') {
      auto p = protocol::parse_parse(m.body);
      if (!p)
        return false;
      parsed[std::string(p->name)] = sh_.router.plan(p->query);
    } else if (m.type == 'B') {
      auto b = protocol::parse_bind(m.body);
      if (!b)
        return false;
      std::string name(b->statement);
      if (auto pit = parsed.find(name); pit != parsed.end()) {
        if (!plain(pit->second))
          return false;
      } else if (auto sit = stmts_.find(name); sit != stmts_.end()) {
        if (!plain(sit->second->planned))
          return false;
      } else {
        return false;
      }
    } else if (m.type != 'D' && m.type != 'E' && m.type != 'S') {
      return false; // Close, Flush: left to one shard
    }
  }
  return true;
}

// Puts back what planning bp.items[from...] did to the session's statements and portals, and
// drops those items.
void Session::undo_items(BatchPlan &bp, size_t from) {
  for (size_t i = bp.items.size(); i-- > from;) {
    BatchItem &it = bp.items[i];
    if (it.m->type == 'P') {
      if (it.prev)
        stmts_[it.name] = std::move(it.prev);
      else
        stmts_.erase(it.name);
    } else if (it.m->type == 'B') {
      if (it.prev_portal)
        portals_[it.name] = std::move(it.prev_portal);
      else
        portals_.erase(it.name);
      --bp.binds;
    }
  }
  bp.items.resize(from);
}

// Whether a Bind carries every parameter the statement's key comes from; if not, PostgreSQL
// rejects it (08P01), and the proxy must not take the missing key for a NULL one.
bool Session::params_cover_keys(const router::StatementPlan &sp, const protocol::BindMsg &bind) {
  for (const auto &k : sp.keys)
    if (k.is_param && size_t(k.index) > bind.params.size())
      return false;
  return true;
}

// A read of no table that calls no function: any shard answers it alike, outside any
// transaction (a side connection).
bool Session::pure_read(const ClientStmt &st) {
  const auto &an = *st.planned.analysis;
  if (!an.parsed || an.stmts.size() != 1)
    return false;
  const router::StatementPlan &sp = an.stmts[0];
  return sp.kind == router::StmtKind::read && sp.tableless &&
         (sp.pipelinable || sp.tag == "SHOW"); // SHOW reads settings, which the copy has
}

// Step 1 (see above). False: a malformed message (the caller ends the session).
// Every statement the batch binds is a read or a write (no transaction control, no SET).
bool Session::plain_statements(const BatchPlan &bp) {
  return std::all_of(bp.items.begin(), bp.items.end(), [](const BatchItem &it) {
    if (it.m->type != 'B' || !it.st)
      return true;
    const auto &an = *it.st->planned.analysis;
    return an.parsed && an.stmts.size() == 1 &&
           (an.stmts[0].kind == router::StmtKind::read ||
            an.stmts[0].kind == router::StmtKind::write);
  });
}

bool Session::plan_batch(const std::vector<Msg> &batch, BatchPlan &bp) {
  bp.ends_sync = batch.back().type == 'S';
  int total_binds =
      int(std::count_if(batch.begin(), batch.end(), [](const Msg &m) { return m.type == 'B'; }));
  // (A COMMIT or ROLLBACK earlier in this request, before a Flush, ended the failed block
  // already, though the client hears of it only at ReadyForQuery.)
  bool failed_tx = tx_ == 'E' && !end_seen_;
  int held = tx_shard_ >= 0 ? tx_shard_ : batch_shard_;
  bool virtual_gone = false; // a COMMIT or ROLLBACK earlier in the batch ended their portals
  boost::container::small_vector<std::string, 4> bound_here; // portals this batch binds
  auto here = [&](const std::string &n) {
    return std::find(bound_here.begin(), bound_here.end(), n) != bound_here.end();
  };
  boost::container::small_vector<std::string_view, 4> executed;
  std::vector<router::ParamValue> &params = bind_params_;
  bp.items.reserve(batch.size());
  for (const Msg &m : batch) {
    if (bp.split)
      break;
    BatchItem &it = bp.items.emplace_back();
    it.m = &m;
    auto fail = [&](std::string sqlstate, std::string msg, std::string hint = {}) {
      it.error = router::RouteError{std::move(sqlstate), std::move(msg), std::move(hint)};
      bp.error = true;
    };
    // The batch runs on one shard: the first that a Bind (or a portal it uses) routes to.
    auto place = [&](int s) {
      if (bp.shard >= 0 && s != bp.shard && m.type == 'B') {
        if (size_t at = cross_split_at(batch, bp, s, failed_tx)) {
          bp.split = at; // the statements from `at` on run after these, on their shard
          bp.cross = true;
          return;
        }
      }
      if (bp.shard >= 0 && s != bp.shard)
        fail("0A000", "this pipeline touches more than one shard before Sync",
             "send a Sync between statements for different shards");
      else
        bp.shard = s;
    };
    // A portal bound in an earlier batch of the transaction lives on the shard that batch ran
    // on (its home unless portal_shard_ says otherwise): what uses it runs there.
    auto portal_at = [&](const std::string &name) {
      if (tx_shard_ < 0 || here(name) || !portals_.count(name) || failed_tx)
        return;
      auto ps = portal_shard_.find(name);
      place(ps == portal_shard_.end() ? tx_shard_ : ps->second);
    };
    switch (m.type) {
    case 'P': {
      auto p = protocol::parse_parse(m.body);
      if (!p)
        return false;
      it.name = std::string(p->name);
      auto st = std::make_shared<ClientStmt>();
      st->text = std::string(p->query);
      st->types = p->param_types;
      st->planned = sh_.router.plan(st->text);
      if (const auto &an = *st->planned.analysis;
          an.parsed && an.stmts.size() == 1 && !an.stmts[0].next_id.empty()) [[unlikely]] {
        // SELECT shardgate.next_id(): the backend parses, binds and describes a statement
        // with the same column; its Execute is the proxy's (see 'E').
        std::string name;
        for (char c : an.stmts[0].next_id)
          name += c == '"' ? std::string("\"\"") : std::string(1, c);
        st->text = "SELECT NULL::bigint AS \"" + name + "\"";
      }
      // A syntax error comes first; in a failed transaction 25P02 comes before the name is
      // looked at, except for the statements that end the transaction.
      if (!it.name.empty() && stmts_.count(it.name) && st->planned.analysis->parsed &&
          (!failed_tx || ends_tx(*st))) {
        fail("42P05", "prepared statement \"" + it.name + "\" already exists");
        break;
      }
      if (it.name.empty())
        st->unnamed_tag = g_unnamed_tags++;
      else
        st->set_id(w_->intern_statement(stmt_key(st->text, st->types)));
      StmtRef &slot = stmts_[it.name];
      it.prev = std::move(slot);
      slot = st;
      it.st = std::move(st);
      break;
    }
    case 'B': {
      if (!protocol::parse_bind(m.body, it.bind))
        return false;
      it.name = std::string(it.bind.portal);
      auto sit = stmts_.find(std::string(it.bind.statement));
      if (sit == stmts_.end()) {
        fail("26000", missing_statement(it.bind.statement));
        break;
      }
      it.st = sit->second;
      if (const auto &an = *it.st->planned.analysis; an.parsed) {
        // PostgreSQL checks the count before anything else of the Bind (08P01), also in a
        // failed transaction and before a portal name in use.
        size_t need = std::max(it.st->types.size(), size_t(an.max_param));
        if (it.bind.params.size() != need) {
          fail("08P01", "bind message supplies " + std::to_string(it.bind.params.size()) +
                            " parameters, but prepared statement \"" +
                            std::string(it.bind.statement) + "\" requires " + std::to_string(need));
          break;
        }
      }
      if ((!failed_tx || ends_tx(*it.st)) && !virtual_gone && !it.name.empty() &&
          virtual_portals_.count(it.name) && !here(it.name) &&
          same_param_count(it.bind, virtual_portals_[it.name], *it.st)) {
        // A named portal is not replaced; where it lives on no backend, the proxy says so.
        fail("42P03", "portal \"" + it.name + "\" already exists");
        break;
      }
      if (auto old = portals_.find(it.name); old != portals_.end())
        it.prev_portal = old->second;
      portals_[it.name] = it.st;
      bound_here.push_back(it.name); // it lives where this batch runs, once the Bind is done
      executed.erase(std::remove(executed.begin(), executed.end(), std::string_view(it.name)),
                     executed.end()); // a new portal under that name
      ++bp.binds;
      const auto &an = *it.st->planned.analysis;
      // In a failed transaction the server answers every statement itself (25P02); a
      // statement that did not parse failed at its Parse, so the server skips its Bind.
      if (failed_tx || !an.parsed || an.stmts.empty())
        break;
      if (const auto &s0 = an.stmts[0];
          s0.kind == router::StmtKind::begin || s0.kind == router::StmtKind::savepoint)
        note_tx_statement(s0, it.st->text);
      if (multi_tx() || mirror_due()) {
        // (mirror_due(): a transaction that wrote keys a migration moves: its writes are
        // copied before it commits.)
        const router::StatementPlan &s0 = an.stmts[0];
        if (an.stmts.size() == 1 && total_binds == 1 && !s0.chain &&
            (s0.kind == router::StmtKind::commit || s0.kind == router::StmtKind::rollback)) {
          bp.end_multi = it.st; // ends the transaction on every shard (end_multi_tx)
          break;
        }
      }
      if (multi_tx()) {
        const router::StatementPlan &s0 = an.stmts[0];
        if (const char *what = cross_shard_refusal(s0, an.stmts.size() == 1 && total_binds == 1)) {
          fail("0A000", std::string(what) + " are not supported in a transaction across shards",
               "send COMMIT or ROLLBACK alone; keep savepoints in transactions on one shard");
          break;
        }
      }
      const router::StatementPlan &sp = an.stmts[0];
      if (!params_cover_keys(sp, it.bind))
        break; // the server rejects the Bind (08P01): nothing to route by
      params.clear();
      for (size_t i = 0; i < it.bind.params.size(); ++i)
        params.push_back({it.bind.params[i], protocol::bind_param_format(it.bind, i)});
      // A write across shards may also be one of several statements before one Sync (JDBC's
      // reWriteBatchedInserts): the batch is cut around it (cross_split_at).
      bool alone = scatter_shape(batch);
      bool among = !alone && sp.multi_write &&
                   whole_statement(batch, size_t(&m - batch.data()), it.st->text);
      router::Resolved r =
          sh_.router.resolve(sp, it.st->text, it.st->planned.scan, params, w_->place().keys.get(),
                             ((alone || among) && !sp.positional) || sp.positional);
      if (sp.positional) [[unlikely]] {
        // INSERT without a column list: on one shard, after the guard of its key position.
        if (r.kind == router::TargetKind::scatter) {
          fail("0A000",
               "an INSERT without a column list whose rows live on several shards is not "
               "supported through the extended protocol",
               "list the columns, or insert the rows of each shard in a statement of its own");
          break;
        }
        if (r.kind == router::TargetKind::by_key &&
            w_->place().keys->mirror_source(size_t(r.shard))) {
          fail("0A000",
               "an INSERT without a column list into a sharded table is not supported while a "
               "migration moves keys of its shard",
               "list the columns: INSERT INTO t (col, ...) VALUES ...");
          break;
        }
        if (r.kind == router::TargetKind::by_key)
          it.guard_table = sp.table;
      }
      count_route(w_->stats, r.kind, sp);
      if (bp.scatter && bp.scatter_write) {
        // What follows a write across shards runs as the next part of the batch.
        if (size_t at = cross_split_at(batch, bp, 0, failed_tx)) {
          bp.split = at;
          bp.cross = true;
        } else {
          fail("0A000", "this pipeline touches more than one shard before Sync",
               "send a Sync between statements for different shards");
        }
        break;
      }
      if (r.kind == router::TargetKind::scatter && among) {
        bool first = std::none_of(bp.items.begin(), bp.items.end() - 1,
                                  [](const BatchItem &x) { return x.m->type == 'E'; });
        size_t at = first ? 0 : cross_split_at(batch, bp, 0, failed_tx);
        if (at) {
          bp.split = at; // it runs as the first statement of the next part
          bp.cross = true;
          break;
        }
        if (!first || !cut_allowed(bp, failed_tx) ||
            !rest_plain(batch, size_t(&m - batch.data()) + 1))
          r = sh_.router.resolve(sp, it.st->text, it.st->planned.scan, params,
                                 w_->place().keys.get()); // its error names the table and key
      }
      if (r.kind == router::TargetKind::scatter) {
        if (sp.multi_write) {
          if (auto f = sh_.fenced_write()) {
            fail(f->sqlstate, f->message, f->hint);
            break;
          }
        }
        // Every shard concerned: a read merged (scatter_read), a write run on each
        // (scatter_write).
        bp.scatter = it.st;
        bp.scatter_write = sp.multi_write;
        bp.scatter_item = bp.items.size() - 1;
        bp.scatter_shards = r.shards;
        bp.any_bind = true;
        break;
      }
      if (!bp.first_bound && r.kind != router::TargetKind::none)
        bp.first_bound = it.st;
      bp.kind = detail::stronger(bp.kind, kind_of(sp.kind));
      if (r.kind == router::TargetKind::error) {
        fail(r.error.sqlstate, r.error.message, r.error.hint);
        break;
      }
      if ((r.kind == router::TargetKind::by_key && sp.kind != router::StmtKind::read) ||
          r.kind == router::TargetKind::all_primaries) {
        if (auto f = sh_.fenced_write()) {
          fail(f->sqlstate, f->message, f->hint);
          break;
        }
      }
      if (r.kind == router::TargetKind::all_primaries) {
        // DDL on a sharded table (JDBC and migration tools send it this way): run on every
        // primary, if it is the batch's only statement.
        if (bp.ends_sync && !in_tx() && held < 0 && total_binds == 1 && it.bind.params.empty())
          bp.ddl = it.st;
        else
          fail("0A000", "DDL on a sharded table must be sent alone, outside a transaction",
               "run it as its own statement in autocommit mode, without parameters and followed "
               "by Sync; it is applied to every shard");
        break;
      }
      if (sp.kind != router::StmtKind::read)
        bp.all_read = false;
      if (r.kind == router::TargetKind::none)
        break;
      bp.any_bind = true;
      if (r.kind == router::TargetKind::default_shard && sp.tableless)
        break; // SELECT 1: runs wherever the batch or transaction runs
      int s = int(r.shard);
      if (held >= 0 && s != held) {
        // In a transaction block the batch may run on another shard the transaction holds,
        // or take one more in (session_tx.cpp); an implicit transaction cut by Flush may not.
        std::string why = tx_shard_ < 0 || batch_shard_ >= 0
                              ? std::string("the extended-protocol batch before it is not synced")
                          : (s < 64 && (tx_shards_ >> s) & 1) ? std::string()
                                                              : join_refusal(size_t(s));
        if (!why.empty()) {
          fail("0A000",
               "transaction touches a second shard (\"" + sh_.shard_name(size_t(s)) +
                   "\" after \"" + sh_.shard_name(size_t(held)) + "\"), and " + why,
               "keep savepoints in transactions on one shard; send a Sync before a statement "
               "for another shard");
          break;
        }
      }
      place(s);
      break;
    }
    case 'D':
    case 'C': {
      auto t = protocol::parse_target(m.body);
      if (!t)
        return false;
      it.target = t->kind;
      it.name = std::string(t->name);
      if (t->kind == 'S') {
        auto sit = stmts_.find(it.name);
        if (m.type == 'D') {
          if (sit == stmts_.end())
            fail("26000", missing_statement(it.name));
          else
            it.st = sit->second;
        } else if (sit != stmts_.end()) { // closing a name that does not exist is no error
          it.prev = std::move(sit->second);
          stmts_.erase(sit);
        }
      } else if (auto pit = portals_.find(it.name); pit != portals_.end()) {
        if (!virtual_portals_.count(it.name))
          portal_at(it.name);
        if (auto v = virtual_portals_.find(it.name);
            v != virtual_portals_.end() && !here(it.name)) {
          it.virt = true;
          if (m.type == 'D' && !v->second.bind.empty())
            it.rebind = v->second.bind; // described through a copy (see write_items)
        }
        if (m.type == 'D') {
          it.st = pit->second;
        } else {
          portals_.erase(pit);
          virtual_portals_.erase(it.name);
        }
      }
      break;
    }
    case 'E': {
      protocol::Reader r(m.body);
      it.name = std::string(r.cstr());
      it.max_rows = r.i32();
      if (!r.ok())
        return false;
      bp.any_exec = true;
      it.again = std::find(executed.begin(), executed.end(), it.name) != executed.end();
      executed.push_back(it.m->body.data()); // the portal name, NUL-terminated in the body
      if (auto pit = portals_.find(it.name); pit != portals_.end())
        it.st = pit->second;
      if (!virtual_portals_.count(it.name))
        portal_at(it.name);
      if (auto v = virtual_portals_.find(it.name); v != virtual_portals_.end() && !here(it.name)) {
        it.virt = true;
        if (!v->second.bind.empty() && !v->second.done) { // made again here, past its rows
          it.rebind = std::move(v->second.bind);
          it.rerun = v->second.sent;
          virtual_portals_.erase(v);
        }
      }
      if (it.st && ends_tx(*it.st)) {
        virtual_gone = true;
        size_t next = bp.items.size();
        if (held >= 0 && next + 1 < batch.size()) {
          bp.split = next;
          break;
        }
        if (failed_tx) {
          // The failed transaction ends here; what follows is routed again, and must run
          // where this batch runs: the transaction's shard, or (a transaction no statement
          // bound yet) the first shard a later Bind routes to, which also gets the failure.
          failed_tx = false;
          held = tx_shard_ >= 0 ? tx_shard_ : batch_shard_;
        }
        break;
      }
      if (!it.st || failed_tx)
        break;
      const auto &an = *it.st->planned.analysis;
      if (!an.parsed || an.stmts.size() != 1)
        break;
      const router::StatementPlan &sp = an.stmts[0];
      if (!sp.next_id.empty()) [[unlikely]] {
        if (auto e = next_id_row(bp, it))
          fail(e->sqlstate, e->message, e->hint);
        break;
      }
      // DEALLOCATE and DISCARD ALL act on the proxy's own statement and settings state; the
      // server-side statements are shared and stay (psycopg 3 sends DEALLOCATE ALL after
      // ROLLBACK).
      if (sp.kind == router::StmtKind::deallocate) {
        if (!sp.set_name.empty() && !stmts_.count(sp.set_name)) {
          fail("26000", missing_statement(sp.set_name));
          break;
        }
        it.special = true;
        it.tag = sp.tag;
        if (!sp.set_name.empty()) {
          it.undo_name = sp.set_name;
          auto sit = stmts_.find(sp.set_name);
          it.prev = std::move(sit->second);
          stmts_.erase(sit);
        } else {
          for (auto s = stmts_.begin(); s != stmts_.end();)
            s = s->first.empty() ? std::next(s) : stmts_.erase(s);
        }
      } else if (sp.kind == router::StmtKind::discard_all) {
        if (in_tx()) {
          fail("25001", "DISCARD ALL cannot run inside a transaction block");
          break;
        }
        it.special = true;
        it.tag = sp.tag;
        for (auto s = stmts_.begin(); s != stmts_.end();)
          s = s->first.empty() ? std::next(s) : stmts_.erase(s);
        settings_ = startup_settings_;
        rehash_settings();
      }
      break;
    }
    default: // Sync, Flush
      break;
    }
    if (it.error)
      break;
  }
  if (bp.cross) {
    undo_items(bp, bp.split); // planned again, as the next part
    bound_here.clear();
    for (const BatchItem &it : bp.items)
      if (it.m->type == 'B')
        bound_here.push_back(it.name);
  }
  if (tx_shard_ >= 0) { // where the portals bound here will live
    int where = bp.shard >= 0 ? bp.shard : held;
    for (const auto &name : bound_here)
      if (where < 0 || where == tx_shard_)
        portal_shard_.erase(name);
      else
        portal_shard_[name] = where;
  }
  return true;
}

} // namespace sg::proxy

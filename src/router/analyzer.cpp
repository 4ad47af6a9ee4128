// Statement analysis over libpg_query's protobuf parse tree. A reflective walk collects what a
// statement touches anywhere (tables, locking clauses, nested DML, functions); typed code reads
// the shard key from the top-level WHERE / VALUES.
#include "router/analyzer.h"
#include "router/values.h"

#include <cstring>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <set>

namespace sg::router {

namespace {

using Node = PgQuery__Node;

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto &c : out)
    c = char(std::tolower(uint8_t(c)));
  return out;
}

// Everything a statement touches, wherever it sits in the tree.
struct Facts {
  std::vector<const PgQuery__RangeVar *> rels;
  std::set<std::string> ctes;
  bool locking = false;
  int dml = 0; // Insert/Update/Delete nodes
  bool volatile_fn = false;
  bool calls = false;    // any function call at all
  int next_id_calls = 0; // shardgate.next_id(), which the proxy answers
};

// shardgate.next_id(): the function the proxy answers itself (src/ids/).
bool names_next_id(const PgQuery__FuncCall *fc) {
  auto is = [](const Node *n, const char *s) {
    return n->node_case == PG_QUERY__NODE__NODE_STRING && lower(n->string->sval) == s;
  };
  return fc->n_funcname == 2 && is(fc->funcname[0], "shardgate") && is(fc->funcname[1], "next_id");
}

bool is_volatile_function(std::string_view name) {
  static const char *names[] = {"nextval",
                                "setval",
                                "lastval",
                                "currval",
                                "txid_current",
                                "pg_current_xact_id",
                                "pg_advisory_lock",
                                "pg_advisory_xact_lock",
                                "pg_try_advisory_lock",
                                "pg_try_advisory_xact_lock",
                                "pg_advisory_unlock",
                                "pg_advisory_lock_shared",
                                "pg_advisory_unlock_all",
                                "pg_notify",
                                "set_config",
                                "pg_sleep_for_update"};
  for (auto n : names)
    if (name == n)
      return true;
  return false;
}

// Calls fn(child) for each message-typed field of m that is set: every element of a repeated
// field, and of a oneof (a Node's union) only the member in use, since the others alias it.
// fn returns false to stop; so does this.
template <class Fn> bool for_each_child(const ProtobufCMessage *m, Fn &&fn) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  const char *base = reinterpret_cast<const char *>(m);
  for (unsigned i = 0; i < d->n_fields; ++i) {
    const ProtobufCFieldDescriptor &fd = d->fields[i];
    if (fd.type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    if (fd.flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      uint32_t which = *reinterpret_cast<const uint32_t *>(base + fd.quantifier_offset);
      if (which != fd.id)
        continue;
    }
    if (fd.label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *reinterpret_cast<const size_t *>(base + fd.quantifier_offset);
      auto *arr = *reinterpret_cast<ProtobufCMessage *const *const *>(base + fd.offset);
      for (size_t k = 0; k < n; ++k)
        if (!fn(arr[k]))
          return false;
    } else if (!fn(*reinterpret_cast<ProtobufCMessage *const *>(base + fd.offset))) {
      return false;
    }
  }
  return true;
}

void walk(const ProtobufCMessage *m, Facts &f, int depth = 0) {
  if (!m || depth > 1000)
    return;
  const ProtobufCMessageDescriptor *d = m->descriptor;
  if (d == &pg_query__range_var__descriptor)
    f.rels.push_back(reinterpret_cast<const PgQuery__RangeVar *>(m));
  else if (d == &pg_query__locking_clause__descriptor)
    f.locking = true;
  else if (d == &pg_query__insert_stmt__descriptor || d == &pg_query__update_stmt__descriptor ||
           d == &pg_query__delete_stmt__descriptor)
    ++f.dml;
  else if (d == &pg_query__common_table_expr__descriptor)
    f.ctes.insert(reinterpret_cast<const PgQuery__CommonTableExpr *>(m)->ctename);
  else if (d == &pg_query__func_call__descriptor) {
    auto *fc = reinterpret_cast<const PgQuery__FuncCall *>(m);
    f.calls = true;
    if (names_next_id(fc))
      ++f.next_id_calls;
    if (fc->n_funcname > 0) {
      const Node *last = fc->funcname[fc->n_funcname - 1];
      if (last->node_case == PG_QUERY__NODE__NODE_STRING &&
          is_volatile_function(lower(last->string->sval)))
        f.volatile_fn = true;
    }
  }
  for_each_child(m, [&](const ProtobufCMessage *c) {
    walk(c, f, depth + 1);
    return true;
  });
}

class Analyzer {
public:
  Analyzer(std::string_view sql, const std::vector<config::Table> &tables,
           const std::vector<ConstToken> &consts)
      : sql_(sql), tables_(tables), consts_(consts) {}

  StatementPlan plan(const Node *stmt);

private:
  struct TableRef {
    int table;
    std::string name; // alias if any, else relation name
  };

  int find_table(const PgQuery__RangeVar *rv) const {
    for (size_t i = 0; i < tables_.size(); ++i) {
      std::string_view n = tables_[i].name;
      size_t dot = n.find('.');
      if (dot == std::string_view::npos) {
        if (n == rv->relname)
          return int(i);
      } else if (n.substr(0, dot) == rv->schemaname && n.substr(dot + 1) == rv->relname) {
        return int(i);
      }
    }
    return -1;
  }

  // Sharded tables referenced anywhere, CTE names excluded.
  std::vector<int> sharded_tables(const Facts &f) const {
    std::vector<int> out;
    for (auto *rv : f.rels) {
      if (rv->schemaname[0] == '\0' && f.ctes.count(rv->relname))
        continue;
      int t = find_table(rv);
      if (t >= 0)
        out.push_back(t);
    }
    return out;
  }

  void collect_from(const Node *n, std::vector<TableRef> &refs) const {
    if (!n)
      return;
    if (n->node_case == PG_QUERY__NODE__NODE_RANGE_VAR) {
      const auto *rv = n->range_var;
      int t = find_table(rv);
      if (t >= 0)
        refs.push_back({t, rv->alias ? rv->alias->aliasname : rv->relname});
    } else if (n->node_case == PG_QUERY__NODE__NODE_JOIN_EXPR) {
      collect_from(n->join_expr->larg, refs);
      collect_from(n->join_expr->rarg, refs);
    }
  }

  void add_relation(const PgQuery__RangeVar *rv, std::vector<TableRef> &refs) const {
    if (!rv)
      return;
    int t = find_table(rv);
    if (t >= 0)
      refs.push_back({t, rv->alias ? rv->alias->aliasname : rv->relname});
  }

  // The first constant of the text at or after byte `loc`.
  std::vector<ConstToken>::const_iterator first_const_at(uint32_t loc) const {
    return std::lower_bound(consts_.begin(), consts_.end(), loc,
                            [](const ConstToken &t, uint32_t l) { return t.start < l; });
  }

  // A literal, a parameter, or either under a type cast.
  bool value_ref(const Node *n, int table, ValueRef &out) const {
    if (!n)
      return false;
    switch (n->node_case) {
    case PG_QUERY__NODE__NODE_TYPE_CAST:
      return value_ref(n->type_cast->arg, table, out);
    case PG_QUERY__NODE__NODE_PARAM_REF:
      out = {true, false, int16_t(table), n->param_ref->number,
             uint32_t(std::max(0, n->param_ref->location))};
      return n->param_ref->number >= 1;
    case PG_QUERY__NODE__NODE_A_CONST: {
      const auto *c = n->a_const;
      if (c->isnull || c->location < 0)
        return false;
      auto loc = uint32_t(c->location);
      auto it = first_const_at(loc);
      if (it == consts_.end())
        return false;
      bool negate = false;
      if (it->start != loc) {
        // doNegate() places a folded negative constant at the '-' sign.
        if (loc >= sql_.size() || sql_[loc] != '-')
          return false;
        negate = true;
      }
      out = {false, negate, int16_t(table), int32_t(it - consts_.begin())};
      return true;
    }
    default:
      return false;
    }
  }

  static bool column_ref(const Node *n, std::string &qualifier, std::string &column) {
    if (!n || n->node_case != PG_QUERY__NODE__NODE_COLUMN_REF)
      return false;
    const auto *cr = n->column_ref;
    if (cr->n_fields == 0 || cr->n_fields > 3)
      return false;
    const Node *last = cr->fields[cr->n_fields - 1];
    if (last->node_case != PG_QUERY__NODE__NODE_STRING)
      return false;
    column = last->string->sval;
    qualifier.clear();
    if (cr->n_fields >= 2) {
      const Node *q = cr->fields[cr->n_fields - 2];
      if (q->node_case != PG_QUERY__NODE__NODE_STRING)
        return false;
      qualifier = q->string->sval;
    }
    return true;
  }

  static void conjuncts(const Node *n, std::vector<const Node *> &out) {
    if (!n)
      return;
    if (n->node_case == PG_QUERY__NODE__NODE_BOOL_EXPR &&
        n->bool_expr->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR) {
      for (size_t i = 0; i < n->bool_expr->n_args; ++i)
        conjuncts(n->bool_expr->args[i], out);
      return;
    }
    out.push_back(n);
  }

  static bool is_op(const PgQuery__AExpr *e, const char *op) {
    if (e->n_name != 1 || e->name[0]->node_case != PG_QUERY__NODE__NODE_STRING)
      return false;
    return std::string_view(e->name[0]->string->sval) == op;
  }

  // Keys for one table reference from `key = v` or `key IN (...)` in the top-level AND.
  bool keys_for(const TableRef &ref, const Node *where, std::vector<ValueRef> &keys) const {
    std::vector<const Node *> cs;
    conjuncts(where, cs);
    const std::string &key = tables_[size_t(ref.table)].key;
    std::string q, col;
    auto matches = [&](const Node *n) {
      if (!column_ref(n, q, col) || col != key)
        return false;
      return q.empty() || q == ref.name;
    };
    for (const Node *c : cs) {
      if (c->node_case != PG_QUERY__NODE__NODE_A_EXPR)
        continue;
      const auto *e = c->a_expr;
      ValueRef v;
      if (e->kind == PG_QUERY__A__EXPR__KIND__AEXPR_OP && is_op(e, "=")) {
        if (matches(e->lexpr) && value_ref(e->rexpr, ref.table, v)) {
          keys.push_back(v);
          return true;
        }
        if (matches(e->rexpr) && value_ref(e->lexpr, ref.table, v)) {
          keys.push_back(v);
          return true;
        }
      } else if (e->kind == PG_QUERY__A__EXPR__KIND__AEXPR_IN && is_op(e, "=") &&
                 matches(e->lexpr) && e->rexpr &&
                 e->rexpr->node_case == PG_QUERY__NODE__NODE_LIST) {
        const auto *l = e->rexpr->list;
        std::vector<ValueRef> vals;
        for (size_t i = 0; i < l->n_items; ++i) {
          if (!value_ref(l->items[i], ref.table, v))
            return false;
          vals.push_back(v);
        }
        if (vals.empty())
          return false;
        keys.insert(keys.end(), vals.begin(), vals.end());
        return true;
      }
    }
    return false;
  }

  // The span of an IN list's items when every item is a plain constant or parameter (nothing
  // but commas and blanks between them, "(" before the first and ")" after the last): {0, 0}
  // otherwise.
  std::pair<uint32_t, uint32_t> in_items(const std::vector<ValueRef> &keys) const {
    auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    struct Span {
      uint32_t start, end;
    };
    std::vector<Span> items;
    for (const ValueRef &v : keys) {
      if (v.is_param) {
        if (v.at >= sql_.size() || sql_[v.at] != '$')
          return {0, 0};
        uint32_t end = v.at + 1;
        while (end < sql_.size() && sql_[end] >= '0' && sql_[end] <= '9')
          ++end;
        items.push_back({v.at, end});
        continue;
      }
      if (v.negate || v.index < 0 || size_t(v.index) >= consts_.size())
        return {0, 0};
      items.push_back({consts_[size_t(v.index)].start, consts_[size_t(v.index)].end});
    }
    for (size_t i = 0; i + 1 < items.size(); ++i) {
      if (items[i + 1].start < items[i].end)
        return {0, 0};
      size_t commas = 0;
      for (uint32_t at = items[i].end; at < items[i + 1].start; ++at)
        if (sql_[at] == ',')
          ++commas;
        else if (!blank(sql_[at]))
          return {0, 0};
      if (commas != 1)
        return {0, 0};
    }
    uint32_t before = items.front().start, after = items.back().end;
    while (before > 0 && blank(sql_[before - 1]))
      --before;
    while (after < sql_.size() && blank(sql_[after]))
      ++after;
    if (before == 0 || sql_[before - 1] != '(' || after >= sql_.size() || sql_[after] != ')')
      return {0, 0};
    return {items.front().start, items.back().end};
  }

  void no_key_error(StatementPlan &p, int table) const {
    const auto &t = tables_[size_t(table)];
    p.target = TargetKind::error;
    p.table = table;
    p.error = {"0A000", "statement on sharded table \"" + t.name + "\" has no usable shard key",
               "add \"" + t.key + " = <value>\" or \"" + t.key +
                   " IN (...)\" to the top-level WHERE; across shards the proxy runs reads it "
                   "can merge, joins on the shard key, and UPDATE/DELETE of one table (see the "
                   "README's routing table)"};
  }

  // An UPDATE or DELETE routed by route_by_where(): it may run on several shards when it names
  // only its own sharded table (no FROM/USING, subquery, CTE or other table) and calls no
  // function whose effect depends on where it runs (nextval, advisory locks, ...).
  void spread_write(StatementPlan &p, const Facts &f, size_t nrefs) const {
    if (nrefs != 1 || f.rels.size() != 1 || !f.ctes.empty() || f.dml != 1 || f.volatile_fn)
      return;
    if (p.target == TargetKind::error && p.error.sqlstate == "0A000") { // no usable key
      p.target = TargetKind::scatter;
      p.keys.clear();
      p.error = {};
      p.multi_write = true;
    } else if (p.target == TargetKind::by_key && p.keys.size() > 1) {
      p.multi_write = true;
    }
  }

  // Routes a statement whose sharded tables must all be in `refs` with keys in `where`.
  void route_by_where(StatementPlan &p, const Facts &f, const std::vector<TableRef> &refs,
                      const Node *where) const {
    auto touched = sharded_tables(f);
    if (touched.empty()) {
      p.target = TargetKind::default_shard;
      return;
    }
    if (touched.size() > refs.size()) {
      // A sharded table inside a subquery, CTE or join condition: no single owner is known.
      int outside = touched[0];
      for (int t : touched)
        if (std::none_of(refs.begin(), refs.end(), [&](auto &r) { return r.table == t; }))
          outside = t;
      no_key_error(p, outside);
      return;
    }
    p.table = refs[0].table;
    for (const auto &r : refs) {
      if (!keys_for(r, where, p.keys)) {
        no_key_error(p, r.table);
        return;
      }
    }
    p.target = TargetKind::by_key;
  }

  void plan_select(StatementPlan &p, const PgQuery__SelectStmt *s, const Facts &f) const {
    p.kind = (f.locking || f.dml > 0 || f.volatile_fn || s->into_clause) ? StmtKind::write
                                                                         : StmtKind::read;
    p.pipelinable = p.kind == StmtKind::read && !f.calls;
    if (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE) {
      // UNION etc.: only fine when no sharded table is involved.
      route_by_where(p, f, {}, nullptr);
      return;
    }
    std::vector<TableRef> refs;
    for (size_t i = 0; i < s->n_from_clause; ++i)
      collect_from(s->from_clause[i], refs);
    route_by_where(p, f, refs, s->where_clause);
    if (p.kind != StmtKind::read)
      return;
    if (p.target == TargetKind::error && p.error.sqlstate == "0A000") {
      // No usable key: every shard, if the proxy can merge it.
      RouteError why;
      if (auto spec = scatter_spec(s, f, why)) {
        p.target = TargetKind::scatter;
        p.keys.clear();
        p.error = {};
        p.scatter = std::move(spec);
      } else if (!why.sqlstate.empty()) {
        p.error = std::move(why);
      }
    } else if (p.target == TargetKind::by_key && p.keys.size() > 1) {
      // Keys that may live on several shards (an IN list): merged from those shards.
      RouteError why;
      p.scatter = scatter_spec(s, f, why);
      if (p.scatter)
        p.in_items = in_items(p.keys);
    }
  }

  static std::string last_name(PgQuery__Node **fields, size_t n) {
    if (n == 0 || fields[n - 1]->node_case != PG_QUERY__NODE__NODE_STRING)
      return {};
    return fields[n - 1]->string->sval;
  }

  // Built-in aggregates (pg_aggregate): a call to one in a plain SELECT list cannot be merged
  // by concatenating rows. (A user-defined aggregate is not known here: see README.)
  static bool is_aggregate_name(const std::string &n) {
    static const char *names[] = {"count",
                                  "sum",
                                  "min",
                                  "max",
                                  "avg",
                                  "array_agg",
                                  "string_agg",
                                  "bool_and",
                                  "bool_or",
                                  "every",
                                  "bit_and",
                                  "bit_or",
                                  "bit_xor",
                                  "json_agg",
                                  "jsonb_agg",
                                  "json_object_agg",
                                  "jsonb_object_agg",
                                  "xmlagg",
                                  "stddev",
                                  "stddev_pop",
                                  "stddev_samp",
                                  "variance",
                                  "var_pop",
                                  "var_samp",
                                  "corr",
                                  "covar_pop",
                                  "covar_samp",
                                  "regr_avgx",
                                  "regr_avgy",
                                  "regr_count",
                                  "regr_intercept",
                                  "regr_r2",
                                  "regr_slope",
                                  "regr_sxx",
                                  "regr_sxy",
                                  "regr_syy",
                                  "mode",
                                  "percentile_cont",
                                  "percentile_disc",
                                  "range_agg",
                                  "range_intersect_agg",
                                  "any_value"};
    for (auto *x : names)
      if (n == x)
        return true;
    return false;
  }

  // The names of the functions the subtree calls (lower-case, once each).
  static void collect_functions(const ProtobufCMessage *m, std::vector<std::string> &out,
                                int depth = 0) {
    if (!m || depth > 1000)
      return;
    if (m->descriptor == &pg_query__func_call__descriptor) {
      const auto *fc = reinterpret_cast<const PgQuery__FuncCall *>(m);
      std::string n = lower(last_name(fc->funcname, fc->n_funcname));
      if (!n.empty() && std::find(out.begin(), out.end(), n) == out.end())
        out.push_back(std::move(n));
    }
    for_each_child(m, [&](const ProtobufCMessage *c) {
      collect_functions(c, out, depth + 1);
      return true;
    });
  }

  // Whether the subtree calls an aggregate or a window function anywhere.
  static bool has_aggregate(const ProtobufCMessage *m, int depth = 0) {
    if (!m || depth > 1000)
      return false;
    if (m->descriptor == &pg_query__func_call__descriptor) {
      const auto *fc = reinterpret_cast<const PgQuery__FuncCall *>(m);
      if (fc->over || fc->agg_star || fc->agg_distinct || fc->agg_filter || fc->n_agg_order ||
          fc->agg_within_group || is_aggregate_name(lower(last_name(fc->funcname, fc->n_funcname))))
        return true;
    }
    return !for_each_child(m,
                           [&](const ProtobufCMessage *c) { return !has_aggregate(c, depth + 1); });
  }

  // The constant index of a non-negative integer LIMIT/OFFSET, -1 for none (or LIMIT ALL), or
  // the parameter it is; false when it is something else (an expression).
  bool limit_value(const Node *n, int32_t &out, ScatterSpec::Param &param) const {
    out = -1;
    if (!n)
      return true;
    if (n->node_case == PG_QUERY__NODE__NODE_PARAM_REF) {
      const auto *p = n->param_ref;
      if (p->number < 1 || p->location < 0 || size_t(p->location) >= sql_.size() ||
          sql_[size_t(p->location)] != '$')
        return false;
      size_t end = size_t(p->location) + 1;
      while (end < sql_.size() && sql_[end] >= '0' && sql_[end] <= '9')
        ++end;
      param = {p->number, uint32_t(p->location), uint32_t(end)};
      return true;
    }
    if (n->node_case != PG_QUERY__NODE__NODE_A_CONST)
      return false;
    const auto *c = n->a_const;
    if (c->isnull)
      return true;
    if (c->val_case != PG_QUERY__A__CONST__VAL_IVAL || c->location < 0)
      return false;
    auto loc = uint32_t(c->location);
    auto it = first_const_at(loc);
    if (it == consts_.end() || it->start != loc)
      return false;
    out = int32_t(it - consts_.begin());
    return true;
  }

  // How to merge a read of one sharded table run on several shards; nullptr for the shapes the
  // proxy cannot merge exactly, with `why` (a 0A000 naming the reason) unless the statement is
  // not a read of one table at all (joins, subqueries, other tables: the caller's error stands).
  std::shared_ptr<ScatterSpec> scatter_spec(const PgQuery__SelectStmt *s, const Facts &f,
                                            RouteError &why) const {
    auto touched = sharded_tables(f);
    bool one_table = touched.size() == 1 && f.rels.size() == 1 && s->n_from_clause == 1 &&
                     s->from_clause[0]->node_case == PG_QUERY__NODE__NODE_RANGE_VAR;
    if (!one_table && (touched.empty() || !colocated(s, f)))
      return nullptr;
    const auto &tb = tables_[size_t(touched[0])];
    auto refuse = [&](const std::string &what) -> std::shared_ptr<ScatterSpec> {
      why = {"0A000",
             "cross-shard SELECT on \"" + tb.name + "\" with " + what + " is not supported yet",
             "add \"" + tb.key +
                 " = <value>\" to the WHERE clause to run it on one shard; "
                 "without a key, a SELECT of plain columns (ORDER BY columns of the list, LIMIT, "
                 "OFFSET) or of count/sum/min/max/avg (and GROUP BY columns) runs on every shard"};
      return nullptr;
    };
    // DISTINCT (a list of one empty node) is merged like GROUP BY every column; DISTINCT ON
    // is not.
    bool distinct = false;
    std::vector<const Node *> distinct_on;
    if (s->n_distinct_clause) {
      if (s->n_distinct_clause != 1 || (s->distinct_clause[0] && s->distinct_clause[0]->node_case !=
                                                                     PG_QUERY__NODE__NODE__NOT_SET))
        distinct_on.assign(s->distinct_clause, s->distinct_clause + s->n_distinct_clause);
      else
        distinct = true;
    }
    if (s->n_window_clause || s->with_clause || !f.ctes.empty())
      return refuse("WINDOW or WITH");
    if (s->limit_option == PG_QUERY__LIMIT_OPTION__LIMIT_OPTION_WITH_TIES)
      return refuse("FETCH ... WITH TIES");
    auto spec = std::make_shared<ScatterSpec>();
    // GROUP BY items: plain columns (by name) or SELECT list positions.
    std::vector<std::string> group_names;
    std::vector<size_t> group_positions;
    for (size_t i = 0; i < s->n_group_clause; ++i) {
      const Node *g = s->group_clause[i];
      if (g->node_case == PG_QUERY__NODE__NODE_COLUMN_REF) {
        group_names.push_back(last_name(g->column_ref->fields, g->column_ref->n_fields));
        if (group_names.back().empty())
          return refuse("this GROUP BY");
      } else if (g->node_case == PG_QUERY__NODE__NODE_A_CONST &&
                 g->a_const->val_case == PG_QUERY__A__CONST__VAL_IVAL &&
                 g->a_const->ival->ival >= 1 &&
                 size_t(g->a_const->ival->ival) <= s->n_target_list) {
        group_positions.push_back(size_t(g->a_const->ival->ival));
      } else {
        return refuse("GROUP BY an expression, ROLLUP, CUBE or GROUPING SETS");
      }
    }
    spec->grouped = s->n_group_clause > 0;
    std::vector<bool> group_used(group_names.size(), false);
    size_t aggs = 0, groups = 0;
    for (size_t i = 0; i < s->n_target_list; ++i) {
      const Node *t = s->target_list[i];
      if (t->node_case != PG_QUERY__NODE__NODE_RES_TARGET || !t->res_target->val)
        return refuse("this SELECT list");
      const Node *v = t->res_target->val;
      if (!has_aggregate(&v->base)) {
        collect_functions(&v->base, spec->functions);
        if (!spec->grouped)
          continue;
        // A grouped query's other columns must be its GROUP BY columns, as they are.
        bool is_group = std::find(group_positions.begin(), group_positions.end(), i + 1) !=
                        group_positions.end();
        if (v->node_case == PG_QUERY__NODE__NODE_COLUMN_REF) {
          std::string col = last_name(v->column_ref->fields, v->column_ref->n_fields);
          const char *alias = t->res_target->name;
          for (size_t g = 0; g < group_names.size(); ++g)
            if (group_names[g] == col || (alias && group_names[g] == alias)) {
              is_group = true;
              group_used[g] = true;
            }
        }
        if (!is_group)
          return refuse("a SELECT list column that is neither grouped (as it is) nor aggregated");
        spec->aggs.push_back(ScatterSpec::Agg::group);
        ++groups;
        continue;
      }
      if (v->node_case != PG_QUERY__NODE__NODE_FUNC_CALL)
        return refuse("an expression over an aggregate");
      const auto *fc = v->func_call;
      std::string name = lower(last_name(fc->funcname, fc->n_funcname));
      if (fc->over)
        return refuse("a window function");
      if (fc->agg_distinct || fc->agg_filter || fc->n_agg_order || fc->agg_within_group)
        return refuse("DISTINCT, FILTER or ORDER BY inside an aggregate");
      bool one_arg = fc->n_args == 1 && !has_aggregate(&fc->args[0]->base);
      if (name == "count" && (fc->agg_star || one_arg))
        spec->aggs.push_back(ScatterSpec::Agg::count);
      else if (name == "sum" && one_arg)
        spec->aggs.push_back(ScatterSpec::Agg::sum);
      else if (name == "min" && one_arg)
        spec->aggs.push_back(ScatterSpec::Agg::min);
      else if (name == "max" && one_arg)
        spec->aggs.push_back(ScatterSpec::Agg::max);
      else if (name == "avg" && one_arg && fc->location >= 0) {
        auto span = parens_span(sql_, uint32_t(fc->location));
        if (!span)
          return refuse("this avg()");
        std::string arg(sql_.substr(span->first + 1, span->second - span->first - 2));
        spec->edits.push_back(
            {uint32_t(fc->location), span->second, "sum(" + arg + "), count(" + arg + ")"});
        spec->avg_names.resize(i + 1);
        const char *alias = t->res_target->name; // "" when none
        spec->avg_names[i] = alias && *alias ? alias : "avg";
        spec->aggs.push_back(ScatterSpec::Agg::avg);
      } else
        return refuse("the aggregate " + name + "()");
      ++aggs;
    }
    if (distinct) {
      if (aggs || spec->grouped)
        return refuse("DISTINCT with GROUP BY or aggregates");
      for (size_t i = 0; i < s->n_target_list; ++i) {
        const Node *v = s->target_list[i]->res_target->val;
        if (v->node_case == PG_QUERY__NODE__NODE_COLUMN_REF && v->column_ref->n_fields > 0 &&
            v->column_ref->fields[v->column_ref->n_fields - 1]->node_case ==
                PG_QUERY__NODE__NODE_A_STAR)
          return refuse("DISTINCT *");
      }
      spec->grouped = true; // every column is a group column
      spec->aggs.assign(s->n_target_list, ScatterSpec::Agg::group);
      groups = s->n_target_list;
    }
    if (std::find(group_used.begin(), group_used.end(), false) != group_used.end())
      return refuse("GROUP BY a column that is not in the SELECT list");
    if (spec->grouped && !aggs && !distinct && !s->having_clause)
      return refuse("GROUP BY without an aggregate (use DISTINCT)");
    if (s->having_clause && (distinct || (!aggs && !spec->grouped)))
      return refuse("HAVING without GROUP BY or aggregates");
    if (aggs && aggs + groups != s->n_target_list)
      return refuse("aggregates beside plain columns (that needs GROUP BY)");
    if (aggs && !spec->grouped && (s->n_sort_clause || s->limit_count || s->limit_offset))
      return refuse("ORDER BY, LIMIT or OFFSET around aggregates without GROUP BY");
    for (size_t i = 0; i < s->n_sort_clause; ++i) {
      const Node *n = s->sort_clause[i];
      if (n->node_case != PG_QUERY__NODE__NODE_SORT_BY)
        return refuse("this ORDER BY");
      const auto *sb = n->sort_by;
      ScatterSpec::Sort k;
      if (sb->sortby_dir == PG_QUERY__SORT_BY_DIR__SORTBY_USING || sb->n_use_op)
        return refuse("ORDER BY ... USING");
      k.desc = sb->sortby_dir == PG_QUERY__SORT_BY_DIR__SORTBY_DESC;
      k.nulls_first = sb->sortby_nulls == PG_QUERY__SORT_BY_NULLS__SORTBY_NULLS_DEFAULT
                          ? k.desc
                          : sb->sortby_nulls == PG_QUERY__SORT_BY_NULLS__SORTBY_NULLS_FIRST;
      const Node *e = sb->node;
      if (e && e->node_case == PG_QUERY__NODE__NODE_COLLATE_CLAUSE) {
        std::string coll =
            lower(last_name(e->collate_clause->collname, e->collate_clause->n_collname));
        if (coll != "c" && coll != "posix")
          return refuse("ORDER BY ... COLLATE other than \"C\"");
        k.collate_c = true;
        e = e->collate_clause->arg;
      }
      if (e && e->node_case == PG_QUERY__NODE__NODE_A_CONST &&
          e->a_const->val_case == PG_QUERY__A__CONST__VAL_IVAL && e->a_const->ival->ival >= 1 &&
          size_t(e->a_const->ival->ival) <= s->n_target_list) {
        k.position = e->a_const->ival->ival;
      } else if (e && e->node_case == PG_QUERY__NODE__NODE_COLUMN_REF) {
        const auto *cr = e->column_ref;
        k.name = last_name(cr->fields, cr->n_fields);
        if (k.name.empty())
          return refuse("this ORDER BY");
        // The merge orders by the output column of that name, as PostgreSQL does for a bare
        // name. A qualified name means the table's column: the output column of that name must
        // be that column.
        for (size_t j = 0; cr->n_fields > 1 && j < s->n_target_list; ++j) {
          const auto *rt = s->target_list[j]->res_target;
          const Node *v = rt->val;
          bool plain = v->node_case == PG_QUERY__NODE__NODE_COLUMN_REF &&
                       last_name(v->column_ref->fields, v->column_ref->n_fields) == k.name;
          std::string out = rt->name ? rt->name : plain ? k.name : "";
          if (out == k.name && (!plain || (rt->name && k.name != rt->name)))
            return refuse("ORDER BY a qualified column whose name an output alias reuses");
        }
      } else {
        return refuse("ORDER BY an expression (order by a column of the SELECT list)");
      }
      spec->order.push_back(std::move(k));
    }
    if (!limit_value(s->limit_count, spec->limit_const, spec->limit_param) ||
        !limit_value(s->limit_offset, spec->offset_const, spec->offset_param))
      return refuse("a LIMIT or OFFSET that is not an integer constant or a parameter");
    if (!distinct_on.empty()) {
      // Each DISTINCT ON item must be the ORDER BY item at its place (PostgreSQL demands the
      // same set first; the merge needs them in the same order, as plain columns).
      if (aggs || spec->grouped || s->having_clause || spec->order.size() < distinct_on.size())
        return refuse("DISTINCT ON without an ORDER BY that starts with its columns");
      for (size_t i = 0; i < distinct_on.size(); ++i) {
        const Node *d = distinct_on[i];
        const auto &o = spec->order[i];
        bool same = false;
        if (d && d->node_case == PG_QUERY__NODE__NODE_A_CONST &&
            d->a_const->val_case == PG_QUERY__A__CONST__VAL_IVAL)
          same = o.position == d->a_const->ival->ival;
        else if (d && d->node_case == PG_QUERY__NODE__NODE_COLUMN_REF)
          same = o.position == 0 &&
                 o.name == last_name(d->column_ref->fields, d->column_ref->n_fields);
        if (!same)
          return refuse("DISTINCT ON whose columns are not the first ORDER BY items, in order");
      }
      spec->distinct_on = uint32_t(distinct_on.size());
    }
    if (s->having_clause) {
      std::string why_not;
      if (!having_spec(s, *spec, group_names, why_not))
        return refuse(why_not);
    }
    return spec;
  }

  // Whether a SELECT's FROM is sharded tables only, joined (inner or outer, or listed) so that
  // every pair of joined rows lives on one shard: their shard keys are equal by top-level
  // `a.key = b.key` conditions (in WHERE or ON, qualified) or USING (key), the key types
  // alike, linking every table. Then each shard runs the join on its own rows, and the
  // results merge like a one-table read's.
  bool colocated(const PgQuery__SelectStmt *s, const Facts &f) const {
    std::vector<std::pair<std::string, int>> refs; // name (alias or relation) -> table
    std::vector<const Node *> conds;
    std::vector<std::pair<int, int>> links; // ref indices
    bool ok = true;
    std::function<int(const Node *)> walk = [&](const Node *n) -> int {
      if (!ok || !n)
        return ok = false, -1;
      if (n->node_case == PG_QUERY__NODE__NODE_RANGE_VAR) {
        int t = find_table(n->range_var);
        std::string name =
            n->range_var->alias ? n->range_var->alias->aliasname : n->range_var->relname;
        if (t < 0 ||
            std::any_of(refs.begin(), refs.end(), [&](auto &r) { return r.first == name; }))
          return ok = false, -1;
        refs.push_back({name, t});
        return int(refs.size() - 1);
      }
      if (n->node_case != PG_QUERY__NODE__NODE_JOIN_EXPR || n->join_expr->is_natural ||
          n->join_expr->alias)
        return ok = false, -1;
      const auto *j = n->join_expr;
      int l = walk(j->larg), r = walk(j->rarg);
      if (!ok)
        return -1;
      conjuncts(j->quals, conds);
      for (size_t i = 0; i < j->n_using_clause; ++i) {
        const Node *u = j->using_clause[i];
        bool simple = j->larg->node_case == PG_QUERY__NODE__NODE_RANGE_VAR &&
                      j->rarg->node_case == PG_QUERY__NODE__NODE_RANGE_VAR;
        if (simple && u->node_case == PG_QUERY__NODE__NODE_STRING &&
            tables_[size_t(refs[size_t(l)].second)].key == u->string->sval &&
            tables_[size_t(refs[size_t(r)].second)].key == u->string->sval)
          links.push_back({l, r});
      }
      return l;
    };
    for (size_t i = 0; i < s->n_from_clause && ok; ++i)
      walk(s->from_clause[i]);
    if (!ok || refs.size() < 2 || f.rels.size() != refs.size())
      return false;
    conjuncts(s->where_clause, conds);
    auto key_of = [&](const Node *n) -> int {
      std::string q, col;
      if (!column_ref(n, q, col) || q.empty())
        return -1;
      for (size_t i = 0; i < refs.size(); ++i)
        if (refs[i].first == q)
          return tables_[size_t(refs[i].second)].key == col ? int(i) : -1;
      return -1;
    };
    for (const Node *c : conds) {
      if (c->node_case != PG_QUERY__NODE__NODE_A_EXPR ||
          c->a_expr->kind != PG_QUERY__A__EXPR__KIND__AEXPR_OP || !is_op(c->a_expr, "="))
        continue;
      int a = key_of(c->a_expr->lexpr), b = key_of(c->a_expr->rexpr);
      if (a >= 0 && b >= 0)
        links.push_back({a, b});
    }
    // One component, over links between keys of the same type.
    std::vector<int> root(refs.size());
    for (size_t i = 0; i < root.size(); ++i)
      root[i] = int(i);
    std::function<int(int)> find = [&](int x) {
      return root[size_t(x)] == x ? x : root[size_t(x)] = find(root[size_t(x)]);
    };
    for (auto [a, b] : links)
      if (tables_[size_t(refs[size_t(a)].second)].key_type ==
          tables_[size_t(refs[size_t(b)].second)].key_type)
        root[size_t(find(a))] = find(b);
    for (size_t i = 1; i < refs.size(); ++i)
      if (find(int(i)) != find(0))
        return false;
    return true;
  }

  // HAVING for the proxy to apply after the merge: its aggregates and group columns become
  // hidden columns at the end of the shards' SELECT list, and the clause leaves their text.
  bool having_spec(const PgQuery__SelectStmt *s, ScatterSpec &spec,
                   const std::vector<std::string> &group_names, std::string &why) const {
    using Cond = ScatterSpec::Cond;
    std::vector<std::string> hidden; // their text for the shards
    auto operand = [&](const Node *n, uint32_t &column) -> bool {
      std::string text;
      ScatterSpec::Agg agg = ScatterSpec::Agg::group;
      if (n && n->node_case == PG_QUERY__NODE__NODE_COLUMN_REF) {
        std::string col = last_name(n->column_ref->fields, n->column_ref->n_fields);
        if (col.empty() ||
            std::find(group_names.begin(), group_names.end(), col) == group_names.end()) {
          why = "HAVING on a column that is not a GROUP BY column (by name)";
          return false;
        }
        text = "\"";
        for (char c : col)
          text += c == '"' ? std::string("\"\"") : std::string(1, c);
        text += "\"";
      } else if (n && n->node_case == PG_QUERY__NODE__NODE_FUNC_CALL) {
        const auto *fc = n->func_call;
        std::string name = lower(last_name(fc->funcname, fc->n_funcname));
        bool one_arg = fc->n_args == 1 && !has_aggregate(&fc->args[0]->base);
        if (fc->over || fc->agg_distinct || fc->agg_filter || fc->n_agg_order ||
            fc->agg_within_group || fc->location < 0) {
          why = "HAVING with this aggregate";
          return false;
        }
        auto span = parens_span(sql_, uint32_t(fc->location));
        if (!span) {
          why = "HAVING with this aggregate";
          return false;
        }
        text =
            std::string(sql_.substr(uint32_t(fc->location), span->second - uint32_t(fc->location)));
        if (name == "count" && (fc->agg_star || one_arg))
          agg = ScatterSpec::Agg::count;
        else if (name == "sum" && one_arg)
          agg = ScatterSpec::Agg::sum;
        else if (name == "min" && one_arg)
          agg = ScatterSpec::Agg::min;
        else if (name == "max" && one_arg)
          agg = ScatterSpec::Agg::max;
        else if (name == "avg" && one_arg) {
          agg = ScatterSpec::Agg::avg;
          std::string arg(sql_.substr(span->first + 1, span->second - span->first - 2));
          text = "sum(" + arg + "), count(" + arg + ")";
        } else {
          why = "HAVING with the aggregate " + name + "()";
          return false;
        }
      } else {
        why = "HAVING on an expression (compare an aggregate or a GROUP BY column with a "
              "constant)";
        return false;
      }
      auto it = std::find(hidden.begin(), hidden.end(), text);
      if (it == hidden.end()) {
        hidden.push_back(text);
        spec.aggs.push_back(agg);
        it = hidden.end() - 1;
      }
      column = uint32_t(s->n_target_list + size_t(it - hidden.begin()));
      return true;
    };
    auto constant = [&](const Node *n, Cond &c) -> bool {
      if (!n || n->node_case != PG_QUERY__NODE__NODE_A_CONST || n->a_const->isnull)
        return false;
      const auto *k = n->a_const;
      if (k->val_case == PG_QUERY__A__CONST__VAL_IVAL)
        c.value = std::to_string(k->ival->ival);
      else if (k->val_case == PG_QUERY__A__CONST__VAL_FVAL)
        c.value = k->fval->fval;
      else if (k->val_case == PG_QUERY__A__CONST__VAL_SVAL) {
        c.value = k->sval->sval;
        c.value_is_text = true;
      } else
        return false;
      return true;
    };
    std::function<bool(const Node *, Cond &)> build = [&](const Node *n, Cond &c) -> bool {
      if (n && n->node_case == PG_QUERY__NODE__NODE_BOOL_EXPR) {
        const auto *b = n->bool_expr;
        c.op = b->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR  ? 0
               : b->boolop == PG_QUERY__BOOL_EXPR_TYPE__OR_EXPR ? 1
                                                                : 2;
        for (size_t i = 0; i < b->n_args; ++i)
          if (!build(b->args[i], c.args.emplace_back()))
            return false;
        return true;
      }
      if (n && n->node_case == PG_QUERY__NODE__NODE_NULL_TEST) {
        c.op = n->null_test->nulltesttype == PG_QUERY__NULL_TEST_TYPE__IS_NULL ? 9 : 10;
        return operand(n->null_test->arg, c.column);
      }
      if (n && n->node_case == PG_QUERY__NODE__NODE_A_EXPR &&
          n->a_expr->kind == PG_QUERY__A__EXPR__KIND__AEXPR_OP && n->a_expr->n_name == 1 &&
          n->a_expr->name[0]->node_case == PG_QUERY__NODE__NODE_STRING) {
        std::string op = n->a_expr->name[0]->string->sval;
        static const std::pair<const char *, uint8_t> ops[] = {
            {"=", 3}, {"<>", 4}, {"!=", 4}, {"<", 5}, {"<=", 6}, {">", 7}, {">=", 8}};
        static const uint8_t flipped[] = {0, 0, 0, 3, 4, 7, 8, 5, 6}; // a < b is b > a
        int code = -1;
        for (auto &[t, v] : ops)
          if (op == t)
            code = v;
        if (code < 0) {
          why = "HAVING with the operator " + op;
          return false;
        }
        c.op = uint8_t(code);
        if (constant(n->a_expr->rexpr, c))
          return operand(n->a_expr->lexpr, c.column);
        if (constant(n->a_expr->lexpr, c)) {
          c.op = flipped[c.op];
          return operand(n->a_expr->rexpr, c.column);
        }
        why = "HAVING comparing two expressions (compare with a constant)";
        return false;
      }
      if (why.empty())
        why = "this HAVING condition";
      return false;
    };
    Cond root;
    if (!build(s->having_clause, root)) {
      if (why.empty())
        why = "this HAVING condition";
      return false;
    }
    // The shards' text: the hidden columns before FROM, and no HAVING.
    if (s->n_target_list == 0 || s->target_list[0]->node_case != PG_QUERY__NODE__NODE_RES_TARGET) {
      why = "HAVING here";
      return false;
    }
    uint32_t list_at = uint32_t(std::max(0, s->target_list[0]->res_target->location));
    auto from = first_token_outside_parens(sql_, list_at, {PG_QUERY__TOKEN__FROM});
    auto having =
        from ? first_token_outside_parens(sql_, *from, {PG_QUERY__TOKEN__HAVING}) : std::nullopt;
    if (!from || !having) {
      why = "HAVING here";
      return false;
    }
    auto end = first_token_outside_parens(sql_, *having + 6,
                                          {PG_QUERY__TOKEN__ORDER, PG_QUERY__TOKEN__LIMIT,
                                           PG_QUERY__TOKEN__OFFSET, PG_QUERY__TOKEN__FETCH,
                                           PG_QUERY__TOKEN__WINDOW, PG_QUERY__TOKEN__FOR,
                                           PG_QUERY__TOKEN__ASCII_59});
    std::string cols;
    for (auto &h : hidden)
      cols += ", " + h;
    spec.edits.push_back({*from, *from, cols + " "});
    spec.edits.push_back({*having, end ? *end : uint32_t(sql_.size()), " "});
    spec.avg_names.resize(spec.aggs.size());
    spec.hidden = uint32_t(hidden.size());
    spec.having = std::move(root);
    return true;
  }

  void plan_insert(StatementPlan &p, const PgQuery__InsertStmt *s, const Facts &f) const {
    p.kind = StmtKind::write;
    int t = s->relation ? find_table(s->relation) : -1;
    auto touched = sharded_tables(f);
    if (t < 0) {
      if (touched.empty())
        p.target = TargetKind::default_shard;
      else
        no_key_error(p, touched[0]);
      return;
    }
    p.table = t;
    const auto &tb = tables_[size_t(t)];
    if (touched.size() > 1) {
      no_key_error(p, t);
      return;
    }
    int pos = -1;
    for (size_t i = 0; i < s->n_cols; ++i) {
      const Node *c = s->cols[i];
      if (c->node_case == PG_QUERY__NODE__NODE_RES_TARGET && tb.key == c->res_target->name)
        pos = int(i);
    }
    auto err = [&](std::string msg, std::string hint) {
      p.target = TargetKind::error;
      p.error = {"0A000", std::move(msg), std::move(hint)};
    };
    if (pos < 0 && s->n_cols > 0) {
      err("INSERT into sharded table \"" + tb.name + "\" does not name its shard key column \"" +
              tb.key + "\"",
          "list the columns, e.g. INSERT INTO " + tb.name + " (" + tb.key + ", ...) VALUES (...)");
      return;
    }
    const Node *sel = s->select_stmt;
    if (!sel || sel->node_case != PG_QUERY__NODE__NODE_SELECT_STMT ||
        sel->select_stmt->n_values_lists == 0) {
      err("INSERT ... SELECT into sharded table \"" + tb.name + "\" is not supported yet",
          "insert with VALUES and a literal or parameter for \"" + tb.key + "\"");
      return;
    }
    const auto *vs = sel->select_stmt;
    if (pos < 0) {
      // No column list: the key's position comes from the catalog when the plan is resolved.
      p.positional = true;
      for (size_t r = 0; r < vs->n_values_lists; ++r) {
        const Node *row = vs->values_lists[r];
        auto &items = p.row_items.emplace_back();
        for (size_t i = 0; row->node_case == PG_QUERY__NODE__NODE_LIST && i < row->list->n_items;
             ++i) {
          ValueRef v;
          if (!value_ref(row->list->items[i], t, v))
            v.table = -1;
          items.push_back(v);
        }
      }
    }
    for (size_t r = 0; r < vs->n_values_lists && !p.positional; ++r) {
      const Node *row = vs->values_lists[r];
      ValueRef v;
      if (row->node_case != PG_QUERY__NODE__NODE_LIST || size_t(pos) >= row->list->n_items ||
          !value_ref(row->list->items[pos], t, v)) {
        err("the shard key \"" + tb.key + "\" of table \"" + tb.name +
                "\" must be a literal or a parameter in every VALUES row",
            "pass the key value explicitly instead of DEFAULT or an expression");
        return;
      }
      p.keys.push_back(v);
    }
    p.target = TargetKind::by_key;
    // Several rows may go to several shards, each INSERT with its own rows (rows() cuts the
    // text), unless RETURNING must follow an ON CONFLICT that may skip rows (DO NOTHING, or
    // DO UPDATE ... WHERE): then the proxy could not put the returned rows back in the order
    // of VALUES. (DO UPDATE without WHERE returns one row per row of VALUES.)
    const auto *oc = s->on_conflict_clause;
    bool may_skip =
        oc && (oc->action != PG_QUERY__ON_CONFLICT_ACTION__ONCONFLICT_UPDATE || oc->where_clause);
    if (vs->n_values_lists > 1 && !(may_skip && s->n_returning_list > 0) && !s->with_clause &&
        f.ctes.empty() && f.dml == 1 && !f.volatile_fn) {
      p.multi_write = true;
      p.insert_values = true;
    }
  }

  bool sets_key(const std::vector<TableRef> &refs, PgQuery__Node **targets, size_t n,
                StatementPlan &p) const {
    if (refs.empty())
      return false;
    const auto &tb = tables_[size_t(refs[0].table)];
    for (size_t i = 0; i < n; ++i) {
      const Node *t = targets[i];
      if (t->node_case == PG_QUERY__NODE__NODE_RES_TARGET && tb.key == t->res_target->name) {
        p.target = TargetKind::error;
        p.table = refs[0].table;
        p.error = {"0A000",
                   "UPDATE of the shard key \"" + tb.key + "\" of table \"" + tb.name +
                       "\" is not supported",
                   "a row cannot move between shards by UPDATE; DELETE it and INSERT it with "
                   "the new key"};
        return true;
      }
    }
    return false;
  }

  // COPY t FROM STDIN into a sharded table runs on every shard, each row to its owner
  // (proxy/session_copy.cpp); COPY TO and COPY (query) are utility statements as before.
  void plan_copy(StatementPlan &p, const PgQuery__CopyStmt *c, const Facts &f) const {
    p.kind = c->is_from ? StmtKind::write : StmtKind::read;
    int t = c->relation ? find_table(c->relation) : -1;
    bool stdin_ = c->filename == nullptr || c->filename[0] == '\0';
    if (t < 0 || !c->is_from || c->is_program || !stdin_) {
      p.kind = StmtKind::other;
      plan_utility_tables(p, f, false);
      return;
    }
    p.table = t;
    const auto &tb = tables_[size_t(t)];
    StatementPlan::CopyIn ci;
    auto err = [&](std::string msg, std::string hint) {
      p.target = TargetKind::error;
      p.error = {"0A000", std::move(msg), std::move(hint)};
    };
    auto one_char = [&](const Node *arg, char &out) {
      if (arg && arg->node_case == PG_QUERY__NODE__NODE_STRING &&
          std::strlen(arg->string->sval) == 1)
        out = arg->string->sval[0];
    };
    bool escape_set = false, null_set = false;
    for (size_t i = 0; i < c->n_options; ++i) {
      const Node *o = c->options[i];
      if (o->node_case != PG_QUERY__NODE__NODE_DEF_ELEM)
        continue;
      std::string name = o->def_elem->defname;
      const Node *arg = o->def_elem->arg;
      std::string sval =
          arg && arg->node_case == PG_QUERY__NODE__NODE_STRING ? arg->string->sval : "";
      if (name == "format") {
        if (lower(sval) == "binary") {
          err("COPY FROM STDIN in binary format into sharded table \"" + tb.name +
                  "\" is not supported yet",
              "use the text or CSV format");
          return;
        }
        ci.csv = lower(sval) == "csv";
      } else if (name == "delimiter") {
        one_char(arg, ci.delimiter);
      } else if (name == "null") {
        ci.null_text = sval;
        null_set = true;
      } else if (name == "quote") {
        one_char(arg, ci.quote);
      } else if (name == "escape") {
        one_char(arg, ci.escape);
        escape_set = true;
      } else if (name == "header") {
        ci.header = !arg ||
                    (arg->node_case == PG_QUERY__NODE__NODE_BOOLEAN && arg->boolean->boolval) ||
                    (arg->node_case == PG_QUERY__NODE__NODE_INTEGER && arg->integer->ival != 0) ||
                    lower(sval) == "true" || lower(sval) == "on" || lower(sval) == "match";
      }
    }
    if (ci.csv && !null_set)
      ci.null_text = "";
    if (ci.csv && ci.delimiter == '\t' && !has_option(c, "delimiter"))
      ci.delimiter = ',';
    if (!escape_set)
      ci.escape = ci.quote;
    for (size_t i = 0; i < c->n_attlist; ++i) {
      const Node *a = c->attlist[i];
      if (a->node_case == PG_QUERY__NODE__NODE_STRING && tb.key == a->string->sval)
        ci.key_field = int(i);
    }
    if (c->n_attlist > 0 && ci.key_field < 0) {
      err("COPY into sharded table \"" + tb.name + "\" must include its shard key column \"" +
              tb.key + "\"",
          "list the key column in the COPY column list");
      return;
    }
    p.copy_in = std::move(ci);
    p.target = TargetKind::scatter;
    p.multi_write = true;
  }

  static bool has_option(const PgQuery__CopyStmt *c, const char *name) {
    for (size_t i = 0; i < c->n_options; ++i)
      if (c->options[i]->node_case == PG_QUERY__NODE__NODE_DEF_ELEM &&
          std::string_view(c->options[i]->def_elem->defname) == name)
        return true;
    return false;
  }

  void plan_utility_tables(StatementPlan &p, const Facts &f, bool broadcast_ok) const {
    auto touched = sharded_tables(f);
    if (touched.empty())
      p.target = TargetKind::default_shard;
    else if (broadcast_ok) {
      p.target = TargetKind::all_primaries;
      p.table = touched[0];
    } else
      no_key_error(p, touched[0]);
  }

  // SELECT shardgate.next_id() [AS name], alone: the proxy answers it (a read on no shard,
  // p.next_id its column's name). Anywhere else the function would reach a shard, which has
  // no such function: 0A000.
  static void plan_next_id(StatementPlan &p, const Node *stmt, const Facts &f) {
    const PgQuery__SelectStmt *s =
        stmt->node_case == PG_QUERY__NODE__NODE_SELECT_STMT ? stmt->select_stmt : nullptr;
    const PgQuery__ResTarget *rt =
        s && s->n_target_list == 1 &&
                s->target_list[0]->node_case == PG_QUERY__NODE__NODE_RES_TARGET
            ? s->target_list[0]->res_target
            : nullptr;
    const Node *v = rt ? rt->val : nullptr;
    bool alone = f.next_id_calls == 1 && v && v->node_case == PG_QUERY__NODE__NODE_FUNC_CALL &&
                 names_next_id(v->func_call) && !v->func_call->n_args && !v->func_call->agg_star &&
                 !v->func_call->agg_distinct && !v->func_call->over && !v->func_call->agg_filter &&
                 !v->func_call->n_agg_order && !v->func_call->func_variadic &&
                 s->op == PG_QUERY__SET_OPERATION__SETOP_NONE && !s->n_from_clause &&
                 !s->where_clause && !s->n_group_clause && !s->having_clause && !s->n_sort_clause &&
                 !s->limit_count && !s->limit_offset && !s->n_distinct_clause && !s->into_clause &&
                 !s->with_clause && !s->n_window_clause && !s->n_values_lists &&
                 !s->n_locking_clause;
    if (alone) {
      p.kind = StmtKind::read;
      p.target = TargetKind::default_shard;
      p.next_id = rt->name && *rt->name ? rt->name : "next_id";
      p.pipelinable = false;
      return;
    }
    p.next_id.clear(); // (EXPLAIN copied its statement's plan)
    p.target = TargetKind::error;
    p.error = {"0A000",
               "shardgate.next_id() is answered by the proxy only as a statement of its own",
               "run SELECT shardgate.next_id() (one ID per call), and use its value in the "
               "next statement"};
  }

  std::string_view sql_;
  const std::vector<config::Table> &tables_;
  const std::vector<ConstToken> &consts_;
};

StatementPlan Analyzer::plan(const Node *stmt) {
  StatementPlan p;
  Facts f;
  walk(&stmt->base, f);
  p.tableless = f.rels.empty() && f.dml == 0;
  switch (stmt->node_case) {
  case PG_QUERY__NODE__NODE_SELECT_STMT:
    plan_select(p, stmt->select_stmt, f);
    break;
  case PG_QUERY__NODE__NODE_INSERT_STMT:
    plan_insert(p, stmt->insert_stmt, f);
    break;
  case PG_QUERY__NODE__NODE_UPDATE_STMT: {
    p.kind = StmtKind::write;
    const auto *s = stmt->update_stmt;
    std::vector<TableRef> refs;
    add_relation(s->relation, refs);
    for (size_t i = 0; i < s->n_from_clause; ++i)
      collect_from(s->from_clause[i], refs);
    if (!sets_key(refs, s->target_list, s->n_target_list, p)) {
      route_by_where(p, f, refs, s->where_clause);
      spread_write(p, f, refs.size());
    }
    break;
  }
  case PG_QUERY__NODE__NODE_DELETE_STMT: {
    p.kind = StmtKind::write;
    const auto *s = stmt->delete_stmt;
    std::vector<TableRef> refs;
    add_relation(s->relation, refs);
    for (size_t i = 0; i < s->n_using_clause; ++i)
      collect_from(s->using_clause[i], refs);
    route_by_where(p, f, refs, s->where_clause);
    spread_write(p, f, refs.size());
    break;
  }
  case PG_QUERY__NODE__NODE_EXPLAIN_STMT: {
    StatementPlan inner = plan(stmt->explain_stmt->query);
    p = inner;
    break;
  }
  case PG_QUERY__NODE__NODE_TRANSACTION_STMT: {
    const auto *t = stmt->transaction_stmt;
    p.target = TargetKind::none;
    switch (t->kind) {
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START:
      p.kind = StmtKind::begin;
      p.tag = t->kind == PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN ? "BEGIN"
                                                                           : "START TRANSACTION";
      for (size_t i = 0; i < t->n_options; ++i) {
        const Node *o = t->options[i];
        if (o->node_case == PG_QUERY__NODE__NODE_DEF_ELEM &&
            std::string_view(o->def_elem->defname) == "transaction_read_only" && o->def_elem->arg &&
            o->def_elem->arg->node_case == PG_QUERY__NODE__NODE_A_CONST &&
            o->def_elem->arg->a_const->val_case == PG_QUERY__A__CONST__VAL_IVAL)
          p.read_only_tx = o->def_elem->arg->a_const->ival->ival != 0;
      }
      break;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT:
      p.kind = StmtKind::commit;
      p.tag = "COMMIT";
      p.chain = t->chain;
      break;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK:
      p.kind = StmtKind::rollback;
      p.tag = "ROLLBACK";
      p.chain = t->chain;
      break;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_SAVEPOINT:
      p.kind = StmtKind::savepoint;
      p.tag = "SAVEPOINT";
      break;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_RELEASE:
      p.kind = StmtKind::savepoint;
      p.tag = "RELEASE";
      break;
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_TO:
      p.kind = StmtKind::savepoint;
      p.tag = "ROLLBACK";
      break;
    default: // PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED
      p.kind = StmtKind::other;
      p.prepared_tx = true;
      p.target = TargetKind::default_shard;
      break;
    }
    break;
  }
  case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT: {
    const auto *v = stmt->variable_set_stmt;
    p.target = TargetKind::none;
    std::string name = lower(v->name);
    if (v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET_ALL) {
      p.kind = StmtKind::reset_all;
      p.tag = "RESET";
    } else if (name == "transaction" || (v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_MULTI &&
                                         name != "session characteristics")) {
      p.kind = StmtKind::savepoint; // transaction-scoped: travels with the transaction
      p.tag = "SET";
    } else if (v->is_local) {
      p.kind = StmtKind::set_local;
      p.tag = "SET";
    } else {
      p.kind = StmtKind::set;
      p.set_name = name;
      p.tag = v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET ? "RESET" : "SET";
    }
    break;
  }
  case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
    p.kind = StmtKind::read;
    p.target = TargetKind::default_shard;
    p.tag = "SHOW";
    break;
  case PG_QUERY__NODE__NODE_DISCARD_STMT:
    if (stmt->discard_stmt->target == PG_QUERY__DISCARD_MODE__DISCARD_ALL) {
      p.kind = StmtKind::discard_all;
      p.target = TargetKind::none;
      p.tag = "DISCARD ALL";
    } else {
      p.kind = StmtKind::other;
      p.target = TargetKind::default_shard;
    }
    break;
  case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
    p.kind = StmtKind::deallocate;
    p.target = TargetKind::none;
    p.set_name = stmt->deallocate_stmt->name ? stmt->deallocate_stmt->name : "";
    p.tag = p.set_name.empty() ? "DEALLOCATE ALL" : "DEALLOCATE";
    break;
  case PG_QUERY__NODE__NODE_CREATE_STMT:
  case PG_QUERY__NODE__NODE_ALTER_TABLE_STMT:
  case PG_QUERY__NODE__NODE_TRUNCATE_STMT:
  case PG_QUERY__NODE__NODE_INDEX_STMT:
  case PG_QUERY__NODE__NODE_RENAME_STMT:
    p.kind = StmtKind::ddl;
    plan_utility_tables(p, f, true);
    break;
  case PG_QUERY__NODE__NODE_DROP_STMT: {
    p.kind = StmtKind::ddl;
    const auto *d = stmt->drop_stmt;
    p.target = TargetKind::default_shard;
    if (d->remove_type == PG_QUERY__OBJECT_TYPE__OBJECT_TABLE) {
      // DROP TABLE names are lists of Strings, not RangeVars.
      for (size_t i = 0; i < d->n_objects; ++i) {
        const Node *o = d->objects[i];
        if (o->node_case != PG_QUERY__NODE__NODE_LIST || o->list->n_items == 0)
          continue;
        PgQuery__RangeVar rv = PG_QUERY__RANGE_VAR__INIT;
        const Node *last = o->list->items[o->list->n_items - 1];
        if (last->node_case != PG_QUERY__NODE__NODE_STRING)
          continue;
        rv.relname = last->string->sval;
        if (o->list->n_items >= 2 &&
            o->list->items[o->list->n_items - 2]->node_case == PG_QUERY__NODE__NODE_STRING)
          rv.schemaname = o->list->items[o->list->n_items - 2]->string->sval;
        int t = find_table(&rv);
        if (t >= 0) {
          p.target = TargetKind::all_primaries;
          p.table = t;
        }
      }
    }
    break;
  }
  case PG_QUERY__NODE__NODE_COPY_STMT:
    plan_copy(p, stmt->copy_stmt, f);
    break;
  case PG_QUERY__NODE__NODE_VACUUM_STMT:
    p.kind = StmtKind::other;
    plan_utility_tables(p, f, true);
    break;
  case PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT:
    p.kind = StmtKind::ddl;
    plan_utility_tables(p, f, false);
    break;
  default:
    p.kind = f.dml > 0 ? StmtKind::write : StmtKind::other;
    p.cursor = stmt->node_case == PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT ||
               stmt->node_case == PG_QUERY__NODE__NODE_FETCH_STMT ||
               stmt->node_case == PG_QUERY__NODE__NODE_CLOSE_PORTAL_STMT;
    plan_utility_tables(p, f, false);
    break;
  }
  if (f.next_id_calls)
    plan_next_id(p, stmt, f);
  return p;
}

// The highest $n under m: every message field is walked through protobuf-c's descriptors (only
// the member set of a oneof, such as Node's).
int max_param_ref(const ProtobufCMessage *m) {
  if (!m)
    return 0;
  const ProtobufCMessageDescriptor *d = m->descriptor;
  int best = d == &pg_query__param_ref__descriptor
                 ? reinterpret_cast<const PgQuery__ParamRef *>(m)->number
                 : 0;
  const char *base = reinterpret_cast<const char *>(m);
  for (unsigned i = 0; i < d->n_fields; ++i) {
    const ProtobufCFieldDescriptor &f = d->fields[i];
    if (f.type != PROTOBUF_C_TYPE_MESSAGE)
      continue;
    if (f.label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *reinterpret_cast<const size_t *>(base + f.quantifier_offset);
      auto items = *reinterpret_cast<ProtobufCMessage *const *const *>(base + f.offset);
      for (size_t k = 0; k < n; ++k)
        best = std::max(best, max_param_ref(items[k]));
      continue;
    }
    if ((f.flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *reinterpret_cast<const uint32_t *>(base + f.quantifier_offset) != f.id)
      continue;
    best = std::max(best,
                    max_param_ref(*reinterpret_cast<ProtobufCMessage *const *>(base + f.offset)));
  }
  return best;
}

} // namespace

Analysis analyze(std::string_view sql, const std::vector<config::Table> &tables,
                 const std::vector<ConstToken> &consts) {
  Analysis a;
  PgQueryProtobufParseResult pr = pg_query_parse_protobuf(sql.data());
  if (pr.error) {
    a.parse_error = pr.error->message ? pr.error->message : "syntax error";
    pg_query_free_protobuf_parse_result(pr);
    StatementPlan p; // did not parse: the default shard's primary reports the error
    p.kind = StmtKind::write;
    p.target = TargetKind::default_shard;
    p.length = uint32_t(sql.size());
    a.stmts.push_back(std::move(p));
    return a;
  }
  PgQuery__ParseResult *tree = pg_query__parse_result__unpack(
      nullptr, pr.parse_tree.len, reinterpret_cast<const uint8_t *>(pr.parse_tree.data));
  pg_query_free_protobuf_parse_result(pr);
  if (!tree) {
    a.parse_error = "parse tree could not be decoded";
    return a;
  }
  a.parsed = true;
  Analyzer an(sql, tables, consts);
  for (size_t i = 0; i < tree->n_stmts; ++i) {
    const PgQuery__RawStmt *raw = tree->stmts[i];
    if (!raw->stmt)
      continue;
    StatementPlan p = an.plan(raw->stmt);
    a.max_param = std::max(a.max_param, max_param_ref(&raw->stmt->base));
    p.location = uint32_t(std::max(0, raw->stmt_location));
    p.length = raw->stmt_len > 0 ? uint32_t(raw->stmt_len) : uint32_t(sql.size()) - p.location;
    if (p.insert_values) {
      p.value_rows = values_rows(sql.substr(p.location, p.length),
                                 p.positional ? p.row_items.size() : p.keys.size());
      if (p.value_rows.empty())
        p.multi_write = false; // not cut: a statement on several shards stays refused
    }
    a.stmts.push_back(std::move(p));
  }
  pg_query__parse_result__free_unpacked(tree, nullptr);
  return a;
}

} // namespace sg::router

namespace sg::router {

std::string quote_e_literal(std::string_view v) {
  std::string o = "E'";
  for (char c : v) {
    if (c == '\'' || c == '\\')
      o.push_back(c);
    o.push_back(c);
  }
  return o + "'";
}

std::optional<std::string> canonical_set(const std::string &stmt) {
  PgQueryProtobufParseResult pr = pg_query_parse_protobuf(stmt.c_str());
  if (pr.error) {
    pg_query_free_protobuf_parse_result(pr);
    return std::nullopt;
  }
  PgQuery__ParseResult *tree = pg_query__parse_result__unpack(
      nullptr, pr.parse_tree.len, reinterpret_cast<const uint8_t *>(pr.parse_tree.data));
  pg_query_free_protobuf_parse_result(pr);
  if (!tree)
    return std::nullopt;
  std::optional<std::string> out;
  if (tree->n_stmts == 1 && tree->stmts[0]->stmt &&
      tree->stmts[0]->stmt->node_case == PG_QUERY__NODE__NODE_VARIABLE_SET_STMT) {
    const auto *v = tree->stmts[0]->stmt->variable_set_stmt;
    std::string name = lower(v->name ? v->name : "");
    bool name_ok = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return std::isalnum(uint8_t(c)) || c == '_' || c == '.';
    });
    if (name_ok && !v->is_local) {
      if (v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_DEFAULT ||
          v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET) {
        out = "RESET " + name;
      } else if (v->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE && v->n_args > 0) {
        std::string values;
        bool ok = true;
        for (size_t i = 0; i < v->n_args && ok; ++i) {
          const Node *a = v->args[i];
          if (a->node_case != PG_QUERY__NODE__NODE_A_CONST || a->a_const->isnull) {
            ok = false;
            break;
          }
          const auto *c = a->a_const;
          std::string one;
          switch (c->val_case) {
          case PG_QUERY__A__CONST__VAL_SVAL:
            one = quote_e_literal(c->sval->sval);
            break;
          case PG_QUERY__A__CONST__VAL_IVAL:
            one = std::to_string(c->ival->ival);
            break;
          case PG_QUERY__A__CONST__VAL_FVAL:
            one = quote_e_literal(c->fval->fval);
            break;
          case PG_QUERY__A__CONST__VAL_BOOLVAL:
            one = c->boolval->boolval ? "true" : "false";
            break;
          default:
            ok = false;
          }
          values += (values.empty() ? "" : ", ") + one;
        }
        if (ok)
          out = "SET " + name + " TO " + values;
      }
    }
  }
  pg_query__parse_result__free_unpacked(tree, nullptr);
  return out;
}

} // namespace sg::router

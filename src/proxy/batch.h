// The extended protocol's batches as on_batch() plans them (extended.cpp runs them,
// extended_plan.cpp plans them): one item per client message, and the plan of the whole batch.
// Internal to the session's translation units.
#pragma once

#include "proxy/session.h"

#include <optional>
#include <string>

namespace sg::proxy {

struct Session::BatchItem {
  const Msg *m = nullptr;
  StmtRef st;            // P: the new statement; B, D S: the one named; D P, E: the portal's
  StmtRef prev;          // P, C S, E of DEALLOCATE name: what `name` held before (undo)
  std::string name;      // P, C S: statement name; B, D P, C P, E: portal name
  std::string undo_name; // E of DEALLOCATE name: the statement it drops
  char target = 0;       // D, C: 'S' or 'P'
  protocol::BindMsg bind;
  bool special = false; // E of DEALLOCATE / DISCARD ALL: the proxy answers it (tag)
  bool again = false;   // E: the portal was executed earlier in this batch
  bool virt = false;    // D P, E: the portal lives on no backend (see virtual_portals_)
  std::string rebind;   // D P, E: the Bind that makes it again on this batch's backend
  uint64_t rerun = 0;   // E with rebind: rows the client has had from it
  StmtRef prev_portal;  // B: what the portal ran before
  int32_t max_rows = 0; // E: its row limit (0: all)
  int guard_table = -1; // B of an INSERT without a column list: its key position's guard first
  std::string tag;
  std::string id_row; // E of SELECT shardgate.next_id() (special): its DataRow, sent before the tag
  std::optional<router::RouteError> error; // the proxy's own error here: the walk's last item
};

struct Session::BatchPlan {
  std::vector<BatchItem> items;
  bool ends_sync = false;
  bool error = false;
  int shard = -1; // of the first Bind that routes to one
  bool any_bind = false, all_read = true, any_exec = false;
  bool side_deferred = false; // transaction control ran on the side connection
  // The batch ends a transaction that holds a shard, and more follows: the messages after
  // `split` run as a batch of their own (maybe elsewhere), as PostgreSQL runs them in a new
  // transaction; the first part is closed by our own Sync.
  size_t split = 0;
  // The split is where the batch's statements turn to another shard (cross_split_at()): the
  // parts run one after the other in one transaction (the client's, or the proxy's own, which
  // commits at the client's Sync), each on its shard.
  bool cross = false;
  int binds = 0;
  StmtRef first_bound; // for metrics and the slow-query log
  StmtRef ddl;         // a DDL statement to run on every primary (the batch's only Bind)
  StmtRef end_multi;   // COMMIT or ROLLBACK of a transaction across shards (its only Bind)
  // A read on every shard (router::TargetKind::scatter), merged: the batch is [Parse] Bind
  // [Describe portal] Execute Sync outside a transaction; scatter_item is its Bind.
  StmtRef scatter;
  size_t scatter_item = 0;
  uint64_t scatter_shards = 0;
  bool scatter_write = false; // `scatter` is a write on several shards (scatter_write())
  QueryKind kind = QueryKind::other;
};

} // namespace sg::proxy

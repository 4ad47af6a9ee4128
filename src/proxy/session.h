// One client connection: startup and authentication, then the query loop with transaction
// (or session) pooling, routing by shard key, and prepared statements that follow the client
// across pooled backends.
#pragma once

#include "protocol/messages.h"
#include "proxy/errors.h"
#include "proxy/fifo.h"
#include "proxy/server.h"
#include "router/router.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace sg::proxy {

class Session {
public:
  Session(Worker &w, Stream sock, std::string peer);
  ~Session();
  Task<void> run();
  Worker &worker() const { return *w_; } // the worker it lives on now

private:
  // A statement the client prepared (named, or the unnamed one).
  struct ClientStmt {
    uint32_t id = 0;         // interned per worker (set_id)
    std::string server_name; // the backend-side name, "sg_<id>"; empty for the unnamed one
    std::string text;
    std::vector<uint32_t> types;
    router::PlannedText planned;
    uint64_t unnamed_tag = 0; // for the unnamed statement: which Parse this is
    void set_id(uint32_t i) {
      id = i;
      server_name = "sg_" + std::to_string(i);
    }
  };

  // Statements are shared: the name a Parse defines may be redefined or closed later in the
  // same batch, while earlier Binds still refer to the statement they named at their turn.
  using StmtRef = std::shared_ptr<ClientStmt>;

  // What the proxy expects back from the backend for each message it sent, in order.
  enum class Expect : uint8_t { one, describe_stmt, execute, sync, query, synthetic };
  struct Pending {
    Pending(Expect k, bool fwd = true) : kind(k), forward(fwd) {}
    Expect kind;
    bool forward = true;    // false: swallow the success responses (proxy-injected)
    uint8_t skip_done = 0;  // CommandCompletes to swallow first (a guard before the query)
    bool key_guard = false; // the guard's own Execute (extended protocol): see key_guard()
    bool parse_unnamed = false;
    bool portal_undo = false; // a client Bind of portal client_name, which held `prev`
    uint64_t prev_owner = 0;  // parse_unnamed: the backend's unnamed statement before it
    // A client Parse or Close of client_name that the server may skip after an earlier
    // error: undone then (the name goes back to `prev`, or away when prev is empty).
    bool undo = false;
    // An injected Parse that fails on purpose, so that the backend fails the implicit or open
    // transaction exactly where the proxy raised an error of its own; the backend's error is
    // replaced by `synthetic` (or swallowed when that is empty).
    bool fail = false;
    uint32_t parse_id = 0; // for an injected/forwarded Parse: forget it on error
    std::string client_name;
    StmtRef prev;
    StmtRef exec;          // an Execute: the statement its portal runs (SET tracking)
    int32_t count = -1;    // an Execute whose rows are counted (exec_counts_ index)
    uint64_t skip = 0;     // rows of a portal made again that the client had: dropped
    uint64_t rerun = 0;    // the same, taken off the CommandComplete count
    bool status = false;   // a swallowed ReadyForQuery whose status the client takes on
    bool deferred = false; // `exec` is transaction control that waits for the transaction's
                           // first statement, run on a side connection: applied when done
    std::string synthetic; // bytes the proxy answers with itself
  };

  struct Attached {
    std::unique_ptr<BackendConn> conn;
    Pool *pool = nullptr;
  };

  struct Msg {
    char type;
    std::string body;
  };

  // Startup
  Task<bool> startup();
  Task<bool> authenticate(const std::string &user);
  Task<bool> send_server_params();
  Task<void> handle_cancel(std::string_view body);
  Task<void> forward_cancel(const Node *node, int32_t pid, int32_t key);

  // Query loop
  Task<void> query_loop();
  // Packing: between transactions, holding no backend, the session may move to the worker
  // its own worker is asked to hand sessions to (see Server's balancer).
  bool movable() const;
  Task<void> move();
  void arrive(int fd);
  // A simple Query: route_query() decides with no I/O; query_loop() runs the common case
  // itself (no coroutine frame per query). sql is query_, valid until the next message.
  enum class QueryStep : uint8_t {
    answered,
    run,
    end_failed_tx,
    broadcast,
    side,
    hold,
    scatter,
    scatter_write,
    copy_in,
    end_multi,
    mirrored_write,
    next_id,  // SELECT shardgate.next_id(): answered here (session_ids.cpp)
    learn_key // an INSERT without a column list: its table's key position is read first
  };
  struct QueryRun {
    int shard = -1;
    bool read = false, all_read = true;
    char tx_before = 'I';
    std::string deferred_before;
    std::chrono::steady_clock::time_point started;
  };
  QueryStep route_query(const std::string &sql, QueryRun &q);
  QueryStep refuse(const std::string &sqlstate, const std::string &msg,
                   const std::string &hint = {});
  // A migration's cutover pauses writes to the keys it moves. A request outside a transaction
  // that writes one waits here (a few ms at a time, up to cutover_pause_ms and a margin) and
  // is routed again, to the new owner once the flip is applied. In a transaction that holds a
  // backend such a write is refused (40001) instead: waiting would hold its locks, which the
  // cutover waits for.
  bool may_hold(const router::Resolved &r);
  bool batch_moves_key(const std::vector<Msg> &batch);
  Task<void> hold_a_moment();
  std::chrono::steady_clock::time_point hold_since_{};
  // Pipelined reads (see mux.h).
  bool pipelinable(const QueryRun &q, const router::StatementPlan &sp, bool alone) const;
  MuxLane *mux_join(size_t node);
  void mux_leave(MuxLane &m, bool failed);
  void mux_release(MuxLane &m);
  void write_query(BackendConn &b, const std::string &sql);
  Task<bool> query_failed(QueryRun &q, BackendConn *b);
  void query_done(const QueryRun &q, BackendConn &b);
  Task<void> end_failed_tx();
  Task<bool> on_batch();
  struct BatchItem;
  struct BatchPlan;
  static bool deferrable(const ClientStmt &st);
  static bool changes_settings(const ClientStmt &st);
  static bool pure_read(const ClientStmt &st);
  static bool ends_tx(const ClientStmt &st);
  static bool plain_statements(const BatchPlan &bp);
  struct VirtualPortal;
  static bool same_param_count(const protocol::BindMsg &bind, const VirtualPortal &v,
                               const ClientStmt &st);
  static bool params_cover_keys(const router::StatementPlan &sp, const protocol::BindMsg &bind);
  bool scatter_shape(const std::vector<Msg> &batch) const;
  size_t cross_split_at(const std::vector<Msg> &batch, const BatchPlan &bp, int shard,
                        bool failed_tx) const;
  void undo_items(BatchPlan &bp, size_t from);
  bool cut_allowed(const BatchPlan &bp, bool failed_tx) const;
  bool rest_plain(const std::vector<Msg> &batch, size_t from) const;
  static bool whole_statement(const std::vector<Msg> &batch, size_t b, const std::string &text);
  bool plan_batch(const std::vector<Msg> &batch, BatchPlan &bp);
  enum class BatchMode : uint8_t { synth, side, backend };
  BatchMode batch_mode(const BatchPlan &bp) const;
  void run_deferred(const ClientStmt &st, bool reply = true);
  Task<bool> side_query();
  static bool can_defer_set(const router::StatementPlan &sp, const std::string &text);
  void defer_set(const router::StatementPlan &sp, const std::string &text);
  void synthesize_items(BatchPlan &bp);
  void write_items(BackendConn &b, BatchPlan &bp, bool side);
  void write_parse(BackendConn &b, const BatchItem &it);
  void write_failure(const std::string &synthetic);
  void write_implicit_local();
  void track_set(BackendConn &b, const ClientStmt &st, bool side = false);
  void undo_name(const Pending &p, bool failed_itself);
  // The extended protocol's per-query shape: Bind, [Describe portal,] Execute, Sync of a
  // statement prepared earlier, all buffered. query_loop() serves it without on_batch()'s
  // coroutine frame (allocated per batch) or copies of the messages.
  // fast_batch() sets where it runs in a QueryRun, as route_query() does.
  struct FastBatch {
    size_t len = 0;                           // bytes of its messages at the front of cbuf_
    std::string_view bind, describe, execute; // their bodies, in cbuf_; describe may be empty
    ClientStmt *st = nullptr;
    const StmtRef *ref = nullptr; // st's entry in stmts_
    const router::StatementPlan *sp = nullptr;
    router::TargetKind route = router::TargetKind::none;
    bool hold = false; // a write to a moving key: wait, then try again (may_hold)
  };
  bool fast_batch(FastBatch &fb, QueryRun &q);
  void fast_batch_write(const FastBatch &fb, BackendConn &b, bool consume = true);
  void fast_batch_done(const FastBatch &fb, const QueryRun &q, BackendConn &b);
  void write_bind(BackendConn &b, const ClientStmt &st, const protocol::BindMsg &bind,
                  std::string_view body);
  void write_passthrough(char type, std::string_view body, Expect expect);
  Task<bool> batch_lost(BackendConn &b, int shard, bool ends_sync);
  void settle_tx(int shard, char tx_before);
  void settle_tx_slow(int shard, char tx_before);
  Task<bool> on_function_call(Msg m);
  Task<bool> broadcast(const std::string &sql);
  // Attaches `shard` and runs `sql` there as a simple query; all it answers (or the error
  // attach() reports) goes to `capture`. The backend (nullptr: unreachable); `ok`: its answer
  // was read through ReadyForQuery (else it is marked broken).
  Task<BackendConn *> query_captured(size_t shard, const std::string &sql, std::string &capture,
                                     bool &ok);
  // session_catalog.cpp: the shards' catalogs, asked on the client's behalf.
  Task<std::optional<std::vector<protocol::Row>>>
  catalog_rows(BackendConn &b, const std::string &sql, protocol::ErrorInfo &error);
  Task<bool> learn_key_position(int table, bool answer_ready = true);
  Task<bool> learn_batch_key_positions(const std::vector<Msg> &batch);
  void write_key_guard(BackendConn &b, int table);
  std::string key_guard(const std::vector<int> &tables) const;
  int learn_table_ = -1; // QueryStep::learn_key: the table
  std::string guard_;    // prefixed to the next query string written (write_query)
  // The placement the session's statement was routed on (route_query, the extended batch):
  // one that waited for a pooled connection while a migration changed the epoch may be
  // routed on a stale owner, and gets 40001 instead (attach_slow).
  uint64_t routed_epoch_ = 0;
  bool routed_in_migration_ = false;
  void tag_epoch(BackendConn &b, std::string &out);
  void note_routed() {
    const Placement &p = w_->place();
    routed_epoch_ = p.epoch;
    routed_in_migration_ = !p.keys->migration.empty();
  }
  // session_scatter.cpp: a read on every shard, merged (router::TargetKind::scatter).
  struct Scatter;
  // A scatter read that came through the extended protocol: the client's Bind (its portal,
  // parameters and result formats go to every shard), the statement's parameter types, and
  // whether the client asked for the RowDescription (Describe of the portal).
  struct ExtendedRead {
    std::string_view bind_body;
    const protocol::BindMsg *bind = nullptr;
    const std::vector<uint32_t> *types = nullptr;
    bool describe = false;
  };
  // session_ids.cpp: shardgate.next_id(), answered by the proxy.
  router::RouteError no_id(const ids::Generator::Result &r) const;
  Task<std::optional<int64_t>> take_id(router::RouteError &err);
  Task<void> answer_next_id(const std::string &column);
  std::optional<router::RouteError> next_id_row(const BatchPlan &bp, BatchItem &it);
  Task<bool> scatter_read(const router::PlannedText &pt, const std::string &sql,
                          const ExtendedRead *x = nullptr);
  Task<bool> scatter_next(Scatter &s, size_t i);
  uint64_t scatter_shards_ = 0; // the scatter route_query() chose: its shards (0: every owner)
  Task<bool> next_frame(BackendConn &b, char &type, std::string &body);
  // session_tx.cpp: a transaction across shards (simple protocol).
  bool multi_tx() const { return (tx_shards_ & (tx_shards_ - 1)) != 0; }
  void note_tx_statement(const router::StatementPlan &st, std::string_view text);
  void bind_tx(int shard);
  std::string join_refusal(size_t shard) const;
  static const char *cross_shard_refusal(const router::StatementPlan &st, bool alone);
  std::string join_text() const;
  Task<void> control_all(const std::vector<BackendConn *> &bs, const std::vector<std::string> &sqls,
                         std::vector<protocol::ErrorInfo> &errs);
  Task<executor::Outcome> await_decision(const std::string &txid, std::string &error);
  Task<void> end_multi_tx(bool commit);
  // session_write.cpp: one write on several shards (multi_write), either protocol.
  // ready_after false: a part of a batch across shards, which more parts follow (no
  // ReadyForQuery); *failed: it failed (the client has its error).
  Task<bool> scatter_write(const router::PlannedText &pt, const std::string &sql,
                           const ExtendedRead *x = nullptr, bool ready_after = true,
                           bool *failed = nullptr);
  Task<BackendConn *> extended_captured(size_t shard, const std::string &text,
                                        const std::vector<uint32_t> &numbers, const ExtendedRead &x,
                                        std::string &capture, bool &ok);
  void open_own_tx();
  Task<void> end_own_tx(bool commit);
  Task<bool> end_statement_across(bool implicit, const protocol::ErrorInfo &failure,
                                  const std::string &failed_on, const std::string &undone,
                                  bool ready_after = true);
  // session_mirror.cpp: dual-write while a migration moves keys. mirror_due(): the open
  // transaction wrote on a shard that owns moving keys, so it ends through end_multi_tx(),
  // which copies those writes (mirror_writes()) before it commits, and commits the copies
  // after (mirror_end()). mirrored_write(): such a write outside a transaction block, run in a
  // transaction of its own.
  bool mirror_due() const;
  Task<bool> mirror_query(BackendConn &b, const std::string &w, int queries,
                          std::vector<protocol::Row> *rows, protocol::ErrorInfo &err);
  Task<void> mirror_writes(std::vector<size_t> &only);
  Task<void> mirror_end(const std::vector<size_t> &only, bool commit);
  Task<bool> mirrored_write(const std::string &sql, size_t shard);
  // session_copy.cpp: COPY FROM STDIN into a sharded table, each row to its owner.
  Task<bool> copy_in(const std::string &sql);
  Task<bool> drain_to_ready(BackendConn &b, protocol::ErrorInfo &err, std::string &tag);
  uint64_t tx_shards_ = 0;     // the shards the open transaction holds (bit per shard)
  uint64_t tx_writers_ = 0;    // those it wrote on
  std::string tx_begin_;       // its BEGIN (and SET TRANSACTION), for shards it takes on
  bool tx_savepoints_ = false; // it made a savepoint (which only its home shard would hold)
  bool multi_commit_ = false;  // end_multi: COMMIT (else ROLLBACK)
  // Portals bound in this transaction on a shard other than its home, by name.
  std::unordered_map<std::string, int> portal_shard_;
  Task<bool> run_on_all_primaries(const std::string &sql, std::string &first_capture,
                                  std::string &tag);
  void synthesize_batch(const std::vector<Msg> &batch, const std::string &tag);

  // Backends
  // The connection for a statement on `shard`: the one already attached, an idle pooled one
  // (no coroutine: the common case), or attach_slow() to wait or connect.
  Task<BackendConn *> attach(size_t shard, bool read, size_t exclude_node = SIZE_MAX);
  BackendConn *attach_now(size_t shard, bool read, size_t exclude_node,
                          std::optional<size_t> &slow_node,
                          std::optional<size_t> chosen = std::nullopt);
  std::optional<size_t> choose_node(size_t shard, bool read, size_t exclude_node);
  BackendConn *adopt(size_t shard, Pool *pool, std::unique_ptr<BackendConn> conn);
  Task<BackendConn *> attach_slow(size_t shard, size_t node);
  void unreachable(size_t shard, const std::string &sqlstate, const std::string &msg);
  void note_write(size_t shard);
  void detach_if_idle();
  void release(Attached &a);
  void record_query(size_t shard, const BackendConn &b, QueryKind kind,
                    std::chrono::steady_clock::time_point start, std::string_view shape);
  void detach_all();
  void prepare_backend(BackendConn &b, std::string &out, bool with_deferred = true,
                       bool keep_deferred = false, bool implicit = false);
  static uint64_t hash_settings(const std::map<std::string, std::string> &s);
  void ensure_prepared(BackendConn &b, const ClientStmt &st, std::string &out);
  void forget_skipped(BackendConn &b);
  Task<bool> relay(BackendConn &b);
  enum class RelayStep : uint8_t { done, need_more, copy_in, failed };
  enum class ReadStep : uint8_t { got, nothing, failed };
  RelayStep relay_start(BackendConn &b);
  RelayStep send_failed(BackendConn &b);
  RelayStep relay_some(BackendConn &b);
  Task<bool> relay_more(BackendConn &b, RelayStep st);
  bool relay_poll(BackendConn &b, RelayStep &st);
  ReadStep read_backend(BackendConn &b);
  Task<bool> pump_copy_in(BackendConn &b);
  void on_backend_lost(BackendConn &b);

  // Replies the proxy makes itself
  void error(const std::string &sqlstate, const std::string &msg, const std::string &hint = {},
             const std::string &detail = {});
  void ready();
  Task<bool> flush();
  Task<bool> fatal(const std::string &sqlstate, const std::string &msg,
                   const std::string &hint = {});
  void fail_transaction_by_proxy();
  void apply_tx_end();
  void note_settings_change();
  void restore_settings();
  void already_in_tx();
  bool set_setting(const std::string &name, const std::string &stmt);
  static void mark_untracked(BackendConn &b);
  void settings_ran(BackendConn &b, const router::StatementPlan &sp, const std::string &text);
  void rehash_settings();
  std::string stmt_key(const std::string &text, const std::vector<uint32_t> &types) const;
  bool in_tx() const { return tx_ != 'I'; }
  log::Fields log_fields() const;

  Worker *w_; // changes only in move(), between transactions
  Shared &sh_;
  Stream sock_;
  Buffer cbuf_;
  std::string out_;                // bytes for the client, written at flush()
  std::string *sink_ = &out_;      // redirected to a capture during broadcast
  std::string wbuf_;               // bytes for the backend
  std::string query_;              // the text of the Query being served
  router::PlannedText query_plan_; // its plan (buffers reused from query to query)
  std::string user_;
  std::string peer_;
  uint64_t id_ = 0;
  int32_t pid_ = 0, key_ = 0;
  std::shared_ptr<CancelSlot> cancel_;
  std::vector<std::pair<std::string, std::string>> startup_params_;

  // Session settings: SET statements by lower-case name, applied to whichever backend serves.
  std::map<std::string, std::string> settings_;
  uint64_t settings_hash_ = 0;
  std::map<std::string, std::string> tx_settings_snapshot_;

  std::unordered_map<std::string, StmtRef> stmts_;
  // The statement each portal runs, as far as the proxy saw it bound (this transaction).
  std::unordered_map<std::string, StmtRef> portals_;
  // Portals the client bound that live on no backend (answered by the proxy, or bound on a
  // side connection since closed). A read of no table is deterministic, so such a portal is
  // made again from its Bind where it is used next, and run past the rows the client has had
  // already. `bind` is empty when it cannot be made again (transaction control). A second
  // Bind of a name here is the proxy's to refuse.
  struct VirtualPortal {
    std::string bind;
    StmtRef st;        // the statement it runs
    uint64_t sent = 0; // rows the client has had from it
    bool done = false; // it ran to completion
  };
  std::unordered_map<std::string, VirtualPortal> virtual_portals_;
  // Rows each counted Execute of the current batch relayed (Pending::count), and if it ended.
  std::vector<std::pair<uint64_t, bool>> exec_counts_;
  // application_name as last reported to the client in ParameterStatus, and a report the
  // proxy owes it at the next ReadyForQuery (a SET it answered itself, or its rollback).
  std::string reported_app_;
  std::string reported_at_startup_;
  bool app_check_ = false; // settings or the transaction changed: see report_app()
  void report_app(char status, char before);
  std::string app_value(const std::map<std::string, std::string> &settings) const;
  std::map<std::string, std::string> startup_settings_; // what RESET restores
  // The settings before a SET of the current request that began outside a transaction: an
  // implicit transaction that fails takes its SETs back, and a BEGIN in the request takes
  // this as the transaction's snapshot.
  std::optional<std::map<std::string, std::string>> settings_before_;
  bool request_error_ = false; // an error was relayed since the request began
  bool end_seen_ = false;      // a COMMIT or ROLLBACK was relayed since the request began
  // SET LOCAL outside a transaction block lasts until Sync (PostgreSQL warns, and keeps it for
  // the implicit transaction). Those the proxy answered itself (no shard chosen yet) go to the
  // implicit transaction's backend when one is chosen, and into side connections' copies.
  std::vector<std::string> implicit_local_;
  bool implicit_open_ = false; // the last batch ended with Flush: an implicit transaction it
                               // left (outside a block) goes on
  uint64_t unnamed_gen_ = 0;
  std::vector<Msg> batch_;
  std::vector<std::string> spare_bodies_;       // bodies of finished batches, reused by the next
  std::vector<router::ParamValue> bind_params_; // a Bind's parameters, for routing
  protocol::BindMsg bind_;                      // fast_batch()'s Bind (its vectors stay)
  bool skip_until_sync_ = false;
  bool mux_retry_ = false; // the request at the front of cbuf_ lost a shared connection

  std::vector<Attached> attached_; // by shard
  char tx_ = 'I';                  // transaction status the client has been told
  int tx_shard_ = -1;              // shard bound to the open transaction
  int batch_shard_ = -1;           // shard holding an extended batch cut by Flush, until Sync
  bool batch_tx_ = false;          // an extended batch across shards runs in a transaction of ours
  std::string deferred_;           // BEGIN/SAVEPOINT text not yet sent (no shard chosen yet)
  bool proxy_failed_ = false;      // transaction failed by a proxy-side error
  Fifo<Pending> exp_;
  bool forwarded_any_ = false; // backend bytes reached the client for the current request
  size_t relay_want_ = 0;      // length of the backend frame relay_some() waits to complete
  std::string last_sqlstate_;  // of the last ErrorResponse relayed
  bool last_rollback_ = false; // the last CommandComplete relayed (or made) said ROLLBACK
  bool session_mode_ = false;
  int attached_count_ = 0;          // backends held now (metrics: active vs idle clients)
  bool counted_ = false;            // counted in the worker's connected clients
  bool admitted_ = false;           // counted in its user's clients (Shared::admit_client)
  std::shared_ptr<RateLimit> rate_; // its user's query rate, if limited
  // Waits for n queries' turn under rate_; false when that would take over its max_delay_ms.
  Task<bool> throttle(uint32_t n);
  // A request over rate_ was dropped: 53400 (failing an open transaction, as an error does);
  // `sync`: ReadyForQuery follows (else the messages up to the next Sync are skipped).
  void over_rate(bool sync);
  bool closing_ = false;        // a FATAL was sent: the session ends, nothing more is said
  bool side_batch_ = false;     // a describe-only batch outside the client's open transaction
  bool tx_read_only_ = false;   // BEGIN READ ONLY: the transaction may run on a replica
  bool tx_wrote_ = false;       // the open transaction wrote: stamp read-your-writes at its end
  std::vector<int64_t> ryw_at_; // per shard: when this session last committed a write there
};

} // namespace sg::proxy

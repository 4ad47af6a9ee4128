// A routing plan for one SQL statement: what it is and where its shard key comes from.
// Plans do not hold key values, so one plan serves every execution with other literals/params.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sg::router {

enum class StmtKind : uint8_t {
  read,      // plain SELECT: may go to a replica
  write,     // DML, locking reads, nextval, anything that did not parse
  ddl,       // schema changes
  begin,     // BEGIN / START TRANSACTION
  commit,    // COMMIT / END
  rollback,  // ROLLBACK / ABORT
  savepoint, // SAVEPOINT / RELEASE / ROLLBACK TO, SET TRANSACTION
  set,       // SET (session) / RESET name
  set_local, // SET LOCAL: lives and dies with the transaction
  reset_all, // RESET ALL
  discard_all,
  deallocate,
  other, // utility statements with no table: default shard's primary
};
const char *to_string(StmtKind k);

enum class TargetKind : uint8_t {
  none,          // transaction control / session state: no shard of its own
  by_key,        // the owner of keys[] (all must agree)
  default_shard, // statements on no sharded table
  all_primaries, // DDL on a sharded table
  error,         // cannot be routed: error_* say why
  scatter,       // a read of one sharded table on every shard, merged: StatementPlan::scatter
};

// Where a key value comes from: the n-th constant of the text (0-based, as the scanner numbers
// them) or parameter $n (1-based).
struct ValueRef {
  bool is_param = false;
  bool negate = false;
  int16_t table = -1; // config table whose key_type reads this value
  int32_t index = 0;
  uint32_t at = 0; // a parameter: where its "$n" starts in the text
};

// How to merge a read that runs on every shard (TargetKind::scatter). Either the SELECT list
// is all aggregates (count, sum, min, max, avg) and, with GROUP BY, the grouped columns: the
// shards' partial rows are combined per group (one row without GROUP BY), then sorted on `order`,
// with OFFSET and LIMIT applied by the proxy (shards are sent LIMIT ALL, OFFSET 0); or it has no
// aggregates, and the rows are concatenated, or merged on `order`, with LIMIT and OFFSET
// applied by the proxy (each shard is sent LIMIT n + m, OFFSET 0).
struct ScatterSpec {
  struct Sort {
    std::string name; // a result column's name (when position is 0)
    int position = 0; // 1-based result column (ORDER BY 2)
    bool desc = false;
    bool nulls_first = false;
    bool collate_c = false; // COLLATE "C": text may be merged byte by byte
  };
  std::vector<Sort> order;
  enum class Agg : uint8_t { count, sum, min, max, group, avg };
  std::vector<Agg> aggs; // per result column, when the list is aggregates (and group columns)
  // avg(x): the shards are sent "sum(x), count(x)" in its place (two columns), and the proxy
  // divides. `edits`: those replacements, as offsets into the statement's text; `avg_names`:
  // per result column, an avg column's output name (its alias, or "avg"), else empty.
  struct Edit {
    uint32_t start = 0, end = 0;
    std::string text;
  };
  std::vector<Edit> edits;
  std::vector<std::string> avg_names;
  // HAVING, applied by the proxy to the combined groups (the shards are sent the statement
  // without it): a condition over the result columns, of which the last `hidden` are not the
  // client's but the aggregates and group columns the HAVING reads, appended to the SELECT
  // list for the shards (an edit) and dropped before the rows go out. Ops as
  // executor::Cond::Op: And, Or, Not, Eq, Ne, Lt, Le, Gt, Ge, IsNull, NotNull.
  struct Cond {
    uint8_t op = 0;
    std::vector<Cond> args;
    uint32_t column = 0;
    std::string value;
    bool value_is_text = false;
  };
  std::optional<Cond> having;
  uint32_t hidden = 0;
  // SELECT DISTINCT ON (the first `distinct_on` ORDER BY items): the merge keeps each group's
  // first row (each shard sends its own first per group).
  uint32_t distinct_on = 0;
  bool grouped = false; // GROUP BY
  // The LIMIT and OFFSET values: constants of the text (index in the scan), -1 if none; or
  // parameters (extended protocol: "LIMIT $1"), with the span of their "$n" in the text, whose
  // values the proxy reads from the Bind.
  int32_t limit_const = -1;
  int32_t offset_const = -1;
  struct Param {
    int32_t number = 0; // 1-based; 0: not a parameter
    uint32_t start = 0, end = 0;
  };
  Param limit_param, offset_param;
  // Functions the plain (not aggregated) SELECT list calls, lower-case: the session asks a
  // shard's catalog whether any is a user-defined aggregate (its per-shard results cannot be
  // concatenated), since only the built-in aggregates are known here.
  std::vector<std::string> functions;
};

struct RouteError {
  std::string sqlstate;
  std::string message;
  std::string hint;
};

struct StatementPlan {
  StmtKind kind = StmtKind::write;
  TargetKind target = TargetKind::default_shard;
  int table = -1; // the (first) sharded table the statement touches
  std::vector<ValueRef> keys;
  RouteError error;
  std::shared_ptr<const ScatterSpec> scatter; // TargetKind::scatter
  uint32_t location = 0;                      // span of this statement in the full text
  uint32_t length = 0;
  std::string set_name;      // lower-case GUC name for set; empty otherwise
  bool read_only_tx = false; // BEGIN READ ONLY
  bool chain = false;        // COMMIT/ROLLBACK AND CHAIN
  bool cursor = false;       // DECLARE, FETCH, MOVE, CLOSE (a cursor lives on one backend)
  std::string next_id;       // SELECT shardgate.next_id() [AS name]: its column (the proxy answers)
  // An UPDATE or DELETE of one sharded table that names no other table: it runs alike on every
  // shard (each holds only its own rows), so without a usable key (target scatter), or with
  // keys on several shards, it goes to each shard concerned.
  bool multi_write = false;
  // A multi-row INSERT ... VALUES whose rows may go to several shards (multi_write): each row's
  // span in the statement's text (relative to `location`), so that each shard gets the
  // statement with its own rows only. Its keys are the rows' keys, in order.
  std::vector<std::pair<uint32_t, uint32_t>> value_rows;
  bool insert_values = false; // a multi-row INSERT ... VALUES (value_rows found when cut)
  // A read whose keys are an IN list of plain constants or parameters ($n): the text from its
  // first item to the end of its last, so that each shard can be sent only the items it owns
  // (empty: no cut).
  std::pair<uint32_t, uint32_t> in_items{0, 0};
  // INSERT INTO t VALUES (...) without a column list: the key is the item at the key column's
  // position in the table (the catalog's, which Router::set_key_position holds), so every
  // VALUES item is recorded (table -1: not a literal or parameter); `keys` stays empty.
  bool positional = false;
  std::vector<std::vector<ValueRef>> row_items;
  // COPY t [(cols)] FROM STDIN into a sharded table (target scatter): its format, and which
  // field holds the key (-1: no column list; the catalog's column order applies).
  struct CopyIn {
    bool csv = false;
    char delimiter = '\t';
    std::string null_text = "\\N";
    char quote = '"';
    char escape = '"';
    bool header = false;
    int key_field = -1;
  };
  std::optional<CopyIn> copy_in;
  bool prepared_tx = false; // PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED (the client's own)
  std::string tag;          // command tag the proxy answers with when it answers itself
  bool tableless = false;   // touches no table at all (SELECT 1, SHOW): any shard can run it
  // A plain SELECT that calls no function: it leaves nothing behind on the connection (no
  // lock, setting, sequence or advisory state), so it may share one with other clients' reads.
  bool pipelinable = false;
  bool replica_ok() const { return kind == StmtKind::read; }
};

} // namespace sg::router

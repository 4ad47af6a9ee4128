// Combining the shards' partial aggregates into what one PostgreSQL would answer. Pure.
//
// A query with aggregates and no GROUP BY runs on every shard concerned; each shard answers one
// row of partial values, and combine() makes the final row from them:
//   count(...)          the partial counts added (int8);
//   sum(int2/int4/int8) the partial sums added exactly (int8 or numeric text, as PostgreSQL);
//   sum(numeric)        the same, at the widest scale of the partials (PostgreSQL's scale);
//   min(...), max(...)  the least or greatest partial, by the column's Kind;
// NULL partials (a shard with no rows) are skipped; sum, min and max of no values are NULL.
#pragma once

#include "executor/values.h"
#include "protocol/messages.h"

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sg::executor {

enum class Agg { Count, Sum, Min, Max, Group }; // Group: a GROUP BY column (equal in a group)

struct AggSpec {
  Agg agg = Agg::Count;
  Kind kind = Kind::Integer; // of the partial column
};

// Whether combine() can do `spec` exactly (sum of floats cannot: its rounding depends on the
// order of the additions); the planner answers 0A000 for the others.
bool combinable(const AggSpec &spec);

// The final row from one partial row per shard. False with `error` when a partial value is
// not what its kind promises.
bool combine(const std::vector<protocol::Row> &partials, const std::vector<AggSpec> &specs,
             protocol::Row &out, std::string &error);

// The partial rows of a GROUP BY query from several shards, combined per group: rows whose
// Group columns are equal (by their kinds, so 1.0 and 1.00 are one numeric group, and NULLs
// one group) become one row. Memory holds one row per group.
class Groups {
public:
  explicit Groups(std::vector<AggSpec> specs);
  Groups(const Groups &) = delete; // the map's comparator points at specs_
  Groups &operator=(const Groups &) = delete;
  bool add(protocol::Row row, std::string &error);
  size_t size() const { return rows_.size(); }
  // One row per group, ordered by the group columns.
  std::vector<protocol::Row> take();

private:
  struct Less {
    const std::vector<AggSpec> *specs;
    bool operator()(const protocol::Row &a, const protocol::Row &b) const;
  };
  std::vector<AggSpec> specs_;
  std::map<protocol::Row, protocol::Row, Less> rows_;
};

// avg's final value from the combined sum (numeric text: an integer sum or a numeric one) and
// count (integer text, > 0), as PostgreSQL's numeric_div makes it for avg of smallint,
// integer, bigint and numeric: the scale select_div_scale picks (at least 16 significant
// digits, at least the sum's scale), rounded half away from zero. NaN and the infinities pass
// through. nullopt when either is not a number or the count is not positive.
std::optional<std::string> decimal_avg(std::string_view sum, std::string_view count);

// a + b exactly, in PostgreSQL's numeric text form (also NaN and the infinities); the result
// has the larger of the two scales. nullopt when either is not numeric text.
std::optional<std::string> decimal_add(std::string_view a, std::string_view b);

} // namespace sg::executor

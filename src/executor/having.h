// HAVING of a read across shards, applied by the proxy to the combined groups (each shard's
// own HAVING would see its partial aggregates only). Pure. A condition is a tree of AND, OR,
// NOT, comparisons of one column with a constant, and IS [NOT] NULL, over the combined row
// (its columns: the SELECT list, then the aggregates and group columns the HAVING reads).
// Comparisons follow SQL's three-valued logic; integer and numeric columns compare as exact
// numbers with integer or decimal constants, text columns only by = and <> (byte equality).
#pragma once

#include "protocol/messages.h"

#include <optional>
#include <string>
#include <vector>

namespace sg::executor {

struct Cond {
  enum class Op : uint8_t { And, Or, Not, Eq, Ne, Lt, Le, Gt, Ge, IsNull, NotNull };
  Op op = Op::And;
  std::vector<Cond> args;     // And, Or, Not
  size_t column = 0;          // a comparison's or null test's column
  std::string value;          // a comparison's constant (text form)
  bool value_is_text = false; // a string constant: only = and <> on text columns
};

// What a column holds, for comparisons.
enum class CondType : uint8_t { Number, Text, Other };
CondType cond_type(uint32_t type_oid, int16_t format);

// true, false, or nullopt (SQL NULL: the group is dropped as for false). False with `error`
// when a comparison cannot be made exactly (a type the proxy does not compare, an ordering
// comparison of text, a constant that is not a number for a number column).
bool eval(const Cond &c, const protocol::Row &row, const std::vector<CondType> &types,
          std::optional<bool> &out, std::string &error);

} // namespace sg::executor

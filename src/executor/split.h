// Cutting one statement into the statement each shard runs: a multi-row INSERT ... VALUES
// keeps, for each shard, only the rows that shard owns. Pure: no I/O.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sg::executor {

// A parameter reference ($n) in a statement's text: its span, and n.
struct ParamRef {
  uint32_t start = 0, end = 0;
  uint32_t number = 0;
};

// The statement one shard runs.
struct ShardPart {
  std::string text;
  // For each parameter of `text` ($1, $2, ... in order), the number it had in the original
  // statement. Empty when the part refers to no parameter.
  std::vector<uint32_t> params;
};

// `text` with, of the rows (spans in it, in order, not overlapping), only those `keep` marks,
// joined by ", "; the text before the first row and after the last stays. `params` (spans in
// `text`, in order) are renumbered $1..$n in the order of their original numbers, so that the
// part refers to every parameter it is sent and to no other: PostgreSQL cannot infer the type
// of a parameter that nothing uses.
ShardPart cut_rows(std::string_view text, const std::vector<std::pair<uint32_t, uint32_t>> &rows,
                   const std::vector<bool> &keep, const std::vector<ParamRef> &params);

} // namespace sg::executor

// Merging the rows of one statement run on several shards into the one result the client
// asked for. Pure: the caller feeds rows as they arrive from each shard and takes the rows that
// are final; no I/O here.
#pragma once

#include "executor/values.h"
#include "protocol/messages.h"

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace sg::executor {

// One ORDER BY item, on a column of the result.
struct SortKey {
  size_t column = 0;
  Kind kind = Kind::Bytes;
  bool descending = false;
  bool nulls_first = false; // PostgreSQL's default is NULLS LAST ascending, FIRST descending
};

// <0, 0, >0 as ORDER BY `keys` orders rows a and b.
int compare_rows(const std::vector<SortKey> &keys, const protocol::Row &a,
                 const protocol::Row &b);

// The shards' rows, each shard's already in ORDER BY order (or in any order when there are no
// keys), as one stream with OFFSET and LIMIT applied. With keys, a row is final once every
// shard that has not ended has a row buffered: the smallest of their first rows is then the
// smallest of all that remain. Memory stays bounded: wants() turns false for a shard with
// `cap` rows buffered, and the caller stops reading it until rows are taken.
class Merge {
public:
  Merge(size_t inputs, std::vector<SortKey> keys, std::optional<uint64_t> limit = std::nullopt,
        uint64_t offset = 0, size_t cap = 256);
  void push(size_t input, protocol::Row row);
  void end(size_t input);
  // The next final row, after OFFSET; nullopt when none is final yet, or when done().
  std::optional<protocol::Row> pop();
  // Whether to read more from `input`.
  bool wants(size_t input) const;
  // A shard to read next when pop() has nothing: with keys, one that has not ended and has no
  // row buffered (the merge waits for it); without, any that has not ended (from `from` on).
  std::optional<size_t> starved(size_t from = 0) const;
  // LIMIT reached (the shards can be cancelled), or every shard ended and every row taken.
  bool done() const;
  uint64_t emitted() const { return emitted_; }
  // SELECT DISTINCT ON: rows equal to the row before them on the first `prefix` keys are
  // dropped (before OFFSET and LIMIT count them), so each group keeps its first row in order.
  void distinct_on(size_t prefix);

private:
  std::optional<size_t> next_input() const;
  std::vector<std::deque<protocol::Row>> in_;
  std::vector<bool> ended_;
  std::vector<SortKey> keys_;
  std::optional<uint64_t> limit_;
  uint64_t offset_, skipped_ = 0, emitted_ = 0;
  size_t cap_;
  size_t rr_ = 0; // without keys: the shard to take from first, in turn
  std::vector<SortKey> distinct_;     // the DISTINCT ON keys (empty: none)
  std::optional<protocol::Row> last_; // the row before, with them
};

} // namespace sg::executor

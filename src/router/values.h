// Finding the rows of a multi-row INSERT ... VALUES in its text, so that the statement can be
// cut into one INSERT per shard with only that shard's rows (same prefix, same suffix).
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace sg::router {

// The spans [begin, end) of the parenthesised rows after the statement's top-level VALUES
// keyword ("(1, 'a')"), in order; empty when the text does not have exactly `rows` of them.
// Quotes ('', E'', "", $tag$), comments (--, nested /* */) and nested parentheses are skipped.
std::vector<std::pair<uint32_t, uint32_t>> values_rows(std::string_view stmt, size_t rows);

} // namespace sg::router

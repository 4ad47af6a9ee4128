#include "executor/split.h"

#include <algorithm>

namespace sg::executor {

ShardPart cut_rows(std::string_view text, const std::vector<std::pair<uint32_t, uint32_t>> &rows,
                   const std::vector<bool> &keep, const std::vector<ParamRef> &params) {
  // The spans that make the part, in order: the head, the kept rows, the tail.
  std::vector<std::pair<uint32_t, uint32_t>> spans;
  uint32_t head_end = rows.empty() ? uint32_t(text.size()) : rows.front().first;
  spans.emplace_back(0, head_end);
  for (size_t i = 0; i < rows.size(); ++i)
    if (i < keep.size() && keep[i])
      spans.push_back(rows[i]);
  if (!rows.empty())
    spans.emplace_back(rows.back().second, uint32_t(text.size()));

  auto inside = [&](const ParamRef &p, const std::pair<uint32_t, uint32_t> &s) {
    return p.start >= s.first && p.end <= s.second;
  };
  ShardPart part;
  for (const auto &s : spans)
    for (const auto &p : params)
      if (inside(p, s))
        part.params.push_back(p.number);
  std::sort(part.params.begin(), part.params.end());
  part.params.erase(std::unique(part.params.begin(), part.params.end()), part.params.end());
  auto renumbered = [&](uint32_t n) {
    return uint32_t(std::lower_bound(part.params.begin(), part.params.end(), n) -
                    part.params.begin()) +
           1;
  };

  size_t p = 0; // params are in text order, and so are the spans
  for (size_t si = 0; si < spans.size(); ++si) {
    auto [b, e] = spans[si];
    if (si > 1 && si + 1 < spans.size())
      part.text += ", "; // between two kept rows
    while (p < params.size() && params[p].start < b)
      ++p;
    uint32_t at = b;
    for (; p < params.size() && params[p].end <= e; ++p) {
      part.text.append(text.substr(at, params[p].start - at));
      part.text += "$" + std::to_string(renumbered(params[p].number));
      at = params[p].end;
    }
    part.text.append(text.substr(at, e - at));
  }
  return part;
}

} // namespace sg::executor

// libFuzzer target: arbitrary SQL text through the literal scanner, libpg_query analysis and
// key resolution (and the same-shape shortcut against a full scan), with literals and text/binary parameters taken from the input itself.
#include "router/router.h"

#include <cstddef>
#include <cstdint>
#include <string>

using namespace sg::router;

namespace {
const Router &router() {
  static const sg::config::Config cfg = [] {
    sg::config::Config c;
    for (auto n : {"s0", "s1", "s2"}) {
      sg::config::Shard s;
      s.name = n;
      c.shards.push_back(s);
    }
    c.ring.vnodes = 16;
    c.tables = {{"accounts", "id", sg::config::KeyType::bigint},
                {"users", "name", sg::config::KeyType::text},
                {"events", "uid", sg::config::KeyType::uuid}};
    return c;
  }();
  static const Router r(cfg);
  return r;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string sql(reinterpret_cast<const char *>(data), size);
  for (auto &c : sql)
    if (c == '\0')
      c = ' '; // libpg_query reads C strings
  PlannedText pt = router().plan(sql);
  std::vector<ParamValue> params;
  std::string_view tail(sql);
  for (int i = 0; i < 4 && !tail.empty(); ++i) {
    size_t n = std::min<size_t>(tail.size(), size_t(uint8_t(tail[0]) % 17));
    params.push_back({tail.substr(0, n), int16_t(i % 2)});
    tail.remove_prefix(std::max<size_t>(n, 1));
  }
  for (const auto &st : pt.analysis->stmts) {
    (void)router().resolve(st, sql, pt.scan);
    (void)router().resolve(st, sql, pt.scan, params);
  }
  (void)canonical_set(sql);
  // The same-shape shortcut against a full scan: the input's two halves as two statements.
  std::string a = sql.substr(0, sql.size() / 2), b = sql.substr(sql.size() / 2);
  ScanResult prev = scan_constants(a);
  if (same_shape(b, prev)) {
    ScanResult full = scan_constants(b);
    if (!full.ok || full.normalized != prev.normalized || full.consts.size() != prev.consts.size())
      __builtin_trap();
    for (size_t i = 0; i < full.consts.size(); ++i)
      if (full.consts[i].start != prev.consts[i].start || full.consts[i].end != prev.consts[i].end)
        __builtin_trap();
  }
  return 0;
}

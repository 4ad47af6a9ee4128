// Small helpers shared by the session's translation units (session.cpp: startup, the query
// loop and backends; extended.cpp: the extended protocol).
#pragma once

#include "protocol/messages.h"
#include "proxy/stats.h"
#include "router/plan.h"

#include <cctype>
#include <string>
#include <string_view>
#include <vector>

namespace sg::proxy::detail {

// A statement the proxy answers itself, with no backend.
inline void synthetic_done(std::string &out, const std::string &tag) {
  protocol::command_complete(out, tag);
}

[[gnu::always_inline]] inline void append_frame(std::string &out, char type,
                                                std::string_view body) {
  protocol::Writer(out, type).raw(body).finish();
}

// Appends the protocol frames in `frames` but those of type `drop` (and 'Z' too when
// drop_ready); `error`: one of them was an ErrorResponse.
inline void append_frames_except(std::string &out, const std::string &frames, char drop,
                                 bool drop_ready = false, bool *error = nullptr) {
  for (size_t pos = 0; pos < frames.size();) {
    auto f = protocol::decode_frame(reinterpret_cast<const uint8_t *>(frames.data()) + pos,
                                    frames.size() - pos, 1u << 30);
    if (f.status != protocol::DecodeStatus::ready)
      break;
    if (f.type != uint8_t(drop) && !(drop_ready && f.type == 'Z'))
      out.append(frames, pos, f.frame_len);
    if (f.type == 'E' && error)
      *error = true;
    pos += f.frame_len;
  }
}

// A statement's text without surrounding blanks and semicolons (deferred transaction text).
inline std::string trim(std::string_view s) {
  while (!s.empty() && (std::isspace(uint8_t(s.front())) || s.front() == ';'))
    s.remove_prefix(1);
  while (!s.empty() && (std::isspace(uint8_t(s.back())) || s.back() == ';'))
    s.remove_suffix(1);
  return std::string(s);
}

inline QueryKind kind_of(router::StmtKind k) {
  switch (k) {
  case router::StmtKind::read:
    return QueryKind::read;
  case router::StmtKind::write:
    return QueryKind::write;
  case router::StmtKind::ddl:
    return QueryKind::ddl;
  default:
    return QueryKind::other;
  }
}

// The stronger of two kinds a request counts as (ddl > write > read > other).
inline QueryKind stronger(QueryKind a, QueryKind b) {
  auto rank = [](QueryKind k) {
    return k == QueryKind::ddl ? 3 : k == QueryKind::write ? 2 : k == QueryKind::read ? 1 : 0;
  };
  return rank(b) > rank(a) ? b : a;
}

// The kind a query string counts as: its strongest statement.
inline QueryKind kind_of(const std::vector<router::StatementPlan> &stmts) {
  QueryKind k = QueryKind::other;
  for (const auto &st : stmts)
    k = stronger(k, kind_of(st.kind));
  return k;
}

inline void count_route(WorkerStats &stats, router::TargetKind kind,
                        const router::StatementPlan &p) {
  switch (kind) {
  case router::TargetKind::by_key:
    stats.count_route(p.keys.size() > 1 ? RouteStat::multi : RouteStat::single);
    break;
  case router::TargetKind::default_shard:
    stats.count_route(RouteStat::default_shard);
    break;
  case router::TargetKind::all_primaries:
    stats.count_route(RouteStat::broadcast);
    break;
  case router::TargetKind::scatter:
    stats.count_route(RouteStat::scatter);
    break;
  case router::TargetKind::error:
    stats.count_route(RouteStat::error);
    break;
  case router::TargetKind::none:
    break;
  }
}

} // namespace sg::proxy::detail

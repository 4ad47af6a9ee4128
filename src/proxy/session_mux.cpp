// Client session, part: pipelined reads (sharing a backend connection, proxy/mux.h). See
// session.h.
#include "proxy/session.h"

#include "proxy/errors.h"
#include "proxy/session_util.h"

#include <algorithm>

namespace sg::proxy {

// Whether q (a routed simple Query) may share a backend connection with other clients' reads
// (see mux.h): a lone plain read in autocommit, from a session that holds no connection of its
// own on that shard. (mux_join() matches the session's settings with the connection's.)
bool Session::pipelinable(const QueryRun &q, const router::StatementPlan &sp, bool alone) const {
  return sh_.cfg.proxy.pipeline_depth > 0 && !session_mode_ && q.read && !in_tx() &&
         tx_shard_ < 0 && batch_shard_ < 0 && deferred_.empty() && exp_.empty() && sink_ == &out_ &&
         alone && sp.pipelinable &&
         (size_t(q.shard) >= attached_.size() || !attached_[size_t(q.shard)].conn);
}

// A lane of the node's (see mux.h) that this read may join, or nullptr: the read then takes
// the usual path. It joins only a queue that is short enough and whose front started
// recently, so that a slow read holds up few others; else it opens a lane of its own.
MuxLane *Session::mux_join(size_t node) {
  Mux &mux = w_->muxes[node];
  MuxLane *spare = nullptr;
  for (auto &l : mux.lanes) {
    if (!l->conn) {
      spare = spare ? spare : l.get();
      continue;
    }
    auto waited =
        std::chrono::duration_cast<std::chrono::microseconds>(w_->poller.now() - l->front_since);
    if (!l->writing && !l->conn->broken && l->conn->settings_hash == settings_hash_ &&
        l->queue.size() < sh_.cfg.proxy.pipeline_depth &&
        waited.count() <= int64_t(sh_.cfg.proxy.pipeline_join_us))
      return l.get();
  }
  Pool *pool = w_->pool(node);
  auto conn = pool->try_acquire();
  if (!conn)
    return nullptr;
  sh_.health.report_success(node);
  if (!spare) {
    spare = mux.lanes.emplace_back(std::make_unique<MuxLane>()).get();
    spare->pool = pool;
  }
  spare->conn = std::move(conn); // the request's writer brings its settings in line
  spare->front_since = w_->poller.now();
  return spare;
}

// The front of m's queue is done. Its turn goes to the next; or, if the connection broke
// (`failed`), every read still queued learns it lost its answer and runs again elsewhere.
void Session::mux_leave(MuxLane &m, bool failed) {
  m.queue.pop_front();
  if (failed) {
    m.conn->broken = true;
    while (!m.queue.empty()) {
      *m.queue.front().lost = true;
      w_->poller.pass(m.queue.front().turn);
      m.queue.pop_front();
    }
  } else if (!m.queue.empty()) {
    m.front_since = w_->poller.now();
    w_->poller.pass(m.queue.front().turn);
    return;
  }
  if (!m.writing) // else the writer still sends on it, and releases it after
    mux_release(m);
}

void Session::mux_release(MuxLane &m) {
  if (!w_->stopping)
    m.pool->release(std::move(m.conn));
  m.conn.reset();
}

// A simple Query's routing, with no I/O: answered here (errors, statements the proxy serves
// itself), or what query_loop() must do with it. For `run`, q says where.

} // namespace sg::proxy

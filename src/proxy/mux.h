// Pipelined reads: one worker's plain autocommit reads for one node share a backend
// connection, each sent as soon as it arrives, their responses relayed in order.
//
// Why: on a busy node most of a pooled read's cost is waking things up. A backend that finds
// the next client's query already in its socket when it finishes one runs it without sleeping,
// and one read of the proxy's often brings several responses. PostgreSQL answers each simple
// Query on its own (an error ends only that query, at its ReadyForQuery), so clients that share
// the connection this way cannot see each other: the proxy admits only statements that leave no
// state behind (see Session::pipelinable) from sessions whose settings are the defaults.
//
// How: the session at the front of a lane's queue relays its response from the shared connection
// exactly as it relays from a connection of its own; when its ReadyForQuery is through it hands
// the turn to the next (Poller::pass), whose response may already be buffered. The connection
// comes from the node's pool when the queue starts and goes back when it empties.
#pragma once

#include "proxy/backend.h"
#include "proxy/pool.h"

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

namespace sg::proxy {

// One shared connection and the sessions whose requests are on it, in order.
struct MuxLane {
  struct Entry {
    std::optional<Parked> turn; // the waiting session's stack, until it is its turn
    bool *lost = nullptr;       // set when the connection broke before its turn came
  };
  std::unique_ptr<BackendConn> conn; // lent by pool while the queue is not empty
  Pool *pool = nullptr;
  std::deque<Entry> queue; // front: the session relaying now (Parked cannot be reassigned)
  std::chrono::steady_clock::time_point front_since; // when the front's turn began
  bool writing = false; // a session waits to finish its send: nobody else may write
};

// A node's lanes on one worker. A read joins the first lane with room (pipeline_depth), or
// opens one more with a connection from the pool: one PostgreSQL backend runs one query at a
// time, so a single lane for all of a worker's clients would make it the bottleneck.
struct Mux {
  std::vector<std::unique_ptr<MuxLane>> lanes; // stable: sessions hold MuxLane pointers
  // At worker shutdown: the waiting stacks go (to io, for destruction), the connections close.
  void drop() {
    for (auto &l : lanes) {
      l->queue.clear();
      l->conn.reset();
    }
  }
};

} // namespace sg::proxy

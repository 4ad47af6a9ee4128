// Two-phase commit across shards: transaction names and the decision protocol.
//
// A client transaction that wrote on more than one shard commits in three steps:
//  1. `PREPARE TRANSACTION '<gid>'` on each shard it wrote on, gid = gid(txid, n);
//  2. the outcome `commit` is recorded for txid in the metadata database, durably, unless an
//     outcome is recorded there already (shardgate.tx_decisions; the first one stands);
//  3. `COMMIT PREPARED` on each. A failure here is finished by recovery: the decision stands.
// A failure before step 2 rolls every shard back (`ROLLBACK PREPARED` where prepared).
//
// Recovery (every proxy runs it, journal.h) looks on each shard for prepared transactions
// named by gid() that are older than [transactions] recover_after_ms. For each, it records
// `abort` unless an outcome is there already, then applies the recorded outcome. Because the
// first outcome recorded stands, a coordinator that is slow (not dead) and recovery can never
// both win: the coordinator's step 2 then says the commit did not stand, and it rolls back.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace sg::executor {

// A transaction id unique across proxy processes: 16 random hex digits drawn at start, then
// a counter ("3f09c1d2aa417b05x1a").
std::string new_txid();
// The name of participant n's prepared transaction: "sg_<txid>_<n>" (unique in a PostgreSQL
// cluster even when several shards are databases of one server).
std::string gid(std::string_view txid, size_t participant);
// The txid of a gid() name; nullopt for any other name (a transaction the client prepared).
std::optional<std::string> txid_of(std::string_view gid);

enum class Outcome {
  committed, // the commit decision is recorded: every participant must commit
  aborted,   // not recorded (recovery aborted it first, or it was never written): roll back
  unknown,   // written, but the answer was lost: recovery resolves it from the journal
};

// The durable record of commit decisions (implemented over the metadata database by
// journal.h). Calls come from the proxy's worker threads and never block them.
class DecisionJournal {
public:
  using Done = std::function<void(Outcome, const std::string &error)>;
  virtual ~DecisionJournal() = default;
  // Records `commit` for txid unless an outcome is there already; `done` runs on the
  // journal's own thread, once.
  virtual void decide(std::string txid, Done done) = 0;
  // Every participant committed: the decision is no longer needed.
  virtual void forget(std::string txid) = 0;
  // In-doubt prepared transactions that recovery committed and rolled back so far.
  struct Recovered {
    uint64_t committed = 0, rolled_back = 0;
  };
  virtual Recovered recovered() const = 0;
};

} // namespace sg::executor

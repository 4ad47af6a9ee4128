// A server connection to one backend node: connect, authenticate (SCRAM-SHA-256, md5,
// cleartext or trust), and the per-connection state pooling needs.
#pragma once

#include "config/config.h"
#include "proxy/io.h"
#include "proxy/poller.h"

#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace sg::proxy {

enum class Role : uint8_t { primary, replica };
inline const char *to_string(Role r) {
  return r == Role::primary ? "primary" : "replica";
}

// One backend server: a shard's primary or one of its replicas.
struct Node {
  size_t id = 0;
  size_t shard = 0;
  Role role = Role::primary;
  config::Endpoint endpoint;
  std::string shard_name;
  std::string label() const { return shard_name + "/" + endpoint.label(); }
};

struct BackendConn {
  explicit BackendConn(const Node &n) : node(&n) {}
  Stream sock;
  const Node *node;
  int32_t pid = 0;
  int32_t key = 0;
  std::vector<std::pair<std::string, std::string>> server_params;
  std::unordered_set<uint32_t> prepared;       // proxy statement ids prepared on this connection
  uint64_t unnamed_owner = 0;                  // who owns the unnamed statement here
  std::map<std::string, std::string> settings; // SET statements applied here, by name
  uint64_t settings_hash = 0;
  // The topology epoch this connection's `shardgate.epoch` holds, set outside a transaction
  // (0: unknown). See Session::prepare_backend.
  uint64_t epoch_tag = 0;
  Buffer rbuf{32 * 1024};
  char tx_status = 'I';
  bool broken = false;
  bool unsynced = false; // extended messages sent without Sync: an implicit transaction is open
};

struct ConnectError {
  std::error_code ec;
  std::string message; // the backend's own error text when it sent one
  std::string sqlstate;
};

// Connects with a deadline and authenticates; nullptr and err on failure.
Task<std::unique_ptr<BackendConn>> connect_backend(Poller &poller, const Node &node,
                                                   uint32_t timeout_ms, ConnectError &err);

} // namespace sg::proxy

// The admin REST API as a plain function of a request: routing, bearer-token auth, body
// validation and JSON errors, with no sockets (server.h carries it over HTTP). Every error is
// {"error": {"code", "message"}} with the status the API documents (openapi.json).
#pragma once

#include "proxy/server.h"
#include "topology/topology.h"
#include "topology/watcher.h"

#include <functional>
#include <string>
#include <vector>

namespace sg::admin {

struct Request {
  std::string method; // "GET", "POST", ...
  std::string target; // path, maybe with a query string
  std::string authorization;
  std::string body;
};

struct Response {
  int status = 200;
  std::string body; // JSON
  std::vector<std::pair<std::string, std::string>> headers;
};

// What the API reads. Each member may be empty in tests that do not need it.
struct Sources {
  std::string token;                                // empty: no token required
  std::function<topology::Topology()> topology;     // the topology this proxy runs on
  std::function<topology::WatchStatus()> watch;     // the control plane's state
  const proxy::Shared *proxy = nullptr;             // node health
  std::string_view openapi;                         // the OpenAPI document
  std::optional<config::Endpoint> metadata;         // changes are committed there
};

Response handle(const Request &req, const Sources &src);

// An error response: {"error": {"code", "message"}}.
Response error(int status, std::string_view code, std::string_view message);

// Constant-time token check (SHA-256 of both sides, compared with CRYPTO_memcmp).
bool token_matches(std::string_view presented, std::string_view expected);

// The served OpenAPI document (embedded at build time from src/admin/openapi.json).
std::string_view openapi_document();

} // namespace sg::admin

// The metrics endpoint: GET /metrics (Prometheus text, via prometheus-cpp's serializer) and
// GET /health (200 when every shard's primary can serve, else 503, with per-node JSON).
// It reads the proxy's per-worker counters and health board at scrape time, on its own thread.
#pragma once

#include "proxy/server.h"

#include <memory>
#include <string>
#include <thread>

namespace sg::metrics {

class Exporter {
public:
  explicit Exporter(const proxy::Server &server);
  ~Exporter();
  // Binds host:port and starts serving; false with error on failure.
  bool start(const std::string &host, uint16_t port, std::string &error);
  void stop();

  std::string render() const;                 // the Prometheus text exposition
  std::pair<int, std::string> health() const; // HTTP status and JSON body

private:
  void serve();
  const proxy::Server &server_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

} // namespace sg::metrics

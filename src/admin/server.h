// The admin API's HTTP server (Boost.Beast): its own thread, never the data path's. One
// request per connection, answered in turn; a client that is slow to send is cut off after
// 5 s, and a body over 1 MiB gets 413 without being read.
#pragma once

#include "admin/api.h"

#include <memory>
#include <string>
#include <thread>

namespace sg::admin {

class Server {
public:
  explicit Server(Sources src);
  ~Server();
  bool start(const std::string &host, uint16_t port, std::string &error);
  void stop();

private:
  void serve();
  Sources src_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

} // namespace sg::admin

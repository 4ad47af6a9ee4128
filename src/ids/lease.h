// shardgate.next_id()'s instance number, leased from the metadata database (control plane,
// libpqxx). A thread claims a number (shardgate.id_instances: the one this proxy held before,
// else the lowest free one, else one nobody renewed for 3 x fence_timeout_ms) and renews it
// every heartbeat_ms with the generator's high water. The generator answers only while the
// lease is fresh: fence_timeout_ms after the last renewal began, it stops, so a proxy cut off
// from the metadata database stops issuing IDs long before its number can be given away. A
// number taken over starts its milliseconds past what its last holder reported, plus the time
// that holder could have gone on (fence_timeout_ms) and borrowed ahead (kMaxAheadMs): no
// repeats even when clocks differ or go back across a restart.
#pragma once

#include "config/config.h"
#include "ids/generator.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace sg::ids {

class Lease {
public:
  Lease(const config::Config &cfg, std::string holder, Generator &gen);
  ~Lease(); // stops the thread
  void start();

private:
  void loop();
  config::Config cfg_;
  std::string holder_;
  Generator &gen_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

} // namespace sg::ids

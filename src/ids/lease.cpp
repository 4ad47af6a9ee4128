#include "ids/lease.h"

#include "proxy/errors.h"
#include "topology/store.h"

#include <chrono>
#include <memory>
#include <optional>

namespace sg::ids {

namespace {

namespace log = proxy::log;

} // namespace

Lease::Lease(const config::Config &cfg, std::string holder, Generator &gen)
    : cfg_(cfg), holder_(std::move(holder)), gen_(gen) {}

Lease::~Lease() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

void Lease::start() {
  thread_ = std::thread([this] { loop(); });
}

void Lease::loop() {
  const int64_t fence = cfg_.metadata.fence_timeout_ms;
  std::unique_ptr<topology::Store> store;
  std::optional<int> held;
  bool warned = false;
  for (;;) {
    int64_t began = steady_now_ms();
    try {
      if (!store) {
        store =
            std::make_unique<topology::Store>(topology::metadata_endpoint(cfg_), "shardgate-ids");
        store->ensure_schema();
      }
      if (held && !store->renew_id_instance(*held, holder_, gen_.high_water_unix_ms())) {
        gen_.revoke("instance number " + std::to_string(*held) + " was given to another proxy");
        log::warn("id_instance_lost", {{"instance", std::to_string(*held)}});
        held.reset();
      }
      if (held) {
        gen_.extend(began + fence);
      } else if (auto row = store->claim_id_instance(holder_, 3 * fence)) {
        gen_.assign(row->instance,
                    row->high_water_ms ? row->high_water_ms + fence + kMaxAheadMs + 1 : 0,
                    began + fence);
        held = row->instance;
        warned = false;
        log::info("id_instance_leased",
                  {{"instance", std::to_string(row->instance)}, {"holder", holder_}});
      } else if (!warned) {
        warned = true;
        log::warn("id_instance_none_free",
                  {{"detail", "all 1024 instance numbers are leased; shardgate.next_id() "
                              "answers 55000 until one is free or [ids] instance is set"}});
      }
    } catch (const std::exception &e) {
      store.reset(); // connect again next time; the generator stops on its own when stale
      log::debug("id_lease_failed", {{"error", e.what()}});
    }
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, std::chrono::milliseconds(cfg_.metadata.heartbeat_ms),
                     [&] { return stop_; }))
      return;
  }
}

} // namespace sg::ids

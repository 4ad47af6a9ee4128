#include "topology/watcher.h"

#include "proxy/errors.h"

#include <unistd.h>

namespace sg::topology {

namespace {

using Clock = std::chrono::steady_clock;

int64_t ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

} // namespace

std::string instance_id(const config::Config &c) {
  if (!c.metadata.instance.empty())
    return c.metadata.instance;
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0)
    std::snprintf(host, sizeof host, "localhost");
  return std::string(host) + ":" + std::to_string(c.proxy.listen_port);
}

Watcher::Watcher(const config::Config &cfg, std::string instance, std::string address,
                 uint64_t applied_epoch, Hooks hooks)
    : where_(metadata_endpoint(cfg)), policy_(cfg.metadata), instance_(std::move(instance)),
      address_(std::move(address)), hooks_(std::move(hooks)) {
  st_.instance = instance_;
  st_.applied_epoch = applied_epoch;
  st_.stored_epoch = applied_epoch;
  last_ok_ = Clock::now();
}

Watcher::~Watcher() { stop(); }

void Watcher::start() {
  thread_ = std::thread([this] { run(); });
}

void Watcher::stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

WatchStatus Watcher::status() const {
  std::lock_guard lk(mu_);
  WatchStatus s = st_;
  s.disconnected_ms = s.connected ? 0 : ms_since(last_ok_);
  for (auto &p : s.proxies)
    p.heartbeat_age_ms += ms_since(proxies_at_);
  return s;
}

bool Watcher::sleep_for(int ms) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, std::chrono::milliseconds(ms), [&] { return stop_; });
  return !stop_;
}

namespace log = proxy::log;

void Watcher::report() {
  if (hooks_.on_status)
    hooks_.on_status(status());
}

// While cut off: past the fence timeout, writes to sharded tables stop.
void Watcher::check_fence() {
  std::string err;
  int64_t gone = 0;
  {
    std::lock_guard lk(mu_);
    gone = ms_since(last_ok_);
    if (st_.connected || st_.fenced || gone < int64_t(policy_.fence_timeout_ms))
      return;
    st_.fenced = true;
    err = st_.last_error;
  }
  log::error("metadata_fenced", {{"unreachable_ms", std::to_string(gone)},
                                 {"metadata", where_.label()},
                                 {"error", err},
                                 {"effect", "writes to sharded tables refused (40001)"}});
  if (hooks_.on_fence)
    hooks_.on_fence(true);
}

// Connect, LISTEN, then wait for notifications and heartbeat; on any failure, back off and
// start again. The fence is checked between attempts.
void Watcher::run() {
  int backoff_ms = 100;
  bool first = true;      // no heartbeat recorded yet by this process
  bool announced = false; // the current outage is logged
  while (true) {
    {
      std::lock_guard lk(mu_);
      if (stop_)
        return;
    }
    try {
      Store store(where_, "shardgate-control");
      store.ensure_schema();
      store.listen();
      bool was_fenced = false;
      {
        std::lock_guard lk(mu_);
        was_fenced = st_.fenced;
        if (!first)
          ++st_.reconnects;
        st_.connected = true;
        st_.fenced = false;
        st_.last_error.clear();
        last_ok_ = Clock::now();
      }
      if (!first)
        log::info("metadata_reconnected", {{"metadata", where_.label()}});
      if (was_fenced) {
        log::info("metadata_unfenced", {{"metadata", where_.label()}});
        if (hooks_.on_fence)
          hooks_.on_fence(false);
      }
      backoff_ms = 100;
      announced = false;
      while (true) {
        // Every wake-up looks (a NOTIFY wakes it early; an epoch stored without one, e.g. by
        // hand, is still seen within a heartbeat period).
        int64_t round_started = std::chrono::duration_cast<std::chrono::milliseconds>(
                                    Clock::now().time_since_epoch())
                                    .count();
        {
          if (auto t = store.latest()) {
            uint64_t applied;
            {
              std::lock_guard lk(mu_);
              st_.stored_epoch = t->epoch;
              applied = st_.applied_epoch;
            }
            if (t->epoch > applied && hooks_.on_epoch) {
              uint64_t now_applied = hooks_.on_epoch(*t);
              std::lock_guard lk(mu_);
              st_.applied_epoch = now_applied;
            }
          }
        }
        uint64_t applied;
        {
          std::lock_guard lk(mu_);
          applied = st_.applied_epoch;
        }
        store.heartbeat(instance_, address_, applied, first);
        first = false;
        auto rows = store.proxies();
        {
          std::lock_guard lk(mu_);
          st_.proxies = std::move(rows);
          last_ok_ = proxies_at_ = Clock::now();
          st_.round_started_ms = round_started;
          if (stop_)
            return;
        }
        report();
        store.wait(policy_.heartbeat_ms); // a notification, or one heartbeat period
      }
    } catch (const std::exception &e) {
      {
        std::lock_guard lk(mu_);
        st_.connected = false;
        st_.last_error = e.what();
        while (!st_.last_error.empty() && st_.last_error.back() == '\n')
          st_.last_error.pop_back();
      }
      if (!announced)
        log::warn("metadata_unreachable", {{"metadata", where_.label()},
                                           {"error", status().last_error},
                                           {"retry_ms", std::to_string(backoff_ms)}});
      announced = true;
      report();
    }
    // Back off, checking the fence in small steps.
    for (int waited = 0; waited < backoff_ms; waited += 50) {
      check_fence();
      if (!sleep_for(50))
        return;
    }
    backoff_ms = std::min(backoff_ms * 2, 2000);
  }
}

} // namespace sg::topology

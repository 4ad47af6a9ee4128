#include "ids/generator.h"

#include <algorithm>

namespace sg::ids {

Parts decode(int64_t id) {
  Parts p;
  p.unix_ms = (id >> (kInstanceBits + kSequenceBits)) + kEpochMs;
  p.instance = int((id >> kSequenceBits) & (kInstances - 1));
  p.sequence = int(id & ((1 << kSequenceBits) - 1));
  return p;
}

void Generator::assign(int instance, int64_t floor_unix_ms, int64_t valid_until_ms) {
  std::lock_guard lock(mu_);
  if (instance != instance_) { // another number: its own history, from the floor on
    last_ = -1;
    seq_ = 0;
  }
  instance_ = instance;
  floor_ = std::max<int64_t>(0, floor_unix_ms - kEpochMs);
  valid_until_ = valid_until_ms;
  why_.clear();
}

void Generator::extend(int64_t valid_until_ms) {
  std::lock_guard lock(mu_);
  valid_until_ = std::max(valid_until_, valid_until_ms);
}

void Generator::revoke(const std::string &why) {
  std::lock_guard lock(mu_);
  instance_ = -1;
  why_ = why;
}

int64_t Generator::high_water_unix_ms() const {
  std::lock_guard lock(mu_);
  return std::max(last_, floor_) + kEpochMs;
}

int Generator::instance() const {
  std::lock_guard lock(mu_);
  return instance_;
}

Generator::Result Generator::next(int64_t unix_ms, int64_t steady_ms) {
  std::lock_guard lock(mu_);
  Result r;
  if (instance_ < 0) {
    r.why = why_;
    return r;
  }
  if (steady_ms > valid_until_) {
    r.why = "the lease on instance number " + std::to_string(instance_) +
            " has not been renewed in time (the metadata database is unreachable), so another "
            "proxy may hold it now";
    return r;
  }
  int64_t base = std::max(unix_ms - kEpochMs, floor_);
  if (base > last_) {
    last_ = base;
    seq_ = 0;
  } else if (seq_ + 1 < (int64_t(1) << kSequenceBits)) {
    ++seq_; // the same millisecond, or the clock went back: count on
  } else if (last_ + 1 - base <= kMaxAheadMs) {
    ++last_; // borrowed from the next millisecond
    seq_ = 0;
  } else {
    r.status = Status::wait;
    r.wait_ms = last_ + 1 - base - kMaxAheadMs;
    return r;
  }
  if (last_ >= (int64_t(1) << kTimeBits)) {
    r.why = "the 41-bit millisecond field is exhausted (year 2094)";
    return r;
  }
  r.status = Status::ok;
  r.id = (last_ << (kInstanceBits + kSequenceBits)) | (int64_t(instance_) << kSequenceBits) | seq_;
  return r;
}

} // namespace sg::ids

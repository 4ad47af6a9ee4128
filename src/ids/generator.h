// Global unique IDs: what `SELECT shardgate.next_id()` answers (issue 19). Pure: no I/O, no
// clock of its own (the caller passes the time), so the unit tests drive it.
//
// An ID is a positive 64-bit integer, time-ordered per proxy:
//   bit 63     0 (the sign: IDs are positive bigints)
//   bits 62-22 milliseconds since 2025-01-01T00:00:00Z (41 bits: until 2094)
//   bits 21-12 the proxy's instance number, 0-1023
//   bits 11-0  a sequence within the millisecond, 0-4095
// The instance number comes from the metadata database (a lease; see lease.h) or from
// [ids] instance. Two proxies never share one, so their IDs never collide; within a proxy the
// (millisecond, sequence) pair only grows: when the clock goes back, the IDs keep the last
// millisecond and count on; past 4095 in a millisecond they borrow the next one, at most
// kMaxAheadMs ahead of the clock (further, the caller waits).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace sg::ids {

constexpr int64_t kEpochMs = 1735689600000; // 2025-01-01T00:00:00Z, Unix ms
constexpr int kTimeBits = 41, kInstanceBits = 10, kSequenceBits = 12;
constexpr int kInstances = 1 << kInstanceBits;
constexpr int64_t kMaxAheadMs = 2000;

// The clocks next() is given: wall-clock Unix ms (the IDs' time) and steady ms (the lease's).
inline int64_t unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
inline int64_t steady_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Parts {
  int64_t unix_ms = 0;
  int instance = 0;
  int sequence = 0;
};
Parts decode(int64_t id);

class Generator {
public:
  enum class Status { ok, wait, unavailable };
  struct Result {
    Status status = Status::unavailable;
    int64_t id = 0;
    int64_t wait_ms = 0; // Status::wait: the clock must move on this much first
    std::string why;     // Status::unavailable
  };

  // Gives the generator its instance number. Its IDs' milliseconds start no lower than
  // floor_unix_ms (what a previous holder of the number may have used), and it answers until
  // the steady clock passes valid_until_ms (INT64_MAX: always; see Lease).
  void assign(int instance, int64_t floor_unix_ms, int64_t valid_until_ms);
  void extend(int64_t valid_until_ms); // a lease renewed
  void revoke(const std::string &why); // a lease lost: no IDs until assign()
  // The highest millisecond used so far (Unix ms), for the lease's record.
  int64_t high_water_unix_ms() const;
  int instance() const;

  Result next(int64_t unix_ms, int64_t steady_ms);

private:
  mutable std::mutex mu_;
  int instance_ = -1;
  std::string why_ = "no instance number yet";
  int64_t valid_until_ = 0;
  int64_t floor_ = 0; // relative to kEpochMs
  int64_t last_ = -1; // relative to kEpochMs
  int64_t seq_ = 0;
};

} // namespace sg::ids

// A growable read buffer: bytes [rpos, wpos) are unread; reads append at wpos.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace sg::proxy {

class Buffer {
public:
  explicit Buffer(size_t initial = 64 * 1024) : data_(initial) {}
  const uint8_t *data() const { return data_.data() + rpos_; }
  size_t size() const { return wpos_ - rpos_; }
  void consume(size_t n) {
    rpos_ += n;
    if (rpos_ == wpos_)
      rpos_ = wpos_ = 0;
  }
  // Space to read into, at least `min` bytes (compacts or grows as needed).
  uint8_t *prepare(size_t min, size_t &avail) {
    if (data_.size() - wpos_ < min) {
      if (rpos_ > 0) {
        std::memmove(data_.data(), data_.data() + rpos_, wpos_ - rpos_);
        wpos_ -= rpos_;
        rpos_ = 0;
      }
      if (data_.size() - wpos_ < min)
        data_.resize(wpos_ + min);
    }
    avail = data_.size() - wpos_;
    return data_.data() + wpos_;
  }
  void commit(size_t n) { wpos_ += n; }

private:
  std::vector<uint8_t> data_;
  size_t rpos_ = 0;
  size_t wpos_ = 0;
};

} // namespace sg::proxy

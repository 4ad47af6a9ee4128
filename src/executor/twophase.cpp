#include "executor/twophase.h"

#include <atomic>
#include <cstdio>
#include <random>

namespace sg::executor {

namespace {

std::string process_nonce() {
  std::random_device rd;
  uint64_t v = (uint64_t(rd()) << 32) ^ rd();
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

bool hex_or_x(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == 'x'))
      return false;
  return !s.empty();
}

} // namespace

std::string new_txid() {
  static const std::string nonce = process_nonce();
  static std::atomic<uint64_t> counter{0};
  char buf[24];
  std::snprintf(buf, sizeof buf, "x%llx",
                static_cast<unsigned long long>(counter.fetch_add(1, std::memory_order_relaxed)));
  return nonce + buf;
}

std::string gid(std::string_view txid, size_t participant) {
  return "sg_" + std::string(txid) + "_" + std::to_string(participant);
}

std::optional<std::string> txid_of(std::string_view g) {
  if (g.substr(0, 3) != "sg_")
    return std::nullopt;
  g.remove_prefix(3);
  size_t us = g.rfind('_');
  if (us == std::string_view::npos || us + 1 == g.size())
    return std::nullopt;
  for (char c : g.substr(us + 1))
    if (c < '0' || c > '9')
      return std::nullopt;
  std::string_view txid = g.substr(0, us);
  if (!hex_or_x(txid))
    return std::nullopt;
  return std::string(txid);
}

} // namespace sg::executor

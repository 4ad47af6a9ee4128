// Error category and logger.
#include "proxy/errors.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace sg::proxy {

namespace {
class Category : public std::error_category {
public:
  const char *name() const noexcept override { return "shardgate"; }
  std::string message(int c) const override {
    switch (errc(c)) {
    case errc::connect_timeout:
      return "timed out connecting to the backend";
    case errc::backend_refused:
      return "the backend refused the connection";
    case errc::backend_auth_failed:
      return "authentication to the backend failed";
    case errc::backend_protocol:
      return "the backend broke the protocol";
    case errc::backend_closed:
      return "the backend closed the connection";
    case errc::pool_timeout:
      return "no backend connection became free in time";
    case errc::node_down:
      return "the backend node is marked down";
    }
    return "unknown";
  }
};
} // namespace

const std::error_category &category() {
  static Category c;
  return c;
}

namespace log {

namespace {
std::atomic<int> g_level{int(Level::info)};
std::atomic<bool> g_json{true};
std::mutex g_mu;
const char *names[] = {"debug", "info", "warn", "error"};
} // namespace

void set_level(Level l) {
  g_level = int(l);
}
void set_json(bool json) {
  g_json = json;
}
bool enabled(Level l) {
  return int(l) >= g_level.load(std::memory_order_relaxed);
}

std::string escape_json(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (char c : s) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    default:
      if (uint8_t(c) < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out += buf;
      } else {
        out.push_back(c);
      }
    }
  }
  return out;
}

std::string format_line(std::string_view ts, Level l, std::string_view event, const Fields &fields,
                        bool json) {
  std::string line;
  if (json) {
    line.append("{\"ts\":\"").append(ts).append("\",\"level\":\"").append(names[int(l)]);
    line.append("\",\"event\":\"").append(escape_json(event)).append("\"");
    for (auto &[k, v] : fields)
      line.append(",\"").append(escape_json(k)).append("\":\"").append(escape_json(v)).append("\"");
    line.append("}\n");
  } else {
    line.append(ts).append(" ").append(names[int(l)]).append(" ").append(event);
    for (auto &[k, v] : fields)
      line.append(" ").append(k).append("=").append(v);
    line.append("\n");
  }
  return line;
}

void write(Level l, std::string_view event, const Fields &fields) {
  if (!enabled(l))
    return;
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[96];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, int(ms.count()));
  std::string line = format_line(ts, l, event, fields, g_json);
  std::lock_guard lock(g_mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

} // namespace log
} // namespace sg::proxy

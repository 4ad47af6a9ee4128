// Expected conditions in the proxy as std::error_code values, and the JSON-lines logger.
#pragma once

#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace sg::proxy {

enum class errc {
  connect_timeout = 1,
  backend_refused,
  backend_auth_failed,
  backend_protocol,
  backend_closed,
  pool_timeout,
  node_down,
};
const std::error_category &category();
inline std::error_code make_error_code(errc e) {
  return {int(e), category()};
}

// One JSON object per line on stderr: ts, level, event, then the given fields.
namespace log {
enum class Level { debug = 0, info = 1, warn = 2, error = 3 };
using Fields = std::vector<std::pair<std::string_view, std::string>>;
void set_level(Level l);
void set_json(bool json);
bool enabled(Level l);
void write(Level l, std::string_view event, const Fields &fields = {});
inline void info(std::string_view e, const Fields &f = {}) {
  write(Level::info, e, f);
}
inline void warn(std::string_view e, const Fields &f = {}) {
  write(Level::warn, e, f);
}
inline void error(std::string_view e, const Fields &f = {}) {
  write(Level::error, e, f);
}
inline void debug(std::string_view e, const Fields &f = {}) {
  if (enabled(Level::debug))
    write(Level::debug, e, f);
}
std::string escape_json(std::string_view s);
// One log line (with its newline), as write() prints it; ts is the timestamp text.
std::string format_line(std::string_view ts, Level l, std::string_view event, const Fields &fields,
                        bool json);
} // namespace log

} // namespace sg::proxy

template <> struct std::is_error_code_enum<sg::proxy::errc> : std::true_type {};

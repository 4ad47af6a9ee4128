// Frame decoding for the PostgreSQL v3 wire protocol.
#include "protocol/frame.h"

namespace sg::protocol {

StartupView decode_startup(const uint8_t *data, size_t len, uint32_t max_len) {
  StartupView s;
  if (len < 4)
    return s;
  uint32_t declared = read_u32(data);
  if (declared < 8) {
    s.status = DecodeStatus::error;
    s.error = "invalid startup packet length";
    return s;
  }
  if (declared > max_len) {
    s.status = DecodeStatus::error;
    s.error = "startup packet length exceeds the configured maximum";
    return s;
  }
  if (len < declared)
    return s;
  s.status = DecodeStatus::ready;
  s.code = read_u32(data + 4);
  s.body = data + 8;
  s.body_len = declared - 8;
  s.frame_len = declared;
  return s;
}

bool is_frontend_type(char type) {
  switch (type) {
  case 'Q':
  case 'P':
  case 'B':
  case 'D':
  case 'E':
  case 'C':
  case 'S':
  case 'H':
  case 'X':
  case 'd':
  case 'c':
  case 'f':
  case 'F':
  case 'p':
    return true;
  default:
    return false;
  }
}

} // namespace sg::protocol

// PostgreSQL v3 frame decoder: a pure state machine over bytes, no I/O.
// It consumes nothing until a whole, valid frame is present; bad bytes give a terminal error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sg::protocol {

enum class DecodeStatus : uint8_t { need_more, ready, error };

// A regular message: Byte1 type, Int32 length (including itself), body.
struct FrameView {
  DecodeStatus status = DecodeStatus::need_more;
  char type = 0;
  const uint8_t *body = nullptr;
  uint32_t body_len = 0;
  size_t frame_len = 0;        // bytes to consume when ready; when need_more, the whole
                               // frame's size once the header is in (0 before)
  const char *error = nullptr; // static text when status == error
  std::string_view body_view() const { return {reinterpret_cast<const char *>(body), body_len}; }
};

// Decodes one typed frame from data[0..len). max_len caps the declared length. (Inline: it
// runs several times per query, and a call costs as much as its body.)
inline FrameView decode_frame(const uint8_t *data, size_t len, uint32_t max_len);

// Untyped startup-phase packets: Int32 length, Int32 code, body.
enum class StartupCode : uint32_t {
  protocol_v3 = 196608,
  ssl_request = 80877103,
  gssenc_request = 80877104,
  cancel_request = 80877102,
};

struct StartupView {
  DecodeStatus status = DecodeStatus::need_more;
  uint32_t code = 0;
  const uint8_t *body = nullptr; // after the code
  uint32_t body_len = 0;
  size_t frame_len = 0;
  const char *error = nullptr;
  std::string_view body_view() const { return {reinterpret_cast<const char *>(body), body_len}; }
};

StartupView decode_startup(const uint8_t *data, size_t len, uint32_t max_len);

inline uint32_t read_u32(const uint8_t *p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}
inline uint16_t read_u16(const uint8_t *p) {
  return uint16_t((p[0] << 8) | p[1]);
}

// True for the message type bytes a frontend may send after startup.
bool is_frontend_type(char type);

inline FrameView decode_frame(const uint8_t *data, size_t len, uint32_t max_len) {
  FrameView f;
  if (len < 5)
    return f;
  uint32_t declared = read_u32(data + 1);
  if (declared < 4) [[unlikely]] {
    f.status = DecodeStatus::error;
    f.error = "invalid message length";
    return f;
  }
  if (declared > max_len) [[unlikely]] {
    f.status = DecodeStatus::error;
    f.error = "message length exceeds the configured maximum";
    return f;
  }
  f.frame_len = size_t(declared) + 1; // known from the header, even while waiting for the body
  if (len < f.frame_len)
    return f;
  f.status = DecodeStatus::ready;
  f.type = char(data[0]);
  f.body = data + 5;
  f.body_len = declared - 4;
  return f;
}

} // namespace sg::protocol

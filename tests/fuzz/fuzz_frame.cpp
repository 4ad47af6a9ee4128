// libFuzzer target: arbitrary bytes through the startup and frame decoders and every message
// parser the proxy uses on client input. Nothing may crash, read out of bounds or hang.
#include "protocol/frame.h"
#include "protocol/messages.h"

#include <cstddef>
#include <cstdint>
#include <string_view>

using namespace sg::protocol;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  auto s = decode_startup(data, size, 10000);
  if (s.status == DecodeStatus::ready)
    (void)parse_startup_params(s.body_view());
  // Walk the input as a stream of typed frames, as the session does.
  size_t pos = 0;
  while (pos < size) {
    auto f = decode_frame(data + pos, size - pos, 1 << 20);
    if (f.status != DecodeStatus::ready)
      break;
    std::string_view body = f.body_view();
    switch (f.type) {
    case 'P':
      (void)parse_parse(body);
      break;
    case 'B': {
      if (auto b = parse_bind(body)) {
        for (size_t i = 0; i < b->params.size(); ++i)
          (void)bind_param_format(*b, i);
        std::string out;
        rewrite_bind(out, *b, body, "sg_1");
      }
      break;
    }
    case 'D':
    case 'C':
      (void)parse_target(body);
      break;
    case 'E':
    case 'N':
      (void)parse_error_response(body);
      break;
    case 'S':
      (void)parse_parameter_status(body);
      break;
    default:
      break;
    }
    pos += f.frame_len;
  }
  return 0;
}

// Canonical key bytes: ints as int64 little-endian, text as UTF-8, uuid as 16 raw bytes.
#include "router/key.h"

#include <xxhash.h>

#include <cctype>
#include <charconv>
#include <cstdint>
#include <limits>

namespace sg::router {

namespace {

std::string int64_le(int64_t v) {
  std::string out(8, '\0');
  uint64_t u = uint64_t(v);
  for (int i = 0; i < 8; ++i)
    out[size_t(i)] = char((u >> (8 * i)) & 0xff);
  return out;
}

bool int_in_range(KeyType t, int64_t v) {
  switch (t) {
  case KeyType::smallint:
    return v >= INT16_MIN && v <= INT16_MAX;
  case KeyType::int_:
    return v >= INT32_MIN && v <= INT32_MAX;
  default:
    return true;
  }
}

int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

} // namespace

std::optional<int64_t> int_key_from_text(KeyType type, std::string_view text) {
  // PostgreSQL's int input accepts surrounding whitespace and a leading '+'.
  while (!text.empty() && std::isspace(uint8_t(text.front())))
    text.remove_prefix(1);
  while (!text.empty() && std::isspace(uint8_t(text.back())))
    text.remove_suffix(1);
  if (!text.empty() && text.front() == '+')
    text.remove_prefix(1);
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size() || text.empty())
    return std::nullopt;
  if (!int_in_range(type, v))
    return std::nullopt;
  return v;
}

uint64_t hash_int_key(int64_t v) {
  uint8_t le[8];
  auto u = uint64_t(v);
  for (int i = 0; i < 8; ++i)
    le[i] = uint8_t(u >> (8 * i));
  return XXH3_64bits(le, sizeof le);
}

std::optional<std::string> canonical_from_text(KeyType type, std::string_view text) {
  switch (type) {
  case KeyType::bigint:
  case KeyType::int_:
  case KeyType::smallint: {
    auto v = int_key_from_text(type, text);
    if (!v)
      return std::nullopt;
    return int64_le(*v);
  }
  case KeyType::text:
    return std::string(text);
  case KeyType::uuid: {
    // Accepts the forms uuid_in does: optional braces, hyphens after any 4 hex digits.
    if (text.size() >= 2 && text.front() == '{' && text.back() == '}')
      text = text.substr(1, text.size() - 2);
    std::string out;
    out.reserve(16);
    int hi = -1;
    for (size_t i = 0; i < text.size(); ++i) {
      char c = text[i];
      if (c == '-' && hi < 0 && i > 0 && i + 1 < text.size())
        continue;
      int h = hexval(c);
      if (h < 0)
        return std::nullopt;
      if (hi < 0)
        hi = h;
      else {
        out.push_back(char((hi << 4) | h));
        hi = -1;
      }
    }
    if (out.size() != 16 || hi >= 0)
      return std::nullopt;
    return out;
  }
  }
  return std::nullopt;
}

std::optional<std::string> canonical_from_binary(KeyType type, std::string_view b) {
  switch (type) {
  case KeyType::bigint:
  case KeyType::int_:
  case KeyType::smallint: {
    // Drivers may send a narrower or wider integer than the column; accept 2, 4 or 8 bytes.
    int64_t v = 0;
    if (b.size() == 2)
      v = int16_t((uint8_t(b[0]) << 8) | uint8_t(b[1]));
    else if (b.size() == 4)
      v = int32_t((uint32_t(uint8_t(b[0])) << 24) | (uint32_t(uint8_t(b[1])) << 16) |
                  (uint32_t(uint8_t(b[2])) << 8) | uint32_t(uint8_t(b[3])));
    else if (b.size() == 8) {
      uint64_t u = 0;
      for (int i = 0; i < 8; ++i)
        u = (u << 8) | uint8_t(b[size_t(i)]);
      v = int64_t(u);
    } else
      return std::nullopt;
    if (!int_in_range(type, v))
      return std::nullopt;
    return int64_le(v);
  }
  case KeyType::text:
    return std::string(b);
  case KeyType::uuid:
    if (b.size() != 16)
      return std::nullopt;
    return std::string(b);
  }
  return std::nullopt;
}

uint64_t hash_key(std::string_view canonical) {
  return XXH3_64bits(canonical.data(), canonical.size());
}

} // namespace sg::router

#include "executor/values.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

namespace sg::executor {

namespace {

// PostgreSQL type oids (pg_type.dat).
enum : uint32_t {
  kBool = 16,
  kBytea = 17,
  kChar = 18,
  kName = 19,
  kInt8 = 20,
  kInt2 = 21,
  kInt4 = 23,
  kText = 25,
  kOid = 26,
  kFloat4 = 700,
  kFloat8 = 701,
  kBpchar = 1042,
  kVarchar = 1043,
  kDate = 1082,
  kTime = 1083,
  kTimestamp = 1114,
  kTimestampTz = 1184,
  kNumeric = 1700,
  kUuid = 2950,
};

int sign(int v) {
  return (v > 0) - (v < 0);
}

int bytes_cmp(std::string_view a, std::string_view b) {
  return sign(a.compare(b));
}

template <class T> int three_way(const T &a, const T &b) {
  return a < b ? -1 : (b < a ? 1 : 0);
}

// Either both parse (compare them) or the one that does not sorts last.
template <class T, class Parse> int parsed_cmp(std::string_view a, std::string_view b, Parse p) {
  std::optional<T> x = p(a), y = p(b);
  if (x && y)
    return three_way(*x, *y);
  if (x || y)
    return x ? -1 : 1;
  return bytes_cmp(a, b);
}

std::optional<int64_t> parse_int(std::string_view s) {
  int64_t v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size())
    return std::nullopt;
  return v;
}

} // namespace

std::optional<int64_t> binary_int(std::string_view s) {
  if (s.size() != 2 && s.size() != 4 && s.size() != 8)
    return std::nullopt;
  uint64_t u = 0;
  for (unsigned char c : s)
    u = (u << 8) | c;
  if (s.size() == 2)
    return int64_t(int16_t(uint16_t(u)));
  if (s.size() == 4)
    return int64_t(int32_t(uint32_t(u)));
  return int64_t(u);
}

namespace {

// Floats: (rank, value) where rank orders -Infinity < numbers < Infinity < NaN.
struct FloatKey {
  int rank;
  double v;
  bool operator<(const FloatKey &o) const { return rank != o.rank ? rank < o.rank : v < o.v; }
};
// float4 or float8 in binary: IEEE 754, big-endian.
std::optional<FloatKey> parse_binary_float(std::string_view s) {
  if (s.size() != 4 && s.size() != 8)
    return std::nullopt;
  uint64_t u = 0;
  for (unsigned char c : s)
    u = (u << 8) | c;
  double v;
  if (s.size() == 4) {
    uint32_t w = uint32_t(u);
    float f;
    std::memcpy(&f, &w, 4);
    v = f;
  } else {
    std::memcpy(&v, &u, 8);
  }
  if (std::isnan(v))
    return FloatKey{3, 0};
  if (std::isinf(v))
    return FloatKey{v > 0 ? 2 : 0, 0};
  return FloatKey{1, v};
}

std::optional<FloatKey> parse_float(std::string_view s) {
  if (s == "NaN")
    return FloatKey{3, 0};
  if (s == "Infinity")
    return FloatKey{2, 0};
  if (s == "-Infinity")
    return FloatKey{0, 0};
  if (s.empty() || s.size() > 64)
    return std::nullopt;
  char buf[65];
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  char *end = nullptr;
  double v = std::strtod(buf, &end);
  if (end != buf + s.size() || std::isnan(v))
    return std::nullopt;
  return FloatKey{1, v};
}

// Numeric text: [-]digits[.digits], or NaN / Infinity / -Infinity.
// rank: -Infinity 0, negative 1, zero 2, positive 3, Infinity 4, NaN 5.
std::optional<int> numeric_rank(std::string_view s, std::string_view &int_part,
                                std::string_view &frac) {
  if (s == "NaN")
    return 5;
  if (s == "Infinity")
    return 4;
  if (s == "-Infinity")
    return 0;
  bool neg = !s.empty() && s[0] == '-';
  if (neg)
    s.remove_prefix(1);
  size_t dot = s.find('.');
  int_part = s.substr(0, dot);
  frac = dot == std::string_view::npos ? std::string_view() : s.substr(dot + 1);
  if (int_part.empty() && frac.empty())
    return std::nullopt;
  for (char c : int_part)
    if (c < '0' || c > '9')
      return std::nullopt;
  for (char c : frac)
    if (c < '0' || c > '9')
      return std::nullopt;
  while (!int_part.empty() && int_part[0] == '0')
    int_part.remove_prefix(1);
  while (!frac.empty() && frac.back() == '0')
    frac.remove_suffix(1);
  if (int_part.empty() && frac.empty())
    return 2;
  return neg ? 1 : 3;
}

int numeric_cmp(std::string_view a, std::string_view b) {
  std::string_view ai, af, bi, bf;
  auto ra = numeric_rank(a, ai, af), rb = numeric_rank(b, bi, bf);
  if (!ra || !rb)
    return ra ? -1 : (rb ? 1 : bytes_cmp(a, b));
  if (*ra != *rb)
    return three_way(*ra, *rb);
  if (*ra != 1 && *ra != 3)
    return 0; // both zero, both NaN, or the same infinity
  int mag = ai.size() != bi.size() ? three_way(ai.size(), bi.size()) : bytes_cmp(ai, bi);
  if (mag == 0) {
    size_t n = std::max(af.size(), bf.size());
    for (size_t i = 0; i < n && mag == 0; ++i)
      mag = three_way(i < af.size() ? af[i] : '0', i < bf.size() ? bf[i] : '0');
  }
  return *ra == 1 ? -mag : mag;
}

// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year: 1 BC is 0).
int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

// A point in time: (rank, microseconds since 1970-01-01 00:00 UTC) with rank -infinity 0,
// finite 1, infinity 2. __int128 keeps every year PostgreSQL accepts.
using TimeKey = std::pair<int, __int128>;

bool digits(std::string_view s, size_t pos, size_t n, int64_t &out) {
  if (pos + n > s.size())
    return false;
  out = 0;
  for (size_t i = pos; i < pos + n; ++i) {
    if (s[i] < '0' || s[i] > '9')
      return false;
    out = out * 10 + (s[i] - '0');
  }
  return true;
}

// ISO output: date "Y-MM-DD", timestamp "Y-MM-DD HH:MM:SS[.f]", timestamptz the same plus
// "+HH[:MM[:SS]]" or "-..."; any of them may end " BC". Y has four or more digits.
std::optional<TimeKey> parse_time(std::string_view s, bool has_time, bool has_tz) {
  if (s == "infinity")
    return TimeKey{2, 0};
  if (s == "-infinity")
    return TimeKey{0, 0};
  bool bc = s.size() > 3 && s.substr(s.size() - 3) == " BC";
  if (bc)
    s.remove_suffix(3);
  size_t dash = s.find('-');
  if (dash == std::string_view::npos || dash < 4)
    return std::nullopt;
  int64_t y, mo, d;
  if (!digits(s, 0, dash, y) || s.size() < dash + 6 || s[dash + 3] != '-' ||
      !digits(s, dash + 1, 2, mo) || !digits(s, dash + 4, 2, d))
    return std::nullopt;
  if (bc)
    y = 1 - y;
  size_t p = dash + 6;
  __int128 us = __int128(days_from_civil(y, mo, d)) * 86400000000LL;
  if (has_time) {
    int64_t hh, mm, ss;
    if (s.size() < p + 9 || s[p] != ' ' || !digits(s, p + 1, 2, hh) || s[p + 3] != ':' ||
        !digits(s, p + 4, 2, mm) || s[p + 6] != ':' || !digits(s, p + 7, 2, ss))
      return std::nullopt;
    p += 9;
    int64_t frac = 0;
    if (p < s.size() && s[p] == '.') {
      size_t n = 0;
      ++p;
      while (p < s.size() && s[p] >= '0' && s[p] <= '9' && n < 6) {
        frac = frac * 10 + (s[p] - '0');
        ++p, ++n;
      }
      if (n == 0)
        return std::nullopt;
      for (; n < 6; ++n)
        frac *= 10;
    }
    us += ((hh * 60 + mm) * 60 + ss) * 1000000LL + frac;
    if (has_tz) {
      if (p >= s.size() || (s[p] != '+' && s[p] != '-'))
        return std::nullopt;
      int sg = s[p] == '-' ? -1 : 1;
      int64_t oh = 0, om = 0, os = 0;
      if (!digits(s, p + 1, 2, oh))
        return std::nullopt;
      p += 3;
      if (p < s.size() && s[p] == ':') {
        if (!digits(s, p + 1, 2, om))
          return std::nullopt;
        p += 3;
        if (p < s.size() && s[p] == ':') {
          if (!digits(s, p + 1, 2, os))
            return std::nullopt;
          p += 3;
        }
      }
      us -= sg * ((oh * 60 + om) * 60 + os) * 1000000LL; // local time minus offset = UTC
    }
  }
  if (p != s.size())
    return std::nullopt;
  return TimeKey{1, us};
}

} // namespace

Kind kind_of(uint32_t oid, int16_t format) {
  if (format == 1) {
    switch (oid) {
    case kInt2:
    case kInt4:
    case kInt8:
    case kDate:        // int32 days since 2000-01-01 (the infinities at the extremes)
    case kTime:        // int64 microseconds
    case kTimestamp:   // int64 microseconds since 2000-01-01
    case kTimestampTz: // the same, in UTC
      return Kind::BinaryInteger;
    case kFloat4:
    case kFloat8:
      return Kind::BinaryFloat;
    case kBool: // one byte, 0 or 1
      return Kind::Bool;
    case kText:
    case kVarchar:
    case kBpchar:
    case kName:
    case kChar:
    case kUuid: // 16 bytes, compared as PostgreSQL does (memcmp)
      return Kind::Bytes;
    default:
      return Kind::Unsupported;
    }
  }
  if (format != 0)
    return Kind::Unsupported;
  switch (oid) {
  case kInt2:
  case kInt4:
  case kInt8:
  case kOid:
    return Kind::Integer;
  case kFloat4:
  case kFloat8:
    return Kind::Float;
  case kNumeric:
    return Kind::Numeric;
  case kBool:
    return Kind::Bool;
  case kText:
  case kVarchar:
  case kBpchar:
  case kName:
  case kChar:
  case kUuid:
  case kTime:
    return Kind::Bytes;
  case kDate:
    return Kind::Date;
  case kTimestamp:
    return Kind::Timestamp;
  case kTimestampTz:
    return Kind::TimestampTz;
  default:
    return Kind::Unsupported;
  }
}

const char *to_string(Kind k) {
  switch (k) {
  case Kind::Integer:
    return "integer";
  case Kind::Float:
    return "float";
  case Kind::Numeric:
    return "numeric";
  case Kind::Bool:
    return "bool";
  case Kind::Bytes:
    return "bytes";
  case Kind::Date:
    return "date";
  case Kind::Timestamp:
    return "timestamp";
  case Kind::TimestampTz:
    return "timestamptz";
  case Kind::BinaryInteger:
    return "binary integer";
  case Kind::BinaryFloat:
    return "binary float";
  case Kind::Unsupported:
    return "unsupported";
  }
  return "?";
}

int compare(Kind k, std::string_view a, std::string_view b) {
  switch (k) {
  case Kind::Integer:
    return parsed_cmp<int64_t>(a, b, parse_int);
  case Kind::BinaryInteger:
    return parsed_cmp<int64_t>(a, b, binary_int);
  case Kind::Float:
    return parsed_cmp<FloatKey>(a, b, parse_float);
  case Kind::BinaryFloat:
    return parsed_cmp<FloatKey>(a, b, parse_binary_float);
  case Kind::Numeric:
    return numeric_cmp(a, b);
  case Kind::Date:
    return parsed_cmp<TimeKey>(a, b,
                               [](std::string_view s) { return parse_time(s, false, false); });
  case Kind::Timestamp:
    return parsed_cmp<TimeKey>(a, b, [](std::string_view s) { return parse_time(s, true, false); });
  case Kind::TimestampTz:
    return parsed_cmp<TimeKey>(a, b, [](std::string_view s) { return parse_time(s, true, true); });
  case Kind::Bool:
  case Kind::Bytes:
  case Kind::Unsupported:
    return bytes_cmp(a, b);
  }
  return bytes_cmp(a, b);
}

} // namespace sg::executor

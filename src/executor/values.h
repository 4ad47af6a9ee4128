// Ordering of PostgreSQL values as they arrive in result rows, for merging sorted results from
// several shards. Pure: no I/O, no allocation per comparison.
//
// Text format (format code 0) follows PostgreSQL's output functions with the default settings:
// DateStyle ISO, extra_float_digits >= 0. Text types compare byte by byte, which is PostgreSQL's
// order under collation "C" only; callers decide what to do about other collations. Binary
// format (1) is understood for integers, floats, bool, dates and times (integers inside), uuid
// and the text types (their bytes); not for numeric.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace sg::executor {

enum class Kind {
  Integer,       // int2, int4, int8, oid
  Float,         // float4, float8: NaN after everything, as PostgreSQL sorts it
  Numeric,       // numeric: exact, with NaN and the infinities
  Bool,          // f < t
  Bytes,         // text, varchar, bpchar, name, "char", uuid, time: byte order
  Date,          // date, with BC and the infinities
  Timestamp,     // timestamp without time zone
  TimestampTz,   // timestamp with time zone: compared in UTC, whatever the offsets printed
  BinaryInteger, // int2, int4, int8, date, time, timestamp(tz) in binary format
  BinaryFloat,   // float4, float8 in binary format
  Unsupported,
};

// The kind for a column of type `oid` in `format` (0 text, 1 binary).
Kind kind_of(uint32_t type_oid, int16_t format);
const char *to_string(Kind k);

// <0, 0, >0 as PostgreSQL orders a and b (both non-NULL) ascending. A value that does not parse
// as its kind sorts after every value that does, and such values compare byte by byte, so that
// the order stays total.
int compare(Kind k, std::string_view a, std::string_view b);

// A binary int2, int4 or int8 (2, 4 or 8 bytes, big-endian); nullopt for another size.
std::optional<int64_t> binary_int(std::string_view s);

} // namespace sg::executor

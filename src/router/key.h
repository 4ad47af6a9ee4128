// Shard-key canonical bytes (the ring contract): the same value hashes the same whether it came
// as a SQL literal, a text parameter or a binary parameter.
#pragma once

#include "config/config.h"

#include <optional>
#include <string>
#include <string_view>

namespace sg::router {

using config::KeyType;

// From the text form of a value (a literal's unquoted text or a text-format parameter).
std::optional<std::string> canonical_from_text(KeyType type, std::string_view text);
// From a binary-format parameter (network byte order int2/int4/int8, 16-byte uuid, text bytes).
std::optional<std::string> canonical_from_binary(KeyType type, std::string_view bytes);

uint64_t hash_key(std::string_view canonical);

// An integer key (smallint/int/bigint) from its text form, as canonical_from_text reads it.
// nullopt: not a valid value of the type.
std::optional<int64_t> int_key_from_text(KeyType type, std::string_view text);
// hash_key() of an integer key's canonical bytes, without building them.
uint64_t hash_int_key(int64_t v);

} // namespace sg::router

#include "executor/having.h"

#include "executor/values.h"

namespace sg::executor {

CondType cond_type(uint32_t oid, int16_t format) {
  if (format != 0)
    return CondType::Other;
  switch (oid) {
  case 20:   // int8
  case 21:   // int2
  case 23:   // int4
  case 1700: // numeric
    return CondType::Number;
  case 25:   // text
  case 1043: // varchar
    return CondType::Text;
  default:
    return CondType::Other;
  }
}

namespace {

bool number_text(const std::string &s) {
  size_t i = s.size() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
  bool digit = false, dot = false;
  for (; i < s.size(); ++i) {
    if (s[i] >= '0' && s[i] <= '9')
      digit = true;
    else if (s[i] == '.' && !dot)
      dot = true;
    else
      return false;
  }
  return digit;
}

} // namespace

bool eval(const Cond &c, const protocol::Row &row, const std::vector<CondType> &types,
          std::optional<bool> &out, std::string &error) {
  using Op = Cond::Op;
  switch (c.op) {
  case Op::And:
  case Op::Or: {
    bool any_null = false;
    for (const auto &a : c.args) {
      std::optional<bool> v;
      if (!eval(a, row, types, v, error))
        return false;
      if (!v)
        any_null = true;
      else if (*v == (c.op == Op::Or)) { // a true OR, a false AND: decided
        out = *v;
        return true;
      }
    }
    out = any_null ? std::nullopt : std::optional<bool>(c.op == Op::And);
    return true;
  }
  case Op::Not: {
    std::optional<bool> v;
    if (c.args.size() != 1 || !eval(c.args[0], row, types, v, error))
      return error.empty() ? (error = "malformed NOT", false) : false;
    out = v ? std::optional<bool>(!*v) : std::nullopt;
    return true;
  }
  default:
    break;
  }
  if (c.column >= row.size() || c.column >= types.size()) {
    error = "HAVING reads a column the shards did not return";
    return false;
  }
  const protocol::Field &f = row[c.column];
  if (c.op == Op::IsNull || c.op == Op::NotNull) {
    out = (!f) == (c.op == Op::IsNull);
    return true;
  }
  CondType t = types[c.column];
  if (t == CondType::Other) {
    error = "HAVING compares a column of a type the proxy does not compare (only integers, "
            "numeric and text)";
    return false;
  }
  if (t == CondType::Number && (c.value_is_text || !number_text(c.value))) {
    error = "HAVING compares a number with \"" + c.value + "\"";
    return false;
  }
  if (t == CondType::Text && (!c.value_is_text || (c.op != Op::Eq && c.op != Op::Ne))) {
    error = "HAVING on text compares only with = or <> and a string (the order of text "
            "depends on the collation)";
    return false;
  }
  if (!f) {
    out = std::nullopt;
    return true;
  }
  std::string v = c.value;
  if (t == CondType::Number && !v.empty() && v[0] == '+')
    v.erase(0, 1);
  int r = t == CondType::Number ? compare(Kind::Numeric, *f, v) : f->compare(v);
  switch (c.op) {
  case Op::Eq:
    out = r == 0;
    break;
  case Op::Ne:
    out = r != 0;
    break;
  case Op::Lt:
    out = r < 0;
    break;
  case Op::Le:
    out = r <= 0;
    break;
  case Op::Gt:
    out = r > 0;
    break;
  case Op::Ge:
    out = r >= 0;
    break;
  default:
    error = "malformed comparison";
    return false;
  }
  return true;
}

} // namespace sg::executor

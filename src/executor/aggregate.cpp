#include "executor/aggregate.h"

#include <algorithm>

namespace sg::executor {

namespace {

struct Decimal {
  enum Special { None, NaN, PosInf, NegInf } special = None;
  bool neg = false;
  std::string digits; // integer and fraction digits together, no sign, no dot
  size_t scale = 0;   // digits after the dot
};

std::optional<Decimal> parse_decimal(std::string_view s) {
  Decimal d;
  if (s == "NaN") {
    d.special = Decimal::NaN;
    return d;
  }
  if (s == "Infinity") {
    d.special = Decimal::PosInf;
    return d;
  }
  if (s == "-Infinity") {
    d.special = Decimal::NegInf;
    return d;
  }
  if (!s.empty() && s[0] == '-') {
    d.neg = true;
    s.remove_prefix(1);
  }
  size_t dot = s.find('.');
  std::string_view ip = s.substr(0, dot);
  std::string_view fp = dot == std::string_view::npos ? std::string_view() : s.substr(dot + 1);
  if (ip.empty() && fp.empty())
    return std::nullopt;
  for (char c : ip)
    if (c < '0' || c > '9')
      return std::nullopt;
  for (char c : fp)
    if (c < '0' || c > '9')
      return std::nullopt;
  d.digits = std::string(ip) + std::string(fp);
  d.scale = fp.size();
  return d;
}

// |a| vs |b| for digit strings of the same scale and length.
int mag_cmp(const std::string &a, const std::string &b) {
  return a.compare(b) < 0 ? -1 : a == b ? 0 : 1;
}

std::string format(bool neg, std::string digits, size_t scale) {
  // digits has at least scale + 1 characters after padding below
  while (digits.size() < scale + 1)
    digits.insert(digits.begin(), '0');
  size_t int_len = digits.size() - scale;
  size_t lead = 0;
  while (lead + 1 < int_len && digits[lead] == '0')
    ++lead;
  std::string out = digits.substr(lead, int_len - lead);
  if (scale)
    out += "." + digits.substr(int_len);
  bool zero = std::all_of(digits.begin(), digits.end(), [](char c) { return c == '0'; });
  return (neg && !zero ? "-" : "") + out;
}

} // namespace

std::optional<std::string> decimal_add(std::string_view as, std::string_view bs) {
  auto a = parse_decimal(as), b = parse_decimal(bs);
  if (!a || !b)
    return std::nullopt;
  if (a->special || b->special) {
    if (a->special == Decimal::NaN || b->special == Decimal::NaN)
      return std::string("NaN");
    if (a->special && b->special && a->special != b->special)
      return std::string("NaN"); // Infinity + -Infinity
    auto s = a->special ? a->special : b->special;
    return std::string(s == Decimal::PosInf ? "Infinity" : "-Infinity");
  }
  size_t scale = std::max(a->scale, b->scale);
  a->digits.append(scale - a->scale, '0');
  b->digits.append(scale - b->scale, '0');
  size_t len = std::max(a->digits.size(), b->digits.size()) + 1;
  a->digits.insert(0, len - a->digits.size(), '0');
  b->digits.insert(0, len - b->digits.size(), '0');
  std::string r(len, '0');
  bool neg;
  if (a->neg == b->neg) {
    int carry = 0;
    for (size_t i = len; i-- > 0;) {
      int v = (a->digits[i] - '0') + (b->digits[i] - '0') + carry;
      r[i] = char('0' + v % 10);
      carry = v / 10;
    }
    neg = a->neg;
  } else {
    const Decimal *big = &*a, *small = &*b;
    if (mag_cmp(a->digits, b->digits) < 0)
      std::swap(big, small);
    int borrow = 0;
    for (size_t i = len; i-- > 0;) {
      int v = (big->digits[i] - '0') - (small->digits[i] - '0') - borrow;
      borrow = v < 0;
      r[i] = char('0' + (v + 10) % 10);
    }
    neg = big->neg;
  }
  return format(neg, std::move(r), scale);
}

bool Groups::Less::operator()(const protocol::Row &a, const protocol::Row &b) const {
  for (size_t c = 0; c < specs->size(); ++c) {
    if ((*specs)[c].agg != Agg::Group)
      continue;
    const protocol::Field *x = c < a.size() ? &a[c] : nullptr;
    const protocol::Field *y = c < b.size() ? &b[c] : nullptr;
    bool xn = !x || !*x, yn = !y || !*y;
    if (xn || yn) {
      if (xn != yn)
        return xn;
      continue;
    }
    int r = compare((*specs)[c].kind, **x, **y);
    if (r != 0)
      return r < 0;
  }
  return false;
}

Groups::Groups(std::vector<AggSpec> specs) : specs_(std::move(specs)), rows_(Less{&specs_}) {}

bool Groups::add(protocol::Row row, std::string &error) {
  if (row.size() != specs_.size()) {
    error = "a shard answered " + std::to_string(row.size()) + " columns, expected " +
            std::to_string(specs_.size());
    return false;
  }
  auto it = rows_.find(row);
  if (it == rows_.end()) {
    protocol::Row key = row;
    // One partial alone, combined: checks its values, and starts count and sum right.
    protocol::Row first;
    if (!combine({std::move(row)}, specs_, first, error))
      return false;
    rows_.emplace(std::move(key), std::move(first));
    return true;
  }
  protocol::Row merged;
  if (!combine({it->second, std::move(row)}, specs_, merged, error))
    return false;
  it->second = std::move(merged);
  return true;
}

std::vector<protocol::Row> Groups::take() {
  std::vector<protocol::Row> out;
  out.reserve(rows_.size());
  for (auto &[k, v] : rows_)
    out.push_back(std::move(v));
  rows_.clear();
  return out;
}

bool combinable(const AggSpec &s) {
  switch (s.agg) {
  case Agg::Count: // bigint
    return s.kind == Kind::Integer || s.kind == Kind::BinaryInteger;
  case Agg::Sum: // bigint for smallint and integer, numeric for bigint and numeric
    return s.kind == Kind::Integer || s.kind == Kind::Numeric || s.kind == Kind::BinaryInteger;
  case Agg::Min:
  case Agg::Max:
  case Agg::Group:
    return s.kind != Kind::Unsupported;
  }
  return false;
}

bool combine(const std::vector<protocol::Row> &partials, const std::vector<AggSpec> &specs,
             protocol::Row &out, std::string &error) {
  out.assign(specs.size(), std::nullopt);
  for (size_t c = 0; c < specs.size(); ++c) {
    const AggSpec &s = specs[c];
    if (!combinable(s)) {
      error = "column " + std::to_string(c + 1) + ": cannot combine this aggregate of " +
              to_string(s.kind) + " values";
      return false;
    }
    protocol::Field acc;
    bool binary = s.kind == Kind::BinaryInteger;
    if (s.agg == Agg::Count)
      acc = binary ? std::string(8, '\0') : std::string("0");
    if (s.agg == Agg::Group) {
      if (!partials.empty() && c < partials[0].size())
        out[c] = partials[0][c];
      continue;
    }
    for (auto &p : partials) {
      if (c >= p.size()) {
        error = "a shard answered " + std::to_string(p.size()) + " columns, expected " +
                std::to_string(specs.size());
        return false;
      }
      const protocol::Field &v = p[c];
      if (!v)
        continue;
      if (binary && (s.agg == Agg::Count || s.agg == Agg::Sum)) {
        // A binary bigint (count, or sum of smallint or integer): added exactly, same width.
        auto a = acc ? binary_int(*acc) : std::optional<int64_t>(0);
        auto b = binary_int(*v);
        int64_t sum = 0;
        if (!a || !b || v->size() != 8 || __builtin_add_overflow(*a, *b, &sum)) {
          error = "column " + std::to_string(c + 1) + ": bigint out of range or malformed";
          return false;
        }
        std::string enc(8, '\0');
        for (int k = 7; k >= 0; --k, sum = int64_t(uint64_t(sum) >> 8))
          enc[size_t(k)] = char(uint64_t(sum) & 0xff);
        acc = std::move(enc);
        continue;
      }
      if (!acc) {
        if (s.agg == Agg::Sum && !parse_decimal(*v)) {
          error = "column " + std::to_string(c + 1) + ": not a number: " + *v;
          return false;
        }
        acc = *v;
        continue;
      }
      switch (s.agg) {
      case Agg::Count:
      case Agg::Sum: {
        auto r = decimal_add(*acc, *v);
        if (!r) {
          error = "column " + std::to_string(c + 1) + ": not a number: " + *v;
          return false;
        }
        acc = std::move(*r);
        break;
      }
      case Agg::Min:
        if (compare(s.kind, *v, *acc) < 0)
          acc = *v;
        break;
      case Agg::Max:
        if (compare(s.kind, *v, *acc) > 0)
          acc = *v;
        break;
      case Agg::Group:
        break;
      }
    }
    out[c] = std::move(acc);
  }
  return true;
}

} // namespace sg::executor

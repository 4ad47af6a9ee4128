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

namespace {

// The weight and value of the first non-zero base-10000 digit of `digits` (with `scale`
// digits after the dot), as PostgreSQL's NumericVar holds it; 0 and 0 for zero.
std::pair<int, int> first_nbase_digit(const std::string &digits, size_t scale) {
  size_t first = digits.find_first_not_of('0');
  if (first == std::string::npos)
    return {0, 0};
  // Decimal exponent of that digit: 0 for units, -1 for tenths.
  long exp10 = long(digits.size() - scale) - 1 - long(first);
  // Base-10000 groups are aligned on the dot: group w holds exponents 4w .. 4w+3.
  long w = exp10 >= 0 ? exp10 / 4 : -((-exp10 + 3) / 4);
  int value = 0;
  for (long e = 4 * w + 3; e >= 4 * w; --e) {
    long idx = long(digits.size() - scale) - 1 - e; // position of exponent e in digits
    int d = idx >= 0 && idx < long(digits.size()) ? digits[size_t(idx)] - '0' : 0;
    value = value * 10 + d;
  }
  return {int(w), value};
}

} // namespace

std::optional<std::string> decimal_avg(std::string_view sum_text, std::string_view count_text) {
  auto s = parse_decimal(sum_text), n = parse_decimal(count_text);
  if (!s || !n || n->special || n->neg || n->scale)
    return std::nullopt;
  std::string nd = n->digits.substr(std::min(n->digits.find_first_not_of('0'), n->digits.size()));
  if (nd.empty() || nd.size() > 18)
    return std::nullopt;
  uint64_t count = std::stoull(nd);
  if (s->special)
    return std::string(s->special == Decimal::NaN      ? "NaN"
                       : s->special == Decimal::PosInf ? "Infinity"
                                                       : "-Infinity");
  // select_div_scale
  auto [w1, d1] = first_nbase_digit(s->digits, s->scale);
  auto [w2, d2] = first_nbase_digit(nd, 0);
  int qweight = w1 - w2;
  if (d1 <= d2)
    --qweight;
  long rscale = 16 - long(qweight) * 4;
  rscale = std::max<long>(rscale, long(s->scale));
  rscale = std::max<long>(rscale, 0);
  rscale = std::min<long>(rscale, 1000);
  // |sum| * 10^(rscale - scale) / count, by long division, rounded half away from zero.
  std::string num = s->digits + std::string(size_t(rscale) - s->scale, '0');
  std::string q;
  q.reserve(num.size());
  unsigned __int128 rem = 0;
  for (char c : num) {
    rem = rem * 10 + unsigned(c - '0');
    q += char('0' + int(rem / count));
    rem %= count;
  }
  if (rem * 2 >= count) { // round up the last digit, carrying
    size_t i = q.size();
    while (i > 0) {
      --i;
      if (q[i] == '9') {
        q[i] = '0';
      } else {
        ++q[i];
        break;
      }
      if (i == 0)
        q.insert(q.begin(), '1');
    }
  }
  return format(s->neg, std::move(q), size_t(rscale));
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

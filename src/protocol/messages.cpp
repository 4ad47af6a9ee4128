// Builders and parsers for the PostgreSQL v3 messages the proxy speaks or inspects.
#include "protocol/messages.h"

#include <cstring>

namespace sg::protocol {

const char *to_string(Frontend t) {
  switch (t) {
  case Frontend::Query:
    return "Query";
  case Frontend::Parse:
    return "Parse";
  case Frontend::Bind:
    return "Bind";
  case Frontend::Describe:
    return "Describe";
  case Frontend::Execute:
    return "Execute";
  case Frontend::Close:
    return "Close";
  case Frontend::Sync:
    return "Sync";
  case Frontend::Flush:
    return "Flush";
  case Frontend::Terminate:
    return "Terminate";
  case Frontend::CopyData:
    return "CopyData";
  case Frontend::CopyDone:
    return "CopyDone";
  case Frontend::CopyFail:
    return "CopyFail";
  case Frontend::FunctionCall:
    return "FunctionCall";
  case Frontend::PasswordMessage:
    return "PasswordMessage";
  }
  return "Unknown";
}

const char *to_string(Backend t) {
  switch (t) {
  case Backend::Authentication:
    return "Authentication";
  case Backend::BackendKeyData:
    return "BackendKeyData";
  case Backend::BindComplete:
    return "BindComplete";
  case Backend::CloseComplete:
    return "CloseComplete";
  case Backend::CommandComplete:
    return "CommandComplete";
  case Backend::CopyData:
    return "CopyData";
  case Backend::CopyDone:
    return "CopyDone";
  case Backend::CopyInResponse:
    return "CopyInResponse";
  case Backend::CopyOutResponse:
    return "CopyOutResponse";
  case Backend::CopyBothResponse:
    return "CopyBothResponse";
  case Backend::DataRow:
    return "DataRow";
  case Backend::EmptyQueryResponse:
    return "EmptyQueryResponse";
  case Backend::ErrorResponse:
    return "ErrorResponse";
  case Backend::FunctionCallResponse:
    return "FunctionCallResponse";
  case Backend::NegotiateProtocolVersion:
    return "NegotiateProtocolVersion";
  case Backend::NoData:
    return "NoData";
  case Backend::NoticeResponse:
    return "NoticeResponse";
  case Backend::NotificationResponse:
    return "NotificationResponse";
  case Backend::ParameterDescription:
    return "ParameterDescription";
  case Backend::ParameterStatus:
    return "ParameterStatus";
  case Backend::ParseComplete:
    return "ParseComplete";
  case Backend::PortalSuspended:
    return "PortalSuspended";
  case Backend::ReadyForQuery:
    return "ReadyForQuery";
  case Backend::RowDescription:
    return "RowDescription";
  }
  return "Unknown";
}

uint8_t Reader::u8() {
  if (end_ - p_ < 1) {
    ok_ = false;
    return 0;
  }
  return uint8_t(*p_++);
}
int16_t Reader::i16() {
  if (end_ - p_ < 2) {
    ok_ = false;
    p_ = end_;
    return 0;
  }
  auto v = int16_t((uint8_t(p_[0]) << 8) | uint8_t(p_[1]));
  p_ += 2;
  return v;
}
int32_t Reader::i32() {
  if (end_ - p_ < 4) {
    ok_ = false;
    p_ = end_;
    return 0;
  }
  auto v = int32_t((uint32_t(uint8_t(p_[0])) << 24) | (uint32_t(uint8_t(p_[1])) << 16) |
                   (uint32_t(uint8_t(p_[2])) << 8) | uint32_t(uint8_t(p_[3])));
  p_ += 4;
  return v;
}
std::string_view Reader::cstr() {
  const void *nul = std::memchr(p_, 0, size_t(end_ - p_));
  if (!nul) {
    ok_ = false;
    p_ = end_;
    return {};
  }
  std::string_view s(p_, size_t(static_cast<const char *>(nul) - p_));
  p_ += s.size() + 1;
  return s;
}
std::string_view Reader::bytes(size_t n) {
  if (size_t(end_ - p_) < n) {
    ok_ = false;
    p_ = end_;
    return {};
  }
  std::string_view s(p_, n);
  p_ += n;
  return s;
}

// ErrorResponse: { Byte1 field code, String value }*, Byte1 0.
static void error_fields(Bytes &out, char type, const ErrorInfo &e) {
  Writer w(out, type);
  w.u8('S').cstr(e.severity).u8('V').cstr(e.severity).u8('C').cstr(e.sqlstate);
  w.u8('M').cstr(e.message);
  if (!e.detail.empty())
    w.u8('D').cstr(e.detail);
  if (!e.hint.empty())
    w.u8('H').cstr(e.hint);
  w.u8(0);
  w.finish();
}

void error_response(Bytes &out, const ErrorInfo &e) {
  error_fields(out, 'E', e);
}

void notice_response(Bytes &out, const ErrorInfo &e) {
  error_fields(out, 'N', e);
}

ErrorInfo parse_error_response(std::string_view body) {
  ErrorInfo e;
  Reader r(body);
  while (r.ok() && !r.at_end()) {
    uint8_t code = r.u8();
    if (code == 0)
      break;
    std::string_view v = r.cstr();
    switch (code) {
    case 'V':
      e.severity = v;
      break;
    case 'C':
      e.sqlstate = v;
      break;
    case 'M':
      e.message = v;
      break;
    case 'D':
      e.detail = v;
      break;
    case 'H':
      e.hint = v;
      break;
    default:
      break;
    }
  }
  return e;
}

// Authentication: Int32 code, then code-specific data.
void auth_ok(Bytes &out) {
  Writer(out, 'R').i32(0).finish();
}
void auth_md5(Bytes &out, const uint8_t salt[4]) {
  Writer(out, 'R').i32(5).raw({reinterpret_cast<const char *>(salt), 4}).finish();
}
void auth_sasl(Bytes &out, std::string_view mechanism) {
  Writer(out, 'R').i32(10).cstr(mechanism).u8(0).finish();
}
void auth_sasl_continue(Bytes &out, std::string_view data) {
  Writer(out, 'R').i32(11).raw(data).finish();
}
void auth_sasl_final(Bytes &out, std::string_view data) {
  Writer(out, 'R').i32(12).raw(data).finish();
}
void parameter_status(Bytes &out, std::string_view name, std::string_view value) {
  Writer(out, 'S').cstr(name).cstr(value).finish();
}
void backend_key_data(Bytes &out, int32_t pid, int32_t key) {
  Writer(out, 'K').i32(pid).i32(key).finish();
}
void ready_for_query(Bytes &out, char status) {
  Writer(out, 'Z').u8(uint8_t(status)).finish();
}
void command_complete(Bytes &out, std::string_view tag) {
  Writer(out, 'C').cstr(tag).finish();
}
void parse_complete(Bytes &out) {
  Writer(out, '1').finish();
}
void bind_complete(Bytes &out) {
  Writer(out, '2').finish();
}
void close_complete(Bytes &out) {
  Writer(out, '3').finish();
}
void no_data(Bytes &out) {
  Writer(out, 'n').finish();
}

void startup_message(Bytes &out, const std::vector<std::pair<std::string, std::string>> &params) {
  Writer w(out);
  w.i32(196608);
  for (auto &[k, v] : params)
    w.cstr(k).cstr(v);
  w.u8(0);
  w.finish();
}
void password_message(Bytes &out, std::string_view password) {
  Writer(out, 'p').cstr(password).finish();
}
void sasl_initial_response(Bytes &out, std::string_view mechanism, std::string_view data) {
  Writer(out, 'p').cstr(mechanism).i32(int32_t(data.size())).raw(data).finish();
}
void sasl_response(Bytes &out, std::string_view data) {
  Writer(out, 'p').raw(data).finish();
}
void query(Bytes &out, std::string_view sql) {
  Writer(out, 'Q').cstr(sql).finish();
}
void parse(Bytes &out, std::string_view name, std::string_view sql,
           const std::vector<uint32_t> &param_types) {
  Writer w(out, 'P');
  w.cstr(name).cstr(sql).i16(int16_t(param_types.size()));
  for (uint32_t t : param_types)
    w.i32(int32_t(t));
  w.finish();
}
void sync(Bytes &out) {
  Writer(out, 'S').finish();
}
void terminate(Bytes &out) {
  Writer(out, 'X').finish();
}
void cancel_request(Bytes &out, int32_t pid, int32_t key) {
  Writer(out).i32(80877102).i32(pid).i32(key).finish();
}
void describe(Bytes &out, char kind, std::string_view name) {
  Writer(out, 'D').u8(uint8_t(kind)).cstr(name).finish();
}
void close(Bytes &out, char kind, std::string_view name) {
  Writer(out, 'C').u8(uint8_t(kind)).cstr(name).finish();
}

std::optional<std::vector<std::pair<std::string, std::string>>>
parse_startup_params(std::string_view body) {
  std::vector<std::pair<std::string, std::string>> params;
  Reader r(body);
  while (r.ok() && !r.at_end()) {
    std::string_view k = r.cstr();
    if (!r.ok())
      return std::nullopt;
    if (k.empty())
      return r.at_end() ? std::optional(params) : std::nullopt;
    std::string_view v = r.cstr();
    if (!r.ok())
      return std::nullopt;
    params.emplace_back(std::string(k), std::string(v));
  }
  return std::nullopt; // missing terminator
}

std::optional<ParseMsg> parse_parse(std::string_view body) {
  Reader r(body);
  ParseMsg m;
  m.name = r.cstr();
  m.query = r.cstr();
  int16_t n = r.i16();
  if (!r.ok() || n < 0)
    return std::nullopt;
  m.param_types.reserve(size_t(n));
  for (int i = 0; i < n; ++i)
    m.param_types.push_back(uint32_t(r.i32()));
  if (!r.ok() || !r.at_end())
    return std::nullopt;
  return m;
}

std::optional<BindMsg> parse_bind(std::string_view body) {
  BindMsg b;
  if (!parse_bind(body, b))
    return std::nullopt;
  return b;
}

bool parse_bind(std::string_view body, BindMsg &b) {
  Reader r(body);
  b.formats.clear();
  b.params.clear();
  b.portal = r.cstr();
  b.statement = r.cstr();
  b.after_statement = r.pos();
  int16_t nf = r.i16();
  if (!r.ok() || nf < 0)
    return false;
  b.formats.reserve(size_t(nf));
  for (int i = 0; i < nf; ++i)
    b.formats.push_back(r.i16());
  int16_t np = r.i16();
  if (!r.ok() || np < 0 || (nf > 1 && nf != np))
    return false;
  b.params.reserve(size_t(np));
  for (int i = 0; i < np; ++i) {
    int32_t len = r.i32();
    if (len == -1) {
      b.params.emplace_back(std::nullopt);
      continue;
    }
    if (len < 0)
      return false;
    b.params.emplace_back(r.bytes(size_t(len)));
  }
  b.results = r.pos();
  int16_t nr = r.i16();
  if (nr < 0)
    return false;
  for (int i = 0; i < nr; ++i)
    r.i16();
  if (!r.ok() || !r.at_end())
    return false;
  return true;
}

int16_t bind_param_format(const BindMsg &b, size_t i) {
  if (b.formats.empty())
    return 0;
  if (b.formats.size() == 1)
    return b.formats[0];
  return i < b.formats.size() ? b.formats[i] : 0;
}

void rewrite_bind(Bytes &out, const BindMsg &b, std::string_view body, std::string_view stmt) {
  Writer w(out, 'B');
  w.cstr(b.portal).cstr(stmt);
  w.raw(body.substr(size_t(b.after_statement - body.data())));
  w.finish();
}

void bind_subset(Bytes &out, const BindMsg &b, std::string_view body, std::string_view portal,
                 std::string_view stmt, const std::vector<uint32_t> &numbers) {
  Writer w(out, 'B');
  w.cstr(portal).cstr(stmt);
  if (b.formats.size() <= 1) {
    w.i16(int16_t(b.formats.size()));
    for (int16_t f : b.formats)
      w.i16(f);
  } else {
    w.i16(int16_t(numbers.size()));
    for (uint32_t n : numbers)
      w.i16(bind_param_format(b, n - 1));
  }
  w.i16(int16_t(numbers.size()));
  for (uint32_t n : numbers) {
    const auto &v = b.params.at(n - 1);
    if (!v) {
      w.i32(-1);
      continue;
    }
    w.i32(int32_t(v->size()));
    w.raw(*v);
  }
  w.raw(body.substr(size_t(b.results - body.data())));
  w.finish();
}

std::optional<TargetMsg> parse_target(std::string_view body) {
  Reader r(body);
  TargetMsg t;
  t.kind = char(r.u8());
  t.name = r.cstr();
  if (!r.ok() || !r.at_end() || (t.kind != 'S' && t.kind != 'P'))
    return std::nullopt;
  return t;
}

std::optional<std::pair<std::string_view, std::string_view>>
parse_parameter_status(std::string_view body) {
  Reader r(body);
  auto k = r.cstr();
  auto v = r.cstr();
  if (!r.ok())
    return std::nullopt;
  return std::pair{k, v};
}

// ---- Result rows ----

bool parse_row_description(std::string_view body, std::vector<RowColumn> &out) {
  Reader r(body);
  int16_t n = r.i16();
  if (!r.ok() || n < 0)
    return false;
  out.clear();
  out.reserve(size_t(n));
  for (int16_t i = 0; i < n; ++i) {
    RowColumn c;
    c.name = std::string(r.cstr());
    c.table_oid = r.i32();
    c.column = r.i16();
    c.type_oid = uint32_t(r.i32());
    c.type_len = r.i16();
    c.type_mod = r.i32();
    c.format = r.i16();
    if (!r.ok())
      return false;
    out.push_back(std::move(c));
  }
  return r.at_end();
}

void row_description(Bytes &out, const std::vector<RowColumn> &cols) {
  Writer w(out, 'T');
  w.i16(int16_t(cols.size()));
  for (auto &c : cols)
    w.cstr(c.name).i32(c.table_oid).i16(c.column).i32(int32_t(c.type_oid)).i16(c.type_len)
        .i32(c.type_mod).i16(c.format);
  w.finish();
}

bool parse_data_row(std::string_view body, Row &out) {
  Reader r(body);
  int16_t n = r.i16();
  if (!r.ok() || n < 0)
    return false;
  out.clear();
  out.reserve(size_t(n));
  for (int16_t i = 0; i < n; ++i) {
    int32_t len = r.i32();
    if (!r.ok() || len < -1)
      return false;
    if (len == -1) {
      out.emplace_back(std::nullopt);
      continue;
    }
    std::string_view v = r.bytes(size_t(len));
    if (!r.ok())
      return false;
    out.emplace_back(std::string(v));
  }
  return r.at_end();
}

void data_row(Bytes &out, const Row &row) {
  Writer w(out, 'D');
  w.i16(int16_t(row.size()));
  for (auto &f : row) {
    if (!f) {
      w.i32(-1);
      continue;
    }
    w.i32(int32_t(f->size())).raw(*f);
  }
  w.finish();
}

} // namespace sg::protocol

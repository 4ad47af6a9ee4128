// PostgreSQL v3 message types, builders (appending to a byte string) and the few parsers that
// routing and pooling need. No I/O here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sg::protocol {

// Message type bytes, named as the PostgreSQL documentation names them.
enum class Frontend : char {
  Query = 'Q',
  Parse = 'P',
  Bind = 'B',
  Describe = 'D',
  Execute = 'E',
  Close = 'C',
  Sync = 'S',
  Flush = 'H',
  Terminate = 'X',
  CopyData = 'd',
  CopyDone = 'c',
  CopyFail = 'f',
  FunctionCall = 'F',
  PasswordMessage = 'p',
};
enum class Backend : char {
  Authentication = 'R',
  BackendKeyData = 'K',
  BindComplete = '2',
  CloseComplete = '3',
  CommandComplete = 'C',
  CopyData = 'd',
  CopyDone = 'c',
  CopyInResponse = 'G',
  CopyOutResponse = 'H',
  CopyBothResponse = 'W',
  DataRow = 'D',
  EmptyQueryResponse = 'I',
  ErrorResponse = 'E',
  FunctionCallResponse = 'V',
  NegotiateProtocolVersion = 'v',
  NoData = 'n',
  NoticeResponse = 'N',
  NotificationResponse = 'A',
  ParameterDescription = 't',
  ParameterStatus = 'S',
  ParseComplete = '1',
  PortalSuspended = 's',
  ReadyForQuery = 'Z',
  RowDescription = 'T',
};
const char *to_string(Frontend t);
const char *to_string(Backend t);

using Bytes = std::string;

// Appends one framed message to `out`. Usage: Writer w(out, 'Q'); w.cstr(sql); w.finish();
// Inline: every message the proxy writes goes through it, several per query.
class Writer {
public:
  Writer(Bytes &out, char type) : out_(out) {
    const char header[5] = {type, 0, 0, 0, 0};
    out_.append(header, 5);
    len_pos_ = out_.size() - 4;
  }
  explicit Writer(Bytes &out) : out_(out) { // untyped (startup packets)
    len_pos_ = out_.size();
    out_.append(4, '\0');
  }
  Writer &u8(uint8_t v) {
    out_.push_back(char(v));
    return *this;
  }
  Writer &i16(int16_t v) {
    const char b[2] = {char(uint16_t(v) >> 8), char(uint16_t(v))};
    out_.append(b, 2);
    return *this;
  }
  Writer &i32(int32_t v) {
    uint32_t u = uint32_t(v);
    const char b[4] = {char(u >> 24), char(u >> 16), char(u >> 8), char(u)};
    out_.append(b, 4);
    return *this;
  }
  Writer &cstr(std::string_view s) {
    out_.append(s);
    out_.push_back('\0');
    return *this;
  }
  Writer &raw(std::string_view s) {
    out_.append(s);
    return *this;
  }
  // Writes the length field: everything after the type byte.
  void finish() {
    uint32_t len = uint32_t(out_.size() - len_pos_);
    out_[len_pos_] = char(len >> 24);
    out_[len_pos_ + 1] = char(len >> 16);
    out_[len_pos_ + 2] = char(len >> 8);
    out_[len_pos_ + 3] = char(len);
  }

private:
  Bytes &out_;
  size_t len_pos_;
};

// A reader over a message body that never reads past the end; ok() turns false on overrun.
class Reader {
public:
  explicit Reader(std::string_view body) : p_(body.data()), end_(body.data() + body.size()) {}
  uint8_t u8();
  int16_t i16();
  int32_t i32();
  std::string_view cstr();
  std::string_view bytes(size_t n);
  bool ok() const { return ok_; }
  bool at_end() const { return p_ == end_; }
  const char *pos() const { return p_; }

private:
  const char *p_;
  const char *end_;
  bool ok_ = true;
};

// ---- Result rows: decoded only for results the proxy merges from several shards ----
// RowDescription ('T'): Int16 n, then per column: String name, Int32 table oid, Int16 column
// number, Int32 type oid, Int16 type length, Int32 type modifier, Int16 format (0 text, 1 binary).
struct RowColumn {
  std::string name;
  int32_t table_oid = 0;
  int16_t column = 0;
  uint32_t type_oid = 0;
  int16_t type_len = 0;
  int32_t type_mod = -1;
  int16_t format = 0;
};
bool parse_row_description(std::string_view body, std::vector<RowColumn> &out);
void row_description(Bytes &out, const std::vector<RowColumn> &cols);
// DataRow ('D'): Int16 n, then per field: Int32 length (-1: NULL) and that many bytes.
using Field = std::optional<std::string>;
using Row = std::vector<Field>;
bool parse_data_row(std::string_view body, Row &out);
void data_row(Bytes &out, const Row &row);

// ---- Error fields (ErrorResponse / NoticeResponse) ----
struct ErrorInfo {
  std::string severity = "ERROR";
  std::string sqlstate;
  std::string message;
  std::string detail;
  std::string hint;
};
void error_response(Bytes &out, const ErrorInfo &e);
void notice_response(Bytes &out, const ErrorInfo &e); // NoticeResponse: the same fields
ErrorInfo parse_error_response(std::string_view body);

// ---- Backend-side builders (what the proxy says to clients) ----
void auth_ok(Bytes &out);
void auth_md5(Bytes &out, const uint8_t salt[4]);
void auth_sasl(Bytes &out, std::string_view mechanism);
void auth_sasl_continue(Bytes &out, std::string_view data);
void auth_sasl_final(Bytes &out, std::string_view data);
void parameter_status(Bytes &out, std::string_view name, std::string_view value);
void backend_key_data(Bytes &out, int32_t pid, int32_t key);
void ready_for_query(Bytes &out, char status);
void command_complete(Bytes &out, std::string_view tag);
void parse_complete(Bytes &out);
void bind_complete(Bytes &out);
void close_complete(Bytes &out);
void no_data(Bytes &out);

// ---- Frontend-side builders (what the proxy says to backends) ----
void startup_message(Bytes &out, const std::vector<std::pair<std::string, std::string>> &params);
void password_message(Bytes &out, std::string_view password);
void sasl_initial_response(Bytes &out, std::string_view mechanism, std::string_view data);
void sasl_response(Bytes &out, std::string_view data);
void query(Bytes &out, std::string_view sql);
void parse(Bytes &out, std::string_view name, std::string_view sql,
           const std::vector<uint32_t> &param_types);
void sync(Bytes &out);
void terminate(Bytes &out);
void cancel_request(Bytes &out, int32_t pid, int32_t key);

// ---- Parsers ----
// StartupMessage body after the protocol code: name/value pairs.
std::optional<std::vector<std::pair<std::string, std::string>>>
parse_startup_params(std::string_view body);

// Parse: String name, String query, Int16 n, Int32[n] param type oids.
struct ParseMsg {
  std::string_view name;
  std::string_view query;
  std::vector<uint32_t> param_types;
};
std::optional<ParseMsg> parse_parse(std::string_view body);

// Bind: String portal, String statement, Int16 nfmt, Int16[nfmt] formats, Int16 nparams,
// { Int32 len (-1 = NULL), Byte[len] }[nparams], Int16 nres, Int16[nres] result formats.
struct BindMsg {
  std::string_view portal;
  std::string_view statement;
  std::vector<int16_t> formats;
  std::vector<std::optional<std::string_view>> params;
  const char *after_statement = nullptr; // start of the format-codes section in the body
  const char *results = nullptr;         // start of the result-format section
};
std::optional<BindMsg> parse_bind(std::string_view body);
// The same into `out`, reusing its vectors (the per-query path). False: malformed.
bool parse_bind(std::string_view body, BindMsg &out);
int16_t bind_param_format(const BindMsg &b, size_t i);
// Re-frames a Bind with a different statement name, keeping everything else byte for byte.
void rewrite_bind(Bytes &out, const BindMsg &b, std::string_view body, std::string_view stmt);
// A Bind of statement `stmt` to `portal` with only the parameters `numbers` (1-based, in the
// order given) of b, their format codes with them; the result formats as b has them.
void bind_subset(Bytes &out, const BindMsg &b, std::string_view body, std::string_view portal,
                 std::string_view stmt, const std::vector<uint32_t> &numbers);

// Describe / Close: Byte1 'S' or 'P', String name.
struct TargetMsg {
  char kind = 0;
  std::string_view name;
};
std::optional<TargetMsg> parse_target(std::string_view body);
void describe(Bytes &out, char kind, std::string_view name);
void close(Bytes &out, char kind, std::string_view name);

// ParameterStatus: String name, String value.
std::optional<std::pair<std::string_view, std::string_view>>
parse_parameter_status(std::string_view body);

} // namespace sg::protocol

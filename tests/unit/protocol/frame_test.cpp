// Frame decoder and message codec, byte for byte.
#include "protocol/frame.h"
#include "protocol/messages.h"

#include <gtest/gtest.h>

#include <functional>

using namespace sg::protocol;

namespace {
const uint8_t *u8(const std::string &s) {
  return reinterpret_cast<const uint8_t *>(s.data());
}
} // namespace

TEST(Frame, NeedsFiveHeaderBytes) {
  std::string q;
  query(q, "SELECT 1");
  for (size_t n = 0; n < 5; ++n)
    EXPECT_EQ(decode_frame(u8(q), n, 1 << 20).status, DecodeStatus::need_more) << n;
}

TEST(Frame, SplitAcrossReadsConsumesNothingUntilWhole) {
  std::string q;
  query(q, "SELECT 1");
  for (size_t n = 5; n < q.size(); ++n) {
    auto f = decode_frame(u8(q), n, 1 << 20);
    EXPECT_EQ(f.status, DecodeStatus::need_more) << n;
    EXPECT_EQ(f.frame_len, q.size()) << "reports the length it waits for";
  }
  auto f = decode_frame(u8(q), q.size(), 1 << 20);
  ASSERT_EQ(f.status, DecodeStatus::ready);
  EXPECT_EQ(f.type, 'Q');
  EXPECT_EQ(f.frame_len, q.size());
  EXPECT_EQ(f.body_view(), std::string_view("SELECT 1\0", 9));
}

TEST(Frame, TwoFramesInOneRead) {
  std::string b;
  query(b, "SELECT 1");
  size_t first = b.size();
  sync(b);
  auto f1 = decode_frame(u8(b), b.size(), 1 << 20);
  ASSERT_EQ(f1.status, DecodeStatus::ready);
  EXPECT_EQ(f1.frame_len, first);
  auto f2 = decode_frame(u8(b) + f1.frame_len, b.size() - f1.frame_len, 1 << 20);
  ASSERT_EQ(f2.status, DecodeStatus::ready);
  EXPECT_EQ(f2.type, 'S');
  EXPECT_EQ(f2.body_len, 0u);
}

TEST(Frame, OversizeLengthIsAnError) {
  std::string b = {'Q', 0x7f, 0, 0, 0};
  auto f = decode_frame(u8(b), b.size(), 1 << 20);
  EXPECT_EQ(f.status, DecodeStatus::error);
  EXPECT_NE(f.error, nullptr);
}

TEST(Frame, LengthBelowFourIsAnError) {
  for (char len : {0, 1, 2, 3}) {
    std::string b = {'Q', 0, 0, 0, len};
    EXPECT_EQ(decode_frame(u8(b), b.size(), 1 << 20).status, DecodeStatus::error);
  }
}

struct StartupCase {
  std::string name;
  std::string bytes;
  DecodeStatus status;
  uint32_t code;
};

class StartupDecode : public ::testing::TestWithParam<StartupCase> {};

TEST_P(StartupDecode, Decodes) {
  const auto &c = GetParam();
  auto s = decode_startup(u8(c.bytes), c.bytes.size(), 10000);
  EXPECT_EQ(s.status, c.status);
  if (c.status == DecodeStatus::ready) {
    EXPECT_EQ(s.code, c.code);
  }
}

std::string startup_bytes() {
  std::string b;
  startup_message(b, {{"user", "app"}, {"database", "app"}});
  return b;
}
std::string cancel_bytes() {
  std::string b;
  cancel_request(b, 7, 9);
  return b;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, StartupDecode,
    ::testing::Values(
        StartupCase{"v3", startup_bytes(), DecodeStatus::ready, 196608},
        StartupCase{"ssl", std::string("\0\0\0\x08\x04\xd2\x16\x2f", 8), DecodeStatus::ready,
                    80877103},
        StartupCase{"gssenc", std::string("\0\0\0\x08\x04\xd2\x16\x30", 8), DecodeStatus::ready,
                    80877104},
        StartupCase{"cancel", cancel_bytes(), DecodeStatus::ready, 80877102},
        StartupCase{"truncated", startup_bytes().substr(0, 12), DecodeStatus::need_more, 0},
        StartupCase{"garbage_http", "GET / HTTP/1.1\r\n", DecodeStatus::error, 0},
        StartupCase{"too_short", std::string("\0\0\0\x04", 4), DecodeStatus::error, 0}),
    [](const auto &info) { return info.param.name; });

TEST(Messages, StartupParamsRoundTrip) {
  std::string b;
  startup_message(b, {{"user", "app"}, {"database", "db"}, {"application_name", "x"}});
  auto s = decode_startup(u8(b), b.size(), 10000);
  ASSERT_EQ(s.status, DecodeStatus::ready);
  auto p = parse_startup_params(s.body_view());
  ASSERT_TRUE(p);
  ASSERT_EQ(p->size(), 3u);
  EXPECT_EQ((*p)[1].first, "database");
  EXPECT_EQ((*p)[1].second, "db");
  // Missing terminator: rejected, not read past the end.
  EXPECT_FALSE(parse_startup_params(std::string_view("user\0app\0", 9)));
}

TEST(Messages, ParseRoundTrip) {
  std::string b;
  parse(b, "s1", "SELECT $1", {20, 25});
  auto f = decode_frame(u8(b), b.size(), 1 << 20);
  ASSERT_EQ(f.type, 'P');
  auto m = parse_parse(f.body_view());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->name, "s1");
  EXPECT_EQ(m->query, "SELECT $1");
  EXPECT_EQ(m->param_types, (std::vector<uint32_t>{20, 25}));
  EXPECT_FALSE(parse_parse(f.body_view().substr(0, f.body_len - 1))) << "truncated";
}

// Bind with one text parameter, one binary int8 and a NULL, then rewritten to another name.
TEST(Messages, BindParseAndRewrite) {
  std::string b;
  Writer w(b, 'B');
  w.cstr("").cstr("stmt").i16(3).i16(0).i16(1).i16(0).i16(3);
  w.i32(2).raw("42");
  w.i32(8).raw(std::string("\0\0\0\0\0\0\0\x2a", 8));
  w.i32(-1);
  w.i16(1).i16(1);
  w.finish();
  auto f = decode_frame(u8(b), b.size(), 1 << 20);
  auto m = parse_bind(f.body_view());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->statement, "stmt");
  ASSERT_EQ(m->params.size(), 3u);
  EXPECT_EQ(*m->params[0], "42");
  EXPECT_EQ(bind_param_format(*m, 1), 1);
  EXPECT_FALSE(m->params[2].has_value());
  std::string out;
  rewrite_bind(out, *m, f.body_view(), "sg_7");
  auto f2 = decode_frame(u8(out), out.size(), 1 << 20);
  ASSERT_EQ(f2.status, DecodeStatus::ready);
  auto m2 = parse_bind(f2.body_view());
  ASSERT_TRUE(m2);
  EXPECT_EQ(m2->statement, "sg_7");
  EXPECT_EQ(*m2->params[1], std::string("\0\0\0\0\0\0\0\x2a", 8));
  EXPECT_EQ(f2.body_len, f.body_len + 4 - 4) << "same size: 'stmt' and 'sg_7' are both 4 bytes";
}

TEST(Messages, BindRejectsInconsistentCounts) {
  std::string b;
  Writer w(b, 'B');
  w.cstr("").cstr("").i16(2).i16(0).i16(0).i16(1).i32(1).raw("x").i16(0);
  w.finish();
  auto f = decode_frame(u8(b), b.size(), 1 << 20);
  EXPECT_FALSE(parse_bind(f.body_view())) << "2 format codes for 1 parameter";
}

TEST(Messages, DescribeCloseTargets) {
  std::string b;
  describe(b, 'S', "s1");
  close(b, 'P', "");
  auto f1 = decode_frame(u8(b), b.size(), 1 << 20);
  auto t1 = parse_target(f1.body_view());
  ASSERT_TRUE(t1);
  EXPECT_EQ(t1->kind, 'S');
  EXPECT_EQ(t1->name, "s1");
  auto f2 = decode_frame(u8(b) + f1.frame_len, b.size() - f1.frame_len, 1 << 20);
  EXPECT_EQ(f2.type, 'C');
  EXPECT_EQ(parse_target(f2.body_view())->kind, 'P');
  EXPECT_FALSE(parse_target(std::string_view("X\0", 2))) << "kind must be S or P";
}

TEST(Messages, ErrorResponseRoundTrip) {
  std::string b;
  ErrorInfo e;
  e.sqlstate = "0A000";
  e.message = "no key";
  e.hint = "add one";
  error_response(b, e);
  auto f = decode_frame(u8(b), b.size(), 1 << 20);
  ASSERT_EQ(f.type, 'E');
  auto d = parse_error_response(f.body_view());
  EXPECT_EQ(d.sqlstate, "0A000");
  EXPECT_EQ(d.message, "no key");
  EXPECT_EQ(d.hint, "add one");
  EXPECT_EQ(d.severity, "ERROR");
}

// Every builder the proxy uses yields one well-formed frame of the documented type.
TEST(Messages, EveryBuilderFramesCorrectly) {
  struct C {
    char type;
    std::function<void(std::string &)> build;
  };
  const uint8_t salt[4] = {1, 2, 3, 4};
  std::vector<C> cases = {
      {'R', [](auto &o) { auth_ok(o); }},
      {'R', [&](auto &o) { auth_md5(o, salt); }},
      {'R', [](auto &o) { auth_sasl(o, "SCRAM-SHA-256"); }},
      {'R', [](auto &o) { auth_sasl_continue(o, "r=x"); }},
      {'R', [](auto &o) { auth_sasl_final(o, "v=x"); }},
      {'S', [](auto &o) { parameter_status(o, "a", "b"); }},
      {'K', [](auto &o) { backend_key_data(o, 1, 2); }},
      {'Z', [](auto &o) { ready_for_query(o, 'I'); }},
      {'C', [](auto &o) { command_complete(o, "SELECT 1"); }},
      {'1', [](auto &o) { parse_complete(o); }},
      {'2', [](auto &o) { bind_complete(o); }},
      {'3', [](auto &o) { close_complete(o); }},
      {'n', [](auto &o) { no_data(o); }},
      {'p', [](auto &o) { password_message(o, "pw"); }},
      {'p', [](auto &o) { sasl_initial_response(o, "SCRAM-SHA-256", "n,,n=,r=abc"); }},
      {'p', [](auto &o) { sasl_response(o, "c=biws"); }},
      {'Q', [](auto &o) { query(o, "SELECT 1"); }},
      {'S', [](auto &o) { sync(o); }},
      {'X', [](auto &o) { terminate(o); }},
      {'D', [](auto &o) { describe(o, 'P', ""); }},
  };
  for (auto &c : cases) {
    std::string b;
    c.build(b);
    auto f = decode_frame(u8(b), b.size(), 1 << 20);
    ASSERT_EQ(f.status, DecodeStatus::ready);
    EXPECT_EQ(f.type, c.type);
    EXPECT_EQ(f.frame_len, b.size());
  }
}

TEST(Messages, ReaderNeverOverruns) {
  Reader r(std::string_view("\x01\x02", 2));
  EXPECT_EQ(r.i32(), 0);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.cstr(), "");
  EXPECT_FALSE(r.ok());
}

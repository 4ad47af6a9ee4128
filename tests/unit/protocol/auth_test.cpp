// SCRAM-SHA-256 and md5: the proxy's server side against its client side, plus golden values.
#include "protocol/auth.h"

#include <gtest/gtest.h>

#include <vector>

using namespace sg::protocol;

TEST(Md5, MatchesPostgresFormula) {
  // "md5" + md5(md5("app-secret" + "app") + salt), computed independently with Python hashlib.
  std::string salt("\x01\x02\x03\x04", 4);
  EXPECT_EQ(md5_password("app", "app-secret", salt), "md5f418b8ba8c8d0094666a09dd3ed4a600");
}

TEST(Base64, RoundTrip) {
  for (std::string s :
       std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)}) {
    auto d = base64_decode(base64_encode(s));
    ASSERT_TRUE(d) << s;
    EXPECT_EQ(*d, s);
  }
  EXPECT_EQ(base64_encode("n,,"), "biws");
  EXPECT_FALSE(base64_decode("abc"));
}

TEST(Scram, ClientAndServerAgree) {
  auto secret = make_scram_secret("app-secret", random_bytes(16), 4096);
  ScramServer server(secret);
  ScramClient client("app-secret");
  auto server_first = server.handle_client_first(client.client_first());
  ASSERT_TRUE(server_first);
  auto client_final = client.handle_server_first(*server_first);
  ASSERT_TRUE(client_final);
  auto server_final = server.handle_client_final(*client_final);
  ASSERT_TRUE(server_final);
  EXPECT_TRUE(client.verify_server_final(*server_final));
}

TEST(Scram, WrongPasswordIsRejected) {
  auto secret = make_scram_secret("app-secret", random_bytes(16), 4096);
  ScramServer server(secret);
  ScramClient client("wrong");
  auto server_first = server.handle_client_first(client.client_first());
  auto client_final = client.handle_server_first(*server_first);
  EXPECT_FALSE(server.handle_client_final(*client_final));
}

TEST(Scram, TamperedNonceIsRejected) {
  auto secret = make_scram_secret("pw", random_bytes(16), 4096);
  ScramServer server(secret);
  ScramClient client("pw");
  auto server_first = server.handle_client_first(client.client_first());
  auto client_final = *client.handle_server_first(*server_first);
  auto pos = client_final.find("r=");
  client_final[pos + 2] = client_final[pos + 2] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(server.handle_client_final(client_final));
}

TEST(Scram, MalformedMessagesAreRejected) {
  auto secret = make_scram_secret("pw", random_bytes(16), 4096);
  ScramServer server(secret);
  EXPECT_FALSE(server.handle_client_first(""));
  EXPECT_FALSE(server.handle_client_first("x,,n=,r=abc"));
  EXPECT_FALSE(server.handle_client_first("n,,n="));
  ScramServer s2(secret);
  ASSERT_TRUE(s2.handle_client_first("n,,n=,r=abc"));
  EXPECT_FALSE(s2.handle_client_final("c=biws,r=abc"));
  EXPECT_FALSE(s2.handle_client_final("c=biws,r=abc,p=!!!!"));
}

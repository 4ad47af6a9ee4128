// The admin API as a function of its request: auth, routes, bodies and error shapes.
#include "admin/api.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

using namespace sg;
using nlohmann::json;

namespace {

admin::Sources sources() {
  admin::Sources s;
  s.token = "0123456789abcdef-token";
  s.topology = [] {
    topology::Topology t;
    t.epoch = 3;
    t.shards.push_back({"s0", "postgresql://app:pw@127.0.0.1:5432/app",
                        {"postgresql://app:pw@127.0.0.1:5433/app"}, 1, "active"});
    t.shards.push_back({"s1", "postgresql://app:pw@127.0.0.1:5434/app", {}, 1, "active"});
    t.tables.push_back({"accounts", "id", config::KeyType::bigint});
    return t;
  };
  s.openapi = R"({"openapi":"3.0.3"})";
  return s;
}

admin::Response call(std::string method, std::string target, std::string body = "",
                     std::string auth = "Bearer 0123456789abcdef-token") {
  return admin::handle({std::move(method), std::move(target), std::move(auth), std::move(body)},
                       sources());
}

std::string code_of(const admin::Response &r) {
  return json::parse(r.body).at("error").at("code").get<std::string>();
}

} // namespace

TEST(AdminApi, TokenIsRequiredAndCompared) {
  auto none = call("GET", "/api/v1/topology", "", "");
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(code_of(none), "unauthorized");
  EXPECT_EQ(none.headers.at(0).first, "WWW-Authenticate");
  EXPECT_EQ(call("GET", "/api/v1/topology", "", "Bearer wrong").status, 401);
  EXPECT_EQ(call("GET", "/api/v1/topology", "", "Basic 0123456789abcdef-token").status, 401);
  EXPECT_EQ(call("GET", "/api/v1/topology", "", "Bearer 0123456789abcdef-token ").status, 401);
  EXPECT_EQ(call("GET", "/api/v1/topology").status, 200);
  EXPECT_TRUE(admin::token_matches("abc", "abc"));
  EXPECT_FALSE(admin::token_matches("abc", "abd"));
  EXPECT_FALSE(admin::token_matches("", "abc"));
}

TEST(AdminApi, TopologyMasksPasswords) {
  auto r = call("GET", "/api/v1/topology?x=1");
  ASSERT_EQ(r.status, 200);
  json j = json::parse(r.body);
  EXPECT_EQ(j["epoch"], 3);
  EXPECT_EQ(j["shards"][0]["primary"], "postgresql://app:***@127.0.0.1:5432/app");
  EXPECT_EQ(r.body.find(":pw@"), std::string::npos);
}

TEST(AdminApi, UnknownRoutesAndMethods) {
  EXPECT_EQ(call("GET", "/api/v1/nothing").status, 404);
  EXPECT_EQ(call("GET", "/other").status, 404);
  EXPECT_EQ(call("POST", "/api/v1/topology").status, 405);
  EXPECT_EQ(call("GET", "/api/v1/shards").status, 405);
  EXPECT_EQ(code_of(call("DELETE", "/api/v1/status")), "method_not_allowed");
  EXPECT_EQ(call("GET", "/api/v1/openapi.json").body, R"({"openapi":"3.0.3"})");
}

TEST(AdminApi, BadBodiesGetTheRight4xx) {
  EXPECT_EQ(call("POST", "/api/v1/shards/s0/replicas", "{").status, 400);
  EXPECT_EQ(call("POST", "/api/v1/shards/s0/replicas", "[1]").status, 400);
  EXPECT_EQ(call("POST", "/api/v1/shards/s0/replicas", R"({"url": 5})").status, 400);
  EXPECT_EQ(call("POST", "/api/v1/shards/s0/replicas", R"({"url": "x", "extra": 1})").status,
            400);
  EXPECT_EQ(call("POST", "/api/v1/shards/s0/replicas", R"({})").status, 400);
  EXPECT_EQ(call("POST", "/api/v1/shards/s9/replicas", R"({"url": "postgresql://h:1/d"})").status,
            404);
  EXPECT_EQ(
      call("POST", "/api/v1/shards/s0/replicas", R"({"url": "postgresql://a@127.0.0.1:5433/x"})")
          .status,
      409);
  EXPECT_EQ(call("DELETE", "/api/v1/shards/s0/replicas/127.0.0.1:9").status, 404);
  EXPECT_EQ(call("PATCH", "/api/v1/shards/s0", R"({"weight": 2})").status, 409);
  EXPECT_EQ(call("PATCH", "/api/v1/shards/s9", R"({"primary": "postgresql://h/d"})").status, 404);
  EXPECT_EQ(call("POST", "/api/v1/shards", R"({"name": "s0", "primary": "postgresql://h/d"})")
                .status,
            409);
  EXPECT_EQ(call("DELETE", "/api/v1/shards/s9").status, 404);
}

TEST(AdminApi, ShardAddRemoveCheckTheBodyThenNeedTheMetadataDatabase) {
  auto r = call("POST", "/api/v1/shards", R"({"name": "s2", "primary": "postgresql://h/d"})");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(code_of(r), "unavailable");
  EXPECT_EQ(call("POST", "/api/v1/shards",
                 R"({"name": "s2", "primary": "postgresql://h/d", "cutover": "later"})")
                .status,
            400);
  EXPECT_EQ(call("POST", "/api/v1/shards",
                 R"({"name": "s2", "primary": "postgresql://h/d", "cleanup_after_s": -1})")
                .status,
            400);
  EXPECT_EQ(call("POST", "/api/v1/shards", R"({"name": "s2", "primary": "postgresql://h/d",
                                               "weight": 0})")
                .status,
            400);
  EXPECT_EQ(call("DELETE", "/api/v1/shards/s1").status, 503);
  EXPECT_EQ(call("DELETE", "/api/v1/shards/s1", R"({"cutover": 1})").status, 400);
}

TEST(AdminApi, ValidChangesNeedTheMetadataDatabase) {
  auto r = call("POST", "/api/v1/shards/s0/replicas", R"({"url": "postgresql://h:7/d"})");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(code_of(r), "unavailable");
  EXPECT_EQ(call("DELETE", "/api/v1/shards/s0/replicas/127.0.0.1:5433").status, 503);
  EXPECT_EQ(call("PATCH", "/api/v1/shards/s1", R"({"primary": "postgresql://h:9/d"})").status,
            503);
}

TEST(AdminApi, MigrationsRoutes) {
  // The journal lives in the metadata database: without one, 503 (routes and methods first).
  EXPECT_EQ(call("GET", "/api/v1/migrations").status, 503);
  EXPECT_EQ(call("GET", "/api/v1/migrations/m1").status, 503);
  EXPECT_EQ(call("POST", "/api/v1/migrations/m1/abort").status, 503);
  EXPECT_EQ(call("POST", "/api/v1/migrations/m1/explode").status, 404);
  EXPECT_EQ(call("GET", "/api/v1/migrations/m1/abort").status, 405);
  EXPECT_EQ(call("POST", "/api/v1/migrations").status, 405);
}

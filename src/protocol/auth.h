// Password authentication math: SCRAM-SHA-256 (RFC 5802/7677, as PostgreSQL uses it) for both
// the proxy-as-server and the proxy-as-client side, and PostgreSQL's md5 scheme. No I/O.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sg::protocol {

std::string base64_encode(std::string_view in);
std::optional<std::string> base64_decode(std::string_view in);
std::string random_bytes(size_t n);

// md5 password as PostgreSQL computes it: "md5" + md5hex(md5hex(password + user) + salt).
std::string md5_password(std::string_view user, std::string_view password, std::string_view salt4);

// Derived SCRAM secrets for one password (what pg_authid stores for a SCRAM role).
struct ScramSecret {
  std::string salt;
  int iterations = 4096;
  std::array<uint8_t, 32> stored_key{};
  std::array<uint8_t, 32> server_key{};
};
ScramSecret make_scram_secret(std::string_view password, std::string salt, int iterations);

// Server side of one SCRAM exchange (the proxy authenticating a client).
class ScramServer {
public:
  explicit ScramServer(const ScramSecret &secret) : secret_(secret) {}
  // client-first-message -> server-first-message, or nullopt if malformed.
  std::optional<std::string> handle_client_first(std::string_view msg);
  // client-final-message -> server-final-message ("v=..."), or nullopt if the proof is wrong.
  std::optional<std::string> handle_client_final(std::string_view msg);

private:
  const ScramSecret &secret_;
  std::string client_first_bare_;
  std::string server_first_;
  std::string nonce_;
  std::string gs2_header_;
};

// Client side of one SCRAM exchange (the proxy authenticating to a backend).
class ScramClient {
public:
  explicit ScramClient(std::string password);
  std::string client_first();
  // server-first -> client-final, or nullopt if malformed.
  std::optional<std::string> handle_server_first(std::string_view msg);
  bool verify_server_final(std::string_view msg) const;

private:
  std::string password_;
  std::string nonce_;
  std::string client_first_bare_;
  std::array<uint8_t, 32> server_key_{};
  std::string auth_message_;
};

} // namespace sg::protocol

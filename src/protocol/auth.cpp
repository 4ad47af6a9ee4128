// SCRAM-SHA-256 and md5 for PostgreSQL authentication, on OpenSSL primitives.
#include "protocol/auth.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>

namespace sg::protocol {

namespace {

using Key = std::array<uint8_t, 32>;

Key hmac(const uint8_t *key, size_t klen, std::string_view data) {
  Key out{};
  unsigned int len = 32;
  HMAC(EVP_sha256(), key, int(klen), reinterpret_cast<const unsigned char *>(data.data()),
       data.size(), out.data(), &len);
  return out;
}

Key sha256(const uint8_t *data, size_t len) {
  Key out{};
  SHA256(data, len, out.data());
  return out;
}

std::string_view as_view(const Key &k) {
  return {reinterpret_cast<const char *>(k.data()), k.size()};
}

// PBKDF2 is deliberately slow (iterations), so backend logins cache it per (password, salt, i).
Key salted_password(std::string_view password, std::string_view salt, int iterations) {
  static std::mutex mu;
  static std::map<std::string, Key> cache;
  std::string ck =
      std::string(password) + '\0' + std::string(salt) + '\0' + std::to_string(iterations);
  {
    std::lock_guard lock(mu);
    if (auto it = cache.find(ck); it != cache.end())
      return it->second;
  }
  Key out{};
  PKCS5_PBKDF2_HMAC(password.data(), int(password.size()),
                    reinterpret_cast<const unsigned char *>(salt.data()), int(salt.size()),
                    iterations, EVP_sha256(), 32, out.data());
  std::lock_guard lock(mu);
  if (cache.size() > 1024)
    cache.clear();
  cache.emplace(std::move(ck), out);
  return out;
}

// Finds "k=value" among comma-separated SCRAM attributes.
std::optional<std::string_view> attr(std::string_view msg, char k) {
  size_t pos = 0;
  while (pos <= msg.size()) {
    size_t end = msg.find(',', pos);
    if (end == std::string_view::npos)
      end = msg.size();
    std::string_view part = msg.substr(pos, end - pos);
    if (part.size() >= 2 && part[0] == k && part[1] == '=')
      return part.substr(2);
    pos = end + 1;
  }
  return std::nullopt;
}

std::string make_nonce() {
  return base64_encode(random_bytes(18));
}

} // namespace

std::string base64_encode(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(out.data()),
                          reinterpret_cast<const unsigned char *>(in.data()), int(in.size()));
  out.resize(size_t(n));
  return out;
}

std::optional<std::string> base64_decode(std::string_view in) {
  if (in.size() % 4 != 0)
    return std::nullopt;
  std::string out(3 * in.size() / 4, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char *>(out.data()),
                          reinterpret_cast<const unsigned char *>(in.data()), int(in.size()));
  if (n < 0)
    return std::nullopt;
  size_t pad = 0;
  if (!in.empty() && in.back() == '=')
    pad = (in.size() >= 2 && in[in.size() - 2] == '=') ? 2 : 1;
  out.resize(size_t(n) - pad);
  return out;
}

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char *>(out.data()), int(n)) != 1)
    throw std::runtime_error("RAND_bytes failed");
  return out;
}

std::string md5_password(std::string_view user, std::string_view password, std::string_view salt4) {
  auto md5hex = [](std::string_view data) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), d, &len, EVP_md5(), nullptr);
    static const char *hex = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < len; ++i) {
      s.push_back(hex[d[i] >> 4]);
      s.push_back(hex[d[i] & 15]);
    }
    return s;
  };
  std::string inner = md5hex(std::string(password) + std::string(user));
  return "md5" + md5hex(inner + std::string(salt4));
}

ScramSecret make_scram_secret(std::string_view password, std::string salt, int iterations) {
  ScramSecret s;
  s.salt = std::move(salt);
  s.iterations = iterations;
  Key salted = salted_password(password, s.salt, iterations);
  Key client_key = hmac(salted.data(), salted.size(), "Client Key");
  s.stored_key = sha256(client_key.data(), client_key.size());
  s.server_key = hmac(salted.data(), salted.size(), "Server Key");
  return s;
}

// client-first-message = gs2-header client-first-bare; gs2-header = "n,," | "y,," (no binding
// without TLS); client-first-bare = "n=" user ",r=" c-nonce. PostgreSQL ignores the SCRAM user.
std::optional<std::string> ScramServer::handle_client_first(std::string_view msg) {
  if (msg.size() < 3 || (msg[0] != 'n' && msg[0] != 'y') || msg[1] != ',')
    return std::nullopt;
  size_t second_comma = msg.find(',', 2);
  if (second_comma == std::string_view::npos)
    return std::nullopt;
  gs2_header_ = std::string(msg.substr(0, second_comma + 1));
  client_first_bare_ = std::string(msg.substr(second_comma + 1));
  auto cnonce = attr(client_first_bare_, 'r');
  if (!cnonce || cnonce->empty())
    return std::nullopt;
  nonce_ = std::string(*cnonce) + make_nonce();
  server_first_ = "r=" + nonce_ + ",s=" + base64_encode(secret_.salt) +
                  ",i=" + std::to_string(secret_.iterations);
  return server_first_;
}

// client-final-message = "c=" base64(gs2-header) ",r=" nonce ",p=" base64(proof)
std::optional<std::string> ScramServer::handle_client_final(std::string_view msg) {
  size_t ppos = msg.rfind(",p=");
  if (ppos == std::string_view::npos)
    return std::nullopt;
  std::string_view without_proof = msg.substr(0, ppos);
  auto channel = attr(without_proof, 'c');
  auto nonce = attr(without_proof, 'r');
  auto proof64 = attr(msg.substr(ppos + 1), 'p');
  if (!channel || !nonce || !proof64 || *nonce != nonce_ || *channel != base64_encode(gs2_header_))
    return std::nullopt;
  auto proof = base64_decode(*proof64);
  if (!proof || proof->size() != 32)
    return std::nullopt;
  std::string auth_message =
      client_first_bare_ + "," + server_first_ + "," + std::string(without_proof);
  Key client_sig = hmac(secret_.stored_key.data(), 32, auth_message);
  Key client_key{};
  for (size_t i = 0; i < 32; ++i)
    client_key[i] = uint8_t(uint8_t((*proof)[i]) ^ client_sig[i]);
  Key check = sha256(client_key.data(), 32);
  if (CRYPTO_memcmp(check.data(), secret_.stored_key.data(), 32) != 0)
    return std::nullopt;
  Key server_sig = hmac(secret_.server_key.data(), 32, auth_message);
  return "v=" + base64_encode(as_view(server_sig));
}

ScramClient::ScramClient(std::string password) : password_(std::move(password)) {}

std::string ScramClient::client_first() {
  nonce_ = make_nonce();
  client_first_bare_ = "n=,r=" + nonce_;
  return "n,," + client_first_bare_;
}

std::optional<std::string> ScramClient::handle_server_first(std::string_view msg) {
  auto nonce = attr(msg, 'r');
  auto salt64 = attr(msg, 's');
  auto iter = attr(msg, 'i');
  if (!nonce || !salt64 || !iter || nonce->substr(0, nonce_.size()) != nonce_)
    return std::nullopt;
  auto salt = base64_decode(*salt64);
  int iterations = std::atoi(std::string(*iter).c_str());
  if (!salt || iterations <= 0)
    return std::nullopt;
  Key salted = salted_password(password_, *salt, iterations);
  Key client_key = hmac(salted.data(), 32, "Client Key");
  Key stored_key = sha256(client_key.data(), 32);
  server_key_ = hmac(salted.data(), 32, "Server Key");
  std::string without_proof = "c=biws,r=" + std::string(*nonce);
  auth_message_ = client_first_bare_ + "," + std::string(msg) + "," + without_proof;
  Key client_sig = hmac(stored_key.data(), 32, auth_message_);
  std::string proof(32, '\0');
  for (size_t i = 0; i < 32; ++i)
    proof[i] = char(client_key[i] ^ client_sig[i]);
  return without_proof + ",p=" + base64_encode(proof);
}

bool ScramClient::verify_server_final(std::string_view msg) const {
  auto v = attr(msg, 'v');
  if (!v)
    return false;
  Key server_sig = hmac(server_key_.data(), 32, auth_message_);
  return *v == base64_encode(as_view(server_sig));
}

} // namespace sg::protocol

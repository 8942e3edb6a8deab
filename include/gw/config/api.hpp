#pragma once
// Configuration of the API-gateway guard (issue 6): per-route limit_req and
// auth, per-listener limit_conn, and the initial key-auth consumers.
// Parsed and checked by src/config/api_config.cpp; used by gw::api.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace gw::config {

/// "limit_req": {"key": "ip" | "header:NAME" | "consumer", "rate": R, "burst": B}
struct LimitReqConf {
  enum class Key : uint8_t { ip, header, consumer };
  bool on = false;
  Key key = Key::ip;
  std::string header;  ///< Key::header: the field name
  double rate = 0;     ///< requests per second (> 0, may be fractional)
  uint32_t burst = 0;  ///< requests beyond the rate taken at once (nginx burst with nodelay)
};

/// "limit_conn": {"key": "ip", "max": N} on any listener.
struct LimitConnConf {
  bool on = false;
  uint32_t max = 0;  ///< concurrent connections per client address, over all workers
};

enum class AuthType : uint8_t { none, key, basic, jwt };
/// Where a credential is read from.
enum class CredFrom : uint8_t { header, query, cookie, bearer };
enum class JwtAlg : uint8_t { hs256, rs256 };

/// "auth": {"type": "key-auth" | "basic-auth" | "jwt", ...}
struct AuthConf {
  AuthType type = AuthType::none;
  // key-auth: "header" (default "apikey") or "query"; jwt: "header", "cookie"
  // or "query" (default: Authorization: Bearer).
  CredFrom from = CredFrom::header;
  std::string from_name;
  // basic-auth: user → crypt(3) hash ("$2b$...", "$6$...", "$5$...", "$y$...").
  std::vector<std::pair<std::string, std::string>> users;
  // jwt
  JwtAlg alg = JwtAlg::hs256;
  std::string secret;                  ///< HS256 key
  std::string public_key_pem;          ///< RS256 key (PEM text; "@/path" was read at load)
  uint32_t leeway_s = 60;              ///< exp and nbf tolerate this much clock skew
  std::string issuer;                  ///< non-empty: "iss" must equal it
  std::string audience;                ///< non-empty: "aud" must equal it or list it
  std::string consumer_claim = "sub";  ///< the claim that names the consumer
  /// Non-empty: only these consumers pass; others get 403.
  std::vector<std::string> allow;
};

/// "consumers": [{"name": N, "key": K}] at the top level (initial key-auth consumers).
struct ConsumerConf {
  std::string name;
  std::string key;
};

/// Longest consumer name passed upstream (X-Consumer-Username): basic-auth
/// user names and JWT consumer claims included.
inline constexpr size_t kMaxConsumerName = 63;
/// Longest key-auth key.
inline constexpr size_t kMaxApiKey = 512;

/// A key-auth key as the config, gwctl and the admin API accept it: 1..kMaxApiKey
/// visible ASCII characters (no space, no control character).
inline bool valid_api_key(std::string_view key) noexcept {
  if (key.empty() || key.size() > kMaxApiKey) return false;
  for (unsigned char ch : key)
    if (ch <= 0x20 || ch >= 0x7f) return false;
  return true;
}

}  // namespace gw::config

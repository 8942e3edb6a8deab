#include "config/api_config.hpp"

#include <crypt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "gw/api/jwt.hpp"

namespace gw::config {

using simdjson::dom::element;

bool consumer_name_ok(std::string_view name) noexcept {
  if (name.empty() || name.size() > kMaxConsumerName) return false;
  for (unsigned char ch : name)
    if (ch <= 0x20 || ch >= 0x7f) return false;
  return true;
}

namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

// A header field name (a token, RFC 9110 5.6.2), a cookie or query argument name.
bool token_ok(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (unsigned char ch : s) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                    std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(ch)) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

// "@/path": the file's contents; anything else as it is.
bool text_or_file(Ctx& c, const std::string& path, std::string& value) {
  if (value.empty() || value[0] != '@') return true;
  if (value.find('\0') != std::string::npos) {  // the file before the NUL would be read
    c.error(path, fmt::format("expected a file path without a NUL byte after \"@\", got \"{}\"", value));
    return false;
  }
  std::ifstream f(value.substr(1), std::ios::binary);
  if (!f) {
    c.error(path, fmt::format("cannot read {}", value.substr(1)));
    return false;
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  value = ss.str();
  return true;
}

bool is_rsa_public_key(const std::string& pem, std::string& why) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) {
    why = "out of memory";
    return false;
  }
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (!key) {
    why = "not a PEM public key (\"-----BEGIN PUBLIC KEY-----\")";
    return false;
  }
  const bool rsa = EVP_PKEY_base_id(key) == EVP_PKEY_RSA;
  const int bits = EVP_PKEY_bits(key);
  EVP_PKEY_free(key);
  if (!rsa) why = "not an RSA key";
  else if (bits < 2048) why = fmt::format("an RSA key of {} bits; at least 2048 are required", bits);
  else if (bits > api::kMaxRsaBits)
    why = fmt::format("an RSA key of {} bits; at most {} are supported", bits, api::kMaxRsaBits);
  return rsa && bits >= 2048 && bits <= api::kMaxRsaBits;
}

// A crypt(3) hash of a strong method: bcrypt, SHA-crypt or yescrypt.
bool crypt_hash_ok(const std::string& h, std::string& why) {
  static const char* const kPrefixes[] = {"$2a$", "$2b$", "$2y$", "$5$", "$6$", "$y$"};
  bool prefix = false;
  for (const char* p : kPrefixes) prefix |= h.rfind(p, 0) == 0;
  if (!prefix) {
    why = "expected a bcrypt ($2b$), SHA-crypt ($5$, $6$) or yescrypt ($y$) hash";
    return false;
  }
  const int st = crypt_checksalt(h.c_str());
  if (st != CRYPT_SALT_OK && st != CRYPT_SALT_TOO_CHEAP) {
    why = "this crypt hash is invalid or its method is disabled in libcrypt";
    return false;
  }
  // The whole hash, not only its setting: crypt() of any phrase has the same length.
  struct crypt_data data {};
  const char* out = crypt_r("gw-length-check", h.c_str(), &data);
  if (!out || out[0] == '*' || std::string_view(out).size() != h.size()) {
    why = "this crypt hash is malformed (its length does not match its method)";
    return false;
  }
  return true;
}

void parse_allow(Ctx& c, element v, const std::string& kp, std::vector<std::string>& allow) {
  for_each_element(c, v, kp, [&](element item, const std::string& ip) {
    std::string n;
    if (!get_string(c, item, ip, n)) return;
    if (!consumer_name_ok(n))
      c.error(ip, fmt::format("expected a consumer name (1..{} visible characters), got \"{}\"", kMaxConsumerName, n));
    else allow.push_back(n);
  });
  if (allow.empty() && !c.has_error_under(kp)) c.error(kp, "expected at least one consumer name");
}

}  // namespace

void parse_limit_req(Ctx& c, element e, const std::string& path, LimitReqConf& out) {
  out.on = true;
  bool has_rate = false;
  for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "key") {
      std::string s;
      if (!get_string(c, v, kp, s)) return true;
      if (s == "ip") out.key = LimitReqConf::Key::ip;
      else if (s == "consumer") out.key = LimitReqConf::Key::consumer;
      else if (s.rfind("header:", 0) == 0 && token_ok(s.substr(7))) {
        out.key = LimitReqConf::Key::header;
        out.header = s.substr(7);
      } else c.error(kp, fmt::format("expected \"ip\", \"header:NAME\" or \"consumer\", got \"{}\"", s));
    } else if (k == "rate") {
      has_rate = true;
      double r = 0;
      if (v.is_number()) r = v.get_double().value_unsafe();
      // The bucket keeps whole microseconds per request: up to 100,000/s
      // (10 us) the rounding stays within 5%; 700,000/s would run as 1,000,000.
      if (!v.is_number() || !(r >= 0.001 && r <= 1e5))
        c.error(kp, "expected requests per second, a number 0.001..100000, got " + describe(v));
      else out.rate = r;
    } else if (k == "burst") {
      get_u32(c, v, kp, 0, 1000000, out.burst);
    } else {
      return false;
    }
    return true;
  });
  if (!has_rate && !c.has_error_under(path + ".rate")) c.error(path, "missing required key \"rate\"");
  if (out.rate > 0 && !c.has_error_under(path) && (out.burst + 1.0) / out.rate > 86400)
    c.error(path + ".burst", fmt::format("(burst + 1) / rate is {:.0f} s; at most 86400 s (a day) is supported",
                                         (out.burst + 1.0) / out.rate));
}

void parse_limit_conn(Ctx& c, element e, const std::string& path, LimitConnConf& out) {
  out.on = true;
  bool has_max = false;
  for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "key") {
      std::string s;
      if (get_string(c, v, kp, s) && s != "ip") c.error(kp, fmt::format("expected \"ip\", got \"{}\"", s));
    } else if (k == "max") {
      has_max = get_u32(c, v, kp, 1, 65535, out.max);
    } else {
      return false;
    }
    return true;
  });
  if (!has_max && !c.has_error_under(path + ".max")) c.error(path, "missing required key \"max\"");
}

void parse_auth(Ctx& c, element e, const std::string& path, AuthConf& out) {
  std::string type;
  simdjson::dom::object obj;
  if (e.get(obj) != simdjson::SUCCESS) {
    c.error(path, "expected an object, got " + describe(e));
    return;
  }
  element tv;
  bool type_ok = false;
  if (obj["type"].get(tv) != simdjson::SUCCESS)
    c.error(path, "missing required key \"type\" (\"key-auth\", \"basic-auth\" or \"jwt\")");
  else if (get_string(c, tv, path + ".type", type)) {
    type_ok = true;
    if (type == "key-auth") out.type = AuthType::key;
    else if (type == "basic-auth") out.type = AuthType::basic;
    else if (type == "jwt") out.type = AuthType::jwt;
    else {
      c.error(path + ".type", fmt::format("expected \"key-auth\", \"basic-auth\" or \"jwt\", got \"{}\"", type));
      type_ok = false;
    }
  }
  if (!type_ok) {
    // Without a type, which keys belong is unknown: still report the keys
    // no type takes (a typo beside a missing type), duplicates, and "allow".
    for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
      if (k == "allow") parse_allow(c, v, kp, out.allow);
      return k == "type" || k == "allow" || k == "header" || k == "query" || k == "cookie" || k == "users" ||
             k == "algorithm" || k == "secret" || k == "public_key" || k == "leeway_s" || k == "issuer" ||
             k == "audience" || k == "consumer_claim";
    });
    return;
  }
  int sources = 0;
  bool has_users = false, has_alg = false, has_secret = false, has_pubkey = false;
  std::string alg;
  out.from = out.type == AuthType::jwt ? CredFrom::bearer : CredFrom::header;
  out.from_name = out.type == AuthType::key ? "apikey" : out.type == AuthType::jwt ? "Authorization" : "";
  auto source = [&](CredFrom f, element v, const std::string& kp) {
    ++sources;
    std::string n;
    if (!get_string(c, v, kp, n)) return;
    if (!token_ok(n)) {
      c.error(kp, fmt::format("expected a name of 1..64 token characters, got \"{}\"", n));
      return;
    }
    out.from = f;
    out.from_name = n;
    // jwt "header": "Authorization" is the Bearer scheme.
    if (f == CredFrom::header && out.type == AuthType::jwt && iequals(n, "authorization")) out.from = CredFrom::bearer;
  };
  for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "type") return true;
    if (k == "allow") {
      parse_allow(c, v, kp, out.allow);
      return true;
    }
    if (out.type == AuthType::key || out.type == AuthType::jwt) {
      if (k == "header" || k == "query" || (k == "cookie" && out.type == AuthType::jwt)) {
        source(k == "header" ? CredFrom::header : k == "query" ? CredFrom::query : CredFrom::cookie, v, kp);
        return true;
      }
    }
    if (out.type == AuthType::basic && k == "users") {
      has_users = true;
      for_each_field(c, v, kp, [&](std::string_view user, element hv, const std::string& up) {
        if (!consumer_name_ok(user) || user.find(':') != std::string_view::npos) {
          c.error(up, fmt::format("a user name is 1..{} visible characters without ':'", kMaxConsumerName));
          return true;
        }
        std::string hash, why;
        if (!get_string(c, hv, up, hash)) return true;
        if (!crypt_hash_ok(hash, why)) c.error(up, why);
        else out.users.emplace_back(std::string(user), hash);
        return true;
      });
      if (out.users.empty() && !c.has_error_under(kp)) c.error(kp, "expected at least one user");
      return true;
    }
    if (out.type == AuthType::jwt) {
      if (k == "algorithm") {
        has_alg = true;
        if (get_string(c, v, kp, alg)) {
          if (alg == "HS256") out.alg = JwtAlg::hs256;
          else if (alg == "RS256") out.alg = JwtAlg::rs256;
          else c.error(kp, fmt::format("expected \"HS256\" or \"RS256\", got \"{}\"", alg));
        }
      } else if (k == "secret") {
        has_secret = true;
        const bool from_file = v.is_string() && v.get_string().value_unsafe().starts_with('@');
        if (get_string(c, v, kp, out.secret) && text_or_file(c, kp, out.secret)) {
          // A file's line end is no part of the secret (`echo "$S" > file`
          // writes one; the issuer signs without it), as gwctl --key-file reads a key.
          while (from_file && !out.secret.empty() && (out.secret.back() == '\n' || out.secret.back() == '\r'))
            out.secret.pop_back();
          if (out.secret.size() < 16) c.error(kp, "expected a secret of at least 16 bytes (RFC 7518 3.2 asks for 32)");
        }
      } else if (k == "public_key") {
        has_pubkey = true;
        std::string why;
        if (get_string(c, v, kp, out.public_key_pem) && text_or_file(c, kp, out.public_key_pem) &&
            !is_rsa_public_key(out.public_key_pem, why))
          c.error(kp, why);
      } else if (k == "leeway_s") {
        get_u32(c, v, kp, 0, 86400, out.leeway_s);
      } else if (k == "issuer") {
        if (get_string(c, v, kp, out.issuer) && (out.issuer.empty() || out.issuer.size() > 256))
          c.error(kp, "expected 1..256 characters");
      } else if (k == "audience") {
        if (get_string(c, v, kp, out.audience) && (out.audience.empty() || out.audience.size() > 256))
          c.error(kp, "expected 1..256 characters");
      } else if (k == "consumer_claim") {
        if (get_string(c, v, kp, out.consumer_claim) && !token_ok(out.consumer_claim))
          c.error(kp, fmt::format("expected a claim name, got \"{}\"", out.consumer_claim));
      } else {
        return false;
      }
      return true;
    }
    return false;
  });
  if (sources > 1) c.error(path, "give at most one of \"header\", \"query\" and \"cookie\"");
  if (out.type == AuthType::basic && !has_users && !c.has_error_under(path + ".users"))
    c.error(path, "missing required key \"users\"");
  // basic-auth's consumers are its users, fixed here: a name in "allow" that
  // is not one of them is a typo that would deny everyone it meant to let in.
  // (key-auth consumers change at run time, jwt's come from a claim.)
  if (out.type == AuthType::basic && !out.users.empty())
    for (const auto& name : out.allow) {
      bool known = false;
      for (const auto& u : out.users) known |= u.first == name;
      if (!known) c.error(path + ".allow", fmt::format("\"{}\" is not one of this route's users", name));
    }
  if (out.type == AuthType::jwt && !c.has_error_under(path + ".algorithm")) {
    if (!has_alg) c.error(path, "missing required key \"algorithm\" (\"HS256\" or \"RS256\")");
    else if (out.alg == JwtAlg::hs256 && !has_secret) c.error(path, "HS256 needs \"secret\"");
    else if (out.alg == JwtAlg::rs256 && !has_pubkey) c.error(path, "RS256 needs \"public_key\"");
    else if (out.alg == JwtAlg::hs256 && has_pubkey) c.error(path + ".public_key", "goes with RS256, not HS256");
    else if (out.alg == JwtAlg::rs256 && has_secret) c.error(path + ".secret", "goes with HS256, not RS256");
  }
}

void parse_consumers(Ctx& c, element e, const std::string& path, std::vector<ConsumerConf>& out) {
  std::set<std::string> names, keys;
  for_each_element(c, e, path, [&](element item, const std::string& p) {
    ConsumerConf cc;
    bool has_name = false, has_key = false;
    for_each_field(c, item, p, [&](std::string_view k, element v, const std::string& kp) {
      if (k == "name") has_name = get_name(c, v, kp, cc.name);
      else if (k == "key") {
        if (get_string(c, v, kp, cc.key)) {
          if (!valid_api_key(cc.key))
            c.error(kp, fmt::format("expected a key of 1..{} visible ASCII characters", kMaxApiKey));
          else has_key = true;
        }
      } else return false;
      return true;
    });
    if (!has_name && !c.has_error_under(p + ".name")) c.error(p, "missing required key \"name\"");
    if (!has_key && !c.has_error_under(p + ".key")) c.error(p, "missing required key \"key\"");
    if (has_name && !names.insert(cc.name).second)
      c.error(p + ".name", fmt::format("duplicate consumer \"{}\"", cc.name));
    if (has_key && !keys.insert(cc.key).second) c.error(p + ".key", "another consumer has the same key");
    out.push_back(std::move(cc));
  });
}

void check_guard(Ctx& c, const Config& cfg) {
  for (size_t i = 0; i < cfg.listeners.size(); ++i)
    for (size_t r = 0; r < cfg.listeners[i].routes.size(); ++r) {
      const RouteConf& rc = cfg.listeners[i].routes[r];
      if (rc.limit_req.on && rc.limit_req.key == LimitReqConf::Key::consumer && rc.auth.type == AuthType::none)
        c.error(fmt::format("listeners[{}].routes[{}].limit_req.key", i, r),
                "\"consumer\" needs \"auth\" on the route (the consumer is who auth found)");
    }
  if (cfg.consumers.size() > cfg.shm.caps.max_consumers)
    c.error("consumers", fmt::format("{} consumers are configured, more than shm.max_consumers {}",
                                     cfg.consumers.size(), cfg.shm.caps.max_consumers));
}

}  // namespace gw::config

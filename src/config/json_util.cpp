#include "config/json_util.hpp"

#include <netinet/in.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gw/core/text.hpp"
#include "gw/core/utf8.hpp"

namespace gw::config {

// A key or value quoted back may hold a control character: escaped, so that
// each error stays one line.
void Ctx::error(const std::string& path, const std::string& msg) {
  errors.push_back(core::one_line(path + ": " + msg));
}

// "a.id" is under "a.id" ("a.id: ..."), "a.id.x" and "a.id[0]", not "a.ids".
bool Ctx::has_error_under(const std::string& path) const {
  const std::string p = core::one_line(path);
  for (const auto& e : errors)
    if (e.size() > p.size() && e.compare(0, p.size(), p) == 0 &&
        (e[p.size()] == '.' || e[p.size()] == '[' || e[p.size()] == ':'))
      return true;
  return false;
}

// A key that is a plain word is joined with a dot (`listeners[0].upstream`);
// any other (a user name such as "alice.smith" in `users`, a misspelt key with a
// space or a dot) is written as a quoted subscript (`users["alice.smith"]`), as
// jq writes paths, so that a key's dot cannot pass for a level of nesting.
std::string join(const std::string& path, std::string_view key) {
  const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
  });
  if (plain) return path.empty() ? std::string(key) : path + "." + std::string(key);
  std::string out = path + "[\"";
  for (char ch : key) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;  // a control character is escaped when the error is made (Ctx::error)
  }
  out += "\"]";
  return out;
}

std::string describe(simdjson::dom::element e) {
  using T = simdjson::dom::element_type;
  switch (e.type()) {
    case T::STRING: {
      std::string_view s = e.get_string().value_unsafe();
      // Config strings are UTF-8 (simdjson checks): cut between characters.
      if (s.size() > 40) return fmt::format("string \"{}...\"", core::utf8_prefix(s, 40));
      return fmt::format("string \"{}\"", s);
    }
    case T::INT64: return fmt::format("{}", e.get_int64().value_unsafe());
    case T::UINT64: return fmt::format("{}", e.get_uint64().value_unsafe());
    case T::DOUBLE: {
      // 1.0 and 1e3 would print as 1 and 1000, which look like the integers
      // they were refused as: a whole number is shown with its ".0".
      const double d = e.get_double().value_unsafe();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e15) return fmt::format("{:.1f}", d);
      return fmt::format("{}", d);
    }
    case T::BOOL: return e.get_bool().value_unsafe() ? "true" : "false";
    case T::NULL_VALUE: return "null";
    case T::ARRAY: return "an array";
    case T::OBJECT: return "an object";
  }
  return "an unknown value";
}

bool get_string(Ctx& c, simdjson::dom::element v, const std::string& path, std::string& out) {
  std::string_view s;
  if (v.get(s) != simdjson::SUCCESS) {
    c.error(path, "expected a string, got " + describe(v));
    return false;
  }
  out = s;
  return true;
}

bool get_c_string(Ctx& c, simdjson::dom::element v, const std::string& path, std::string& out, const char* what) {
  std::string s;
  if (!get_string(c, v, path, s)) return false;
  if (s.find('\0') != std::string::npos) {
    c.error(path, fmt::format("expected {} without a NUL byte, got {}", what, describe(v)));
    return false;
  }
  out = std::move(s);
  return true;
}

bool get_name(Ctx& c, simdjson::dom::element v, const std::string& path, std::string& out) {
  std::string s;
  if (!get_string(c, v, path, s)) return false;
  if (auto why = shm::check_new_name(s); !why.empty()) {
    c.error(path, fmt::format("\"{}\" {}", s, why));
    return false;
  }
  out = std::move(s);
  return true;
}

bool get_address(Ctx& c, simdjson::dom::element v, const std::string& path, core::SockAddr& out) {
  std::string s, why;
  if (!get_string(c, v, path, s)) return false;
  if (!core::parse_address(s, out, why)) {
    c.error(path, fmt::format("bad address \"{}\": {}", s, why));
    return false;
  }
  return true;
}

bool get_host_address(Ctx& c, simdjson::dom::element v, const std::string& path, core::SockAddr& out) {
  std::string s, why;
  if (!get_string(c, v, path, s)) return false;
  if (!core::parse_host_address(s, out, why)) {
    c.error(path, fmt::format("bad address \"{}\": {}", s, why));
    return false;
  }
  return true;
}

bool get_listen_address(Ctx& c, simdjson::dom::element v, const std::string& path, core::SockAddr& out) {
  core::SockAddr a;
  if (!get_address(c, v, path, a)) return false;
  // bind(2) refuses both with EINVAL: at load, `gwd -t` says so, not the start.
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  std::string why;
  if (a.family == AF_INET6 && std::memcmp(a.ip, kMapped, sizeof(kMapped)) == 0) {
    core::SockAddr v4;
    v4.family = AF_INET;
    v4.port = a.port;
    std::memcpy(v4.ip, a.ip + 12, 4);
    why = fmt::format(
        "an IPv4-mapped IPv6 address, which an IPv6 listening socket does not take (gw's are IPv6-only); write {}",
        v4.to_string());
  } else if (a.family == AF_INET6 && a.ip[0] == 0xfe && (a.ip[1] & 0xc0) == 0x80) {
    why =
        "a link-local address, which can be bound only with an interface (gw takes none); use a global or "
        "loopback address, or [::]";
  }
  if (!why.empty()) {
    c.error(path, fmt::format("bad address \"{}\": {}", v.get_string().value_unsafe(), why));
    return false;
  }
  out = a;
  return true;
}

bool get_u32(Ctx& c, simdjson::dom::element v, const std::string& path, uint32_t min, uint32_t max, uint32_t& out,
             const char* what) {
  int64_t n = 0;
  if (v.is_int64()) n = v.get_int64().value_unsafe();
  else if (v.is_uint64()) n = INT64_MAX;
  else {
    c.error(path, fmt::format("expected {} {}..{}, got {}", what, min, max, describe(v)));
    return false;
  }
  if (n < static_cast<int64_t>(min) || n > static_cast<int64_t>(max)) {
    c.error(path, fmt::format("expected {} {}..{}, got {}", what, min, max, describe(v)));
    return false;
  }
  out = static_cast<uint32_t>(n);
  return true;
}

bool get_i32(Ctx& c, simdjson::dom::element v, const std::string& path, int32_t min, int32_t max, int32_t& out) {
  if (!v.is_int64() || v.get_int64().value_unsafe() < min || v.get_int64().value_unsafe() > max) {
    c.error(path, fmt::format("expected an integer {}..{}, got {}", min, max, describe(v)));
    return false;
  }
  out = static_cast<int32_t>(v.get_int64().value_unsafe());
  return true;
}

bool get_method(Ctx& c, simdjson::dom::element v, const std::string& path, shm::Method& out) {
  std::string s;
  if (!get_string(c, v, path, s)) return false;
  if (!shm::parse_method(s, out)) {
    c.error(path, fmt::format("unknown method \"{}\" (known: {})", s, shm::method_names()));
    return false;
  }
  return true;
}

}  // namespace gw::config

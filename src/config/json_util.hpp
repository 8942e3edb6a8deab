#pragma once
// Validation helpers over simdjson's DOM: each records errors with the JSON
// path of the offending value instead of stopping at the first one.

#include <simdjson.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/shm/table.hpp"

namespace gw::config {

struct Ctx {
  std::vector<std::string> errors;
  void error(const std::string& path, const std::string& msg);
  bool has_error_under(const std::string& path) const;
};

/// "string \"0\"", "-3", "true", "null", "an object", "an array".
std::string describe(simdjson::dom::element e);
std::string join(const std::string& path, std::string_view key);

/// Calls fn(key, value, path_of_key) for each field; fn returns false for an
/// unknown key, which is reported. Duplicate keys are reported.
template <typename Fn>
void for_each_field(Ctx& c, simdjson::dom::element e, const std::string& path, Fn&& fn) {
  simdjson::dom::object obj;
  if (e.get(obj) != simdjson::SUCCESS) {
    c.error(path.empty() ? "(document)" : path, "expected an object, got " + describe(e));
    return;
  }
  std::vector<std::string_view> seen;
  for (auto field : obj) {
    std::string kp = join(path, field.key);
    for (auto s : seen)
      if (s == field.key) c.error(kp, "duplicate key");
    seen.push_back(field.key);
    if (!fn(field.key, field.value, kp)) c.error(kp, "unknown key");
  }
}

template <typename Fn>
void for_each_element(Ctx& c, simdjson::dom::element e, const std::string& path, Fn&& fn) {
  simdjson::dom::array arr;
  if (e.get(arr) != simdjson::SUCCESS) {
    c.error(path, "expected an array, got " + describe(e));
    return;
  }
  size_t i = 0;
  for (auto item : arr) fn(item, path + "[" + std::to_string(i++) + "]");
}

bool get_string(Ctx& c, simdjson::dom::element v, const std::string& path, std::string& out);
/// get_string() for a string the system takes as a C string (`what`: "a file
/// path", "a shell command"): a NUL byte would cut it short there, so that
/// another file opened, or another command ran. Refused.
bool get_c_string(Ctx& c, simdjson::dom::element v, const std::string& path, std::string& out,
                  const char* what = "a file path");
/// A name or id: 1..47 bytes of [A-Za-z0-9._:-].
bool get_name(Ctx& c, simdjson::dom::element v, const std::string& path, std::string& out);
bool get_address(Ctx& c, simdjson::dom::element v, const std::string& path, core::SockAddr& out);
/// get_address() for an upstream host's address (core::parse_host_address:
/// not the unspecified address).
bool get_host_address(Ctx& c, simdjson::dom::element v, const std::string& path, core::SockAddr& out);
/// get_address() for an address gw listens on (listeners[].listen,
/// admin.listen): one bind(2) takes. Not an IPv4-mapped IPv6 address (the
/// sockets are IPV6_V6ONLY) nor a link-local one (it needs an interface).
bool get_listen_address(Ctx& c, simdjson::dom::element v, const std::string& path, core::SockAddr& out);
bool get_u32(Ctx& c, simdjson::dom::element v, const std::string& path, uint32_t min, uint32_t max, uint32_t& out,
             const char* what = "an integer");
bool get_i32(Ctx& c, simdjson::dom::element v, const std::string& path, int32_t min, int32_t max, int32_t& out);
bool get_method(Ctx& c, simdjson::dom::element v, const std::string& path, shm::Method& out);

/// One gray-release rule in the config's form (listeners[].routes[].rules[]:
/// {"id", "upstream", "ip": [...], "header": "N=V" or {"name", "value"},
/// "cookie": likewise, "percent"}), validated in full; also the admin API's
/// rule body, which may carry GET's read-only "hits" (read_only_hits: checked
/// to be a count, ignored).
void parse_rule_object(Ctx& c, simdjson::dom::element e, const std::string& path, shm::RuleSpec& r,
                       bool read_only_hits = false);

}  // namespace gw::config

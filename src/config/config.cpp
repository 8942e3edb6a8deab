#include "gw/config/config.hpp"

#include <cerrno>

#include <netinet/in.h>
#include <sys/stat.h>

#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <map>
#include <set>

#include "config/api_config.hpp"
#include "config/json_util.hpp"
#include "gw/api/hash.hpp"
#include "gw/core/json_error.hpp"
#include "gw/shm/segment.hpp"

namespace gw::config {
namespace {

using simdjson::dom::element;
using simdjson::dom::object;

std::string absolute(const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  char cwd[PATH_MAX];
  if (!::getcwd(cwd, sizeof(cwd))) return p;
  return std::string(cwd) + "/" + p;
}

void parse_hosts(Ctx& c, element arr, const std::string& path, PoolConf& pool) {
  std::set<std::string> ids;
  for_each_element(c, arr, path, [&](element e, const std::string& p) {
    HostConf h;
    bool has_id = false, has_addr = false;
    for_each_field(c, e, p, [&](std::string_view k, element v, const std::string& kp) {
      if (k == "id") has_id = get_name(c, v, kp, h.id);
      else if (k == "address") has_addr = get_host_address(c, v, kp, h.address);
      else if (k == "weight") get_u32(c, v, kp, 0, shm::kMaxWeight, h.weight);
      else return false;
      return true;
    });
    if (!has_id && !c.has_error_under(p + ".id")) c.error(p, "missing required key \"id\"");
    if (!has_addr && !c.has_error_under(p + ".address")) c.error(p, "missing required key \"address\"");
    if (has_id && !ids.insert(h.id).second)
      c.error(p + ".id", fmt::format("duplicate host id \"{}\" in pool \"{}\"", h.id, pool.id));
    pool.hosts.push_back(std::move(h));
  });
}

void parse_pools(Ctx& c, element arr, const std::string& path, UpstreamConf& up) {
  std::set<std::string> ids;
  for_each_element(c, arr, path, [&](element e, const std::string& p) {
    PoolConf pool;
    bool has_id = false;
    element hosts;
    bool has_hosts = false;
    for_each_field(c, e, p, [&](std::string_view k, element v, const std::string& kp) {
      if (k == "id") has_id = get_name(c, v, kp, pool.id);
      else if (k == "priority") get_i32(c, v, kp, -1000000, 1000000, pool.priority);
      else if (k == "method") pool.method_set = get_method(c, v, kp, pool.method);
      else if (k == "hosts") {
        hosts = v;
        has_hosts = true;
      } else return false;
      return true;
    });
    if (!has_id && !c.has_error_under(p + ".id")) c.error(p, "missing required key \"id\"");
    if (has_id && !ids.insert(pool.id).second)
      c.error(p + ".id", fmt::format("duplicate pool id \"{}\" in upstream \"{}\"", pool.id, up.name));
    if (has_hosts) parse_hosts(c, hosts, p + ".hosts", pool);
    up.pools.push_back(std::move(pool));
  });
}

// "2xx,3xx" → bits 2 and 3.
bool parse_expect(const std::string& s, uint16_t& mask) {
  mask = 0;
  size_t i = 0;
  while (i < s.size()) {
    if (i + 3 > s.size() || s[i] < '1' || s[i] > '5' || s[i + 1] != 'x' || s[i + 2] != 'x') return false;
    mask = static_cast<uint16_t>(mask | (1u << (s[i] - '0')));
    i += 3;
    if (i < s.size() && (s[i++] != ',' || i == s.size())) return false;  // "2xx," has an empty class
  }
  return mask != 0;
}

void parse_health(Ctx& c, element e, const std::string& path, shm::HealthCheck& hc) {
  hc = shm::HealthCheck{};
  hc.type = shm::kCheckTcp;
  hc.unknown_usable = 1;
  hc.expect_mask = (1u << 2) | (1u << 3);
  hc.interval_ms = 2000;
  hc.timeout_ms = 1000;
  hc.rise = 2;
  hc.fall = 3;
  std::string p = "/";
  std::string host;                    // empty: the host's address
  std::vector<std::string> http_only;  // paths of "path", "expect_status" and "host"
  for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "path" || k == "expect_status" || k == "host") http_only.push_back(kp);
    if (k == "type") {
      std::string t;
      if (get_string(c, v, kp, t)) {
        if (t == "tcp") hc.type = shm::kCheckTcp;
        else if (t == "http") hc.type = shm::kCheckHttp;
        else c.error(kp, fmt::format("expected \"tcp\" or \"http\", got \"{}\"", t));
      }
    } else if (k == "path") {
      if (get_string(c, v, kp, p) && (p.empty() || p[0] != '/' || p.size() >= sizeof(hc.path) ||
                                      p.find_first_of(std::string_view(" \r\n\t\0", 5)) != std::string::npos))
        c.error(kp, fmt::format("expected a path starting with / (no spaces, under {} bytes), got \"{}\"",
                                sizeof(hc.path), p));
    } else if (k == "host") {
      if (get_string(c, v, kp, host))
        if (const char* why = shm::check_host_error(host)) {
          c.error(kp, fmt::format("expected a Host header: a host name, IPv4 address or [IPv6 address], optionally "
                                  "with :port, at most {} bytes; the {} {}",
                                  shm::kCheckHostMax, describe(v), why));
          host.clear();
        }
    } else if (k == "expect_status") {
      std::string x;
      if (get_string(c, v, kp, x) && !parse_expect(x, hc.expect_mask))
        c.error(kp, fmt::format("expected status classes like \"2xx,3xx\", got \"{}\"", x));
    } else if (k == "interval_ms") get_u32(c, v, kp, 10, 3600000, hc.interval_ms);
    else if (k == "timeout_ms") get_u32(c, v, kp, 1, 3600000, hc.timeout_ms);
    else if (k == "rise") get_u32(c, v, kp, 1, 1000, hc.rise);
    else if (k == "fall") get_u32(c, v, kp, 1, 1000, hc.fall);
    else if (k == "unknown") {
      std::string u;
      if (get_string(c, v, kp, u)) {
        if (u == "usable") hc.unknown_usable = 1;
        else if (u == "unusable") hc.unknown_usable = 0;
        else c.error(kp, fmt::format("expected \"usable\" or \"unusable\", got \"{}\"", u));
      }
    } else return false;
    return true;
  });
  // A path or status without "type": "http" would leave the tcp default: a
  // connect check where an http one was asked for, and no word of it.
  if (hc.type != shm::kCheckHttp && !c.has_error_under(path + ".type"))
    for (const auto& kp : http_only)
      if (!c.has_error_under(kp))
        c.error(kp, kp.ends_with(".path")   ? "only an http check sends a path; add \"type\": \"http\""
                    : kp.ends_with(".host") ? "only an http check sends a Host header; add \"type\": \"http\""
                                            : "only an http check has a status; add \"type\": \"http\"");
  std::memcpy(hc.path, p.data(), std::min(p.size(), sizeof(hc.path) - 1));
  std::memcpy(hc.host, host.data(), std::min(host.size(), sizeof(hc.host) - 1));
}

void parse_keepalive(Ctx& c, element e, const std::string& path, UpstreamConf::Keepalive& k) {
  for_each_field(c, e, path, [&](std::string_view key, element v, const std::string& kp) {
    if (key == "max_idle") get_u32(c, v, kp, 0, 100000, k.max_idle);
    else if (key == "idle_timeout_ms") get_u32(c, v, kp, 1, 86400000, k.idle_timeout_ms);
    else if (key == "max_requests") get_u32(c, v, kp, 1, 1000000000, k.max_requests);
    else return false;
    return true;
  });
}

void parse_retry(Ctx& c, element e, const std::string& path, UpstreamConf::Retry& r) {
  for_each_field(c, e, path, [&](std::string_view key, element v, const std::string& kp) {
    if (key == "on") {
      r.on_error = r.on_timeout = r.on_invalid = false;
      std::fill(std::begin(r.status), std::end(r.status), 0);
      for_each_element(c, v, kp, [&](element item, const std::string& ip) {
        std::string t;
        if (!get_string(c, item, ip, t)) return;
        auto set = [&](uint32_t st) { r.status[(st - 400) / 64] |= uint64_t{1} << ((st - 400) % 64); };
        uint32_t code = 0;
        auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), code);
        if (t == "error") r.on_error = true;
        else if (t == "timeout") r.on_timeout = true;
        else if (t == "invalid_response") r.on_invalid = true;
        else if (t == "4xx" || t == "5xx")
          for (uint32_t st = t[0] == '4' ? 400 : 500; st < (t[0] == '4' ? 500u : 600u); ++st) set(st);
        else if (ec == std::errc() && end == t.data() + t.size() && code >= 400 && code <= 599) set(code);
        else
          c.error(ip, fmt::format("expected \"error\", \"timeout\", \"invalid_response\", \"4xx\", \"5xx\" or a "
                                  "status 400..599 as a string, got \"{}\"",
                                  t));
      });
    } else if (key == "tries") get_u32(c, v, kp, 1, 16, r.tries);
    else if (key == "timeout_ms") get_u32(c, v, kp, 0, 86400000, r.timeout_ms);
    else return false;
    return true;
  });
}

void parse_upstreams(Ctx& c, element arr, Config& cfg) {
  std::set<std::string> names;
  for_each_element(c, arr, "upstreams", [&](element e, const std::string& p) {
    UpstreamConf up;
    bool has_name = false;
    element pools;
    bool has_pools = false;
    for_each_field(c, e, p, [&](std::string_view k, element v, const std::string& kp) {
      if (k == "name") has_name = get_name(c, v, kp, up.name);
      else if (k == "connect_timeout_ms") get_u32(c, v, kp, 1, 3600000, up.connect_timeout_ms);
      else if (k == "idle_timeout_ms") get_u32(c, v, kp, 1, 86400000, up.idle_timeout_ms);
      else if (k == "max_fails") get_u32(c, v, kp, 0, 1000, up.max_fails);
      else if (k == "fail_timeout_ms") get_u32(c, v, kp, 1, 86400000, up.fail_timeout_ms);
      else if (k == "tries") get_u32(c, v, kp, 1, 16, up.tries);
      else if (k == "health") parse_health(c, v, kp, up.check);
      else if (k == "slow_start_ms") get_u32(c, v, kp, 0, 3600000, up.slow_start_ms);
      else if (k == "hash_balance_factor") {
        double f = 0;
        if (v.is_number()) f = v.get_double().value_unsafe();
        if (!v.is_number() || (f != 0 && (f < 1.0 || f > 10.0)))
          c.error(kp, "expected 0 (off) or a number 1.0..10.0, got " + describe(v));
        else up.balance_factor = static_cast<uint32_t>(f * 100 + 0.5);
      } else if (k == "pools") {
        pools = v;
        has_pools = true;
      } else if (k == "read_timeout_ms") get_u32(c, v, kp, 1, 86400000, up.read_timeout_ms);
      else if (k == "send_timeout_ms") get_u32(c, v, kp, 1, 86400000, up.send_timeout_ms);
      else if (k == "keepalive") parse_keepalive(c, v, kp, up.keepalive);
      else if (k == "retry") parse_retry(c, v, kp, up.retry);
      else return false;
      return true;
    });
    if (!has_name && !c.has_error_under(p + ".name")) c.error(p, "missing required key \"name\"");
    if (has_name && !names.insert(up.name).second)
      c.error(p + ".name", fmt::format("duplicate upstream name \"{}\"", up.name));
    if (has_pools) parse_pools(c, pools, p + ".pools", up);
    cfg.upstreams.push_back(std::move(up));
  });
}

// An empty list would refuse every frame: refused itself.
void parse_byte_list(Ctx& c, element v, const std::string& path, uint8_t (&allowed)[256]) {
  size_t n = 0;
  for_each_element(c, v, path, [&](element e, const std::string& p) {
    ++n;
    uint32_t b = 0;
    if (get_u32(c, e, p, 0, 255, b)) allowed[b] = 1;
  });
  if (n == 0 && v.is_array()) c.error(path, "expected at least one value, got []");
}

// Why frame.key `k` cannot be used, or "". A key starting with '/' is a JSON
// pointer (RFC 6901) that simdjson's at_pointer takes: '~' only in "~0" and
// "~1" (any other escape fails every lookup, so every frame would be refused).
// Any other key is a top-level field name, taken as is.
std::string frame_key_why(std::string_view k) {
  if (k.empty()) return "expected a field name or a JSON pointer (\"/device/id\"), got \"\"";
  if (k.front() != '/') return {};
  for (size_t i = 0; i < k.size(); ++i)
    if (k[i] == '~' && (i + 1 == k.size() || (k[i + 1] != '0' && k[i + 1] != '1')))
      return fmt::format("expected a JSON pointer whose '~' escapes are \"~0\" or \"~1\", got \"{}\"", k);
  return {};
}

void parse_frame(Ctx& c, element e, const std::string& path, FrameConf& f) {
  proxy::FrameSpec& s = f.spec;
  bool has_type_offset = false, has_version_offset = false;
  std::vector<std::string> frame_mode_only;  // keys that only mode "frame" reads
  for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "header_size") get_u32(c, v, kp, 1, proxy::kMaxHeader, s.header_size);
    else if (k == "length_offset") get_u32(c, v, kp, 0, proxy::kMaxHeader - 1, s.length_offset);
    else if (k == "length_size") {
      if (get_u32(c, v, kp, 1, 4, s.length_size) && s.length_size == 3) c.error(kp, "expected 1, 2 or 4, got 3");
    } else if (k == "byte_order") {
      std::string b;
      if (get_string(c, v, kp, b)) {
        if (b == "big") s.big_endian = true;
        else if (b == "little") s.big_endian = false;
        else c.error(kp, fmt::format("expected \"big\" or \"little\", got \"{}\"", b));
      }
    } else if (k == "length_includes_header") {
      if (!v.is_bool()) c.error(kp, "expected true or false, got " + describe(v));
      else s.length_includes_header = v.get_bool().value_unsafe();
    } else if (k == "max_body") {
      // 0 is not nginx's "no limit" (client_max_body_size 0) here: it would
      // refuse every login frame, whose body carries the key.
      if (v.is_int64() && v.get_int64().value_unsafe() == 0)
        c.error(kp,
                "expected an integer 1..16777216, got 0 (0 would refuse every login frame: its body carries the key)");
      else get_u32(c, v, kp, 1, 16u << 20, s.max_body);
    } else if (k == "key") {
      if (get_string(c, v, kp, s.key))
        if (auto why = frame_key_why(s.key); !why.empty()) c.error(kp, why);
    } else if (k == "max_key") get_u32(c, v, kp, 1, proxy::kMaxKey, s.max_key);
    else if (k == "max_depth") get_u32(c, v, kp, 1, 1024, s.max_depth);
    else if (k == "first_frame_timeout_ms") get_u32(c, v, kp, 1, 3600000, f.first_frame_timeout_ms);
    else if (k == "frame_timeout_ms") {
      frame_mode_only.push_back(kp);
      get_u32(c, v, kp, 1, 3600000, f.frame_timeout_ms);
    } else if (k == "max_links") {
      frame_mode_only.push_back(kp);
      get_u32(c, v, kp, 1, 32, f.max_links);
    } else if (k == "link_idle_ms") {
      frame_mode_only.push_back(kp);
      get_u32(c, v, kp, 1, 3600000, f.link_idle_ms);
    } else if (k == "max_frame_buffers") get_u32(c, v, kp, 1, 1u << 20, f.max_frame_buffers);
    else if (k == "mode") {
      std::string m;
      if (get_string(c, v, kp, m)) {
        if (m == "connection") f.mode = FrameMode::connection;
        else if (m == "frame") f.mode = FrameMode::frame;
        else c.error(kp, fmt::format("expected \"connection\" or \"frame\", got \"{}\"", m));
      }
    } else if (k == "type_offset") {
      has_type_offset = true;
      get_u32(c, v, kp, 0, proxy::kMaxHeader - 1, s.type_offset);
    } else if (k == "version_offset") {
      has_version_offset = true;
      get_u32(c, v, kp, 0, proxy::kMaxHeader - 1, s.version_offset);
    } else if (k == "allowed_types") {
      s.check_types = true;
      parse_byte_list(c, v, kp, s.allowed_types);
    } else if (k == "allowed_versions") {
      s.check_versions = true;
      parse_byte_list(c, v, kp, s.allowed_versions);
    } else return false;
    return true;
  });
  if (c.has_error_under(path)) return;
  // Mode "connection" relays raw bytes after the first frame and keeps one
  // host connection: these would bound nothing, and say nothing of it.
  if (f.mode == FrameMode::connection)
    for (const std::string& kp : frame_mode_only)
      c.error(kp, "only mode \"frame\" uses it; add \"mode\": \"frame\" or remove it");
  // An offset alone checks nothing: the operator asked for a check that would
  // not be made, and every type (version) would pass without a word.
  if (has_type_offset && !s.check_types)
    c.error(path + ".type_offset", "without \"allowed_types\" it checks nothing; add \"allowed_types\" or remove it");
  if (has_version_offset && !s.check_versions)
    c.error(path + ".version_offset",
            "without \"allowed_versions\" it checks nothing; add \"allowed_versions\" or remove it");
  if (s.length_offset + s.length_size > s.header_size)
    c.error(path + ".length_offset",
            fmt::format("the length field (offset {}, {} bytes) must lie inside the {}-byte header", s.length_offset,
                        s.length_size, s.header_size));
  if (s.check_types && s.type_offset >= s.header_size)
    c.error(path + ".type_offset",
            fmt::format("offset {} is outside the {}-byte header", s.type_offset, s.header_size));
  if (s.check_versions && s.version_offset >= s.header_size)
    c.error(path + ".version_offset",
            fmt::format("offset {} is outside the {}-byte header", s.version_offset, s.header_size));
}

// A body can be no longer than the length field can say.
void cap_max_body(proxy::FrameSpec& s) {
  if (s.length_size < 4 && !s.length_includes_header && s.max_body >= (1ull << (8 * s.length_size)))
    s.max_body = static_cast<uint32_t>((1ull << (8 * s.length_size)) - 1);
}

void parse_http(Ctx& c, element e, const std::string& path, HttpConf& h) {
  for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "client_header_timeout_ms") get_u32(c, v, kp, 1, 86400000, h.client_header_timeout_ms);
    else if (k == "client_body_timeout_ms") get_u32(c, v, kp, 1, 86400000, h.client_body_timeout_ms);
    else if (k == "send_timeout_ms") get_u32(c, v, kp, 1, 86400000, h.send_timeout_ms);
    else if (k == "keepalive_timeout_ms") get_u32(c, v, kp, 0, 86400000, h.keepalive_timeout_ms);
    else if (k == "keepalive_requests") get_u32(c, v, kp, 1, 1000000000, h.keepalive_requests);
    else if (k == "max_request_line") get_u32(c, v, kp, 64, 15 * 1024, h.max_request_line);
    else if (k == "max_header_bytes") get_u32(c, v, kp, 256, 15 * 1024, h.max_header_bytes);
    else if (k == "max_headers") get_u32(c, v, kp, 1, 1000, h.max_headers);
    else if (k == "underscores_in_headers") {
      if (!v.is_bool()) c.error(kp, "expected true or false, got " + describe(v));
      else h.underscores_in_headers = v.get_bool().value_unsafe();
    } else return false;
    return true;
  });
}

// One rule of a route's "rules": {"id", "upstream", "ip": [...], "header":
// "NAME=VALUE", "cookie": "NAME=VALUE", "percent": N}. A header or cookie
// may also be {"name": N, "value": V}, the form the state file and the admin
// API's GET write, so that what gw writes it reads back. `read_only_hits`:
// the admin API's bodies may carry the rule's "hits" counter as GET shows it
// (a non-negative integer, ignored).
void parse_rule(Ctx& c, element e, const std::string& p, shm::RuleSpec& r, bool read_only_hits = false) {
  bool has_id = false, has_up = false;
  auto name_value = [&](element v, const std::string& kp, std::string& name, std::string& value) {
    if (v.is_object()) {
      bool has_name = false, has_value = false;
      for_each_field(c, v, kp, [&](std::string_view nk, element nv, const std::string& nkp) {
        if (nk == "name") {
          if (get_string(c, nv, nkp, name)) {
            if (name.empty()) c.error(nkp, "expected a non-empty name");
            else has_name = true;
          }
        } else if (nk == "value") {
          has_value = get_string(c, nv, nkp, value);
        } else {
          return false;
        }
        return true;
      });
      if (!has_name && !c.has_error_under(kp + ".name")) c.error(kp, "missing required key \"name\"");
      if (!has_value && !c.has_error_under(kp + ".value")) c.error(kp, "missing required key \"value\"");
      return;
    }
    if (!v.is_string()) {
      c.error(kp, "expected \"NAME=VALUE\" or {\"name\": NAME, \"value\": VALUE}, got " + describe(v));
      return;
    }
    std::string t;
    if (!get_string(c, v, kp, t)) return;
    auto eq = t.find('=');
    if (eq == std::string::npos || eq == 0) {
      c.error(kp, fmt::format("expected \"NAME=VALUE\", got \"{}\"", t));
      return;
    }
    name = t.substr(0, eq);
    value = t.substr(eq + 1);
  };
  for_each_field(c, e, p, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "hits" && read_only_hits) {
      if (!v.is_uint64() && !v.is_int64())
        c.error(kp, "expected the rule's hit count (an integer), got " + describe(v));
      else if (v.is_int64() && v.get_int64().value_unsafe() < 0)
        c.error(kp, "expected the rule's hit count (an integer >= 0), got " + describe(v));
    } else if (k == "id") has_id = get_name(c, v, kp, r.id);
    else if (k == "upstream") has_up = get_name(c, v, kp, r.upstream);
    else if (k == "ip") {
      size_t n = 0;
      std::map<std::string, size_t> seen;  // a block -> where it was first given
      for_each_element(c, v, kp, [&](element item, const std::string& ip) {
        std::string t, why;
        core::Cidr cidr;
        ++n;
        if (!get_string(c, item, ip, t)) return;
        if (!core::parse_cidr(t, cidr, why)) {
          c.error(ip, why);
        } else if (auto [at, fresh] = seen.emplace(cidr.to_string(), n - 1); !fresh) {
          // Each copy would take a slot of shm.max_rule_cidrs, and match nothing more.
          c.error(ip, fmt::format("address block {} is given twice (also {}[{}])", at->first, kp, at->second));
        } else {
          r.cidrs.push_back(cidr);
        }
      });
      // No block would leave the rule without an address matcher: it would
      // match every client.
      if (n == 0 && v.is_array()) c.error(kp, "expected at least one address block, got []");
    } else if (k == "header") name_value(v, kp, r.header_name, r.header_value);
    else if (k == "cookie") name_value(v, kp, r.cookie_name, r.cookie_value);
    else if (k == "percent") {
      double f = -1;
      if (v.is_number()) f = v.get_double().value_unsafe();
      if (!shm::percent_to_bp(f, r.percent_bp))
        c.error(kp, "expected a number 0..100 in steps of 0.01, got " + describe(v));
    } else return false;
    return true;
  });
  if (!has_id && !c.has_error_under(p + ".id")) c.error(p, "missing required key \"id\"");
  if (!has_up && !c.has_error_under(p + ".upstream")) c.error(p, "missing required key \"upstream\"");
  if (c.has_error_under(p) || !has_id || !has_up) return;
  // A header or cookie that check_rule refuses is reported at its key: each
  // is checked alone first. What belongs to no one key stays at the rule.
  auto alone = [&](const char* key, auto set) {
    shm::RuleSpec one;
    one.id = r.id;
    one.upstream = r.upstream;
    set(one);
    if (auto why = shm::check_rule(one); !why.empty()) c.error(p + "." + key, why);
  };
  if (!r.header_name.empty())
    alone("header", [&](shm::RuleSpec& o) {
      o.header_name = r.header_name;
      o.header_value = r.header_value;
    });
  if (!r.cookie_name.empty())
    alone("cookie", [&](shm::RuleSpec& o) {
      o.cookie_name = r.cookie_name;
      o.cookie_value = r.cookie_value;
    });
  if (!c.has_error_under(p))
    if (auto why = shm::check_rule(r); !why.empty()) c.error(p, why);
}

// Why route host `h` (lower case) can never match, or "". The router matches
// the request's Host without its port and without one trailing dot (a
// bracketed IPv6 literal keeps its brackets), so a route host with either
// would hold a route, its auth and its limits that no request reaches.
std::string route_host_why(std::string_view h) {
  if (h == "*") return {};
  const std::string_view name = h.starts_with("*.") ? h.substr(2) : h;
  const auto expected = [&] { return fmt::format("expected a host name, \"*.suffix\" or \"*\", got \"{}\"", h); };
  if (name.empty() || name.size() >= 256) return expected();
  if (name.front() == '[') {
    // An IPv6 literal: "[" hex digits, ':' and '.' "]", and no wildcard.
    bool ok = name.size() == h.size() && name.size() > 2 && name.back() == ']';
    for (char ch : name.substr(1, name.size() - 2))
      ok &= (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || ch == ':' || ch == '.';
    if (ok) return {};
    if (name.find("]:") != std::string_view::npos)
      return fmt::format("expected a host without a port (requests are matched by their Host without it), got \"{}\"",
                         h);
    return fmt::format("expected a host name, \"*.suffix\", \"*\" or an IPv6 literal \"[::1]\", got \"{}\"", h);
  }
  for (char ch : name)
    if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' || ch == ':'))
      return expected();
  if (name.find(':') != std::string_view::npos)
    return fmt::format("expected a host without a port (requests are matched by their Host without it), got \"{}\"", h);
  if (name.back() == '.')
    return fmt::format(
        "expected a host without a trailing dot (requests are matched by their Host without it), got \"{}\"", h);
  if (const size_t b = name.find_first_not_of('.'); h.front() == '.' && b != std::string_view::npos)
    return fmt::format(
        "expected a host name, got \"{}\": a leading dot is not nginx's \"example.com and its subdomains\" here; "
        "write two routes, \"{}\" and \"*.{}\"",
        h, name.substr(b), name.substr(b));
  // Labels (RFC 1123 2.1): none empty, none starting or ending with '-'; no
  // Host a client sends has them (nginx refuses "a..b" with a 400).
  for (size_t at = 0; at <= name.size();) {
    const size_t dot = std::min(name.find('.', at), name.size());
    const std::string_view label = name.substr(at, dot - at);
    if (label.empty() || label.front() == '-' || label.back() == '-')
      return fmt::format("expected a host name, got \"{}\": label \"{}\" is {}", h, label,
                         label.empty() ? "empty" : "one starting or ending with '-'");
    at = dot + 1;
  }
  return {};
}

// Why route path `p` can never match, or "". Requests are matched by their
// path after normalize_path (src/proxy/http_proxy.cpp): %XX decoded, "//"
// merged, "." and ".." segments resolved; such a path never holds "//",
// "/./" or "/../". A final "." or ".." can still match as a prefix ("/a/."
// of "/a/.well-known"). A %XX escape is refused: "/%61dmin/" would never
// match "/admin/" (a request's %61 is decoded before matching). A '%' not
// followed by two hex digits is the decoded form of a request's "%25" and
// can match ("/100%/").
std::string route_path_why(std::string_view p) {
  // (A NUL byte too: a request's %00 is refused, so no path holds one.)
  if (p.empty() || p[0] != '/' || p.find_first_of(std::string_view(" \t\r\n?#\0", 7)) != std::string_view::npos ||
      p.size() > 1024)
    return fmt::format("expected a path prefix starting with / (no spaces, '?' or '#'), got \"{}\"", p);
  for (size_t i = p.find('%'); i != std::string_view::npos; i = p.find('%', i + 1))
    if (i + 2 < p.size() && std::isxdigit(static_cast<unsigned char>(p[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(p[i + 2])))
      return fmt::format(
          "expected a decoded path without %XX escapes (requests are matched after %XX decoding: write \"{}\" as the "
          "character it stands for), got \"{}\"",
          p.substr(i, 3), p);
  if (p.find("//") != std::string_view::npos || p.find("/./") != std::string_view::npos ||
      p.find("/../") != std::string_view::npos)
    return fmt::format(
        "expected a path without \"//\", \"/./\" or \"/../\" (requests are matched after these are "
        "resolved), got \"{}\"",
        p);
  return {};
}

// Whether `s` is a host name or IP literal with an optional ":port", fit for
// a Host field (no control characters, spaces, commas or non-ASCII bytes).
bool host_port_ok(std::string_view s) {
  if (s.empty() || s.size() > 255) return false;
  std::string_view host = s, port;
  if (s.front() == '[') {
    const auto close = s.find(']');
    if (close == std::string_view::npos || close < 3) return false;
    for (char ch : s.substr(1, close - 1))
      if (!std::isxdigit(static_cast<unsigned char>(ch)) && ch != ':' && ch != '.') return false;
    host = {};
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') return false;
      port = s.substr(close + 2);
      if (port.empty()) return false;
    }
  } else if (const auto colon = s.rfind(':'); colon != std::string_view::npos) {
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (host.empty() || port.empty()) return false;
  }
  for (char ch : host)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '.' && ch != '_') return false;
  if (!port.empty()) {
    uint32_t n = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
    if (ec != std::errc() || end != port.data() + port.size() || port.size() > 5 || n == 0 || n > 65535) return false;
  }
  return true;
}

void parse_routes(Ctx& c, element arr, const std::string& path, ListenerConf& l) {
  std::set<std::string> names;
  for_each_element(c, arr, path, [&](element e, const std::string& p) {
    RouteConf r;
    bool has_name = false, has_up = false;
    element rules;
    bool has_rules = false;
    for_each_field(c, e, p, [&](std::string_view k, element v, const std::string& kp) {
      if (k == "name") has_name = get_name(c, v, kp, r.name);
      else if (k == "upstream") has_up = get_name(c, v, kp, r.upstream);
      else if (k == "host") {
        if (get_string(c, v, kp, r.host)) {
          for (char& ch : r.host) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
          if (auto why = route_host_why(r.host); !why.empty()) c.error(kp, why);
        }
      } else if (k == "path") {
        if (get_string(c, v, kp, r.path))
          if (auto why = route_path_why(r.path); !why.empty()) c.error(kp, why);
      } else if (k == "hash_key") {
        std::string t, why;
        if (get_string(c, v, kp, t)) {
          r.hash_key_set = true;
          if (!parse_hash_key(t, r.hash_key, r.hash_key_name, why)) c.error(kp, why);
          else if (r.hash_key == HashKey::frame) c.error(kp, "\"frame\" needs \"protocol\": \"frame\"");
        }
      } else if (k == "set_host") {
        if (get_string(c, v, kp, r.set_host) && !host_port_ok(r.set_host))
          c.error(kp, fmt::format("expected a host name or IP literal with an optional :port for the Host header, "
                                  "got \"{}\"",
                                  r.set_host));
      } else if (k == "rules") {
        rules = v;
        has_rules = true;
      } else if (k == "limit_req") {
        parse_limit_req(c, v, kp, r.limit_req);
      } else if (k == "auth") {
        parse_auth(c, v, kp, r.auth);
      } else return false;
      return true;
    });
    if (!has_name && !c.has_error_under(p + ".name")) c.error(p, "missing required key \"name\"");
    if (!has_up && !c.has_error_under(p + ".upstream")) c.error(p, "missing required key \"upstream\"");
    if (has_name && !names.insert(r.name).second)
      c.error(p + ".name", fmt::format("duplicate route name \"{}\"", r.name));
    if (has_rules) {
      std::set<std::string> ids;
      for_each_element(c, rules, p + ".rules", [&](element re, const std::string& rp) {
        shm::RuleSpec rule;
        parse_rule(c, re, rp, rule);
        if (!rule.id.empty() && !ids.insert(rule.id).second)
          c.error(rp + ".id", fmt::format("duplicate rule id \"{}\" in route \"{}\"", rule.id, r.name));
        r.rules.push_back(std::move(rule));
      });
    }
    for (const auto& o : l.routes)
      if (o.host == r.host && o.path == r.path && has_name)
        c.error(p, fmt::format("route \"{}\" has the same host and path as route \"{}\"", r.name, o.name));
    l.routes.push_back(std::move(r));
  });
  if (l.routes.empty() && !c.has_error_under(path)) c.error(path, "expected at least one route");
}

void parse_listeners(Ctx& c, element arr, Config& cfg) {
  std::set<std::string> names;
  for_each_element(c, arr, "listeners", [&](element e, const std::string& p) {
    ListenerConf l;
    bool has_name = false, has_listen = false, has_up = false, has_frame = false, has_hash_key = false;
    bool has_http = false, has_routes = false;
    element frame, http, routes;
    for_each_field(c, e, p, [&](std::string_view k, element v, const std::string& kp) {
      if (k == "name") has_name = get_name(c, v, kp, l.name);
      else if (k == "listen") has_listen = get_listen_address(c, v, kp, l.listen);
      else if (k == "upstream") has_up = get_name(c, v, kp, l.upstream);
      else if (k == "backlog") get_i32(c, v, kp, 1, 65535, l.backlog);
      else if (k == "protocol") {
        std::string s;
        if (get_string(c, v, kp, s)) {
          if (s == "tcp") l.protocol = Protocol::tcp;
          else if (s == "frame") l.protocol = Protocol::frame;
          else if (s == "http") l.protocol = Protocol::http;
          else c.error(kp, fmt::format("expected \"tcp\", \"frame\" or \"http\", got \"{}\"", s));
        }
      } else if (k == "hash_key") {
        std::string s;
        std::string why;
        if (get_string(c, v, kp, s)) {
          has_hash_key = true;
          if (!parse_hash_key(s, l.hash_key, l.hash_key_name, why)) c.error(kp, why);
        }
      } else if (k == "on_host_remove") {
        std::string s;
        if (get_string(c, v, kp, s)) {
          if (s == "keep") l.close_on_host_remove = false;
          else if (s == "close") l.close_on_host_remove = true;
          else c.error(kp, fmt::format("expected \"keep\" or \"close\", got \"{}\"", s));
        }
      } else if (k == "frame") {
        frame = v;
        has_frame = true;
      } else if (k == "http") {
        http = v;
        has_http = true;
      } else if (k == "routes") {
        routes = v;
        has_routes = true;
      } else if (k == "access_log") {
        for_each_field(c, v, kp, [&](std::string_view ak, element av, const std::string& akp) {
          if (ak == "path") {
            if (get_c_string(c, av, akp, l.access_log.path) && l.access_log.path.empty())
              c.error(akp, "expected a file path, got \"\"");
          } else if (ak == "format") {
            std::string f;
            if (get_string(c, av, akp, f)) {
              if (f == "combined") l.access_log.format = 0;
              else if (f == "main") l.access_log.format = 1;
              else if (f == "json") l.access_log.format = 2;
              else c.error(akp, fmt::format("expected \"combined\", \"main\" or \"json\", got \"{}\"", f));
            }
          } else return false;
          return true;
        });
        if (l.access_log.path.empty() && !c.has_error_under(kp + ".path")) c.error(kp, "missing required key \"path\"");

      } else if (k == "limit_conn") {
        parse_limit_conn(c, v, kp, l.limit_conn);
      } else return false;
      return true;
    });
    if (!has_name && !c.has_error_under(p + ".name")) c.error(p, "missing required key \"name\"");
    if (!has_listen && !c.has_error_under(p + ".listen")) c.error(p, "missing required key \"listen\"");
    if (l.protocol == Protocol::http) {
      if (has_http) parse_http(c, http, p + ".http", l.http);
      if (has_routes && has_up)
        c.error(p + ".routes", "give either \"upstream\" (every request goes there) or \"routes\", not both");
      else if (has_routes) parse_routes(c, routes, p + ".routes", l);
      else if (has_up) {
        RouteConf r;
        r.name = "default";
        r.upstream = l.upstream;
        l.routes.push_back(std::move(r));
      } else if (!c.has_error_under(p + ".upstream") && !c.has_error_under(p + ".routes"))
        c.error(p, "missing required key \"upstream\" or \"routes\"");
      for (auto& r : l.routes)
        if (!r.hash_key_set) {
          r.hash_key = l.hash_key;
          r.hash_key_name = l.hash_key_name;
        }
    } else {
      if (!has_up && !c.has_error_under(p + ".upstream")) c.error(p, "missing required key \"upstream\"");
      if (has_http) c.error(p + ".http", "only a listener with \"protocol\": \"http\" takes http settings");
      if (has_routes) c.error(p + ".routes", "only a listener with \"protocol\": \"http\" has routes");
      if (l.hash_key != HashKey::ip && l.hash_key != HashKey::frame)
        c.error(p + ".hash_key",
                fmt::format("\"{}\" needs \"protocol\": \"http\"", hash_key_text(l.hash_key, l.hash_key_name)));
    }
    if (has_name && !names.insert(l.name).second)
      c.error(p + ".name", fmt::format("duplicate listener name \"{}\"", l.name));
    if (l.protocol == Protocol::frame) {
      if (has_frame) parse_frame(c, frame, p + ".frame", l.frame);
      cap_max_body(l.frame.spec);
      if (!has_hash_key) l.hash_key = HashKey::frame;
    } else {
      if (has_frame) c.error(p + ".frame", "only a listener with \"protocol\": \"frame\" takes frame settings");
      if (l.hash_key == HashKey::frame) c.error(p + ".hash_key", "\"frame\" needs \"protocol\": \"frame\"");
    }
    if (l.protocol == Protocol::frame && l.frame.mode == FrameMode::frame && l.hash_key != HashKey::frame)
      c.error(p + ".hash_key", "frame.mode \"frame\" routes each frame by its key; hash_key must be \"frame\"");
    l.stats_row = static_cast<uint32_t>(cfg.listeners.size());  // the master assigns the row it runs with
    cfg.listeners.push_back(std::move(l));
  });
}

void parse_cluster(Ctx& c, element e, const std::string& path, ClusterConf& cl) {
  cl.enabled = true;
  bool has_etcd = false;
  for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "etcd") {
      has_etcd = true;
      for_each_element(c, v, kp, [&](element u, const std::string& up) {
        std::string url, why;
        core::SockAddr addr;
        if (!get_string(c, u, up, url)) return;
        if (!core::parse_http_url(url, addr, why)) {
          c.error(up, fmt::format("{}, got \"{}\"", why, url));
          return;
        }
        for (const auto& a : cl.etcd_addrs)
          if (a == addr) c.error(up, fmt::format("endpoint {} is listed twice", url));
        if (!url.empty() && url.back() == '/') url.pop_back();
        cl.etcd.push_back(url);
        cl.etcd_addrs.push_back(addr);
      });
      if (!c.has_error_under(kp) && (cl.etcd.empty() || cl.etcd.size() > 16))
        c.error(kp, fmt::format("expected 1..16 endpoint URLs, got {}", cl.etcd.size()));
    } else if (k == "prefix") {
      if (get_string(c, v, kp, cl.prefix)) {
        bool ok =
            cl.prefix.size() >= 2 && cl.prefix.size() <= 128 && cl.prefix.front() == '/' && cl.prefix.back() == '/';
        for (char ch : cl.prefix) ok &= ch > ' ' && ch < 0x7f;
        if (!ok)
          c.error(kp, fmt::format("expected 2..128 printable characters without spaces, starting and ending with "
                                  "\"/\", got \"{}\"",
                                  cl.prefix));
      }
    } else if (k == "timeout_ms") get_u32(c, v, kp, 10, 60000, cl.timeout_ms);
    else if (k == "reconnect_max_ms") get_u32(c, v, kp, 100, 600000, cl.reconnect_max_ms);
    else return false;
    return true;
  });
  if (!has_etcd && !c.has_error_under(path)) c.error(path, "missing required key \"etcd\"");
}

void parse_admin(Ctx& c, element e, const std::string& path, AdminConf& a) {
  a.enabled = true;
  bool has_listen = false;
  for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "listen") {
      has_listen = get_listen_address(c, v, kp, a.listen);
    } else if (k == "token") {
      if (get_string(c, v, kp, a.token)) {
        bool ok = a.token.size() >= 16 && a.token.size() <= 256;
        for (char ch : a.token) ok &= ch > ' ' && ch < 0x7f;
        if (!ok) {
          c.error(kp, fmt::format("expected 16..256 printable ASCII characters without spaces, got {} character(s)",
                                  a.token.size()));
          a.token.clear();
        }
      }
    } else if (k == "timeout_ms") {
      get_u32(c, v, kp, 100, 3600000, a.timeout_ms);
    } else {
      return false;
    }
    return true;
  });
  if (!has_listen && !c.has_error_under(path + ".listen")) c.error(path, "missing required key \"listen\"");
}

void cross_check(Ctx& c, Config& cfg) {
  if (cfg.listeners.size() > shm::kMaxListeners)
    c.error("listeners", fmt::format("{} listeners are configured; at most {} are supported", cfg.listeners.size(),
                                     shm::kMaxListeners));
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const auto& l = cfg.listeners[i];
    // Every listener, one with routes (and no upstream) too: two on one
    // address passed -t, then failed the start, or split a reload's port.
    for (size_t j = 0; j < i; ++j)
      if (cfg.listeners[j].listen == l.listen && l.listen.family != 0)
        c.error(fmt::format("listeners[{}].listen", i),
                fmt::format("address {} is already used by listeners[{}]", l.listen.to_string(), j));
    if (l.upstream.empty()) continue;
    bool found = false;
    for (const auto& u : cfg.upstreams) found |= u.name == l.upstream;
    if (!found) c.error(fmt::format("listeners[{}].upstream", i), fmt::format("no upstream named \"{}\"", l.upstream));
    // A frame listener's upstream hashes with ketama unless a pool says
    // otherwise: the frame key, or with hash_key "ip" the client address.
    // Pools shared with tcp or http listeners get that default too (a pool
    // has one method).
    if (l.protocol == Protocol::frame)
      for (auto& u : cfg.upstreams)
        if (u.name == l.upstream)
          for (auto& p : u.pools)
            if (!p.method_set) p.method = shm::Method::chash;
  }
  if (cfg.admin.enabled && cfg.admin.listen.family != 0) {
    // The listeners' sockets are SO_REUSEPORT, the admin server's is not: it
    // cannot bind beside a listener on the same port and family where either
    // address is the wildcard (0.0.0.0:P and 127.0.0.1:P), as it cannot on
    // the very same address.
    auto wildcard = [](const core::SockAddr& a) {
      return std::all_of(a.ip, a.ip + (a.family == AF_INET6 ? 16 : 4), [](uint8_t b) { return b == 0; });
    };
    const core::SockAddr& al = cfg.admin.listen;
    for (size_t i = 0; i < cfg.listeners.size(); ++i) {
      const core::SockAddr& ll = cfg.listeners[i].listen;
      if (ll == al)
        c.error("admin.listen", fmt::format("address {} is already used by listeners[{}]", al.to_string(), i));
      else if (ll.family == al.family && ll.port == al.port && (wildcard(ll) || wildcard(al)))
        c.error("admin.listen",
                fmt::format("address {} overlaps listeners[{}] ({}): the wildcard address takes the port on every "
                            "address of its family",
                            al.to_string(), i, ll.to_string()));
    }
  }
  size_t routes = 0, rules = 0, cidrs = 0;
  auto upstream_known = [&](const std::string& name) {
    for (const auto& u : cfg.upstreams)
      if (u.name == name) return true;
    return false;
  };
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const auto& l = cfg.listeners[i];
    if (l.protocol != Protocol::http) continue;
    for (size_t r = 0; r < l.routes.size(); ++r) {
      const auto& rc = l.routes[r];
      ++routes;
      // The implicit route of `upstream` was checked above.
      if (!rc.upstream.empty() && !upstream_known(rc.upstream) &&
          !(rc.name == "default" && l.routes.size() == 1 && rc.upstream == l.upstream))
        c.error(fmt::format("listeners[{}].routes[{}].upstream", i, r),
                fmt::format("no upstream named \"{}\"", rc.upstream));
      for (size_t k = 0; k < rc.rules.size(); ++k) {
        ++rules;
        cidrs += rc.rules[k].cidrs.size();
        if (!rc.rules[k].upstream.empty() && !upstream_known(rc.rules[k].upstream))
          c.error(fmt::format("listeners[{}].routes[{}].rules[{}].upstream", i, r, k),
                  fmt::format("no upstream named \"{}\"", rc.rules[k].upstream));
      }
    }
  }
  size_t pools = 0, hosts = 0;
  for (const auto& u : cfg.upstreams) {
    pools += u.pools.size();
    for (const auto& p : u.pools) hosts += p.hosts.size();
  }
  const auto& caps = cfg.shm.caps;
  if (cfg.upstreams.size() > caps.max_upstreams)
    c.error("shm.max_upstreams", fmt::format("{} upstreams are configured, more than max_upstreams {}",
                                             cfg.upstreams.size(), caps.max_upstreams));
  if (pools > caps.max_pools)
    c.error("shm.max_pools", fmt::format("{} pools are configured, more than max_pools {}", pools, caps.max_pools));
  if (hosts > caps.max_hosts)
    c.error("shm.max_hosts", fmt::format("{} hosts are configured, more than max_hosts {}", hosts, caps.max_hosts));
  if (routes > caps.max_routes)
    c.error("shm.max_routes",
            fmt::format("{} routes are configured, more than max_routes {}", routes, caps.max_routes));
  if (rules > caps.max_rules)
    c.error("shm.max_rules", fmt::format("{} rules are configured, more than max_rules {}", rules, caps.max_rules));
  if (cidrs > caps.max_rule_cidrs)
    c.error("shm.max_rule_cidrs",
            fmt::format("{} address blocks are configured, more than max_rule_cidrs {}", cidrs, caps.max_rule_cidrs));
}

// The files gw writes, against each other and the config: passed -t, then
// failed every start (a log_file that is the state_file: the log's open made
// it empty), or wrote log lines into the config that the next reload read.
void check_files(Ctx& c, const Config& cfg) {
  namespace fs = std::filesystem;
  const auto same = [](const std::string& a, const std::string& b) {
    return !a.empty() && !b.empty() && fs::path(a).lexically_normal() == fs::path(b).lexically_normal();
  };
  if (!cfg.state_file.empty()) {
    // "dir/", "dir/." and "dir/..": a directory, which the start would make
    // and then find where the file should be.
    const std::string last = fs::path(cfg.state_file).filename().string();
    if (last.empty() || last == "." || last == "..")
      c.error("state_file", fmt::format("\"{}\" names a directory; give the file's path", cfg.state_file));
    // gw writes STATE.tmp.PID and STATE.before-GENERATION beside it.
    constexpr size_t kRoom = sizeof(".before-18446744073709551615") - 1;
    if (last.size() + kRoom > NAME_MAX)
      c.error("state_file", fmt::format("its file name is {} bytes; at most {} are supported (gw writes files named "
                                        "after it with up to {} more bytes beside it)",
                                        last.size(), NAME_MAX - kRoom, kRoom));
    if (same(cfg.state_file, cfg.path)) c.error("state_file", "is the config file itself");
    if (same(cfg.state_file, cfg.log_file)) c.error("state_file", "is the log_file too; they must be two files");
  }
  if (same(cfg.log_file, cfg.path)) c.error("log_file", "is the config file itself");
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const std::string& a = cfg.listeners[i].access_log.path;
    const std::string kp = fmt::format("listeners[{}].access_log.path", i);
    if (same(a, cfg.state_file)) c.error(kp, "is the state_file; they must be two files");
    if (same(a, cfg.path)) c.error(kp, "is the config file itself");
  }
}

LoadResult parse(const simdjson::padded_string& json, const std::string& path) {
  LoadResult r;
  Config& cfg = r.config;
  cfg.path = absolute(path);
  Ctx c;
  simdjson::dom::parser parser;
  element root;
  // A UTF-8 byte-order mark (some editors write one) is skipped, as nginx and
  // most JSON readers do; JSON text has none, but it carries no meaning.
  const size_t bom = std::string_view(json).starts_with("\xef\xbb\xbf") ? 3 : 0;
  const std::string_view text = std::string_view(json).substr(bom);
  if (auto err = parser.parse(text.data(), text.size(), false).get(root)) {
    const core::JsonError where = core::locate_json_error(text);
    // A BOM shifts no column: it is skipped before the scan, and takes none in an editor.
    r.errors.push_back(fmt::format("{}: {}", where.path.empty() ? "(document)" : where.path,
                                   core::json_error_text(where, simdjson::error_message(err))));
    return r;
  }
  if (!root.is_object()) {
    r.errors.push_back("(document): expected a JSON object at the top level");
    return r;
  }
  long ncpu = ::sysconf(_SC_NPROCESSORS_ONLN);
  // "auto": one worker per CPU, at most kMaxWorkers (the shm has that many worker rows).
  cfg.workers = static_cast<int>(std::clamp<long>(ncpu, 1, shm::kMaxWorkers));
  bool has_listeners = false, has_upstreams = false, has_worker_shutdown = false;
  element listeners, upstreams;
  for_each_field(c, root, "", [&](std::string_view k, element v, const std::string& kp) {
    if (k == "workers") {
      std::string_view s;
      if (v.get(s) == simdjson::SUCCESS) {
        if (s != "auto")
          c.error(kp, fmt::format("expected \"auto\" or an integer 1..{}, got \"{}\"", shm::kMaxWorkers, s));
      } else {
        uint32_t n = 0;
        if (get_u32(c, v, kp, 1, shm::kMaxWorkers, n, "\"auto\" or an integer")) cfg.workers = static_cast<int>(n);
      }
    } else if (k == "event_engine") {
      std::string s;
      if (get_string(c, v, kp, s)) {
        if (s == "epoll") cfg.event_engine = EventEngine::epoll;
        else if (s == "io_uring") cfg.event_engine = EventEngine::io_uring;
        else c.error(kp, fmt::format("expected \"epoll\" or \"io_uring\", got \"{}\"", s));
      }
    } else if (k == "splice_after_bytes") {
      get_u32(c, v, kp, 0, 1u << 30, cfg.splice_after_bytes);
    } else if (k == "log_file") {
      get_c_string(c, v, kp, cfg.log_file);
    } else if (k == "log_level") {
      std::string s;
      if (get_string(c, v, kp, s) && !core::parse_log_level(s, cfg.log_level))
        c.error(kp, fmt::format("expected one of debug, info, warn, error, got \"{}\"", s));
    } else if (k == "shutdown_timeout_ms") {
      get_u32(c, v, kp, 0, 86400000, cfg.shutdown_timeout_ms);
    } else if (k == "worker_shutdown_timeout_ms") {
      has_worker_shutdown = get_u32(c, v, kp, 0, 86400000, cfg.worker_shutdown_timeout_ms);
    } else if (k == "state_file") {
      get_c_string(c, v, kp, cfg.state_file);
    } else if (k == "shm") {
      for_each_field(c, v, kp, [&](std::string_view sk, element sv, const std::string& skp) {
        if (sk == "name") {
          std::string s;
          if (get_string(c, sv, skp, s)) {
            bool ok = !s.empty() && s.size() <= 200;
            for (char ch : s)
              ok &= (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                    ch == '_' || ch == '-';
            if (!ok) c.error(skp, fmt::format("expected 1..200 characters of [A-Za-z0-9._-], got \"{}\"", s));
            else if (s.ends_with(".lock") || s == "." || s == "..")
              // NAME.lock is the lock file of instance NAME, beside its segment.
              c.error(skp, fmt::format("\"{}\" is not a segment name (NAME.lock is the lock file of NAME)", s));
            else {
              cfg.shm.name = s;
              r.shm_name_given = true;
            }
          }
        } else if (sk == "max_upstreams") get_u32(c, sv, skp, 1, 65535, cfg.shm.caps.max_upstreams);
        else if (sk == "max_pools") get_u32(c, sv, skp, 1, 65535, cfg.shm.caps.max_pools);
        else if (sk == "max_hosts") get_u32(c, sv, skp, 1, 1u << 20, cfg.shm.caps.max_hosts);
        else if (sk == "max_routes") get_u32(c, sv, skp, 1, 65535, cfg.shm.caps.max_routes);
        else if (sk == "max_rules") get_u32(c, sv, skp, 1, 65535, cfg.shm.caps.max_rules);
        else if (sk == "max_rule_cidrs") get_u32(c, sv, skp, 1, 1u << 20, cfg.shm.caps.max_rule_cidrs);
        else if (sk == "max_consumers") get_u32(c, sv, skp, 1, 65535, cfg.shm.caps.max_consumers);
        else if (sk == "max_limit_keys") {
          if (get_u32(c, sv, skp, shm::kLimitWays, 1u << 24, cfg.shm.caps.max_limit_keys) &&
              cfg.shm.caps.max_limit_keys % shm::kLimitWays != 0)
            c.error(skp, fmt::format("expected a multiple of {} (the table is {}-way set associative), got {}",
                                     shm::kLimitWays, shm::kLimitWays, cfg.shm.caps.max_limit_keys));
        } else return false;
        return true;
      });
    } else if (k == "hooks") {
      for_each_field(c, v, kp, [&](std::string_view hk, element hv, const std::string& hkp) {
        if (hk == "host_down") get_c_string(c, hv, hkp, cfg.hook_host_down, "a shell command");
        else if (hk == "host_up") get_c_string(c, hv, hkp, cfg.hook_host_up, "a shell command");
        else return false;
        return true;
      });
    } else if (k == "cluster") {
      parse_cluster(c, v, kp, cfg.cluster);
    } else if (k == "consumers") {
      parse_consumers(c, v, kp, cfg.consumers);
    } else if (k == "admin") {
      parse_admin(c, v, kp, cfg.admin);
    } else if (k == "listeners") {
      listeners = v;
      has_listeners = true;
    } else if (k == "upstreams") {
      upstreams = v;
      has_upstreams = true;
    } else {
      return false;
    }
    return true;
  });
  if (!has_worker_shutdown) cfg.worker_shutdown_timeout_ms = cfg.shutdown_timeout_ms;
  if (has_upstreams) parse_upstreams(c, upstreams, cfg);
  else c.error("upstreams", "missing required key");
  if (has_listeners) parse_listeners(c, listeners, cfg);
  else c.error("listeners", "missing required key");
  cross_check(c, cfg);
  check_guard(c, cfg);
  cfg.state_file = absolute(cfg.state_file);
  if (cfg.state_file.size() >= shm::kPathCap)
    c.error("state_file", fmt::format("the absolute path is {} bytes; at most {} are supported", cfg.state_file.size(),
                                      shm::kPathCap - 1));
  cfg.log_file = absolute(cfg.log_file);
  for (auto& l : cfg.listeners) {
    if (l.access_log.path.empty()) continue;
    l.access_log.path = absolute(l.access_log.path);
    auto it = std::find(cfg.access_log_paths.begin(), cfg.access_log_paths.end(), l.access_log.path);
    l.access_log.file = static_cast<uint8_t>(it - cfg.access_log_paths.begin());
    if (it == cfg.access_log_paths.end()) cfg.access_log_paths.push_back(l.access_log.path);
  }
  if (cfg.access_log_paths.size() > 255) c.error("listeners", "more than 255 distinct access_log paths");
  check_files(c, cfg);
  // A duplicate "shm" or "name" key, or "shm" not an object: which name holds is unclear.
  if (c.has_error_under("shm.name") ||
      std::any_of(c.errors.begin(), c.errors.end(), [](const std::string& e) { return e.starts_with("shm: "); }))
    r.shm_name_given = false;
  r.cluster_given = !c.has_error_under("cluster");
  r.errors = std::move(c.errors);
  return r;
}

}  // namespace

void parse_rule_object(Ctx& c, simdjson::dom::element e, const std::string& path, shm::RuleSpec& r,
                       bool read_only_hits) {
  parse_rule(c, e, path, r, read_only_hits);
}

LoadResult load_string(const std::string& json, const std::string& path) {
  return parse(simdjson::padded_string(json), path);
}

LoadResult load_file(const std::string& path) {
  simdjson::padded_string json;
  if (auto err = simdjson::padded_string::load(path).get(json)) {
    LoadResult r;
    // simdjson says only "Error reading the file": the reason, from the system.
    std::string why = simdjson::error_message(err);
    struct stat st {};
    // (An open, not access(): a process out of descriptors gets EMFILE, and
    // said "Error reading the file".)
    if (::stat(path.c_str(), &st) != 0) why = std::strerror(errno);
    else if (S_ISDIR(st.st_mode)) why = "it is a directory";
    else if (const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC); fd < 0) why = std::strerror(errno);
    else ::close(fd);
    r.errors.push_back(fmt::format("(file): cannot read: {}", why));
    return r;
  }
  return parse(json, path);
}

shm::UpstreamRecord upstream_record(const UpstreamConf& u) {
  shm::UpstreamRecord r{};
  shm::set_name(r.name, u.name);
  r.connect_timeout_ms = u.connect_timeout_ms;
  r.idle_timeout_ms = u.idle_timeout_ms;
  r.max_fails = u.max_fails;
  r.fail_timeout_ms = u.fail_timeout_ms;
  r.tries = u.tries;
  r.retry_tries = static_cast<uint16_t>(u.retry.tries ? u.retry.tries : u.tries);
  r.check = u.check;
  r.slow_start_ms = u.slow_start_ms;
  r.balance_factor = static_cast<uint16_t>(u.balance_factor);
  return r;
}

void build_table(const Config& c, shm::Table& t) {
  t.clear();
  for (const auto& u : c.upstreams) {
    int ui = t.add_upstream(upstream_record(u));
    for (const auto& p : u.pools) {
      int pi = t.add_pool(ui, p.id, p.priority, p.method);
      for (const auto& h : p.hosts) t.add_host(pi, h.id, h.address, h.weight);
    }
  }
  for (const auto& l : c.listeners)
    for (const auto& r : l.routes) {
      int ri = t.add_route(l.name, r.name);
      for (const auto& rule : r.rules) t.add_rule(ri, rule);
    }
  for (const auto& cc : c.consumers) {
    uint8_t digest[shm::kSha256Len];
    if (!api::sha256(cc.key, digest)) throw shm::TableError("SHA-256 failed");
    t.add_consumer(cc.name, digest);
  }
}

std::string hash_key_text(HashKey k, const std::string& name) {
  switch (k) {
    case HashKey::ip: return "ip";
    case HashKey::frame: return "frame";
    case HashKey::header: return "header:" + name;
    case HashKey::cookie: return "cookie:" + name;
    case HashKey::arg: return "arg:" + name;
    case HashKey::uri: return "uri";
  }
  return "?";
}

bool parse_hash_key(std::string_view text, HashKey& kind, std::string& name, std::string& why) {
  name.clear();
  if (text == "ip") kind = HashKey::ip;
  else if (text == "frame") kind = HashKey::frame;
  else if (text == "uri") kind = HashKey::uri;
  else {
    auto colon = text.find(':');
    std::string_view prefix = text.substr(0, colon == std::string_view::npos ? text.size() : colon);
    std::string_view n = colon == std::string_view::npos ? std::string_view{} : text.substr(colon + 1);
    if (prefix == "header") kind = HashKey::header;
    else if (prefix == "cookie") kind = HashKey::cookie;
    else if (prefix == "arg") kind = HashKey::arg;
    else {
      why = fmt::format(
          "expected \"ip\", \"frame\", \"uri\", \"header:NAME\", \"cookie:NAME\" or \"arg:NAME\", got \"{}\"", text);
      return false;
    }
    bool ok = !n.empty() && n.size() <= 64;
    for (char ch : n)
      ok &= ch > 0x20 && ch < 0x7f && ch != ':' && ch != ';' && ch != '=' && ch != '&' && ch != ',' && ch != '"';
    if (!ok) {
      why = fmt::format("\"{}:\" needs a name of 1..64 visible characters (no : ; = & , \"), got \"{}\"", prefix, n);
      return false;
    }
    name = n;
  }
  return true;
}

}  // namespace gw::config

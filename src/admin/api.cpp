#include "gw/admin/api.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "config/json_util.hpp"
#include "gw/admin/prom.hpp"
#include "gw/admin/status.hpp"
#include "gw/api/hash.hpp"
#include "gw/config/api.hpp"
#include "gw/core/json_error.hpp"
#include "gw/core/log.hpp"
#include "gw/http/parser.hpp"
#include "gw/shm/ops.hpp"

namespace gw::admin {

bool constant_time_equal(std::string_view given, std::string_view secret) noexcept {
  // Every byte of the secret is looked at whatever `given` holds; the only
  // branch depends on given's length, which its sender knows anyway.
  volatile unsigned char diff = given.size() == secret.size() ? 0 : 1;
  for (size_t i = 0; i < secret.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff = static_cast<unsigned char>(diff | (g ^ static_cast<unsigned char>(secret[i])));
  }
  return diff == 0;
}

// ---------------------------------------------------------------- routing

namespace {

bool is_read(std::string_view m) {
  return m == "GET" || m == "HEAD";
}

// Decodes %XX; refuses bad escapes, NUL and '/' (a name never holds them).
bool decode_segment(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      auto hex = [](char h) -> int {
        if (h >= '0' && h <= '9') return h - '0';
        if (h >= 'a' && h <= 'f') return h - 'a' + 10;
        if (h >= 'A' && h <= 'F') return h - 'A' + 10;
        return -1;
      };
      if (i + 2 >= in.size()) return false;
      const int a = hex(in[i + 1]), b = hex(in[i + 2]);
      if (a < 0 || b < 0) return false;
      c = static_cast<char>(a * 16 + b);
      i += 2;
    }
    if (c == '\0' || c == '/') return false;
    out += c;
  }
  return !out.empty();
}

}  // namespace

RouteMatch route_request(std::string_view method, std::string_view path) {
  RouteMatch m;
  if (path == "*") {  // OPTIONS * (the parser takes "*" for OPTIONS only): what the server does
    m.endpoint = Endpoint::server;
    m.allow = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
    m.method_allowed = method == "OPTIONS";
    return m;
  }
  // RFC 3986 6.2.2: unreserved characters decoded, other escapes kept (hex in
  // upper case), so that "%2F" stays data; name segments are decoded below.
  std::string norm;
  norm.reserve(path.size());
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] != '%') {
      norm += path[i];
      continue;
    }
    auto hex = [](char h) -> int {
      if (h >= '0' && h <= '9') return h - '0';
      if (h >= 'a' && h <= 'f') return h - 'a' + 10;
      if (h >= 'A' && h <= 'F') return h - 'A' + 10;
      return -1;
    };
    const int a = i + 2 < path.size() ? hex(path[i + 1]) : -1, b = a < 0 ? -1 : hex(path[i + 2]);
    if (b < 0) {
      m.bad_path = true;
      m.bad_why = fmt::format("path \"{}\": a bad %-escape (% and two hex digits)", path);
      return m;
    }
    const char c = static_cast<char>(a * 16 + b);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
        c == '_' || c == '~') {
      norm += c;
    } else {
      constexpr char kHex[] = "0123456789ABCDEF";
      norm += '%';
      norm += kHex[a];
      norm += kHex[b];
    }
    i += 2;
  }
  path = norm;
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  std::string_view seg[8];
  size_t n = 0;
  if (path.empty() || path[0] != '/') return m;
  if (path != "/") {
    size_t i = 1;
    while (i <= path.size()) {
      size_t j = path.find('/', i);
      if (j == std::string_view::npos) j = path.size();
      if (n == std::size(seg)) return m;  // deeper than any endpoint
      seg[n++] = path.substr(i, j - i);
      i = j + 1;
    }
  }
  auto lit = [&](size_t i, std::string_view s) { return i < n && seg[i] == s; };
  auto param = [&](size_t i, size_t k) {
    if (m.bad_path) return;
    if (!decode_segment(seg[i], m.params[k])) {
      m.bad_path = true;
      m.bad_why = fmt::format("path segment \"{}\": a bad %-escape, an empty segment, NUL or /", seg[i]);
    } else if (std::string why = shm::check_name(m.params[k]); !why.empty()) {
      // Not a name any upstream, pool, host, listener, route, rule or
      // consumer can have: a 400 that says so, rather than a 404.
      m.bad_path = true;
      m.bad_why = fmt::format("path segment \"{}\" {}", m.params[k], why);
    }
  };
  const char* allow = "";
  if (n == 0) {
    m.endpoint = Endpoint::dashboard, allow = "GET, HEAD";
  } else if (n == 1 && lit(0, "metrics")) {
    m.endpoint = Endpoint::metrics, allow = "GET, HEAD";
  } else if (n == 1 && lit(0, "status")) {
    m.endpoint = Endpoint::status, allow = "GET, HEAD";
  } else if (n == 1 && lit(0, "events")) {
    m.endpoint = Endpoint::events, allow = "GET, HEAD";
  } else if (n == 1 && lit(0, "routes")) {
    m.endpoint = Endpoint::routes, allow = "GET, HEAD";
  } else if (lit(0, "upstreams")) {
    if (n >= 2) param(1, 0);
    if (n >= 4) param(3, 1);
    if (n >= 6) param(5, 2);
    if (n == 1) m.endpoint = Endpoint::upstreams, allow = "GET, HEAD";
    else if (n == 2) m.endpoint = Endpoint::upstream, allow = "GET, HEAD";
    else if (n == 3 && lit(2, "pools")) m.endpoint = Endpoint::pools, allow = "GET, HEAD, POST";
    else if (n == 4 && lit(2, "pools")) m.endpoint = Endpoint::pool, allow = "GET, HEAD, PUT, DELETE";
    else if (n == 5 && lit(2, "pools") && lit(4, "hosts")) m.endpoint = Endpoint::hosts, allow = "GET, HEAD, POST";
    else if (n == 6 && lit(2, "pools") && lit(4, "hosts"))
      m.endpoint = Endpoint::host, allow = "GET, HEAD, PUT, DELETE";
    else if (n == 7 && lit(2, "pools") && lit(4, "hosts") && lit(6, "down"))
      m.endpoint = Endpoint::host_down, allow = "POST";
    else if (n == 7 && lit(2, "pools") && lit(4, "hosts") && lit(6, "up"))
      m.endpoint = Endpoint::host_up, allow = "POST";
  } else if (lit(0, "consumers") && n <= 2) {
    if (n == 2) param(1, 0);
    if (n == 1) m.endpoint = Endpoint::consumers, allow = "GET, HEAD, POST";
    else m.endpoint = Endpoint::consumer, allow = "GET, HEAD, DELETE";
  } else if (lit(0, "listeners") && n >= 5 && lit(2, "routes") && lit(4, "rules")) {
    param(1, 0);
    param(3, 1);
    if (n == 6) param(5, 2);
    if (n == 5) m.endpoint = Endpoint::rules, allow = "GET, HEAD, POST";
    else if (n == 6) m.endpoint = Endpoint::rule, allow = "GET, HEAD, PUT, DELETE";
  }
  if (m.endpoint == Endpoint::not_found) {
    m.bad_path = false;
    return m;
  }
  m.allow = allow;
  // Is `method` one of the listed ones?
  std::string_view list = allow;
  while (!list.empty()) {
    size_t comma = list.find(", ");
    std::string_view item = list.substr(0, comma);
    if (item == method) m.method_allowed = true;
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 2);
  }
  m.write = m.method_allowed && !is_read(method);
  return m;
}

std::optional<std::string> query_arg(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view kv = query.substr(0, amp);
    size_t eq = kv.find('=');
    if (kv.substr(0, eq) == name) return std::string(eq == std::string_view::npos ? "" : kv.substr(eq + 1));
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- bodies

namespace {

using simdjson::dom::element;

std::string join_errors(const std::vector<std::string>& errors) {
  std::string out;
  for (const auto& e : errors) out += (out.empty() ? "" : "; ") + e;
  return out;
}

// Parses `json` into `root` (which needs `parser` alive); "" or the error.
std::string parse_object(simdjson::dom::parser& parser, std::string_view json, element& root) {
  if (json.empty()) return "body: expected a JSON object, got an empty body";
  simdjson::padded_string padded(json);
  if (auto err = parser.parse(padded).get(root)) {
    const core::JsonError where = core::locate_json_error(json);
    return fmt::format("{}: {}", where.path.empty() ? "body" : "body." + where.path,
                       core::json_error_text(where, simdjson::error_message(err)));
  }
  if (!root.is_object()) return "body: expected a JSON object, got " + config::describe(root);
  return "";
}

}  // namespace

namespace {

// A read-only field GET shows on a host (its state and counters): true if
// `k` is one, after checking that `v` has the type GET gives it.
bool host_read_only(config::Ctx& c, std::string_view k, element v, const std::string& kp) {
  if (k == "health") {
    if (!v.is_string()) c.error(kp, "expected the host's health (a string, read-only), got " + config::describe(v));
  } else if (k == "active" || k == "total" || k == "failures" || k == "status_failures" || k == "sent_bytes" ||
             k == "received_bytes") {
    if (!v.is_uint64()) c.error(kp, "expected a count (an integer >= 0, read-only), got " + config::describe(v));
  } else if (k == "responses") {
    if (!v.is_object()) c.error(kp, "expected the response counts (an object, read-only), got " + config::describe(v));
  } else {
    return false;
  }
  return true;
}

// One host object at `path` ({"id", "address", "weight"?, "admin"?} and
// GET's read-only fields).
void parse_host_object(config::Ctx& c, element e, const std::string& path, HostBody& out) {
  bool has_id = false, has_address = false;
  config::for_each_field(c, e, path, [&](std::string_view k, element v, const std::string& kp) {
    if (k == "id") has_id = config::get_name(c, v, kp, out.id);
    else if (k == "address") has_address = config::get_host_address(c, v, kp, out.address);
    else if (k == "weight") config::get_u32(c, v, kp, 0, shm::kMaxWeight, out.weight);
    else if (k == "admin") {
      std::string_view a;
      if (v.get(a) == simdjson::SUCCESS && (a == "up" || a == "down")) out.down = a == "down";
      else c.error(kp, "expected \"up\" or \"down\", got " + config::describe(v));
    } else return host_read_only(c, k, v, kp);
    return true;
  });
  if (!e.is_object()) return;
  if (!has_id && !c.has_error_under(path + ".id")) c.error(path, "missing required key \"id\"");
  if (!has_address && !c.has_error_under(path + ".address")) c.error(path, "missing required key \"address\"");
}

}  // namespace

std::string parse_host_body(std::string_view json, HostBody& out) {
  simdjson::dom::parser parser;
  element root;
  if (auto err = parse_object(parser, json, root); !err.empty()) return err;
  config::Ctx c;
  parse_host_object(c, root, "body", out);
  return join_errors(c.errors);
}

std::string parse_host_set_body(std::string_view json, std::string_view path_id, HostSetBody& out) {
  simdjson::dom::parser parser;
  element root;
  if (auto err = parse_object(parser, json, root); !err.empty()) return err;
  config::Ctx c;
  config::for_each_field(c, root, "body", [&](std::string_view k, element v, const std::string& kp) {
    if (k == "id") {
      std::string id;
      if (config::get_name(c, v, kp, id) && id != path_id)
        c.error(kp, fmt::format("\"{}\" differs from the host in the path, \"{}\"", id, path_id));
    } else if (k == "address") {
      core::SockAddr a;
      if (config::get_address(c, v, kp, a)) out.address = a;
    } else if (k == "weight") {
      uint32_t w = 0;
      if (config::get_u32(c, v, kp, 0, shm::kMaxWeight, w)) out.weight = w;
    } else if (k == "admin") {
      std::string_view a;
      if (v.get(a) == simdjson::SUCCESS && (a == "up" || a == "down")) out.down = a == "down";
      else c.error(kp, "expected \"up\" or \"down\", got " + config::describe(v));
    } else {
      return host_read_only(c, k, v, kp);
    }
    return true;
  });
  if (c.errors.empty() && !out.weight && !out.down)
    c.error("body", "nothing to change: give \"weight\" and/or \"admin\"");
  return join_errors(c.errors);
}

std::string parse_pool_body(std::string_view json, std::string_view path_id, PoolBody& out) {
  simdjson::dom::parser parser;
  element root;
  if (auto err = parse_object(parser, json, root); !err.empty()) return err;
  const bool add = path_id.empty();
  config::Ctx c;
  bool has_id = false;
  config::for_each_field(c, root, "body", [&](std::string_view k, element v, const std::string& kp) {
    if (k == "id") {
      has_id = config::get_name(c, v, kp, out.id);
      // set pool: the id is the path's; the body may repeat it (as GET shows it).
      if (has_id && !add && out.id != path_id)
        c.error(kp, fmt::format("\"{}\" differs from the pool in the path, \"{}\"", out.id, path_id));
    } else if (k == "priority") {
      int32_t p = 0;
      if (config::get_i32(c, v, kp, -1000000, 1000000, p)) out.priority = p;
    } else if (k == "method") {
      shm::Method m{};
      if (config::get_method(c, v, kp, m)) out.method = m;
    } else if (k == "hosts") {
      out.hosts.emplace();
      config::for_each_element(c, v, kp, [&](element item, const std::string& ip) {
        parse_host_object(c, item, ip, out.hosts->emplace_back());
      });
      if (add && !out.hosts->empty() && !c.has_error_under(kp))
        c.error(kp, "a new pool starts empty: add its hosts with POST .../hosts once it exists");
    } else {
      return false;
    }
    return true;
  });
  if (add && !has_id && !c.has_error_under("body.id")) c.error("body", "missing required key \"id\"");
  if (!add && c.errors.empty() && !out.priority && !out.method)
    c.error("body", "set pool needs \"priority\" and/or \"method\"");
  return join_errors(c.errors);
}

// Linear in the body and the table: the ids are looked up in hash maps (a
// walk of the body for each host, and of the table for each body entry, made
// a big pool's hosts sent back cost body x hosts). The first error is the one
// a walk in order finds: the body's entries in order (listed twice, then not
// the pool's), then the pool's hosts in table order (missing, then differing).
std::string check_pool_hosts(const shm::Table& t, int pool, const std::vector<HostBody>& body) {
  std::unordered_set<std::string_view> in_pool;
  for (const auto& h : t.hosts())
    if (h.pool == static_cast<uint32_t>(pool)) in_pool.insert(shm::name_of(h.id));
  std::unordered_map<std::string_view, const HostBody*> sent;
  sent.reserve(body.size());
  for (const HostBody& b : body) {
    if (!sent.emplace(b.id, &b).second) return fmt::format("body.hosts: host \"{}\" is listed twice", b.id);
    if (!in_pool.contains(b.id)) return fmt::format("body.hosts: the pool has no host \"{}\"", b.id);
  }
  for (const auto& h : t.hosts()) {
    if (h.pool != static_cast<uint32_t>(pool)) continue;
    const std::string_view id = shm::name_of(h.id);
    auto it = sent.find(id);
    if (it == sent.end()) return fmt::format("body.hosts: host \"{}\" is missing", id);
    const HostBody& b = *it->second;
    if (!(b.address == h.addr) || b.weight != h.weight || b.down != (h.admin_down != 0))
      return fmt::format("body.hosts: host \"{}\" is {} weight={} admin {} in the pool", id, h.addr.to_string(),
                         h.weight, h.admin_down ? "down" : "up");
  }
  return "";
}

std::string parse_consumer_body(std::string_view json, ConsumerBody& out) {
  simdjson::dom::parser parser;
  element root;
  if (auto err = parse_object(parser, json, root); !err.empty()) return err;
  config::Ctx c;
  bool has_name = false, has_key = false;
  config::for_each_field(c, root, "body", [&](std::string_view k, element v, const std::string& kp) {
    if (k == "name") {
      has_name = config::get_name(c, v, kp, out.name);
    } else if (k == "key") {
      if (config::get_string(c, v, kp, out.key)) {
        if (config::valid_api_key(out.key)) has_key = true;
        else c.error(kp, fmt::format("expected a key of 1..{} visible ASCII characters", config::kMaxApiKey));
      }
    } else {
      return false;
    }
    return true;
  });
  if (!has_name && !c.has_error_under("body.name")) c.error("body", "missing required key \"name\"");
  if (!has_key && !c.has_error_under("body.key")) c.error("body", "missing required key \"key\"");
  return join_errors(c.errors);
}

std::string parse_rule_body(std::string_view json, std::string_view path_id, shm::RuleSpec& out) {
  simdjson::dom::parser parser;
  element root;
  if (auto err = parse_object(parser, json, root); !err.empty()) return err;
  if (!path_id.empty()) {
    // set rule: the id is the path's; the body may repeat it.
    std::string_view id;
    if (root["id"].get(id) == simdjson::SUCCESS) {
      if (id != path_id) return fmt::format("body.id: \"{}\" differs from the rule in the path, \"{}\"", id, path_id);
    } else if (root["id"].error() != simdjson::NO_SUCH_FIELD) {
      return "body.id: expected a string, got " + config::describe(root["id"].value_unsafe());
    } else {
      // Parse a copy with the id added, so that the config's rule parser sees a whole rule.
      std::string copy(json);
      size_t brace = copy.find('{');
      copy.insert(brace + 1, fmt::format("\"id\": \"{}\"{}", json_escape(path_id),
                                         root.get_object().value_unsafe().size() ? ", " : ""));
      return parse_rule_body(copy, path_id, out);
    }
  }
  config::Ctx c;
  out = shm::RuleSpec{};
  config::parse_rule_object(c, root, "body", out, true);
  return join_errors(c.errors);
}

// ---------------------------------------------------------------- answers

TableRefused::TableRefused(const char* why) : std::runtime_error(why) {}

Response error_response(int status, std::string_view message) {
  Response r;
  r.status = status;
  r.body = fmt::format("{{\"error\": \"{}\"}}\n", json_escape(message));
  return r;
}

namespace {

Response json_response(int status, std::string body) {
  Response r;
  r.status = status;
  r.body = std::move(body);
  r.body += '\n';
  return r;
}

// "warning" only where the change left one (see shm::ops::Result).
Response done(int status, const shm::ops::Result& res) {
  std::string warning = res.warning.empty() ? "" : fmt::format(", \"warning\": \"{}\"", json_escape(res.warning));
  return json_response(status,
                       fmt::format("{{\"ok\": true, \"changed\": {}, \"message\": \"{}\", \"generation\": {}{}}}",
                                   res.changed ? "true" : "false", json_escape(res.what), res.generation, warning));
}

// 201 for an added resource, with its path as Location (RFC 9110 15.3.2).
// Names hold only letters, digits and . _ - : (shm::check_name), none of
// which needs escaping in a path segment.
Response created(std::string location, const shm::ops::Result& res) {
  Response r = done(201, res);
  r.location = std::move(location);
  return r;
}

int status_of(shm::TableError::Kind k) {
  switch (k) {
    case shm::TableError::Kind::not_found: return 404;
    case shm::TableError::Kind::exists:
    case shm::TableError::Kind::not_empty:
    case shm::TableError::Kind::refused: return 409;
    case shm::TableError::Kind::full: return 507;
    case shm::TableError::Kind::invalid: return 400;
  }
  return 400;
}

}  // namespace

Api::Api(const shm::Segment& seg, const config::Config& cfg)
    : seg_(seg), cfg_(cfg), table_(std::make_unique<shm::Table>(seg.caps())) {}

Api::~Api() = default;

const shm::Table& Api::table() {
  const char* refused = nullptr;
  shm::read_published(seg_, *table_, &refused);
  // A table that fails validation is not served as an empty one (every
  // upstream "unknown", an empty status): the caller answers 503.
  if (refused) throw TableRefused(refused);
  return *table_;
}

namespace {
std::pair<std::string_view, std::string_view> split_target(std::string_view target) {
  std::string_view path = target, query;
  if (auto q = path.find('?'); q != std::string_view::npos) {
    query = path.substr(q + 1);
    path = path.substr(0, q);
  }
  return {path, query};
}

// The query arguments a read takes: GET /events its since and limit, the
// other reads none. Any other (a typo, "?sinse=5") or one given twice would
// otherwise be dropped and the answer given as if it were not there: a 400
// that names it. Empty parts ("?", "&&") are no arguments.
std::optional<Response> check_read_query(std::string_view method, std::string_view path, Endpoint e,
                                         std::string_view query) {
  const bool events = e == Endpoint::events;
  bool seen_since = false, seen_limit = false;
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view kv = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (kv.empty()) continue;
    const std::string_view name = kv.substr(0, kv.find('='));
    bool* seen = !events ? nullptr : name == "since" ? &seen_since : name == "limit" ? &seen_limit : nullptr;
    if (!seen)
      return error_response(400, fmt::format("{} {}: unknown query argument \"{}\" (it takes {})", method, path, name,
                                             events ? "since, limit" : "none"));
    if (*seen) return error_response(400, fmt::format("{} {}: query argument \"{}\" given twice", method, path, name));
    *seen = true;
  }
  return std::nullopt;
}
}  // namespace

std::optional<Response> Api::precheck(const Request& r) {
  try {
    const auto [path, query] = split_target(r.target);
    return precheck(r, route_request(r.method, path), path, query);
  } catch (const std::exception& e) {
    return error_response(500, e.what());
  }
}

std::optional<Response> Api::precheck(const Request& r, const RouteMatch& m, std::string_view path,
                                      std::string_view query) const {
  if (m.bad_path) return error_response(400, m.bad_why);  // a bad escape: before knowing the endpoint
  if (m.endpoint == Endpoint::not_found) return error_response(404, fmt::format("no such endpoint: {}", path));
  if (!m.method_allowed) {
    Response e =
        error_response(405, fmt::format("method {} is not allowed on {} (allowed: {})", r.method, path, m.allow));
    e.allow = m.allow;
    return e;
  }
  if (!m.write) return check_read_query(r.method, path, m.endpoint, query);
  // Writes: the token.
  if (cfg_.admin.token.empty())
    return error_response(403, "writes are disabled: the gateway's config has no admin.token");
  std::string_view auth = r.authorization;
  auto sp = auth.find(' ');
  std::string_view scheme = auth.substr(0, sp);
  std::string_view given = sp == std::string_view::npos ? std::string_view() : auth.substr(sp + 1);
  while (!given.empty() && (given.front() == ' ' || given.front() == '\t')) given.remove_prefix(1);
  const bool bearer = http::iequals(scheme, "Bearer");
  if (auth.empty() || !bearer || given.empty()) {
    Response e = error_response(401, "this needs the admin token: send Authorization: Bearer TOKEN");
    e.www_authenticate = "Bearer realm=\"gw\"";
    return e;
  }
  if (!constant_time_equal(given, cfg_.admin.token)) {
    Response e = error_response(401, "invalid admin token");
    e.www_authenticate = "Bearer realm=\"gw\", error=\"invalid_token\"";
    return e;
  }
  // No write takes arguments in its URL: a "?dry_run=1" or "?weight=0" would
  // otherwise be dropped and the change made as if it were not there.
  if (r.target.find('?') != std::string_view::npos)
    return error_response(400, fmt::format("a write takes no query string (got \"?{}\"): the change goes in the "
                                           "path and the JSON body",
                                           query));
  return std::nullopt;
}

Response Api::handle(const Request& r) {
  try {
    const auto [path, query] = split_target(r.target);
    RouteMatch m = route_request(r.method, path);
    if (std::optional<Response> refused = precheck(r, m, path, query)) return std::move(*refused);
    if (!m.write) return read(m, query);
    // A write to a table that fails validation is refused as a read is (503,
    // TableRefused), not left to the writer's refusal (a 500).
    table();
    return write(r, m);
  } catch (const shm::TableError& e) {
    return error_response(status_of(e.kind()), e.what());
  } catch (const TableRefused& e) {
    GW_LOG_ERROR("admin: {} {}: the shm table is refused: {}", r.method, r.target, e.what());
    return error_response(503, fmt::format("the gateway's shm table fails validation: {}", e.what()));
  } catch (const shm::WriterLockTimeout& e) {
    GW_LOG_ERROR("admin: {} {}: {}", r.method, r.target, e.what());
    Response rs = error_response(503, fmt::format("{}; the change was not made, try again", e.what()));
    rs.retry_after = "1";
    return rs;
  } catch (const std::exception& e) {
    GW_LOG_ERROR("admin: {} {}: {}", r.method, r.target, e.what());
    return error_response(500, e.what());
  }
}

Response Api::read(const RouteMatch& m, std::string_view query) {
  const auto& p = m.params;
  switch (m.endpoint) {
    case Endpoint::server: {  // OPTIONS *: no content, the methods in Allow
      Response r;
      r.content_type = "text/plain";
      r.allow = m.allow;
      return r;
    }
    case Endpoint::dashboard: {
      Response r;
      r.content_type = "text/html; charset=utf-8";
      r.body = dashboard_html();
      return r;
    }
    case Endpoint::metrics: {
      Response r;
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = metrics_text(seg_, table(), cfg_);
      return r;
    }
    case Endpoint::status: return json_response(200, status_json(seg_, table()));
    case Endpoint::events: {
      uint64_t since = 0;
      uint32_t limit = 1000;
      auto num = [](const std::optional<std::string>& s, uint64_t& out, uint64_t max) {
        if (!s) return true;
        uint64_t v = 0;
        auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), v);
        if (s->empty() || ec != std::errc() || end != s->data() + s->size() || v > max) return false;
        out = v;
        return true;
      };
      uint64_t lim = limit;
      if (!num(query_arg(query, "since"), since, ~0ull))
        return error_response(400, "since must be an event sequence number (an integer)");
      if (!num(query_arg(query, "limit"), lim, shm::kEventCapacity) || lim == 0)
        return error_response(400, fmt::format("limit must be an integer 1..{}", shm::kEventCapacity));
      return json_response(200, events_json(seg_, since, static_cast<uint32_t>(lim)));
    }
    case Endpoint::upstreams: {
      const auto& t = table();
      std::string j = "{\"upstreams\": [";
      for (size_t u = 0; u < t.upstreams().size(); ++u)
        j += (u ? ", " : "") + upstream_json(seg_, t, static_cast<int>(u));
      return json_response(200, j + "]}");
    }
    case Endpoint::upstream: {
      const auto& t = table();
      return json_response(200, upstream_json(seg_, t, shm::ops::find_upstream(t, p[0])));
    }
    case Endpoint::pools: {
      const auto& t = table();
      const int u = shm::ops::find_upstream(t, p[0]);
      std::string j = "{\"pools\": [";
      bool first = true;
      for (size_t i = 0; i < t.pools().size(); ++i) {
        if (t.pools()[i].upstream != static_cast<uint32_t>(u)) continue;
        j += (first ? "" : ", ") + pool_json(seg_, t, static_cast<int>(i));
        first = false;
      }
      return json_response(200, j + "]}");
    }
    case Endpoint::pool: {
      const auto& t = table();
      return json_response(200, pool_json(seg_, t, shm::ops::find_pool(t, p[0], p[1])));
    }
    case Endpoint::hosts: {
      const auto& t = table();
      const int pool = shm::ops::find_pool(t, p[0], p[1]);
      std::string j = "{\"hosts\": [";
      bool first = true;
      for (size_t i = 0; i < t.hosts().size(); ++i) {
        if (t.hosts()[i].pool != static_cast<uint32_t>(pool)) continue;
        j += (first ? "" : ", ") + host_json(seg_, t, static_cast<int>(i));
        first = false;
      }
      return json_response(200, j + "]}");
    }
    case Endpoint::host: {
      const auto& t = table();
      return json_response(200, host_json(seg_, t, shm::ops::find_host(t, p[0], p[1], p[2])));
    }
    case Endpoint::routes: {
      const auto& t = table();
      std::string j = "{\"routes\": [";
      for (size_t r = 0; r < t.routes().size(); ++r) j += (r ? ", " : "") + route_json(seg_, t, static_cast<int>(r));
      return json_response(200, j + "]}");
    }
    case Endpoint::rules: {
      const auto& t = table();
      return json_response(200, route_json(seg_, t, shm::ops::find_route(t, p[0], p[1])));
    }
    case Endpoint::rule: {
      const auto& t = table();
      return json_response(200, rule_json(seg_, t, shm::ops::find_rule(t, p[0], p[1], p[2])));
    }
    case Endpoint::consumers: {  // names only: keys are kept as SHA-256 hashes
      const auto& t = table();
      std::string j = "{\"consumers\": [";
      for (size_t i = 0; i < t.consumers().size(); ++i)
        j += fmt::format("{}{{\"name\": \"{}\"}}", i ? ", " : "", json_escape(shm::name_of(t.consumers()[i].name)));
      return json_response(200, j + "]}");
    }
    case Endpoint::consumer: {
      const auto& t = table();
      if (t.find_consumer(p[0]) < 0)
        throw shm::TableError(fmt::format("unknown consumer \"{}\"", p[0]), shm::TableError::Kind::not_found);
      return json_response(200, fmt::format("{{\"name\": \"{}\"}}", json_escape(p[0])));
    }
    default: break;
  }
  return error_response(404, "no such endpoint");
}

Response Api::write(const Request& r, const RouteMatch& m) {
  const auto& p = m.params;
  const bool del = r.method == "DELETE";
  // A DELETE and POST .../down or .../up take no body: one sent with them
  // ({"dry_run": true}, {"weight": 0}) would be dropped without a word, as a
  // query string would (refused the same way).
  if ((del || m.endpoint == Endpoint::host_down || m.endpoint == Endpoint::host_up) && !r.body.empty())
    return error_response(400, fmt::format("{} {} takes no body (got {} bytes)", r.method, r.target, r.body.size()));
  switch (m.endpoint) {
    case Endpoint::pools: {  // POST: add pool
      PoolBody b;
      if (auto err = parse_pool_body(r.body, "", b); !err.empty()) return error_response(400, err);
      return created(
          fmt::format("/upstreams/{}/pools/{}", p[0], b.id),
          shm::ops::add_pool(seg_, p[0], b.id, b.priority.value_or(0), b.method.value_or(shm::Method::round_robin)));
    }
    case Endpoint::pool: {
      if (del) return done(200, shm::ops::remove_pool(seg_, p[0], p[1]));
      PoolBody b;
      if (auto err = parse_pool_body(r.body, p[1], b); !err.empty()) return error_response(400, err);
      if (b.hosts) {
        // GET's "hosts", sent back: they must be the pool's, so that an edit
        // of them is refused rather than dropped. (Checked before the commit:
        // set pool does not touch the hosts, so a host changed meanwhile
        // loses nothing.)
        const auto& t = table();
        if (auto err = check_pool_hosts(t, shm::ops::find_pool(t, p[0], p[1]), *b.hosts); !err.empty())
          return error_response(
              400, fmt::format("{}; a pool's hosts change through /upstreams/{}/pools/{}/hosts: leave \"hosts\" out "
                               "or send them as GET shows them",
                               err, p[0], p[1]));
      }
      return done(200, shm::ops::set_pool(seg_, p[0], p[1], b.priority, b.method));
    }
    case Endpoint::hosts: {  // POST: add host
      HostBody b;
      if (auto err = parse_host_body(r.body, b); !err.empty()) return error_response(400, err);
      return created(fmt::format("/upstreams/{}/pools/{}/hosts/{}", p[0], p[1], b.id),
                     shm::ops::add_host(seg_, p[0], p[1], b.id, b.address, b.weight, b.down));
    }
    case Endpoint::host: {
      if (del) return done(200, shm::ops::remove_host(seg_, p[0], p[1], p[2]));
      HostSetBody b;
      if (auto err = parse_host_set_body(r.body, p[2], b); !err.empty()) return error_response(400, err);
      if (b.address) {
        // GET's "address", sent back: it must be the host's (an address does
        // not change in place: remove the host and add it).
        const auto& t = table();
        const auto& h = t.hosts()[static_cast<size_t>(shm::ops::find_host(t, p[0], p[1], p[2]))];
        if (h.addr.to_string() != b.address->to_string())
          return error_response(400, fmt::format("body.address: {} is not the host's address ({}): an address does "
                                                 "not change in place; remove the host and add it",
                                                 b.address->to_string(), h.addr.to_string()));
      }
      return done(200, shm::ops::set_host(seg_, p[0], p[1], p[2], b.weight, b.down, "api"));
    }
    case Endpoint::host_down:
    case Endpoint::host_up:
      return done(200, shm::ops::set_host_down(seg_, p[0], p[1], p[2], m.endpoint == Endpoint::host_down, "api"));
    case Endpoint::consumers: {  // POST: add consumer (only the key's SHA-256 is kept)
      ConsumerBody b;
      if (auto err = parse_consumer_body(r.body, b); !err.empty()) return error_response(400, err);
      uint8_t digest[shm::kSha256Len];
      if (!api::sha256(b.key, digest)) return error_response(500, "SHA-256 failed");
      return created(fmt::format("/consumers/{}", b.name), shm::ops::add_consumer(seg_, b.name, digest));
    }
    case Endpoint::consumer:  // DELETE
      return done(200, shm::ops::remove_consumer(seg_, p[0]));
    case Endpoint::rules: {  // POST: add rule
      shm::RuleSpec spec;
      if (auto err = parse_rule_body(r.body, "", spec); !err.empty()) return error_response(400, err);
      return created(fmt::format("/listeners/{}/routes/{}/rules/{}", p[0], p[1], spec.id),
                     shm::ops::add_rule(seg_, p[0], p[1], spec));
    }
    case Endpoint::rule: {
      if (del) return done(200, shm::ops::remove_rule(seg_, p[0], p[1], p[2]));
      shm::RuleSpec spec;
      if (auto err = parse_rule_body(r.body, p[2], spec); !err.empty()) return error_response(400, err);
      return done(200, shm::ops::set_rule(seg_, p[0], p[1], spec));
    }
    default: break;
  }
  return error_response(405, "not a write endpoint");
}

}  // namespace gw::admin

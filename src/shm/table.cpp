#include "gw/shm/table.hpp"

#include <arpa/inet.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gw/core/utf8.hpp"

namespace gw::shm {

namespace {
constexpr const char* kMethodNames[kMethodCount] = {"round_robin", "chash",         "hash",   "crc32_mod", "maglev",
                                                    "least_conn",  "least_request", "random", "ewma"};
}  // namespace

bool parse_method(std::string_view name, Method& out) {
  for (int i = 0; i < kMethodCount; ++i)
    if (name == kMethodNames[i]) {
      out = static_cast<Method>(i);
      return true;
    }
  return false;
}

const char* check_host_error(std::string_view h) noexcept {
  if (h.empty()) return "is empty";
  if (h.size() > kCheckHostMax) return "is too long";
  std::string_view name = h, port;
  if (h.front() == '[') {
    const size_t close = h.find(']');
    if (close == std::string_view::npos) return "has a '[' without its ']'";
    name = h.substr(0, close + 1);
    const std::string_view rest = h.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return "has something other than :port after the ']'";
      port = rest.substr(1);
      if (port.empty()) return "has an empty port";
    }
    // The address alone (RFC 3986's IPvFuture and RFC 6874's zone ids are not taken).
    char ip[64] = {};
    const std::string_view inner = name.substr(1, name.size() - 2);
    unsigned char buf[16];
    if (inner.size() >= sizeof(ip)) return "has an invalid IPv6 address in brackets";
    std::memcpy(ip, inner.data(), inner.size());
    if (::inet_pton(AF_INET6, ip, buf) != 1) return "has an invalid IPv6 address in brackets";
  } else {
    if (const size_t colon = h.rfind(':'); colon != std::string_view::npos) {
      name = h.substr(0, colon);
      port = h.substr(colon + 1);
      if (name.find(':') != std::string_view::npos) return "has more than one ':' (an IPv6 address goes in brackets)";
      if (port.empty()) return "has an empty port";
    }
    if (name.empty()) return "has an empty host name";
    auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); };
    for (size_t i = 0; i < name.size(); ++i) {
      const char c = name[i];
      if (c == '%') {
        if (i + 2 >= name.size() || !hex(name[i + 1]) || !hex(name[i + 2]))
          return "has a '%' not followed by two hex digits";
        i += 2;
        continue;
      }
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      std::string_view("-._~!$&'()*+,;=").find(c) != std::string_view::npos;
      if (!ok) return "has a character a host name cannot have (letters, digits and -._~!$&'()*+,;= or %XX)";
    }
  }
  if (!port.empty()) {
    if (port.size() > 5) return "has a port out of range (1..65535)";
    uint32_t n = 0;
    for (char c : port) {
      if (c < '0' || c > '9') return "has a port that is not a number";
      n = n * 10 + static_cast<uint32_t>(c - '0');
    }
    if (n < 1 || n > 65535) return "has a port out of range (1..65535)";
  }
  return nullptr;
}

const char* method_name(Method m) {
  auto i = static_cast<int>(m);
  return i < kMethodCount ? kMethodNames[i] : "unknown";
}

std::string method_names() {
  std::string out;
  for (int i = 0; i < kMethodCount; ++i) out += (i ? ", " : "") + std::string(kMethodNames[i]);
  return out;
}

std::string check_name(std::string_view s) {
  if (s.empty()) return "must not be empty";
  if (s.size() >= kNameCap) return fmt::format("longer than {} bytes", kNameCap - 1);
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-' || c == ':';
    if (!ok) return "may contain only letters, digits and . _ - :";
  }
  return {};
}

std::string check_new_name(std::string_view s) {
  if (s == "." || s == "..") return "must not be \".\" or \"..\" (no admin API URL path can name it)";
  return check_name(s);
}

void set_name(char (&dst)[kNameCap], std::string_view src) noexcept {
  std::memset(dst, 0, kNameCap);
  std::memcpy(dst, src.data(), std::min(src.size(), kNameCap - 1));
}

size_t Table::bytes_for(const Caps& c) noexcept {
  return sizeof(TableHeader) + sizeof(UpstreamRecord) * c.max_upstreams + sizeof(PoolRecord) * c.max_pools +
         sizeof(HostRecord) * c.max_hosts + sizeof(RouteRecord) * c.max_routes + sizeof(RuleRecord) * c.max_rules +
         sizeof(core::Cidr) * c.max_rule_cidrs + sizeof(ConsumerRecord) * c.max_consumers;
}

Table::Table(Caps caps) : caps_(caps), words_(bytes_for(caps) / 8, 0) {
  reinterpret_cast<TableHeader*>(words_.data())->next_tag = 1;  // the vector is never empty
}

UpstreamRecord* Table::ups_() const noexcept {
  auto* base = reinterpret_cast<char*>(const_cast<uint64_t*>(words_.data()));
  return reinterpret_cast<UpstreamRecord*>(base + sizeof(TableHeader));
}
PoolRecord* Table::pools_() const noexcept {
  return reinterpret_cast<PoolRecord*>(ups_() + caps_.max_upstreams);
}
HostRecord* Table::hosts_() const noexcept {
  return reinterpret_cast<HostRecord*>(pools_() + caps_.max_pools);
}

RouteRecord* Table::routes_() const noexcept {
  return reinterpret_cast<RouteRecord*>(hosts_() + caps_.max_hosts);
}
RuleRecord* Table::rules_() const noexcept {
  return reinterpret_cast<RuleRecord*>(routes_() + caps_.max_routes);
}
core::Cidr* Table::cidrs_() const noexcept {
  return reinterpret_cast<core::Cidr*>(rules_() + caps_.max_rules);
}
ConsumerRecord* Table::consumers_() const noexcept {
  return reinterpret_cast<ConsumerRecord*>(cidrs_() + caps_.max_rule_cidrs);
}

void Table::clear() noexcept {
  std::fill(words_.begin(), words_.end(), 0);
  header().next_tag = 1;
}

namespace {

// check_name() without allocating: 1..47 bytes of [A-Za-z0-9._:-], NUL-terminated.
bool valid_name(const char (&f)[kNameCap]) noexcept {
  size_t n = 0;
  for (; n < kNameCap && f[n] != '\0'; ++n) {
    const char c = f[n];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-' || c == ':';
    if (!ok) return false;
  }
  return n > 0 && n < kNameCap;
}

bool is_token_char(unsigned char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != '\0' && std::strchr("!#$%&'*+-.^_`|~", c) != nullptr);
}

// A matcher's field name (a token, NUL-terminated) as check_rule() wants it.
bool valid_token(const char (&f)[kNameCap]) noexcept {
  size_t n = 0;
  for (; n < kNameCap && f[n] != '\0'; ++n)
    if (!is_token_char(static_cast<unsigned char>(f[n]))) return false;
  return n > 0 && n < kNameCap;
}

// A matcher's value: NUL-terminated, no control characters, UTF-8 (check_value()).
bool valid_value(const char (&f)[kRuleValueCap]) noexcept {
  for (size_t n = 0; n < kRuleValueCap; ++n) {
    const auto c = static_cast<unsigned char>(f[n]);
    if (c == 0) return core::utf8_valid(std::string_view(f, n));
    if (c < 0x20 || c == 0x7f) return false;
  }
  return false;
}

}  // namespace

const char* validate_table(const Table& t) noexcept {
  const TableHeader& h = t.header();
  const Caps& c = t.caps();
  if (h.n_upstreams > c.max_upstreams || h.n_pools > c.max_pools || h.n_hosts > c.max_hosts ||
      h.n_routes > c.max_routes || h.n_rules > c.max_rules || h.n_cidrs > c.max_rule_cidrs ||
      h.n_consumers > c.max_consumers)
    return "a record count exceeds its capacity";
  for (const auto& u : t.upstreams()) {
    if (!valid_name(u.name)) return "an upstream name is not a valid name";
    if (u.check.type > kCheckHttp) return "an upstream has an unknown health check type";
    if (::strnlen(u.check.path, sizeof(u.check.path)) == sizeof(u.check.path))
      return "an upstream's health check path is not terminated";
    if (const size_t n = ::strnlen(u.check.host, sizeof(u.check.host)); n == sizeof(u.check.host))
      return "an upstream's health check host is not terminated";
    else if (n > 0 && check_host_error({u.check.host, n}))
      return "an upstream's health check host is not a valid Host header";
  }
  for (const auto& p : t.pools()) {
    if (!valid_name(p.id)) return "a pool id is not a valid name";
    if (p.upstream >= h.n_upstreams) return "a pool names an upstream that does not exist";
    if (p.method >= kMethodCount) return "a pool has an unknown balancing method";
  }
  for (const auto& x : t.hosts()) {
    if (!valid_name(x.id)) return "a host id is not a valid name";
    if (x.pool >= h.n_pools) return "a host names a pool that does not exist";
    if (x.slot >= c.max_hosts) return "a host's runtime slot is out of range";
    if (x.weight > kMaxWeight) return "a host's weight is out of range";
  }
  for (const auto& r : t.routes())
    if (!valid_name(r.listener) || !valid_name(r.name)) return "a route's listener or name is not a valid name";
  for (const auto& r : t.rules()) {
    if (!valid_name(r.id) || !valid_name(r.upstream)) return "a rule's id or upstream is not a valid name";
    if (r.route >= h.n_routes) return "a rule names a route that does not exist";
    if (r.match == 0 || (r.match & ~(kMatchIp | kMatchHeader | kMatchCookie | kMatchPercent)) != 0)
      return "a rule has no matcher or an unknown one";
    if (uint64_t{r.first_cidr} + r.n_cidrs > h.n_cidrs) return "a rule's address blocks are out of range";
    if ((r.match & kMatchIp) && r.n_cidrs == 0) return "a rule's address matcher has no blocks";
    if ((r.match & kMatchHeader) && (!valid_token(r.header_name) || !valid_value(r.header_value)))
      return "a rule's header matcher is invalid";
    if ((r.match & kMatchCookie) && (!valid_token(r.cookie_name) || !valid_value(r.cookie_value)))
      return "a rule's cookie matcher is invalid";
    if (r.percent_bp > kPercentScale) return "a rule's percentage is out of range";
    if (r.stat_tag != 0 && r.stat_slot >= c.max_rules) return "a rule's stats slot is out of range";
  }
  for (const auto& b : t.cidrs())
    if (!((b.family == AF_INET && b.prefix <= 32) || (b.family == AF_INET6 && b.prefix <= 128)))
      return "an address block has an unknown family or prefix length";
  for (const auto& x : t.consumers())
    if (!valid_name(x.name)) return "a consumer name is not a valid name";
  return nullptr;
}

int Table::find_upstream(std::string_view name) const noexcept {
  auto u = upstreams();
  for (size_t i = 0; i < u.size(); ++i)
    if (name_of(u[i].name) == name) return static_cast<int>(i);
  return -1;
}

int Table::find_pool(int upstream, std::string_view id) const noexcept {
  auto p = pools();
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i].upstream == upstream && name_of(p[i].id) == id) return static_cast<int>(i);
  return -1;
}

int Table::find_host(int pool, std::string_view id) const noexcept {
  auto h = hosts();
  for (size_t i = 0; i < h.size(); ++i)
    if (h[i].pool == pool && name_of(h[i].id) == id) return static_cast<int>(i);
  return -1;
}

std::vector<int> Table::pool_hosts(int pool) const {
  std::vector<int> out;
  auto h = hosts();
  for (size_t i = 0; i < h.size(); ++i)
    if (h[i].pool == pool) out.push_back(static_cast<int>(i));
  return out;
}

std::string Table::pool_path(int pool) const {
  const auto& p = pools()[static_cast<size_t>(pool)];
  return fmt::format("{}/{}", name_of(upstreams()[p.upstream].name), name_of(p.id));
}

std::string Table::host_path(int host) const {
  const auto& h = hosts()[static_cast<size_t>(host)];
  return fmt::format("{}/{}", pool_path(h.pool), name_of(h.id));
}

int Table::add_upstream(const UpstreamRecord& rec) {
  std::string_view name = name_of(rec.name);
  if (auto why = check_name(name); !why.empty()) throw TableError(fmt::format("upstream name \"{}\" {}", name, why));
  if (find_upstream(name) >= 0)
    throw TableError(fmt::format("upstream \"{}\" already exists", name), TableError::Kind::exists);
  if (header().n_upstreams >= caps_.max_upstreams)
    throw TableError(fmt::format("upstream table is full (shm.max_upstreams = {})", caps_.max_upstreams),
                     TableError::Kind::full);
  ups_()[header().n_upstreams] = rec;
  return static_cast<int>(header().n_upstreams++);
}

int Table::add_pool(int upstream, std::string_view id, int32_t priority, Method method) {
  if (auto why = check_name(id); !why.empty()) throw TableError(fmt::format("pool id \"{}\" {}", id, why));
  if (find_pool(upstream, id) >= 0)
    throw TableError(
        fmt::format("pool {}/{} already exists", name_of(upstreams()[static_cast<size_t>(upstream)].name), id),
        TableError::Kind::exists);
  if (header().n_pools >= caps_.max_pools)
    throw TableError(fmt::format("pool table is full (shm.max_pools = {})", caps_.max_pools), TableError::Kind::full);
  PoolRecord& p = pools_()[header().n_pools];
  p = PoolRecord{};
  set_name(p.id, id);
  p.priority = priority;
  p.upstream = static_cast<uint16_t>(upstream);
  p.method = static_cast<uint8_t>(method);
  return static_cast<int>(header().n_pools++);
}

void Table::remove_pool(int pool) {
  auto n = pool_hosts(pool).size();
  if (n != 0)
    throw TableError(fmt::format("pool {} still has {} host(s); remove them first", pool_path(pool), n),
                     TableError::Kind::not_empty);
  PoolRecord* p = pools_();
  std::copy(p + pool + 1, p + header().n_pools, p + pool);
  --header().n_pools;
  for (auto& h : hosts())
    if (h.pool > pool) --h.pool;
}

int Table::add_host(int pool, std::string_view id, const core::SockAddr& addr, uint32_t weight) {
  if (auto why = check_name(id); !why.empty()) throw TableError(fmt::format("host id \"{}\" {}", id, why));
  if (find_host(pool, id) >= 0)
    throw TableError(fmt::format("host {}/{} already exists", pool_path(pool), id), TableError::Kind::exists);
  return add_unique_host(pool, id, addr, weight);
}

int Table::add_unique_host(int pool, std::string_view id, const core::SockAddr& addr, uint32_t weight) {
  if (auto why = check_name(id); !why.empty()) throw TableError(fmt::format("host id \"{}\" {}", id, why));
  if (weight > kMaxWeight) throw TableError(fmt::format("weight must be 0..{}, got {}", kMaxWeight, weight));
  if (header().n_hosts >= caps_.max_hosts)
    throw TableError(fmt::format("host table is full (shm.max_hosts = {})", caps_.max_hosts), TableError::Kind::full);
  HostRecord& h = hosts_()[header().n_hosts];
  h = HostRecord{};
  set_name(h.id, id);
  h.addr = addr;
  h.pool = static_cast<uint16_t>(pool);
  h.weight = weight;
  return static_cast<int>(header().n_hosts++);
}

void Table::remove_host(int host) {
  HostRecord* h = hosts_();
  std::copy(h + host + 1, h + header().n_hosts, h + host);
  --header().n_hosts;
}

namespace {

// A header field name: a token (RFC 9110 5.6.2).
bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

// A value to compare with: visible ASCII and inner spaces, no leading or
// trailing whitespace (the proxy compares trimmed values).
std::string check_value(std::string_view what, std::string_view v, bool cookie) {
  if (v.size() >= kRuleValueCap) return fmt::format("{} value is longer than {} bytes", what, kRuleValueCap - 1);
  for (unsigned char c : v) {
    if (c < 0x20 || c == 0x7f || (cookie && (c == ';' || c == ' ' || c == ',')))
      return fmt::format("{} value \"{}\" has a character that cannot appear in a {}", what, v,
                         cookie ? "cookie value" : "header value");
  }
  if (!v.empty() && (v.front() == ' ' || v.back() == ' '))
    return fmt::format("{} value \"{}\" starts or ends with a space", what, v);
  // The state file and the status documents are JSON, which is UTF-8.
  if (!core::utf8_valid(v)) return fmt::format("{} value is not valid UTF-8", what);
  return {};
}

}  // namespace

std::string check_rule(const RuleSpec& r) {
  if (auto why = check_name(r.id); !why.empty()) return fmt::format("rule id \"{}\" {}", r.id, why);
  if (auto why = check_name(r.upstream); !why.empty()) return fmt::format("upstream name \"{}\" {}", r.upstream, why);
  if (r.cidrs.empty() && r.header_name.empty() && r.cookie_name.empty() && r.percent_bp < 0)
    return "a rule needs at least one matcher (ip, header, cookie or percent)";
  if (r.cidrs.size() > 65535) return "a rule takes at most 65535 address blocks";
  for (const auto& c : r.cidrs)
    if (c.family != AF_INET && c.family != AF_INET6) return "an address block is unset";
  if (!r.header_name.empty()) {
    if (!is_token(r.header_name) || r.header_name.size() >= kNameCap)
      return fmt::format("header name \"{}\" is not a field name (a token of at most {} bytes)", r.header_name,
                         kNameCap - 1);
    if (auto why = check_value("header", r.header_value, false); !why.empty()) return why;
  }
  if (!r.cookie_name.empty()) {
    if (!is_token(r.cookie_name) || r.cookie_name.size() >= kNameCap)
      return fmt::format("cookie name \"{}\" is not a token of at most {} bytes", r.cookie_name, kNameCap - 1);
    if (auto why = check_value("cookie", r.cookie_value, true); !why.empty()) return why;
  }
  if (r.percent_bp > static_cast<int32_t>(kPercentScale)) return "percent must be 0..100";
  return {};
}

bool percent_to_bp(double percent, int32_t& bp) noexcept {
  if (!(percent >= 0 && percent <= 100)) return false;  // NaN too
  const double scaled = percent * (kPercentScale / 100);
  const double whole = std::round(scaled);
  // 12.34 * 100 is 1233.9999999999998 in binary: a tolerance far below one
  // basis point takes it, and refuses 0.001.
  if (std::fabs(scaled - whole) > 1e-6) return false;
  bp = static_cast<int32_t>(whole);
  return true;
}

std::string describe_rule(const RuleSpec& r) {
  std::string out;
  auto add = [&](const std::string& part) { out += (out.empty() ? "" : " ") + part; };
  if (!r.cidrs.empty()) {
    std::string ips;
    for (size_t i = 0; i < r.cidrs.size(); ++i) {
      if (i == 8 && r.cidrs.size() > 10) {
        ips += fmt::format(",... ({} in all)", r.cidrs.size());
        break;
      }
      ips += (i ? "," : "") + r.cidrs[i].to_string();
    }
    add("ip=" + ips);
  }
  if (!r.header_name.empty()) add(fmt::format("header={}={}", r.header_name, r.header_value));
  if (!r.cookie_name.empty()) add(fmt::format("cookie={}={}", r.cookie_name, r.cookie_value));
  if (r.percent_bp >= 0) add(fmt::format("percent={}", r.percent_bp / 100.0));
  add("-> " + r.upstream);
  return out;
}

int Table::find_route(std::string_view listener, std::string_view name) const noexcept {
  auto r = routes();
  for (size_t i = 0; i < r.size(); ++i)
    if (name_of(r[i].listener) == listener && name_of(r[i].name) == name) return static_cast<int>(i);
  return -1;
}

int Table::find_rule(int route, std::string_view id) const noexcept {
  auto r = rules();
  for (size_t i = 0; i < r.size(); ++i)
    if (r[i].route == route && name_of(r[i].id) == id) return static_cast<int>(i);
  return -1;
}

std::string Table::route_path(int route) const {
  const auto& r = routes()[static_cast<size_t>(route)];
  return fmt::format("{}/{}", name_of(r.listener), name_of(r.name));
}

std::string Table::rule_path(int rule) const {
  const auto& r = rules()[static_cast<size_t>(rule)];
  return fmt::format("{}/{}", route_path(r.route), name_of(r.id));
}

int Table::add_route(std::string_view listener, std::string_view name) {
  if (auto why = check_name(listener); !why.empty())
    throw TableError(fmt::format("listener name \"{}\" {}", listener, why));
  if (auto why = check_name(name); !why.empty()) throw TableError(fmt::format("route name \"{}\" {}", name, why));
  if (find_route(listener, name) >= 0)
    throw TableError(fmt::format("route {}/{} already exists", listener, name), TableError::Kind::exists);
  if (header().n_routes >= caps_.max_routes)
    throw TableError(fmt::format("route table is full (shm.max_routes = {})", caps_.max_routes),
                     TableError::Kind::full);
  RouteRecord& r = routes_()[header().n_routes];
  r = RouteRecord{};
  set_name(r.listener, listener);
  set_name(r.name, name);
  return static_cast<int>(header().n_routes++);
}

void Table::fill_rule(RuleRecord& r, const RuleSpec& spec, uint32_t first_cidr) {
  auto set_value = [](char(&dst)[kRuleValueCap], std::string_view v) {
    std::memset(dst, 0, kRuleValueCap);
    std::memcpy(dst, v.data(), std::min(v.size(), kRuleValueCap - 1));
  };
  const uint16_t route = r.route;
  r = RuleRecord{};
  r.route = route;
  set_name(r.id, spec.id);
  set_name(r.upstream, spec.upstream);
  if (!spec.cidrs.empty()) {
    r.match |= kMatchIp;
    r.first_cidr = first_cidr;
    r.n_cidrs = static_cast<uint16_t>(spec.cidrs.size());
    std::copy(spec.cidrs.begin(), spec.cidrs.end(), cidrs_() + first_cidr);
  }
  if (!spec.header_name.empty()) {
    r.match |= kMatchHeader;
    set_name(r.header_name, spec.header_name);
    set_value(r.header_value, spec.header_value);
  }
  if (!spec.cookie_name.empty()) {
    r.match |= kMatchCookie;
    set_name(r.cookie_name, spec.cookie_name);
    set_value(r.cookie_value, spec.cookie_value);
  }
  if (spec.percent_bp >= 0) {
    r.match |= kMatchPercent;
    r.percent_bp = static_cast<uint16_t>(spec.percent_bp);
  }
}

int Table::add_rule(int route, const RuleSpec& spec) {
  if (auto why = check_rule(spec); !why.empty()) throw TableError(why);
  if (route < 0 || static_cast<uint32_t>(route) >= header().n_routes)
    throw TableError("no such route", TableError::Kind::not_found);
  if (find_rule(route, spec.id) >= 0)
    throw TableError(fmt::format("rule {}/{} already exists", route_path(route), spec.id), TableError::Kind::exists);
  if (find_upstream(spec.upstream) < 0) throw TableError(fmt::format("no upstream named \"{}\"", spec.upstream));
  if (header().n_rules >= caps_.max_rules)
    throw TableError(fmt::format("rule table is full (shm.max_rules = {})", caps_.max_rules), TableError::Kind::full);
  if (header().n_cidrs + spec.cidrs.size() > caps_.max_rule_cidrs)
    throw TableError(fmt::format("address block table is full: {} in use, {} more asked, shm.max_rule_cidrs = {}",
                                 header().n_cidrs, spec.cidrs.size(), caps_.max_rule_cidrs),
                     TableError::Kind::full);
  RuleRecord& r = rules_()[header().n_rules];
  r.route = static_cast<uint16_t>(route);
  fill_rule(r, spec, header().n_cidrs);
  header().n_cidrs += static_cast<uint32_t>(spec.cidrs.size());
  return static_cast<int>(header().n_rules++);
}

void Table::remove_rule(int rule) {
  RuleRecord* r = rules_();
  const uint32_t first = r[rule].first_cidr, n = r[rule].n_cidrs;
  if (n) {
    core::Cidr* c = cidrs_();
    std::copy(c + first + n, c + header().n_cidrs, c + first);
    header().n_cidrs -= n;
    for (uint32_t i = 0; i < header().n_rules; ++i)
      if (r[i].n_cidrs && r[i].first_cidr > first) r[i].first_cidr -= n;
  }
  std::copy(r + rule + 1, r + header().n_rules, r + rule);
  --header().n_rules;
}

void Table::replace_rule(int rule, const RuleSpec& spec) {
  if (auto why = check_rule(spec); !why.empty()) throw TableError(why);
  RuleRecord& cur = rules_()[rule];
  if (name_of(cur.id) != spec.id) throw TableError("replace_rule: the id differs");
  if (find_upstream(spec.upstream) < 0) throw TableError(fmt::format("no upstream named \"{}\"", spec.upstream));
  if (header().n_cidrs - cur.n_cidrs + spec.cidrs.size() > caps_.max_rule_cidrs)
    throw TableError(fmt::format("address block table is full: {} in use by other rules, {} asked, "
                                 "shm.max_rule_cidrs = {}",
                                 header().n_cidrs - cur.n_cidrs, spec.cidrs.size(), caps_.max_rule_cidrs),
                     TableError::Kind::full);
  // Drop the old blocks, then append the new ones: the record keeps its place.
  const uint32_t first = cur.first_cidr, n = cur.n_cidrs;
  RuleRecord* r = rules_();
  if (n) {
    core::Cidr* c = cidrs_();
    std::copy(c + first + n, c + header().n_cidrs, c + first);
    header().n_cidrs -= n;
    for (uint32_t i = 0; i < header().n_rules; ++i)
      if (r[i].n_cidrs && r[i].first_cidr > first) r[i].first_cidr -= n;
  }
  // The rule keeps its hit counters: it is the same rule with new matchers.
  // Not with another upstream: its hits are counted under the upstream they
  // went to (gw_rule_hits_total's label), and a count carried over would
  // credit the new upstream with traffic it never got. Tag 0: the writer
  // gives it a new column, which starts at 0.
  const uint32_t stat_tag = cur.stat_tag, stat_slot = cur.stat_slot;
  const bool same_upstream = name_of(cur.upstream) == spec.upstream;
  fill_rule(cur, spec, header().n_cidrs);
  cur.stat_tag = same_upstream ? stat_tag : 0;
  cur.stat_slot = stat_slot;
  header().n_cidrs += static_cast<uint32_t>(spec.cidrs.size());
}

RuleSpec Table::rule_spec(int rule) const {
  const RuleRecord& r = rules()[static_cast<size_t>(rule)];
  RuleSpec s;
  s.id = name_of(r.id);
  s.upstream = name_of(r.upstream);
  auto value = [](const char(&f)[kRuleValueCap]) { return std::string(f, ::strnlen(f, kRuleValueCap)); };
  if (r.match & kMatchIp) {
    auto c = rule_cidrs(r);
    s.cidrs.assign(c.begin(), c.end());
  }
  if (r.match & kMatchHeader) {
    s.header_name = name_of(r.header_name);
    s.header_value = value(r.header_value);
  }
  if (r.match & kMatchCookie) {
    s.cookie_name = name_of(r.cookie_name);
    s.cookie_value = value(r.cookie_value);
  }
  if (r.match & kMatchPercent) s.percent_bp = r.percent_bp;
  return s;
}

int Table::find_consumer(std::string_view name) const noexcept {
  auto c = consumers();
  for (size_t i = 0; i < c.size(); ++i)
    if (name_of(c[i].name) == name) return static_cast<int>(i);
  return -1;
}

int Table::add_consumer(std::string_view name, const uint8_t (&key_sha256)[kSha256Len]) {
  if (auto why = check_name(name); !why.empty()) throw TableError(fmt::format("consumer name \"{}\" {}", name, why));
  if (find_consumer(name) >= 0)
    throw TableError(fmt::format("consumer \"{}\" already exists", name), TableError::Kind::exists);
  for (const auto& c : consumers())
    if (std::memcmp(c.key_sha256, key_sha256, kSha256Len) == 0)
      throw TableError(
          fmt::format("consumer \"{}\" already has this key; a key must identify one consumer", name_of(c.name)),
          TableError::Kind::exists);
  if (header().n_consumers >= caps_.max_consumers)
    throw TableError(fmt::format("consumer table is full (shm.max_consumers = {})", caps_.max_consumers),
                     TableError::Kind::full);
  ConsumerRecord& r = consumers_()[header().n_consumers];
  r = ConsumerRecord{};
  set_name(r.name, name);
  std::memcpy(r.key_sha256, key_sha256, kSha256Len);
  return static_cast<int>(header().n_consumers++);
}

void Table::remove_consumer(int consumer) {
  ConsumerRecord* c = consumers_();
  std::copy(c + consumer + 1, c + header().n_consumers, c + consumer);
  --header().n_consumers;
}

}  // namespace gw::shm

#pragma once
// The routing table: upstreams, pools and hosts as plain old data with fixed
// capacities. The same bytes are the payload of a shm config slot and a
// process-local copy, so a reader copies it in one pass and a writer edits a
// private copy before publishing it.
//
// Layout of the bytes (every part 8-byte aligned):
//   TableHeader | UpstreamRecord[max_upstreams] | PoolRecord[max_pools] | HostRecord[max_hosts]
//   | RouteRecord[max_routes] | RuleRecord[max_rules] | core::Cidr[max_rule_cidrs]
//   | ConsumerRecord[max_consumers]
// Records are dense: entries [0, n) are in use. Pools refer to their upstream
// and hosts to their pool by index; removing an entry shifts the later ones.
// Routes (the HTTP listeners' routes, from the config) are named so that
// rules can refer to them; a route's rules are the rule records that name it,
// in table order (first match wins), and a rule's client-address blocks are
// n_cidrs consecutive Cidr records from first_cidr.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "gw/core/address.hpp"

namespace gw::shm {

inline constexpr size_t kNameCap = 48;  ///< names and ids: at most 47 bytes + NUL

/// Capacities fixed when the segment is created (config `shm.*`).
struct Caps {
  uint32_t max_upstreams = 64;
  uint32_t max_pools = 256;
  uint32_t max_hosts = 4096;
  uint32_t max_routes = 256;        ///< HTTP routes over all listeners
  uint32_t max_rules = 256;         ///< gray-release / traffic-split rules over all routes
  uint32_t max_rule_cidrs = 4096;   ///< client address blocks over all rules
  uint32_t max_consumers = 1024;    ///< key-auth consumers (name + SHA-256 of the key)
  uint32_t max_limit_keys = 65536;  ///< rate/connection limit entries (a multiple of 8: 8-way sets)
  uint32_t reserved = 0;
  bool operator==(const Caps&) const = default;
};

/// Balancing methods a pool can use. The numeric values are stored in shm.
enum class Method : uint8_t {
  round_robin = 0,    ///< smooth weighted round robin (nginx)
  chash = 1,          ///< ketama consistent hash, bit-compatible with nginx `hash $key consistent`
  hash = 2,           ///< nginx `hash $key` (Cache::Memcached formula)
  crc32_mod = 3,      ///< crc32(key) % number of hosts
  maglev = 4,         ///< Maglev, weighted, table of 65537 entries
  least_conn = 5,     ///< fewest active connections per weight, over all workers (shm counters)
  least_request = 6,  ///< power of two random choices over the shm counters
  random = 7,         ///< weighted random
  ewma = 8,           ///< power of two choices by peak-EWMA connect latency x (active + 1)
};
inline constexpr int kMethodCount = 9;
/// True for the methods that hash a key.
constexpr bool method_uses_key(Method m) {
  return m == Method::chash || m == Method::hash || m == Method::crc32_mod || m == Method::maglev;
}
/// Returns false for an unknown name.
bool parse_method(std::string_view name, Method& out);
const char* method_name(Method m);
/// "round_robin" (comma separated list of every known method, for messages).
std::string method_names();

inline constexpr uint32_t kMaxWeight = 1000;

struct TableHeader {
  uint64_t generation;       ///< bumped by every committed change; 0 = never written
  uint64_t updated_wall_ms;  ///< wall clock of the last commit
  uint32_t n_upstreams;      ///< entries in use
  uint32_t n_pools;
  uint32_t n_hosts;
  uint32_t next_tag;  ///< next runtime-slot tag to hand out (never 0)
  uint32_t n_routes;
  uint32_t n_rules;
  uint32_t n_cidrs;
  uint32_t n_consumers;
};

/// Active health checks of an upstream's hosts, run by the checker process.
struct HealthCheck {
  uint8_t type;            ///< kCheckNone, kCheckTcp, kCheckHttp
  uint8_t unknown_usable;  ///< may a host not yet checked take traffic? (default 1)
  uint16_t expect_mask;    ///< http: bit N set = status class Nxx passes (default 2xx and 3xx)
  uint32_t interval_ms;    ///< between two checks of a host
  uint32_t timeout_ms;     ///< connect + answer
  uint32_t rise;           ///< consecutive passes that bring a host up
  uint32_t fall;           ///< consecutive failures that take it down
  char path[68];           ///< http: request path, NUL-terminated
  char host[264];          ///< http: Host header, NUL-terminated; empty = the host's address (ip:port)
};
inline constexpr uint8_t kCheckNone = 0;
inline constexpr uint8_t kCheckTcp = 1;
inline constexpr uint8_t kCheckHttp = 2;

struct UpstreamRecord {
  char name[kNameCap];          ///< NUL-terminated
  uint32_t connect_timeout_ms;  ///< upstream connect timeout
  uint32_t idle_timeout_ms;     ///< relay idle timeout, both directions idle
  uint32_t max_fails;           ///< passive failures within fail_timeout_ms that take a host out; 0 = never
  uint32_t fail_timeout_ms;     ///< failure window and time out of rotation
  uint32_t tries;               ///< connect attempts per client connection (1..16)
  uint16_t balance_factor;      ///< chash bounded loads: max load = factor% of the mean; 0 = off
  uint16_t retry_tries;         ///< http: attempts per request (retry.tries, else tries); for status only
  uint32_t slow_start_ms;       ///< a host coming back ramps its weight over this long; 0 = off
  uint32_t reserved2;
  HealthCheck check;  ///< active health checks; type kCheckNone = off
};

struct PoolRecord {
  char id[kNameCap];  ///< unique within its upstream
  int32_t priority;   ///< lower number = preferred
  uint16_t upstream;  ///< index into the upstream records
  uint8_t method;     ///< Method
  uint8_t reserved;
};

struct HostRecord {
  char id[kNameCap];    ///< unique within its pool
  core::SockAddr addr;  ///< where to connect
  uint16_t pool;        ///< index into the pool records
  uint8_t admin_down;   ///< 1 after `gwctl down host`; only `gwctl up host` clears it
  uint8_t reserved;
  uint32_t weight;  ///< 0..kMaxWeight; 0 = takes no new connections
  uint32_t slot;    ///< runtime slot (counters, health) of this host
  uint32_t tag;     ///< tag the runtime slot carries while this host owns it
  uint32_t reserved2;
};

/// An HTTP route, named so that rules can refer to it. Routes come from the
/// config (the master adds them at start); only their rules change live.
struct RouteRecord {
  char listener[kNameCap];  ///< the http listener's name
  char name[kNameCap];      ///< the route's name, unique within the listener
};

inline constexpr size_t kRuleValueCap = 128;      ///< header and cookie values: at most 127 bytes + NUL
inline constexpr uint8_t kMatchIp = 1;            ///< the client address lies in one of the rule's blocks
inline constexpr uint8_t kMatchHeader = 2;        ///< a request header equals a value
inline constexpr uint8_t kMatchCookie = 4;        ///< a cookie equals a value
inline constexpr uint8_t kMatchPercent = 8;       ///< a stable share of clients (hash of the client key)
inline constexpr uint32_t kPercentScale = 10000;  ///< percent_bp is in basis points

/// A gray-release / traffic-split rule: when every matcher in `match` holds,
/// the request goes to `upstream` instead of the route's. Rules of a route are
/// tried in table order; the first match wins.
struct RuleRecord {
  char id[kNameCap];        ///< unique within its route
  char upstream[kNameCap];  ///< upstream name (resolved by the reader)
  uint16_t route;           ///< index into the route records
  uint8_t match;            ///< kMatch* bits; at least one
  uint8_t reserved;
  uint16_t percent_bp;  ///< kMatchPercent: 0..10000 basis points of clients
  uint16_t n_cidrs;     ///< kMatchIp: number of address blocks
  uint32_t first_cidr;  ///< kMatchIp: index of the first block
  uint32_t stat_tag;    ///< tag of its hit counters (RuleStats); 0 = not assigned yet (the writer assigns it)
  uint32_t stat_slot;   ///< its RuleStats column, < max_rules
  uint32_t reserved2;
  char header_name[kNameCap];  ///< kMatchHeader: field name (a token)
  char header_value[kRuleValueCap];
  char cookie_name[kNameCap];  ///< kMatchCookie
  char cookie_value[kRuleValueCap];
};

inline constexpr size_t kSha256Len = 32;
/// A key-auth consumer: a name and the SHA-256 of its key (the key itself is
/// never stored). Consumers are managed live (gwctl add/remove consumer).
struct ConsumerRecord {
  char name[kNameCap];             ///< unique; passed upstream in X-Consumer-Username
  uint8_t key_sha256[kSha256Len];  ///< SHA-256 of the key; unique among consumers
};

/// A rule as text-level values, for adding one and for the state file.
struct RuleSpec {
  std::string id;
  std::string upstream;
  std::vector<core::Cidr> cidrs;          ///< empty = no address matcher
  std::string header_name, header_value;  ///< empty name = no header matcher
  std::string cookie_name, cookie_value;  ///< empty name = no cookie matcher
  int32_t percent_bp = -1;                ///< -1 = no percentage matcher
};

/// Checks the matchers of a spec (names, values, ranges; at least one
/// matcher). Returns an empty string if valid, otherwise the reason.
std::string check_rule(const RuleSpec& r);

/// A rule's percentage (0..100) in basis points, the unit it is kept in, into
/// `bp`. False for a value out of range (NaN too) or finer than 0.01, which
/// would be rounded: 0.001 would become 0, a rule that never matches.
bool percent_to_bp(double percent, int32_t& bp) noexcept;
/// "ip=10.0.0.0/8,127.0.0.2/32 header=X-Canary:1 percent=5" for messages and status.
std::string describe_rule(const RuleSpec& r);

static_assert(std::is_trivially_copyable_v<TableHeader> && sizeof(TableHeader) % 8 == 0);
static_assert(std::is_trivially_copyable_v<RouteRecord> && sizeof(RouteRecord) % 8 == 0);
static_assert(std::is_trivially_copyable_v<RuleRecord> && sizeof(RuleRecord) % 8 == 0);
static_assert(std::is_trivially_copyable_v<core::Cidr> && sizeof(core::Cidr) % 8 == 0);
static_assert(std::is_trivially_copyable_v<ConsumerRecord> && sizeof(ConsumerRecord) % 8 == 0);
static_assert(sizeof(HealthCheck) % 8 == 0);
static_assert(std::is_trivially_copyable_v<UpstreamRecord> && sizeof(UpstreamRecord) % 8 == 0);
static_assert(std::is_trivially_copyable_v<PoolRecord> && sizeof(PoolRecord) % 8 == 0);
static_assert(std::is_trivially_copyable_v<HostRecord> && sizeof(HostRecord) % 8 == 0);

/// A change that cannot be applied; the message is one line for the operator.
/// The kind says why, for callers that map it to a status (the admin API).
class TableError : public std::runtime_error {
 public:
  enum class Kind : uint8_t {
    invalid,    ///< a bad name, value or matcher
    not_found,  ///< an upstream, pool, host, route or rule that does not exist
    exists,     ///< an add of something that already exists
    not_empty,  ///< a pool that still has hosts
    full,       ///< a table capacity (shm.max_*) is reached
    refused,    ///< the gateway takes this part of the table from elsewhere (etcd)
  };
  explicit TableError(const std::string& what, Kind kind = Kind::invalid) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const noexcept { return kind_; }

 private:
  Kind kind_;
};

/// Names and ids: 1..47 bytes of [A-Za-z0-9._:-]. Returns an empty string if
/// valid, otherwise the reason.
std::string check_name(std::string_view s);

/// check_name() for a name given now (config, gwctl, admin API bodies): also
/// refuses "." and "..", which no admin API URL path can name (clients and
/// proxies resolve such segments). Tables and state files written before are
/// read with check_name(), so a gateway holding such an id still starts, and
/// gwctl can remove it.
std::string check_new_name(std::string_view s);

/// Longest Host header an http health check sends (health.host): a 253-byte
/// DNS name with a port fits; the record holds it and its NUL.
inline constexpr size_t kCheckHostMax = sizeof(HealthCheck::host) - 1;

/// Why `h` is not a Host header for a health check, or null if it is one:
/// RFC 9110's uri-host [":" port], i.e. a reg-name (unreserved, sub-delims
/// and %XX; an IPv4 address is one), or an IPv6 address in brackets, then
/// optionally ":" and a port 1..65535; non-empty, at most kCheckHostMax bytes.
/// No CR, LF, NUL or space passes, so it cannot split the request.
const char* check_host_error(std::string_view h) noexcept;

/// A process-local table. Not thread-safe; each process or thread owns its own.
class Table {
 public:
  explicit Table(Caps caps);

  static size_t bytes_for(const Caps& caps) noexcept;
  size_t bytes() const noexcept { return words_.size() * 8; }
  uint64_t* words() noexcept { return words_.data(); }
  const uint64_t* words() const noexcept { return words_.data(); }
  size_t word_count() const noexcept { return words_.size(); }
  const Caps& caps() const noexcept { return caps_; }

  TableHeader& header() noexcept { return *reinterpret_cast<TableHeader*>(words_.data()); }
  const TableHeader& header() const noexcept { return *reinterpret_cast<const TableHeader*>(words_.data()); }
  std::span<UpstreamRecord> upstreams() noexcept { return {ups_(), header().n_upstreams}; }
  std::span<const UpstreamRecord> upstreams() const noexcept { return {ups_(), header().n_upstreams}; }
  std::span<PoolRecord> pools() noexcept { return {pools_(), header().n_pools}; }
  std::span<const PoolRecord> pools() const noexcept { return {pools_(), header().n_pools}; }
  std::span<HostRecord> hosts() noexcept { return {hosts_(), header().n_hosts}; }
  std::span<const HostRecord> hosts() const noexcept { return {hosts_(), header().n_hosts}; }
  std::span<RouteRecord> routes() noexcept { return {routes_(), header().n_routes}; }
  std::span<const RouteRecord> routes() const noexcept { return {routes_(), header().n_routes}; }
  std::span<RuleRecord> rules() noexcept { return {rules_(), header().n_rules}; }
  std::span<const RuleRecord> rules() const noexcept { return {rules_(), header().n_rules}; }
  std::span<core::Cidr> cidrs() noexcept { return {cidrs_(), header().n_cidrs}; }
  std::span<const core::Cidr> cidrs() const noexcept { return {cidrs_(), header().n_cidrs}; }
  std::span<ConsumerRecord> consumers() noexcept { return {consumers_(), header().n_consumers}; }
  std::span<const ConsumerRecord> consumers() const noexcept { return {consumers_(), header().n_consumers}; }
  /// The address blocks of rule `r`.
  std::span<const core::Cidr> rule_cidrs(const RuleRecord& r) const noexcept {
    return {cidrs_() + r.first_cidr, r.n_cidrs};
  }

  /// Lookups return -1 when absent.
  int find_upstream(std::string_view name) const noexcept;
  int find_pool(int upstream, std::string_view id) const noexcept;
  int find_host(int pool, std::string_view id) const noexcept;
  int find_route(std::string_view listener, std::string_view name) const noexcept;
  int find_rule(int route, std::string_view id) const noexcept;
  int find_consumer(std::string_view name) const noexcept;
  /// Hosts of a pool, in table order.
  std::vector<int> pool_hosts(int pool) const;

  /// Mutations. They validate and throw TableError with an operator-facing message.
  int add_upstream(const UpstreamRecord& rec);
  int add_pool(int upstream, std::string_view id, int32_t priority, Method method);
  void remove_pool(int pool);
  int add_host(int pool, std::string_view id, const core::SockAddr& addr, uint32_t weight);
  /// add_host() without its duplicate check, which reads every host: for a
  /// caller that builds a whole table from ids it knows to be unique in their
  /// pool (the etcd reconcile), where checking each made the build quadratic.
  int add_unique_host(int pool, std::string_view id, const core::SockAddr& addr, uint32_t weight);
  void remove_host(int host);
  int add_route(std::string_view listener, std::string_view name);
  /// Appends a rule to `route` (it is tried after the route's other rules).
  /// The upstream must exist in the table.
  int add_rule(int route, const RuleSpec& spec);
  /// Replaces the matchers and upstream of rule `rule`, keeping its place.
  void replace_rule(int rule, const RuleSpec& spec);
  void remove_rule(int rule);
  RuleSpec rule_spec(int rule) const;
  /// Adds a consumer; the name and the key's hash must both be new.
  int add_consumer(std::string_view name, const uint8_t (&key_sha256)[kSha256Len]);
  void remove_consumer(int consumer);
  /// "listener/route" and "listener/route/rule" for messages.
  std::string route_path(int route) const;
  std::string rule_path(int rule) const;

  /// "app/primary/a" for messages.
  std::string host_path(int host) const;
  std::string pool_path(int pool) const;

  void clear() noexcept;

 private:
  UpstreamRecord* ups_() const noexcept;
  PoolRecord* pools_() const noexcept;
  HostRecord* hosts_() const noexcept;
  RouteRecord* routes_() const noexcept;
  RuleRecord* rules_() const noexcept;
  core::Cidr* cidrs_() const noexcept;
  ConsumerRecord* consumers_() const noexcept;
  void fill_rule(RuleRecord& r, const RuleSpec& spec, uint32_t first_cidr);

  Caps caps_;
  std::vector<uint64_t> words_;
};

/// Whether a table read from shared memory can be used: counts within the
/// capacities, every index (host → pool → upstream, rule → route, a rule's
/// address blocks, runtime and stats slots) naming an existing record, enum
/// values known, names and ids as check_name() allows them and NUL-terminated,
/// rule matchers as check_rule() allows them. The writers only ever publish such
/// tables; a table that fails comes from a buggy or foreign process, and
/// readers (which index arrays with these values) must not use it. Returns
/// nullptr, or a static string saying what is wrong. Any process; no
/// allocation, linear in the records in use.
const char* validate_table(const Table& t) noexcept;

/// Copies a NUL-terminated name into a fixed field (the caller checked the length).
void set_name(char (&dst)[kNameCap], std::string_view src) noexcept;
inline std::string_view name_of(const char (&field)[kNameCap]) noexcept {
  return {field, ::strnlen(field, kNameCap)};
}

}  // namespace gw::shm

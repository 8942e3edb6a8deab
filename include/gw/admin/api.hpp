#pragma once
// The admin server's requests, transport aside: the path router, the token
// check, the JSON bodies of the write endpoints, and the handler that answers
// a request from shm (reads) or through the shm writer (writes, via
// shm::ops: gwctl's validation, events, messages and persistence).
//
//   GET  /                                   the dashboard (HTML)
//   GET  /metrics                            Prometheus text format 0.0.4
//   GET  /status                             gwctl status --json
//   GET  /events?since=N&limit=M             the event ring
//   GET  /upstreams, /upstreams/U, /routes
//   GET|POST        /upstreams/U/pools                      POST: add pool {"id", "priority", "method"}
//   GET|PUT|DELETE  /upstreams/U/pools/P                    PUT: set pool {"priority", "method"}
//   GET|POST        /upstreams/U/pools/P/hosts              POST: add host {"id", "address", "weight"}
//   GET|DELETE      /upstreams/U/pools/P/hosts/H
//   POST            /upstreams/U/pools/P/hosts/H/down, .../up
//   GET|POST        /listeners/L/routes/R/rules             POST: add rule {"id", "upstream", matchers}
//   GET|PUT|DELETE  /listeners/L/routes/R/rules/ID          PUT: set rule {"upstream", matchers}
//
// Writes (POST, PUT, DELETE) need `Authorization: Bearer TOKEN`. Errors are
// {"error": "one line"}: 400 bad body, 401 no or wrong token, 403 writes
// disabled (no token configured), 404 no such endpoint or object, 405 wrong
// method (with Allow), 409 exists / pool not empty / clustered, 413 body too
// large (the server), 507 a table is full.
//
// Boundary code (the admin process): allocates, catches every exception.

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "gw/config/config.hpp"
#include "gw/core/address.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/table.hpp"

namespace gw::admin {

/// Equality of a secret with a given string in time that depends only on the
/// secret's length (and not on where they first differ, nor on the given
/// string's contents).
bool constant_time_equal(std::string_view given, std::string_view secret) noexcept;

enum class Endpoint : uint8_t {
  not_found,
  dashboard,
  metrics,
  status,
  events,
  upstreams,  ///< /upstreams
  upstream,   ///< /upstreams/U
  pools,      ///< /upstreams/U/pools
  pool,       ///< /upstreams/U/pools/P
  hosts,      ///< /upstreams/U/pools/P/hosts
  host,       ///< /upstreams/U/pools/P/hosts/H
  host_down,  ///< /upstreams/U/pools/P/hosts/H/down
  host_up,    ///< /upstreams/U/pools/P/hosts/H/up
  routes,     ///< /routes
  rules,      ///< /listeners/L/routes/R/rules
  rule,       ///< /listeners/L/routes/R/rules/ID
  consumers,  ///< /consumers
  consumer,   ///< /consumers/NAME
  server,     ///< OPTIONS *: the server as a whole (RFC 9110 9.3.7)
};

struct RouteMatch {
  Endpoint endpoint = Endpoint::not_found;
  std::string params[3];  ///< percent-decoded segments: U, P, H or L, R, ID
  bool method_allowed = false;
  std::string allow;      ///< the endpoint's methods, for a 405's Allow
  bool write = false;     ///< an allowed method that changes the table (needs the token)
  bool bad_path = false;  ///< a segment that does not decode (bad %XX, NUL, '/') or is not a name
  std::string bad_why;    ///< ...and why, for the 400
};
/// Routes `path` (no query; "/status/" is "/status"). Percent-encoded
/// unreserved characters are decoded first (RFC 3986 6.2.2.2: "/st%61tus" is
/// "/status"); any other %XX stays as it is, so "%2F" is never a separator (in
/// a name segment it is a 400, in a fixed one a 404). A bad escape ("%zz", a
/// lone "%") anywhere is bad_path (400). "*" is Endpoint::server. Pure.
RouteMatch route_request(std::string_view method, std::string_view path);

/// The value of query argument `name` in `query` ("since=3&limit=10"), if present.
std::optional<std::string> query_arg(std::string_view query, std::string_view name);

struct HostBody {
  std::string id;
  core::SockAddr address;
  uint32_t weight = 1;
  bool down = false;  ///< "admin": "down": the host is added admin down
};
/// PUT of a host: what changes (at least one of weight and admin); an
/// address, if sent back, must be the host's.
struct HostSetBody {
  std::optional<core::SockAddr> address;
  std::optional<uint32_t> weight;
  std::optional<bool> down;
};
struct ConsumerBody {
  std::string name;
  std::string key;
};
struct PoolBody {
  std::string id;
  std::optional<int32_t> priority;
  std::optional<shm::Method> method;
  /// "hosts" as GET shows them, if the body has the key: set pool checks
  /// that they are the pool's hosts (hosts change through .../hosts).
  std::optional<std::vector<HostBody>> hosts;
};
/// Each returns "" or the error ("body.weight: expected an integer 0..1000,
/// got 5000"; several joined with "; "). Unknown keys are errors. Pure.
///
/// Each takes back what the matching GET shows (read, edit, write): the
/// read-only fields GET adds (a host's "health", "active", "total",
/// "failures", "status_failures", "responses"; a rule's "hits") are checked
/// for their type and ignored.
///
/// {"id", "address", "weight"?, "admin"? ("up" or "down")}.
std::string parse_host_body(std::string_view json, HostBody& out);
/// add (path_id ""): {"id", "priority"?, "method"?, "hosts"? (empty)}; set:
/// {"priority"?, "method"?} (at least one), "id"? (the path's), "hosts"?.
std::string parse_host_set_body(std::string_view json, std::string_view path_id, HostSetBody& out);
std::string parse_pool_body(std::string_view json, std::string_view path_id, PoolBody& out);
/// "" if `body` (set pool's "hosts") lists the hosts `pool` has (ids,
/// addresses, weights, admin states; any order), else why not.
std::string check_pool_hosts(const shm::Table& t, int pool, const std::vector<HostBody>& body);
/// The config's rule form, a header or cookie as "N=V" or as GET shows it,
/// {"name", "value"}. `path_id` (set rule): the id from the path; the body
/// may repeat it but not name another.
std::string parse_rule_body(std::string_view json, std::string_view path_id, shm::RuleSpec& out);
/// {"name", "key"}: a key-auth consumer (the key as config::valid_api_key says).
std::string parse_consumer_body(std::string_view json, ConsumerBody& out);

struct Request {
  std::string_view method;
  std::string_view target;         ///< as sent: path and query
  std::string_view authorization;  ///< the Authorization field's value ("" if none)
  std::string_view body;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::string allow;             ///< 405: the Allow field
  std::string www_authenticate;  ///< 401: the WWW-Authenticate field
  std::string retry_after;       ///< 503: the Retry-After field (seconds)
  std::string location;          ///< 201: the Location field (the path of what was added)
};

/// {"error": "..."} with status.
Response error_response(int status, std::string_view message);

/// The live table failed validation (read_published refused it): 503.
struct TableRefused : std::runtime_error {
  explicit TableRefused(const char* why);
};

class Api {
 public:
  /// `cfg` and `seg` must outlive the Api (the admin process's).
  Api(const shm::Segment& seg, const config::Config& cfg);
  ~Api();
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  /// Answers one request (HEAD as GET: the server drops the body). Never throws.
  Response handle(const Request& r);
  /// What handle() would refuse before looking at the body (no such
  /// endpoint, a bad path, a method not allowed, a write without the token or
  /// with a query string),
  /// or nullopt: the server asks this once the head is in, so that a client
  /// is told before it sends (or is sent 100 Continue for) a body. Never throws.
  std::optional<Response> precheck(const Request& r);

 private:
  std::optional<Response> precheck(const Request& r, const RouteMatch& m, std::string_view path,
                                   std::string_view query) const;
  Response read(const RouteMatch& m, std::string_view query);
  Response write(const Request& r, const RouteMatch& m);
  const shm::Table& table();

  const shm::Segment& seg_;
  const config::Config& cfg_;
  std::unique_ptr<shm::Table> table_;
};

/// The dashboard page (self-contained HTML, CSS and JavaScript).
std::string_view dashboard_html() noexcept;

}  // namespace gw::admin

// The admin server's pure pieces: the Prometheus text writer, the path
// router, the JSON bodies, the constant-time compare; and, on a real (test)
// segment, the API handler and the data plane's metric helpers.

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "../test_util.hpp"
#include "gw/admin/api.hpp"
#include "gw/admin/prom.hpp"
#include "gw/admin/status.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/config/config.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/ops.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/seqlock.hpp"
#include "gw/shm/writer.hpp"
#include "proxy/metrics.hpp"

using namespace gw;
using namespace gw::admin;
using gw::testing::TempSegment;

namespace {

core::SockAddr addr(const char* text) {
  core::SockAddr a;
  std::string why;
  REQUIRE(core::parse_address(text, a, why));
  return a;
}

// upstreams app (pool primary: a, b) and pre; an http listener web with route default.
void seed(const shm::Segment& seg) {
  shm::Writer w(seg);
  w.set_persist(false);
  w.commit([](shm::Table& t, std::vector<std::string>& ev) {
    for (const char* name : {"app", "pre"}) {
      shm::UpstreamRecord r{};
      shm::set_name(r.name, name);
      r.max_fails = 1;
      r.fail_timeout_ms = 1000;
      r.tries = 1;
      t.add_upstream(r);
    }
    int p = t.add_pool(0, "primary", 0, shm::Method::round_robin);
    t.add_host(p, "a", addr("127.0.0.1:1001"), 1);
    t.add_host(p, "b", addr("127.0.0.1:1002"), 2);
    t.add_pool(1, "main", 0, shm::Method::round_robin);
    t.add_route("web", "default");
    ev.push_back("seeded");
  });
}

config::Config admin_config(const std::string& token) {
  std::string json = R"({"upstreams": [{"name": "app", "pools": []}, {"name": "pre", "pools": []}],
    "listeners": [{"name": "web", "listen": "127.0.0.1:18080", "protocol": "http", "upstream": "app"},
                  {"name": "l4", "listen": "127.0.0.1:18081", "upstream": "app"}],
    "admin": {"listen": "127.0.0.1:19900")";
  if (!token.empty()) json += R"(, "token": ")" + token + "\"";
  json += "}}";
  auto r = config::load_string(json);
  REQUIRE_MESSAGE(r.ok(), (r.errors.empty() ? "" : r.errors[0]));
  return r.config;
}

const std::string kToken = "0123456789abcdef-secret";

Response call(Api& api, std::string_view method, std::string_view target, std::string_view body = {},
              std::string_view auth = {}) {
  return api.handle(Request{method, target, auth, body});
}

}  // namespace

TEST_SUITE("admin") {
  TEST_CASE("byte_size: binary units, one decimal, rounded half up") {
    CHECK(byte_size(0) == "0 B");
    CHECK(byte_size(1) == "1 B");
    CHECK(byte_size(1023) == "1023 B");
    CHECK(byte_size(1024) == "1.0 KiB");
    CHECK(byte_size(1536) == "1.5 KiB");
    CHECK(byte_size(1024 * 1024 - 1) == "1.0 MiB");       // 1023.999 KiB rounds to the next unit
    CHECK(byte_size(1023 * 1024 + 972) == "1023.9 KiB");  // the widest: 10 characters
    CHECK(byte_size(1023 * 1024 + 973) == "1.0 MiB");     // 1023.95 KiB
    CHECK(byte_size(1024 * 1024) == "1.0 MiB");
    CHECK(byte_size(1572864) == "1.5 MiB");
    CHECK(byte_size(1258291) == "1.2 MiB");
    CHECK(byte_size(5ULL << 30) == "5.0 GiB");
    CHECK(byte_size((1ULL << 40) * 3 / 2) == "1.5 TiB");
    CHECK(byte_size(1ULL << 50) == "1.0 PiB");
    CHECK(byte_size(1ULL << 60) == "1.0 EiB");
    CHECK(byte_size(UINT64_MAX) == "16.0 EiB");  // no overflow at the top
    for (unsigned k = 0; k < 64; ++k)
      for (const uint64_t n : {UINT64_MAX >> k, (uint64_t{1} << k) - 1, (uint64_t{1} << k) / 10240 * 10238})
        CHECK(byte_size(n).size() <= 10);
  }

  TEST_CASE("prometheus escaping and values") {
    CHECK(prom_escape_label("plain") == "plain");
    CHECK(prom_escape_label("a\\b\"c\nd") == "a\\\\b\\\"c\\nd");
    CHECK(prom_escape_help("x \\ \"y\"\nz") == "x \\\\ \"y\"\\nz");  // quotes stay in HELP
    CHECK(prom_value(0) == "0");
    CHECK(prom_value(42) == "42");
    CHECK(prom_value(0.0005) == "0.0005");
    CHECK(prom_value(2.5) == "2.5");
    CHECK(prom_value(1.0 / 0.0) == "+Inf");
    CHECK(prom_value(-1.0 / 0.0) == "-Inf");
    CHECK(prom_value(0.0 / 0.0) == "NaN");
  }

  TEST_CASE("prometheus writer: families, labels, histograms") {
    PromWriter w;
    w.family("gw_x_total", "counter", "Things.\nTwo lines \\ here.");
    const Label l[] = {{"listener", "we\"b"}, {"path", "a\\b"}};
    w.sample("gw_x_total", l, 7);
    w.sample("gw_x_total", 3);
    w.family("gw_lat_seconds", "histogram", "Latency.");
    const double bounds[] = {0.001, 0.01, 0.1};
    const uint64_t counts[] = {2, 0, 5, 1};  // not cumulative; the last: above 0.1
    const Label hl[] = {{"host", "a"}};
    w.histogram("gw_lat_seconds", hl, bounds, counts, 1.25);
    CHECK(w.text() ==
          "# HELP gw_x_total Things.\\nTwo lines \\\\ here.\n"
          "# TYPE gw_x_total counter\n"
          "gw_x_total{listener=\"we\\\"b\",path=\"a\\\\b\"} 7\n"
          "gw_x_total 3\n"
          "# HELP gw_lat_seconds Latency.\n"
          "# TYPE gw_lat_seconds histogram\n"
          "gw_lat_seconds_bucket{host=\"a\",le=\"0.001\"} 2\n"
          "gw_lat_seconds_bucket{host=\"a\",le=\"0.01\"} 2\n"
          "gw_lat_seconds_bucket{host=\"a\",le=\"0.1\"} 7\n"
          "gw_lat_seconds_bucket{host=\"a\",le=\"+Inf\"} 8\n"
          "gw_lat_seconds_sum{host=\"a\"} 1.25\n"
          "gw_lat_seconds_count{host=\"a\"} 8\n");
  }

  TEST_CASE("constant-time compare") {
    CHECK(constant_time_equal("secret-token", "secret-token"));
    CHECK_FALSE(constant_time_equal("Secret-token", "secret-token"));
    CHECK_FALSE(constant_time_equal("secret-tokeN", "secret-token"));
    CHECK_FALSE(constant_time_equal("secret-toke", "secret-token"));
    CHECK_FALSE(constant_time_equal("secret-token-", "secret-token"));
    CHECK_FALSE(constant_time_equal("", "secret-token"));
    CHECK_FALSE(constant_time_equal("secret-token", ""));
    CHECK(constant_time_equal("", ""));
    // A prefix padded with NUL bytes is not the secret either.
    CHECK_FALSE(constant_time_equal(std::string_view("secret\0\0\0\0\0\0", 12), "secret"));
    CHECK_FALSE(constant_time_equal("secret", std::string_view("secret\0", 7)));
  }

  TEST_CASE("cluster line: a node cut off from etcd since it started says it serves its local table") {
    ClusterView v;
    v.on = true;
    v.state = shm::kClusterDisconnected;
    v.since_ms = 1;
    std::snprintf(v.text.error, sizeof(v.text.error), "etcd http://127.0.0.1:2379: cannot connect");
    v.revision = 42;
    CHECK(cluster_line(v) == "cluster: etcd DISCONNECTED since " + iso_time(1) +
                                 ", reconnecting; serving the table of revision 42; last error: etcd "
                                 "http://127.0.0.1:2379: cannot connect");
    // etcd unreachable since the start: the table is the state file's (or the
    // config's), not the "table of revision 0" it was called.
    v.revision = 0;
    CHECK(cluster_line(v) == "cluster: etcd DISCONNECTED since " + iso_time(1) +
                                 ", reconnecting; serving the local table (not synced with etcd since gwd started or "
                                 "reloaded); last error: etcd http://127.0.0.1:2379: cannot connect");
  }

  TEST_CASE("router: unreserved %-escapes decoded, %2F never a separator, bad escapes 400, OPTIONS *") {
    CHECK(route_request("GET", "/st%61tus").endpoint == Endpoint::status);
    CHECK(route_request("GET", "/%73%74%61%74%75%73/").endpoint == Endpoint::status);
    auto m = route_request("GET", "/upstreams/%61pp/pools/p%2Dx");
    CHECK(m.endpoint == Endpoint::pool);
    CHECK_FALSE(m.bad_path);
    CHECK(m.params[0] == "app");
    CHECK(m.params[1] == "p-x");
    // %2F is data: not a separator for routing, and no name holds '/'.
    CHECK(route_request("GET", "/upstreams%2Fapp").endpoint == Endpoint::not_found);
    m = route_request("GET", "/upstreams/a%2Fb");
    CHECK(m.endpoint == Endpoint::upstream);
    CHECK(m.bad_path);
    m = route_request("GET", "/upstreams/a%2fb/pools");
    CHECK(m.endpoint == Endpoint::pools);
    CHECK(m.bad_path);
    for (const char* bad : {"/st%zztus", "/status%", "/status%4", "/upstreams/a%g1", "/%"}) {
      CAPTURE(bad);
      m = route_request("GET", bad);
      CHECK(m.bad_path);
      CHECK(m.bad_why.find("%-escape") != std::string::npos);
    }
    m = route_request("OPTIONS", "*");
    CHECK(m.endpoint == Endpoint::server);
    CHECK(m.method_allowed);
    CHECK_FALSE(m.write);
    CHECK(m.allow == "GET, HEAD, POST, PUT, DELETE, OPTIONS");
  }

  TEST_CASE("router: endpoints, methods, Allow, writes") {
    auto m = route_request("GET", "/");
    CHECK(m.endpoint == Endpoint::dashboard);
    CHECK(m.method_allowed);
    CHECK_FALSE(m.write);
    CHECK(route_request("GET", "/metrics").endpoint == Endpoint::metrics);
    CHECK(route_request("HEAD", "/status/").endpoint == Endpoint::status);
    CHECK(route_request("GET", "/events").endpoint == Endpoint::events);
    CHECK(route_request("GET", "/nope").endpoint == Endpoint::not_found);
    CHECK(route_request("GET", "/statusx").endpoint == Endpoint::not_found);
    CHECK(route_request("GET", "status").endpoint == Endpoint::not_found);
    CHECK(route_request("GET", "/upstreams/a/b").endpoint == Endpoint::not_found);
    CHECK(route_request("GET", "/upstreams/a/pools/p/hosts/h/sideways").endpoint == Endpoint::not_found);
    CHECK(route_request("GET", "/a/b/c/d/e/f/g/h/i/j").endpoint == Endpoint::not_found);

    m = route_request("DELETE", "/status");
    CHECK(m.endpoint == Endpoint::status);
    CHECK_FALSE(m.method_allowed);
    CHECK(m.allow == "GET, HEAD");

    m = route_request("POST", "/upstreams/app/pools/primary/hosts");
    CHECK(m.endpoint == Endpoint::hosts);
    CHECK(m.method_allowed);
    CHECK(m.write);
    CHECK(m.params[0] == "app");
    CHECK(m.params[1] == "primary");

    m = route_request("POST", "/upstreams/app/pools/primary/hosts/a");
    CHECK(m.endpoint == Endpoint::host);
    CHECK_FALSE(m.method_allowed);
    CHECK(m.allow == "GET, HEAD, PUT, DELETE");
    CHECK(route_request("PUT", "/upstreams/app/pools/primary/hosts/a").method_allowed);
    CHECK(m.params[2] == "a");

    m = route_request("POST", "/upstreams/app/pools/primary/hosts/a/down");
    CHECK(m.endpoint == Endpoint::host_down);
    CHECK(m.write);
    m = route_request("GET", "/upstreams/app/pools/primary/hosts/a/up");
    CHECK(m.endpoint == Endpoint::host_up);
    CHECK_FALSE(m.method_allowed);
    CHECK(m.allow == "POST");

    m = route_request("PUT", "/upstreams/app/pools/primary");
    CHECK(m.endpoint == Endpoint::pool);
    CHECK(m.write);
    m = route_request("POST", "/upstreams/app/pools");
    CHECK(m.endpoint == Endpoint::pools);
    CHECK(m.write);

    m = route_request("PUT", "/listeners/web/routes/default/rules/canary");
    CHECK(m.endpoint == Endpoint::rule);
    CHECK(m.write);
    CHECK(m.params[0] == "web");
    CHECK(m.params[1] == "default");
    CHECK(m.params[2] == "canary");
    CHECK(route_request("GET", "/listeners/web/routes/default/rules").endpoint == Endpoint::rules);
    CHECK(route_request("GET", "/listeners/web/routes/default").endpoint == Endpoint::not_found);

    // Percent-decoding of names; bad escapes, NUL and '/' are refused.
    m = route_request("GET", "/upstreams/a%3Ab");
    CHECK(m.params[0] == "a:b");
    CHECK_FALSE(m.bad_path);
    CHECK(route_request("GET", "/upstreams/a%2Fb").bad_path);
    CHECK(route_request("GET", "/upstreams/a%00").bad_path);
    CHECK(route_request("GET", "/upstreams/a%4").bad_path);
    CHECK(route_request("GET", "/upstreams/a%zz").bad_path);
    CHECK(route_request("GET", "/upstreams//pools").bad_path);
    // Decoded, but not a name anything can have: 400 with the reason, not 404.
    RouteMatch sp = route_request("GET", "/upstreams/a%20b");
    CHECK(sp.bad_path);
    CHECK(sp.bad_why == "path segment \"a b\" may contain only letters, digits and . _ - :");
    CHECK(route_request("PUT", "/listeners/web/routes/default/rules/r%3Cx%3E").bad_path);
  }

  TEST_CASE("query arguments") {
    CHECK(query_arg("since=3&limit=10", "since") == "3");
    CHECK(query_arg("since=3&limit=10", "limit") == "10");
    CHECK_FALSE(query_arg("since=3", "limit").has_value());
    CHECK(query_arg("flag&x=1", "flag") == "");
    CHECK_FALSE(query_arg("", "since").has_value());
  }

  TEST_CASE("host PUT bodies: weight and/or admin; GET's fields sent back") {
    HostSetBody b;
    CHECK(parse_host_set_body(R"({"weight": 3})", "a", b) == "");
    CHECK((b.weight == 3u && !b.down && !b.address));
    HostSetBody g;
    CHECK(parse_host_set_body(R"({"id": "a", "address": "127.0.0.1:1", "weight": 0, "admin": "down", "health": "up",
                                  "active": 0, "total": 4, "failures": 0, "status_failures": 0, "responses": {}})",
                              "a", g) == "");
    CHECK((g.weight == 0u && g.down == true && g.address == addr("127.0.0.1:1")));
    HostSetBody e;
    CHECK(parse_host_set_body(R"({"health": "up"})", "a", e) ==
          "body: nothing to change: give \"weight\" and/or \"admin\"");
    CHECK(parse_host_set_body(R"({"id": "b", "weight": 1})", "a", e) ==
          "body.id: \"b\" differs from the host in the path, \"a\"");
    CHECK(parse_host_set_body(R"({"weight": 1001})", "a", e) == "body.weight: expected an integer 0..1000, got 1001");
    CHECK(parse_host_set_body(R"({"admin": "drain"})", "a", e) ==
          "body.admin: expected \"up\" or \"down\", got string \"drain\"");
    CHECK(parse_host_set_body(R"({"wieght": 1})", "a", e) == "body.wieght: unknown key");
  }

  TEST_CASE("host bodies") {
    HostBody b;
    CHECK(parse_host_body(R"({"id": "c", "address": "127.0.0.1:8083", "weight": 5})", b) == "");
    CHECK(b.id == "c");
    CHECK(b.address == addr("127.0.0.1:8083"));
    CHECK(b.weight == 5);
    HostBody d;
    CHECK(parse_host_body(R"({"id": "c", "address": "127.0.0.1:8083"})", d) == "");
    CHECK(d.weight == 1);
    HostBody e;
    CHECK(parse_host_body(R"({"address": "127.0.0.1:8083"})", e) == "body: missing required key \"id\"");
    CHECK(parse_host_body(R"({"id": "c", "address": "127.0.0.1:8083", "weight": 5000})", e) ==
          "body.weight: expected an integer 0..1000, got 5000");
    CHECK(parse_host_body(R"({"id": "c", "address": "127.0.0.1:70000"})", e) ==
          "body.address: bad address \"127.0.0.1:70000\": port must be an integer 1..65535, got \"70000\"");
    CHECK(parse_host_body(R"({"id": "c", "address": "[::]:8083"})", e)
              .starts_with("body.address: bad address \"[::]:8083\": the unspecified address is not a host"));
    CHECK(parse_host_body(R"({"id": "c", "address": "127.0.0.1:1", "wieght": 1})", e) == "body.wieght: unknown key");
    CHECK(parse_host_body(R"({"id": "c d", "address": "127.0.0.1:1"})", e).starts_with("body.id: "));
    CHECK(parse_host_body(R"({"id": "..", "address": "127.0.0.1:1"})", e) ==
          "body.id: \"..\" must not be \".\" or \"..\" (no admin API URL path can name it)");
    CHECK(parse_host_body(R"({"id": "c", "address": "127.0.0.1:1", "id": "d"})", e) == "body.id: duplicate key");
    CHECK(parse_host_body(R"([1, 2])", e) == "body: expected a JSON object, got an array");
    CHECK(parse_host_body("", e) == "body: expected a JSON object, got an empty body");
    CHECK(parse_host_body(R"({"id": )", e) ==
          "body.id: invalid JSON at line 1, column 8: the document ends where a "
          "value is expected");
    CHECK(parse_host_body(R"({"id": "c", "weight": 1e999})", e) ==
          "body.weight: invalid JSON at line 1, column 23: the number 1e999 is out of range (beyond a double's "
          "1.8e308)");
    // What GET shows is taken back: "admin" is kept, the counters are ignored.
    HostBody g;
    CHECK(parse_host_body(R"({"id": "c", "address": "127.0.0.1:8083", "weight": 2, "admin": "down",
        "health": "unknown", "active": 0, "total": 0, "failures": 0, "status_failures": 0,
        "responses": {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}})",
                          g) == "");
    CHECK((g.id == "c" && g.weight == 2 && g.down));
    CHECK(parse_host_body(R"({"id": "c", "address": "127.0.0.1:1", "admin": "drain"})", e) ==
          "body.admin: expected \"up\" or \"down\", got string \"drain\"");
    CHECK(parse_host_body(R"({"id": "c", "address": "127.0.0.1:1", "total": -1})", e) ==
          "body.total: expected a count (an integer >= 0, read-only), got -1");
    // Several errors at once, one line.
    CHECK(parse_host_body(R"({"weight": "x"})", e) ==
          "body.weight: expected an integer 0..1000, got string \"x\"; body: missing required key \"id\"; "
          "body: missing required key \"address\"");
  }

  TEST_CASE("pool bodies") {
    PoolBody p;
    CHECK(parse_pool_body(R"({"id": "dr", "priority": 1, "method": "chash"})", "", p) == "");
    CHECK(p.id == "dr");
    CHECK(p.priority == 1);
    CHECK(p.method == shm::Method::chash);
    PoolBody q;
    CHECK(parse_pool_body(R"({"priority": 3})", "dr", q) == "");
    CHECK(q.priority == 3);
    CHECK_FALSE(q.method.has_value());
    PoolBody r;
    CHECK(parse_pool_body(R"({})", "dr", r) == "body: set pool needs \"priority\" and/or \"method\"");
    CHECK(parse_pool_body(R"({"id": "x", "priority": 1})", "dr", r) ==
          "body.id: \"x\" differs from the pool in the path, \"dr\"");
    CHECK(parse_pool_body(R"({"id": "dr", "priority": 1})", "dr", r) == "");
    CHECK(parse_pool_body(R"({"priority": 1})", "", r) == "body: missing required key \"id\"");
    // What GET shows: the hosts, with their read-only state and counters.
    PoolBody g;
    CHECK(parse_pool_body(R"({"id": "dr", "priority": 1, "method": "chash", "hosts": [{"id": "a",
        "address": "127.0.0.1:1", "weight": 2, "admin": "down", "health": "up", "active": 0, "total": 5,
        "failures": 0, "status_failures": 0, "responses": {"1xx": 0, "2xx": 5}}]})",
                          "dr", g) == "");
    REQUIRE(g.hosts.has_value());
    REQUIRE(g.hosts->size() == 1);
    CHECK(((*g.hosts)[0].id == "a" && (*g.hosts)[0].weight == 2 && (*g.hosts)[0].down));
    CHECK(parse_pool_body(R"({"id": "dr", "hosts": []})", "", r) == "");
    CHECK(parse_pool_body(R"({"id": "dr", "hosts": [{"id": "a", "address": "127.0.0.1:1"}]})", "", r) ==
          "body.hosts: a new pool starts empty: add its hosts with POST .../hosts once it exists");
    CHECK(parse_pool_body(R"({"priority": 1, "hosts": [{"id": "a"}]})", "dr", r) ==
          "body.hosts[0]: missing required key \"address\"");
    CHECK(parse_pool_body(R"({"id": "x", "method": "fastest"})", "", r)
              .starts_with("body.method: unknown method \"fastest\" (known: "));
  }

  TEST_CASE("a pool's hosts sent back: the checks and which error comes first") {
    // check_pool_hosts looks ids up in hash maps (it walked the body for each
    // host and the table for each body entry); its answers stay these.
    TempSegment ts(shm::Caps{4, 8, 1100});
    seed(ts.seg);  // app/primary: a 1001 weight 1, b 1002 weight 2
    shm::Writer w(ts.seg);
    w.set_persist(false);
    w.commit([](shm::Table& t, std::vector<std::string>&) {
      const int dr = t.add_pool(0, "dr", 1, shm::Method::round_robin);
      t.add_host(dr, "a", addr("127.0.0.1:2001"), 1);  // the same id in another pool
      t.add_host(dr, "c", addr("127.0.0.1:2003"), 1);
      const int big = t.add_pool(1, "big", 0, shm::Method::round_robin);
      for (int i = 0; i < 1000; ++i)
        t.add_host(big, "h" + std::to_string(i), addr(fmt::format("127.0.0.1:{}", 3000 + i).c_str()), 1);
    });
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    const int primary = t.find_pool(0, "primary"), dr = t.find_pool(0, "dr"), big = t.find_pool(1, "big");
    auto host = [](const char* id, const char* address, uint32_t weight = 1, bool down = false) {
      return HostBody{id, addr(address), weight, down};
    };
    const HostBody a = host("a", "127.0.0.1:1001"), b = host("b", "127.0.0.1:1002", 2);
    const HostBody z = host("z", "127.0.0.1:1009");
    CHECK(check_pool_hosts(t, primary, {a, b}) == "");
    CHECK(check_pool_hosts(t, primary, {b, a}) == "");  // any order
    CHECK(check_pool_hosts(t, dr, {host("c", "127.0.0.1:2003"), host("a", "127.0.0.1:2001")}) == "");
    // Ids within the body: listed twice, in the body's order with "no host".
    CHECK(check_pool_hosts(t, primary, {a, b, a}) == "body.hosts: host \"a\" is listed twice");
    CHECK(check_pool_hosts(t, primary, {b, a, b}) == "body.hosts: host \"b\" is listed twice");
    CHECK(check_pool_hosts(t, primary, {a, a, z}) == "body.hosts: host \"a\" is listed twice");
    CHECK(check_pool_hosts(t, primary, {a, z, a}) == "body.hosts: the pool has no host \"z\"");
    CHECK(check_pool_hosts(t, primary, {z, z}) == "body.hosts: the pool has no host \"z\"");
    // Against the pool: another pool's host is not this one's.
    CHECK(check_pool_hosts(t, primary, {a, b, host("c", "127.0.0.1:2003")}) ==
          "body.hosts: the pool has no host \"c\"");
    CHECK(check_pool_hosts(t, dr, {host("c", "127.0.0.1:2003"), b}) == "body.hosts: the pool has no host \"b\"");
    // The pool's hosts, in table order: missing, or sent otherwise.
    CHECK(check_pool_hosts(t, primary, {}) == "body.hosts: host \"a\" is missing");
    CHECK(check_pool_hosts(t, primary, {b}) == "body.hosts: host \"a\" is missing");
    CHECK(check_pool_hosts(t, primary, {a}) == "body.hosts: host \"b\" is missing");
    CHECK(check_pool_hosts(t, primary, {b, host("a", "127.0.0.1:1001", 3)}) ==
          "body.hosts: host \"a\" is 127.0.0.1:1001 weight=1 admin up in the pool");
    CHECK(check_pool_hosts(t, primary, {host("b", "127.0.0.1:1002", 2, true), host("a", "127.0.0.1:2001")}) ==
          "body.hosts: host \"a\" is 127.0.0.1:1001 weight=1 admin up in the pool");
    CHECK(check_pool_hosts(t, primary, {a, host("b", "127.0.0.1:1002", 2, true)}) ==
          "body.hosts: host \"b\" is 127.0.0.1:1002 weight=2 admin up in the pool");
    CHECK(check_pool_hosts(t, dr, {host("a", "127.0.0.1:1001"), host("c", "127.0.0.1:2003")}) ==
          "body.hosts: host \"a\" is 127.0.0.1:2001 weight=1 admin up in the pool");
    // A big pool, sent back in reverse order; then with one host twice.
    std::vector<HostBody> all;
    for (int i = 999; i >= 0; --i)
      all.push_back(HostBody{"h" + std::to_string(i), addr(fmt::format("127.0.0.1:{}", 3000 + i).c_str()), 1, false});
    CHECK(check_pool_hosts(t, big, all) == "");
    all.push_back(all[10]);
    CHECK(check_pool_hosts(t, big, all) == "body.hosts: host \"h989\" is listed twice");
    all.pop_back();
    all.pop_back();  // h0
    CHECK(check_pool_hosts(t, big, all) == "body.hosts: host \"h0\" is missing");
  }

  TEST_CASE("rule bodies") {
    shm::RuleSpec s;
    CHECK(parse_rule_body(R"({"id": "canary", "upstream": "pre", "ip": ["127.0.0.2", "10.0.0.0/8"],
                               "header": "X-Canary=1", "cookie": "beta=yes", "percent": 5})",
                          "", s) == "");
    CHECK(s.id == "canary");
    CHECK(s.upstream == "pre");
    REQUIRE(s.cidrs.size() == 2);
    CHECK(s.cidrs[1].to_string() == "10.0.0.0/8");
    CHECK(s.header_name == "X-Canary");
    CHECK(s.header_value == "1");
    CHECK(s.cookie_name == "beta");
    CHECK(s.percent_bp == 500);
    // set rule: the id comes from the path.
    shm::RuleSpec t;
    CHECK(parse_rule_body(R"({"upstream": "pre", "percent": 50})", "canary", t) == "");
    CHECK(t.id == "canary");
    CHECK(t.percent_bp == 5000);
    CHECK(parse_rule_body(R"({"id": "canary", "upstream": "pre", "percent": 1})", "canary", t) == "");
    CHECK(parse_rule_body(R"({"id": "other", "upstream": "pre", "percent": 1})", "canary", t) ==
          "body.id: \"other\" differs from the rule in the path, \"canary\"");
    CHECK(parse_rule_body(R"({"id": "r", "upstream": "pre"})", "", t) ==
          "body: a rule needs at least one matcher (ip, header, cookie or percent)");
    CHECK(parse_rule_body(R"({"id": "r", "upstream": "pre", "header": "novalue"})", "", t) ==
          "body.header: expected \"NAME=VALUE\", got \"novalue\"");
    CHECK(parse_rule_body(R"({"id": "r", "upstream": "pre", "percent": 101})", "", t) ==
          "body.percent: expected a number 0..100 in steps of 0.01, got 101");
    // Kept in basis points: 0.001 would be stored as 0, a rule that never matches.
    CHECK(parse_rule_body(R"({"id": "r", "upstream": "pre", "percent": 0.001})", "", t) ==
          "body.percent: expected a number 0..100 in steps of 0.01, got 0.001");
    CHECK(parse_rule_body(R"({"id": "r", "upstream": "pre", "percent": 12.34})", "", t) == "");
    CHECK(t.percent_bp == 1234);
    // A block given twice would take two slots of shm.max_rule_cidrs; an
    // overlapping but different one is a block of its own.
    CHECK(parse_rule_body(R"({"id": "r", "upstream": "pre", "ip": ["10.0.0.1", "10.0.0.0/8", "10.0.0.1/32"]})", "",
                          t) == "body.ip[2]: address block 10.0.0.1/32 is given twice (also body.ip[0])");
    CHECK(parse_rule_body(R"({"id": "r", "upstream": "pre", "ip": ["10.0.0.1", "10.0.0.0/8", "::1"]})", "", t) == "");
    CHECK(t.cidrs.size() == 3);
    // An IPv4-mapped IPv6 block is the IPv4 block (parse_cidr), so the same one.
    CHECK(parse_rule_body(R"({"id": "r", "upstream": "pre", "ip": ["10.0.0.1", "::ffff:10.0.0.1"]})", "", t) ==
          "body.ip[1]: address block 10.0.0.1/32 is given twice (also body.ip[0])");
    CHECK(
        parse_rule_body(R"({"id": "r", "upstream": "pre", "ip": ["10.1.2.3/16"]})", "", t).starts_with("body.ip[0]: "));
    CHECK(parse_rule_body(R"({"upstream": "pre", "percent": 1})", "", t) == "body: missing required key \"id\"");
    // The form GET shows: header and cookie as objects, "hits" (read-only, ignored).
    shm::RuleSpec o;
    CHECK(parse_rule_body(R"({"id": "ck", "upstream": "pre", "header": {"name": "X-B", "value": "2"},
                               "cookie": {"name": "beta", "value": "yes"}, "hits": 12})",
                          "ck", o) == "");
    CHECK((o.header_name == "X-B" && o.header_value == "2" && o.cookie_name == "beta" && o.cookie_value == "yes"));
    CHECK(parse_rule_body(R"({"upstream": "pre", "header": {"name": "X-B", "value": "", "x": 1}})", "ck", o) ==
          "body.header.x: unknown key");
    CHECK(parse_rule_body(R"({"upstream": "pre", "header": {"value": "1"}})", "ck", o) ==
          "body.header: missing required key \"name\"");
    CHECK(parse_rule_body(R"({"upstream": "pre", "cookie": {"name": "", "value": "1"}})", "ck", o) ==
          "body.cookie.name: expected a non-empty name");
    CHECK(parse_rule_body(R"({"upstream": "pre", "cookie": 3})", "ck", o) ==
          "body.cookie: expected \"NAME=VALUE\" or {\"name\": NAME, \"value\": VALUE}, got 3");
    CHECK(parse_rule_body(R"({"upstream": "pre", "percent": 1, "hits": "x"})", "ck", o) ==
          "body.hits: expected the rule's hit count (an integer), got string \"x\"");
  }

  TEST_CASE("consumer bodies and routes") {
    ConsumerBody b;
    CHECK(parse_consumer_body(R"({"name": "alice", "key": "k-123"})", b) == "");
    CHECK((b.name == "alice" && b.key == "k-123"));
    ConsumerBody x;
    CHECK(parse_consumer_body(R"({"name": "alice"})", x) == "body: missing required key \"key\"");
    CHECK(parse_consumer_body(R"({"name": "alice", "key": "has space"})", x) ==
          "body.key: expected a key of 1..512 visible ASCII characters");
    CHECK(parse_consumer_body(R"({"name": "alice", "key": ""})", x) ==
          "body.key: expected a key of 1..512 visible ASCII characters");
    CHECK(parse_consumer_body(R"({"name": "alice", "key": "k", "extra": 1})", x) == "body.extra: unknown key");
    CHECK(route_request("POST", "/consumers").endpoint == Endpoint::consumers);
    CHECK(route_request("POST", "/consumers").write);
    CHECK(route_request("GET", "/consumers/alice").endpoint == Endpoint::consumer);
    CHECK(route_request("DELETE", "/consumers/alice").write);
    CHECK(route_request("PUT", "/consumers/alice").allow == "GET, HEAD, DELETE");
    CHECK(route_request("GET", "/consumers/a/b").endpoint == Endpoint::not_found);
  }

  TEST_CASE("the API on a segment: reads, writes, tokens, errors") {
    TempSegment ts;
    seed(ts.seg);
    const config::Config cfg = admin_config(kToken);
    Api api(ts.seg, cfg);
    const std::string bearer = "Bearer " + kToken;

    auto r = call(api, "GET", "/status");
    CHECK(r.status == 200);
    CHECK(r.body.find("\"id\": \"a\", \"address\": \"127.0.0.1:1001\"") != std::string::npos);
    CHECK(r.body == status_json(ts.seg) + "\n");  // the same document as gwctl status --json

    CHECK(call(api, "GET", "/").content_type == "text/html; charset=utf-8");
    CHECK(call(api, "GET", "/metrics").content_type == "text/plain; version=0.0.4; charset=utf-8");
    CHECK(call(api, "GET", "/upstreams/app/pools/primary/hosts/b")
              .body.starts_with("{\"id\": \"b\", \"address\": \"127.0.0.1:1002\", \"weight\": 2"));
    CHECK(call(api, "GET", "/upstreams/nope").status == 404);
    CHECK(call(api, "GET", "/upstreams/nope").body == "{\"error\": \"unknown upstream \\\"nope\\\"\"}\n");
    CHECK(call(api, "GET", "/upstreams/app/pools/primary/hosts/z").body ==
          "{\"error\": \"unknown host \\\"app/primary/z\\\"\"}\n");
    CHECK(call(api, "GET", "/nope").status == 404);
    CHECK(call(api, "GET", "/events?since=x").status == 400);
    CHECK(call(api, "GET", "/events?limit=0").status == 400);
    CHECK(call(api, "GET", "/events?since=0&limit=1").body.find("\"text\": \"seeded\"") != std::string::npos);

    // 405 with Allow.
    r = call(api, "PATCH", "/upstreams/app/pools/primary");
    CHECK(r.status == 405);
    CHECK(r.allow == "GET, HEAD, PUT, DELETE");

    const std::string host_c = R"({"id": "c", "address": "127.0.0.1:1003", "weight": 3})";
    // 401: no token, another scheme, a wrong token (same length and not).
    r = call(api, "POST", "/upstreams/app/pools/primary/hosts", host_c);
    CHECK(r.status == 401);
    CHECK(r.www_authenticate == "Bearer realm=\"gw\"");
    CHECK(call(api, "POST", "/upstreams/app/pools/primary/hosts", host_c, "Basic " + kToken).status == 401);
    std::string wrong = kToken;
    wrong.back() = 'X';
    r = call(api, "POST", "/upstreams/app/pools/primary/hosts", host_c, "Bearer " + wrong);
    CHECK(r.status == 401);
    CHECK(r.www_authenticate == "Bearer realm=\"gw\", error=\"invalid_token\"");
    CHECK(call(api, "POST", "/upstreams/app/pools/primary/hosts", host_c, "Bearer " + kToken + "x").status == 401);
    CHECK(call(api, "POST", "/upstreams/app/pools/primary/hosts", host_c, "Bearer").status == 401);

    // The writes: through shm::ops, the same events as gwctl.
    r = call(api, "POST", "/upstreams/app/pools/primary/hosts", host_c, bearer);
    CHECK(r.status == 201);
    CHECK(r.location == "/upstreams/app/pools/primary/hosts/c");  // RFC 9110 15.3.2
    CHECK(r.body.find("\"message\": \"add host app/primary/c 127.0.0.1:1003 weight=3\"") != std::string::npos);
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    CHECK(t.find_host(0, "c") >= 0);
    r = call(api, "POST", "/upstreams/app/pools/primary/hosts", host_c, "bearer " + kToken);
    CHECK(r.status == 409);
    CHECK(r.location.empty());
    CHECK(call(api, "POST", "/upstreams/app/pools/nope/hosts", host_c, bearer).status == 404);
    CHECK(call(api, "POST", "/upstreams/app/pools/primary/hosts", R"({"id": "d"})", bearer).status == 400);

    r = call(api, "POST", "/upstreams/app/pools/primary/hosts/c/down", "", bearer);
    CHECK(r.status == 200);
    CHECK(r.body.find("\"changed\": true") != std::string::npos);
    r = call(api, "POST", "/upstreams/app/pools/primary/hosts/c/down", "", bearer);
    CHECK(r.body.find("\"changed\": false, \"message\": \"host app/primary/c is already down\"") != std::string::npos);
    bool saw_event = false;
    for (uint64_t i = 0; i < ts.seg.header().event_head.load(); ++i) {
      shm::EventData e{};
      if (shm::read_event(ts.seg, i, e) == shm::EventRead::ok &&
          std::string(e.text) == "host_down app/primary/c 127.0.0.1:1003 (admin: api down)")
        saw_event = true;
    }
    CHECK(saw_event);

    r = call(api, "POST", "/upstreams/app/pools", R"({"id": "dr", "priority": 1})", bearer);
    CHECK(r.status == 201);
    CHECK(r.location == "/upstreams/app/pools/dr");
    r = call(api, "PUT", "/upstreams/app/pools/dr", R"({"method": "chash"})", bearer);
    CHECK(r.status == 200);
    CHECK(r.body.find("warning") == std::string::npos);
    // A change that leaves a chash pool past the ring's bound (total weight
    // 6,553) is made, and says so in "warning".
    for (int i = 0; i < 7; ++i) {
      const std::string id = "w" + std::to_string(i);
      r = call(api, "POST", "/upstreams/app/pools/dr/hosts",
               R"({"id": ")" + id + R"(", "address": "127.0.0.1:)" + std::to_string(2000 + i) + R"(", "weight": 1000})",
               bearer);
      CHECK(r.status == 201);
      CHECK((r.body.find("warning") != std::string::npos) == (i == 6));
    }
    CHECK(r.body.find(", \"warning\": \"pool app/dr: chash over a total weight of 7000, more than 6553: its ring is "
                      "scaled down to 1048576 points") != std::string::npos);
    for (int i = 0; i < 7; ++i)
      CHECK(call(api, "DELETE", "/upstreams/app/pools/dr/hosts/w" + std::to_string(i), "", bearer).status == 200);
    CHECK(call(api, "POST", "/upstreams/app/pools", R"({"id": "dr"})", bearer).status == 409);
    CHECK(call(api, "DELETE", "/upstreams/app/pools/primary", "", bearer).status == 409);  // not empty
    CHECK(call(api, "DELETE", "/upstreams/app/pools/dr", "", bearer).status == 200);
    CHECK(call(api, "DELETE", "/upstreams/app/pools/primary/hosts/c", "", bearer).status == 200);
    CHECK(call(api, "DELETE", "/upstreams/app/pools/primary/hosts/c", "", bearer).status == 404);

    // Rules.
    const std::string rule = R"({"id": "canary", "upstream": "pre", "header": "X-Canary=1"})";
    r = call(api, "POST", "/listeners/web/routes/default/rules", rule, bearer);
    CHECK(r.status == 201);
    CHECK(r.location == "/listeners/web/routes/default/rules/canary");
    CHECK(call(api, "POST", "/listeners/web/routes/default/rules", rule, bearer).status == 409);
    CHECK(call(api, "POST", "/listeners/web/routes/nope/rules", rule, bearer).status == 404);
    CHECK(call(api, "POST", "/listeners/nope/routes/default/rules", rule, bearer).body ==
          "{\"error\": \"unknown listener \\\"nope\\\" (or it is not an http listener)\"}\n");
    CHECK(
        call(api, "PUT", "/listeners/web/routes/default/rules/canary", R"({"upstream": "pre", "percent": 10})", bearer)
            .status == 200);
    r = call(api, "GET", "/listeners/web/routes/default/rules/canary");
    CHECK(r.body == "{\"id\": \"canary\", \"upstream\": \"pre\", \"percent\": 10, \"hits\": 0}\n");
    CHECK(call(api, "PUT", "/listeners/web/routes/default/rules/ghost", R"({"upstream": "pre", "percent": 10})", bearer)
              .status == 404);
    CHECK(call(api, "POST", "/listeners/web/routes/default/rules", R"({"id": "x", "upstream": "nope", "percent": 1})",
               bearer)
              .status == 400);
    CHECK(call(api, "DELETE", "/listeners/web/routes/default/rules/canary", "", bearer).status == 200);
  }

  TEST_CASE("the API: a DELETE, down or up with a body is a 400 before anything changes") {
    // The body was dropped and the change made: {"dry_run": true} removed
    // the host, {"weight": 0} downed it with its weight as it was.
    TempSegment ts;
    seed(ts.seg);
    const config::Config cfg = admin_config(kToken);
    Api api(ts.seg, cfg);
    const std::string bearer = "Bearer " + kToken;
    const uint64_t gen = ts.seg.header().published.load();
    Response r = call(api, "DELETE", "/upstreams/app/pools/primary/hosts/a", R"({"dry_run": true})", bearer);
    CHECK(r.status == 400);
    CHECK(r.body == "{\"error\": \"DELETE /upstreams/app/pools/primary/hosts/a takes no body (got 17 bytes)\"}\n");
    CHECK(call(api, "POST", "/upstreams/app/pools/primary/hosts/a/down", R"({"weight": 0})", bearer).status == 400);
    CHECK(call(api, "POST", "/upstreams/app/pools/primary/hosts/a/up", "not json", bearer).status == 400);
    CHECK(call(api, "DELETE", "/upstreams/app/pools/primary", "{}", bearer).status == 400);
    CHECK(ts.seg.header().published.load() == gen);
    // Without one, as before.
    CHECK(call(api, "POST", "/upstreams/app/pools/primary/hosts/a/down", "", bearer).status == 200);
    CHECK(call(api, "DELETE", "/upstreams/app/pools/primary/hosts/a", "", bearer).status == 200);
  }

  TEST_CASE("the API: a write that cannot take the writer lock is a 503 with Retry-After, and changes nothing") {
    // It was a 500, which the README's 500 row does not list, and a client
    // could not tell it from a change that failed for good.
    TempSegment ts;
    seed(ts.seg);
    const config::Config cfg = admin_config(kToken);
    Api api(ts.seg, cfg);
    const std::string bearer = "Bearer " + kToken;
    const uint32_t saved = shm::testing::writer_lock_wait_ms;
    shm::testing::writer_lock_wait_ms = 100;
    std::atomic<bool> held{false}, release{false};
    std::thread holder([&] {
      try {
        shm::Writer(ts.seg).commit([&](shm::Table&, std::vector<std::string>&) {
          held = true;
          while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
          throw shm::TableError("(the holder changes nothing)");
        });
      } catch (const shm::TableError&) {
      }
    });
    while (!held) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const uint64_t gen = ts.seg.header().published.load();
    const Response r = call(api, "POST", "/upstreams/app/pools/primary/hosts/a/down", "", bearer);
    release = true;
    holder.join();
    shm::testing::writer_lock_wait_ms = saved;
    CHECK(r.status == 503);
    CHECK(r.retry_after == "1");
    CHECK(r.body ==
          "{\"error\": \"another writer has held the shm writer lock for 100 ms; is a gwctl stopped (SIGSTOP)?; the "
          "change was not made, try again\"}\n");
    CHECK(ts.seg.header().published.load() == gen);
    CHECK(call(api, "POST", "/upstreams/app/pools/primary/hosts/a/down", "", bearer).status == 200);
  }

  TEST_CASE("the API: a write with a query string is a 400 before anything changes") {
    TempSegment ts;
    seed(ts.seg);
    const config::Config cfg = admin_config(kToken);
    Api api(ts.seg, cfg);
    const std::string bearer = "Bearer " + kToken;
    const uint64_t gen = ts.seg.header().published.load();
    // The query was dropped and the change made: "?dry_run=1" removed the host.
    Response r = call(api, "DELETE", "/upstreams/app/pools/primary/hosts/a?dry_run=1", "", bearer);
    CHECK(r.status == 400);
    CHECK(r.body ==
          "{\"error\": \"a write takes no query string (got \\\"?dry_run=1\\\"): the change goes in the "
          "path and the JSON body\"}\n");
    CHECK(call(api, "POST", "/upstreams/app/pools/primary/hosts/a/down?", "", bearer).status == 400);
    CHECK(call(api, "PUT", "/upstreams/app/pools/primary/hosts/a?weight=0", R"({"admin": "down"})", bearer).status ==
          400);
    CHECK(call(api, "POST", "/consumers?x", R"({"name": "n", "key": "k"})", bearer).status == 400);
    CHECK(ts.seg.header().published.load() == gen);
    // Before the body is read, as the token is; a write without the token is still a 401.
    const std::optional<Response> pre =
        api.precheck(Request{"DELETE", "/upstreams/app/pools/primary/hosts/a?x=1", bearer, {}});
    REQUIRE(pre.has_value());
    CHECK(pre->status == 400);
    CHECK(api.precheck(Request{"DELETE", "/upstreams/app/pools/primary/hosts/a?x=1", {}, {}})->status == 401);
    // Reads keep the arguments they take.
    CHECK(call(api, "GET", "/events?since=0&limit=1").status == 200);
    CHECK(call(api, "DELETE", "/upstreams/app/pools/primary/hosts/a", "", bearer).status == 200);
  }

  TEST_CASE("the API: a read with a query argument it does not take is a 400 naming it") {
    TempSegment ts;
    seed(ts.seg);
    const config::Config cfg = admin_config(kToken);
    Api api(ts.seg, cfg);
    // "?sinse=5" was dropped: the whole ring from 0, as if no argument was given.
    Response r = call(api, "GET", "/events?sinse=5");
    CHECK(r.status == 400);
    CHECK(r.body == "{\"error\": \"GET /events: unknown query argument \\\"sinse\\\" (it takes since, limit)\"}\n");
    CHECK(call(api, "GET", "/events?since=0&limt=1").status == 400);
    CHECK(call(api, "HEAD", "/events?x").status == 400);
    // One given twice: which one counts would be a guess.
    r = call(api, "GET", "/events?since=0&since=5");
    CHECK(r.status == 400);
    CHECK(r.body == "{\"error\": \"GET /events: query argument \\\"since\\\" given twice\"}\n");
    // The other reads take none.
    r = call(api, "GET", "/upstreams/app/pools/primary/hosts/a?x=1");
    CHECK(r.status == 400);
    CHECK(r.body ==
          "{\"error\": \"GET /upstreams/app/pools/primary/hosts/a: unknown query argument \\\"x\\\" "
          "(it takes none)\"}\n");
    for (const std::string t : {"/?since=1", "/metrics?name=gw_up", "/status?json", "/upstreams?u=app",
                                "/upstreams/app?x=", "/upstreams/app/pools?x=1", "/upstreams/app/pools/primary?x=1",
                                "/upstreams/app/pools/primary/hosts?x=1", "/routes?x=1", "/consumers?x=1",
                                "/listeners/web/routes/default/rules?x=1"}) {
      CAPTURE(t);
      CHECK(call(api, "GET", t).status == 400);
    }
    // Before the endpoint runs (and the admin server's early answer has it).
    const std::optional<Response> pre = api.precheck(Request{"GET", "/status?x=1", {}, {}});
    REQUIRE(pre.has_value());
    CHECK(pre->status == 400);
    // An empty query or empty parts are no arguments.
    CHECK(call(api, "GET", "/status?").status == 200);
    CHECK(call(api, "GET", "/events?&since=0&&limit=1&").status == 200);
    CHECK(call(api, "GET", "/events?since=0&limit=1").status == 200);
  }

  TEST_CASE("the API takes back what it shows: GET, edit, PUT or POST") {
    TempSegment ts;
    seed(ts.seg);
    const config::Config cfg = admin_config(kToken);
    Api api(ts.seg, cfg);
    const std::string bearer = "Bearer " + kToken;
    auto replace = [](std::string s, std::string_view from, std::string_view to) {
      auto at = s.find(from);
      REQUIRE(at != std::string::npos);
      return s.replace(at, from.size(), to);
    };

    // A rule: GET shows header and cookie as objects, and hits.
    const std::string rules = "/listeners/web/routes/default/rules";
    CHECK(
        call(api, "POST", rules, R"({"id": "ck", "upstream": "pre", "header": "X-B=2", "cookie": "beta=yes"})", bearer)
            .status == 201);
    std::string got = call(api, "GET", rules + "/ck").body;
    CHECK(got ==
          "{\"id\": \"ck\", \"upstream\": \"pre\", \"header\": {\"name\": \"X-B\", \"value\": \"2\"}, "
          "\"cookie\": {\"name\": \"beta\", \"value\": \"yes\"}, \"hits\": 0}\n");
    auto r = call(api, "PUT", rules + "/ck", replace(got, "\"2\"", "\"3\""), bearer);
    CHECK_MESSAGE(r.status == 200, r.body);
    CHECK(call(api, "GET", rules + "/ck").body == replace(got, "\"2\"", "\"3\""));
    CHECK(call(api, "POST", rules, replace(got, "\"ck\"", "\"ck2\""), bearer).status == 201);
    CHECK(call(api, "PUT", rules + "/ck", replace(got, "\"ck\"", "\"ck2\""), bearer).body ==
          "{\"error\": \"body.id: \\\"ck2\\\" differs from the rule in the path, \\\"ck\\\"\"}\n");

    // A host: GET's body, with another id and address, adds a host; its admin state is kept.
    const std::string hosts = "/upstreams/app/pools/primary/hosts";
    CHECK(call(api, "POST", hosts + "/b/down", "", bearer).status == 200);
    got = call(api, "GET", hosts + "/b").body;
    r = call(api, "POST", hosts, replace(replace(got, "\"b\"", "\"c\""), "1002", "1003"), bearer);
    CHECK_MESSAGE(r.status == 201, r.body);
    CHECK(r.body.find("\"message\": \"add host app/primary/c 127.0.0.1:1003 weight=2 admin down\"") !=
          std::string::npos);
    CHECK(call(api, "GET", hosts + "/c").body.find("\"admin\": \"down\"") != std::string::npos);

    // A pool: GET's body (id, hosts and all) PUT back, with the priority edited.
    const std::string pool = "/upstreams/app/pools/primary";
    got = call(api, "GET", pool).body;
    r = call(api, "PUT", pool, replace(got, "\"priority\": 0", "\"priority\": 4"), bearer);
    CHECK_MESSAGE(r.status == 200, r.body);
    CHECK(call(api, "GET", pool).body.find("\"priority\": 4") != std::string::npos);
    // An edit of the hosts is refused, not dropped.
    got = call(api, "GET", pool).body;
    r = call(api, "PUT", pool, replace(got, "\"weight\": 2", "\"weight\": 9"), bearer);
    CHECK(r.status == 400);
    CHECK(
        r.body.starts_with("{\"error\": \"body.hosts: host \\\"b\\\" is 127.0.0.1:1002 weight=2 admin down in "
                           "the pool; a pool's hosts change through /upstreams/app/pools/primary/hosts"));
    r = call(api, "PUT", pool, replace(got, "\"id\": \"c\"", "\"id\": \"z\""), bearer);
    CHECK(r.body.starts_with("{\"error\": \"body.hosts: the pool has no host \\\"z\\\""));
    CHECK(call(api, "PUT", pool, R"({"priority": 1, "hosts": []})", bearer)
              .body.starts_with("{\"error\": \"body.hosts: host \\\"a\\\" is missing"));
  }

  TEST_CASE("the API: writes disabled without a token; full tables are 507; a clustered node refuses") {
    TempSegment ts(shm::Caps{4, 8, 2});  // two hosts at most
    seed(ts.seg);
    const config::Config no_token = admin_config("");
    Api ro(ts.seg, no_token);
    auto r = call(ro, "POST", "/upstreams/app/pools/primary/hosts/a/down", "", "Bearer whatever");
    CHECK(r.status == 403);
    CHECK(r.body == "{\"error\": \"writes are disabled: the gateway's config has no admin.token\"}\n");
    CHECK(call(ro, "GET", "/status").status == 200);

    const config::Config cfg = admin_config(kToken);
    Api api(ts.seg, cfg);
    r = call(api, "POST", "/upstreams/app/pools/primary/hosts", R"({"id": "c", "address": "127.0.0.1:1003"})",
             "Bearer " + kToken);
    CHECK(r.status == 507);
    CHECK(r.body == "{\"error\": \"host table is full (shm.max_hosts = 2)\"}\n");

    ts.seg.header().cluster.state.store(shm::kClusterSynced);
    r = call(api, "POST", "/upstreams/app/pools/primary/hosts/a/down", "", "Bearer " + kToken);
    CHECK(r.status == 409);
    CHECK(r.body.find("takes its pools and hosts from etcd") != std::string::npos);
    // Rules stay local to each node.
    CHECK(call(api, "POST", "/listeners/web/routes/default/rules", R"({"id": "x", "upstream": "pre", "percent": 1})",
               "Bearer " + kToken)
              .status == 201);
  }

  TEST_CASE("the API: a table that fails validation is a 503, not an empty gateway") {
    TempSegment ts;
    seed(ts.seg);
    const config::Config cfg = admin_config(kToken);
    Api api(ts.seg, cfg);
    CHECK(call(api, "GET", "/upstreams/app").status == 200);
    // A foreign writer's table: a host in a pool that does not exist.
    shm::Table t(ts.seg.caps());
    const uint64_t pub = shm::read_published(ts.seg, t);
    t.hosts()[0].pool = 200;
    shm::store_words(ts.seg.slot_words(static_cast<int>(pub & 1)), t.words(), t.word_count());
    for (const char* path : {"/upstreams/app", "/status", "/metrics"}) {
      CAPTURE(path);
      auto r = call(api, "GET", path);
      CHECK(r.status == 503);
      CHECK(r.body.find("fails validation: a host names a pool that does not exist") != std::string::npos);
    }
    // Writes too: the same 503 (the README's table), not a 500, and nothing changes.
    const std::string bearer = "Bearer " + kToken;
    const uint64_t gen = ts.seg.header().published.load() >> 1;
    const std::pair<const char*, const char*> writes[] = {
        {"POST", "/upstreams/app/pools/primary/hosts/a/down"},
        {"DELETE", "/upstreams/app/pools/primary/hosts/b"},
        {"DELETE", "/listeners/web/routes/default/rules/x"},
        {"DELETE", "/consumers/nobody"},
    };
    for (const auto& [method, path] : writes) {
      const std::string where = path;
      CAPTURE(where);
      auto r = call(api, method, path, "", bearer);
      CHECK(r.status == 503);
      CHECK(r.body.find("fails validation: a host names a pool that does not exist") != std::string::npos);
    }
    auto r =
        call(api, "POST", "/upstreams/app/pools/primary/hosts", R"({"id": "c", "address": "127.0.0.1:1003"})", bearer);
    CHECK(r.status == 503);
    CHECK((ts.seg.header().published.load() >> 1) == gen);
  }

  TEST_CASE("data plane helpers: listener, host and rule rows") {
    TempSegment ts;
    seed(ts.seg);
    shm::ops::add_rule(ts.seg, "web", "default", [] {
      shm::RuleSpec s;
      s.id = "five";
      s.upstream = "pre";
      s.percent_bp = 500;
      return s;
    }());
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    balance::Snapshot snap;
    snap.build(t);
    proxy::RelayEnv env;
    env.seg = &ts.seg;
    env.snap = &snap;
    env.worker = 1;
    std::vector<proxy::ListenerRuntime> lrs(2);
    lrs[1].stats_row = 1;
    env.listeners = lrs;

    proxy::metrics::listener_open(env, 0);
    proxy::metrics::listener_open(env, 0);
    proxy::metrics::listener_close(env, 0);
    proxy::metrics::listener_reject(env, 1, shm::kRejectNoHost);
    proxy::metrics::http_request(env, 0);
    proxy::metrics::http_error(env, 0, 503);
    proxy::metrics::http_error(env, 0, 418);  // not listed: "other"
    env.worker = 0;
    proxy::metrics::listener_open(env, 0);
    auto lt = shm::listener_totals(ts.seg, 0);
    CHECK(lt.accepted == 3);
    CHECK(lt.active == 2);
    CHECK(lt.http_requests == 1);
    CHECK(lt.http_errors[shm::http_code_index(503)] == 1);
    CHECK(lt.http_errors[0] == 1);
    CHECK(shm::listener_totals(ts.seg, 1).rejects[shm::kRejectNoHost] == 1);
    shm::clear_worker_counters(ts.seg, 1);  // worker 1 died: its connections are gone
    CHECK(shm::listener_totals(ts.seg, 0).active == 1);
    CHECK(shm::listener_totals(ts.seg, 0).accepted == 3);

    const shm::HostRecord& a = t.hosts()[0];
    proxy::metrics::host_connected(env, a.slot, a.tag, 400);          // <= 0.5 ms
    proxy::metrics::host_connected(env, a.slot, a.tag, 1000);         // <= 1 ms (le is inclusive)
    proxy::metrics::host_connected(env, a.slot, a.tag, 20000000);     // above every bound
    proxy::metrics::host_response(env, a.slot, a.tag, 503, 1, 1001);  // (a response 1 us after its start)
    proxy::metrics::host_status_failure(env, a.slot, a.tag);          // the 503 was listed in retry.on
    proxy::metrics::host_response(env, a.slot, a.tag, 200, 1, 1001);  // (a response 1 us after its start)
    auto st = shm::host_stats_totals(ts.seg, a.slot, a.tag);
    CHECK(st.status_failures == 1);
    CHECK(st.connect.buckets[0] == 1);
    CHECK(st.connect.buckets[1] == 1);
    CHECK(st.connect.buckets[shm::kLatencyBuckets] == 1);
    CHECK(st.connect.count() == 3);
    CHECK(st.connect.sum_us == 20001400);
    CHECK(st.responses[1] == 1);
    CHECK(st.responses[4] == 1);
    CHECK(st.response.count() == 2);

    // Rule hits: by the id view the HTTP proxy holds (into the snapshot's table).
    REQUIRE(t.rules().size() == 1);
    const shm::RuleRecord& rr = t.rules()[0];
    CHECK(rr.stat_tag != 0);
    proxy::metrics::rule_hit(env, shm::name_of(rr.id));
    proxy::metrics::rule_hit(env, shm::name_of(rr.id));
    proxy::metrics::rule_hit(env, "five");  // a view from elsewhere counts nothing
    CHECK(shm::rule_hits(ts.seg, rr.stat_slot, rr.stat_tag) == 2);

    // set rule keeps the counters; remove + add gives fresh ones.
    shm::RuleSpec s;
    s.id = "five";
    s.upstream = "pre";
    s.percent_bp = 700;
    shm::ops::set_rule(ts.seg, "web", "default", s);
    shm::Table t2(ts.seg.caps());
    shm::read_published(ts.seg, t2);
    CHECK(t2.rules()[0].stat_tag == rr.stat_tag);
    CHECK(shm::rule_hits(ts.seg, t2.rules()[0].stat_slot, t2.rules()[0].stat_tag) == 2);
    // ... unless its upstream changes: the hits went to the old one (the
    // counter's upstream label), and the new one starts at 0.
    s.upstream = "app";
    shm::ops::set_rule(ts.seg, "web", "default", s);
    shm::Table t2b(ts.seg.caps());
    shm::read_published(ts.seg, t2b);
    CHECK(t2b.rules()[0].stat_tag != rr.stat_tag);
    CHECK(shm::rule_hits(ts.seg, t2b.rules()[0].stat_slot, t2b.rules()[0].stat_tag) == 0);
    s.upstream = "pre";
    shm::ops::remove_rule(ts.seg, "web", "default", "five");
    shm::ops::add_rule(ts.seg, "web", "default", s);
    shm::Table t3(ts.seg.caps());
    shm::read_published(ts.seg, t3);
    CHECK(t3.rules()[0].stat_tag != rr.stat_tag);
    CHECK(shm::rule_hits(ts.seg, t3.rules()[0].stat_slot, t3.rules()[0].stat_tag) == 0);

    // The metrics text carries them.
    const config::Config cfg = admin_config(kToken);
    const std::string text = metrics_text(ts.seg, t, cfg);
    CHECK(text.find("gw_listener_accepted_total{listener=\"web\",protocol=\"http\"} 3\n") != std::string::npos);
    CHECK(text.find("gw_listener_active{listener=\"web\",protocol=\"http\"} 1\n") != std::string::npos);
    CHECK(text.find("gw_listener_rejected_total{listener=\"l4\",protocol=\"tcp\",reason=\"no_host\"} 1\n") !=
          std::string::npos);
    CHECK(text.find("gw_listener_http_errors_total{listener=\"web\",protocol=\"http\",code=\"503\"} 1\n") !=
          std::string::npos);
    CHECK(text.find("gw_upstream_host_responses_total{upstream=\"app\",pool=\"primary\",host=\"a\",address=\"127.0.0.1:"
                    "1001\",class=\"5xx\"} 1\n") != std::string::npos);
    CHECK(text.find("gw_upstream_host_connect_seconds_bucket{upstream=\"app\",pool=\"primary\",host=\"a\",address="
                    "\"127.0.0.1:1001\",le=\"0.001\"} 2\n") != std::string::npos);
    CHECK(text.find("gw_upstream_host_connect_seconds_count{upstream=\"app\",pool=\"primary\",host=\"a\",address="
                    "\"127.0.0.1:1001\"} 3\n") != std::string::npos);
    CHECK(text.find("gw_upstream_host_connect_seconds_sum{upstream=\"app\",pool=\"primary\",host=\"a\",address="
                    "\"127.0.0.1:1001\"} 20.0014\n") != std::string::npos);
    CHECK(text.find("gw_rule_hits_total{listener=\"web\",route=\"default\",rule=\"five\",upstream=\"pre\"} 2\n") !=
          std::string::npos);
    // Each family's HELP and TYPE appear once.
    CHECK(text.find("# TYPE gw_upstream_host_connect_seconds histogram\n") ==
          text.rfind("# TYPE gw_upstream_host_connect_seconds histogram\n"));

    // Another tag on the slot (the host was removed, the slot reused): the row starts over.
    shm::reset_slot(ts.seg.host(a.slot), a.tag + 1000);
    proxy::metrics::host_connected(env, a.slot, a.tag + 1000, 10);
    CHECK(shm::host_stats_totals(ts.seg, a.slot, a.tag).connect.count() == 0);
    CHECK(shm::host_stats_totals(ts.seg, a.slot, a.tag + 1000).connect.count() == 1);
  }

  TEST_CASE("worker counters: a row whose worker exited keeps its counts in the metrics; its gauges go") {
    TempSegment ts;
    seed(ts.seg);
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    const auto bad_json = static_cast<size_t>(proxy::FrameError::bad_json);
    // Row 0: a worker of the generation a reload replaced (exited); row 2: the running one.
    shm::WorkerRuntime& old = ts.seg.worker(0);
    old.started_ms.store(1);
    old.accepted.store(5);
    old.frame_rejects[bad_json].store(2);
    old.connections.store(0);
    shm::WorkerRuntime& cur = ts.seg.worker(2);
    cur.pid.store(::getpid());
    cur.started_ms.store(2);
    cur.accepted.store(1);
    cur.frame_rejects[bad_json].store(1);
    cur.connections.store(1);
    ts.seg.guard(0).auth_ok.store(4);
    const std::string text = metrics_text(ts.seg, t, admin_config(kToken));
    CHECK(text.find("gw_worker_accepted_total{worker=\"0\"} 5\n") != std::string::npos);
    CHECK(text.find("gw_worker_accepted_total{worker=\"2\"} 1\n") != std::string::npos);
    CHECK(text.find("gw_worker_frame_rejects_total{worker=\"0\",reason=\"bad_json\"} 2\n") != std::string::npos);
    CHECK(text.find("gw_worker_auth_total{worker=\"0\",result=\"ok\"} 4\n") != std::string::npos);
    // A row no worker ever ran in has no series; gauges are the running workers' only.
    CHECK(text.find("{worker=\"1\"") == std::string::npos);
    CHECK(text.find("gw_worker_connections{worker=\"2\"} 1\n") != std::string::npos);
    CHECK(text.find("gw_worker_connections{worker=\"0\"}") == std::string::npos);
    CHECK(text.find("gw_worker_table_generation{worker=\"0\"}") == std::string::npos);
  }

  TEST_CASE("cluster metrics: the sync counters are counters, the state and revision gauges") {
    TempSegment ts;
    seed(ts.seg);
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    CHECK(metrics_text(ts.seg, t, admin_config(kToken)).find("gw_cluster") == std::string::npos);  // no cluster
    auto& cl = ts.seg.header().cluster;
    cl.state.store(shm::kClusterSynced);
    cl.revision.store(42);
    cl.reconnects.store(3);
    cl.relists.store(2);
    cl.applied.store(7);
    const std::string text = metrics_text(ts.seg, t, admin_config(kToken));
    CHECK(text.find("# TYPE gw_cluster_revision gauge\ngw_cluster_revision 42\n") != std::string::npos);
    CHECK(text.find("gw_cluster_state{state=\"synced\"} 1\n") != std::string::npos);
    CHECK(text.find("# TYPE gw_cluster_reconnects_total counter\ngw_cluster_reconnects_total 3\n") !=
          std::string::npos);
    CHECK(text.find("# TYPE gw_cluster_relists_total counter\ngw_cluster_relists_total 2\n") != std::string::npos);
    CHECK(text.find("# TYPE gw_cluster_applied_total counter\ngw_cluster_applied_total 7\n") != std::string::npos);
  }

  TEST_CASE("data plane helpers: byte counters per listener and per host") {
    TempSegment ts;
    seed(ts.seg);
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    balance::Snapshot snap;
    snap.build(t);
    proxy::RelayEnv env;
    env.seg = &ts.seg;
    env.snap = &snap;
    std::vector<proxy::ListenerRuntime> lrs(2);
    lrs[1].stats_row = 1;
    env.listeners = lrs;
    const shm::HostRecord& a = t.hosts()[0];
    REQUIRE(ts.seg.host(a.slot).tag.load() == a.tag);

    // Two workers' rows are summed.
    env.worker = 1;
    proxy::metrics::client_received(env, 0, 100);
    proxy::metrics::client_sent(env, 0, 7);
    proxy::metrics::host_sent(env, a.slot, a.tag, 100);
    proxy::metrics::host_received(env, a.slot, a.tag, 7);
    env.worker = 0;
    proxy::metrics::client_received(env, 0, 20);
    proxy::metrics::client_sent(env, 1, 5);  // another listener
    proxy::metrics::host_sent(env, a.slot, a.tag, 20);
    proxy::metrics::host_received(env, a.slot, a.tag, 3000);
    auto lt = shm::listener_totals(ts.seg, 0);
    CHECK(lt.received_bytes == 120);
    CHECK(lt.sent_bytes == 7);
    CHECK(shm::listener_totals(ts.seg, 1).sent_bytes == 5);
    auto st = shm::host_stats_totals(ts.seg, a.slot, a.tag);
    CHECK(st.sent_bytes == 120);
    CHECK(st.received_bytes == 3007);

    // A row another tag wrote (an earlier owner of the slot) is not summed.
    REQUIRE(ts.seg.stat_workers() > 2);
    ts.seg.host_stats(2, a.slot).tag.store(a.tag + 1000);
    ts.seg.host_stats(2, a.slot).sent_bytes.store(555);
    ts.seg.host_stats(2, a.slot).received_bytes.store(666);
    st = shm::host_stats_totals(ts.seg, a.slot, a.tag);
    CHECK(st.sent_bytes == 120);
    CHECK(st.received_bytes == 3007);

    // A connection that outlived its host's hold on the slot counts nothing,
    // and leaves the row (the slot's current host's) alone.
    proxy::metrics::host_sent(env, a.slot, a.tag + 2000, 9);
    proxy::metrics::host_received(env, a.slot, a.tag + 2000, 9);
    CHECK(ts.seg.host_stats(0, a.slot).tag.load() == a.tag);
    CHECK(shm::host_stats_totals(ts.seg, a.slot, a.tag).sent_bytes == 120);
    CHECK(shm::host_stats_totals(ts.seg, a.slot, a.tag + 2000).sent_bytes == 0);

    // The listener rows start over with the master (clear_listener_row).
    shm::clear_listener_row(ts.seg, 1);
    CHECK(shm::listener_totals(ts.seg, 1).sent_bytes == 0);

    // /metrics and the status document carry them.
    const config::Config cfg = admin_config(kToken);
    const std::string text = metrics_text(ts.seg, t, cfg);
    CHECK(text.find("gw_listener_received_bytes_total{listener=\"web\",protocol=\"http\"} 120\n") != std::string::npos);
    CHECK(text.find("gw_listener_sent_bytes_total{listener=\"web\",protocol=\"http\"} 7\n") != std::string::npos);
    CHECK(text.find("gw_upstream_host_sent_bytes_total{upstream=\"app\",pool=\"primary\",host=\"a\",address="
                    "\"127.0.0.1:1001\"} 120\n") != std::string::npos);
    CHECK(text.find("gw_upstream_host_received_bytes_total{upstream=\"app\",pool=\"primary\",host=\"a\",address="
                    "\"127.0.0.1:1001\"} 3007\n") != std::string::npos);
    CHECK(text.find("# TYPE gw_upstream_host_sent_bytes_total counter\n") != std::string::npos);
    CHECK(host_json(ts.seg, t, 0).find("\"sent_bytes\": 120, \"received_bytes\": 3007}") != std::string::npos);
  }

  TEST_CASE("a connect or response of a host whose slot went to another host leaves that host's counters alone") {
    TempSegment ts;
    seed(ts.seg);
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    balance::Snapshot snap;
    snap.build(t);
    proxy::RelayEnv env;
    env.seg = &ts.seg;
    env.snap = &snap;
    env.worker = 0;
    const shm::HostRecord& a = t.hosts()[0];
    // a was removed with a request in flight and its slot went to c (the
    // writer resets the slot before it publishes c); this worker counted c.
    const uint32_t c = a.tag + 1000;
    shm::reset_slot(ts.seg.host(a.slot), c);
    proxy::metrics::host_connected(env, a.slot, c, 400);
    proxy::metrics::host_response(env, a.slot, c, 200, 1, 1001);  // (a response 1 us after its start)
    proxy::metrics::host_sent(env, a.slot, c, 10);
    // Then a's connect and answer come in: counted nowhere, c's row kept.
    proxy::metrics::host_connected(env, a.slot, a.tag, 400);
    proxy::metrics::host_response(env, a.slot, a.tag, 503, 1, 1001);  // (a response 1 us after its start)
    proxy::metrics::host_status_failure(env, a.slot, a.tag);
    auto st = shm::host_stats_totals(ts.seg, a.slot, c);
    CHECK(st.connect.count() == 1);
    CHECK(st.responses[1] == 1);
    CHECK(st.responses[4] == 0);
    CHECK(st.status_failures == 0);
    CHECK(st.response.count() == 1);
    CHECK(st.sent_bytes == 10);
    // c's next counts add to what it had.
    proxy::metrics::host_connected(env, a.slot, c, 400);
    CHECK(shm::host_stats_totals(ts.seg, a.slot, c).connect.count() == 2);
    CHECK(shm::host_stats_totals(ts.seg, a.slot, c).sent_bytes == 10);
  }

  TEST_CASE("a table read before a host's slot went to another host shows none of that host's failures") {
    TempSegment ts;
    seed(ts.seg);
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    const shm::HostRecord& a = t.hosts()[0];
    shm::HealthPolicy p{5, 1000, false, false};
    shm::record_failure(ts.seg.host(a.slot), a.tag, p, 100);
    CHECK(host_json(ts.seg, t, 0).find("\"failures\": 1,") != std::string::npos);
    // The slot now holds another host (a later table), with failures of its own.
    shm::reset_slot(ts.seg.host(a.slot), a.tag + 1000);
    for (uint64_t now : {200, 300}) shm::record_failure(ts.seg.host(a.slot), a.tag + 1000, p, now);
    CHECK(host_json(ts.seg, t, 0).find("\"failures\": 0,") != std::string::npos);
    const std::string text = metrics_text(ts.seg, t, admin_config(kToken));
    CHECK(text.find("gw_upstream_host_failures_total{upstream=\"app\",pool=\"primary\",host=\"a\",address="
                    "\"127.0.0.1:1001\"} 0\n") != std::string::npos);
  }

  TEST_CASE("gw_upstream_hosts_usable counts what the balancer may use: a host not yet checked too, if so set") {
    TempSegment ts;
    seed(ts.seg);
    for (const bool unknown_usable : {true, false}) {
      shm::Writer w(ts.seg);
      w.set_persist(false);
      w.commit([&](shm::Table& t, std::vector<std::string>& ev) {
        t.upstreams()[0].check.type = shm::kCheckTcp;
        t.upstreams()[0].check.unknown_usable = unknown_usable ? 1 : 0;
        ev.push_back("checks");
      });
      shm::Table t(ts.seg.caps());
      shm::read_published(ts.seg, t);
      const shm::HostRecord& b = t.hosts()[1];  // a: not checked yet; b: checked down
      shm::record_check(ts.seg.host(b.slot), b.tag, shm::kActiveDown);
      const std::string text = metrics_text(ts.seg, t, admin_config(kToken));
      CHECK(text.find(fmt::format("gw_upstream_hosts_usable{{upstream=\"app\"}} {}\n", unknown_usable ? 1 : 0)) !=
            std::string::npos);
      // The status document (and so the dashboard's "N of M host(s) usable")
      // counts as the metric does: a itself says "unknown", not "up".
      CHECK(host_json(ts.seg, t, 0).find("\"health\": \"unknown\"") != std::string::npos);
      CHECK(upstream_json(ts.seg, t, 0)
                .starts_with(
                    fmt::format("{{\"name\": \"app\", \"hosts_usable\": {}, \"pools\": [", unknown_usable ? 1 : 0)));
    }
  }

  TEST_CASE("a host passive health holds out says down before its checks' first verdict, not unknown") {
    TempSegment ts;
    seed(ts.seg);
    shm::Writer w(ts.seg);
    w.set_persist(false);
    w.commit([&](shm::Table& t, std::vector<std::string>& ev) {
      t.upstreams()[0].check.type = shm::kCheckTcp;
      t.upstreams()[0].check.unknown_usable = 1;
      ev.push_back("checks");
    });
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    const shm::HostRecord& a = t.hosts()[0];
    CHECK(host_json(ts.seg, t, 0).find("\"health\": \"unknown\"") != std::string::npos);
    const shm::HealthPolicy p{1, 60000, true, true};
    REQUIRE(shm::record_failure(ts.seg.host(a.slot), a.tag, p, core::monotonic_ms()));
    CHECK(host_json(ts.seg, t, 0).find("\"health\": \"down\"") != std::string::npos);
    CHECK(upstream_json(ts.seg, t, 0).starts_with("{\"name\": \"app\", \"hosts_usable\": 1, "));
  }

  TEST_CASE("a host of weight 0 is not usable: the balancer gives it no new connection") {
    // It counted: an upstream whose only host had weight 0 answered 503
    // no_host with hosts_usable 1.
    TempSegment ts;
    seed(ts.seg);
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    auto usable = [&] {
      shm::read_published(ts.seg, t);
      const std::string text = metrics_text(ts.seg, t, admin_config(kToken));
      const std::string key = "gw_upstream_hosts_usable{upstream=\"app\"} ";
      const size_t at = text.find(key);
      REQUIRE(at != std::string::npos);
      const int metric = std::stoi(text.substr(at + key.size()));
      CHECK(upstream_json(ts.seg, t, 0)
                .starts_with(fmt::format("{{\"name\": \"app\", \"hosts_usable\": {}, \"pools\": [", metric)));
      return metric;
    };
    const int before = usable();
    REQUIRE(before >= 1);
    shm::Writer w(ts.seg);
    w.set_persist(false);
    w.commit([&](shm::Table& tt, std::vector<std::string>& ev) {
      tt.hosts()[0].weight = 0;
      ev.push_back("drain a");
    });
    CHECK(usable() == before - 1);
  }

  TEST_CASE("events: paging, a since past the head, events the ring overwrote") {
    TempSegment ts;
    for (int i = 0; i < 5; ++i) shm::emit_event(ts.seg, shm::EventKind::config, 1, "e" + std::to_string(i));
    CHECK(events_json(ts.seg, 3, 10).ends_with("\"text\": \"e4\"}]}"));
    CHECK(events_json(ts.seg, 3, 10).starts_with("{\"head\": 5, \"next\": 5, \"lost\": 0, \"events\": [{\"seq\": 3, "));
    CHECK(events_json(ts.seg, 0, 2).starts_with("{\"head\": 5, \"next\": 2, \"lost\": 0, "));
    CHECK(events_json(ts.seg, ~0ull, 1) == "{\"head\": 5, \"next\": 5, \"lost\": 0, \"events\": []}");
    for (uint32_t i = 5; i < shm::kEventCapacity + 10; ++i) shm::emit_event(ts.seg, shm::EventKind::health, 1, "x");
    const std::string j = events_json(ts.seg, 0, 1);
    CHECK(j.starts_with(fmt::format("{{\"head\": {}, \"next\": 11, \"lost\": 10, \"events\": [{{\"seq\": 10, ",
                                    shm::kEventCapacity + 10)));
    CHECK(j.find("\"kind\": \"health\", \"text\": \"x\"") != std::string::npos);
  }

  TEST_CASE("admin config") {
    auto bad = [](const std::string& admin) {
      std::string json = R"({"upstreams": [{"name": "app", "pools": []}],
        "listeners": [{"name": "l4", "listen": "127.0.0.1:18081", "upstream": "app"}], "admin": )" +
                         admin + "}";
      return config::load_string(json).errors;
    };
    CHECK(bad(R"({"listen": "127.0.0.1:9900"})").empty());
    CHECK(bad(R"({"listen": "127.0.0.1:9900", "token": "0123456789abcdef", "timeout_ms": 1000})").empty());
    auto e = bad(R"({"listen": "127.0.0.1:9900", "tokn": "x"})");
    REQUIRE(e.size() == 1);
    CHECK(e[0] == "admin.tokn: unknown key");
    e = bad(R"({"token": "0123456789abcdef"})");
    REQUIRE(e.size() == 1);
    CHECK(e[0] == "admin: missing required key \"listen\"");
    e = bad(R"({"listen": "127.0.0.1:9900", "token": "short"})");
    REQUIRE(e.size() == 1);
    CHECK(e[0] == "admin.token: expected 16..256 printable ASCII characters without spaces, got 5 character(s)");
    e = bad(R"({"listen": "127.0.0.1:18081"})");
    REQUIRE(e.size() == 1);
    CHECK(e[0] == "admin.listen: address 127.0.0.1:18081 is already used by listeners[0]");
    e = bad(R"({"listen": "nowhere"})");
    REQUIRE(e.size() == 1);
    CHECK(e[0].starts_with("admin.listen: bad address \"nowhere\""));
  }
}

TEST_CASE("json_escape: quotes, controls, and only well-formed UTF-8 passes") {
  CHECK(json_escape("a\"b\\c") == "a\\\"b\\\\c");
  CHECK(json_escape(std::string("\n\x01", 2)) == "\\u000a\\u0001");
  CHECK(json_escape("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  CHECK(json_escape("\xff") == "\\ufffd");                                   // never a UTF-8 byte
  CHECK(json_escape("\xc3") == "\\ufffd");                                   // cut short
  CHECK(json_escape("\xc0\xaf") == "\\ufffd\\ufffd");                        // overlong '/'
  CHECK(json_escape("\xed\xa0\x80") == "\\ufffd\\ufffd\\ufffd");             // a surrogate
  CHECK(json_escape("\xf4\x90\x80\x80") == "\\ufffd\\ufffd\\ufffd\\ufffd");  // past U+10FFFF
  CHECK(json_escape("a\xe2\x82z") == "a\\ufffd\\ufffdz");                    // a bad continuation
}

#include <doctest/doctest.h>

#include <algorithm>
#include <string>

#include "gw/config/config.hpp"

using gw::config::HashKey;
using gw::config::load_string;

namespace {
std::string with_listener(const std::string& listener, const std::string& upstream_extra = "") {
  return R"({"workers": 1, "shm": {"name": "h1"},
  "listeners": [)" +
         listener + R"(],
  "upstreams": [{"name": "app")" +
         upstream_extra + R"(, "pools": [{"id": "p", "hosts": [{"id": "a", "address": "127.0.0.1:8081"}]}]},
                {"name": "pre", "pools": [{"id": "p", "hosts": [{"id": "c", "address": "127.0.0.1:8083"}]}]}]})";
}
bool has(const std::vector<std::string>& errors, const std::string& needle) {
  return std::any_of(errors.begin(), errors.end(),
                     [&](const std::string& e) { return e.find(needle) != std::string::npos; });
}
std::string all(const std::vector<std::string>& errors) {
  std::string s;
  for (const auto& e : errors) s += e + "\n";
  return s;
}
}  // namespace

TEST_SUITE("config") {
  TEST_CASE("two listeners on one address are refused, one with routes (and no upstream) too") {
    // The check ran only for listeners with an upstream: a routes listener on
    // a taken address passed -t, then failed the start or split a reload's port.
    auto r = load_string(with_listener(
        R"({"name": "l4", "listen": "127.0.0.1:8080", "protocol": "tcp", "upstream": "app"},
           {"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
            "routes": [{"name": "all", "upstream": "app"}]})"));
    CHECK(r.errors == std::vector<std::string>{"listeners[1].listen: address 127.0.0.1:8080 is already used by "
                                               "listeners[0]"});
    r = load_string(with_listener(
        R"({"name": "a", "listen": "127.0.0.1:8080", "protocol": "http", "routes": [{"name": "all", "upstream": "app"}]},
           {"name": "b", "listen": "127.0.0.1:8080", "protocol": "http", "routes": [{"name": "all", "upstream": "pre"}]})"));
    CHECK(has(r.errors, "listeners[1].listen: address 127.0.0.1:8080 is already used by listeners[0]"));
    r = load_string(with_listener(
        R"({"name": "a", "listen": "127.0.0.1:8080", "protocol": "http", "routes": [{"name": "all", "upstream": "app"}]},
           {"name": "b", "listen": "127.0.0.1:8081", "protocol": "http", "routes": [{"name": "all", "upstream": "pre"}]})"));
    CHECK(r.errors.empty());
  }

  TEST_CASE("the files gw writes: not a directory, not the config, not each other") {
    // Each passed -t and failed the start (or the next reload).
    auto with = [](const std::string& top, const std::string& listener_extra = "") {
      return R"({"workers": 1, "shm": {"name": "h1"}, )" + top +
             R"(, "listeners": [{"name": "web", "listen": "127.0.0.1:8080", "protocol": "http", "upstream": "app")" +
             listener_extra +
             R"(}], "upstreams": [{"name": "app", "pools": [{"id": "p", "hosts": [{"id": "a", "address": "127.0.0.1:8081"}]}]}]})";
    };
    const std::string cfg_path = "/etc/gw/gw.json";
    auto load = [&](const std::string& json) { return gw::config::load_string(json, cfg_path).errors; };
    CHECK(load(with(R"("state_file": "/var/lib/gw/state.json")")).empty());
    for (const char* dir : {"/var/lib/gw/", "/var/lib/gw/.", "/var/lib/gw/.."}) {
      CAPTURE(dir);
      CHECK(
          load(with(R"("state_file": ")" + std::string(dir) + "\"")) ==
          std::vector<std::string>{"state_file: \"" + std::string(dir) + "\" names a directory; give the file's path"});
    }
    CHECK(has(load(with(R"("state_file": "/var/lib/gw/)" + std::string(240, 's') + "\"")),
              "state_file: its file name is 240 bytes; at most 227 are supported"));
    CHECK(load(with(R"("state_file": "/etc/gw/gw.json")")) ==
          std::vector<std::string>{"state_file: is the config file itself"});
    CHECK(load(with(R"("state_file": "/var/lib/gw/s.json", "log_file": "/var/lib/gw/./s.json")")) ==
          std::vector<std::string>{"state_file: is the log_file too; they must be two files"});
    CHECK(load(with(R"("log_file": "/etc/gw/../gw/gw.json")")) ==
          std::vector<std::string>{"log_file: is the config file itself"});
    CHECK(load(with(R"("state_file": "/var/lib/gw/s.json")", R"(, "access_log": {"path": "/var/lib/gw/s.json"})")) ==
          std::vector<std::string>{"listeners[0].access_log.path: is the state_file; they must be two files"});
    CHECK(load(with(R"("state_file": "")", R"(, "access_log": {"path": "/etc/gw/gw.json"})")) ==
          std::vector<std::string>{"listeners[0].access_log.path: is the config file itself"});
  }

  TEST_CASE("an http listener with only an upstream gets one catch-all route and the defaults") {
    auto r = load_string(
        with_listener(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http", "upstream": "app"})"));
    REQUIRE_MESSAGE(r.ok(), all(r.errors));
    const auto& l = r.config.listeners[0];
    CHECK(l.protocol == gw::config::Protocol::http);
    REQUIRE(l.routes.size() == 1);
    CHECK(l.routes[0].name == "default");
    CHECK(l.routes[0].host == "*");
    CHECK(l.routes[0].path == "/");
    CHECK(l.routes[0].upstream == "app");
    CHECK(l.http.client_header_timeout_ms == 60000);
    CHECK(l.http.keepalive_timeout_ms == 75000);
    CHECK(l.http.max_header_bytes == 15360);
    const auto& u = r.config.upstreams[0];
    CHECK(u.read_timeout_ms == 60000);
    CHECK(u.keepalive.max_idle == 64);
    CHECK(u.retry.on_error);
    CHECK(u.retry.on_timeout);
    CHECK_FALSE(u.retry.retries_status(503));
  }

  TEST_CASE("routes, rules, hash keys and upstream HTTP settings parse") {
    auto r = load_string(with_listener(
        R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http", "hash_key": "cookie:sid",
            "http": {"client_header_timeout_ms": 500, "keepalive_requests": 10, "max_headers": 20},
            "routes": [{"name": "v1", "host": "API.Example.com", "path": "/v1/", "upstream": "app", "hash_key": "arg:k",
                        "set_host": "backend.internal",
                        "rules": [{"id": "canary", "ip": ["127.0.0.2", "127.0.0.16/28"], "upstream": "pre"},
                                  {"id": "hdr", "header": "X-Canary=1", "cookie": "beta=yes", "percent": 5.5, "upstream": "pre"}]},
                       {"name": "any", "upstream": "app"}]})",
        R"(, "read_timeout_ms": 1500, "keepalive": {"max_idle": 0, "max_requests": 5},
            "retry": {"on": ["error", "503", "4xx"], "tries": 2, "timeout_ms": 3000})"));
    REQUIRE_MESSAGE(r.ok(), all(r.errors));
    const auto& l = r.config.listeners[0];
    CHECK(l.http.client_header_timeout_ms == 500);
    CHECK(l.http.keepalive_requests == 10);
    CHECK(l.http.max_headers == 20);
    CHECK_FALSE(l.http.underscores_in_headers);  // nginx's default
    REQUIRE(l.routes.size() == 2);
    const auto& v1 = l.routes[0];
    CHECK(v1.host == "api.example.com");
    CHECK(v1.hash_key == HashKey::arg);
    CHECK(v1.hash_key_name == "k");
    CHECK(v1.set_host == "backend.internal");
    REQUIRE(v1.rules.size() == 2);
    CHECK(v1.rules[0].cidrs.size() == 2);
    CHECK(v1.rules[1].header_name == "X-Canary");
    CHECK(v1.rules[1].header_value == "1");
    CHECK(v1.rules[1].cookie_name == "beta");
    CHECK(v1.rules[1].percent_bp == 550);
    CHECK(l.routes[1].hash_key == HashKey::cookie);  // the listener's
    CHECK(l.routes[1].hash_key_name == "sid");
    const auto& u = r.config.upstreams[0];
    CHECK(u.read_timeout_ms == 1500);
    CHECK(u.keepalive.max_idle == 0);
    CHECK(u.keepalive.max_requests == 5);
    CHECK(u.retry.on_error);
    CHECK_FALSE(u.retry.on_timeout);
    CHECK(u.retry.retries_status(503));
    CHECK_FALSE(u.retry.retries_status(502));
    CHECK(u.retry.retries_status(404));
    CHECK(u.retry.tries == 2);
    CHECK(u.retry.timeout_ms == 3000);

    gw::shm::Table t(r.config.shm.caps);
    gw::config::build_table(r.config, t);
    CHECK(t.routes().size() == 2);
    CHECK(t.rules().size() == 2);
    CHECK(t.cidrs().size() == 2);
    CHECK(t.find_rule(t.find_route("web", "v1"), "hdr") == 1);
  }

  TEST_CASE("http settings, routes and rules: every error names its path") {
    auto bad = [](const std::string& listener, const std::string& ups = "") {
      return load_string(with_listener(listener, ups)).errors;
    };
    auto e = bad(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http"})");
    CHECK(has(e, R"(listeners[0]: missing required key "upstream" or "routes")"));
    e = bad(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http", "upstream": "app",
                "http": {"underscores_in_headers": "yes"}})");
    CHECK_MESSAGE(has(e, R"(listeners[0].http.underscores_in_headers: expected true or false, got string "yes")"),
                  all(e));
    auto ok = load_string(with_listener(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
        "upstream": "app", "http": {"underscores_in_headers": true}})"));
    REQUIRE_MESSAGE(ok.ok(), all(ok.errors));
    CHECK(ok.config.listeners[0].http.underscores_in_headers);
    e = bad(
        R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http", "upstream": "app", "routes": [{"name": "r", "upstream": "app"}]})");
    CHECK(has(e, R"(listeners[0].routes: give either "upstream" (every request goes there) or "routes", not both)"));
    e = bad(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
                "routes": [{"name": "r", "upstream": "nope", "path": "v1"},
                           {"name": "r", "upstream": "app", "host": "a b"},
                           {"name": "s", "upstream": "app", "hash_key": "header:"},
                           {"name": "t", "upstream": "app", "hash_key": "frame"}]})");
    CHECK_MESSAGE(
        has(e,
            R"(listeners[0].routes[0].path: expected a path prefix starting with / (no spaces, '?' or '#'), got "v1")"),
        all(e));
    CHECK(has(e, R"(listeners[0].routes[0].upstream: no upstream named "nope")"));
    CHECK(has(e, R"(listeners[0].routes[1].name: duplicate route name "r")"));
    CHECK(has(e, R"(listeners[0].routes[1].host: expected a host name, "*.suffix" or "*", got "a b")"));
    CHECK(has(e, R"(listeners[0].routes[2].hash_key: "header:" needs a name)"));
    CHECK(has(e, R"(listeners[0].routes[3].hash_key: "frame" needs "protocol": "frame")"));
    e = bad(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
                "routes": [{"name": "r", "upstream": "app", "rules": [
                  {"id": "a", "upstream": "pre"},
                  {"id": "b", "upstream": "zzz", "ip": ["10.0.0.1/8"]},
                  {"id": "a", "upstream": "pre", "percent": 101},
                  {"id": "d", "upstream": "pre", "header": "novalue"},
                  {"id": "e", "upstream": "pre", "ip": [], "percent": 100},
                  {"id": "f", "upstream": "pre", "ip": ["10.0.0.1", "10.0.0.0/8", "10.0.0.1/32"]},
                  {"id": "g", "upstream": "pre", "percent": 0.001}]}]})");
    CHECK_MESSAGE(
        has(e, R"(listeners[0].routes[0].rules[0]: a rule needs at least one matcher (ip, header, cookie or percent))"),
        all(e));
    CHECK(has(e, R"(listeners[0].routes[0].rules[1].ip[0]: "10.0.0.1/8" has bits set past its /8 prefix)"));
    CHECK(has(e, R"(listeners[0].routes[0].rules[2].percent: expected a number 0..100 in steps of 0.01, got 101)"));
    CHECK(has(e, R"(listeners[0].routes[0].rules[2].id: duplicate rule id "a" in route "r")"));
    CHECK(has(e, R"(listeners[0].routes[0].rules[3].header: expected "NAME=VALUE", got "novalue")"));
    // No block at all: no address matcher would be left, and this rule would take everyone.
    CHECK(has(e, R"(listeners[0].routes[0].rules[4].ip: expected at least one address block, got [])"));
    // A block given twice (an overlapping one is fine); a share finer than the 0.01 % kept.
    CHECK(has(e,
              "listeners[0].routes[0].rules[5].ip[2]: address block 10.0.0.1/32 is given twice (also "
              "listeners[0].routes[0].rules[5].ip[0])"));
    CHECK(has(e, "listeners[0].routes[0].rules[6].percent: expected a number 0..100 in steps of 0.01, got 0.001"));
    // The object form (as the state file and the admin API show a rule) is read too.
    auto obj = load_string(with_listener(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
        "routes": [{"name": "r", "upstream": "app", "rules": [{"id": "o", "upstream": "pre",
          "header": {"name": "X-B", "value": "2"}, "cookie": {"name": "beta", "value": "a=b"}}]}]})"));
    REQUIRE_MESSAGE(obj.ok(), all(obj.errors));
    const auto& o = obj.config.listeners[0].routes[0].rules[0];
    CHECK((o.header_name == "X-B" && o.header_value == "2" && o.cookie_name == "beta" && o.cookie_value == "a=b"));
    // "hits" is the admin API's read-only counter, not a config key.
    e = bad(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
                "routes": [{"name": "r", "upstream": "app", "rules": [{"id": "h", "upstream": "pre", "percent": 1,
                  "hits": 3, "header": {"name": "X-B"}}]}]})");
    CHECK(has(e, R"(listeners[0].routes[0].rules[0].hits: unknown key)"));
    CHECK(has(e, R"(listeners[0].routes[0].rules[0].header: missing required key "value")"));
    e = bad(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http", "upstream": "app",
                "http": {"max_header_bytes": 20000, "max_headers": 0, "keepalive_timout_ms": 1}})");
    CHECK(has(e, "listeners[0].http.max_header_bytes: expected an integer 256..15360, got 20000"));
    CHECK(has(e, "listeners[0].http.max_headers: expected an integer 1..1000, got 0"));
    CHECK(has(e, "listeners[0].http.keepalive_timout_ms: unknown key"));
    e = bad(R"({"name": "l4", "listen": "127.0.0.1:8080", "protocol": "tcp", "upstream": "app", "hash_key": "uri",
                "routes": [], "http": {}})");
    CHECK(has(e, R"(listeners[0].hash_key: "uri" needs "protocol": "http")"));
    CHECK(has(e, R"(listeners[0].routes: only a listener with "protocol": "http" has routes)"));
    CHECK(has(e, R"(listeners[0].http: only a listener with "protocol": "http" takes http settings)"));
    e = bad(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http", "upstream": "app"})",
            R"(, "retry": {"on": ["eror", "600", 503]}, "keepalive": {"max_idle": -1})");
    CHECK_MESSAGE(
        has(e,
            R"(upstreams[0].retry.on[0]: expected "error", "timeout", "invalid_response", "4xx", "5xx" or a status 400..599 as a string, got "eror")"),
        all(e));
    CHECK(has(e, R"(upstreams[0].retry.on[1]: expected)"));
    CHECK(has(e, R"(upstreams[0].retry.on[2]: expected a string, got 503)"));
    CHECK(has(e, "upstreams[0].keepalive.max_idle: expected an integer 0..100000, got -1"));
  }

  TEST_CASE("a rule's bad header or cookie is reported at its key, not at the rule") {
    // check_rule's reasons were filed under "rules[N]": the path did not say
    // which matcher was wrong.
    auto e = load_string(with_listener(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
        "routes": [{"name": "r", "upstream": "app", "rules": [
          {"id": "a", "upstream": "pre", "header": "X-A= v"},
          {"id": "b", "upstream": "pre", "cookie": "beta=b;c", "percent": 5},
          {"id": "c", "upstream": "pre", "header": {"name": "X Bad", "value": "1"}},
          {"id": "d", "upstream": "pre", "header": "X-A=1", "cookie": {"name": "k", "value": "x,y"}},
          {"id": "e", "upstream": "pre"}]}]})"))
                 .errors;
    const std::string r = "listeners[0].routes[0].rules";
    CHECK_MESSAGE(has(e, r + R"([0].header: header value " v" starts or ends with a space)"), all(e));
    CHECK(has(e, r + "[1].cookie: cookie value \"b;c\" has a character that cannot appear in a cookie value"));
    CHECK(has(e, r + R"([2].header: header name "X Bad" is not a field name)"));
    CHECK(has(e, r + "[3].cookie: cookie value \"x,y\""));
    CHECK(!has(e, r + "[3].header"));
    // What belongs to no one key stays at the rule.
    CHECK(has(e, r + "[4]: a rule needs at least one matcher"));
    CHECK(e.size() == 5);
  }

  TEST_CASE("a route that no request can match is refused") {
    auto route = [](const std::string& keys) {
      return load_string(with_listener(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
          "routes": [{"name": "r", "upstream": "app", )" +
                                       keys + "}]}"));
    };
    const std::string p = "listeners[0].routes[0].";
    // The router matches the Host without its port and one trailing dot.
    for (const char* ok : {"api.example.com", "*.example.com", "*", "[::1]", "[2001:db8::a]", "[::ffff:10.0.0.1]",
                           "10.0.0.1", "API.Example.com"}) {
      CAPTURE(ok);
      auto r = route(std::string(R"("host": ")") + ok + "\"");
      CHECK_MESSAGE(r.ok(), all(r.errors));
    }
    for (const char* port : {"api.example.com:8080", "*.example.com:80", "[::1]:80", "::1", "10.0.0.1:80"}) {
      CAPTURE(port);
      CHECK(has(route(std::string(R"("host": ")") + port + "\"").errors,
                p + "host: expected a host without a port (requests are matched by their Host without it), got \"" +
                    port + "\""));
    }
    for (const char* dot : {"www.example.com.", "*.example.com."}) {
      CAPTURE(dot);
      CHECK(has(route(std::string(R"("host": ")") + dot + "\"").errors,
                p +
                    "host: expected a host without a trailing dot (requests are matched by their Host without it), "
                    "got \"" +
                    dot + "\""));
    }
    // nginx's ".example.com" (the name and its subdomains) is two routes here.
    CHECK(has(route(R"("host": ".example.com")").errors,
              p + "host: expected a host name, got \".example.com\": a leading dot is not nginx's \"example.com and "
                  "its subdomains\" here; write two routes, \"example.com\" and \"*.example.com\""));
    CHECK(has(route(R"("host": "example..com")").errors,
              p + "host: expected a host name, got \"example..com\": label \"\" is empty"));
    CHECK(has(route(R"("host": "*..example.com")").errors,
              p + "host: expected a host name, got \"*..example.com\": label \"\" is empty"));
    CHECK(has(route(R"("host": "*.-a.example.com")").errors,
              p + "host: expected a host name, got \"*.-a.example.com\": label \"-a\" is one starting or ending "
                  "with '-'"));
    CHECK(has(route(R"("host": "..")").errors, p + "host: expected a host"));
    for (const char* bad : {"[::1", "[::1].", "[zz::1]", "*.[::1]", "[]", "a]b"}) {
      CAPTURE(bad);
      CHECK(has(route(std::string(R"("host": ")") + bad + "\"").errors, p + "host: expected a host"));
    }
    // Paths are matched after %XX decoding, "//" merging and dot-segment resolution.
    for (const char* ok : {"/", "/admin/", "/a/.well-known/", "/a/.", "/a/..", "/a.b/c..d/", "/.x"}) {
      CAPTURE(ok);
      auto r = route(std::string(R"("path": ")") + ok + "\"");
      CHECK_MESSAGE(r.ok(), all(r.errors));
    }
    for (const char* dead : {"/admin//", "//admin", "/a/./b", "/./", "/a/../b", "/../"}) {
      CAPTURE(dead);
      CHECK(has(
          route(std::string(R"("path": ")") + dead + "\"").errors,
          p + R"(path: expected a path without "//", "/./" or "/../" (requests are matched after these are resolved), got ")" +
              dead + "\""));
    }
    for (const char* pct : {"/%61dmin/", "/a%2Fb", "/x%2f"}) {
      CAPTURE(pct);
      CHECK(has(route(std::string(R"("path": ")") + pct + "\"").errors,
                p + "path: expected a decoded path without %XX escapes (requests are matched after %XX decoding"));
    }
    // A '%' without two hex digits after it is a literal '%' (a request's "%25"): it can match.
    for (const char* ok : {"/100%", "/100%/", "/a%zz/", "/%2"}) {
      CAPTURE(ok);
      auto r = route(std::string(R"("path": ")") + ok + "\"");
      CHECK_MESSAGE(r.ok(), all(r.errors));
    }
    // A request's %00 is refused (400), so a NUL byte in a prefix matches nothing.
    CHECK(has(route(R"("path": "/a\u0000b")").errors, p + "path: expected a path prefix starting with /"));
  }

  TEST_CASE("set_host: a host name or IP literal with an optional port") {
    auto route = [](const std::string& set_host) {
      return load_string(with_listener(R"({"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
          "routes": [{"name": "r", "upstream": "app", "set_host": ")" +
                                       set_host + "\"}]}"));
    };
    for (const char* ok : {"api.internal", "api.internal:8080", "API-1.internal_x", "10.0.0.1", "10.0.0.1:80", "[::1]",
                           "[2001:db8::1]:8443", "localhost:65535"}) {
      CAPTURE(ok);
      auto r = route(ok);
      CHECK_MESSAGE(r.ok(), all(r.errors));
      CHECK(r.config.listeners.at(0).routes.at(0).set_host == ok);
    }
    for (const char* bad : {"",       "a\\u0001b", "a\\u007f", "a b",  "a\\tb",   "a,b",   "h\\u00e9.example",
                            "a:",     "a:0",       "a:65536",  "a:8x", ":80",     "[::1",  "[::1]x",
                            "[::1]:", "[]",        "a/b",      "a@b",  "a:80:80", "[g::1]"}) {
      CAPTURE(bad);
      auto r = route(bad);
      CHECK_MESSAGE(has(r.errors,
                        "listeners[0].routes[0].set_host: expected a host name or IP literal with an "
                        "optional :port for the Host header, got"),
                    all(r.errors));
    }
    // The value is quoted back on one line.
    CHECK(has(route("a\\u0001b\\u007f").errors, R"(Host header, got "a\x01b\x7f")"));
  }

  TEST_CASE("route and rule counts must fit the shm capacities") {
    auto r = load_string(R"({"shm": {"name": "h2", "max_routes": 1, "max_rules": 1, "max_rule_cidrs": 1},
      "listeners": [{"name": "web", "listen": "127.0.0.1:8080", "protocol": "http",
                     "routes": [{"name": "a", "upstream": "app", "rules": [{"id": "x", "ip": ["10.0.0.0/8", "11.0.0.0/8"], "upstream": "app"},
                                                                           {"id": "y", "percent": 1, "upstream": "app"}]},
                                {"name": "b", "path": "/b", "upstream": "app"}]}],
      "upstreams": [{"name": "app", "pools": []}]})");
    CHECK_MESSAGE(has(r.errors, "shm.max_routes: 2 routes are configured, more than max_routes 1"), all(r.errors));
    CHECK(has(r.errors, "shm.max_rules: 2 rules are configured, more than max_rules 1"));
    CHECK(has(r.errors, "shm.max_rule_cidrs: 2 address blocks are configured, more than max_rule_cidrs 1"));
  }
}

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "config/json_util.hpp"
#include "gw/config/config.hpp"

using gw::config::load_string;

namespace {
const char* kValid = R"({
  "workers": 2, "shm": {"name": "t1", "max_upstreams": 4, "max_pools": 8, "max_hosts": 16},
  "state_file": "/tmp/x.json",
  "listeners": [{"name": "l4", "listen": "127.0.0.1:7000", "protocol": "tcp", "upstream": "app"}],
  "upstreams": [{"name": "app", "connect_timeout_ms": 500, "max_fails": 2,
    "pools": [{"id": "primary", "priority": 0, "method": "round_robin",
               "hosts": [{"id": "a", "address": "127.0.0.1:8081", "weight": 5},
                         {"id": "b", "address": "127.0.0.1:8082"}]},
              {"id": "backup", "priority": 1, "hosts": [{"id": "c", "address": "127.0.0.1:8083"}]}]}]})";

bool has(const std::vector<std::string>& errors, const std::string& needle) {
  return std::any_of(errors.begin(), errors.end(),
                     [&](const std::string& e) { return e.find(needle) != std::string::npos; });
}
std::string replace(std::string s, const std::string& from, const std::string& to) {
  auto p = s.find(from);
  REQUIRE(p != std::string::npos);
  return s.replace(p, from.size(), to);
}
}  // namespace

TEST_SUITE("config") {
  TEST_CASE("a valid config loads with defaults filled in") {
    auto r = load_string(kValid);
    REQUIRE(r.errors.empty());
    const auto& c = r.config;
    CHECK(c.workers == 2);
    CHECK(c.shm.name == "t1");
    CHECK(c.shm.caps.max_hosts == 16);
    REQUIRE(c.upstreams.size() == 1);
    CHECK(c.upstreams[0].connect_timeout_ms == 500);
    CHECK(c.upstreams[0].idle_timeout_ms == 600000);
    CHECK(c.upstreams[0].max_fails == 2);
    CHECK(c.upstreams[0].pools[0].hosts[0].weight == 5);
    CHECK(c.upstreams[0].pools[0].hosts[1].weight == 1);
    CHECK(c.upstreams[0].pools[1].priority == 1);
  }

  TEST_CASE("event_engine: epoll by default, io_uring, and bad values with their JSON path") {
    CHECK(load_string(kValid).config.event_engine == gw::config::EventEngine::epoll);
    auto r = load_string(replace(kValid, R"("workers": 2)", R"("workers": 2, "event_engine": "io_uring")"));
    REQUIRE(r.errors.empty());
    CHECK(r.config.event_engine == gw::config::EventEngine::io_uring);
    r = load_string(replace(kValid, R"("workers": 2)", R"("workers": 2, "event_engine": "kqueue")"));
    CHECK(has(r.errors, R"(event_engine: expected "epoll" or "io_uring", got "kqueue")"));
    r = load_string(replace(kValid, R"("workers": 2)", R"("workers": 2, "event_engine": 1)"));
    CHECK(has(r.errors, "event_engine: expected a string"));
  }

  TEST_CASE("splice_after_bytes: 16 KiB by default, 0 turns splicing off, range checked") {
    CHECK(load_string(kValid).config.splice_after_bytes == 16384);
    auto r = load_string(replace(kValid, R"("workers": 2)", R"("workers": 2, "splice_after_bytes": 0)"));
    REQUIRE(r.errors.empty());
    CHECK(r.config.splice_after_bytes == 0);
    r = load_string(replace(kValid, R"("workers": 2)", R"("workers": 2, "splice_after_bytes": -1)"));
    CHECK(has(r.errors, "splice_after_bytes: expected an integer 0..1073741824"));
  }

  TEST_CASE("a string weight is reported with its JSON path and value") {
    auto r =
        load_string(replace(kValid, R"("address": "127.0.0.1:8082")", R"("address": "127.0.0.1:8082", "weight": "0")"));
    CHECK(has(r.errors, R"(upstreams[0].pools[0].hosts[1].weight: expected an integer 0..1000, got string "0")"));
  }

  TEST_CASE("unknown keys, bad addresses, duplicates and dangling references are all reported") {
    std::string s = replace(kValid, R"("workers": 2)", R"("workers": 2, "wrokers": 3)");
    s = replace(s, R"("127.0.0.1:8081")", R"("127.0.0.1")");
    s = replace(s, R"({"id": "b")", R"({"id": "a")");
    s = replace(s, R"("upstream": "app")", R"("upstream": "nope")");
    s = replace(s, R"("weight": 5)", R"("weight": 5000)");
    auto r = load_string(s);
    CHECK(has(r.errors, "wrokers: unknown key"));
    CHECK(has(r.errors, "upstreams[0].pools[0].hosts[0].address: bad address"));
    CHECK(has(r.errors, "upstreams[0].pools[0].hosts[1].id: duplicate host id \"a\""));
    CHECK(has(r.errors, "listeners[0].upstream: no upstream named \"nope\""));
    CHECK(has(r.errors, "upstreams[0].pools[0].hosts[0].weight: expected an integer 0..1000, got 5000"));
    CHECK(r.errors.size() == 5);
  }

  TEST_CASE("a host's address may not be the unspecified address; a listener's may") {
    auto r = load_string(replace(kValid, R"("127.0.0.1:8081")", R"("0.0.0.0:8081")"));
    CHECK(has(r.errors,
              "upstreams[0].pools[0].hosts[0].address: bad address \"0.0.0.0:8081\": the unspecified "
              "address is not a host to connect to"));
    CHECK(r.errors.size() == 1);
    CHECK(load_string(replace(kValid, R"("127.0.0.1:7000")", R"("0.0.0.0:7000")")).ok());
  }

  TEST_CASE("a listen address gw cannot bind is refused at load, not at start") {
    // Listening sockets are IPV6_V6ONLY: bind(2) refuses an IPv4-mapped
    // address (EINVAL), and a link-local one without an interface (gw takes
    // none). `gwd -t` said ok, and the start failed.
    for (const char* a : {"[::ffff:127.0.0.1]:7000", "[::ffff:0.0.0.0]:7000"}) {
      auto r = load_string(replace(kValid, R"("127.0.0.1:7000")", fmt::format("\"{}\"", a)));
      CHECK(has(r.errors, fmt::format("listeners[0].listen: bad address \"{}\": an IPv4-mapped IPv6 address", a)));
      CHECK(r.errors.size() == 1);
    }
    auto r = load_string(replace(kValid, R"("127.0.0.1:7000")", R"("[fe80::1]:7000")"));
    CHECK(has(r.errors, "listeners[0].listen: bad address \"[fe80::1]:7000\": a link-local address"));
    r = load_string(
        replace(kValid, R"("state_file")", R"("admin": {"listen": "[::ffff:127.0.0.1]:9000"}, "state_file")"));
    CHECK(has(r.errors, "admin.listen: bad address \"[::ffff:127.0.0.1]:9000\": an IPv4-mapped IPv6 address"));
    CHECK(r.errors.size() == 1);
    // What binds is taken as before; a host (connected to, not bound) may be mapped.
    for (const char* a : {"[::1]:7000", "[::]:7000", "0.0.0.0:7000", "[2001:db8::1]:7000"})
      CHECK(load_string(replace(kValid, R"("127.0.0.1:7000")", fmt::format("\"{}\"", a))).ok());
    CHECK(load_string(replace(kValid, R"("127.0.0.1:8081")", R"("[::ffff:127.0.0.1]:8081")")).ok());
  }

  TEST_CASE("admin.listen may not share a port with a listener on the wildcard address") {
    // The listeners' sockets are SO_REUSEPORT, the admin server's is not:
    // 0.0.0.0:P and 127.0.0.1:P cannot both bind, and `gwd -t` said ok.
    auto admin = [](const std::string& listen, const std::string& admin_listen) {
      return load_string(replace(replace(kValid, R"("127.0.0.1:7000")", "\"" + listen + "\""), R"("state_file")",
                                 R"("admin": {"listen": ")" + admin_listen + R"("}, "state_file")"));
    };
    auto r = admin("127.0.0.1:7000", "0.0.0.0:7000");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0] ==
          "admin.listen: address 0.0.0.0:7000 overlaps listeners[0] (127.0.0.1:7000): the wildcard address takes the "
          "port on every address of its family");
    r = admin("0.0.0.0:7000", "127.0.0.1:7000");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0] ==
          "admin.listen: address 127.0.0.1:7000 overlaps listeners[0] (0.0.0.0:7000): the wildcard address takes the "
          "port on every address of its family");
    CHECK(admin("[::1]:7000", "[::]:7000").errors.size() == 1);
    // Another port, another address or another family binds.
    for (auto [l, a] : {std::pair{"127.0.0.1:7000", "127.0.0.1:7001"},
                        {"127.0.0.1:7000", "127.0.0.2:7000"},
                        {"0.0.0.0:7000", "[::]:7000"},
                        {"[::]:7000", "127.0.0.1:7000"}}) {
      CAPTURE(l);
      CAPTURE(a);
      auto fine = admin(l, a);
      CHECK(fine.errors.empty());
    }
  }

  TEST_CASE("a file path, hook command or check path with a NUL byte is refused, not cut at it") {
    // The system takes these as C strings: "/var/log/gw\u0000.log" would
    // open /var/log/gw, and `gwd -t` said ok.
    const std::string nul = "\\u0000";
    auto top = [&](const std::string& kv) { return replace(kValid, R"("state_file": "/tmp/x.json")", kv); };
    auto r = load_string(top(R"("state_file": "/tmp/x)" + nul + R"(.json")"));
    CHECK(has(r.errors, "state_file: expected a file path without a NUL byte, got string \"/tmp/x\\x00.json\""));
    CHECK(r.errors.size() == 1);
    r = load_string(top(R"("state_file": "/tmp/x.json", "log_file": "/tmp/gw)" + nul + R"(")"));
    CHECK(has(r.errors, "log_file: expected a file path without a NUL byte"));
    r = load_string(replace(kValid, R"("upstream": "app"}])",
                            R"("upstream": "app", "access_log": {"path": "/tmp/a)" + nul + R"(b"}}])"));
    CHECK(has(r.errors, "listeners[0].access_log.path: expected a file path without a NUL byte"));
    CHECK(r.errors.size() == 1);
    r = load_string(top(R"("state_file": "/tmp/x.json", "hooks": {"host_down": "logger down)" + nul + R"(; rm x"})"));
    CHECK(has(r.errors, "hooks.host_down: expected a shell command without a NUL byte"));
    CHECK(r.errors.size() == 1);
    r = load_string(replace(kValid, R"("max_fails": 2,)",
                            R"("max_fails": 2, "health": {"type": "http", "path": "/ok)" + nul + R"(x"},)"));
    CHECK(has(r.errors, "upstreams[0].health.path: expected a path starting with /"));
    CHECK(r.errors.size() == 1);
    // Without one they load as before.
    CHECK(load_string(top(R"("state_file": "/tmp/x.json", "log_file": "/tmp/gw.log", "hooks": {"host_down": "true"})"))
              .ok());
  }

  TEST_CASE("shm.name: NAME.lock is another instance's lock file") {
    auto errs = load_string(replace(kValid, R"("name": "t1")", R"("name": "gw.lock")")).errors;
    CHECK(has(errs, "shm.name: \"gw.lock\" is not a segment name (NAME.lock is the lock file of NAME)"));
    CHECK(load_string(replace(kValid, R"("name": "t1")", R"("name": "gw.locks")")).ok());
  }

  TEST_CASE("a whole number written as a fraction or with an exponent is shown as one") {
    auto with_weight = [](const char* w) {
      return load_string(replace(kValid, R"("weight": 5)", std::string(R"("weight": )") + w)).errors;
    };
    CHECK(has(with_weight("1.0"), "upstreams[0].pools[0].hosts[0].weight: expected an integer 0..1000, got 1.0"));
    CHECK(has(with_weight("1e3"), "upstreams[0].pools[0].hosts[0].weight: expected an integer 0..1000, got 1000.0"));
    CHECK(has(with_weight("2.5"), "upstreams[0].pools[0].hosts[0].weight: expected an integer 0..1000, got 2.5"));
  }

  TEST_CASE("invalid JSON, missing keys and wrong types") {
    CHECK(has(load_string("{").errors, "invalid JSON"));
    CHECK(has(load_string("[]").errors, "expected a JSON object"));
    // Syntax errors say where, and the key path of the value when there is one.
    auto one = [](const std::string& json) {
      auto res = load_string(json);
      REQUIRE(res.errors.size() == 1);
      return res.errors[0];
    };
    CHECK(one("{\n  \"workers\": 1,\n}") ==
          "(document): invalid JSON at line 2, column 15: a trailing comma: JSON has none before '}'");
    CHECK(one("{\n  // two\n  \"workers\": 2}") ==
          "(document): invalid JSON at line 2, column 3: a comment: JSON has none; remove it");
    CHECK(one(R"({"workers": 99999999999999999999999})") ==
          "workers: invalid JSON at line 1, column 13: the number 99999999999999999999999 is out of range (an integer "
          "must be -9223372036854775808..18446744073709551615)");
    CHECK(one(R"({"upstreams": [{"name": "a", "pools": [}]})") ==
          "upstreams[0].pools[0]: invalid JSON at line 1, column 40: expected a value, found '}'");
    // A UTF-8 byte-order mark is skipped, as editors write one.
    CHECK(load_string(std::string("\xef\xbb\xbf") + kValid).ok());
    auto r = load_string(R"({"listeners": {}, "workers": "many"})");
    CHECK(has(r.errors, "listeners: expected an array, got an object"));
    CHECK(has(r.errors, "upstreams: missing required key"));
    CHECK(has(r.errors, "workers: expected \"auto\" or an integer 1..64, got \"many\""));
    CHECK(has(load_string(replace(kValid, R"("method": "round_robin")", R"("method": "fastest")")).errors,
              "unknown method \"fastest\""));
    CHECK(has(load_string(replace(kValid, R"("max_hosts": 16)", R"("max_hosts": 2)")).errors,
              "shm.max_hosts: 3 hosts are configured, more than max_hosts 2"));
    CHECK(has(load_string(replace(kValid, R"("id": "primary")", R"("id": "pri mary")")).errors,
              "upstreams[0].pools[0].id: \"pri mary\" may contain only"));
    // No admin API URL path can name "." or "..": refused where ids are given.
    for (const char* dots : {".", ".."})
      CHECK(has(load_string(replace(kValid, R"("id": "primary")", fmt::format(R"("id": "{}")", dots))).errors,
                fmt::format("upstreams[0].pools[0].id: \"{}\" must not be \".\" or \"..\" (no admin API URL path can "
                            "name it)",
                            dots)));
    CHECK(load_string(replace(kValid, R"("id": "primary")", R"("id": "...")")).ok());
  }

  TEST_CASE("shm_name_given: shm.name read without an error of its own, whatever else is wrong (gwctl -c)") {
    auto r = load_string(replace(kValid, R"("workers": 2)", R"("wrokers": 2)"));
    CHECK((!r.ok() && r.shm_name_given && r.config.shm.name == "t1"));
    CHECK_FALSE(load_string(replace(kValid, R"("name": "t1")", R"("name": "a/b")")).shm_name_given);
    CHECK_FALSE(load_string(replace(kValid, R"("name": "t1")", R"("name": "t1", "name": "t2")")).shm_name_given);
    CHECK_FALSE(load_string(replace(kValid, R"("name": "t1", )", "")).shm_name_given);
    CHECK_FALSE(load_string(R"({"shm": {"name": "t1"})").shm_name_given);  // not JSON
  }

  TEST_CASE("build_table lays the config out in a table") {
    auto r = load_string(kValid);
    REQUIRE(r.ok());
    gw::shm::Table t(r.config.shm.caps);
    gw::config::build_table(r.config, t);
    CHECK(t.upstreams().size() == 1);
    CHECK(t.pools().size() == 2);
    CHECK(t.hosts().size() == 3);
    CHECK(t.host_path(2) == "app/backup/c");
  }
}

TEST_SUITE("config") {
  TEST_CASE("slow_start_ms and hash_balance_factor") {
    auto ok = load_string(replace(kValid, R"("max_fails": 2,)",
                                  R"("max_fails": 2, "slow_start_ms": 30000, "hash_balance_factor": 1.25,)"));
    REQUIRE(ok.errors.empty());
    CHECK(ok.config.upstreams[0].slow_start_ms == 30000);
    CHECK(ok.config.upstreams[0].balance_factor == 125);
    auto bad = load_string(replace(kValid, R"("max_fails": 2,)", R"("max_fails": 2, "hash_balance_factor": 0.5,)"));
    CHECK(has(bad.errors, "upstreams[0].hash_balance_factor: expected 0 (off) or a number 1.0..10.0, got 0.5"));
  }
}

namespace {
// A frame listener on "devs" (two pools, one with a method) and a tcp listener
// on "web"; FRAME is replaced by the frame listener's extra keys.
const char* kFrame = R"({
  "workers": 1, "shm": {"name": "t2", "max_upstreams": 4, "max_pools": 8, "max_hosts": 16},
  "listeners": [{"name": "dev", "listen": "127.0.0.1:7100", "protocol": "frame", "upstream": "devs" FRAME},
                {"name": "web", "listen": "127.0.0.1:7101", "upstream": "web"}],
  "upstreams": [{"name": "devs", "pools": [{"id": "p1", "hosts": [{"id": "a", "address": "127.0.0.1:9001"}]},
                                           {"id": "p2", "method": "maglev",
                                            "hosts": [{"id": "b", "address": "127.0.0.1:9002"}]}]},
                {"name": "web", "pools": [{"id": "w", "hosts": [{"id": "c", "address": "127.0.0.1:9003"}]}]}]})";

std::string frame_conf(const std::string& extra) {
  return replace(kFrame, " FRAME", extra);
}
gw::config::LoadResult load_frame(const std::string& extra) {
  return load_string(frame_conf(extra));
}
// The errors for a frame listener whose "frame" object holds `keys`.
std::vector<std::string> frame_errors(const std::string& keys) {
  return load_frame(", \"frame\": {" + keys + "}").errors;
}
}  // namespace

TEST_SUITE("config") {
  TEST_CASE("a frame listener parses with defaults") {
    using gw::config::FrameMode;
    using gw::config::HashKey;
    using gw::config::Protocol;
    auto r = load_frame("");
    REQUIRE(r.errors.empty());
    const auto& l = r.config.listeners.at(0);
    CHECK(l.protocol == Protocol::frame);
    CHECK(l.hash_key == HashKey::frame);
    CHECK(!l.close_on_host_remove);
    const auto& s = l.frame.spec;
    CHECK(s.header_size == 6);
    CHECK(s.length_offset == 4);
    CHECK(s.length_size == 2);
    CHECK(s.big_endian);
    CHECK(!s.length_includes_header);
    CHECK(s.key == "devid");
    CHECK(s.max_key == 128);
    CHECK(s.max_depth == 32);
    CHECK(!s.check_types);
    CHECK(!s.check_versions);
    CHECK(l.frame.first_frame_timeout_ms == 5000);
    CHECK(l.frame.mode == FrameMode::connection);
    CHECK(l.frame.frame_timeout_ms == 5000);
    CHECK(l.frame.max_links == 32);
    CHECK(l.frame.link_idle_ms == 5000);
    CHECK(l.frame.max_frame_buffers == 0);
    // The default whole-frame buffer limit: as many as fit in 32 MiB.
    CHECK(l.frame.frame_buffer_limit() == (32u << 20) / (6 + l.frame.spec.max_body + gw::proxy::kPadding));
    // A 2-byte length cannot say more than 65535. (Without a "frame" object the
    // loader leaves the unclamped default, 65536; with "frame": {} it clamps.)
    CHECK(s.max_body >= 65535);
    CHECK(s.max_body <= 65536);
    // Its upstream's pools hash the key with chash unless a pool sets "method".
    const auto& devs = r.config.upstreams.at(0);
    CHECK(devs.pools.at(0).method == gw::shm::Method::chash);
    CHECK(!devs.pools.at(0).method_set);
    CHECK(devs.pools.at(1).method == gw::shm::Method::maglev);
    // The tcp listener and its upstream are untouched.
    CHECK(r.config.listeners.at(1).protocol == Protocol::tcp);
    CHECK(r.config.listeners.at(1).hash_key == HashKey::ip);
    CHECK(r.config.upstreams.at(1).pools.at(0).method == gw::shm::Method::round_robin);

    // An empty "frame" object: the same defaults; a 2-byte length cannot say
    // more than 65535, so max_body is clamped to that.
    auto e = load_frame(R"(, "frame": {})");
    REQUIRE(e.errors.empty());
    CHECK(e.config.listeners.at(0).frame.spec.max_body == 65535);
    CHECK(e.config.listeners.at(0).frame.spec.header_size == 6);
  }

  TEST_CASE("a frame listener with every frame key set") {
    using gw::config::FrameMode;
    auto r = load_frame(R"(, "on_host_remove": "close", "frame": {"header_size": 12, "length_offset": 8,
        "length_size": 4, "byte_order": "little", "length_includes_header": true, "max_body": 1000,
        "key": "/device/id", "max_key": 100, "max_depth": 8, "first_frame_timeout_ms": 250, "mode": "frame",
        "type_offset": 2, "version_offset": 11, "allowed_types": [1, 255], "allowed_versions": [0],
        "frame_timeout_ms": 750, "max_links": 3, "link_idle_ms": 400, "max_frame_buffers": 9})");
    REQUIRE(r.errors.empty());
    const auto& l = r.config.listeners.at(0);
    const auto& s = l.frame.spec;
    CHECK(l.close_on_host_remove);
    CHECK(s.header_size == 12);
    CHECK(s.length_offset == 8);
    CHECK(s.length_size == 4);
    CHECK(!s.big_endian);
    CHECK(s.length_includes_header);
    CHECK(s.max_body == 1000);
    CHECK(s.key == "/device/id");
    CHECK(s.max_key == 100);
    CHECK(s.max_depth == 8);
    CHECK(l.frame.first_frame_timeout_ms == 250);
    CHECK(l.frame.mode == FrameMode::frame);
    CHECK(l.frame.frame_timeout_ms == 750);
    CHECK(l.frame.max_links == 3);
    CHECK(l.frame.link_idle_ms == 400);
    CHECK(l.frame.max_frame_buffers == 9);
    CHECK(l.frame.frame_buffer_limit() == 9);
    CHECK(s.type_offset == 2);
    CHECK(s.version_offset == 11);
    CHECK(s.check_types);
    CHECK(s.allowed_types[1] == 1);
    CHECK(s.allowed_types[255] == 1);
    CHECK(s.allowed_types[0] == 0);
    CHECK(s.allowed_types[2] == 0);
    CHECK(s.check_versions);
    CHECK(s.allowed_versions[0] == 1);
    CHECK(s.allowed_versions[1] == 0);
    // An empty list would refuse every frame: refused at load.
    CHECK(has(frame_errors(R"("allowed_types": [])"), "listeners[0].frame.allowed_types: expected at least one value"));
    CHECK(has(frame_errors(R"("allowed_versions": [])"),
              "listeners[0].frame.allowed_versions: expected at least one value, got []"));
    // So would a max_body of 0 (the login frame's body carries the key);
    // nginx's client_max_body_size 0, no limit, is not what it means here.
    CHECK(has(frame_errors(R"("max_body": 0)"),
              "listeners[0].frame.max_body: expected an integer 1..16777216, got 0 (0 would refuse every login frame: "
              "its body carries the key)"));
    CHECK(has(frame_errors(R"("max_body": "0")"),
              "listeners[0].frame.max_body: expected an integer 1..16777216, got string \"0\""));
  }

  TEST_CASE("max_body is clamped to what the length field can say") {
    auto body = [](const std::string& keys) {
      auto r = load_frame(", \"frame\": {" + keys + "}");
      REQUIRE(r.errors.empty());
      return r.config.listeners.at(0).frame.spec.max_body;
    };
    CHECK(body(R"("length_size": 1, "max_body": 1000)") == 255);
    CHECK(body(R"("length_size": 1, "max_body": 100)") == 100);
    CHECK(body(R"("max_body": 70000)") == 65535);
    CHECK(body(R"("length_offset": 2, "length_size": 4, "max_body": 70000)") == 70000);
    // A length that includes the header is not clamped (the framer refuses
    // bodies above max_body anyway).
    CHECK(body(R"("length_size": 1, "length_includes_header": true, "max_body": 1000)") == 1000);
    CHECK(body(R"("max_body": 16777216)") == 65535);
    // 16 MiB frames: the default whole-frame buffer limit is the floor of 4.
    auto big = load_frame(R"(, "frame": {"length_offset": 2, "length_size": 4, "max_body": 16777216})");
    REQUIRE(big.errors.empty());
    CHECK(big.config.listeners.at(0).frame.frame_buffer_limit() == 4);
  }

  TEST_CASE("every frame key is validated, with its JSON path") {
    const std::string p = "listeners[0].frame.";
    CHECK(has(frame_errors(R"("header_size": 4, "length_offset": 3)"),
              p + "length_offset: the length field (offset 3, 2 bytes) must lie inside the 4-byte header"));
    CHECK(frame_errors(R"("header_size": 4, "length_offset": 0, "length_size": 4)").empty());
    CHECK(has(frame_errors(R"("header_size": 4, "length_offset": 1, "length_size": 4)"),
              p + "length_offset: the length field (offset 1, 4 bytes) must lie inside the 4-byte header"));
    CHECK(has(frame_errors(R"("length_offset": 63)"),
              p + "length_offset: the length field (offset 63, 2 bytes) must lie inside the 6-byte header"));
    CHECK(has(frame_errors(R"("length_offset": 64)"), p + "length_offset: expected an integer 0..63, got 64"));
    CHECK(has(frame_errors(R"("length_size": 3)"), p + "length_size: expected 1, 2 or 4, got 3"));
    CHECK(has(frame_errors(R"("length_size": 0)"), p + "length_size: expected an integer 1..4, got 0"));
    CHECK(has(frame_errors(R"("length_size": 8)"), p + "length_size: expected an integer 1..4, got 8"));
    CHECK(has(frame_errors(R"("length_size": "2")"), p + "length_size: expected an integer 1..4, got string \"2\""));
    CHECK(has(frame_errors(R"("header_size": 0)"), p + "header_size: expected an integer 1..64, got 0"));
    CHECK(has(frame_errors(R"("header_size": 65)"), p + "header_size: expected an integer 1..64, got 65"));
    CHECK(has(frame_errors(R"("byte_order": "middle")"),
              p + "byte_order: expected \"big\" or \"little\", got \"middle\""));
    CHECK(has(frame_errors(R"("byte_order": 1)"), p + "byte_order: expected a string, got 1"));
    CHECK(has(frame_errors(R"("length_includes_header": 1)"),
              p + "length_includes_header: expected true or false, got 1"));
    CHECK(has(frame_errors(R"("max_body": 16777217)"), p + "max_body: expected an integer 1..16777216, got 16777217"));
    CHECK(has(frame_errors(R"("max_body": -1)"), p + "max_body: expected an integer 1..16777216, got -1"));
    CHECK(has(frame_errors(R"("key": "")"), p + "key: expected a field name or a JSON pointer"));
    CHECK(has(frame_errors(R"("key": 5)"), p + "key: expected a string, got 5"));
    const std::string max_key = std::to_string(gw::proxy::kMaxKey);
    CHECK(frame_errors("\"max_key\": " + max_key).empty());
    CHECK(has(frame_errors(R"("max_key": 0)"), p + "max_key: expected an integer 1.." + max_key + ", got 0"));
    CHECK(has(frame_errors("\"max_key\": " + std::to_string(gw::proxy::kMaxKey + 1)),
              p + "max_key: expected an integer 1.." + max_key + ", got " + std::to_string(gw::proxy::kMaxKey + 1)));
    CHECK(has(frame_errors(R"("max_depth": 0)"), p + "max_depth: expected an integer 1..1024, got 0"));
    CHECK(has(frame_errors(R"("max_depth": 1025)"), p + "max_depth: expected an integer 1..1024, got 1025"));
    CHECK(has(frame_errors(R"("first_frame_timeout_ms": 0)"),
              p + "first_frame_timeout_ms: expected an integer 1..3600000, got 0"));
    CHECK(has(frame_errors(R"("mode": "stream")"), p + "mode: expected \"connection\" or \"frame\", got \"stream\""));
    CHECK(has(frame_errors(R"("frame_timeout_ms": 0)"), p + "frame_timeout_ms: expected an integer 1..3600000, got 0"));
    CHECK(has(frame_errors(R"("max_links": 0)"), p + "max_links: expected an integer 1..32, got 0"));
    CHECK(has(frame_errors(R"("max_links": 33)"), p + "max_links: expected an integer 1..32, got 33"));
    CHECK(has(frame_errors(R"("link_idle_ms": 0)"), p + "link_idle_ms: expected an integer 1..3600000, got 0"));
    CHECK(
        has(frame_errors(R"("max_frame_buffers": 0)"), p + "max_frame_buffers: expected an integer 1..1048576, got 0"));
    // Keys only mode "frame" reads, in mode "connection" (given or default):
    // refused, each named, whichever order mode comes in.
    for (const char* k : {"frame_timeout_ms", "max_links", "link_idle_ms"}) {
      const std::string kv = fmt::format(R"("{}": 2)", k);
      const std::string why = p + k + R"(: only mode "frame" uses it; add "mode": "frame" or remove it)";
      CHECK(has(frame_errors(kv), why));
      CHECK(has(frame_errors(kv + R"(, "mode": "connection")"), why));
      CHECK(frame_errors(kv + R"(, "mode": "frame")").empty());
      CHECK(frame_errors(R"("mode": "frame", )" + kv).empty());
    }
    CHECK(has(frame_errors(R"("lenght_size": 2)"), p + "lenght_size: unknown key"));
    CHECK(has(frame_errors(R"("mode": "frame", "mode": "frame")"), p + "mode: duplicate key"));
    CHECK(has(frame_errors(R"("type_offset": 6, "allowed_types": [1])"),
              p + "type_offset: offset 6 is outside the 6-byte header"));
    // An offset without its list would check nothing: refused, naming the key.
    CHECK(has(frame_errors(R"("type_offset": 2)"),
              p + "type_offset: without \"allowed_types\" it checks nothing; add \"allowed_types\" or remove it"));
    CHECK(has(frame_errors(R"("version_offset": 3)"), p + "version_offset: without \"allowed_versions\" it checks "
                                                          "nothing; add \"allowed_versions\" or remove it"));
    CHECK(frame_errors(R"("allowed_types": [1], "type_offset": 2)").empty());  // either order
    CHECK(frame_errors(R"("version_offset": 3, "allowed_versions": [1])").empty());
    CHECK(has(frame_errors(R"("version_offset": 9, "allowed_versions": [1])"),
              p + "version_offset: offset 9 is outside the 6-byte header"));
    CHECK(has(frame_errors(R"("type_offset": 64)"), p + "type_offset: expected an integer 0..63, got 64"));
    CHECK(
        has(frame_errors(R"("allowed_types": [1, 256])"), p + "allowed_types[1]: expected an integer 0..255, got 256"));
    CHECK(has(frame_errors(R"("allowed_types": 1)"), p + "allowed_types: expected an array, got 1"));
    CHECK(has(frame_errors(R"("allowed_versions": ["1"])"),
              p + "allowed_versions[0]: expected an integer 0..255, got string \"1\""));
    CHECK(has(load_frame(R"(, "frame": [])").errors, "listeners[0].frame: expected an object, got an array"));
    // Several bad keys: each is reported, and the header bounds check waits
    // until the keys themselves are valid.
    auto several = frame_errors(R"("length_size": 3, "byte_order": "x", "mode": "y", "length_offset": 40)");
    CHECK(several.size() == 3);
    CHECK(!has(several, "must lie inside"));
  }

  TEST_CASE("protocol, hash_key and on_host_remove on frame and tcp listeners") {
    using gw::config::HashKey;
    const std::string tcp_frame =
        replace(frame_conf(""), R"("upstream": "web"})", R"("upstream": "web", "frame": {}})");
    CHECK(has(load_string(tcp_frame).errors,
              R"(listeners[1].frame: only a listener with "protocol": "frame" takes frame settings)"));
    const std::string tcp_hash =
        replace(frame_conf(""), R"("upstream": "web"})", R"("upstream": "web", "hash_key": "frame"})");
    CHECK(has(load_string(tcp_hash).errors, R"(listeners[1].hash_key: "frame" needs "protocol": "frame")"));
    const std::string tcp_proto =
        replace(frame_conf(""), R"("upstream": "web"})", R"("upstream": "web", "protocol": "tcp"})");
    CHECK(load_string(tcp_proto).errors.empty());
    CHECK(has(load_frame(R"(, "protocol": "udp")").errors, "listeners[0].protocol: duplicate key"));
    const std::string udp = replace(frame_conf(""), R"("protocol": "frame")", R"("protocol": "udp")");
    CHECK(has(load_string(udp).errors, R"(listeners[0].protocol: expected "tcp", "frame" or "http", got "udp")"));
    CHECK(has(
        load_frame(R"(, "hash_key": "mac")").errors,
        R"(listeners[0].hash_key: expected "ip", "frame", "uri", "header:NAME", "cookie:NAME" or "arg:NAME", got "mac")"));

    // hash_key "ip" on a frame listener: the pools still default to chash
    // (over the client address), as with the frame key; a pool's own method stays.
    auto ip = load_frame(R"(, "hash_key": "ip")");
    REQUIRE(ip.errors.empty());
    CHECK(ip.config.listeners.at(0).hash_key == HashKey::ip);
    CHECK(ip.config.upstreams.at(0).pools.at(0).method == gw::shm::Method::chash);
    CHECK(!ip.config.upstreams.at(0).pools.at(0).method_set);
    CHECK(ip.config.upstreams.at(0).pools.at(1).method == gw::shm::Method::maglev);
    CHECK(ip.config.upstreams.at(1).pools.at(0).method == gw::shm::Method::round_robin);  // the tcp listener's
    // An upstream shared by a frame listener and a tcp listener: its pools have
    // one method, the frame listener's default, whichever listener comes first.
    for (const char* key : {"ip", "frame"}) {
      CAPTURE(key);
      const std::string frame_l = std::string(R"({"name": "dev", "listen": "127.0.0.1:7100", "protocol": "frame",
          "upstream": "devs", "hash_key": ")") +
                                  key + "\"}";
      const std::string tcp_l = R"({"name": "l4", "listen": "127.0.0.1:7101", "upstream": "devs"})";
      for (const std::string& listeners : {frame_l + ", " + tcp_l, tcp_l + ", " + frame_l}) {
        auto shared = load_string(R"({"shm": {"name": "t3"}, "listeners": [)" + listeners + R"(],
            "upstreams": [{"name": "devs", "pools": [
              {"id": "p1", "hosts": [{"id": "a", "address": "127.0.0.1:9001"}]},
              {"id": "p2", "method": "random", "hosts": [{"id": "b", "address": "127.0.0.1:9002"}]}]}]})");
        REQUIRE(shared.errors.empty());
        CHECK(shared.config.upstreams.at(0).pools.at(0).method == gw::shm::Method::chash);
        CHECK(shared.config.upstreams.at(0).pools.at(1).method == gw::shm::Method::random);
      }
    }
    auto fk = load_frame(R"(, "hash_key": "frame")");
    REQUIRE(fk.errors.empty());
    CHECK(fk.config.upstreams.at(0).pools.at(0).method == gw::shm::Method::chash);
    // mode "frame" routes every frame by its key, so it needs hash_key "frame".
    CHECK(has(load_frame(R"(, "hash_key": "ip", "frame": {"mode": "frame"})").errors,
              R"(listeners[0].hash_key: frame.mode "frame" routes each frame by its key; hash_key must be "frame")"));
    CHECK(load_frame(R"(, "frame": {"mode": "frame"})").errors.empty());

    for (const char* proto : {"frame", "tcp"}) {
      CAPTURE(proto);
      const std::string base =
          replace(kFrame, R"("protocol": "frame")", std::string(R"("protocol": ")") + proto + "\"");
      auto keep = load_string(replace(base, " FRAME", R"(, "on_host_remove": "keep")"));
      REQUIRE(keep.errors.empty());
      CHECK(!keep.config.listeners.at(0).close_on_host_remove);
      auto close = load_string(replace(base, " FRAME", R"(, "on_host_remove": "close")"));
      REQUIRE(close.errors.empty());
      CHECK(close.config.listeners.at(0).close_on_host_remove);
      CHECK(has(load_string(replace(base, " FRAME", R"(, "on_host_remove": "drop")")).errors,
                R"(listeners[0].on_host_remove: expected "keep" or "close", got "drop")"));
      CHECK(has(load_string(replace(base, " FRAME", R"(, "on_host_remove": true)")).errors,
                "listeners[0].on_host_remove: expected a string, got true"));
    }
  }

  TEST_CASE("frame.key: a JSON pointer takes only the ~0 and ~1 escapes") {
    const std::string p = "listeners[0].frame.key: ";
    for (const char* ok : {"/device/id", "/a~0b", "/a~1b/~0~1", "/", "/a//b", "/0", "devid", "a~2"}) {
      CAPTURE(ok);
      CHECK(frame_errors(std::string(R"("key": ")") + ok + "\"").empty());
    }
    CHECK(has(frame_errors(R"("key": "/a~2")"),
              p + R"(expected a JSON pointer whose '~' escapes are "~0" or "~1", got "/a~2")"));
    CHECK(has(frame_errors(R"("key": "/a~")"), p + "expected a JSON pointer"));
    CHECK(has(frame_errors(R"("key": "/~/b")"), p + "expected a JSON pointer"));
  }

  TEST_CASE("health: path and expect_status need \"type\": \"http\", not the tcp default") {
    // {"path": "/healthz"} without a type ran a TCP connect check: the
    // operator who asked for an HTTP check got none, and no error said so.
    auto health = [](const std::string& body) {
      return load_string(replace(kValid, R"("max_fails": 2,)", R"("max_fails": 2, "health": )" + body + ","));
    };
    auto r = health(R"({"path": "/healthz", "expect_status": "2xx"})");
    CHECK(has(r.errors, R"(upstreams[0].health.path: only an http check sends a path; add "type": "http")"));
    CHECK(has(r.errors, R"(upstreams[0].health.expect_status: only an http check has a status; add "type": "http")"));
    CHECK(has(health(R"({"type": "tcp", "path": "/"})").errors, "upstreams[0].health.path: only an http check"));
    // The key order does not matter, and a bad type is reported alone.
    CHECK(health(R"({"path": "/healthz", "expect_status": "2xx", "type": "http"})").errors.empty());
    r = health(R"({"path": "/healthz", "type": "htp"})");
    CHECK(has(r.errors, R"(upstreams[0].health.type: expected "tcp" or "http", got "htp")"));
    CHECK(!has(r.errors, "only an http check"));
    CHECK(health(R"({"type": "tcp", "interval_ms": 500})").errors.empty());
  }

  TEST_CASE("health.expect_status: every class is 1xx..5xx, none empty") {
    auto status = [](const std::string& x) {
      return load_string(replace(kValid, R"("max_fails": 2,)",
                                 R"("max_fails": 2, "health": {"type": "http", "expect_status": ")" + x + "\"},"));
    };
    auto ok = status("2xx,3xx");
    REQUIRE(ok.errors.empty());
    CHECK(ok.config.upstreams[0].check.expect_mask == ((1u << 2) | (1u << 3)));
    for (const char* bad : {"2xx,", ",2xx", "2xx,,3xx", "", "6xx", "2xx;3xx", "2x"}) {
      CAPTURE(bad);
      CHECK(has(status(bad).errors,
                std::string(R"(upstreams[0].health.expect_status: expected status classes like "2xx,3xx", got ")") +
                    bad + "\""));
    }
  }

  TEST_CASE("a misspelt key does not hide a missing one; errors stay on one line; strings are cut between characters") {
    // "ids" is not under "id": both are reported.
    auto r = load_string(replace(kValid, R"({"id": "b", )", R"({"ids": "b", )"));
    CHECK(has(r.errors, "upstreams[0].pools[0].hosts[1].ids: unknown key"));
    CHECK(has(r.errors, R"(upstreams[0].pools[0].hosts[1]: missing required key "id")"));
    // A bad id is still not followed by "missing".
    r = load_string(replace(kValid, R"({"id": "b", )", R"({"id": 5, )"));
    CHECK(has(r.errors, "upstreams[0].pools[0].hosts[1].id: expected a string"));
    CHECK(!has(r.errors, "missing required key"));
    gw::config::Ctx c;
    c.error("listeners[10].upstream", "x");
    CHECK(c.has_error_under("listeners[10]"));
    CHECK(c.has_error_under("listeners[10].upstream"));
    CHECK(!c.has_error_under("listeners[1]"));
    CHECK(!c.has_error_under("listeners[10].up"));
    c.error("a.b[2]", "y");
    CHECK(c.has_error_under("a.b"));
    CHECK(!c.has_error_under("a.b[2]x"));

    // A key that is not a plain word is a quoted subscript: its dot is not a
    // level of nesting, and a quote or backslash in it is escaped.
    r = load_string(replace(kValid, R"("weight": 5)", R"("weight": 5, "health.interval": 1, "a\"b\\c": 2, "": 3)"));
    CHECK(has(r.errors, R"(upstreams[0].pools[0].hosts[0]["health.interval"]: unknown key)"));
    CHECK(has(r.errors, R"(upstreams[0].pools[0].hosts[0]["a\"b\\c"]: unknown key)"));
    CHECK(has(r.errors, R"(upstreams[0].pools[0].hosts[0][""]: unknown key)"));
    r = load_string(replace(kValid, R"("weight": 5)", R"("weight": 5, "x y": {"z": 1})"));
    CHECK(has(r.errors, R"(upstreams[0].pools[0].hosts[0]["x y"]: unknown key)"));
    c.error(R"(a["b.c"])", "z");
    CHECK(c.has_error_under("a"));

    // Control characters in keys and values are escaped.
    r = load_string(replace(kValid, R"("weight": 5)", R"("weig\nht": 5, "weight": "a\tb\u0001")"));
    CHECK(has(r.errors, R"(upstreams[0].pools[0].hosts[0]["weig\nht"]: unknown key)"));
    CHECK(
        has(r.errors, R"(upstreams[0].pools[0].hosts[0].weight: expected an integer 0..1000, got string "a\tb\x01")"));
    for (const auto& e : r.errors) {
      CAPTURE(e);
      CHECK(std::none_of(e.begin(), e.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20; }));
    }

    // 39 ASCII bytes and then 2-byte characters: byte 40 is inside one.
    const std::string text = std::string(39, 'a') + "\u00e9\u00e9";
    r = load_string(replace(kValid, R"("weight": 5)", R"("weight": ")" + text + "\""));
    CHECK(has(r.errors, "got string \"" + std::string(39, 'a') + "...\""));
    r = load_string(replace(
        kValid, R"("weight": 5)",
        R"("weight": "a)" + std::string(20, 'x') + "\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\""));
    CHECK(has(r.errors,
              "got string \"a" + std::string(20, 'x') + "\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9...\""));
  }
}

TEST_CASE("a config file that cannot be read says why") {
  using gw::config::load_file;
  char dir[] = "/tmp/gw-cfgread-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string d = dir, file = d + "/gw.json";
  { std::ofstream(file) << kValid; }
  CHECK(load_file(file).ok());
  auto missing = load_file(d + "/none.json");
  REQUIRE(missing.errors.size() == 1);
  CHECK(missing.errors[0] == "(file): cannot read: No such file or directory");
  CHECK(load_file(d).errors.at(0) == "(file): cannot read: it is a directory");
  // Out of descriptors (a reload in a master at its limit): EMFILE, not
  // simdjson's "Error reading the file". In a child: it uses up its own.
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    while (::dup(0) >= 0) {
    }
    auto r = load_file(file);
    ::_exit(r.errors.size() == 1 && r.errors[0] == "(file): cannot read: Too many open files" ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  std::remove(file.c_str());
  ::rmdir(dir);
}

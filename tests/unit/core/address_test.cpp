#include <doctest/doctest.h>

#include "gw/core/address.hpp"

using gw::core::parse_address;
using gw::core::SockAddr;

TEST_SUITE("core") {
  TEST_CASE("parse_address accepts IPv4 and bracketed IPv6 with a port") {
    SockAddr a;
    std::string why;
    REQUIRE(parse_address("127.0.0.1:8081", a, why));
    CHECK(a.family == AF_INET);
    CHECK(a.port == 8081);
    CHECK(a.to_string() == "127.0.0.1:8081");
    REQUIRE(parse_address("[::1]:443", a, why));
    CHECK(a.family == AF_INET6);
    CHECK(a.to_string() == "[::1]:443");
  }

  TEST_CASE("parse_address rejects bad input with a reason") {
    SockAddr a;
    std::string why;
    for (const char* bad : {"1.2.3", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:8x", "host:80",
                            "[::1:80", "[::1]80", "", ":80"}) {
      CAPTURE(bad);
      CHECK_FALSE(parse_address(bad, a, why));
      CHECK_FALSE(why.empty());
    }
    // A NUL inside the host part (a JSON "\u0000" from etcd or the admin
    // API): inet_pton would see only what comes before it.
    CHECK_FALSE(parse_address(std::string_view("127.0.0.1\0junk:80", 17), a, why));
    CHECK(why == "the host part has a NUL byte");
    // An IPv6 address without brackets: "fe80::1:8080" could be an address
    // with port 8080 or an address alone.
    for (const char* bad : {"::1:9000", "fe80::1:8080", "::ffff:127.0.0.1:9003"}) {
      CAPTURE(bad);
      CHECK_FALSE(parse_address(bad, a, why));
      CHECK(why == "an IPv6 address goes in brackets: [IPv6]:PORT");
    }
    // Brackets hold an IPv6 address only (RFC 3986's IP-literal): "[127.0.0.1]:80"
    // was taken as 127.0.0.1:80, and written back without its brackets.
    CHECK_FALSE(parse_address("[127.0.0.1]:80", a, why));
    CHECK(why == "\"127.0.0.1\" in brackets is not an IPv6 address (an IPv4 address goes without them: IP:PORT)");
  }

  TEST_CASE("parse_host_address refuses the unspecified address, which a connect takes as this machine") {
    SockAddr a;
    std::string why;
    for (const char* bad : {"0.0.0.0:80", "[::]:80", "[::ffff:0.0.0.0]:80", "[0:0:0:0:0:0:0:0]:80"}) {
      CAPTURE(bad);
      CHECK(parse_address(bad, a, why));  // a listener may bind it
      CHECK_FALSE(gw::core::parse_host_address(bad, a, why));
      CHECK(why.starts_with("the unspecified address is not a host to connect to"));
    }
    for (const char* good : {"127.0.0.1:80", "0.0.0.1:80", "[::1]:80", "[::ffff:127.0.0.1]:80", "10.0.0.0:80"}) {
      CAPTURE(good);
      CHECK(gw::core::parse_host_address(good, a, why));
    }
    CHECK_FALSE(gw::core::parse_host_address("127.0.0.1:0", a, why));  // parse_address's own checks still apply
  }
}

#include <doctest/doctest.h>

#include <arpa/inet.h>

#include "gw/core/address.hpp"

using gw::core::Cidr;
using gw::core::parse_cidr;
using gw::core::SockAddr;

namespace {
SockAddr ip(const char* text) {
  SockAddr a;
  std::string why;
  std::string t = text;
  REQUIRE(gw::core::parse_address(t.find(':') != std::string::npos && t.front() != '[' ? "[" + t + "]:1" : t + ":1", a,
                                  why));
  return a;
}
}  // namespace

TEST_SUITE("core") {
  TEST_CASE("parse_cidr: addresses, blocks, and what it refuses") {
    Cidr c;
    std::string why;
    REQUIRE(parse_cidr("127.0.0.2", c, why));
    CHECK(c.family == AF_INET);
    CHECK(c.prefix == 32);
    CHECK(c.to_string() == "127.0.0.2/32");
    REQUIRE(parse_cidr("127.0.0.16/28", c, why));
    CHECK(c.prefix == 28);
    REQUIRE(parse_cidr("0.0.0.0/0", c, why));
    REQUIRE(parse_cidr("::1", c, why));
    CHECK(c.prefix == 128);
    REQUIRE(parse_cidr("fd00::/8", c, why));
    CHECK(c.to_string() == "fd00::/8");

    CHECK_FALSE(parse_cidr("127.0.0.17/28", c, why));
    CHECK(why == "\"127.0.0.17/28\" has bits set past its /28 prefix");
    CHECK_FALSE(parse_cidr("10.0.0.0/33", c, why));
    CHECK(why == "prefix length must be an integer 0..32, got \"33\"");
    CHECK_FALSE(parse_cidr("10.0.0.0/", c, why));
    CHECK_FALSE(parse_cidr("10.0.0.0/x", c, why));
    CHECK_FALSE(parse_cidr("host.example", c, why));
    CHECK(why == "\"host.example\" is not an IPv4 or IPv6 address");
    CHECK_FALSE(parse_cidr("", c, why));
    // A NUL (a JSON "\u0000" in a config, etcd or the admin API): inet_pton
    // saw only what came before it, and "10.0.0.1<NUL>junk" allowed 10.0.0.1.
    CHECK_FALSE(parse_cidr(std::string_view("10.0.0.1\0junk", 13), c, why));
    CHECK(why == "the address has a NUL byte");
    CHECK_FALSE(parse_cidr(std::string_view("10.0.0.0\0/8", 11), c, why));
  }

  TEST_CASE("parse_cidr: an IPv4-mapped IPv6 block is the IPv4 block, so it matches IPv4 clients") {
    Cidr c;
    std::string why;
    REQUIRE(parse_cidr("::ffff:10.0.0.0/104", c, why));
    CHECK(c.family == AF_INET);
    CHECK(c.to_string() == "10.0.0.0/8");
    CHECK(c.contains(ip("10.1.2.3")));
    CHECK_FALSE(c.contains(ip("11.0.0.1")));
    REQUIRE(parse_cidr("::ffff:127.0.0.2", c, why));
    CHECK(c.to_string() == "127.0.0.2/32");
    CHECK(c.contains(ip("127.0.0.2")));
    REQUIRE(parse_cidr("::ffff:0.0.0.0/96", c, why));
    CHECK(c.to_string() == "0.0.0.0/0");
    // Shorter prefixes are IPv6 blocks that happen to span the mapped range.
    REQUIRE(parse_cidr("::/64", c, why));
    CHECK(c.family == AF_INET6);
    CHECK_FALSE(c.contains(ip("10.1.2.3")));
  }

  TEST_CASE("Cidr::contains: prefixes of every length, families kept apart, IPv4-mapped IPv6 as IPv4") {
    Cidr c;
    std::string why;
    REQUIRE(parse_cidr("127.0.0.16/28", c, why));
    CHECK(c.contains(ip("127.0.0.16")));
    CHECK(c.contains(ip("127.0.0.31")));
    CHECK_FALSE(c.contains(ip("127.0.0.15")));
    CHECK_FALSE(c.contains(ip("127.0.0.32")));
    CHECK(c.contains(ip("::ffff:127.0.0.20")));
    CHECK_FALSE(c.contains(ip("::1")));
    REQUIRE(parse_cidr("10.0.0.0/8", c, why));
    CHECK(c.contains(ip("10.255.1.2")));
    CHECK_FALSE(c.contains(ip("11.0.0.0")));
    REQUIRE(parse_cidr("0.0.0.0/0", c, why));
    CHECK(c.contains(ip("192.0.2.1")));
    CHECK_FALSE(c.contains(ip("2001:db8::1")));
    REQUIRE(parse_cidr("2001:db8::/33", c, why));
    CHECK(c.contains(ip("2001:db8:7fff::1")));
    CHECK_FALSE(c.contains(ip("2001:db8:8000::1")));
    REQUIRE(parse_cidr("127.0.0.2", c, why));
    CHECK(c.contains(ip("127.0.0.2")));
    CHECK_FALSE(c.contains(ip("127.0.0.3")));
  }
}

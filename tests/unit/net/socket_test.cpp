#include <doctest/doctest.h>
#include <sys/socket.h>

#include <string>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/net/socket.hpp"

namespace {

gw::core::SockAddr addr(const char* text) {
  gw::core::SockAddr a;
  std::string why;
  REQUIRE(gw::core::parse_address(text, a, why));
  return a;
}

}  // namespace

TEST_SUITE("net") {
  TEST_CASE("check_address_free: a listener of another program on the address is found") {
    // The "other program": a SO_REUSEPORT listener on 127.0.0.1, port chosen by the kernel.
    gw::core::SockAddr any = addr("127.0.0.1:1");
    any.port = 0;
    gw::core::UniqueFd other = gw::net::listen_tcp(any, 4, true);
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    REQUIRE(::getsockname(other.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0);
    const gw::core::SockAddr taken = gw::core::SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss));
    REQUIRE(taken.port != 0);

    CHECK_THROWS_WITH(gw::net::check_address_free(taken, {taken}, "listener \"web\""),
                      doctest::Contains("in use by another process"));

    // One of ours on another specific address of the same port does not
    // overlap 127.0.0.1:P (two specific addresses never conflict), so the
    // bind failure is not ours: it must still be refused.
    gw::core::SockAddr other_ip = addr("127.0.0.2:1");
    other_ip.port = taken.port;
    CHECK_THROWS_WITH(gw::net::check_address_free(taken, {taken, other_ip}, "listener \"web\""),
                      doctest::Contains("in use by another process"));

    // A wildcard of ours on that port does overlap it: taken to be ours.
    gw::core::SockAddr wildcard = addr("0.0.0.0:1");
    wildcard.port = taken.port;
    CHECK_NOTHROW(gw::net::check_address_free(taken, {taken, wildcard}, "listener \"web\""));
  }

  TEST_CASE("check_address_free: a wildcard address taken by one of our specific addresses is ours") {
    gw::core::SockAddr any = addr("127.0.0.1:1");
    any.port = 0;
    gw::core::UniqueFd ours_fd = gw::net::listen_tcp(any, 4, true);
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    REQUIRE(::getsockname(ours_fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0);
    const gw::core::SockAddr specific = gw::core::SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss));
    gw::core::SockAddr wildcard = addr("0.0.0.0:1");
    wildcard.port = specific.port;
    CHECK_NOTHROW(gw::net::check_address_free(wildcard, {wildcard, specific}, "listener \"all\""));
    CHECK_THROWS(gw::net::check_address_free(wildcard, {wildcard}, "listener \"all\""));
  }
}

#include <doctest/doctest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

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
  TEST_CASE("listen_tcp: accepted sockets inherit TCP_NODELAY, so the proxies set it on none of them") {
    // The relays, the frame mux and the HTTP proxy rely on this (one system
    // call per connection saved); a kernel that stopped copying it would make
    // every small response wait on Nagle.
    gw::core::SockAddr any = addr("127.0.0.1:1");
    any.port = 0;
    gw::core::UniqueFd l = gw::net::listen_tcp(any, 4, true);
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    REQUIRE(::getsockname(l.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0);
    int err = 0;
    gw::core::UniqueFd c(
        gw::net::connect_wait(gw::core::SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss)), 2000, err));
    REQUIRE(c);
    gw::core::UniqueFd a(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(a);
    int on = 0;
    socklen_t ol = sizeof(on);
    REQUIRE(::getsockopt(a.get(), IPPROTO_TCP, TCP_NODELAY, &on, &ol) == 0);
    CHECK(on == 1);
    on = 0;
    REQUIRE(::getsockopt(c.get(), IPPROTO_TCP, TCP_NODELAY, &on, &ol) == 0);
    CHECK(on == 1);  // connect_tcp sets it on upstream sockets
  }

  TEST_CASE("bind_tcp: a SO_REUSEPORT socket only bound beside a listener takes none of its connections") {
    // A reload binds a new worker slot's socket so, and makes it listen only
    // once the reload can no longer fail: closed before that, it resets nothing.
    gw::core::SockAddr any = addr("127.0.0.1:1");
    any.port = 0;
    gw::core::UniqueFd l = gw::net::listen_tcp(any, 64, true);
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    REQUIRE(::getsockname(l.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0);
    const gw::core::SockAddr bound = gw::core::SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss));
    gw::core::UniqueFd b = gw::net::bind_tcp(bound, true);
    REQUIRE(b);
    std::vector<gw::core::UniqueFd> clients;
    for (int i = 0; i < 16; ++i) {
      int err = 0;
      clients.emplace_back(gw::net::connect_wait(bound, 2000, err));
      REQUIRE(clients.back());
    }
    int accepted = 0;
    while (gw::core::UniqueFd(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK))) ++accepted;
    CHECK(accepted == 16);  // all queued on the listener
    CHECK(::accept4(b.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK) < 0);
    CHECK(errno == EINVAL);            // not listening
    CHECK(::listen(b.get(), 8) == 0);  // joins the port's group now
  }

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

  TEST_CASE("reset_after_connect: a reset after the handshake, not a refused connect") {
    CHECK(gw::net::reset_after_connect(ECONNRESET));
    CHECK(gw::net::reset_after_connect(EPIPE));
    CHECK_FALSE(gw::net::reset_after_connect(ECONNREFUSED));
    CHECK_FALSE(gw::net::reset_after_connect(ETIMEDOUT));
    CHECK_FALSE(gw::net::reset_after_connect(EHOSTUNREACH));
    CHECK_FALSE(gw::net::reset_after_connect(ECONNABORTED));
    CHECK_FALSE(gw::net::reset_after_connect(0));
  }

  TEST_CASE("reset_after_connect: what the peer sent before its reset is read after SO_ERROR, then 0") {
    // What the relays rely on: SO_ERROR says ECONNRESET (and clears it), and
    // the bytes that came before the reset are still read, then an EOF.
    gw::core::SockAddr any = addr("127.0.0.1:1");
    any.port = 0;  // a free port
    gw::core::UniqueFd l = gw::net::listen_tcp(any, 4, false);
    sockaddr_in sa{};
    socklen_t len = sizeof(sa);
    REQUIRE(::getsockname(l.get(), reinterpret_cast<sockaddr*>(&sa), &len) == 0);
    gw::core::SockAddr to = any;
    to.port = ntohs(sa.sin_port);
    int err = 0;
    const int fd = gw::net::connect_tcp(to, err);
    REQUIRE(fd >= 0);
    const int b = ::accept(l.get(), nullptr, nullptr);
    REQUIRE(b >= 0);
    REQUIRE(::send(b, "FULL\n", 5, 0) == 5);
    linger lg{1, 0};
    REQUIRE(::setsockopt(b, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
    ::close(b);  // a reset
    pollfd p{fd, POLLIN, 0};
    for (int i = 0; i < 500 && !(p.revents & POLLERR); ++i) ::poll(&p, 1, 10);  // the reset is in
    REQUIRE((p.revents & POLLERR) != 0);
    const int e = gw::net::socket_error(fd);
    CHECK(e == ECONNRESET);
    CHECK(gw::net::reset_after_connect(e));
    char buf[16];
    CHECK(::recv(fd, buf, sizeof(buf), MSG_DONTWAIT) == 5);
    CHECK(::recv(fd, buf, sizeof(buf), MSG_DONTWAIT) == 0);
    ::close(fd);
  }
}

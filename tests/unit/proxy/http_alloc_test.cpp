// The HTTP proxy end to end inside one process (epoll, as the worker drives
// it): a socketpair client, a loopback upstream on port 0 served by hand, a
// temp shm table built from a config. It proves the request path allocates
// nothing after warm-up: 10,000 requests over kept-alive client and upstream
// connections, and 1,000 connections of 10 requests each, with a counting
// operator new (tests/unit/alloc_count.cpp).
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "http_harness.hpp"

using namespace gw;
using namespace gw::testing::proxy_harness;

namespace {

/// A backend that answers every whole request head on any of its accepted
/// connections with a fixed response (fixed buffers: it allocates nothing
/// once its connections are open).
struct Backend {
  Upstream& up;
  std::vector<int> fds;
  std::vector<std::string> pending;
  static constexpr const char* kResponse = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
  explicit Backend(Upstream& u) : up(u) {
    fds.reserve(64);
    pending.reserve(64);
  }
  ~Backend() {
    for (int fd : fds) ::close(fd);
  }
  void serve() {
    for (int fd; (fd = ::accept4(up.lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
      REQUIRE(fds.size() < fds.capacity());
      fds.push_back(fd);
      pending.emplace_back();
      pending.back().reserve(4096);
    }
    char buf[4096];
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i] < 0) continue;
      for (;;) {
        const ssize_t n = ::recv(fds[i], buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0) {
          ::close(fds[i]);
          fds[i] = -1;
          break;
        }
        if (n < 0) break;
        pending[i].append(buf, static_cast<size_t>(n));
      }
      for (size_t end; fds[i] >= 0 && (end = pending[i].find("\r\n\r\n")) != std::string::npos;) {
        pending[i].erase(0, end + 4);
        REQUIRE(::send(fds[i], kResponse, std::strlen(kResponse), MSG_NOSIGNAL) ==
                static_cast<ssize_t>(std::strlen(kResponse)));
      }
    }
  }
};

constexpr const char* kRequest = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
/// One request on `client` and its whole response (client buffer reused):
/// the head as gw forwards it, then Backend::kResponse's 5-byte body.
bool exchange(Gateway& g, Backend& b, int client, char* buf) {
  if (::send(client, kRequest, std::strlen(kRequest), MSG_NOSIGNAL) != static_cast<ssize_t>(std::strlen(kRequest)))
    return false;
  size_t got = 0;
  const uint64_t end = core::monotonic_ms() + 5000;
  for (;;) {
    const std::string_view have(buf, got);
    const size_t head = have.find("\r\n\r\n");
    if (head != std::string_view::npos && got >= head + 4 + 5) {
      if (got != head + 4 + 5 || !have.starts_with("HTTP/1.1 200 OK\r\n") || !have.ends_with("hello")) {
        MESSAGE("unexpected response: " << std::string(have));
        return false;
      }
      return true;
    }
    if (core::monotonic_ms() > end) {
      MESSAGE("no whole response in 5 s; got: " << std::string(have));
      return false;
    }
    g.step(1);
    b.serve();
    const ssize_t n = ::recv(client, buf + got, 4096 - got, MSG_DONTWAIT);
    if (n > 0) got += static_cast<size_t>(n);
    else if (n == 0) {
      MESSAGE("the gateway closed the connection; got: " << std::string(have));
      return false;
    }
  }
}

}  // namespace

static void no_allocation_after_warm_up(bool uring) {
  {  // the counting operator new is in this binary: one allocation counts as one
    const uint64_t b0 = gw::testing::allocations();
    auto p = std::make_unique<char[]>(64);
    p[0] = 1;
    REQUIRE(gw::testing::allocations() - b0 == 1);
  }
  Upstream up;
  Gateway g(up.port, 0, "", 0, uring);
  Backend b(up);
  char buf[4096];

  // Warm-up: the first connection, its upstream connection and buffers.
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  g.accept(sv[0]);
  const int client = sv[1];
  for (int i = 0; i < 100; ++i) REQUIRE(exchange(g, b, client, buf));

  // 10,000 requests over the kept-alive client and upstream connections.
  uint64_t before = gw::testing::allocations();
  int ok = 0;
  for (int i = 0; i < 10000; ++i) ok += exchange(g, b, client, buf);
  uint64_t allocated = gw::testing::allocations() - before;
  CHECK(ok == 10000);
  CHECK(allocated == 0);
  MESSAGE("10,000 kept-alive requests: " << allocated << " allocation(s)");
  ::close(client);
  for (int i = 0; i < 50; ++i) g.step(1);

  // 1,000 new client connections of 10 requests each (the slot and the
  // upstream connection reused from the keep-alive pool).
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);  // warm the next slot
  g.accept(sv[0]);
  REQUIRE(exchange(g, b, sv[1], buf));
  ::close(sv[1]);
  for (int i = 0; i < 50; ++i) g.step(1);
  before = gw::testing::allocations();
  ok = 0;
  for (int c = 0; c < 1000; ++c) {
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    g.accept(sv[0]);
    for (int i = 0; i < 10; ++i) ok += exchange(g, b, sv[1], buf);
    ::close(sv[1]);
    for (int i = 0; i < 3 && g.http->active() > 0; ++i) g.step(1);
  }
  allocated = gw::testing::allocations() - before;
  CHECK(ok == 10000);
  CHECK(allocated == 0);
  MESSAGE("1,000 connections x 10 requests: " << allocated << " allocation(s)");
  for (int i = 0; i < 100 && g.http->active() > 0; ++i) g.step(1);
  CHECK(g.http->active() == 0);
  // Every request went over the one kept-alive upstream connection.
  CHECK(b.fds.size() == 1);
  CHECK(g.ts.seg.worker(0).http_keepalive_reused.load() >= 20000);
  g.http->close_all();
}

TEST_SUITE("http proxy") {
  TEST_CASE("the request path allocates nothing after warm-up (10,000 kept-alive requests, 1,000 connections)") {
    no_allocation_after_warm_up(false);
  }
  TEST_CASE("io_uring: the request path allocates nothing after warm-up (HttpIo; as above)") {
    if (std::string why = net::uring_unsupported(); !why.empty()) {
      MESSAGE("io_uring unavailable here, skipped: " << why);
      return;
    }
    no_allocation_after_warm_up(true);
  }
}

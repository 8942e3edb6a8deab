// The HTTP proxy on either engine (epoll, io_uring through HttpIo), end to end
// inside one process (tests/unit/proxy/http_harness.hpp): each case runs the
// same exchange on both, and what a client sees must not depend on the
// engine. Cases found in the review of HttpIo (branch uring-http).
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "gw/core/log.hpp"
#include "http_harness.hpp"

using namespace gw;
using namespace gw::testing::proxy_harness;

namespace {

bool skip_engine(bool uring) {
  if (!uring) return false;
  if (std::string why = net::uring_unsupported(); !why.empty()) {
    MESSAGE("io_uring unavailable here, skipped: " << why);
    return true;
  }
  return false;
}

void send_all(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    REQUIRE(n > 0);
    s.remove_prefix(static_cast<size_t>(n));
  }
}

/// Steps the gateway until `done()`, or fails after 5 s.
template <class F>
void step_until(Gateway& g, F&& done, const char* what) {
  const uint64_t end = core::monotonic_ms() + 5000;
  while (!done()) {
    INFO(std::string(what));
    REQUIRE(core::monotonic_ms() < end);
    g.step(1);
  }
}

/// Steps the gateway for `ms`, calling `each()` every step.
template <class F>
void step_for(Gateway& g, uint64_t ms, F&& each) {
  for (const uint64_t end = core::monotonic_ms() + ms; core::monotonic_ms() < end;) {
    g.step(1);
    each();
  }
}

/// Reads what `fd` has (non-blocking) onto `into`; false once it is closed
/// (its EOF, or an error: `err` says which).
bool drain(int fd, std::string& into, int* err = nullptr) {
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      into.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (err) *err = n < 0 ? errno : 0;
    return false;
  }
}

/// The body of a whole "Content-Length" response at the start of `s`, if there is one.
bool whole_response(const std::string& s, std::string& body) {
  const size_t end = s.find("\r\n\r\n");
  if (end == std::string::npos) return false;
  const size_t cl = s.find("Content-Length: ");
  if (cl == std::string::npos || cl > end) return false;
  const size_t len = std::stoul(s.substr(cl + 16));
  if (s.size() < end + 4 + len) return false;
  body = s.substr(end + 4, len);
  return true;
}

/// Accepts the host's connection (once) and reads until a whole request head is there.
void host_takes_request(Gateway& g, Upstream& up, int& host, std::string& req) {
  step_until(
      g,
      [&] {
        if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
        if (host >= 0) drain(host, req);
        return req.find("\r\n\r\n") != std::string::npos;
      },
      "the request at the host");
}

// --- a "Connection: close" answer whose end waits for a slow client -------

void close_answer_reaches_late_reader(bool uring) {
  if (skip_engine(uring)) return;
  Upstream up;
  Gateway g(up.port, 0, "", 0, uring);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  // gw's end takes a few KiB only: most of a 12 KiB answer waits for the
  // client to read (under epoll in gw's buffer, under io_uring in the send
  // in flight from the staging buffer).
  const int small = 4096;
  REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
  g.accept(sv[0]);
  const int client = sv[1];
  send_all(client, "GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  int host = -1;
  std::string req;
  host_takes_request(g, up, host, req);
  const std::string data(12000, 'x');
  send_all(host, "HTTP/1.1 200 OK\r\nContent-Length: 12000\r\n\r\n" + data);
  // The client reads nothing for longer than gw lingers after an answer
  // (kLingerMs, 2 s), then everything: under epoll, all gw was told went
  // out is the kernel's to deliver, even after gw closed.
  step_for(g, 2600, [] {});
  std::string got, body;
  int err = 0;
  step_until(
      g, [&] { return !drain(client, got, &err); }, "the whole answer and gw's FIN");
  CHECK(err == 0);
  REQUIRE(whole_response(got, body));
  CHECK(body == data);
  ::close(client);
  step_until(
      g, [&] { return g.http->active() == 0; }, "the connection to close");
  ::close(host);
  g.http->close_all();
  for (int i = 0; i < 20; ++i) g.step(1);
}

// --- a client that half-closed after its request ---------------------------

void half_closed_client_closes_at_once(bool uring) {
  if (skip_engine(uring)) return;
  Upstream up;
  Gateway g(up.port, 0, "", 0, uring);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  g.accept(sv[0]);
  const int client = sv[1];
  // An HTTP/1.0-style client: its request, then its FIN.
  send_all(client, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n");
  REQUIRE(::shutdown(client, SHUT_WR) == 0);
  int host = -1;
  std::string req;
  host_takes_request(g, up, host, req);
  send_all(host, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
  std::string got, body;
  step_until(
      g, [&] { return !drain(client, got); }, "the answer and gw's FIN");
  REQUIRE(whole_response(got, body));
  CHECK(body == "hello");
  // Both directions are done: gw's FIN went out after the client's. Under
  // epoll the connection is closed at once (EPOLLHUP), not after kLingerMs.
  const uint64_t t0 = core::monotonic_ms();
  step_until(
      g, [&] { return g.http->active() == 0; }, "the connection to close");
  const uint64_t took = core::monotonic_ms() - t0;
  INFO("closed after " << took << " ms");
  CHECK(took < 1000);
  ::close(client);
  ::close(host);
  g.http->close_all();
  for (int i = 0; i < 20; ++i) g.step(1);
}

// --- a client that said "Connection: close" -----------------------------------

// Its request was its last and nothing follows it: gw closes once the answer
// is handed over, without the half-close and the wait for the client's FIN
// (kLingerMs) that guard against a reset over unread bytes. A client that
// breaks its word and sends more gets the linger, and so the whole answer, not
// a reset.
void client_close_closes_at_once(bool uring, bool sends_more) {
  if (skip_engine(uring)) return;
  Upstream up;
  Gateway g(up.port, 0, "", 0, uring);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  g.accept(sv[0]);
  const int client = sv[1];
  send_all(client, "GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  int host = -1;
  std::string req;
  host_takes_request(g, up, host, req);
  if (sends_more) {
    send_all(client, "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    for (int i = 0; i < 5; ++i) g.step(1);  // read by gw, after the request it is answering
  }
  const std::string data(3000, 'x');
  send_all(host, "HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + data);
  std::string got, body;
  int err = 0;
  step_until(
      g, [&] { return !drain(client, got, &err); }, "the answer and gw's FIN");
  CHECK(err == 0);  // a FIN, not a reset
  REQUIRE(whole_response(got, body));
  CHECK(body == data);
  CHECK(got.find("GET /2") == std::string::npos);
  // The client still holds its end open.
  for (int i = 0; i < 5; ++i) g.step(1);
  if (sends_more) {
    CHECK(g.http->active() == 1);  // lingering: reads and drops until the client's FIN
    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the connection to close after the client's FIN");
  } else {
    CHECK(g.http->active() == 0);
    ::close(client);
  }
  ::close(host);
  g.http->close_all();
  for (int i = 0; i < 20; ++i) g.step(1);
}

// --- a tunnel closed from both sides while its last bytes wait for the client

void tunnel_end_delivers_last_bytes(bool uring) {
  if (skip_engine(uring)) return;
  Upstream up;
  Gateway g(up.port, 0, "", 0, uring);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  const int small = 4096;  // gw's end takes a few KiB: the client has not read the rest yet
  REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
  g.accept(sv[0]);
  const int client = sv[1];
  send_all(client, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
  int host = -1;
  std::string req;
  host_takes_request(g, up, host, req);
  send_all(host, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
  std::string got;
  step_until(
      g, [&] { return drain(client, got) && got.find("\r\n\r\n") != std::string::npos; }, "the 101 at the client");
  got.clear();
  // The client is done sending (its FIN goes on to the host); the host
  // answers with its last 12 KB and closes: the tunnel ends both ways.
  REQUIRE(::shutdown(client, SHUT_WR) == 0);
  step_for(g, 100, [] {});
  const std::string data(12000, 'd');
  send_all(host, data);
  ::close(host);
  step_for(g, 200, [] {});
  // The client reads only now: every byte the host sent, then the FIN.
  int err = 0;
  step_until(
      g, [&] { return !drain(client, got, &err); }, "the host's bytes and the FIN at the client");
  CHECK(err == 0);
  CHECK(got.size() == data.size());
  CHECK(got.find_first_not_of('d') == std::string::npos);
  step_until(
      g, [&] { return g.http->active() == 0; }, "the tunnel to close");
  ::close(client);
  g.http->close_all();
  for (int i = 0; i < 20; ++i) g.step(1);
}

// --- slow readers and the worker's shared buffer ring ----------------------

void slow_readers_do_not_stall_others(bool uring) {
  if (skip_engine(uring)) return;
  Upstream up;
  Gateway g(up.port, 0, "", 0, uring);
  // The host: 1 MiB for /big, "hello" for anything else; what does not fit
  // in the socket waits here.
  struct Host {
    int fd;
    std::string in, out;
  };
  std::vector<Host> hosts;
  const std::string big = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + std::string(1 << 20, 'b');
  const std::string small = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
  auto serve = [&] {
    for (int fd; (fd = ::accept4(up.lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;)
      hosts.push_back(Host{fd, {}, {}});
    for (Host& h : hosts) {
      if (h.fd < 0) continue;
      if (!drain(h.fd, h.in)) {
        ::close(h.fd);
        h.fd = -1;
        continue;
      }
      for (size_t end; (end = h.in.find("\r\n\r\n")) != std::string::npos;) {
        h.out += h.in.starts_with("GET /big ") ? big : small;
        h.in.erase(0, end + 4);
      }
      while (!h.out.empty()) {
        const ssize_t n = ::send(h.fd, h.out.data(), h.out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0) break;
        h.out.erase(0, static_cast<size_t>(n));
      }
    }
  };
  // More downloads than the ring (64 buffers in the harness, 256 in gwd)
  // has buffers for at kHighWater (2) each, to clients that read nothing.
  constexpr int kSlow = 40;
  std::vector<int> slow;
  for (int i = 0; i < kSlow; ++i) {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    g.accept(sv[0]);
    slow.push_back(sv[1]);
    send_all(sv[1], "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
  }
  step_for(g, 1000, serve);
  // Another client, whose host answers at once: served as under epoll.
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  g.accept(sv[0]);
  const int client = sv[1];
  send_all(client, "GET /small HTTP/1.1\r\nHost: a\r\n\r\n");
  std::string got, body;
  step_until(
      g,
      [&] {
        serve();
        REQUIRE(drain(client, got));
        return whole_response(got, body);
      },
      "the answer to a client while others read slowly");
  CHECK(body == "hello");
  ::close(client);
  for (int fd : slow) ::close(fd);
  g.http->close_all();
  for (int i = 0; i < 20; ++i) g.step(1);
  for (Host& h : hosts)
    if (h.fd >= 0) ::close(h.fd);
}

// --- every HttpIo socket slot taken -------------------------------------

std::string read_file(const std::string& path) {
  std::string s;
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) s.append(buf, n);
    std::fclose(f);
  }
  return s;
}

size_t count_of(const std::string& s, std::string_view what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_SUITE("http io") {
  TEST_CASE(
      "io_uring: with every HttpIo slot taken, clients are closed and upstream sockets refused, logged once a second") {
    if (skip_engine(true)) return;
    const std::string log_path = "/tmp/gw_http_io_full_" + std::to_string(::getpid()) + ".log";
    std::remove(log_path.c_str());
    core::log_open(log_path);
    const core::LogLevel level = core::log_level();
    core::log_set_level(core::LogLevel::warn);
    Upstream up;
    Gateway g(up.port, 0, "", 0, true, 2);  // two sockets: one client and its upstream
    // One client, whose request takes the other slot, and whose answer
    // keeps it (a keep-alive upstream connection).
    int a[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a) == 0);
    g.accept(a[0]);
    send_all(a[1], "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n");
    int host = -1;
    std::string req, got, body;
    host_takes_request(g, up, host, req);
    send_all(host, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    step_until(
        g,
        [&] {
          REQUIRE(drain(a[1], got));
          return whole_response(got, body);
        },
        "the first answer");
    CHECK(g.io->open_count() == 2);
    // More clients: no slot for them. Each is closed, the proxy's slot
    // freed; one line says why.
    for (int i = 0; i < 3; ++i) {
      int b[2];
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b) == 0);
      g.accept(b[0]);
      std::string none;
      step_until(
          g, [&] { return !drain(b[1], none); }, "the refused client's EOF");
      CHECK(none.empty());
      ::close(b[1]);
    }
    CHECK(g.http->active() == 1);
    ::close(a[1]);
    ::close(host);
    g.http->close_all();
    for (int i = 0; i < 20; ++i) g.step(1);
    {
      // One slot: a client's, and none for its upstream socket. Each request
      // is answered 503 (local_error), as with no descriptor.
      Gateway g1(up.port, 0, "", 0, true, 1);
      for (int i = 0; i < 3; ++i) {
        int c[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c) == 0);
        g1.accept(c[0]);
        send_all(c[1], "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
        std::string ans, b;
        step_until(
            g1,
            [&] {
              drain(c[1], ans);
              return whole_response(ans, b);
            },
            "a 503");
        CHECK(ans.starts_with("HTTP/1.1 503"));
        ::close(c[1]);
        step_until(
            g1, [&] { return g1.http->active() == 0 && g1.io->retiring() == 0; }, "the client's slot to retire");
      }
      g1.http->close_all();
      for (int i = 0; i < 20; ++i) g1.step(1);
    }
    core::log_open("");
    core::log_set_level(level);
    const std::string log = read_file(log_path);
    std::remove(log_path.c_str());
    INFO(log);
    CHECK(count_of(log, "cannot watch a client socket") == 1);
    CHECK(count_of(log, "cannot watch an upstream socket") == 1);
  }

  TEST_CASE("engines: a Connection: close answer reaches a client that reads only after kLingerMs (epoll)") {
    close_answer_reaches_late_reader(false);
  }
  TEST_CASE("engines: a Connection: close answer reaches a client that reads only after kLingerMs (io_uring)") {
    close_answer_reaches_late_reader(true);
  }
  TEST_CASE("engines: a half-closed client's connection closes once answered, not after kLingerMs (epoll)") {
    half_closed_client_closes_at_once(false);
  }
  TEST_CASE("engines: a half-closed client's connection closes once answered, not after kLingerMs (io_uring)") {
    half_closed_client_closes_at_once(true);
  }
  TEST_CASE("engines: a client that said Connection: close is closed once answered, without a linger (epoll)") {
    client_close_closes_at_once(false, false);
  }
  TEST_CASE("engines: a client that said Connection: close is closed once answered, without a linger (io_uring)") {
    client_close_closes_at_once(true, false);
  }
  TEST_CASE("engines: a client that said Connection: close and sent more still gets the linger (epoll)") {
    client_close_closes_at_once(false, true);
  }
  TEST_CASE("engines: a client that said Connection: close and sent more still gets the linger (io_uring)") {
    client_close_closes_at_once(true, true);
  }
  TEST_CASE("engines: a tunnel ended both ways still delivers the host's last bytes to a slow client (epoll)") {
    tunnel_end_delivers_last_bytes(false);
  }
  TEST_CASE("engines: a tunnel ended both ways still delivers the host's last bytes to a slow client (io_uring)") {
    tunnel_end_delivers_last_bytes(true);
  }
  TEST_CASE("engines: clients that read slowly do not stall another client (epoll)") {
    slow_readers_do_not_stall_others(false);
  }
  TEST_CASE("engines: clients that read slowly do not stall another client (io_uring)") {
    slow_readers_do_not_stall_others(true);
  }
}

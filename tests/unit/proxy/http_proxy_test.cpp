// The HTTP proxy against hosts that misbehave at awkward moments, end to end
// inside one process (tests/unit/proxy/http_harness.hpp): cases whose timing a
// test against a real gwd cannot force, such as a client that has not yet taken
// an answer (or an interim head) at the moment a host writes or fails.
#include <doctest/doctest.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "http_harness.hpp"

using namespace gw;
using namespace gw::testing::proxy_harness;

namespace {

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

/// Reads what `fd` has (non-blocking) onto `into`; false once it is closed.
bool drain(int fd, std::string& into) {
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      into.append(buf, static_cast<size_t>(n));
      continue;
    }
    return n != 0;
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

}  // namespace

TEST_SUITE("http proxy") {
  TEST_CASE("bytes a host sends after its answer, while the client still takes it, are not the next answer") {
    Upstream up;
    Gateway g(up.port);
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    // gw's end of the client connection takes only a few KiB: an answer of
    // 12 KiB waits in gw's response buffer until the client reads.
    const int small = 4096;
    REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    g.accept(sv[0]);
    const int client = sv[1];

    send_all(client, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n");
    int host = -1;
    std::string req;
    step_until(
        g,
        [&] {
          if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host >= 0) drain(host, req);
          return req.find("\r\n\r\n") != std::string::npos;
        },
        "the first request at the host");
    const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 12000\r\n\r\n" + std::string(12000, 'x');
    send_all(host, answer);
    for (int i = 0; i < 20; ++i) g.step(1);
    int queued = 0;
    REQUIRE(::ioctl(client, FIONREAD, &queued) == 0);
    REQUIRE(static_cast<size_t>(queued) < answer.size());  // gw holds the rest of the answer

    // The host writes on after its answer (a body to a HEAD, an answer of
    // its own): a whole response, which gw does not read now (its answer is
    // done), and which must not be taken for the answer to another request.
    send_all(host, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL");
    for (int i = 0; i < 5; ++i) g.step(1);

    std::string got, body;
    step_until(
        g,
        [&] {
          REQUIRE(drain(client, got));
          return whole_response(got, body);
        },
        "the client to take the first answer");
    CHECK(body.size() == 12000);
    CHECK(body.find_first_not_of('x') == std::string::npos);

    // The next request at once: the connection has been idle well below
    // the 50 ms after which gw would look at it before reuse.
    got.clear();
    body.clear();
    send_all(client, "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    std::vector<int> hosts{host};
    std::vector<std::string> reqs(1);
    step_until(
        g,
        [&] {
          for (int fd; (fd = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC)) >= 0;) {
            hosts.push_back(fd);
            reqs.emplace_back();
          }
          for (size_t i = 0; i < hosts.size(); ++i) {
            drain(hosts[i], reqs[i]);
            if (reqs[i].find("GET /2 ") != std::string::npos) {
              send_all(hosts[i], "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood");
              reqs[i].clear();
            }
          }
          REQUIRE(drain(client, got));
          return whole_response(got, body);
        },
        "the answer to the second request");
    CHECK(body == "good");
    CHECK(hosts.size() == 2);  // on a new connection: the first had unread bytes

    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the client connection to close");
    g.http->close_all();
    for (int fd : hosts) ::close(fd);
  }
}

TEST_SUITE("http proxy") {
  TEST_CASE("an interim answer half sent to the client is not followed by another answer when the host fails") {
    Upstream up;
    Gateway g(up.port);
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    // gw's end of the client connection takes about 8 KiB: a 12 KiB interim
    // head goes out in part until the client reads.
    const int small = 4096;
    REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    g.accept(sv[0]);
    const int client = sv[1];

    send_all(client, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n");
    int host = -1;
    std::string req;
    step_until(
        g,
        [&] {
          if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host >= 0) drain(host, req);
          return req.find("\r\n\r\n") != std::string::npos;
        },
        "the request at the host");
    // A 103 with many preload links (as gw passes it on), then the host
    // closes without a final answer: a failure before the answer, which gw
    // would answer with a 502, or retry elsewhere.
    std::string interim = "HTTP/1.1 103 Early Hints\r\n";
    for (int i = 0; interim.size() < 12000; ++i)
      interim += "Link: </assets/file" + std::to_string(i) + ".js>; rel=preload; as=script\r\n";
    interim += "\r\n";
    send_all(host, interim);
    ::close(host);
    for (int i = 0; i < 20; ++i) g.step(1);

    // The client reads only now: it has half the interim head, and whatever
    // follows must not be a new answer glued to that half (the client would
    // read it as more field lines of the 103).
    std::string got;
    bool open = true;
    for (const uint64_t end = core::monotonic_ms() + 300; open && core::monotonic_ms() < end;) {
      g.step(1);
      open = drain(client, got);
    }
    CHECK_FALSE(open);  // closed: nothing more can be said
    REQUIRE(got.size() >= 26);
    CHECK(got.starts_with("HTTP/1.1 103 Early Hints\r\n"));
    INFO("received " << got.size() << " bytes of a " << interim.size() << "-byte interim head");
    CHECK(got.size() < interim.size());
    CHECK(got.find("HTTP/1.1 502") == std::string::npos);
    CHECK(interim.starts_with(got));

    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the client connection to close");
    g.http->close_all();
  }
}

namespace {

/// gw's own end of its connection to the host listening on `port` (the
/// socket in this process whose peer is that port), or -1.
int gw_socket_to(uint16_t port) {
  for (int fd = 3; fd < 1024; ++fd) {
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0 && a.sin_family == AF_INET &&
        ntohs(a.sin_port) == port)
      return fd;
  }
  return -1;
}

}  // namespace

TEST_SUITE("http proxy") {
  TEST_CASE("a retry after a host answered before the whole request head went out sends the next host all of it") {
    Upstream up, backup;
    // The first host's connections get a small receive window, so that a
    // request head stops in gw's send buffer once that is small too.
    const int small = 2048;
    REQUIRE(::setsockopt(up.lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)) == 0);
    Gateway g(up.port, backup.port, R"("retry": {"on": ["error", "timeout", "invalid_response"], "tries": 2}, )");
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    g.accept(sv[0]);
    const int client = sv[1];

    // A first request leaves a kept-alive connection to the first host.
    send_all(client, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n");
    int host = -1;
    std::string req;
    step_until(
        g,
        [&] {
          if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host >= 0) drain(host, req);
          return req.find("\r\n\r\n") != std::string::npos;
        },
        "the first request at the host");
    send_all(host, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    std::string got, body;
    step_until(
        g,
        [&] {
          REQUIRE(drain(client, got));
          return whole_response(got, body);
        },
        "the first answer");
    REQUIRE(body == "ok");
    const int gw_fd = gw_socket_to(up.port);
    REQUIRE(gw_fd >= 0);
    const int tiny = 4096;  // locked: the kernel no longer grows it
    REQUIRE(::setsockopt(gw_fd, SOL_SOCKET, SO_SNDBUF, &tiny, sizeof(tiny)) == 0);

    // A request head of 15 KiB on that connection: the host reads none of
    // it, and answers (a 101 nobody asked for: an invalid answer, retried)
    // while most of the head is still in gw's request buffer.
    const std::string head2 = "GET /2 HTTP/1.1\r\nHost: a\r\nX-Pad: " + std::string(15000, 'p') + "\r\n\r\n";
    send_all(client, head2);
    for (int i = 0; i < 20; ++i) g.step(1);
    int outq = 0, inq = 0;
    REQUIRE(::ioctl(gw_fd, SIOCOUTQ, &outq) == 0);
    REQUIRE(::ioctl(host, FIONREAD, &inq) == 0);
    INFO("in the kernel: ", outq, " + ", inq);
    REQUIRE(static_cast<size_t>(outq + inq) < head2.size());  // the rest waits in gw
    send_all(host, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");

    // The next host gets the whole head, and its answer reaches the client.
    got.clear();
    body.clear();
    int host2 = -1;
    std::string req2;
    bool answered = false;
    step_until(
        g,
        [&] {
          if (host2 < 0) host2 = ::accept4(backup.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host2 >= 0) drain(host2, req2);
          if (!answered && req2.find("\r\n\r\n") != std::string::npos) {
            send_all(host2, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood");
            answered = true;
          }
          REQUIRE(drain(client, got));
          return whole_response(got, body);
        },
        "the retried request's answer");
    CHECK(body == "good");
    CHECK(req2.rfind("GET /2 HTTP/1.1\r\n", 0) == 0);
    CHECK(req2.find(std::string(15000, 'p')) != std::string::npos);

    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the client connection to close");
    g.http->close_all();
    ::close(host);
    if (host2 >= 0) ::close(host2);
  }
}

TEST_SUITE("http proxy") {
  TEST_CASE("a worker out of buffer memory for an interim head answers 503 and does not blame the host") {
    // The host's 103 arrives in two parts: the first takes gw's response
    // buffer; then the pool (bounded at one chunk, 64 buffers) is emptied, so
    // gw has no buffer for the interim head it writes to the client. That is
    // gw's own trouble: the client gets 503 (gw lets the request's buffers go
    // and takes one of them for it), and the host no passive failure (it was
    // a 502 and a failure: with max_fails 1 the host was out for every worker).
    // (A final head cannot meet an empty pool this way: gw lets the request's
    // buffer go just before it takes one for the head.)
    Upstream up;
    Gateway g(up.port, 0, R"("max_fails": 1, )", 64);
    const shm::HostRecord& rec = g.snap.table().hosts()[0];
    const std::atomic<uint64_t>& failures = g.ts.seg.host(rec.slot).failures;
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    g.accept(sv[0]);
    const int client = sv[1];
    send_all(client, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    int host = -1;
    std::string in;
    step_until(
        g,
        [&] {
          if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host >= 0) drain(host, in);
          return in.find("\r\n\r\n") != std::string::npos;
        },
        "the request at the host");
    const size_t before = g.buffers.in_use();
    send_all(host, "HTTP/1.1 103 Early");
    step_until(
        g, [&] { return g.buffers.in_use() > before; }, "gw to read the first part");
    std::vector<char*> held;
    while (char* b = g.buffers.acquire()) held.push_back(b);
    REQUIRE(!held.empty());
    send_all(host, " Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    std::string got;
    step_until(
        g, [&] { return !drain(client, got); }, "the client connection to close");
    CHECK(got.substr(0, 12) == "HTTP/1.1 503");
    CHECK(got.find("Connection: close\r\n") != std::string::npos);
    CHECK(failures.load() == 0);
    for (char* b : held) g.buffers.release(b);

    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the connection to be freed");
    g.http->close_all();
    ::close(host);
  }

  TEST_CASE("a worker out of buffer memory for the upstream request head answers 503, not 431") {
    // The request head arrives in two parts: the first takes the client's
    // input buffer; then the pool (one chunk, 64 buffers) is emptied, so gw
    // has no buffer for the head it writes to the host. That was answered
    // 431 and counted as the client's bad request; it is the worker's own
    // trouble, as being short of descriptors is: 503, local_error, and the
    // client's buffer is let go for the answer. No host hears of it.
    Upstream up;
    Gateway g(up.port, 0, R"("max_fails": 1, )", 64);
    const auto& outcomes = g.ts.seg.worker(g.env.worker).http_outcomes;
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    g.accept(sv[0]);
    const int client = sv[1];
    const size_t before = g.buffers.in_use();
    send_all(client, "GET /x HTTP/1.1\r\nHo");
    step_until(
        g, [&] { return g.buffers.in_use() > before; }, "gw to read the first part");
    std::vector<char*> held;
    while (char* b = g.buffers.acquire()) held.push_back(b);
    REQUIRE(!held.empty());
    send_all(client, "st: a\r\n\r\n");
    std::string got;
    step_until(
        g, [&] { return !drain(client, got); }, "the client connection to close");
    CHECK(got.substr(0, 12) == "HTTP/1.1 503");
    CHECK(got.find("Connection: close\r\n") != std::string::npos);
    CHECK(outcomes[static_cast<size_t>(proxy::HttpOutcome::local_error)].load() == 1);
    CHECK(outcomes[static_cast<size_t>(proxy::HttpOutcome::bad_request)].load() == 0);
    CHECK(::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK) < 0);  // no connection to the host
    for (char* b : held) g.buffers.release(b);

    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the connection to be freed");
    g.http->close_all();
  }

  TEST_CASE("a listed status from the last host left is passed on whole, though tries remain") {
    // tries 3 over two hosts: after the second 503 no host is left to try.
    // The client gets that host's own answer, head and body (its
    // Retry-After too), as nginx passes its last try on; not gw's page.
    Upstream up, backup;
    Gateway g(up.port, backup.port, R"("max_fails": 0, "retry": {"on": ["error", "503"], "tries": 3}, )");
    const std::atomic<uint64_t>& retries = g.ts.seg.worker(g.env.worker).http_retries;
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    g.accept(sv[0]);
    const int client = sv[1];
    send_all(client, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    int hosts[2] = {-1, -1};
    std::string in[2], got, body;
    int accepted = 0;
    step_until(
        g,
        [&] {
          const int lfd[2] = {up.lfd, backup.lfd};
          for (int i = 0; i < 2; ++i) {
            for (int fd; (fd = ::accept4(lfd[i], nullptr, nullptr, SOCK_CLOEXEC)) >= 0;) {
              ++accepted;
              if (hosts[i] < 0) hosts[i] = fd;
              else ::close(fd);
            }
            if (hosts[i] < 0 || in[i] == "answered") continue;
            drain(hosts[i], in[i]);
            if (in[i].find("\r\n\r\n") == std::string::npos) continue;
            const std::string text = i == 0 ? "from h" : "from b";
            send_all(hosts[i],
                     "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 6\r\n\r\n" + text);
            in[i] = "answered";
          }
          REQUIRE(drain(client, got));
          return whole_response(got, body);
        },
        "the answer");
    CHECK(got.substr(0, 12) == "HTTP/1.1 503");
    CHECK(body == "from b");
    CHECK(got.find("Retry-After: 7\r\n") != std::string::npos);
    CHECK(retries.load() == 1);
    CHECK(accepted == 2);

    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the client connection to close");
    g.http->close_all();
    for (const int fd : hosts)
      if (fd >= 0) ::close(fd);
  }

  TEST_CASE("a request sent again after a kept-alive connection closed on reuse is not counted as a retry") {
    Upstream up, backup;
    Gateway g(up.port, backup.port, R"("max_fails": 0, "retry": {"on": ["error", "503"], "tries": 2}, )");
    const std::atomic<uint64_t>& retries = g.ts.seg.worker(g.env.worker).http_retries;
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    g.accept(sv[0]);
    const int client = sv[1];
    struct Peer {
      int fd;
      bool backup;
      std::string in;
    };
    std::vector<Peer> peers;

    // Serves one request: the first host answers 503, the backup 200 (its
    // connection kept alive), unless `reset_backup`: then the backup resets
    // the kept-alive connection the request comes on, as a host whose
    // keep-alive timeout closes it just then, and answers on a new one.
    auto exchange = [&](const std::string& path, bool reset_backup) {
      send_all(client, "GET " + path + " HTTP/1.1\r\nHost: a\r\n\r\n");
      const size_t known = peers.size();
      std::string got, body;
      step_until(
          g,
          [&] {
            for (int fd; (fd = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC)) >= 0;)
              peers.push_back({fd, false, {}});
            for (int fd; (fd = ::accept4(backup.lfd, nullptr, nullptr, SOCK_CLOEXEC)) >= 0;)
              peers.push_back({fd, true, {}});
            for (size_t i = 0; i < peers.size(); ++i) {
              Peer& p = peers[i];
              if (p.fd < 0) continue;
              drain(p.fd, p.in);
              if (p.in.find("\r\n\r\n") == std::string::npos) continue;
              p.in.clear();
              if (!p.backup) {
                send_all(p.fd, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
              } else if (reset_backup && i < known) {
                const linger l{1, 0};
                ::setsockopt(p.fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
                ::close(p.fd);  // a reset, with nothing answered
                p.fd = -1;
              } else {
                send_all(p.fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
              }
            }
            REQUIRE(drain(client, got));
            return whole_response(got, body);
          },
          "the answer");
      return got.substr(0, 12) + body;
    };

    CHECK(exchange("/1", false) == "HTTP/1.1 200ok");
    CHECK(retries.load() == 1);  // the first host's 503, then the backup
    // Again; the backup's kept-alive connection is reset as the request comes
    // on it, and gw sends the request again on a new one: the same one retry.
    CHECK(exchange("/2", false) == "HTTP/1.1 200ok");
    CHECK(retries.load() == 2);
    CHECK(exchange("/3", true) == "HTTP/1.1 200ok");
    CHECK(retries.load() == 3);

    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the client connection to close");
    g.http->close_all();
    for (const Peer& p : peers)
      if (p.fd >= 0) ::close(p.fd);
  }
}

TEST_SUITE("http proxy") {
  TEST_CASE("a host's reset after its FIN ends the tunnel also when it came while gw was not reading the host") {
    Upstream up;
    Gateway g(up.port);
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    // gw's end of the client connection takes about 8 KiB: the host's bytes
    // wait in gw's tunnel buffer and socket until the client reads.
    const int small = 4096;
    REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    g.accept(sv[0]);
    const int client = sv[1];

    send_all(client, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    int host = -1;
    std::string req;
    step_until(
        g,
        [&] {
          if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host >= 0) drain(host, req);
          return req.find("\r\n\r\n") != std::string::npos;
        },
        "the upgrade request at the host");
    const std::string head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    const std::string data(32 * 1024, 'd');
    send_all(host, head + data);
    // All of it leaves the host; the client reads nothing yet, so gw stops
    // reading the host with part of it still in gw's socket.
    step_until(
        g,
        [&] {
          int outq = 0;
          REQUIRE(::ioctl(host, SIOCOUTQ, &outq) == 0);
          return outq == 0;
        },
        "the host's bytes to reach gw");
    for (int i = 0; i < 20; ++i) g.step(1);
    // The host's FIN, then its reset, while gw does not read it.
    REQUIRE(::shutdown(host, SHUT_WR) == 0);
    for (int i = 0; i < 20; ++i) g.step(1);
    const linger l{1, 0};
    REQUIRE(::setsockopt(host, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) == 0);
    ::close(host);
    for (int i = 0; i < 20; ++i) g.step(1);

    // The client takes all the host sent, then the FIN; it stays silent and
    // open. Nothing can reach the host any more: the tunnel ends, as on a
    // reset the host sent while gw was reading it (not at idle_timeout_ms).
    std::string got;
    step_until(
        g, [&] { return !drain(client, got); }, "the host's bytes and its FIN at the client");
    const size_t end = got.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    CHECK(got.starts_with("HTTP/1.1 101 "));
    CHECK(got.size() - end - 4 == data.size());
    CHECK(got.compare(end + 4, std::string::npos, data) == 0);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the tunnel to end");
    ::close(client);
    g.http->close_all();
  }
}

TEST_SUITE("http proxy") {
  TEST_CASE("a host that closes its tunnel while the client sends still gets all it sent to the client") {
    Upstream up;
    Gateway g(up.port);
    // The client on TCP, with a small receive window: gw holds part of the
    // host's bytes until it reads, and a reset of this connection would
    // destroy them.
    Upstream front;
    const int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int small = 4096;
    REQUIRE(::setsockopt(client, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)) == 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(front.port);
    REQUIRE(::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    int gw_end = -1;
    for (const uint64_t end = core::monotonic_ms() + 5000; gw_end < 0 && core::monotonic_ms() < end;)
      gw_end = ::accept4(front.lfd, nullptr, nullptr, SOCK_CLOEXEC);
    REQUIRE(gw_end >= 0);
    REQUIRE(::setsockopt(gw_end, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    g.accept(gw_end);

    send_all(client, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    int host = -1;
    std::string req;
    step_until(
        g,
        [&] {
          if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host >= 0) drain(host, req);
          return req.find("\r\n\r\n") != std::string::npos;
        },
        "the upgrade request at the host");
    const std::string data(64 * 1024, 'd');
    send_all(host, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n" + data);
    step_until(
        g,
        [&] {
          int outq = 0;
          REQUIRE(::ioctl(host, SIOCOUTQ, &outq) == 0);
          return outq == 0;
        },
        "the host's bytes to reach gw");
    // The host closes (a WebSocket server after its last message and close
    // frame), while the client, which has not read them yet, sends on: what
    // reaches the host after its close is reset, and gw cannot send there.
    ::close(host);
    for (int i = 0; i < 20; ++i) g.step(1);
    for (int k = 0; k < 5; ++k) {
      send_all(client, std::string(2000, 'c'));
      for (int i = 0; i < 10; ++i) g.step(1);
    }

    // The client gets every byte the host sent, then the FIN (no reset).
    std::string got;
    ssize_t last = -1;
    int err = 0;
    step_until(
        g,
        [&] {
          char buf[16384];
          last = ::recv(client, buf, sizeof(buf), MSG_DONTWAIT);
          if (last > 0) got.append(buf, static_cast<size_t>(last));
          else if (last < 0 && errno != EAGAIN) err = errno;
          return last == 0 || err != 0;
        },
        "the host's bytes and its FIN at the client");
    CHECK(err == 0);
    const size_t end = got.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    CHECK(got.starts_with("HTTP/1.1 101 "));
    CHECK(got.size() - end - 4 == data.size());
    CHECK(got.compare(end + 4, std::string::npos, data) == 0);
    // The client's FIN ends it.
    REQUIRE(::shutdown(client, SHUT_WR) == 0);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the connection to close");
    ::close(client);
    g.http->close_all();
  }
}

TEST_SUITE("http proxy") {
  TEST_CASE("a host that resets after its whole early answer does not cut that answer while the client sends on") {
    // A host answers a POST before taking its body (a 413, a 401) and closes
    // with the body unread, so its kernel resets the connection. The whole
    // answer is in gw's response buffer, the client not yet reading it; the
    // client's next body bytes must not end in a failed send that closes the
    // client connection under that answer (nginx sends nothing more to a host
    // once the answer has begun).
    Upstream up;
    Gateway g(up.port);
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    const int small = 4096;
    REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    g.accept(sv[0]);
    const int client = sv[1];

    send_all(client, "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + std::string(1000, 'b'));
    int host = -1;
    std::string req;
    step_until(
        g,
        [&] {
          if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host >= 0) drain(host, req);
          return req.size() >= req.find("\r\n\r\n") + 4 + 1000 && req.find("\r\n\r\n") != std::string::npos;
        },
        "the head and the first body bytes at the host");
    const std::string answer = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 12000\r\nConnection: close\r\n\r\n" +
                               std::string(12000, 'x');
    send_all(host, answer);
    for (int i = 0; i < 20; ++i) g.step(1);
    int queued = 0;
    REQUIRE(::ioctl(client, FIONREAD, &queued) == 0);
    REQUIRE(static_cast<size_t>(queued) < answer.size());  // gw holds the rest of the answer

    // The host resets (SO_LINGER 0), then the client sends more of its body.
    const linger lg{1, 0};
    REQUIRE(::setsockopt(host, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
    ::close(host);
    for (int i = 0; i < 5; ++i) g.step(1);
    send_all(client, std::string(1000, 'c'));
    for (int i = 0; i < 5; ++i) g.step(1);

    std::string got, body;
    step_until(
        g,
        [&] {
          const bool open = drain(client, got);
          if (whole_response(got, body)) return true;
          REQUIRE(open);  // closed before the whole answer
          return false;
        },
        "the client to take the whole answer");
    CHECK(got.starts_with("HTTP/1.1 413 "));
    CHECK(body.size() == 12000);
    CHECK(body.find_first_not_of('x') == std::string::npos);

    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the client connection to close");
    g.http->close_all();
  }
}

TEST_SUITE("http proxy") {
  TEST_CASE("a client whose FIN cuts its body short after the host's whole early answer still gets that answer") {
    // The host answers a POST before taking its body (a 413); the client
    // stops sending and half-closes, still reading. The answer is whole in
    // gw's response buffer: it goes out, then the connection closes.
    Upstream up;
    Gateway g(up.port);
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    const int small = 4096;
    REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    g.accept(sv[0]);
    const int client = sv[1];

    send_all(client, "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + std::string(1000, 'b'));
    int host = -1;
    std::string req;
    step_until(
        g,
        [&] {
          if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host >= 0) drain(host, req);
          return req.size() >= req.find("\r\n\r\n") + 4 + 1000 && req.find("\r\n\r\n") != std::string::npos;
        },
        "the head and the first body bytes at the host");
    const std::string answer =
        "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 12000\r\n\r\n" + std::string(12000, 'x');
    send_all(host, answer);
    for (int i = 0; i < 20; ++i) g.step(1);
    int queued = 0;
    REQUIRE(::ioctl(client, FIONREAD, &queued) == 0);
    REQUIRE(static_cast<size_t>(queued) < answer.size());  // gw holds the rest of the answer

    REQUIRE(::shutdown(client, SHUT_WR) == 0);
    for (int i = 0; i < 5; ++i) g.step(1);

    std::string got, body;
    bool open = true;
    step_until(
        g,
        [&] {
          open = drain(client, got);
          if (whole_response(got, body)) return true;
          REQUIRE(open);  // closed before the whole answer
          return false;
        },
        "the client to take the whole answer");
    CHECK(got.starts_with("HTTP/1.1 413 "));
    CHECK(body.size() == 12000);
    CHECK(got.find("Connection: close\r\n") != std::string::npos);  // said, as the body was not all there
    step_until(
        g, [&] { return !drain(client, got); }, "gw to close the connection");
    step_until(
        g, [&] { return g.http->active() == 0; }, "the client connection to close");  // lingers at most 2 s

    ::close(client);
    ::close(host);
    g.http->close_all();
  }
}

TEST_SUITE("http proxy") {
  TEST_CASE("a host that answers early and stops reading the body does not time its answer out") {
    // The host answers a POST whole before taking its body, keeps the
    // connection and reads nothing more: gw's send to it blocks. The answer
    // waits in gw's buffer for a client slow to take it; send_timeout_ms
    // must not close the client connection under it (nothing more goes to
    // a host that has answered whole).
    Upstream up;
    const int tiny = 4096;
    REQUIRE(::setsockopt(up.lfd, SOL_SOCKET, SO_RCVBUF, &tiny, sizeof(tiny)) == 0);
    Gateway g(up.port, 0, R"("send_timeout_ms": 300, )");
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    const int small = 4096;
    REQUIRE(::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
    g.accept(sv[0]);
    const int client = sv[1];

    send_all(client, "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n");
    int host = -1;
    std::string req;
    step_until(
        g,
        [&] {
          if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
          if (host >= 0) drain(host, req);
          return req.find("\r\n\r\n") != std::string::npos;
        },
        "the head at the host");
    // The body until nothing more goes (the host reads none of it).
    const std::string chunk(16384, 'b');
    for (int idle = 0; idle < 50;) {
      const ssize_t n = ::send(client, chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      idle = n > 0 ? 0 : idle + 1;
      g.step(1);
    }
    const std::string answer =
        "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 12000\r\n\r\n" + std::string(12000, 'x');
    send_all(host, answer);
    for (int i = 0; i < 20; ++i) g.step(1);
    int queued = 0;
    REQUIRE(::ioctl(client, FIONREAD, &queued) == 0);
    REQUIRE(static_cast<size_t>(queued) < answer.size());  // gw holds the rest of the answer

    // Well past send_timeout_ms, the client not reading.
    const uint64_t until = core::monotonic_ms() + 800;
    while (core::monotonic_ms() < until) g.step(10);

    std::string got, body;
    step_until(
        g,
        [&] {
          const bool open = drain(client, got);
          if (whole_response(got, body)) return true;
          REQUIRE(open);  // closed before the whole answer
          return false;
        },
        "the client to take the whole answer");
    CHECK(got.starts_with("HTTP/1.1 413 "));
    CHECK(body.size() == 12000);

    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the client connection to close");
    g.http->close_all();
    ::close(host);
  }
}

TEST_SUITE("http proxy") {
  TEST_CASE("answers on a kept-alive connection feed the host's latency EWMA (ewma had only connects to go by)") {
    // ewma's samples were connect times alone: on kept-alive upstream
    // connections none came, and two equal hosts split 199:1, the one whose
    // last connect was a few microseconds faster taking all. The time to each
    // response head is the sample now.
    Upstream up;
    Gateway g(up.port);
    const int hi = g.table.find_host(g.table.find_pool(g.table.find_upstream("app"), "p"), "h");
    REQUIRE(hi >= 0);
    const shm::HostRecord& h = g.table.hosts()[static_cast<size_t>(hi)];
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    g.accept(sv[0]);
    const int client = sv[1];
    int host = -1;
    std::string in;
    auto exchange = [&](uint64_t delay_ms) {
      send_all(client, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
      std::string got, body;
      uint64_t answer_at = 0;
      step_until(
          g,
          [&] {
            if (host < 0) host = ::accept4(up.lfd, nullptr, nullptr, SOCK_CLOEXEC);
            if (host >= 0 && answer_at == 0) {
              drain(host, in);
              if (in.find("\r\n\r\n") != std::string::npos) {
                in.clear();
                answer_at = core::monotonic_ms() + delay_ms;
              }
            }
            if (answer_at != 0 && answer_at != ~0ull && core::monotonic_ms() >= answer_at) {
              send_all(host, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
              answer_at = ~0ull;
            }
            REQUIRE(drain(client, got));
            return whole_response(got, body);
          },
          "the answer");
    };
    exchange(0);
    const int first = host;
    exchange(30);
    CHECK(host == first);  // the same kept-alive connection: no connect to time
    CHECK(shm::latency_us(g.ts.seg.host(h.slot), h.tag, g.env.now_ms) >= 25000);
    ::close(client);
    step_until(
        g, [&] { return g.http->active() == 0; }, "the client connection to close");
    g.http->close_all();
    ::close(host);
  }
}

// HttpIo: the HTTP proxy's sockets on io_uring completions, against real
// loopback TCP sockets and a real ring. Each case checks what the proxy
// relies on: recv(2)/sendmsg(2)-like results, the readiness it is told
// (edge-triggered epoll's meaning), back-pressure, ordering of a FIN behind
// the bytes sent, resets nothing reads, and slots retiring after a close.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "gw/net/buffer_pool.hpp"
#include "gw/net/uring.hpp"
#include "gw/proxy/http_io.hpp"

using gw::proxy::HttpIo;

namespace {

constexpr uint32_t kBuf = 4096;  // ring buffer size: kHighWater of them pause a receive

/// A connected loopback TCP pair: `ours` (non-blocking, for HttpIo) and
/// `peer` (blocking, the test's end).
struct TcpPair {
  int ours = -1, peer = -1;
  TcpPair() {
    const int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(l, 4) == 0);
    socklen_t len = sizeof(a);
    ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len);
    peer = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(::connect(peer, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    ours = ::accept4(l, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    REQUIRE(ours >= 0);
    ::close(l);
  }
  ~TcpPair() {
    if (peer >= 0) ::close(peer);
  }
  /// Closes the test's end with a reset (SO_LINGER 0).
  void reset_peer() {
    linger lg{1, 0};
    ::setsockopt(peer, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    ::close(peer);
    peer = -1;
  }
};

struct Io {
  gw::net::Ring ring{64};
  gw::net::BufRing bufs;
  gw::net::BufferPool pool;
  HttpIo io;
  /// Completions of requests the test queued itself (a tag op below HttpIo's).
  std::vector<io_uring_cqe> others;
  /// `recv_limit` false: as before Linux 6.17 (single-shot receives).
  explicit Io(bool recv_limit = gw::net::uring_recv_limit_supported(), uint32_t ring_bufs = 8, uint32_t slots = 16)
      : bufs(ring_bufs, kBuf), io(ring, bufs, pool, slots, recv_limit) {
    REQUIRE(bufs.attach(ring.raw(), 0) == 0);
  }
  /// One loop iteration as the worker runs it; returns the events.
  std::vector<epoll_event> step(int timeout_ms = 20) {
    io.flush();
    ring.submit_and_wait(io.has_events() ? 0 : timeout_ms);
    ring.drain([&](const io_uring_cqe& c) {
      if (gw::net::tag_op(c.user_data) >= gw::proxy::uring_op::kHttpFirst)
        io.on_completion(c.user_data, c.res, c.flags);
      else if (c.user_data != 0) others.push_back(c);
    });
    const auto ev = io.take_events();
    return {ev.begin(), ev.end()};
  }
  /// Steps until the events for `data` include all of `mask` (or give up);
  /// returns every bit seen for it.
  uint32_t wait_for(uint64_t data, uint32_t mask, int steps = 100) {
    uint32_t seen = 0;
    for (int i = 0; i < steps && (seen & mask) != mask; ++i)
      for (const epoll_event& e : step())
        if (e.data.u64 == data) seen |= e.events;
    return seen;
  }
  /// Steps until the sockets closed so far have retired.
  void settle() {
    for (int i = 0; i < 100 && io.retiring() > 0; ++i) step(5);
  }
};

bool skip_without_uring() {
  if (std::string why = gw::net::uring_unsupported(); !why.empty()) {
    MESSAGE("io_uring unavailable here, skipped: " << why);
    return true;
  }
  return false;
}

std::string read_all(int fd, size_t n) {
  std::string got(n, '\0');
  size_t have = 0;
  while (have < n) {
    const ssize_t r = ::recv(fd, got.data() + have, n - have, 0);
    if (r <= 0) break;
    have += static_cast<size_t>(r);
  }
  got.resize(have);
  return got;
}

}  // namespace

TEST_SUITE("http io") {
  TEST_CASE("a socket opened is reported writable; bytes come in as EPOLLIN and recv() returns them in order") {
    if (skip_without_uring()) return;
    Io t;
    TcpPair p;
    const uint32_t s = t.io.open(p.ours, 7, false);
    REQUIRE(s != HttpIo::kNone);
    CHECK((t.wait_for(7, EPOLLOUT) & EPOLLOUT));
    char buf[64];
    CHECK(t.io.recv(s, buf, sizeof(buf)) == -1);
    CHECK(errno == EAGAIN);
    CHECK(t.io.peek(s) == -1);
    CHECK(errno == EAGAIN);
    REQUIRE(::send(p.peer, "GET / HTTP/1.1\r\n", 16, 0) == 16);
    CHECK((t.wait_for(7, EPOLLIN) & EPOLLIN));
    CHECK(t.io.peek(s) == 1);
    // A short read: less than asked for, and the rest of it later.
    CHECK(t.io.recv(s, buf, 4) == 4);
    CHECK(std::string(buf, 4) == "GET ");
    CHECK(t.io.recv(s, buf, sizeof(buf)) == 12);
    CHECK(std::string(buf, 12) == "/ HTTP/1.1\r\n");
    CHECK(t.io.recv(s, buf, sizeof(buf)) == -1);
    CHECK(errno == EAGAIN);
    CHECK(t.bufs.out() == 0);  // every buffer taken out went back
    t.io.close(s);
    t.settle();
    CHECK(t.io.retiring() == 0);
    CHECK(t.io.open_count() == 0);
    char b;
    CHECK(::recv(p.peer, &b, 1, 0) == 0);  // the close reached the peer
  }

  TEST_CASE("the peer's FIN comes after its bytes: EPOLLRDHUP, the bytes, then 0") {
    if (skip_without_uring()) return;
    Io t;
    TcpPair p;
    const uint32_t s = t.io.open(p.ours, 7, false);
    REQUIRE(::send(p.peer, "last", 4, 0) == 4);
    REQUIRE(::shutdown(p.peer, SHUT_WR) == 0);
    const uint32_t ev = t.wait_for(7, EPOLLIN | EPOLLRDHUP);
    CHECK((ev & EPOLLRDHUP));
    CHECK_FALSE((ev & EPOLLERR));
    char buf[16];
    CHECK(t.io.recv(s, buf, sizeof(buf)) == 4);
    CHECK(t.io.recv(s, buf, sizeof(buf)) == 0);
    CHECK(t.io.peek(s) == 0);
    t.io.close(s);
    t.settle();
    CHECK(t.io.retiring() == 0);
  }

  TEST_CASE("send() copies and returns the count; the next waits (EAGAIN) and EPOLLOUT says when") {
    if (skip_without_uring()) return;
    Io t;
    TcpPair p;
    const uint32_t s = t.io.open(p.ours, 9, false);
    t.step();
    std::string a = "HTTP/1.1 200 OK\r\n", b = "Content-Length: 0\r\n\r\n";
    iovec iov[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
    CHECK(t.io.send(s, iov, 2) == static_cast<ssize_t>(a.size() + b.size()));
    a.assign(a.size(), 'x');  // the caller's buffer is free again at once
    iovec more{b.data(), b.size()};
    CHECK(t.io.send(s, &more, 1) == -1);  // the first is still in flight (not submitted yet)
    CHECK(errno == EAGAIN);
    CHECK((t.wait_for(9, EPOLLOUT) & EPOLLOUT));
    CHECK(t.io.send(s, &more, 1) == static_cast<ssize_t>(b.size()));
    t.step();
    CHECK(read_all(p.peer, 17 + 2 * b.size()) == "HTTP/1.1 200 OK\r\n" + b + b);
    // More than a pool buffer: a short count, as a send that found less room.
    std::string big(3 * gw::net::BufferPool::kBufferSize, 'y');
    t.wait_for(9, EPOLLOUT, 5);
    iovec biov{big.data(), big.size()};
    CHECK(t.io.send(s, &biov, 1) == static_cast<ssize_t>(gw::net::BufferPool::kBufferSize));
    t.io.close(s);
    t.settle();
    CHECK(t.io.retiring() == 0);
    CHECK(t.pool.in_use() == 0);  // the staging buffer went back, sent or cancelled
  }

  TEST_CASE("shutdown_wr() waits for the send in flight: the peer gets every byte, then the FIN") {
    if (skip_without_uring()) return;
    Io t;
    TcpPair p;
    const uint32_t s = t.io.open(p.ours, 3, false);
    std::string body(10000, 'z');
    iovec iov{body.data(), body.size()};
    REQUIRE(t.io.send(s, &iov, 1) == 10000);
    t.io.shutdown_wr(s);  // before the send was even submitted
    for (int i = 0; i < 5; ++i) t.step(5);
    CHECK(read_all(p.peer, 20000).size() == 10000);  // then the EOF ended the read
    t.io.close(s);
    t.settle();
  }

  TEST_CASE("back-pressure: bytes the proxy does not take pause the receive and leave the ring for a pool buffer") {
    if (skip_without_uring()) return;
    for (const bool limit : {gw::net::uring_recv_limit_supported(), false}) {
      CAPTURE(limit);
      Io t(limit);
      TcpPair p;
      const uint32_t s = t.io.open(p.ours, 5, false);
      const int flags = ::fcntl(p.peer, F_GETFL);
      ::fcntl(p.peer, F_SETFL, flags | O_NONBLOCK);
      std::string chunk(kBuf, 'a');
      size_t sent = 0;
      for (int i = 0; i < 200; ++i) {
        const ssize_t n = ::send(p.peer, chunk.data(), chunk.size(), 0);
        if (n > 0) sent += static_cast<size_t>(n);
        t.step(1);
      }
      // What the proxy did not take left the ring, which every socket shares,
      // for one pool buffer of the socket's own (a spill); the rest waits in
      // the kernel (TCP flow control).
      CHECK(t.bufs.out() <= HttpIo::kHighWater);
      t.step(1);  // (its flush spills what the last step received)
      CHECK(t.bufs.out() == 0);
      CHECK(t.pool.in_use() == 1);
      CHECK(sent > HttpIo::kHighWater * kBuf);
      std::string got;
      char buf[kBuf];
      for (int i = 0; i < 2000 && got.size() < sent; ++i) {
        for (ssize_t n; (n = t.io.recv(s, buf, sizeof(buf))) > 0;) got.append(buf, static_cast<size_t>(n));
        t.step(1);
      }
      CHECK(got.size() == sent);  // nothing lost, in order
      CHECK(got.find_first_not_of('a') == std::string::npos);
      t.io.close(s);
      t.settle();
      CHECK(t.bufs.out() == 0);
    }
  }

  TEST_CASE("a reset after the FIN, which no receive reads, is still reported (EPOLLERR)") {
    if (skip_without_uring()) return;
    Io t;
    TcpPair p;
    const uint32_t s = t.io.open(p.ours, 4, false);
    REQUIRE(::shutdown(p.peer, SHUT_WR) == 0);
    CHECK((t.wait_for(4, EPOLLRDHUP) & EPOLLRDHUP));
    char buf[8];
    CHECK(t.io.recv(s, buf, sizeof(buf)) == 0);
    // Something for the peer, which it never reads: its close then resets.
    iovec iov{buf, sizeof(buf)};
    REQUIRE(t.io.send(s, &iov, 1) == 8);
    t.step();
    p.reset_peer();
    CHECK((t.wait_for(4, EPOLLERR) & EPOLLERR));
    CHECK(t.io.recv(s, buf, sizeof(buf)) == -1);
    CHECK((errno == ECONNRESET || errno == EPIPE));  // the socket's own error (after our FIN-wait: EPIPE)
    t.io.close(s);
    t.settle();
    CHECK(t.io.retiring() == 0);
  }

  TEST_CASE(
      "a reset while the receive is paused by back-pressure is reported (EPOLLERR), as epoll reports it, after the "
      "bytes before it") {
    if (skip_without_uring()) return;
    Io t;
    TcpPair p;
    const uint32_t s = t.io.open(p.ours, 8, false);
    t.step();
    // epoll, on the same socket, for comparison (edge-triggered, as the proxy's set).
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    REQUIRE(ep >= 0);
    epoll_event want{};
    want.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
    REQUIRE(::epoll_ctl(ep, EPOLL_CTL_ADD, p.ours, &want) == 0);
    // Whole buffers' worth that the proxy does not take: the receive pauses
    // at kHighWater buffers (a byte limit where the kernel has one, which
    // ends the receive by itself; else a cancel).
    const std::string chunk(8 * kBuf, 'a');
    REQUIRE(::send(p.peer, chunk.data(), chunk.size(), 0) == static_cast<ssize_t>(chunk.size()));
    CHECK((t.wait_for(8, EPOLLIN) & EPOLLIN));
    for (int i = 0; i < 10; ++i) t.step(2);
    CHECK(t.bufs.out() <= HttpIo::kHighWater);
    epoll_event got[4];
    while (::epoll_wait(ep, got, 4, 0) > 0) {
    }
    p.reset_peer();
    uint32_t by_epoll = 0;
    for (int i = 0; i < 50 && !(by_epoll & EPOLLERR); ++i)
      for (int n = ::epoll_wait(ep, got, 4, 10), j = 0; j < n; ++j) by_epoll |= got[j].events;
    CHECK((by_epoll & EPOLLERR));  // epoll: at once
    CHECK((t.wait_for(8, EPOLLERR, 50) & EPOLLERR));
    // Then every byte the socket took before the reset, and only then its
    // error, as recv(2) returns them under epoll (a host's last bytes to a
    // client still taking the earlier ones).
    std::string all;
    char buf[kBuf];
    ssize_t n = 0;
    while ((n = t.io.recv(s, buf, sizeof(buf))) > 0) all.append(buf, static_cast<size_t>(n));
    CHECK(n == -1);
    CHECK(errno == ECONNRESET);
    CHECK(all.size() == chunk.size());
    CHECK(all.find_first_not_of('a') == std::string::npos);
    ::close(ep);
    t.io.close(s);
    t.settle();
    CHECK(t.io.retiring() == 0);
    CHECK(t.bufs.out() == 0);
  }

  TEST_CASE(
      "a receive that found the buffer ring empty: bytes, a FIN and a reset still come in (ring never refilled)") {
    if (skip_without_uring()) return;
    for (const bool limit : {gw::net::uring_recv_limit_supported(), false}) {
      CAPTURE(limit);
      Io t(limit, 1);
      // Something else of the worker holds the ring's only buffer and does
      // not give it back (a receive of the test's own).
      TcpPair hog;
      io_uring_sqe* sqe = t.ring.sqe();
      io_uring_prep_recv(sqe, hog.ours, nullptr, kBuf, 0);
      sqe->flags |= IOSQE_BUFFER_SELECT;
      sqe->buf_group = t.bufs.group();
      io_uring_sqe_set_data64(sqe, gw::net::pack_tag(1, 0, 0));
      REQUIRE(::send(hog.peer, "h", 1, 0) == 1);
      for (int i = 0; i < 50 && t.others.empty(); ++i) t.step(5);
      REQUIRE(t.others.size() == 1);
      REQUIRE(t.others[0].res == 1);
      REQUIRE(t.bufs.taken(static_cast<uint16_t>(t.others[0].flags >> IORING_CQE_BUFFER_SHIFT)));
      REQUIRE(t.bufs.in_kernel() == 0);
      // Bytes, then a FIN: both come in, in order, as under epoll.
      TcpPair a;
      const uint32_t sa = t.io.open(a.ours, 31, false);
      // A reset after bytes: reported (EPOLLERR).
      TcpPair b;
      const uint32_t sb = t.io.open(b.ours, 32, false);
      t.step();
      REQUIRE(::send(a.peer, "GET /", 5, 0) == 5);
      REQUIRE(::send(b.peer, "GET /", 5, 0) == 5);
      for (int i = 0; i < 5; ++i) t.step(2);
      REQUIRE(::shutdown(a.peer, SHUT_WR) == 0);
      b.reset_peer();
      std::string got;
      char buf[64];
      bool eof = false;
      uint32_t seen_b = 0;
      for (int i = 0; i < 50 && (!eof || !(seen_b & EPOLLERR)); ++i) {
        for (const epoll_event& e : t.step(5))
          if (e.data.u64 == 32) seen_b |= e.events;
        for (ssize_t n; !eof && (n = t.io.recv(sa, buf, sizeof(buf))) >= 0;) {
          if (n == 0) eof = true;
          else got.append(buf, static_cast<size_t>(n));
        }
      }
      CHECK(got == "GET /");
      CHECK(eof);
      CHECK((seen_b & EPOLLERR));
      ssize_t n = 0;
      for (int i = 0; i < 3 && (n = t.io.recv(sb, buf, sizeof(buf))) > 0;)
        ++i;  // (bytes the reset found may come first, as from recv(2))
      CHECK(n == -1);
      CHECK(errno == ECONNRESET);
      t.io.close(sa);
      t.io.close(sb);
      t.settle();
      CHECK(t.io.retiring() == 0);
      CHECK(t.pool.in_use() == 0);
    }
  }

  TEST_CASE("sends that go on after close() hold a quarter of the slots at most: peers that never read leave room") {
    if (skip_without_uring()) return;
    Io t(gw::net::uring_recv_limit_supported(), 8, 8);  // 8 slots: 2 may linger
    constexpr int kN = 8;
    int sv[kN][2];
    uint32_t s[kN];
    const std::string big(gw::net::BufferPool::kBufferSize, 'x');
    for (int i = 0; i < kN; ++i) {
      REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[i]) == 0);
      const int small = 4096;
      REQUIRE(::setsockopt(sv[i][0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) == 0);
      ::fcntl(sv[i][0], F_SETFL, ::fcntl(sv[i][0], F_GETFL) | O_NONBLOCK);
      s[i] = t.io.open(sv[i][0], 60 + static_cast<uint64_t>(i), false);
      REQUIRE(s[i] != HttpIo::kNone);
    }
    t.step();
    for (int i = 0; i < kN; ++i) {
      iovec iov{const_cast<char*>(big.data()), big.size()};
      REQUIRE(t.io.send(s[i], &iov, 1) == static_cast<ssize_t>(big.size()));
    }
    for (int i = 0; i < 5; ++i) t.step(2);
    iovec none{const_cast<char*>(big.data()), 1};
    for (int i = 0; i < kN; ++i) {
      CHECK(t.io.send(s[i], &none, 1) == -1);  // still in flight: its peer reads nothing
      CHECK(errno == EAGAIN);
    }
    for (int i = 0; i < kN; ++i) t.io.close(s[i]);
    for (int i = 0; i < 20; ++i) t.step(2);
    CHECK(t.io.lingering() == 2);
    CHECK(t.io.retiring() == 2);
    // The other slots retired: new sockets are taken.
    TcpPair p;
    const uint32_t n = t.io.open(p.ours, 70, false);
    CHECK(n != HttpIo::kNone);
    // The first two closed go on: their peers get every byte, then the EOF.
    for (int i = 0; i < 2; ++i) {
      std::string got;
      for (int j = 0; j < 200; ++j) {
        char buf[65536];
        const ssize_t r = ::recv(sv[i][1], buf, sizeof(buf), MSG_DONTWAIT);
        if (r == 0) break;
        if (r > 0) got.append(buf, static_cast<size_t>(r));
        t.step(2);
      }
      CHECK(got.size() == big.size());
    }
    if (n != HttpIo::kNone) t.io.close(n);
    t.settle();
    CHECK(t.io.lingering() == 0);
    CHECK(t.pool.in_use() == 0);
    for (auto& pr : sv) ::close(pr[1]);
  }

  TEST_CASE("a send to a peer that reset fails the socket: EPOLLERR, and send() and recv() say the error") {
    if (skip_without_uring()) return;
    Io t;
    TcpPair p;
    const uint32_t s = t.io.open(p.ours, 6, false);
    t.step();
    p.reset_peer();
    std::string x(100, 'x');
    iovec iov{x.data(), x.size()};
    uint32_t seen = 0;
    for (int i = 0; i < 50 && !(seen & EPOLLERR); ++i) {
      if (t.io.send(s, &iov, 1) < 0 && errno != EAGAIN) break;
      seen |= t.wait_for(6, EPOLLOUT | EPOLLERR, 3);
    }
    CHECK(t.io.send(s, &iov, 1) == -1);
    CHECK((errno == ECONNRESET || errno == EPIPE));
    t.io.close(s);
    t.settle();
    CHECK(t.pool.in_use() == 0);
  }

  TEST_CASE("a connecting socket: EPOLLOUT once connected, EPOLLERR for a refused connect") {
    if (skip_without_uring()) return;
    Io t;
    const int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(l, 4) == 0);
    socklen_t len = sizeof(a);
    ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len);
    const int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int r = ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    REQUIRE((r == 0 || errno == EINPROGRESS));
    const uint32_t s = t.io.open(c, 11, true);
    iovec none{nullptr, 0};
    CHECK(t.io.send(s, &none, 1) == -1);  // not before the connect is done
    CHECK(errno == EAGAIN);
    const uint32_t ev = t.wait_for(11, EPOLLOUT);
    CHECK((ev & EPOLLOUT));
    CHECK_FALSE((ev & EPOLLERR));
    // Its receive is armed now: bytes from the accepted side come in.
    const int srv = ::accept(l, nullptr, nullptr);
    REQUIRE(::send(srv, "hi", 2, 0) == 2);
    CHECK((t.wait_for(11, EPOLLIN) & EPOLLIN));
    char buf[4];
    CHECK(t.io.recv(s, buf, sizeof(buf)) == 2);
    t.io.close(s);
    ::close(srv);
    ::close(l);  // nothing listens on the port now
    const int c2 = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int r2 = ::connect(c2, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    REQUIRE((r2 == 0 || errno == EINPROGRESS || errno == ECONNREFUSED));
    if (r2 < 0 && errno == ECONNREFUSED) {
      ::close(c2);
    } else {
      const uint32_t s2 = t.io.open(c2, 12, true);
      CHECK((t.wait_for(12, EPOLLERR) & EPOLLERR));
      t.io.close(s2);
    }
    t.settle();
    CHECK(t.io.retiring() == 0);
  }

  TEST_CASE("a slot is reused only after its last completion, with a new generation; nothing stale is reported") {
    if (skip_without_uring()) return;
    Io t;
    TcpPair p1;
    const uint32_t s1 = t.io.open(p1.ours, 21, false);
    t.step();
    REQUIRE(::send(p1.peer, "abc", 3, 0) == 3);
    t.io.close(s1);  // its receive is armed: the slot waits
    CHECK(t.io.retiring() == 1);
    TcpPair p2;
    const uint32_t s2 = t.io.open(p2.ours, 22, false);
    CHECK(s2 != s1);
    t.settle();
    CHECK(t.io.retiring() == 0);
    TcpPair p3;
    const uint32_t s3 = t.io.open(p3.ours, 23, false);
    CHECK(s3 == s1);  // the retired slot, reused
    for (int i = 0; i < 10; ++i)
      for (const epoll_event& e : t.step(2)) CHECK(e.data.u64 != 21);
    CHECK(t.bufs.out() == 0);
    t.io.close(s2);
    t.io.close(s3);
    t.settle();
  }
}

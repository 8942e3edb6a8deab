// The L4 relay end to end inside one process, under both engines: the client
// is one end of a socketpair, the upstream a loopback listener on port 0 that
// the test serves by hand, the table a temp shm segment. Same checks for the
// epoll TcpRelay and the io_uring UringRelay: bytes both ways, back-pressure,
// half-close, idle timeout, a refused connect, a clean teardown (every buffer
// back), and no heap allocation per connection or per request after warm-up.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/balance/balancer.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/core/clock.hpp"
#include "gw/net/buffer_pool.hpp"
#include "gw/net/reactor.hpp"
#include "gw/net/uring.hpp"
#include "gw/proxy/framer.hpp"
#include "gw/proxy/tcp_relay.hpp"
#include "gw/proxy/uring_relay.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/writer.hpp"

using namespace gw;
using gw::testing::TempSegment;

namespace {

void set_nonblock(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/// A non-blocking TCP listener on 127.0.0.1:0 standing in for the backend.
struct Upstream {
  int lfd = -1;
  uint16_t port = 0;
  explicit Upstream(int rcvbuf = 0) {
    lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (rcvbuf) ::setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));  // accepted sockets inherit it
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(lfd, 64) == 0);
    socklen_t len = sizeof(a);
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  ~Upstream() { ::close(lfd); }
  int accept() { return ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC); }
};

/// A one-upstream, one-host table in a temp segment, and a RelayEnv over it.
struct Env {
  TempSegment ts;
  shm::Table table{ts.seg.caps()};
  balance::Snapshot snap;
  balance::Balancer bal{ts.seg.caps().max_hosts, 7};
  net::TimerWheel timers{core::monotonic_ms()};
  net::BufferPool buffers;
  net::PipePool pipes{8};
  std::vector<proxy::ListenerRuntime> listeners = std::vector<proxy::ListenerRuntime>(1);
  std::vector<uint32_t> live_tag;
  proxy::RelayEnv env;

  Env(uint16_t port, uint32_t idle_ms, uint32_t tries = 3, uint64_t splice_after = 0) {
    shm::Writer w(ts.seg);
    w.set_persist(false);
    w.commit([&](shm::Table& t, std::vector<std::string>& ev) {
      shm::UpstreamRecord r{};
      shm::set_name(r.name, "app");
      r.connect_timeout_ms = 1000;
      r.idle_timeout_ms = idle_ms;
      r.max_fails = 1;
      r.fail_timeout_ms = 10000;
      r.tries = tries;
      int u = t.add_upstream(r);
      int p = t.add_pool(u, "p", 0, shm::Method::round_robin);
      core::SockAddr a;
      std::string why;
      REQUIRE(core::parse_address("127.0.0.1:" + std::to_string(port), a, why));
      t.add_host(p, "h", a, 1);
      ev.push_back("init");
    });
    shm::TableReader reader(ts.seg);
    reader.refresh(table);
    snap.build(table);
    bal.rebuild(snap);
    listeners[0].upstream = snap.find_upstream("app");
    live_tag.assign(ts.seg.caps().max_hosts, 0);
    env.timers = &timers;
    env.buffers = &buffers;
    env.pipes = &pipes;
    env.splice_after = splice_after;
    env.seg = &ts.seg;
    env.snap = &snap;
    env.balancer = &bal;
    env.listeners = listeners;
    env.live_tag = live_tag;
    env.now_ms = core::monotonic_ms();
  }
  const shm::HostRecord& host() const { return table.hosts()[0]; }
};

/// The io_uring engine, as the worker drives it.
struct UringEngine {
  static constexpr const char* kName = "io_uring";
  Env& e;
  net::Ring ring{256};
  net::BufRing bufs{256, 4096};  // far more than back-pressure may hold: the ring is not what bounds it
  std::unique_ptr<proxy::UringRelay> relay;
  explicit UringEngine(Env& env) : e(env) {
    REQUIRE(bufs.attach(ring.raw(), 0) == 0);
    relay = std::make_unique<proxy::UringRelay>(e.env, ring, bufs, 64, net::uring_recv_limit_supported());
  }
  void accept(int fd) {
    set_nonblock(fd);  // as the worker's multishot accept makes them
    relay->accept(fd, 0);
  }
  void step(int timeout_ms) {
    relay->flush();
    ring.submit_and_wait(timeout_ms);
    e.env.now_ms = core::monotonic_ms();
    ring.drain([&](const io_uring_cqe& c) {
      if (net::tag_op(c.user_data) >= proxy::uring_op::kRelayFirst) relay->on_completion(c.user_data, c.res, c.flags);
    });
    e.timers.advance(e.env.now_ms, [&](net::TimerNode& n) { relay->on_timer(n); });
  }
  uint32_t active() const { return relay->active(); }
  /// Nothing open, nothing owed by the kernel, every buffer back.
  bool idle() const {
    return relay->active() == 0 && relay->retiring() == 0 && bufs.out() == 0 && e.buffers.in_use() == 0 &&
           e.pipes.in_use() == 0;
  }
  /// Buffers holding bytes the relay has read but not yet written on.
  size_t held() const { return bufs.out() + e.buffers.in_use(); }
  /// Of those, the ones taken from the ring that every session shares.
  size_t shared_held() const { return bufs.out(); }
  // kHighWater (4) buffers, and one more: the receive's byte limit is checked
  // after a buffer is filled. (Without the limit, Linux < 6.17, a burst
  // already in the socket may overrun the cancel: not checked then.)
  static constexpr size_t kMaxHeldPerDirection = 5;
  bool strict() const { return net::uring_recv_limit_supported(); }
};

/// The epoll engine.
struct EpollEngine {
  static constexpr const char* kName = "epoll";
  Env& e;
  net::Epoll ep;
  std::unique_ptr<proxy::TcpRelay> relay;
  explicit EpollEngine(Env& env) : e(env) {
    e.env.epoll = &ep;
    relay = std::make_unique<proxy::TcpRelay>(e.env, 64);
  }
  void accept(int fd) {
    set_nonblock(fd);
    relay->accept(fd, 0, nullptr);
  }
  void step(int timeout_ms) {
    epoll_event ev[64];
    int n = ep.wait(ev, 64, timeout_ms);
    e.env.now_ms = core::monotonic_ms();
    for (int i = 0; i < n; ++i) relay->on_event(ev[i].data.u64, ev[i].events);
    e.timers.advance(e.env.now_ms, [&](net::TimerNode& t) { relay->on_timer(t); });
  }
  uint32_t active() const { return relay->active(); }
  bool idle() const { return relay->active() == 0 && e.buffers.in_use() == 0 && e.pipes.in_use() == 0; }
  size_t held() const { return e.buffers.in_use(); }
  size_t shared_held() const { return 0; }
  static constexpr size_t kMaxHeldPerDirection = 1;
  bool strict() const { return true; }
};

/// Steps the engine until pred() holds (bounded: 5 s).
template <typename E, typename P>
bool step_until(E& eng, P&& pred) {
  const uint64_t end = core::monotonic_ms() + 5000;
  while (!pred()) {
    if (core::monotonic_ms() > end) return false;
    eng.step(1);
  }
  return true;
}

/// Reads what is there (non-blocking) and appends it; returns false on EOF.
bool drain(int fd, std::string& out) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    return n != 0;
  }
}

std::string pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 16);
  }
  return s;
}

template <typename E>
bool stall_then_flow(E& eng, int from, int to, const std::string& data) {
  size_t sent = 0;
  auto push = [&] {
    if (sent == data.size()) return false;
    ssize_t n = ::send(from, data.data() + sent, std::min<size_t>(data.size() - sent, 65536), MSG_DONTWAIT);
    if (n > 0) sent += static_cast<size_t>(n);
    return n > 0;
  };
  size_t peak = 0;
  for (int stalled_steps = 0; sent < data.size() && stalled_steps < 200;) {
    stalled_steps = push() ? 0 : stalled_steps + 1;
    eng.step(0);
    peak = std::max(peak, eng.held());
  }
  INFO(std::string(E::kName) << ": " << sent << " of " << data.size()
                             << " bytes sent before the writer stalled; the relay held " << peak
                             << " buffer(s) at most");
  CHECK(sent < data.size());  // it did stall
  // A stalled direction keeps nothing of the shared buffer ring (io_uring):
  // what waits for the reader has moved to the worker's own buffers, so that
  // stalled peers cannot starve the worker's other sessions.
  CHECK(eng.shared_held() == 0);
  std::string got;
  bool flowed = step_until(eng, [&] {
    push();
    drain(to, got);
    peak = std::max(peak, eng.held());
    return got.size() == data.size();
  });
  CHECK(flowed);
  MESSAGE(std::string(E::kName) << ": at most " << peak << " buffer(s) held");
  if (eng.strict()) CHECK(peak <= E::kMaxHeldPerDirection);
  return flowed && got == data;
}

template <typename E>
void round_trip_back_pressure_half_close(uint64_t splice_after) {
  Upstream up;
  Env env(up.port, 600000, 3, splice_after);
  E eng(env);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  const int client = sv[1];
  set_nonblock(client);
  eng.accept(sv[0]);
  CHECK(env.ts.seg.worker(0).connections.load() == 1);
  int ufd = -1;
  REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
  CHECK(env.ts.seg.counter(0, env.host().slot).active.load() == 1);

  // Bytes both ways.
  REQUIRE(::send(client, "hello", 5, 0) == 5);
  std::string got;
  REQUIRE(step_until(eng, [&] {
    drain(ufd, got);
    return got.size() >= 5;
  }));
  CHECK(got == "hello");
  REQUIRE(::send(ufd, "world", 5, 0) == 5);
  got.clear();
  REQUIRE(step_until(eng, [&] {
    drain(client, got);
    return got.size() >= 5;
  }));
  CHECK(got == "world");

  // Back-pressure, each way: the reader reads nothing and the writer writes
  // until every socket buffer on the way is full. The relay must stop
  // reading, holding no more than a few buffers, instead of taking all it is
  // sent; then the reader reads and everything arrives, in order.
  CHECK(stall_then_flow(eng, client, ufd, pattern(8u << 20, 1)));
  CHECK(stall_then_flow(eng, ufd, client, pattern(8u << 20, 2)));
  // Past splice_after bytes the bursts of both directions went through pipes.
  if (splice_after) CHECK(env.pipes.acquired() >= 2);
  else CHECK(env.pipes.acquired() == 0);

  // Half-close: the client's EOF reaches the upstream, which still answers.
  REQUIRE(::shutdown(client, SHUT_WR) == 0);
  std::string rest;
  REQUIRE(step_until(eng, [&] { return !drain(ufd, rest); }));
  CHECK(rest.empty());
  REQUIRE(::send(ufd, "late reply", 10, 0) == 10);
  ::close(ufd);
  got.clear();
  bool eof = false;
  REQUIRE(step_until(eng, [&] {
    eof = !drain(client, got);
    return eof;
  }));
  CHECK(got == "late reply");

  // Both ways closed: the session ends and gives everything back.
  REQUIRE(step_until(eng, [&] { return eng.idle(); }));
  CHECK(env.ts.seg.worker(0).connections.load() == 0);
  CHECK(env.ts.seg.worker(0).accepted.load() == 1);
  CHECK(env.ts.seg.counter(0, env.host().slot).active.load() == 0);
  CHECK(env.ts.seg.counter(0, env.host().slot).total.load() >= 1);
  ::close(client);
}

template <typename E>
void idle_timeout_closes() {
  Upstream up;
  Env env(up.port, 50);
  E eng(env);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  set_nonblock(sv[1]);
  eng.accept(sv[0]);
  int ufd = -1;
  REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
  const uint64_t t0 = core::monotonic_ms();
  std::string got;
  REQUIRE(step_until(eng, [&] { return !drain(sv[1], got); }));
  CHECK(core::monotonic_ms() - t0 >= 40);
  REQUIRE(step_until(eng, [&] { return eng.idle(); }));
  ::close(ufd);
  ::close(sv[1]);
}

template <typename E>
void refused_connect_fails_the_host() {
  uint16_t dead;
  {
    Upstream gone;  // bound, then closed: nothing listens there
    dead = gone.port;
  }
  Env env(dead, 600000, 1);
  E eng(env);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  set_nonblock(sv[1]);
  eng.accept(sv[0]);
  std::string got;
  REQUIRE(step_until(eng, [&] { return !drain(sv[1], got); }));  // the client is closed
  CHECK(got.empty());
  REQUIRE(step_until(eng, [&] { return eng.idle(); }));
  CHECK(env.ts.seg.host(env.host().slot).failures.load() == 1);
  CHECK(env.ts.seg.worker(0).no_host.load() == 1);
  ::close(sv[1]);
}

/// The open-files limit lowered to the lowest free descriptor number: the
/// next socket() fails with EMFILE. Restored at scope exit.
struct NoFreeFds {
  rlimit saved{};
  NoFreeFds() {
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
    int probe = ::dup(0);
    REQUIRE(probe >= 0);
    ::close(probe);
    rlimit low = saved;
    low.rlim_cur = static_cast<rlim_t>(probe);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  }
  ~NoFreeFds() { restore(); }
  void restore() { ::setrlimit(RLIMIT_NOFILE, &saved); }
};

/// socket() for the upstream meets EMFILE: the client is kept, the worker is
/// told (fd_shortage), no host is blamed, and the connect goes through once a
/// descriptor is free. A wait past connect_timeout_ms closes the client, still
/// blaming no host.
template <typename E>
void upstream_emfile_waits_for_a_descriptor() {
  Upstream up;
  Env env(up.port, 600000);  // connect_timeout_ms 1000
  E eng(env);
  const uint32_t slot = env.host().slot;
  {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    set_nonblock(sv[1]);
    NoFreeFds limit;
    eng.accept(sv[0]);
    CHECK(env.env.fd_shortage == EMFILE);
    env.env.fd_shortage = 0;
    const uint64_t until = core::monotonic_ms() + 300;
    std::string got;
    bool open = true;
    while (core::monotonic_ms() < until && open) {
      eng.step(1);
      open = drain(sv[1], got);
    }
    CHECK(open);  // the client waits
    CHECK(eng.active() == 1);
    CHECK(env.env.fd_shortage == EMFILE);  // said again at each try
    CHECK(up.accept() < 0);
    limit.restore();
    int ufd = -1;
    REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
    REQUIRE(::send(sv[1], "ping", 4, 0) == 4);
    std::string at_up;
    REQUIRE(step_until(eng, [&] {
      drain(ufd, at_up);
      return at_up.size() >= 4;
    }));
    CHECK(at_up == "ping");
    ::close(sv[1]);
    ::close(ufd);
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));
    for (int i = 0; i < 3; ++i) eng.step(1);  // io_uring: the queued closes go out
  }
  {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    set_nonblock(sv[1]);
    NoFreeFds limit;
    const uint64_t start = core::monotonic_ms();
    eng.accept(sv[0]);
    std::string got;
    REQUIRE(step_until(eng, [&] { return !drain(sv[1], got); }));  // closed at last
    const uint64_t waited = core::monotonic_ms() - start;
    CHECK(waited >= 900);  // connect_timeout_ms, on a 100 ms retry grid
    CHECK(waited < 3000);
    CHECK(up.accept() < 0);  // no socket() got through meanwhile
    limit.restore();
    ::close(sv[1]);
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));
  }
  CHECK(env.ts.seg.host(slot).failures.load() == 0);  // the host was never blamed
  CHECK(env.ts.seg.worker(0).no_host.load() == 0);    // nor said to be missing
}

/// After warm-up, new connections and requests through the relay allocate
/// nothing: 1,000 connections with 10 request/response pairs each.
template <typename E>
void no_allocation_per_connection_or_request(uint64_t splice_after) {
  Upstream up;
  Env env(up.port, 600000, 3, splice_after);
  E eng(env);
  char buf[256];
  uint64_t bad = 0;
  auto one_connection = [&](int requests) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ++bad, void();
    set_nonblock(sv[1]);
    eng.accept(sv[0]);
    int ufd = -1;
    if (!step_until(eng, [&] { return (ufd = up.accept()) >= 0; })) return ++bad, void();
    for (int r = 0; r < requests; ++r) {
      if (::send(sv[1], "GET / HTTP/1.1\r\n\r\n", 18, 0) != 18) ++bad;
      size_t n = 0;
      if (!step_until(eng, [&] {
            ssize_t k = ::recv(ufd, buf + n, sizeof(buf) - n, MSG_DONTWAIT);
            if (k > 0) n += static_cast<size_t>(k);
            return n >= 18;
          }))
        ++bad;
      if (::send(ufd, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 38, 0) != 38) ++bad;
      n = 0;
      if (!step_until(eng, [&] {
            ssize_t k = ::recv(sv[1], buf + n, sizeof(buf) - n, MSG_DONTWAIT);
            if (k > 0) n += static_cast<size_t>(k);
            return n >= 38;
          }))
        ++bad;
    }
    ::close(sv[1]);
    ::close(ufd);
    if (!step_until(eng, [&] { return eng.idle(); })) ++bad;
  };
  for (int i = 0; i < 20; ++i) one_connection(10);  // warm-up: slab slots, pool chunks
  const uint64_t before = gw::testing::allocations();
  for (int i = 0; i < 1000; ++i) one_connection(10);
  const uint64_t allocated = gw::testing::allocations() - before;
  INFO(std::string(E::kName));
  CHECK(bad == 0);
  CHECK(allocated == 0);
  CHECK(env.ts.seg.worker(0).accepted.load() == 1020);
  CHECK(env.pipes.acquired() == 0);  // small messages are never spliced, whatever splice_after says
}

}  // namespace

TEST_SUITE("proxy") {
  TEST_CASE("the allocation counter sees operator new (else the zero checks below prove nothing)") {
    const uint64_t before = gw::testing::allocations();
    auto p = std::make_unique<std::vector<int>>(100);
    CHECK(gw::testing::allocations() - before == 2);
  }
  TEST_CASE("relay round trip, back-pressure, half-close and teardown (epoll)") {
    round_trip_back_pressure_half_close<EpollEngine>(0);
  }
  TEST_CASE("relay round trip with splice past 64 KiB (epoll)") {
    round_trip_back_pressure_half_close<EpollEngine>(65536);
  }
  TEST_CASE("relay idle timeout (epoll)") {
    idle_timeout_closes<EpollEngine>();
  }
  TEST_CASE("relay refused connect: passive failure, no host left (epoll)") {
    refused_connect_fails_the_host<EpollEngine>();
  }
  TEST_CASE("relay: upstream socket() at EMFILE waits for a descriptor (epoll)") {
    upstream_emfile_waits_for_a_descriptor<EpollEngine>();
  }
  TEST_CASE("relay allocates nothing per connection or request after warm-up (epoll)") {
    no_allocation_per_connection_or_request<EpollEngine>(0);
    no_allocation_per_connection_or_request<EpollEngine>(16);  // every connection splices after 16 bytes
  }

  TEST_CASE("relay round trip, back-pressure, half-close and teardown (io_uring)") {
    if (std::string why = net::uring_unsupported(); !why.empty()) {
      MESSAGE("io_uring unavailable here, skipped: " << why);
      return;
    }
    round_trip_back_pressure_half_close<UringEngine>(0);
  }
  TEST_CASE("relay round trip with splice past 64 KiB (io_uring)") {
    if (!net::uring_unsupported().empty()) return;
    round_trip_back_pressure_half_close<UringEngine>(65536);
  }
  TEST_CASE("relay idle timeout (io_uring)") {
    if (!net::uring_unsupported().empty()) return;
    idle_timeout_closes<UringEngine>();
  }
  TEST_CASE("relay refused connect: passive failure, no host left (io_uring)") {
    if (!net::uring_unsupported().empty()) return;
    refused_connect_fails_the_host<UringEngine>();
  }
  TEST_CASE("relay: upstream socket() at EMFILE waits for a descriptor (io_uring)") {
    if (!net::uring_unsupported().empty()) return;
    upstream_emfile_waits_for_a_descriptor<UringEngine>();
  }
  TEST_CASE("relay allocates nothing per connection or request after warm-up (io_uring)") {
    if (!net::uring_unsupported().empty()) return;
    no_allocation_per_connection_or_request<UringEngine>(0);
    no_allocation_per_connection_or_request<UringEngine>(16);
  }

  TEST_CASE("io_uring: a sniffed first frame waiting for its connect keeps the later bytes out of the shared ring") {
    // A frame listener in connection mode, the host's connects hang (its
    // accept queue is full, so SYNs are dropped): the client's bytes behind
    // the first frame used to fill ring buffers (4 per session) through the
    // receive armed for sniffing, until the connect timed out; 64 such
    // clients held a worker's whole ring.
    if (!net::uring_unsupported().empty()) return;
    int bh = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(bh, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    REQUIRE(::listen(bh, 0) == 0);
    socklen_t alen = sizeof(a);
    ::getsockname(bh, reinterpret_cast<sockaddr*>(&a), &alen);
    std::vector<int> fillers;
    for (int i = 0; i < 3; ++i) {  // the accept queue (backlog 0: one) full, the rest of the SYNs dropped
      int f = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      ::connect(f, reinterpret_cast<sockaddr*>(&a), sizeof(a));
      fillers.push_back(f);
    }
    ::usleep(100 * 1000);
    Env env(ntohs(a.sin_port), 600000, 1);  // connect_timeout_ms 1000
    proxy::FrameSpec spec;
    spec.header_size = 8;
    spec.length_offset = 4;
    spec.length_size = 4;
    spec.max_body = 4096;
    proxy::Framer framer(spec);
    net::BufferPool frame_pool(0, spec.max_frame() + proxy::kPadding);
    env.listeners[0].framer = &framer;
    env.listeners[0].first_frame_timeout_ms = 10000;
    env.listeners[0].frame_buffers = &frame_pool;
    env.listeners[0].max_frame_buffers = 4;
    UringEngine eng(env);
    const std::string body = "{\"devid\":\"d1\"}";
    std::string frame(8, '\0');
    frame[0] = 1;
    frame[7] = static_cast<char>(body.size());
    frame += body;
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    set_nonblock(sv[1]);
    eng.accept(sv[0]);
    const std::string first = frame + pattern(1000, 5);  // the frame and more, in one receive
    REQUIRE(::send(sv[1], first.data(), first.size(), 0) == static_cast<ssize_t>(first.size()));
    for (int i = 0; i < 20; ++i) eng.step(1);
    size_t sent = first.size();
    const std::string more = pattern(64u << 10, 6);  // then 16 ring buffers' worth
    for (size_t off = 0; off < more.size();) {
      const ssize_t n = ::send(sv[1], more.data() + off, more.size() - off, MSG_DONTWAIT);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
      sent += static_cast<size_t>(n);
    }
    for (int i = 0; i < 100; ++i) eng.step(1);
    INFO(sent << " bytes sent by the client");
    REQUIRE(eng.active() == 1);  // still connecting (the connect times out after 1 s)
    CHECK(eng.shared_held() == 0);
    ::close(sv[1]);
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));  // the connect times out; everything back
    for (int f : fillers) ::close(f);
    ::close(bh);
  }

  TEST_CASE("io_uring: a blocked sniffed first frame keeps the later bytes out of the shared ring") {
    // A frame listener in connection mode: the first frame waits in a frame
    // buffer (`extra`) and blocks at a host that does not read. What the
    // client sends after it used to sit in ring buffers (4 per session).
    if (!net::uring_unsupported().empty()) return;
    Upstream up(4096);
    Env env(up.port, 600000);
    proxy::FrameSpec spec;
    spec.header_size = 8;
    spec.length_offset = 4;
    spec.length_size = 4;
    spec.max_body = 16u << 20;
    proxy::Framer framer(spec);
    net::BufferPool frame_pool(0, spec.max_frame() + proxy::kPadding);
    env.listeners[0].framer = &framer;
    env.listeners[0].first_frame_timeout_ms = 10000;
    env.listeners[0].frame_buffers = &frame_pool;
    env.listeners[0].max_frame_buffers = 4;
    UringEngine eng(env);
    const std::string body = "{\"devid\":\"d1\",\"pad\":\"" + std::string(8u << 20, 'x') + "\"}";
    std::string frame(8, '\0');
    frame[0] = 1;
    const auto bl = static_cast<uint32_t>(body.size());
    for (int i = 0; i < 4; ++i) frame[4 + i] = static_cast<char>(bl >> (24 - 8 * i));
    frame += body;
    const std::string data = frame + pattern(16u << 20, 3);
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    set_nonblock(sv[1]);
    eng.accept(sv[0]);
    size_t sent = 0;
    auto push = [&](size_t upto) {
      if (sent >= upto) return false;
      const ssize_t n = ::send(sv[1], data.data() + sent, std::min<size_t>(upto - sent, 65536), MSG_DONTWAIT);
      if (n > 0) sent += static_cast<size_t>(n);
      return n > 0;
    };
    int ufd = -1;
    REQUIRE(step_until(eng, [&] {
      push(frame.size());
      if (ufd < 0) ufd = up.accept();
      return ufd >= 0;
    }));
    for (int stalled = 0; sent < data.size() && stalled < 200;) {  // until every buffer on the way is full
      stalled = push(data.size()) ? 0 : stalled + 1;
      eng.step(0);
    }
    for (int i = 0; i < 50; ++i) eng.step(1);
    CHECK(sent < data.size());  // it did stall
    CHECK(eng.shared_held() == 0);
    // Then everything flows, in order.
    std::string got;
    REQUIRE(step_until(eng, [&] {
      push(data.size());
      drain(ufd, got);
      return got.size() >= data.size();
    }));
    CHECK(got == data);
    ::close(sv[1]);
    ::close(ufd);
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));
  }
}

namespace {

/// A connected loopback TCP pair (a socketpair cannot send a reset): the
/// client's end and the end the relay is given.
struct TcpClient {
  int client = -1;
  int served = -1;
  explicit TcpClient(int rcvbuf = 0) {
    Upstream front;
    client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf) ::setsockopt(client, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));  // before the handshake
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(front.port);
    REQUIRE(::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
    for (int i = 0; i < 1000 && served < 0; ++i) {
      served = front.accept();
      if (served < 0) ::usleep(1000);
    }
    REQUIRE(served >= 0);
  }
  /// FIN, then a reset (SO_LINGER 0), back to back.
  void fin_then_reset() {
    REQUIRE(::shutdown(client, SHUT_WR) == 0);
    linger lg{1, 0};
    REQUIRE(::setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
    ::close(client);
    client = -1;
  }
  /// A reset alone (SO_LINGER 0), no FIN.
  void reset() {
    linger lg{1, 0};
    REQUIRE(::setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
    ::close(client);
    client = -1;
  }
  ~TcpClient() {
    if (client >= 0) ::close(client);
  }
};

/// This process's socket connected to `fd` (the other end of a loopback
/// connection), or -1.
int peer_fd(int fd) {
  sockaddr_in peer{};
  socklen_t len = sizeof(peer);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) return -1;
  for (int i = 3; i < 4096; ++i) {
    sockaddr_in self{};
    len = sizeof(self);
    if (i == fd || ::getsockname(i, reinterpret_cast<sockaddr*>(&self), &len) != 0 || self.sin_family != AF_INET)
      continue;
    if (self.sin_port == peer.sin_port && self.sin_addr.s_addr == peer.sin_addr.s_addr) return i;
  }
  return -1;
}

}  // namespace

TEST_SUITE("proxy") {
  TEST_CASE(
      "io_uring: a client's reset that the watch reports while a receive is armed, then read as EOF, ends "
      "the session") {
    // The client's error watch defers to an armed receive, which reports a
    // reset after the bytes before it. But a receive that was armed and not
    // yet submitted when the watch fired finds the FIN first (a socket that
    // has had a FIN reads 0 even with the reset's error pending), and the
    // reset used to be lost: a silent host kept the session until
    // idle_timeout_ms. The order is forced: the client's 16 KiB end a
    // receive at its byte limit (Linux >= 6.17), and are sent on one buffer
    // per step; the client's FIN and reset come after k of those steps, and
    // for some k the send completion that re-arms the receive is in the
    // same batch as the watch's completion. Every k must end the session,
    // and the host, which reads, must get all the client sent before its
    // FIN: 64 KiB too, where the receive stops at its byte limit with more
    // before the reset (that case was once cut short, at 4 KiB per step).
    //
    // The test also checks that its order happened: for some k the EOF
    // found the noted reset (the relay counts that path). Without the
    // receive's byte limit the order cannot be forced, and that is not
    // checked.
    if (!net::uring_unsupported().empty()) return;
    for (size_t size : {size_t{4 * 4096}, size_t{64 * 1024}}) {
      int forced = 0;
      for (int k = 0; k < 6; ++k) {
        CAPTURE(size);
        CAPTURE(k);
        Upstream up;
        Env env(up.port, 600000);
        UringEngine eng(env);
        TcpClient c;
        eng.accept(c.served);
        int ufd = -1;
        REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
        for (int i = 0; i < 20; ++i) eng.step(1);  // the client's receive and watch armed
        const std::string data = pattern(size, 9);
        REQUIRE(::send(c.client, data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()));
        eng.step(100);  // the receive brings it in; the first send is prepared
        for (int i = 0; i < k; ++i) eng.step(100);
        c.fin_then_reset();
        std::string got;
        const bool ended = step_until(eng, [&] {
          drain(ufd, got);
          return eng.active() == 0;
        });
        CHECK(ended);
        drain(ufd, got);
        CHECK(got.size() == data.size());
        CHECK(got == data);
        forced += eng.relay->reset_paths().at_eof > 0;
        REQUIRE(step_until(eng, [&] { return eng.idle(); }));
        ::close(ufd);
      }
      CAPTURE(size);
      MESSAGE("the EOF found the noted reset for " << forced << " of 6 values of k");
      if (net::uring_recv_limit_supported()) CHECK(forced > 0);
    }
  }
}

TEST_SUITE("proxy") {
  TEST_CASE(
      "io_uring: a client's reset that the watch reports while a receive is armed, which stops at its byte "
      "limit before the reset with the host not reading, ends the session") {
    // The watch notes the reset (c_reset) and leaves it to the armed
    // receive. But that receive may end at its byte limit with more of the
    // client's bytes before the reset, and with a host that does not read,
    // the FIFO never drains to re-arm it: the reset went unread and the
    // session stayed until idle_timeout_ms. The order is forced as in the
    // test above: the reset comes after k steps (one send each), and for
    // the k whose send re-arms the receive, the watch's completion is in the
    // same batch; the client sent far more than the host takes.
    // It also checks that the noted reset ended the session, with no read
    // armed (the relay counts that path), and not a receive reporting it.
    if (!net::uring_unsupported().empty() || !net::uring_recv_limit_supported()) return;
    int stuck = 0;
    int forced = 0;
    for (int sndbuf : {6144, 8192, 10240})
      for (int k = 0; k < 8; ++k) {
        CAPTURE(sndbuf);
        CAPTURE(k);
        Upstream up(4096);  // takes a few KiB, then nothing: it never reads
        Env env(up.port, 600000);
        UringEngine eng(env);
        TcpClient c;
        eng.accept(c.served);
        int ufd = -1;
        REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
        // The relay's end of that connection is in this process: a small send
        // buffer (no autotuning) keeps what the host's side absorbs to a few
        // KiB (the stuck case needs it to take the sends that re-arm the
        // receive, not those that would re-arm it again: a few sizes).
        const int relay_ufd = peer_fd(ufd);
        REQUIRE(relay_ufd >= 0);
        REQUIRE(::setsockopt(relay_ufd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == 0);
        for (int i = 0; i < 20; ++i) eng.step(1);  // the client's receive and watch armed
        const std::string data = pattern(512 * 1024, 5);
        const ssize_t sent = ::send(c.client, data.data(), data.size(), MSG_DONTWAIT);
        REQUIRE(sent >= 128 * 1024);
        for (int i = 0; i <= k; ++i) eng.step(5);
        c.reset();
        const bool ended = step_until(eng, [&] { return eng.active() == 0; });
        CHECK(ended);
        if (!ended) {
          ++stuck;
          eng.relay->close_all();
        }
        forced += eng.relay->reset_paths().unread > 0;
        REQUIRE(step_until(eng, [&] { return eng.idle(); }));
        ::close(ufd);
      }
    CHECK(stuck == 0);
    MESSAGE("the noted reset ended the session unread in " << forced << " of 24 cases");
    CHECK(forced > 0);
  }
}

TEST_SUITE("proxy") {
  TEST_CASE(
      "io_uring: a client's reset that a send to it consumes before the watch sees it ends the session while the "
      "client is not read") {
    // The host never reads, so the client's receive is paused
    // (back-pressure), and the host's answer is on its way to the client,
    // its send prepared and not yet submitted, when the client resets. That
    // send runs first at the next submission and fails, taking the reset's
    // error (sock_error), and the watch then sees POLLHUP without POLLERR:
    // the failed write only dropped what was for the client, no read came,
    // and the session stayed until idle_timeout_ms.
    if (!net::uring_unsupported().empty()) return;
    Upstream up(4096);  // takes a few KiB, then nothing: it never reads
    Env env(up.port, 600000);
    UringEngine eng(env);
    TcpClient c;
    eng.accept(c.served);
    int ufd = -1;
    REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
    const int relay_ufd = peer_fd(ufd);
    REQUIRE(relay_ufd >= 0);
    const int sndbuf = 8192;
    REQUIRE(::setsockopt(relay_ufd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == 0);
    for (int i = 0; i < 20; ++i) eng.step(1);
    const std::string data = pattern(512 * 1024, 6);
    REQUIRE(::send(c.client, data.data(), data.size(), MSG_DONTWAIT) >= 128 * 1024);
    for (int i = 0; i < 40; ++i) eng.step(1);  // the host's side is full: the client's receive is paused
    REQUIRE(eng.held() > 0);
    REQUIRE(::send(ufd, "answer", 6, 0) == 6);
    eng.step(100);  // the host's bytes come in; their send to the client is prepared, not submitted
    c.reset();
    CHECK(step_until(eng, [&] { return eng.active() == 0; }));
    eng.relay->close_all();  // when it failed
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));
    ::close(ufd);
  }
}

TEST_SUITE("proxy") {
  TEST_CASE("io_uring: a gone client's session ends at idle_timeout_ms while the host streams and never acks") {
    // The client is gone both ways (its FIN, then its reset), the host has
    // not acknowledged what it was sent (it does not read), and it streams:
    // each of its reads, dropped, looked again (end_if_client_gone) and
    // moved the 50 ms check 50 ms on, so the timer never came round to
    // gone_until_ms and the session never ended.
    if (!net::uring_unsupported().empty()) return;
    Upstream up(4096);  // never reads: the relay's sends stay unacknowledged
    Env env(up.port, 300);
    UringEngine eng(env);
    TcpClient c;
    eng.accept(c.served);
    int ufd = -1;
    REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
    for (int i = 0; i < 20; ++i) eng.step(1);
    const std::string data = pattern(64 * 1024, 7);
    REQUIRE(::send(c.client, data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()));
    for (int i = 0; i < 40; ++i) eng.step(1);  // all of it in the relay's socket to the host
    c.fin_then_reset();
    const uint64_t start = core::monotonic_ms();
    const char chunk[256] = {};
    while (eng.active() != 0 && core::monotonic_ms() < start + 3000) {
      ::send(ufd, chunk, sizeof(chunk), MSG_DONTWAIT);  // the host streams without end
      eng.step(5);
    }
    CHECK(eng.active() == 0);
    eng.relay->close_all();  // when it failed
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));
    ::close(ufd);
  }
}

TEST_SUITE("proxy") {
  TEST_CASE(
      "epoll: a client's reset that a send to it consumes before epoll reports it ends the session while the client "
      "is not read") {
    // The epoll twin of the test above. The host never reads, so the client
    // is not read (back-pressure). The host answers; epoll reports that, and
    // the client resets before the relay acts on it: the relay's send to
    // the client then fails and takes the reset's error (sock_error), and the
    // client's next report is EPOLLHUP without EPOLLERR. The failed write
    // only dropped what was for the client, no read was made, and the
    // session stayed until idle_timeout_ms.
    Upstream up(4096);  // takes a few KiB, then nothing: it never reads
    Env env(up.port, 600000);
    EpollEngine eng(env);
    TcpClient c;
    eng.accept(c.served);
    int ufd = -1;
    REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
    const int relay_ufd = peer_fd(ufd);
    REQUIRE(relay_ufd >= 0);
    const int sndbuf = 8192;
    REQUIRE(::setsockopt(relay_ufd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == 0);
    for (int i = 0; i < 20; ++i) eng.step(1);
    const std::string data = pattern(512 * 1024, 8);
    REQUIRE(::send(c.client, data.data(), data.size(), MSG_DONTWAIT) >= 128 * 1024);
    for (int i = 0; i < 40; ++i) eng.step(1);  // the host's side is full: the client is not read
    REQUIRE(eng.held() > 0);
    REQUIRE(::send(ufd, "answer", 6, 0) == 6);
    // One step by hand: epoll reports the host's answer, then the client
    // resets, then the relay acts on the report.
    epoll_event ev[64];
    int n = 0;
    for (int i = 0; i < 100 && n == 0; ++i) n = eng.ep.wait(ev, 64, 10);
    REQUIRE(n > 0);
    c.reset();
    env.env.now_ms = core::monotonic_ms();
    for (int i = 0; i < n; ++i) eng.relay->on_event(ev[i].data.u64, ev[i].events);
    CHECK(step_until(eng, [&] { return eng.active() == 0; }));
    eng.relay->close_all();  // when it failed
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));
    ::close(ufd);
  }
}

TEST_SUITE("proxy") {
  TEST_CASE("io_uring: a gone host's session ends at idle_timeout_ms while the client streams and never acks") {
    // The host is gone both ways (it sent its answer, all passed on with
    // the FIN, then reset), the client has not acknowledged all of it (its
    // receive window is full: it does not read), and it keeps sending: each
    // of its reads, dropped, looked again (end_if_upstream_gone) and moved
    // the 50 ms check 50 ms on, so the check never came round to
    // gone_until_ms and the session never ended.
    if (!net::uring_unsupported().empty()) return;
    Upstream up;
    Env env(up.port, 300);
    UringEngine eng(env);
    TcpClient c(4096);  // a small window: most of the answer stays unacknowledged
    set_nonblock(c.client);
    eng.accept(c.served);
    int ufd = -1;
    REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
    for (int i = 0; i < 20; ++i) eng.step(1);
    const std::string answer = pattern(64 * 1024, 10);
    REQUIRE(::send(ufd, answer.data(), answer.size(), 0) == static_cast<ssize_t>(answer.size()));
    for (int i = 0; i < 50; ++i) eng.step(1);  // passed on, into the relay's socket to the client
    linger lg{1, 0};
    REQUIRE(::setsockopt(ufd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0);
    ::close(ufd);  // the host's reset
    const uint64_t t0 = core::monotonic_ms();
    bool ended = false;
    while (core::monotonic_ms() - t0 < 3000 && !(ended = eng.active() == 0)) {
      ::send(c.client, "x", 1, MSG_DONTWAIT);  // more often than every 50 ms
      for (int i = 0; i < 10; ++i) eng.step(1);
    }
    CHECK(ended);
    MESSAGE("ended after " << core::monotonic_ms() - t0 << " ms (idle_timeout_ms 300)");
    if (!ended) eng.relay->close_all();
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));
  }
}

TEST_SUITE("proxy") {
  TEST_CASE("io_uring: a send that fails after both EOFs were read ends the session") {
    // The client's FIN has been passed on, and the host answers and closes:
    // its answer and its EOF come in together, the answer's send to the
    // client is prepared (not yet submitted), and the client resets. That
    // send runs first at the next submission and fails, taking the reset's
    // error (the watch sees no POLLERR). Both directions have read their EOF
    // and have nowhere to write: the session is done. The failed send only
    // dropped what was for the client and never looked at the EOF that had
    // come meanwhile (finish_dir), so the session stayed until
    // idle_timeout_ms.
    if (!net::uring_unsupported().empty()) return;
    Upstream up;
    Env env(up.port, 600000);
    UringEngine eng(env);
    TcpClient c;
    eng.accept(c.served);
    int ufd = -1;
    REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
    REQUIRE(::shutdown(c.client, SHUT_WR) == 0);
    char b[16];
    REQUIRE(step_until(eng, [&] { return ::recv(ufd, b, sizeof(b), MSG_DONTWAIT) == 0; }));  // the FIN passed on
    REQUIRE(::send(ufd, "answer", 6, 0) == 6);
    REQUIRE(::shutdown(ufd, SHUT_WR) == 0);
    eng.step(100);  // the answer and the EOF come in; the answer's send is prepared, not submitted
    c.reset();
    CHECK(step_until(eng, [&] { return eng.active() == 0; }));
    eng.relay->close_all();  // when it failed
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));
    ::close(ufd);
  }
  TEST_CASE(
      "io_uring: a close cancels every request its session has in flight; both peers see it and the slot retires") {
    // The close cancels each request by its tag (the session's live bits):
    // one left out would hold its socket open, the peer would see no close,
    // and the slot would wait for that peer. Here the session has, on the
    // client, its receive and its reset watch, and on the host its receive
    // and a POLLOUT (the host reads nothing, so the client's bytes wait).
    if (!net::uring_unsupported().empty()) return;
    Upstream up(4096);
    Env env(up.port, 600000);
    UringEngine eng(env);
    TcpClient c;
    set_nonblock(c.client);
    eng.accept(c.served);
    int ufd = -1;
    REQUIRE(step_until(eng, [&] { return (ufd = up.accept()) >= 0; }));
    // The client writes until the host's socket is full and the relay waits
    // for it to take more (the client's socket fills behind it).
    const std::string chunk(65536, 'x');
    for (int stalled = 0; stalled < 50;) {
      stalled = ::send(c.client, chunk.data(), chunk.size(), MSG_DONTWAIT) > 0 ? 0 : stalled + 1;
      eng.step(0);
    }
    CHECK(eng.active() == 1);
    eng.relay->close_all();
    CHECK(eng.relay->retiring() == 1);  // its requests are being cancelled
    REQUIRE(step_until(eng, [&] { return eng.idle(); }));
    // Both sockets are closed: each peer reads what was left for it, then
    // the EOF or the reset (bytes gw had not read are discarded by a reset).
    auto closed = [](int fd) {
      char b[65536];
      for (int i = 0; i < 100000; ++i) {
        const ssize_t n = ::recv(fd, b, sizeof(b), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return true;
        if (n < 0) ::usleep(1000);
      }
      return false;
    };
    CHECK(closed(ufd));
    CHECK(closed(c.client));
    ::close(ufd);
  }
}

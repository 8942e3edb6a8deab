// The reactor under ThreadSanitizer: an L4 relay (epoll TcpRelay, then the
// io_uring UringRelay) runs its event loop in one thread, as a worker does,
// while other threads do what other processes do to the same shm segment:
//  - a gwctl-like writer takes hosts down and up, adds and removes one, and
//    changes a pool's method (shm::ops, the code gwctl and the admin API run);
//  - a status reader renders `gwctl status --json` (admin::status_json: the
//    table, every per-host counter the relay updates, the worker rows);
//  - an events follower reads the event ring that the writer and the relay
//    (passive health: a refused host) both append to;
//  - clients connect through the relay to echo backends and check every byte.
// TSan (halt_on_error) must see no race; every round trip must succeed.
//
// Processes share the segment in production; threads stand in for them here
// because TSan sees only one process. What each thread touches is what its
// process would: the relay thread owns its Table copy, snapshot, balancer
// and buffers, as a worker does.

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../unit/test_util.hpp"
#include "gw/admin/status.hpp"
#include "gw/balance/balancer.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/core/clock.hpp"
#include "gw/net/buffer_pool.hpp"
#include "gw/net/pipe_pool.hpp"
#include "gw/net/reactor.hpp"
#include "gw/net/uring.hpp"
#include "gw/proxy/tcp_relay.hpp"
#include "gw/proxy/uring_relay.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/ops.hpp"
#include "gw/shm/writer.hpp"

using namespace gw;
using namespace std::chrono_literals;

namespace {

constexpr auto kRun = 3s;  // per engine; TSan slows every shm word ~10x

int listen_loopback(uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  REQUIRE(::listen(fd, 256) == 0);
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

int connect_loopback(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  timeval tv{5, 0};  // a relay that lost a connection fails the test, not hangs it
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// A blocking echo server: one thread accepts, one thread per connection.
struct EchoBackend {
  int lfd = -1;
  uint16_t port = 0;
  std::thread acceptor;
  std::vector<std::thread> conns;
  EchoBackend() {
    lfd = listen_loopback(port);
    acceptor = std::thread([this] {
      for (;;) {
        int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return;  // shut down
        conns.emplace_back([c] {
          char buf[4096];
          ssize_t n;
          while ((n = ::recv(c, buf, sizeof(buf), 0)) > 0)
            if (::send(c, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) break;
          ::close(c);
        });
      }
    });
  }
  ~EchoBackend() {
    ::shutdown(lfd, SHUT_RDWR);
    acceptor.join();
    for (auto& t : conns) t.join();
    ::close(lfd);
  }
};

std::string addr(uint16_t port) {
  return "127.0.0.1:" + std::to_string(port);
}

/// The worker's side: its table copy, snapshot, balancer, buffers and a
/// RelayEnv over them, refreshed when the generation moves (Worker::refresh).
struct WorkerSide {
  const shm::Segment& seg;
  shm::TableReader reader{seg};
  shm::Table table{seg.caps()};
  balance::Snapshot snap;
  balance::Balancer bal{seg.caps().max_hosts, 11};
  net::TimerWheel timers{core::monotonic_ms()};
  net::BufferPool buffers;
  net::PipePool pipes{8};
  std::vector<proxy::ListenerRuntime> listeners = std::vector<proxy::ListenerRuntime>(1);
  std::vector<uint32_t> live_tag;
  proxy::RelayEnv env;
  uint64_t refreshes = 0;

  explicit WorkerSide(const shm::Segment& s) : seg(s), live_tag(s.caps().max_hosts, 0) {
    env.timers = &timers;
    env.buffers = &buffers;
    env.pipes = &pipes;
    env.seg = &seg;
    env.snap = &snap;
    env.balancer = &bal;
    env.listeners = listeners;
    env.live_tag = live_tag;
    env.now_ms = core::monotonic_ms();
    refresh();
  }
  void refresh() {
    const uint64_t gen = reader.refresh(table);
    snap.build(table);
    bal.rebuild(snap);
    listeners[0].upstream = snap.find_upstream("app");
    std::fill(live_tag.begin(), live_tag.end(), 0u);
    for (const auto& h : table.hosts())
      if (!h.admin_down && h.slot < live_tag.size()) live_tag[h.slot] = h.tag;
    env.table_changed = true;
    seg.worker(0).generation.store(gen, std::memory_order_release);
    ++refreshes;
  }
  /// One acquire load per new connection, as the worker does.
  void maybe_refresh() {
    if (reader.stale()) refresh();
  }
};

struct EpollLoop {
  static constexpr const char* kName = "epoll";
  WorkerSide& w;
  net::Epoll ep;
  std::unique_ptr<proxy::TcpRelay> relay;
  explicit EpollLoop(WorkerSide& ws) : w(ws) {
    w.env.epoll = &ep;
    relay = std::make_unique<proxy::TcpRelay>(w.env, 256);
  }
  void accept(int fd) { relay->accept(fd, 0, nullptr); }
  void step() {
    epoll_event ev[64];
    int n = ep.wait(ev, 64, 1);
    w.env.now_ms = core::monotonic_ms();
    for (int i = 0; i < n; ++i) relay->on_event(ev[i].data.u64, ev[i].events);
    w.timers.advance(w.env.now_ms, [&](net::TimerNode& t) { relay->on_timer(t); });
  }
  void close_all() { relay->close_all(); }
  bool idle() const { return relay->active() == 0; }
};

struct UringLoop {
  static constexpr const char* kName = "io_uring";
  WorkerSide& w;
  net::Ring ring{256};
  net::BufRing bufs{256, 4096};
  std::unique_ptr<proxy::UringRelay> relay;
  explicit UringLoop(WorkerSide& ws) : w(ws) {
    REQUIRE(bufs.attach(ring.raw(), 0) == 0);
    relay = std::make_unique<proxy::UringRelay>(w.env, ring, bufs, 256, net::uring_recv_limit_supported());
  }
  void accept(int fd) { relay->accept(fd, 0); }
  void step() {
    relay->flush();
    ring.submit_and_wait(1);
    w.env.now_ms = core::monotonic_ms();
    ring.drain([&](const io_uring_cqe& c) {
      if (net::tag_op(c.user_data) >= proxy::uring_op::kRelayFirst) relay->on_completion(c.user_data, c.res, c.flags);
    });
    w.timers.advance(w.env.now_ms, [&](net::TimerNode& n) { relay->on_timer(n); });
  }
  void close_all() {
    relay->close_all();
    ring.submit();
  }
  bool idle() const { return relay->active() == 0 && relay->retiring() == 0; }
};

template <typename Loop>
void run_engine() {
  gw::testing::TempSegment ts({2, 4, 16, 1, 1, 1, 1, 8});  // small: TSan slows every word copied
  EchoBackend b1, b2, b3;
  uint16_t refused_port = 0;
  {
    int l = listen_loopback(refused_port);  // a port nothing listens on once closed
    ::close(l);
  }
  {
    shm::Writer wr(ts.seg);
    wr.set_persist(false);
    wr.commit([&](shm::Table& t, std::vector<std::string>& ev) {
      shm::UpstreamRecord r{};
      shm::set_name(r.name, "app");
      r.connect_timeout_ms = 1000;
      r.idle_timeout_ms = 60000;
      r.max_fails = 1;
      r.fail_timeout_ms = 50;  // the refused host comes back quickly and fails again
      r.tries = 4;
      int u = t.add_upstream(r);
      int p = t.add_pool(u, "p", 0, shm::Method::round_robin);
      for (auto [id, port] : {std::pair{"h1", b1.port}, {"h2", b2.port}, {"dead", refused_port}}) {
        core::SockAddr a;
        std::string why;
        REQUIRE(core::parse_address(addr(port), a, why));
        t.add_host(p, id, a, 1);
      }
      ev.push_back("init");
    });
  }

  WorkerSide ws(ts.seg);
  uint16_t gw_port = 0;
  const int lfd = listen_loopback(gw_port);
  std::atomic<bool> stop{false}, clients_done{false};
  std::atomic<uint64_t> trips{0}, failures{0}, writes{0}, statuses{0}, events{0};

  // The worker: accept and relay until the clients are done and all is closed.
  std::thread reactor([&] {
    Loop loop(ws);
    ::fcntl(lfd, F_SETFL, O_NONBLOCK);
    while (!(clients_done.load() && loop.idle())) {
      for (;;) {
        int fd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        ws.maybe_refresh();
        loop.accept(fd);
      }
      loop.step();
      if (ws.reader.stale()) ws.refresh();  // housekeeping, as the worker's tick
    }
    loop.close_all();
  });

  // gwctl: down/up h2, add/remove h3, flip the pool's method. h1 stays up.
  std::thread writer([&] {
    core::SockAddr a3;
    std::string why;
    REQUIRE(core::parse_address(addr(b3.port), a3, why));
    for (uint64_t i = 0; !stop.load(); ++i) {
      try {
        switch (i % 6) {
          case 0: shm::ops::set_host_down(ts.seg, "app", "p", "h2", true, "(stress)"); break;
          case 1: shm::ops::add_host(ts.seg, "app", "p", "h3", a3, 2); break;
          case 2: shm::ops::set_host_down(ts.seg, "app", "p", "h2", false, "(stress)"); break;
          case 3: shm::ops::set_pool(ts.seg, "app", "p", std::nullopt, shm::Method::least_conn); break;
          case 4: shm::ops::remove_host(ts.seg, "app", "p", "h3"); break;
          default: shm::ops::set_pool(ts.seg, "app", "p", std::nullopt, shm::Method::round_robin); break;
        }
        writes.fetch_add(1);
      } catch (const std::exception& e) {
        FAIL("gwctl-like change failed: " << e.what());
      }
      std::this_thread::sleep_for(2ms);
    }
  });

  // gwctl status --json, and gwctl events --follow.
  std::thread status([&] {
    while (!stop.load()) {
      std::string j = admin::status_json(ts.seg);
      if (j.find("\"upstreams\"") == std::string::npos) failures.fetch_add(1);
      statuses.fetch_add(1);
    }
  });
  std::thread follower([&] {
    uint64_t next = 0;
    shm::EventData e{};
    while (!stop.load()) {
      shm::EventRead r = shm::read_event(ts.seg, next, e);
      if (r == shm::EventRead::ok) {
        events.fetch_add(1);
        ++next;
      } else if (r == shm::EventRead::lost) {
        ++next;  // lapped: skip ahead, as `gwctl events --follow` reports
      } else {
        std::this_thread::sleep_for(100us);
      }
    }
  });

  // Clients: short connections, a few bytes each way, every byte checked.
  std::vector<std::thread> clients;
  for (int c = 0; c < 3; ++c)
    clients.emplace_back([&, c] {
      const auto end = std::chrono::steady_clock::now() + kRun;
      for (uint64_t i = 0; std::chrono::steady_clock::now() < end; ++i) {
        int fd = connect_loopback(gw_port);
        if (fd < 0) {
          failures.fetch_add(1);
          continue;
        }
        const std::string msg = "client " + std::to_string(c) + " trip " + std::to_string(i) + "\n";
        std::string got;
        if (::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(msg.size())) {
          char buf[256];
          while (got.size() < msg.size()) {
            ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
            if (n <= 0) break;
            got.append(buf, static_cast<size_t>(n));
          }
        }
        ::close(fd);
        if (got == msg) trips.fetch_add(1);
        else failures.fetch_add(1);
      }
    });
  for (auto& t : clients) t.join();
  clients_done.store(true);
  reactor.join();
  stop.store(true);
  writer.join();
  status.join();
  follower.join();
  ::close(lfd);

  MESSAGE(std::string(Loop::kName) << ": " << trips.load() << " round trips, " << writes.load() << " table changes, "
                                   << ws.refreshes << " refreshes, " << statuses.load() << " status renders, "
                                   << events.load() << " events read");
  CHECK(failures.load() == 0);
  CHECK(trips.load() > 50);
  CHECK(writes.load() > 20);
  CHECK(ws.refreshes > 10);
  CHECK(statuses.load() > 5);
  CHECK(events.load() > 10);
}

}  // namespace

TEST_CASE("epoll relay, gwctl writer, status and events readers: no race") {
  run_engine<EpollLoop>();
}

TEST_CASE("io_uring relay, gwctl writer, status and events readers: no race") {
  if (std::string why = net::uring_unsupported(); !why.empty()) {
    MESSAGE("io_uring engine not supported here, skipped: " << why);
    return;
  }
  run_engine<UringLoop>();
}

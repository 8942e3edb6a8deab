#pragma once
// The HTTP proxy inside one process, driven as the worker drives it (epoll):
// a loopback upstream listener on port 0 served by hand by the test, and a
// gateway built from a config with one http listener and upstream "app" with
// one host on that listener. Clients are socketpair ends given to accept().
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/balance/balancer.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/config/config.hpp"
#include "gw/core/clock.hpp"
#include "gw/net/buffer_pool.hpp"
#include "gw/net/reactor.hpp"
#include "gw/net/uring.hpp"
#include "gw/proxy/http_io.hpp"
#include "gw/proxy/http_proxy.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/writer.hpp"

namespace gw::testing::proxy_harness {

using gw::testing::TempSegment;

inline void set_nonblock(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

struct Upstream {
  int lfd = -1;
  uint16_t port = 0;
  Upstream() {
    lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
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
};

/// The gateway side: config, table, snapshot, balancer, and the HttpProxy.
struct Gateway {
  config::Config cfg;
  TempSegment ts{shm::Caps{4, 8, 16, 8, 8, 16, 8, 64}};
  shm::Table table{ts.seg.caps()};
  balance::Snapshot snap;
  balance::Balancer bal{ts.seg.caps().max_hosts, 7};
  net::TimerWheel timers{core::monotonic_ms()};
  net::BufferPool buffers;
  net::PipePool pipes{0};
  net::Epoll ep;
  std::vector<proxy::ListenerRuntime> listeners = std::vector<proxy::ListenerRuntime>(1);
  std::vector<uint32_t> live_tag;
  proxy::RelayEnv env;
  // io_uring (uring = true): the proxy's sockets through HttpIo, as a worker
  // runs them under event_engine io_uring.
  std::unique_ptr<net::Ring> ring;
  std::unique_ptr<net::BufRing> bufring;
  std::unique_ptr<proxy::HttpIo> io;
  std::unique_ptr<proxy::HttpProxy> http;

  /// With `backup_port`, a second host "b" in a pool of lower priority
  /// (tried only once "h" has been); `upstream_extra` adds fields to the
  /// upstream ("\"retry\": {...}, ").
  /// `max_buffers` bounds the worker's buffer pool (0: unbounded, as gwd's).
  /// `uring`: the io_uring engine (the caller checks net::uring_unsupported());
  /// `io_slots`: its HttpIo's sockets (the worker gives 4 per connection slot).
  explicit Gateway(uint16_t port, uint16_t backup_port = 0, const std::string& upstream_extra = "",
                   size_t max_buffers = 0, bool uring = false, uint32_t io_slots = 4 * 2048)
      : buffers(max_buffers) {
    const std::string backup = backup_port == 0
                                   ? std::string()
                                   : R"(, {"id": "q", "priority": 1, "hosts": [{"id": "b", "address": "127.0.0.1:)" +
                                         std::to_string(backup_port) + R"("}]})";
    auto r = config::load_string(R"({"workers": 1, "shm": {"name": "alloc"},
      "listeners": [{"name": "web", "listen": "127.0.0.1:1", "protocol": "http", "upstream": "app",
                     "http": {"keepalive_requests": 100000}}],
      "upstreams": [{"name": "app", )" +
                                 upstream_extra +
                                 R"("keepalive": {"max_idle": 8, "idle_timeout_ms": 60000, "max_requests": 100000},
                     "pools": [{"id": "p", "hosts": [{"id": "h", "address": "127.0.0.1:)" +
                                 std::to_string(port) + R"("}]})" + backup + R"(]}]})");
    const std::string first_error = r.errors.empty() ? std::string() : r.errors.front();
    INFO(first_error);
    REQUIRE(r.errors.empty());
    cfg = std::move(r.config);
    shm::Writer w(ts.seg);
    w.set_persist(false);
    w.commit([&](shm::Table& t, std::vector<std::string>& ev) {
      const config::UpstreamConf& u = cfg.upstreams.at(0);
      const int ui = t.add_upstream(config::upstream_record(u));
      for (const auto& p : u.pools) {
        const int pi = t.add_pool(ui, p.id, p.priority, p.method);
        for (const auto& h : p.hosts) t.add_host(pi, h.id, h.address, h.weight);
      }
      ev.push_back("init");
    });
    shm::TableReader reader(ts.seg);
    reader.refresh(table);
    snap.build(table);
    bal.rebuild(snap);
    listeners[0].http = true;
    listeners[0].name = "web";
    listeners[0].upstream = snap.find_upstream("app");
    live_tag.assign(ts.seg.caps().max_hosts, 0);
    env.epoll = &ep;
    env.timers = &timers;
    env.buffers = &buffers;
    env.pipes = &pipes;
    env.seg = &ts.seg;
    env.snap = &snap;
    env.balancer = &bal;
    env.listeners = listeners;
    env.live_tag = live_tag;
    env.now_ms = core::monotonic_ms();
    http = std::make_unique<proxy::HttpProxy>(env, cfg, 2048);
    if (uring) {
      ring = std::make_unique<net::Ring>(256);
      bufring = std::make_unique<net::BufRing>(64, 16384);
      REQUIRE(bufring->attach(ring->raw(), 0) == 0);
      io = std::make_unique<proxy::HttpIo>(*ring, *bufring, buffers, io_slots, net::uring_recv_limit_supported());
      http->use_io(io.get());
    }
    http->refresh();
  }

  void accept(int fd) {
    set_nonblock(fd);
    sockaddr_in peer{};
    peer.sin_family = AF_INET;
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    peer.sin_port = htons(40000);
    http->accept(fd, 0, reinterpret_cast<const sockaddr*>(&peer));
  }
  void step(int timeout_ms) {
    if (io) {  // as the worker's io_uring loop
      io->flush();
      ring->submit_and_wait(io->has_events() ? 0 : timeout_ms);
      env.now_ms = core::monotonic_ms();
      ring->drain([&](const io_uring_cqe& c) {
        if (net::tag_op(c.user_data) >= proxy::uring_op::kHttpFirst) io->on_completion(c.user_data, c.res, c.flags);
      });
      const std::span<const epoll_event> ev = io->take_events();
      http->close_idle_in(ev.data(), static_cast<int>(ev.size()));
      for (const epoll_event& e : ev) http->on_event(e.data.u64, e.events);
      timers.advance(env.now_ms, [&](net::TimerNode& t) { http->on_timer(t); });
      return;
    }
    epoll_event ev[64];
    const int n = ep.wait(ev, 64, timeout_ms);
    env.now_ms = core::monotonic_ms();
    for (int i = 0; i < n; ++i) http->on_event(ev[i].data.u64, ev[i].events);
    timers.advance(env.now_ms, [&](net::TimerNode& t) { http->on_timer(t); });
  }
};

}  // namespace gw::testing::proxy_harness

// The checker's loop with an injected clock and connect: each "connect" is
// one end of a socketpair, whose other end the test holds and answers on (or
// not), so a probe's outcome and its timing are the test's to decide.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/writer.hpp"
#include "process/checker_loop.hpp"

using namespace gw;
using gw::testing::TempSegment;

namespace {

uint64_t g_now = 0;            // the injected clock
uint64_t g_connect_ms = 0;     // what each connect costs on it
size_t g_max_in_flight = ~0u;  // connects beyond this many probes fail with EMFILE
process::Checker* g_checker = nullptr;
std::vector<int> g_peers;          // the hosts' ends, in connect order
std::vector<uint32_t> g_connects;  // the port of each connect, in order

uint64_t fake_now() noexcept {
  return g_now;
}

int fake_connect(const core::SockAddr& addr, int& err) noexcept {
  g_now += g_connect_ms;
  if (g_checker && g_checker->probes_in_flight() >= g_max_in_flight) {
    err = EMFILE;
    return -1;
  }
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
    err = errno;
    return -1;
  }
  g_peers.push_back(sv[1]);
  g_connects.push_back(addr.port);
  return sv[0];
}

struct Fixture {
  TempSegment ts;
  shm::Writer w;
  process::Checker checker;
  explicit Fixture(uint32_t hosts)
      : ts(shm::Caps{4, 8, hosts}), w(ts.seg), checker(ts.seg, process::CheckerIo{fake_now, fake_connect}) {
    g_now = 10000;
    g_connect_ms = 0;
    g_max_in_flight = ~0u;
    g_checker = &checker;
    g_peers.clear();
    g_connects.clear();
    w.set_persist(false);
  }
  ~Fixture() {
    for (int fd : g_peers) ::close(fd);
    g_peers.clear();
    g_checker = nullptr;
  }
  // An upstream with http checks (rise 1, fall 1) and `n` hosts on ports 1..n.
  void publish(uint32_t n, uint32_t interval_ms, uint32_t timeout_ms) {
    w.commit([&](shm::Table& t, std::vector<std::string>&) {
      shm::UpstreamRecord r{};
      shm::set_name(r.name, "app");
      r.check.type = shm::kCheckHttp;
      r.check.expect_mask = (1 << 2) | (1 << 3);
      r.check.interval_ms = interval_ms;
      r.check.timeout_ms = timeout_ms;
      r.check.rise = 1;
      r.check.fall = 1;
      std::strcpy(r.check.path, "/");
      const int p = t.add_pool(t.add_upstream(r), "p", 0, shm::Method::round_robin);
      for (uint32_t i = 1; i <= n; ++i) {
        core::SockAddr a;
        std::string why;
        REQUIRE(core::parse_address("127.0.0.1:" + std::to_string(i), a, why));
        t.add_unique_host(p, "h" + std::to_string(i), a, 1);
      }
    });
  }
  // The checker's verdict on the host on port `port`.
  uint32_t state(uint32_t port) {
    shm::Table t(ts.seg.caps());
    shm::read_published(ts.seg, t);
    for (const auto& h : t.hosts())
      if (h.addr.port == port) return shm::active_state(ts.seg.host(h.slot), h.tag);
    FAIL("no host on port " << port);
    return 0;
  }
  // Looks at the probes now (no wait), then starts what is due.
  void turn() {
    checker.wait_probes(g_now);
    checker.start_due();
  }
};

void answer(int peer, const char* status_line) {
  const std::string s = std::string(status_line) + "\r\n\r\n";
  REQUIRE(::send(peer, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size()));
}

}  // namespace

TEST_SUITE("process") {
  TEST_CASE("checker: each probe has the whole timeout from its own connect, however long the round took") {
    // 100 hosts whose connects take 20 ms each: the round takes 2 s of the
    // clock. Before, every probe's deadline was the round's start + timeout
    // (1 s): the last 75 hosts were failed (down) before their time, or at
    // once; nginx's check module and HAProxy time a check from its own start.
    Fixture f(128);
    f.publish(100, 60000, 1000);
    g_connect_ms = 20;
    f.checker.start_due();
    REQUIRE(g_peers.size() == 100);
    // Probe i (the i-th connect) started at 10000 + 20 i; at 11500 those of
    // i <= 25 have had their second, the others not.
    g_now = 11500;
    f.checker.wait_probes(g_now);
    for (uint32_t i = 0; i < 100; ++i) {
      CAPTURE(i);
      CHECK(f.state(g_connects[i]) == (i <= 25 ? shm::kActiveDown : shm::kActiveUnknown));
    }
    for (size_t i = 26; i < 100; ++i) answer(g_peers[i], "HTTP/1.1 200 OK");
    f.checker.wait_probes(g_now);
    for (uint32_t i = 26; i < 100; ++i) {
      CAPTURE(i);
      CHECK(f.state(g_connects[i]) == shm::kActiveUp);
    }
    CHECK(f.checker.probes_in_flight() == 0);
  }

  TEST_CASE("checker: with fewer descriptors than hosts, the hosts that waited longest are checked first") {
    // 5 probes at a time for 20 hosts that never answer (timeout 1 s,
    // interval 100 ms). Before, each wakeup started the due hosts in table
    // order: the first 5, due again when their probes timed out, took the
    // descriptors every time, and hosts 6..20 were never checked.
    Fixture f(32);
    f.publish(20, 100, 1000);
    g_max_in_flight = 5;
    for (int round = 0; round < 4; ++round) {
      f.turn();
      CHECK(f.checker.probes_in_flight() == 5);
      g_now += 1000;
    }
    f.checker.wait_probes(g_now);
    for (uint32_t port = 1; port <= 20; ++port) {
      CAPTURE(port);
      CHECK(f.state(port) == shm::kActiveDown);
    }
    // Each host was checked once: the ones that were never checked went first.
    REQUIRE(g_connects.size() == 20);
    std::vector<uint32_t> sorted = g_connects;
    std::sort(sorted.begin(), sorted.end());
    for (uint32_t i = 0; i < 20; ++i) CHECK(sorted[i] == i + 1);
  }

  TEST_CASE("checker: a refused table (corrupt or foreign) keeps the checker on the last good one") {
    // Before, the refused read emptied the checker's table: the results of
    // the probes under way were dropped and no host was checked any more
    // until the next publish. A worker keeps routing with its last good table;
    // the checker keeps checking its hosts.
    Fixture f(16);
    f.publish(3, 1000, 5000);
    f.checker.start_due();
    REQUIRE(g_peers.size() == 3);
    shm::SegmentHeader& h = f.ts.seg.header();
    const uint64_t pub = h.published.load();
    h.published.store(pub + 8);  // a generation the slot does not hold: read_published refuses it
    for (int peer : g_peers) answer(peer, "HTTP/1.1 200 OK");
    f.checker.wait_probes(g_now);
    h.published.store(pub);
    for (uint32_t port = 1; port <= 3; ++port) CHECK(f.state(port) == shm::kActiveUp);
    h.published.store(pub + 8);
    g_now += 1000;  // the next checks fall due
    f.turn();
    CHECK(f.checker.probes_in_flight() == 3);
    h.published.store(pub);
  }
}

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
  // Adds hosts on ports from..to (one commit) to the pool publish() made.
  void add_hosts(uint32_t from, uint32_t to) {
    w.commit([&](shm::Table& t, std::vector<std::string>&) {
      for (uint32_t i = from; i <= to; ++i) {
        core::SockAddr a;
        std::string why;
        REQUIRE(core::parse_address("127.0.0.1:" + std::to_string(i), a, why));
        t.add_unique_host(0, "h" + std::to_string(i), a, 1);
      }
    });
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

// Steps the clock 1 ms at a time up to `end` (not included), turning the
// loop at each; `times` gets the clock of each connect (as g_connects its port).
void run_until(Fixture& f, uint64_t end, std::vector<uint64_t>& times) {
  for (; g_now < end; ++g_now) {
    f.turn();
    times.resize(g_connects.size(), g_now);
  }
}

// The most of `times` (any order) within any `window` ms.
size_t most_within(std::vector<uint64_t> times, uint64_t window) {
  std::sort(times.begin(), times.end());
  size_t most = 0;
  for (size_t lo = 0, hi = 0; hi < times.size(); ++hi) {
    while (times[hi] - times[lo] >= window) ++lo;
    most = std::max(most, hi - lo + 1);
  }
  return most;
}

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
    // (An interval of 1 ms: the first checks, spread across it, are all due
    // at once; none is started again here.)
    Fixture f(128);
    f.publish(100, 1, 1000);
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
    f.checker.start_due();  // (reads the table: the first checks are spread across the interval)
    g_now += 100;           // all due
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
    g_now += 1000;  // (the first checks are spread across the interval: all started by now)
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

  TEST_CASE("checker: the first checks are spread across the interval, not started all at once") {
    // 200 hosts, interval 2 s. Before, every host was due when the checker
    // read the table (at start, and after a reload, which starts a new
    // checker): 200 connects in one wakeup, thousands in a big table. Now
    // the k-th host is first due k * 2000 / 200 ms on: 200 hosts over the
    // interval, at most 1 + window * 200 / 2000 in any window.
    Fixture f(256);
    f.publish(200, 2000, 50);  // (no host answers: each check times out after 50 ms)
    std::vector<uint64_t> times;
    run_until(f, 14000, times);
    REQUIRE(g_connects.size() == 400);  // two rounds
    const std::vector<uint64_t> first(times.begin(), times.begin() + 200);
    CHECK(most_within(first, 1) == 1);
    CHECK(most_within(first, 10) <= 2);
    CHECK(most_within(first, 100) <= 11);
    // Every host once in the first interval, and again one interval after.
    std::vector<uint64_t> first_at(201, 0);
    for (size_t i = 0; i < 200; ++i) {
      CAPTURE(i);
      CHECK(times[i] < 12000);
      CHECK(first_at[g_connects[i]] == 0);
      first_at[g_connects[i]] = times[i];
    }
    for (size_t i = 200; i < 400; ++i) {
      CAPTURE(i);
      CHECK(times[i] == first_at[g_connects[i]] + 2000);
    }
    CHECK(most_within(times, 10) <= 2);
  }

  TEST_CASE("checker: a host added live is checked at once; a batch added in one change is spread") {
    // An operator who adds a host expects its verdict at once, not an
    // interval later: a lone new host is first due when the table is read.
    // A batch of new hosts follows it at the checker's pace, interval / n
    // apart (n: the checked hosts in the table).
    Fixture f(256);
    f.publish(200, 2000, 50);
    std::vector<uint64_t> times;
    run_until(f, 12005, times);
    f.add_hosts(201, 201);
    const uint64_t added = g_now;
    run_until(f, g_now + 1, times);
    REQUIRE(g_connects.back() == 201);
    CHECK(times.back() == added);
    // 20 more in one change: 221 checked hosts, the k-th new one k * 2000 /
    // 221 ms on (k = 0..19): the first at once, all within 172 ms.
    run_until(f, 12500, times);
    const size_t before = g_connects.size();
    f.add_hosts(202, 221);
    const uint64_t batch = g_now;
    run_until(f, 13000, times);
    std::vector<uint64_t> batch_times;
    for (size_t i = before; i < g_connects.size(); ++i)
      if (g_connects[i] >= 202) batch_times.push_back(times[i]);
    REQUIRE(batch_times.size() == 20);
    CHECK(batch_times.front() == batch);
    CHECK(batch_times.back() - batch == 19 * 2000 / 221);
    CHECK(most_within(batch_times, 1) == 1);
    CHECK(most_within(batch_times, 10) <= 2);
  }
}

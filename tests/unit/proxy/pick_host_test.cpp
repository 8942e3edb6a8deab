// pick_host(): what every listener kind asks the balancer through, with
// passive health, slow start and the hosts already tried.

#include <doctest/doctest.h>

#include <array>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/balance/balancer.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/net/buffer_pool.hpp"
#include "gw/net/reactor.hpp"
#include "gw/proxy/tcp_relay.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/ops.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/writer.hpp"
#include "proxy/relay_common.hpp"

using namespace gw;

namespace {

/// One upstream, one pool of three hosts of weight 10 with `method`, slow
/// start over 1000 ms, in a temp segment; the clock is injected (now_ms).
struct PickEnv {
  testing::TempSegment ts;
  shm::Table table{ts.seg.caps()};
  balance::Snapshot snap;
  balance::Balancer bal{ts.seg.caps().max_hosts, 7};
  net::TimerWheel timers{0};
  net::BufferPool buffers;
  std::vector<proxy::ListenerRuntime> listeners = std::vector<proxy::ListenerRuntime>(1);
  std::vector<uint32_t> live_tag;
  proxy::RelayEnv env;

  explicit PickEnv(shm::Method method) {
    shm::Writer w(ts.seg);
    w.set_persist(false);
    w.commit([&](shm::Table& t, std::vector<std::string>& ev) {
      shm::UpstreamRecord r{};
      shm::set_name(r.name, "app");
      r.connect_timeout_ms = 1000;
      r.idle_timeout_ms = 1000;
      r.max_fails = 1;
      r.fail_timeout_ms = 10000;
      r.tries = 3;
      r.slow_start_ms = 1000;
      int u = t.add_upstream(r);
      int p = t.add_pool(u, "p", 0, method);
      for (int i = 0; i < 3; ++i) {
        core::SockAddr a;
        std::string why;
        REQUIRE(core::parse_address("127.0.0.1:" + std::to_string(8001 + i), a, why));
        t.add_host(p, std::string(1, static_cast<char>('a' + i)), a, 10);
      }
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
    env.seg = &ts.seg;
    env.snap = &snap;
    env.balancer = &bal;
    env.listeners = listeners;
    env.live_tag = live_tag;
    env.now_ms = 100000;
  }
  const shm::HostRecord& host(int i) const { return table.hosts()[static_cast<size_t>(i)]; }
};

/// A claim that loses the first trial it is asked for to "another worker",
/// which claims it just before: the race two workers' picks can run.
bool g_raced = false;
shm::Trial claim_after_another(shm::HostRuntime& h, uint32_t tag, shm::HealthPolicy p, uint64_t now_ms) noexcept {
  if (!g_raced) {
    const shm::Trial other = shm::claim_trial(h, tag, p, now_ms);
    if (other != shm::Trial::taken) return other;  // an up host: no trial to race for
    g_raced = true;                                // the other worker has it
  }
  return shm::claim_trial(h, tag, p, now_ms);
}

}  // namespace

TEST_SUITE("proxy") {
  TEST_CASE("slow start: a ramping host gets its share under every method that asks twice") {
    // Host c came back 500 ms ago with slow start over 1000 ms: it takes half
    // its weight, in or out for a whole pick. Expected share of c: 1/2 x 1/3.
    // A fresh draw each time the method asked (random sums the weights, then
    // walks them) gave c under 9% with random.
    // (round_robin is left out: its smooth weights make up a skipped turn later, so c
    // gets about 20% there.)
    for (shm::Method m : {shm::Method::random, shm::Method::least_conn}) {
      CAPTURE(static_cast<int>(m));
      PickEnv e(m);
      const shm::HostRecord& c = e.host(2);
      shm::mark_up(e.ts.seg.host(c.slot), c.tag, e.env.now_ms - 500);
      REQUIRE(shm::slow_start_permille(e.ts.seg.host(c.slot), c.tag, 1000, e.env.now_ms) == 500);
      balance::Rng rng(42);
      std::array<int, 3> got{};
      const int ui = e.snap.find_upstream("app");
      constexpr int kPicks = 30000;
      for (int k = 0; k < kPicks; ++k) {
        const int h = proxy::pick_host(e.env, ui, balance::HashKey{}, {}, rng, true);
        REQUIRE(h >= 0);
        ++got[static_cast<size_t>(h)];
      }
      const double share_c = static_cast<double>(got[2]) / kPicks;
      CHECK(share_c > 0.15);
      CHECK(share_c < 0.185);
      CHECK(got[0] > kPicks * 0.38);  // a and b split the rest
      CHECK(got[1] > kPicks * 0.38);
    }
  }

  TEST_CASE("passive health: a pick that lost the down host's trial to another worker picks again") {
    // Host a is down past its fail_timeout, b is up, c is down within its.
    // This worker's pick finds a usable; another worker takes a's trial
    // before this one claims it: a is out again, so the pick goes to b. A
    // pick that kept a sent a second connection to the down host.
    PickEnv e(shm::Method::round_robin);
    const shm::HealthPolicy hp{1, 10000};
    const shm::HostRecord &a = e.host(0), &c = e.host(2);
    REQUIRE(shm::record_failure(e.ts.seg.host(a.slot), a.tag, hp, e.env.now_ms - 20000));
    REQUIRE(shm::record_failure(e.ts.seg.host(c.slot), c.tag, hp, e.env.now_ms));
    const int ui = e.snap.find_upstream("app");
    balance::Rng rng(1);
    for (int k = 0; k < 6; ++k) {  // round robin: until it lands on a
      const int h = proxy::pick_host(e.env, ui, balance::HashKey{}, {}, rng, true, claim_after_another);
      REQUIRE(h >= 0);
      if (!g_raced) continue;  // b, up: no trial to race for
      CHECK(h == 1);           // a was lost to the other worker: b
      break;
    }
    CHECK(g_raced);
    CHECK_FALSE(shm::host_usable(e.ts.seg.host(a.slot), a.tag, hp, e.env.now_ms));  // the other's trial runs
  }

  TEST_CASE("passive health: a failure that takes out a host its checks hold down says health_down, no hook") {
    // The checks took host a out (host_down, hook); a connect begun before
    // then fails now (a blackholed host's connects time out after the
    // checks do). Passive health takes a down too, but a was out already:
    // health_down, which runs no hook. It said host_down again.
    PickEnv e(shm::Method::round_robin);
    shm::Writer w(e.ts.seg);
    w.set_persist(false);
    w.commit([](shm::Table& t, std::vector<std::string>&) { t.upstreams()[0].check.type = shm::kCheckTcp; });
    shm::TableReader reader(e.ts.seg);
    reader.refresh(e.table);
    e.snap.build(e.table);
    e.bal.rebuild(e.snap);
    const shm::HostRecord &a = e.host(0), &b = e.host(1);
    const int ui = e.snap.find_upstream("app");
    REQUIRE(shm::record_check(e.ts.seg.host(a.slot), a.tag, shm::kActiveDown));
    REQUIRE(shm::record_check(e.ts.seg.host(b.slot), b.tag, shm::kActiveUp));
    auto last_event = [&] {
      shm::EventData ev{};
      uint64_t seq = 0;
      std::string text;
      while (shm::read_event(e.ts.seg, seq, ev) == shm::EventRead::ok) {
        text = ev.text;
        ++seq;
      }
      return text;
    };
    proxy::record_connect_failure(e.env, ui, a.slot, a.tag, a.weight, ETIMEDOUT);
    CHECK(last_event() ==
          "health_down app/p/a 127.0.0.1:8001 (passive: 1 failure(s) within 10000 ms, last: Connection timed out; "
          "the host is out on its active checks)");
    proxy::record_connect_failure(e.env, ui, b.slot, b.tag, b.weight, ECONNREFUSED);  // b took traffic: host_down
    CHECK(last_event() ==
          "host_down app/p/b 127.0.0.1:8002 (passive: 1 failure(s) within 10000 ms, last: Connection refused)");
  }

  TEST_CASE("passive health: a connect to a host removed meanwhile that fails counts nothing and says nothing") {
    // It was counted on the freed slot and said "host_down (removed host) -
    // (passive: 0 failure(s) within 0 ms, last: Connection timed out)".
    PickEnv e(shm::Method::round_robin);
    const shm::HostRecord a = e.host(0);
    const int ui = e.snap.find_upstream("app");
    shm::Writer w(e.ts.seg);
    w.set_persist(false);
    w.commit([](shm::Table& t, std::vector<std::string>& ev) {
      t.remove_host(t.find_host(t.find_pool(t.find_upstream("app"), "p"), "a"));
      ev.push_back("host_removed app/p/a");
    });
    shm::TableReader reader(e.ts.seg);
    reader.refresh(e.table);
    e.snap.build(e.table);
    e.bal.rebuild(e.snap);
    const uint64_t head = e.ts.seg.header().event_head.load();
    proxy::record_connect_failure(e.env, ui, a.slot, a.tag, a.weight, ETIMEDOUT);
    CHECK(e.ts.seg.header().event_head.load() == head);
    CHECK(e.ts.seg.host(a.slot).failures.load() == 0);
  }

  TEST_CASE("passive health: a trial that passes while the checks hold the host out says health_up, no hook") {
    // a: up on its checks, out on passive health; then its checks fail
    // too. Its trial (claimed before they failed) passes: it still takes no
    // traffic, and the checker's host_up comes when they pass. It said
    // host_up, and the hook ran twice.
    PickEnv e(shm::Method::round_robin);
    shm::Writer w(e.ts.seg);
    w.set_persist(false);
    w.commit([](shm::Table& t, std::vector<std::string>&) {
      t.upstreams()[0].check.type = shm::kCheckTcp;
      t.upstreams()[0].check.unknown_usable = 1;
    });
    shm::TableReader reader(e.ts.seg);
    reader.refresh(e.table);
    e.snap.build(e.table);
    e.bal.rebuild(e.snap);
    const shm::HostRecord &a = e.host(0), &b = e.host(1);
    const int ui = e.snap.find_upstream("app");
    auto last_event = [&] {
      shm::EventData ev{};
      uint64_t seq = 0;
      std::string text;
      while (shm::read_event(e.ts.seg, seq, ev) == shm::EventRead::ok) {
        text = ev.text;
        ++seq;
      }
      return text;
    };
    const shm::HealthPolicy hp{1, 10000, true, true};
    for (const shm::HostRecord* h : {&a, &b}) {
      REQUIRE(shm::record_check(e.ts.seg.host(h->slot), h->tag, shm::kActiveUp));
      proxy::record_connect_failure(e.env, ui, h->slot, h->tag, h->weight, ECONNREFUSED);
      REQUIRE(shm::passive_down(e.ts.seg.host(h->slot), h->tag));
    }
    e.env.now_ms += 10000;
    REQUIRE(shm::claim_trial(e.ts.seg.host(a.slot), a.tag, hp, e.env.now_ms) == shm::Trial::taken);
    REQUIRE(shm::record_check(e.ts.seg.host(a.slot), a.tag, shm::kActiveDown));
    proxy::record_host_success(e.env, a.slot, a.tag, e.env.now_ms);
    CHECK(last_event() ==
          "health_up app/p/a 127.0.0.1:8001 (passive: a connection succeeded; the host is out on its active checks)");
    // b's checks pass: its trial brings it back, host_up.
    REQUIRE(shm::claim_trial(e.ts.seg.host(b.slot), b.tag, hp, e.env.now_ms) == shm::Trial::taken);
    proxy::record_host_success(e.env, b.slot, b.tag, e.env.now_ms);
    CHECK(last_event() == "host_up app/p/b 127.0.0.1:8002 (passive: a connection succeeded)");
  }

  TEST_CASE("gwctl down/up of a host not checked yet, where such a host is unusable, is admin_down/admin_up") {
    // health.unknown "unusable": a host not checked yet takes no traffic, so
    // downing it by hand moves none; it said host_down and host_up, and ran
    // their hooks.
    PickEnv e(shm::Method::round_robin);
    shm::Writer w(e.ts.seg);
    w.set_persist(false);
    w.commit([](shm::Table& t, std::vector<std::string>&) {
      t.upstreams()[0].check.type = shm::kCheckTcp;
      t.upstreams()[0].check.unknown_usable = 0;
    });
    std::vector<std::string> seen;
    auto events = [&] {
      shm::EventData ev{};
      uint64_t seq = 0;
      seen.clear();
      while (shm::read_event(e.ts.seg, seq, ev) == shm::EventRead::ok) {
        seen.emplace_back(ev.text);
        ++seq;
      }
      return seen.back();
    };
    REQUIRE(shm::ops::set_host_down(e.ts.seg, "app", "p", "b", true, "gwctl").changed);
    CHECK(events() ==
          "admin_down app/p/b 127.0.0.1:8002 (admin: gwctl down; the host was already out: its health checks have "
          "not passed yet (health.unknown is unusable))");
    REQUIRE(shm::ops::set_host_down(e.ts.seg, "app", "p", "b", false, "gwctl").changed);
    CHECK(events() ==
          "admin_up app/p/b 127.0.0.1:8002 (admin: gwctl up; the host stays out: its health checks have not passed "
          "yet (health.unknown is unusable))");
  }

  TEST_CASE("passive health: a failure that takes out a host downed by hand says health_down, no hook") {
    // gwctl down took host c out (host_down, hook); a connect begun before
    // then fails now: passive health takes c down too, but it was out
    // already. It said host_down again.
    PickEnv e(shm::Method::round_robin);
    shm::Writer w(e.ts.seg);
    w.set_persist(false);
    w.commit([](shm::Table& t, std::vector<std::string>&) { t.hosts()[2].admin_down = 1; });
    shm::TableReader reader(e.ts.seg);
    reader.refresh(e.table);
    e.snap.build(e.table);
    e.bal.rebuild(e.snap);
    const shm::HostRecord& c = e.host(2);
    proxy::record_connect_failure(e.env, e.snap.find_upstream("app"), c.slot, c.tag, c.weight, ECONNREFUSED);
    shm::EventData ev{};
    uint64_t seq = 0;
    std::string text;
    while (shm::read_event(e.ts.seg, seq, ev) == shm::EventRead::ok) {
      text = ev.text;
      ++seq;
    }
    CHECK(text ==
          "health_down app/p/c 127.0.0.1:8003 (passive: 1 failure(s) within 10000 ms, last: Connection refused; the "
          "host stays out: admin down, until gwctl up)");
  }

  TEST_CASE("host_left: a host pick_host could still choose, without moving the balancer") {
    // Hosts a, b, c (weight 10). host_left() says whether one not yet tried
    // is admin up and usable; a failure within its fail_timeout makes a host
    // unusable, one past it usable again (its trial), as for pick_host().
    PickEnv e(shm::Method::round_robin);
    const shm::HealthPolicy hp{1, 10000};
    const int ui = e.snap.find_upstream("app");
    const shm::HostRecord &a = e.host(0), &b = e.host(1), &c = e.host(2);
    const uint32_t ab[] = {a.slot, b.slot}, abc[] = {a.slot, b.slot, c.slot};
    CHECK(proxy::host_left(e.env, ui, {}));
    CHECK(proxy::host_left(e.env, ui, ab));
    CHECK_FALSE(proxy::host_left(e.env, ui, abc));
    CHECK_FALSE(proxy::host_left(e.env, -1, {}));
    CHECK_FALSE(proxy::host_left(e.env, ui + 1, {}));
    // c out on passive health: nothing left once a and b were tried.
    REQUIRE(shm::record_failure(e.ts.seg.host(c.slot), c.tag, hp, e.env.now_ms));
    CHECK_FALSE(proxy::host_left(e.env, ui, ab));
    // Past its fail_timeout_ms c may be tried again, and claims nothing here:
    // still usable for the pick that follows.
    e.env.now_ms += 20000;
    CHECK(proxy::host_left(e.env, ui, ab));
    CHECK(proxy::host_left(e.env, ui, ab));
    CHECK(shm::host_usable(e.ts.seg.host(c.slot), c.tag, hp, e.env.now_ms));
    // Round robin's state did not move: the picks go on as from the start.
    balance::Rng rng(1);
    CHECK(proxy::pick_host(e.env, ui, balance::HashKey{}, {}, rng, true) == 0);
  }
}

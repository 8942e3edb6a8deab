#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gw/balance/balancer.hpp"
#include "gw/balance/snapshot.hpp"

using namespace gw;

namespace {
struct Fixture {
  shm::Table t{{2, 4, 16}};
  balance::Snapshot snap;
  Fixture() {
    shm::UpstreamRecord r{};
    shm::set_name(r.name, "app");
    t.add_upstream(r);
  }
  int pool(const char* id, int prio) { return t.add_pool(0, id, prio, shm::Method::round_robin); }
  void host(int p, const char* id, uint32_t w) {
    int h = t.add_host(p, id, core::SockAddr{}, w);
    t.hosts()[static_cast<size_t>(h)].slot = static_cast<uint32_t>(h);
    t.hosts()[static_cast<size_t>(h)].tag = static_cast<uint32_t>(h) + 1;
  }
  std::string name(int h) { return std::string(shm::name_of(t.hosts()[static_cast<size_t>(h)].id)); }
};
}  // namespace

TEST_SUITE("balance") {
  TEST_CASE("smooth weighted round robin: {a:5, b:1, c:1} gives a a b a c a a") {
    Fixture f;
    int p = f.pool("primary", 0);
    f.host(p, "a", 5);
    f.host(p, "b", 1);
    f.host(p, "c", 1);
    f.snap.build(f.t);
    balance::Balancer b(16, 1);
    std::string seq;
    for (int i = 0; i < 14; ++i) seq += f.name(b.pick(f.snap, f.snap.upstreams()[0], [](uint32_t) { return true; }));
    CHECK(seq == "aabacaaaabacaa");
  }

  TEST_CASE("weights are honoured over many picks; weight 0 and ineligible hosts get nothing") {
    Fixture f;
    int p = f.pool("primary", 0);
    f.host(p, "a", 3);
    f.host(p, "b", 2);
    f.host(p, "z", 0);
    f.host(p, "d", 5);
    f.snap.build(f.t);
    balance::Balancer b(16, 1);
    std::map<std::string, int> n;
    for (int i = 0; i < 1000; ++i)
      ++n[f.name(b.pick(f.snap, f.snap.upstreams()[0], [](uint32_t h) { return h != 3; }))];
    CHECK(n["a"] == 600);
    CHECK(n["b"] == 400);
    CHECK(n.count("z") == 0);
    CHECK(n.count("d") == 0);
  }

  TEST_CASE("the lowest priority number with an eligible host wins; failover to the next pool") {
    Fixture f;
    int backup = f.pool("backup", 1);
    int primary = f.pool("primary", 0);
    f.host(backup, "c", 1);
    f.host(primary, "a", 1);
    f.host(primary, "b", 1);
    f.snap.build(f.t);
    balance::Balancer b(16, 1);
    const auto& u = f.snap.upstreams()[0];
    for (int i = 0; i < 4; ++i) CHECK(f.name(b.pick(f.snap, u, [](uint32_t) { return true; })) != "c");
    CHECK(f.name(b.pick(f.snap, u, [&](uint32_t i) { return f.name(static_cast<int>(i)) != "a"; })) == "b");
    CHECK(f.name(b.pick(f.snap, u, [&](uint32_t i) { return f.name(static_cast<int>(i)) == "c"; })) == "c");
    CHECK(b.pick(f.snap, u, [](uint32_t) { return false; }) == -1);
  }

  TEST_CASE("a failure lowers the effective weight, which recovers with picks (nginx)") {
    Fixture f;
    int p = f.pool("primary", 0);
    f.host(p, "a", 4);
    f.host(p, "b", 4);
    f.snap.build(f.t);
    balance::Balancer b(16, 1);
    const auto& u = f.snap.upstreams()[0];
    auto all = [](uint32_t) { return true; };
    b.pick(f.snap, u, all);    // initialise state
    b.on_failure(0, 1, 4, 1);  // a: effective 4 → 0
    std::string seq;
    for (int i = 0; i < 6; ++i) seq += f.name(b.pick(f.snap, u, all));
    // a's effective weight climbs 1, 2, 3, 4 while b's stays 4: b wins the first picks.
    CHECK(seq.substr(0, 2) == "bb");
    std::map<char, int> n;
    for (int i = 0; i < 800; ++i) ++n[f.name(b.pick(f.snap, u, all))[0]];
    CHECK(n['a'] == 400);
  }

  TEST_CASE("per-worker picks follow nginx's get_peer and free_peer step by step, failures and outages included") {
    // ngx_http_upstream_get_peer and the NGX_PEER_FAILED branch of
    // ngx_http_upstream_free_round_robin_peer, literally, against RoundRobin
    // over random pools (weights 0..5), hosts going out and back at every
    // pick, and failures of the host picked.
    std::mt19937 rng(9);
    size_t picks = 0, differ = 0;
    for (int round = 0; round < 200; ++round) {
      const size_t n = 1 + rng() % 6;
      const uint32_t max_fails = 1 + rng() % 3;
      std::vector<shm::HostRecord> hosts(n);
      std::vector<uint32_t> cands(n);
      std::vector<int64_t> current(n, 0), effective(n);
      for (size_t i = 0; i < n; ++i) {
        hosts[i].weight = rng() % 6;
        hosts[i].slot = static_cast<uint32_t>(i);
        hosts[i].tag = static_cast<uint32_t>(i) + 1;
        cands[i] = static_cast<uint32_t>(i);
        effective[i] = hosts[i].weight;
      }
      balance::RoundRobin rr(16);
      for (int k = 0; k < 200; ++k) {
        std::vector<bool> up(n);
        for (size_t i = 0; i < n; ++i) up[i] = rng() % 4 != 0;
        int best = -1;
        int64_t total = 0;
        for (size_t i = 0; i < n; ++i) {
          if (hosts[i].weight == 0 || !up[i]) continue;
          current[i] += effective[i];
          total += effective[i];
          if (effective[i] < hosts[i].weight) ++effective[i];
          if (best < 0 || current[i] > current[static_cast<size_t>(best)]) best = static_cast<int>(i);
        }
        if (best >= 0) current[static_cast<size_t>(best)] -= total;
        ++picks;
        differ += rr.pick(hosts, cands, [&](uint32_t i) { return bool(up[i]); }) != best;
        if (best >= 0 && rng() % 5 == 0) {
          const auto b = static_cast<size_t>(best);
          effective[b] = std::max<int64_t>(0, effective[b] - hosts[b].weight / max_fails);
          rr.on_failure(hosts[b].slot, hosts[b].tag, hosts[b].weight, max_fails);
        }
      }
    }
    CHECK(picks == 40000);
    CHECK(differ == 0);
  }
}

TEST_SUITE("balance") {
  // A weight changed at runtime (gwctl set host --weight) rebuilds the pool:
  // its smooth WRR state starts again from the new weights, as nginx's does on
  // a reload. Kept, the old weights' current values decided the next hundreds
  // of picks: a host lowered from 1000 to 1 beside a host of weight 1 had
  // built up a debt of about -picks, and got nothing until it was paid back.
  TEST_CASE("a weight change resets the pool's smooth WRR state (per-worker picks)") {
    Fixture f;
    // A hash pool: a request without the key is picked by the per-worker
    // smooth WRR (pick()), as are pools too large for a shared schedule.
    int p = f.t.add_pool(0, "primary", 0, shm::Method::chash);
    f.host(p, "a", 1000);
    f.host(p, "b", 1);
    f.snap.build(f.t);
    balance::Balancer b(16, 1);
    b.rebuild(f.snap);
    const auto& u0 = f.snap.upstreams()[0];
    auto all = [](uint32_t) { return true; };
    auto none = [](uint32_t) { return uint64_t{0}; };
    for (int i = 0; i < 500; ++i) b.pick(f.snap, u0, balance::HashKey{}, all, none);
    f.t.hosts()[0].weight = 1;  // gwctl set host app/primary/a --weight 1
    f.snap.build(f.t);
    b.rebuild(f.snap);
    const auto& u = f.snap.upstreams()[0];
    std::map<std::string, int> n;
    for (int i = 0; i < 100; ++i) ++n[f.name(b.pick(f.snap, u, balance::HashKey{}, all, none))];
    CHECK(n["a"] == 50);
    CHECK(n["b"] == 50);
  }
}

TEST_SUITE("balance") {
  // Hosts of another pool that come or go earlier in the host table move this
  // pool's hosts to other indices: its ring or schedule is rebuilt on them,
  // but nothing about the pool changed, so its round-robin sequence carries
  // on. Before, it started again (rr state forgotten, schedule ticket 0) on
  // any change anywhere before it in the table.
  struct Moved : Fixture {
    int pool = -1;
    balance::Balancer b{16, 1};
    explicit Moved(shm::Method method) {
      shm::UpstreamRecord r{};
      shm::set_name(r.name, "web");
      t.add_upstream(r);
      int w = t.add_pool(1, "w", 0, shm::Method::round_robin);
      host(w, "x", 1);
      host(w, "y", 1);
      pool = t.add_pool(0, "primary", 0, method);
      host(pool, "a", 5);
      host(pool, "b", 1);
      host(pool, "c", 1);
      update();
    }
    void update() {
      snap.build(t);
      b.rebuild(snap);
    }
    // No key: a hash pool picks by the per-worker smooth WRR, a round robin
    // pool by its schedule (with this balancer's own tickets).
    std::string picks(balance::Balancer& by, int n) {
      std::string seq;
      for (int i = 0; i < n; ++i)
        seq += name(by.pick(
            snap, snap.upstreams()[0], balance::HashKey{}, [](uint32_t) { return true; },
            [](uint32_t) { return uint64_t{0}; }));
      return seq;
    }
  };

  TEST_CASE("a pool that only moved in the host table keeps its place in the smooth WRR sequence") {
    for (auto method : {shm::Method::chash, shm::Method::round_robin}) {
      CAPTURE(static_cast<int>(method));
      Moved f(method);
      REQUIRE(f.name(0) == "x");
      CHECK(f.picks(f.b, 3) == "aab");
      f.t.remove_host(0);  // gwctl remove host web/w/x: app's hosts move down one
      f.update();
      CHECK(f.b.last_rebuilt() == 2);  // web's pool, and app's on its new indices
      CHECK(f.picks(f.b, 11) == "acaaaabacaa");
    }
  }

  TEST_CASE("a weight changed in a pool that also moved still starts its sequence again") {
    for (auto method : {shm::Method::chash, shm::Method::round_robin}) {
      CAPTURE(static_cast<int>(method));
      Moved f(method);
      CHECK(f.picks(f.b, 3) == "aab");
      f.t.remove_host(0);
      f.t.hosts()[2].weight = 3;  // gwctl set host app/primary/b --weight 3
      REQUIRE(f.name(2) == "b");
      f.update();
      balance::Balancer fresh(16, 1);
      fresh.rebuild(f.snap);
      const std::string expect = f.picks(fresh, 18);
      CHECK(expect.substr(0, 3) == "aba");  // {a:5, b:3, c:1} from the start
      CHECK(f.picks(f.b, 18) == expect);
    }
  }
}

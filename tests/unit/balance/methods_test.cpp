#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/balance/balancer.hpp"

using namespace gw;

namespace {
// One upstream, one pool of `n` hosts at 127.0.0.1:(9000 + i), weights given.
struct Pool {
  shm::Table t{{1, 1, 64}};
  balance::Snapshot snap;
  balance::Balancer b{64, 42};
  explicit Pool(shm::Method m, std::vector<uint32_t> weights, uint16_t balance_factor = 0) {
    shm::UpstreamRecord r{};
    shm::set_name(r.name, "app");
    r.balance_factor = balance_factor;
    t.add_upstream(r);
    t.add_pool(0, "p", 0, m);
    for (size_t i = 0; i < weights.size(); ++i) add(i, weights[i]);
    refresh();
  }
  void add(size_t i, uint32_t w) {
    core::SockAddr a;
    std::string why;
    core::parse_address("127.0.0.1:" + std::to_string(9000 + i), a, why);
    int h = t.add_host(0, "h" + std::to_string(i), a, w);
    t.hosts()[static_cast<size_t>(h)].slot = static_cast<uint32_t>(h);
    t.hosts()[static_cast<size_t>(h)].tag = static_cast<uint32_t>(i) + 1;
  }
  void refresh() {
    snap.build(t);
    b.rebuild(snap);
  }
  template <typename E, typename L>
  std::string pick(std::string_view key, E&& eligible, L&& load, bool* fb = nullptr) {
    int h = b.pick(snap, snap.upstreams()[0], key, eligible, load, fb);
    return h < 0 ? "-" : std::string(shm::name_of(t.hosts()[static_cast<size_t>(h)].id));
  }
  std::string pick(std::string_view key) { return pick(key, all, none); }
  static bool all(uint32_t) { return true; }
  static uint64_t none(uint32_t) { return 0; }
};
std::string key(int i) {
  return "key-" + std::to_string(i);
}
}  // namespace

TEST_SUITE("balance") {
  TEST_CASE("a missing key counts as a hash fallback only where the hash pool routes the connection") {
    // A chash pool with no usable host and a round-robin backup: the backup
    // routes by its own method, and no hash method fell back.
    shm::Table t{{1, 2, 64}};
    shm::UpstreamRecord r{};
    shm::set_name(r.name, "app");
    t.add_upstream(r);
    t.add_pool(0, "p", 0, shm::Method::chash);
    t.add_pool(0, "q", 1, shm::Method::round_robin);
    for (int i = 0; i < 2; ++i) {
      core::SockAddr a;
      std::string why;
      REQUIRE(core::parse_address("127.0.0.1:" + std::to_string(9000 + i), a, why));
      const int h = t.add_host(i, "h" + std::to_string(i), a, 1);
      t.hosts()[static_cast<size_t>(h)].slot = static_cast<uint32_t>(h);
      t.hosts()[static_cast<size_t>(h)].tag = static_cast<uint32_t>(i) + 1;
    }
    balance::Snapshot snap;
    snap.build(t);
    balance::Balancer b{64, 42};
    b.rebuild(snap);
    auto name = [&](int h) {
      return h < 0 ? std::string("-") : std::string(shm::name_of(t.hosts()[static_cast<size_t>(h)].id));
    };
    auto none = [](uint32_t) -> uint64_t { return 0; };
    const int h0 = t.find_host(t.find_pool(0, "p"), "h0");
    bool fell_back = false;
    CHECK(name(b.pick(
              snap, snap.upstreams()[0], "", [](uint32_t) { return true; }, none, &fell_back)) == "h0");
    CHECK(fell_back);  // the chash pool routed it, by round robin
    fell_back = false;
    auto not_h0 = [&](uint32_t i) { return static_cast<int>(i) != h0; };
    CHECK(name(b.pick(snap, snap.upstreams()[0], "", not_h0, none, &fell_back)) == "h1");
    CHECK_FALSE(fell_back);
    CHECK(name(b.pick(snap, snap.upstreams()[0], "k", not_h0, none, &fell_back)) == "h1");
    CHECK_FALSE(fell_back);
  }

  TEST_CASE("chash: adding an 11th host moves about 1/11 of the keys, all of them to the new host") {
    Pool p(shm::Method::chash, std::vector<uint32_t>(10, 1));
    std::vector<std::string> before;
    for (int i = 0; i < 10000; ++i) before.push_back(p.pick(key(i)));
    p.add(10, 1);
    p.refresh();
    int moved = 0, moved_elsewhere = 0;
    for (int i = 0; i < 10000; ++i) {
      std::string now = p.pick(key(i));
      if (now != before[static_cast<size_t>(i)]) {
        ++moved;
        if (now != "h10") ++moved_elsewhere;
      }
    }
    const double ideal = 10000.0 / 11;
    MESSAGE("moved " << moved << " keys, ideal " << ideal);
    CHECK(moved > ideal * 0.9);
    CHECK(moved < ideal * 1.1);
    CHECK(moved_elsewhere == 0);
  }

  TEST_CASE("chash and maglev: an ineligible host's keys go elsewhere, the others' stay") {
    for (auto m : {shm::Method::chash, shm::Method::maglev}) {
      CAPTURE(static_cast<int>(m));
      Pool p(m, std::vector<uint32_t>(5, 1));
      int moved_other = 0;
      for (int i = 0; i < 2000; ++i) {
        std::string a = p.pick(key(i));
        std::string b = p.pick(
            key(i), [&](uint32_t h) { return h != 2; }, Pool::none);
        CHECK(b != "h2");
        if (a != "h2" && a != b) ++moved_other;
      }
      CHECK(moved_other == 0);
    }
  }

  TEST_CASE("maglev: with a heavy host out, its keys still stay on one host each, in every worker") {
    // h0 owns 998 of 1000 entries: the 32 entries after a key's are nearly
    // always all h0's. Its keys went to round robin: another host per
    // connection and per worker.
    Pool w1(shm::Method::maglev, {1000, 1, 1}), w2(shm::Method::maglev, {1000, 1, 1});
    w2.b = balance::Balancer{64, 7};  // another worker: another seed, its own round-robin state
    w2.refresh();
    auto out0 = [](uint32_t i) { return i != 0; };
    std::map<std::string, int> n;
    for (int i = 0; i < 2000; ++i) {
      const std::string a = w1.pick(key(i), out0, Pool::none);
      CHECK(a == w1.pick(key(i), out0, Pool::none));
      CHECK(a == w2.pick(key(i), out0, Pool::none));
      ++n[a];
    }
    CHECK(n.count("h0") == 0);
    CHECK(n["h1"] > 800);
    CHECK(n["h2"] > 800);
    // Only h2 eligible, then none: h2, then the next pool (none here).
    CHECK(w1.pick(
              "k", [](uint32_t i) { return i == 2; }, Pool::none) == "h2");
    CHECK(w1.pick(
              "k", [](uint32_t) { return false; }, Pool::none) == "-");
  }

  TEST_CASE("maglev: table shares follow the weights; max/mean load <= 1.05 over many keys") {
    Pool p(shm::Method::maglev, std::vector<uint32_t>(10, 1));
    std::map<std::string, int> n;
    for (int i = 0; i < 200000; ++i) ++n[p.pick(key(i))];
    int mx = 0;
    for (auto& [h, c] : n) mx = std::max(mx, c);
    double ratio = mx / (200000.0 / 10);
    MESSAGE("maglev max/mean " << ratio);
    CHECK(n.size() == 10);
    CHECK(ratio <= 1.05);

    balance::MaglevTable t;
    Pool w(shm::Method::maglev, {1, 3});
    std::vector<uint32_t> cands = {0, 1};
    t.build(w.t.hosts(), cands, 65537);
    int owned1 = 0;
    for (uint32_t e = 0; e < t.size(); ++e) owned1 += t.owner(e) == 1;
    CHECK(std::abs(owned1 - 65537 * 3 / 4) <= 2);
  }

  TEST_CASE("hash and crc32_mod are deterministic, spread keys, and respect weights (hash)") {
    Pool h(shm::Method::hash, {1, 3});
    std::map<std::string, int> n;
    for (int i = 0; i < 20000; ++i) ++n[h.pick(key(i))];
    CHECK(n["h1"] > n["h0"] * 2.5);
    CHECK(n["h1"] < n["h0"] * 3.5);
    Pool c(shm::Method::crc32_mod, {1, 1, 1});
    CHECK(c.pick("abc") == "h" + std::to_string(balance::crc32("abc") % 3));
    CHECK(c.pick(
              "abc", [](uint32_t i) { return i != balance::crc32("abc") % 3; }, Pool::none) ==
          "h" + std::to_string((balance::crc32("abc") + 1) % 3));
  }

  TEST_CASE("hash rehashes from the key's CRC32 exactly as nginx does from its text, at any length") {
    // nginx's ngx_http_upstream_get_hash_peer on the key's text: try n hashes
    // decimal(n) followed by the key. gw keeps only the key's CRC32 and length
    // (crc32_combine for the rehashes): the same picks, long keys included.
    const std::vector<uint32_t> weights = {1, 2, 3, 1, 5};
    Pool p(shm::Method::hash, weights);
    auto model = [&](const std::string& k, uint32_t refused) {
      uint64_t total = 0, acc = 0;
      for (uint32_t w : weights) total += w;
      for (unsigned n = 0; n <= 20; ++n) {
        const std::string text = (n ? std::to_string(n) : "") + k;
        acc += (balance::crc32(text) >> 16) & 0x7fff;
        uint64_t w = acc % total;
        for (uint32_t i = 0; i < weights.size(); ++i) {
          if (w < weights[i]) {
            if (!(refused >> i & 1)) return "h" + std::to_string(i);
            break;
          }
          w -= weights[i];
        }
      }
      return std::string("-");
    };
    for (size_t len : {1, 7, 64, 127, 128, 129, 300, 511, 512, 513, 4000}) {
      for (int i = 0; i < 20; ++i) {
        std::string k = std::to_string(i) + "/";
        while (k.size() < len) k += static_cast<char>('a' + (k.size() * 7 + static_cast<size_t>(i)) % 26);
        k.resize(len);
        for (uint32_t refused : {0u, 1u, 0b10110u, 0b11011u}) {
          CAPTURE(len);
          CAPTURE(refused);
          const std::string m = model(k, refused);
          if (m == "-") continue;  // 21 refusals: round robin, not the hash
          CHECK(p.pick(
                    k, [&](uint32_t h) { return !(refused >> h & 1); }, Pool::none) == m);
        }
      }
    }
  }

  TEST_CASE("a hash method without a key falls back to round robin and says so") {
    Pool p(shm::Method::chash, {1, 1});
    bool fb = false;
    std::string a = p.pick("", Pool::all, Pool::none, &fb);
    CHECK(fb);
    CHECK(a != "-");
    fb = false;
    p.pick("k", Pool::all, Pool::none, &fb);
    CHECK_FALSE(fb);
  }

  TEST_CASE("least_conn picks the fewest connections per weight; ties go round robin") {
    Pool p(shm::Method::least_conn, {1, 2, 1});
    std::vector<uint64_t> load = {3, 4, 5};  // per weight: 3, 2, 5
    auto l = [&](uint32_t i) { return load[i]; };
    CHECK(p.pick("", Pool::all, l) == "h1");
    load = {2, 4, 2};  // all equal per weight: smooth WRR over weights 1, 2, 1
    std::map<std::string, int> n;
    for (int i = 0; i < 400; ++i) ++n[p.pick("", Pool::all, l)];
    CHECK(n["h0"] == 100);
    CHECK(n["h1"] == 200);
    CHECK(n["h2"] == 100);
  }

  TEST_CASE("least_request (power of two choices) avoids the loaded host") {
    Pool p(shm::Method::least_request, {1, 1, 1, 1});
    auto l = [](uint32_t i) { return i == 0 ? uint64_t{100} : uint64_t{0}; };
    std::map<std::string, int> n;
    for (int i = 0; i < 4000; ++i) ++n[p.pick("", Pool::all, l)];
    // h0 wins only when both samples are h0-and-itself, which P2C never picks
    // over a less loaded host: it is chosen only when sampling found no other.
    CHECK(n["h0"] < 40);
    CHECK(n["h1"] > 1000);
  }

  TEST_CASE("least_request follows the weights when the loads tie (idle hosts)") {
    // Short requests leave every host at 0 in flight most of the time: the two
    // choices then tie, and the first one wins. Drawn uniformly, weights 1:3
    // split 50:50; drawn by weight, 1:3.
    Pool p(shm::Method::least_request, {1, 3, 0});
    std::map<std::string, int> n;
    for (int i = 0; i < 20000; ++i) ++n[p.pick("")];
    CHECK(n.count("h2") == 0);
    CHECK(n["h1"] / double(n["h0"]) == doctest::Approx(3.0).epsilon(0.1));
    // Busy hosts: the less loaded per weight still wins.
    auto l = [](uint32_t i) { return i == 1 ? uint64_t{30} : uint64_t{1}; };  // per weight: 1, 10
    n.clear();
    for (int i = 0; i < 2000; ++i) ++n[p.pick("", Pool::all, l)];
    CHECK(n["h0"] > 1900);
  }

  TEST_CASE("least_request and ewma still avoid the loaded host when most of the pool is out") {
    // The two choices are drawn over the whole pool (by weight for
    // least_request), 16 draws at most. With most of the pool's weight out,
    // the draws often found one usable host or none, which was then taken
    // (or round robin ran) whatever its load: a loaded host got about half.
    for (auto m : {shm::Method::least_request, shm::Method::ewma}) {
      CAPTURE(static_cast<int>(m));
      // The heavy host is out: the draws land on it 998 times in 1000.
      Pool heavy(m, {1000, 1, 1});
      auto out0 = [](uint32_t i) { return i != 0; };
      auto l = [](uint32_t i) { return i == 1 ? uint64_t{100} : uint64_t{0}; };
      std::map<std::string, int> n;
      for (int i = 0; i < 2000; ++i) ++n[heavy.pick("", out0, l)];
      CHECK(n.count("h0") == 0);
      CHECK(n["h1"] < 20);
      // 18 of 20 hosts out: two usable, one of them loaded.
      Pool many(m, std::vector<uint32_t>(20, 1));
      auto two = [](uint32_t i) { return i < 2; };
      auto l0 = [](uint32_t i) { return i == 0 ? uint64_t{100} : uint64_t{0}; };
      n.clear();
      for (int i = 0; i < 2000; ++i) ++n[many.pick("", two, l0)];
      CHECK(n["h0"] < 20);
      CHECK(n["h1"] + n["h0"] == 2000);
    }
  }

  TEST_CASE("random follows the weights") {
    Pool p(shm::Method::random, {1, 4});
    std::map<std::string, int> n;
    for (int i = 0; i < 50000; ++i) ++n[p.pick("")];
    CHECK(n["h1"] / double(n["h0"]) == doctest::Approx(4.0).epsilon(0.05));
    CHECK(p.pick(
              "", [](uint32_t) { return false; }, Pool::none) == "-");
  }
}

TEST_SUITE("balance") {
  TEST_CASE("the inline 4-byte crc32 equals zlib's") {
    uint32_t crc = balance::crc32("127.0.0.1");
    for (uint32_t v : {0u, 1u, 0xdeadbeefu, 0xffffffffu, 0x01020304u}) {
      const char le[4] = {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16),
                          static_cast<char>(v >> 24)};
      CHECK(balance::crc32_u32le(v, crc) == balance::crc32(std::string_view(le, 4), crc));
      CHECK(balance::crc32_u32le(v, 0) == balance::crc32(std::string_view(le, 4)));
    }
  }
}

TEST_SUITE("balance") {
  TEST_CASE("round robin with a shared ticket follows the weights over the pool, not per worker") {
    // Two balancers (two workers) over the same table, tickets from one counter.
    Pool w1(shm::Method::round_robin, {5, 3, 2});
    Pool w2(shm::Method::round_robin, {5, 3, 2});
    std::atomic<uint64_t> ticket{0};
    auto source = [](void* ctx, uint32_t) { return static_cast<std::atomic<uint64_t>*>(ctx); };
    w1.b.set_tickets(source, &ticket);
    w2.b.set_tickets(source, &ticket);
    std::map<std::string, int> n;
    balance::Rng coin(3);
    for (int i = 0; i < 10000; ++i) ++n[(coin.below(3) == 0 ? w1 : w2).pick("")];  // uneven split of traffic
    CHECK(n["h0"] == 5000);
    CHECK(n["h1"] == 3000);
    CHECK(n["h2"] == 2000);
  }

  TEST_CASE("the round-robin schedule is nginx's smooth sequence, reduced by the weights' gcd") {
    Pool p(shm::Method::round_robin, {10, 2, 2});
    std::vector<uint32_t> cands = {0, 1, 2};
    auto s = balance::RoundRobin::build_schedule(p.t.hosts(), cands);
    std::string seq;
    for (uint32_t i : s) seq += static_cast<char>('a' + i);
    CHECK(seq == "aabacaa");
    CHECK(balance::RoundRobin::build_schedule(p.t.hosts(), cands, 4).empty());  // too long: per-worker pick
  }
}

TEST_SUITE("balance") {
  TEST_CASE("chash with hash_balance_factor: no host carries more than factor x the mean") {
    Pool p(shm::Method::chash, std::vector<uint32_t>(10, 1), 125);
    std::vector<uint64_t> load(10, 0);
    for (int i = 0; i < 1000; ++i) {
      std::string h = p.pick(key(i), Pool::all, [&](uint32_t x) { return load[x]; });
      ++load[static_cast<size_t>(std::stoi(h.substr(1)))];
    }
    uint64_t mx = *std::max_element(load.begin(), load.end());
    MESSAGE("max load " << mx << " of 1000 keys over 10 hosts");
    CHECK(mx <= 125);
    // Without load the bound changes nothing: keys stay on their ketama host.
    Pool plain(shm::Method::chash, std::vector<uint32_t>(10, 1));
    for (int i = 0; i < 100; ++i) CHECK(p.pick(key(i)) == plain.pick(key(i)));
  }

  TEST_CASE("ewma: two choices, the lower latency x (active + 1) wins") {
    Pool p(shm::Method::ewma, {1, 1});
    std::vector<uint64_t> lat = {5000, 100};
    p.b.set_latency(
        [](void* ctx, const shm::HostRecord& h) { return (*static_cast<std::vector<uint64_t>*>(ctx))[h.slot]; }, &lat);
    std::map<std::string, int> n;
    for (int i = 0; i < 100; ++i) ++n[p.pick("", Pool::all, Pool::none)];
    CHECK(n["h1"] > 90);                      // h0 only when both samples fall on it... which P2C avoids with 2 hosts
    std::vector<uint64_t> active = {0, 100};  // h1 is fast but busy: 100 x 101 > 5000 x 1
    n.clear();
    for (int i = 0; i < 100; ++i) ++n[p.pick("", Pool::all, [&](uint32_t x) { return active[x]; })];
    CHECK(n["h0"] > 90);
  }
}

TEST_SUITE("balance") {
  TEST_CASE("shared tickets that only land on an ineligible host still find the eligible one") {
    Pool p(shm::Method::round_robin, {1, 1});
    std::vector<uint32_t> schedule = {0, 1};
    balance::RoundRobin rr(64);
    balance::Rng rng(1);
    // Other workers take every ticket of host h1: this worker only draws h0's, which is down.
    auto only_h1 = [](uint32_t i) { return i == 1; };
    CHECK(rr.pick_scheduled(
              p.t.hosts(), schedule, [] { return uint64_t{0}; }, only_h1, rng, 6) == -1);
    // The balancer then picks from the pool's eligible hosts itself.
    CHECK(p.pick("", only_h1, Pool::none) == "h1");
  }

  TEST_CASE("round robin over a pool that is mostly or all down costs a pass over its hosts, not its cycle") {
    // Weights near 1000 make a smooth WRR cycle of ~2,000 positions; only the
    // weight-1 host is up (a primary pool failing over). The old walk drew a
    // shared ticket per position, up to the whole cycle, per pick.
    Pool p(shm::Method::round_robin, {1000, 999, 1});
    size_t calls = 0;
    auto only_h2 = [&](uint32_t i) {
      ++calls;
      return i == 2;
    };
    for (int i = 0; i < 100; ++i) CHECK(p.pick("", only_h2, Pool::none) == "h2");
    CHECK(calls <= 100 * 20);
    calls = 0;
    auto none_up = [&](uint32_t) {
      ++calls;
      return false;
    };
    for (int i = 0; i < 100; ++i) CHECK(p.pick("", none_up, Pool::none) == "-");
    CHECK(calls <= 100 * 20);
  }

  TEST_CASE("chash bounded loads: a host's limit follows its weight; none eligible gives up at once") {
    // factor 125%, weights 3:1, 7 connections open 6:1 plus the new one: the
    // mean-based limit (ceil(8 x 1.25 / 2) = 5) would refuse the weight-3 host
    // at 6; its weighted share (ceil(8 x 1.25 x 3/4) = 8) takes it.
    Pool p(shm::Method::chash, {3, 1}, 125);
    std::map<uint32_t, uint64_t> load{{0, 6}, {1, 1}};
    auto loads = [&](uint32_t i) { return load[i]; };
    int to_h0 = 0;
    for (int i = 0; i < 200; ++i) to_h0 += p.pick(key(i), Pool::all, loads) == "h0";
    CHECK(to_h0 > 100);  // h0 still takes its own keys (3/4 of the ring)
    size_t calls = 0;
    auto none_up = [&](uint32_t) {
      ++calls;
      return false;
    };
    CHECK(p.pick("k", none_up, loads) == "-");
    CHECK(calls < 10);  // (the old walk went round the whole ring, 160 points per weight unit)
  }

  TEST_CASE("rebuild keeps the rings and schedules of pools whose hosts did not change") {
    shm::Table t{{1, 2, 64}};
    shm::UpstreamRecord r{};
    shm::set_name(r.name, "app");
    t.add_upstream(r);
    t.add_pool(0, "a", 0, shm::Method::chash);
    t.add_pool(0, "b", 1, shm::Method::round_robin);
    for (int i = 0; i < 6; ++i) {
      core::SockAddr a;
      std::string why;
      core::parse_address("127.0.0.1:" + std::to_string(9100 + i), a, why);
      const int h = t.add_host(i < 3 ? 0 : 1, "h" + std::to_string(i), a, 100);
      t.hosts()[static_cast<size_t>(h)].slot = static_cast<uint32_t>(h);
      t.hosts()[static_cast<size_t>(h)].tag = static_cast<uint32_t>(h) + 1;
    }
    balance::Snapshot snap;
    balance::Balancer b{64, 1};
    snap.build(t);
    b.rebuild(snap);
    CHECK(b.last_rebuilt() == 2);
    std::vector<int> before;
    for (int i = 0; i < 200; ++i) before.push_back(b.pick(snap, snap.upstreams()[0], key(i), Pool::all, Pool::none));
    // An admin down (eligibility, not structure): nothing is rebuilt.
    t.hosts()[4].admin_down = 1;
    snap.build(t);
    b.rebuild(snap);
    CHECK(b.last_rebuilt() == 0);
    // A weight in pool b: only b. Pool a's ring still maps every key the same.
    t.hosts()[4].weight = 7;
    snap.build(t);
    b.rebuild(snap);
    CHECK(b.last_rebuilt() == 1);
    for (int i = 0; i < 200; ++i)
      CHECK(b.pick(snap, snap.upstreams()[0], key(i), Pool::all, Pool::none) == before[static_cast<size_t>(i)]);
    // A host added to pool a: a is rebuilt (and b, whose hosts' positions moved
    // only if the table renumbered them).
    core::SockAddr a;
    std::string why;
    core::parse_address("127.0.0.1:9200", a, why);
    const int h = t.add_host(0, "h9", a, 100);
    t.hosts()[static_cast<size_t>(h)].slot = static_cast<uint32_t>(h);
    t.hosts()[static_cast<size_t>(h)].tag = 99;
    snap.build(t);
    b.rebuild(snap);
    CHECK(b.last_rebuilt() >= 1);
    int moved = 0;
    for (int i = 0; i < 200; ++i)
      moved += b.pick(snap, snap.upstreams()[0], key(i), Pool::all, Pool::none) != before[static_cast<size_t>(i)];
    CHECK(moved > 0);  // the new host took its share
  }

  TEST_CASE("crc32_mod never picks a weight-0 (draining) host") {
    Pool p(shm::Method::crc32_mod, {0, 1});
    for (int i = 0; i < 100; ++i) CHECK(p.pick(key(i)) == "h1");
  }
}

TEST_SUITE("balance") {
  TEST_CASE("no method allocates to pick: keys, refusals, failover and fallbacks included") {
    for (int m = 0; m < shm::kMethodCount; ++m) {
      const auto method = static_cast<shm::Method>(m);
      CAPTURE(shm::method_name(method));
      Pool p(method, {3, 1, 2, 1000, 7, 0});
      auto load = [](uint32_t h) { return uint64_t{h * 7u % 5u}; };
      p.b.pick(p.snap, p.snap.upstreams()[0], "k", Pool::all, load);  // first use
      const uint64_t before = gw::testing::allocations();
      int found = 0;
      for (int i = 0; i < 1000; ++i) {
        const char k[3] = {static_cast<char>('a' + i % 26), static_cast<char>('a' + i / 26 % 26), 0};
        // A third of the hosts out, changing with i; every 10th pick has no key.
        auto eligible = [i](uint32_t h) { return (h + static_cast<uint32_t>(i)) % 3 != 0; };
        found += p.b.pick(p.snap, p.snap.upstreams()[0], std::string_view(k, i % 10 ? 2 : 0), eligible, load) >= 0;
      }
      const uint64_t allocated = gw::testing::allocations() - before;
      CHECK(allocated == 0);
      CHECK(found == 1000);
    }
  }

  TEST_CASE("rebuild after random table changes answers as a balancer built afresh") {
    // Hosts and pools come and go (slots reused), weights and methods change:
    // the rings, tables and schedules kept by rebuild() must be those a new
    // balancer builds, and no pick may name a host that is gone, out or of
    // weight 0.
    shm::Table t{{1, 8, 256}};
    shm::UpstreamRecord r{};
    shm::set_name(r.name, "app");
    t.add_upstream(r);
    std::mt19937 rng(11);
    uint32_t next_tag = 1, next_slot = 0, next_id = 0;
    std::vector<uint32_t> free_slots;
    auto method = [&] { return static_cast<shm::Method>(rng() % shm::kMethodCount); };
    auto remove_host = [&](size_t h) {
      free_slots.push_back(t.hosts()[h].slot);
      t.remove_host(static_cast<int>(h));
    };
    balance::Snapshot snap;
    balance::Balancer kept{256, 1};
    size_t invalid = 0, differ = 0, compared = 0;
    for (int step = 0; step < 400; ++step) {
      const uint32_t op = rng() % 10;
      if (op == 0 && t.pools().size() < 8) {
        t.add_pool(0, "p" + std::to_string(next_id++), static_cast<int32_t>(rng() % 3), method());
      } else if (op <= 4 && !t.pools().empty() && t.hosts().size() < 200) {
        core::SockAddr a;
        std::string why;
        REQUIRE(core::parse_address(
            "127.0.0." + std::to_string(1 + rng() % 5) + ":" + std::to_string(8000 + rng() % 40), a, why));
        const int h =
            t.add_host(static_cast<int>(rng() % t.pools().size()), "h" + std::to_string(next_id++), a, rng() % 5);
        uint32_t slot = next_slot;
        if (!free_slots.empty() && rng() % 2) {
          slot = free_slots.back();
          free_slots.pop_back();
        } else {
          ++next_slot;
        }
        t.hosts()[static_cast<size_t>(h)].slot = slot;
        t.hosts()[static_cast<size_t>(h)].tag = next_tag++;
      } else if (op == 5 && !t.hosts().empty()) {
        remove_host(rng() % t.hosts().size());
      } else if (op == 6 && !t.hosts().empty()) {
        t.hosts()[rng() % t.hosts().size()].weight = rng() % 5;
      } else if (op == 7 && !t.pools().empty()) {
        t.pools()[rng() % t.pools().size()].method = static_cast<uint8_t>(method());
      } else if (op == 8 && t.pools().size() > 1 && rng() % 4 == 0) {
        const size_t p = rng() % t.pools().size();
        for (size_t h = t.hosts().size(); h-- > 0;)
          if (t.hosts()[h].pool == p) remove_host(h);
        t.remove_pool(static_cast<int>(p));
      }
      snap.build(t);
      kept.rebuild(snap);
      balance::Balancer fresh{256, 1};
      fresh.rebuild(snap);
      auto hosts = t.hosts();
      const uint32_t mask = static_cast<uint32_t>(rng());
      auto some = [&](uint32_t i) { return (mask >> (i % 32) & 1) != 0; };
      // The pool all hosts up would pick from: only a hash method's answer is
      // the same in two balancers (round robin's depends on its past picks).
      bool hashed = false;
      for (const balance::PoolView& pv : snap.pools(snap.upstreams()[0])) {
        bool weighted = false;
        for (uint32_t i : snap.hosts(pv)) weighted |= hosts[i].weight != 0;
        if (!weighted) continue;
        hashed = shm::method_uses_key(pv.method);
        break;
      }
      for (int k = 0; k < 50; ++k) {
        const std::string key = "k" + std::to_string(k);
        const int h = kept.pick(snap, snap.upstreams()[0], key, some, Pool::none);
        invalid += h >= 0 && (static_cast<size_t>(h) >= hosts.size() || !some(static_cast<uint32_t>(h)) ||
                              hosts[static_cast<size_t>(h)].weight == 0);
        if (!hashed) continue;
        ++compared;
        differ += kept.pick(snap, snap.upstreams()[0], key, Pool::all, Pool::none) !=
                  fresh.pick(snap, snap.upstreams()[0], key, Pool::all, Pool::none);
      }
    }
    CHECK(compared > 2000);
    CHECK(invalid == 0);
    CHECK(differ == 0);
  }
}

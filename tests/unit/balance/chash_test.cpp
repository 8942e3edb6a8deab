// The ketama ring against a plain model of nginx's ngx_http_upstream_init_chash:
// points from zlib's crc32 over "HOST\0PORT" + the previous point's 4 bytes,
// a stable sort, the first of equal hashes kept, and a binary search. Over
// kChashMaxPoints the model takes each host's point count from points_for();
// its own tests pin that count.

#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "gw/balance/chash.hpp"
#include "gw/core/address.hpp"

using namespace gw;

namespace {

shm::HostRecord host(const std::string& address, uint32_t weight) {
  shm::HostRecord h{};
  std::string why;
  REQUIRE(core::parse_address(address, h.addr, why));
  h.weight = weight;
  return h;
}

// n hosts 10.x.y.z:port with the weights given (cycled).
std::vector<shm::HostRecord> hosts(size_t n, std::vector<uint32_t> weights, uint16_t port = 8080) {
  std::vector<shm::HostRecord> out;
  for (size_t i = 0; i < n; ++i)
    out.push_back(host("10." + std::to_string(i >> 16) + "." + std::to_string((i >> 8) & 255) + "." +
                           std::to_string(i & 255) + ":" + std::to_string(port),
                       weights[i % weights.size()]));
  return out;
}

std::vector<uint32_t> all(size_t n) {
  std::vector<uint32_t> c(n);
  for (size_t i = 0; i < n; ++i) c[i] = static_cast<uint32_t>(i);
  return c;
}

// nginx, literally (zlib for every CRC, std::stable_sort for glibc's merge sort).
std::vector<balance::ChashPoint> model(const std::vector<shm::HostRecord>& hs, const std::vector<uint32_t>& cands,
                                       size_t* dropped = nullptr) {
  std::vector<balance::ChashPoint> pts;
  uint64_t total_weight = 0;
  size_t weighted = 0;
  for (uint32_t i : cands) total_weight += hs[i].weight, weighted += hs[i].weight != 0;
  for (uint32_t i : cands) {
    std::string server = hs[i].addr.to_string();
    size_t colon = server.rfind(':');
    std::string seed = server.substr(0, colon) + '\0' + server.substr(colon + 1);
    uint32_t prev = 0;
    const uint32_t count = balance::ChashRing::points_for(hs[i].weight, total_weight, weighted);
    if (total_weight * 160 <= balance::kChashMaxPoints) REQUIRE(count == hs[i].weight * 160);  // nginx's
    for (uint32_t j = 0; j < count; ++j) {
      const char le[4] = {static_cast<char>(prev), static_cast<char>(prev >> 8), static_cast<char>(prev >> 16),
                          static_cast<char>(prev >> 24)};
      prev = balance::crc32(seed + std::string(le, 4));
      pts.push_back({prev, i});
    }
  }
  std::stable_sort(pts.begin(), pts.end(), [](auto& a, auto& b) { return a.hash < b.hash; });
  size_t before = pts.size();
  pts.erase(std::unique(pts.begin(), pts.end(), [](auto& a, auto& b) { return a.hash == b.hash; }), pts.end());
  if (dropped) *dropped = before - pts.size();
  return pts;
}

size_t model_find(const std::vector<balance::ChashPoint>& pts, uint32_t h) {
  return static_cast<size_t>(
      std::lower_bound(pts.begin(), pts.end(), h, [](auto& p, uint32_t x) { return p.hash < x; }) - pts.begin());
}

// The ring holds exactly the model's points, and find() agrees with a binary
// search for the points themselves, their neighbours, the ends and random hashes.
void check_ring(const balance::ChashRing& ring, const std::vector<balance::ChashPoint>& pts) {
  REQUIRE(ring.size() == pts.size());
  size_t bad = 0;
  for (size_t i = 0; i < pts.size(); ++i) {
    auto p = ring.at(i);
    bad += p.hash != pts[i].hash || p.host != pts[i].host;
  }
  CHECK(bad == 0);
  if (pts.empty()) return;
  std::vector<uint32_t> probes = {0u, 1u, 0x7fffffffu, 0x80000000u, 0xfffffffeu, 0xffffffffu};
  for (size_t i = 0; i < pts.size(); i += 1 + pts.size() / 5000)
    for (uint32_t d : {0u, 1u, 0xffffffffu}) probes.push_back(pts[i].hash + d);
  probes.push_back(pts.front().hash);
  probes.push_back(pts.back().hash);
  probes.push_back(pts.back().hash + 1);
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) probes.push_back(static_cast<uint32_t>(rng()));
  size_t wrong = 0;
  for (uint32_t h : probes) wrong += ring.find(h) != model_find(pts, h);
  CHECK(wrong == 0);
}

}  // namespace

TEST_SUITE("balance") {
  TEST_CASE("chash_base of an address equals chash_base of its text") {
    std::vector<std::string> texts = {"[::1]:8081", "[2001:db8::1]:1"};
    for (unsigned a : {0u, 1u, 9u, 10u, 99u, 100u, 199u, 255u})
      for (unsigned port : {1u, 9u, 10u, 80u, 999u, 8080u, 65535u})
        texts.push_back(std::to_string(a) + "." + std::to_string(255 - a) + "." + std::to_string(a / 2) + "." +
                        std::to_string(a % 10) + ":" + std::to_string(port));
    for (const auto& text : texts) {
      core::SockAddr addr;
      std::string why;
      REQUIRE(core::parse_address(text, addr, why));
      CHECK(addr.to_string() == text);
      CHECK(balance::chash_base(addr) == balance::chash_base(text));
    }
  }

  TEST_CASE("chash_crc32 equals zlib's crc32 at every length and alignment") {
    std::string buf(1100, '\0');
    std::mt19937 rng(1);
    for (char& c : buf) c = static_cast<char>(rng());
    std::vector<size_t> lens;
    for (size_t len = 0; len <= 80; ++len) lens.push_back(len);
    for (size_t len : {100, 255, 256, 511, 512, 513, 1000, 1090}) lens.push_back(len);
    for (size_t off = 0; off < 8; ++off)
      for (size_t len : lens) {
        std::string_view s(buf.data() + off, len);
        if (balance::chash_crc32(s) != balance::crc32(s)) FAIL("length " << len << " offset " << off);
      }
    CHECK(balance::chash_crc32("123456789") == 0xcbf43926u);  // the CRC-32 check value
  }

  TEST_CASE("chash ring: the same points, hosts and lookups as nginx's") {
    struct Case {
      const char* name;
      std::vector<shm::HostRecord> hs;
      std::vector<uint32_t> cands;
    };
    std::vector<Case> cases;
    cases.push_back({"one host", hosts(1, {1}), all(1)});
    cases.push_back({"weights 1, 2, 3, 0", hosts(10, {1, 2, 3, 0}), all(10)});
    cases.push_back({"1,000 hosts", hosts(1000, {1}), all(1000)});
    cases.push_back({"1,000 hosts, weights 1, 2, 3", hosts(1000, {1, 2, 3}), all(1000)});
    {
      auto hs = hosts(50, {1, 5});
      std::vector<uint32_t> cands;  // a subset, out of order
      for (uint32_t i = 49; i >= 7; i -= 7) cands.push_back(i);
      cands.push_back(0);
      cases.push_back({"candidates out of order", hs, cands});
    }
    {
      std::vector<shm::HostRecord> hs = {host("[::1]:8081", 2), host("[2001:db8::7]:80", 1), host("127.0.0.1:8081", 3)};
      cases.push_back({"IPv6", hs, all(3)});
    }
    {
      // The same address twice: every point of the second is a duplicate, and
      // nginx keeps the first's.
      std::vector<shm::HostRecord> hs = {host("127.0.0.1:1", 1), host("127.0.0.1:2", 2), host("127.0.0.1:1", 3)};
      cases.push_back({"a repeated address", hs, all(3)});
      cases.push_back({"a repeated address, reversed", hs, {2, 1, 0}});
    }
    cases.push_back({"all weights 0", hosts(3, {0}), all(3)});
    cases.push_back({"no candidates", hosts(3, {1}), {}});
    // More than 2^19 points: a prefix index wider than 16 bits.
    cases.push_back({"4 hosts of weight 1000", hosts(4, {1000}), all(4)});
    // Total weight 6,553: 1,048,480 points, the most under kChashMaxPoints,
    // so still nginx's ring.
    cases.push_back({"at the bound", hosts(7, {1000, 1000, 1000, 1000, 1000, 1000, 553}), all(7)});
    // Over it: scaled down, chains of any length (not multiples of 160), a
    // light host on its floor of points.
    cases.push_back({"over the bound", hosts(9, {1000, 1, 777, 1000, 0, 1000, 1000, 1000, 1000}), all(9)});

    balance::ChashRing ring;  // one ring rebuilt again and again, big and small
    for (int round = 0; round < 2; ++round)
      for (const Case& c : cases) {
        CAPTURE(c.name);
        size_t dropped = 0;
        auto pts = model(c.hs, c.cands, &dropped);
        // Equal hashes of different hosts: 160 x the lighter for a repeated
        // address; by chance about n^2 / 2^33 for n points.
        if (std::string_view(c.name).starts_with("a repeated address")) CHECK(dropped == 160);
        if (std::string_view(c.name) == "1,000 hosts, weights 1, 2, 3") CHECK(dropped > 0);
        ring.build(c.hs, c.cands);
        CHECK(ring.empty() == pts.empty());
        check_ring(ring, pts);
        balance::ChashRing fresh;
        fresh.build(c.hs, c.cands);
        check_ring(fresh, pts);
      }
  }

  TEST_CASE("chash points_for: nginx's 160 per unit of weight up to the bound, then in proportion") {
    using balance::ChashRing;
    constexpr uint64_t kMax = balance::kChashMaxPoints;
    CHECK(ChashRing::points_for(0, 10, 2) == 0);
    CHECK(ChashRing::points_for(1, 1, 1) == 160);
    CHECK(ChashRing::points_for(1000, 6553, 7) == 160000);  // 1,048,480 points in all
    CHECK(ChashRing::points_for(553, 6553, 7) == 88480);
    // One unit more: every host scaled by 2^20 / (6,554 x 160).
    CHECK(ChashRing::points_for(1000, 6554, 7) == 1000 * kMax / 6554);
    CHECK(ChashRing::points_for(1000, 6554, 7) < 160000);
    // 4,096 hosts of weight 1,000: 256 points each (nginx: 160,000).
    CHECK(ChashRing::points_for(1000, 4096000, 4096) == 256);
    // A light host keeps a few points: 8, or fewer when 8 per host would not fit.
    CHECK(ChashRing::points_for(1, 4096000, 4096) == 8);
    CHECK(ChashRing::points_for(1, uint64_t{1000} << 20, size_t{1} << 17) == 4);
    CHECK(ChashRing::points_for(1, uint64_t{1000} << 20, size_t{1} << 20) == 1);
    // No overflow at the extremes.
    CHECK(ChashRing::points_for(UINT32_MAX, UINT32_MAX, 1) == kMax);
    CHECK(ChashRing::points_for(1000, uint64_t{1000} << 40, size_t{1} << 40) == 1);
  }

  TEST_CASE("chash ring over the bound: at most kChashMaxPoints, keys still by weight") {
    // 4,096 hosts of weights 1000, 500, 250, 100 (cycled): 287M points as
    // nginx builds them; scaled down, 2^20 at most.
    const std::vector<uint32_t> weights = {1000, 500, 250, 100};
    auto hs = hosts(4096, weights);
    auto cands = all(4096);
    balance::ChashRing ring;
    ring.build(hs, cands);
    CHECK(ring.size() <= balance::kChashMaxPoints);
    CHECK(ring.size() > balance::kChashMaxPoints - 4096 - 1000);  // rounding down, and a few duplicates
    std::vector<size_t> points_of(hs.size());
    for (size_t i = 0; i < ring.size(); ++i) ++points_of[ring.at(i).host];
    CHECK(std::count(points_of.begin(), points_of.end(), 0) == 0);

    // 400,000 keys: each weight class's share of them within 3% of its weight's.
    constexpr size_t kKeys = 400000;
    std::vector<size_t> keys_of(weights.size());
    auto yes = [](uint32_t) { return true; };
    for (size_t k = 0; k < kKeys; ++k) {
      const int h = ring.pick("key-" + std::to_string(k), yes);
      REQUIRE(h >= 0);
      ++keys_of[static_cast<size_t>(h) % weights.size()];
    }
    const double total_weight = 1850;
    for (size_t w = 0; w < weights.size(); ++w) {
      CAPTURE(weights[w]);
      const double expect = kKeys * (weights[w] / total_weight);
      CHECK(static_cast<double>(keys_of[w]) > expect * 0.97);
      CHECK(static_cast<double>(keys_of[w]) < expect * 1.03);
    }

    // The same pool at weight 1: 655,360 points, under the bound, so nginx's
    // ring (the model checks it point by point above; here its size).
    auto light = hosts(4096, {1});
    ring.build(light, cands);
    CHECK(ring.size() > 655360 - 100);
    CHECK(ring.size() <= 655360);
  }

  TEST_CASE("chash pick: the key's point, then the next ones, wrapping round") {
    auto hs = hosts(20, {1, 2});
    auto cands = all(20);
    auto pts = model(hs, cands);
    balance::ChashRing ring;
    ring.build(hs, cands);
    auto yes = [](uint32_t) { return true; };
    for (int k = 0; k < 2000; ++k) {
      std::string key = "key-" + std::to_string(k);
      size_t i = model_find(pts, balance::crc32(key)) % pts.size();
      REQUIRE(ring.pick(key, yes) == static_cast<int>(pts[i].host));
      // The owner refuses: the next point's host that is not it, as nginx walks on.
      const uint32_t owner = pts[i].host;
      size_t j = i, tries = 0;
      while (pts[j].host == owner) j = (j + 1) % pts.size(), ++tries;
      int expect = tries < 21 ? static_cast<int>(pts[j].host) : -1;  // the owner plus 20 more points, as nginx
      REQUIRE(ring.pick(key, [&](uint32_t h) { return h != owner; }) == expect);
    }
    // Past the last point the ring wraps to the first.
    std::string key;
    for (int k = 0;; ++k) {
      key = "wrap-" + std::to_string(k);
      if (balance::crc32(key) > pts.back().hash) break;
    }
    CHECK(ring.find(balance::crc32(key)) == ring.size());
    CHECK(ring.pick(key, yes) == static_cast<int>(pts.front().host));
    // No eligible host: -1 after max_tries, including a walk round the whole ring.
    CHECK(ring.pick("k", [](uint32_t) { return false; }) == -1);
    CHECK(ring.pick(
              "k", [](uint32_t) { return false; }, ring.size() * 2) == -1);
    // Only one eligible host, far along: found when the walk covers the ring.
    CHECK(ring.pick(
              "k", [](uint32_t h) { return h == 13; }, ring.size()) == 13);

    balance::ChashRing none;
    CHECK(none.pick("k", yes) == -1);
    none.build(hs, {});
    CHECK(none.pick("k", yes) == -1);
  }
}

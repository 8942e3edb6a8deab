#include <doctest/doctest.h>
#include <fmt/format.h>

#include <string>

#include "../test_util.hpp"
#include "gw/balance/chash.hpp"
#include "gw/cluster/etcd.hpp"
#include "gw/cluster/reconcile.hpp"
#include "gw/cluster/schema.hpp"
#include "gw/config/config.hpp"
#include "gw/core/clock.hpp"
#include "gw/shm/runtime.hpp"

using namespace gw::cluster;
using namespace std::string_literals;

namespace {

gw::core::SockAddr addr(const char* s) {
  gw::core::SockAddr a;
  std::string why;
  REQUIRE(gw::core::parse_address(s, a, why));
  return a;
}

// A table with upstream "app" (pools primary: a, b; backup: c) and "other" (pool p: x).
gw::shm::Table sample() {
  gw::shm::Table t({4, 8, 16});
  gw::shm::UpstreamRecord u{};
  gw::shm::set_name(u.name, "app");
  int ui = t.add_upstream(u);
  int p = t.add_pool(ui, "primary", 0, gw::shm::Method::round_robin);
  int b = t.add_pool(ui, "backup", 1, gw::shm::Method::round_robin);
  t.add_host(p, "a", addr("127.0.0.1:1001"), 1);
  t.add_host(p, "b", addr("127.0.0.1:1002"), 2);
  t.add_host(b, "c", addr("127.0.0.1:1003"), 1);
  gw::shm::set_name(u.name, "other");
  int oi = t.add_upstream(u);
  t.add_host(t.add_pool(oi, "p", 0, gw::shm::Method::chash), "x", addr("127.0.0.1:2001"), 1);
  uint32_t tag = 1;
  for (auto& h : t.hosts()) h.slot = tag - 1, h.tag = tag++;
  return t;
}

std::map<std::string, std::string> kv_of(const gw::shm::Table& t, const std::string& up) {
  std::map<std::string, std::string> kv;
  int ui = t.find_upstream(up);
  kv[upstream_key("/gw/", up)] = "{}";
  for (size_t pi = 0; pi < t.pools().size(); ++pi) {
    const auto& pr = t.pools()[pi];
    if (pr.upstream != ui) continue;
    std::string pid(gw::shm::name_of(pr.id));
    kv[pool_key("/gw/", up, pid)] = encode_pool({pr.priority, static_cast<gw::shm::Method>(pr.method)});
    for (int hi : t.pool_hosts(static_cast<int>(pi))) {
      const auto& h = t.hosts()[static_cast<size_t>(hi)];
      kv[host_key("/gw/", up, pid, gw::shm::name_of(h.id))] = encode_host({h.addr, h.weight, h.admin_down != 0});
    }
  }
  return kv;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  for (const auto& x : v)
    if (x == s) return true;
  return false;
}

}  // namespace

TEST_SUITE("cluster") {
  TEST_CASE("key schema: encode, parse, prefix end") {
    CHECK(upstream_key("/gw/", "app") == "/gw/upstreams/app");
    CHECK(pool_key("/gw/", "app", "primary") == "/gw/upstreams/app/pools/primary");
    CHECK(host_key("/gw/", "app", "primary", "a") == "/gw/upstreams/app/pools/primary/hosts/a");
    CHECK(hosts_prefix("/gw/", "app", "primary") == "/gw/upstreams/app/pools/primary/hosts/");
    CHECK(prefix_end("/gw/") == "/gw0");
    CHECK(prefix_end(std::string("a\xff", 2)) == "b");
    CHECK(prefix_end(std::string("\xff", 1)) == std::string(1, '\0'));
    Key k;
    std::string why;
    REQUIRE(parse_key("/gw/", "/gw/upstreams/app/pools/primary/hosts/a:1", k, why));
    CHECK(k.kind == KeyKind::host);
    CHECK((k.upstream == "app" && k.pool == "primary" && k.host == "a:1"));
    REQUIRE(parse_key("/gw/", "/gw/upstreams/app/pools/p", k, why));
    CHECK((k.kind == KeyKind::pool && k.pool == "p"));
    REQUIRE(parse_key("/gw/", "/gw/upstreams/app", k, why));
    CHECK(k.kind == KeyKind::upstream);
    for (const char* bad : {"/gw/upstreams", "/gw/upstreams/app/pools", "/gw/upstreams/app/x/p",
                            "/gw/upstreams/app/pools/p/hosts", "/gw/upstreams/app/pools/p/hosts/h/x",
                            "/gw/upstreams//pools/p", "/gw/upstreams/a b", "/gw/other/app", "/other/upstreams/app",
                            // no name is `.` or `..` (gwctl and the admin API refuse them: no URL path names them)
                            "/gw/upstreams/..", "/gw/upstreams/app/pools/.", "/gw/upstreams/app/pools/p/hosts/.."}) {
      CAPTURE(bad);
      CHECK_FALSE(parse_key("/gw/", bad, k, why));
      CHECK_FALSE(why.empty());
    }
  }

  TEST_CASE("values: encode, decode, strict errors") {
    HostSpec h{addr("127.0.0.1:8081"), 7, true}, back;
    std::string why;
    REQUIRE(decode_host(encode_host(h), back, why));
    CHECK(back == h);
    REQUIRE(decode_host(R"({"address": "[::1]:80"})", back, why));
    CHECK((back.weight == 1 && !back.down));
    CHECK_FALSE(decode_host(R"({"weight": 1})", back, why));
    CHECK(why == "address: missing required key");
    CHECK_FALSE(decode_host(R"({"address": "127.0.0.1:8081", "weight": 1001})", back, why));
    CHECK(why.rfind("weight:", 0) == 0);
    CHECK_FALSE(decode_host(R"({"address": "127.0.0.1:99999"})", back, why));
    CHECK_FALSE(decode_host(R"({"address": "0.0.0.0:8081"})", back, why));
    CHECK(why.starts_with("address: bad address \"0.0.0.0:8081\": the unspecified address is not a host"));
    CHECK_FALSE(decode_host(R"({"address": "127.0.0.1:1", "colour": 1})", back, why));
    CHECK(why == "colour: unknown key");
    CHECK_FALSE(decode_host(R"({"address": "127.0.0.1:1", "address": "127.0.0.1:2"})", back, why));
    CHECK_FALSE(decode_host("[1]", back, why));
    CHECK_FALSE(decode_host("{", back, why));
    CHECK_FALSE(decode_host(R"({"address": "127.0.0.1:1", "weight": 1,})", back, why));
    CHECK(why == "invalid JSON at line 1, column 39: a trailing comma: JSON has none before '}'");
    PoolSpec p{-5, gw::shm::Method::maglev}, pb;
    REQUIRE(decode_pool(encode_pool(p), pb, why));
    CHECK(pb == p);
    REQUIRE(decode_pool("{}", pb, why));
    CHECK(pb == PoolSpec{});
    CHECK_FALSE(decode_pool(R"({"method": "bogus"})", pb, why));
    CHECK_FALSE(decode_pool(R"({"priority": "1"})", pb, why));
    CHECK(decode_upstream("{}", why));  // gwctl --etcd checks an upstream key with the nodes' decoder
    CHECK_FALSE(decode_upstream(R"({"retries": 1})", why));
    CHECK(why == "retries: unknown key");
    CHECK_FALSE(decode_upstream("[]", why));
  }

  TEST_CASE("model: orphans and bad values are left out with a warning") {
    std::map<std::string, std::string> kv = {
        {"/gw/upstreams/app", "{}"},
        {"/gw/upstreams/app/pools/p", R"({"priority": 1})"},
        {"/gw/upstreams/app/pools/p/hosts/a", R"({"address": "127.0.0.1:1"})"},
        {"/gw/upstreams/app/pools/p/hosts/bad", R"({"address": "nope"})"},
        {"/gw/upstreams/app/pools/gone/hosts/b", R"({"address": "127.0.0.1:2"})"},
        {"/gw/upstreams/ghost/pools/q", "{}"},
        {"/gw/junk", "x"},
    };
    std::vector<std::string> warnings;
    Model m = build_model("/gw/", kv, warnings);
    CHECK(m.upstreams.size() == 1);
    CHECK(m.pools.size() == 1);
    CHECK(m.hosts.size() == 1);
    CHECK(m.pools.at({"app", "p"}).priority == 1);
    CHECK(m.held_hosts.count({"app", "p", "bad"}) == 1);  // present, value unreadable: held
    CHECK(warnings.size() == 4);
  }

  TEST_CASE("model: an upstream key whose value does not parse is one warning, not one per pool and host") {
    // Its pools and hosts were each said to lack their upstream key or pool
    // key, which etcd holds: a line per host, each of them false.
    std::map<std::string, std::string> kv = {
        {"/gw/upstreams/app", R"({"future": 1})"},
        {"/gw/upstreams/app/pools/p", R"({"priority": 1})"},
        {"/gw/upstreams/app/pools/p/hosts/a", R"({"address": "127.0.0.1:1"})"},
        {"/gw/upstreams/app/pools/p/hosts/b", R"({"address": "127.0.0.1:2"})"},
        {"/gw/upstreams/app/pools/q", "{"},
        {"/gw/upstreams/app/pools/q/hosts/c", R"({"address": "127.0.0.1:3"})"},
    };
    std::vector<std::string> warnings;
    Model m = build_model("/gw/", kv, warnings);
    CHECK((m.upstreams.empty() && m.pools.empty() && m.hosts.empty()));
    CHECK((m.held_pools.empty() && m.held_hosts.empty()));
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0] ==
          "etcd key /gw/upstreams/app not applied: future: unknown key; the node keeps the upstream's pools and "
          "hosts as it has them");
    CHECK(m.held_upstreams == std::set<std::string>{"app"});  // (the sync process shows why in the status)
  }

  TEST_CASE("model: only_upstream keeps one upstream's keys, pools, hosts and held keys") {
    std::map<std::string, std::string> kv = {
        {"/gw/upstreams/app", "{}"},
        {"/gw/upstreams/app/pools/p", R"({"priority": 1})"},
        {"/gw/upstreams/app/pools/p/hosts/a", R"({"address": "127.0.0.1:1"})"},
        {"/gw/upstreams/app/pools/p/hosts/bad", "{"},
        {"/gw/upstreams/api", "{}"},
        {"/gw/upstreams/api/pools/q", R"({"priority": 2})"},
        {"/gw/upstreams/api/pools/q/hosts/c", R"({"address": "127.0.0.1:3"})"},
        {"/gw/upstreams/old", R"({"future": 1})"},
    };
    std::vector<std::string> warnings;
    const Model m = build_model("/gw/", kv, warnings);
    const Model app = only_upstream(m, "app");
    CHECK(app.upstreams.size() == 1);
    CHECK(app.upstreams.count("app") == 1);
    CHECK(app.pools.size() == 1);
    CHECK(app.hosts.size() == 1);
    CHECK(app.held_hosts.size() == 1);
    CHECK(app.held_upstreams.empty());
    const Model api = only_upstream(m, "api");
    CHECK((api.upstreams.count("api") == 1 && api.pools.count({"api", "q"}) == 1 && api.hosts.size() == 1));
    CHECK(api.held_hosts.empty());
    const Model old = only_upstream(m, "old");
    CHECK((old.upstreams.empty() && old.pools.empty() && old.held_upstreams == std::set<std::string>{"old"}));
  }

  TEST_CASE("reconcile: an admin change from etcd of a host its checks hold down is admin_down / admin_up") {
    gw::testing::TempSegment ts({4, 8, 16});
    gw::shm::Table t = sample();
    t.upstreams()[static_cast<size_t>(t.find_upstream("app"))].check.type = gw::shm::kCheckTcp;
    // A host not checked yet takes traffic (health.unknown "usable", the config's default).
    t.upstreams()[static_cast<size_t>(t.find_upstream("app"))].check.unknown_usable = 1;
    for (const auto& h : t.hosts()) gw::shm::reset_slot(ts.seg.host(h.slot), h.tag);
    const int pi = t.find_pool(t.find_upstream("app"), "primary");
    const auto& b = t.hosts()[static_cast<size_t>(t.find_host(pi, "b"))];
    REQUIRE(gw::shm::record_check(ts.seg.host(b.slot), b.tag, gw::shm::kActiveDown));
    std::vector<std::string> warnings, events;
    auto kv = kv_of(t, "app");
    kv[host_key("/gw/", "app", "primary", "a")] = R"({"address": "127.0.0.1:1001", "down": true})";
    kv[host_key("/gw/", "app", "primary", "b")] = R"({"address": "127.0.0.1:1002", "weight": 2, "down": true})";
    REQUIRE(reconcile(t, build_model("/gw/", kv, warnings), events, warnings, &ts.seg));
    CHECK(events == std::vector<std::string>{
                        "host_down app/primary/a 127.0.0.1:1001 (admin: etcd)",  // checked up: it moves traffic
                        "admin_down app/primary/b 127.0.0.1:1002 (admin: etcd; the host was already out: its health "
                        "check fails)"});
    kv[host_key("/gw/", "app", "primary", "b")] = R"({"address": "127.0.0.1:1002", "weight": 2})";
    events.clear();
    REQUIRE(reconcile(t, build_model("/gw/", kv, warnings), events, warnings, &ts.seg));
    CHECK(events == std::vector<std::string>{
                        "admin_up app/primary/b 127.0.0.1:1002 (admin: etcd; the host stays out: its health check "
                        "fails)"});
  }

  TEST_CASE("reconcile: a pool or host whose etcd value does not parse keeps what the node has") {
    gw::shm::Table t = sample();
    std::vector<std::string> warnings, events;
    auto kv = kv_of(t, "app");
    reconcile(t, build_model("/gw/", kv, warnings), events, warnings);  // key order
    events.clear();
    // A typo in the pool's method, a field from a newer gw in host a, and a
    // real change (b's weight) at the same time.
    kv[pool_key("/gw/", "app", "primary")] = R"({"priority": 0, "method": "roundrobin"})";
    kv[host_key("/gw/", "app", "primary", "a")] = R"({"address": "127.0.0.1:1001", "weight": 1, "zone": "x"})";
    kv[host_key("/gw/", "app", "primary", "b")] = encode_host({addr("127.0.0.1:1002"), 7, false});
    warnings.clear();
    Model m = build_model("/gw/", kv, warnings);
    CHECK(warnings.size() == 2);
    CHECK(reconcile(t, m, events, warnings));
    CHECK(events == std::vector<std::string>{"host_changed app/primary/b 127.0.0.1:1002 weight=7"});
    const int pi = t.find_pool(t.find_upstream("app"), "primary");
    REQUIRE(pi >= 0);
    CHECK(t.find_host(pi, "a") >= 0);  // kept, slot and all
    CHECK(t.hosts()[static_cast<size_t>(t.find_host(pi, "a"))].tag == 1);
    CHECK(t.pool_hosts(pi).size() == 2);
    // Deleted for real: then it goes.
    kv.erase(host_key("/gw/", "app", "primary", "a"));
    events.clear();
    CHECK(reconcile(t, build_model("/gw/", kv, warnings), events, warnings));
    CHECK(events == std::vector<std::string>{"host_removed app/primary/a 127.0.0.1:1001"});
  }

  TEST_CASE("reconcile: the same state changes nothing, keeps other upstreams") {
    gw::shm::Table t = sample();
    std::vector<std::string> warnings, events;
    Model m = build_model("/gw/", kv_of(t, "app"), warnings);
    // key order is pools by id: backup before primary, so the first reconcile reorders
    bool changed = reconcile(t, m, events, warnings);
    CHECK(changed);
    CHECK(events.empty());
    CHECK(gw::shm::name_of(t.pools()[0].id) == "backup");
    events.clear();
    CHECK_FALSE(reconcile(t, m, events, warnings));
    CHECK(events.empty());
    CHECK(warnings.empty());
    // "other" is not in etcd: untouched, slot included
    int x = t.find_host(t.find_pool(t.find_upstream("other"), "p"), "x");
    REQUIRE(x >= 0);
    CHECK(t.hosts()[static_cast<size_t>(x)].tag == 4);
  }

  TEST_CASE("reconcile: a chash pool from etcd past the ring's bound is a warning while it is past it") {
    // gwd -t, gwctl and the admin API warned of such a pool; the etcd sync
    // applied one without a word.
    gw::shm::Table t = sample();
    // "other" (chash, 7,000) is not in etcd: the config's, which gwd -t checks.
    const int op = t.find_pool(t.find_upstream("other"), "p");
    t.hosts()[static_cast<size_t>(t.find_host(op, "x"))].weight = 1000;
    for (int i = 0; i < 6; ++i) t.add_host(op, fmt::format("y{}", i), addr("127.0.0.1:2002"), 1000);
    std::vector<std::string> warnings, events;
    auto kv = kv_of(t, "app");
    kv[pool_key("/gw/", "app", "primary")] = encode_pool({0, gw::shm::Method::chash});
    kv[host_key("/gw/", "app", "primary", "b")] = encode_host({addr("127.0.0.1:1002"), 1000, false});
    for (int i = 0; i < 5; ++i)
      kv[host_key("/gw/", "app", "primary", fmt::format("n{}", i))] =
          encode_host({addr(fmt::format("127.0.0.1:{}", 1100 + i).c_str()), 1000, i == 0});
    REQUIRE(reconcile(t, build_model("/gw/", kv, warnings), events, warnings));
    CHECK(warnings.empty());  // 6,001: nginx's ring
    // One more host of weight 1,000 (admin down counts: the shm path counts it too).
    kv[host_key("/gw/", "app", "primary", "n5")] = encode_host({addr("127.0.0.1:1105"), 1000, false});
    Model m = build_model("/gw/", kv, warnings);
    REQUIRE(reconcile(t, m, events, warnings));
    const std::string want = "pool app/primary: " + gw::balance::chash_bound_warning(7001);
    CHECK(warnings == std::vector<std::string>{want});
    CHECK(want.find("chash over a total weight of 7001, more than 6553") != std::string::npos);
    // The same state again: nothing changes, the warning holds (the sync
    // process logs only what the last sync did not already say).
    warnings.clear();
    CHECK_FALSE(reconcile(t, m, events, warnings));
    CHECK(warnings == std::vector<std::string>{want});
    // Another method: no ring, no warning.
    kv[pool_key("/gw/", "app", "primary")] = encode_pool({0, gw::shm::Method::round_robin});
    warnings.clear();
    REQUIRE(reconcile(t, build_model("/gw/", kv, warnings), events, warnings));
    CHECK(warnings.empty());
  }

  TEST_CASE("reconcile: a pool of 20,000 hosts, its one watched change (linear in its hosts, not quadratic)") {
    // Each host was looked up in the old table and checked against every host
    // already added to the new one: a pool of 20,000 hosts took seconds per
    // watched change (20 single-key changes took 51 s to apply).
    constexpr uint32_t kHosts = 20000;
    gw::shm::Table t({2, 2, kHosts});
    gw::shm::UpstreamRecord u{};
    gw::shm::set_name(u.name, "app");
    t.add_upstream(u);
    Model m;
    m.upstreams["app"] = true;
    m.pools[{"app", "p"}] = PoolSpec{};
    for (uint32_t i = 0; i < kHosts; ++i) {
      gw::core::SockAddr a = addr("127.0.0.1:1");
      a.port = static_cast<uint16_t>(1024 + i);
      m.hosts[{"app", "p", fmt::format("host-{:05}", i)}] = HostSpec{a, 1, false};
    }
    std::vector<std::string> warnings, events;
    const uint64_t start = gw::core::monotonic_ms();
    CHECK(reconcile(t, m, events, warnings));  // every host added
    CHECK(t.hosts().size() == kHosts);
    m.hosts[{"app", "p", "host-00007"}].weight = 3;  // one watched change
    events.clear();
    CHECK(reconcile(t, m, events, warnings));
    CHECK(events.size() == 1);
    CHECK_FALSE(reconcile(t, m, events, warnings));  // and the same state again
    // The time is reported, not asserted (the machine is shared; a timed
    // check would fail on a busy one): 5.9 s before, 56 ms after, in a
    // RelWithDebInfo build.
    MESSAGE("3 reconciles of ", kHosts, " hosts: ", gw::core::monotonic_ms() - start, " ms");
  }

  TEST_CASE("reconcile keeps the routes and gray-release rules (they are not shared through etcd)") {
    gw::shm::Table t = sample();
    int r = t.add_route("web", "root");
    gw::shm::RuleSpec rule;
    rule.id = "canary";
    rule.upstream = "other";
    gw::core::Cidr c;
    std::string why;
    REQUIRE(gw::core::parse_cidr("127.0.0.16/28", c, why));
    rule.cidrs = {c, c};
    rule.percent_bp = 250;
    t.add_rule(r, rule);
    auto kv = kv_of(t, "app");
    kv["/gw/upstreams/app/pools/primary/hosts/d"] = R"({"address": "127.0.0.1:1004"})";
    std::vector<std::string> warnings, events;
    Model m = build_model("/gw/", kv, warnings);
    REQUIRE(reconcile(t, m, events, warnings));
    REQUIRE(t.routes().size() == 1);
    CHECK(t.find_route("web", "root") == 0);
    REQUIRE(t.rules().size() == 1);
    auto back = t.rule_spec(0);
    CHECK(back.id == "canary");
    CHECK(back.upstream == "other");
    CHECK(back.percent_bp == 250);
    REQUIRE(back.cidrs.size() == 2);
    CHECK(back.cidrs[1].to_string() == "127.0.0.16/28");
  }

  TEST_CASE("reconcile: add, remove, change in one pass") {
    gw::shm::Table t = sample();
    auto kv = kv_of(t, "app");
    kv.erase("/gw/upstreams/app/pools/primary/hosts/a");  // removed
    kv["/gw/upstreams/app/pools/primary/hosts/b"] =
        R"({"address": "127.0.0.1:1002", "weight": 5, "down": true})";                   // changed
    kv["/gw/upstreams/app/pools/primary/hosts/d"] = R"({"address": "127.0.0.1:1004"})";  // added
    kv["/gw/upstreams/app/pools/backup/hosts/c"] = R"({"address": "127.0.0.1:1999"})";   // moved address
    kv["/gw/upstreams/app/pools/backup"] = R"({"priority": 3, "method": "maglev"})";
    kv["/gw/upstreams/app/pools/new"] = R"({})";
    kv["/gw/upstreams/ghost"] = "{}";
    std::vector<std::string> warnings, events;
    Model m = build_model("/gw/", kv, warnings);
    REQUIRE(reconcile(t, m, events, warnings));
    CHECK(contains(events, "host_removed app/primary/a 127.0.0.1:1001"));
    CHECK(contains(events, "host_changed app/primary/b 127.0.0.1:1002 weight=5"));
    CHECK(contains(events, "host_down app/primary/b 127.0.0.1:1002 (admin: etcd)"));
    CHECK(contains(events, "host_added app/primary/d 127.0.0.1:1004 weight=1"));
    CHECK(contains(events, "host_removed app/backup/c 127.0.0.1:1003"));
    CHECK(contains(events, "host_added app/backup/c 127.0.0.1:1999 weight=1"));
    CHECK(contains(events, "pool_changed app/backup priority=3 method=maglev"));
    CHECK(contains(events, "pool_changed app/new added priority=0 method=round_robin"));
    CHECK(events.size() == 8);
    CHECK(contains(warnings, "upstream \"ghost\" in etcd is not in this node's config; ignored"));
    int app = t.find_upstream("app");
    int primary = t.find_pool(app, "primary");
    const auto& b = t.hosts()[static_cast<size_t>(t.find_host(primary, "b"))];
    CHECK((b.weight == 5 && b.admin_down == 1 && b.tag == 2));                  // kept its slot
    CHECK(t.hosts()[static_cast<size_t>(t.find_host(primary, "d"))].tag == 0);  // the writer assigns one
    CHECK(t.hosts()[static_cast<size_t>(t.find_host(t.find_pool(app, "backup"), "c"))].tag ==
          0);  // new address: new slot
    CHECK(t.find_host(primary, "a") < 0);
    CHECK(t.upstreams().size() == 2);
    // and now it is in sync
    events.clear();
    CHECK_FALSE(reconcile(t, m, events, warnings));
  }

  TEST_CASE("reconcile: a pool removed with its hosts; capacity errors throw") {
    gw::shm::Table t = sample();
    auto kv = kv_of(t, "app");
    kv.erase("/gw/upstreams/app/pools/backup");
    kv.erase("/gw/upstreams/app/pools/backup/hosts/c");
    std::vector<std::string> warnings, events;
    REQUIRE(reconcile(t, build_model("/gw/", kv, warnings), events, warnings));
    CHECK(events ==
          std::vector<std::string>{"host_removed app/backup/c 127.0.0.1:1003", "pool_changed app/backup removed"});
    for (int i = 0; i < 20; ++i)
      kv["/gw/upstreams/app/pools/primary/hosts/n" + std::to_string(i)] = R"({"address": "127.0.0.1:3000"})";
    gw::shm::Table before = t;
    CHECK_THROWS_AS(reconcile(t, build_model("/gw/", kv, warnings), events, warnings), gw::shm::TableError);
  }

  TEST_CASE("request bodies") {
    CHECK(range_request("/gw/", "/gw0") == R"({"key": "L2d3Lw==", "range_end": "L2d3MA=="})");
    CHECK(range_request("k", "", true) == R"({"key": "aw==", "count_only": true})");
    CHECK(range_request("/gw/a\0"s, "/gw0", false, 1000, 42) ==
          R"({"key": "L2d3L2EA", "range_end": "L2d3MA==", "limit": "1000", "revision": "42"})");
    // Progress notifications asked for: a quiet prefix still moves the node's revision.
    CHECK(watch_create_request("/gw/", "/gw0", 8) ==
          R"({"create_request": {"key": "L2d3Lw==", "range_end": "L2d3MA==", "start_revision": "8", )"
          R"("progress_notify": true}})");
    CHECK(
        txn_request({{"a", "", Compare::Target::create_revision, 0}, {"b", "c", Compare::Target::mod_revision, 5}},
                    {{false, "a", "v"}, {true, "b", ""}}) ==
        R"({"compare": [{"key": "YQ==", "target": "CREATE", "result": "EQUAL", "create_revision": "0"}, )"
        R"({"key": "Yg==", "range_end": "Yw==", "target": "MOD", "result": "EQUAL", "mod_revision": "5"}], )"
        R"("success": [{"request_put": {"key": "YQ==", "value": "dg=="}}, {"request_delete_range": {"key": "Yg=="}}]})");
  }

  TEST_CASE("response parsers (as etcd 3.4's gateway answers)") {
    auto r = parse_range_response(
        R"({"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"},)"
        R"("kvs":[{"key":"L2d3L2E=","create_revision":"2","mod_revision":"5","version":"3","value":"aGVsbG8="}],"count":"1"})");
    CHECK(r.revision == 7);
    CHECK(r.count == 1);
    REQUIRE(r.kvs.size() == 1);
    CHECK((r.kvs[0].key == "/gw/a" && r.kvs[0].value == "hello"));
    CHECK((r.kvs[0].create_revision == 2 && r.kvs[0].mod_revision == 5 && r.kvs[0].version == 3));
    CHECK(parse_range_response(R"({"header":{"revision":"3"}})").kvs.empty());
    CHECK_FALSE(r.more);
    CHECK(parse_range_response(R"({"header":{"revision":"3"},"kvs":[{"key":"YQ=="}],"more":true,"count":"2"})").more);
    CHECK(parse_txn_response(R"({"header":{"revision":"3"},"succeeded":true,"responses":[]})").succeeded);
    CHECK_FALSE(parse_txn_response(R"({"header":{"revision":"3"}})").succeeded);
    CHECK_THROWS_AS(parse_range_response("not json"), EtcdError);
    CHECK_THROWS_AS(parse_range_response(R"({"kvs":[{"key":"@@@"}]})"), EtcdError);
    int code = 0;
    CHECK(error_message(R"({"error":"etcdserver: mvcc: required revision has been compacted","code":11})", code) ==
          "etcdserver: mvcc: required revision has been compacted");
    CHECK(code == 11);
    // A proxy's HTML error page comes out on one line.
    CHECK(error_message("<html>\r\n<head><title>404 Not Found</title></head>\r\n\t<body>x</body>\n</html>\n", code) ==
          "<html> <head><title>404 Not Found</title></head> <body>x</body> </html>");
    CHECK(code == 0);
  }

  TEST_CASE("watch messages: created, events, delete, compaction, stream error") {
    auto m = parse_watch_message(R"({"result":{"header":{"revision":"3"},"created":true}})");
    CHECK((m.created && !m.canceled && m.events.empty() && m.revision == 3));
    m = parse_watch_message(
        R"({"result":{"header":{"revision":"5"},"events":[{"kv":{"key":"L2d3L2E=","create_revision":"2","mod_revision":"4","version":"2","value":"eA=="}},)"
        R"({"type":"DELETE","kv":{"key":"L2d3L2I=","mod_revision":"5"}}]}})");
    REQUIRE(m.events.size() == 2);
    CHECK((!m.events[0].is_delete && m.events[0].kv.key == "/gw/a" && m.events[0].kv.value == "x" &&
           m.events[0].kv.mod_revision == 4));
    CHECK((m.events[1].is_delete && m.events[1].kv.key == "/gw/b" && m.events[1].kv.mod_revision == 5));
    m = parse_watch_message(R"({"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"5"}})");
    CHECK((m.canceled && m.compact_revision == 5));
    m = parse_watch_message(R"({"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}})");
    CHECK(m.error == "etcdserver: no leader");
    CHECK_THROWS_AS(parse_watch_message(R"({"result":{"events":[{"type":"BOGUS","kv":{}}]}})"), EtcdError);
    CHECK_THROWS_AS(parse_watch_message(R"({"nothing":1})"), EtcdError);
  }

  TEST_CASE("watch messages: a progress notification is a header and nothing else") {
    // As etcd 3.4's gateway sends one (watch_id 0 and empty events left out).
    auto m = parse_watch_message(
        R"({"result":{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437",)"
        R"("revision":"42","raft_term":"2"}}})");
    CHECK((m.progress && m.revision == 42 && m.events.empty() && !m.created && !m.canceled && m.error.empty()));
    CHECK(m.cluster_id == 14841639068965178418ULL);
    CHECK(parse_watch_message(R"({"result":{"header":{"revision":"43"},"watch_id":"0","events":[]}})").progress);
    // Not progress: the create answer, events, a cancel, an error, no revision.
    CHECK_FALSE(parse_watch_message(R"({"result":{"header":{"revision":"3"},"created":true}})").progress);
    CHECK_FALSE(parse_watch_message(R"({"result":{"header":{"revision":"5"},"events":[{"kv":{"key":"L2d3L2E=",)"
                                    R"("mod_revision":"5","value":"eA=="}}]}})")
                    .progress);
    CHECK_FALSE(parse_watch_message(R"({"result":{"header":{"revision":"5"},"canceled":true,"compact_revision":"4"}})")
                    .progress);
    CHECK_FALSE(parse_watch_message(R"({"error":{"grpc_code":14,"message":"etcdserver: no leader"}})").progress);
    CHECK_FALSE(parse_watch_message(R"({"result":{"header":{"raft_term":"2"}}})").progress);
  }

  TEST_CASE("cluster_id of range answers and watch messages (a uint64, as a string above INT64_MAX)") {
    CHECK(parse_range_response(R"({"header":{"cluster_id":"14841639068965178418","revision":"7"}})").cluster_id ==
          14841639068965178418ULL);
    CHECK(parse_range_response(R"({"header":{"revision":"7"}})").cluster_id == 0);
    auto m = parse_watch_message(
        R"({"result":{"header":{"cluster_id":"18446744073709551615","member_id":"1","revision":"3"},"created":true}})");
    CHECK((m.created && m.cluster_id == 18446744073709551615ULL && m.revision == 3));
    CHECK_THROWS_AS(parse_range_response(R"({"header":{"cluster_id":"-1"}})"), EtcdError);
    CHECK_THROWS_AS(parse_range_response(R"({"header":{"cluster_id":"18446744073709551616"}})"), EtcdError);
  }

  TEST_CASE("resync decision: another cluster at any revision, or a revision below the one applied") {
    // Listed cluster 7 and applied revision 10.
    CHECK(resync_reason(7, 10, 7, 10) == Resync::none);
    CHECK(resync_reason(7, 10, 7, 25) == Resync::none);
    CHECK(resync_reason(7, 10, 7, 9) == Resync::rewound);
    // A cluster wiped and created anew, then written past the node's revision:
    // only its cluster_id tells.
    CHECK(resync_reason(7, 10, 8, 25) == Resync::other_cluster);
    CHECK(resync_reason(7, 10, 8, 10) == Resync::other_cluster);
    CHECK(resync_reason(7, 10, 8, 3) == Resync::other_cluster);
    // A header without cluster_id (or a node that listed without one) decides
    // by the revision alone; a header without a revision does not rewind.
    CHECK(resync_reason(0, 10, 8, 25) == Resync::none);
    CHECK(resync_reason(7, 10, 0, 25) == Resync::none);
    CHECK(resync_reason(7, 10, 0, 3) == Resync::rewound);
    CHECK(resync_reason(7, 10, 7, 0) == Resync::none);
  }

  TEST_CASE("HTTP response reader: chunked stream split anywhere") {
    const std::string wire =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        "8\r\n{\"a\":1}\n\r\n5\r\n{\"b\":\r\n3\r\n2}\n\r\n";
    for (size_t split = 1; split < wire.size(); ++split) {
      ResponseReader r;
      std::string body;
      CHECK_FALSE(r.feed(wire.substr(0, split), body));
      CHECK_FALSE(r.feed(wire.substr(split), body));
      CHECK(r.status() == 200);
      CHECK(body == "{\"a\":1}\n{\"b\":2}\n");
    }
    ResponseReader r;
    std::string body;
    CHECK(r.feed("HTTP/1.1 400 Bad Request\r\nContent-Length: 4\r\n\r\nnope", body));
    CHECK((r.status() == 400 && body == "nope"));
    ResponseReader bad;
    CHECK_THROWS_AS(bad.feed("garbage\r\n\r\n", body), EtcdError);
  }
}

TEST_SUITE("config") {
  TEST_CASE("cluster: valid, defaults, and every error with its path") {
    auto with = [](const std::string& cluster) {
      return gw::config::load_string(
          R"({"cluster": )" + cluster +
          R"(, "listeners": [{"name": "l", "listen": "127.0.0.1:1", "upstream": "app"}], "upstreams": [{"name": "app"}]})");
    };
    auto r = with(R"({"etcd": ["http://127.0.0.1:2379", "http://127.0.0.2:2379/"]})");
    REQUIRE(r.errors.empty());
    CHECK(r.config.cluster.enabled);
    CHECK(r.config.cluster.etcd == std::vector<std::string>{"http://127.0.0.1:2379", "http://127.0.0.2:2379"});
    CHECK(r.config.cluster.prefix == "/gw/");
    CHECK(r.config.cluster.reconnect_max_ms == 5000);
    CHECK_FALSE(gw::config::load_string(R"({"listeners": [], "upstreams": []})").config.cluster.enabled);
    struct Case {
      const char* cluster;
      const char* error;
    } cases[] = {
        {R"({})", "cluster: missing required key \"etcd\""},
        {R"({"etcd": []})", "cluster.etcd: expected 1..16 endpoint URLs, got 0"},
        {R"({"etcd": "http://127.0.0.1:2379"})", "cluster.etcd: expected an array"},
        {R"({"etcd": ["https://127.0.0.1:2379"]})", "cluster.etcd[0]: https is not supported"},
        {R"({"etcd": ["http://localhost:2379"]})",
         "cluster.etcd[0]: expected http://IP:PORT (host names are not resolved)"},
        {R"({"etcd": ["http://127.0.0.1:2379/v3"]})", "cluster.etcd[0]: expected http://IP:PORT without a path"},
        {R"({"etcd": ["http://127.0.0.1:1", "http://127.0.0.1:1"]})",
         "cluster.etcd[1]: endpoint http://127.0.0.1:1 is listed twice"},
        {R"({"etcd": [2379]})", "cluster.etcd[0]: expected a string"},
        {R"({"etcd": ["http://127.0.0.1:1"], "prefix": "gw"})", "cluster.prefix: expected 2..128"},
        {R"({"etcd": ["http://127.0.0.1:1"], "prefix": "/g w/"})", "cluster.prefix: expected 2..128"},
        {R"({"etcd": ["http://127.0.0.1:1"], "reconnect_max_ms": 5})",
         "cluster.reconnect_max_ms: expected an integer 100..600000"},
        {R"({"etcd": ["http://127.0.0.1:1"], "timeout_ms": 0})", "cluster.timeout_ms: expected an integer 10..60000"},
        {R"({"etcd": ["http://127.0.0.1:1"], "colour": 1})", "cluster.colour: unknown key"},
        {R"([])", "cluster: expected an object"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.cluster);
      auto e = with(c.cluster).errors;
      bool found = false;
      for (const auto& x : e) found |= x.rfind(c.error, 0) == 0;
      CHECK_MESSAGE(found, (e.empty() ? std::string("no error") : e[0]));
    }
  }
}

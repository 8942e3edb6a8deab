#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/ops.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/writer.hpp"

using namespace gw::shm;
using gw::testing::TempSegment;

namespace {

void one_host(TempSegment& ts) {
  Writer w(ts.seg);
  w.set_persist(false);
  w.commit([](Table& t, std::vector<std::string>&) {
    UpstreamRecord r{};
    set_name(r.name, "app");
    gw::core::SockAddr a;
    std::string why;
    REQUIRE(gw::core::parse_address("127.0.0.1:1", a, why));
    t.add_host(t.add_pool(t.add_upstream(r), "primary", 0, Method::round_robin), "a", a, 2);
  });
}

uint32_t weight_of(const TempSegment& ts) {
  Table t(ts.seg.caps());
  read_published(ts.seg, t);
  return t.hosts()[0].weight;
}

}  // namespace

TEST_SUITE("shm") {
  TEST_CASE("set_host: a new weight in one commit, with its event; the same weight changes nothing") {
    TempSegment ts({1, 1, 1});
    one_host(ts);
    const uint64_t head = ts.seg.header().event_head.load();
    ops::Result r = ops::set_host(ts.seg, "app", "primary", "a", 7, std::nullopt, "test");
    CHECK(r.changed);
    CHECK(r.what == "set host app/primary/a weight=7");
    CHECK(weight_of(ts) == 7);
    EventData e{};
    REQUIRE(read_event(ts.seg, head, e) == EventRead::ok);
    CHECK(std::string(e.text) == "host_changed app/primary/a 127.0.0.1:1 weight=7 (was 2)");

    r = ops::set_host(ts.seg, "app", "primary", "a", 7, std::nullopt, "test");
    CHECK_FALSE(r.changed);
    CHECK(r.what == "host app/primary/a already has weight 7");
    CHECK(ts.seg.header().event_head.load() == head + 1);

    CHECK(ops::set_host(ts.seg, "app", "primary", "a", 0, std::nullopt, "test").changed);  // 0: drain
    CHECK(weight_of(ts) == 0);
    CHECK_THROWS_WITH_AS(ops::set_host(ts.seg, "app", "primary", "a", 1001, std::nullopt, "test"),
                         "weight 1001 out of range 0..1000", TableError);
    CHECK_THROWS_AS(ops::set_host(ts.seg, "app", "primary", "b", 1, std::nullopt, "test"), TableError);
    CHECK(weight_of(ts) == 0);

    // Weight and admin state in one commit; what is already so changes nothing.
    const uint64_t gen = ts.seg.header().published.load();
    r = ops::set_host(ts.seg, "app", "primary", "a", 4, true, "api");
    CHECK(r.what == "set host app/primary/a weight=4 admin down");
    CHECK(ts.seg.header().published.load() > gen);
    r = ops::set_host(ts.seg, "app", "primary", "a", 4, true, "api");
    CHECK_FALSE(r.changed);
    CHECK(r.what == "host app/primary/a already has weight 4 and is down");
    CHECK_THROWS_AS(ops::set_host(ts.seg, "app", "primary", "a", std::nullopt, std::nullopt, "api"), TableError);
  }

  TEST_CASE("set_host_down: a host passive health holds out moves no traffic: admin_down / admin_up, no hook") {
    // It said host_down when it failed; its trial says host_up when it
    // passes. gwctl down and up in between were a second host_down and an
    // early host_up, each running its hook.
    TempSegment ts({1, 1, 1});
    one_host(ts);
    Writer w(ts.seg);
    w.set_persist(false);
    w.commit([](Table& t, std::vector<std::string>&) { t.upstreams()[0].max_fails = 1; });
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    const HostRecord& h = t.hosts()[0];
    auto event = [&](const auto& change) {
      const uint64_t head = ts.seg.header().event_head.load();
      change();
      EventData e{};
      REQUIRE(read_event(ts.seg, head, e) == EventRead::ok);
      return std::string(e.text);
    };
    CHECK(event([&] { ops::set_host_down(ts.seg, "app", "primary", "a", true, "gwctl"); }) ==
          "host_down app/primary/a 127.0.0.1:1 (admin: gwctl down)");
    CHECK(event([&] { ops::set_host_down(ts.seg, "app", "primary", "a", false, "gwctl"); }) ==
          "host_up app/primary/a 127.0.0.1:1 (admin: gwctl up)");
    REQUIRE(record_failure(ts.seg.host(h.slot), h.tag, HealthPolicy{1, 10000}, 1000));
    CHECK(event([&] { ops::set_host_down(ts.seg, "app", "primary", "a", true, "gwctl"); }) ==
          "admin_down app/primary/a 127.0.0.1:1 (admin: gwctl down; the host was already out: passive health, "
          "until a connection's trial passes)");
    CHECK(event([&] { ops::set_host(ts.seg, "app", "primary", "a", std::nullopt, false, "api"); }) ==
          "admin_up app/primary/a 127.0.0.1:1 (admin: api up; the host stays out: passive health, until a "
          "connection's trial passes)");
  }

  TEST_CASE("set_pool: a new priority or method in one commit, with its event; the same ones change nothing") {
    TempSegment ts({1, 1, 1});
    one_host(ts);
    const uint64_t head = ts.seg.header().event_head.load();
    ops::Result r = ops::set_pool(ts.seg, "app", "primary", 3, std::nullopt);
    CHECK(r.changed);
    CHECK(r.what == "set pool app/primary priority=3 method=round_robin");
    EventData e{};
    REQUIRE(read_event(ts.seg, head, e) == EventRead::ok);
    CHECK(std::string(e.text) == "pool_changed app/primary priority=3 method=round_robin");

    // Sent again (a script, or the admin API's read, edit, write): no new
    // generation, no event (the workers rebuild nothing), changed false.
    const uint64_t pub = ts.seg.header().published.load();
    r = ops::set_pool(ts.seg, "app", "primary", 3, Method::round_robin);
    CHECK_FALSE(r.changed);
    CHECK(r.what == "pool app/primary already has priority=3 method=round_robin");
    CHECK(r.generation == (pub >> 1));
    CHECK(ts.seg.header().published.load() == pub);
    CHECK(ts.seg.header().event_head.load() == head + 1);

    r = ops::set_pool(ts.seg, "app", "primary", std::nullopt, Method::least_conn);
    CHECK(r.changed);
    CHECK(r.what == "set pool app/primary priority=3 method=least_conn");
    CHECK(ts.seg.header().event_head.load() == head + 2);
    CHECK_THROWS_AS(ops::set_pool(ts.seg, "app", "nope", 1, std::nullopt), TableError);
  }

  TEST_CASE("a change that leaves a chash pool past the ring's bound says so (and is made); at the bound, nothing") {
    // 2^20 points hold nginx's 160 per unit of weight up to a total of 6,553.
    TempSegment ts({1, 1, 16});
    one_host(ts);  // "a", weight 2
    ops::Result r = ops::set_pool(ts.seg, "app", "primary", std::nullopt, Method::chash);
    CHECK(r.changed);
    CHECK(r.warning.empty());
    gw::core::SockAddr addr;
    std::string why;
    for (int i = 0; i < 6; ++i) {
      REQUIRE(gw::core::parse_address("127.0.0.1:" + std::to_string(10 + i), addr, why));
      r = ops::add_host(ts.seg, "app", "primary", "h" + std::to_string(i), addr, 1000, false);
      CHECK(r.warning.empty());
    }
    REQUIRE(gw::core::parse_address("127.0.0.1:20", addr, why));
    r = ops::add_host(ts.seg, "app", "primary", "last", addr, 551, false);  // 6,553 in all
    CHECK(r.warning.empty());
    const std::string past =
        "pool app/primary: chash over a total weight of 6554, more than 6553: its ring is scaled down to 1048576 "
        "points, so keys split by weight but do not map to the hosts nginx's `hash consistent` picks";
    r = ops::set_host(ts.seg, "app", "primary", "last", 552, std::nullopt, "test");
    CHECK(r.changed);
    CHECK(r.warning == past);
    CHECK(ops::set_host(ts.seg, "app", "primary", "last", std::nullopt, true, "test").warning.empty());  // no weight
    // Another method: no ring, no warning; chash again: the warning.
    CHECK(ops::set_pool(ts.seg, "app", "primary", std::nullopt, Method::round_robin).warning.empty());
    CHECK(ops::set_pool(ts.seg, "app", "primary", std::nullopt, Method::chash).warning == past);
    CHECK(ops::set_pool(ts.seg, "app", "primary", 5, std::nullopt).warning.empty());  // the priority alone
    REQUIRE(gw::core::parse_address("127.0.0.1:21", addr, why));
    r = ops::add_host(ts.seg, "app", "primary", "more", addr, 1, false);
    CHECK(r.warning.find("chash over a total weight of 6555,") != std::string::npos);
    CHECK(ops::set_host(ts.seg, "app", "primary", "last", 550, std::nullopt, "test").warning.empty());  // 6,553
  }

  TEST_CASE("set_rule: new matchers in one commit, with its event; the rule as it is changes nothing") {
    TempSegment ts;
    one_host(ts);
    {
      Writer w(ts.seg);
      w.set_persist(false);
      w.commit([](Table& t, std::vector<std::string>&) { t.add_route("web", "main"); });
    }
    RuleSpec spec;
    spec.id = "r";
    spec.upstream = "app";
    spec.header_name = "X-Canary";
    spec.header_value = "1";
    REQUIRE(ops::add_rule(ts.seg, "web", "main", spec).changed);
    const uint64_t head = ts.seg.header().event_head.load();
    const uint64_t pub = ts.seg.header().published.load();

    ops::Result r = ops::set_rule(ts.seg, "web", "main", spec);
    CHECK_FALSE(r.changed);
    CHECK(r.what == "rule web/main/r is already header=X-Canary=1 -> app");
    CHECK(r.generation == (pub >> 1));
    CHECK(ts.seg.header().published.load() == pub);
    CHECK(ts.seg.header().event_head.load() == head);

    spec.percent_bp = 500;
    r = ops::set_rule(ts.seg, "web", "main", spec);
    CHECK(r.changed);
    CHECK(r.what == "set rule web/main/r header=X-Canary=1 percent=5 -> app");
    CHECK(ts.seg.header().event_head.load() == head + 1);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    CHECK(t.rule_spec(0).percent_bp == 500);
  }
}

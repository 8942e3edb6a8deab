#include <doctest/doctest.h>

#include "gw/shm/table.hpp"

using namespace gw::shm;

namespace {
gw::core::SockAddr addr(uint16_t port) {
  gw::core::SockAddr a;
  std::string why;
  gw::core::parse_address("127.0.0.1:" + std::to_string(port), a, why);
  return a;
}
UpstreamRecord upstream(const char* name) {
  UpstreamRecord r{};
  set_name(r.name, name);
  return r;
}
}  // namespace

TEST_SUITE("shm") {
  TEST_CASE("table add, find and remove keep indexes consistent") {
    Table t({2, 3, 4});
    int u = t.add_upstream(upstream("app"));
    int p0 = t.add_pool(u, "primary", 0, Method::round_robin);
    int p1 = t.add_pool(u, "backup", 1, Method::round_robin);
    t.add_host(p0, "a", addr(1), 1);
    t.add_host(p1, "c", addr(3), 1);
    CHECK(t.find_host(p1, "c") == 1);
    CHECK_THROWS_WITH_AS(t.remove_pool(p0), "pool app/primary still has 1 host(s); remove them first", TableError);
    t.remove_host(t.find_host(p0, "a"));
    t.remove_pool(p0);
    CHECK(t.pools().size() == 1);
    CHECK(t.find_pool(u, "backup") == 0);
    CHECK(t.hosts()[0].pool == 0);  // re-indexed
    CHECK(t.host_path(0) == "app/backup/c");
  }

  TEST_CASE("table refuses duplicates, bad names, bad weights and full capacity") {
    Table t({1, 1, 2});
    int u = t.add_upstream(upstream("app"));
    CHECK_THROWS_WITH_AS(t.add_upstream(upstream("app")), "upstream \"app\" already exists", TableError);
    int p = t.add_pool(u, "primary", 0, Method::round_robin);
    CHECK_THROWS_WITH_AS(t.add_pool(u, "second", 0, Method::round_robin), "pool table is full (shm.max_pools = 1)",
                         TableError);
    t.add_host(p, "a", addr(1), 1);
    CHECK_THROWS_WITH_AS(t.add_host(p, "a", addr(2), 1), "host app/primary/a already exists", TableError);
    CHECK_THROWS_AS(t.add_host(p, "b c", addr(2), 1), TableError);
    CHECK_THROWS_WITH_AS(t.add_host(p, "b", addr(2), 1001), "weight must be 0..1000, got 1001", TableError);
    t.add_host(p, "b", addr(2), 0);
    CHECK_THROWS_WITH_AS(t.add_host(p, "c", addr(3), 1), "host table is full (shm.max_hosts = 2)", TableError);
  }
}

// publish_listeners(): the listener stats rows the master assigns. A listener
// keeps its row (its counters) by name across reloads; a new one gets a
// cleared row that no running worker counts in.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "../test_util.hpp"
#include "gw/config/config.hpp"
#include "gw/process/master.hpp"
#include "gw/shm/runtime.hpp"

using namespace gw;
using gw::testing::TempSegment;

namespace {

config::Config with_listeners(const std::vector<std::string>& names) {
  config::Config c;
  for (const auto& n : names) {
    config::ListenerConf l;
    l.name = n;
    c.listeners.push_back(l);
  }
  return c;
}

uint32_t row_of(const config::Config& c, const std::string& name) {
  for (const auto& l : c.listeners)
    if (l.name == name) return l.stats_row;
  FAIL("no listener " << name);
  return ~0u;
}

void count(const shm::Segment& seg, uint32_t row, uint64_t n) {
  seg.listener_stats(0, row).accepted.store(n);
}

}  // namespace

TEST_CASE("listener stats rows: kept by name across reloads, new ones cleared and not shared") {
  TempSegment ts;
  process::ListenerRowTimes free_at{};
  // Start-up: rows by position.
  config::Config a = with_listeners({"web", "l4"});
  process::publish_listeners(ts.seg, a, false, free_at, 1000, 1000);
  CHECK(row_of(a, "web") == 0);
  CHECK(row_of(a, "l4") == 1);
  CHECK(ts.seg.header().n_listeners == 2);
  CHECK(shm::listener_stats_row(ts.seg.header().listeners[1], 1) == 1);
  count(ts.seg, 0, 5);
  count(ts.seg, 1, 7);

  // Reordered, with a new listener in front: the old ones keep their rows and
  // counts; the new one starts at 0 in a row of its own.
  count(ts.seg, 2, 99);  // what an earlier listener left there
  config::Config b = with_listeners({"dev", "l4", "web"});
  process::publish_listeners(ts.seg, b, true, free_at, 2000, 12000);
  CHECK(row_of(b, "web") == 0);
  CHECK(row_of(b, "l4") == 1);
  CHECK(row_of(b, "dev") == 2);
  CHECK(shm::listener_totals(ts.seg, row_of(b, "web")).accepted == 5);
  CHECK(shm::listener_totals(ts.seg, row_of(b, "l4")).accepted == 7);
  CHECK(shm::listener_totals(ts.seg, row_of(b, "dev")).accepted == 0);
  // The header lists them in the new order, each with its row.
  for (uint32_t i = 0; i < 3; ++i)
    CHECK(shm::listener_stats_row(ts.seg.header().listeners[i], i) == b.listeners[i].stats_row);

  // "web" removed: its row is not given to a new listener while the old
  // workers may still count in it (until 12000), though it is after that.
  config::Config c = with_listeners({"dev", "l4", "api"});
  process::publish_listeners(ts.seg, c, true, free_at, 3000, 13000);
  CHECK(row_of(c, "api") == 3);
  CHECK(free_at[0] == 13000);
  config::Config d = with_listeners({"dev", "l4", "api", "ws"});
  process::publish_listeners(ts.seg, d, true, free_at, 14000, 24000);
  CHECK(row_of(d, "api") == 3);
  CHECK(row_of(d, "ws") == 0);
  CHECK(shm::listener_totals(ts.seg, 0).accepted == 0);  // cleared: web's 5 are not ws's
}

TEST_CASE("listener stats rows: a header of an earlier build (no rows) means rows by position") {
  TempSegment ts;
  auto& hdr = ts.seg.header();
  hdr.n_listeners = 2;
  shm::set_name(hdr.listeners[0].name, "a");
  shm::set_name(hdr.listeners[1].name, "b");
  hdr.listeners[0].stats_row = hdr.listeners[1].stats_row = 0;
  count(ts.seg, 1, 3);
  process::ListenerRowTimes free_at{};
  config::Config c = with_listeners({"b", "a"});
  process::publish_listeners(ts.seg, c, true, free_at, 1000, 2000);
  CHECK(row_of(c, "b") == 1);
  CHECK(row_of(c, "a") == 0);
  CHECK(shm::listener_totals(ts.seg, 1).accepted == 3);
}

TEST_CASE("listener stats rows: a list left mid-write keeps no row, and is written whole again") {
  TempSegment ts;
  process::ListenerRowTimes free_at{};
  config::Config a = with_listeners({"web", "l4"});
  process::publish_listeners(ts.seg, a, false, free_at, 1000, 1000);
  count(ts.seg, 1, 7);
  ts.seg.header().listeners_seq.fetch_add(1);  // a master died while writing the list
  config::Config b = with_listeners({"l4"});
  process::publish_listeners(ts.seg, b, true, free_at, 2000, 12000);
  // Which row "l4" had is unknown: it gets a cleared one, not a guess.
  CHECK(shm::listener_totals(ts.seg, row_of(b, "l4")).accepted == 0);
  shm::ListenerList out;
  REQUIRE(shm::read_listeners(ts.seg.header(), out));
  CHECK(out.n == 1);
  CHECK(shm::name_of(out.items[0].name) == "l4");
}

#include <doctest/doctest.h>

#include "../test_util.hpp"
#include "gw/shm/events.hpp"

using namespace gw::shm;
using gw::testing::TempSegment;

TEST_SUITE("shm") {
  TEST_CASE("events are read back in order, and overwritten ones are reported lost") {
    TempSegment ts;
    for (int i = 0; i < 3; ++i) emit_event(ts.seg, EventKind::config, 9, "e" + std::to_string(i));
    EventData e{};
    REQUIRE(read_event(ts.seg, 1, e) == EventRead::ok);
    CHECK(std::string(e.text) == "e1");
    CHECK(read_event(ts.seg, 3, e) == EventRead::not_yet);
    CHECK(format_event(1, e).find("#1 gen=9 e1") != std::string::npos);
    for (uint32_t i = 0; i < kEventCapacity; ++i) emit_event(ts.seg, EventKind::health, 9, "x");
    CHECK(read_event(ts.seg, 1, e) == EventRead::lost);
  }
}

#include <doctest/doctest.h>

#include <string>

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

  TEST_CASE("a text too long for an event is cut at a character boundary and says so") {
    TempSegment ts;
    // 218 ASCII bytes, then two-byte characters across the cut.
    std::string text(218, 'a');
    for (int i = 0; i < 20; ++i) text += "\xc3\xa9";  // é
    emit_event(ts.seg, EventKind::config, 1, text);
    EventData e{};
    REQUIRE(read_event(ts.seg, 0, e) == EventRead::ok);
    const std::string got(e.text);
    CHECK(got.size() <= sizeof(e.text) - 1);
    CHECK(got.ends_with("..."));
    const std::string kept = got.substr(0, got.size() - 3);
    CHECK(text.starts_with(kept));
    CHECK((static_cast<unsigned char>(text[kept.size()]) & 0xc0) != 0x80);  // not inside a character
  }
}

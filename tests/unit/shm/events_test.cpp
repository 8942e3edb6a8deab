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

  TEST_CASE("a writer stalled after taking its number leaves the newer event that took its entry alone") {
    // The writer of event 0 is descheduled between taking its number and
    // writing; meanwhile the ring wraps and event kEventCapacity is written in
    // the same entry. Event 0 is lost (readers say so); the newer one must
    // stay readable, not turn into "not written yet" under an old event.
    TempSegment ts;
    static const Segment* seg = nullptr;
    seg = &ts.seg;
    testing::event_claim_hook = [] {
      testing::event_claim_hook = nullptr;
      for (uint32_t i = 0; i < kEventCapacity; ++i) emit_event(*seg, EventKind::health, 2, "newer");
    };
    emit_event(ts.seg, EventKind::config, 1, "stalled");
    testing::event_claim_hook = nullptr;
    EventData e{};
    REQUIRE(read_event(ts.seg, kEventCapacity, e) == EventRead::ok);
    CHECK(std::string(e.text) == "newer");
    CHECK(e.generation == 2);
    CHECK(read_event(ts.seg, 0, e) == EventRead::lost);
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

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

  TEST_CASE("a writer stalled in the middle of its entry while the ring wraps: the mixed entry reads as lost") {
    TempSegment ts;
    static const Segment* seg = nullptr;
    seg = &ts.seg;
    // Stalled after half its words: the ring wraps, the newer event takes the
    // entry and completes it; then the stalled writer stores its second half.
    testing::event_store_hook = [] {
      testing::event_store_hook = nullptr;
      for (uint32_t i = 0; i < kEventCapacity; ++i)
        emit_event(*seg, EventKind::health, 2, std::string(200, static_cast<char>('a' + i % 26)));
    };
    emit_event(ts.seg, EventKind::config, 1, std::string(200, 'Z'));
    testing::event_store_hook = nullptr;
    EventData e{};
    CHECK(read_event(ts.seg, kEventCapacity, e) == EventRead::lost);  // was "ok", with a's and Z's
    CHECK(read_event(ts.seg, 0, e) == EventRead::lost);
    // The entry before it is whole (event n is the hook's (n-1)th).
    REQUIRE(read_event(ts.seg, kEventCapacity - 1, e) == EventRead::ok);
    CHECK(std::string(e.text) == std::string(200, static_cast<char>('a' + (kEventCapacity - 2) % 26)));
    // The next event in that entry is whole again.
    for (uint32_t i = 0; i < kEventCapacity; ++i) emit_event(ts.seg, EventKind::health, 3, "later");
    REQUIRE(read_event(ts.seg, 2 * kEventCapacity, e) == EventRead::ok);
    CHECK(std::string(e.text) == "later");
  }

  TEST_CASE("an entry that holds an older event's whole words under a newer number reads as lost") {
    TempSegment ts;
    emit_event(ts.seg, EventKind::config, 1, "old");
    EventEntry& entry = ts.seg.event(kEventCapacity);
    // A newer event's completion seq over the old event's words and check, as
    // when a stalled writer's stores all land after the newer writer's.
    entry.seq.store(2 * uint64_t{kEventCapacity} + 2);
    EventData e{};
    CHECK(read_event(ts.seg, kEventCapacity, e) == EventRead::lost);
  }

  TEST_CASE("an event claimed by a writer that died is abandoned once the next one is a second old") {
    TempSegment ts;
    emit_event(ts.seg, EventKind::config, 1, "first");
    ts.seg.header().event_head.fetch_add(1);  // #1: claimed, never written
    emit_event(ts.seg, EventKind::config, 1, "third");
    const uint64_t head = ts.seg.header().event_head.load();
    REQUIRE(head == 3);
    EventData e{};
    REQUIRE(read_event(ts.seg, 1, e) == EventRead::not_yet);
    REQUIRE(read_event(ts.seg, 2, e) == EventRead::ok);
    CHECK_FALSE(event_abandoned(ts.seg, 1, head, e.wall_ms + 1000));  // maybe a writer still at work
    CHECK(event_abandoned(ts.seg, 1, head, e.wall_ms + 1001));
    // The newest event has none after it: only waiting tells.
    ts.seg.header().event_head.fetch_add(1);
    CHECK_FALSE(event_abandoned(ts.seg, 3, 4, e.wall_ms + 60000));
  }

  TEST_CASE("a text too long for an event is cut at a character boundary and says so") {
    TempSegment ts;
    // 210 ASCII bytes, then two-byte characters across the cut.
    std::string text(210, 'a');
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

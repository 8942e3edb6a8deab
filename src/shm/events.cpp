#include "gw/shm/events.hpp"

#include <unistd.h>

#include <fmt/format.h>
#include <xxhash.h>

#include <cstring>

#include "gw/core/clock.hpp"
#include "gw/core/utf8.hpp"
#include "gw/shm/seqlock.hpp"

namespace gw::shm {

namespace testing {
void (*event_claim_hook)() = nullptr;
void (*event_store_hook)() = nullptr;
}  // namespace testing

namespace {
// Never 0, so that an entry no writer ever finished does not match by chance.
uint64_t entry_check(const uint64_t* words, size_t n, uint64_t seqno) noexcept {
  return XXH3_64bits_withSeed(words, n * sizeof(uint64_t), seqno) | 1;
}
}  // namespace

void emit_event(const Segment& seg, EventKind kind, uint64_t generation, std::string_view text) noexcept {
  uint64_t n = seg.header().event_head.fetch_add(1, std::memory_order_acq_rel);
  if (testing::event_claim_hook) testing::event_claim_hook();
  EventEntry& e = seg.event(n);
  EventData d{};
  d.wall_ms = core::wall_ms();
  d.generation = generation;
  d.pid = ::getpid();
  d.kind = static_cast<uint32_t>(kind);
  if (text.size() <= sizeof(d.text) - 1) {
    std::memcpy(d.text, text.data(), text.size());
  } else {
    // Cut where a UTF-8 character starts, and say so.
    const std::string_view head = core::utf8_prefix(text, sizeof(d.text) - 4);
    std::memcpy(d.text, head.data(), head.size());
    std::memcpy(d.text + head.size(), "...", 3);
  }
  uint64_t words[sizeof(EventData) / 8];
  std::memcpy(words, &d, sizeof(d));
  // The entry's seq encodes which event it holds: 2n+1 while written, 2n+2 after.
  // A writer descheduled since it took its number may find the ring wrapped
  // and a newer event in the entry: that one stays, and this one is lost (its
  // readers already say so). Written over, the newer event would read as "not
  // yet written" under an older one, and be skipped as a dead writer's.
  uint64_t cur = e.seq.load(std::memory_order_relaxed);
  do {
    if (cur >= 2 * n + 1) return;
  } while (!e.seq.compare_exchange_weak(cur, 2 * n + 1, std::memory_order_relaxed));
  const size_t half = std::size(words) / 2;
  store_words(e.words, words, half);
  if (testing::event_store_hook) testing::event_store_hook();
  store_words(e.words + half, words + half, std::size(words) - half);
  e.check.store(entry_check(words, std::size(words), n), std::memory_order_release);
  // Complete, unless a newer event claimed the entry meanwhile.
  uint64_t claimed = 2 * n + 1;
  e.seq.compare_exchange_strong(claimed, 2 * n + 2, std::memory_order_release, std::memory_order_relaxed);
}

EventRead read_event(const Segment& seg, uint64_t n, EventData& out) noexcept {
  EventEntry& e = seg.event(n);
  uint64_t words[sizeof(EventData) / 8];
  uint64_t s1 = e.seq.load(std::memory_order_acquire);
  if (s1 > 2 * n + 2) return EventRead::lost;
  if (s1 != 2 * n + 2) return EventRead::not_yet;
  load_words(e.words, words, std::size(words));
  const uint64_t check = e.check.load(std::memory_order_acquire);
  uint64_t s2 = e.seq.load(std::memory_order_relaxed);
  if (s2 != s1) return EventRead::lost;
  // Complete, but with an older writer's late stores in it (see EventEntry::check).
  if (check != entry_check(words, std::size(words), n)) return EventRead::lost;
  std::memcpy(&out, words, sizeof(out));
  out.text[sizeof(out.text) - 1] = '\0';
  return EventRead::ok;
}

bool event_abandoned(const Segment& seg, uint64_t seqno, uint64_t head, uint64_t now_wall_ms) noexcept {
  EventData later{};
  return seqno + 1 < head && read_event(seg, seqno + 1, later) == EventRead::ok && later.wall_ms + 1000 < now_wall_ms;
}

std::string format_event(uint64_t n, const EventData& e) {
  char ts[40];
  core::format_iso8601(e.wall_ms, ts, sizeof(ts));
  return fmt::format("{} #{} gen={} {}", ts, n, e.generation, e.text);
}

}  // namespace gw::shm

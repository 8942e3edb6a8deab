#pragma once
// The event ring: a fixed array of entries in shm with an atomic head. Any
// process may emit (gwctl for committed changes, workers for health changes,
// the master for process events); readers tail it by sequence number.

#include <cstdint>
#include <string>
#include <string_view>

#include "gw/shm/segment.hpp"

namespace gw::shm {

namespace testing {
/// Called by emit_event() after it took its event number and before it writes
/// the entry (tests only; null otherwise): a writer descheduled there.
extern void (*event_claim_hook)();
/// Called by emit_event() when it has stored half of the entry's words: a
/// writer descheduled in the middle of its write.
extern void (*event_store_hook)();
}  // namespace testing

/// Appends an event. Lock-free; any process may call it.
void emit_event(const Segment& seg, EventKind kind, uint64_t generation, std::string_view text) noexcept;

enum class EventRead { ok, not_yet, lost };
/// Reads event number `seqno`: ok, not written yet (or being written), or lost
/// (overwritten by a newer event after the ring wrapped, or mixed with an older
/// one whose writer was still storing it).
EventRead read_event(const Segment& seg, uint64_t seqno, EventData& out) noexcept;

/// Whether event `seqno`, read as not_yet, was left by a writer that died
/// while writing it: the event after it (below `head`) was completed more than
/// a second before `now_wall_ms`. (A writer descheduled that long is taken for
/// dead too; its event is lost.)
bool event_abandoned(const Segment& seg, uint64_t seqno, uint64_t head, uint64_t now_wall_ms) noexcept;

/// "2026-11-21T23:40:00.123Z #12 gen=5 add host app/primary/c 127.0.0.1:8083 weight=1"
std::string format_event(uint64_t seqno, const EventData& e);

}  // namespace gw::shm

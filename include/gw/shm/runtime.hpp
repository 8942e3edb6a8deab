#pragma once
// Runtime host state in shm: passive health (nginx's max_fails/fail_timeout,
// global across workers) and per-worker connection counters.
//
// Passive health, as nginx's max_fails/fail_timeout: a failure inside the
// window [last_fail, last_fail + fail_timeout) adds to the window's count; one
// outside starts a new window. Successes in between do not clear it (a host
// that accepts connections and then times out every request must still reach
// max_fails). When the count reaches max_fails the host is down until
// fail_timeout has passed since the last failure; then ONE connection, over
// all workers, tries it (claim_trial moves last_fail to now, so the host stays
// out for everyone else), and that trial's success clears the count and
// brings it back up; its failure keeps it out for another fail_timeout. Each
// transition is made by exactly one caller (a compare-exchange on
// `verdicts`), which emits the event.
//
// Every function takes the host's tag: state of a slot that has since been
// given to another host is never touched. The verdicts carry the tag in the
// same word, so a verdict reached for a host that is removed meanwhile (its
// slot reset for another host between the check and the write) is dropped.

#include <cstdint>

#include "gw/shm/segment.hpp"

namespace gw::shm {

namespace testing {
/// Called by record_failure() after it counted the failure and before it
/// stamps last_fail_ms (tests only; null otherwise): another worker's
/// failure in that gap.
extern void (*failure_gap_hook)();
/// Called when a verdict is about to be written, after its word was read and
/// its tag matched, before the compare-exchange (tests only): the writer
/// giving the slot to another host in that gap.
extern void (*verdict_gap_hook)();
}  // namespace testing

struct HealthPolicy {
  uint32_t max_fails;  ///< 0 = passive health off
  uint32_t fail_timeout_ms;
  bool active = false;         ///< active checks run for this upstream
  bool unknown_usable = true;  ///< with active checks: may a host not yet checked be used?
};

/// May a new connection use this host now? Passive state, and with active
/// checks the checker's verdict. Lock-free, any process.
bool host_usable(const HostRuntime& h, uint32_t tag, HealthPolicy p, uint64_t now_ms) noexcept;
/// Counts a passive failure. Returns true if this call took the host down.
bool record_failure(HostRuntime& h, uint32_t tag, HealthPolicy p, uint64_t now_ms) noexcept;
/// Counts a success of an attempt that began at `started_ms` (the clock of
/// the now_ms arguments): a down host comes back up with a clear count only
/// if the attempt began at or after its last failure (its trial did); an up
/// host's count is left alone. Returns true if this call brought the host back up.
/// `max_fails`: the upstream's; failures that reach it while the trial's
/// success is recorded keep the host down (the trial is void).
bool record_success(HostRuntime& h, uint32_t tag, uint64_t started_ms, uint32_t max_fails) noexcept;
/// What claim_trial found.
enum class Trial : uint8_t {
  none,   ///< no trial needed: the host is up (or passive health is off, or the slot has another tag)
  taken,  ///< this connection is the down host's one trial
  lost,   ///< the host is out: another caller took its trial (or a failure came) since it was picked
};
/// A connection is about to try host `h`, picked as usable: if it is down and
/// its fail_timeout has passed, this connection takes the one trial (the host
/// stays out for every other connection for another fail_timeout, or until the
/// trial succeeds). Two workers can both find the host usable before either
/// claims: the second gets `lost`, and must pick again.
Trial claim_trial(HostRuntime& h, uint32_t tag, HealthPolicy p, uint64_t now_ms) noexcept;
/// Sets the checker's verdict (checker only). Returns true if it changed
/// (false, and nothing written, when the slot has another tag).
bool record_check(HostRuntime& h, uint32_t tag, uint32_t new_state) noexcept;
/// The active state as seen by readers (kActiveUnknown when the slot has another tag).
uint32_t active_state(const HostRuntime& h, uint32_t tag) noexcept;
/// Does passive health hold host `tag` down (false when the slot has another tag)?
bool passive_down(const HostRuntime& h, uint32_t tag) noexcept;
/// The writer, when a reload turns checks off: the checker's verdict back to
/// unknown. True if it was kActiveDown.
bool clear_active(HostRuntime& h, uint32_t tag) noexcept;
/// The writer, when a reload turns passive health off: the host up. True if
/// it was down.
bool clear_passive(HostRuntime& h, uint32_t tag) noexcept;
class Table;
struct HostRecord;
/// Does something other than its admin state hold host `h` out: the active
/// checks of its upstream (in `t`), or passive health (a host_down was said,
/// and only a connection's trial says host_up)? Then an admin change of it
/// moves no traffic (admin_up / admin_down events, no hook). The reason, for
/// the event, or nullptr.
const char* held_out_reason(const Segment& seg, const Table& t, const HostRecord& h) noexcept;

/// Slow start: the host just came back (health or admin); its weight ramps from here.
inline void mark_up(HostRuntime& h, uint32_t tag, uint64_t now_ms) noexcept {
  if (h.tag.load(std::memory_order_relaxed) == tag) h.up_since_ms.store(now_ms ? now_ms : 1, std::memory_order_relaxed);
}
/// Slow start: the share of its weight (per mille, 1..1000) a host may take now.
uint32_t slow_start_permille(const HostRuntime& h, uint32_t tag, uint32_t slow_start_ms, uint64_t now_ms) noexcept;

/// Peak-EWMA of connect latency (tau 10 s): a sample above the average
/// replaces it at once, lower samples pull it down with the elapsed time.
/// Any worker may call it; concurrent updates keep one of them.
void record_latency(HostRuntime& h, uint32_t tag, uint64_t sample_us, uint64_t now_ms) noexcept;
/// The peak-EWMA in microseconds at `now_ms`: the last value decayed by the
/// time since it was stored (as if a zero sample had arrived), so one slow
/// connect does not keep a host from being picked, and so sampled again, for
/// good (0 = no sample yet, or another tag).
uint64_t latency_us(const HostRuntime& h, uint32_t tag, uint64_t now_ms) noexcept;

/// Gives the slot to a new host (writer only, before publishing the table).
void reset_slot(HostRuntime& h, uint32_t tag) noexcept;

/// Worker side of the per-worker counters: one writer per row, so plain
/// relaxed load + store. A row still holding another tag is reset first.
inline void counter_open(HostCounter& c, uint32_t tag) noexcept {
  if (c.tag.load(std::memory_order_relaxed) != tag) {
    c.active.store(0, std::memory_order_relaxed);
    c.total.store(0, std::memory_order_relaxed);
    c.tag.store(tag, std::memory_order_relaxed);
  }
  c.active.store(c.active.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  c.total.store(c.total.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}
inline void counter_close(HostCounter& c, uint32_t tag) noexcept {
  if (c.tag.load(std::memory_order_relaxed) != tag) return;  // slot reused meanwhile
  uint32_t a = c.active.load(std::memory_order_relaxed);
  if (a > 0) c.active.store(a - 1, std::memory_order_relaxed);
}

/// Takes back a counter_open() whose connection never reached the host (no
/// descriptor or port for it): neither open nor counted in `total`.
inline void counter_unopen(HostCounter& c, uint32_t tag) noexcept {
  if (c.tag.load(std::memory_order_relaxed) != tag) return;  // slot reused meanwhile
  if (uint32_t a = c.active.load(std::memory_order_relaxed); a > 0) c.active.store(a - 1, std::memory_order_relaxed);
  if (uint64_t t = c.total.load(std::memory_order_relaxed); t > 0) c.total.store(t - 1, std::memory_order_relaxed);
}

struct HostTotals {
  uint64_t active = 0;
  uint64_t total = 0;
};
/// Sums the per-worker rows of a host slot that carry `tag`.
HostTotals host_totals(const Segment& seg, uint32_t slot, uint32_t tag) noexcept;
/// A row of the stats matrices as the workers' sum (readers: the admin server, gwctl).
struct HistogramTotals {
  uint64_t buckets[kLatencyBuckets + 1] = {};  ///< not cumulative, as stored
  uint64_t sum_us = 0;
  uint64_t count() const noexcept {
    uint64_t n = 0;
    for (uint64_t b : buckets) n += b;
    return n;
  }
};
struct HostStatsTotals {
  uint64_t responses[5] = {};    ///< 1xx..5xx
  uint64_t status_failures = 0;  ///< 5xx answers that also counted as passive failures
  HistogramTotals connect, response;
  uint64_t sent_bytes = 0, received_bytes = 0;  ///< on the host's sockets
};
/// Sums the HostStats rows of a host slot that carry `tag`.
HostStatsTotals host_stats_totals(const Segment& seg, uint32_t slot, uint32_t tag) noexcept;

struct ListenerTotals {
  uint64_t accepted = 0, active = 0, http_requests = 0;
  uint64_t received_bytes = 0, sent_bytes = 0;  ///< on the clients' sockets
  uint64_t rejects[kListenerRejectKinds] = {};
  uint64_t http_errors[kHttpCodeSlots] = {};
};
/// Sums the ListenerStats rows of listener `listener` (its index in the config).
ListenerTotals listener_totals(const Segment& seg, uint32_t listener) noexcept;
/// Sums the RuleStats rows of a rule's column that carry its tag.
uint64_t rule_hits(const Segment& seg, uint32_t slot, uint32_t tag) noexcept;
/// Zeroes every ListenerStats row (the master, at start: listener indexes are the config's).
void clear_listener_stats(const Segment& seg) noexcept;
/// Zeroes one row of every worker (a row a new listener takes).
void clear_listener_row(const Segment& seg, uint32_t row) noexcept;

/// Zeroes a worker's active counts (the master, after that worker died and
/// before it respawns it).
void clear_worker_counters(const Segment& seg, uint32_t worker) noexcept;

}  // namespace gw::shm

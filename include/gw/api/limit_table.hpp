#pragma once
// The limit table in shm, shared by every worker: token buckets of limit_req
// and connection counts of limit_conn, keyed by a seeded 64-bit hash.
//
//   hash ─┬─ low 32 bits ─► set (kLimitWays entries, LRU within the set)
//         └─ high 40 bits ─► fingerprint stored in the entry's key word
//
// Lock-free: each change is one CAS on one 64-bit word (shm/limits.hpp has
// the layout). A new key takes an empty way, else the least recently used
// way without open connections; if every way of its set holds connections
// the lookup fails ("full") and the caller refuses, as nginx does when its
// zone is exhausted. Capacity is fixed at creation: a flood of distinct keys
// only recycles entries.
//
// limit_req is GCRA, the token bucket kept as one timestamp (the theoretical
// arrival time, TAT): a bucket of burst + 1 tokens refilled at `rate` per
// second. A request at `now` is allowed if max(TAT, now) - now <= burst *
// interval, and then moves TAT on by one interval; a refused request changes
// nothing and may retry after max(TAT, now) - now - burst * interval.
//
// Any worker; noexcept; no allocation.

#include <cstdint>

#include "gw/shm/limits.hpp"

namespace gw::shm {
class Segment;
}

namespace gw::api {

/// A limit_req rate in integer microseconds: interval = 1 s / rate,
/// tolerance = burst * interval.
struct RateParams {
  uint64_t interval_us = 1;
  uint64_t tolerance_us = 0;
  /// From a rate in requests per second (> 0) and a burst (>= 0).
  static RateParams from(double rate, uint32_t burst) noexcept;
};

struct GcraStep {
  bool allowed = false;
  uint64_t tat = 0;      ///< the new TAT (allowed), or the one to keep (refused: unchanged, or cut to its bound)
  uint64_t wait_us = 0;  ///< refused: time until a request would be allowed
};
/// One GCRA decision; pure (the clock is the caller's).
/// A TAT further ahead than `p` can leave one (written under a slower rate,
/// before a reload or a restart raised it) counts as a full bucket's debt
/// under `p` (one interval to wait): a raised limit holds at once for keys
/// already limited, which waited up to (burst + 1) / the old rate (21 s at
/// rate 1, burst 20, raised to 1000), as nginx's excess, kept in requests,
/// drains at the new rate. The refusal returns the TAT cut to that bound:
/// the caller keeps it, or the debt would never drain (the bound moves with
/// the clock).
constexpr GcraStep gcra(uint64_t tat, uint64_t now_us, RateParams p) noexcept {
  const uint64_t cap = now_us + p.tolerance_us + p.interval_us;
  const uint64_t t = tat > cap ? cap : tat > now_us ? tat : now_us;
  if (t - now_us > p.tolerance_us) return {false, t, t - now_us - p.tolerance_us};
  return {true, t + p.interval_us, 0};
}

enum class LimitResult : uint8_t { allowed, limited, full };

struct ReqDecision {
  LimitResult result = LimitResult::allowed;
  uint64_t wait_us = 0;  ///< limited: until the next request would be allowed
};

/// A connection counted by acquire_conn(); release it exactly once.
struct ConnTicket {
  LimitResult result = LimitResult::allowed;
  uint32_t entry = 0;  ///< entry index + 1; 0 = nothing held
};

class LimitTable {
 public:
  /// Over raw memory (tests): `entries` of `capacity` (a multiple of
  /// kLimitWays), `held` = this worker's row (may be null).
  LimitTable(shm::LimitEntry* entries, uint32_t capacity, std::atomic<uint16_t>* held,
             shm::GuardCounters* counters) noexcept;
  /// Worker `worker`'s view of the segment's table.
  LimitTable(const shm::Segment& seg, uint32_t worker) noexcept;

  /// limit_req: takes a token for key hash `h`.
  ReqDecision take(uint64_t h, RateParams p, uint64_t now_us, uint64_t now_ms) noexcept;
  /// limit_conn: counts one more connection for `h` unless `max` are open.
  ConnTicket acquire_conn(uint64_t h, uint32_t max, uint64_t now_ms) noexcept;
  /// Gives back a connection counted by acquire_conn().
  void release_conn(uint32_t entry) noexcept;
  /// Open connections counted for `h` (0 if absent). For tests and status.
  uint32_t conns(uint64_t h) const noexcept;
  /// Whether `h` has an entry. For tests.
  bool contains(uint64_t h) const noexcept;

  struct Stats {
    uint32_t used = 0;    ///< entries holding a key
    uint32_t pinned = 0;  ///< entries with open connections
    uint64_t conns = 0;   ///< open connections counted
  };
  Stats stats() const noexcept;
  uint32_t capacity() const noexcept { return capacity_; }

  /// The master, after worker `worker` died: gives back every connection the
  /// worker held (it held them in its row of the held matrix), then zeroes the row.
  static void release_worker(const shm::Segment& seg, uint32_t worker) noexcept;
  /// The master at start, when no worker of a previous run is alive: every
  /// connection count and held row to zero.
  static void reset_conns(const shm::Segment& seg) noexcept;

 private:
  shm::LimitEntry* find(uint64_t fp, uint32_t set) const noexcept;
  /// Takes a way of `set` for `fp` with `conns` connections: an empty one,
  /// else the least recently used of the keys with nothing to lose (a full
  /// bucket, no open connection). nullptr and full=true if there is none (every
  /// way has open connections or a bucket still refilling); nullptr and
  /// full=false on a lost race.
  shm::LimitEntry* claim(uint64_t fp, uint32_t set, uint32_t conns, uint64_t now_ms, uint64_t now_us,
                         bool& full) noexcept;
  uint32_t set_of(uint64_t h) const noexcept { return static_cast<uint32_t>(((h & 0xffffffffu) * sets_) >> 32); }
  void bump(std::atomic<uint64_t> shm::GuardCounters::*field) noexcept;

  shm::LimitEntry* entries_ = nullptr;
  uint32_t capacity_ = 0;
  uint32_t sets_ = 0;
  std::atomic<uint16_t>* held_ = nullptr;
  shm::GuardCounters* counters_ = nullptr;
};

/// The fingerprint (40 bits, never 0) and state tag (24 bits, never 0) of a hash.
constexpr uint64_t limit_fingerprint(uint64_t h) noexcept {
  const uint64_t fp = h >> 24;
  return fp ? fp : 1;
}
constexpr uint64_t limit_tag(uint64_t fp) noexcept {
  const uint64_t t = (fp * 0x9e3779b97f4a7c15ull) >> 40;
  return t ? t : 1;
}

}  // namespace gw::api

#pragma once
// Shared-memory layout of the API-gateway state (issue 6): the rate/connection
// limit table and per-worker guard counters. Plain atomics at fixed offsets;
// the logic that reads and writes them is in gw/api/limit_table.hpp.
//
// The limit table is N-way set associative (kLimitWays entries per set, LRU
// within the set). An entry is two words that are each changed by one CAS:
//
//   key   = fingerprint (40 bits) << 24 | open connections (24 bits)   0 = empty
//   state = tag (24 bits) << 40 | theoretical arrival time, µs mod 2^40 (limit_req)
//
// An entry whose connection count is non-zero is never evicted: the count and
// the fingerprint change together in one CAS, so a claim cannot slip between
// a check and an increment. `state` belongs to the key whose fingerprint
// gives its tag; a state of another tag is a previous occupant's and counts
// as a full bucket.

#include <atomic>
#include <cstdint>

namespace gw::shm {

inline constexpr uint32_t kLimitWays = 8;  ///< entries per set (LRU within a set)

struct alignas(32) LimitEntry {
  std::atomic<uint64_t> key;      ///< fingerprint << 24 | connections; 0 = empty
  std::atomic<uint64_t> state;    ///< tag << 40 | TAT (µs, mod 2^40); 0 = none
  std::atomic<uint64_t> used_ms;  ///< monotonic ms of the last use (LRU victim choice)
  std::atomic<uint64_t> reserved;
};
static_assert(sizeof(LimitEntry) == 32);
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint16_t>::is_always_lock_free);

/// Per-worker counters of the guard (limit_conn, limit_req, auth). One writer
/// per row (its worker): relaxed load + store. The master zeroes nothing here:
/// they are history, shown by `gwctl status`.
struct alignas(64) GuardCounters {
  std::atomic<uint64_t> conn_rejected;     ///< connections closed at accept by limit_conn
  std::atomic<uint64_t> req_limited;       ///< requests answered 429 by limit_req
  std::atomic<uint64_t> limit_full;        ///< limit lookups that found every way of the set pinned (refused)
  std::atomic<uint64_t> evictions;         ///< limit entries this worker took over from another key (LRU)
  std::atomic<uint64_t> auth_ok;           ///< requests authenticated
  std::atomic<uint64_t> auth_failed;       ///< requests answered 401
  std::atomic<uint64_t> auth_forbidden;    ///< requests answered 403 (allow list)
  std::atomic<uint64_t> basic_cache_hits;  ///< basic-auth verifications answered from the worker's cache
  std::atomic<uint64_t> jwt_cache_hits;    ///< JWTs answered from the worker's cache (ok or expired)
};
static_assert(sizeof(GuardCounters) == 128);

}  // namespace gw::shm

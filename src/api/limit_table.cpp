#include "gw/api/limit_table.hpp"

#include <algorithm>
#include <cmath>

#include "gw/shm/segment.hpp"

namespace gw::api {
namespace {

constexpr uint64_t kConnMask = (uint64_t{1} << 24) - 1;
constexpr uint64_t kTatMask = (uint64_t{1} << 40) - 1;
constexpr uint64_t kTatHalf = uint64_t{1} << 39;
/// A TAT can lie at most this far ahead of now (the config caps
/// (burst + 1) / rate at one day); a stored one further ahead is a wrapped
/// ancient one, and an entry unused this long has a full bucket anyway.
constexpr uint64_t kMaxAheadUs = 86400ull * 1000000 + 1000000;
constexpr uint64_t kMaxIdleMs = 86400ull * 1000;
/// CAS retries before a lookup gives up (each failure is another worker's progress).
constexpr int kMaxRetries = 64;

constexpr uint64_t fp_of(uint64_t key) noexcept {
  return key >> 24;
}

// The TAT a state word holds, as an absolute time near now_us.
uint64_t decode_tat(uint64_t state, uint64_t now_us) noexcept {
  const uint64_t diff = ((state & kTatMask) - now_us) & kTatMask;  // (tat - now) mod 2^40
  if (diff < kTatHalf) {
    return diff > kMaxAheadUs ? 0 : now_us + diff;  // ahead (or a wrapped old one)
  }
  const uint64_t behind = (uint64_t{1} << 40) - diff;
  return behind > now_us ? 0 : now_us - behind;
}

}  // namespace

RateParams RateParams::from(double rate, uint32_t burst) noexcept {
  RateParams p;
  const double us = 1e6 / rate;
  p.interval_us = us < 1 ? 1 : static_cast<uint64_t>(std::llround(us));
  p.tolerance_us = p.interval_us * burst;
  // The config caps (burst + 1) / rate at a day; a TAT further ahead than
  // kMaxAheadUs would read as a wrapped old one.
  if (p.tolerance_us + p.interval_us > kMaxAheadUs - 1000000) {
    p.interval_us = std::min<uint64_t>(p.interval_us, kMaxAheadUs - 1000000);
    p.tolerance_us = kMaxAheadUs - 1000000 - p.interval_us;
  }
  return p;
}

LimitTable::LimitTable(shm::LimitEntry* entries, uint32_t capacity, std::atomic<uint16_t>* held,
                       shm::GuardCounters* counters) noexcept
    : entries_(entries), capacity_(capacity), sets_(capacity / shm::kLimitWays), held_(held), counters_(counters) {}

LimitTable::LimitTable(const shm::Segment& seg, uint32_t worker) noexcept
    : LimitTable(seg.limit_entries(), seg.caps().max_limit_keys, seg.limit_held(worker), &seg.guard(worker)) {}

void LimitTable::bump(std::atomic<uint64_t> shm::GuardCounters::*field) noexcept {
  if (!counters_) return;
  auto& c = counters_->*field;
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);  // one writer per row
}

shm::LimitEntry* LimitTable::find(uint64_t fp, uint32_t set) const noexcept {
  shm::LimitEntry* e = entries_ + size_t{set} * shm::kLimitWays;
  for (uint32_t w = 0; w < shm::kLimitWays; ++w)
    if (fp_of(e[w].key.load(std::memory_order_acquire)) == fp) return &e[w];
  return nullptr;
}

shm::LimitEntry* LimitTable::claim(uint64_t fp, uint32_t set, uint32_t conns, uint64_t now_ms, uint64_t now_us,
                                   bool& full) noexcept {
  full = false;
  shm::LimitEntry* e = entries_ + size_t{set} * shm::kLimitWays;
  // The victim: an empty way; else the least recently used key with nothing
  // to lose (a full bucket again, no state yet, or idle for a day: a new entry
  // starts full too); else, as nginx when its zone runs out, the least
  // recently used key. Keys still paying off their requests are thus the last
  // to go: a flood of new keys (another route's, say) that refill in time
  // cannot reset a limited key's bucket. Open connections are never evicted.
  shm::LimitEntry *victim = nullptr, *spare = nullptr;
  uint64_t victim_key = 0, spare_key = 0, oldest = ~0ull, oldest_spare = ~0ull;
  bool empty = false;
  for (uint32_t w = 0; w < shm::kLimitWays; ++w) {
    const uint64_t k = e[w].key.load(std::memory_order_acquire);
    if (k == 0) {  // an empty way: the first one, so that racing claimers pick the same
      victim = &e[w];
      victim_key = 0;
      empty = true;
      break;
    }
    if (k & kConnMask) continue;  // open connections: never evicted
    const uint64_t used = e[w].used_ms.load(std::memory_order_relaxed);
    const uint64_t st = e[w].state.load(std::memory_order_acquire);
    const bool refilled =
        (st >> 40) != limit_tag(fp_of(k)) || now_ms > used + kMaxIdleMs || decode_tat(st, now_us) <= now_us;
    if (refilled && used < oldest_spare) {
      oldest_spare = used;
      spare = &e[w];
      spare_key = k;
    }
    if (used < oldest) {
      oldest = used;
      victim = &e[w];
      victim_key = k;
    }
  }
  if (!empty && spare) {
    victim = spare;
    victim_key = spare_key;
  }
  if (!victim) {
    full = true;
    return nullptr;
  }
  // An evicted key's bucket goes with it. Its state word carries that key's
  // 24-bit tag, which the new key's tag equals once in 16.7 million evictions;
  // left in place, the new key would inherit the old bucket. The word is
  // cleared only if it is still what it was before the claim: a worker that
  // has meanwhile taken a token for the new key keeps it (a plain store could
  // erase it and admit one request too many), and a worker still on the old
  // key sees its own CAS fail and looks again.
  uint64_t old_state = victim->state.load(std::memory_order_acquire);
  if (!victim->key.compare_exchange_strong(victim_key, fp << 24 | conns, std::memory_order_acq_rel,
                                           std::memory_order_acquire))
    return nullptr;  // another worker took it first: look again
  victim->used_ms.store(now_ms, std::memory_order_relaxed);
  victim->state.compare_exchange_strong(old_state, 0, std::memory_order_acq_rel, std::memory_order_acquire);
  if (victim_key != 0) bump(&shm::GuardCounters::evictions);
  return victim;
}

ReqDecision LimitTable::take(uint64_t h, RateParams p, uint64_t now_us, uint64_t now_ms) noexcept {
  const uint64_t fp = limit_fingerprint(h), tag = limit_tag(fp);
  const uint32_t set = set_of(h);
  for (int attempt = 0; attempt < kMaxRetries; ++attempt) {
    shm::LimitEntry* e = find(fp, set);
    if (!e) {
      bool full = false;
      e = claim(fp, set, 0, now_ms, now_us, full);
      if (full) {
        bump(&shm::GuardCounters::limit_full);
        return {LimitResult::full, 0};
      }
      if (!e) continue;
    }
    uint64_t s = e->state.load(std::memory_order_acquire);
    for (;;) {
      uint64_t tat = 0;
      if ((s >> 40) == tag) {
        tat = now_ms > e->used_ms.load(std::memory_order_relaxed) + kMaxIdleMs ? 0 : decode_tat(s, now_us);
      } else if (fp_of(e->key.load(std::memory_order_acquire)) != fp) {
        break;  // the entry went to another key meanwhile: look again
      }         // else: just claimed (by us or another worker), no state yet: a full bucket
      const GcraStep step = gcra(tat, now_us, p);
      if (!step.allowed) {
        // A TAT cut to what these parameters allow (a rate raised since it
        // was written) is kept, so the debt drains at the new rate (best
        // effort: a request racing it decides on its own).
        if (step.tat < tat)
          e->state.compare_exchange_strong(s, tag << 40 | (step.tat & kTatMask), std::memory_order_acq_rel,
                                           std::memory_order_acquire);
        e->used_ms.store(now_ms, std::memory_order_relaxed);
        bump(&shm::GuardCounters::req_limited);
        return {LimitResult::limited, step.wait_us};
      }
      if (e->state.compare_exchange_weak(s, tag << 40 | (step.tat & kTatMask), std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
        e->used_ms.store(now_ms, std::memory_order_relaxed);
        return {LimitResult::allowed, 0};
      }
      // s now holds the current state: decide again.
    }
  }
  bump(&shm::GuardCounters::limit_full);
  return {LimitResult::full, 0};
}

ConnTicket LimitTable::acquire_conn(uint64_t h, uint32_t max, uint64_t now_ms) noexcept {
  const uint64_t fp = limit_fingerprint(h);
  const uint32_t set = set_of(h);
  if (max == 0) return {LimitResult::limited, 0};
  for (int attempt = 0; attempt < kMaxRetries; ++attempt) {
    shm::LimitEntry* e = find(fp, set);
    if (!e) {
      bool full = false;
      e = claim(fp, set, 1, now_ms, now_ms * 1000, full);
      if (full) {
        bump(&shm::GuardCounters::limit_full);
        return {LimitResult::full, 0};
      }
      if (!e) continue;
    } else {
      uint64_t k = e->key.load(std::memory_order_acquire);
      bool counted = false;
      while (fp_of(k) == fp) {
        if ((k & kConnMask) >= max || (k & kConnMask) == kConnMask) return {LimitResult::limited, 0};
        if (e->key.compare_exchange_weak(k, k + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
          counted = true;
          break;
        }
      }
      if (!counted) continue;  // evicted between find and CAS (it had no connections): look again
      e->used_ms.store(now_ms, std::memory_order_relaxed);
    }
    const uint32_t idx = static_cast<uint32_t>(e - entries_);
    if (held_)
      held_[idx].store(static_cast<uint16_t>(held_[idx].load(std::memory_order_relaxed) + 1),
                       std::memory_order_relaxed);
    return {LimitResult::allowed, idx + 1};
  }
  bump(&shm::GuardCounters::limit_full);
  return {LimitResult::full, 0};
}

void LimitTable::release_conn(uint32_t entry) noexcept {
  if (entry == 0 || entry > capacity_) return;
  const uint32_t idx = entry - 1;
  shm::LimitEntry& e = entries_[idx];
  uint64_t k = e.key.load(std::memory_order_acquire);
  // A counted entry is never evicted, so its key is still ours.
  while ((k & kConnMask) != 0) {
    if (e.key.compare_exchange_weak(k, k - 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
  }
  if (held_) {
    const uint16_t n = held_[idx].load(std::memory_order_relaxed);
    if (n) held_[idx].store(static_cast<uint16_t>(n - 1), std::memory_order_relaxed);
  }
}

uint32_t LimitTable::conns(uint64_t h) const noexcept {
  const shm::LimitEntry* e = find(limit_fingerprint(h), set_of(h));
  return e ? static_cast<uint32_t>(e->key.load(std::memory_order_acquire) & kConnMask) : 0;
}

bool LimitTable::contains(uint64_t h) const noexcept {
  return find(limit_fingerprint(h), set_of(h)) != nullptr;
}

LimitTable::Stats LimitTable::stats() const noexcept {
  Stats s;
  for (uint32_t i = 0; i < capacity_; ++i) {
    const uint64_t k = entries_[i].key.load(std::memory_order_relaxed);
    if (!k) continue;
    ++s.used;
    if (k & kConnMask) ++s.pinned, s.conns += k & kConnMask;
  }
  return s;
}

void LimitTable::release_worker(const shm::Segment& seg, uint32_t worker) noexcept {
  if (worker >= seg.stat_workers()) return;  // no such row: nothing held
  const uint32_t cap = seg.caps().max_limit_keys;
  std::atomic<uint16_t>* held = seg.limit_held(worker);
  shm::LimitEntry* entries = seg.limit_entries();
  for (uint32_t i = 0; i < cap; ++i) {
    const uint16_t n = held[i].load(std::memory_order_relaxed);
    if (!n) continue;
    uint64_t k = entries[i].key.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t c = k & kConnMask;
      const uint64_t nk = k - (c < n ? c : n);
      if (nk == k || entries[i].key.compare_exchange_weak(k, nk, std::memory_order_acq_rel, std::memory_order_acquire))
        break;
    }
    held[i].store(0, std::memory_order_relaxed);
  }
}

void LimitTable::reset_conns(const shm::Segment& seg) noexcept {
  const uint32_t cap = seg.caps().max_limit_keys;
  shm::LimitEntry* entries = seg.limit_entries();
  for (uint32_t i = 0; i < cap; ++i) {
    const uint64_t k = entries[i].key.load(std::memory_order_relaxed);
    if (k & kConnMask) entries[i].key.store(k & ~kConnMask, std::memory_order_relaxed);
  }
  for (uint32_t w = 0; w < seg.stat_workers(); ++w) {
    std::atomic<uint16_t>* held = seg.limit_held(w);
    for (uint32_t i = 0; i < cap; ++i)
      if (held[i].load(std::memory_order_relaxed)) held[i].store(0, std::memory_order_relaxed);
  }
}

}  // namespace gw::api

#pragma once
// Host selection for an upstream. The lowest-priority-number pool that has an
// eligible host wins; inside it the pool's method picks (one file per method).
// "Eligible" is the caller's predicate (admin state, health, hosts already
// tried for this connection) and "load" its view of a host's active
// connections over all workers, so the balancer stays a pure function over a
// snapshot plus its own per-worker state (round-robin weights, rings, tables,
// a random generator).
//
// Hash methods with no key fall back to round robin over the same pool and
// report it through `fell_back`. A hash method whose key lands only on
// ineligible hosts (after its bounded tries) also falls back to round robin,
// as nginx does, without that report.

#include <atomic>
#include <cstdint>
#include <string_view>
#include <vector>

#include "gw/balance/chash.hpp"
#include "gw/balance/hash.hpp"
#include "gw/balance/least_conn.hpp"
#include "gw/balance/maglev.hpp"
#include "gw/balance/nginx_hash.hpp"
#include "gw/balance/random.hpp"
#include "gw/balance/round_robin.hpp"
#include "gw/balance/snapshot.hpp"

namespace gw::balance {

class Balancer {
 public:
  Balancer(uint32_t max_hosts, uint64_t seed) : rr_(max_hosts), rng_(seed) {}

  /// Where round-robin tickets come from: `tickets[pool]` for the table's pool
  /// index (the worker passes the shm counters, shared by all workers). Null =
  /// counters private to this balancer.
  void set_tickets(std::atomic<uint64_t>* (*source)(void* ctx, uint32_t pool), void* ctx) noexcept {
    ticket_source_ = source;
    ticket_ctx_ = ctx;
  }
  /// Where `ewma` reads a host's latency (microseconds, 0 = unknown).
  void set_latency(uint64_t (*source)(void* ctx, const shm::HostRecord& h), void* ctx) noexcept {
    latency_source_ = source;
    latency_ctx_ = ctx;
  }

  /// Rebuilds the derived structures (chash rings, maglev tables, round-robin
  /// schedules) of the pools whose method or hosts (their table positions,
  /// addresses, ids and weights) changed; the others keep theirs. The smooth
  /// WRR state of a pool's hosts starts again only when its method, hosts or
  /// weights changed, not when it only moved in the table. Call after each
  /// Snapshot::build(); allocates.
  void rebuild(const Snapshot& s);
  /// Pools the last rebuild() built anew (tests).
  size_t last_rebuilt() const noexcept { return last_rebuilt_; }

  /// Returns a host index into the snapshot's table, or -1 if no pool of the
  /// upstream has an eligible host. `retry_pool()` is asked when a pool gave
  /// none: true picks from that pool once more (the caller relaxed its
  /// eligibility: slow start) before the next pool. Hot path: no allocation.
  template <typename Eligible, typename Load, typename Retry = bool (*)() noexcept>
  int pick(const Snapshot& s, const UpstreamView& u, std::string_view key, Eligible&& eligible, Load&& load,
           bool* fell_back = nullptr, Retry&& retry_pool = no_retry) noexcept {
    return pick(s, u, HashKey::of(key), eligible, load, fell_back, retry_pool);
  }
  template <typename Eligible, typename Load, typename Retry = bool (*)() noexcept>
  int pick(const Snapshot& s, const UpstreamView& u, HashKey key, Eligible&& eligible, Load&& load,
           bool* fell_back = nullptr, Retry&& retry_pool = no_retry) noexcept {
    for (const PoolView& p : s.pools(u)) {
      int h = pick_pool(s, u, p, key, eligible, load, fell_back);
      if (h < 0 && retry_pool()) h = pick_pool(s, u, p, key, eligible, load, fell_back);
      if (h >= 0) return h;
    }
    return -1;
  }

 private:
  static bool no_retry() noexcept { return false; }

  template <typename Eligible, typename Load>
  int pick_pool(const Snapshot& s, const UpstreamView& u, const PoolView& p, HashKey key, Eligible& eligible,
                Load& load, bool* fell_back) noexcept {
    auto hosts = s.table().hosts();
    auto cands = s.hosts(p);
    int h = -1;
    if (shm::method_uses_key(p.method) && key.empty()) {
      h = rr_.pick(hosts, cands, eligible);
      // Only a connection this pool routes counts: with no usable host here,
      // a later pool's method routes it (its own fallback counts there).
      if (fell_back && h >= 0) *fell_back = true;
    } else {
      const PoolState* st = state(s, p);
      switch (p.method) {
        case shm::Method::round_robin:
          if (st && !st->schedule.empty()) {
            // A few shared tickets (the pool-wide sequence); when they land on
            // down hosts only (a pool mostly out: failover), this worker's
            // own smooth WRR over the eligible hosts, at a cost of one pass
            // over the pool rather than a walk of the whole cycle.
            h = rr_.pick_scheduled(
                hosts, st->schedule, [&] { return next_ticket(p.pool, *st); }, eligible, rng_, 2 * cands.size() + 2);
            if (h < 0) h = rr_.pick(hosts, cands, eligible);
          } else {
            h = rr_.pick(hosts, cands, eligible);
          }
          break;
        case shm::Method::chash:
          if (!st) break;
          if (u.balance_factor == 0) {
            h = st->ring.pick(key, eligible);
          } else {
            // Bounded loads: skip hosts that would exceed factor x the mean
            // load, walking the whole ring if need be (HAProxy, Envoy).
            // A host's limit is its weight's share of factor x (load + 1).
            uint64_t total = 0, weights = 0;
            for (uint32_t i : cands)
              if (hosts[i].weight && eligible(i)) total += load(i), weights += hosts[i].weight;
            if (weights == 0) break;  // none eligible: no walk of the whole ring
            const uint64_t scaled = (total + 1) * u.balance_factor, den = 100 * weights;
            h = st->ring.pick(
                key,
                [&](uint32_t i) noexcept {
                  return eligible(i) && (load(i) + 1) * den <= scaled * hosts[i].weight + den - 1;
                },
                st->ring.size());
          }
          break;
        case shm::Method::hash: h = nginx_hash_pick(hosts, cands, key, eligible); break;
        case shm::Method::crc32_mod: h = crc32_mod_pick(hosts, cands, key, eligible); break;
        case shm::Method::maglev: h = st ? st->maglev.pick(key, eligible) : -1; break;
        case shm::Method::least_conn: h = least_conn_pick(hosts, cands, eligible, load, rr_); break;
        case shm::Method::least_request:
          if (st && !st->weights.empty())
            h = p2c_pick_drawn(
                hosts, cands, eligible, load, [&] { return st->weights.draw(rng_); }, rr_);
          else h = p2c_pick(hosts, cands, eligible, load, rng_, rr_);
          break;
        case shm::Method::random: h = weighted_random_pick(hosts, cands, eligible, rng_); break;
        case shm::Method::ewma: {
          // Power of two choices by peak-EWMA latency x (active + 1) / weight.
          auto cost = [&](uint32_t i) noexcept {
            uint64_t lat = latency_source_ ? latency_source_(latency_ctx_, hosts[i]) : 0;
            return (lat ? lat : 1) * (load(i) + 1);
          };
          h = p2c_pick(hosts, cands, eligible, cost, rng_, rr_);
          break;
        }
      }
      if (h < 0 && shm::method_uses_key(p.method)) h = rr_.pick(hosts, cands, eligible);
    }
    return h;
  }

 public:
  /// Round-robin-only form (tests, and callers without keys or loads).
  template <typename Eligible>
  int pick(const Snapshot& s, const UpstreamView& u, Eligible&& eligible) noexcept {
    return pick(s, u, HashKey{}, eligible, [](uint32_t) { return uint64_t{0}; });
  }

  void on_failure(uint32_t slot, uint32_t tag, uint32_t weight, uint32_t max_fails) noexcept {
    rr_.on_failure(slot, tag, weight, max_fails);
  }

 private:
  struct PoolState {
    ChashRing ring;
    MaglevTable maglev;
    std::vector<uint32_t> schedule;  ///< round robin: one smooth WRR cycle
    AliasTable weights;              ///< least_request: draws by weight
    uint64_t local_ticket = 0;       ///< used when no shared ticket source is set
    uint64_t sig = 0;                ///< what the derived structures were built from (rebuild); 0 = taken
    uint64_t same = 0;               ///< the pool's identity, hosts and weights, without table indices
  };
  uint64_t next_ticket(uint32_t pool, const PoolState& st) noexcept {
    if (ticket_source_)
      if (std::atomic<uint64_t>* t = ticket_source_(ticket_ctx_, pool))
        return t->fetch_add(1, std::memory_order_relaxed);
    return const_cast<PoolState&>(st).local_ticket++;
  }
  const PoolState* state(const Snapshot& s, const PoolView& p) const noexcept {
    size_t i = s.index_of(p);
    return i < pools_.size() ? &pools_[i] : nullptr;
  }

  RoundRobin rr_;
  Rng rng_;
  size_t last_rebuilt_ = 0;
  std::vector<PoolState> pools_;  // indexed like Snapshot::all_pools()
  std::atomic<uint64_t>* (*ticket_source_)(void*, uint32_t) = nullptr;
  void* ticket_ctx_ = nullptr;
  uint64_t (*latency_source_)(void*, const shm::HostRecord&) = nullptr;
  void* latency_ctx_ = nullptr;
};

}  // namespace gw::balance

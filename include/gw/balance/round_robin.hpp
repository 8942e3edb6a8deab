#pragma once
// Smooth weighted round robin, nginx's algorithm
// (ngx_http_upstream_round_robin.c, ngx_http_upstream_get_peer): each pick adds
// every candidate's effective weight to its current weight, takes the largest
// current weight and subtracts the total from it. Weights {a:5, b:1, c:1} give
// a a b a c a a. A failure lowers the effective weight by weight / max_fails;
// it recovers by one per pick that considers the host.
//
// State is per worker and indexed by the host's runtime slot; a tag per entry
// resets it when a slot is given to another host. Pure: no I/O, no shm access.

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "gw/balance/hash.hpp"
#include "gw/shm/table.hpp"

namespace gw::balance {

class RoundRobin {
 public:
  explicit RoundRobin(uint32_t max_hosts) : peers_(max_hosts) {}

  /// Picks one of `candidates` (indices into `hosts`) for which `eligible(i)`
  /// is true. Returns the host index, or -1 if none is eligible. Weight-0 hosts
  /// are never picked.
  template <typename Eligible>
  int pick(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates, Eligible&& eligible) noexcept {
    Peer* best = nullptr;
    int best_index = -1;
    int64_t total = 0;
    for (uint32_t i : candidates) {
      const shm::HostRecord& h = hosts[i];
      if (h.weight == 0 || !eligible(i)) continue;
      Peer& p = peer(h);
      p.current += p.effective;
      total += p.effective;
      if (p.effective < static_cast<int32_t>(h.weight)) ++p.effective;
      if (!best || p.current > best->current) {
        best = &p;
        best_index = static_cast<int>(i);
      }
    }
    if (best) best->current -= static_cast<int32_t>(total);
    return best_index;
  }

  /// Global form: the pool's smooth WRR sequence is computed once per table
  /// (build_schedule) and every worker walks the same sequence with tickets
  /// drawn from one shared counter, so the weights hold over the pool as a
  /// whole, not per worker. A host whose effective weight is lowered after a failure is
  /// admitted with probability effective / weight, and each consideration
  /// raises its effective weight by one, as nginx's recovery does.
  /// At most `max_draws` tickets are drawn (a small multiple of the pool's
  /// hosts: each is an atomic on a shared line): -1 when they all landed on
  /// ineligible positions (the pool mostly down, or other workers took the
  /// eligible ones); the caller then picks from the eligible hosts itself.
  template <typename Eligible, typename Ticket>
  int pick_scheduled(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> schedule, Ticket&& ticket,
                     Eligible&& eligible, Rng& rng, size_t max_draws) noexcept {
    const size_t n = schedule.size();
    int skipped = -1;
    // An ineligible position is skipped by drawing the next ticket (not by
    // taking the next position), so the eligible hosts keep their weights.
    for (size_t k = 0; k < std::min(n, max_draws); ++k) {
      uint32_t i = schedule[ticket() % n];
      const shm::HostRecord& h = hosts[i];
      if (h.weight == 0 || !eligible(i)) continue;
      Peer& p = peer(h);
      if (p.effective < static_cast<int32_t>(h.weight)) {
        const int32_t before = p.effective++;
        if (static_cast<int64_t>(rng.below(h.weight)) >= before) {
          if (skipped < 0) skipped = static_cast<int>(i);
          continue;
        }
      }
      return static_cast<int>(i);
    }
    return skipped;  // only recovering hosts came up: take the first
  }

  /// The smooth WRR sequence over `candidates` for one full cycle (sum of
  /// weights / their gcd). Empty if that cycle is longer than `max_len` or
  /// would take more than `max_work` steps to compute; callers then use the
  /// per-worker pick().
  static std::vector<uint32_t> build_schedule(std::span<const shm::HostRecord> hosts,
                                              std::span<const uint32_t> candidates, size_t max_len = 65536,
                                              size_t max_work = 1u << 23);

  /// A connection to host (slot, tag, weight) failed: lower its effective
  /// weight (nginx's `effective_weight -= weight / max_fails`).
  void on_failure(uint32_t slot, uint32_t tag, uint32_t weight, uint32_t max_fails) noexcept {
    if (max_fails == 0) return;
    Peer& p = peers_[slot];
    if (p.tag != tag) return;
    p.effective -= static_cast<int32_t>(weight / max_fails);
    if (p.effective < 0) p.effective = 0;
  }

  /// Drops the state of the host in `slot`: its next pick starts it afresh
  /// (current 0, effective = weight). For a pool whose hosts or weights
  /// changed (Balancer::rebuild); tags are never 0, so no host matches.
  void forget(uint32_t slot) noexcept {
    if (slot < peers_.size()) peers_[slot].tag = 0;
  }

 private:
  struct Peer {
    int32_t current = 0;
    int32_t effective = 0;
    uint32_t tag = 0;
  };
  Peer& peer(const shm::HostRecord& h) noexcept {
    Peer& p = peers_[h.slot];
    if (p.tag != h.tag) p = Peer{0, static_cast<int32_t>(h.weight), h.tag};
    if (p.effective > static_cast<int32_t>(h.weight)) p.effective = static_cast<int32_t>(h.weight);
    return p;
  }
  std::vector<Peer> peers_;
};

}  // namespace gw::balance

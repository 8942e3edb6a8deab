#pragma once
// Load-aware methods over the shm connection counters (global across workers):
//  - least_conn: the fewest active connections per unit of weight (nginx's
//    least_conn, compared by cross-multiplication); ties are broken by smooth
//    weighted round robin among the tied hosts.
//  - least_request: power of two random choices: two eligible hosts drawn by
//    weight, the less loaded per weight wins (HAProxy's "random(2)"). Drawn
//    by weight, not uniformly: idle hosts (loads 0, a tie) then still take
//    shares that follow their weights. When the draws find fewer than two
//    usable hosts (most of the pool out), least_conn's pass decides.

#include <cstdint>
#include <span>

#include "gw/balance/hash.hpp"
#include "gw/balance/round_robin.hpp"
#include "gw/shm/table.hpp"

namespace gw::balance {

template <typename Eligible, typename Load>
int least_conn_pick(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates, Eligible&& eligible,
                    Load&& load, RoundRobin& rr) noexcept {
  int best = -1;
  uint64_t best_load = 0, best_weight = 0;
  bool tie = false;
  for (uint32_t i : candidates) {
    const uint64_t w = hosts[i].weight;
    if (w == 0 || !eligible(i)) continue;
    const uint64_t l = load(i);
    if (best < 0 || l * best_weight < best_load * w) {
      best = static_cast<int>(i);
      best_load = l;
      best_weight = w;
      tie = false;
    } else if (l * best_weight == best_load * w) {
      tie = true;
    }
  }
  if (!tie) return best;
  int h = rr.pick(hosts, candidates, [&](uint32_t i) noexcept {
    const uint64_t w = hosts[i].weight;
    return w != 0 && eligible(i) && load(i) * best_weight == best_load * w;
  });
  return h >= 0 ? h : best;  // loads moved between the passes: keep the first answer
}

/// Two choices drawn by `draw()` (a position in `candidates`); the lower load
/// per weight wins, the first drawn on a tie.
template <typename Eligible, typename Load, typename Draw>
int p2c_pick_drawn(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates, Eligible&& eligible,
                   Load&& load, Draw&& draw, RoundRobin& rr) noexcept {
  if (candidates.empty()) return -1;
  int a = -1, b = -1;
  for (int attempt = 0; attempt < 16 && b < 0; ++attempt) {
    uint32_t i = candidates[draw()];
    if (hosts[i].weight == 0 || !eligible(i)) continue;
    if (a < 0) a = static_cast<int>(i);
    else if (static_cast<int>(i) != a) b = static_cast<int>(i);
    else if (candidates.size() == 1) break;
  }
  // The draws found fewer than two usable hosts: most of the pool (by weight,
  // for draws by weight) is out. Taking the one found (or round robin, for
  // none) ignored the loads: a loaded host among two usable of 20 took a
  // third of the picks. The least loaded per weight of the usable hosts
  // instead, as least_conn (one pass over the pool, only then).
  if (b < 0 && candidates.size() > 1) return least_conn_pick(hosts, candidates, eligible, load, rr);
  if (a < 0) return -1;
  if (b < 0) return a;
  const uint64_t la = load(static_cast<uint32_t>(a)), lb = load(static_cast<uint32_t>(b));
  const uint64_t wa = hosts[static_cast<size_t>(a)].weight, wb = hosts[static_cast<size_t>(b)].weight;
  return lb * wa < la * wb ? b : a;
}

/// The same with the two choices drawn uniformly (ewma, whose cost divides by the weight already).
template <typename Eligible, typename Load>
int p2c_pick(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates, Eligible&& eligible,
             Load&& load, Rng& rng, RoundRobin& rr) noexcept {
  return p2c_pick_drawn(
      hosts, candidates, eligible, load, [&] { return rng.below(candidates.size()); }, rr);
}

}  // namespace gw::balance

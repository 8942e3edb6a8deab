#pragma once
// A worker's derived view of a table: for each upstream its pools in priority
// order and each pool's hosts, as index arrays. Rebuilt only when the table
// generation changes (that is the only place it allocates).

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "gw/shm/runtime.hpp"
#include "gw/shm/table.hpp"

namespace gw::balance {

struct PoolView {
  uint32_t pool;   ///< index into the table's pool records
  uint32_t first;  ///< first entry in Snapshot::hosts
  uint32_t count;  ///< number of hosts
  int32_t priority;
  shm::Method method;
};

struct UpstreamView {
  uint32_t first_pool;  ///< first entry in Snapshot::pools (sorted by priority, then table order)
  uint32_t n_pools;
  shm::HealthPolicy health;
  uint32_t connect_timeout_ms;
  uint32_t idle_timeout_ms;
  uint32_t tries;
  uint32_t slow_start_ms;   ///< 0 = off
  uint32_t balance_factor;  ///< chash bounded loads, percent of the mean; 0 = off
};

class Snapshot {
 public:
  /// Derives the views from `t`, which must outlive the snapshot's use.
  void build(const shm::Table& t);

  const shm::Table& table() const noexcept { return *table_; }
  std::span<const UpstreamView> upstreams() const noexcept { return upstreams_; }
  std::span<const PoolView> pools(const UpstreamView& u) const noexcept {
    return {pools_.data() + u.first_pool, u.n_pools};
  }
  std::span<const uint32_t> hosts(const PoolView& p) const noexcept { return {hosts_.data() + p.first, p.count}; }
  /// Every pool view of every upstream; a view's position here is its stable index
  /// until the next build().
  std::span<const PoolView> all_pools() const noexcept { return pools_; }
  size_t index_of(const PoolView& p) const noexcept { return static_cast<size_t>(&p - pools_.data()); }
  int find_upstream(std::string_view name) const noexcept { return table_->find_upstream(name); }

 private:
  const shm::Table* table_ = nullptr;
  std::vector<UpstreamView> upstreams_;
  std::vector<PoolView> pools_;
  std::vector<uint32_t> hosts_;
};

}  // namespace gw::balance

#include "gw/balance/maglev.hpp"

#include <algorithm>
#include <string>

namespace gw::balance {

void MaglevTable::build(std::span<const shm::HostRecord> hosts, std::span<const uint32_t> candidates, uint32_t size) {
  hosts_.clear();
  ids_.clear();
  weights_.clear();
  table_.clear();
  struct Entry {
    uint64_t offset, skip, next, target;
    uint32_t weight;
  };
  std::vector<Entry> entries;
  uint32_t max_weight = 0;
  for (uint32_t i : candidates) {
    if (hosts[i].weight == 0 || hosts_.size() >= 65535) continue;
    // The host's identity for hashing is its address, as for chash: the same
    // backend keeps its entries across a rename of its id.
    std::string name = hosts[i].addr.to_string();
    uint64_t h1 = crc32(name);
    uint64_t h2 = crc32(name, crc32("maglev-skip"));
    entries.push_back({h1 % size, h2 % (size - 1) + 1, 0, 0, hosts[i].weight});
    hosts_.push_back(i);
    ids_.push_back(mix64(h1 << 32 | h2));
    weights_.push_back(hosts[i].weight);
    max_weight = std::max(max_weight, hosts[i].weight);
  }
  if (entries.empty()) return;
  constexpr uint16_t kFree = 0xffff;
  table_.assign(size, kFree);
  uint32_t filled = 0;
  for (uint64_t round = 0; filled < size; ++round) {
    for (size_t k = 0; k < entries.size() && filled < size; ++k) {
      Entry& e = entries[k];
      // A host of weight w takes its turn when round * w has reached its target;
      // the target then moves on by max_weight: w turns per max_weight rounds.
      if (round * e.weight < e.target) continue;
      e.target += max_weight;
      uint64_t c = (e.offset + e.skip * e.next) % size;
      while (table_[c] != kFree) {
        ++e.next;
        c = (e.offset + e.skip * e.next) % size;
      }
      table_[c] = static_cast<uint16_t>(k);
      ++e.next;
      ++filled;
    }
  }
}

}  // namespace gw::balance

#include "gw/shm/cluster.hpp"

#include <algorithm>
#include <cstring>

#include "gw/shm/seqlock.hpp"

namespace gw::shm {

const char* cluster_state_name(uint32_t state) noexcept {
  switch (state) {
    case kClusterOff: return "off";
    case kClusterConnecting: return "connecting";
    case kClusterSynced: return "synced";
    case kClusterDisconnected: return "disconnected";
    default: return "unknown";
  }
}

void set_cluster_text(ClusterRuntime& c, std::string_view endpoint, std::string_view error) noexcept {
  ClusterText t{};
  std::memcpy(t.endpoint, endpoint.data(), std::min(endpoint.size(), sizeof(t.endpoint) - 1));
  std::memcpy(t.error, error.data(), std::min(error.size(), sizeof(t.error) - 1));
  uint64_t words[sizeof(ClusterText) / 8];
  std::memcpy(words, &t, sizeof(t));
  seq_write(c.text_seq, c.text_words, words, std::size(words));
}

ClusterText read_cluster_text(const ClusterRuntime& c) noexcept {
  uint64_t words[sizeof(ClusterText) / 8];
  // The writer holds the seqlock for a few hundred nanoseconds; a writer that
  // died mid-write leaves it odd, so give up after a while and show nothing.
  for (int i = 0; i < 100000; ++i)
    if (seq_try_read(c.text_seq, c.text_words, words, std::size(words))) {
      ClusterText t{};
      std::memcpy(&t, words, sizeof(t));
      t.endpoint[sizeof(t.endpoint) - 1] = '\0';
      t.error[sizeof(t.error) - 1] = '\0';
      return t;
    }
  return ClusterText{};
}

void set_cluster_state(ClusterRuntime& c, uint32_t state, uint64_t wall_ms) noexcept {
  if (c.state.load(std::memory_order_relaxed) == state) return;
  c.since_ms.store(wall_ms, std::memory_order_relaxed);
  c.state.store(state, std::memory_order_release);
}

}  // namespace gw::shm

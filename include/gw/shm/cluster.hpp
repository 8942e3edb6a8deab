#pragma once
// Reading and writing the etcd sync state kept in the segment header
// (SegmentHeader::cluster). The numbers are single atomics; the two strings
// (endpoint, last error) go through a small seqlock so a reader never sees a
// half-written message. One writer: the sync process (and the master when it
// starts, before forking it).

#include <cstdint>
#include <string>
#include <string_view>

#include "gw/shm/segment.hpp"

namespace gw::shm {

/// "off", "connecting", "synced", "disconnected".
const char* cluster_state_name(uint32_t state) noexcept;

/// Sets the endpoint and the error text. Single writer.
void set_cluster_text(ClusterRuntime& c, std::string_view endpoint, std::string_view error) noexcept;

/// A consistent copy of the text (retries while the writer writes it).
ClusterText read_cluster_text(const ClusterRuntime& c) noexcept;

/// Changes the state and stamps since_ms if it differs from the current one.
void set_cluster_state(ClusterRuntime& c, uint32_t state, uint64_t wall_ms) noexcept;

}  // namespace gw::shm

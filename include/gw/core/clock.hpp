#pragma once
// Clocks. Code that makes time-based decisions (health, timeouts, balancers)
// takes `now` as a parameter so unit tests can inject time.

#include <cstdint>

namespace gw::core {

/// CLOCK_MONOTONIC in milliseconds / nanoseconds. Comparable across processes.
uint64_t monotonic_ms() noexcept;
uint64_t monotonic_ns() noexcept;
inline uint64_t monotonic_us() noexcept {
  return monotonic_ns() / 1000;
}
/// Wall clock (CLOCK_REALTIME) in milliseconds since the epoch.
uint64_t wall_ms() noexcept;

/// Formats wall-clock milliseconds as "2026-11-21T23:40:00.123Z" into buf (>= 32 bytes).
void format_iso8601(uint64_t wall_ms, char* buf, unsigned long size) noexcept;

}  // namespace gw::core

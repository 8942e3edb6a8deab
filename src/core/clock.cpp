#include "gw/core/clock.hpp"

#include <fmt/format.h>

#include <ctime>

namespace gw::core {

uint64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t monotonic_ms() noexcept {
  return monotonic_ns() / 1000000ull;
}

uint64_t wall_ms() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000ull + static_cast<uint64_t>(ts.tv_nsec) / 1000000ull;
}

void format_iso8601(uint64_t ms, char* buf, unsigned long size) noexcept {
  time_t sec = static_cast<time_t>(ms / 1000);
  tm t{};
  ::gmtime_r(&sec, &t);
  auto r = fmt::format_to_n(buf, size - 1, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", t.tm_year + 1900, t.tm_mon + 1,
                            t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, ms % 1000);
  buf[std::min<size_t>(r.size, size - 1)] = '\0';
}

}  // namespace gw::core

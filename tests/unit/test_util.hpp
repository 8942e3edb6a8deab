#pragma once
// Helpers shared by the unit tests.

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "gw/shm/segment.hpp"

namespace gw::testing {

/// Global operator new calls so far in this process (tests/unit/alloc_count.cpp).
uint64_t allocations() noexcept;
/// OpenSSL's malloc and realloc calls so far, if openssl_counted() (its
/// allocation hook was installed before its first allocation).
uint64_t openssl_allocations() noexcept;
bool openssl_counted() noexcept;

/// A uniquely named segment, unlinked at scope exit.
struct TempSegment {
  std::string name;
  shm::Segment seg;
  explicit TempSegment(shm::Caps caps = {4, 8, 16}) : name(unique_name()), seg(shm::Segment::create(name, caps, 4)) {}
  ~TempSegment() { shm::Segment::unlink(name); }
  static std::string unique_name() {
    static std::atomic<int> n{0};
    return "gwunit-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
  }
};

}  // namespace gw::testing

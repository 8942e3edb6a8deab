// Counts every global operator new in the unit test binary, so a test can
// prove that a code path allocates nothing (gw::testing::allocations()).
// libstdc++'s array and nothrow forms call this one.
#include <atomic>
#include <cstdlib>
#include <new>

#include "test_util.hpp"

namespace {
std::atomic<uint64_t> g_allocations{0};
}

uint64_t gw::testing::allocations() noexcept { return g_allocations.load(std::memory_order_relaxed); }

void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

// Counts every global operator new in the unit test binary, so a test can
// prove that a code path allocates nothing (gw::testing::allocations()).
// Every plain and nothrow form is replaced, with the matching deletes, so
// that a sanitizer runtime's own operator new is never paired with ours.
// (The align_val_t forms stay the runtime's, new and delete alike.)
#include <openssl/crypto.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "test_util.hpp"

namespace {
std::atomic<uint64_t> g_allocations{0};

void* counted(std::size_t n) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
}  // namespace

uint64_t gw::testing::allocations() noexcept {
  return g_allocations.load(std::memory_order_relaxed);
}

// OpenSSL's allocations, through its own hook. CRYPTO_set_mem_functions only
// works before OpenSSL's first allocation, so it is called during static
// initialisation (OpenSSL initialises lazily, on first use in a test).
namespace {
std::atomic<uint64_t> g_openssl{0};

void* openssl_malloc(size_t n, const char*, int) {
  g_openssl.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n);
}
void* openssl_realloc(void* p, size_t n, const char*, int) {
  g_openssl.fetch_add(1, std::memory_order_relaxed);
  return std::realloc(p, n);
}
void openssl_free(void* p, const char*, int) {
  std::free(p);
}

const bool g_openssl_hooked = CRYPTO_set_mem_functions(openssl_malloc, openssl_realloc, openssl_free) == 1;
}  // namespace

uint64_t gw::testing::openssl_allocations() noexcept {
  return g_openssl.load(std::memory_order_relaxed);
}
bool gw::testing::openssl_counted() noexcept {
  return g_openssl_hooked;
}

void* operator new(std::size_t n) {
  if (void* p = counted(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = counted(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return counted(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return counted(n);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}

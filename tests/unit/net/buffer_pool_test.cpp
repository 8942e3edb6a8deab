#include "gw/net/buffer_pool.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <vector>

using gw::net::BufferPool;

TEST_SUITE("net") {
  TEST_CASE("BufferPool: bounded, LIFO, buffers distinct and aligned, counts what is out") {
    BufferPool pool(100, 16 * 1024);
    CHECK(pool.capacity() == 0);  // nothing until the first acquire
    std::vector<char*> got;
    for (char* b; (b = pool.acquire()) != nullptr;) got.push_back(b);
    // Grown a chunk (64 buffers of 16 KiB) at a time, up to the first chunk at or
    // past the bound.
    CHECK(got.size() == 128);
    CHECK(pool.capacity() == 128);
    CHECK(pool.in_use() == 128);
    CHECK(std::set<char*>(got.begin(), got.end()).size() == got.size());
    for (char* b : got) CHECK(reinterpret_cast<uintptr_t>(b) % 16 == 0);
    for (size_t i = 1; i < 64; ++i) {  // a chunk's buffers are neighbours
      const char* lo = std::min(got[i], got[i - 1]);
      const char* hi = std::max(got[i], got[i - 1]);
      CHECK(hi == lo + pool.buffer_size());
    }

    pool.release(got[5]);
    pool.release(got[9]);
    CHECK(pool.in_use() == 126);
    CHECK(pool.acquire() == got[9]);  // the one given back last, the likeliest to be cached
    CHECK(pool.acquire() == got[5]);
    CHECK(pool.acquire() == nullptr);
    for (char* b : got) pool.release(b);
    CHECK(pool.in_use() == 0);
    CHECK(pool.capacity() == 128);
  }

  TEST_CASE("BufferPool: a size is rounded up to a cache line; a buffer past the chunk size is its own chunk") {
    BufferPool small(0, 100);
    CHECK(small.buffer_size() == 128);
    BufferPool big(3, 2 * 1024 * 1024);
    char* a = big.acquire();
    REQUIRE(a != nullptr);
    CHECK(big.capacity() == 1);
    a[big.buffer_size() - 1] = 1;  // the whole buffer is usable
    CHECK(big.acquire() != nullptr);
    CHECK(big.acquire() != nullptr);
    CHECK(big.acquire() == nullptr);
    CHECK(big.in_use() == 3);
  }
}

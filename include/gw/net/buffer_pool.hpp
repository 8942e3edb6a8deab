#pragma once
// Per-worker pool of fixed-size I/O buffers. A relay takes a buffer only while
// bytes are in flight and gives it back as soon as they are written, so an
// idle connection holds none. Memory is carved from chunks that are allocated
// when the pool first grows (warm-up) and kept; steady state allocates nothing.
// Single-threaded.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace gw::net {

class BufferPool {
 public:
  static constexpr size_t kBufferSize = 16 * 1024;
  static constexpr size_t kChunkBuffers = 64;

  /// `max_buffers` bounds the memory (0 = unbounded).
  explicit BufferPool(size_t max_buffers = 0) : max_(max_buffers) {}

  /// Returns a buffer of kBufferSize bytes, or nullptr at the bound or on OOM.
  char* acquire() noexcept;
  void release(char* b) noexcept;

  size_t in_use() const noexcept { return in_use_; }
  size_t capacity() const noexcept { return chunks_.size() * kChunkBuffers; }

 private:
  struct FreeNode {
    FreeNode* next;
  };
  bool grow() noexcept;
  std::vector<std::unique_ptr<char[]>> chunks_;
  FreeNode* free_ = nullptr;
  size_t in_use_ = 0;
  size_t max_;
};

}  // namespace gw::net

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
  static constexpr size_t kChunkBytes = 1024 * 1024;

  /// `max_buffers` bounds the memory (0 = unbounded); `buffer_size` is the
  /// size of every buffer (kBufferSize unless the pool holds larger ones,
  /// such as whole frames).
  explicit BufferPool(size_t max_buffers = 0, size_t buffer_size = kBufferSize)
      : size_((buffer_size + 63) & ~size_t{63}),
        chunk_buffers_(size_ >= kChunkBytes ? 1 : kChunkBytes / size_),
        max_(max_buffers) {}

  size_t buffer_size() const noexcept { return size_; }

  /// Returns a buffer of buffer_size() bytes, or nullptr at the bound or on OOM.
  char* acquire() noexcept;
  void release(char* b) noexcept;

  size_t in_use() const noexcept { return in_use_; }
  size_t capacity() const noexcept { return chunks_.size() * chunk_buffers_; }

 private:
  struct FreeNode {
    FreeNode* next;
  };
  bool grow() noexcept;
  std::vector<std::unique_ptr<char[]>> chunks_;
  size_t size_;
  size_t chunk_buffers_;
  FreeNode* free_ = nullptr;
  size_t in_use_ = 0;
  size_t max_;
};

}  // namespace gw::net

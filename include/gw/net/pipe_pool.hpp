#pragma once
// Per-worker pool of non-blocking pipes for splice(2): a relay direction that
// has carried splice_after_bytes moves the rest of its bytes socket -> pipe ->
// socket without copying them through user space. The pool is bounded (each
// pipe costs two descriptors and its pages), keeps empty pipes for reuse, and
// closes a pipe that comes back with bytes still in it. Single-threaded.

#include <cstdint>
#include <vector>

namespace gw::net {

struct PipeFds {
  int r = -1;  ///< read end
  int w = -1;  ///< write end
  explicit operator bool() const noexcept { return r >= 0; }
};

class PipePool {
 public:
  /// At most `max_pipes` open at once (0: splicing is off).
  explicit PipePool(uint32_t max_pipes);
  ~PipePool();
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  /// A pipe, or an empty PipeFds at the bound or on error (the caller copies).
  PipeFds acquire() noexcept;
  /// Gives `p` back; `empty`: no bytes are left in it (else it is closed).
  void release(PipeFds p, bool empty) noexcept;

  uint32_t open() const noexcept { return open_; }
  uint32_t in_use() const noexcept { return open_ - static_cast<uint32_t>(free_.size()); }
  /// Pipes handed out so far (tests, statistics).
  uint64_t acquired() const noexcept { return acquired_; }
  uint32_t max() const noexcept { return max_; }
  /// Bytes one splice into an empty pipe may move (the pipe's capacity).
  static constexpr uint32_t kCapacity = 64 * 1024;

 private:
  std::vector<PipeFds> free_;
  uint32_t open_ = 0;
  uint32_t max_;
  uint64_t acquired_ = 0;
};

}  // namespace gw::net

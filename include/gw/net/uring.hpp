#pragma once
// The io_uring engine's primitives: completion tags, a provided-buffer ring and
// the ring itself. Single-threaded: only the worker that created them calls
// them (the ring is set up with IORING_SETUP_SINGLE_ISSUER where the kernel
// has it).
//
// Completion tags (the SQE's user_data) pack {op, generation, slot}:
//
//   63      56 55                32 31                               0
//   +---------+--------------------+----------------------------------+
//   |   op    | generation (24 bit)|            slot (32 bit)         |
//   +---------+--------------------+----------------------------------+
//
// A session slot is reused only once every operation submitted for it has
// completed, and its generation moves on at each reuse, so a completion that
// still names an older generation is recognised as stale and dropped.

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gw::net {

inline constexpr uint32_t kTagGenMask = 0xffffffu;

constexpr uint64_t pack_tag(uint8_t op, uint32_t slot, uint32_t gen) noexcept {
  return (uint64_t{op} << 56) | (uint64_t{gen & kTagGenMask} << 32) | slot;
}
constexpr uint8_t tag_op(uint64_t tag) noexcept {
  return static_cast<uint8_t>(tag >> 56);
}
constexpr uint32_t tag_gen(uint64_t tag) noexcept {
  return static_cast<uint32_t>(tag >> 32) & kTagGenMask;
}
constexpr uint32_t tag_slot(uint64_t tag) noexcept {
  return static_cast<uint32_t>(tag);
}
/// Does `tag` name generation `gen` (compared in the tag's 24 bits)?
constexpr bool tag_current(uint64_t tag, uint32_t gen) noexcept {
  return tag_gen(tag) == (gen & kTagGenMask);
}

/// A ring of equal-sized buffers provided to the kernel (IORING_REGISTER_PBUF_RING).
/// A multishot receive takes the buffer at the ring's head for each chunk it
/// delivers and names it in the completion (IORING_CQE_F_BUFFER, id in the
/// upper 16 bits); the worker gives it back with recycle() once the bytes are
/// written on, and publish() makes every recycled buffer visible to the kernel
/// with one release store (once per loop iteration).
///
/// The bookkeeping (which ids are out, the tail, the entries) works without a
/// kernel, so it is unit tested on its own; attach() registers the ring.
class BufRing {
 public:
  /// `count` buffers of `size` bytes; count is a power of two <= 32768.
  /// Memory is mapped, not touched: a buffer costs RSS once the kernel first
  /// fills it. Throws std::runtime_error.
  BufRing(uint32_t count, uint32_t size);
  ~BufRing();
  BufRing(const BufRing&) = delete;
  BufRing& operator=(const BufRing&) = delete;

  /// Registers the ring as buffer group `bgid` of `ring`. Returns 0 or -errno.
  int attach(io_uring* ring, uint16_t bgid) noexcept;
  uint16_t group() const noexcept { return bgid_; }

  uint32_t count() const noexcept { return count_; }
  uint32_t size() const noexcept { return size_; }
  char* buf(uint16_t bid) const noexcept { return base_ + size_t{bid} * size_; }

  /// The kernel handed buffer `bid` out in a completion. Returns false if the
  /// id is out of range or was not the kernel's (a bookkeeping bug).
  bool taken(uint16_t bid) noexcept;
  /// Gives `bid` back (visible to the kernel after publish()). Returns false
  /// if the id is out of range or not out (a double recycle).
  bool recycle(uint16_t bid) noexcept;
  /// Makes recycled buffers visible to the kernel; returns how many.
  uint32_t publish() noexcept;

  /// Buffers the kernel may still fill (published ones not handed out).
  uint32_t in_kernel() const noexcept { return in_kernel_; }
  /// Recycled buffers waiting for publish().
  uint32_t pending() const noexcept { return pending_; }
  /// Buffers held by the worker (handed out, not recycled).
  uint32_t out() const noexcept { return count_ - in_kernel_ - pending_; }
  bool is_out(uint16_t bid) const noexcept { return bid < count_ && out_[bid] != 0; }

  /// The shared ring (tests read its tail and entries).
  const io_uring_buf_ring* ring() const noexcept { return br_; }

 private:
  uint32_t count_, size_;
  io_uring_buf_ring* br_ = nullptr;
  size_t br_bytes_ = 0;
  char* base_ = nullptr;
  size_t base_bytes_ = 0;
  std::vector<uint8_t> out_;
  uint32_t in_kernel_ = 0, pending_ = 0;
  io_uring* ring_ = nullptr;
  uint16_t bgid_ = 0;
};

/// An io_uring instance: SQEs are batched and submitted once per loop
/// iteration with the wait (io_uring_submit_and_wait_timeout: one syscall).
class Ring {
 public:
  /// Sets up a ring with `sq_entries` SQEs and 4x as many CQEs, with
  /// SINGLE_ISSUER + DEFER_TASKRUN where the kernel has them (else
  /// COOP_TASKRUN, else neither), and registers the ring fd. Throws
  /// std::runtime_error naming what failed.
  explicit Ring(unsigned sq_entries);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  /// A free SQE (the prep helpers fill all of it); submits what is queued if
  /// the SQ is full. Never returns nullptr: a ring that takes no submission
  /// at all is beyond repair, and the worker aborts (the master respawns it).
  io_uring_sqe* sqe() noexcept;
  /// Makes sure the next `n` sqe() calls come from one submission (a linked
  /// chain must not be split by a submit in its middle): submits until the
  /// queue has room for `n`, retrying as sqe() does (a submit that took
  /// nothing, -EAGAIN or -EBUSY, would leave a connect and its linked timeout
  /// to two submissions, the connect without its timeout).
  void reserve(unsigned n) noexcept;
  /// Submits queued SQEs and waits for at least one completion, for up to
  /// `timeout_ms` (< 0: no limit). Returns the number submitted or -errno
  /// (-ETIME on timeout, -EINTR).
  int submit_and_wait(int timeout_ms) noexcept;
  /// Submits queued SQEs without waiting.
  int submit() noexcept;

  /// Calls fn(const io_uring_cqe&) for every ready completion and marks them
  /// seen, 64 at a time (so the kernel can move overflowed completions in
  /// while fn queues new work). Returns how many.
  template <typename Fn>
  unsigned drain(Fn&& fn) noexcept {
    unsigned total = 0;
    for (;;) {
      unsigned head, n = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        fn(*cqe);
        if (++n == 64) break;
      }
      if (n == 0) return total;
      io_uring_cq_advance(&ring_, n);
      total += n;
    }
  }

  io_uring* raw() noexcept { return &ring_; }
  /// The setup flags the kernel accepted (for the start-up log).
  unsigned flags() const noexcept { return ring_.flags; }

 private:
  io_uring ring_{};
};

/// Checks that the running kernel gives the io_uring engine what it needs
/// (the opcodes, NODROP/FAST_POLL/EXT_ARG, a registered buffer ring and a
/// working multishot receive on a socketpair). Returns an empty string, or
/// one line saying what is missing.
std::string uring_unsupported() noexcept;

/// Does the kernel honour a byte limit on a multishot receive (the SQE's
/// optlen, which liburing 2.3 calls file_index; Linux 6.17)? The receive then
/// ends, without IORING_CQE_F_MORE, once that many bytes came in. Older
/// kernels refuse the SQE with -EINVAL.
bool uring_recv_limit_supported() noexcept;

}  // namespace gw::net

#pragma once
// Seqlock primitives for data shared between processes.
//
// The payload is copied through atomic 64-bit words (std::atomic_ref), so a
// reader racing a writer reads stale or mixed words but never invokes
// undefined behaviour, and ThreadSanitizer can check the protocol. Ordering
// follows the fence-free variant in H.-J. Boehm, "Can seqlocks get along with
// programming language memory models?" (MSPC 2012): payload stores are
// release and payload loads acquire, so a reader that sees any word of a new
// write also sees the odd sequence number stored before it. On x86-64 these
// are plain moves; no fence instruction is emitted (and GCC's TSan cannot
// model stand-alone fences, so this form is also the checkable one).
//
//   writer                                  reader
//   s = seq (even)                          s1 = seq.load(acquire)     ─┐ odd → retry
//   seq.store(s+1, relaxed)                 words[i].load(acquire)...   │
//   words[i].store(release)...              s2 = seq.load(relaxed)     ─┘ s1 != s2 → retry
//   seq.store(s+2, release)
//
// A writer that dies between the two seq stores leaves seq odd; the next
// writer rounds it up to even and writes the slot again.

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace gw::shm {

static_assert(std::atomic<uint64_t>::is_always_lock_free);

/// Copies n words from shared memory into private memory.
inline void load_words(const uint64_t* shared, uint64_t* local, size_t n) noexcept {
  for (size_t i = 0; i < n; ++i)
    local[i] = std::atomic_ref<uint64_t>(*const_cast<uint64_t*>(shared + i)).load(std::memory_order_acquire);
}

/// Copies n words from private memory into shared memory.
inline void store_words(uint64_t* shared, const uint64_t* local, size_t n) noexcept {
  for (size_t i = 0; i < n; ++i) std::atomic_ref<uint64_t>(shared[i]).store(local[i], std::memory_order_release);
}

/// Writer side, in two steps so a test can stop a writer between them. Call
/// with exclusive write access to the slot (writer lock held, or the entry
/// owned by this producer). Returns the even value seq_write_end() publishes.
inline uint64_t seq_write_begin(std::atomic<uint64_t>& seq) noexcept {
  uint64_t s = seq.load(std::memory_order_relaxed);
  if (s & 1) ++s;  // a previous writer died mid-write
  seq.store(s + 1, std::memory_order_relaxed);
  return s + 2;
}
inline void seq_write_end(std::atomic<uint64_t>& seq, uint64_t value) noexcept {
  seq.store(value, std::memory_order_release);
}
inline void seq_write(std::atomic<uint64_t>& seq, uint64_t* shared, const uint64_t* local, size_t n) noexcept {
  uint64_t v = seq_write_begin(seq);
  store_words(shared, local, n);
  seq_write_end(seq, v);
}

/// Reader side, one attempt. Returns true and fills `local` if the copy is
/// consistent; false if a writer was active (the caller retries or gives up).
inline bool seq_try_read(const std::atomic<uint64_t>& seq, const uint64_t* shared, uint64_t* local, size_t n) noexcept {
  uint64_t s1 = seq.load(std::memory_order_acquire);
  if (s1 & 1) return false;
  load_words(shared, local, n);
  uint64_t s2 = seq.load(std::memory_order_relaxed);
  return s1 == s2;
}

}  // namespace gw::shm

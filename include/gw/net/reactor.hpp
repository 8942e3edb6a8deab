#pragma once
// The worker's event loop primitives: an edge-triggered epoll set and a hashed
// timer wheel. Single-threaded: only the owning worker thread calls them.

#include <sys/epoll.h>

#include <cstdint>

#include "gw/core/fd.hpp"

namespace gw::net {

class Epoll {
 public:
  Epoll();  // throws std::runtime_error
  /// Registers `fd` with `events`; `data` comes back with each event.
  int add(int fd, uint32_t events, uint64_t data) noexcept;
  int del(int fd) noexcept;
  /// epoll_wait; returns the number of events (0 on EINTR). Any other error
  /// means the set is broken: it logs and aborts the process (the master
  /// respawns a worker) instead of returning to a loop that would spin.
  int wait(epoll_event* events, int max, int timeout_ms) noexcept;
  int fd() const noexcept { return fd_.get(); }

 private:
  core::UniqueFd fd_;
};

/// A node embedded in whatever owns the timeout (intrusive; no allocation).
struct TimerNode {
  TimerNode* prev = nullptr;
  TimerNode* next = nullptr;
  uint64_t deadline_ms = 0;  ///< may be moved later without touching the wheel
  bool linked() const noexcept { return prev != nullptr; }
};

/// Hashed timer wheel with lazy rescheduling: moving a deadline later only
/// updates `deadline_ms`; when the node's slot comes round it is re-filed. So a
/// relay that sees traffic pays nothing for its idle timeout.
class TimerWheel {
 public:
  static constexpr uint64_t kTickMs = 10;
  static constexpr uint32_t kSlots = 1024;  // 10.24 s per turn

  explicit TimerWheel(uint64_t now_ms) noexcept;
  TimerWheel(const TimerWheel&) = delete;
  TimerWheel& operator=(const TimerWheel&) = delete;

  /// Files `n` for `deadline_ms` (unlinking it first if linked).
  void schedule(TimerNode& n, uint64_t deadline_ms) noexcept;
  void cancel(TimerNode& n) noexcept;
  bool empty() const noexcept { return count_ == 0; }
  size_t size() const noexcept { return count_; }

  /// Expires every node whose deadline is <= now, calling fn(TimerNode&) for
  /// each after unlinking it (fn may schedule it again).
  template <typename Fn>
  void advance(uint64_t now_ms, Fn&& fn) noexcept {
    uint64_t target = now_ms / kTickMs;
    if (count_ == 0) {
      tick_ = target;
      return;
    }
    advance_to_ = target;
    advancing_ = true;
    while (tick_ <= target) {
      TimerNode& head = slots_[tick_ % kSlots];
      // Detach the slot's list so re-filing into this slot cannot loop.
      TimerNode pending;
      if (head.next != &head) {
        pending.next = head.next;
        pending.prev = head.prev;
        pending.next->prev = &pending;
        pending.prev->next = &pending;
        head.next = head.prev = &head;
      } else {
        pending.next = pending.prev = &pending;
      }
      while (pending.next != &pending) {
        TimerNode* n = pending.next;
        unlink_raw(*n);
        --count_;
        if (n->deadline_ms <= now_ms) {
          fn(*n);
        } else {
          link(*n, n->deadline_ms);
        }
      }
      ++tick_;
    }
    advancing_ = false;
    --tick_;  // the current tick may still receive nodes due later in it
    if (tick_ < target) tick_ = target;
  }

  /// Milliseconds until the next tick, or -1 if nothing is scheduled.
  int timeout_ms(uint64_t now_ms) const noexcept;

 private:
  void link(TimerNode& n, uint64_t deadline_ms) noexcept;
  static void unlink_raw(TimerNode& n) noexcept {
    n.prev->next = n.next;
    n.next->prev = n.prev;
    n.prev = n.next = nullptr;
  }
  TimerNode slots_[kSlots];
  uint64_t tick_;
  size_t count_ = 0;
  // While advance() runs: the last tick it visits. A node filed by a callback
  // for a tick it has passed (or is in) goes there, not to a slot the wheel
  // would come back to only a turn later.
  uint64_t advance_to_ = 0;
  bool advancing_ = false;
};

}  // namespace gw::net

#pragma once
// The single write path for the routing table, used by gwctl, by the master at
// start-up and by anything else that changes the table. A commit:
//
//   lock (robust mutex; a dead holder's lock is recovered)
//   copy the live table into private memory, apply the change, validate
//   assign runtime slots to new hosts, bump the generation
//   write the state file (atomic rename)          ─ fails → nothing published
//   write the inactive slot under its seqlock
//   published.store(gen << 1 | slot, release)     ─ the change is live here
//   emit events, unlock
//
// A writer SIGKILLed at any point before the publishing store has published
// nothing; readers keep the last committed table and the next writer proceeds.

#include <functional>
#include <string>
#include <vector>

#include "gw/shm/segment.hpp"
#include "gw/shm/table.hpp"

namespace gw::shm {

namespace testing {
/// Called between the two halves of a slot write (tests only; null otherwise).
extern void (*mid_write_hook)();
}  // namespace testing

class Writer {
 public:
  explicit Writer(const Segment& seg) : seg_(&seg) {}

  /// A change: mutates `t` (a private copy of the live table) and appends one
  /// line per logical change to `events`. Throws TableError to refuse.
  using Change = std::function<void(Table& t, std::vector<std::string>& events)>;

  /// Applies `change` atomically. Returns the new generation. Throws TableError
  /// (the change is invalid), SegmentError (lock), or std::runtime_error (state
  /// file); in every case nothing was published.
  uint64_t commit(const Change& change);

  /// Skip writing the state file (unit tests that have none).
  void set_persist(bool on) noexcept { persist_ = on; }

 private:
  void assign_slots(const Table& old, Table& t, uint64_t now_ms);

  const Segment* seg_;
  bool persist_ = true;
};

}  // namespace gw::shm

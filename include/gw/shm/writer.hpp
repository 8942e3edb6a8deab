#pragma once
// The single write path for the routing table, used by gwctl, by the master at
// start-up and by anything else that changes the table. A commit:
//
//   lock (robust mutex; a dead holder's lock is recovered)
//   copy the live table into private memory, apply the change, validate
//   repair what a stopped writer left (below)
//   assign runtime slots to new hosts, bump the generation
//   persisting = gen; write the state file (atomic rename)  ─ fails → nothing published
//                     (and persisting back, if it failed before the rename)
//   give new hosts their runtime slots
//   write the inactive slot under its seqlock
//   published.store(gen << 1 | slot, release)     ─ the change is live here
//   emit events, unlock
//
// A writer SIGKILLed at any point before the publishing store has published
// nothing; readers keep the last committed table and the next writer proceeds.
// It may have renamed its state file into place, and given slots of hosts that
// are still live to its new hosts: the next writer (which sees the lock's owner
// died, or `persisting` above the published generation) rewrites the state file
// from the live table and gives those hosts their slots back before anything
// else, so a change that was never live never comes back at a restart, and no
// live host loses its health tracking.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "gw/shm/segment.hpp"
#include "gw/shm/table.hpp"

namespace gw::shm {

namespace testing {
/// Called between the two halves of a slot write (tests only; null otherwise).
extern void (*mid_write_hook)();
/// How long a writer waits for the lock before it gives up (10 s; tests
/// shorten it).
extern uint32_t writer_lock_wait_ms;
}  // namespace testing

class Writer {
 public:
  explicit Writer(const Segment& seg) : seg_(&seg) {}

  /// For a process that is not gwd (gwctl): every commit of this process,
  /// under the lock, first checks that the segment's master is alive. One
  /// that attached to a live gateway and waited (for the lock, or was
  /// stopped) while every gw process was killed, the segment deleted and
  /// gwd started on a new one, committed into a segment no gwd reads and
  /// reported it done. (gwd's own writers commit before the master names
  /// itself in a segment it reuses.)
  static void require_live_master(bool on) noexcept;

  /// A change: mutates `t` (a private copy of the live table) and appends one
  /// line per logical change to `events`. Throws TableError to refuse.
  using Change = std::function<void(Table& t, std::vector<std::string>& events)>;

  /// Thrown by a Change that finds nothing to do (a host already down): the
  /// commit publishes nothing and returns the published generation. The check
  /// runs under the lock, after any repair, so its answer is as durable as a
  /// commit's.
  struct Unchanged {};

  /// Applies `change` atomically. Returns the new generation. Throws TableError
  /// (the change is invalid), SegmentError (lock), or std::runtime_error (state
  /// file); in every case nothing was published.
  uint64_t commit(const Change& change);

  /// Marks the segment replaced (or, with false, in use again): takes the writer
  /// lock, so a commit under way finishes first (its change is then in the
  /// table and the state file), and every commit after it is refused. The
  /// master calls it before it unlinks a segment it makes again. Retiring
  /// first repairs what a writer that stopped mid-commit left (see repair()),
  /// so that a state file ahead of the live table is not read into the new
  /// segment.
  void set_retired(bool retired);
  /// Skip writing the state file (unit tests that have none).
  void set_persist(bool on) noexcept { persist_ = on; }
  /// How long commit() waits for the lock before WriterLockTimeout (default:
  /// testing::writer_lock_wait_ms, 10 s). The master's reload waits briefly
  /// and tries again each round, so that its loop never stalls on a gwctl.
  void set_lock_wait_ms(uint32_t ms) noexcept { lock_wait_ms_ = ms; }

 private:
  struct SlotReset {
    uint32_t slot, tag;
  };
  /// Gives new hosts of `t` their slots (and tags); the slots' runtime is reset
  /// later, through `resets`, once the state file is written.
  void assign_slots(const Table& old, Table& t, uint64_t now_ms, std::vector<SlotReset>& resets);
  /// After a writer stopped mid-commit: the state file and runtime slots back
  /// in step with the published table `live`.
  void repair(const Table& live);

  const Segment* seg_;
  bool persist_ = true;
  uint32_t lock_wait_ms_ = 0;  ///< 0: testing::writer_lock_wait_ms
};

}  // namespace gw::shm

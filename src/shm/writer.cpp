#include "gw/shm/writer.hpp"

#include <pthread.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "gw/core/clock.hpp"
#include "gw/core/log.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/seqlock.hpp"
#include "gw/shm/state_file.hpp"

namespace gw::shm {

namespace testing {
void (*mid_write_hook)() = nullptr;
uint32_t writer_lock_wait_ms = 10000;
}  // namespace testing

namespace {

// The largest generation `published` (generation << 1 | slot) holds.
constexpr uint64_t kMaxGeneration = ~0ull >> 1;

// Holds the robust writer mutex for one commit.
class WriterLock {
 public:
  explicit WriterLock(pthread_mutex_t& m, uint32_t wait_ms = 0) : m_(m) {
    // The wait is measured on the monotonic clock: pthread_mutex_timedlock's
    // CLOCK_REALTIME deadline moves when the wall clock is stepped (NTP, an
    // operator's `date`), which could end the wait at once or stretch it.
    if (wait_ms == 0) wait_ms = testing::writer_lock_wait_ms;
#if defined(__SANITIZE_THREAD__)
    // ThreadSanitizer (GCC 12's) does not intercept pthread_mutex_clocklock,
    // so it would take every unlock for one of an unlocked mutex: its builds
    // wait on the wall clock.
    constexpr clockid_t kClock = CLOCK_REALTIME;
#else
    constexpr clockid_t kClock = CLOCK_MONOTONIC;
#endif
    timespec deadline{};
    ::clock_gettime(kClock, &deadline);
    deadline.tv_sec += static_cast<time_t>(wait_ms / 1000);
    deadline.tv_nsec += static_cast<long>(wait_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
      ++deadline.tv_sec;
      deadline.tv_nsec -= 1000000000L;
    }
#if defined(__SANITIZE_THREAD__)
    int rc = ::pthread_mutex_timedlock(&m_, &deadline);
#else
    int rc = ::pthread_mutex_clocklock(&m_, kClock, &deadline);
#endif
    if (rc == EOWNERDEAD) {
      // The previous writer died holding the lock. It published nothing that
      // was not complete (see the commit order), so the table is consistent;
      // what else it left is repaired by the caller (owner_died()).
      ::pthread_mutex_consistent(&m_);
      owner_died_ = true;
      GW_LOG_WARN("a previous writer died while holding the shm writer lock; recovered it");
    } else if (rc == ETIMEDOUT) {
      throw WriterLockTimeout(
          fmt::format("another writer has held the shm writer lock for {}; is a gwctl stopped (SIGSTOP)?",
                      wait_ms % 1000 == 0 ? fmt::format("{} s", wait_ms / 1000) : fmt::format("{} ms", wait_ms)));
    } else if (rc != 0) {
      throw SegmentError(fmt::format("cannot take the shm writer lock: {}", std::strerror(rc)));
    }
  }
  ~WriterLock() {
    ::pthread_mutex_unlock(&m_);
  }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;
  bool owner_died() const noexcept {
    return owner_died_;
  }

 private:
  pthread_mutex_t& m_;
  bool owner_died_ = false;
};

}  // namespace

void Writer::assign_slots(const Table& old, Table& t, uint64_t now_ms, std::vector<SlotReset>& resets) {
  const uint32_t cap = seg_->caps().max_hosts;
  std::vector<uint8_t> used(cap, 0);
  for (const auto& h : t.hosts())
    if (h.tag != 0) used[h.slot] = 1;
  if (t.header().next_tag == 0) t.header().next_tag = 1;  // a fresh segment's table is all zeros
  // The free slots in the order new hosts take them: one no connection still
  // counts on first, then the one freed the longest ago (a never-used slot has
  // freed_ms 0), so that stale counters of a removed host have drained before
  // its slot is reused; then by index. Ordered once, when the first new host
  // needs a slot: a walk over every slot for each new host made a commit of
  // 20000 new hosts onto freed slots take 1.7 s (hosts squared).
  struct Free {
    bool busy;
    uint64_t freed;
    uint32_t slot;
    bool operator<(const Free& o) const noexcept {
      return busy != o.busy ? !busy : freed != o.freed ? freed < o.freed : slot < o.slot;
    }
  };
  // Slots this change frees: their freed_ms is set only once it commits (0
  // now, which reads as never used), so they count as freed now, the latest.
  std::vector<uint8_t> freeing(cap, 0);
  for (const auto& o : old.hosts())
    if (o.tag != 0 && o.slot < cap && !used[o.slot]) freeing[o.slot] = 1;
  std::vector<Free> free;
  size_t taken = 0;  // of `free`
  bool ordered = false;
  for (auto& h : t.hosts()) {
    if (h.tag != 0) continue;
    if (!ordered) {
      // The walk ends once it has found a never-used, idle slot for each new
      // host: those come first in that order, so the slots past them are not
      // needed (a commit of one host onto a large, fresh segment stays cheap).
      size_t wanted = 0, fresh = 0;
      for (const auto& x : t.hosts()) wanted += x.tag == 0;
      for (uint32_t s = 0; s < cap && fresh < wanted; ++s) {
        if (used[s]) continue;
        const HostRuntime& r = seg_->host(s);
        const Free f{host_totals(*seg_, s, r.tag.load(std::memory_order_relaxed)).active != 0,
                     freeing[s] ? std::max<uint64_t>(now_ms, 1) : r.freed_ms.load(std::memory_order_relaxed), s};
        fresh += !f.busy && f.freed == 0;
        free.push_back(f);
      }
      std::sort(free.begin(), free.end());
      ordered = true;
    }
    if (taken == free.size())
      throw TableError(fmt::format("host table is full (shm.max_hosts = {})", cap), TableError::Kind::full);
    const uint32_t best = free[taken++].slot;
    uint32_t tag = t.header().next_tag++;
    if (t.header().next_tag == 0) t.header().next_tag = 1;
    h.slot = best;
    h.tag = tag;
    used[h.slot] = 1;
    // The slot may still be a live host's (one this change removes): its
    // runtime is reset only once this commit cannot fail any more.
    resets.push_back({h.slot, tag});
  }
  // Hosts an admin `up` brings back start their slow start now.
  std::vector<uint32_t> was_down(cap, 0);  // slot → tag of a host that was admin-down
  for (const auto& o : old.hosts())
    if (o.admin_down && o.tag != 0) was_down[o.slot] = o.tag;
  for (const auto& h : t.hosts())
    if (!h.admin_down && h.tag != 0 && was_down[h.slot] == h.tag) mark_up(seg_->host(h.slot), h.tag, now_ms);
  // Rules get a column of the hit counters (RuleStats) with a tag of their
  // own: a worker's counts for a removed rule are never shown for the rule
  // that later takes its column.
  const uint32_t rule_cap = seg_->caps().max_rules;
  std::vector<uint8_t> rule_used(rule_cap, 0);
  for (const auto& r : t.rules())
    if (r.stat_tag != 0 && r.stat_slot < rule_cap) rule_used[r.stat_slot] = 1;
  uint32_t next_free = 0;
  for (auto& r : t.rules()) {
    if (r.stat_tag != 0 && r.stat_slot < rule_cap) continue;
    while (next_free < rule_cap && rule_used[next_free]) ++next_free;
    if (next_free == rule_cap)
      throw TableError(fmt::format("rule table is full (shm.max_rules = {})", rule_cap), TableError::Kind::full);
    r.stat_slot = next_free;
    r.stat_tag = t.header().next_tag++;
    if (t.header().next_tag == 0) t.header().next_tag = 1;
    rule_used[next_free] = 1;
  }
  // Slots the old table used and the new one does not are now free.
  for (const auto& h : old.hosts())
    if (h.tag != 0 && !used[h.slot] && seg_->host(h.slot).tag.load(std::memory_order_relaxed) == h.tag)
      seg_->host(h.slot).freed_ms.store(now_ms ? now_ms : 1, std::memory_order_relaxed);
}

void Writer::repair(const Table& live) {
  SegmentHeader& hdr = seg_->header();
  // Nothing ever published (generation 0: a fresh segment whose first commit,
  // the master's, stopped): the state file is the only record; keep it.
  if (live.header().generation == 0) return;
  if (hdr.persisting.load() > live.header().generation)
    GW_LOG_WARN(
        "a writer stopped in the middle of a commit (it was persisting generation {}); the state file and "
        "runtime slots are put back in step with the live generation {}",
        hdr.persisting.load(), live.header().generation);
  else  // it died holding the lock after its publish (emitting its events, say): nothing of it is undone
    GW_LOG_WARN(
        "the writer of generation {} died after publishing it, before it let the lock go (some of its events may "
        "be missing); the state file and runtime slots are checked against it",
        live.header().generation);
  if (persist_ && hdr.state_file[0] != '\0') write_state_file(hdr.state_file, state_to_json(live));
  // Slots it gave to new hosts before it stopped belong to live hosts again.
  for (const auto& h : live.hosts()) {
    if (h.tag == 0 || h.slot >= seg_->caps().max_hosts) continue;
    if (seg_->host(h.slot).tag.load(std::memory_order_relaxed) != h.tag) reset_slot(seg_->host(h.slot), h.tag);
  }
  hdr.persisting.store(live.header().generation);
}

void Writer::set_retired(bool retired) {
  SegmentHeader& hdr = seg_->header();
  WriterLock lock(hdr.writer_lock);
  if (retired) {
    // The segment's last writer: the master that replaces it reads the state
    // file and this table next, and takes the file if it is the newer. A file
    // that a writer stopped before its publish left ahead of the live table
    // holds a change that was never live (nor reported done): put it back in
    // step first, as the next commit would have. (Not from a table that does
    // not read whole: the file is then the better record.)
    Table live(seg_->caps());
    const char* refused = nullptr;
    read_published(*seg_, live, &refused);
    if (!refused && (lock.owner_died() || hdr.persisting.load() > live.header().generation)) repair(live);
  }
  hdr.retired.store(retired ? 1 : 0);
}

namespace {
bool g_require_live_master = false;
}  // namespace

void Writer::require_live_master(bool on) noexcept {
  g_require_live_master = on;
}

uint64_t Writer::commit(const Change& change) {
  SegmentHeader& hdr = seg_->header();
  WriterLock lock(hdr.writer_lock, lock_wait_ms_);

  if (g_require_live_master && !seg_->master_alive())
    throw SegmentError(
        fmt::format("the gateway on shm \"{}\" stopped (its master, pid {}, is gone) while this change waited; "
                    "nothing was changed: run it again once gwd runs",
                    seg_->name(), hdr.master_pid.load()));

  if (hdr.retired.load() != 0)
    throw SegmentError(fmt::format(
        "shm \"{}\" was replaced by a new segment (gwd restarted with other shm capacities or more workers) "
        "while this change waited; nothing was changed: run it again",
        seg_->name()));

  const Caps caps = seg_->caps();
  Table old(caps);
  // With the lock held no other writer runs, so this read never retries.
  const char* refused = nullptr;
  uint64_t pub = read_published(*seg_, old, &refused);
  // A change applied to an empty stand-in would publish (and persist) a table
  // that lost everything: refuse instead. gwd rebuilds such a segment at start.
  if (refused)
    throw SegmentError(
        fmt::format("the published table is inconsistent ({}); restart gwd to rebuild it from the state "
                    "file and the config",
                    refused));
  // A writer that stopped between its state file and its publish (killed,
  // or its directory fsync failed) left a state file ahead of the live table.
  if (lock.owner_died() || hdr.persisting.load() > old.header().generation) repair(old);
  Table t(caps);
  std::memcpy(t.words(), old.words(), t.bytes());

  std::vector<std::string> events;
  try {
    change(t, events);
  } catch (const Unchanged&) {
    return old.header().generation;
  }

  // A change may raise the base (the master restoring a newer state file into
  // a fresh segment); generations never go back. `published` holds
  // generation << 1 | slot: a generation of 2^63 or more would lose its top
  // bit there, and no reader would find the table (refused before anything,
  // runtime slots included, is touched).
  const uint64_t base = std::max(old.header().generation, t.header().generation);
  if (base >= kMaxGeneration)
    throw SegmentError(fmt::format(
        "the table generation {} cannot grow: the segment publishes generations up to {}; nothing was changed", base,
        kMaxGeneration));

  const uint64_t now = core::monotonic_ms();
  std::vector<SlotReset> resets;
  assign_slots(old, t, now, resets);
  t.header().generation = base + 1;
  t.header().updated_wall_ms = core::wall_ms();

  if (persist_ && hdr.state_file[0] != '\0') {
    // `persisting` ahead of the published generation marks a state file that
    // may be ahead of the live table, for the next writer to repair: left set
    // by a writer killed from here to the publish, or failing after its rename.
    const uint64_t persisted = hdr.persisting.load();
    hdr.persisting.store(t.header().generation);
    try {
      write_state_file(hdr.state_file, state_to_json(t));
    } catch (const StateFileError& e) {
      // Failed before the rename: the state file is the live table's still,
      // nothing to repair (and no "a writer stopped" warning for the next one).
      if (!e.replaced()) hdr.persisting.store(persisted);
      // Nothing is published: say so, so that no operator takes it for a
      // change that is live but not persisted.
      throw StateFileError(fmt::format("{}; the change was not made", e.cause()), e.replaced(), e.cause());
    }
  }
  for (const SlotReset& r : resets) reset_slot(seg_->host(r.slot), r.tag);

  const int target = static_cast<int>((pub & 1) ^ 1);
  SlotHeader& slot = seg_->slot(target);
  uint64_t* dst = seg_->slot_words(target);
  const size_t n = t.word_count();
  uint64_t done = seq_write_begin(slot.seq);
  store_words(dst, t.words(), n / 2);
  if (testing::mid_write_hook) testing::mid_write_hook();
  store_words(dst + n / 2, t.words() + n / 2, n - n / 2);
  seq_write_end(slot.seq, done);
  hdr.published.store((t.header().generation << 1) | static_cast<uint64_t>(target), std::memory_order_release);

  // A checker's verdict lives only while its upstream has checks. One left
  // from before a reload turned them off would greet their return: a host
  // down back then would wait `rise` passes instead of its first check.
  // Passive health's verdict likewise lives only while max_fails is set: a
  // reload to `max_fails 0` sends traffic to a host it held down, and one
  // back to `max_fails 1` must not find it down from long ago.
  // (After the publish: readers of the old table still see the verdicts.)
  // A host either held out takes traffic again: that is a host_up, once (a
  // verdict is cleared by one exchange), unless it stays out for another
  // reason: by hand, or on the other verdict (health_up, no hook, as the
  // checker says it; passive health's trial says host_up when it passes).
  for (size_t i = 0; i < t.hosts().size(); ++i) {
    const HostRecord& h = t.hosts()[i];
    if (h.tag == 0 || h.slot >= caps.max_hosts) continue;
    const UpstreamRecord& up = t.upstreams()[t.pools()[h.pool].upstream];
    HostRuntime& hr = seg_->host(h.slot);
    const bool checks_off = up.check.type == kCheckNone && clear_active(hr, h.tag);
    const bool passive_off = up.max_fails == 0 && clear_passive(hr, h.tag);
    if (!checks_off && !passive_off) continue;
    const char* why = checks_off && passive_off ? "active checks and passive health turned off by the config"
                      : checks_off              ? "active checks turned off by the config"
                                                : "passive health turned off by the config";
    const std::string path = t.host_path(static_cast<int>(i)), address = h.addr.to_string();
    if (h.admin_down) {
      events.push_back(
          fmt::format("health_up {} {} ({}; the host stays out: admin down, until gwctl up)", path, address, why));
    } else if (const char* held = held_out_reason(*seg_, t, h)) {
      if (checks_off) continue;  // passive health holds it: its trial says host_up
      events.push_back(fmt::format("health_up {} {} ({}; the host stays out: {})", path, address, why, held));
    } else {
      events.push_back(fmt::format("host_up {} {} ({})", path, address, why));
    }
  }

  for (const auto& e : events) emit_event(*seg_, EventKind::config, t.header().generation, e);
  return t.header().generation;
}

}  // namespace gw::shm

#include "gw/shm/segment.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <new>
#include <utility>

#include "gw/core/clock.hpp"
#include "gw/core/fd.hpp"
#include "gw/shm/seqlock.hpp"

namespace gw::shm {
namespace {

size_t align64(size_t n) {
  return (n + 63) & ~size_t{63};
}

}  // namespace

size_t Segment::layout_size(const Caps& caps, uint32_t stat_workers, SegmentHeader* h) noexcept {
  size_t off = align64(sizeof(SegmentHeader));
  size_t payload = align64(Table::bytes_for(caps));
  size_t slot0 = off;
  off += sizeof(SlotHeader) + payload;
  size_t slot1 = off;
  off += sizeof(SlotHeader) + payload;
  size_t runtime = off;
  off += sizeof(HostRuntime) * caps.max_hosts;
  size_t counters = align64(off);
  off = counters + sizeof(HostCounter) * size_t{stat_workers} * caps.max_hosts;
  size_t workers = align64(off);
  off = workers + sizeof(WorkerRuntime) * kMaxWorkers;
  size_t pools = align64(off);
  off = pools + sizeof(PoolRuntime) * caps.max_pools;
  size_t events = align64(off);
  off = events + sizeof(EventEntry) * kEventCapacity;
  size_t limits = align64(off);
  off = limits + sizeof(LimitEntry) * caps.max_limit_keys;
  size_t held = align64(off);
  off = held + sizeof(uint16_t) * size_t{stat_workers} * caps.max_limit_keys;
  size_t guard = align64(off);
  off = guard + sizeof(GuardCounters) * kMaxWorkers;
  size_t host_stats = align64(off);
  off = host_stats + sizeof(HostStats) * size_t{stat_workers} * caps.max_hosts;
  size_t listener_stats = align64(off);
  off = listener_stats + sizeof(ListenerStats) * size_t{stat_workers} * kMaxListeners;
  size_t rule_stats = align64(off);
  off = rule_stats + sizeof(RuleStats) * size_t{stat_workers} * caps.max_rules;
  size_t total = (off + 4095) & ~size_t{4095};
  if (h) {
    h->slot_offset[0] = slot0;
    h->slot_offset[1] = slot1;
    h->slot_payload = Table::bytes_for(caps);
    h->runtime_offset = runtime;
    h->counters_offset = counters;
    h->workers_offset = workers;
    h->pools_offset = pools;
    h->events_offset = events;
    h->limits_offset = limits;
    h->held_offset = held;
    h->guard_offset = guard;
    h->host_stats_offset = host_stats;
    h->listener_stats_offset = listener_stats;
    h->rule_stats_offset = rule_stats;
    h->stat_workers = stat_workers;
    h->total_size = total;
  }
  return total;
}

std::string Segment::object_name(const std::string& name) {
  if (name.empty() || name.size() > 200)
    throw SegmentError(fmt::format("shm name \"{}\" must be 1..200 characters", name));
  for (char c : name) {
    bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) throw SegmentError(fmt::format("shm name \"{}\" may contain only letters, digits and . _ -", name));
  }
  // As the config's shm.name: "/." and "/.." name no object (shm_open says
  // only EINVAL), and NAME.lock is the lock file beside instance NAME's segment.
  if (name == "." || name == "..") throw SegmentError(fmt::format("shm name \"{}\" is not a segment name", name));
  if (name.ends_with(".lock"))
    throw SegmentError(fmt::format("shm name \"{}\" is not a segment name (NAME.lock is the lock file of NAME)", name));
  return "/" + name;
}

Segment::Segment(Segment&& o) noexcept
    : name_(std::move(o.name_)), base_(std::exchange(o.base_, nullptr)), size_(std::exchange(o.size_, 0)) {}

Segment& Segment::operator=(Segment&& o) noexcept {
  if (this != &o) {
    if (base_) ::munmap(base_, size_);
    name_ = std::move(o.name_);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

Segment::~Segment() {
  if (base_) ::munmap(base_, size_);
}

Segment Segment::create(const std::string& name, const Caps& caps, uint32_t stat_workers) {
  std::string obj = object_name(name);
  if (stat_workers == 0 || stat_workers > kMaxWorkers)
    throw SegmentError(fmt::format("stats rows for {} workers: expected 1..{}", stat_workers, kMaxWorkers));
  SegmentHeader layout{};
  size_t size = layout_size(caps, stat_workers, &layout);
  core::UniqueFd fd(::shm_open(obj.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) throw SegmentError(fmt::format("cannot create shm {}: {}", obj, std::strerror(errno)));
  // posix_fallocate reserves the pages: a /dev/shm too small fails here with a
  // message instead of a SIGBUS when the pages are first touched.
  if (int e = ::posix_fallocate(fd.get(), 0, static_cast<off_t>(size)); e != 0) {
    ::shm_unlink(obj.c_str());
    throw SegmentError(
        fmt::format("cannot allocate shm {} of {} bytes: {} (is /dev/shm large enough?)", obj, size, std::strerror(e)));
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) {
    int e = errno;
    ::shm_unlink(obj.c_str());
    throw SegmentError(fmt::format("cannot map shm {}: {}", obj, std::strerror(e)));
  }
  Segment seg;
  seg.name_ = name;
  seg.base_ = static_cast<char*>(p);
  seg.size_ = size;

  // ftruncate zero-fills, which is a valid initial state for every atomic and
  // record. Construct the non-trivial members in place.
  auto* h = new (p) SegmentHeader{};
  h->abi = kAbiVersion;
  h->header_size = sizeof(SegmentHeader);
  h->caps = caps;
  h->max_workers = kMaxWorkers;
  h->event_capacity = kEventCapacity;
  layout_size(caps, stat_workers, h);

  pthread_mutexattr_t attr;
  ::pthread_mutexattr_init(&attr);
  ::pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  ::pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  int rc = ::pthread_mutex_init(&h->writer_lock, &attr);
  ::pthread_mutexattr_destroy(&attr);
  if (rc != 0) {
    ::shm_unlink(obj.c_str());
    throw SegmentError(fmt::format("cannot initialise the writer lock: {}", std::strerror(rc)));
  }

  for (int i = 0; i < 2; ++i) new (&seg.slot(i)) SlotHeader{};
  for (uint32_t i = 0; i < caps.max_hosts; ++i) new (&seg.host(i)) HostRuntime{};
  for (uint32_t w = 0; w < kMaxWorkers; ++w) new (&seg.worker(w)) WorkerRuntime{};
  for (uint32_t w = 0; w < stat_workers; ++w)
    for (uint32_t i = 0; i < caps.max_hosts; ++i) new (&seg.counter(w, i)) HostCounter{};
  for (uint32_t i = 0; i < caps.max_pools; ++i) new (&seg.pool(i)) PoolRuntime{};
  for (uint32_t i = 0; i < kEventCapacity; ++i) new (&seg.event(i)) EventEntry{};
  for (uint32_t i = 0; i < caps.max_limit_keys; ++i) new (&seg.limit_entries()[i]) LimitEntry{};
  for (uint32_t w = 0; w < kMaxWorkers; ++w) new (&seg.guard(w)) GuardCounters{};
  for (uint32_t w = 0; w < stat_workers; ++w)
    for (uint32_t i = 0; i < caps.max_limit_keys; ++i) new (&seg.limit_held(w)[i]) std::atomic<uint16_t>(0);
  // The limit keys' hash seed: unpredictable, so that clients cannot choose
  // keys that collide with another client's bucket.
  if (::getrandom(&h->limit_seed, sizeof(h->limit_seed), 0) != static_cast<ssize_t>(sizeof(h->limit_seed)))
    h->limit_seed =
        core::monotonic_ns() ^ (uint64_t{static_cast<uint32_t>(::getpid())} << 32) ^ reinterpret_cast<uintptr_t>(p);
  for (uint32_t w = 0; w < stat_workers; ++w) {
    for (uint32_t i = 0; i < caps.max_hosts; ++i) new (&seg.host_stats(w, i)) HostStats{};
    for (uint32_t i = 0; i < kMaxListeners; ++i) new (&seg.listener_stats(w, i)) ListenerStats{};
    for (uint32_t i = 0; i < caps.max_rules; ++i) new (&seg.rule_stats(w, i)) RuleStats{};
  }
  // An empty table (generation 0) in slot 0 is published from the start.
  std::atomic_ref<uint64_t>(h->magic).store(kMagic, std::memory_order_release);
  return seg;
}

std::string Segment::validate(const void* base, size_t size) {
  if (size < sizeof(uint64_t) * 2) return fmt::format("it is {} bytes, too small for a gw segment", size);
  const auto* h = static_cast<const SegmentHeader*>(base);
  uint64_t magic = std::atomic_ref<uint64_t>(const_cast<uint64_t&>(h->magic)).load(std::memory_order_acquire);
  if (magic != kMagic) return fmt::format("it is not a gw segment (magic 0x{:016x})", magic);
  if (h->abi != kAbiVersion)
    return fmt::format("it has ABI version {}, this program speaks ABI version {}; use the gwctl and gwd of one build",
                       h->abi, kAbiVersion);
  // A gw segment's magic and ABI, but too short to hold its header: cut
  // short (a copy, a truncate). Nothing past `size` is read.
  if (size < sizeof(SegmentHeader))
    return fmt::format(
        "it is {} bytes, smaller than a gw segment header ({} bytes): a segment cut short; remove it if no gw uses it",
        size, sizeof(SegmentHeader));
  if (h->header_size != sizeof(SegmentHeader))
    return fmt::format("its header says it is {} bytes, this build's is {}", h->header_size, sizeof(SegmentHeader));
  if (h->max_workers != kMaxWorkers || h->event_capacity != kEventCapacity)
    return "its worker or event capacity differs from this build";
  if (h->caps.max_hosts == 0 || h->caps.max_pools == 0 || h->caps.max_upstreams == 0 || h->caps.max_hosts > 1u << 20 ||
      h->caps.max_pools > 65535 || h->caps.max_upstreams > 65535 || h->caps.max_routes > 65535 ||
      h->caps.max_rules > 65535 || h->caps.max_rule_cidrs > 1u << 20 || h->caps.max_consumers > 65535 ||
      h->caps.max_limit_keys == 0 || h->caps.max_limit_keys % kLimitWays != 0 || h->caps.max_limit_keys > 1u << 24)
    return "its capacities are out of range";
  if (h->stat_workers == 0 || h->stat_workers > kMaxWorkers) return "its stats rows are out of range";
  SegmentHeader expect{};
  size_t want = layout_size(h->caps, h->stat_workers, &expect);
  if (size < want && h->total_size == want)
    return fmt::format("it is {} bytes, its layout needs {}: a segment cut short; remove it if no gw uses it", size,
                       want);
  if (h->total_size != want || size != want || h->slot_offset[0] != expect.slot_offset[0] ||
      h->slot_offset[1] != expect.slot_offset[1] || h->slot_payload != expect.slot_payload ||
      h->runtime_offset != expect.runtime_offset || h->counters_offset != expect.counters_offset ||
      h->workers_offset != expect.workers_offset || h->pools_offset != expect.pools_offset ||
      h->events_offset != expect.events_offset || h->limits_offset != expect.limits_offset ||
      h->held_offset != expect.held_offset || h->guard_offset != expect.guard_offset ||
      h->host_stats_offset != expect.host_stats_offset || h->listener_stats_offset != expect.listener_stats_offset ||
      h->rule_stats_offset != expect.rule_stats_offset)
    return fmt::format("its layout is inconsistent (size {} bytes, expected {})", size, want);
  return {};
}

Segment Segment::attach(const std::string& name) {
  std::string obj = object_name(name);
  core::UniqueFd fd(::shm_open(obj.c_str(), O_RDWR | O_CLOEXEC, 0));
  if (!fd) {
    if (errno == ENOENT)
      throw SegmentError(
          fmt::format("no running gateway: shm {} does not exist (is gwd running with shm.name \"{}\"? "
                      "If it is, its segment was removed while it ran: it goes on serving its last "
                      "table, and a restart makes a new segment)",
                      obj, name));
    throw SegmentError(fmt::format("cannot open shm {}: {}", obj, std::strerror(errno)));
  }
  return attach_fd(fd.get(), name);
}

Segment Segment::attach_fd(int fd, const std::string& name) {
  const std::string obj = "/" + name;
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw SegmentError(fmt::format("cannot stat shm {}: {}", obj, std::strerror(errno)));
  size_t size = static_cast<size_t>(st.st_size);
  // The path the operator sees (`ls /dev/shm`), in every refusal.
  const std::string path = "/dev/shm" + obj;
  if (size == 0) throw SegmentError(fmt::format("shm segment {} is refused: it is empty, not a gw segment", path));
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw SegmentError(fmt::format("cannot map shm {}: {}", obj, std::strerror(errno)));
  Segment seg;
  seg.name_ = name;
  seg.base_ = static_cast<char*>(p);
  seg.size_ = size;
  if (auto why = validate(p, size); !why.empty())
    throw SegmentError(fmt::format("shm segment {} is refused: {}", path, why));
  return seg;
}

bool Segment::unlink(const std::string& name) noexcept {
  try {
    return ::shm_unlink(object_name(name).c_str()) == 0;
  } catch (...) {
    return false;
  }
}

bool Segment::master_alive() const noexcept {
  int32_t pid = header().master_pid.load(std::memory_order_acquire);
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno != EPERM) return false;
  // The recorded master may have died and its pid been reused by another
  // program: a live gwd master's command name starts with "gwd" (the master
  // sets it, whatever its binary is called).
  char path[64], comm[32] = {};
  std::snprintf(path, sizeof(path), "/proc/%d/comm", pid);
  core::UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return true;  // no /proc: trust kill()
  ssize_t n = ::read(fd.get(), comm, sizeof(comm) - 1);
  if (n < 3 || std::strncmp(comm, "gwd", 3) != 0) return false;
  // A master killed but not reaped yet (no init to reap it at once) is a
  // zombie: gone, whatever kill() says.
  char stat[256] = {};
  std::snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  core::UniqueFd sfd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!sfd) return true;
  n = ::read(sfd.get(), stat, sizeof(stat) - 1);
  const char* close = n > 0 ? std::strrchr(stat, ')') : nullptr;  // "pid (comm) S ..."
  return !(close && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X'));
}

namespace {

// A reader refuses the published table: `out` becomes an empty table
// (generation 0) and `refused` says why.
uint64_t refuse(Table& out, uint64_t pub, const char** refused, const char* why) noexcept {
  out.clear();
  if (refused) *refused = why;
  return pub;
}

}  // namespace

// read_published checks a slot's generation before copying it: the first word.
static_assert(offsetof(TableHeader, generation) == 0, "read_published reads the generation as word 0");

uint64_t read_published(const Segment& seg, Table& out, const char** refused) noexcept {
  const size_t n = std::min(seg.slot_word_count(), out.word_count());
  // Retries with the same `published` word: a writer only rewrites a slot after
  // publishing the other one, so a slot that `published` still names and that
  // is mid-write, or holds another generation, stays so only if the segment is
  // corrupt (or written by a foreign process). The checks before the copy are
  // two loads, so the bound costs microseconds, and only for such a segment.
  constexpr int kMaxSameRetries = 4096;
  uint64_t last = ~0ull;
  int same = 0;
  for (;;) {
    uint64_t pub = seg.header().published.load(std::memory_order_acquire);
    if (pub == last) {
      if (++same >= kMaxSameRetries)
        return refuse(out, pub, refused, "the published slot stays mid-write or holds another generation");
    } else {
      last = pub;
      same = 0;
    }
    int idx = static_cast<int>(pub & 1);
    const std::atomic<uint64_t>& seq = seg.slot(idx).seq;
    const uint64_t* words = seg.slot_words(idx);
    // TableHeader::generation is the payload's first word (asserted below).
    const uint64_t s = seq.load(std::memory_order_acquire);
    if ((s & 1) ||
        std::atomic_ref<uint64_t>(*const_cast<uint64_t*>(words)).load(std::memory_order_acquire) != pub >> 1 ||
        seq.load(std::memory_order_relaxed) != s)
      continue;
    if (seq_try_read(seq, words, out.words(), n) && out.header().generation == pub >> 1) {
      // A consistent copy of the table `pub` names. (A consistent copy of
      // another generation means the slot was rewritten meanwhile, perhaps by a
      // writer that died before publishing it: read again.) Its counts and
      // indexes are checked before anyone indexes with them.
      if (const char* why = validate_table(out)) return refuse(out, pub, refused, why);
      if (refused) *refused = nullptr;
      return pub;
    }
    // A writer is rewriting the slot we were about to read: it has already
    // published the other one. Retry with the new `published`.
  }
}

namespace {

constexpr size_t kListenerWords = sizeof(ListenerList) / 8;
static_assert(sizeof(ListenerList) % 8 == 0);

uint64_t* listener_words(SegmentHeader& hdr) noexcept {
  return reinterpret_cast<uint64_t*>(&hdr.n_listeners);
}

}  // namespace

void write_listeners(SegmentHeader& hdr, const ListenerList& list) noexcept {
  ListenerList l = list;
  l.n = std::min(l.n, kMaxListeners);
  seq_write(hdr.listeners_seq, listener_words(hdr), reinterpret_cast<const uint64_t*>(&l), kListenerWords);
}

bool read_listeners(const SegmentHeader& hdr, ListenerList& out) noexcept {
  // A live writer rewrites the list in microseconds; one that died mid-write
  // leaves the counter odd until the next master writes the list again. The
  // first tries yield; then, for a writer descheduled mid-write on a loaded
  // host, they sleep 1 ms each, and the reader gives up once kPatienceMs have
  // passed: a count of yields alone can run out in a millisecond. (No caller
  // is on a hot path: gwctl, the status, a master at start or upgrade.)
  constexpr int kYields = 4096;
  constexpr uint64_t kPatienceMs = 100;
  const uint64_t* words = listener_words(const_cast<SegmentHeader&>(hdr));
  uint64_t start_ms = 0;
  bool sleeping = false;
  for (int i = 0;; ++i) {
    if (seq_try_read(hdr.listeners_seq, words, reinterpret_cast<uint64_t*>(&out), kListenerWords)) {
      if (out.n <= kMaxListeners) return true;
      break;  // a consistent copy, but not one a master wrote
    }
    if (i < kYields) {
      ::sched_yield();
      continue;
    }
    const uint64_t now = core::monotonic_ms();
    if (!sleeping) {
      sleeping = true;
      start_ms = now;
    } else if (now - start_ms >= kPatienceMs) {
      break;
    }
    ::usleep(1000);
  }
  out = ListenerList{};
  return false;
}

}  // namespace gw::shm

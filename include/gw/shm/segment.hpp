#pragma once
// The POSIX shared-memory segment: layout, creation, attachment and checks.
//
//   offset 0            SegmentHeader  (magic, ABI, sizes, writer lock, published, master pid)
//   slot_offset[0]      SlotHeader + Table payload   ┐ double-buffered config, seqlock each
//   slot_offset[1]      SlotHeader + Table payload   ┘ `published` names the live one
//   runtime_offset      HostRuntime[max_hosts]       per-host health and failure state
//   counters_offset     HostCounter[stat_workers][max_hosts]  per-worker per-host counters
//   workers_offset      WorkerRuntime[kMaxWorkers]
//   pools_offset        PoolRuntime[max_pools]       shared round-robin tickets
//   events_offset       EventEntry[kEventCapacity]   the event ring
//   limits_offset       LimitEntry[max_limit_keys]   rate/connection limit table (8-way sets)
//   held_offset         uint16_t[stat_workers][max_limit_keys]  connections each worker holds per entry
//   guard_offset        GuardCounters[kMaxWorkers]   per-worker limit and auth counters
//   host_stats_offset   HostStats[stat_workers][max_hosts]       per-worker per-host responses, latency
//   listener_stats_offset ListenerStats[stat_workers][kMaxListeners]  per-worker per-listener counters
//   rule_stats_offset   RuleStats[stat_workers][max_rules]       per-worker per-rule hits
//
// The three stats matrices (ABI 8) are written by the workers only, one writer
// per row (the worker of that row): a relaxed load and store per update, never
// a locked instruction. Readers (the admin server, gwctl) sum the rows.
// stat_workers is twice the config's worker count when the segment was created
// (at most kMaxWorkers): a reload starts a new generation of workers in rows
// the draining one does not use. A master needing more recreates the segment.
// A worker's row is not its listening-socket slot: the master assigns rows,
// always below stat_workers, so the counters and held matrices have that many
// rows too (ABI 10; they had kMaxWorkers, 12 MB of the default segment that no
// worker could use).
//
// Everything in the segment is trivially copyable or a lock-free atomic and is
// addressed by offsets, never pointers: each process maps it at its own address.

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <span>
#include <stdexcept>
#include <string>

#include "gw/shm/limits.hpp"
#include "gw/shm/table.hpp"

namespace gw::shm {

inline constexpr uint64_t kMagic = 0x31574753'4d485347ull;  // "GSHMSGW1" little-endian
// 4: routes, rules and address blocks in the table; 5: SegmentHeader.workers, .listeners, .cluster;
// 7: Caps.max_consumers/.max_limit_keys, consumers in the table, the limit table, held counts, guard counters
// 8: stats matrices (HostStats, ListenerStats, RuleStats), SegmentHeader.stat_workers and their
//    offsets, RuleRecord.stat_slot / stat_tag
// 9: GuardCounters.jwt_cache_hits
// 10: the counters and held matrices have stat_workers rows (were kMaxWorkers). A binary
//     upgrade across ABIs fails (the running segment is refused) and the old master serves on.
// 11: HealthCheck.host (health.host, the Host header of an http check)
// 12: HostStats.sent_bytes/.received_bytes, ListenerStats.received_bytes/.sent_bytes (a cache line each)
// 13: HostRuntime.verdicts: passive and active health in one word with the host's tag (were
//     `health` and `active`, each set after a separate check of `tag`)
// 14: EventEntry.check (8 bytes taken from EventData::text, now 216): a writer stalled in the
//     middle of its entry while the ring wrapped could finish its stores over the newer event
inline constexpr uint32_t kAbiVersion = 14;
inline constexpr uint32_t kMaxWorkers = 64;
inline constexpr uint32_t kEventCapacity = 4096;  // power of two
inline constexpr size_t kPathCap = 512;
inline constexpr uint32_t kMaxListeners = 64;  ///< listeners a config may have (the header lists them)

static_assert(std::atomic<uint32_t>::is_always_lock_free && std::atomic<int32_t>::is_always_lock_free);

/// A listening address of the running master, for `gwctl check`. Written by the
/// master before it stores master_pid (release); read after loading it.
struct ListenerInfo {
  char name[kNameCap];  ///< the listener's name
  core::SockAddr addr;  ///< where it listens
  /// 1 + the listener's row of the ListenerStats matrix (kept by name across
  /// reloads and binary upgrades); 0 = its index (a master of an earlier build).
  uint32_t stats_row;
};
static_assert(std::is_trivially_copyable_v<ListenerInfo> && sizeof(ListenerInfo) % 8 == 0);

/// The ListenerStats row of the `index`-th listener the header lists.
inline uint32_t listener_stats_row(const ListenerInfo& l, uint32_t index) noexcept {
  return l.stats_row == 0 || l.stats_row > kMaxListeners ? index : l.stats_row - 1;
}

/// Where the sync process stands with etcd (config `cluster`).
inline constexpr uint32_t kClusterOff = 0;           ///< no `cluster` in the config
inline constexpr uint32_t kClusterConnecting = 1;    ///< not synced yet since the master started
inline constexpr uint32_t kClusterSynced = 2;        ///< watching; the table holds etcd's state up to `revision`
inline constexpr uint32_t kClusterDisconnected = 3;  ///< lost etcd; serving the last good table, reconnecting

/// Text of the sync state, copied through ClusterRuntime::text_seq (seqlock).
struct ClusterText {
  char endpoint[64];  ///< URL of the etcd member in use (or last tried)
  char error[184];    ///< the last error, or empty
};
static_assert(sizeof(ClusterText) % 8 == 0);

/// The sync process's state. One writer (the sync process; the master resets it
/// at start, and at a reload all but the counters); any process reads it
/// (gwctl status). The counters (reconnects, relists, applied) count since the
/// master started: a reload, a binary upgrade and a respawned sync process
/// count on, so they never go back while gwd runs.
struct alignas(64) ClusterRuntime {
  std::atomic<uint32_t> state;                   ///< kCluster*
  std::atomic<int32_t> sync_pid;                 ///< the sync process; 0 = none
  std::atomic<uint64_t> revision;                ///< the etcd revision the table reflects (last change applied)
  std::atomic<uint64_t> since_ms;                ///< wall clock of the last state change
  std::atomic<uint64_t> contact_ms;              ///< wall clock of the last successful exchange with etcd
  std::atomic<uint64_t> reconnects;              ///< watch (re)connections
  std::atomic<uint64_t> relists;                 ///< full lists (start, reload, compaction)
  std::atomic<uint64_t> applied;                 ///< table commits made from etcd
  std::atomic<uint64_t> text_seq;                ///< seqlock over text_words
  uint64_t text_words[sizeof(ClusterText) / 8];  ///< ClusterText, copied with store_words/load_words
};

struct SegmentHeader {
  uint64_t magic;        ///< kMagic; written last at creation (release), so attachers see a complete header
  uint32_t abi;          ///< kAbiVersion of the creator
  uint32_t header_size;  ///< sizeof(SegmentHeader) of the creator
  uint64_t total_size;   ///< bytes mapped
  Caps caps;             ///< table capacities
  uint32_t max_workers;  ///< kMaxWorkers of the creator
  uint32_t event_capacity;
  uint32_t
      stat_workers;  ///< rows of the stats matrices (HostStats, ListenerStats, RuleStats); workers use rows below it
  uint64_t slot_offset[2];
  uint64_t slot_payload;  ///< Table::bytes_for(caps)
  uint64_t runtime_offset;
  uint64_t counters_offset;
  uint64_t workers_offset;
  uint64_t pools_offset;
  uint64_t events_offset;
  uint64_t limits_offset;  ///< LimitEntry[caps.max_limit_keys]
  uint64_t held_offset;    ///< uint16_t[stat_workers][caps.max_limit_keys]
  uint64_t guard_offset;   ///< GuardCounters[kMaxWorkers]
  uint64_t limit_seed;     ///< random at creation: the seed of the limit keys' hash (XXH3)
  uint64_t host_stats_offset;
  uint64_t listener_stats_offset;
  uint64_t rule_stats_offset;
  char state_file[kPathCap];   ///< absolute path of the state file; empty = none
  char config_file[kPathCap];  ///< absolute path of the config gwd runs with (for messages)

  alignas(64) pthread_mutex_t writer_lock;  ///< robust, process-shared; held by one writer at a time

  alignas(64) std::atomic<uint64_t> published;  ///< (generation << 1) | slot index of the live table
  std::atomic<int32_t> master_pid;              ///< running gwd master; 0 when stopped
  std::atomic<uint32_t> workers;                ///< worker slots the master runs (0..workers-1)
  std::atomic<uint64_t> master_started_ms;      ///< wall clock of the master's start
  /// The generation a writer is persisting (set before its state file is
  /// written, under the writer lock). Above the published generation, a writer
  /// stopped between its state file and its publish: the next writer puts the
  /// file (and the runtime slots) back in step with the live table. It sits in
  /// what was padding, so segments of earlier builds read 0 here: none.
  std::atomic<uint64_t> persisting;
  /// Nonzero once a gwd starting on this segment replaces it by a new one (other
  /// capacities, more worker rows): set under the writer lock just before the
  /// unlink, so a writer still holding the old mapping refuses its change
  /// instead of committing where no gwd reads. Also in what was padding.
  std::atomic<uint32_t> retired;
  /// The pid of the last master that began to stop (stored before it signals
  /// anything). An old master ignores the binary-upgrade hand-over signal of a
  /// new master named here: that one is going away, so the old one serves on.
  /// Also in what was padding (segments of earlier builds: 0, no one).
  std::atomic<int32_t> stopping_master;
  /// Seqlock counter of `n_listeners` and `listeners` (see read_listeners): a
  /// reload rewrites the list while gwctl and the admin server read it. Also in
  /// what was padding (segments of earlier builds: 0, a list at rest).
  std::atomic<uint64_t> listeners_seq;

  alignas(64) std::atomic<uint64_t> event_head;  ///< next event sequence number to claim

  alignas(64) ClusterRuntime cluster;  ///< etcd sync state (state kClusterOff without `cluster`)

  // The master's listening addresses, written with write_listeners() and read
  // with read_listeners() (a ListenerList has this layout).
  uint32_t n_listeners;  ///< entries of `listeners` in use
  uint32_t reserved2;
  ListenerInfo listeners[kMaxListeners];
};
// The fields added in what was padding leave the layout (and kAbiVersion) as it was.
static_assert(offsetof(SegmentHeader, listeners_seq) + sizeof(uint64_t) <= offsetof(SegmentHeader, event_head));

/// A private copy of the header's listener list: the same words, in the same order.
struct ListenerList {
  uint32_t n = 0;  ///< entries of `items` in use (at most kMaxListeners)
  uint32_t reserved = 0;
  ListenerInfo items[kMaxListeners] = {};
};
static_assert(offsetof(SegmentHeader, n_listeners) % 8 == 0 && offsetof(ListenerList, items) == 8 &&
              offsetof(SegmentHeader, listeners) - offsetof(SegmentHeader, n_listeners) == 8 &&
              sizeof(ListenerList) == 8 + sizeof(SegmentHeader::listeners) &&
              std::is_trivially_copyable_v<ListenerList>);

/// Replaces the header's listener list (seqlock write). One writer at a time:
/// the running master, at its start, at a reload, and when a binary upgrade it
/// handed over to fails (the new master wrote it at its start, before the
/// hand-over). A writer that died mid-write leaves the counter odd; the next
/// one writes the list again.
void write_listeners(SegmentHeader& hdr, const ListenerList& list) noexcept;
/// Copies the header's listener list into `out` (lock-free; retries while a
/// writer rewrites it: yields, then 1 ms sleeps). False, with `out` empty, if
/// the list stays mid-write for about 100 ms (its writer died there) or holds
/// an entry count above kMaxListeners.
bool read_listeners(const SegmentHeader& hdr, ListenerList& out) noexcept;

struct alignas(64) SlotHeader {
  std::atomic<uint64_t> seq;  ///< seqlock counter; odd while a writer writes the payload
};

/// Health and failure state of a host slot. Written by any worker (passive
/// failures) and by the writer (reset on reuse).
struct alignas(64) HostRuntime {
  std::atomic<uint64_t> window_fails;  ///< (tag << 32) | failures in the current fail window
  std::atomic<uint64_t> last_fail_ms;  ///< monotonic time of the last passive failure
  std::atomic<uint64_t> failures;      ///< passive failures since the host got this slot
  std::atomic<uint64_t> freed_ms;      ///< monotonic time the slot was freed; 0 = never used
  std::atomic<uint32_t> tag;           ///< tag of the host owning the slot; 0 = none
  std::atomic<uint32_t> reserved;
  /// The health verdicts, with the tag of the host they are about (ABI 13):
  /// (tag << 32) | kPassiveDownBit if passive health holds the host down |
  /// the checker's kActive* state in the low byte. One word, so that a
  /// verdict is set only on the host it was found for: a compare-exchange
  /// fails once the slot is given to another host (shm/runtime.hpp).
  std::atomic<uint64_t> verdicts;
  std::atomic<uint64_t> up_since_ms;  ///< monotonic time the host last came back (slow start); 0 = never down
  std::atomic<uint64_t> ewma;  ///< (peak-EWMA connect latency in us << 32) | low 32 bits of its update time in ms
};
inline constexpr uint32_t kPassiveDownBit = 0x100;
inline constexpr uint32_t kActiveMask = 0xff;
inline constexpr uint32_t kActiveUnknown = 0;
inline constexpr uint32_t kActiveUp = 1;
inline constexpr uint32_t kActiveDown = 2;
static_assert(sizeof(HostRuntime) == 64);

/// Per-worker, per-host counters. Each row has exactly one writer (its worker),
/// so updates are a relaxed load and store, no read-modify-write. Readers sum
/// the rows whose tag matches the host's current tag.
struct HostCounter {
  std::atomic<uint32_t> tag;     ///< host tag these counts belong to
  std::atomic<uint32_t> active;  ///< open relayed connections
  std::atomic<uint64_t> total;   ///< connections routed
};

/// Latency histogram buckets: upper bounds in microseconds (Prometheus `le`,
/// inclusive). Fixed: changing them changes the shm layout.
inline constexpr uint64_t kLatencyBoundsUs[] = {500,    1000,   2500,   5000,    10000,   25000,   50000,
                                                100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};
inline constexpr size_t kLatencyBuckets = std::size(kLatencyBoundsUs);

/// One latency histogram row. Buckets are not cumulative: bucket i counts
/// samples in (bound[i-1], bound[i]]; the last counts those above every bound.
/// The reader makes them cumulative. count = the sum of the buckets.
struct LatencyHistogram {
  std::atomic<uint64_t> buckets[kLatencyBuckets + 1];
  std::atomic<uint64_t> sum_us;  ///< sum of the samples in microseconds
};

/// Per-worker, per-host statistics (the admin server's metrics). One writer
/// per row (its worker): relaxed load + store. Like HostCounter, a row whose
/// tag is not the host's belongs to an earlier owner of the slot: the worker
/// zeroes it when it first counts for the new tag; readers skip it.
struct alignas(64) HostStats {
  std::atomic<uint32_t> tag;  ///< host tag these counts belong to
  std::atomic<uint32_t> reserved;
  std::atomic<uint64_t> responses[5];  ///< http: response heads from the host by class, 1xx..5xx
  /// http: of those, 5xx answers listed in retry.on, which also count as
  /// passive failures (HostRuntime::failures) of the host. (A builder of an
  /// earlier build left it 0.)
  std::atomic<uint64_t> status_failures;
  std::atomic<uint64_t> reserved2;
  LatencyHistogram connect;   ///< every successful connect: connect time
  LatencyHistogram response;  ///< http: attempt start (connect included) to the response head
  // Bytes on the host's socket, every listener kind, added per read or write
  // (ABI 12; own cache line).
  alignas(64) std::atomic<uint64_t> sent_bytes;  ///< written to the host (http: heads as on the wire, bodies)
  std::atomic<uint64_t> received_bytes;          ///< read from the host
};
static_assert(sizeof(HostStats) == 64 + 2 * sizeof(LatencyHistogram) + 64 && sizeof(LatencyHistogram) == 128);

/// Why a listener refused or closed a connection without serving it (index
/// into ListenerStats::rejects). 1..23 are the frame reasons (proxy::FrameError
/// values); the rest follow.
inline constexpr size_t kRejectNoHost = 24;  ///< no pool had a usable host
inline constexpr size_t kRejectNoSlot =
    25;  ///< an L4 connection got no descriptor, port or memory for its upstream socket
inline constexpr size_t kRejectLimitConn = 26;      ///< limit_conn: the address was over its max
inline constexpr size_t kListenerRejectKinds = 28;  ///< room to grow
/// gw's own HTTP answers (errors) by status code; see http_code_index().
inline constexpr size_t kHttpCodeSlots = 32;

/// Per-worker, per-listener counters, indexed by the listener's position in
/// the config. One writer per row (its worker). The master zeroes them all at
/// start (a listener index means another listener in another config) and a
/// dead worker's `active`.
struct alignas(64) ListenerStats {
  std::atomic<uint64_t> accepted;       ///< connections accepted
  std::atomic<uint64_t> active;         ///< connections open now
  std::atomic<uint64_t> http_requests;  ///< http: request heads parsed
  std::atomic<uint64_t> reserved;
  std::atomic<uint64_t> rejects[kListenerRejectKinds];  ///< by kReject* / frame reason
  std::atomic<uint64_t> http_errors[kHttpCodeSlots];    ///< http: answers gw made itself, by http_code_index()
  // Bytes on the clients' sockets, added per read or write (ABI 12; own cache line).
  alignas(64) std::atomic<uint64_t> received_bytes;  ///< read from clients
  std::atomic<uint64_t> sent_bytes;                  ///< written to clients (gw's own answers too)
};
static_assert(sizeof(ListenerStats) == 512 + 64);

/// The status codes counted in ListenerStats::http_errors, by slot; slot 0
/// counts any other code, and slots past the list are unused.
inline constexpr uint16_t kHttpCodes[kHttpCodeSlots] = {0,   400, 401, 403, 404, 405, 408, 411, 413, 414, 415,
                                                        429, 431, 494, 499, 500, 501, 502, 503, 504, 505, 301};
/// The slot of `status` in ListenerStats::http_errors (0 = another code).
constexpr size_t http_code_index(int status) noexcept {
  for (size_t i = 1; i < kHttpCodeSlots; ++i)
    if (kHttpCodes[i] == status) return i;
  return 0;
}

/// Per-worker, per-rule hits, indexed by RuleRecord::stat_slot and checked
/// against RuleRecord::stat_tag as HostStats is.
struct RuleStats {
  std::atomic<uint32_t> tag;
  std::atomic<uint32_t> reserved;
  std::atomic<uint64_t> hits;  ///< requests the rule matched (and sent to its upstream)
};
static_assert(sizeof(RuleStats) == 16);

/// Reasons a frame connection can be refused (proxy::FrameError has them;
/// the shm layout only needs the count, with room to grow).
inline constexpr size_t kFrameRejectKinds = 22;
/// Outcomes of HTTP requests (proxy::HttpOutcome has them), with room to grow.
inline constexpr size_t kHttpOutcomeKinds = 8;

struct alignas(64) WorkerRuntime {
  std::atomic<int32_t> pid;              ///< 0 = slot not running
  std::atomic<uint32_t> flags;           ///< kWorkerRetiring: draining after a reload (set by the master)
  std::atomic<uint64_t> generation;      ///< table generation the worker routes with
  std::atomic<uint64_t> applied_ns;      ///< monotonic ns of the first connection routed with `generation`
  std::atomic<uint64_t> started_ms;      ///< wall clock
  std::atomic<uint64_t> connections;     ///< open client connections
  std::atomic<uint64_t> accepted;        ///< client connections accepted since start
  std::atomic<uint64_t> hash_fallbacks;  ///< connections a hash method routed by round robin: no key
  std::atomic<uint64_t> no_host;         ///< connections closed because no pool had a usable host
  // Frame listeners (second cache line on).
  std::atomic<uint64_t> frames_routed;  ///< mode "frame": frames sent to a host
  std::atomic<uint64_t> host_closed;    ///< connections closed because their host went (on_host_remove "close")
  std::atomic<uint64_t> frame_rejects[kFrameRejectKinds];  ///< by proxy::FrameError (index 0 unused)
  // HTTP listeners (fifth cache line on).
  std::atomic<uint64_t> http_requests;                     ///< request heads parsed
  std::atomic<uint64_t> http_retries;                      ///< attempts after a request's first
  std::atomic<uint64_t> http_keepalive_reused;             ///< requests sent over an idle upstream connection
  std::atomic<uint64_t> http_tunnels;                      ///< WebSocket/Upgrade tunnels opened (101)
  std::atomic<uint64_t> http_outcomes[kHttpOutcomeKinds];  ///< by proxy::HttpOutcome (index 0: ok)
  std::atomic<uint64_t>
      heartbeat_ms;  ///< monotonic ms of the worker's last loop round (1 s apart at most); 0 = none yet
  std::atomic<uint64_t> http_reserved[3];
};
static_assert(sizeof(WorkerRuntime) == 64 + 64 + 128 + 128);
/// WorkerRuntime::flags: the worker belongs to a generation that a reload
/// replaced; it accepts nothing and exits when its connections are done.
inline constexpr uint32_t kWorkerRetiring = 1;

/// Per-pool state shared by the workers, indexed by the pool's position in the
/// table. A position that passes to another pool after a removal keeps its
/// ticket counter: tickets only need to be shared, not to start at zero.
struct alignas(64) PoolRuntime {
  std::atomic<uint64_t> ticket;  ///< next position in the pool's round-robin schedule
};

/// One event. The payload is guarded by `seq` = 2*index+1 while written, 2*index+2 when complete.
struct EventData {
  uint64_t wall_ms;
  uint64_t generation;
  int32_t pid;
  uint32_t kind;
  char text[216];  // 224 before ABI 14, when EventEntry::check took 8 bytes (an entry is 256)
};
static_assert(sizeof(EventData) % 8 == 0);
struct alignas(64) EventEntry {
  std::atomic<uint64_t> seq;
  uint64_t words[sizeof(EventData) / 8];
  /// A hash of `words` seeded with the event's number, stored after them. A
  /// writer descheduled in the middle of its stores while the ring wrapped
  /// finishes them over the newer event that took the entry: seq then says
  /// complete, but the words are a mix (or the older event's), and the check
  /// no longer matches; readers take the entry as lost.
  std::atomic<uint64_t> check;
};
static_assert(sizeof(EventEntry) == 256);

enum class EventKind : uint32_t { config = 1, health = 2, process = 3 };

/// Thrown when a segment cannot be created or attached; the message is for the operator.
class SegmentError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Another writer held the writer lock for the whole wait (a gwctl stopped
/// mid-change): the change was not made; it may be tried again.
class WriterLockTimeout : public SegmentError {
 public:
  using SegmentError::SegmentError;
};

/// A mapping of the segment. Move-only; unmaps on destruction (never unlinks).
class Segment {
 public:
  Segment() = default;
  Segment(Segment&&) noexcept;
  Segment& operator=(Segment&&) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();

  /// Creates a new segment (fails if one exists). Initialises every field.
  /// `stat_workers`: rows of the stats matrices (the master asks for twice its workers).
  static Segment create(const std::string& name, const Caps& caps, uint32_t stat_workers);
  /// Attaches to an existing segment and validates it. Throws SegmentError with
  /// a clear message: missing, not a gw segment, other ABI, truncated.
  static Segment attach(const std::string& name);
  /// attach() after shm_open: maps the object open at `fd` (which the caller
  /// keeps) and validates it. `name` is for messages. The fuzz target and tests
  /// pass a memfd.
  static Segment attach_fd(int fd, const std::string& name);
  /// Removes the name; existing mappings stay valid. Returns false if absent.
  static bool unlink(const std::string& name) noexcept;
  /// "/name" for shm_open; validates the name (throws SegmentError).
  static std::string object_name(const std::string& name);
  /// Checks a mapping of `size` bytes at `base`; returns an empty string or the reason.
  static std::string validate(const void* base, size_t size);

  bool valid() const noexcept { return base_ != nullptr; }
  const std::string& name() const noexcept { return name_; }
  SegmentHeader& header() const noexcept { return *reinterpret_cast<SegmentHeader*>(base_); }
  const Caps& caps() const noexcept { return header().caps; }
  SlotHeader& slot(int i) const noexcept { return *reinterpret_cast<SlotHeader*>(base_ + header().slot_offset[i]); }
  uint64_t* slot_words(int i) const noexcept {
    return reinterpret_cast<uint64_t*>(base_ + header().slot_offset[i] + sizeof(SlotHeader));
  }
  size_t slot_word_count() const noexcept { return header().slot_payload / 8; }
  HostRuntime& host(uint32_t slot) const noexcept {
    return reinterpret_cast<HostRuntime*>(base_ + header().runtime_offset)[slot];
  }
  /// `worker` < stat_workers(), as for the stats rows below.
  HostCounter& counter(uint32_t worker, uint32_t slot) const noexcept {
    return reinterpret_cast<HostCounter*>(base_ + header().counters_offset)[size_t{worker} * caps().max_hosts + slot];
  }
  WorkerRuntime& worker(uint32_t i) const noexcept {
    return reinterpret_cast<WorkerRuntime*>(base_ + header().workers_offset)[i];
  }
  PoolRuntime& pool(uint32_t i) const noexcept {
    return reinterpret_cast<PoolRuntime*>(base_ + header().pools_offset)[i];
  }
  /// Stats rows; `worker` < header().stat_workers.
  HostStats& host_stats(uint32_t worker, uint32_t slot) const noexcept {
    return reinterpret_cast<HostStats*>(base_ + header().host_stats_offset)[size_t{worker} * caps().max_hosts + slot];
  }
  ListenerStats& listener_stats(uint32_t worker, uint32_t listener) const noexcept {
    return reinterpret_cast<ListenerStats*>(base_ +
                                            header().listener_stats_offset)[size_t{worker} * kMaxListeners + listener];
  }
  RuleStats& rule_stats(uint32_t worker, uint32_t slot) const noexcept {
    return reinterpret_cast<RuleStats*>(base_ + header().rule_stats_offset)[size_t{worker} * caps().max_rules + slot];
  }
  uint32_t stat_workers() const noexcept { return header().stat_workers; }
  EventEntry& event(uint64_t seqno) const noexcept {
    return reinterpret_cast<EventEntry*>(base_ + header().events_offset)[seqno & (kEventCapacity - 1)];
  }
  LimitEntry* limit_entries() const noexcept { return reinterpret_cast<LimitEntry*>(base_ + header().limits_offset); }
  /// Worker `w`'s row of held connection counts, one per limit entry; `w` < stat_workers().
  std::atomic<uint16_t>* limit_held(uint32_t w) const noexcept {
    return reinterpret_cast<std::atomic<uint16_t>*>(base_ + header().held_offset) + size_t{w} * caps().max_limit_keys;
  }
  GuardCounters& guard(uint32_t w) const noexcept {
    return reinterpret_cast<GuardCounters*>(base_ + header().guard_offset)[w];
  }

  /// True if the master recorded in the header is alive.
  bool master_alive() const noexcept;

  static size_t layout_size(const Caps& caps, uint32_t stat_workers, SegmentHeader* fill = nullptr) noexcept;

 private:
  std::string name_;
  char* base_ = nullptr;
  size_t size_ = 0;
};

/// Reads the published table into `out` (which must have the segment's caps).
/// Lock-free: retries while a writer rewrites the slot being read. Returns the
/// published word the copy corresponds to. Any process or thread may call it.
///
/// A table that fails validate_table(), or a published slot that stays mid-write
/// or holds another generation (a corrupt segment, or a foreign writer), is
/// refused: `out` is left empty (generation 0) and `*refused` (when given) names
/// the problem; otherwise `*refused` is set to nullptr.
uint64_t read_published(const Segment& seg, Table& out, const char** refused = nullptr) noexcept;

/// Per-process cache of the published table. check() is one acquire load.
class TableReader {
 public:
  explicit TableReader(const Segment& seg) : seg_(&seg) {}
  /// True if a newer table has been published since the last refresh().
  bool stale() const noexcept { return seg_->header().published.load(std::memory_order_acquire) != cached_; }
  /// Copies the live table into `out`; returns its generation. A refused table
  /// (see read_published) counts as read: stale() stays false until the next
  /// publish, and `*refused` names the problem.
  uint64_t refresh(Table& out, const char** refused = nullptr) noexcept {
    cached_ = read_published(*seg_, out, refused);
    return out.header().generation;
  }

 private:
  const Segment* seg_;
  uint64_t cached_ = ~0ull;
};

}  // namespace gw::shm

// libFuzzer target for the readers of the shm segment: arbitrary bytes as the
// contents of a segment that a buggy or foreign process may have written.
//
// The input is the segment's first bytes; the rest is zero. Its header's
// capacities give the segment's size (the layout gwd would make for them, if
// at most kMaxSegment bytes), so an input that keeps the header of a real
// segment (the seeds are dumps of small ones) reaches every reader:
//   - Segment::validate over the raw bytes, and Segment::attach_fd (gwctl's and
//     gwd's attach, adopt at start) over a memfd holding the segment;
//   - TableReader / read_published (workers, checker, gwctl, admin, gwd adopt)
//     and what a worker derives from the table (balance::Snapshot, Balancer
//     rebuild and picks, rule matchers), the state file's form (gwd adopt);
//   - the status document (gwctl status --json, GET /status), the event ring
//     (events_json, the gwctl events / master follower loop), the etcd sync
//     text, the limit table, and a no-op Writer commit over the segment.
// Checked (abort on failure): nothing crashes or reads out of bounds (ASan and
// UBSan under libFuzzer), every loop ends, a table read_published accepts
// passes validate_table() and has rules check_rule() accepts, a refused table is
// empty, the JSON documents parse (UTF-8 included: json_escape replaces what
// is not, and validate_table refuses rule values that are not),
// and a table the writer publishes is read back without refusal.
// tests/fuzz/corpus/shm holds the seeds (tests/fuzz/make_shm_corpus.cpp).

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <simdjson.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gw/admin/status.hpp"
#include "gw/api/limit_table.hpp"
#include "gw/balance/balancer.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/core/log.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/state_file.hpp"
#include "gw/shm/table.hpp"
#include "gw/shm/writer.hpp"

namespace {

using namespace gw;

constexpr size_t kMaxSegment = 4u << 20;  // bigger layouts are refused unread (keeps runs fast)

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "shm_fuzz: %s\n", what);
  std::abort();
}

// The status and events documents must parse, as UTF-8 JSON.
void check_json(const std::string& doc, const char* what) {
  static simdjson::dom::parser parser;
  auto r = parser.parse(doc);
  if (r.error() != simdjson::SUCCESS) {
    std::fprintf(stderr, "shm_fuzz: %s is not JSON (%s): %s\n", what, simdjson::error_message(r.error()),
                 doc.substr(0, 300).c_str());
    std::abort();
  }
}

// What a worker does with a table: the snapshot, the balancer's derived
// structures, picks over every upstream, and the rules' matchers.
void use_table(const shm::Segment& seg, const shm::Table& t) {
  balance::Snapshot snap;
  snap.build(t);
  balance::Balancer bal(seg.caps().max_hosts, 42);
  bal.set_tickets(
      [](void* ctx, uint32_t pool) -> std::atomic<uint64_t>* {
        const auto* s = static_cast<const shm::Segment*>(ctx);
        return pool < s->caps().max_pools ? &s->pool(pool).ticket : nullptr;
      },
      const_cast<shm::Segment*>(&seg));
  bal.set_latency(
      [](void* ctx, const shm::HostRecord& h) -> uint64_t {
        return shm::latency_us(static_cast<const shm::Segment*>(ctx)->host(h.slot), h.tag, 1000);
      },
      const_cast<shm::Segment*>(&seg));
  bal.rebuild(snap);
  const auto hosts = t.hosts();
  for (const auto& u : snap.upstreams()) {
    for (const auto& p : snap.pools(u))
      for (uint32_t h : snap.hosts(p))
        if (h >= hosts.size() || hosts[h].pool != p.pool) fail("a snapshot pool lists a host of another pool");
    auto eligible = [&](uint32_t h) noexcept {
      const auto& r = hosts[h];
      return !r.admin_down && shm::host_usable(seg.host(r.slot), r.tag, u.health, 1000);
    };
    auto load = [&](uint32_t h) noexcept { return shm::host_totals(seg, hosts[h].slot, hosts[h].tag).active; };
    for (const char* key : {"", "client-1", "10.0.0.7"}) {
      const int h = bal.pick(snap, u, key, eligible, load);
      if (h >= static_cast<int>(hosts.size())) fail("a pick returned a host out of range");
    }
  }
  core::SockAddr peer4, peer6;
  peer4.family = AF_INET;
  peer4.ip[0] = 10;
  peer6.family = AF_INET6;
  peer6.ip[15] = 1;
  for (size_t i = 0; i < t.rules().size(); ++i) {
    const shm::RuleSpec spec = t.rule_spec(static_cast<int>(i));
    if (!shm::check_rule(spec).empty()) fail("an accepted table has a rule check_rule refuses");
    for (const auto& c : t.rule_cidrs(t.rules()[i])) (void)(c.contains(peer4) || c.contains(peer6));
    (void)shm::describe_rule(spec);
    (void)t.rule_path(static_cast<int>(i));
  }
  for (size_t i = 0; i < hosts.size(); ++i) (void)t.host_path(static_cast<int>(i));
}

// The event followers: events_json (GET /events, gwctl status) and the loop
// of `gwctl events` and the master (bounded to one ring).
void read_events(const shm::Segment& seg) {
  const uint64_t head = seg.header().event_head.load(std::memory_order_acquire);
  check_json(admin::events_json(seg, 0, 16), "events_json");
  if (head > 8) check_json(admin::events_json(seg, head - 8, 100), "events_json");
  uint64_t cur = head > shm::kEventCapacity ? head - shm::kEventCapacity : 0;
  for (int n = 0; cur < head && n < 64; ++cur, ++n) {
    shm::EventData e{};
    if (shm::read_event(seg, cur, e) == shm::EventRead::ok) (void)shm::format_event(cur, e);
  }
}

// The worker's view of the limit table over whatever the entries hold.
void use_limits(const shm::Segment& seg) {
  api::LimitTable lim(seg, 0);
  const api::RateParams rate = api::RateParams::from(10, 5);
  for (uint64_t h : {uint64_t{1}, uint64_t{0x123456789abcdefull}, ~uint64_t{0}}) {
    (void)lim.take(h, rate, 5'000'000, 5'000);
    api::ConnTicket c = lim.acquire_conn(h, 4, 5'000);
    if (c.entry) lim.release_conn(c.entry);
  }
  (void)lim.stats();
  api::LimitTable::release_worker(seg, 1);
}

// A writer over the segment (gwctl on an adopted segment): a no-op commit
// either refuses the table or publishes one that reads back without refusal.
void commit_noop(const shm::Segment& seg) {
  // The lock's bytes are the input's: give the writer a fresh one (this
  // process is the only user of the memfd).
  pthread_mutex_t& m = seg.header().writer_lock;
  std::memset(static_cast<void*>(&m), 0, sizeof(m));
  pthread_mutexattr_t attr;
  ::pthread_mutexattr_init(&attr);
  ::pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  ::pthread_mutex_init(&m, &attr);
  ::pthread_mutexattr_destroy(&attr);
  shm::Writer w(seg);
  w.set_persist(false);  // never a file named by the input
  try {
    w.commit([](shm::Table&, std::vector<std::string>& events) { events.push_back("fuzz no-op"); });
  } catch (const shm::SegmentError&) {
    return;  // the published table was refused
  } catch (const shm::TableError&) {
    return;  // runtime slots full
  }
  shm::Table t(seg.caps());
  const char* refused = nullptr;
  shm::read_published(seg, t, &refused);
  if (refused) fail("a table the writer published is refused");
}

int memfd() {
  static int fd = [] {
    core::log_set_level(core::LogLevel::error);
    int f = ::memfd_create("gw-shm-fuzz", MFD_CLOEXEC);
    if (f < 0) fail("memfd_create failed");
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > kMaxSegment) return 0;
  // Segment::validate over exactly the input (a copy aligned as a mapping is:
  // it reads the header in place).
  {
    void* raw = std::aligned_alloc(64, (size + 64) & ~size_t{63});
    if (!raw) fail("aligned_alloc failed");
    std::memcpy(raw, data, size);
    (void)shm::Segment::validate(raw, size);
    std::free(raw);
  }

  // The segment the header describes, the input over its first bytes.
  size_t total = size;
  if (size >= sizeof(shm::SegmentHeader)) {
    shm::SegmentHeader h;
    std::memcpy(static_cast<void*>(&h), data, sizeof(h));
    if (h.stat_workers <= shm::kMaxWorkers && h.caps.max_hosts <= 1u << 20 && h.caps.max_limit_keys <= 1u << 24 &&
        h.caps.max_rule_cidrs <= 1u << 20) {
      const size_t want = shm::Segment::layout_size(h.caps, h.stat_workers);
      if (want > kMaxSegment) return 0;
      if (want >= size) total = want;
    }
  }
  if (total == 0) return 0;
  const int fd = memfd();
  if (::ftruncate(fd, 0) != 0 || ::ftruncate(fd, static_cast<off_t>(total)) != 0) fail("ftruncate failed");
  if (::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) fail("pwrite failed");
  shm::Segment seg;
  try {
    seg = shm::Segment::attach_fd(fd, "gw-shm-fuzz");
  } catch (const shm::SegmentError&) {
    return 0;  // refused: fine
  }

  // The table, as every reader gets it.
  shm::TableReader reader(seg);
  (void)reader.stale();  // (a published word of ~0 equals a new reader's "nothing cached")
  shm::Table t(seg.caps());
  const char* refused = nullptr;
  reader.refresh(t, &refused);
  if (reader.stale()) fail("a reader is stale right after refresh");
  if (refused) {
    if (t.header().generation != 0 || !t.hosts().empty() || !t.upstreams().empty() || !t.rules().empty())
      fail("a refused table is not empty");
  } else {
    if (shm::validate_table(t) != nullptr) fail("read_published accepted a table validate_table refuses");
    use_table(seg, t);
    const std::string state = shm::state_to_json(t);
    static simdjson::dom::parser parser;
    auto r = parser.parse(state);
    if (r.error() != simdjson::SUCCESS) fail("state_to_json is not JSON");
  }
  check_json(admin::status_json(seg, t), "status_json");
  (void)admin::cluster_line(admin::cluster_view(seg));
  read_events(seg);
  use_limits(seg);
  commit_noop(seg);
  return 0;
}

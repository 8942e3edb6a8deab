// Writes the shm fuzz target's seeds into a directory (tests/fuzz/corpus/shm):
// small segments made by the real writer (Segment::create, Writer commits,
// emit_event, the cluster and runtime setters), dumped without their trailing
// zero bytes (the fuzz target zero-fills the rest), and corrupt variants of
// them: counts over the capacities, indexes to records that do not exist,
// unknown enum values, unterminated names, a published slot that stays
// mid-write or holds another generation, a wrapped or garbage event ring,
// another ABI, other capacities, a cut header.
//
//   build/tests/gw_shm_seeds tests/fuzz/corpus/shm

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "gw/core/address.hpp"
#include "gw/shm/cluster.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/seqlock.hpp"
#include "gw/shm/writer.hpp"

namespace {

using namespace gw;
using namespace gw::shm;

const Caps kCaps{4, 8, 16, 4, 8, 16, 4, 8, 0};
constexpr uint32_t kStatWorkers = 2;

core::SockAddr addr(const char* text) {
  core::SockAddr a;
  std::string why;
  if (!core::parse_address(text, a, why)) std::abort();
  return a;
}

core::Cidr cidr(const char* text) {
  core::Cidr c;
  std::string why;
  if (!core::parse_cidr(text, c, why)) std::abort();
  return c;
}

// A segment of kCaps; the name is unlinked at once (the mapping stays).
Segment make_segment() {
  static int n = 0;
  const std::string name = "gw-shm-seeds-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
  Segment seg = Segment::create(name, kCaps, kStatWorkers);
  Segment::unlink(name);
  seg.header().limit_seed = 0x5eed;  // reproducible bytes
  return seg;
}

// Two upstreams with pools of several methods, hosts (IPv4, IPv6, one
// admin-down), routes with rules of every matcher, consumers, runtime state,
// events of every kind and the etcd sync text.
void fill(const Segment& seg) {
  Writer w(seg);
  w.set_persist(false);
  w.commit([](Table& t, std::vector<std::string>& ev) {
    UpstreamRecord app{};
    set_name(app.name, "app");
    app.connect_timeout_ms = 1000;
    app.max_fails = 2;
    app.fail_timeout_ms = 5000;
    app.tries = 2;
    app.check.type = kCheckHttp;
    app.check.unknown_usable = 1;
    app.check.expect_mask = 0x0c;
    std::strcpy(app.check.path, "/health");
    std::strcpy(app.check.host, "api.example.com:8443");
    const int u = t.add_upstream(app);
    UpstreamRecord pre{};
    set_name(pre.name, "pre");
    pre.tries = 1;
    pre.balance_factor = 150;
    pre.slow_start_ms = 10000;
    const int u2 = t.add_upstream(pre);
    const int p0 = t.add_pool(u, "primary", 0, Method::round_robin);
    const int p1 = t.add_pool(u, "ring", 1, Method::chash);
    const int p2 = t.add_pool(u2, "mag", 0, Method::maglev);
    const int p3 = t.add_pool(u2, "lc", 2, Method::least_conn);
    t.add_pool(u2, "ewma", 3, Method::ewma);
    t.add_host(p0, "a", addr("127.0.0.1:8081"), 3);
    t.add_host(p0, "b", addr("127.0.0.1:8082"), 1);
    t.add_host(p1, "c", addr("[::1]:8083"), 2);
    t.add_host(p1, "d", addr("127.0.0.1:8084"), 0);
    t.add_host(p2, "e", addr("10.0.0.5:80"), 5);
    t.add_host(p2, "f", addr("10.0.0.6:80"), 1);
    t.add_host(p3, "g", addr("10.0.0.7:80"), 1);
    t.hosts()[1].admin_down = 1;
    const int r0 = t.add_route("web", "v1");
    t.add_route("web", "rest");
    RuleSpec s;
    s.id = "gray";
    s.upstream = "pre";
    s.cidrs = {cidr("10.0.0.0/8"), cidr("::1/128")};
    s.percent_bp = 500;
    t.add_rule(r0, s);
    RuleSpec h;
    h.id = "canary";
    h.upstream = "pre";
    h.header_name = "X-Canary";
    h.header_value = "1";
    h.cookie_name = "beta";
    h.cookie_value = "yes";
    t.add_rule(r0, h);
    uint8_t key[kSha256Len] = {1, 2, 3};
    t.add_consumer("alice", key);
    key[0] = 9;
    t.add_consumer("bob", key);
    ev.push_back("add upstream app");
    ev.push_back("add rule web/v1/gray ip=10.0.0.0/8 percent=5 -> pre");
  });
  Table t(seg.caps());
  read_published(seg, t);
  const HostRecord& a = t.hosts()[0];
  record_failure(seg.host(a.slot), a.tag, {1, 5000}, 1000);
  record_check(seg.host(t.hosts()[2].slot), t.hosts()[2].tag, kActiveUp);
  record_latency(seg.host(t.hosts()[4].slot), t.hosts()[4].tag, 1500, 2000);
  counter_open(seg.counter(0, a.slot), a.tag);
  seg.worker(0).accepted.store(7);
  emit_event(seg, EventKind::health, 1, "host_down app/primary/a 127.0.0.1:8081 (passive)");
  emit_event(seg, EventKind::process, 1, "worker 0 started pid=1234");
  set_cluster_state(seg.header().cluster, kClusterSynced, 1'700'000'000'000);
  set_cluster_text(seg.header().cluster, "http://127.0.0.1:2379", "");
  seg.header().cluster.revision.store(42);
}

// Rewrites the published table in place, bypassing every check (a foreign writer).
void patch_table(const Segment& seg, const std::function<void(Table&)>& fn) {
  Table t(seg.caps());
  const uint64_t pub = read_published(seg, t);
  fn(t);
  store_words(seg.slot_words(static_cast<int>(pub & 1)), t.words(), t.word_count());
}

void dump(const std::string& dir, const std::string& name, const Segment& seg, size_t cut = 0) {
  const auto* base = reinterpret_cast<const char*>(&seg.header());
  size_t n = seg.header().total_size;
  if (n == 0) n = Segment::layout_size(kCaps, kStatWorkers);
  while (n > 0 && base[n - 1] == 0) --n;
  if (cut && cut < n) n = cut;
  std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
  out.write(base, static_cast<std::streamsize>(n));
  if (!out) {
    std::fprintf(stderr, "cannot write %s/%s\n", dir.c_str(), name.c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  {
    Segment seg = make_segment();
    dump(dir, "empty", seg);
  }
  {
    Segment seg = make_segment();
    fill(seg);
    dump(dir, "full", seg);
  }
  {
    // The ring has wrapped three times: the live entries are the first ones.
    Segment seg = make_segment();
    fill(seg);
    seg.header().event_head.store(3 * kEventCapacity);
    emit_event(seg, EventKind::config, 2, "remove host app/primary/b");
    emit_event(seg, EventKind::config, 2, "add host app/primary/h 127.0.0.1:9000 weight=1");
    dump(dir, "events-wrapped", seg);
  }

  using Patch = std::function<void(Table&)>;
  const std::vector<std::pair<const char*, Patch>> table_patches = {
      {"hosts-over-cap", [](Table& t) { t.header().n_hosts = 1000; }},
      {"upstreams-over-cap", [](Table& t) { t.header().n_upstreams = 0xffffffffu; }},
      {"cidrs-over-cap", [](Table& t) { t.header().n_cidrs = 17; }},
      {"host-pool-index", [](Table& t) { t.hosts()[2].pool = 200; }},
      {"host-slot", [](Table& t) { t.hosts()[0].slot = 9999; }},
      {"host-weight", [](Table& t) { t.hosts()[0].weight = 4'000'000'000u; }},
      {"host-id-unterminated", [](Table& t) { std::memset(t.hosts()[3].id, 'h', kNameCap); }},
      {"pool-upstream-index", [](Table& t) { t.pools()[1].upstream = 77; }},
      {"pool-method", [](Table& t) { t.pools()[0].method = 42; }},
      {"upstream-name-quote", [](Table& t) { std::strcpy(t.upstreams()[0].name, "a\"b\\"); }},
      {"upstream-check",
       [](Table& t) {
         t.upstreams()[0].check.type = 9;
         std::memset(t.upstreams()[0].check.path, '/', sizeof(t.upstreams()[0].check.path));
       }},
      {"upstream-check-host", [](Table& t) { std::strcpy(t.upstreams()[0].check.host, "a\r\nX: 1"); }},
      {"rule-route-index", [](Table& t) { t.rules()[0].route = 9; }},
      {"rule-cidr-range", [](Table& t) { t.rules()[0].first_cidr = 0xfffffff0u; }},
      {"rule-match", [](Table& t) { t.rules()[1].match = 0xf0; }},
      {"rule-header-value",
       [](Table& t) {
         t.rules()[1].header_value[0] = '\n';
         std::memset(t.rules()[1].cookie_value, 'v', kRuleValueCap);
       }},
      {"rule-stat-slot", [](Table& t) { t.rules()[0].stat_slot = 999; }},
      {"rule-percent", [](Table& t) { t.rules()[0].percent_bp = 60000; }},
      {"cidr-prefix", [](Table& t) { t.cidrs()[1].prefix = 200; }},
      {"cidr-family", [](Table& t) { t.cidrs()[0].family = 99; }},
      {"consumer-name", [](Table& t) { t.consumers()[0].name[0] = '\0'; }},
  };
  for (const auto& [name, patch] : table_patches) {
    Segment seg = make_segment();
    fill(seg);
    patch_table(seg, patch);
    dump(dir, name, seg, seg.header().runtime_offset);  // the slots are what matters
  }

  using SegPatch = std::function<void(const Segment&)>;
  const std::vector<std::pair<const char*, SegPatch>> seg_patches = {
      {"published-other-generation",
       [](const Segment& s) { s.header().published.store((s.header().published.load() + 8) | 1); }},
      {"published-slot-mid-write",
       [](const Segment& s) {
         const int i = static_cast<int>(s.header().published.load() & 1);
         s.slot(i).seq.store(s.slot(i).seq.load() | 1);
       }},
      {"events-garbage",
       [](const Segment& s) {
         s.header().event_head.store(uint64_t{1} << 62);
         for (uint32_t i = 0; i < 4; ++i) s.event(i).seq.store(~uint64_t{0} - i);
         std::memset(s.event(0).words, 0xff, sizeof(s.event(0).words));
       }},
      {"events-head-ahead", [](const Segment& s) { s.header().event_head.store(kEventCapacity + 5); }},
      {"cluster-garbage",
       [](const Segment& s) {
         s.header().cluster.state.store(7);
         s.header().cluster.text_seq.store(3);
         std::memset(s.header().cluster.text_words, 0x80, sizeof(s.header().cluster.text_words));
       }},
      {"runtime-garbage",
       [](const Segment& s) {
         for (uint32_t i = 0; i < kCaps.max_hosts; ++i) {
           s.host(i).tag.store(i);
           s.host(i).verdicts.store((uint64_t{i} << 32) | 0xff09u);  // undefined bits, active state 9
           s.host(i).ewma.store(~uint64_t{0});
           s.host(i).up_since_ms.store(~uint64_t{0} - 5);
           s.counter(1, i).tag.store(i);
           s.counter(1, i).active.store(0xffffffffu);
           s.counter(1, i).total.store(~uint64_t{0});
         }
       }},
      {"master-pid", [](const Segment& s) { s.header().master_pid.store(1); }},
      {"abi", [](const Segment& s) { s.header().abi = kAbiVersion + 1; }},
      {"caps", [](const Segment& s) { s.header().caps.max_hosts = 17; }},
      {"stat-workers", [](const Segment& s) { s.header().stat_workers = kMaxWorkers + 1; }},
      {"slot-offset", [](const Segment& s) { s.header().slot_offset[1] += 8; }},
  };
  for (const auto& [name, patch] : seg_patches) {
    Segment seg = make_segment();
    fill(seg);
    patch(seg);
    dump(dir, name, seg);
  }
  {
    Segment seg = make_segment();
    fill(seg);
    dump(dir, "cut-header", seg, sizeof(SegmentHeader) / 2);
    dump(dir, "cut-slot", seg, seg.header().slot_offset[1] + 100);
  }
  std::printf("seeds written to %s\n", dir.c_str());
  return 0;
}

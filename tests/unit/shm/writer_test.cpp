#include <doctest/doctest.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "../test_util.hpp"
#include "gw/core/log.hpp"
#include "gw/shm/events.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/state_file.hpp"
#include "gw/shm/writer.hpp"

using namespace gw::shm;
using gw::testing::TempSegment;

namespace {
gw::core::SockAddr addr(uint16_t port) {
  gw::core::SockAddr a;
  std::string why;
  gw::core::parse_address("127.0.0.1:" + std::to_string(port), a, why);
  return a;
}
void add_app(Writer& w) {
  w.commit([](Table& t, std::vector<std::string>& ev) {
    UpstreamRecord r{};
    set_name(r.name, "app");
    r.max_fails = 1;
    r.fail_timeout_ms = 1000;
    int u = t.add_upstream(r);
    int p = t.add_pool(u, "primary", 0, Method::round_robin);
    t.add_host(p, "a", addr(1), 1);
    ev.push_back("init");
  });
}
}  // namespace

TEST_SUITE("shm") {
  TEST_CASE("commit publishes a new generation that readers see") {
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    TableReader r(ts.seg);
    Table local(ts.seg.caps());
    CHECK(r.stale());
    CHECK(r.refresh(local) == 0);
    CHECK_FALSE(r.stale());
    add_app(w);
    CHECK(r.stale());
    CHECK(r.refresh(local) == 1);
    REQUIRE(local.hosts().size() == 1);
    CHECK(local.hosts()[0].tag != 0);
    CHECK(ts.seg.host(local.hosts()[0].slot).tag.load() == local.hosts()[0].tag);
    EventData e{};
    REQUIRE(read_event(ts.seg, 0, e) == EventRead::ok);
    CHECK(std::string(e.text) == "init");
    CHECK(e.generation == 1);
  }

  TEST_CASE("a retired segment (gwd made a new one) refuses every commit, and publishes nothing") {
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    add_app(w);
    const uint64_t before = ts.seg.header().published.load();
    w.set_retired(true);
    CHECK_THROWS_WITH_AS(add_app(w), doctest::Contains("was replaced by a new segment"), SegmentError);
    CHECK(ts.seg.header().published.load() == before);
    w.set_retired(false);  // the master's start failed after all: in use again
    CHECK_NOTHROW(w.commit([](Table& t, std::vector<std::string>&) { t.add_host(0, "b", addr(2), 1); }));
  }

  TEST_CASE("gwctl's commits (require_live_master) into a segment whose master is gone are refused") {
    // A gwctl that attached to a running gateway and waited while every gw
    // process was killed and gwd started on a new segment (the old one
    // deleted) reported its change done into the old one, which no gwd reads.
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    add_app(w);
    const uint64_t before = ts.seg.header().published.load();
    ts.seg.header().master_pid.store(0x7ffffff0);  // no such process
    Writer::require_live_master(true);
    CHECK_THROWS_WITH_AS(w.commit([](Table& t, std::vector<std::string>&) { t.add_host(0, "b", addr(2), 1); }),
                         doctest::Contains("stopped (its master, pid 2147483632, is gone) while this change waited; "
                                           "nothing was changed"),
                         SegmentError);
    CHECK(ts.seg.header().published.load() == before);
    Writer::require_live_master(false);  // gwd's own writers: their master names itself after its first commit
    CHECK_NOTHROW(w.commit([](Table& t, std::vector<std::string>&) { t.add_host(0, "b", addr(2), 1); }));
  }

  TEST_CASE("a refused change publishes nothing") {
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    add_app(w);
    uint64_t before = ts.seg.header().published.load();
    CHECK_THROWS_AS(w.commit([](Table& t, std::vector<std::string>&) {
      t.add_host(0, "b", addr(2), 1);  // applied to the copy...
      t.add_host(0, "a", addr(3), 1);  // ...then a duplicate: the whole change is refused
    }),
                    TableError);
    CHECK(ts.seg.header().published.load() == before);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    CHECK(t.hosts().size() == 1);
  }

  TEST_CASE("a removed host's slot is reused only with a new tag and fresh state") {
    TempSegment ts({1, 1, 1});
    Writer w(ts.seg);
    w.set_persist(false);
    add_app(w);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    const uint32_t slot = t.hosts()[0].slot, old_tag = t.hosts()[0].tag;
    HealthPolicy p{1, 1000};
    CHECK(record_failure(ts.seg.host(slot), old_tag, p, 5000));
    counter_open(ts.seg.counter(0, slot), old_tag);
    w.commit([](Table& tt, std::vector<std::string>&) { tt.remove_host(0); });
    w.commit([](Table& tt, std::vector<std::string>&) { tt.add_host(0, "b", addr(2), 1); });
    read_published(ts.seg, t);
    CHECK(t.hosts()[0].slot == slot);
    CHECK(t.hosts()[0].tag != old_tag);
    CHECK_FALSE(passive_down(ts.seg.host(slot), t.hosts()[0].tag));
    CHECK_FALSE(passive_down(ts.seg.host(slot), old_tag));  // (the word holds the new tag)
    CHECK(ts.seg.host(slot).failures.load() == 0);
    CHECK(host_totals(ts.seg, slot, t.hosts()[0].tag).active == 0);
    counter_close(ts.seg.counter(0, slot), old_tag);  // the old host's connection ends late: ignored
    CHECK(host_totals(ts.seg, slot, t.hosts()[0].tag).active == 0);
  }

  TEST_CASE("a checker's verdict is cleared once its upstream has no checks, and kept while it has") {
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    auto set_check = [&](uint8_t type) {
      w.commit([type](Table& t, std::vector<std::string>&) {
        if (t.upstreams().empty()) {
          UpstreamRecord r{};
          set_name(r.name, "app");
          int u = t.add_upstream(r);
          t.add_host(t.add_pool(u, "primary", 0, Method::round_robin), "a", addr(1), 1);
        }
        t.upstreams()[0].check.type = type;
        t.upstreams()[0].check.rise = t.upstreams()[0].check.fall = 1;
      });
    };
    set_check(kCheckTcp);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    const uint32_t slot = t.hosts()[0].slot, tag = t.hosts()[0].tag;
    CHECK(record_check(ts.seg.host(slot), tag, kActiveDown));
    set_check(kCheckHttp);  // checks still on: the verdict stands
    CHECK(active_state(ts.seg.host(slot), tag) == kActiveDown);
    set_check(kCheckNone);  // checks off (a reload): nothing is known any more
    CHECK(active_state(ts.seg.host(slot), tag) == kActiveUnknown);
    set_check(kCheckTcp);  // on again: the host waits for its first check, not for `rise` passes
    CHECK(active_state(ts.seg.host(slot), tag) == kActiveUnknown);
  }

  TEST_CASE("checks turned off bring a host they held down back with a host_up event, once") {
    // A reload without the health block puts a host checked down back into
    // rotation: a change of whether it takes traffic, so a host_up event (and
    // its hook). It came back in silence: a host_down hook that took it out of
    // some other system was never told it is back.
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    auto set_check = [&](uint8_t type) {
      w.commit([type](Table& t, std::vector<std::string>&) {
        if (t.upstreams().empty()) {
          UpstreamRecord r{};
          set_name(r.name, "app");
          int u = t.add_upstream(r);
          int p = t.add_pool(u, "primary", 0, Method::round_robin);
          t.add_host(p, "a", addr(1), 1);
          t.add_host(p, "b", addr(2), 1);
          t.add_host(p, "c", addr(3), 1);
        }
        t.upstreams()[0].check.type = type;
        t.upstreams()[0].check.rise = t.upstreams()[0].check.fall = 1;
      });
    };
    set_check(kCheckTcp);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    REQUIRE(t.hosts().size() == 3);
    CHECK(record_check(ts.seg.host(t.hosts()[0].slot), t.hosts()[0].tag, kActiveDown));  // a: down
    CHECK(record_check(ts.seg.host(t.hosts()[1].slot), t.hosts()[1].tag, kActiveUp));    // b: up
    w.commit([](Table& x, std::vector<std::string>&) { x.hosts()[2].admin_down = 1; });  // c: down by hand
    CHECK(record_check(ts.seg.host(t.hosts()[2].slot), t.hosts()[2].tag, kActiveDown));  // and by its checks
    auto texts = [&] {
      std::vector<std::string> out;
      EventData e{};
      for (uint64_t seq = 0; read_event(ts.seg, seq, e) == EventRead::ok; ++seq) out.emplace_back(e.text);
      return out;
    };
    const size_t before = texts().size();
    set_check(kCheckNone);
    auto after = texts();
    REQUIRE(after.size() == before + 2);
    CHECK(after[before] == "host_up app/primary/a 127.0.0.1:1 (active checks turned off by the config)");
    CHECK(after[before + 1] ==
          "health_up app/primary/c 127.0.0.1:3 (active checks turned off by the config; the host stays out: admin "
          "down, until gwctl up)");
    set_check(kCheckNone);  // nothing held any host down any more: no event
    CHECK(texts().size() == before + 2);
  }

  TEST_CASE("max_fails turned off brings a host passive health held down back with a host_up event, once") {
    // A reload to max_fails 0 sends traffic to a host passive health had
    // taken out (host_down said, its hook run): that is a host_up too. And a
    // reload back to max_fails 1 must not find it down from long ago.
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    auto set_max_fails = [&](uint32_t n, uint8_t check = kCheckNone) {
      w.commit([n, check](Table& t, std::vector<std::string>&) {
        if (t.upstreams().empty()) {
          UpstreamRecord r{};
          set_name(r.name, "app");
          int u = t.add_upstream(r);
          int p = t.add_pool(u, "primary", 0, Method::round_robin);
          t.add_host(p, "a", addr(1), 1);
          t.add_host(p, "b", addr(2), 1);
          t.add_host(p, "c", addr(3), 1);
          t.add_host(p, "d", addr(4), 1);
        }
        t.upstreams()[0].max_fails = n;
        t.upstreams()[0].fail_timeout_ms = 60000;
        t.upstreams()[0].check.type = check;
        t.upstreams()[0].check.rise = t.upstreams()[0].check.fall = 1;
      });
    };
    set_max_fails(1, kCheckTcp);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    REQUIRE(t.hosts().size() == 4);
    const HealthPolicy on{1, 60000, true};
    for (int i : {0, 2, 3}) {  // a, c and d fail once: down
      const auto& h = t.hosts()[static_cast<size_t>(i)];
      CHECK(record_check(ts.seg.host(h.slot), h.tag, kActiveUp));
      CHECK(record_failure(ts.seg.host(h.slot), h.tag, on, 1000));
    }
    w.commit([](Table& x, std::vector<std::string>&) { x.hosts()[2].admin_down = 1; });  // c: down by hand too
    const auto& d = t.hosts()[3];
    CHECK(record_check(ts.seg.host(d.slot), d.tag, kActiveDown));  // d: and by its checks
    auto texts = [&] {
      std::vector<std::string> out;
      EventData e{};
      for (uint64_t seq = 0; read_event(ts.seg, seq, e) == EventRead::ok; ++seq) out.emplace_back(e.text);
      return out;
    };
    const size_t before = texts().size();
    set_max_fails(0, kCheckTcp);
    auto after = texts();
    REQUIRE(after.size() == before + 3);
    CHECK(after[before] == "host_up app/primary/a 127.0.0.1:1 (passive health turned off by the config)");
    CHECK(after[before + 1] ==
          "health_up app/primary/c 127.0.0.1:3 (passive health turned off by the config; the host stays out: admin "
          "down, until gwctl up)");
    CHECK(after[before + 2] ==
          "health_up app/primary/d 127.0.0.1:4 (passive health turned off by the config; the host stays out: its "
          "health check fails)");
    set_max_fails(1, kCheckTcp);  // back on: nobody is down from before
    CHECK(texts().size() == before + 3);
    for (const auto& h : t.hosts()) CHECK_FALSE(passive_down(ts.seg.host(h.slot), h.tag));
    const auto& a = t.hosts()[0];
    CHECK(host_usable(ts.seg.host(a.slot), a.tag, on, 1001));
    // Both turned off at once: one event.
    CHECK(record_failure(ts.seg.host(a.slot), a.tag, on, 2000));
    CHECK(record_check(ts.seg.host(a.slot), a.tag, kActiveDown));
    set_max_fails(0, kCheckNone);
    after = texts();
    REQUIRE(after.size() == before + 5);  // and d's checks: host_up
    CHECK(after[before + 3] ==
          "host_up app/primary/a 127.0.0.1:1 (active checks and passive health turned off by the config)");
    CHECK(after[before + 4] == "host_up app/primary/d 127.0.0.1:4 (active checks turned off by the config)");
  }

  TEST_CASE("active checks turned off leave a host passive health holds down to its trial's host_up") {
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    auto set_check = [&](uint8_t type) {
      w.commit([type](Table& t, std::vector<std::string>&) {
        if (t.upstreams().empty()) {
          UpstreamRecord r{};
          set_name(r.name, "app");
          int u = t.add_upstream(r);
          int p = t.add_pool(u, "primary", 0, Method::round_robin);
          t.add_host(p, "a", addr(1), 1);
        }
        t.upstreams()[0].max_fails = 1;
        t.upstreams()[0].fail_timeout_ms = 1;
        t.upstreams()[0].check.type = type;
      });
    };
    set_check(kCheckTcp);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    const auto& a = t.hosts()[0];
    CHECK(record_check(ts.seg.host(a.slot), a.tag, kActiveDown));
    CHECK(record_failure(ts.seg.host(a.slot), a.tag, HealthPolicy{1, 1, true}, 1000));  // long past its fail_timeout
    size_t n = 0;
    EventData e{};
    while (read_event(ts.seg, n, e) == EventRead::ok) ++n;
    set_check(kCheckNone);
    // No event: a takes one trial, and its success says host_up.
    CHECK(read_event(ts.seg, n, e) != EventRead::ok);
  }

  TEST_CASE("commit writes the state file before publishing, and it reads back") {
    TempSegment ts;
    std::string path = "/tmp/gwunit-state-" + std::to_string(::getpid()) + ".json";
    std::strncpy(ts.seg.header().state_file, path.c_str(), kPathCap - 1);
    Writer w(ts.seg);
    add_app(w);
    w.commit([](Table& t, std::vector<std::string>&) { t.hosts()[0].admin_down = 1; });
    State s;
    REQUIRE(read_state_file(path, s));
    CHECK(s.generation == 2);
    REQUIRE(s.upstreams.size() == 1);
    REQUIRE(s.upstreams[0].pools.size() == 1);
    REQUIRE(s.upstreams[0].pools[0].hosts.size() == 1);
    CHECK(s.upstreams[0].pools[0].hosts[0].down);
    CHECK(s.upstreams[0].pools[0].hosts[0].addr.to_string() == "127.0.0.1:1");

    // A state file that cannot be written refuses the change.
    std::strncpy(ts.seg.header().state_file, "/nonexistent-dir/x.json", kPathCap - 1);
    uint64_t before = ts.seg.header().published.load();
    CHECK_THROWS_AS(w.commit([](Table& t, std::vector<std::string>&) { t.hosts()[0].admin_down = 0; }),
                    std::runtime_error);
    CHECK(ts.seg.header().published.load() == before);
    ::unlink(path.c_str());
  }

  TEST_CASE("new hosts take the free slots no connection counts on, freed the longest ago first, then by index") {
    TempSegment ts({1, 1, 5});
    Writer w(ts.seg);
    w.set_persist(false);
    ts.seg.host(0).freed_ms.store(300);
    ts.seg.host(1).freed_ms.store(100);
    reset_slot(ts.seg.host(2), 7);
    counter_open(ts.seg.counter(0, 2), 7);  // never freed, but a connection still counts on it
    ts.seg.host(3).freed_ms.store(200);
    ts.seg.host(4).freed_ms.store(100);
    w.commit([](Table& t, std::vector<std::string>&) {
      UpstreamRecord r{};
      set_name(r.name, "app");
      const int p = t.add_pool(t.add_upstream(r), "primary", 0, Method::round_robin);
      t.add_host(p, "a", addr(1), 1);
      t.add_host(p, "b", addr(2), 1);
    });
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    CHECK(t.hosts()[0].slot == 1);
    CHECK(t.hosts()[1].slot == 4);
    w.commit([](Table& tt, std::vector<std::string>&) {
      tt.add_host(0, "c", addr(3), 1);
      tt.add_host(0, "d", addr(4), 1);
      tt.add_host(0, "e", addr(5), 1);
    });
    read_published(ts.seg, t);
    CHECK(t.hosts()[2].slot == 3);
    CHECK(t.hosts()[3].slot == 0);
    CHECK(t.hosts()[4].slot == 2);
    CHECK_THROWS_WITH_AS(w.commit([](Table& tt, std::vector<std::string>&) { tt.add_unique_host(0, "f", addr(6), 1); }),
                         "host table is full (shm.max_hosts = 5)", TableError);
  }

  TEST_CASE("a slot the same change frees goes after never-used ones") {
    // It read as never used (its freed_ms is set once the change commits) and
    // went first, by index: the host added took the removed one's slot at
    // once, where stale counts of the removed host could still land.
    TempSegment ts({1, 1, 8});
    Writer w(ts.seg);
    w.set_persist(false);
    w.commit([](Table& t, std::vector<std::string>&) {
      UpstreamRecord r{};
      set_name(r.name, "app");
      const int p = t.add_pool(t.add_upstream(r), "primary", 0, Method::round_robin);
      t.add_host(p, "a", addr(1), 1);
      t.add_host(p, "b", addr(2), 1);
    });
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    REQUIRE(t.hosts()[0].slot == 0);
    w.commit([](Table& tt, std::vector<std::string>&) {
      tt.remove_host(0);
      tt.add_host(0, "z", addr(9), 1);
    });
    read_published(ts.seg, t);
    REQUIRE(t.hosts().size() == 2);
    const auto& z = t.hosts()[1];
    REQUIRE(name_of(z.id) == "z");
    CHECK(z.slot == 2);
    CHECK(ts.seg.host(0).freed_ms.load() != 0);  // a's, freed by the commit
  }

  TEST_CASE("new hosts take never-used idle slots before freed ones, wherever those are") {
    // The walk over the slots stops once it has a never-used idle slot for
    // each new host; a slot freed before them, or a busy one, is not taken.
    TempSegment ts({1, 1, 6});
    Writer w(ts.seg);
    w.set_persist(false);
    ts.seg.host(0).freed_ms.store(100);
    reset_slot(ts.seg.host(2), 7);
    counter_open(ts.seg.counter(0, 2), 7);
    w.commit([](Table& t, std::vector<std::string>&) {
      UpstreamRecord r{};
      set_name(r.name, "app");
      const int p = t.add_pool(t.add_upstream(r), "primary", 0, Method::round_robin);
      t.add_host(p, "a", addr(1), 1);
      t.add_host(p, "b", addr(2), 1);
    });
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    CHECK(t.hosts()[0].slot == 1);
    CHECK(t.hosts()[1].slot == 3);
    w.commit([](Table& tt, std::vector<std::string>&) {
      tt.add_host(0, "c", addr(3), 1);
      tt.add_host(0, "d", addr(4), 1);
      tt.add_host(0, "e", addr(5), 1);
    });
    read_published(ts.seg, t);
    CHECK(t.hosts()[2].slot == 4);
    CHECK(t.hosts()[3].slot == 5);
    CHECK(t.hosts()[4].slot == 0);
  }

  TEST_CASE("a commit that fails to persist leaves every live host's slot as it was") {
    // The new host of a change that also removes one may take the removed
    // host's slot; if the commit then fails, that host is still live, and its
    // slot must still count its failures and carry its health.
    TempSegment ts({1, 1, 1});
    Writer w(ts.seg);
    w.set_persist(false);
    add_app(w);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    const uint32_t slot = t.hosts()[0].slot, tag = t.hosts()[0].tag;
    HealthPolicy p{1, 1000};
    CHECK(record_failure(ts.seg.host(slot), tag, p, 5000));  // down
    w.set_persist(true);
    std::strncpy(ts.seg.header().state_file, "/nonexistent-dir/x.json", kPathCap - 1);
    const uint64_t before = ts.seg.header().published.load();
    CHECK_THROWS_AS(w.commit([](Table& tt, std::vector<std::string>&) {
      tt.remove_host(0);
      tt.add_host(0, "b", addr(2), 1);
    }),
                    std::runtime_error);
    CHECK(ts.seg.header().published.load() == before);
    CHECK(ts.seg.host(slot).tag.load() == tag);
    CHECK(passive_down(ts.seg.host(slot), tag));
    CHECK(ts.seg.host(slot).failures.load() == 1);
    // It failed before its rename: the state file is untouched, so it leaves
    // no mark for the next writer to repair (nor warn about).
    CHECK(ts.seg.header().persisting.load() <= (before >> 1));
    const std::string path = "/tmp/gwunit-state2-" + std::to_string(::getpid()) + ".json";
    std::strncpy(ts.seg.header().state_file, path.c_str(), kPathCap - 1);
    CHECK(w.commit([](Table& tt, std::vector<std::string>&) { tt.hosts()[0].weight = 2; }) == (before >> 1) + 1);
    CHECK(ts.seg.host(slot).tag.load() == tag);
    CHECK(ts.seg.host(slot).failures.load() == 1);
    ::unlink(path.c_str());
  }

  TEST_CASE("a writer stopped after its rename: the next one puts the state file back in step") {
    TempSegment ts;
    const std::string path = "/tmp/gwunit-state3-" + std::to_string(::getpid()) + ".json";
    std::strncpy(ts.seg.header().state_file, path.c_str(), kPathCap - 1);
    Writer w(ts.seg);
    add_app(w);
    const uint64_t live = ts.seg.header().published.load() >> 1;
    // What a writer killed between its rename and its publish leaves: a state
    // file of a generation never published, and the mark.
    write_state_file(path, R"({"gw_state": 1, "generation": 99, "upstreams": []})");
    ts.seg.header().persisting.store(live + 1);
    // Even a change with nothing to do (it writes no state file) repairs it.
    CHECK(w.commit([](Table&, std::vector<std::string>&) { throw Writer::Unchanged{}; }) == live);
    State s;
    REQUIRE(read_state_file(path, s));
    CHECK(s.generation == live);
    REQUIRE(s.upstreams.size() == 1);
    CHECK(ts.seg.header().persisting.load() == live);
    ::unlink(path.c_str());
  }

  TEST_CASE("write_state_file: a link planted at its temporary name is not written through") {
    const std::string dir = "/tmp/gwunit-sfl-" + std::to_string(::getpid());
    REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
    const std::string path = dir + "/gw.state.json", victim = dir + "/victim";
    { std::ofstream(victim) << "keep me\n"; }
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    REQUIRE(::symlink(victim.c_str(), tmp.c_str()) == 0);
    write_state_file(path, R"({"gw_state": 1, "generation": 7, "upstreams": []})");
    std::stringstream v;
    v << std::ifstream(victim).rdbuf();
    CHECK(v.str() == "keep me\n");
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK(S_ISREG(st.st_mode));
    State s;
    REQUIRE(read_state_file(path, s));
    CHECK(s.generation == 7);
    CHECK(::access(tmp.c_str(), F_OK) != 0);
    ::unlink(path.c_str());
    ::unlink(victim.c_str());
    ::rmdir(dir.c_str());
  }

  TEST_CASE("write_state_file keeps the owner and group of the file it replaces, or says once why not") {
    if (::geteuid() != 0) {
      MESSAGE("skipped: needs root (chown)");
      return;
    }
    const std::string dir = "/tmp/gwunit-sfo-" + std::to_string(::getpid());
    REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
    REQUIRE(::chmod(dir.c_str(), 0777) == 0);
    const std::string path = dir + "/gw.state.json", log = dir + "/log";
    auto state = [](int gen) {
      return R"({"gw_state": 1, "generation": )" + std::to_string(gen) + R"(, "upstreams": []})";
    };
    write_state_file(path, state(1));
    REQUIRE(::chown(path.c_str(), 12345, 12345) == 0);
    REQUIRE(::chmod(path.c_str(), 0640) == 0);
    // Root may give both: the file stays the operator's.
    write_state_file(path, state(2));
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(st.st_uid == 12345u);
    CHECK(st.st_gid == 12345u);
    CHECK((st.st_mode & 07777) == 0640u);
    // A writer of another user, in the file's group: it keeps the group, the
    // file becomes its own, and it warns once (the next rewrite finds it so).
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      const gid_t groups[] = {12345};
      if (::setgroups(1, groups) != 0 || ::setgid(23456) != 0 || ::setuid(23456) != 0) ::_exit(2);
      try {
        gw::core::log_open(log);
        gw::core::log_set_level(gw::core::LogLevel::warn);
        write_state_file(path, state(3));
        write_state_file(path, state(4));
      } catch (...) {
        ::_exit(1);
      }
      ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(st.st_uid == 23456u);
    CHECK(st.st_gid == 12345u);
    CHECK((st.st_mode & 07777) == 0640u);
    State s;
    REQUIRE(read_state_file(path, s));
    CHECK(s.generation == 4);
    std::stringstream text;
    text << std::ifstream(log).rdbuf();
    const std::string l = text.str();
    size_t warnings = 0;
    for (size_t at = l.find("may not keep"); at != std::string::npos; at = l.find("may not keep", at + 1)) ++warnings;
    CHECK(warnings == 1);
    CHECK(l.find("owned by uid 12345 gid 12345") != std::string::npos);
    CHECK(l.find("now owned by uid 23456 gid 12345") != std::string::npos);
    ::unlink(path.c_str());
    ::unlink(log.c_str());
    ::rmdir(dir.c_str());
  }

  TEST_CASE("Unchanged: a change with nothing to do publishes nothing") {
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    add_app(w);
    const uint64_t before = ts.seg.header().published.load();
    CHECK(w.commit([](Table&, std::vector<std::string>&) { throw Writer::Unchanged{}; }) == (before >> 1));
    CHECK(ts.seg.header().published.load() == before);
  }

  TEST_CASE("a state file path that is not a plain file is refused, only a missing one means none") {
    const std::string dir = "/tmp/gwunit-sf-" + std::to_string(::getpid());
    REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
    State s;
    CHECK_FALSE(read_state_file(dir + "/none.json", s));
    REQUIRE(::symlink((dir + "/gone.json").c_str(), (dir + "/dangling.json").c_str()) == 0);
    CHECK_THROWS_WITH(read_state_file(dir + "/dangling.json", s), doctest::Contains("symbolic link"));
    CHECK_THROWS_WITH(read_state_file(dir, s), doctest::Contains("not a regular file"));
    ::unlink((dir + "/dangling.json").c_str());
    ::rmdir(dir.c_str());
  }

  TEST_CASE(
      "temporary files of killed writers are removed, a live writer's kept; a backup takes the state file's mode") {
    // Each SIGKILLed gwctl left STATE.tmp.PID, a whole copy of the state,
    // never removed (54 of them, 6.3 MB, in a review's run). And the
    // STATE.before-GEN backup of a chmod 600 state file was made 0644.
    const std::string dir = "/tmp/gwunit-tmp-" + std::to_string(::getpid());
    REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
    const std::string path = dir + "/gw.state.json";
    pid_t dead = ::fork();
    REQUIRE(dead >= 0);
    if (dead == 0) ::_exit(0);
    REQUIRE(::waitpid(dead, nullptr, 0) == dead);
    for (const std::string& f : {path + ".tmp." + std::to_string(dead), path + ".tmp." + std::to_string(::getpid()),
                                 path + ".tmp.x", dir + "/other.json.tmp." + std::to_string(dead)})
      std::ofstream(f) << "{}";
    CHECK(remove_stale_temp_files(path) == 1);
    CHECK(::access((path + ".tmp." + std::to_string(dead)).c_str(), F_OK) != 0);
    CHECK(::access((path + ".tmp." + std::to_string(::getpid())).c_str(), F_OK) == 0);      // its writer lives
    CHECK(::access((path + ".tmp.x").c_str(), F_OK) == 0);                                  // not a writer's
    CHECK(::access((dir + "/other.json.tmp." + std::to_string(dead)).c_str(), F_OK) == 0);  // another file's

    write_state_file(path, "{}\n");
    REQUIRE(::chmod(path.c_str(), 0600) == 0);
    write_state_file(path + ".before-3", "{}\n", &path);
    struct stat st {};
    REQUIRE(::stat((path + ".before-3").c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);
    for (const std::string& f : {path, path + ".before-3", path + ".tmp." + std::to_string(::getpid()), path + ".tmp.x",
                                 dir + "/other.json.tmp." + std::to_string(dead)})
      ::unlink(f.c_str());
    ::rmdir(dir.c_str());
  }

  TEST_CASE("a corrupt state file is an error naming the file") {
    std::string path = "/tmp/gwunit-bad-" + std::to_string(::getpid()) + ".json";
    std::ofstream(path) << "{\"gw_state\": 1, \"generation\": \"x\"}";
    State s;
    CHECK_THROWS_WITH(read_state_file(path, s), doctest::Contains(path.c_str()));
    // Another version names both, not a "missing" key.
    std::ofstream(path) << "{\"gw_state\": 99, \"generation\": 1, \"upstreams\": []}";
    CHECK_THROWS_WITH(read_state_file(path, s), ("state file " + path +
                                                 ": it is a gw state file of version 99, this gw reads version 1 (a "
                                                 "newer gw wrote it: run that gw, or a gw that reads it)")
                                                    .c_str());
    std::ofstream(path) << "{\"generation\": 1, \"upstreams\": []}";
    CHECK_THROWS_WITH(read_state_file(path, s),
                      ("state file " + path + ": not a gw state file (no \"gw_state\" version number)").c_str());
    ::unlink(path.c_str());
    CHECK_FALSE(read_state_file(path, s));
  }

  TEST_CASE("a state file value of the wrong type or a missing one is named by its JSON path") {
    // Each said "a host of pool app/primary lacks id, address, weight or
    // down", for a weight that was there as a string.
    const std::string path = "/tmp/gwunit-types-" + std::to_string(::getpid()) + ".json";
    auto file = [&](const std::string& host, const std::string& rest = "") {
      std::ofstream(path) << R"({"gw_state": 1, "generation": 3, "upstreams": [{"name": "app", "pools": [)"
                          << R"({"id": "primary", "priority": 0, "method": "round_robin", "hosts": [)"
                          << R"({"id": "a", "address": "127.0.0.1:8081", "weight": 1, "down": false}, )" << host
                          << "]}]}]" << rest << "}";
    };
    const std::string at = "state file " + path + ": upstreams[0].pools[0].hosts[1].";
    const std::string ok = R"({"id": "b", "address": "127.0.0.1:8082", "weight": 2, "down": false})";
    State s;
    const std::pair<std::string, std::string> cases[] = {
        {R"({"id": "b", "address": "127.0.0.1:8082", "weight": "5", "down": false})",
         "weight: expected a non-negative integer, got string \"5\""},
        {R"({"id": "b", "address": "127.0.0.1:8082", "weight": -1, "down": false})",
         "weight: expected a non-negative integer, got -1"},
        {R"({"id": "b", "address": "127.0.0.1:8082", "weight": 5.5, "down": false})",
         "weight: expected a non-negative integer, got 5.5"},
        {R"({"id": "b", "address": "127.0.0.1:8082", "down": false})", "weight: missing"},
        {R"({"id": "b", "address": "127.0.0.1:8082", "weight": 2, "down": "no"})",
         "down: expected true or false, got string \"no\""},
        {R"({"id": 7, "address": "127.0.0.1:8082", "weight": 2, "down": false})", "id: expected a string, got 7"},
    };
    for (const auto& [host, want] : cases) {
      CAPTURE(host);
      file(host);
      CHECK_THROWS_WITH(read_state_file(path, s), (at + want).c_str());
    }
    file("[]");
    CHECK_THROWS_WITH(
        read_state_file(path, s),
        ("state file " + path + ": upstreams[0].pools[0].hosts[1]: expected an object, got an array").c_str());
    // "routes" and "consumers" may be missing (an older gw's file), not of
    // another type: the rules and consumers went to the config in silence.
    file(ok, R"(, "routes": {})");
    CHECK_THROWS_WITH(read_state_file(path, s),
                      ("state file " + path + ": routes: expected an array, got an object").c_str());
    file(ok, R"(, "consumers": [{"name": "alice"}])");
    CHECK_THROWS_WITH(read_state_file(path, s), ("state file " + path + ": consumers[0].key_sha256: missing").c_str());
    file(ok);
    REQUIRE(read_state_file(path, s));
    CHECK_FALSE(s.has_routes);
    CHECK_FALSE(s.has_consumers);
    REQUIRE(s.upstreams.size() == 1);
    CHECK(s.upstreams[0].pools[0].hosts.size() == 2);
    ::unlink(path.c_str());
  }
}

TEST_SUITE("shm") {
  TEST_CASE("a generation that `published` cannot hold: a state file's is refused, a commit's is not published") {
    // `published` holds generation << 1 | slot: a generation of 2^63 or more
    // lost its top bit there, and no reader found the table it named.
    const std::string path = "/tmp/gwunit-gen-" + std::to_string(::getpid()) + ".json";
    auto file = [&](const std::string& gen) {
      std::ofstream(path) << "{\"gw_state\": 1, \"generation\": " << gen << ", \"upstreams\": []}";
    };
    State s;
    file("9223372036854775808");  // 2^63
    CHECK_THROWS_WITH(
        read_state_file(path, s),
        ("state file " + path + ": \"generation\" 9223372036854775808 is out of range 0..4611686018427387904").c_str());
    file("18446744073709551615");  // 2^64 - 1: +1 is 0
    CHECK_THROWS_WITH(read_state_file(path, s), doctest::Contains("is out of range"));
    file("4611686018427387904");  // 2^62: room for 2^62 more commits
    REQUIRE(read_state_file(path, s));
    CHECK(s.generation == (1ull << 62));
    ::unlink(path.c_str());

    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    add_app(w);
    const uint64_t before = ts.seg.header().published.load();
    CHECK_THROWS_WITH(w.commit([](Table& t, std::vector<std::string>&) { t.header().generation = ~0ull >> 1; }),
                      doctest::Contains("generation"));
    CHECK(ts.seg.header().published.load() == before);
    Table t(ts.seg.caps());
    const char* refused = nullptr;
    read_published(ts.seg, t, &refused);
    CHECK(refused == nullptr);
    CHECK(t.header().generation == (before >> 1));
    // The largest generation it can hold is published and read back.
    CHECK(w.commit([](Table& x, std::vector<std::string>&) { x.header().generation = (~0ull >> 1) - 1; }) ==
          (~0ull >> 1));
    read_published(ts.seg, t, &refused);
    CHECK(refused == nullptr);
    CHECK(t.header().generation == (~0ull >> 1));
  }
}

TEST_SUITE("shm") {
  TEST_CASE("a state file with a name listed twice or a bad name is refused, naming the file and the name") {
    // Before, the table ops refused most of these at start without naming the
    // state file ("host app/primary/a already exists"), and an upstream listed
    // twice lost its first entry in silence.
    const std::string path = "/tmp/gwunit-dup-" + std::to_string(::getpid()) + ".json";
    const std::string host = R"({"id": "a", "address": "127.0.0.1:1", "weight": 1, "down": false})";
    const std::string pool = R"({"id": "p", "priority": 0, "method": "round_robin", "hosts": [)" + host + "]}";
    const std::string rule = R"({"id": "r1", "upstream": "app", "percent": 5})";
    auto refused = [&](const std::string& ups, const std::string& rest, const std::string& why) {
      std::ofstream(path) << R"({"gw_state": 1, "generation": 3, "upstreams": [)" << ups << "]" << rest << "}";
      State s;
      CHECK_THROWS_WITH(read_state_file(path, s), ("state file " + path + ": " + why).c_str());
    };
    refused(R"({"name": "app", "pools": [)" + pool + R"(]}, {"name": "app", "pools": []})", "",
            "upstream \"app\" is listed twice");
    refused(R"({"name": "app", "pools": [)" + pool + "," + pool + "]}", "", "pool app/p is listed twice");
    refused(R"({"name": "app", "pools": [{"id": "p", "priority": 0, "method": "round_robin", "hosts": [)" + host + "," +
                host + "]}]}",
            "", "host app/p/a is listed twice");
    refused(R"({"name": "a b", "pools": []})", "",
            "upstream name \"a b\" may contain only letters, digits and . _ - :");
    refused(R"({"name": "app", "pools": [{"id": "", "priority": 0, "method": "round_robin", "hosts": []}]})", "",
            "pool id \"\" must not be empty");
    refused(R"({"name": "app", "pools": [{"id": "p", "priority": 0, "method": "round_robin", "hosts": [{"id": "x/y",
            "address": "127.0.0.1:1", "weight": 1, "down": false}]}]})",
            "", "host id \"x/y\" may contain only letters, digits and . _ - :");
    refused("", R"(, "routes": [{"listener": "web", "route": "v1", "rules": []}, {"listener": "web", "route": "v1",
            "rules": []}])",
            "route web/v1 is listed twice");
    refused("", R"(, "routes": [{"listener": "web", "route": "v1", "rules": [)" + rule + "," + rule + "]}]",
            "rule web/v1/r1 is listed twice");
    const std::string c = R"({"name": "alice", "key_sha256": ")" + std::string(64, 'a') + "\"}";
    refused("", R"(, "consumers": [)" + c + "," + c + "]", "consumer \"alice\" is listed twice");
    // What a table writes is read back as it was ("." is an id a table may
    // hold: it is still read).
    std::ofstream(path) << R"({"gw_state": 1, "generation": 3, "upstreams": [{"name": "app", "pools": [)" << pool
                        << R"(, {"id": ".", "priority": 1, "method": "round_robin", "hosts": [)" << host
                        << R"(]}]}], "routes": [{"listener": "web", "route": "v1", "rules": [)" << rule
                        << "]}, {\"listener\": \"web\", \"route\": \"v2\", \"rules\": [" << rule << "]}]}";
    State s;
    REQUIRE(read_state_file(path, s));
    REQUIRE(s.upstreams.size() == 1);
    CHECK(s.upstreams[0].pools.size() == 2);
    CHECK(s.routes.size() == 2);
    ::unlink(path.c_str());
  }
}

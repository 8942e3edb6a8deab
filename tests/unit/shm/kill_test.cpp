// A writer SIGKILLed in the middle of a commit: readers keep the last committed
// table and the next writer succeeds (the robust lock is recovered).

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ctime>
#include <random>
#include <string>

#include "../test_util.hpp"
#include "gw/shm/ops.hpp"
#include "gw/shm/runtime.hpp"
#include "gw/shm/state_file.hpp"
#include "gw/shm/writer.hpp"
#include "torn_check.hpp"

using namespace gw::shm;
using gw::testing::check_table;
using gw::testing::self_checking_change;
using gw::testing::TempSegment;

namespace {
int g_ready_fd = -1;
void stall_mid_write() {
  char c = 'r';
  (void)!::write(g_ready_fd, &c, 1);
  for (;;) ::pause();
}
}  // namespace

TEST_SUITE("shm") {
  TEST_CASE("a writer killed mid-write publishes nothing and the next writer succeeds") {
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    w.commit(self_checking_change);
    w.commit(self_checking_change);
    const uint64_t published = ts.seg.header().published.load();

    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      g_ready_fd = pipefd[1];
      gw::shm::testing::mid_write_hook = stall_mid_write;
      Writer cw(ts.seg);
      cw.set_persist(false);
      cw.commit(self_checking_change);
      ::_exit(0);  // not reached
    }
    char c = 0;
    REQUIRE(::read(pipefd[0], &c, 1) == 1);  // the child is inside the slot write, lock held
    const int inactive = static_cast<int>((published & 1) ^ 1);
    CHECK((ts.seg.slot(inactive).seq.load() & 1) == 1);  // half-written
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    CHECK(WIFSIGNALED(status));
    ::close(pipefd[0]);
    ::close(pipefd[1]);

    CHECK(ts.seg.header().published.load() == published);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    CHECK(t.header().generation == 2);
    CHECK(check_table(t) == "");

    CHECK(w.commit(self_checking_change) == 3);  // recovers the dead owner's lock
    read_published(ts.seg, t);
    CHECK(t.header().generation == 3);
    CHECK(check_table(t) == "");
  }

  TEST_CASE("a writer that cannot take the lock gives up after its wait with a clear error") {
    // A stopped gwctl (SIGSTOP) holds the lock without dying, so the robust
    // mutex never hands it on: the next writer must give up, and say why.
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    w.commit(self_checking_change);
    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      g_ready_fd = pipefd[1];
      gw::shm::testing::mid_write_hook = stall_mid_write;
      Writer cw(ts.seg);
      cw.set_persist(false);
      cw.commit(self_checking_change);
      ::_exit(0);  // not reached
    }
    char c = 0;
    REQUIRE(::read(pipefd[0], &c, 1) == 1);  // the child holds the lock
    const uint32_t saved = gw::shm::testing::writer_lock_wait_ms;
    gw::shm::testing::writer_lock_wait_ms = 300;
    timespec t0{}, t1{};
    ::clock_gettime(CLOCK_MONOTONIC, &t0);
    std::string what;
    try {
      w.commit(self_checking_change);
    } catch (const SegmentError& e) {
      what = e.what();
    }
    ::clock_gettime(CLOCK_MONOTONIC, &t1);
    gw::shm::testing::writer_lock_wait_ms = saved;
    const int64_t waited_ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    CHECK(what == "another writer has held the shm writer lock for 300 ms; is a gwctl stopped (SIGSTOP)?");
    CHECK(waited_ms >= 300);
    Table t(ts.seg.caps());
    read_published(ts.seg, t);
    CHECK(t.header().generation == 1);  // nothing committed by the writer that gave up
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    CHECK(w.commit(self_checking_change) == 2);  // the dead holder's lock is recovered
  }

  TEST_CASE("a writer killed after its state file, before its publish: the next writer puts both back in step") {
    // The commit order persists before it publishes, so a writer killed in
    // between leaves a state file ahead of the live table, and may have given a
    // live host's slot to its new host. Neither may outlive the next writer:
    // an "already up" answered from the live table must not be undone by a
    // restart that reads the file, and the live host keeps its health tracking.
    TempSegment ts({1, 1, 1});
    const std::string path = "/tmp/gwunit-torn-" + std::to_string(::getpid()) + ".json";
    std::strncpy(ts.seg.header().state_file, path.c_str(), kPathCap - 1);
    Writer w(ts.seg);
    w.commit([](Table& t, std::vector<std::string>&) {
      UpstreamRecord r{};
      set_name(r.name, "app");
      r.max_fails = 5;
      r.fail_timeout_ms = 10000;
      gw::core::SockAddr a;
      std::string why;
      REQUIRE(gw::core::parse_address("127.0.0.1:1", a, why));
      t.add_host(t.add_pool(t.add_upstream(r), "primary", 0, Method::round_robin), "a", a, 1);
    });
    Table live(ts.seg.caps());
    read_published(ts.seg, live);
    const uint32_t slot = live.hosts()[0].slot, tag = live.hosts()[0].tag;
    const uint64_t gen = live.header().generation;
    HealthPolicy hp{5, 10000};
    record_failure(ts.seg.host(slot), tag, hp, 1000);
    REQUIRE(ts.seg.host(slot).failures.load() == 1);

    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      g_ready_fd = pipefd[1];
      gw::shm::testing::mid_write_hook = stall_mid_write;
      Writer cw(ts.seg);
      // "a" replaced by a host of the same id at another address, admin-down:
      // the new host takes a's slot (the only one); the writer then stalls
      // inside its publish, after persisting.
      cw.commit([](Table& t, std::vector<std::string>&) {
        gw::core::SockAddr b;
        std::string why;
        gw::core::parse_address("127.0.0.1:2", b, why);
        t.remove_host(0);
        t.add_host(0, "a", b, 1);
        t.hosts()[0].admin_down = 1;
      });
      ::_exit(0);  // not reached
    }
    char c = 0;
    REQUIRE(::read(pipefd[0], &c, 1) == 1);  // persisted, slot given away, publish not done
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    State torn;
    REQUIRE(read_state_file(path, torn));
    CHECK(torn.generation == gen + 1);  // the file is ahead of the live table
    REQUIRE(torn.upstreams.at(0).pools.at(0).hosts.size() == 1);
    CHECK(torn.upstreams[0].pools[0].hosts[0].down);
    CHECK(ts.seg.host(slot).tag.load() != tag);  // a's slot was given to the new host

    // "up a": already up in the live table, answered under the lock after the repair.
    const ops::Result r = ops::set_host_down(ts.seg, "app", "primary", "a", false, "test");
    CHECK_FALSE(r.changed);
    CHECK(r.generation == gen);
    State s;
    REQUIRE(read_state_file(path, s));
    CHECK(s.generation == gen);
    CHECK_FALSE(s.upstreams.at(0).pools.at(0).hosts.at(0).down);
    CHECK(s.upstreams[0].pools[0].hosts[0].addr.to_string() == "127.0.0.1:1");
    CHECK(ts.seg.host(slot).tag.load() == tag);  // a tracks its health again
    CHECK(record_failure(ts.seg.host(slot), tag, hp, 2000) == false);
    CHECK(ts.seg.host(slot).failures.load() == 1);
    CHECK(ts.seg.header().persisting.load() == gen);
    ::unlink(path.c_str());
  }

  TEST_CASE("writers killed at random points never leave a torn or lost committed table") {
    TempSegment ts;
    Writer w(ts.seg);
    w.set_persist(false);
    w.commit(self_checking_change);
    std::mt19937 rng(12345);  // fixed seed: the test is repeatable
    for (int round = 0; round < 20; ++round) {
      pid_t child = ::fork();
      REQUIRE(child >= 0);
      if (child == 0) {
        Writer cw(ts.seg);
        cw.set_persist(false);
        for (;;) cw.commit(self_checking_change);
      }
      ::usleep(std::uniform_int_distribution<useconds_t>(200, 5000)(rng));
      ::kill(child, SIGKILL);
      ::waitpid(child, nullptr, 0);
      Table t(ts.seg.caps());
      uint64_t before = read_published(ts.seg, t) >> 1;
      CHECK(check_table(t) == "");
      uint64_t after = w.commit(self_checking_change);
      CHECK(after == before + 1);
      read_published(ts.seg, t);
      CHECK(check_table(t) == "");
    }
  }
}

TEST_SUITE("shm") {
  TEST_CASE("a writer killed after its state file, before its publish: retiring the segment puts the file back") {
    // A gwd that starts with other capacities retires the old segment (under
    // its writer lock) and then reads the state file and the old table. A
    // change whose writer stopped between its state file and its publish was
    // never live and never reported done: the retirement is that segment's
    // last writer, so it must put the file back in step, as the next commit
    // would have (else the new segment starts from the file, with that change).
    TempSegment ts;
    const std::string path = "/tmp/gwunit-retire-" + std::to_string(::getpid()) + ".json";
    std::strncpy(ts.seg.header().state_file, path.c_str(), kPathCap - 1);
    Writer w(ts.seg);
    w.commit([](Table& t, std::vector<std::string>&) {
      UpstreamRecord r{};
      set_name(r.name, "app");
      r.max_fails = 1;
      r.fail_timeout_ms = 10000;
      gw::core::SockAddr a;
      std::string why;
      REQUIRE(gw::core::parse_address("127.0.0.1:1", a, why));
      t.add_host(t.add_pool(t.add_upstream(r), "primary", 0, Method::round_robin), "a", a, 1);
    });
    Table live(ts.seg.caps());
    read_published(ts.seg, live);
    const uint64_t gen = live.header().generation;

    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      g_ready_fd = pipefd[1];
      gw::shm::testing::mid_write_hook = stall_mid_write;
      Writer cw(ts.seg);
      cw.commit([](Table& t, std::vector<std::string>&) { t.hosts()[0].admin_down = 1; });
      ::_exit(0);  // not reached
    }
    char c = 0;
    REQUIRE(::read(pipefd[0], &c, 1) == 1);  // persisted, publish not done
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    State torn;
    REQUIRE(read_state_file(path, torn));
    CHECK(torn.generation == gen + 1);  // ahead of the live table

    Writer(ts.seg).set_retired(true);
    State s;
    REQUIRE(read_state_file(path, s));
    CHECK(s.generation == gen);
    CHECK_FALSE(s.upstreams.at(0).pools.at(0).hosts.at(0).down);
    CHECK(ts.seg.header().persisting.load() == gen);
    ::unlink(path.c_str());
  }
}

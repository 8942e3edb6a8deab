// A writer SIGKILLed in the middle of a commit: readers keep the last committed
// table and the next writer succeeds (the robust lock is recovered).

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>

#include "../test_util.hpp"
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

#include <doctest/doctest.h>

#include <atomic>
#include <thread>

#include "../test_util.hpp"
#include "gw/shm/runtime.hpp"

using namespace gw::shm;
using gw::testing::TempSegment;

TEST_SUITE("shm") {
  TEST_CASE("passive health follows max_fails within fail_timeout (injected clock)") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(0);
    reset_slot(h, 7);
    HealthPolicy p{2, 1000};
    CHECK(host_usable(h, 7, p, 0));
    CHECK_FALSE(record_failure(h, 7, p, 100));  // 1 of 2
    CHECK(host_usable(h, 7, p, 100));
    CHECK_FALSE(record_failure(h, 7, p, 1200));  // the window ended: 1 of 2 again
    CHECK(record_failure(h, 7, p, 1300));        // 2 of 2: down, reported once
    CHECK_FALSE(host_usable(h, 7, p, 1400));
    CHECK_FALSE(host_usable(h, 7, p, 2299));
    CHECK(host_usable(h, 7, p, 2300));                     // fail_timeout passed: may be tried
    CHECK_FALSE(record_success(h, 7, 2300, p.max_fails));  // not without its trial
    CHECK(claim_trial(h, 7, p, 2300) == Trial::taken);
    CHECK(record_success(h, 7, 2300, p.max_fails));  // the trial: up again, reported once
    CHECK_FALSE(record_success(h, 7, 2300, p.max_fails));
    CHECK(h.failures.load() == 3);
  }

  TEST_CASE("a trial's success racing a later failure leaves the host down") {
    // The failure (at 5000) came after the trial began (at 4000): whatever
    // the interleaving, the host ends down. The success ignored a failed
    // compare-exchange (the failure had cleared the trial mark), and the count
    // and the passive bit are two words: a failure between their stores
    // found the host still down and left it so. 65,171 of 200,000 runs ended
    // with the host up.
    TempSegment ts;
    HostRuntime& h = ts.seg.host(0);
    const HealthPolicy p{1, 1000};
    std::atomic<int> phase{0};
    constexpr int kRuns = 20000;
    std::thread other([&] {
      for (int i = 0; i < kRuns; ++i) {
        while (phase.load(std::memory_order_acquire) != 1) {
        }
        record_failure(h, 7, p, 5000);
        phase.store(2, std::memory_order_release);
      }
    });
    int up = 0;
    for (int i = 0; i < kRuns; ++i) {
      reset_slot(h, 7);
      record_failure(h, 7, p, 1000);
      REQUIRE(claim_trial(h, 7, p, 4000) == Trial::taken);
      phase.store(1, std::memory_order_release);
      for (int k = 0; k < i % 64; ++k) std::atomic_signal_fence(std::memory_order_seq_cst);  // spread the timing
      record_success(h, 7, 4000, p.max_fails);
      while (phase.load(std::memory_order_acquire) != 2) {
      }
      phase.store(0, std::memory_order_relaxed);
      up += !passive_down(h, 7);
    }
    other.join();
    CHECK(up == 0);
  }

  TEST_CASE("failures of two workers racing at the start of a window both count") {
    // Both find the old window ended. The first counts its failure as the
    // new window's first; the second, before the first stamped its time,
    // still found the window ended and counted 1 again: a host with
    // max_fails 2 that failed both connections stayed up.
    TempSegment ts;
    HostRuntime& h = ts.seg.host(0);
    reset_slot(h, 7);
    static HostRuntime* hp = nullptr;
    static bool other_down = false;
    hp = &h;
    const HealthPolicy p{2, 1000};
    CHECK_FALSE(record_failure(h, 7, p, 100));  // an old window: 1 of 2
    testing::failure_gap_hook = [] {
      testing::failure_gap_hook = nullptr;
      other_down = record_failure(*hp, 7, HealthPolicy{2, 1000}, 5001);  // the other worker, in the gap
    };
    const bool down = record_failure(h, 7, p, 5000);
    testing::failure_gap_hook = nullptr;
    CHECK(down != other_down);  // 2 of 2 in the new window: down, said once
    CHECK(static_cast<uint32_t>(h.window_fails.load()) == 2);
    CHECK_FALSE(host_usable(h, 7, p, 5002));
    CHECK(h.failures.load() == 3);
  }

  TEST_CASE("successes between failures do not clear the window (a host that accepts, then times out)") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(0);
    reset_slot(h, 7);
    HealthPolicy p{3, 10000};
    for (uint64_t t = 100; t < 400; t += 100) {
      CHECK_FALSE(record_success(h, 7, t, p.max_fails));  // the connect, or another request, succeeded
      CHECK(record_failure(h, 7, p, t) == (t == 300));
    }
    CHECK_FALSE(host_usable(h, 7, p, 500));
  }

  TEST_CASE("after fail_timeout one connection over all workers tries a down host") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(0);
    reset_slot(h, 7);
    HealthPolicy p{1, 1000};
    CHECK(record_failure(h, 7, p, 100));              // down
    CHECK(claim_trial(h, 7, p, 900) == Trial::lost);  // not yet: out
    // Two workers both find it usable at 1100, before either claims.
    CHECK(host_usable(h, 7, p, 1100));
    CHECK(host_usable(h, 7, p, 1100));
    CHECK(claim_trial(h, 7, p, 1100) == Trial::taken);  // the trial: one caller...
    CHECK(claim_trial(h, 7, p, 1100) == Trial::lost);   // ...the other must pick again
    CHECK_FALSE(host_usable(h, 7, p, 1150));            // ...everyone else waits for it
    CHECK_FALSE(host_usable(h, 7, p, 2099));
    // It failed: out for another fail_timeout, then one more trial.
    CHECK_FALSE(record_failure(h, 7, p, 1200));  // (already down: no second event)
    CHECK_FALSE(host_usable(h, 7, p, 2199));
    CHECK(claim_trial(h, 7, p, 2200) == Trial::taken);
    CHECK(record_success(h, 7, 2200, p.max_fails));  // it succeeded: up, with a clear count
    CHECK(host_usable(h, 7, p, 2201));
    CHECK(claim_trial(h, 7, p, 5000) == Trial::none);  // an up host has no trial
    CHECK(claim_trial(h, 8, p, 5000) == Trial::none);  // nor another tag's
  }

  TEST_CASE("only an attempt begun after the last failure brings a down host back (the trial)") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(0);
    reset_slot(h, 7);
    HealthPolicy p{1, 60000};
    CHECK(record_failure(h, 7, p, 1000));  // down: a new connection was refused
    // A request sent at 500, before the host went down, is answered at 3500:
    // the host still refuses new connections; it stays out. Also one sent in
    // the millisecond of the failure (the clocks are in ms).
    CHECK_FALSE(record_success(h, 7, 500, p.max_fails));
    CHECK_FALSE(record_success(h, 7, 1000, p.max_fails));
    CHECK_FALSE(host_usable(h, 7, p, 3500));
    CHECK(passive_down(h, 7));
    // After fail_timeout, the trial (begun when it was claimed) brings it back.
    CHECK(claim_trial(h, 7, p, 61000) == Trial::taken);
    CHECK_FALSE(record_success(h, 7, 60999, p.max_fails));  // an older attempt still does not
    CHECK(record_success(h, 7, 61000, p.max_fails));
    CHECK(host_usable(h, 7, p, 61001));
    // A trial that fails loses its mark: an older attempt's success that
    // comes after it does not count.
    CHECK(record_failure(h, 7, p, 62000));
    CHECK(claim_trial(h, 7, p, 122000) == Trial::taken);
    CHECK_FALSE(record_failure(h, 7, p, 122001));
    CHECK_FALSE(record_success(h, 7, 122000, p.max_fails));
    CHECK(passive_down(h, 7));
  }

  TEST_CASE("max_fails 0 never takes a host down; another tag's calls are ignored") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(1);
    reset_slot(h, 3);
    CHECK_FALSE(record_failure(h, 3, {0, 1000}, 10));
    CHECK(host_usable(h, 3, {0, 1000}, 10));
    CHECK_FALSE(record_failure(h, 99, {1, 1000}, 10));  // stale tag
    CHECK_FALSE(passive_down(h, 3));
  }

  TEST_CASE("a passive verdict for a removed host does not land on the host given its slot") {
    // A worker counts the failure that takes host 7 down; before it marks
    // the host down, the writer removes 7 and gives the slot to host 8. The
    // mark was a separate store after a check of the tag: host 8 came up
    // down, out of traffic for a host it never had.
    TempSegment ts;
    HostRuntime& h = ts.seg.host(0);
    reset_slot(h, 7);
    static HostRuntime* hp = nullptr;
    hp = &h;
    const HealthPolicy p{1, 1000};
    testing::failure_gap_hook = [] {
      testing::failure_gap_hook = nullptr;
      reset_slot(*hp, 8);  // the writer, in the gap
    };
    const bool down = record_failure(h, 7, p, 100);
    testing::failure_gap_hook = nullptr;
    CHECK_FALSE(down);  // no host_down: host 7 is gone
    CHECK_FALSE(passive_down(h, 8));
    CHECK(host_usable(h, 8, p, 101));
    CHECK(claim_trial(h, 8, p, 101) == Trial::none);
  }

  TEST_CASE("a checker verdict for a removed host does not land on the host given its slot") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(0);
    reset_slot(h, 7);
    static HostRuntime* hp = nullptr;
    hp = &h;
    testing::verdict_gap_hook = [] {
      testing::verdict_gap_hook = nullptr;
      reset_slot(*hp, 8);  // the writer, between the tag's check and the write
    };
    const bool changed = record_check(h, 7, kActiveDown);
    testing::verdict_gap_hook = nullptr;
    CHECK_FALSE(changed);
    CHECK(active_state(h, 8) == kActiveUnknown);
    CHECK(active_state(h, 7) == kActiveUnknown);
    CHECK(host_usable(h, 8, HealthPolicy{1, 1000, true, true}, 10));
    // And the two verdicts of one host keep each other.
    CHECK(record_check(h, 8, kActiveDown));
    CHECK(record_failure(h, 8, HealthPolicy{1, 1000}, 20));
    CHECK(active_state(h, 8) == kActiveDown);
    CHECK(passive_down(h, 8));
    CHECK(record_check(h, 8, kActiveUp));
    CHECK(passive_down(h, 8));
    CHECK(clear_passive(h, 8));
    CHECK_FALSE(clear_passive(h, 8));
    CHECK(active_state(h, 8) == kActiveUp);
    CHECK_FALSE(clear_active(h, 8));  // it was up, not down
    CHECK(active_state(h, 8) == kActiveUnknown);
    CHECK_FALSE(clear_active(h, 7));  // another tag: nothing written
  }

  TEST_CASE("per-worker counters sum over workers and drop a dead worker's active count") {
    TempSegment ts;
    counter_open(ts.seg.counter(0, 2), 5);
    counter_open(ts.seg.counter(1, 2), 5);
    counter_open(ts.seg.counter(1, 2), 5);
    counter_close(ts.seg.counter(1, 2), 5);
    auto t = host_totals(ts.seg, 2, 5);
    CHECK(t.active == 2);
    CHECK(t.total == 3);
    clear_worker_counters(ts.seg, 0);
    t = host_totals(ts.seg, 2, 5);
    CHECK(t.active == 1);
    CHECK(t.total == 3);
  }
}

TEST_SUITE("shm") {
  TEST_CASE("slow start ramps linearly from nothing to the full weight, whatever the weight (injected clock)") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(2);
    reset_slot(h, 4);
    CHECK(slow_start_permille(h, 4, 1000, 5000) == 1000);  // never down: full weight
    mark_up(h, 4, 5000);
    CHECK(slow_start_permille(h, 4, 1000, 5000) == 1);  // just back: the least share, not none
    CHECK(slow_start_permille(h, 4, 1000, 5100) == 100);
    CHECK(slow_start_permille(h, 4, 1000, 5500) == 500);
    CHECK(slow_start_permille(h, 4, 1000, 6000) == 1000);
    CHECK(slow_start_permille(h, 4, 0, 5500) == 1000);     // off
    CHECK(slow_start_permille(h, 5, 1000, 5500) == 1000);  // another host's slot: not this one's stamp
  }

  TEST_CASE("slow start: a host stamped up by a clock ahead of the reader's starts at the least share, not full") {
    // The checker, the writer or another worker stamps up_since_ms with its
    // own clock; a worker reads its clock once per loop turn, so its now_ms
    // can be a few ms behind the stamp. That is no time elapsed yet.
    TempSegment ts;
    HostRuntime& h = ts.seg.host(2);
    reset_slot(h, 4);
    mark_up(h, 4, 5000);
    CHECK(slow_start_permille(h, 4, 1000, 4999) == 1);
    CHECK(slow_start_permille(h, 4, 60000, 4990) == 1);
  }

  TEST_CASE("peak EWMA: a slower sample takes over at once, faster ones decay towards it") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(3);
    reset_slot(h, 1);
    CHECK(latency_us(h, 1, 0) == 0);
    record_latency(h, 1, 1000, 0);
    CHECK(latency_us(h, 1, 0) == 1000);
    record_latency(h, 1, 5000, 10);
    CHECK(latency_us(h, 1, 10) == 5000);  // peak
    record_latency(h, 1, 1000, 10010);    // 10 s later: weight e^-1 on the old value
    CHECK(latency_us(h, 1, 10010) == doctest::Approx(1000 + 4000 * 0.3679).epsilon(0.01));
    CHECK(latency_us(h, 2, 10010) == 0);  // another tag
  }

  TEST_CASE("peak EWMA decays while no sample comes: one slow connect does not shut a host out") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(3);
    reset_slot(h, 1);
    record_latency(h, 1, 1000000, 5000);  // a lost SYN: 1 s
    CHECK(latency_us(h, 1, 5000) == 1000000);
    CHECK(latency_us(h, 1, 15000) == doctest::Approx(367879).epsilon(0.01));  // tau 10 s
    CHECK(latency_us(h, 1, 65000) < 3000);
    CHECK(latency_us(h, 1, 4000) == 1000000);  // a reader whose clock is behind: no decay
  }

  TEST_CASE("peak EWMA: a faster sample from a worker whose clock is behind does not wipe the peak") {
    TempSegment ts;
    HostRuntime& h = ts.seg.host(3);
    reset_slot(h, 1);
    record_latency(h, 1, 200000, 100000);  // worker A: 200 ms at t = 100000
    record_latency(h, 1, 1000, 99999);     // worker B, its clock read 1 ms earlier: no time has passed
    CHECK(latency_us(h, 1, 100000) == 200000);
    record_latency(h, 1, 1000, 110000);  // 10 s after A's stamp (kept): weight e^-1 on the peak
    CHECK(latency_us(h, 1, 110000) == doctest::Approx(1000 + 199000 * 0.3679).epsilon(0.01));
  }
}

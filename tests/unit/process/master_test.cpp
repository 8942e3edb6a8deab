// The master's own rules that need no process: when a child's death counts
// as one at start (respawn_due() delays the next after three in a row).
#include <doctest/doctest.h>

#include "gw/process/master.hpp"

TEST_CASE("died_at_start: a child reaped with a clock read before its fork died at start") {
  using gw::process::died_at_start;
  CHECK(died_at_start(5000, 4500));
  CHECK_FALSE(died_at_start(5000, 4000));  // lived 1 s
  CHECK(died_at_start(5000, 5000));
  // The master read its clock at 5000, reaped one worker and forked the next
  // at 5003, and reaped that one too in the same round, killed at once: it
  // counted as long-lived (5000 - 5003 wrapped), and the quick deaths that
  // delay a respawn started again from 0.
  CHECK(died_at_start(5000, 5003));
}

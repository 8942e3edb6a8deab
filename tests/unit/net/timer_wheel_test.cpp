#include <doctest/doctest.h>

#include <vector>

#include "gw/net/buffer_pool.hpp"
#include "gw/net/reactor.hpp"

using gw::net::TimerNode;
using gw::net::TimerWheel;

TEST_SUITE("net") {
  TEST_CASE("timers expire at their deadline, in any order, including past one wheel turn") {
    TimerWheel w(1000);
    TimerNode a, b, c;
    w.schedule(a, 1050);
    w.schedule(b, 1020);
    w.schedule(c, 1000 + 25000);  // 2.4 turns of the wheel
    std::vector<TimerNode*> fired;
    auto fire = [&](TimerNode& n) { fired.push_back(&n); };
    w.advance(1019, fire);
    CHECK(fired.empty());
    w.advance(1020, fire);
    REQUIRE(fired.size() == 1);
    CHECK(fired[0] == &b);
    w.advance(1100, fire);
    CHECK(fired.size() == 2);
    for (uint64_t t = 1100; t < 26000; t += 500) w.advance(t, fire);
    CHECK(fired.size() == 2);
    w.advance(26000, fire);
    CHECK(fired.size() == 3);
    CHECK(w.empty());
  }

  TEST_CASE("the wait runs to the next tick that holds a timer, not to the next tick") {
    // An idle worker with connections open woke every 10 ms (100 wake-ups a
    // second) to visit empty slots.
    TimerWheel w(1000);
    TimerNode a, b;
    w.schedule(a, 6000);
    CHECK(w.timeout_ms(1000) == 5000);
    CHECK(w.timeout_ms(1004) == 4996);
    w.schedule(b, 1500);
    CHECK(w.timeout_ms(1000) == 500);
    std::vector<TimerNode*> fired;
    auto fire = [&](TimerNode& n) { fired.push_back(&n); };
    w.advance(1500, fire);
    REQUIRE(fired.size() == 1);
    CHECK(w.timeout_ms(1500) == 4500);
    // Due past one turn of the wheel: woken where its slot comes round (at
    // most one turn away), and filed again there.
    TimerNode c;
    w.cancel(a);
    w.schedule(c, 1500 + 25000);
    const int first = w.timeout_ms(1500);
    CHECK(first > 0);
    CHECK(first <= static_cast<int>(TimerWheel::kSlots * TimerWheel::kTickMs));
    w.advance(1500 + static_cast<uint64_t>(first), fire);
    CHECK(fired.size() == 1);
    CHECK(w.size() == 1);
    // A node due later in the current tick: the next tick.
    TimerWheel v(2000);
    TimerNode d;
    v.schedule(d, 2005);
    CHECK(v.timeout_ms(2000) == 10);
  }

  TEST_CASE("moving a deadline later is lazy and still exact; cancel unlinks") {
    TimerWheel w(0);
    TimerNode a, b;
    w.schedule(a, 100);
    w.schedule(b, 100);
    a.deadline_ms = 5000;  // activity: no wheel operation
    w.cancel(b);
    int fired = 0;
    w.advance(4990, [&](TimerNode&) { ++fired; });
    CHECK(fired == 0);
    CHECK(w.size() == 1);
    w.advance(5000, [&](TimerNode& n) { fired += &n == &a; });
    CHECK(fired == 1);
    CHECK(w.timeout_ms(5000) == -1);
  }

  TEST_CASE("a node a callback files for a past tick while the wheel catches up fires at once, not a turn later") {
    TimerWheel w(0);
    TimerNode a, b, c;
    w.schedule(a, 20);  // tick 2 of the ten this advance catches up on
    w.schedule(c, 60);
    std::vector<TimerNode*> fired;
    w.advance(100, [&](TimerNode& n) {
      fired.push_back(&n);
      if (fired.size() == 1) w.schedule(b, 10);  // a: files b for a tick already past
      if (&n == &c) w.schedule(a, 60);           // files a again, due in the tick being visited
    });
    // Both fire in this advance (filed for its last tick), or at the latest
    // in the next one: not 10.24 s later when the wheel comes round.
    w.advance(110, [&](TimerNode& n) { fired.push_back(&n); });
    REQUIRE(fired.size() == 4);
    CHECK(fired[0] == &a);
    CHECK(fired[1] == &c);
    CHECK(((fired[2] == &b && fired[3] == &a) || (fired[2] == &a && fired[3] == &b)));
    CHECK(w.empty());
    w.advance(200, [&](TimerNode& n) { fired.push_back(&n); });
    CHECK(fired.size() == 4);
  }

  TEST_CASE("buffer pool reuses buffers and grows in chunks") {
    gw::net::BufferPool p;
    char* x = p.acquire();
    REQUIRE(x != nullptr);
    CHECK(p.in_use() == 1);
    CHECK(p.capacity() == gw::net::BufferPool::kChunkBytes / gw::net::BufferPool::kBufferSize);
    p.release(x);
    CHECK(p.acquire() == x);
    gw::net::BufferPool bounded(1);
    CHECK(bounded.acquire() != nullptr);  // the first chunk is allowed
  }

  TEST_CASE("buffer pool of large buffers: fewer per chunk, sizes rounded to 64") {
    gw::net::BufferPool p(0, 65536 + 6 + 64);
    CHECK(p.buffer_size() == 65664);
    char* a = p.acquire();
    char* b = p.acquire();
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    CHECK(a != b);
    CHECK(p.capacity() == gw::net::BufferPool::kChunkBytes / 65664);  // both from the first chunk
    a[65663] = 1;                                                     // the whole buffer is usable
    p.release(a);
    p.release(b);
    CHECK(p.in_use() == 0);
  }
}

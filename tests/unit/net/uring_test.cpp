#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "gw/net/uring.hpp"

using gw::net::BufRing;

TEST_SUITE("net") {
  TEST_CASE("completion tags pack op, slot and a 24-bit generation, and recognise stale ones") {
    using namespace gw::net;
    constexpr uint64_t t = pack_tag(0x9c, 0xfedcba98u, 0x123456u);
    static_assert(tag_op(t) == 0x9c);
    static_assert(tag_slot(t) == 0xfedcba98u);
    static_assert(tag_gen(t) == 0x123456u);
    CHECK(tag_current(t, 0x123456u));
    CHECK_FALSE(tag_current(t, 0x123457u));
    // Generations compare in the tag's 24 bits: a slot reused 2^24 times wraps.
    CHECK(tag_current(pack_tag(1, 7, 0x1000005u), 0x5u));
    CHECK(tag_current(pack_tag(1, 7, 5), 0x7000005u));
    // Every field round-trips at its extremes, independently of the others.
    for (uint8_t op : {uint8_t{0}, uint8_t{1}, uint8_t{255}})
      for (uint32_t slot : {0u, 1u, 0xffffffffu})
        for (uint32_t gen : {0u, 1u, 0xffffffu, 0xffffffffu}) {
          uint64_t x = pack_tag(op, slot, gen);
          CHECK(tag_op(x) == op);
          CHECK(tag_slot(x) == slot);
          CHECK(tag_gen(x) == (gen & kTagGenMask));
        }
  }

  TEST_CASE("buffer ring bookkeeping: every buffer starts in the kernel's ring, in id order") {
    BufRing r(8, 256);
    CHECK(r.count() == 8);
    CHECK(r.in_kernel() == 8);
    CHECK(r.out() == 0);
    CHECK(r.pending() == 0);
    REQUIRE(r.ring()->tail == 8);
    for (uint16_t i = 0; i < 8; ++i) {
      CHECK(r.ring()->bufs[i].bid == i);
      CHECK(r.ring()->bufs[i].len == 256);
      CHECK(reinterpret_cast<char*>(r.ring()->bufs[i].addr) == r.buf(i));
    }
    CHECK(r.buf(1) - r.buf(0) == 256);
  }

  TEST_CASE("buffer ring bookkeeping: taken, recycled, published; misuse is refused") {
    BufRing r(8, 64);
    CHECK(r.taken(3));
    CHECK(r.taken(5));
    CHECK(r.is_out(3));
    CHECK(r.out() == 2);
    CHECK(r.in_kernel() == 6);
    CHECK_FALSE(r.taken(3));    // already out
    CHECK_FALSE(r.taken(8));    // out of range
    CHECK_FALSE(r.recycle(4));  // the kernel's, not ours
    CHECK_FALSE(r.recycle(9));
    CHECK(r.recycle(5));
    CHECK_FALSE(r.recycle(5));  // double recycle
    CHECK(r.pending() == 1);
    CHECK(r.ring()->tail == 8);  // not visible to the kernel yet
    CHECK(r.publish() == 1);
    CHECK(r.ring()->tail == 9);
    CHECK(r.ring()->bufs[8 & 7].bid == 5);  // appended after the initial eight
    CHECK(r.in_kernel() == 7);
    CHECK(r.out() == 1);
    CHECK(r.recycle(3));
    CHECK(r.publish() == 1);
    CHECK(r.publish() == 0);
    CHECK(r.out() == 0);
    CHECK(r.in_kernel() == 8);
  }

  TEST_CASE("buffer ring bookkeeping: the 16-bit tail wraps and entries stay where the kernel reads them") {
    BufRing r(4, 64);
    // Take and give back 70,000 times (past 65,536), in batches of up to four.
    uint32_t total = 0;
    uint16_t last = 0;
    while (total < 70000) {
      const uint32_t batch = 1 + total % 4;
      for (uint16_t b = 0; b < batch; ++b) REQUIRE(r.taken(b));
      for (uint16_t b = 0; b < batch; ++b) REQUIRE(r.recycle(static_cast<uint16_t>(batch - 1 - b)));
      last = 0;  // recycled last
      REQUIRE(r.publish() == batch);
      total += batch;
      const uint16_t tail = r.ring()->tail;
      REQUIRE(tail == static_cast<uint16_t>(4 + total));
      REQUIRE(r.ring()->bufs[(tail - 1) & 3].bid == last);
      REQUIRE(r.ring()->bufs[(tail - batch) & 3].bid == batch - 1);
    }
    CHECK(r.in_kernel() == 4);
  }

  TEST_CASE("buffer ring sizes must be powers of two") {
    CHECK_THROWS(BufRing(3, 64));
    CHECK_THROWS(BufRing(0, 64));
    CHECK_THROWS(BufRing(65536, 64));
    CHECK_NOTHROW(BufRing(1, 64));
  }

  TEST_CASE("the kernel takes buffers from the ring for a multishot receive; recycled ones are reused") {
    if (std::string why = gw::net::uring_unsupported(); !why.empty()) {
      MESSAGE("io_uring unavailable here, skipped: " << why);
      return;
    }
    gw::net::Ring ring(16);
    BufRing bufs(2, 8);
    REQUIRE(bufs.attach(ring.raw(), 3) == 0);
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    io_uring_sqe* sqe = ring.sqe();
    io_uring_prep_recv_multishot(sqe, sv[0], nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = bufs.group();
    io_uring_sqe_set_data64(sqe, 42);
    std::string got;
    std::vector<uint16_t> ids;
    bool more = true;
    // Three 8-byte chunks through a two-buffer ring: the third needs a buffer back.
    for (const char* chunk : {"chunk-1.", "chunk-2.", "chunk-3."}) {
      REQUIRE(::write(sv[1], chunk, 8) == 8);
      int seen = 0;
      for (int spins = 0; seen == 0 && spins < 100; ++spins) {
        ring.submit_and_wait(100);
        seen += ring.drain([&](const io_uring_cqe& c) {
          REQUIRE(c.user_data == 42);
          more = c.flags & IORING_CQE_F_MORE;
          if (c.res > 0) {
            REQUIRE((c.flags & IORING_CQE_F_BUFFER));
            const auto bid = static_cast<uint16_t>(c.flags >> IORING_CQE_BUFFER_SHIFT);
            REQUIRE(bufs.taken(bid));
            got.append(bufs.buf(bid), static_cast<size_t>(c.res));
            ids.push_back(bid);
            if (ids.size() == 1) {
              REQUIRE(bufs.recycle(bid));  // the first comes back before the third chunk
              bufs.publish();
            }
          }
        });
      }
      REQUIRE(seen == 1);
      REQUIRE(more);
    }
    CHECK(got == "chunk-1.chunk-2.chunk-3.");
    REQUIRE(ids.size() == 3);
    CHECK(ids[0] != ids[1]);
    CHECK(ids[2] == ids[0]);  // the recycled buffer
    CHECK(bufs.out() == 2);
    ::close(sv[0]);
    ::close(sv[1]);
  }
}

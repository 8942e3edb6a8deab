// Seqlock stress test, built with ThreadSanitizer: two writer threads commit
// self-checking tables while four reader threads copy the published table and
// check it. No reader may ever see a torn table, and TSan must see no race.

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../unit/shm/torn_check.hpp"
#include "../unit/test_util.hpp"
#include "gw/shm/writer.hpp"

using namespace gw::shm;

TEST_CASE("concurrent writers and readers never see a torn table") {
  gw::testing::TempSegment ts({2, 2, 16, 1, 1, 1, 1, 8});  // a small table: TSan makes every word copy slow
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0}, torn{0}, commits{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&] {
      Writer w(ts.seg);
      w.set_persist(false);
      while (!stop.load()) {
        w.commit(gw::testing::self_checking_change);
        commits.fetch_add(1);
      }
    });
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      Table t(ts.seg.caps());
      TableReader r(ts.seg);
      uint64_t last = 0;
      while (!stop.load()) {
        if (!r.stale()) continue;
        uint64_t gen = r.refresh(t);
        if (!gw::testing::check_table(t).empty()) torn.fetch_add(1);
        if (gen < last) torn.fetch_add(1);  // generations never go backwards for a reader
        last = gen;
        reads.fetch_add(1);
      }
    });
  std::this_thread::sleep_for(std::chrono::seconds(3));
  stop.store(true);
  for (auto& t : threads) t.join();
  MESSAGE("commits: " << commits.load() << ", consistent reads: " << reads.load());
  CHECK(torn.load() == 0);
  CHECK(commits.load() > 100);
  CHECK(reads.load() > 100);
}

TEST_CASE("a reader of the listener list never sees half of one list and half of another") {
  gw::testing::TempSegment ts({2, 2, 16, 1, 1, 1, 1, 8});
  // Two lists that differ in every entry: a torn copy mixes their names or counts.
  ListenerList lists[2];
  for (uint32_t k = 0; k < 2; ++k) {
    lists[k].n = k == 0 ? 3 : 7;
    for (uint32_t i = 0; i < lists[k].n; ++i) {
      set_name(lists[k].items[i].name, (k == 0 ? "a" : "b") + std::to_string(i));
      lists[k].items[i].stats_row = k * 100 + i + 1;
    }
  }
  write_listeners(ts.seg.header(), lists[0]);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0}, torn{0}, writes{0};
  std::vector<std::thread> threads;
  threads.emplace_back([&] {  // one writer, as the master is
    for (uint32_t k = 1; !stop.load(); k ^= 1) {
      write_listeners(ts.seg.header(), lists[k]);
      writes.fetch_add(1);
      // A master rewrites the list at a reload, not back to back: a pause
      // between writes lets readers (which wait for a writer rather than give
      // up at once) finish copies, and they still overlap writes often.
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  });
  for (int r = 0; r < 3; ++r)
    threads.emplace_back([&] {
      ListenerList out;
      while (!stop.load()) {
        if (!read_listeners(ts.seg.header(), out)) continue;  // the writer outran this reader for a while
        const uint32_t k = out.n == 3 ? 0 : out.n == 7 ? 1 : 2;
        bool same = k < 2;
        for (uint32_t i = 0; same && i < kMaxListeners; ++i)
          same = std::memcmp(&out.items[i], &lists[k].items[i], sizeof(ListenerInfo)) == 0;
        if (!same) torn.fetch_add(1);
        reads.fetch_add(1);
      }
    });
  std::this_thread::sleep_for(std::chrono::seconds(2));
  stop.store(true);
  for (auto& t : threads) t.join();
  MESSAGE("list writes: " << writes.load() << ", consistent reads: " << reads.load());
  CHECK(torn.load() == 0);
  CHECK(writes.load() > 100);
  CHECK(reads.load() > 100);
}

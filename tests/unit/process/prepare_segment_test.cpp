// prepare_segment(): a master starting on a segment another writer (gwctl, the
// admin API, an old master in a binary upgrade) may be committing to.
#include <doctest/doctest.h>
#include <pthread.h>
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "../test_util.hpp"
#include "gw/config/config.hpp"
#include "gw/process/master.hpp"
#include "gw/shm/state_file.hpp"

using namespace gw;
using gw::testing::TempSegment;

namespace {

config::Config config_for(const std::string& shm, const std::string& state_file) {
  const std::string json = R"({"workers": 1, "shm": {"name": ")" + shm + R"(", "max_hosts": 16},
    "state_file": ")" + state_file +
                           R"(",
    "listeners": [{"name": "l4", "listen": "127.0.0.1:1", "protocol": "tcp", "upstream": "app"}],
    "upstreams": [{"name": "app", "pools": [{"id": "p", "hosts": [{"id": "a", "address": "127.0.0.1:2"}]}]}]})";
  config::LoadResult r = config::load_string(json);
  REQUIRE(r.errors.empty());
  return r.config;
}

}  // namespace

TEST_SUITE("process") {
  TEST_CASE("a starting master changes the header's state file path only under the writer lock") {
    // Every writer's commit persists to the path in the header: one that a
    // master rewrote under it (cleared, then copied) could be read empty (the
    // change not persisted) or cut short (written to another file).
    const std::string name = TempSegment::unique_name();
    const auto dir = std::filesystem::temp_directory_path() / name;
    std::filesystem::create_directories(dir);
    const std::string first = (dir / "a.json").string(), second = (dir / "b.json").string();
    config::Config a = config_for(name, first), b = config_for(name, second);
    shm::Segment seg = process::prepare_segment(a);
    CHECK(std::string(seg.header().state_file) == first);

    // A gwctl in the middle of its commit holds the writer lock.
    REQUIRE(::pthread_mutex_lock(&seg.header().writer_lock) == 0);
    std::thread master([&] { process::prepare_segment(b); });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(std::string(seg.header().state_file) == first);
    ::pthread_mutex_unlock(&seg.header().writer_lock);
    master.join();
    CHECK(std::string(seg.header().state_file) == second);

    shm::Segment::unlink(name);
    std::filesystem::remove_all(dir);
  }
}

TEST_SUITE("process") {
  TEST_CASE("a start with a state file of 20000 hosts loads them all, and a restart keeps their slots") {
    // Before, each host was added with a walk over the ones added before it
    // (its duplicate check), and a restart matched each with a walk over the
    // live table: at this size a start took 12.8 s on a loaded 2-core machine
    // (3.2 s of CPU), 0.28 s after.
    constexpr uint32_t kHosts = 20000;
    const std::string name = TempSegment::unique_name();
    const auto dir = std::filesystem::temp_directory_path() / name;
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "state.json").string();
    const std::string json = R"({"workers": 1, "shm": {"name": ")" + name + R"(", "max_hosts": 20000},
      "state_file": ")" + path +
                             R"(",
      "listeners": [{"name": "l4", "listen": "127.0.0.1:1", "protocol": "tcp", "upstream": "app"}],
      "upstreams": [{"name": "app", "pools": [{"id": "p", "hosts": [{"id": "a", "address": "127.0.0.1:2"}]}]}]})";
    config::LoadResult r = config::load_string(json);
    REQUIRE(r.errors.empty());
    {
      shm::Table t(r.config.shm.caps);
      shm::UpstreamRecord u{};
      shm::set_name(u.name, "app");
      const int p = t.add_pool(t.add_upstream(u), "p", 0, shm::Method::round_robin);
      for (uint32_t i = 0; i < kHosts; ++i) {
        core::SockAddr a;
        std::string why;
        REQUIRE(core::parse_address(fmt::format("10.{}.{}.1:80", i / 256, i % 256), a, why));
        t.add_unique_host(p, fmt::format("h{}", i), a, 1);
      }
      t.header().generation = 5;
      shm::write_state_file(path, shm::state_to_json(t));
    }
    shm::Table first(r.config.shm.caps), second(r.config.shm.caps);
    {
      shm::Segment seg = process::prepare_segment(r.config);
      shm::read_published(seg, first);
    }
    REQUIRE(first.hosts().size() == kHosts);
    CHECK(first.find_host(0, "h19999") == static_cast<int>(kHosts - 1));
    {
      shm::Segment seg = process::prepare_segment(r.config);  // a restart: the segment is the source
      shm::read_published(seg, second);
    }
    REQUIRE(second.hosts().size() == kHosts);
    for (uint32_t i = 0; i < kHosts; i += 997) {
      CAPTURE(i);
      CHECK(second.hosts()[i].slot == first.hosts()[i].slot);
      CHECK(second.hosts()[i].tag == first.hosts()[i].tag);
    }
    shm::Segment::unlink(name);
    std::filesystem::remove_all(dir);
  }
}

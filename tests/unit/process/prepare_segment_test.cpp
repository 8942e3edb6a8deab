// prepare_segment(): a master starting on a segment another writer (gwctl, the
// admin API, an old master in a binary upgrade) may be committing to.
#include <doctest/doctest.h>
#include <pthread.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "../test_util.hpp"
#include "gw/config/config.hpp"
#include "gw/process/master.hpp"

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

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstring>

#include "../test_util.hpp"
#include "gw/shm/segment.hpp"

using namespace gw::shm;
using gw::testing::TempSegment;

namespace {
// Writes `bytes` into a new POSIX shm object named `name`.
void make_object(const std::string& name, const void* bytes, size_t n, size_t size) {
  int fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
  if (n) REQUIRE(::pwrite(fd, bytes, n, 0) == static_cast<ssize_t>(n));
  ::close(fd);
}
std::string what(const std::string& name) {
  try {
    Segment::attach(name);
  } catch (const SegmentError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_SUITE("shm") {
  TEST_CASE("a created segment attaches and shares memory") {
    TempSegment t;
    Segment other = Segment::attach(t.name);
    CHECK(other.caps() == t.seg.caps());
    t.seg.header().event_head.store(42);
    CHECK(other.header().event_head.load() == 42);
    CHECK(other.header().published.load() == 0);
  }

  TEST_CASE("a missing segment means no running gateway") {
    CHECK(what("gwunit-does-not-exist").find("no running gateway") != std::string::npos);
  }

  TEST_CASE("garbage bytes, another ABI and a truncated segment are refused with a clear message") {
    std::string name = TempSegment::unique_name();
    std::string garbage(8192, '\x5a');
    make_object(name, garbage.data(), garbage.size(), garbage.size());
    CHECK(what(name).find("is refused: it is not a gw segment") != std::string::npos);

    make_object(name, nullptr, 0, 0);
    CHECK(what(name).find("is refused: it is empty") != std::string::npos);

    // A real segment whose ABI field says 2.
    Segment::unlink(name);
    {
      Segment s = Segment::create(name, {2, 2, 2}, 2);
      s.header().abi = kAbiVersion + 1;
    }
    CHECK(what(name).find("ABI version " + std::to_string(kAbiVersion + 1) + ", this program speaks ABI version " +
                          std::to_string(kAbiVersion)) != std::string::npos);

    // A real segment cut short.
    Segment::unlink(name);
    { Segment s = Segment::create(name, {2, 2, 2}, 2); }
    int fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
    REQUIRE(::ftruncate(fd, 4096) == 0);
    CHECK(what(name) == fmt::format("shm segment /dev/shm/{} is refused: it is 4096 bytes, smaller than a gw segment "
                                    "header ({} bytes): a segment cut short; remove it if no gw uses it",
                                    name, sizeof(SegmentHeader)));
    // Cut short past its header: the size its layout needs.
    Segment::unlink(name);
    size_t full = 0;
    {
      Segment s = Segment::create(name, {2, 2, 2}, 2);
      full = s.header().total_size;
    }
    ::close(fd);
    fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(full - 4096)) == 0);
    ::close(fd);
    CHECK(what(name) ==
          fmt::format("shm segment /dev/shm/{} is refused: it is {} bytes, its layout needs {}: a segment "
                      "cut short; remove it if no gw uses it",
                      name, full - 4096, full));
    Segment::unlink(name);
  }

  TEST_CASE("shm names are validated") {
    CHECK_THROWS_AS(Segment::object_name("a/b"), SegmentError);
    CHECK_THROWS_AS(Segment::object_name(""), SegmentError);
    CHECK(Segment::object_name("gw-1.x") == "/gw-1.x");
  }
}

#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "../test_util.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/seqlock.hpp"

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
    // As the config refuses them (shm.name): "/." and "/.." are no objects
    // (shm_open said only "Invalid argument"), and NAME.lock is the lock
    // file of instance NAME, not a segment.
    CHECK_THROWS_WITH_AS(Segment::object_name("."), "shm name \".\" is not a segment name", SegmentError);
    CHECK_THROWS_WITH_AS(Segment::object_name(".."), "shm name \"..\" is not a segment name", SegmentError);
    CHECK_THROWS_WITH_AS(Segment::object_name("gw.lock"),
                         "shm name \"gw.lock\" is not a segment name (NAME.lock is the lock file of NAME)",
                         SegmentError);
    CHECK(Segment::object_name("gw.locks") == "/gw.locks");
    CHECK(Segment::object_name("...") == "/...");
  }

  TEST_CASE("the listener list: written and read whole under its seqlock") {
    TempSegment t;
    Segment other = Segment::attach(t.name);
    ListenerList in;
    in.n = 2;
    set_name(in.items[0].name, "web");
    in.items[0].addr.family = AF_INET;
    in.items[0].addr.port = 8080;
    in.items[0].stats_row = 3;
    set_name(in.items[1].name, "l4");
    in.items[1].stats_row = 1;
    write_listeners(t.seg.header(), in);
    CHECK(t.seg.header().listeners_seq.load() == 2);
    ListenerList out;
    REQUIRE(read_listeners(other.header(), out));
    CHECK(out.n == 2);
    CHECK(name_of(out.items[0].name) == "web");
    CHECK(out.items[0].addr == in.items[0].addr);
    CHECK(out.items[0].stats_row == 3);
    CHECK(name_of(out.items[1].name) == "l4");
    // The header's own fields hold the list (what a build without the seqlock reads).
    CHECK(other.header().n_listeners == 2);
    CHECK(name_of(other.header().listeners[1].name) == "l4");

    // A shorter list replaces it whole; more than kMaxListeners is cut.
    in.n = 1;
    write_listeners(t.seg.header(), in);
    REQUIRE(read_listeners(other.header(), out));
    CHECK(out.n == 1);
    in.n = kMaxListeners + 5;
    write_listeners(t.seg.header(), in);
    REQUIRE(read_listeners(other.header(), out));
    CHECK(out.n == kMaxListeners);
  }

  TEST_CASE("the listener list: a writer that died mid-write, and a list of an earlier build") {
    TempSegment t;
    SegmentHeader& hdr = t.seg.header();
    // An earlier build wrote the fields directly and left the counter at 0.
    hdr.n_listeners = 1;
    set_name(hdr.listeners[0].name, "old");
    ListenerList out;
    REQUIRE(read_listeners(hdr, out));
    CHECK(out.n == 1);
    CHECK(name_of(out.items[0].name) == "old");

    // Died mid-write: the counter stays odd, so the list is refused (and comes
    // back empty) instead of read half old, half new.
    hdr.listeners_seq.store(3);
    CHECK_FALSE(read_listeners(hdr, out));
    CHECK(out.n == 0);
    // The next writer rounds the counter up and writes the list again.
    ListenerList in;
    in.n = 1;
    set_name(in.items[0].name, "new");
    write_listeners(hdr, in);
    CHECK(hdr.listeners_seq.load() == 6);
    REQUIRE(read_listeners(hdr, out));
    CHECK(name_of(out.items[0].name) == "new");

    // A consistent count above the capacity is no list a master wrote.
    hdr.n_listeners = kMaxListeners + 1;
    CHECK_FALSE(read_listeners(hdr, out));
    CHECK(out.n == 0);
  }

  TEST_CASE("the listener list: a writer descheduled mid-write is waited for, not given up on") {
    // A master preempted between the two counter steps of its write on a busy
    // host: the reader waits for it (a count of yields alone ran out within
    // a millisecond or two here, and gwctl check failed with "stays mid-write").
    TempSegment t;
    SegmentHeader& hdr = t.seg.header();
    ListenerList in;
    in.n = 1;
    set_name(in.items[0].name, "late");
    const uint64_t end = seq_write_begin(hdr.listeners_seq);  // write_listeners' steps, stopped between
    std::thread writer([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      store_words(reinterpret_cast<uint64_t*>(&hdr.n_listeners), reinterpret_cast<const uint64_t*>(&in),
                  sizeof(in) / 8);
      seq_write_end(hdr.listeners_seq, end);
    });
    ListenerList out;
    const bool ok = read_listeners(hdr, out);
    writer.join();
    REQUIRE(ok);
    CHECK(out.n == 1);
    CHECK(name_of(out.items[0].name) == "late");
  }
}

// Readers over a segment a buggy or foreign writer corrupted (issue 8, the shm
// fuzz target): each case was a crash, an out-of-bounds read or an endless
// loop in a reader before read_published() checked the table it copies.

#include <doctest/doctest.h>

#include <cstring>
#include <functional>
#include <string>

#include "../test_util.hpp"
#include "gw/balance/snapshot.hpp"
#include "gw/shm/segment.hpp"
#include "gw/shm/seqlock.hpp"
#include "gw/shm/writer.hpp"

using namespace gw::shm;
using gw::testing::TempSegment;

namespace {

gw::core::SockAddr addr(const char* text) {
  gw::core::SockAddr a;
  std::string why;
  REQUIRE(gw::core::parse_address(text, a, why));
  return a;
}

// app/{p,q} with two hosts, a route with an address rule, a consumer.
void fill(const Segment& seg) {
  Writer w(seg);
  w.set_persist(false);
  w.commit([](Table& t, std::vector<std::string>&) {
    UpstreamRecord u{};
    set_name(u.name, "app");
    const int ui = t.add_upstream(u);
    const int p = t.add_pool(ui, "p", 0, Method::round_robin);
    t.add_pool(ui, "q", 1, Method::chash);
    t.add_host(p, "a", addr("127.0.0.1:1"), 1);
    t.add_host(p, "b", addr("127.0.0.1:2"), 1);
    const int r = t.add_route("web", "v1");
    RuleSpec s;
    s.id = "gray";
    s.upstream = "app";
    gw::core::Cidr c;
    std::string why;
    REQUIRE(gw::core::parse_cidr("10.0.0.0/8", c, why));
    s.cidrs = {c};
    t.add_rule(r, s);
    uint8_t key[kSha256Len] = {1};
    t.add_consumer("alice", key);
  });
}

// Rewrites the published table in place, as a foreign writer could.
void patch(const Segment& seg, const std::function<void(Table&)>& fn) {
  Table t(seg.caps());
  const uint64_t pub = read_published(seg, t);
  fn(t);
  store_words(seg.slot_words(static_cast<int>(pub & 1)), t.words(), t.word_count());
}

// read_published's verdict on the segment ("" = accepted); a refused table is empty.
std::string refusal(const Segment& seg) {
  Table t(seg.caps());
  const char* why = nullptr;
  read_published(seg, t, &why);
  if (!why) return "";
  CHECK(t.header().generation == 0);
  CHECK(t.hosts().empty());
  CHECK(t.upstreams().empty());
  gw::balance::Snapshot snap;
  snap.build(t);  // what a worker does next
  CHECK(snap.upstreams().empty());
  return why;
}

}  // namespace

TEST_SUITE("shm") {
  TEST_CASE("a consistent table passes validate_table") {
    TempSegment s;
    fill(s.seg);
    CHECK(refusal(s.seg) == "");
  }

  TEST_CASE("read_published refuses a table whose counts, indexes, enums or names cannot be trusted") {
    struct Case {
      const char* what;
      std::function<void(Table&)> fn;
      const char* why;
    };
    // Before: hosts()/upstreams() spans past the table (Snapshot::build, the
    // status document), by_pool[host.pool] and seg.host(slot) out of bounds,
    // t.upstreams()[pool.upstream] and routes()[rule.route] out of bounds,
    // rule_cidrs() past the blocks, Cidr::contains() comparing prefix/8 bytes
    // of a 16-byte address, names printed unescaped into JSON, an unterminated
    // check path formatted as a C string.
    const Case cases[] = {
        {"host count", [](Table& t) { t.header().n_hosts = 1000; }, "a record count exceeds its capacity"},
        {"upstream count", [](Table& t) { t.header().n_upstreams = ~0u; }, "a record count exceeds its capacity"},
        {"host pool", [](Table& t) { t.hosts()[1].pool = 200; }, "a host names a pool that does not exist"},
        {"host slot", [](Table& t) { t.hosts()[0].slot = 9999; }, "a host's runtime slot is out of range"},
        {"host weight", [](Table& t) { t.hosts()[0].weight = 4'000'000'000u; }, "a host's weight is out of range"},
        {"pool upstream", [](Table& t) { t.pools()[1].upstream = 77; }, "a pool names an upstream that does not exist"},
        {"pool method", [](Table& t) { t.pools()[0].method = 42; }, "a pool has an unknown balancing method"},
        {"rule route", [](Table& t) { t.rules()[0].route = 9; }, "a rule names a route that does not exist"},
        {"rule blocks", [](Table& t) { t.rules()[0].first_cidr = 0xfffffff0u; },
         "a rule's address blocks are out of range"},
        {"rule stats slot", [](Table& t) { t.rules()[0].stat_slot = 999; }, "a rule's stats slot is out of range"},
        {"block prefix", [](Table& t) { t.cidrs()[0].prefix = 200; },
         "an address block has an unknown family or prefix length"},
        {"host id", [](Table& t) { std::memset(t.hosts()[0].id, 'h', kNameCap); }, "a host id is not a valid name"},
        {"upstream name", [](Table& t) { std::strcpy(t.upstreams()[0].name, "a\"b"); },
         "an upstream name is not a valid name"},
        {"check path",
         [](Table& t) { std::memset(t.upstreams()[0].check.path, '/', sizeof(t.upstreams()[0].check.path)); },
         "an upstream's health check path is not terminated"},
        {"check host",
         [](Table& t) { std::memset(t.upstreams()[0].check.host, 'h', sizeof(t.upstreams()[0].check.host)); },
         "an upstream's health check host is not terminated"},
        {"check host header", [](Table& t) { std::strcpy(t.upstreams()[0].check.host, "a\r\nX-Evil: 1"); },
         "an upstream's health check host is not a valid Host header"},
        {"consumer name", [](Table& t) { t.consumers()[0].name[0] = '\0'; }, "a consumer name is not a valid name"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.what);
      TempSegment one;  // caps {4, 8, 16}
      fill(one.seg);
      patch(one.seg, c.fn);
      CHECK(refusal(one.seg) == c.why);
    }
  }

  TEST_CASE(
      "read_published gives up on a published slot that stays mid-write or holds another "
      "generation") {
    // Before: read_published retried for ever (gwctl, the admin server and
    // every worker hung on the segment).
    TempSegment s;
    fill(s.seg);
    SegmentHeader& h = s.seg.header();
    const uint64_t pub = h.published.load();
    h.published.store(pub + 8);  // a generation the slot does not hold
    CHECK(refusal(s.seg) == "the published slot stays mid-write or holds another generation");
    h.published.store(pub);
    CHECK(refusal(s.seg) == "");
    const int i = static_cast<int>(pub & 1);
    s.seg.slot(i).seq.fetch_add(1);  // odd: "mid-write" for ever
    CHECK(refusal(s.seg) == "the published slot stays mid-write or holds another generation");
  }

  TEST_CASE("a reader caches a refused table's publish; the writer refuses to build on it") {
    TempSegment s;
    fill(s.seg);
    patch(s.seg, [](Table& t) { t.hosts()[0].slot = 9999; });
    TableReader reader(s.seg);
    Table t(s.seg.caps());
    const char* why = nullptr;
    CHECK(reader.stale());
    CHECK(reader.refresh(t, &why) == 0);
    CHECK(why != nullptr);
    CHECK_FALSE(reader.stale());  // not copied again until the next publish
    // Before: Writer::commit indexed its slot maps with the foreign slot.
    Writer w(s.seg);
    w.set_persist(false);
    CHECK_THROWS_AS(w.commit([](Table&, std::vector<std::string>&) {}), SegmentError);
  }
}

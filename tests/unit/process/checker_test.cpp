#include <doctest/doctest.h>

#include "../test_util.hpp"
#include "gw/config/config.hpp"
#include "gw/process/checker.hpp"
#include "gw/shm/runtime.hpp"

using namespace gw;

TEST_SUITE("process") {
  TEST_CASE("check verdicts: the first check decides, then rise and fall") {
    process::CheckRuns r;
    uint32_t s = shm::kActiveUnknown;
    s = r.apply(true, s, 2, 3);
    CHECK(s == shm::kActiveUp);
    s = r.apply(false, s, 2, 3);
    s = r.apply(false, s, 2, 3);
    CHECK(s == shm::kActiveUp);  // 2 of 3
    s = r.apply(true, s, 2, 3);  // a pass resets the failures
    s = r.apply(false, s, 2, 3);
    s = r.apply(false, s, 2, 3);
    CHECK(s == shm::kActiveUp);
    s = r.apply(false, s, 2, 3);
    CHECK(s == shm::kActiveDown);
    s = r.apply(true, s, 2, 3);
    CHECK(s == shm::kActiveDown);  // 1 of 2
    s = r.apply(true, s, 2, 3);
    CHECK(s == shm::kActiveUp);
    process::CheckRuns fresh;
    CHECK(fresh.apply(false, shm::kActiveUnknown, 2, 3) == shm::kActiveDown);
  }

  TEST_CASE("with active checks a host is usable per the checker's verdict and the unknown policy") {
    testing::TempSegment ts;
    shm::HostRuntime& h = ts.seg.host(0);
    shm::reset_slot(h, 9);
    shm::HealthPolicy usable{1, 1000, true, true}, unusable{1, 1000, true, false};
    CHECK(shm::host_usable(h, 9, usable, 0));
    CHECK_FALSE(shm::host_usable(h, 9, unusable, 0));
    CHECK(shm::record_check(h, 9, shm::kActiveDown));
    CHECK_FALSE(shm::record_check(h, 9, shm::kActiveDown));  // no change, no event
    CHECK_FALSE(shm::host_usable(h, 9, usable, 0));
    CHECK(shm::record_check(h, 9, shm::kActiveUp));
    CHECK(shm::host_usable(h, 9, unusable, 0));
    CHECK_FALSE(shm::record_check(h, 8, shm::kActiveDown));  // another host's verdict
  }

  TEST_CASE("the health block is parsed and validated") {
    auto cfg = [](const std::string& health) {
      return R"({"listeners": [{"name": "l", "listen": "127.0.0.1:1", "upstream": "u"}],
                 "upstreams": [{"name": "u", "health": )" +
             health + R"(, "pools": []}]})";
    };
    auto r = config::load_string(cfg(R"({"type": "http", "path": "/hz", "expect_status": "2xx,4xx",
                                         "interval_ms": 500, "rise": 4, "unknown": "unusable"})"));
    REQUIRE(r.ok());
    const auto& c = r.config.upstreams[0].check;
    CHECK(c.type == shm::kCheckHttp);
    CHECK(std::string(c.path) == "/hz");
    CHECK(c.expect_mask == ((1 << 2) | (1 << 4)));
    CHECK(c.interval_ms == 500);
    CHECK(c.timeout_ms == 1000);
    CHECK(c.rise == 4);
    CHECK(c.fall == 3);
    CHECK(c.unknown_usable == 0);
    auto bad = config::load_string(cfg(R"({"type": "udp", "expect_status": "2xy", "path": "hz", "rise": 0})"));
    CHECK(bad.errors.size() == 4);
  }
}

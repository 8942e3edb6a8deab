#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include "gw/proxy/access_log.hpp"

using gw::proxy::AccessLog;
using gw::proxy::HttpLogEntry;
using gw::proxy::LogFormat;

TEST_SUITE("proxy") {
  TEST_CASE("access log: a request whose fields escape long still gets its line, cut with ...") {
    // The longest values gw passes to the log (a 4 KiB target, 1 KiB Referer
    // and User-Agent), each made of bytes that escape to 4 (6 in JSON): once
    // 25 KiB of line, which was then dropped, keeping the request out of the log.
    const std::string target = "/" + std::string(4095, '"');
    const std::string high(1024, '\x80');
    const std::string method(256, 'M');
    HttpLogEntry e;
    e.wall_ms = 1764700000000;
    e.client = "127.0.0.1";
    e.method = method;
    e.target = target;
    e.version = "HTTP/1.1";
    e.status = 200;
    e.referer = high;
    e.user_agent = high;
    e.host = std::string_view(high).substr(0, 512);
    e.upstream_addr = "127.0.0.1:8081";
    e.route = "r";
    e.listener = "web";
    for (LogFormat f : {LogFormat::combined, LogFormat::main, LogFormat::json}) {
      CAPTURE(static_cast<int>(f));
      char buf[8191];
      const size_t n = AccessLog::format(buf, sizeof(buf), f, e);
      REQUIRE(n > 0);
      const std::string_view line(buf, n);
      CHECK(line.find("...") != std::string_view::npos);
      CHECK(line.find("HTTP/1.1") != std::string_view::npos);
    }
    // Short values are written whole.
    e.target = "/a?b=\"c\"";
    e.referer = e.user_agent = e.host = "x";
    char buf[8191];
    const size_t n = AccessLog::format(buf, sizeof(buf), LogFormat::combined, e);
    const std::string_view line(buf, n);
    CHECK(line.find("/a?b=\\x22c\\x22 HTTP/1.1") != std::string_view::npos);
    CHECK(line.find("...") == std::string_view::npos);
  }
}

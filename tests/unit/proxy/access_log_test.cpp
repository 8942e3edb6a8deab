#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
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

TEST_SUITE("proxy") {
  TEST_CASE("access log: finish() hands over what it can and counts the rest as dropped") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    int small = 64 * 1024;
    ::setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    AccessLog log;
    log.init(sv[1], 1);
    gw::proxy::StreamLogEntry e;
    e.client = "127.0.0.1";
    e.listener = "l4";
    e.protocol = "tcp";
    e.reason = "closed";
    const std::string pad(400, 'k');
    e.frame_key = pad;
    constexpr uint64_t kLines = 5000;  // ~2 MB: more than the socket and the queue hold
    for (uint64_t i = 0; i < kLines; ++i) {
      log.log(0, LogFormat::main, e);
      if (i % 50 == 0) log.flush();
    }
    // Nobody reads: finish() gives up after its limit and counts what is left.
    const auto t0 = std::chrono::steady_clock::now();
    log.finish(50);
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(took >= std::chrono::milliseconds(40));
    CHECK(took < std::chrono::seconds(2));
    uint64_t received = 0;
    auto buf = std::make_unique<char[]>(64 * 1024);
    for (;;) {
      const ssize_t n = ::recv(sv[0], buf.get(), 64 * 1024, MSG_DONTWAIT);
      if (n <= 0) break;
      for (ssize_t i = 1; i < n; ++i) received += buf[i] == '\n';
    }
    CHECK(received > 0);
    CHECK(log.dropped() > 0);
    CHECK(received + log.dropped() == kLines);  // every line is either in the socket or counted
    ::close(sv[0]);
    ::close(sv[1]);
  }
}

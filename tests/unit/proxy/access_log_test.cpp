#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "gw/core/utf8.hpp"
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

TEST_SUITE("proxy") {
  TEST_CASE("access log: json keeps well-formed UTF-8 and writes other bytes and controls as \\u00XX") {
    // "café" was logged as "caf\u00c3\u00a9", which every JSON reader takes
    // for "cafÃ©": each byte >= 0x80 was escaped on its own.
    HttpLogEntry e;
    e.wall_ms = 1764700000000;
    e.client = "127.0.0.1";
    e.method = "GET";
    e.target = "/caf\xc3\xa9/\xe2\x82\xac?q=\xff";  // "é", "€", then a byte that is not UTF-8
    e.version = "HTTP/1.1";
    e.host = "na\xc3\xafve";
    e.referer = "\xc0\xaf\xed\xa0\x80";  // an overlong '/' and a surrogate
    e.user_agent =
        "a\xc2\x9b"
        "b\x7f\x01\"\\";  // a C1 control (CSI), DEL, a C0 control
    e.status = 200;
    e.listener = "web";
    char buf[8191];
    const size_t n = AccessLog::format(buf, sizeof(buf), LogFormat::json, e);
    REQUIRE(n > 0);
    const std::string_view line(buf, n);
    CHECK(gw::core::utf8_valid(line));
    CHECK(line.find(R"("target":"/caf)"
                    "\xc3\xa9/\xe2\x82\xac"
                    R"(?q=\u00ff")") != std::string_view::npos);
    CHECK(line.find(R"("host":"na)"
                    "\xc3\xaf"
                    R"(ve")") != std::string_view::npos);
    CHECK(line.find(R"("referer":"\u00c0\u00af\u00ed\u00a0\u0080")") != std::string_view::npos);
    CHECK(line.find(R"("user_agent":"a\u009bb\u007f\u0001\"\\")") != std::string_view::npos);

    // A value cut to its budget is cut between characters, not inside one.
    std::string long_target = "/";
    while (long_target.size() < 6000) long_target += "\xe2\x82\xac";  // 3 bytes each
    e.target = long_target;
    const size_t m = AccessLog::format(buf, sizeof(buf), LogFormat::json, e);
    REQUIRE(m > 0);
    const std::string_view cut(buf, m);
    CHECK(gw::core::utf8_valid(cut));
    CHECK(cut.find("\xe2\x82\xac...\"") != std::string_view::npos);
  }
}

TEST_SUITE("proxy") {
  TEST_CASE("access log: json has request_length and bytes_sent after bytes") {
    // nginx's $request_length and $bytes_sent beside $body_bytes_sent; the
    // text formats stay as they were (combined is nginx's own).
    HttpLogEntry e;
    e.wall_ms = 1764700000000;
    e.client = "127.0.0.1";
    e.method = "POST";
    e.target = "/up";
    e.version = "HTTP/1.1";
    e.status = 201;
    e.body_bytes = 12;
    e.request_length = 4242;
    e.bytes_sent = 157;
    e.listener = "web";
    char buf[8191];
    const size_t n = AccessLog::format(buf, sizeof(buf), LogFormat::json, e);
    REQUIRE(n > 0);
    const std::string_view line(buf, n);
    CHECK(line.find(R"("status":201,"bytes":12,"request_length":4242,"bytes_sent":157,"request_time_ms":)") !=
          std::string_view::npos);
    for (LogFormat f : {LogFormat::combined, LogFormat::main}) {
      const size_t m = AccessLog::format(buf, sizeof(buf), f, e);
      REQUIRE(m > 0);
      const std::string_view text(buf, m);
      CHECK(text.find("4242") == std::string_view::npos);
      CHECK(text.find("157") == std::string_view::npos);
    }
  }
}
